//! What no emulator produces — shard rollover and lineage, expired iterators, trimmed data,
//! throttling — against a scripted fake of the shard API, through the real pipeline (batcher,
//! sink, acknowledgements, SQLite checkpoints) into the in-process Elasticsearch test server.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_dynamodbstreams::types::{AttributeValue, OperationType, Record, StreamRecord};
use aws_smithy_types::DateTime;
use es_fake::{FakeEs, Faults};
use serde_json::{json, Value};
use sluice::app::{run_pipeline, Services};
use sluice::checkpoint::{read_checkpoints, CheckpointStore};
use sluice::config::Config;
use sluice::http::Health;
use sluice::metrics::Metrics;
use sluice::source::reader::Decoder;
use sluice::source::{ApiError, RecordPage, ShardApi, ShardInfo, SourceRecord, StartAt};
use sluice::transform::{dynamodb_change, DocIdSpec};

const STREAM: &str = "arn:aws:dynamodb:us-east-1:000000000000:table/Posts/stream/scripted";

/// One scripted shard: its records and whether it is closed.
struct ScriptedShard {
    info: ShardInfo,
    records: Vec<Record>,
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
/// GetRecords calls (counted per shard, 1-based).
struct ScriptedStreams {
    shards: Vec<ScriptedShard>,
    errors: Mutex<HashMap<String, VecDeque<(usize, ApiError)>>>,
    /// When a TrimmedData error is returned, the shard's trim horizon moves to this position.
    trim_to: HashMap<String, usize>,
    horizon: Mutex<HashMap<String, usize>>,
    calls: Mutex<Vec<Call>>,
    record_calls: Mutex<HashMap<String, usize>>,
    checkpoint_db: PathBuf,
}

impl ScriptedStreams {
    fn new(shards: Vec<ScriptedShard>, checkpoint_db: PathBuf) -> Self {
        ScriptedStreams {
            shards,
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
    fn shard(&self, id: &str) -> &ScriptedShard {
        self.shards
            .iter()
            .find(|s| &*s.info.id == id)
            .expect("scripted shard")
    }
}

impl ShardApi for ScriptedStreams {
    type Record = Record;

    async fn list_shards(&self) -> Result<Vec<ShardInfo>, ApiError> {
        Ok(self.shards.iter().map(|s| s.info.clone()).collect())
    }

    async fn shard_iterator(&self, shard: &str, at: &StartAt) -> Result<String, ApiError> {
        let s = self.shard(shard);
        let horizon = self
            .horizon
            .lock()
            .unwrap()
            .get(shard)
            .copied()
            .unwrap_or(0);
        let cps = read_checkpoints(&self.checkpoint_db, STREAM).unwrap_or_default();
        let parents_finished = s
            .info
            .parents
            .iter()
            .all(|p| cps.get(&**p).is_some_and(|c| c.finished));
        self.calls.lock().unwrap().push(Call::Iterator {
            shard: shard.into(),
            at: at.clone(),
            parents_finished,
        });
        let pos = match at {
            StartAt::TrimHorizon => horizon,
            StartAt::Latest => s.records.len(),
            StartAt::AtTimestamp(_) => unimplemented!("DynamoDB Streams has no AT_TIMESTAMP"),
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

    async fn get_records(
        &self,
        iterator: &str,
        limit: u32,
    ) -> Result<RecordPage<Record>, ApiError> {
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
        let s = self.shard(shard);
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
fn put(seq: u64, id: &str, n: u64, t: i64) -> Record {
    let key: HashMap<String, AttributeValue> =
        [("id".to_string(), AttributeValue::S(id.into()))].into();
    let mut image = key.clone();
    image.insert("n".into(), AttributeValue::N(n.to_string()));
    Record::builder()
        .event_name(if n == 1 {
            OperationType::Insert
        } else {
            OperationType::Modify
        })
        .dynamodb(
            StreamRecord::builder()
                .set_keys(Some(key))
                .set_new_image(Some(image))
                .sequence_number(format!("{seq:030}"))
                .approximate_creation_date_time(DateTime::from_secs(t))
                .build(),
        )
        .build()
}

fn shard(id: &str, parents: &[&str], closed: bool, records: Vec<Record>) -> ScriptedShard {
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
"#,
            dir.join("sluice.db").display()
        ),
    )
    .unwrap();
    Config::load_with_env(&path, Vec::new()).unwrap()
}

struct Run {
    metrics: Metrics,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn start(api: Arc<ScriptedStreams>, config: Config) -> Run {
    let metrics = Metrics::new();
    let store =
        CheckpointStore::open(&config.checkpoint.path, config.checkpoint.journal_mode).unwrap();
    let ids = DocIdSpec {
        attributes: vec!["id".into()],
        separator: "|".into(),
    };
    let decode: Decoder<Record> = Arc::new(move |r| dynamodb_change(r, &ids));
    let services = Services {
        metrics: metrics.clone(),
        health: Arc::new(Health::default()),
        store,
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
    let p1: Vec<Record> = (1..=30).map(|i| put(i, "a", i, t)).collect();
    let p2: Vec<Record> = (31..=40).map(|i| put(i, "b", i - 30, t)).collect();
    // the merge child: "a" continues from 31, "b" from 11 — in the same second as the parents
    let child: Vec<Record> = (41..=50)
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
    let records: Vec<Record> = (1..=30)
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
    let records: Vec<Record> = (1..=30)
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
    let records: Vec<Record> = (1..=5)
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
