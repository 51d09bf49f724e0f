//! End to end with the real binary on kinesalite: RDS changes as AWS DMS messages, and DynamoDB
//! changes carried in Kinesis.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use common::*;
use serde_json::{json, Value};

/// A source table of the DMS workload.
struct Table {
    schema: &'static str,
    name: &'static str,
    index: &'static str,
    pk: &'static [&'static str],
}

const TABLES: [Table; 3] = [
    Table {
        schema: "public",
        name: "customers",
        index: "customers",
        pk: &["customer_id"],
    },
    Table {
        schema: "public",
        name: "orders",
        index: "orders",
        pk: &["order_id"],
    },
    Table {
        schema: "shop",
        name: "order_lines",
        index: "order-lines",
        pk: &["order_id", "line"],
    },
];

const ROUTES: &str = r#"
[[route]]
table = "public.customers"
index = "customers"
id = ["customer_id"]

[[route]]
table = "public.orders"
index = "orders"
id = ["order_id"]

[[route]]
table = "shop.order_lines"
index = "order-lines"
id = ["order_id", "line"]
"#;

/// The `timestamp` DMS writes when it builds a message: µs, increasing in the order the task
/// builds them (the source's commit order).
fn dms_timestamp() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let us = LAST
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            Some(now.max(last + 1))
        })
        .map(|last| now.max(last + 1))
        .unwrap();
    let t = std::time::UNIX_EPOCH + Duration::from_micros(us);
    humantime::format_rfc3339_micros(t).to_string()
}

fn dms_message(t: &Table, op: &str, data: &Value, before: Option<&Value>) -> String {
    let pk: Vec<String> = t.pk.iter().map(|c| data[*c].to_string()).collect();
    let mut m = json!({
        "data": data,
        "metadata": {
            "timestamp": dms_timestamp(), "record-type": "data", "operation": op,
            "partition-key-type": "primary-key", "partition-key-value": format!("{}.{}.{}", t.schema, t.name, pk.join(".")),
            "schema-name": t.schema, "table-name": t.name, "transaction-id": 1144
        }
    });
    if let Some(b) = before {
        m["before-image"] = b.clone();
    }
    m.to_string()
}

/// A row: key columns plus values of every JSON type, with exact and scientific-notation numbers.
fn row(t: &Table, key: &[u64], rev: u64, rng: &mut fastrand::Rng) -> Value {
    let mut r = serde_json::Map::new();
    for (c, k) in t.pk.iter().zip(key) {
        r.insert((*c).into(), json!(k));
    }
    let extra: Value = serde_json::from_str(&format!(
        r#"{{"rev": {rev}, "name": "row {rev}", "amount": 1.2345678901234567E+19, "price": 19.990000000000000000001,
            "active": {}, "note": null, "qty": {}}}"#,
        rng.bool(),
        rng.u32(0..1000)
    ))
    .unwrap();
    r.extend(extra.as_object().unwrap().clone());
    Value::Object(r)
}

/// `_id` as sluice builds it: key columns joined with "|" (numbers need no escaping).
fn id_of(key: &[u64]) -> String {
    key.iter().map(u64::to_string).collect::<Vec<_>>().join("|")
}

async fn put(k: &aws_sdk_kinesis::Client, stream: &str, partition_key: &str, data: &str) {
    k.put_record()
        .stream_name(stream)
        .partition_key(partition_key)
        .data(Blob::new(data.as_bytes()))
        .send()
        .await
        .expect("put record");
}

/// What serves the Kinesis API: kinesalite, or the project's source fake (enhanced fan-out).
enum KinesisSource {
    Kinesalite(KinesisEmulator),
    Fake(source_fake::SourceFake),
}

impl KinesisSource {
    fn url(&self) -> String {
        match self {
            KinesisSource::Kinesalite(k) => k.url.clone(),
            KinesisSource::Fake(f) => f.url(),
        }
    }
}

/// A Kinesis stream, Elasticsearch without the test's indices, a scratch folder, and what
/// `[source]` says besides (how it is read).
struct StreamBed {
    kinesis: KinesisSource,
    k: aws_sdk_kinesis::Client,
    es: Es,
    dir: tempfile::TempDir,
    stream: &'static str,
    source_extra: String,
}

