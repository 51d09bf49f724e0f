//! The Kinesis wrappers against (1) a scripted fake speaking the Kinesis JSON protocol — errors
//! no emulator produces on demand (throttling, expired iterators) and the exact ListShards
//! paging contract — and (2) kinesis-local, for ListShards paging and ChildShards on a real
//! reshard (small volumes: it is slow).

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use common::*;
use serde_json::{json, Value};
use sluice::source::kinesis::Kinesis;
use sluice::source::{ApiError, ShardApi, StartAt};

#[derive(Default)]
struct Script {
    get_records: VecDeque<(u16, Value)>,
    list_shards_requests: Vec<Value>,
}

async fn kinesis_fake(
    State(script): State<Arc<Mutex<Script>>>,
    headers: HeaderMap,
    body: String,
) -> impl IntoResponse {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let req: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let mut s = script.lock().unwrap();
    let (status, body) = match target.rsplit('.').next().unwrap_or_default() {
        "DescribeStreamSummary" => (
            200,
            json!({"StreamDescriptionSummary": {
            "StreamName": "s", "StreamARN": "arn:aws:kinesis:us-east-1:000000000000:stream/s", "StreamStatus": "ACTIVE",
            "RetentionPeriodHours": 24, "StreamCreationTimestamp": 1700000000, "EnhancedMonitoring": [], "OpenShardCount": 3}}),
        ),
        "ListShards" => {
            s.list_shards_requests.push(req.clone());
            let shard = |id: &str, parent: Option<&str>| {
                let mut v = json!({"ShardId": id, "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": "1"},
                                   "SequenceNumberRange": {"StartingSequenceNumber": "1"}});
                if let Some(p) = parent {
                    v["ParentShardId"] = json!(p);
                }
                v
            };
            if req.get("NextToken").is_none() {
                (
                    200,
                    json!({"Shards": [shard("shardId-000000000000", None), shard("shardId-000000000001", None)], "NextToken": "page-2"}),
                )
            } else {
                (
                    200,
                    json!({"Shards": [shard("shardId-000000000002", Some("shardId-000000000000"))]}),
                )
            }
        }
        "GetShardIterator" => (200, json!({"ShardIterator": "it-1"})),
        "GetRecords" => s.get_records.pop_front().unwrap_or((
            200,
            json!({"Records": [], "NextShardIterator": "it-2", "MillisBehindLatest": 0}),
        )),
        other => (
            400,
            json!({"__type": "UnknownOperationException", "message": other}),
        ),
    };
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/x-amz-json-1.1")],
        body.to_string(),
    )
}

async fn start_fake(script: Arc<Mutex<Script>>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .fallback(axum::routing::post(kinesis_fake))
        .with_state(script);
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, task)
}

