//! The promise under stress: kill -9, Elasticsearch faults, SIGTERM under load.

mod common;

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use common::*;
use es_fake::Faults;

/// Acceptance 2: kill -9 at three random moments during a 2,000-change workload, restarting
/// each time → the index equals the table. Prints how many changes each restart re-delivered
/// (versions are reproduced on replay, so a repeated (id, version) is a re-delivered change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_three_times_during_the_workload_loses_nothing() {
    let bed = PostsBed::new("posts-kill").await;
    // realistic cluster latency: a kill usually finds a request in flight
    bed.es.fake.set_faults(Faults {
        delay_ms: 80,
        ..Faults::default()
    });
    let writer = {
        let ddb = bed.ddb.clone();
        tokio::spawn(async move { random_workload(&ddb, "Posts", 600, 2000, 11).await })
    };
    let mut rng = fastrand::Rng::with_seed(42);
    let mut sluice = bed.start_sluice();
    let mut report = Vec::new();
    for round in 1..=3 {
        tokio::time::sleep(Duration::from_millis(rng.u64(1500..4500))).await;
        let before = bed.es.fake.stats().redelivered;
        sluice.kill9();
        sluice = bed.start_sluice();
        sluice.wait_ready(Duration::from_secs(30)).await;
        // let the restarted process re-read from its checkpoint
        tokio::time::sleep(Duration::from_secs(2)).await;
        report.push((round, bed.es.fake.stats().redelivered - before));
    }
    let changes = writer.await.unwrap();
    bed.assert_converges(Duration::from_secs(120)).await;
    for (round, redelivered) in &report {
        println!("kill -9 #{round}: {redelivered} changes re-delivered after restart");
    }
    println!("workload: {changes} changes; index equals table");
}

/// Acceptance 3: 30% whole-request 429, 10% item 429, random 503s and 2 s stalls → converges;
/// a document that triggers a 400 mapping error lands in the dead-letter table with its error,
/// everything else is indexed, the shard keeps going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_faults_converge_and_mapping_errors_are_dead_lettered() {
    let bed = PostsBed::new("posts-faults").await;
    bed.es.fake.set_faults(Faults {
        bulk_429_rate: 0.30,
        item_429_rate: 0.10,
        bulk_503_rate: 0.05,
        stall_rate: 0.05,
        stall_ms: 2000,
        ..Faults::default()
    });
    let sluice = bed.start_sluice();
    sluice.wait_ready(Duration::from_secs(30)).await;
    let mut rng = fastrand::Rng::with_seed(3);
    // `views` is a number everywhere (dynamic mapping: long) …
    random_workload(&bed.ddb, "Posts", 300, 600, 5).await;
    // … except in this one item, which Elasticsearch must refuse with mapper_parsing_exception
    let mut bad = post("post-bad", 1, &mut rng);
    bad.insert("views".into(), AttributeValue::S("a great many".into()));
    bed.ddb
        .put_item()
        .table_name("Posts")
        .set_item(Some(bad))
        .send()
        .await
        .unwrap();
    // and the shard keeps going after it
    random_workload(&bed.ddb, "Posts", 300, 300, 6).await;

    let mut expected = scan_table(&bed.ddb, "Posts").await;
    expected
        .remove("post-bad")
        .expect("the bad item is in the table");
    assert_index_equals(&bed.es, bed.index, &expected, Duration::from_secs(180)).await;
    let stats = bed.es.fake.stats();
    assert!(
        stats.bulk_429 > 0 && stats.item_429 > 0 && stats.bulk_503 > 0,
        "faults were injected: {stats:?}"
    );

    // give the committer a moment, then read the dead letters from the SQLite file
    tokio::time::sleep(Duration::from_secs(1)).await;
    let conn = rusqlite::Connection::open(&bed.db).unwrap();
    let letters: Vec<(String, String, String)> = conn
        .prepare("SELECT doc_id, action, error FROM dead_letters")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        letters.len(),
        1,
        "exactly the bad document is dead-lettered: {letters:?}"
    );
    assert_eq!(letters[0].0, "post-bad");
    assert_eq!(letters[0].1, "index");
    assert!(
        letters[0].2.contains("mapper_parsing_exception"),
        "{}",
        letters[0].2
    );
    assert_eq!(
        sluice
            .metric("sluice_documents_total", "dead_lettered")
            .await,
        1.0
    );
    assert!(sluice.metric("sluice_retries_total", "http_429").await > 0.0);
    assert!(sluice.metric("sluice_retries_total", "item_429").await > 0.0);
    println!("fault stats: {stats:?}");
}

/// Acceptance 5: SIGTERM under load → exit 0 within shutdown.timeout with checkpoints committed;
/// a restart re-delivers nothing that was already acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_flushes_commits_and_exits_zero() {
    let bed = PostsBed::new("posts-term").await;
    // a slow cluster keeps requests in flight when the signal arrives
    bed.es.fake.set_faults(Faults {
        delay_ms: 150,
        ..Faults::default()
    });
    let mut sluice = bed.start_sluice();
    sluice.wait_ready(Duration::from_secs(30)).await;
    let writer = {
        let ddb = bed.ddb.clone();
        tokio::spawn(async move { random_workload(&ddb, "Posts", 400, 1500, 9).await })
    };
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        sluice.metric("sluice_records_read_total", "").await > 0.0,
        "under load when the signal comes"
    );
    sluice.sigterm();
    let (code, took) = sluice.wait_exit(Duration::from_secs(15));
    assert_eq!(
        code,
        Some(0),
        "exit code after SIGTERM; log:\n{}",
        sluice.log_text()
    );
    assert!(
        took < Duration::from_secs(10),
        "exit within shutdown.timeout (10s): took {took:?}"
    );
    assert!(
        sluice.log_text().contains("shutdown complete"),
        "clean drain; log:\n{}",
        sluice.log_text()
    );
    println!("SIGTERM → exit 0 in {took:?}");

    let before = bed.es.fake.stats().redelivered;
    let sluice = bed.start_sluice();
    sluice.wait_ready(Duration::from_secs(30)).await;
    writer.await.unwrap();
    bed.assert_converges(Duration::from_secs(120)).await;
    let redelivered = bed.es.fake.stats().redelivered - before;
    assert_eq!(
        redelivered, 0,
        "a restart after a clean shutdown re-delivers nothing"
    );
    drop(sluice);
}
