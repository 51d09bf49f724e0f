//! What no emulator produces — shard rollover and lineage, expired iterators, trimmed data,
//! throttling — against a scripted fake of the shard API, through the real pipeline (batcher,
//! sink, acknowledgements, SQLite checkpoints) into the in-process Elasticsearch test server.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_smithy_types::DateTime;
use es_fake::{FakeEs, Faults};
use serde_json::{json, Value};
use sluice::ack::AckTracker;
use sluice::app::{run_pipeline, Services};
use sluice::checkpoint::{read_checkpoints, CheckpointStore, ShardCheckpoint};
use sluice::config::Config;
use sluice::http::Health;
use sluice::metrics::Metrics;
use sluice::source::dynamodb_streams::StreamRecord;
use sluice::source::reader::Decoder;
use sluice::source::{ApiError, RecordPage, ShardApi, ShardInfo, SourceRecord, StartAt};
use sluice::transform::route::Routes;
use sluice::transform::{dynamodb_kinesis_row, dynamodb_row, Decoded, Skip};

const STREAM: &str = "arn:aws:dynamodb:us-east-1:000000000000:table/Posts/stream/scripted";

/// One scripted shard: its records and whether it is closed.
struct ScriptedShard<R = StreamRecord> {
    info: ShardInfo,
    records: Vec<R>,
}

#[derive(Debug, Clone)]
enum Call {
    Iterator {
        shard: String,
        at: StartAt,
        parents_finished: bool,
    },
    Records {
        shard: String,
        at: Instant,
    },
}

/// A shard API that plays a script: records per shard, and errors to return on given
/// GetRecords calls (counted per shard, 1-based). A shard that is not in the script answers
/// ResourceNotFound, as a shard that aged out of the stream does.
struct ScriptedStreams<R = StreamRecord> {
    shards: Vec<ScriptedShard<R>>,
    /// Listed, but GetShardIterator answers ResourceNotFound (gone between list and read).
    gone: std::collections::HashSet<String>,
    /// GetShardIterator answers ResourceNotFound this many more times (a stream not ACTIVE yet).
    not_found_for: Mutex<HashMap<String, usize>>,
    /// The service's pacing: shortest gap between GetRecords, read bytes per second.
    pacing: (Duration, Option<u64>),
    errors: Mutex<HashMap<String, VecDeque<(usize, ApiError)>>>,
    /// When a TrimmedData error is returned, the shard's trim horizon moves to this position.
    trim_to: HashMap<String, usize>,
    horizon: Mutex<HashMap<String, usize>>,
    calls: Mutex<Vec<Call>>,
    record_calls: Mutex<HashMap<String, usize>>,
    checkpoint_db: PathBuf,
}

impl<R: SourceRecord + Clone> ScriptedStreams<R> {
    fn new(shards: Vec<ScriptedShard<R>>, checkpoint_db: PathBuf) -> Self {
        ScriptedStreams {
            shards,
            gone: Default::default(),
            not_found_for: Mutex::default(),
            pacing: (Duration::ZERO, None),
            errors: Mutex::default(),
            trim_to: HashMap::new(),
            horizon: Mutex::default(),
            calls: Mutex::default(),
            record_calls: Mutex::default(),
            checkpoint_db,
        }
    }

    /// GetRecords call number `n` (1-based) on `shard` answers the paired error.
    fn failing(self, shard: &str, errors: Vec<(usize, ApiError)>) -> Self {
        self.errors
            .lock()
            .unwrap()
            .insert(shard.to_string(), errors.into());
        self
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Where each GetShardIterator asked to start, in order.
    fn iterator_starts(&self) -> Vec<StartAt> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Iterator { at, .. } => Some(at),
                Call::Records { .. } => None,
            })
            .collect()
    }
    fn shard(&self, id: &str) -> Result<&ScriptedShard<R>, ApiError> {
        self.shards
            .iter()
            .find(|s| &*s.info.id == id && !self.gone.contains(id))
            .ok_or_else(|| ApiError::NotFound(format!("Requested resource not found: Shard {id}")))
    }

    /// When each GetRecords call on `shard` was made.
    fn record_call_times(&self, shard: &str) -> Vec<Instant> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Records { shard: s, at } if s == shard => Some(at),
                _ => None,
            })
            .collect()
    }
}

impl<R: SourceRecord + Clone> ShardApi for ScriptedStreams<R> {
    type Record = R;

    fn min_poll_gap(&self) -> Duration {
        self.pacing.0
    }

    fn max_read_bytes_per_sec(&self) -> Option<u64> {
        self.pacing.1
    }

    fn pushes(&self) -> bool {
        false
    }

    fn reader_stopped(&self, _shard: &str) {}

    async fn retention(&self) -> Result<Duration, ApiError> {
        Ok(Duration::from_secs(24 * 3600))
    }

    async fn list_shards(&self) -> Result<Vec<ShardInfo>, ApiError> {
        Ok(self.shards.iter().map(|s| s.info.clone()).collect())
    }