fn client(url: &str) -> aws_sdk_kinesis::Client {
    let creds = aws_credential_types::Credentials::new("test", "test", None, None, "sluice-tests");
    let conf = aws_sdk_kinesis::Config::builder()
        .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
        .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(creds)
        .retry_config(aws_sdk_kinesis::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_kinesis::Client::from_conf(conf)
}

/// Throttling and iterator expiry reach the reader as the errors it recovers from; records,
/// MillisBehindLatest and ChildShards are read from a normal answer.
#[tokio::test]
async fn service_errors_map_to_what_the_reader_recovers_from() {
    let script = Arc::new(Mutex::new(Script::default()));
    script.lock().unwrap().get_records = VecDeque::from([
        (
            400,
            json!({"__type": "ProvisionedThroughputExceededException", "message": "Rate exceeded for shard"}),
        ),
        (
            400,
            json!({"__type": "ExpiredIteratorException", "message": "Iterator expired"}),
        ),
        (
            400,
            json!({"__type": "ResourceNotFoundException", "message": "Shard not found"}),
        ),
        (
            200,
            json!({"Records": [{"SequenceNumber": "49590338271490256608559692538361571095921575989136588898",
                                  "ApproximateArrivalTimestamp": 1719347890.25, "Data": "eyJhIjoxfQ==", "PartitionKey": "k"}],
                     "MillisBehindLatest": 2500,
                     "ChildShards": [{"ShardId": "shardId-000000000002", "ParentShards": ["shardId-000000000000"],
                                      "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": "1"}}]}),
        ),
    ]);
    let (url, _server) = start_fake(script.clone()).await;
    let k = Kinesis::with_client(client(&url), "s").await.unwrap();
    assert_eq!(k.arn, "arn:aws:kinesis:us-east-1:000000000000:stream/s");
    assert!(matches!(
        k.get_records("it-1", 100).await,
        Err(ApiError::Throttled(_))
    ));
    assert_eq!(
        k.get_records("it-1", 100).await.unwrap_err(),
        ApiError::ExpiredIterator
    );
    assert!(matches!(
        k.get_records("it-1", 100).await,
        Err(ApiError::NotFound(_))
    ));
    let last = k.get_records("it-1", 100).await.unwrap();
    assert_eq!(last.records.len(), 1);
    assert_eq!(last.records[0].data().as_ref(), br#"{"a":1}"#);
    assert_eq!(last.millis_behind_latest, Some(2500));
    assert!(last.next_iterator.is_none(), "the shard is closed");
    assert_eq!(&*last.child_shards[0].id, "shardId-000000000002");
    assert_eq!(
        k.shard_iterator("shardId-000000000000", &StartAt::TrimHorizon)
            .await
            .unwrap(),
        "it-1"
    );
}

/// ListShards pages with NextToken, sent without the stream name or ARN (AWS refuses both).
#[tokio::test]
async fn list_shards_sends_next_token_without_the_stream() {
    let script = Arc::new(Mutex::new(Script::default()));
    let (url, _server) = start_fake(script.clone()).await;
    let k = Kinesis::with_client(client(&url), "s").await.unwrap();
    let shards = k.list_shards().await.unwrap();
    assert_eq!(shards.len(), 3);
    assert_eq!(
        shards[2].parents.iter().map(|p| &**p).collect::<Vec<_>>(),
        ["shardId-000000000000"]
    );
    let requests = script.lock().unwrap().list_shards_requests.clone();
    assert_eq!(requests.len(), 2);
    assert!(requests[0].get("StreamName").is_some() && requests[0].get("NextToken").is_none());
    assert_eq!(requests[1]["NextToken"], "page-2");
    assert!(
        requests[1].get("StreamARN").is_none() && requests[1].get("StreamName").is_none(),
        "{}",
        requests[1]
    );
}

/// kinesis-local: paging over a stream of 5 shards two at a time, and a reshard whose closed
/// parents end with ChildShards and whose children list their parents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_local_paging_and_child_shards() {
    let emulator = KinesisEmulator::kinesis_local();
    let c = emulator.client();
    create_stream(&c, "paged", 5).await;
    let mut k = Kinesis::with_client(c.clone(), "paged").await.unwrap();
    k.page_size = 2;
    let shards = k.list_shards().await.unwrap();
    assert_eq!(shards.len(), 5, "{shards:?}");

    let parent = shards[0].id.to_string();
    c.put_record()
        .stream_name("paged")
        .partition_key("p")
        .explicit_hash_key("0")
        .data(aws_sdk_kinesis::primitives::Blob::new("before"))
        .send()
        .await
        .unwrap();
    c.update_shard_count()
        .stream_name("paged")
        .target_shard_count(10)
        .scaling_type(aws_sdk_kinesis::types::ScalingType::UniformScaling)
        .send()
        .await
        .unwrap();
    wait_active(&c, "paged").await;
    let after = k.list_shards().await.unwrap();
    let children: Vec<_> = after
        .iter()
        .filter(|s| s.parents.iter().any(|p| **p == *parent))
        .collect();
    assert!(
        !children.is_empty(),
        "children of {parent} are listed with their parent: {after:?}"
    );
    assert!(after.iter().find(|s| *s.id == *parent).unwrap().closed);

    // read the closed parent to its end: the last answer names the children
    let mut it = k
        .shard_iterator(&parent, &StartAt::TrimHorizon)
        .await
        .unwrap();
    let mut read = 0;
    let last = loop {
        let page = k.get_records(&it, 100).await.unwrap();
        read += page.records.len();
        match page.next_iterator.clone() {
            Some(next) => it = next,
            None => break page,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(read, 1);
    let named: Vec<&str> = last.child_shards.iter().map(|c| &*c.id).collect();
    for child in &children {
        assert!(
            named.contains(&&*child.id),
            "ChildShards {named:?} names {}",
            child.id
        );
    }
}

/// kinesis-local (the emulator with the highest fidelity, and its own SubscribeToShard over
/// HTTP/1.1 on loopback): sluice's fan-out reader registers its consumer and waits until it is
/// ACTIVE, reads records pushed through SubscribeToShard, and a second start reuses the consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_local_serves_sluice_fan_out_and_a_restart_reuses_the_consumer() {
    let emulator = KinesisEmulator::kinesis_local();
    let c = emulator.client();
    create_stream(&c, "pushed", 1).await;
    let k = Arc::new(Kinesis::with_client(c.clone(), "pushed").await.unwrap());
    let fan_out = sluice::source::fan_out::FanOut::connect(
        k.clone(),
        "sluice-probe",
        Duration::from_secs(270),
        sluice::metrics::Metrics::new(),
    )
    .await
    .unwrap();
    for i in 0..3 {
        c.put_record()
            .stream_name("pushed")
            .partition_key(format!("p{i}"))
            .data(aws_sdk_kinesis::primitives::Blob::new(format!("r{i}")))
            .send()
            .await
            .unwrap();
    }
    let shard = k.list_shards().await.unwrap()[0].id.to_string();
    let mut it = fan_out
        .shard_iterator(&shard, &StartAt::TrimHorizon)
        .await
        .unwrap();
    let mut read = 0;
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while read < 3 && std::time::Instant::now() < until {
        let page = fan_out.get_records(&it, 100).await.unwrap();
        read += page.records.len();
        it = page.next_iterator.unwrap();
    }
    assert_eq!(read, 3);
    let again = sluice::source::fan_out::FanOut::connect(
        k.clone(),
        "sluice-probe",
        Duration::from_secs(270),
        sluice::metrics::Metrics::new(),
    )
    .await
    .unwrap();
    assert_eq!(again.consumer_arn(), fan_out.consumer_arn());
    let listed = c
        .list_stream_consumers()
        .stream_arn(&k.arn)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.consumers().len(), 1, "registered once");
}