impl StreamBed {
    /// On kinesalite.
    async fn new(stream: &'static str, shards: i32, indices: &[&str]) -> StreamBed {
        Self::on(
            KinesisSource::Kinesalite(KinesisEmulator::kinesalite()),
            stream,
            shards,
            indices,
        )
        .await
    }

    /// On the source fake, read with enhanced fan-out: a subscription lasts `lifetime` there
    /// and is renewed by sluice after `renewal`.
    async fn fan_out(
        stream: &'static str,
        shards: i32,
        indices: &[&str],
        options: source_fake::Options,
        renewal: &str,
    ) -> StreamBed {
        let fake = source_fake::SourceFake::start_with(options)
            .await
            .expect("start the source fake");
        let mut bed = Self::on(KinesisSource::Fake(fake), stream, shards, indices).await;
        bed.source_extra =
            format!("consumer = \"enhanced_fan_out\"\nsubscription_renewal = \"{renewal}\"\n");
        bed
    }

    async fn on(
        kinesis: KinesisSource,
        stream: &'static str,
        shards: i32,
        indices: &[&str],
    ) -> StreamBed {
        let k = KinesisEmulator::client_for(&kinesis.url());
        let es = Es::start().await;
        create_stream(&k, stream, shards).await;
        for index in indices {
            es.delete_index(index).await;
        }
        StreamBed {
            kinesis,
            k,
            es,
            dir: tempfile::tempdir().unwrap(),
            stream,
            source_extra: String::new(),
        }
    }

    fn fake(&self) -> &source_fake::SourceFake {
        match &self.kinesis {
            KinesisSource::Fake(f) => f,
            KinesisSource::Kinesalite(_) => panic!("this bed runs on kinesalite"),
        }
    }

    /// Starts `sluice run` for this stream (again after a kill: same checkpoint file).
    fn start_sluice(&self, format: &str, routes: &str) -> Sluice {
        let http_port = free_port();
        let dir = self.dir.path();
        let config = dir.join(format!("sluice-{http_port}.toml"));
        let db = dir.join("sluice.db");
        let toml = kinesis_config_toml(
            &self.kinesis.url(),
            &self.es.url(),
            self.stream,
            format,
            &db,
            http_port,
            routes,
            &self.source_extra,
        );
        std::fs::write(&config, toml).unwrap();
        Sluice::start_with_config(&config, http_port, dir)
    }

    fn db(&self) -> std::path::PathBuf {
        self.dir.path().join("sluice.db")
    }
}

/// Acceptance 1 and 6: three tables, 5,000 random load/insert/update/delete changes as DMS
/// messages into a 4-shard stream (partition key schema.table.pk); during the run one shard is
/// split and two others merged, and sluice is killed with -9 once and restarted → each index
/// equals the final row set of its table. Per-shard MillisBehindLatest and records read are in
/// /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dms_changes_through_split_merge_and_kill_9_match_every_table() {
    let bed = StreamBed::new("rds-changes", 4, &TABLES.map(|t| t.index)).await;
    let sluice = dms_workload(&bed).await;
    let (_, metrics) = sluice.get("/metrics").await.unwrap();
    assert!(
        metrics.contains("sluice_behind_latest_seconds{shard=\"shardId-"),
        "MillisBehindLatest per shard:\n{metrics}"
    );
    assert!(
        metrics.contains("sluice_records_read_total{shard=\"shardId-"),
        "records read per shard:\n{metrics}"
    );
}