    async fn shard_iterator(&self, shard: &str, at: &StartAt) -> Result<String, ApiError> {
        let found = self.shard(shard);
        let horizon = self
            .horizon
            .lock()
            .unwrap()
            .get(shard)
            .copied()
            .unwrap_or(0);
        let cps = read_checkpoints(&self.checkpoint_db, STREAM).unwrap_or_default();
        let parents_finished = found.as_ref().map_or(true, |s| {
            s.info
                .parents
                .iter()
                .all(|p| cps.get(&**p).is_some_and(|c| c.finished))
        });
        self.calls.lock().unwrap().push(Call::Iterator {
            shard: shard.into(),
            at: at.clone(),
            parents_finished,
        });
        let s = found?;
        if let Some(left) = self.not_found_for.lock().unwrap().get_mut(shard) {
            if *left > 0 {
                *left -= 1;
                return Err(ApiError::NotFound(format!(
                    "Requested resource not found: Shard {shard} (scripted)"
                )));
            }
        }
        let pos = match at {
            StartAt::TrimHorizon => horizon,
            StartAt::Latest => s.records.len(),
            // as the DynamoDB Streams source does: no timestamp iterator, the reader passes over
            StartAt::AtTimestamp(_) => horizon,
            StartAt::AfterSequence(seq) => {
                let i = s
                    .records
                    .iter()
                    .position(|r| r.sequence_number() == seq)
                    .expect("known sequence number");
                if i < horizon {
                    return Err(ApiError::TrimmedData(format!(
                        "{seq} is before the trim horizon"
                    )));
                }
                i + 1
            }
        };
        Ok(format!("{shard}|{pos}"))
    }

    async fn get_records(&self, iterator: &str, limit: u32) -> Result<RecordPage<R>, ApiError> {
        let (shard, pos) = iterator.split_once('|').unwrap();
        let pos: usize = pos.parse().unwrap();
        self.calls.lock().unwrap().push(Call::Records {
            shard: shard.into(),
            at: Instant::now(),
        });
        let n = {
            let mut counts = self.record_calls.lock().unwrap();
            let c = counts.entry(shard.to_string()).or_default();
            *c += 1;
            *c
        };
        if let Some(queue) = self.errors.lock().unwrap().get_mut(shard) {
            if queue.front().is_some_and(|(at, _)| *at == n) {
                let (_, err) = queue.pop_front().unwrap();
                if let (ApiError::TrimmedData(_), Some(to)) = (&err, self.trim_to.get(shard)) {
                    self.horizon.lock().unwrap().insert(shard.to_string(), *to);
                }
                return Err(err);
            }
        }
        let s = self.shard(shard)?;
        let end = (pos + limit as usize).min(s.records.len());
        let records = s.records[pos..end].to_vec();
        let next = if s.info.closed && end == s.records.len() {
            None
        } else {
            Some(format!("{shard}|{end}"))
        };
        Ok(RecordPage {
            records,
            next_iterator: next,
            millis_behind_latest: None,
            child_shards: Vec::new(),
        })
    }
}

/// An INSERT/MODIFY of item `id` with `n` as its content, at second `t`.
fn put(seq: u64, id: &str, n: u64, t: i64) -> StreamRecord {
    let key = json!({"id": {"S": id}});
    let record = json!({
        "eventName": if n == 1 { "INSERT" } else { "MODIFY" },
        "dynamodb": {
            "Keys": key,
            "NewImage": {"id": {"S": id}, "n": {"N": n.to_string()}},
            "SequenceNumber": format!("{seq:030}"),
            "ApproximateCreationDateTime": t,
        }
    });
    StreamRecord::from_json(&record.to_string()).expect("a stream record")
}

fn shard<R>(id: &str, parents: &[&str], closed: bool, records: Vec<R>) -> ScriptedShard<R> {
    ScriptedShard {
        info: ShardInfo {
            id: id.into(),
            parents: parents.iter().map(|p| (*p).into()).collect(),
            closed,
        },
        records,
    }
}

fn config(dir: &Path, es: &str, records_per_call: u32) -> Config {
    config_with(dir, es, records_per_call, "")
}

/// The scripted pipeline's configuration, with `extra` sections appended.
fn config_with(dir: &Path, es: &str, records_per_call: u32, extra: &str) -> Config {
    let path = dir.join("sluice.toml");
    std::fs::write(
        &path,
        format!(
            r#"[source]
type = "dynamodb_streams"
stream_arn = "{STREAM}"
poll_interval = "50ms"
discovery_interval = "200ms"
records_per_call = {records_per_call}
[sink]
url = "{es}"
index = "scripted"
backoff_initial = "10ms"
backoff_max = "200ms"
[batch]
max_documents = 20
max_wait = "20ms"
[checkpoint]
path = "{}"
{extra}
"#,
            dir.join("sluice.db").display()
        ),
    )
    .unwrap();
    Config::load_with_env(&path, Vec::new()).unwrap()
}

