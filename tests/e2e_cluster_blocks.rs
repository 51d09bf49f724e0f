//! The cluster refuses writes for a while for reasons that are not the documents' fault — a
//! write block (shrink, split, ILM, Amazon OpenSearch Service's low-storage block), a missing
//! index with `action.auto_create_index` off — and then accepts them again. Nothing may be
//! dead-lettered or lost, and readiness must say what is wrong meanwhile.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Polls /readyz until `until`; returns the reasons it gave while not ready.
async fn not_ready_reasons(sluice: &Sluice, until: Instant) -> Vec<String> {
    let mut reasons = Vec::new();
    while Instant::now() < until {
        if let Some((503, body)) = sluice.get("/readyz").await {
            reasons.push(body);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    reasons
}

async fn put(url: String, body: Value) {
    let r = reqwest::Client::new()
        .put(url)
        .json(&body)
        .send()
        .await
        .expect("settings request");
    assert!(r.status().is_success(), "{:?}", r.text().await);
}

fn dead_letter_rows(db: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("SELECT COUNT(*) FROM dead_letters", [], |r| r.get(0))
        .unwrap()
}

fn options_with_short_grace(bed: &PostsBed) -> SluiceOptions<'_> {
    SluiceOptions {
        extra: "[health]\nsink_error_grace = \"2s\"\n",
        ..bed.options()
    }
}

/// Acceptance: every item answered `403 cluster_block_exception` (index write block) for 10 s
/// in the middle of a workload, then the block is lifted → the index equals the table, the
/// dead-letter table is empty, and /readyz was 503 during the block, naming the sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_block_for_ten_seconds_loses_nothing_and_closes_readiness() {
    let bed = PostsBed::new("posts-block").await;
    let sluice = Sluice::start(&options_with_short_grace(&bed), bed.dir.path());
    sluice.wait_ready(Duration::from_secs(30)).await;
    // before any event, every series alerts and dashboards need is there, at 0
    let (_, fresh) = sluice.get("/metrics").await.expect("metrics");
    for series in [
        "sluice_retries_total{reason=\"cluster_block\"} 0",
        "sluice_retries_total{reason=\"index_not_found\"} 0",
        "sluice_retries_total{reason=\"http_429\"} 0",
        "sluice_documents_total{result=\"dead_lettered\"} 0",
        "sluice_documents_total{result=\"stale\"} 0",
        "sluice_bulk_requests_total{outcome=\"http_5xx\"} 0",
        "sluice_data_loss_events_total{reason=\"shard_gone\"} 0",
        "sluice_data_loss_events_total{reason=\"trimmed\"} 0",
        "sluice_records_skipped_total{reason=\"no_route\"} 0",
        "sluice_dead_letters 0",
    ] {
        assert!(
            fresh.contains(series),
            "{series} missing from a fresh /metrics"
        );
    }
    let writer = {
        let ddb = bed.ddb.clone();
        tokio::spawn(async move { random_workload(&ddb, "Posts", 200, 900, 21).await })
    };
    // the index exists once the first writes landed
    let started = Instant::now();
    while bed.es.documents(bed.index).await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no write landed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let settings = format!("{}/{}/_settings", bed.es.url(), bed.index);
    put(settings.clone(), json!({"index.blocks.write": true})).await;
    let reasons = not_ready_reasons(&sluice, Instant::now() + Duration::from_secs(10)).await;
    let blocked_retries = sluice.metric("sluice_retries_total", "cluster_block").await;
    put(settings, json!({"index.blocks.write": false})).await;
    writer.await.unwrap();
    bed.assert_converges(Duration::from_secs(120)).await;

    assert!(blocked_retries > 0.0, "writes met the block");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("sink has answered only errors")
                && r.contains("cluster_block_exception")),
        "/readyz said why during the block: {reasons:?}"
    );
    assert_eq!(
        sluice.get("/readyz").await.map(|r| r.0),
        Some(200),
        "ready again"
    );
    assert_eq!(dead_letter_rows(&bed.db), 0, "nothing dead-lettered");
    assert_eq!(
        sluice
            .metric("sluice_documents_total", "dead_lettered")
            .await,
        0.0
    );
    assert!(
        sluice.log_text().contains("retrying them"),
        "item retries are logged at warn"
    );
    println!(
        "write block: {blocked_retries} item retries, /readyz 503 {} times in 10 s",
        reasons.len()
    );
}

/// Acceptance: with `action.auto_create_index: false` and the index not there yet, every item
/// is answered `404 index_not_found_exception` for 10 s; then the index is created → the index
/// equals the table (deletes included), nothing is dead-lettered, /readyz was 503 meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_index_for_ten_seconds_loses_nothing_and_closes_readiness() {
    let bed = PostsBed::new("posts-noindex").await;
    let cluster = format!("{}/_cluster/settings", bed.es.url());
    put(
        cluster.clone(),
        json!({"persistent": {"action.auto_create_index": false}}),
    )
    .await;
    let sluice = Sluice::start(&options_with_short_grace(&bed), bed.dir.path());
    let writer = {
        let ddb = bed.ddb.clone();
        tokio::spawn(async move { random_workload(&ddb, "Posts", 200, 900, 22).await })
    };
    let reasons = not_ready_reasons(&sluice, Instant::now() + Duration::from_secs(10)).await;
    let missing_retries = sluice
        .metric("sluice_retries_total", "index_not_found")
        .await;
    put(format!("{}/{}", bed.es.url(), bed.index), json!({})).await;
    writer.await.unwrap();
    bed.assert_converges(Duration::from_secs(120)).await;
    put(
        cluster,
        json!({"persistent": {"action.auto_create_index": null}}),
    )
    .await;

    assert!(missing_retries > 0.0, "writes met the missing index");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("index_not_found_exception")),
        "/readyz said why: {reasons:?}"
    );
    assert_eq!(dead_letter_rows(&bed.db), 0, "nothing dead-lettered");
    println!(
        "missing index: {missing_retries} item retries, /readyz 503 {} times in 10 s",
        reasons.len()
    );
}
