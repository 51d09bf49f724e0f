//! An Elasticsearch-compatible test server with fault injection. Test bed only: it is never
//! compiled into the `sluice` binary.
//!
//! Faithful to the documented behaviour sluice depends on: `_bulk` NDJSON (index, create,
//! delete), per-item results in request order with the `errors` flag, `version_type=external`
//! (applied only when strictly greater, else 409; `external_gte` when greater or equal), deletes
//! leaving a versioned tombstone for `gc_deletes` (60 s), dynamic mapping that rejects a value of
//! the wrong type with 400 `mapper_parsing_exception`, `GET _doc`, `_count`, `_search`
//! (match_all, term, ids, size/from), `_refresh`, index create/delete, and the
//! `X-Elastic-Product` header Elasticsearch 8 sends.
//!
//! With an upstream URL it becomes a fault-injecting proxy in front of a real cluster, so the
//! same tests run against Elasticsearch or OpenSearch: faulted items are answered here, the rest
//! are forwarded and the answers merged back in request order.
//!
//! Requests carrying `x-fake-bypass: 1` skip every fault (test assertions use it).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::watch;

pub mod sigv4;

/// Faults applied to `_bulk` requests. Rates are probabilities in [0, 1].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Faults {
    /// Whole request answered 429 with no items.
    pub bulk_429_rate: f64,
    /// Whole request answered 503.
    pub bulk_503_rate: f64,
    /// Each item independently answered 429 (not applied).
    pub item_429_rate: f64,
    /// Each item independently answered 400 mapper_parsing_exception (not applied).
    pub item_400_rate: f64,
    /// Connection closed without a complete answer (half before, half after applying).
    pub drop_rate: f64,
    /// Probability of a stall of `stall_ms` before answering.
    pub stall_rate: f64,
    pub stall_ms: u64,
    /// Fixed delay before answering every bulk request.
    pub delay_ms: u64,
}

/// Counters tests can read.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    pub bulk_requests: u64,
    pub bulk_429: u64,
    pub bulk_503: u64,
    pub item_429: u64,
    pub item_400: u64,
    pub dropped: u64,
    pub stalled: u64,
    pub items: u64,
    /// Externally versioned items whose (index, id, version) was received before: with
    /// versions reproduced on replay, exactly the re-delivered changes (and item retries).
    pub redelivered: u64,
    /// Externally versioned items whose (index, id, version) was received before with a
    /// *different* action or source: one version meaning two document states. With versions
    /// that order changes, this stays 0 — whoever sends them (a deposed worker, a replay).
    pub divergent: u64,
    /// Externally versioned writes *applied* with a version below one applied to the same
    /// document before (possible only once a delete's tombstone is gone: `gc_deletes`): a
    /// document moved backwards. The test server remembers every document's highest version
    /// for ever, to catch exactly that.
    pub applied_backwards: u64,
    /// Writes and deletes of a document with another custom routing than the one it was
    /// written with. With one primary shard (as here) they reach it; with several, Elasticsearch
    /// would send them to another shard — a second copy, or a delete that misses.
    pub routing_mismatches: u64,
    /// Requests refused for a missing or wrong SigV4 signature.
    pub unsigned: u64,
    /// Requests that came gzip-compressed.
    pub gzipped: u64,
}

#[derive(Debug, Clone)]
struct Doc {
    source: Value,
    version: u64,
    seq_no: u64,
    /// Custom routing it was written with. Each index here has one primary shard, so, as in
    /// Elasticsearch with one shard, routing places nothing apart; it is kept and shown.
    routing: Option<String>,
}

#[derive(Debug, Default)]
struct Index {
    docs: BTreeMap<String, Doc>,
    /// id → (version, when deleted)
    tombstones: HashMap<String, (u64, Instant)>,
    /// dynamic mapping: dotted field path → type
    mapping: HashMap<String, FieldType>,
    seq_no: u64,
    /// `index.blocks.write`: every write answered 403 cluster_block_exception.
    block_write: bool,
    /// `index.blocks.read_only_allow_delete` (the flood-stage disk watermark): writes other
    /// than deletes answered 429 cluster_block_exception (Elasticsearch 7.7+).
    block_read_only_allow_delete: bool,
    /// Index settings as `GET /{index}` answers them: nested under `index`, values as strings.
    settings: Map<String, Value>,
    /// The `mappings` of the creation request, as given (dynamic fields are not added).
    mappings: Value,
    /// Aliases of this index and their properties (`is_write_index`, …).
    aliases: Map<String, Value>,
    /// `index.gc_deletes`: how long a delete's tombstone is kept (default: the server's, 60 s).
    gc_deletes: Option<Duration>,
}

impl Index {
    /// An index created by its first write (`action.auto_create_index`): default settings and a
    /// dynamic mapping.
    fn auto_created(name: &str) -> Index {
        let settings: BTreeMap<String, Value> = [
            ("index.number_of_shards".to_string(), json!("1")),
            ("index.number_of_replicas".to_string(), json!("1")),
            ("index.provided_name".to_string(), json!(name)),
        ]
        .into();
        Index {
            settings: nested(&settings),
            mappings: json!({}),
            ..Index::default()
        }
    }
}

/// The index a name means: the index itself, or the write index of an alias of that name (the
/// only index behind it, or the one marked `is_write_index`). Unknown names come back as given.
fn resolve(indices: &BTreeMap<String, Index>, name: &str) -> String {
    if indices.contains_key(name) {
        return name.to_string();
    }
    let behind: Vec<(&String, &Index)> = indices
        .iter()
        .filter(|(_, i)| i.aliases.contains_key(name))
        .collect();
    let flag = |i: &Index| {
        i.aliases[name]
            .get("is_write_index")
            .and_then(Value::as_bool)
    };
    let write = behind.iter().find(|(_, i)| flag(i) == Some(true));
    match (write, behind.as_slice()) {
        (Some((n, _)), _) => (*n).clone(),
        // one index behind the alias is its write index unless marked otherwise
        (None, [(n, i)]) if flag(i) != Some(false) => (*n).clone(),
        _ => name.to_string(),
    }
}

/// The concrete indices an index expression names: a comma-separated list of index names,
/// alias names and `*` wildcards over both. `None`: a name without a wildcard matches nothing
/// (Elasticsearch answers 404); a wildcard that matches nothing is no error.
fn expand(indices: &BTreeMap<String, Index>, expression: &str) -> Option<Vec<String>> {
    fn glob(pattern: &str, name: &str) -> bool {
        match pattern.split_once('*') {
            None => pattern == name,
            Some((head, tail)) => {
                let Some(rest) = name.strip_prefix(head) else {
                    return false;
                };
                (0..=rest.len())
                    .filter(|i| rest.is_char_boundary(*i))
                    .any(|i| glob(tail, &rest[i..]))
            }
        }
    }
    let mut out = std::collections::BTreeSet::new();
    for part in expression.split(',') {
        let named: Vec<&String> = indices
            .iter()
            .filter(|(n, i)| glob(part, n) || i.aliases.keys().any(|a| glob(part, a)))
            .map(|(n, _)| n)
            .collect();
        if named.is_empty() && !part.contains('*') {
            return None;
        }
        out.extend(named.into_iter().cloned());
    }
    Some(out.into_iter().collect())
}

/// An alias with no write index: writes through it are refused (Elasticsearch's answer).
fn alias_without_write_index(indices: &BTreeMap<String, Index>, name: &str) -> bool {
    !indices.contains_key(name) && indices.values().any(|i| i.aliases.contains_key(name))
}

/// Settings of an index creation, nested or flat (`{"index": {"number_of_shards": 1}}`,
/// `{"number_of_shards": 1}`, `{"index.number_of_shards": "1"}`), as Elasticsearch stores them:
/// dotted paths under `index.`, every value a string.
fn normalised_settings(given: &Value) -> BTreeMap<String, Value> {
    fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, v, out);
                }
            }
            Value::Array(items) => {
                let strings = items
                    .iter()
                    .map(|i| Value::String(i.as_str().map_or_else(|| i.to_string(), str::to_owned)))
                    .collect();
                out.insert(prefix.to_string(), Value::Array(strings));
            }
            Value::String(t) => {
                out.insert(prefix.to_string(), Value::String(t.clone()));
            }
            Value::Null => {}
            other => {
                out.insert(prefix.to_string(), Value::String(other.to_string()));
            }
        }
    }
    let mut flat = BTreeMap::new();
    flatten("", given, &mut flat);
    flat.into_iter()
        .map(|(k, v)| {
            let k = if k.starts_with("index.") {
                k
            } else {
                format!("index.{k}")
            };
            (k, v)
        })
        .collect()
}

