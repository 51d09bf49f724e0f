//! Deletes must outlive the backfill.
//!
//! A scan (or export) image carries a version from before the backfill started; a stream delete
//! of the same item, made after it was read, carries a higher one. Elasticsearch refuses the older
//! image only while the delete's tombstone lives — `index.gc_deletes`, 60 s by default. An export
//! reaches an item hours after its export time, and a scan page can wait in the pipeline through
//! an Elasticsearch outage: past 60 s the image would bring the deleted item back. So the backfill
//! raises the index's `gc_deletes` to `backfill.keep_deletes_for` (24 h) before it writes, keeps it
//! raised while it is interrupted, and puts the original back once it is complete. The original is
//! saved in the checkpoint file first, so a killed backfill restores it when it completes.

use std::time::Duration;

use rusqlite::{params, OptionalExtension};
use serde_json::{json, Value};

use crate::checkpoint::CheckpointStore;
use crate::config::Config;
use crate::es_client::{Answer, EsClient};
use crate::transform::route::Template;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS backfill_keep_deletes (
    index_name   TEXT NOT NULL,   -- a concrete index (an alias is resolved to those behind it)
    backfill     TEXT NOT NULL,   -- whose raise this is: the setting goes back after the last one
    original     TEXT,            -- the index's own setting before any; NULL: the default
    raised_at_ms INTEGER NOT NULL,
    PRIMARY KEY (index_name, backfill)
)";

/// An Elasticsearch time value (`60s`, `24h`, `500ms`, `2d`, `-1`: never) as a duration.
pub fn time_value(text: &str) -> Option<Duration> {
    if text.trim() == "-1" {
        return Some(Duration::MAX);
    }
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "nanos" => Duration::from_nanos(n),
        "micros" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        _ => return None,
    })
}

/// Raises `gc_deletes` of every index the backfill writes — each fixed index (created with the
/// setting when it does not exist yet) and every index that exists of each templated one
/// (`posts-{tenant}`: see [`watch`] for those that appear later) — for the backfill `backfill`
/// (no-op when `keep_deletes_for` is 0, or for an index that already keeps tombstones as long).
/// Returns since when every index this backfill raised has kept its deletes (ms since 1970),
/// if it raised anything.
pub async fn keep(
    config: &Config,
    store: &CheckpointStore,
    backfill: &str,
) -> anyhow::Result<Option<i64>> {
    let keep_for = config.backfill.keep_deletes_for;
    let targets = super::targets(config)?;
    if keep_for.is_zero() {
        tracing::warn!(indices = %super::target_names(&targets), "backfill.keep_deletes_for = 0: a stream delete older than index.gc_deletes can be undone by an older backfill image");
        return Ok(None);
    }
    for (text, template) in &targets {
        if template.as_literal().is_none() && template.wildcard().chars().all(|c| c == '*') {
            anyhow::bail!(
                "index `{text}` has no fixed part: the backfill cannot tell its indices from others' to keep their deletes. \
                 Give the name a fixed part (`{{entity}}-docs`), or set backfill.keep_deletes_for = \"0s\" to accept that a delete \
                 older than index.gc_deletes can be undone by an older backfill image"
            );
        }
    }
    let es = EsClient::new(&config.sink, &config.source.region).await?;
    // day one: every [[index]] is created as configured before anything else
    for d in crate::index_setup::desired(config)? {
        crate::index_setup::ensure(&es, &d).await?;
    }
    for (_, template) in &targets {
        raise(&es, store, keep_for, backfill, template).await?;
    }
    raised_since(store, backfill).await
}

/// While a backfill runs: every 15 s, [`sweep`]. Returns only on an error.
pub async fn watch(config: &Config, store: &CheckpointStore, backfill: &str) -> anyhow::Error {
    if config.backfill.keep_deletes_for.is_zero() {
        return std::future::pending().await;
    }
    let es = match EsClient::new(&config.sink, &config.source.region).await {
        Ok(es) => es,
        Err(e) => return e,
    };
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        if let Err(e) = sweep_with(&es, config, store, backfill).await {
            return e;
        }
    }
}

/// Raises again what the backfill's targets name now: the indices of a template that appeared
/// since (a stream delete creates its index, with the default `gc_deletes` of 60 s: raised
/// within 15 s, its tombstone is kept), a fixed name's index recreated or an alias moved to
/// another index. Indices this backfill keeps raised already are left as they are.
pub async fn sweep(config: &Config, store: &CheckpointStore, backfill: &str) -> anyhow::Result<()> {
    let es = EsClient::new(&config.sink, &config.source.region).await?;
    sweep_with(&es, config, store, backfill).await
}