/// The DMS workload of acceptance 1: 5,000 random changes of three tables into the bed's
/// 4-shard stream, a split at 1,500, a kill -9 and restart at 2,500, a merge at 3,000; returns
/// the running sluice once every index equals its table.
async fn dms_workload(bed: &StreamBed) -> Sluice {
    let (k, es) = (&bed.k, &bed.es);
    let mut sluice = bed.start_sluice("dms", ROUTES);
    sluice.wait_ready(Duration::from_secs(30)).await;

    let mut rng = fastrand::Rng::with_seed(2024);
    let mut model: Vec<BTreeMap<Vec<u64>, Value>> =
        vec![BTreeMap::new(), BTreeMap::new(), BTreeMap::new()];
    let mut next_key = 1u64;
    // a control record, as DMS sends at the start of a task: skipped and counted
    let control = json!({"control": {"table-def": {"columns": {}, "primary-key": ["customer_id"]}},
        "metadata": {"record-type": "control", "operation": "create-table", "partition-key-type": "task-id",
                     "schema-name": "public", "table-name": "customers", "timestamp": "2024-07-29T00:00:00Z"}});
    put(k, "rds-changes", "task", &control.to_string()).await;
    let mut changes = 0;
    for n in 0..5000u64 {
        let ti = rng.usize(0..3);
        let t = &TABLES[ti];
        let existing: Option<Vec<u64>> = if model[ti].is_empty() || rng.u8(0..10) < 3 {
            None
        } else {
            model[ti].keys().nth(rng.usize(0..model[ti].len())).cloned()
        };
        let (op, key) = match existing {
            None => {
                next_key += 1;
                let key: Vec<u64> = if t.pk.len() == 2 {
                    vec![next_key, rng.u64(1..4)]
                } else {
                    vec![next_key]
                };
                (if n < 600 { "load" } else { "insert" }, key)
            }
            Some(key) if rng.u8(0..10) < 7 => ("update", key),
            Some(key) => ("delete", key),
        };
        let data = if op == "delete" {
            let mut d = serde_json::Map::new();
            for (c, v) in t.pk.iter().zip(&key) {
                d.insert((*c).into(), json!(v));
            }
            d.insert("name".into(), Value::Null);
            Value::Object(d)
        } else {
            row(t, &key, n, &mut rng)
        };
        let msg = dms_message(t, op, &data, None);
        let pk_text: Vec<String> = key.iter().map(u64::to_string).collect();
        put(
            &k,
            "rds-changes",
            &format!("{}.{}.{}", t.schema, t.name, pk_text.join(".")),
            &msg,
        )
        .await;
        if op == "delete" {
            model[ti].remove(&key);
        } else {
            model[ti].insert(key, data);
        }
        changes += 1;
        if n == 1500 {
            let open = open_shards(k, "rds-changes").await;
            let (shard, lo, hi) = &open[0];
            k.split_shard()
                .stream_name("rds-changes")
                .shard_to_split(shard)
                .new_starting_hash_key((lo + (hi - lo) / 2).to_string())
                .send()
                .await
                .expect("split");
            wait_active(k, "rds-changes").await;
        }
        if n == 2500 {
            sluice.kill9();
            sluice = bed.start_sluice("dms", ROUTES);
        }
        if n == 3000 {
            let open = open_shards(k, "rds-changes").await;
            let pair = open
                .windows(2)
                .rev()
                .find(|w| w[0].2 + 1 == w[1].1)
                .expect("two adjacent open shards");
            k.merge_shards()
                .stream_name("rds-changes")
                .shard_to_merge(&pair[0].0)
                .adjacent_shard_to_merge(&pair[1].0)
                .send()
                .await
                .expect("merge");
            wait_active(k, "rds-changes").await;
        }
    }
    for (ti, t) in TABLES.iter().enumerate() {
        let expected: BTreeMap<String, Value> = model[ti]
            .iter()
            .map(|(key, row)| (id_of(key), row.clone()))
            .collect();
        assert_index_equals(es, t.index, &expected, Duration::from_secs(180)).await;
    }
    let shards = open_shards(k, "rds-changes").await.len();
    println!("DMS: {changes} changes, 3 tables, split + merge ({shards} open shards at the end), kill -9 once: every index equals its table");
    sluice
}

/// Acceptance 2: an update that changes the primary key moves the document when DMS sends a
/// before image; without one, the old document stays (documented limitation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_key_changes_move_the_document_when_a_before_image_is_present() {
    let bed = StreamBed::new("pk-moves", 1, &["customers"]).await;
    let (k, es) = (&bed.k, &bed.es);
    let t = &TABLES[0];
    let mut rng = fastrand::Rng::with_seed(1);
    let r1 = row(t, &[1], 1, &mut rng);
    let mut r2 = r1.clone();
    r2["customer_id"] = json!(2);
    let mut r3 = r1.clone();
    r3["customer_id"] = json!(3);
    put(k, "pk-moves", "a", &dms_message(t, "insert", &r1, None)).await;
    put(
        &k,
        "pk-moves",
        "a",
        &dms_message(t, "update", &r2, Some(&json!({"customer_id": 1}))),
    )
    .await;
    put(k, "pk-moves", "a", &dms_message(t, "update", &r3, None)).await;
    let sluice = bed.start_sluice("dms", ROUTES);
    sluice.wait_ready(Duration::from_secs(30)).await;
    let expected: BTreeMap<String, Value> = [("2".to_string(), r2), ("3".to_string(), r3)].into();
    assert_index_equals(es, "customers", &expected, Duration::from_secs(60)).await;
}

