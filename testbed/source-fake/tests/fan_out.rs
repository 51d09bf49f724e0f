//! Enhanced fan-out as the real AWS SDK client sees it from the source fake: a consumer goes
//! CREATING → ACTIVE; SubscribeToShard answers an event stream the SDK reads — records with their
//! continuation, pushed as they arrive, ChildShards at a closed shard's end —; a second call
//! within 5 s is refused, a later one takes the subscription over, and a subscription ends after
//! its lifetime.

use std::time::Duration;

use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::types::{ShardIteratorType, StartingPosition, SubscribeToShardEventStream};
use source_fake::{Options, SourceFake};

fn kinesis(fake: &SourceFake) -> aws_sdk_kinesis::Client {
    aws_sdk_kinesis::Client::from_conf(
        aws_sdk_kinesis::Config::builder()
            .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
            .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
            .endpoint_url(fake.url())
            .credentials_provider(aws_credential_types::Credentials::new(
                "test", "test", None, None, "tests",
            ))
            .build(),
    )
}

fn after(seq: &str) -> StartingPosition {
    StartingPosition::builder()
        .r#type(ShardIteratorType::AfterSequenceNumber)
        .sequence_number(seq)
        .build()
        .unwrap()
}

fn trim_horizon() -> StartingPosition {
    StartingPosition::builder()
        .r#type(ShardIteratorType::TrimHorizon)
        .build()
        .unwrap()
}

