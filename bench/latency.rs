//! Change → index latency at 1,000 changes/s with default settings: each change is written to
//! the source fake (a new item, so each has its own id) and the Elasticsearch test server (fast
//! mode) notes when a write for that id was first acknowledged. p50/p99/max over 20 s of
//! changes, for (a) DynamoDB Streams (4 shards), (b) DMS rows on Kinesis (4 shards) polled, and
//! (c) the same read with enhanced fan-out (SubscribeToShard, pushed); three runs,
//! min/median/max. "Acknowledged" is what sluice controls: a real cluster adds its refresh
//! interval (1 s by default) before a search sees the document.
//! Run: `cargo bench --bench latency` (SLUICE_BENCH_SECONDS: the length of the load, default 20).

#[path = "harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::*;
use serde_json::json;
use source_fake::StreamViewType;

const RATE: u64 = 1_000;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("latency: a benchmark; run it with `cargo bench --bench latency`");
        return;
    }
    let seconds: u64 = env_or("SLUICE_BENCH_SECONDS", 20);
    let rt = runtime();
    for read in [Read::Streams, Read::KinesisPolling, Read::KinesisFanOut] {
        let runs: Vec<(f64, f64, f64)> = (0..3).map(|_| rt.block_on(run(read, seconds))).collect();
        let (a0, a1, a2) = spread(runs.iter().map(|r| r.0).collect());
        let (b0, b1, b2) = spread(runs.iter().map(|r| r.1).collect());
        let (c0, c1, c2) = spread(runs.iter().map(|r| r.2).collect());
        println!(
            "{}, {RATE} changes/s for {seconds} s, default settings: p50 {a0:.0} / {a1:.0} / {a2:.0} ms, p99 {b0:.0} / {b1:.0} / {b2:.0} ms, max {c0:.0} / {c1:.0} / {c2:.0} ms (min/median/max of 3 runs)",
            match read {
                Read::Streams => "(a) DynamoDB Streams",
                Read::KinesisPolling => "(b) DMS rows on Kinesis, polling",
                Read::KinesisFanOut => "(c) DMS rows on Kinesis, enhanced fan-out",
            }
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    Streams,
    KinesisPolling,
    KinesisFanOut,
}

/// (p50, p99, max) in milliseconds.
async fn run(read: Read, seconds: u64) -> (f64, f64, f64) {
    let kinesis = read != Read::Streams;
    let bed = Bed::start(4).await;
    let (fake, es) = (&bed.fake, &bed.es);
    let source = if read == Read::KinesisFanOut {
        fake.create_kinesis_stream("changes", 4).unwrap();
        "type = \"kinesis\"\nstream = \"changes\"\nformat = \"dms\"\nconsumer = \"enhanced_fan_out\""
    } else if kinesis {
        fake.create_kinesis_stream("changes", 4).unwrap();
        "type = \"kinesis\"\nstream = \"changes\"\nformat = \"dms\""
    } else {
        fake.create_table("Posts", "id", StreamViewType::NewAndOldImages)
            .unwrap();
        "type = \"dynamodb_streams\"\ntable = \"Posts\""
    };
    let routes = "[[route]]\ntable = \"public.orders\"\nindex = \"orders\"\nid = [\"order_id\"]\n";
    let daemon = bed.daemon(source, if kinesis { routes } else { "" });
    daemon.wait_ready(Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let total = RATE * seconds;
    let mut written = Vec::with_capacity(total as usize);
    let started = Instant::now();
    for i in 0..total {
        // paced to the rate: each change at its own millisecond
        let due = started + Duration::from_micros(i * 1_000_000 / RATE);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let id = format!("{i}");
        if kinesis {
            let row = json!({
                "data": {"order_id": i, "status": "new", "total": "12.50"},
                "metadata": {"timestamp": "2024-07-29T10:00:00.123456Z", "record-type": "data", "operation": "insert",
                             "partition-key-type": "primary-key", "schema-name": "public", "table-name": "orders",
                             "transaction-id": i}
            });
            fake.kinesis_put("changes", [(id.clone(), row.to_string().into_bytes())])
                .unwrap();
        } else {
            fake.put_items("Posts", [blog_post(&id, 1)]).unwrap();
        }
        written.push((id, Instant::now()));
    }
    let until = Instant::now() + Duration::from_secs(60);
    while es.fast_live_documents() < total as usize && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ids: Vec<String> = written.iter().map(|(id, _)| id.clone()).collect();
    let seen = es.fast_first_seen(&ids);
    let mut lags: Vec<f64> = written
        .iter()
        .zip(seen)
        .map(|((_, at), seen)| {
            seen.expect("every change acknowledged")
                .duration_since(*at)
                .as_secs_f64()
                * 1000.0
        })
        .collect();
    lags.sort_by(f64::total_cmp);
    let at = |q: f64| lags[((lags.len() as f64 * q) as usize).min(lags.len() - 1)];
    drop(daemon);
    (at(0.50), at(0.99), lags[lags.len() - 1])
}