struct Run {
    metrics: Metrics,
    health: Arc<Health>,
    tracker: AckTracker,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn start(api: Arc<ScriptedStreams>, config: Config) -> Run {
    let routes = the_index();
    let reads = routes.reads();
    start_with(
        api,
        config,
        Arc::new(move |r| routes.apply(dynamodb_row(r.json().as_bytes(), None, &reads)?)),
    )
}

fn start_with<R: SourceRecord + Clone>(
    api: Arc<ScriptedStreams<R>>,
    config: Config,
    decode: Decoder<R>,
) -> Run {
    let metrics = Metrics::new();
    let health = Arc::new(Health::new(config.health.sink_error_grace));
    health.set_store_open(true);
    let tracker = AckTracker::default();
    let store =
        CheckpointStore::open(&config.checkpoint.path, config.checkpoint.journal_mode).unwrap();
    let services = Services {
        metrics: metrics.clone(),
        health: health.clone(),
        store,
        tracker: tracker.clone(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        run_pipeline(&config, services, api, STREAM.into(), decode, async move {
            let _ = stopped.await;
        })
        .await
    });
    Run {
        metrics,
        health,
        tracker,
        stop,
        task,
    }
}

async fn documents(es: &FakeEs) -> BTreeMap<String, Value> {
    let v: Value = reqwest::Client::new()
        .get(format!("{}/scripted/_search?size=10000", es.url()))
        .header("x-fake-bypass", "1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["hits"]["hits"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|h| (h["_id"].as_str().unwrap().to_string(), h["_source"].clone()))
        .collect()
}

async fn wait_for(es: &FakeEs, expected: &BTreeMap<String, Value>, within: Duration) {
    let until = Instant::now() + within;
    loop {
        let docs = documents(es).await;
        if &docs == expected {
            return;
        }
        assert!(
            Instant::now() < until,
            "index never reached the expected state:\n expected {expected:?}\n actual {docs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn doc(id: &str, n: u64) -> (String, Value) {
    (id.to_string(), json!({"id": id, "n": n}))
}

async fn stop(run: Run) {
    let _ = run.stop.send(());
    run.task.await.unwrap().unwrap();
}

/// A child shard starts only after its parent is read to the end and every record of it is
/// acknowledged and checkpointed; after a merge, after both parents. The item's changes move
/// from parents to child within the same second, and the newest still wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_shards_wait_for_their_parents_acknowledgements() {
    let es = FakeEs::start().await.unwrap();
    // slow acknowledgements: a child started early would be caught
    es.set_faults(Faults {
        delay_ms: 100,
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let t = 1_700_000_000;
    let p1: Vec<StreamRecord> = (1..=30).map(|i| put(i, "a", i, t)).collect();
    let p2: Vec<StreamRecord> = (31..=40).map(|i| put(i, "b", i - 30, t)).collect();
    // the merge child: "a" continues from 31, "b" from 11 — in the same second as the parents
    let child: Vec<StreamRecord> = (41..=50)
        .map(|i| put(i, if i % 2 == 0 { "a" } else { "b" }, i - 10, t))
        .collect();
    let shards = vec![
        shard("child", &["p1", "p2"], false, child),
        shard("p1", &[], true, p1),
        shard("p2", &[], true, p2),
    ];
    let api = Arc::new(ScriptedStreams::new(shards, dir.path().join("sluice.db")));
    let run = start(api.clone(), config(dir.path(), &es.url(), 7));
    wait_for(
        &es,
        &[doc("a", 40), doc("b", 39)].into(),
        Duration::from_secs(30),
    )
    .await;
    let child_starts: Vec<Call> = api
        .calls()
        .into_iter()
        .filter(|c| matches!(c, Call::Iterator { shard, .. } if shard == "child"))
        .collect();
    assert_eq!(child_starts.len(), 1, "{child_starts:?}");
    match &child_starts[0] {
        Call::Iterator {
            at,
            parents_finished,
            ..
        } => {
            assert!(
                parents_finished,
                "both parents were checkpointed as finished before the child started"
            );
            assert_eq!(*at, StartAt::TrimHorizon);
        }
        other => panic!("{other:?}"),
    }
    for parent in ["p1", "p2"] {
        let starts = api
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::Iterator { shard, .. } if shard == parent))
            .count();
        assert_eq!(starts, 1, "{parent} is read once: an ended shard is not restarted while its last writes are in flight");
    }
    assert_eq!(run.metrics.documents.with_label_values(&["stale"]).get(), 0);
    stop(run).await;
    let cps = read_checkpoints(&dir.path().join("sluice.db"), STREAM).unwrap();
    assert!(cps["p1"].finished && cps["p2"].finished && !cps["child"].finished);
    assert!(
        cps["child"].clock > cps["p1"].clock.max(cps["p2"].clock),
        "versions continue above the parents: {cps:?}"
    );
}

/// An expired iterator is renewed just after the last record read: no gap, no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_iterator_renews_after_the_last_record_read() {
    let es = FakeEs::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<StreamRecord> = (1..=30)
        .map(|i| put(i, &format!("d{i}"), 1, 1_700_000_000 + i as i64))
        .collect();
    let api = Arc::new(
        ScriptedStreams::new(
            vec![shard("s", &[], false, records)],
            dir.path().join("sluice.db"),
        )
        .failing("s", vec![(2, ApiError::ExpiredIterator)]),
    );
    let run = start(api.clone(), config(dir.path(), &es.url(), 10));
    let expected: BTreeMap<String, Value> = (1..=30).map(|i| doc(&format!("d{i}"), 1)).collect();
    wait_for(&es, &expected, Duration::from_secs(20)).await;
    let iterators = api.iterator_starts();
    assert_eq!(
        iterators,
        vec![
            StartAt::TrimHorizon,
            StartAt::AfterSequence(format!("{:030}", 10))
        ]
    );
    assert_eq!(es.stats().redelivered, 0, "nothing was sent twice");
    assert_eq!(
        run.metrics
            .retries
            .with_label_values(&["expired_iterator"])
            .get(),
        1
    );
    stop(run).await;
}

/// Trimmed data is reported loudly (metric, error log) and reading resumes at TRIM_HORIZON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimmed_data_is_reported_and_reading_resumes() {
    let es = FakeEs::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<StreamRecord> = (1..=30)
        .map(|i| put(i, &format!("d{i}"), 1, 1_700_000_000))
        .collect();
    // records 11..=20 age out while the reader is away: its second call sees TrimmedData and
    // the trim horizon is then record 21
    let mut api = ScriptedStreams::new(
        vec![shard("s", &[], false, records)],
        dir.path().join("sluice.db"),
    )
    .failing("s", vec![(2, ApiError::TrimmedData("scripted".into()))]);
    api.trim_to = [("s".to_string(), 20)].into();
    let api = Arc::new(api);
    let run = start(api.clone(), config(dir.path(), &es.url(), 10));
    let expected: BTreeMap<String, Value> = (1..=10)
        .chain(21..=30)
        .map(|i| doc(&format!("d{i}"), 1))
        .collect();
    wait_for(&es, &expected, Duration::from_secs(20)).await;
    assert_eq!(
        run.metrics.data_loss.with_label_values(&["trimmed"]).get(),
        1,
        "the loss is counted"
    );
    let iterators = api.iterator_starts();
    assert_eq!(iterators, vec![StartAt::TrimHorizon, StartAt::TrimHorizon]);
    stop(run).await;
}

/// Throttling backs off with growing, jittered delays, and every record still arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_backs_off_and_recovers() {
    let es = FakeEs::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<StreamRecord> = (1..=5)
        .map(|i| put(i, &format!("d{i}"), 1, 1_700_000_000))
        .collect();
    let throttled = (1..=4)
        .map(|n| (n, ApiError::Throttled("LimitExceededException".into())))
        .collect();
    let api = Arc::new(
        ScriptedStreams::new(
            vec![shard("s", &[], false, records)],
            dir.path().join("sluice.db"),
        )
        .failing("s", throttled),
    );
    let run = start(api.clone(), config(dir.path(), &es.url(), 10));
    let expected: BTreeMap<String, Value> = (1..=5).map(|i| doc(&format!("d{i}"), 1)).collect();
    wait_for(&es, &expected, Duration::from_secs(20)).await;
    let times: Vec<Instant> = api
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Records { shard, at } if shard == "s" => Some(at),
            _ => None,
        })
        .take(5)
        .collect();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // full jitter: delay n lies in [½, 1] × 100 ms × 2^(n-1), so every second gap is longer
    assert!(
        gaps[2] > gaps[0] && gaps[3] > gaps[1],
        "backoff grows: {gaps:?}"
    );
    assert!(gaps[0] >= Duration::from_millis(50), "{gaps:?}");
    assert_eq!(
        run.metrics
            .retries
            .with_label_values(&["source_throttled"])
            .get(),
        4
    );
    stop(run).await;
}