/// The next event's records (sequence numbers), continuation and child shards.
async fn next_event(
    events: &mut aws_sdk_kinesis::primitives::event_stream::EventReceiver<
        SubscribeToShardEventStream,
        aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError,
    >,
) -> (Vec<String>, String, Vec<String>) {
    loop {
        match events
            .recv()
            .await
            .expect("an event")
            .expect("the stream goes on")
        {
            SubscribeToShardEventStream::SubscribeToShardEvent(e) => {
                let seqs: Vec<String> = e
                    .records()
                    .iter()
                    .map(|r| r.sequence_number().to_owned())
                    .collect();
                let children = e
                    .child_shards()
                    .iter()
                    .map(|c| c.shard_id().to_owned())
                    .collect();
                if seqs.is_empty() && e.child_shards.is_none() {
                    continue; // an event without records (sent while idle)
                }
                return (seqs, e.continuation_sequence_number().to_owned(), children);
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_subscription_pushes_records_with_their_continuation_and_ends_at_the_children() {
    let fake = SourceFake::start_with(Options {
        consumer_activation: Duration::from_millis(300),
        ..Options::default()
    })
    .await
    .unwrap();
    fake.create_kinesis_stream("s", 1).unwrap();
    let arn = fake.kinesis_stream_arn("s").unwrap();
    let k = kinesis(&fake);
    let registered = k
        .register_stream_consumer()
        .stream_arn(&arn)
        .consumer_name("sluice-test")
        .send()
        .await
        .unwrap();
    let consumer = registered.consumer().unwrap();
    assert_eq!(consumer.consumer_status().as_str(), "CREATING");
    let consumer_arn = consumer.consumer_arn().to_owned();
    let again = k
        .register_stream_consumer()
        .stream_arn(&arn)
        .consumer_name("sluice-test")
        .send()
        .await
        .unwrap_err();
    assert_eq!(again.code(), Some("ResourceInUseException"));
    // not ACTIVE yet: no subscription
    let early = k
        .subscribe_to_shard()
        .consumer_arn(&consumer_arn)
        .shard_id("shardId-000000000000")
        .starting_position(trim_horizon())
        .send()
        .await
        .unwrap_err();
    assert_eq!(early.code(), Some("ResourceInUseException"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let described = k
        .describe_stream_consumer()
        .stream_arn(&arn)
        .consumer_name("sluice-test")
        .send()
        .await
        .unwrap();
    assert_eq!(
        described
            .consumer_description()
            .unwrap()
            .consumer_status()
            .as_str(),
        "ACTIVE"
    );

    fake.kinesis_put("s", (0..5).map(|i| (format!("k{i}"), vec![b'x'; 10])))
        .unwrap();
    let mut sub = k
        .subscribe_to_shard()
        .consumer_arn(&consumer_arn)
        .shard_id("shardId-000000000000")
        .starting_position(trim_horizon())
        .send()
        .await
        .unwrap();
    let (first, continuation, _) = next_event(&mut sub.event_stream).await;
    assert_eq!(first.len(), 5);
    assert_eq!(&continuation, first.last().unwrap());
    // pushed as they arrive
    fake.kinesis_put("s", (5..8).map(|i| (format!("k{i}"), vec![b'y'; 10])))
        .unwrap();
    let (more, continuation, _) = next_event(&mut sub.event_stream).await;
    assert_eq!(more.len(), 3);

    // a second subscription within 5 s is refused; later, it takes the shard over
    let refused = k
        .subscribe_to_shard()
        .consumer_arn(&consumer_arn)
        .shard_id("shardId-000000000000")
        .starting_position(after(&continuation))
        .send()
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some("ResourceInUseException"));
    tokio::time::sleep(Duration::from_millis(5100)).await;
    let mut took_over = k
        .subscribe_to_shard()
        .consumer_arn(&consumer_arn)
        .shard_id("shardId-000000000000")
        .starting_position(after(&continuation))
        .send()
        .await
        .unwrap();
    let ended = loop {
        match sub.event_stream.recv().await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    let err = ended.expect_err("the older subscription ends with an error");
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_resource_in_use_exception()),
        "{err:?}"
    );

    // the shard splits: what was put before is read, then the end with its children
    fake.kinesis_put("s", [("k9".to_string(), b"z".to_vec())])
        .unwrap();
    let children = fake.kinesis_split_all("s").unwrap();
    let (last, continuation, child_shards) = next_event(&mut took_over.event_stream).await;
    let (last, child_shards) = if child_shards.is_empty() {
        assert_eq!(last.len(), 1);
        let (rest, c, ch) = next_event(&mut took_over.event_stream).await;
        assert!(rest.is_empty() && c.is_empty());
        (last, ch)
    } else {
        assert!(continuation.is_empty(), "no continuation at the end");
        (last, child_shards)
    };
    assert_eq!(last.len(), 1);
    assert_eq!(child_shards, children);
    assert!(took_over.event_stream.recv().await.unwrap().is_none());
    let stats = fake.fan_out_stats();
    assert_eq!(stats.records_sent_again, 0);
    assert_eq!(stats.subscriptions, 2);
}

#[tokio::test]
async fn a_subscription_ends_after_its_lifetime() {
    let fake = SourceFake::start_with(Options {
        consumer_activation: Duration::ZERO,
        subscription_lifetime: Duration::from_millis(500),
        ..Options::default()
    })
    .await
    .unwrap();
    fake.create_kinesis_stream("s", 2).unwrap();
    let arn = fake.kinesis_stream_arn("s").unwrap();
    let k = kinesis(&fake);
    let consumer_arn = k
        .register_stream_consumer()
        .stream_arn(&arn)
        .consumer_name("c")
        .send()
        .await
        .unwrap()
        .consumer()
        .unwrap()
        .consumer_arn()
        .to_owned();
    let mut sub = k
        .subscribe_to_shard()
        .consumer_arn(&consumer_arn)
        .shard_id("shardId-000000000001")
        .starting_position(trim_horizon())
        .send()
        .await
        .unwrap();
    let started = std::time::Instant::now();
    while sub.event_stream.recv().await.unwrap().is_some() {}
    assert!(started.elapsed() >= Duration::from_millis(400));
    let unknown = k
        .subscribe_to_shard()
        .consumer_arn(&consumer_arn)
        .shard_id("shardId-000000000009")
        .starting_position(trim_horizon())
        .send()
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Some("ResourceNotFoundException"));
}
