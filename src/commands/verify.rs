//! `sluice verify`: does the index still equal the table?
//!
//! Scans the DynamoDB table with the backfill's scanner pieces and read pace (all of it, or
//! `--sample N` items from random segments), fetches the same `_id`s with `_mget` and compares each
//! document with what the stream would have written. With `--extra`, scrolls the index's ids to
//! find documents whose item is gone. The stream keeps running meanwhile, so every suspect is
//! checked again — a consistent GetItem and a fresh `_mget`, after waits of 1, 2 and 4 s — and only
//! what still differs is reported. `--repair` writes the table's image of each missing or different
//! item, and deletes each extra document, with the backfill's version (the verify's start less the
//! clock-skew allowance): never above a stream change made after the verify started, so a newer
//! document answers 409 (stale) and a later re-insert beats the delete.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{AttributeValue, ReturnConsumedCapacity, ScalarAttributeType};
use rusqlite::params;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::backfill::{self, ReadPace};
use crate::checkpoint::{now_ms, CheckpointStore};
use crate::config::{Config, KinesisFormat, SourceType};
use crate::es_client::EsClient;
use crate::metrics::{result, Metrics};
use crate::sink::{BulkOp, Origin};
use crate::transform::route::{IdRule, Place, Route, Routes, Template};
use crate::transform::{split_id, DecodeError, DocAction};

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub sample: Option<u64>,
    pub extra: bool,
    pub repair: bool,
}