/// Dotted paths back into nested objects (how `GET /{index}` shows settings).
fn nested(flat: &BTreeMap<String, Value>) -> Map<String, Value> {
    let mut root = Map::new();
    for (path, v) in flat {
        let mut at = &mut root;
        let parts: Vec<&str> = path.split('.').collect();
        for p in &parts[..parts.len() - 1] {
            let slot = at
                .entry(p.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                // `a` and `a.b` both set: the deeper one wins
                *slot = Value::Object(Map::new());
            }
            at = slot.as_object_mut().expect("made an object above");
        }
        at.insert(parts[parts.len() - 1].to_string(), v.clone());
    }
    root
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldType {
    Long,
    Float,
    Text,
    Boolean,
    Object,
}

struct Shared {
    indices: Mutex<BTreeMap<String, Index>>,
    faults: Mutex<Faults>,
    stats: Mutex<Stats>,
    /// true: every bulk request hangs (connection accepted, never answered) until false.
    hold: watch::Sender<bool>,
    gc_deletes: Duration,
    upstream: Option<String>,
    http: reqwest::Client,
    seq: AtomicU64,
    /// (index, id) → the highest external version ever applied, never forgotten.
    highest: Mutex<HashMap<(String, String), u64>>,
    /// (index, id, version) → the action and source first received with it.
    seen: Mutex<HashMap<(String, String, String), u64>>,
    max_content_length: usize,
    /// `action.auto_create_index` (true by default, as in Elasticsearch).
    auto_create_index: std::sync::atomic::AtomicBool,
    /// When set, every request must carry a valid SigV4 signature (Amazon OpenSearch Service).
    sigv4: Mutex<Option<sigv4::SigV4Keys>>,
    /// Open scrolls: id → the hits left to return (a snapshot taken at the first search) and the
    /// page size.
    scrolls: Mutex<HashMap<String, (VecDeque<Value>, usize, usize)>>,
    /// Fast mode (benchmarks): `_bulk` keeps only each document's version and when it was
    /// first written, not its source; see [`FakeEs::start_fast`].
    fast: Option<Mutex<FastStore>>,
}

/// What fast mode keeps per document: enough to answer every item as Elasticsearch would
/// (external versions, 409 on a stale one, `not_found` deletes), nothing of the source.
#[derive(Default)]
struct FastStore {
    /// (index, id) → (version, deleted)
    versions: HashMap<(String, String), (u64, bool)>,
    /// id → when a write for it was first acknowledged (for latency figures).
    first_seen: HashMap<String, Instant>,
    seq_no: u64,
}

impl Shared {
    fn new(upstream: Option<String>) -> Self {
        Shared {
            indices: Mutex::default(),
            faults: Mutex::default(),
            stats: Mutex::default(),
            hold: watch::channel(false).0,
            gc_deletes: Duration::from_secs(60),
            upstream: upstream.map(|u| u.trim_end_matches('/').to_string()),
            http: reqwest::Client::new(),
            seq: AtomicU64::new(0),
            seen: Mutex::default(),
            highest: Mutex::default(),
            max_content_length: 100 * 1024 * 1024,
            auto_create_index: std::sync::atomic::AtomicBool::new(true),
            sigv4: Mutex::default(),
            scrolls: Mutex::default(),
            fast: None,
        }
    }
}

/// A running server. Dropping it stops it.
pub struct FakeEs {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeEs {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeEs {
    /// In-memory Elasticsearch on a free loopback port.
    pub async fn start() -> std::io::Result<FakeEs> {
        Self::start_with("127.0.0.1:0".parse().unwrap(), None).await
    }

    /// `upstream`: proxy to this real cluster instead of the in-memory store.
    pub async fn start_with(addr: SocketAddr, upstream: Option<String>) -> std::io::Result<FakeEs> {
        Self::start_limited(addr, upstream, 100 * 1024 * 1024).await
    }

    /// With a request size limit (`http.max_content_length`): larger requests get 413.
    pub async fn start_limited(
        addr: SocketAddr,
        upstream: Option<String>,
        max_content_length: usize,
    ) -> std::io::Result<FakeEs> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let mut shared = Shared::new(upstream);
        shared.max_content_length = max_content_length;
        let shared = Arc::new(shared);
        let app = router(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeEs { addr, shared, task })
    }

    /// Fast mode, for benchmarks: `_bulk` answers every item as Elasticsearch would
    /// (external versions applied only when greater, else 409; deletes of missing documents
    /// `not_found`) from a table of versions alone — sources are not parsed or stored, no
    /// mapping, no faults, no history checks — so the sink side costs little next to sluice.
    pub async fn start_fast() -> std::io::Result<FakeEs> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut shared = Shared::new(None);
        shared.fast = Some(Mutex::default());
        let shared = Arc::new(shared);
        let app = router(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeEs { addr, shared, task })
    }

    /// Fast mode: documents whose latest write is not a delete, over every index.
    pub fn fast_live_documents(&self) -> usize {
        self.shared.fast.as_ref().map_or(0, |f| {
            f.lock()
                .unwrap()
                .versions
                .values()
                .filter(|(_, deleted)| !deleted)
                .count()
        })
    }

    /// Fast mode: when a write for `id` was first acknowledged, if it was.
    pub fn fast_first_seen(&self, ids: &[String]) -> Vec<Option<Instant>> {
        self.shared.fast.as_ref().map_or_else(Vec::new, |f| {
            let f = f.lock().unwrap();
            ids.iter().map(|id| f.first_seen.get(id).copied()).collect()
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults.lock().unwrap() = faults;
    }

    /// Every `_bulk` request hangs until [`FakeEs::release`].
    pub fn hold(&self) {
        self.shared.hold.send_replace(true);
    }

    pub fn release(&self) {
        self.shared.hold.send_replace(false);
    }

    /// From now on, every request must be signed (SigV4) with one of these credentials.
    pub fn require_sigv4(&self, keys: sigv4::SigV4Keys) {
        *self.shared.sigv4.lock().unwrap() = Some(keys);
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats.lock().unwrap().clone()
    }

    /// The custom routing of every document of `index` that was written with one.
    pub fn routings(&self, index: &str) -> BTreeMap<String, String> {
        let indices = self.shared.indices.lock().unwrap();
        indices
            .get(&resolve(&indices, index))
            .map(|i| {
                i.docs
                    .iter()
                    .filter_map(|(id, d)| Some((id.clone(), d.routing.clone()?)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every document of `index` as `_id → _source`, read in process: for assertions on more
    /// documents than one search returns (10,000, as in Elasticsearch).
    pub fn documents(&self, index: &str) -> BTreeMap<String, Value> {
        let indices = self.shared.indices.lock().unwrap();
        indices
            .get(&resolve(&indices, index))
            .map(|i| {
                i.docs
                    .iter()
                    .map(|(id, d)| (id.clone(), d.source.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(info))
        .route("/_bulk", post(bulk_root).put(bulk_root))
        .route("/_fake/faults", get(get_faults).put(put_faults))
        .route(
            "/_fake/hold",
            post(|State(s): State<Arc<Shared>>| async move {
                s.hold.send_replace(true);
                "held\n"
            }),
        )
        .route(
            "/_fake/release",
            post(|State(s): State<Arc<Shared>>| async move {
                s.hold.send_replace(false);
                "released\n"
            }),
        )
        .route(
            "/_fake/stats",
            get(|State(s): State<Arc<Shared>>| async move {
                axum::Json(s.stats.lock().unwrap().clone())
            }),
        )
        .route(
            "/{index}",
            axum::routing::put(create_index)
                .delete(delete_index)
                .head(index_exists)
                .get(index_exists),
        )
        .route("/{index}/_bulk", post(bulk_index).put(bulk_index))
        .route("/{index}/_doc/{id}", get(get_doc))
        .route("/{index}/_count", get(count).post(count))
        .route("/{index}/_search", get(search).post(search))
        .route("/{index}/_mget", get(mget).post(mget))
        .route("/_mget", get(mget_root).post(mget_root))
        .route(
            "/_search/scroll",
            get(scroll_next).post(scroll_next).delete(scroll_clear),
        )
        .route("/{index}/_refresh", post(refresh).get(refresh))
        .route(
            "/{index}/_settings",
            axum::routing::put(put_index_settings).get(get_index_settings),
        )
        .route(
            "/_cluster/settings",
            axum::routing::put(put_cluster_settings),
        )
        // SigV4 (when required) is checked over the bytes received, then gzip is undone
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            authenticate_and_decompress,
        ))
        // Elasticsearch's http.max_content_length (100 MB by default); tests may lower it
        .layer(axum::extract::DefaultBodyLimit::max(
            shared.max_content_length,
        ))
        .layer(axum::middleware::map_response(
            |mut r: Response| async move {
                r.headers_mut().insert(
                    "x-elastic-product",
                    HeaderValue::from_static("Elasticsearch"),
                );
                r
            },
        ))
        .with_state(shared)
}

/// Checks the signature of a request (when SigV4 is required) over the bytes as received, then
/// undoes `Content-Encoding: gzip` for the handlers.
async fn authenticate_and_decompress(
    State(s): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let keys = s.sigv4.lock().unwrap().clone();
    let gzipped = request
        .headers()
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let fake_api = request.uri().path().starts_with("/_fake") || bypass(request.headers());
    if (keys.is_none() || fake_api) && !gzipped {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, s.max_content_length).await {
        Ok(b) => b,
        Err(_) => {
            return es_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "content_too_long_exception",
                "request body too large",
            )
        }
    };
    if let (Some(keys), false) = (&keys, fake_api) {
        if let Err(message) = sigv4::check(keys, &parts.method, &parts.uri, &parts.headers, &bytes)
        {
            s.stats.lock().unwrap().unsigned += 1;
            return es_json(StatusCode::FORBIDDEN, json!({ "message": message }));
        }
    }
    let bytes = if gzipped {
        let mut out = Vec::new();
        if std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut out)
            .is_err()
        {
            return es_error(
                StatusCode::BAD_REQUEST,
                "parse_exception",
                "request body is not valid gzip",
            );
        }
        parts.headers.remove("content-encoding");
        s.stats.lock().unwrap().gzipped += 1;
        Bytes::from(out)
    } else {
        bytes
    };
    next.run(axum::extract::Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn es_json(status: StatusCode, body: Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    r
}

fn es_error(status: StatusCode, ty: &str, reason: &str) -> Response {
    es_json(
        status,
        json!({"error": {"root_cause": [{"type": ty, "reason": reason}], "type": ty, "reason": reason}, "status": status.as_u16()}),
    )
}

async fn info() -> Response {
    es_json(
        StatusCode::OK,
        json!({
            "name": "es-fake", "cluster_name": "sluice-testbed", "cluster_uuid": "sluice-testbed",
            "version": {"number": "8.15.0", "build_flavor": "default", "lucene_version": "9.11.1",
                        "minimum_wire_compatibility_version": "7.17.0", "minimum_index_compatibility_version": "7.0.0"},
            "tagline": "You Know, for Search"
        }),
    )
}

async fn get_faults(State(s): State<Arc<Shared>>) -> Response {
    es_json(
        StatusCode::OK,
        serde_json::to_value(s.faults.lock().unwrap().clone()).unwrap(),
    )
}

async fn put_faults(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Faults>(&body) {
        Ok(f) => {
            *s.faults.lock().unwrap() = f;
            es_json(StatusCode::OK, json!({"acknowledged": true}))
        }
        Err(e) => es_error(StatusCode::BAD_REQUEST, "parse_exception", &e.to_string()),
    }
}

fn bypass(headers: &HeaderMap) -> bool {
    headers.get("x-fake-bypass").is_some()
}

/// Forwards a request unchanged to the upstream cluster.
async fn forward(s: &Shared, method: Method, uri: &Uri, body: Bytes) -> Response {
    let upstream = s
        .upstream
        .as_ref()
        .expect("forward is only called with an upstream");
    let url = format!(
        "{upstream}{}",
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    let req = s
        .http
        .request(method, url)
        .header("content-type", "application/json")
        .body(body);
    match req.send().await {
        Ok(r) => {
            let status =
                StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let bytes = r.bytes().await.unwrap_or_default();
            let mut resp = (status, bytes).into_response();
            resp.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            resp
        }
        Err(e) => es_error(StatusCode::BAD_GATEWAY, "proxy_exception", &e.to_string()),
    }
}

async fn create_index(
    State(s): State<Arc<Shared>>,
    Path(index): Path<String>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    if s.upstream.is_some() {
        return forward(&s, method, &uri, body).await;
    }
    let req: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return es_error(StatusCode::BAD_REQUEST, "parse_exception", &e.to_string()),
        }
    };
    let mut mapping = HashMap::new();
    if let Some(properties) = req
        .pointer("/mappings/properties")
        .and_then(Value::as_object)
    {
        if let Err(e) = explicit_mapping(&mut mapping, "", properties) {
            return es_error(StatusCode::BAD_REQUEST, "mapper_parsing_exception", &e);
        }
    }
    let mut settings = normalised_settings(req.get("settings").unwrap_or(&json!({})));
    settings
        .entry("index.number_of_shards".into())
        .or_insert_with(|| json!("1"));
    settings
        .entry("index.number_of_replicas".into())
        .or_insert_with(|| json!("1"));
    settings.insert("index.provided_name".into(), json!(index));
    let aliases = req
        .get("aliases")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut indices = s.indices.lock().unwrap();
    if indices.contains_key(&index) {
        return es_error(
            StatusCode::BAD_REQUEST,
            "resource_already_exists_exception",
            &format!("index [{index}] already exists"),
        );
    }
    if indices.values().any(|i| i.aliases.contains_key(&index)) {
        return es_error(
            StatusCode::BAD_REQUEST,
            "invalid_index_name_exception",
            &format!("Invalid index name [{index}], already exists as alias"),
        );
    }
    if let Some(clash) = aliases.keys().find(|a| indices.contains_key(*a)) {
        return es_error(
            StatusCode::BAD_REQUEST,
            "invalid_alias_name_exception",
            &format!("Invalid alias name [{clash}]: an index or data stream exists with the same name as the alias"),
        );
    }
    indices.insert(
        index.clone(),
        Index {
            mapping,
            gc_deletes: settings
                .get("index.gc_deletes")
                .and_then(Value::as_str)
                .and_then(time_value),
            settings: nested(&settings),
            mappings: req.get("mappings").cloned().unwrap_or_else(|| json!({})),
            aliases,
            ..Index::default()
        },
    );
    es_json(
        StatusCode::OK,
        json!({"acknowledged": true, "shards_acknowledged": true, "index": index}),
    )
}

async fn delete_index(
    State(s): State<Arc<Shared>>,
    Path(index): Path<String>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    if s.upstream.is_some() {
        return forward(&s, method, &uri, body).await;
    }
    match s.indices.lock().unwrap().remove(&index) {
        Some(_) => es_json(StatusCode::OK, json!({"acknowledged": true})),
        None => not_found_index(&index),
    }
}

async fn index_exists(
    State(s): State<Arc<Shared>>,
    Path(index): Path<String>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    if s.upstream.is_some() {
        return forward(&s, method, &uri, body).await;
    }
    let indices = s.indices.lock().unwrap();
    // an index by its name, or every index behind an alias of that name
    let answer: Map<String, Value> = indices
        .iter()
        .filter(|(n, i)| **n == index || i.aliases.contains_key(&index))
        .map(|(n, i)| {
            (
                n.clone(),
                json!({"aliases": i.aliases, "mappings": i.mappings, "settings": i.settings}),
            )
        })
        .collect();
    if answer.is_empty() {
        not_found_index(&index)
    } else {
        es_json(StatusCode::OK, Value::Object(answer))
    }
}

/// A setting given nested (`{"index": {"blocks": {"write": true}}}`) or flat
/// (`{"index.blocks.write": true}`), as Elasticsearch accepts both; `null` resets it.
fn setting(body: &Value, dotted: &str) -> Option<Value> {
    if let Some(v) = body.get(dotted) {
        return Some(v.clone());
    }
    let parts: Vec<&str> = dotted.split('.').collect();
    for split in 1..parts.len() {
        let (head, tail) = parts.split_at(split);
        if let Some(inner) = body.get(head.join(".")) {
            if let Some(v) = setting(inner, &tail.join(".")) {
                return Some(v);
            }
        }
    }
    None
}

fn flag(v: &Value) -> bool {
    v.as_bool()
        .or_else(|| v.as_str().map(|s| s == "true"))
        .unwrap_or(false)
}

/// `PUT /{index}/_settings`: the write blocks (`index.blocks.write`,
/// `index.blocks.read_only_allow_delete`).
async fn put_index_settings(
    State(s): State<Arc<Shared>>,
    Path(index): Path<String>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    if s.upstream.is_some() {
        return forward(&s, method, &uri, body).await;
    }
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return es_error(StatusCode::BAD_REQUEST, "parse_exception", &e.to_string()),
    };
    let mut indices = s.indices.lock().unwrap();
    // an index by its name, every index behind an alias of that name, or a wildcard's
    let Some(targets) = expand(&indices, &index) else {
        return not_found_index(&index);
    };
    for name in targets {
        let idx = indices.get_mut(&name).expect("listed above");
        if let Err(answer) = apply_settings(idx, &req) {
            return answer;
        }
    }
    es_json(StatusCode::OK, json!({"acknowledged": true}))
}

/// The dynamic settings the test server models, applied to one index.
fn apply_settings(idx: &mut Index, req: &Value) -> Result<(), Response> {
    if let Some(v) = setting(req, "index.blocks.write") {
        idx.block_write = flag(&v);
    }
    if let Some(v) = setting(req, "index.blocks.read_only_allow_delete") {
        idx.block_read_only_allow_delete = flag(&v);
    }
    if let Some(v) = setting(req, "index.gc_deletes") {
        let given = match &v {
            Value::Null => None,
            other => {
                let text = other
                    .as_str()
                    .map_or_else(|| other.to_string(), str::to_owned);
                match time_value(&text) {
                    Some(d) => Some((d, text)),
                    None => {
                        return Err(es_error(
                            StatusCode::BAD_REQUEST,
                            "illegal_argument_exception",
                            &format!("failed to parse setting [index.gc_deletes] with value [{text}] as a time value: unit is missing or unrecognized"),
                        ))
                    }
                }
            }
        };
        idx.gc_deletes = given.as_ref().map(|(d, _)| *d);
        let index_settings = idx
            .settings
            .entry("index".to_string())
            .or_insert_with(|| json!({}));
        if let Some(m) = index_settings.as_object_mut() {
            match given {
                Some((_, text)) => {
                    m.insert("gc_deletes".into(), Value::String(text));
                }
                None => {
                    m.remove("gc_deletes");
                }
            }
        }
    }
    Ok(())
}

/// `GET /{index}/_settings`: the settings as `GET /{index}` shows them, per concrete index.
async fn get_index_settings(
    State(s): State<Arc<Shared>>,
    Path(index): Path<String>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    if s.upstream.is_some() {
        return forward(&s, method, &uri, body).await;
    }
    let indices = s.indices.lock().unwrap();
    let Some(names) = expand(&indices, &index) else {
        return not_found_index(&index);
    };
    let answer: Map<String, Value> = names
        .into_iter()
        .map(|n| {
            let settings = json!({ "settings": indices[&n].settings });
            (n, settings)
        })
        .collect();
    es_json(StatusCode::OK, Value::Object(answer))
}

/// An Elasticsearch time value: `500ms`, `60s`, `10m`, `24h`, `2d` (`-1`: never).
fn time_value(text: &str) -> Option<Duration> {
    if text == "-1" {
        return Some(Duration::MAX);
    }
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86_400),
        _ => return None,
    })
}

/// `PUT /_cluster/settings`: `action.auto_create_index` (persistent or transient).
async fn put_cluster_settings(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    if s.upstream.is_some() {
        return forward(&s, method, &uri, body).await;
    }
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return es_error(StatusCode::BAD_REQUEST, "parse_exception", &e.to_string()),
    };
    for scope in ["persistent", "transient"] {
        if let Some(v) = req
            .get(scope)
            .and_then(|b| setting(b, "action.auto_create_index"))
        {
            let on = v.is_null() || flag(&v);
            s.auto_create_index.store(on, Ordering::Relaxed);
        }
    }
    es_json(
        StatusCode::OK,
        json!({"acknowledged": true, "persistent": req.get("persistent").cloned().unwrap_or(json!({})), "transient": req.get("transient").cloned().unwrap_or(json!({}))}),
    )
}

fn not_found_index(index: &str) -> Response {
    es_error(
        StatusCode::NOT_FOUND,
        "index_not_found_exception",
        &format!("no such index [{index}]"),
    )
}

async fn refresh(State(s): State<Arc<Shared>>, method: Method, uri: Uri, body: Bytes) -> Response {
    if s.upstream.is_some() {
        return forward(&s, method, &uri, body).await;
    }
    es_json(
        StatusCode::OK,
        json!({"_shards": {"total": 1, "successful": 1, "failed": 0}}),
    )
}

async fn get_doc(
    State(s): State<Arc<Shared>>,
    Path((index, id)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    if s.upstream.is_some() {
        return forward(&s, method, &uri, body).await;
    }
    let indices = s.indices.lock().unwrap();
    let index = resolve(&indices, &index);
    let Some(idx) = indices.get(&index) else {
        return not_found_index(&index);
    };
    match idx.docs.get(&id) {
        Some(d) => {
            let mut doc = json!({"_index": index, "_id": id, "_version": d.version, "_seq_no": d.seq_no, "_primary_term": 1, "found": true, "_source": d.source});
            if let Some(r) = &d.routing {
                doc["_routing"] = json!(r);
            }
            es_json(StatusCode::OK, doc)
        }
        None => es_json(
            StatusCode::NOT_FOUND,
            json!({"_index": index, "_id": id, "found": false}),
        ),
    }
}

#[derive(Deserialize, Default)]
struct SearchParams {
    size: Option<usize>,
    from: Option<usize>,
    /// Keep-alive of a scroll (`1m`): the hits are taken once and returned page by page.
    scroll: Option<String>,
}

/// `GET|POST /{index}/_mget` with `{"ids": […]}` or `{"docs": [{"_id": …}]}`: one answer per id,
/// in order, `found` or not.
async fn mget(
    State(s): State<Arc<Shared>>,
    Path(index): Path<String>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    mget_in(s, Some(index), method, uri, body).await
}

/// `GET|POST /_mget` with `{"docs": [{"_index": …, "_id": …, "routing": …}]}`.
async fn mget_root(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    mget_in(s, None, method, uri, body).await
}

async fn mget_in(
    s: Arc<Shared>,
    index: Option<String>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    if s.upstream.is_some() {
        return forward(&s, method, &uri, body).await;
    }
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return es_error(StatusCode::BAD_REQUEST, "parsing_exception", &e.to_string()),
    };
    // (index, id) of each document asked for
    let wanted: Vec<(Option<String>, String)> = match (req.get("ids"), req.get("docs")) {
        (Some(Value::Array(ids)), _) if index.is_some() => ids
            .iter()
            .filter_map(|i| Some((index.clone(), i.as_str()?.to_owned())))
            .collect(),
        (_, Some(Value::Array(docs))) => docs
            .iter()
            .filter_map(|d| {
                let named = d.get("_index").and_then(Value::as_str).map(str::to_owned);
                Some((
                    named.or_else(|| index.clone()),
                    d.get("_id")?.as_str()?.to_owned(),
                ))
            })
            .collect(),
        _ => Vec::new(),
    };
    if wanted.is_empty() {
        return es_error(
            StatusCode::BAD_REQUEST,
            "action_request_validation_exception",
            "Validation Failed: 1: no documents to get;",
        );
    }
    if wanted.iter().any(|(i, _)| i.is_none()) {
        return es_error(
            StatusCode::BAD_REQUEST,
            "action_request_validation_exception",
            "Validation Failed: 1: index is missing for doc 0;",
        );
    }
    let indices = s.indices.lock().unwrap();
    let docs: Vec<Value> = wanted
        .into_iter()
        .map(|(named, id)| {
            let named = named.expect("checked above");
            if alias_without_write_index(&indices, &named) {
                let behind: Vec<&String> = indices
                    .iter()
                    .filter(|(_, i)| i.aliases.contains_key(&named))
                    .map(|(n, _)| n)
                    .collect();
                let reason = format!("alias [{named}] has more than one index associated with it {behind:?}, can't execute a single index op");
                return json!({"_index": named, "_id": id, "error": {
                    "root_cause": [{"type": "illegal_argument_exception", "reason": reason}],
                    "type": "illegal_argument_exception", "reason": reason}});
            }
            let index = resolve(&indices, &named);
            let Some(idx) = indices.get(&index) else {
                // each document fails on its own, the request as a whole succeeds
                let reason = format!("no such index [{index}]");
                return json!({"_index": index, "_id": id, "error": {
                    "root_cause": [{"type": "index_not_found_exception", "reason": reason, "index": index}],
                    "type": "index_not_found_exception", "reason": reason, "index": index}});
            };
            match idx.docs.get(&id) {
                Some(d) => {
                    let mut doc = json!({"_index": index, "_id": id, "_version": d.version, "_seq_no": d.seq_no,
                                  "_primary_term": 1, "found": true, "_source": d.source});
                    if let Some(r) = &d.routing {
                        doc["_routing"] = json!(r);
                    }
                    doc
                }
                None => json!({"_index": index, "_id": id, "found": false}),
            }
        })
        .collect();
    es_json(StatusCode::OK, json!({ "docs": docs }))
}

/// The next page of a scroll (`{"scroll": "1m", "scroll_id": …}`); an unknown id is a 404
/// `search_context_missing_exception`, as when a scroll has expired.
async fn scroll_next(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    if s.upstream.is_some() {
        return forward(&s, method, &uri, body).await;
    }
    let req: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let Some(id) = req.get("scroll_id").and_then(Value::as_str) else {
        return es_error(
            StatusCode::BAD_REQUEST,
            "action_request_validation_exception",
            "Validation Failed: 1: scrollId is missing;",
        );
    };
    let mut scrolls = s.scrolls.lock().unwrap();
    let Some((left, size, total)) = scrolls.get_mut(id) else {
        return es_error(
            StatusCode::NOT_FOUND,
            "search_context_missing_exception",
            &format!("No search context found for id [{id}]"),
        );
    };
    let n = (*size).min(left.len());
    let hits: Vec<Value> = left.drain(..n).collect();
    es_json(
        StatusCode::OK,
        json!({"_scroll_id": id, "took": 1, "timed_out": false,
               "hits": {"total": {"value": *total, "relation": "eq"}, "hits": hits}}),
    )
}

async fn scroll_clear(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    if s.upstream.is_some() {
        return forward(&s, method, &uri, body).await;
    }
    let req: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let ids: Vec<String> = match req.get("scroll_id") {
        Some(Value::String(id)) => vec![id.clone()],
        Some(Value::Array(ids)) => ids
            .iter()
            .filter_map(|i| i.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let mut scrolls = s.scrolls.lock().unwrap();
    let freed = ids
        .iter()
        .filter(|id| scrolls.remove(*id).is_some())
        .count();
    es_json(
        StatusCode::OK,
        json!({"succeeded": true, "num_freed": freed}),
    )
}

/// match_all, term, ids. Anything else is a 400 like Elasticsearch's parsing_exception.
fn matcher(query: Option<&Value>) -> Result<Box<dyn Fn(&str, &Value) -> bool>, String> {
    let Some(q) = query else {
        return Ok(Box::new(|_, _| true));
    };
    let obj = q
        .as_object()
        .filter(|o| o.len() == 1)
        .ok_or("query must have exactly one clause")?;
    let (kind, body) = obj.iter().next().unwrap();
    match kind.as_str() {
        "match_all" => Ok(Box::new(|_, _| true)),
        "ids" => {
            let ids: Vec<String> = body
                .get("values")
                .and_then(Value::as_array)
                .ok_or("ids query needs values")?
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            Ok(Box::new(move |id, _| ids.iter().any(|i| i == id)))
        }
        "term" => {
            let (field, spec) = body
                .as_object()
                .and_then(|o| o.iter().next())
                .ok_or("term query needs a field")?;
            let want = spec.get("value").cloned().unwrap_or_else(|| spec.clone());
            let field = field.clone();
            Ok(Box::new(move |_, src| {
                lookup(src, &field).is_some_and(|v| same_term(v, &want))
            }))
        }
        other => Err(format!(
            "unknown query [{other}] (the test server supports match_all, term, ids)"
        )),
    }
}

fn lookup<'a>(src: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted.split('.').try_fold(src, |v, part| v.get(part))
}

fn same_term(v: &Value, want: &Value) -> bool {
    match v {
        Value::Array(items) => items.iter().any(|i| same_term(i, want)),
        _ => v == want || (v.to_string().trim_matches('"') == want.to_string().trim_matches('"')),
    }
}

async fn count(
    State(s): State<Arc<Shared>>,
    Path(index): Path<String>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    if s.upstream.is_some() {
        return forward(&s, method, &uri, body).await;
    }
    let req: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&body).unwrap_or(json!({}))
    };
    let m = match matcher(req.get("query")) {
        Ok(m) => m,
        Err(e) => return es_error(StatusCode::BAD_REQUEST, "parsing_exception", &e),
    };
    let indices = s.indices.lock().unwrap();
    let index = resolve(&indices, &index);
    let Some(idx) = indices.get(&index) else {
        return not_found_index(&index);
    };
    let n = idx.docs.iter().filter(|(id, d)| m(id, &d.source)).count();
    es_json(
        StatusCode::OK,
        json!({"count": n, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}}),
    )
}

async fn search(
    State(s): State<Arc<Shared>>,
    Path(index): Path<String>,
    Query(params): Query<SearchParams>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    if s.upstream.is_some() {
        return forward(&s, method, &uri, body).await;
    }
    let req: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return es_error(StatusCode::BAD_REQUEST, "parsing_exception", &e.to_string())
            }
        }
    };
    let m = match matcher(req.get("query")) {
        Ok(m) => m,
        Err(e) => return es_error(StatusCode::BAD_REQUEST, "parsing_exception", &e),
    };
    let size = req
        .get("size")
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .or(params.size)
        .unwrap_or(10);
    let from = req
        .get("from")
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .or(params.from)
        .unwrap_or(0);
    if from + size > 10_000 {
        return es_error(
            StatusCode::BAD_REQUEST,
            "illegal_argument_exception",
            "Result window is too large, from + size must be less than or equal to: [10000]",
        );
    }
    let indices = s.indices.lock().unwrap();
    // a name, an alias, a list, or wildcards (one that matches nothing finds nothing)
    let Some(names) = expand(&indices, &index) else {
        return not_found_index(&index);
    };
    let matching: Vec<(&String, &String, &Doc)> = names
        .iter()
        .flat_map(|name| {
            let m = &m;
            indices[name]
                .docs
                .iter()
                .filter(move |(id, d)| m(id, &d.source))
                .map(move |(id, d)| (name, id, d))
        })
        .collect();
    let with_source = req.get("_source") != Some(&Value::Bool(false));
    let hit = |(index, id, d): &(&String, &String, &Doc)| {
        let mut h = json!({"_index": index, "_id": id, "_score": 1.0});
        if let Some(r) = &d.routing {
            h["_routing"] = json!(r);
        }
        if with_source {
            h["_source"] = d.source.clone();
        }
        h
    };
    if params.scroll.is_some() {
        let mut all: VecDeque<Value> = matching.iter().skip(from).map(hit).collect();
        let first: Vec<Value> = all.drain(..size.min(all.len())).collect();
        let id = format!("fake-scroll-{}", s.seq.fetch_add(1, Ordering::Relaxed));
        s.scrolls
            .lock()
            .unwrap()
            .insert(id.clone(), (all, size.max(1), matching.len()));
        return es_json(
            StatusCode::OK,
            json!({"_scroll_id": id, "took": 1, "timed_out": false,
                   "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
                   "hits": {"total": {"value": matching.len(), "relation": "eq"}, "max_score": 1.0, "hits": first}}),
        );
    }
    let hits: Vec<Value> = matching.iter().skip(from).take(size).map(hit).collect();
    es_json(
        StatusCode::OK,
        json!({"took": 1, "timed_out": false, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
               "hits": {"total": {"value": matching.len(), "relation": "eq"}, "max_score": 1.0, "hits": hits}}),
    )
}

