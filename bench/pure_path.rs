//! The pure path: decode → transform → encode, on one core, without any I/O — what one record
//! costs sluice before the network. Three record kinds, as the daemon sees them:
//! (a) DynamoDB Streams records of ~1 KB blog posts with nested blocks (each GetRecords record's
//!     DynamoDB JSON, as the daemon keeps it: JSON parse + transform + encode),
//! (b) DMS JSON rows from Kinesis (bytes: JSON parse + route + encode),
//! (c) DynamoDB→Kinesis records (bytes: JSON parse + transform + encode).
//! Three runs each; prints MB/s of record bytes and records/s, min/median/max.
//! Run: `cargo bench --bench pure_path` (`SLUICE_BENCH_ONLY="(c)"`: only the figures whose name
//! holds that text).

#[path = "../tests/common/mod.rs"]
#[allow(dead_code)]
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{json, Value};
use sluice::config::Config;
use sluice::sink::{BulkOp, Origin};
use sluice::transform::dms::DmsRoutes;
use sluice::transform::route::{IdRule, Route, Routes, Template};
use sluice::transform::{dynamodb_kinesis_row, dynamodb_row, Decoded};

const RECORDS: usize = 20_000;

/// The daemon's allocator, so that these figures are what `sluice` pays.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("pure_path: a benchmark; run it with `cargo bench --bench pure_path`");
        return;
    }
    let mut rng = fastrand::Rng::with_seed(1);
    let items: Vec<HashMap<String, AttributeValue>> = (0..RECORDS)
        .map(|i| common::post(&format!("post-{i}"), i as u64, &mut rng))
        .collect();
    // no [[route]]: the whole item into one index, its key as `_id`
    let plain = Routes::single("posts", Some(vec!["id".into()]), "|");
    let plain_reads = plain.reads();

    // (a) DynamoDB Streams records
    let streams: Vec<Vec<u8>> = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let image = wire(item);
            json!({
                "eventID": format!("{i:032x}"), "eventName": "MODIFY", "eventVersion": "1.1",
                "eventSource": "aws:dynamodb", "awsRegion": "us-east-1",
                "dynamodb": {
                    "ApproximateCreationDateTime": 1_700_000_000.0,
                    "Keys": {"id": image["id"]},
                    "NewImage": image,
                    "SequenceNumber": format!("{i:030}"),
                    "SizeBytes": 1100,
                    "StreamViewType": "NEW_IMAGE",
                }
            })
            .to_string()
            .into_bytes()
        })
        .collect();
    // what the record weighs on the wire: its DynamoDB JSON
    let streams_bytes: usize = streams.iter().map(Vec::len).sum();
    report(
        "(a) DynamoDB Streams, blog posts",
        RECORDS,
        streams_bytes,
        || {
            streams
                .iter()
                .map(|r| {
                    encode(
                        plain
                            .apply(dynamodb_row(r, None, &plain_reads).unwrap())
                            .expect("decodes"),
                    )
                })
                .sum()
        },
    );
    // the cost of shaping (issue: a typical route with one computed field, against the same
    // route without it)
    for (what, shaping) in [
        ("(a) with a route, no computed field", "exclude = [\"blocks\"]\n"),
        (
            "(a) with a route, one computed field",
            "exclude = [\"blocks\"]\ncompute.text = '[.blocks[]? | select(.type == \"paragraph\") | .text] | join(\"\\n\")'\n",
        ),
        (
            "(a) with the blog route (text, image_count)",
            "exclude = [\"blocks\"]\ncompute.text = '[.blocks[]? | select(.type == \"paragraph\") | .text] | join(\"\\n\")'\ncompute.image_count = '[.blocks[]? | select(.type == \"image\")] | length'\n",
        ),
    ] {
        let routes = routes_from(&format!(
            "[source]\ntype = \"dynamodb_streams\"\ntable = \"Posts\"\n[[route]]\nindex = \"posts\"\nid = [\"id\"]\n{shaping}"
        ));
        let reads = routes.reads();
        report(what, RECORDS, streams_bytes, || {
            streams
                .iter()
                .map(|r| encode(routes.apply(dynamodb_row(r, Some("Posts"), &reads).unwrap()).expect("decodes")))
                .sum()
        });
    }

    // (b) DMS rows
    let dms: Vec<Vec<u8>> = (0..RECORDS)
        .map(|i| {
            json!({
                "data": {"order_id": i, "customer_id": i % 977, "status": "shipped", "total": "1234.50",
                         "note": "x".repeat(600), "updated_at": "2024-07-29T10:00:00Z", "lines": 3},
                "metadata": {"timestamp": "2024-07-29T10:00:00.123456Z", "record-type": "data",
                             "operation": "update", "partition-key-type": "primary-key",
                             "schema-name": "public", "table-name": "orders", "transaction-id": 42}
            })
            .to_string()
            .into_bytes()
        })
        .collect();
    let routes = DmsRoutes {
        routes: Routes {
            routes: vec![Route::new(
                "orders",
                Some("public.orders"),
                Template::literal("orders"),
                IdRule::Attributes(vec!["order_id".into()]),
            )],
            key: None,
            separator: "|".into(),
        },
        before_image_field: "BI".into(),
        old_images: false,
    };
    let dms_bytes = dms.iter().map(Vec::len).sum();
    report("(b) DMS JSON rows", RECORDS, dms_bytes, || {
        dms.iter()
            .map(|p| encode(routes.decode(p).expect("decodes")))
            .sum()
    });

    // (c) DynamoDB changes carried in Kinesis
    // the whole record as Kinesis carries it, envelope and all (as (a) has its own)
    let kinesis: Vec<Vec<u8>> = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let image = wire(item);
            json!({
                "awsRegion": "us-east-1", "eventID": format!("{:08x}-468a-4ac4-8bad-7f832caf7345", i),
                "eventName": "MODIFY", "userIdentity": null, "recordFormat": "application/json",
                "tableName": "Posts",
                "dynamodb": {
                    "ApproximateCreationDateTime": 1_719_347_890_250_647u64 + i as u64,
                    "Keys": {"id": image["id"]},
                    "NewImage": image,
                    "SizeBytes": 1100,
                    "ApproximateCreationDateTimePrecision": "MICROSECOND",
                },
                "eventSource": "aws:dynamodb",
            })
            .to_string()
            .into_bytes()
        })
        .collect();
    let kinesis_bytes = kinesis.iter().map(Vec::len).sum();
    report(
        "(c) DynamoDB→Kinesis records",
        RECORDS,
        kinesis_bytes,
        || {
            kinesis
                .iter()
                .map(|p| {
                    encode(
                        plain
                            .apply(dynamodb_kinesis_row(p, &plain_reads).unwrap())
                            .expect("decodes"),
                    )
                })
                .sum()
        },
    );
}