/// Edges 9: DMS partitions by primary key, so the message that moves a row from key A to key B
/// lands in B's shard while A's earlier changes are in A's. 200 times: A is inserted and updated
/// in its shard, then moved to B in another shard, all in one PutRecords call (one arrival
/// time, as under load). The move's delete of A must win over A's last update in every case:
/// versions follow the DMS `timestamp`, which orders across shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_key_moves_across_shards_always_delete_the_old_document() {
    const SHARDS: usize = 4;
    let bed = StreamBed::new("pk-moves-across", SHARDS as i32, &["customers"]).await;
    let (k, es) = (&bed.k, &bed.es);
    let ranges = open_shards(k, "pk-moves-across").await;
    assert_eq!(ranges.len(), SHARDS);
    // DMS hashes the primary key; here the key picks its shard outright, so A and B are
    // guaranteed to be in different shards
    let hash_key = |key: u64| {
        let (_, lo, hi) = &ranges[key as usize % SHARDS];
        (lo + (hi - lo) / 2).to_string()
    };
    let t = &TABLES[0];
    let mut rng = fastrand::Rng::with_seed(9);
    let mut expected = BTreeMap::new();
    let sluice = bed.start_sluice("dms", ROUTES);
    sluice.wait_ready(Duration::from_secs(30)).await;
    for batch in 0..4u64 {
        let mut entries = Vec::new();
        for i in 0..50u64 {
            let a = 4 * (batch * 50 + i); // shard a % 4 = 0
            let b = a + 1 + rng.u64(0..3); // another shard
            let mut push = |key: u64, data: String| {
                entries.push(
                    aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                        .partition_key(format!("public.customers.{key}"))
                        .explicit_hash_key(hash_key(key))
                        .data(Blob::new(data.into_bytes()))
                        .build()
                        .unwrap(),
                );
            };
            push(
                a,
                dms_message(t, "insert", &row(t, &[a], 1, &mut rng), None),
            );
            for rev in 2..=4 {
                push(
                    a,
                    dms_message(t, "update", &row(t, &[a], rev, &mut rng), None),
                );
            }
            let moved = row(t, &[b], 5, &mut rng);
            push(
                b,
                dms_message(t, "update", &moved, Some(&json!({"customer_id": a}))),
            );
            expected.insert(b.to_string(), moved);
        }
        let out = k
            .put_records()
            .stream_name("pk-moves-across")
            .set_records(Some(entries))
            .send()
            .await
            .expect("put records");
        assert_eq!(out.failed_record_count(), Some(0));
    }
    assert_index_equals(es, "customers", &expected, Duration::from_secs(90)).await;
    println!(
        "200 primary-key moves across {SHARDS} shards: every old document deleted; {} writes judged stale",
        sluice.metric("sluice_documents_total", "stale").await
    );
}