async fn bulk_root(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    bulk(s, None, headers, uri, body).await
}

async fn bulk_index(
    State(s): State<Arc<Shared>>,
    Path(index): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    bulk(s, Some(index), headers, uri, body).await
}

/// One parsed bulk action.
#[derive(Debug, Clone)]
struct Action {
    op: String,
    index: String,
    id: Option<String>,
    version: Option<Value>,
    version_type: Option<String>,
    routing: Option<String>,
    source: Option<Value>,
    /// The original lines, for forwarding.
    lines: Vec<u8>,
}

fn parse_bulk(body: &[u8], default_index: Option<&str>) -> Result<Vec<Action>, String> {
    let mut lines = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace));
    let mut actions = Vec::new();
    while let Some(meta_line) = lines.next() {
        let meta: Value = serde_json::from_slice(meta_line).map_err(|e| {
            format!(
                "Malformed action/metadata line [{}]: {e}",
                actions.len() + 1
            )
        })?;
        let (op, params) = meta
            .as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.iter().next())
            .ok_or_else(|| {
                format!(
                    "Malformed action/metadata line [{}], expected a single action",
                    actions.len() + 1
                )
            })?;
        let index = params
            .get("_index")
            .and_then(Value::as_str)
            .or(default_index)
            .ok_or("index is missing")?
            .to_string();
        let mut raw = meta_line.to_vec();
        raw.push(b'\n');
        let source = match op.as_str() {
            "index" | "create" | "update" => {
                let src = lines
                    .next()
                    .ok_or("the bulk request must be terminated by a newline / source missing")?;
                raw.extend_from_slice(src);
                raw.push(b'\n');
                Some(serde_json::from_slice::<Value>(src).unwrap_or(Value::Null))
            }
            "delete" => None,
            other => {
                return Err(format!(
                    "Malformed action/metadata line, unknown action [{other}]"
                ))
            }
        };
        actions.push(Action {
            op: op.clone(),
            index,
            id: params.get("_id").and_then(Value::as_str).map(str::to_owned),
            version: params.get("version").cloned(),
            version_type: params
                .get("version_type")
                .and_then(Value::as_str)
                .map(str::to_owned),
            routing: params
                .get("routing")
                .and_then(Value::as_str)
                .map(str::to_owned),
            source,
            lines: raw,
        });
    }
    if actions.is_empty() {
        return Err("request body is required".into());
    }
    Ok(actions)
}

