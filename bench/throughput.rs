//! Whole daemon: how much change traffic one CPU-second of sluice absorbs. The real `sluice`
//! binary reads from the source fake (DynamoDB Streams or Kinesis, in this process) and writes
//! to the Elasticsearch test server in fast mode (in this process); only sluice's own CPU
//! seconds (`/proc/PID/stat`) are counted, from readiness to the last acknowledged document.
//! (a) DynamoDB Streams records of ~1 KB blog posts, (b) DMS JSON rows, (c) DynamoDB→Kinesis
//! records; `max_in_flight` 1, 2, 8; three runs each, min/median/max.
//! Run: `cargo bench --bench throughput` (SLUICE_BENCH_RECORDS: records per run, default 50,000).

#[path = "harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::*;
use serde_json::json;
use source_fake::StreamViewType;

#[derive(Clone, Copy)]
enum Kind {
    DynamoDbStreams,
    Dms,
    DynamoDbKinesis,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::DynamoDbStreams => "(a) DynamoDB Streams, ~1 KB blog posts",
            Kind::Dms => "(b) DMS JSON rows via Kinesis",
            Kind::DynamoDbKinesis => "(c) DynamoDB→Kinesis records",
        }
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("throughput: a benchmark; run it with `cargo bench --bench throughput`");
        return;
    }
    let records: usize = env_or("SLUICE_BENCH_RECORDS", 50_000);
    let rt = runtime();
    // SLUICE_BENCH_ONLY=a|b|c: one record kind at max_in_flight 2 (for profiles)
    let only = std::env::var("SLUICE_BENCH_ONLY").ok();
    let kinds = match only.as_deref() {
        Some("a") => vec![Kind::DynamoDbStreams],
        Some("b") => vec![Kind::Dms],
        Some("c") => vec![Kind::DynamoDbKinesis],
        _ => vec![Kind::DynamoDbStreams, Kind::Dms, Kind::DynamoDbKinesis],
    };
    let in_flights: &[usize] = if only.is_some() { &[2] } else { &[1, 2, 8] };
    for kind in kinds {
        for &in_flight in in_flights {
            let runs: Vec<Run> = (0..3)
                .map(|_| rt.block_on(run(kind, in_flight, records)))
                .collect();
            let (rate_lo, rate_mid, rate_hi) =
                spread(runs.iter().map(|r| r.bytes as f64 / 1e6 / r.cpu).collect());
            let (rec_lo, rec_mid, rec_hi) =
                spread(runs.iter().map(|r| records as f64 / r.cpu).collect());
            let (_, wall, _) = spread(runs.iter().map(|r| r.wall).collect());
            let (_, rss, rss_hi) = spread(runs.iter().map(|r| r.peak_rss).collect());
            println!(
                "{}, max_in_flight {in_flight}: {rate_lo:.1} / {rate_mid:.1} / {rate_hi:.1} MB per CPU-second (min/median/max); {rec_lo:.0} / {rec_mid:.0} / {rec_hi:.0} records per CPU-second; {:.0} bytes a record; median wall {wall:.1} s; peak RSS median {rss:.0} MiB, max {rss_hi:.0} MiB",
                kind.name(),
                runs[0].bytes as f64 / records as f64,
            );
        }
    }
}

struct Run {
    cpu: f64,
    wall: f64,
    bytes: usize,
    peak_rss: f64,
}

async fn run(kind: Kind, in_flight: usize, records: usize) -> Run {
    let bed = Bed::start(4).await;
    let (fake, es) = (&bed.fake, &bed.es);
    let source = match kind {
        Kind::DynamoDbStreams => {
            fake.create_table("Posts", "id", StreamViewType::NewAndOldImages)
                .unwrap();
            "type = \"dynamodb_streams\"\ntable = \"Posts\"".to_owned()
        }
        Kind::Dms | Kind::DynamoDbKinesis => {
            fake.create_kinesis_stream("changes", 8).unwrap();
            let format = if matches!(kind, Kind::Dms) {
                "dms"
            } else {
                "dynamodb"
            };
            format!("type = \"kinesis\"\nstream = \"changes\"\nformat = \"{format}\"")
        }
    };
    let routes = if matches!(kind, Kind::Dms) {
        "[[route]]\ntable = \"public.orders\"\nindex = \"orders\"\nid = [\"order_id\"]\n"
    } else {
        ""
    };
    let daemon = bed.daemon(
        &source,
        &format!("[batch]\nmax_in_flight = {in_flight}\n\n{routes}"),
    );
    daemon.wait_ready(Duration::from_secs(30)).await;
    // the records are made before the measured window opens
    let (items, payloads) = match kind {
        Kind::DynamoDbStreams => (
            (0..records)
                .map(|i| blog_post(&format!("post-{i}"), 1))
                .collect(),
            Vec::new(),
        ),
        Kind::Dms | Kind::DynamoDbKinesis => (Vec::new(), kinesis_payloads(kind, records)),
    };
    // what a record weighs on the wire: the DynamoDB JSON of its image, or the Kinesis data
    let bytes: usize = items
        .iter()
        .map(|i| serde_json::Value::Object(i.clone()).to_string().len())
        .chain(payloads.iter().map(|(_, d)| d.len()))
        .sum();
    let profile = daemon.profile();
    let cpu_before = daemon.cpu_seconds();
    let started = Instant::now();
    for chunk in items.chunks(1000) {
        fake.put_items("Posts", chunk.iter().cloned()).unwrap();
        tokio::task::yield_now().await;
    }
    for chunk in payloads.chunks(1000) {
        fake.kinesis_put("changes", chunk.iter().cloned()).unwrap();
        tokio::task::yield_now().await;
    }
    let until = Instant::now() + Duration::from_secs(600);
    while es.fast_live_documents() < records {
        assert!(
            Instant::now() < until,
            "only {} of {records} documents in 600 s",
            es.fast_live_documents()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(profile);
    Run {
        cpu: daemon.cpu_seconds() - cpu_before,
        wall: started.elapsed().as_secs_f64(),
        bytes,
        peak_rss: daemon.peak_rss_mib(),
    }
}

/// DMS rows or DynamoDB→Kinesis records, as (partition key, data).
fn kinesis_payloads(kind: Kind, records: usize) -> Vec<(String, Vec<u8>)> {
    (0..records)
                .map(|i| {
                    let data = match kind {
                        Kind::Dms => json!({
                            "data": {"order_id": i, "customer_id": i % 977, "status": "shipped", "total": "1234.50",
                                     "note": "x".repeat(600), "updated_at": "2024-07-29T10:00:00Z", "lines": 3},
                            "metadata": {"timestamp": "2024-07-29T10:00:00.123456Z", "record-type": "data",
                                         "operation": "insert", "partition-key-type": "primary-key",
                                         "schema-name": "public", "table-name": "orders", "transaction-id": 42}
                        }),
                        _ => {
                            let id = format!("post-{i}");
                            json!({"eventName": "INSERT", "tableName": "Posts", "recordFormat": "application/json",
                                   "dynamodb": {"ApproximateCreationDateTime": 1_719_347_890_250_647u64 + i as u64,
                                                "ApproximateCreationDateTimePrecision": "MICROSECOND",
                                                "Keys": {"id": {"S": id}}, "NewImage": blog_post(&id, 1),
                                                "SizeBytes": 1000}})
                        }
                    };
                    (format!("k{i}"), data.to_string().into_bytes())
                })
        .collect()
}