/// A DynamoDB→Kinesis change record for item `id`, created at `micros` µs.
fn kinesis_change(seq: u64, id: &str, n: u64, micros: u64) -> aws_sdk_kinesis::types::Record {
    let payload = json!({"eventName": "MODIFY", "dynamodb": {
        "ApproximateCreationDateTime": micros, "ApproximateCreationDateTimePrecision": "MICROSECOND",
        "Keys": {"id": {"S": id}}, "NewImage": {"id": {"S": id}, "n": {"N": n.to_string()}}}});
    kinesis_record(seq, payload.to_string().into_bytes())
}

fn kinesis_record(seq: u64, data: Vec<u8>) -> aws_sdk_kinesis::types::Record {
    aws_sdk_kinesis::types::Record::builder()
        .sequence_number(format!("{seq:030}"))
        .partition_key("pk")
        .data(aws_smithy_types::Blob::new(data))
        .approximate_arrival_timestamp(DateTime::from_secs(1_700_000_000))
        .build()
        .unwrap()
}

/// The route of a configuration without `[[route]]`: the whole item into `scripted`, by `id`.
fn the_index() -> Routes {
    Routes::single("scripted", Some(vec!["id".into()]), "|")
}

fn kinesis_decoder() -> Decoder<aws_sdk_kinesis::types::Record> {
    let routes = the_index();
    let reads = routes.reads();
    Arc::new(move |r| routes.apply(dynamodb_kinesis_row(r.data().as_ref(), &reads)?))
}

async fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Edges 2: a parent whose checkpoint says "unfinished" but that the stream no longer lists (it
/// aged out during a long outage) is read from its checkpoint; GetShardIterator answers
/// ResourceNotFound, so the loss is recorded (metric, error log with the last sequence number)
/// and the parent is finished — its child starts instead of waiting for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_that_aged_out_unfinished_is_recorded_as_lost_and_its_child_starts() {
    let es = FakeEs::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sluice.db");
    let store = CheckpointStore::open(&db, sluice::config::JournalMode::Wal).unwrap();
    let reached = ShardCheckpoint {
        sequence_number: Some(format!("{:030}", 7)),
        // above every version the child's own timestamps would give
        clock: 1_800_000_000_000_000,
        finished: false,
        start_at: None,
    };
    store
        .commit(STREAM, vec![("aged-out".into(), reached)])
        .await
        .unwrap();
    drop(store);
    let child: Vec<StreamRecord> = (20..=24)
        .map(|i| put(i, &format!("c{i}"), 1, 1_700_000_100))
        .collect();
    let api = Arc::new(ScriptedStreams::new(
        vec![shard("child", &["aged-out"], false, child)],
        db.clone(),
    ));
    let run = start(api.clone(), config(dir.path(), &es.url(), 10));
    let expected: BTreeMap<String, Value> = (20..=24).map(|i| doc(&format!("c{i}"), 1)).collect();
    wait_for(&es, &expected, Duration::from_secs(20)).await;
    assert_eq!(
        run.metrics
            .data_loss
            .with_label_values(&["shard_gone"])
            .get(),
        1
    );
    let aged = api.calls().into_iter().find_map(|c| match c {
        Call::Iterator { shard, at, .. } if shard == "aged-out" => Some(at),
        _ => None,
    });
    assert_eq!(
        aged,
        Some(StartAt::AfterSequence(format!("{:030}", 7))),
        "read from its checkpoint"
    );
    stop(run).await;
    let cps = read_checkpoints(&db, STREAM).unwrap();
    assert!(cps.get("aged-out").is_none_or(|c| c.finished), "{cps:?}");
    assert!(
        cps["child"].clock > 1_800_000_000_000_000,
        "versions continue above the lost parent"
    );
}