async fn bulk(
    s: Arc<Shared>,
    path_index: Option<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let faults = if bypass(&headers) {
        Faults::default()
    } else {
        s.faults.lock().unwrap().clone()
    };
    s.stats.lock().unwrap().bulk_requests += 1;
    if let Some(fast) = &s.fast {
        return fast_bulk(fast, &body, path_index.as_deref(), &s.stats);
    }
    count_redelivered(&s, &body, path_index.as_deref());
    if !bypass(&headers) {
        let mut held = s.hold.subscribe();
        if *held.borrow() {
            s.stats.lock().unwrap().stalled += 1;
            let _ = held.wait_for(|h| !*h).await;
        }
    }
    if faults.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.delay_ms)).await;
    }
    if faults.stall_rate > 0.0 && fastrand::f64() < faults.stall_rate {
        s.stats.lock().unwrap().stalled += 1;
        tokio::time::sleep(Duration::from_millis(faults.stall_ms)).await;
    }
    let drop_now = faults.drop_rate > 0.0 && fastrand::f64() < faults.drop_rate;
    let drop_before = drop_now && fastrand::bool();
    if drop_before {
        s.stats.lock().unwrap().dropped += 1;
        return dropped_connection();
    }
    if faults.bulk_429_rate > 0.0 && fastrand::f64() < faults.bulk_429_rate {
        s.stats.lock().unwrap().bulk_429 += 1;
        return es_error(
            StatusCode::TOO_MANY_REQUESTS,
            "es_rejected_execution_exception",
            "rejected execution of coordinating operation [coordinating_and_primary_bytes=1700696668, max_coordinating_and_primary_bytes=1717986918]",
        );
    }
    if faults.bulk_503_rate > 0.0 && fastrand::f64() < faults.bulk_503_rate {
        s.stats.lock().unwrap().bulk_503 += 1;
        return es_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable_shards_exception",
            "primary shard is not active",
        );
    }
    let actions = match parse_bulk(&body, path_index.as_deref()) {
        Ok(a) => a,
        Err(e) => return es_error(StatusCode::BAD_REQUEST, "illegal_argument_exception", &e),
    };
    // Elasticsearch validates every action before writing any (BulkRequest.validate): one
    // invalid version refuses the whole request with 400.
    if let Some(e) = validate_bulk(&actions) {
        return e;
    }
    let started = Instant::now();
    let mut results: Vec<Option<Value>> = vec![None; actions.len()];
    let mut to_apply = Vec::new();
    for (i, a) in actions.iter().enumerate() {
        if faults.item_429_rate > 0.0 && fastrand::f64() < faults.item_429_rate {
            s.stats.lock().unwrap().item_429 += 1;
            results[i] = Some(item_error(a, 429, "es_rejected_execution_exception", "rejected execution of TransportShardBulkAction on EsThreadPoolExecutor[name = write, queue capacity = 10000]"));
        } else if faults.item_400_rate > 0.0 && fastrand::f64() < faults.item_400_rate {
            s.stats.lock().unwrap().item_400 += 1;
            results[i] = Some(item_error(
                a,
                400,
                "mapper_parsing_exception",
                "failed to parse (injected by es-fake)",
            ));
        } else {
            to_apply.push(i);
        }
    }
    s.stats.lock().unwrap().items += actions.len() as u64;

    if !to_apply.is_empty() {
        let applied = match &s.upstream {
            None => to_apply
                .iter()
                .map(|&i| apply(&s, &actions[i]))
                .collect::<Vec<_>>(),
            Some(_) => match forward_bulk(&s, &uri, to_apply.iter().map(|&i| &actions[i])).await {
                Ok(items) => items,
                Err(resp) => return resp,
            },
        };
        for (i, r) in to_apply.into_iter().zip(applied) {
            results[i] = Some(r);
        }
    }
    if drop_now {
        s.stats.lock().unwrap().dropped += 1;
        return dropped_connection();
    }
    let items: Vec<Value> = results
        .into_iter()
        .map(|r| r.expect("every item answered"))
        .collect();
    let errors = items.iter().any(|i| {
        i.as_object()
            .and_then(|o| o.values().next())
            .and_then(|v| v.get("error"))
            .is_some()
    });
    es_json(
        StatusCode::OK,
        json!({"took": started.elapsed().as_millis() as u64, "errors": errors, "items": items}),
    )
}