/// Acceptance 3: DynamoDB changes in Kinesis, delivered out of order and with duplicates
/// (including same-item changes 1 µs and 1 ms apart) → the index equals the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_changes_out_of_order_and_duplicated_converge() {
    let bed = StreamBed::new("ddb-changes", 2, &["ddb-kinesis"]).await;
    let (k, es) = (&bed.k, &bed.es);
    let mut rng = fastrand::Rng::with_seed(77);
    let base: u64 = 1_719_347_890_000_000; // µs
    let mut records: Vec<(String, String)> = Vec::new();
    let mut table: BTreeMap<String, Value> = BTreeMap::new();
    for item in 0..200 {
        let id = format!("item-{item}");
        let mut t = base + item * 10_000_000;
        let steps = rng.usize(1..7);
        for step in 0..steps {
            // 1 µs apart, 1 ms apart, or a second apart
            let (precision, created) = match rng.u8(0..3) {
                0 => {
                    t += 1;
                    ("MICROSECOND", t)
                }
                1 => {
                    t = (t / 1000 + 1) * 1000;
                    ("MILLISECOND", t / 1000)
                }
                _ => {
                    t += 1_000_000;
                    ("MICROSECOND", t)
                }
            };
            let remove = step > 0 && rng.u8(0..5) == 0;
            let image = json!({"id": {"S": id}, "step": {"N": step.to_string()}, "big": {"N": "12345678901234567890123"}, "tags": {"SS": ["a", "b"]}});
            let mut ddb = json!({"ApproximateCreationDateTime": created, "ApproximateCreationDateTimePrecision": precision,
                                 "Keys": {"id": {"S": id}}, "SizeBytes": 100});
            if precision == "MILLISECOND" {
                ddb.as_object_mut()
                    .unwrap()
                    .remove("ApproximateCreationDateTimePrecision");
            }
            if !remove {
                ddb["NewImage"] = image.clone();
            }
            let rec = json!({"awsRegion": "us-east-1", "eventID": format!("{item}-{step}"), "eventName": if remove { "REMOVE" } else if step == 0 { "INSERT" } else { "MODIFY" },
                             "userIdentity": null, "recordFormat": "application/json", "tableName": "Items", "dynamodb": ddb, "eventSource": "aws:dynamodb"});
            records.push((id.clone(), rec.to_string()));
            if remove {
                table.remove(&id);
            } else {
                table.insert(id.clone(), json!({"id": id, "step": step, "big": serde_json::from_str::<Value>("12345678901234567890123").unwrap(), "tags": ["a", "b"]}));
            }
        }
    }
    // duplicates, then out-of-order delivery
    let dups: Vec<(String, String)> = records
        .iter()
        .filter(|_| rng.u8(0..100) < 15)
        .cloned()
        .collect();
    records.extend(dups);
    rng.shuffle(&mut records);
    let sluice = bed.start_sluice("dynamodb", "");
    sluice.wait_ready(Duration::from_secs(30)).await;
    // delivered in chunks while sluice runs, so late changes arrive in later bulk requests than
    // newer ones and only their versions keep them out
    for chunk in records.chunks(records.len() / 8 + 1) {
        for (key, rec) in chunk {
            put(k, "ddb-changes", key, rec).await;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_index_equals(es, "ddb-kinesis", &table, Duration::from_secs(120)).await;
    assert!(
        sluice.metric("sluice_documents_total", "stale").await > 0.0,
        "late and duplicate changes were refused as stale"
    );
    println!("DynamoDB→Kinesis: {} records delivered out of order with duplicates; index equals table ({} items)", records.len(), table.len());
}

/// Acceptance 5: malformed messages (not JSON, missing metadata, unknown operation, missing key
/// column) go to the dead-letter table with their reason and a metric; the shard keeps going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_dms_messages_are_dead_lettered_and_the_shard_keeps_going() {
    let bed = StreamBed::new("bad", 1, &["customers"]).await;
    let (k, es) = (&bed.k, &bed.es);
    let t = &TABLES[0];
    let mut rng = fastrand::Rng::with_seed(5);
    let good = |n: u64, rng: &mut fastrand::Rng| row(t, &[n], n, rng);
    let (g1, g2) = (good(1, &mut rng), good(2, &mut rng));
    put(k, "bad", "p", &dms_message(t, "insert", &g1, None)).await;
    put(k, "bad", "p", "this is { not json").await;
    put(k, "bad", "p", r#"{"data": {"customer_id": 9}}"#).await;
    put(
        &k,
        "bad",
        "p",
        &dms_message(t, "upsert", &good(9, &mut rng), None),
    )
    .await;
    put(
        &k,
        "bad",
        "p",
        &dms_message(t, "insert", &json!({"name": "no key"}), None),
    )
    .await;
    put(k, "bad", "p", &dms_message(t, "insert", &g2, None)).await;
    let sluice = bed.start_sluice("dms", ROUTES);
    sluice.wait_ready(Duration::from_secs(30)).await;
    let expected: BTreeMap<String, Value> = [("1".to_string(), g1), ("2".to_string(), g2)].into();
    assert_index_equals(es, "customers", &expected, Duration::from_secs(60)).await;
    assert_eq!(sluice.metric("sluice_decode_errors_total", "").await, 4.0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let conn = rusqlite::Connection::open(bed.db()).unwrap();
    let errors: Vec<String> = conn
        .prepare("SELECT error FROM dead_letters WHERE action = 'decode' ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(errors[0].contains("not valid JSON"), "{errors:?}");
    assert!(errors[1].contains("metadata"), "{errors:?}");
    assert!(
        errors[2].contains("unknown DMS operation `upsert`"),
        "{errors:?}"
    );
    assert!(
        errors[3].contains("route `public.customers`") && errors[3].contains("`customer_id`"),
        "{errors:?}"
    );
}

/// The customers table alone, of the DMS workload.
const CUSTOMERS: &str =
    "[[route]]\ntable = \"public.customers\"\nindex = \"customers\"\nid = [\"customer_id\"]\n";

/// The fake's enhanced fan-out, with quick consumer activation and `lifetime`-long
/// subscriptions; GetRecords limited to 5 calls a second per shard, as the service does for
/// every polling consumer together.
fn fan_out_options(lifetime: Duration) -> source_fake::Options {
    source_fake::Options {
        consumer_activation: Duration::from_millis(300),
        subscription_lifetime: lifetime,
        kinesis_read_limits: true,
        ..source_fake::Options::default()
    }
}

/// Enhanced fan-out, acceptance 1: the DMS workload — split, merge, kill -9 and restart (whose
/// new subscriptions meet the killed process's: ResourceInUseException, retried) — read with
/// SubscribeToShard from the source fake → every index equals its table, and no GetRecords.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dms_changes_read_with_enhanced_fan_out_through_split_merge_and_kill_9_match_every_table() {
    // the service ends each subscription after 10 s here: renewed when it does
    let bed = StreamBed::fan_out(
        "rds-changes",
        4,
        &TABLES.map(|t| t.index),
        fan_out_options(Duration::from_secs(10)),
        "270s",
    )
    .await;
    let sluice = dms_workload(&bed).await;
    assert_eq!(
        bed.fake().calls("GetRecords"),
        0,
        "read by subscriptions only"
    );
    assert!(sluice.metric("sluice_fan_out_subscriptions", "").await >= 1.0);
    assert!(bed.fake().fan_out_stats().subscriptions >= 4);
}

/// Enhanced fan-out, acceptance 2: subscriptions sluice renews after 6 s (the service would end
/// them after 5 minutes), over a steady 25 s of changes → at least three renewals of each shard's
/// subscription, every record read exactly once, none delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_subscriptions_renewed_again_and_again_skip_and_repeat_nothing() {
    let bed = StreamBed::fan_out(
        "renewals",
        2,
        &["customers"],
        fan_out_options(Duration::from_secs(300)),
        "6s",
    )
    .await;
    let routes = CUSTOMERS;
    let sluice = bed.start_sluice("dms", routes);
    sluice.wait_ready(Duration::from_secs(30)).await;
    let t = &TABLES[0];
    let mut rng = fastrand::Rng::with_seed(13);
    let mut model: BTreeMap<String, Value> = BTreeMap::new();
    let started = std::time::Instant::now();
    let mut written = 0u64;
    while started.elapsed() < Duration::from_secs(25) {
        let key = rng.u64(1..200);
        let data = row(t, &[key], written, &mut rng);
        let msg = dms_message(t, "update", &data, None);
        put(&bed.k, "renewals", &format!("public.customers.{key}"), &msg).await;
        model.insert(id_of(&[key]), data);
        written += 1;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert_index_equals(&bed.es, "customers", &model, Duration::from_secs(60)).await;
    let renewals = sluice.metric("sluice_fan_out_renewals_total", "").await;
    assert!(
        renewals >= 6.0, // three or more for each of the 2 shards
        "{renewals} renewals\n{}",
        sluice.log_text()
    );
    assert_eq!(
        sluice.metric("sluice_fan_out_redelivered_total", "").await,
        0.0
    );
    // 2 shards: 1 subscription each to begin with, then one per renewal
    assert!(bed.fake().fan_out_stats().subscriptions as f64 >= 2.0 + renewals);
    // every record reached the pipeline once: none skipped (the index equals the table, and
    // each record counted), none twice
    let read = sluice.metric("sluice_records_read_total", "").await;
    assert_eq!(read, written as f64);
    println!("fan-out: {written} changes, {renewals} renewals, 0 skipped, 0 delivered again");
}

/// Enhanced fan-out, acceptance 3: two deployments on one stream, one polling and one with
/// fan-out, each into its own cluster → both converge; the fan-out one is never throttled (the
/// fake limits GetRecords to 5 calls a second per shard, for all polling readers together).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_and_a_fan_out_deployment_on_one_stream_both_converge() {
    let bed = StreamBed::fan_out(
        "shared",
        2,
        &["customers"],
        fan_out_options(Duration::from_secs(300)),
        "270s",
    )
    .await;
    let routes = CUSTOMERS;
    let fan_out = bed.start_sluice("dms", routes);
    // the polling deployment: its own checkpoint file and cluster
    let other_es = Es::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("polling.toml");
    std::fs::write(
        &config,
        kinesis_config_toml(
            &bed.kinesis.url(),
            &other_es.url(),
            "shared",
            "dms",
            &dir.path().join("polling.db"),
            port,
            routes,
            "",
        ),
    )
    .unwrap();
    let polling = Sluice::start_with_config(&config, port, dir.path());
    fan_out.wait_ready(Duration::from_secs(30)).await;
    polling.wait_ready(Duration::from_secs(30)).await;
    let t = &TABLES[0];
    let mut rng = fastrand::Rng::with_seed(5);
    let mut model: BTreeMap<String, Value> = BTreeMap::new();
    for n in 0..600u64 {
        let key = rng.u64(1..300);
        let data = row(t, &[key], n, &mut rng);
        put(
            &bed.k,
            "shared",
            &format!("public.customers.{key}"),
            &dms_message(t, "update", &data, None),
        )
        .await;
        model.insert(id_of(&[key]), data);
    }
    assert_index_equals(&bed.es, "customers", &model, Duration::from_secs(60)).await;
    assert_index_equals(&other_es, "customers", &model, Duration::from_secs(60)).await;
    assert_eq!(
        fan_out
            .metric("sluice_retries_total", "reason=\"source_throttled\"")
            .await,
        0.0,
        "{}",
        fan_out.log_text()
    );
    println!(
        "polling deployment throttled {} times, fan-out 0",
        polling
            .metric("sluice_retries_total", "reason=\"source_throttled\"")
            .await
    );
}

/// Enhanced fan-out, acceptance 5: a restart finds its consumer registered and reuses it; the
/// same deployment switched back to polling continues from the checkpoints the fan-out one
/// committed, reading only what came after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reuses_the_consumer_and_switching_to_polling_continues_from_the_checkpoints() {
    let mut bed = StreamBed::fan_out(
        "switch",
        2,
        &["customers"],
        fan_out_options(Duration::from_secs(300)),
        "270s",
    )
    .await;
    let routes = CUSTOMERS;
    let t = &TABLES[0];
    let mut rng = fastrand::Rng::with_seed(9);
    let mut model: BTreeMap<String, Value> = BTreeMap::new();
    let mut next = 0u64;
    let mut write = |n: u64, model: &mut BTreeMap<String, Value>| {
        (0..n)
            .map(|_| {
                next += 1;
                let data = row(t, &[next], next, &mut rng);
                model.insert(id_of(&[next]), data.clone());
                (
                    format!("public.customers.{next}"),
                    dms_message(t, "insert", &data, None),
                )
            })
            .collect::<Vec<_>>()
    };
    for round in 0..2 {
        let mut sluice = bed.start_sluice("dms", routes);
        sluice.wait_ready(Duration::from_secs(30)).await;
        for (key, msg) in write(100, &mut model) {
            put(&bed.k, "switch", &key, &msg).await;
        }
        assert_index_equals(&bed.es, "customers", &model, Duration::from_secs(60)).await;
        // everything read was read once: nothing from before the restart again
        assert_eq!(sluice.metric("sluice_records_read_total", "").await, 100.0);
        if round == 1 {
            assert!(
                sluice.log_text().contains("reusing the stream consumer"),
                "{}",
                sluice.log_text()
            );
        }
        sluice.sigterm();
        assert_eq!(sluice.wait_exit(Duration::from_secs(20)).0, Some(0));
    }
    assert_eq!(
        bed.fake().consumer_registrations(),
        1,
        "registered once, then reused"
    );

    bed.source_extra.clear();
    let mut polling = bed.start_sluice("dms", routes);
    polling.wait_ready(Duration::from_secs(30)).await;
    for (key, msg) in write(30, &mut model) {
        put(&bed.k, "switch", &key, &msg).await;
    }
    assert_index_equals(&bed.es, "customers", &model, Duration::from_secs(60)).await;
    assert_eq!(
        polling.metric("sluice_records_read_total", "").await,
        30.0,
        "polling continues where fan-out stopped"
    );
    assert!(bed.fake().calls("GetRecords") > 0);
    polling.sigterm();
    assert_eq!(polling.wait_exit(Duration::from_secs(20)).0, Some(0));
}