/// Routes compiled from a configuration file's text, as `sluice run` compiles them.
fn routes_from(toml: &str) -> Routes {
    let config = Config::from_toml(toml).unwrap();
    Routes::from_config(&config, Some(&["id".to_string()])).unwrap()
}

/// Every operation of a record as the `_bulk` lines the sink sends; their byte count.
fn encode(decoded: Decoded) -> usize {
    let origin = Origin {
        stream: "bench".into(),
        shard: "shard".into(),
        sequence_number: "1".into(),
        epoch: 1,
    };
    let index: Arc<str> = "posts".into();
    decoded
        .changes
        .into_iter()
        .map(|c| {
            BulkOp::routed(
                c.index.unwrap_or_else(|| index.clone()),
                c.id,
                c.routing.as_deref(),
                c.version.unwrap_or(1),
                c.action,
                origin.clone(),
            )
            .lines
            .len()
        })
        .sum()
}

fn report(what: &str, records: usize, bytes: usize, mut run: impl FnMut() -> usize) {
    // `SLUICE_BENCH_ONLY="(a) DynamoDB"`: only the figures whose name holds this text
    if std::env::var("SLUICE_BENCH_ONLY").is_ok_and(|only| !what.contains(&only)) {
        return;
    }
    let mut rates: Vec<(f64, f64)> = (0..3)
        .map(|_| {
            let started = Instant::now();
            let out = run();
            let secs = started.elapsed().as_secs_f64();
            assert!(out > 0);
            (bytes as f64 / 1e6 / secs, records as f64 / secs)
        })
        .collect();
    rates.sort_by(|a, b| a.0.total_cmp(&b.0));
    println!(
        "{what}: {records} records, {:.0} bytes each: {:.0} / {:.0} / {:.0} MB/s (min/median/max), {:.0} records/s median, one core",
        bytes as f64 / records as f64,
        rates[0].0,
        rates[1].0,
        rates[2].0,
        rates[1].1
    );
}

/// An item in DynamoDB JSON, as a record carries it.
fn wire(item: &HashMap<String, AttributeValue>) -> Value {
    fn one(v: &AttributeValue) -> Value {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        match v {
            AttributeValue::S(s) => json!({"S": s}),
            AttributeValue::N(n) => json!({"N": n}),
            AttributeValue::B(b) => json!({"B": b64(b.as_ref())}),
            AttributeValue::Bool(b) => json!({"BOOL": b}),
            AttributeValue::Null(_) => json!({"NULL": true}),
            AttributeValue::Ss(v) => json!({"SS": v}),
            AttributeValue::Ns(v) => json!({"NS": v}),
            AttributeValue::Bs(v) => {
                json!({"BS": v.iter().map(|b| b64(b.as_ref())).collect::<Vec<_>>()})
            }
            AttributeValue::L(v) => json!({"L": v.iter().map(one).collect::<Vec<_>>()}),
            AttributeValue::M(m) => {
                json!({"M": m.iter().map(|(k, v)| (k.clone(), one(v))).collect::<serde_json::Map<_, _>>()})
            }
            _ => Value::Null,
        }
    }
    Value::Object(item.iter().map(|(k, v)| (k.clone(), one(v))).collect())
}