/// Fast mode's `_bulk`: action lines parsed, source lines skipped.
fn fast_bulk(
    fast: &Mutex<FastStore>,
    body: &[u8],
    default_index: Option<&str>,
    stats: &Mutex<Stats>,
) -> Response {
    #[derive(Deserialize)]
    struct Params {
        _index: Option<String>,
        _id: Option<String>,
        version: Option<u64>,
        version_type: Option<String>,
    }
    let started = Instant::now();
    let mut lines = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace));
    let mut items = Vec::new();
    let mut errors = false;
    let mut store = fast.lock().unwrap();
    let now = Instant::now();
    while let Some(meta) = lines.next() {
        let parsed: Result<HashMap<String, Params>, _> = serde_json::from_slice(meta);
        let Some((op, p)) = parsed.ok().and_then(|m| m.into_iter().next()) else {
            return es_error(
                StatusCode::BAD_REQUEST,
                "illegal_argument_exception",
                &format!("Malformed action/metadata line [{}]", items.len() + 1),
            );
        };
        if op != "delete" && lines.next().is_none() {
            return es_error(
                StatusCode::BAD_REQUEST,
                "illegal_argument_exception",
                "the bulk request must be terminated by a newline",
            );
        }
        let (Some(index), Some(id)) = (p._index.or(default_index.map(str::to_owned)), p._id) else {
            return es_error(
                StatusCode::BAD_REQUEST,
                "action_request_validation_exception",
                "Validation Failed: 1: index and id are required in fast mode;",
            );
        };
        let external = p
            .version_type
            .as_deref()
            .is_some_and(|t| t.starts_with("external"));
        let gte = p.version_type.as_deref() == Some("external_gte");
        let key = (index.clone(), id.clone());
        let current = store.versions.get(&key).copied();
        let version = match (external, p.version, current) {
            (true, Some(v), Some((cur, _))) if (gte && v < cur) || (!gte && v <= cur) => {
                errors = true;
                items.push(json!({ op.clone(): {"_index": index, "_id": id, "status": 409, "error": {
                    "type": "version_conflict_engine_exception",
                    "reason": format!("[{id}]: version conflict, current version [{cur}] is higher or equal to the one provided [{v}]"),
                    "index": index, "shard": "0", "index_uuid": "es-fake"}}}));
                continue;
            }
            (true, Some(v), _) => v,
            (_, _, cur) => cur.map_or(1, |(v, _)| v + 1),
        };
        let existed = current.is_some_and(|(_, deleted)| !deleted);
        store.versions.insert(key, (version, op == "delete"));
        store.first_seen.entry(id.clone()).or_insert(now);
        store.seq_no += 1;
        let (status, result) = match (op.as_str(), existed) {
            ("delete", true) => (200, "deleted"),
            ("delete", false) => (404, "not_found"),
            (_, true) => (200, "updated"),
            (_, false) => (201, "created"),
        };
        items.push(
            json!({ op: {"_index": index, "_id": id, "_version": version, "result": result,
            "_shards": {"total": 2, "successful": 1, "failed": 0}, "_seq_no": store.seq_no,
            "_primary_term": 1, "status": status}}),
        );
    }
    drop(store);
    stats.lock().unwrap().items += items.len() as u64;
    es_json(
        StatusCode::OK,
        json!({"took": started.elapsed().as_millis() as u64, "errors": errors, "items": items}),
    )
}