async fn sweep_with(
    es: &EsClient,
    config: &Config,
    store: &CheckpointStore,
    backfill: &str,
) -> anyhow::Result<()> {
    let keep_for = config.backfill.keep_deletes_for;
    if keep_for.is_zero() {
        return Ok(());
    }
    for (_, template) in super::targets(config)? {
        raise(es, store, keep_for, backfill, &template).await?;
    }
    Ok(())
}

/// How often [`watch`] looks for new indices: well within the default `gc_deletes` (60 s).
const WATCH_EVERY: Duration = Duration::from_secs(15);

/// Raises `gc_deletes` of the indices `target` names: the index itself when it is fixed
/// (created with the setting when missing), every index its wildcard names when it is a
/// template — aliases resolved, and some the template may not write (`posts-archive` for
/// `posts-{tenant}`): keeping their tombstones a while longer costs little, missing one of
/// ours (an alias `posts-acme` over `acme-v1`) would undo a delete.
async fn raise(
    es: &EsClient,
    store: &CheckpointStore,
    keep_for: Duration,
    backfill: &str,
    target: &Template,
) -> anyhow::Result<()> {
    let value = format!("{}s", keep_for.as_secs().max(1));
    let fixed = target.as_literal();
    let expression = target.wildcard();
    let answer = call(es, "GET", &format!("/{expression}/_settings"), None).await?;
    let current: Vec<(String, Option<String>)> = match answer.status {
        404 if fixed.is_some() => {
            // the index does not exist yet: create it with the setting (templates apply)
            let create = json!({"settings": {"index": {"gc_deletes": value}}})
                .to_string()
                .into_bytes();
            let created = call(es, "PUT", &format!("/{expression}"), Some(create)).await?;
            if !(200..300).contains(&created.status)
                && !created.body.contains("resource_already_exists_exception")
            {
                anyhow::bail!("{}", refused(&expression, &value, &created));
            }
            vec![(expression.clone(), None)]
        }
        // no index of a template exists yet
        404 => Vec::new(),
        200..=299 => {
            let v: Value = serde_json::from_str(&answer.body)
                .map_err(|e| anyhow::anyhow!("index `{expression}` settings: not JSON ({e})"))?;
            v.as_object()
                .map(|m| {
                    m.iter()
                        .map(|(name, s)| {
                            let gc = s
                                .pointer("/settings/index/gc_deletes")
                                .and_then(Value::as_str)
                                .map(str::to_owned);
                            (name.clone(), gc)
                        })
                        .collect()
                })
                .unwrap_or_default()
        }
        _ => anyhow::bail!("{}", refused(&expression, &value, &answer)),
    };
    for (concrete, gc) in current {
        let others = rows_for(store, &concrete).await?;
        let keeps = gc
            .as_deref()
            .and_then(time_value)
            .is_some_and(|d| d >= keep_for);
        let original = match others.first() {
            // raised already by this backfill, and still raised
            _ if keeps && others.iter().any(|(b, _)| b == backfill) => continue,
            // raised already by another backfill of this file: its original is the index's own
            Some((_, original)) => original.clone(),
            None if keeps => continue,
            None => gc,
        };
        remember(store, &concrete, backfill, original).await?;
        let body = json!({"index": {"gc_deletes": value}})
            .to_string()
            .into_bytes();
        let put = call(es, "PUT", &format!("/{concrete}/_settings"), Some(body)).await?;
        if !(200..300).contains(&put.status) {
            anyhow::bail!("{}", refused(&concrete, &value, &put));
        }
        tracing::info!(index = %concrete, gc_deletes = %value, "deletes are kept while the backfill runs");
    }
    Ok(())
}

fn refused(index: &str, value: &str, answer: &Answer) -> String {
    format!(
        "cannot raise index.gc_deletes of `{index}` to {value} for the backfill (HTTP {}: {}); \
         without it a stream delete older than 60 s can be undone by an older backfill image. \
         Allow the setting (Amazon OpenSearch Service with fine-grained access control: \
         indices:monitor/settings/get and indices:admin/settings/update), or set \
         backfill.keep_deletes_for = \"0s\" to accept that risk",
        answer.status,
        answer.body.chars().take(300).collect::<String>()
    )
}

