//! End to end with the real binary: DynamoDB (moto) → sluice → Elasticsearch (test server, or a
//! real cluster when SLUICE_TEST_ES_URL is set).

mod common;

use std::time::Duration;

use aws_sdk_dynamodb::types::StreamViewType;
use common::*;

/// Acceptance 1 and 9: 1,000 items, a random mix of put / update / delete (with ≥ 5 updates of
/// one item within a second and a delete-then-reinsert) → the index equals a full scan of the
/// table; /metrics, /healthz and /readyz answer and carry the promised metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_equals_table_after_a_random_workload() {
    let bed = PostsBed::new("posts-e2e").await;
    let sluice = bed.start_sluice();
    sluice.wait_ready(Duration::from_secs(30)).await;

    let changes = random_workload(&bed.ddb, "Posts", 1000, 2000, 7).await;
    bed.assert_converges(Duration::from_secs(120)).await;
    let docs = bed.es.documents("posts-e2e").await;
    assert!(
        docs.len() > 500,
        "the workload leaves most of the 1,000 items in place ({})",
        docs.len()
    );
    // exact numbers survived the trip
    let any = docs.values().next().unwrap();
    assert_eq!(any["big"].to_string(), "12345678901234567890123");
    assert_eq!(
        any["ratio"].to_string(),
        "0.1000000000000000055511151231257827"
    );

    // observability
    assert_eq!(sluice.get("/healthz").await.map(|r| r.0), Some(200));
    assert_eq!(sluice.get("/readyz").await.map(|r| r.0), Some(200));
    let (_, metrics) = sluice.get("/metrics").await.unwrap();
    for name in [
        "sluice_records_read_total",
        "sluice_documents_total{result=\"indexed\"}",
        "sluice_documents_total{result=\"deleted\"}",
        "sluice_bulk_request_duration_seconds_bucket",
        "sluice_batch_documents_bucket",
        "sluice_iterator_age_seconds",
        "sluice_checkpoint_lag_records",
        "sluice_shards_owned 1",
        "sluice_checkpoint_commits_total",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
    let read = metric_value(&metrics, "sluice_records_read_total", "");
    assert_eq!(read as usize, changes, "every change was read exactly once");
    println!(
        "changes: {changes}, documents: {}, records read: {read}",
        docs.len()
    );
}

/// Acceptance 7: a KEYS_ONLY stream is refused at start with a message saying what is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_only_stream_is_refused_at_start() {
    let moto = Moto::start();
    let ddb = moto.dynamodb().await;
    let es = Es::start().await;
    let dir = tempfile::tempdir().unwrap();
    for (table, view) in [
        ("KeysOnly", StreamViewType::KeysOnly),
        ("OldImage", StreamViewType::OldImage),
    ] {
        create_table(&ddb, table, view.clone()).await;
        let db = dir.path().join(format!("{table}.db"));
        let mut sluice = Sluice::start(
            &SluiceOptions {
                moto: &moto.url,
                es: &es.url(),
                table,
                index: "refused",
                db: &db,
                extra: "",
            },
            dir.path(),
        );
        let (code, _) = sluice.wait_exit(Duration::from_secs(30));
        assert_eq!(code, Some(1), "sluice must refuse a {view:?} stream");
        let log = sluice.log_text();
        assert!(
            log.contains(view.as_str()) && log.contains("NEW_IMAGE or NEW_AND_OLD_IMAGES"),
            "log:\n{log}"
        );
    }
}

/// /healthz answers while the process runs; /readyz says what is missing (here: the sink) with
/// 503, and opens once Elasticsearch is reachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_the_sink_and_says_what_is_missing() {
    let moto = Moto::start();
    let ddb = moto.dynamodb().await;
    create_table(&ddb, "Posts", StreamViewType::NewAndOldImages).await;
    let dir = tempfile::tempdir().unwrap();
    let es_port = free_port();
    let es_url = format!("http://127.0.0.1:{es_port}");
    let db = dir.path().join("sluice.db");
    let opts = SluiceOptions {
        moto: &moto.url,
        es: &es_url,
        table: "Posts",
        index: "ready",
        db: &db,
        extra: "",
    };
    let sluice = Sluice::start(&opts, dir.path());
    let until = std::time::Instant::now() + Duration::from_secs(30);
    let body = loop {
        match sluice.get("/readyz").await {
            Some((503, body))
                if body.contains("sink not reachable") && !body.contains("shards") =>
            {
                break body
            }
            _ if std::time::Instant::now() > until => {
                panic!("no 503 naming the sink; log:\n{}", sluice.log_text())
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert!(body.starts_with("not ready"), "{body}");
    assert_eq!(sluice.get("/healthz").await.map(|r| r.0), Some(200));
    // Elasticsearch comes up on the configured address: readiness follows
    let _es = es_fake::FakeEs::start_with(format!("127.0.0.1:{es_port}").parse().unwrap(), None)
        .await
        .unwrap();
    sluice.wait_ready(Duration::from_secs(20)).await;
}