async fn forward_bulk<'a>(
    s: &Shared,
    uri: &Uri,
    actions: impl Iterator<Item = &'a Action>,
) -> Result<Vec<Value>, Response> {
    let body: Vec<u8> = actions.flat_map(|a| a.lines.iter().copied()).collect();
    let upstream = s.upstream.as_ref().unwrap();
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let resp = s
        .http
        .post(format!("{upstream}/_bulk{query}"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .map_err(|e| es_error(StatusCode::BAD_GATEWAY, "proxy_exception", &e.to_string()))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| es_error(StatusCode::BAD_GATEWAY, "proxy_exception", &e.to_string()))?;
    if status != 200 {
        let mut r = (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            bytes,
        )
            .into_response();
        r.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        return Err(r);
    }
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| es_error(StatusCode::BAD_GATEWAY, "proxy_exception", &e.to_string()))?;
    let items = v
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    Ok(items)
}

/// The whole-request validation Elasticsearch does before any write: versions must be longs,
/// and external versions at least 0 ("Validation Failed: 1: illegal version value …").
fn validate_bulk(actions: &[Action]) -> Option<Response> {
    let mut failures = Vec::new();
    for a in actions {
        let external = matches!(
            a.version_type.as_deref(),
            Some("external") | Some("external_gt") | Some("external_gte")
        );
        let Some(Value::Number(n)) = &a.version else {
            continue;
        };
        match n.as_i64() {
            None => {
                return Some(es_error(
                    StatusCode::BAD_REQUEST,
                    "x_content_parse_exception",
                    &format!("[1:1] failed to parse field [version]: Numeric value ({n}) out of range of long"),
                ))
            }
            Some(v) if external && v < 0 => failures.push(format!(
                "illegal version value [{n}] for version type [EXTERNAL]"
            )),
            Some(_) => {}
        }
    }
    if failures.is_empty() {
        return None;
    }
    let listed: String = failures
        .iter()
        .enumerate()
        .map(|(i, f)| format!("{}: {f};", i + 1))
        .collect();
    Some(es_error(
        StatusCode::BAD_REQUEST,
        "action_request_validation_exception",
        &format!("Validation Failed: {listed}"),
    ))
}

