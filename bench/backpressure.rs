//! Backpressure: Elasticsearch stalls (accepts connections, never answers) for 60 s while
//! 20,000 changes arrive. Prints sluice's peak RSS during the stall and how long it takes to
//! catch up once the stall ends. Run: `cargo bench --bench backpressure`.
//!
//! Documents are padded to ~4 KB so the backlog (~90 MB) is far larger than the pipeline's
//! byte budget: memory must stay flat because readers stop polling, not because it all fits.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, StreamViewType, WriteRequest};
use common::*;

const CHANGES: usize = 20_000;
const STALL: Duration = Duration::from_secs(60);

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("backpressure: a benchmark; run it with `cargo bench --bench backpressure`");
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

async fn run() {
    let moto = Moto::start();
    let ddb = moto.dynamodb().await;
    let es = Es::start().await;
    let dir = tempfile::tempdir().unwrap();
    create_table(&ddb, "Posts", StreamViewType::NewAndOldImages).await;
    let db = dir.path().join("sluice.db");
    // production batch settings (defaults), a 30 s request timeout
    let opts = SluiceOptions {
        moto: &moto.url,
        es: &es.url(),
        table: "Posts",
        index: "posts-bp",
        db: &db,
        extra: "",
    };
    let cfg = config_toml(&opts, 0)
        .replace("max_documents = 200", "max_documents = 1000")
        .replace("max_bytes = \"1MiB\"", "max_bytes = \"5MiB\"")
        .replace("max_wait = \"100ms\"", "max_wait = \"50ms\"")
        .replace("request_timeout = \"5s\"", "request_timeout = \"30s\"")
        .replace("level = \"info,sluice=debug\"", "level = \"info\"");
    let http_port = free_port();
    let cfg = cfg.replace("127.0.0.1:0", &format!("127.0.0.1:{http_port}"));
    let path = dir.path().join("bench.toml");
    std::fs::write(&path, cfg).unwrap();
    let sluice = Sluice::start_with_config(&path, http_port, dir.path());
    sluice.wait_ready(Duration::from_secs(30)).await;
    let idle_rss = sluice.rss_bytes();

    es.fake.hold();
    let stall_started = Instant::now();
    let writer = {
        let ddb = ddb.clone();
        tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(1);
            let pad = "x".repeat(4000);
            let mut written = 0;
            while written < CHANGES {
                let batch: Vec<WriteRequest> = (0..25)
                    .map(|i| {
                        let mut item = post(
                            &format!("post-{}", (written + i) % 8_000),
                            (written + i) as u64,
                            &mut rng,
                        );
                        item.insert("pad".into(), AttributeValue::S(pad.clone()));
                        WriteRequest::builder()
                            .put_request(
                                PutRequest::builder().set_item(Some(item)).build().unwrap(),
                            )
                            .build()
                    })
                    .collect();
                ddb.batch_write_item()
                    .request_items("Posts", batch)
                    .send()
                    .await
                    .expect("batch write");
                written += 25;
            }
            written
        })
    };
    let mut peak = 0u64;
    let mut peak_pipeline = 0f64;
    while stall_started.elapsed() < STALL || !writer.is_finished() {
        peak = peak.max(sluice.rss_bytes());
        peak_pipeline = peak_pipeline.max(sluice.metric("sluice_pipeline_bytes", "").await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let written = writer.await.unwrap();
    let writes_took = stall_started.elapsed();
    let read_during_stall = sluice.metric("sluice_records_read_total", "").await;
    es.fake.release();
    let released = Instant::now();
    let expected = scan_table(&ddb, "Posts").await;
    let mut peak_catch_up = 0u64;
    while es.documents("posts-bp").await != expected {
        assert!(
            released.elapsed() < Duration::from_secs(600),
            "no catch-up within 10 minutes"
        );
        peak_catch_up = peak_catch_up.max(sluice.rss_bytes());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let catch_up = released.elapsed();
    let after_rss = sluice.rss_bytes();

    println!(
        "backpressure benchmark ({} changes of ~4.5 KB while Elasticsearch stalled {:?})",
        written, writes_took
    );
    println!(
        "  idle RSS before the stall:        {:>7.1} MiB",
        idle_rss as f64 / 1048576.0
    );
    println!(
        "  peak RSS during the stall:        {:>7.1} MiB   (target ≤ 128 MiB)",
        peak as f64 / 1048576.0
    );
    println!(
        "  peak pipeline bytes (budget 25 MiB): {:>4.1} MiB",
        peak_pipeline / 1048576.0
    );
    println!(
        "  records read during the stall:    {:>7}   (readers stopped: bounded lane queues and byte budget)",
        read_during_stall
    );
    println!(
        "  catch-up after the stall ended:   {:>7.1} s   (index equals table)",
        catch_up.as_secs_f64()
    );
    println!(
        "  peak RSS while catching up:       {:>7.1} MiB",
        peak_catch_up as f64 / 1048576.0
    );
    println!(
        "  RSS after catching up:            {:>7.1} MiB",
        after_rss as f64 / 1048576.0
    );
}