/// Edges 2: a listed parent whose GetShardIterator answers ResourceNotFound is not retried for
/// ever: the loss is recorded and its children start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_whose_iterator_is_not_found_ends_and_its_children_start() {
    let es = FakeEs::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let parent: Vec<StreamRecord> = (1..=3).map(|i| put(i, "p", i, 1_700_000_000)).collect();
    let child: Vec<StreamRecord> = (10..=12)
        .map(|i| put(i, &format!("c{i}"), 1, 1_700_000_100))
        .collect();
    let mut api = ScriptedStreams::new(
        vec![
            shard("parent", &[], true, parent),
            shard("child", &["parent"], false, child),
        ],
        dir.path().join("sluice.db"),
    );
    api.gone.insert("parent".into());
    let api = Arc::new(api);
    let run = start(api.clone(), config(dir.path(), &es.url(), 10));
    let expected: BTreeMap<String, Value> = (10..=12).map(|i| doc(&format!("c{i}"), 1)).collect();
    wait_for(&es, &expected, Duration::from_secs(20)).await;
    assert_eq!(
        run.metrics
            .data_loss
            .with_label_values(&["shard_gone"])
            .get(),
        1
    );
    assert_eq!(run.health.not_ready(), None, "nothing is stuck");
    stop(run).await;
}

/// Edges 2, the other side: ResourceNotFound for a shard the service still lists as open is
/// transient (AWS answers it for a stream that is not ACTIVE yet): retried, never a data loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_for_a_shard_still_listed_as_open_is_retried_not_lost() {
    let es = FakeEs::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<StreamRecord> = (1..=4)
        .map(|i| put(i, &format!("d{i}"), 1, 1_700_000_000))
        .collect();
    let api = ScriptedStreams::new(
        vec![shard("open", &[], false, records)],
        dir.path().join("sluice.db"),
    );
    api.not_found_for.lock().unwrap().insert("open".into(), 2);
    let run = start(Arc::new(api), config(dir.path(), &es.url(), 10));
    let expected: BTreeMap<String, Value> = (1..=4).map(|i| doc(&format!("d{i}"), 1)).collect();
    wait_for(&es, &expected, Duration::from_secs(20)).await;
    assert_eq!(
        run.metrics
            .data_loss
            .with_label_values(&["shard_gone"])
            .get(),
        0
    );
    assert_eq!(
        run.metrics.retries.with_label_values(&["not_found"]).get(),
        2
    );
    stop(run).await;
}

/// Edges 3 and 10: a record whose version Elasticsearch cannot store (a huge
/// ApproximateCreationDateTime) and records that are not DynamoDB changes at all are
/// dead-lettered by the decoder with their reason; every other record is indexed and the
/// checkpoint passes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_versions_and_garbage_are_dead_lettered_with_the_reason() {
    let es = FakeEs::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let t = 1_700_000_000_000_000;
    let records = vec![
        kinesis_change(1, "a", 1, t),
        kinesis_change(2, "huge", 1, 10_000_000_000_000_000_000),
        kinesis_record(3, b"\xff\xfe not json".to_vec()),
        kinesis_record(4, br#"{"dynamodb": {"Keys": {"id": {"N": 5}}}}"#.to_vec()),
        kinesis_record(5, b"[]".to_vec()),
        kinesis_change(6, "b", 1, t + 1),
    ];
    let api = Arc::new(ScriptedStreams::new(
        vec![shard("s", &[], false, records)],
        dir.path().join("sluice.db"),
    ));
    let run = start_with(api, config(dir.path(), &es.url(), 10), kinesis_decoder());
    wait_for(
        &es,
        &[doc("a", 1), doc("b", 1)].into(),
        Duration::from_secs(20),
    )
    .await;
    let db = dir.path().join("sluice.db");
    wait_until(
        "the checkpoint passes every record",
        Duration::from_secs(10),
        || {
            read_checkpoints(&db, STREAM).unwrap()["s"].sequence_number
                == Some(format!("{:030}", 6))
        },
    )
    .await;
    stop(run).await;
    let store = CheckpointStore::open(&db, sluice::config::JournalMode::Wal).unwrap();
    let letters = store.dead_letters().await.unwrap();
    let by_seq: BTreeMap<String, String> = letters
        .iter()
        .map(|d| {
            (
                d.sequence_number.trim_start_matches('0').to_string(),
                d.error.clone(),
            )
        })
        .collect();
    assert_eq!(
        by_seq.keys().collect::<Vec<_>>(),
        ["2", "3", "4", "5"],
        "{letters:?}"
    );
    assert!(
        by_seq["2"].contains("external version range"),
        "{}",
        by_seq["2"]
    );
    assert!(by_seq["3"].contains("not JSON"), "{}", by_seq["3"]);
    assert!(
        by_seq["4"].contains("Keys") || by_seq["4"].contains("key"),
        "{}",
        by_seq["4"]
    );
    assert!(!by_seq["5"].is_empty());
}