/// Counts externally versioned items already received once, at receipt (before any fault).
fn count_redelivered(s: &Shared, body: &[u8], path_index: Option<&str>) {
    let Ok(actions) = parse_bulk(body, path_index) else {
        return;
    };
    let mut seen = s.seen.lock().unwrap();
    let (mut repeats, mut divergent) = (0, 0);
    for a in &actions {
        let (Some(id), Some(version)) = (&a.id, &a.version) else {
            continue;
        };
        let key = (a.index.clone(), id.clone(), version.to_string());
        let content = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            a.op.hash(&mut h);
            a.source.as_ref().map(|v| v.to_string()).hash(&mut h);
            h.finish()
        };
        match seen.get(&key) {
            None => {
                seen.insert(key, content);
            }
            Some(first) => {
                repeats += 1;
                if *first != content {
                    divergent += 1;
                }
            }
        }
    }
    let mut stats = s.stats.lock().unwrap();
    stats.redelivered += repeats;
    stats.divergent += divergent;
}

/// An answer that starts and then breaks: the client sees a dropped connection.
fn dropped_connection() -> Response {
    let stream = futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other(
            "connection dropped by fault injection",
        ))
    });
    (StatusCode::OK, Body::from_stream(stream)).into_response()
}

fn item_error(a: &Action, status: u16, ty: &str, reason: &str) -> Value {
    json!({ a.op.clone(): {"_index": a.index, "_id": a.id, "status": status,
        "error": {"type": ty, "reason": reason, "index": a.index, "shard": "0", "index_uuid": "es-fake"}}})
}

fn parse_version(v: &Option<Value>) -> Result<Option<u64>, String> {
    match v {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(x) if x <= i64::MAX as u64 => Ok(Some(x)),
            _ => Err(format!(
                "illegal version value [{n}] for version type [EXTERNAL]"
            )),
        },
        Some(Value::String(s)) => s
            .parse::<u64>()
            .map(Some)
            .map_err(|_| format!("illegal version value [{s}]")),
        Some(other) => Err(format!("illegal version value [{other}]")),
    }
}

/// Remembers the highest version applied to a document, and counts a write applied below it.
fn note_applied(s: &Shared, index: &str, id: &str, version: u64) {
    let mut highest = s.highest.lock().unwrap();
    let top = highest
        .entry((index.to_string(), id.to_string()))
        .or_default();
    if version < *top {
        s.stats.lock().unwrap().applied_backwards += 1;
    }
    *top = (*top).max(version);
}

/// Applies one action to the in-memory store as Elasticsearch would.
fn apply(s: &Shared, a: &Action) -> Value {
    let version = match parse_version(&a.version) {
        Ok(v) => v,
        Err(e) => {
            return item_error(
                a,
                400,
                "action_request_validation_exception",
                &format!("Validation Failed: 1: {e};"),
            )
        }
    };
    let external = match a.version_type.as_deref() {
        None | Some("internal") => None,
        Some("external") | Some("external_gt") => Some(false),
        Some("external_gte") => Some(true),
        Some(other) => {
            return item_error(
                a,
                400,
                "illegal_argument_exception",
                &format!("No version type match [{other}]"),
            )
        }
    };
    if external.is_some() && version.is_none() {
        return item_error(
            a,
            400,
            "action_request_validation_exception",
            "Validation Failed: 1: an external version is required;",
        );
    }
    let mut indices = s.indices.lock().unwrap();
    // a write to an alias goes to its write index, and the answer names that index
    let resolved = Action {
        index: resolve(&indices, &a.index),
        ..a.clone()
    };
    let a = &resolved;
    if alias_without_write_index(&indices, &a.index) {
        return item_error(
            a,
            400,
            "illegal_argument_exception",
            &format!(
                "no write index is defined for alias [{}]. The write index may be explicitly disabled using is_write_index=false or the alias points to multiple indices without one being designated as a write index",
                a.index
            ),
        );
    }
    if !indices.contains_key(&a.index) && !s.auto_create_index.load(Ordering::Relaxed) {
        return item_error(
            a,
            404,
            "index_not_found_exception",
            &format!(
                "no such index [{}] and [action.auto_create_index] is [false]",
                a.index
            ),
        );
    }
    let idx = indices
        .entry(a.index.clone())
        .or_insert_with(|| Index::auto_created(&a.index));
    if idx.block_write {
        return item_error(
            a,
            403,
            "cluster_block_exception",
            &format!(
                "index [{}] blocked by: [FORBIDDEN/8/index write (api)];",
                a.index
            ),
        );
    }
    if idx.block_read_only_allow_delete && a.op != "delete" {
        return item_error(
            a,
            429,
            "cluster_block_exception",
            &format!("index [{}] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, index has read-only-allow-delete block];", a.index),
        );
    }
    let id = match &a.id {
        Some(id) => id.clone(),
        None if a.op == "index" || a.op == "create" => {
            format!("auto-{}", s.seq.fetch_add(1, Ordering::Relaxed))
        }
        None => {
            return item_error(
                a,
                400,
                "action_request_validation_exception",
                "Validation Failed: 1: id is missing;",
            )
        }
    };
    if a.op == "update" {
        return item_error(
            a,
            400,
            "illegal_argument_exception",
            "the test server does not implement update",
        );
    }
    let now = Instant::now();
    let gc = idx.gc_deletes.unwrap_or(s.gc_deletes);
    idx.tombstones
        .retain(|_, (_, at)| now.duration_since(*at) < gc);
    let current = idx
        .docs
        .get(&id)
        .map(|d| d.version)
        .or_else(|| idx.tombstones.get(&id).map(|(v, _)| *v));
    let exists = idx.docs.contains_key(&id);
    if idx.docs.get(&id).is_some_and(|d| d.routing != a.routing) {
        s.stats.lock().unwrap().routing_mismatches += 1;
    }
    let conflict = |cur: u64, given: u64| {
        json!({ a.op.clone(): {"_index": a.index, "_id": id, "status": 409, "error": {
            "type": "version_conflict_engine_exception",
            "reason": format!("[{id}]: version conflict, current version [{cur}] is higher or equal to the one provided [{given}]"),
            "index": a.index, "shard": "0", "index_uuid": "es-fake"}}})
    };
    let new_version = match (external, version, current) {
        (Some(gte), Some(v), Some(cur)) if (gte && v < cur) || (!gte && v <= cur) => {
            return conflict(cur, v)
        }
        (Some(_), Some(v), _) => v,
        (None, _, cur) => {
            if a.op == "create" && exists {
                return item_error(
                    a,
                    409,
                    "version_conflict_engine_exception",
                    &format!("[{id}]: version conflict, document already exists"),
                );
            }
            cur.unwrap_or(0) + 1
        }
        (Some(_), None, _) => unreachable!("checked above"),
    };
    if a.op == "create" && exists {
        return item_error(
            a,
            409,
            "version_conflict_engine_exception",
            &format!("[{id}]: version conflict, document already exists"),
        );
    }
    idx.seq_no += 1;
    let seq_no = idx.seq_no;
    let shards = json!({"total": 2, "successful": 1, "failed": 0});
    match a.op.as_str() {
        "delete" => {
            let found = idx.docs.remove(&id).is_some();
            idx.tombstones.insert(id.clone(), (new_version, now));
            if external.is_some() {
                note_applied(s, &a.index, &id, new_version);
            }
            let (status, result) = if found {
                (200, "deleted")
            } else {
                (404, "not_found")
            };
            json!({"delete": {"_index": a.index, "_id": id, "_version": new_version, "result": result, "_shards": shards, "_seq_no": seq_no, "_primary_term": 1, "status": status}})
        }
        _ => {
            let source = a.source.clone().unwrap_or(Value::Null);
            if !source.is_object() {
                return item_error(
                    a,
                    400,
                    "mapper_parsing_exception",
                    "failed to parse: the source is not a JSON object",
                );
            }
            if let Err(e) = check_mapping(&mut idx.mapping, "", &source) {
                idx.seq_no -= 1;
                return item_error(a, 400, "mapper_parsing_exception", &e);
            }
            idx.tombstones.remove(&id);
            if external.is_some() {
                note_applied(s, &a.index, &id, new_version);
            }
            idx.docs.insert(
                id.clone(),
                Doc {
                    source,
                    version: new_version,
                    seq_no,
                    routing: a.routing.clone(),
                },
            );
            let (status, result) = if exists {
                (200, "updated")
            } else {
                (201, "created")
            };
            json!({ a.op.clone(): {"_index": a.index, "_id": id, "_version": new_version, "result": result, "_shards": shards, "_seq_no": seq_no, "_primary_term": 1, "status": status}})
        }
    }
}

