//! `sluice checkpoints list | reset` on kinesalite with the real binary: where each shard stands
//! after a split, a reset refused while a worker holds the shard, and a reset to LATEST that
//! skips exactly what the command said it would.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use common::*;
use serde_json::{json, Value};

const STREAM: &str = "orders-cdc";
const ROUTE: &str = r#"
[[route]]
table = "public.customers"
index = "customers"
id = ["customer_id"]
"#;

fn checkpoints(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("checkpoints")
        .arg("--config")
        .arg(config)
        .args(args)
        .envs(aws_env())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A DMS change of customer `id` at revision `rev`; answers the shard it landed on.
async fn change(k: &aws_sdk_kinesis::Client, id: u64, rev: u64) -> (String, Value) {
    let row = json!({"customer_id": id, "rev": rev, "name": format!("customer {id} rev {rev}")});
    let now = std::time::SystemTime::now();
    let message = json!({
        "data": row,
        "metadata": {
            "timestamp": humantime::format_rfc3339_micros(now).to_string(),
            "record-type": "data", "operation": if rev == 0 { "insert" } else { "update" },
            "partition-key-type": "primary-key", "schema-name": "public", "table-name": "customers",
        }
    });
    let out = k
        .put_record()
        .stream_name(STREAM)
        .partition_key(format!("public.customers.{id}"))
        .data(Blob::new(message.to_string().into_bytes()))
        .send()
        .await
        .expect("put record");
    (out.shard_id().to_string(), row)
}

/// `sluice run` on the stream with its checkpoint file `db`, configured in `name` beside it.
fn run_on(
    kinesis: &KinesisEmulator,
    es: &Es,
    db: &Path,
    name: &str,
) -> (std::path::PathBuf, Sluice) {
    let dir = db.parent().unwrap();
    let http_port = free_port();
    let config = dir.join(name);
    let toml = kinesis_config_toml(
        &kinesis.url,
        &es.url(),
        STREAM,
        "dms",
        db,
        http_port,
        ROUTE,
        "",
    );
    std::fs::write(&config, toml).unwrap();
    let sluice = Sluice::start_with_config(&config, http_port, dir);
    (config, sluice)
}

fn shards_of(list: &Value) -> Vec<Value> {
    list["shards"].as_array().cloned().unwrap_or_default()
}

/// Operate 2: on a 4-shard stream after a split, `checkpoints list` shows the parent finished and
/// both children positioned after a sequence number, each with its owner and lag; `reset` while
/// the worker holds the shard is refused; after the worker stops, `reset --to latest` says which
/// records will be skipped, and the next `run` skips exactly those (the child's changes written
/// before the reset never reach the index; everything else does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_list_after_a_split_and_a_reset_to_latest_skips_what_it_said() {
    let kinesis = KinesisEmulator::kinesalite();
    let k = kinesis.client();
    let es = Es::start().await;
    es.delete_index("customers").await;
    create_stream(&k, STREAM, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sluice.db");
    let (config, mut sluice) = run_on(&kinesis, &es, &db, "sluice.toml");
    sluice.wait_ready(Duration::from_secs(30)).await;

    let mut model: BTreeMap<String, Value> = BTreeMap::new();
    for id in 1..=40 {
        let (_, row) = change(&k, id, 0).await;
        model.insert(id.to_string(), row);
    }
    let open = open_shards(&k, STREAM).await;
    let (parent, lo, hi) = open[0].clone();
    k.split_shard()
        .stream_name(STREAM)
        .shard_to_split(&parent)
        .new_starting_hash_key((lo + (hi - lo) / 2).to_string())
        .send()
        .await
        .expect("split");
    wait_active(&k, STREAM).await;
    let children: Vec<String> = open_shards(&k, STREAM)
        .await
        .into_iter()
        .filter(|(id, s, e)| *s >= lo && *e <= hi && *id != parent)
        .map(|(id, ..)| id)
        .collect();
    assert_eq!(children.len(), 2, "the split made two children");
    // changes until both children have records
    let mut rev = 1;
    let mut landed: BTreeMap<String, usize> = BTreeMap::new();
    while children
        .iter()
        .any(|c| landed.get(c).copied().unwrap_or(0) < 3)
    {
        for id in 1..=40 {
            let (shard, row) = change(&k, id, rev).await;
            *landed.entry(shard).or_default() += 1;
            model.insert(id.to_string(), row);
        }
        rev += 1;
        assert!(
            rev < 20,
            "partition keys never reached both children: {landed:?}"
        );
    }
    assert_index_equals(&es, "customers", &model, Duration::from_secs(60)).await;

    // list: the parent finished, the children positioned after a sequence number, all owned
    let mut list = Value::Null;
    for _ in 0..50 {
        let (ok, out, err) = checkpoints(&config, &["list", "--json"]);
        assert!(ok, "{out}{err}");
        list = serde_json::from_str(&out).unwrap();
        let positioned = shards_of(&list).iter().all(|s| {
            !children.contains(&s["shard"].as_str().unwrap_or_default().to_string())
                || s["sequence_number"].is_string()
        });
        if positioned {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let shards = shards_of(&list);
    assert_eq!(shards.len(), 6, "4 shards + 2 children: {list:#}");
    let get = |id: &str| {
        shards
            .iter()
            .find(|s| s["shard"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} listed: {list:#}"))
    };
    assert_eq!(get(&parent)["finished"], json!(true), "{list:#}");
    assert_eq!(get(&parent)["position"], json!("finished"));
    for child in &children {
        let c = get(child);
        assert_eq!(c["finished"], json!(false), "{c}");
        assert!(c["position"].as_str().unwrap().starts_with("after "), "{c}");
        assert_eq!(c["lease_live"], json!(true), "{c}");
        assert!(c["owner"].is_string(), "{c}");
        // caught up: no record after the checkpoint, a whole retention before data loss
        assert_eq!(c["oldest_unacknowledged_age_seconds"], json!(0.0), "{c}");
        assert_eq!(c["time_to_data_loss_seconds"], json!(86_400.0), "{c}");
    }
    assert_eq!(list["stream_error"], Value::Null);
    let (ok, table, err) = checkpoints(&config, &["list"]);
    assert!(ok, "{err}");
    println!("{table}");
    assert!(
        table.contains(&parent) && table.contains("finished") && table.contains("caught up"),
        "{table}"
    );

    // a live worker holds the child: refused, nothing changed
    let skipped_child = &children[0];
    let (ok, out, err) = checkpoints(
        &config,
        &["reset", "--shard", skipped_child, "--to", "latest"],
    );
    assert!(!ok, "{out}");
    assert!(
        err.contains("is being read by worker") && err.contains("--force"),
        "{err}"
    );

    // stopped: changes written now land partly on the child that will be reset
    sluice.sigterm();
    sluice.wait_exit(Duration::from_secs(30));
    let mut skipped = 0;
    for id in 1..=40 {
        let (shard, row) = change(&k, id, 100).await;
        if &shard == skipped_child {
            skipped += 1;
        } else {
            model.insert(id.to_string(), row);
        }
    }
    assert!(skipped > 0, "some changes landed on {skipped_child}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (ok, said, err) = checkpoints(
        &config,
        &["reset", "--shard", skipped_child, "--to", "latest"],
    );
    assert!(ok, "{said}{err}");
    println!("{said}");
    assert!(
        said.contains(&format!("shard {skipped_child} was after "))
            && said.contains("will be SKIPPED")
            && said.contains("clock"),
        "{said}"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // after the reset: every change is read, on every shard
    for id in (1..=40).filter(|id| id % 3 == 0) {
        let (_, row) = change(&k, id, 200).await;
        model.insert(id.to_string(), row);
    }
    let (_, _sluice) = run_on(&kinesis, &es, &db, "sluice2.toml");
    assert_index_equals(&es, "customers", &model, Duration::from_secs(60)).await;
    println!("reset to latest: {skipped} changes on {skipped_child} skipped as announced; every other change indexed");
}

/// The DynamoDB lease backend's reset (one conditional UpdateItem, on moto): the position moves,
/// the clock only rises, the lease is taken from its holder and the holder's next commit is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_on_the_dynamodb_lease_table_fences_the_holder() {
    use sluice::checkpoint::ShardCheckpoint;
    use sluice::lease::dynamodb::{reset, DynamoDbLeases};
    use sluice::lease::{FencedCheckpoint, LeaseTable};
    for (k, v) in aws_env() {
        std::env::set_var(k, v);
    }
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(
        &path,
        format!(
            "[source]\ntype = \"kinesis\"\nstream = \"s\"\nformat = \"dynamodb\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n[lease]\nbackend = \"dynamodb\"\ntable = \"leases\"\n",
            moto.url
        ),
    )
    .unwrap();
    let config = sluice::config::Config::load_with_env(&path, Vec::new()).unwrap();
    let stream = "arn:aws:kinesis:us-east-1:000000000000:stream/s";
    let worker = DynamoDbLeases::connect(&config, stream, "worker-a".into())
        .await
        .unwrap();
    let shard: sluice::ack::ShardId = "shardId-000000000001".into();
    worker
        .create_missing(std::slice::from_ref(&shard))
        .await
        .unwrap();
    let seen = worker.leases().await.unwrap().remove(0);
    let held = worker.take(&seen).await.unwrap().expect("taken");
    let at = |seq: &str, clock| FencedCheckpoint {
        shard: shard.clone(),
        epoch: held.epoch,
        checkpoint: ShardCheckpoint {
            sequence_number: Some(seq.into()),
            clock,
            finished: false,
            start_at: None,
        },
    };
    assert!(worker
        .commit(vec![at("500", 7_000)])
        .await
        .unwrap()
        .is_empty());

    assert!(reset(
        &config,
        stream,
        &shard,
        None,
        Some(sluice::source::StartAt::AtTimestamp(1_700_000_000_000)),
        9_000
    )
    .await
    .unwrap());
    let cp = worker.checkpoints().await.unwrap().remove(&*shard).unwrap();
    assert_eq!(cp.sequence_number, None, "{cp:?}");
    assert_eq!(
        cp.start_at,
        Some(sluice::source::StartAt::AtTimestamp(1_700_000_000_000))
    );
    assert_eq!(cp.clock, 9_000, "raised");
    assert_eq!(
        worker.commit(vec![at("600", 9_500)]).await.unwrap(),
        vec![shard.clone()],
        "fenced"
    );
    let lease = worker.leases().await.unwrap().remove(0);
    assert_eq!((lease.owner, lease.epoch), (None, held.epoch + 1));

    assert!(
        reset(&config, stream, &shard, Some("100".into()), None, 5_000)
            .await
            .unwrap()
    );
    let cp = worker.checkpoints().await.unwrap().remove(&*shard).unwrap();
    assert_eq!(
        (cp.sequence_number.as_deref(), cp.start_at, cp.clock),
        (Some("100"), None, 9_000)
    );
    assert!(!reset(&config, stream, "shardId-unknown", None, None, 0)
        .await
        .unwrap());
}