/// Edges 4: Kinesis reads are paced by the bytes actually read: after a 10 MiB page the next
/// GetRecords waits about 5 s (2 MiB/s per shard), after a 2 MiB page about 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_reads_are_paced_by_the_bytes_read() {
    let es = FakeEs::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    const MIB: usize = 1 << 20;
    let records: Vec<_> = (1..=12)
        .map(|i| kinesis_record(i, vec![b' '; MIB - 2]))
        .collect();
    let mut api = ScriptedStreams::new(
        vec![shard("k", &[], false, records)],
        dir.path().join("sluice.db"),
    );
    api.pacing = (Duration::from_millis(200), Some(2 * MIB as u64));
    let api = Arc::new(api);
    // the payloads are not DynamoDB changes: what is read is what counts, not what is written
    let skip: Decoder<aws_sdk_kinesis::types::Record> = Arc::new(|_| {
        Ok(Decoded {
            skipped: Some(Skip {
                reason: "no_route",
                detail: "pacing test".into(),
            }),
            ..Decoded::default()
        })
    });
    let run = start_with(api.clone(), config(dir.path(), &es.url(), 10), skip);
    wait_until("three GetRecords calls", Duration::from_secs(20), || {
        api.record_call_times("k").len() >= 3
    })
    .await;
    let at = api.record_call_times("k");
    let (after_10_mib, after_2_mib) = (at[1] - at[0], at[2] - at[1]);
    assert!(
        after_10_mib >= Duration::from_millis(4900) && after_10_mib < Duration::from_secs(7),
        "{after_10_mib:?}"
    );
    assert!(
        after_2_mib >= Duration::from_millis(950) && after_2_mib < Duration::from_secs(3),
        "{after_2_mib:?}"
    );
    stop(run).await;
}

/// Edges 5: while Elasticsearch does not answer, pages whose records are all skipped do not
/// pile up as pending segments (they merge), and everything is checkpointed once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_without_operations_do_not_pile_up_while_elasticsearch_is_down() {
    let es = FakeEs::start().await.unwrap();
    es.hold();
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<StreamRecord> = std::iter::once(put(1, "kept", 1, 1_700_000_000))
        .chain((2..=3000).map(|i| put(i, &format!("skip{i}"), 1, 1_700_000_000)))
        .collect();
    let api = Arc::new(ScriptedStreams::new(
        vec![shard("s", &[], false, records)],
        dir.path().join("sluice.db"),
    ));
    let routes = the_index();
    let reads = routes.reads();
    let decode: Decoder<StreamRecord> = Arc::new(move |r| {
        let d = routes.apply(dynamodb_row(r.json().as_bytes(), None, &reads)?)?;
        if d.changes[0].id.starts_with("skip") {
            return Ok(Decoded {
                skipped: Some(Skip {
                    reason: "no_route",
                    detail: "not wanted".into(),
                }),
                ..Decoded::default()
            });
        }
        Ok(d)
    });
    let run = start_with(api.clone(), config(dir.path(), &es.url(), 1), decode);
    wait_until("every record read", Duration::from_secs(60), || {
        api.record_call_times("s").len() > 3000
    })
    .await;
    let shard_id: sluice::ack::ShardId = "s".into();
    let pending = run.tracker.pending_segments(&shard_id);
    assert!(pending <= 2, "{pending} segments pending for 3,000 pages");
    es.release();
    wait_for(&es, &[doc("kept", 1)].into(), Duration::from_secs(30)).await;
    let db = dir.path().join("sluice.db");
    wait_until(
        "the checkpoint reaches the last record",
        Duration::from_secs(10),
        || {
            read_checkpoints(&db, STREAM).unwrap()["s"].sequence_number
                == Some(format!("{:030}", 3000))
        },
    )
    .await;
    stop(run).await;
}