/// Dynamic mapping: the first value seen fixes a field's type; a later value that cannot be
/// coerced to it is refused, as Elasticsearch does.
fn check_mapping(
    mapping: &mut HashMap<String, FieldType>,
    prefix: &str,
    source: &Value,
) -> Result<(), String> {
    let Some(obj) = source.as_object() else {
        return Ok(());
    };
    let mut added: Vec<(String, FieldType)> = Vec::new();
    check_object(mapping, prefix, obj, &mut added)?;
    for (k, t) in added {
        mapping.entry(k).or_insert(t);
    }
    Ok(())
}

fn check_object(
    mapping: &HashMap<String, FieldType>,
    prefix: &str,
    obj: &Map<String, Value>,
    added: &mut Vec<(String, FieldType)>,
) -> Result<(), String> {
    for (k, v) in obj {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        check_value(mapping, &path, v, added)?;
    }
    Ok(())
}

fn check_value(
    mapping: &HashMap<String, FieldType>,
    path: &str,
    v: &Value,
    added: &mut Vec<(String, FieldType)>,
) -> Result<(), String> {
    if let Value::Array(items) = v {
        for i in items {
            check_value(mapping, path, i, added)?;
        }
        return Ok(());
    }
    if v.is_null() {
        return Ok(());
    }
    let seen = mapping
        .get(path)
        .copied()
        .or_else(|| added.iter().find(|(p, _)| p == path).map(|(_, t)| *t));
    let Some(ty) = seen else {
        let ty = match v {
            Value::Number(n) if n.as_i64().is_some() || n.as_u64().is_some() => FieldType::Long,
            Value::Number(_) => FieldType::Float,
            Value::Bool(_) => FieldType::Boolean,
            Value::String(_) => FieldType::Text,
            _ => FieldType::Object,
        };
        added.push((path.to_string(), ty));
        if let Value::Object(o) = v {
            check_object(mapping, path, o, added)?;
        }
        return Ok(());
    };
    let preview = {
        let t = v.to_string();
        if t.len() > 40 {
            format!("{}...", &t[..40])
        } else {
            t
        }
    };
    let fail = |what: &str| {
        Err(format!("failed to parse field [{path}] of type [{what}] in document. Preview of field's value: '{preview}'"))
    };
    match (ty, v) {
        (FieldType::Object, Value::Object(o)) => check_object(mapping, path, o, added),
        (FieldType::Object, _) => Err(format!("object mapping for [{path}] tried to parse field [{path}] as object, but found a concrete value")),
        (_, Value::Object(_)) => fail(type_name(ty)),
        (FieldType::Long, Value::Number(n)) => {
            if n.as_i64().is_some() || n.as_u64().is_some_and(|u| u <= i64::MAX as u64) || n.as_f64().is_some_and(|f| f.abs() < 9.2e18) {
                Ok(())
            } else {
                fail("long")
            }
        }
        (FieldType::Long | FieldType::Float, Value::String(s)) if s.trim().parse::<f64>().is_ok() => Ok(()),
        (FieldType::Float, Value::Number(_)) => Ok(()),
        (FieldType::Long | FieldType::Float, _) => fail(type_name(ty)),
        (FieldType::Boolean, Value::Bool(_)) => Ok(()),
        (FieldType::Boolean, Value::String(s)) if s == "true" || s == "false" || s.is_empty() => Ok(()),
        (FieldType::Boolean, _) => fail("boolean"),
        (FieldType::Text, _) => Ok(()),
    }
}

/// `mappings.properties` of an index creation, flattened to dotted paths. Field types the test
/// server does not model (date, ip, …) are taken as text: it checks the types sluice's tests use.
fn explicit_mapping(
    mapping: &mut HashMap<String, FieldType>,
    prefix: &str,
    properties: &Map<String, Value>,
) -> Result<(), String> {
    for (name, field) in properties {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        let ty = field.get("type").and_then(Value::as_str);
        let ty = match ty {
            None | Some("object") | Some("nested") => FieldType::Object,
            Some("long" | "integer" | "short" | "byte" | "unsigned_long") => FieldType::Long,
            Some("float" | "double" | "half_float" | "scaled_float") => FieldType::Float,
            Some("boolean") => FieldType::Boolean,
            Some(_) => FieldType::Text,
        };
        mapping.insert(path.clone(), ty);
        if let Some(inner) = field.get("properties").and_then(Value::as_object) {
            explicit_mapping(mapping, &path, inner)?;
        } else if ty == FieldType::Object && field.get("type").is_none() {
            return Err(format!("No type specified for field [{name}]"));
        }
    }
    Ok(())
}

fn type_name(t: FieldType) -> &'static str {
    match t {
        FieldType::Long => "long",
        FieldType::Float => "float",
        FieldType::Text => "text",
        FieldType::Boolean => "boolean",
        FieldType::Object => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(op: &str, id: &str, version: Option<u64>, source: Option<Value>) -> Action {
        Action {
            op: op.into(),
            index: "t".into(),
            id: Some(id.into()),
            version: version.map(|v| json!(v)),
            version_type: version.map(|_| "external".into()),
            routing: None,
            source,
            lines: Vec::new(),
        }
    }

    fn shared() -> Shared {
        Shared::new(None)
    }

    fn status(v: &Value) -> u64 {
        v.as_object().unwrap().values().next().unwrap()["status"]
            .as_u64()
            .unwrap()
    }

    #[test]
    fn external_versions_apply_only_when_strictly_greater_and_deletes_leave_tombstones() {
        let s = shared();
        assert_eq!(
            status(&apply(
                &s,
                &action("index", "1", Some(5), Some(json!({"a": 1})))
            )),
            201
        );
        assert_eq!(
            status(&apply(
                &s,
                &action("index", "1", Some(5), Some(json!({"a": 2})))
            )),
            409
        );
        assert_eq!(
            status(&apply(
                &s,
                &action("index", "1", Some(4), Some(json!({"a": 2})))
            )),
            409
        );
        assert_eq!(
            status(&apply(
                &s,
                &action("index", "1", Some(6), Some(json!({"a": 3})))
            )),
            200
        );
        assert_eq!(
            status(&apply(&s, &action("delete", "1", Some(7), None))),
            200
        );
        // the tombstone keeps version 7: an older write cannot resurrect the document
        assert_eq!(
            status(&apply(
                &s,
                &action("index", "1", Some(6), Some(json!({"a": 9})))
            )),
            409
        );
        assert_eq!(
            status(&apply(&s, &action("delete", "2", Some(3), None))),
            404
        );
        assert_eq!(
            status(&apply(&s, &action("index", "2", Some(3), Some(json!({}))))),
            409
        );
        assert_eq!(
            status(&apply(
                &s,
                &action("index", "1", Some(8), Some(json!({"a": 4})))
            )),
            201
        );
    }

    #[test]
    fn dynamic_mapping_refuses_values_of_the_wrong_type() {
        let s = shared();
        assert_eq!(
            status(&apply(
                &s,
                &action(
                    "index",
                    "1",
                    None,
                    Some(json!({"views": 10, "meta": {"x": true}}))
                )
            )),
            201
        );
        let bad = apply(
            &s,
            &action("index", "2", None, Some(json!({"views": "lots"}))),
        );
        assert_eq!(status(&bad), 400);
        assert_eq!(bad["index"]["error"]["type"], "mapper_parsing_exception");
        assert_eq!(
            status(&apply(
                &s,
                &action("index", "3", None, Some(json!({"meta": "flat"})))
            )),
            400
        );
        assert_eq!(
            status(&apply(
                &s,
                &action("index", "4", None, Some(json!({"views": "12"})))
            )),
            201
        );
    }

    #[test]
    fn bulk_bodies_parse_with_sources_and_defaults() {
        let body = b"{\"index\":{\"_id\":\"1\"}}\n{\"a\":1}\n{\"delete\":{\"_index\":\"x\",\"_id\":\"2\"}}\n";
        let a = parse_bulk(body, Some("t")).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].index, "t");
        assert_eq!(a[1].index, "x");
        assert!(parse_bulk(b"{\"bogus\":{}}\n", Some("t")).is_err());
    }
}