/// What a run found (and repaired).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub table: String,
    pub index: String,
    /// Items read from the table and compared.
    pub checked: u64,
    pub sample: Option<u64>,
    pub extra_checked: bool,
    pub missing: u64,
    pub different: u64,
    pub extra: u64,
    /// Items that cannot be made documents (dead-lettered by the stream too).
    pub unreadable: u64,
    /// Items no route takes (skipped by the stream too).
    pub skipped: u64,
    pub examples: Examples,
    pub repair: Option<Repair>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Examples {
    pub missing: Vec<String>,
    /// `_id` and the fields that differ.
    pub different: Vec<(String, Vec<String>)>,
    pub extra: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Repair {
    pub indexed: u64,
    pub deleted: u64,
    /// The index held a newer version (a change after the verify started): left as it is.
    pub stale: u64,
    pub dead_lettered: u64,
}

impl Report {
    pub fn differences(&self) -> u64 {
        self.missing + self.different + self.extra
    }

    /// For people: a summary line, examples, what was repaired.
    pub fn render(&self) -> String {
        let mut t = String::new();
        let shown = 5;
        for id in self.examples.missing.iter().take(shown) {
            t.push_str(&format!(
                "missing    {id}: in the table, not in the index\n"
            ));
        }
        for (id, fields) in self.examples.different.iter().take(shown) {
            t.push_str(&format!("different  {id}: {}\n", fields.join(", ")));
        }
        for id in self.examples.extra.iter().take(shown) {
            t.push_str(&format!(
                "extra      {id}: in the index, not in the table\n"
            ));
        }
        if let Some(r) = &self.repair {
            t.push_str(&format!(
                "repaired: {} indexed, {} deleted; {} left as they are (the index holds a newer version); {} refused (dead letters)\n",
                r.indexed, r.deleted, r.stale, r.dead_lettered
            ));
        }
        t.push_str(&format!(
            "verify {} → {}: {} items checked{}{} in {:.1}s: {} missing, {} different, {}{}\n",
            self.table,
            self.index,
            self.checked,
            self.sample
                .map(|n| format!(" (sample of {n})"))
                .unwrap_or_default(),
            if self.unreadable > 0 || self.skipped > 0 {
                format!(
                    "{}{}",
                    if self.unreadable > 0 {
                        format!(", {} unreadable", self.unreadable)
                    } else {
                        String::new()
                    },
                    if self.skipped > 0 {
                        format!(", {} taken by no route", self.skipped)
                    } else {
                        String::new()
                    },
                )
            } else {
                String::new()
            },
            self.seconds,
            self.missing,
            self.different,
            if self.extra_checked {
                format!("{} extra", self.extra)
            } else {
                "extra not checked (--extra)".into()
            },
            if self.differences() == 0 {
                " — the index equals the table"
            } else {
                ""
            },
        ));
        t
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Missing,
    Different,
    Extra,
}

/// A document that did not match: where it is, its item's key (to read the item again), and
/// what the table holds now.
struct Suspect {
    place: Place,
    /// `place.index` is the concrete index a search found the document in (an extra candidate),
    /// not the name sluice writes to (which may be an alias of it).
    concrete: bool,
    /// The keys of the items it may be of (one for what the scan compared; for an extra
    /// candidate, what each route writing its index reads back from it; none: no item).
    keys: Vec<HashMap<String, AttributeValue>>,
    class: Class,
    /// The table's document now (`None`: no such item).
    expected: Option<Value>,
    fields: Vec<String>,
}

struct Ctx {
    client: aws_sdk_dynamodb::Client,
    es: EsClient,
    table: String,
    /// The stream's routes: where each item's documents are, and what they hold.
    routes: Routes,
    /// Where a route without an index of its own writes (`sink.index`).
    default_index: Arc<str>,
    /// The indices the routes write (fixed names and templates).
    targets: Vec<(String, Template)>,
    key_names: Vec<String>,
    key_types: HashMap<String, ScalarAttributeType>,
    consistent_read: bool,
    pace: ReadPace,
    /// Concrete indices behind a name (itself, or an alias's), asked once.
    behind: tokio::sync::Mutex<HashMap<String, Vec<String>>>,
}

pub async fn run(config: &Config, opts: Options) -> anyhow::Result<Report> {
    if config.source.kind == SourceType::Kinesis && config.source.format == Some(KinesisFormat::Dms)
    {
        anyhow::bail!("verify compares a DynamoDB table with its index; this configuration follows RDS tables through DMS");
    }
    if opts.extra && opts.sample.is_some() {
        anyhow::bail!("--extra needs the whole table scanned: it cannot be combined with --sample");
    }
    if opts.sample == Some(0) {
        anyhow::bail!("--sample must be at least 1");
    }
    let started = Instant::now();
    // the repair version is fixed before anything is read (the backfill's rule)
    let version = backfill::scan_version(config.backfill.clock_skew_allowance);
    let table = backfill::table_name(config)?;
    let client = backfill::client(config).await;
    let backfill::TableShape {
        keys: key_names,
        key_types,
        size,
        ..
    } = backfill::describe(&client, &table).await?;
    let routes = backfill::routes(config, &table, &key_names)?;
    let targets = backfill::targets(config)?;
    if opts.extra {
        // an extra document is read back to its item by the key: its `_id` or its fields
        for route in &routes.routes {
            if key_from_id_rule(route, &routes, &key_names).is_none()
                && !key_names.iter().all(|k| route.document_keeps(k))
            {
                anyhow::bail!(
                    "--extra cannot tell which item a document of route `{}` belongs to: its `_id` is not the table's key ({}) and its documents do not carry it. \
                     Keep the key attributes in the documents, or verify without --extra",
                    route.name,
                    key_names.join(", ")
                );
            }
        }
    }
    let ctx = Arc::new(Ctx {
        es: EsClient::new(&config.sink, &config.source.region).await?,
        routes,
        default_index: config.sink.index.as_str().into(),
        targets,
        key_names,
        key_types,
        client,
        table: table.clone(),
        consistent_read: config.backfill.consistent_read,
        pace: ReadPace::new(config.backfill.max_read_units_per_second.unwrap_or(0.0)),
        behind: Default::default(),
    });
    for (name, template) in &ctx.targets {
        if template.as_literal().is_none() {
            continue;
        }
        let exists = es_call(&ctx, "GET", &format!("/{name}"), None).await?;
        if exists.status == 404 {
            anyhow::bail!(
                "index `{name}` does not exist: every item would be missing — load it with `sluice backfill` first"
            );
        }
    }
    let mut report = Report {
        table,
        index: backfill::target_names(&ctx.targets),
        sample: opts.sample,
        extra_checked: opts.extra,
        ..Report::default()
    };
    let total_segments = match opts.sample {
        Some(_) => 64,
        None => config
            .backfill
            .segments
            .unwrap_or_else(|| (size / (256 << 20)).clamp(1, 64) as u32 + 1),
    };
    let mut order: Vec<u32> = (0..total_segments).collect();
    if opts.sample.is_some() {
        fastrand::shuffle(&mut order);
    }
    // a sample takes a share from each random segment, so it spreads over the key space
    let per_segment = opts.sample.map(|n| n.div_ceil(8).max(1));
    let mut seen = Found::default();
    let mut suspects: Vec<Suspect> = Vec::new();
    for segment in order {
        let left = opts.sample.map(|n| n.saturating_sub(report.checked));
        if left == Some(0) {
            break;
        }
        let quota = match (per_segment, left) {
            (Some(q), Some(l)) => Some(q.min(l)),
            _ => None,
        };
        scan_segment(
            &ctx,
            segment,
            total_segments,
            quota,
            &mut report,
            &mut seen,
            &mut suspects,
            opts.extra,
        )
        .await?;
    }
    if opts.extra {
        suspects.extend(extra_candidates(&ctx, &seen).await?);
    }
    drop(seen);
    let mut repairer = if opts.repair {
        Some(Repairer::start(config, &ctx, version).await?)
    } else {
        None
    };
    recheck(&ctx, &mut suspects, repairer.as_mut()).await?;
    // one fixed index: its `_id`s; several, or a template: `index/_id`
    let one_index = matches!(&ctx.targets[..], [(_, t)] if t.as_literal().is_some());
    for s in &suspects {
        let label = if one_index {
            s.place.id.clone()
        } else {
            format!("{}/{}", s.place.index, s.place.id)
        };
        match s.class {
            Class::Missing => {
                report.missing += 1;
                report.examples.missing.push(label);
            }
            Class::Different => {
                report.different += 1;
                report.examples.different.push((label, s.fields.clone()));
            }
            Class::Extra => {
                report.extra += 1;
                report.examples.extra.push(label);
            }
        }
    }
    for list in [&mut report.examples.missing, &mut report.examples.extra] {
        list.truncate(20);
    }
    report.examples.different.truncate(20);
    if let Some(r) = repairer {
        report.repair = Some(r.finish().await);
    }
    report.seconds = started.elapsed().as_secs_f64();
    let store = CheckpointStore::open(&config.checkpoint.path, config.checkpoint.journal_mode)?;
    save(&store, &report).await?;
    tracing::info!(
        table = %report.table, index = %report.index, checked = report.checked,
        missing = report.missing, different = report.different, extra = report.extra,
        "verify summary"
    );
    Ok(report)
}

/// A document found: the concrete index that holds it (an alias names another), `_id` and
/// routing (two copies under two routings are two documents, on two shards).
type Seen = HashSet<(String, String, Option<String>)>;

/// What the scan saw of the index, for `--extra`: the documents it found, and the index names
/// its items were placed in (the indices of a template that are sluice's — not every index the
/// template's wildcard would match).
#[derive(Default)]
struct Found {
    documents: Seen,
    placed_in: std::collections::BTreeSet<String>,
}

#[allow(clippy::too_many_arguments)]
async fn scan_segment(
    ctx: &Ctx,
    segment: u32,
    total: u32,
    quota: Option<u64>,
    report: &mut Report,
    seen: &mut Found,
    suspects: &mut Vec<Suspect>,
    remember_ids: bool,
) -> anyhow::Result<()> {
    let mut start: Option<HashMap<String, AttributeValue>> = None;
    let mut taken = 0u64;
    let mut attempt = 0u32;
    loop {
        let limit = quota.map(|q| (q - taken).min(1000) as i32);
        let page = ctx
            .client
            .scan()
            .table_name(&ctx.table)
            .segment(segment as i32)
            .total_segments(total as i32)
            .consistent_read(ctx.consistent_read)
            .set_limit(limit)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .set_exclusive_start_key(start.take())
            .send()
            .await;
        let page = match page {
            Ok(p) => p,
            Err(e) if backfill::scan_error_may_pass(&e) && attempt < 8 => {
                attempt += 1;
                tokio::time::sleep(crate::retry::Backoff::AWS.delay(attempt)).await;
                continue;
            }
            Err(e) => anyhow::bail!(
                "scanning segment {segment} of `{}`: {}",
                ctx.table,
                aws_smithy_types::error::display::DisplayErrorContext(e)
            ),
        };
        attempt = 0;
        let mut docs: Vec<(Place, HashMap<String, AttributeValue>, Value)> = Vec::new();
        for item in page.items() {
            match documents(ctx, item) {
                Ok(None) => report.skipped += 1,
                Ok(Some(placed)) => docs.extend(
                    placed
                        .into_iter()
                        .map(|(place, doc)| (place, key_of(item, &ctx.key_names), doc)),
                ),
                Err(_) => report.unreadable += 1,
            }
        }
        report.checked += page.items().len() as u64;
        taken += page.items().len() as u64;
        let found = mget(ctx, docs.iter().map(|(p, ..)| p)).await?;
        for ((place, key, doc), have) in docs.into_iter().zip(found) {
            if remember_ids && !seen.placed_in.contains(&*place.index) {
                seen.placed_in.insert(place.index.to_string());
            }
            let have = have.map(|found| {
                if remember_ids {
                    seen.documents
                        .insert((found.index, place.id.clone(), found.routing));
                }
                found.source
            });
            if let Some((class, fields)) = judge(Some(&doc), have.as_ref()) {
                suspects.push(Suspect {
                    place,
                    concrete: false,
                    keys: vec![key],
                    class,
                    expected: Some(doc),
                    fields,
                });
            }
        }
        let units = page
            .consumed_capacity()
            .and_then(|c| c.capacity_units())
            .unwrap_or(0.0);
        match page.last_evaluated_key().filter(|k| !k.is_empty()) {
            Some(k) if quota.is_none_or(|q| taken < q) => start = Some(k.clone()),
            _ => return Ok(()),
        }
        ctx.pace.consumed(units).await;
    }
}

/// An item's documents as the stream writes them, each where the routes put it; `None`: no
/// route takes the item.
fn documents(
    ctx: &Ctx,
    item: &HashMap<String, AttributeValue>,
) -> Result<Option<Vec<(Place, Value)>>, DecodeError> {
    let row = backfill::item_row(item)?;
    let decoded = backfill::item_changes(&ctx.routes, &ctx.table, &ctx.key_names, row)?;
    if let Some(e) = decoded.refused {
        return Err(e);
    }
    if decoded.skipped.is_some() {
        return Ok(None);
    }
    let mut documents = Vec::with_capacity(decoded.changes.len());
    for c in decoded.changes {
        if let Some(doc) = c.action.into_document() {
            let place = Place {
                index: c.index.unwrap_or_else(|| ctx.default_index.clone()),
                id: c.id,
                routing: c.routing,
            };
            documents.push((place, doc?));
        }
    }
    Ok(Some(documents))
}

fn key_of(
    item: &HashMap<String, AttributeValue>,
    names: &[String],
) -> HashMap<String, AttributeValue> {
    names
        .iter()
        .filter_map(|n| Some((n.clone(), item.get(n)?.clone())))
        .collect()
}

/// How the index's document compares with the table's (`None`: equal, both absent included).
fn judge(expected: Option<&Value>, have: Option<&Value>) -> Option<(Class, Vec<String>)> {
    match (expected, have) {
        (None, None) => None,
        (Some(_), None) => Some((Class::Missing, Vec::new())),
        (None, Some(_)) => Some((Class::Extra, Vec::new())),
        (Some(e), Some(h)) if e == h => None,
        (Some(e), Some(h)) => Some((Class::Different, fields_differing(e, h))),
    }
}

/// Top-level fields whose values differ, for the examples.
fn fields_differing(expected: &Value, have: &Value) -> Vec<String> {
    let (Some(e), Some(h)) = (expected.as_object(), have.as_object()) else {
        return vec!["the whole document".into()];
    };
    let names: std::collections::BTreeSet<&String> = e.keys().chain(h.keys()).collect();
    names
        .into_iter()
        .filter(|n| e.get(*n) != h.get(*n))
        .map(|n| match (e.get(n), h.get(n)) {
            (Some(_), None) => format!("{n} missing in the index"),
            (None, Some(_)) => format!("{n} only in the index"),
            (Some(a), Some(b)) => {
                format!("{n}: {} in the table, {} in the index", short(a), short(b))
            }
            (None, None) => n.clone(),
        })
        .collect()
}

fn short(v: &Value) -> String {
    let t = v.to_string();
    if t.len() > 40 {
        format!("{}…", &t[..t.floor_char_boundary(40)])
    } else {
        t
    }
}

/// A document as `_mget` found it.
struct FoundDocument {
    /// The concrete index that holds it.
    index: String,
    routing: Option<String>,
    source: Value,
}

/// Each document as found (`None`: not found), in order, in chunks of 500.
async fn mget<'a>(
    ctx: &Ctx,
    places: impl Iterator<Item = &'a Place>,
) -> anyhow::Result<Vec<Option<FoundDocument>>> {
    let places: Vec<&Place> = places.collect();
    let mut out = Vec::with_capacity(places.len());
    for chunk in places.chunks(500) {
        let docs: Vec<Value> = chunk
            .iter()
            .map(|p| {
                let mut d = json!({"_index": &*p.index, "_id": p.id});
                if let Some(r) = &p.routing {
                    d["routing"] = json!(r);
                }
                d
            })
            .collect();
        let body = json!({ "docs": docs }).to_string().into_bytes();
        let answer = es_call(ctx, "POST", "/_mget", Some(body)).await?;
        let v: Value = parse(&answer, "_mget")?;
        let answers = v["docs"].as_array().cloned().unwrap_or_default();
        anyhow::ensure!(
            answers.len() == chunk.len(),
            "_mget answered {} documents of {}",
            answers.len(),
            chunk.len()
        );
        for (p, d) in chunk.iter().zip(answers) {
            if let Some(e) = d.get("error") {
                // no such index (yet, or any more): missing; anything else cannot be judged
                if e["type"] != "index_not_found_exception" {
                    anyhow::bail!(
                        "_mget of `{}` in `{}`: {}: {}",
                        p.id,
                        p.index,
                        e["type"],
                        e["reason"]
                    );
                }
            }
            out.push((d["found"] == true).then(|| FoundDocument {
                index: d["_index"].as_str().unwrap_or(&p.index).to_string(),
                routing: d["_routing"].as_str().map(str::to_owned),
                source: d["_source"].clone(),
            }));
        }
    }
    Ok(out)
}

async fn es_call(
    ctx: &Ctx,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<crate::es_client::Answer> {
    let mut attempt = 0;
    loop {
        match ctx.es.call(method, path, body.clone()).await {
            Ok(a) if a.status == 429 || a.status >= 500 => {
                attempt += 1;
                if attempt > 8 {
                    anyhow::bail!(
                        "{method} {path}: HTTP {}: {}",
                        a.status,
                        a.body.chars().take(300).collect::<String>()
                    );
                }
            }
            Ok(a) => return Ok(a),
            Err(e) => {
                attempt += 1;
                if attempt > 8 {
                    anyhow::bail!("{method} {path}: {e}");
                }
            }
        }
        tokio::time::sleep(crate::retry::Backoff::AWS.delay(attempt)).await;
    }
}

fn parse(answer: &crate::es_client::Answer, what: &str) -> anyhow::Result<Value> {
    if !(200..300).contains(&answer.status) {
        anyhow::bail!(
            "{what}: HTTP {}: {}",
            answer.status,
            answer.body.chars().take(300).collect::<String>()
        );
    }
    serde_json::from_str(&answer.body).map_err(|e| anyhow::anyhow!("{what}: not JSON: {e}"))
}

/// Documents of the indices the routes write that the scan did not find there: each index's
/// ids read with a scroll. A fixed index is read whole; of a template's indices, those the
/// table's items were placed in (its wildcard also matches indices that are not sluice's).
async fn extra_candidates(ctx: &Ctx, seen: &Found) -> anyhow::Result<Vec<Suspect>> {
    let mut names: Vec<String> = ctx
        .targets
        .iter()
        .filter_map(|(_, t)| t.as_literal().map(str::to_owned))
        .collect();
    names.extend(
        seen.placed_in
            .iter()
            .filter(|n| !names.contains(n))
            .cloned()
            .collect::<Vec<_>>(),
    );
    let mut out = Vec::new();
    let mut listed: Seen = HashSet::new();
    for name in names {
        // the routes that write this index: an item of any of them may own a document in it
        let routes: Vec<&Route> = ctx
            .routes
            .routes
            .iter()
            .filter(|r| match r.index.as_literal() {
                Some(fixed) => fixed == name,
                None => r.index.could_render(&name),
            })
            .collect();
        let first = es_call(
            ctx,
            "POST",
            &format!("/{name}/_search?scroll=2m"),
            Some(
                json!({"size": 1000, "sort": ["_doc"], "query": {"match_all": {}}})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await?;
        if first.status == 404 {
            continue;
        }
        let mut page = parse(&first, "reading the index's ids")?;
        loop {
            let hits = page["hits"]["hits"].as_array().cloned().unwrap_or_default();
            if hits.is_empty() {
                break;
            }
            for h in hits {
                let id = h["_id"].as_str().unwrap_or_default().to_string();
                let concrete = h["_index"].as_str().unwrap_or_default().to_string();
                let routing = h["_routing"].as_str().map(str::to_owned);
                let found = (concrete, id, routing);
                if seen.documents.contains(&found) || !listed.insert(found.clone()) {
                    continue;
                }
                let (concrete, id, routing) = found;
                out.push(Suspect {
                    keys: routes
                        .iter()
                        .filter_map(|r| document_key(ctx, r, &id, &h["_source"]))
                        .collect(),
                    place: Place {
                        index: concrete.into(),
                        id,
                        routing,
                    },
                    concrete: true,
                    class: Class::Extra,
                    expected: None,
                    fields: Vec::new(),
                });
            }
            let scroll_id = page["_scroll_id"].as_str().unwrap_or_default().to_string();
            let next = es_call(
                ctx,
                "POST",
                "/_search/scroll",
                Some(
                    json!({"scroll": "2m", "scroll_id": scroll_id})
                        .to_string()
                        .into_bytes(),
                ),
            )
            .await?;
            page = parse(&next, "reading the index's ids")?;
        }
        if let Some(id) = page["_scroll_id"].as_str() {
            let _ = ctx
                .es
                .call(
                    "DELETE",
                    "/_search/scroll",
                    Some(json!({"scroll_id": id}).to_string().into_bytes()),
                )
                .await;
        }
    }
    Ok(out)
}

/// The attributes a route's `_id` joins, when they are the table's key (so the key can be read
/// back from the `_id`).
fn key_from_id_rule(route: &Route, routes: &Routes, key_names: &[String]) -> Option<Vec<String>> {
    let attributes = match &route.id {
        IdRule::Key => routes.key.clone()?,
        IdRule::Attributes(a) => a.clone(),
        IdRule::Template(_) => return None,
    };
    (attributes == key_names).then_some(attributes)
}

/// The key of the item a document of `route` was made from: split from its `_id`, or read
/// from its fields.
fn document_key(
    ctx: &Ctx,
    route: &Route,
    id: &str,
    source: &Value,
) -> Option<HashMap<String, AttributeValue>> {
    if let Some(names) = key_from_id_rule(route, &ctx.routes, &ctx.key_names) {
        let parts = split_id(id, names.len(), &ctx.routes.separator)?;
        let values: Map<String, Value> = names
            .iter()
            .cloned()
            .zip(parts.into_iter().map(Value::String))
            .collect();
        return key_from_source(&Value::Object(values), &ctx.key_names, &ctx.key_types);
    }
    if ctx.key_names.iter().all(|k| route.document_keeps(k)) {
        return key_from_source(source, &ctx.key_names, &ctx.key_types);
    }
    None
}

/// The item key held in a document (documents carry every attribute of their item).
fn key_from_source(
    source: &Value,
    names: &[String],
    types: &HashMap<String, ScalarAttributeType>,
) -> Option<HashMap<String, AttributeValue>> {
    names
        .iter()
        .map(|n| {
            let v = source.get(n)?;
            let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            let value = match types.get(n)? {
                ScalarAttributeType::N => AttributeValue::N(text),
                ScalarAttributeType::B => {
                    use base64::Engine;
                    AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(
                        base64::engine::general_purpose::STANDARD
                            .decode(text)
                            .ok()?,
                    ))
                }
                _ => AttributeValue::S(text),
            };
            Some((n.clone(), value))
        })
        .collect()
}

/// Reads every suspect again — the item (consistent) and the document — after waits of 1, 2 and
/// 4 s, so changes still on their way through the stream are not reported; keeps what still
/// differs, with the table's latest image. The last round goes in chunks, each repaired right
/// after it was read: an image is written seconds after it was read, not after every other
/// suspect (a delete's tombstone lives only `index.gc_deletes`, 60 s).
async fn recheck(
    ctx: &Ctx,
    suspects: &mut Vec<Suspect>,
    mut repairer: Option<&mut Repairer>,
) -> anyhow::Result<()> {
    const CHUNK: usize = 200;
    let waits = [1, 2, 4];
    for (round, wait) in waits.iter().enumerate() {
        if suspects.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(*wait)).await;
        let last = round + 1 == waits.len();
        let mut still = Vec::new();
        let pending: Vec<Suspect> = std::mem::take(suspects);
        let mut chunks = pending.into_iter().peekable();
        while chunks.peek().is_some() {
            let chunk: Vec<Suspect> = chunks.by_ref().take(CHUNK).collect();
            let found = mget(ctx, chunk.iter().map(|s| &s.place)).await?;
            let mut differing = Vec::new();
            for (mut s, have) in chunk.into_iter().zip(found) {
                // a document without its item's key cannot belong to any item
                s.expected = current_document(ctx, &s).await?;
                let have = have.map(|found| found.source);
                if let Some((class, fields)) = judge(s.expected.as_ref(), have.as_ref()) {
                    s.class = class;
                    s.fields = fields;
                    differing.push(s);
                }
            }
            if last {
                if let Some(r) = repairer.as_deref_mut() {
                    r.repair(&differing).await?;
                }
            }
            still.extend(differing);
        }
        *suspects = still;
    }
    Ok(())
}

/// The table's document at the suspect's place now (consistent reads) — `None` when none of
/// the items it may be of exists, or places its document there (same index, `_id` and
/// routing): that document is then one no item has (extra).
async fn current_document(ctx: &Ctx, suspect: &Suspect) -> anyhow::Result<Option<Value>> {
    for key in &suspect.keys {
        let item = ctx
            .client
            .get_item()
            .table_name(&ctx.table)
            .set_key(Some(key.clone()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "GetItem on `{}`: {}",
                    ctx.table,
                    aws_smithy_types::error::display::DisplayErrorContext(e)
                )
            })?;
        let Some(placed) = item.item().and_then(|i| documents(ctx, i).ok().flatten()) else {
            continue;
        };
        for (place, doc) in placed {
            if place.id != suspect.place.id || place.routing != suspect.place.routing {
                continue;
            }
            let here = if suspect.concrete {
                // found by a search in a concrete index: the item's place is the same document
                // when its index is that one or an alias of it
                place.index == suspect.place.index
                    || concrete_indices(ctx, &place.index)
                        .await?
                        .contains(&suspect.place.index.to_string())
            } else {
                place.index == suspect.place.index
            };
            if here {
                return Ok(Some(doc));
            }
        }
    }
    Ok(None)
}

/// The concrete indices `name` stands for: itself, or those behind an alias of that name.
async fn concrete_indices(ctx: &Ctx, name: &str) -> anyhow::Result<Vec<String>> {
    if let Some(known) = ctx.behind.lock().await.get(name) {
        return Ok(known.clone());
    }
    let answer = es_call(ctx, "GET", &format!("/{name}/_settings"), None).await?;
    let names: Vec<String> = if answer.status == 404 {
        Vec::new()
    } else {
        parse(&answer, "index settings")?
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    ctx.behind
        .lock()
        .await
        .insert(name.to_owned(), names.clone());
    Ok(names)
}

/// Writes the table's image of missing and different items and deletes extra documents, all
/// with the verify's version, through the stream's batcher and sink.
struct Repairer {
    out: backfill::Writer,
    lanes: Vec<tokio::task::JoinHandle<()>>,
    tracker: crate::ack::AckTracker,
    part: crate::ack::ShardId,
    origin: Origin,
    version: u64,
    metrics: Metrics,
}

impl Repairer {
    async fn start(config: &Config, ctx: &Ctx, version: u64) -> anyhow::Result<Self> {
        let store = CheckpointStore::open(&config.checkpoint.path, config.checkpoint.journal_mode)?;
        let metrics = Metrics::new();
        let (out, lanes) = backfill::writer(config, &store, &metrics).await?;
        let part: crate::ack::ShardId = "verify-repair".into();
        out.hold(std::slice::from_ref(&part));
        Ok(Self {
            out,
            lanes,
            tracker: crate::ack::AckTracker::default(),
            origin: Origin {
                stream: format!("verify:{}", ctx.table).into(),
                shard: part.clone(),
                sequence_number: "repair".into(),
                epoch: 1,
            },
            part,
            version,
            metrics,
        })
    }

    /// Sends one chunk and waits until Elasticsearch has answered every operation.
    async fn repair(&mut self, suspects: &[Suspect]) -> anyhow::Result<()> {
        for s in suspects {
            let action = match &s.expected {
                Some(doc) if s.class != Class::Extra => DocAction::Index(doc.clone()),
                _ => DocAction::Delete,
            };
            let mut op = BulkOp::routed(
                s.place.index.clone(),
                s.place.id.clone(),
                s.place.routing.as_deref(),
                self.version,
                action,
                self.origin.clone(),
            );
            op.acks.extend(
                self.tracker
                    .register(&self.part, 1, Default::default(), 1, 1),
            );
            self.out
                .router
                .send(op)
                .await
                .map_err(|_| anyhow::anyhow!("the sink stopped"))?;
        }
        backfill::acknowledged(&self.tracker, &self.part).await;
        Ok(())
    }

    async fn finish(self) -> Repair {
        drop(self.out);
        for lane in self.lanes {
            let _ = lane.await;
        }
        let count = |r: &str| self.metrics.documents.with_label_values(&[r]).get();
        Repair {
            indexed: count(result::INDEXED),
            deleted: count(result::DELETED),
            stale: count(result::STALE),
            dead_lettered: count(result::DEAD_LETTERED),
        }
    }
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS verify_runs (
    finished_at_ms INTEGER NOT NULL,
    table_name     TEXT NOT NULL,
    index_name     TEXT NOT NULL,
    checked        INTEGER NOT NULL,
    missing        INTEGER NOT NULL,
    different      INTEGER NOT NULL,
    extra          INTEGER,
    repaired       INTEGER NOT NULL
)";

/// Keeps the run's summary in the checkpoint file: `sluice run` exports the last one.
async fn save(store: &CheckpointStore, r: &Report) -> anyhow::Result<()> {
    let r = r.clone();
    store
        .with_connection(move |conn| {
            conn.execute_batch(SCHEMA)?;
            let repaired = r.repair.as_ref().map_or(0, |x| x.indexed + x.deleted);
            conn.execute(
                "INSERT INTO verify_runs VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    now_ms(),
                    r.table,
                    r.index,
                    r.checked as i64,
                    r.missing as i64,
                    r.different as i64,
                    r.extra_checked.then_some(r.extra as i64),
                    repaired as i64
                ],
            )?;
            Ok(())
        })
        .await?;
    Ok(())
}

/// The last verify run's figures into the metrics, every 10 s until `stop` (for dashboards).
pub async fn export_last_run(
    store: CheckpointStore,
    metrics: Metrics,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let last = store
            .with_connection(|conn| {
                conn.execute_batch(SCHEMA)?;
                use rusqlite::OptionalExtension;
                Ok(conn
                    .query_row(
                        "SELECT finished_at_ms, checked, missing, different, extra FROM verify_runs
                         ORDER BY finished_at_ms DESC LIMIT 1",
                        [],
                        |r| {
                            Ok((
                                r.get::<_, i64>(0)?,
                                r.get::<_, i64>(1)?,
                                r.get::<_, i64>(2)?,
                                r.get::<_, i64>(3)?,
                                r.get::<_, Option<i64>>(4)?,
                            ))
                        },
                    )
                    .optional()?)
            })
            .await;
        if let Ok(Some((at, checked, missing, different, extra))) = last {
            metrics.verify_last_run.set(at as f64 / 1000.0);
            metrics.verify_last_checked.set(checked);
            let by_class: BTreeMap<&str, i64> = [
                ("missing", missing),
                ("different", different),
                ("extra", extra.unwrap_or(0)),
            ]
            .into();
            for (class, n) in by_class {
                metrics
                    .verify_last_differences
                    .with_label_values(&[class])
                    .set(n);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_is_judged_against_the_table_image() {
        let doc = json!({"id": "a", "title": "t", "n": 1});
        assert!(judge(Some(&doc), Some(&doc)).is_none());
        assert!(judge(None, None).is_none());
        assert_eq!(judge(Some(&doc), None).unwrap().0, Class::Missing);
        assert_eq!(judge(None, Some(&doc)).unwrap().0, Class::Extra);
        let (class, fields) = judge(
            Some(&doc),
            Some(&json!({"id": "a", "title": "x", "extra": true})),
        )
        .unwrap();
        assert_eq!(class, Class::Different);
        assert_eq!(
            fields,
            vec![
                "extra only in the index".to_string(),
                "n missing in the index".into(),
                "title: \"t\" in the table, \"x\" in the index".into()
            ]
        );
    }

    #[test]
    fn an_item_key_is_read_back_from_a_document() {
        let types: HashMap<String, ScalarAttributeType> = [
            ("pk".to_string(), ScalarAttributeType::S),
            ("n".to_string(), ScalarAttributeType::N),
        ]
        .into();
        let names = vec!["pk".to_string(), "n".to_string()];
        let key =
            key_from_source(&json!({"pk": "POST#1", "n": 7, "x": 1}), &names, &types).unwrap();
        assert_eq!(key["pk"], AttributeValue::S("POST#1".into()));
        assert_eq!(key["n"], AttributeValue::N("7".into()));
        assert!(key_from_source(&json!({"pk": "p"}), &names, &types).is_none());
    }
}