/// This backfill is complete: its raise ends, and an index's own `gc_deletes` goes back once no
/// other backfill of this file keeps it raised.
pub async fn restore(
    config: &Config,
    store: &CheckpointStore,
    backfill: &str,
) -> anyhow::Result<()> {
    let mine = own_rows(store, backfill).await?;
    if mine.is_empty() {
        return Ok(());
    }
    let es = EsClient::new(&config.sink, &config.source.region).await?;
    for (concrete, original) in mine {
        let others = rows_for(store, &concrete).await?;
        if others.iter().all(|(b, _)| b == backfill) {
            let body = json!({"index": {"gc_deletes": original}})
                .to_string()
                .into_bytes();
            let answer = call(&es, "PUT", &format!("/{concrete}/_settings"), Some(body)).await?;
            if !(200..300).contains(&answer.status) && answer.status != 404 {
                anyhow::bail!(
                    "the backfill is complete, but index.gc_deletes of `{concrete}` could not be put back to {} (HTTP {}: {})",
                    original.as_deref().unwrap_or("its default"),
                    answer.status,
                    answer.body.chars().take(300).collect::<String>()
                );
            }
            tracing::info!(index = %concrete, gc_deletes = original.as_deref().unwrap_or("default"), "index.gc_deletes put back");
        }
        forget(store, &concrete, backfill).await?;
    }
    Ok(())
}

async fn call(
    es: &EsClient,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<Answer> {
    let mut attempt = 0;
    loop {
        match es.call(method, path, body.clone()).await {
            Ok(a) if a.status != 429 && a.status < 500 => return Ok(a),
            Ok(a) if attempt >= 8 => {
                anyhow::bail!("{method} {path}: HTTP {}: {}", a.status, a.body)
            }
            Err(e) if attempt >= 8 => anyhow::bail!("{method} {path}: {e}"),
            _ => {}
        }
        attempt += 1;
        tokio::time::sleep(crate::retry::Backoff::AWS.delay(attempt)).await;
    }
}

/// Every backfill keeping `index` raised, with the index's own setting.
async fn rows_for(
    store: &CheckpointStore,
    index: &str,
) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let index = index.to_string();
    Ok(store
        .with_connection(move |conn| {
            conn.execute_batch(SCHEMA)?;
            let mut stmt = conn.prepare(
                "SELECT backfill, original FROM backfill_keep_deletes WHERE index_name = ?1",
            )?;
            let rows = stmt.query_map(params![index], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await?)
}

/// The indices `backfill` keeps raised, with their own settings.
async fn own_rows(
    store: &CheckpointStore,
    backfill: &str,
) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let backfill = backfill.to_string();
    Ok(store
        .with_connection(move |conn| {
            conn.execute_batch(SCHEMA)?;
            let mut stmt = conn.prepare(
                "SELECT index_name, original FROM backfill_keep_deletes WHERE backfill = ?1",
            )?;
            let rows = stmt.query_map(params![backfill], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await?)
}

/// Since when every index `backfill` raised has kept its deletes (its latest raise: an index
/// first raised late, found by a template's wildcard, has kept them only since then).
async fn raised_since(store: &CheckpointStore, backfill: &str) -> anyhow::Result<Option<i64>> {
    let backfill = backfill.to_string();
    Ok(store
        .with_connection(move |conn| {
            conn.execute_batch(SCHEMA)?;
            Ok(conn
                .query_row(
                    "SELECT MAX(raised_at_ms) FROM backfill_keep_deletes WHERE backfill = ?1",
                    params![backfill],
                    |r| r.get::<_, Option<i64>>(0),
                )
                .optional()?
                .flatten())
        })
        .await?)
}

async fn remember(
    store: &CheckpointStore,
    index: &str,
    backfill: &str,
    original: Option<String>,
) -> anyhow::Result<()> {
    let (index, backfill) = (index.to_string(), backfill.to_string());
    store
        .with_connection(move |conn| {
            conn.execute_batch(SCHEMA)?;
            // a resumed backfill keeps the time of its first raise
            conn.execute(
                "INSERT OR IGNORE INTO backfill_keep_deletes (index_name, backfill, original, raised_at_ms)
                 VALUES (?1, ?2, ?3, ?4)",
                params![index, backfill, original, crate::checkpoint::now_ms()],
            )?;
            Ok(())
        })
        .await?;
    Ok(())
}

async fn forget(store: &CheckpointStore, index: &str, backfill: &str) -> anyhow::Result<()> {
    let (index, backfill) = (index.to_string(), backfill.to_string());
    store
        .with_connection(move |conn| {
            conn.execute(
                "DELETE FROM backfill_keep_deletes WHERE index_name = ?1 AND backfill = ?2",
                params![index, backfill],
            )?;
            Ok(())
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elasticsearch_time_values_are_read() {
        assert_eq!(time_value("60s"), Some(Duration::from_secs(60)));
        assert_eq!(time_value("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(time_value("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(time_value("2d"), Some(Duration::from_secs(172_800)));
        assert_eq!(time_value("-1"), Some(Duration::MAX));
        assert_eq!(time_value("soon"), None);
        assert_eq!(time_value("10"), None);
    }
}