/// Enhanced fan-out: the consumer deregistered under a running sluice (an operator's clean-up)
/// → the subscriptions break, sluice registers the consumer again and goes on from where each
/// shard stopped: the index still equals the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_deregistered_under_a_running_sluice_is_registered_again() {
    let bed = StreamBed::fan_out(
        "deregistered",
        2,
        &["customers"],
        fan_out_options(Duration::from_secs(300)),
        "270s",
    )
    .await;
    let routes = CUSTOMERS;
    let sluice = bed.start_sluice("dms", routes);
    sluice.wait_ready(Duration::from_secs(30)).await;
    let t = &TABLES[0];
    let mut rng = fastrand::Rng::with_seed(21);
    let mut model: BTreeMap<String, Value> = BTreeMap::new();
    let mut write = async |from: u64, to: u64, model: &mut BTreeMap<String, Value>| {
        for key in from..to {
            let data = row(t, &[key], key, &mut rng);
            put(
                &bed.k,
                "deregistered",
                &format!("public.customers.{key}"),
                &dms_message(t, "insert", &data, None),
            )
            .await;
            model.insert(id_of(&[key]), data);
        }
    };
    write(0, 50, &mut model).await;
    assert_index_equals(&bed.es, "customers", &model, Duration::from_secs(60)).await;
    let arn = bed.fake().kinesis_stream_arn("deregistered").unwrap();
    let consumers = bed
        .k
        .list_stream_consumers()
        .stream_arn(&arn)
        .send()
        .await
        .unwrap();
    let name = consumers.consumers()[0].consumer_name().to_owned();
    bed.k
        .deregister_stream_consumer()
        .stream_arn(&arn)
        .consumer_name(&name)
        .send()
        .await
        .unwrap();
    write(50, 100, &mut model).await;
    assert_index_equals(&bed.es, "customers", &model, Duration::from_secs(60)).await;
    assert_eq!(
        bed.fake().consumer_registrations(),
        2,
        "{}",
        sluice.log_text()
    );
    assert!(sluice.log_text().contains("registering it again"));
    assert_eq!(sluice.metric("sluice_records_read_total", "").await, 100.0);
}

