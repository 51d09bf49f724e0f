//! The sink against a cluster with a request size limit (http.max_content_length, or Amazon
//! OpenSearch Service's payload cap): a request answered 413 is split until it fits, and a
//! document too large on its own is dead-lettered — never retried for ever, never dropped.

use std::sync::Arc;

use es_fake::FakeEs;
use serde_json::{json, Value};
use sluice::ack::AckTracker;
use sluice::checkpoint::{CheckpointStore, ShardCheckpoint};
use sluice::config::{JournalMode, SinkConfig};
use sluice::http::Health;
use sluice::metrics::Metrics;
use sluice::sink::{BulkOp, BulkSink, Origin};
use sluice::transform::DocAction;

/// A sink writing to `es` with fast retries, holding shard-1's lease at epoch 1; its dead-letter
/// store and metrics (the folder lives as long as the returned guard).
async fn sink_for(es: &FakeEs) -> (BulkSink, CheckpointStore, Metrics, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(&dir.path().join("s.db"), JournalMode::Wal).unwrap();
    let metrics = Metrics::new();
    let cfg = SinkConfig {
        url: es.url(),
        backoff_initial: std::time::Duration::from_millis(5),
        ..SinkConfig::default()
    };
    let fence = sluice::lease::Fence::default();
    let forever = tokio::time::Instant::now() + std::time::Duration::from_secs(3600);
    fence.grant(&"shard-1".into(), 1, forever);
    let sink = BulkSink::new(
        &cfg,
        "us-east-1",
        store.clone(),
        metrics.clone(),
        Arc::new(Health::default()),
        fence,
    )
    .await
    .unwrap();
    (sink, store, metrics, dir)
}

#[tokio::test]
async fn too_large_requests_are_split_and_a_too_large_document_is_dead_lettered() {
    let es = FakeEs::start_limited("127.0.0.1:0".parse().unwrap(), None, 4096)
        .await
        .unwrap();
    let (sink, store, metrics, _dir) = sink_for(&es).await;

    let tracker = AckTracker::default();
    let shard = "shard-1".into();
    let mut acks = tracker.register(&shard, 1, ShardCheckpoint::default(), 21, 21);
    let origin = |n: u64| Origin {
        stream: "s".into(),
        shard: "shard-1".into(),
        sequence_number: n.to_string(),
        epoch: 1,
    };
    let mut ops: Vec<BulkOp> = (0..20)
        .map(|i| {
            let mut op = BulkOp::new(
                "big".into(),
                format!("d{i}"),
                1,
                DocAction::Index(json!({"pad": "x".repeat(700)})),
                origin(i),
            );
            op.acks.push(acks.pop().unwrap());
            op
        })
        .collect();
    let mut huge = BulkOp::new(
        "big".into(),
        "huge".into(),
        1,
        DocAction::Index(json!({"pad": "x".repeat(10_000)})),
        origin(99),
    );
    huge.acks.push(acks.pop().unwrap());
    ops.insert(7, huge);

    // ~25 KB in one request against a 4 KB limit
    sink.write(ops).await;

    let indexed: Value = reqwest::get(format!("{}/big/_count", es.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(indexed["count"], 20, "every document that fits was indexed");
    let letters = store.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].doc_id.as_deref(), Some("huge"));
    assert!(letters[0].error.contains("413"), "{}", letters[0].error);
    assert!(metrics.retries.with_label_values(&["http_413_split"]).get() >= 3);
    assert_eq!(metrics.documents.with_label_values(&["indexed"]).get(), 20);
    assert_eq!(
        metrics
            .documents
            .with_label_values(&["dead_lettered"])
            .get(),
        1
    );
}

/// Elasticsearch validates every action of a `_bulk` request before writing any: one version it
/// cannot parse refuses the whole request with 400. The request is split until the operation at
/// fault is alone; it is dead-lettered with the cluster's error, every other one is indexed, and
/// nothing is retried for ever.
#[tokio::test]
async fn a_whole_request_400_is_split_until_the_operation_at_fault_is_dead_lettered() {
    let es = FakeEs::start().await.unwrap();
    let (sink, store, metrics, _dir) = sink_for(&es).await;
    let tracker = AckTracker::default();
    let shard = "shard-1".into();
    let mut acks = tracker.register(&shard, 1, ShardCheckpoint::default(), 16, 16);
    let ops: Vec<BulkOp> = (0..16u64)
        .map(|i| {
            // a version Elasticsearch cannot store, as a decoder bug or a corrupt record
            // could produce if nothing stopped it earlier
            let version = if i == 11 { u64::MAX } else { 5 };
            let mut op = BulkOp::new(
                "vers".into(),
                format!("d{i}"),
                version,
                DocAction::Index(json!({"n": i})),
                Origin {
                    stream: "s".into(),
                    shard: "shard-1".into(),
                    sequence_number: i.to_string(),
                    epoch: 1,
                },
            );
            op.acks.push(acks.pop().unwrap());
            op
        })
        .collect();
    tokio::time::timeout(std::time::Duration::from_secs(20), sink.write(ops))
        .await
        .expect("a 400 is never retried for ever");
    let indexed: Value = reqwest::get(format!("{}/vers/_count", es.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(indexed["count"], 15);
    let letters = store.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].doc_id.as_deref(), Some("d11"));
    assert!(
        letters[0].error.contains("HTTP 400"),
        "{}",
        letters[0].error
    );
    assert!(metrics.retries.with_label_values(&["http_400_split"]).get() >= 4);
    assert_eq!(metrics.dead_letters.get(), 1);
}