/// Edges 6: shutdown meets its deadline when SQLite cannot commit (another holder of the
/// write lock stands in for a hung EFS mount). Checkpoints were committed earlier in the run,
/// so the exit is clean; what was not committed is re-delivered on restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_meets_its_deadline_when_the_checkpoint_store_cannot_commit() {
    let es = FakeEs::start().await.unwrap();
    es.set_faults(Faults {
        delay_ms: 500,
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sluice.db");
    let records: Vec<StreamRecord> = (1..=200)
        .map(|i| put(i, &format!("d{i}"), 1, 1_700_000_000))
        .collect();
    let api = Arc::new(ScriptedStreams::new(
        vec![shard("s", &[], false, records)],
        db.clone(),
    ));
    let cfg = config_with(dir.path(), &es.url(), 2, "[shutdown]\ntimeout = \"2s\"\n");
    let run = start(api, cfg);
    wait_until("a first checkpoint", Duration::from_secs(20), || {
        read_checkpoints(&db, STREAM)
            .ok()
            .and_then(|c| c.get("s").and_then(|c| c.sequence_number.clone()))
            .is_some()
    })
    .await;
    // the store stops answering: every commit now waits for the lock, then fails
    let blocker = rusqlite::Connection::open(&db).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let asked = Instant::now();
    let _ = run.stop.send(());
    let result = tokio::time::timeout(Duration::from_secs(10), run.task)
        .await
        .expect("shutdown never hangs")
        .unwrap();
    let took = asked.elapsed();
    assert!(took < Duration::from_millis(2600), "shutdown took {took:?}");
    assert!(
        result.is_ok(),
        "checkpoints were committed before the store hung: {result:?}"
    );
    blocker.execute_batch("ROLLBACK").unwrap();
}

/// Edges 6: when the checkpoint store never accepted a commit, shutdown still meets its
/// deadline, and the exit is an error that names the checkpoint store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_fails_within_its_deadline_when_nothing_could_be_committed() {
    let es = FakeEs::start().await.unwrap();
    es.hold();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sluice.db");
    let records: Vec<StreamRecord> = (1..=10)
        .map(|i| put(i, &format!("d{i}"), 1, 1_700_000_000))
        .collect();
    let api = Arc::new(ScriptedStreams::new(
        vec![shard("s", &[], false, records)],
        db.clone(),
    ));
    let run = start(
        api.clone(),
        config_with(dir.path(), &es.url(), 10, "[shutdown]\ntimeout = \"2s\"\n"),
    );
    wait_until("records read", Duration::from_secs(20), || {
        !api.record_call_times("s").is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let blocker = rusqlite::Connection::open(&db).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    es.release();
    wait_for(
        &es,
        &(1..=10).map(|i| doc(&format!("d{i}"), 1)).collect(),
        Duration::from_secs(10),
    )
    .await;
    let asked = Instant::now();
    let _ = run.stop.send(());
    let result = tokio::time::timeout(Duration::from_secs(10), run.task)
        .await
        .expect("shutdown never hangs")
        .unwrap();
    let took = asked.elapsed();
    assert!(took < Duration::from_millis(2600), "shutdown took {took:?}");
    let err = result.expect_err("nothing was committed").to_string();
    assert!(err.contains("checkpoint"), "{err}");
    blocker.execute_batch("ROLLBACK").unwrap();
}

/// Edges 7: while records are pending and no checkpoint advances for `health.stall_after`,
/// readiness is closed with the reason; it opens again once checkpoints move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_closes_while_no_checkpoint_advances_and_opens_when_one_does() {
    let es = FakeEs::start().await.unwrap();
    // requests accepted and never answered: records pending, nothing acknowledged
    es.hold();
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<StreamRecord> = (1..=5)
        .map(|i| put(i, &format!("d{i}"), 1, 1_700_000_000))
        .collect();
    let api = Arc::new(ScriptedStreams::new(
        vec![shard("s", &[], false, records)],
        dir.path().join("sluice.db"),
    ));
    let run = start(
        api,
        config_with(
            dir.path(),
            &es.url(),
            10,
            "[health]\nstall_after = \"1s\"\nsink_error_grace = \"1h\"\n",
        ),
    );
    wait_until("readiness names the stall", Duration::from_secs(10), || {
        run.health
            .not_ready()
            .is_some_and(|why| why.contains("no checkpoint has advanced"))
    })
    .await;
    es.release();
    wait_until("ready again", Duration::from_secs(10), || {
        run.health.not_ready().is_none()
    })
    .await;
    stop(run).await;
}

/// A free port on 127.0.0.1 for an HTTP endpoint started by the test.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Operate 4: time to data loss = retention − age of the oldest unacknowledged record. A shard
/// whose unacknowledged records arrived 23.5 h ago in a 24 h stream has 30 min left: below
/// `health.min_time_to_data_loss` (1 h by default), so /readyz is 503 naming that shard (and not
/// the fresh one; the container health check stays 200), the metric falls second by second, and
/// once Elasticsearch acknowledges, the shard is finished and readiness opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_close_to_losing_records_closes_readiness_and_names_it() {
    let es = FakeEs::start().await.unwrap();
    es.hold();
    let dir = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let old: Vec<StreamRecord> = (1..=5)
        .map(|i| put(i, &format!("old{i}"), 1, now - (23 * 3600 + 1800)))
        .collect();
    let fresh: Vec<StreamRecord> = (6..=8)
        .map(|i| put(i, &format!("fresh{i}"), 1, now))
        .collect();
    let api = Arc::new(ScriptedStreams::new(
        vec![
            // closed: DynamoDB rolls shards over every few hours, an open one is never this old
            shard("shardId-old", &[], true, old),
            shard("shardId-fresh", &[], false, fresh),
        ],
        dir.path().join("sluice.db"),
    ));
    let run = start(
        api,
        config_with(
            dir.path(),
            &es.url(),
            10,
            "[health]\nstall_after = \"1h\"\nsink_error_grace = \"1h\"\n",
        ),
    );
    let port = free_port();
    let serving = tokio_util::sync::CancellationToken::new();
    let http = sluice::http::serve(
        ([127, 0, 0, 1], port).into(),
        run.metrics.clone(),
        run.health.clone(),
        serving.clone(),
    )
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let readyz = |path: &'static str| {
        let client = client.clone();
        async move {
            let r = client
                .get(format!("http://127.0.0.1:{port}{path}"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let ttdl = |shard: &str| {
        run.metrics
            .time_to_data_loss
            .get_metric_with_label_values(&[shard])
            .unwrap()
            .get()
    };

    wait_until(
        "readiness names the old shard",
        Duration::from_secs(20),
        || {
            run.health
                .not_ready()
                .is_some_and(|why| why.contains("shardId-old"))
        },
    )
    .await;
    let (status, body) = readyz("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("time to data loss below health.min_time_to_data_loss (1h)")
            && body.contains("shardId-old has 1")
            && !body.contains("shardId-fresh"),
        "{body}"
    );
    // the container health check does not act on it: a new task would only be further behind
    assert_eq!(readyz("/readyz?for=container").await.0, 200);
    let (status, details) = readyz("/readyz?format=json").await;
    let details: Value = serde_json::from_str(&details).unwrap();
    assert_eq!(status, 503);
    assert_eq!(details["ready"], json!(false));
    let old_left = details["shards"]["shardId-old"]["time_to_data_loss_seconds"]
        .as_i64()
        .unwrap();
    assert!((1700..=1800).contains(&old_left), "{details}");
    assert!(
        details["shards"]["shardId-fresh"]["time_to_data_loss_seconds"]
            .as_i64()
            .unwrap()
            > 86_000,
        "{details}"
    );

    // the figure falls as the records age (it is computed every 5 s)
    let first = ttdl("shardId-old");
    let measured = Instant::now();
    wait_until(
        "the figure is computed again",
        Duration::from_secs(15),
        || ttdl("shardId-old") != first,
    )
    .await;
    let fell = first - ttdl("shardId-old");
    let waited = measured.elapsed().as_secs_f64();
    println!("time to data loss fell by {fell:.1}s in {waited:.1}s");
    assert!(
        fell > 0.0 && fell <= waited + 5.5,
        "fell {fell}s in {waited}s"
    );

    // acknowledged: the closed shard is finished and leaves the figures; readiness opens
    es.release();
    wait_until("ready again", Duration::from_secs(20), || {
        run.health.not_ready().is_none()
    })
    .await;
    assert!(
        !run.metrics
            .render()
            .contains("sluice_shard_time_to_data_loss_seconds{shard=\"shardId-old\"}"),
        "a finished shard has no figure"
    );
    assert_eq!(readyz("/readyz").await.0, 200);
    serving.cancel();
    let _ = http.await;
    stop(run).await;
}

/// Operate 5 at start: with `sink.manage_indices`, the `[[index]]` is created from its mappings
/// file, behind its alias, before the first write — so the stream's documents land in it through
/// the alias instead of creating an index of that name with a dynamic mapping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_indices_are_created_before_the_first_write() {
    let es = FakeEs::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mappings = dir.path().join("mappings.json");
    std::fs::write(
        &mappings,
        r#"{"properties": {"id": {"type": "keyword"}, "n": {"type": "long"}}}"#,
    )
    .unwrap();
    let mut config = config_with(
        dir.path(),
        &es.url(),
        10,
        &format!(
            "[[index]]\nname = \"scripted-v1\"\nalias = \"scripted\"\nmappings_file = \"{}\"\n",
            mappings.display()
        ),
    );
    config.sink.manage_indices = true;
    let records: Vec<StreamRecord> = (1..=5)
        .map(|i| put(i, &format!("d{i}"), i, 1_700_000_000))
        .collect();
    let api = Arc::new(ScriptedStreams::new(
        vec![shard("s", &[], false, records)],
        dir.path().join("sluice.db"),
    ));
    let run = start(api, config);
    let expected: BTreeMap<String, Value> = (1..=5).map(|i| doc(&format!("d{i}"), i)).collect();
    wait_for(&es, &expected, Duration::from_secs(20)).await;
    assert_eq!(
        es.documents("scripted-v1"),
        expected,
        "written into the index behind the alias"
    );
    let state: Value = reqwest::get(format!("{}/scripted", es.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        state["scripted-v1"]["mappings"]["properties"]["n"]["type"], "long",
        "{state}"
    );
    assert_eq!(
        state["scripted-v1"]["aliases"]["scripted"]["is_write_index"], true,
        "{state}"
    );
    stop(run).await;
}

/// A reset to LATEST on DynamoDB Streams (`checkpoints reset --to latest`) is stored as the time
/// of the reset; the stream has no timestamp iterator, so the reader starts at TRIM_HORIZON and
/// passes over what was created before that second — and indexes everything after it, even when
/// a reader before it was killed without acknowledging anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_to_a_time_on_dynamodb_streams_passes_over_the_older_records() {
    let es = FakeEs::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let t = 1_700_000_000;
    let mut records: Vec<StreamRecord> = (1..=5)
        .map(|i| put(i, &format!("before{i}"), 1, t - 10 + i as i64))
        .collect();
    // the reset's own second is read, never skipped
    records.extend((6..=8).map(|i| put(i, &format!("after{i}"), 1, t + i as i64 - 6)));
    let db = dir.path().join("sluice.db");
    let store = CheckpointStore::open(&db, sluice::config::JournalMode::Wal).unwrap();
    store
        .commit(
            STREAM,
            vec![(
                "s".into(),
                ShardCheckpoint {
                    clock: 5,
                    ..Default::default()
                },
            )],
        )
        .await
        .unwrap();
    assert!(sluice::lease::sqlite::reset(
        &store,
        STREAM,
        "s",
        None,
        Some(StartAt::AtTimestamp(t * 1000 + 700)),
        0
    )
    .await
    .unwrap());
    let api = Arc::new(ScriptedStreams::new(
        vec![shard("s", &[], false, records)],
        db.clone(),
    ));
    let run = start(api.clone(), config(dir.path(), &es.url(), 4));
    let expected: BTreeMap<String, Value> = (6..=8).map(|i| doc(&format!("after{i}"), 1)).collect();
    wait_for(&es, &expected, Duration::from_secs(20)).await;
    assert_eq!(
        api.iterator_starts().first(),
        Some(&StartAt::AtTimestamp(t * 1000 + 700)),
        "started from the reset"
    );
    assert_eq!(
        run.metrics
            .records_skipped
            .with_label_values(&["before_start"])
            .get(),
        5
    );
    stop(run).await;
}