/// Enhanced fan-out, backpressure: while Elasticsearch holds every bulk request, the pipeline
/// fills its budget and the reader stops taking events, so the service (the fake) stops sending:
/// what it has sent stays far below what the stream holds, and stops growing; released, the
/// index equals the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pipeline_holds_the_fan_out_subscription_back() {
    let bed = StreamBed::fan_out(
        "held",
        1,
        &["customers"],
        fan_out_options(Duration::from_secs(300)),
        "270s",
    )
    .await;
    let sluice = bed.start_sluice("dms", CUSTOMERS);
    sluice.wait_ready(Duration::from_secs(30)).await;
    bed.es.fake.hold();
    let t = &TABLES[0];
    let mut rng = fastrand::Rng::with_seed(3);
    let mut model: BTreeMap<String, Value> = BTreeMap::new();
    let total = 30_000u64;
    let records: Vec<(String, Vec<u8>)> = (0..total)
        .map(|key| {
            let mut data = row(t, &[key], key, &mut rng);
            data["note"] = json!("x".repeat(900));
            model.insert(id_of(&[key]), data.clone());
            (
                format!("public.customers.{key}"),
                dms_message(t, "insert", &data, None).into_bytes(),
            )
        })
        .collect();
    bed.fake().kinesis_put("held", records).unwrap();
    let sent = || -> u64 { bed.fake().fan_out_stats().records_sent.values().sum() };
    tokio::time::sleep(Duration::from_secs(4)).await;
    let first = sent();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = sent();
    assert!(
        second < total / 2,
        "{second} of {total} records sent while the pipeline is full"
    );
    assert_eq!(first, second, "sending stopped while held");
    let budget = sluice.metric("sluice_pipeline_budget_bytes", "").await;
    assert!(sluice.metric("sluice_pipeline_bytes", "").await <= budget);
    bed.es.fake.release();
    assert_index_equals(&bed.es, "customers", &model, Duration::from_secs(120)).await;
    println!("held: {second} of {total} records sent while Elasticsearch held every request");
}
