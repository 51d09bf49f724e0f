//! The source fake answers the real AWS SDK clients as the services do: what sluice reads
//! (DescribeTable, parallel Scan, DescribeStream, GetShardIterator, GetRecords, ListShards,
//! DescribeStreamSummary) and what tests write (PutItem, UpdateItem, DeleteItem, BatchWriteItem,
//! PutRecords, SplitShard, MergeShards).

use std::collections::BTreeSet;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, KeySchemaElement, KeyType, ReturnConsumedCapacity,
    ScalarAttributeType, StreamSpecification, StreamViewType,
};
use aws_sdk_dynamodbstreams::types::ShardIteratorType;
use aws_sdk_kinesis::primitives::Blob;
use source_fake::{AwsError, Fault, Options, SourceFake};

fn creds() -> aws_credential_types::Credentials {
    aws_credential_types::Credentials::new("test", "test", None, None, "source-fake-tests")
}

fn region() -> aws_sdk_dynamodb::config::Region {
    aws_sdk_dynamodb::config::Region::new("us-east-1")
}

/// A client of the SDK crate `$sdk` pointed at the fake.
macro_rules! client {
    ($sdk:ident, $fake:expr) => {
        $sdk::Client::from_conf(
            $sdk::Config::builder()
                .behavior_version($sdk::config::BehaviorVersion::latest())
                .region(region())
                .endpoint_url($fake.url())
                .credentials_provider(creds())
                .build(),
        )
    };
}

fn dynamodb(fake: &SourceFake) -> aws_sdk_dynamodb::Client {
    client!(aws_sdk_dynamodb, fake)
}

fn streams(fake: &SourceFake) -> aws_sdk_dynamodbstreams::Client {
    client!(aws_sdk_dynamodbstreams, fake)
}

fn kinesis(fake: &SourceFake) -> aws_sdk_kinesis::Client {
    client!(aws_sdk_kinesis, fake)
}

async fn posts_table(ddb: &aws_sdk_dynamodb::Client, stream: bool) {
    let spec = StreamSpecification::builder()
        .stream_enabled(true)
        .stream_view_type(StreamViewType::NewAndOldImages)
        .build()
        .unwrap();
    ddb.create_table()
        .table_name("Posts")
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .set_stream_specification(stream.then_some(spec))
        .send()
        .await
        .unwrap();
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.into())
}

#[tokio::test]
async fn a_parallel_scan_returns_every_item_once_in_pages_with_consumed_capacity() {
    let fake = SourceFake::start().await.unwrap();
    let ddb = dynamodb(&fake);
    posts_table(&ddb, false).await;
    fake.put_items(
        "Posts",
        (0..1000).map(|i| {
            serde_json::json!({"id": {"S": format!("post-{i}")}, "n": {"N": i.to_string()}})
                .as_object()
                .unwrap()
                .clone()
        }),
    )
    .unwrap();
    let table = ddb
        .describe_table()
        .table_name("Posts")
        .send()
        .await
        .unwrap();
    assert_eq!(table.table().unwrap().item_count(), Some(1000));
    // sizes as DynamoDB counts them: names plus values, about 14 bytes for each of these items
    let size = table.table().unwrap().table_size_bytes().unwrap();
    assert!((12_000..16_000).contains(&size), "{size}");

    let mut seen = BTreeSet::new();
    let mut per_segment = Vec::new();
    for segment in 0..4 {
        let mut start = None;
        let mut count = 0;
        let mut pages = 0;
        loop {
            let page = ddb
                .scan()
                .table_name("Posts")
                .segment(segment)
                .total_segments(4)
                .limit(70)
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .set_exclusive_start_key(start)
                .send()
                .await
                .unwrap();
            assert!(page.items().len() <= 70);
            assert!(page.consumed_capacity().unwrap().capacity_units().unwrap() > 0.0);
            for item in page.items() {
                let AttributeValue::S(id) = &item["id"] else {
                    panic!()
                };
                assert!(seen.insert(id.clone()), "{id} scanned twice");
                count += 1;
            }
            pages += 1;
            match page.last_evaluated_key() {
                Some(k) => start = Some(k.clone()),
                None => break,
            }
        }
        assert!(pages > 1);
        per_segment.push(count);
    }
    assert_eq!(seen.len(), 1000);
    // the hash spreads keys over segments roughly evenly
    assert!(
        per_segment.iter().all(|n| (150..350).contains(n)),
        "{per_segment:?}"
    );
}

#[tokio::test]
async fn writes_become_stream_records_in_order_with_the_images_of_the_view_type() {
    let fake = SourceFake::start().await.unwrap();
    let ddb = dynamodb(&fake);
    posts_table(&ddb, true).await;
    ddb.put_item()
        .table_name("Posts")
        .item("id", s("a"))
        .item("views", AttributeValue::N("1".into()))
        .send()
        .await
        .unwrap();
    // the same item again changes nothing: no record
    ddb.put_item()
        .table_name("Posts")
        .item("id", s("a"))
        .item("views", AttributeValue::N("1".into()))
        .send()
        .await
        .unwrap();
    ddb.update_item()
        .table_name("Posts")
        .key("id", s("a"))
        .update_expression("SET title = :t, #v = #v + :one")
        .expression_attribute_names("#v", "views")
        .expression_attribute_values(":t", s("Hello"))
        .expression_attribute_values(":one", AttributeValue::N("1".into()))
        .send()
        .await
        .unwrap();
    ddb.delete_item()
        .table_name("Posts")
        .key("id", s("a"))
        .send()
        .await
        .unwrap();
    // deleting what is not there changes nothing
    ddb.delete_item()
        .table_name("Posts")
        .key("id", s("a"))
        .send()
        .await
        .unwrap();
    assert!(ddb
        .get_item()
        .table_name("Posts")
        .key("id", s("a"))
        .send()
        .await
        .unwrap()
        .item()
        .is_none());

    let arn = ddb
        .describe_table()
        .table_name("Posts")
        .send()
        .await
        .unwrap()
        .table()
        .unwrap()
        .latest_stream_arn()
        .unwrap()
        .to_owned();
    let st = streams(&fake);
    let desc = st.describe_stream().stream_arn(&arn).send().await.unwrap();
    let desc = desc.stream_description().unwrap();
    assert_eq!(
        desc.stream_view_type().unwrap().as_str(),
        "NEW_AND_OLD_IMAGES"
    );
    let shard = desc.shards()[0].shard_id().unwrap().to_owned();
    let it = st
        .get_shard_iterator()
        .stream_arn(&arn)
        .shard_id(&shard)
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap();
    let out = st
        .get_records()
        .shard_iterator(it.shard_iterator().unwrap())
        .send()
        .await
        .unwrap();
    let events: Vec<_> = out
        .records()
        .iter()
        .map(|r| r.event_name().unwrap().as_str().to_owned())
        .collect();
    assert_eq!(events, ["INSERT", "MODIFY", "REMOVE"]);
    let modify = out.records()[1].dynamodb().unwrap();
    assert_eq!(
        modify.new_image().unwrap()["views"],
        aws_sdk_dynamodbstreams::types::AttributeValue::N("2".into())
    );
    assert_eq!(
        modify.old_image().unwrap()["views"],
        aws_sdk_dynamodbstreams::types::AttributeValue::N("1".into())
    );
    assert!(modify.approximate_creation_date_time().is_some());
    let seqs: Vec<u128> = out
        .records()
        .iter()
        .map(|r| {
            r.dynamodb()
                .unwrap()
                .sequence_number()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    // an open shard always hands on an iterator; AFTER_SEQUENCE_NUMBER resumes after a record
    assert!(out.next_shard_iterator().is_some());
    let after = st
        .get_shard_iterator()
        .stream_arn(&arn)
        .shard_id(&shard)
        .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
        .sequence_number(seqs[0].to_string())
        .send()
        .await
        .unwrap();
    let rest = st
        .get_records()
        .shard_iterator(after.shard_iterator().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(rest.records().len(), 2);
}

#[tokio::test]
async fn a_rolled_shard_ends_without_a_next_iterator_and_its_child_names_it_as_parent() {
    let fake = SourceFake::start_with(Options {
        stream_shards: 3,
        ..Options::default()
    })
    .await
    .unwrap();
    let ddb = dynamodb(&fake);
    posts_table(&ddb, true).await;
    for i in 0..30 {
        ddb.put_item()
            .table_name("Posts")
            .item("id", s(&format!("p{i}")))
            .send()
            .await
            .unwrap();
    }
    let children = fake.roll_stream_shards("Posts").unwrap();
    assert_eq!(children.len(), 3);
    let arn = fake.latest_stream_arn("Posts").unwrap();
    let st = streams(&fake);
    // one page of two shards: DescribeStream pages by LastEvaluatedShardId
    let first = st
        .describe_stream()
        .stream_arn(&arn)
        .limit(2)
        .send()
        .await
        .unwrap();
    let first = first.stream_description().unwrap();
    assert_eq!(first.shards().len(), 2);
    let last = first.last_evaluated_shard_id().unwrap();
    let second = st
        .describe_stream()
        .stream_arn(&arn)
        .exclusive_start_shard_id(last)
        .send()
        .await
        .unwrap();
    let shards: Vec<_> = first
        .shards()
        .iter()
        .chain(second.stream_description().unwrap().shards())
        .cloned()
        .collect();
    assert_eq!(shards.len(), 6);
    let mut total = 0;
    for parent in &shards[..3] {
        assert!(parent
            .sequence_number_range()
            .unwrap()
            .ending_sequence_number()
            .is_some());
        let it = st
            .get_shard_iterator()
            .stream_arn(&arn)
            .shard_id(parent.shard_id().unwrap())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap();
        let out = st
            .get_records()
            .shard_iterator(it.shard_iterator().unwrap())
            .send()
            .await
            .unwrap();
        total += out.records().len();
        assert!(
            out.next_shard_iterator().is_none(),
            "a closed shard read to its end"
        );
    }
    assert_eq!(total, 30);
    for (child, parent) in shards[3..].iter().zip(&shards[..3]) {
        assert_eq!(child.parent_shard_id(), parent.shard_id());
        assert!(child
            .sequence_number_range()
            .unwrap()
            .ending_sequence_number()
            .is_none());
    }
    // a write after the roll lands in a child
    ddb.put_item()
        .table_name("Posts")
        .item("id", s("late"))
        .send()
        .await
        .unwrap();
    let mut late = 0;
    for child in &shards[3..] {
        let it = st
            .get_shard_iterator()
            .stream_arn(&arn)
            .shard_id(child.shard_id().unwrap())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap();
        late += st
            .get_records()
            .shard_iterator(it.shard_iterator().unwrap())
            .send()
            .await
            .unwrap()
            .records()
            .len();
    }
    assert_eq!(late, 1);
}

#[tokio::test]
async fn enabling_a_stream_after_the_rows_exist_starts_empty_with_a_new_label() {
    let fake = SourceFake::start().await.unwrap();
    let ddb = dynamodb(&fake);
    posts_table(&ddb, false).await;
    ddb.put_item()
        .table_name("Posts")
        .item("id", s("before"))
        .send()
        .await
        .unwrap();
    let spec = StreamSpecification::builder()
        .stream_enabled(true)
        .stream_view_type(StreamViewType::NewImage)
        .build()
        .unwrap();
    ddb.update_table()
        .table_name("Posts")
        .stream_specification(spec.clone())
        .send()
        .await
        .unwrap();
    let again = ddb
        .update_table()
        .table_name("Posts")
        .stream_specification(spec)
        .send()
        .await;
    assert!(format!("{:?}", again.unwrap_err()).contains("already has an enabled stream"));
    let arn = fake.latest_stream_arn("Posts").unwrap();
    let st = streams(&fake);
    let desc = st.describe_stream().stream_arn(&arn).send().await.unwrap();
    let shard = desc.stream_description().unwrap().shards()[0]
        .shard_id()
        .unwrap()
        .to_owned();
    let it = st
        .get_shard_iterator()
        .stream_arn(&arn)
        .shard_id(&shard)
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap();
    assert!(st
        .get_records()
        .shard_iterator(it.shard_iterator().unwrap())
        .send()
        .await
        .unwrap()
        .records()
        .is_empty());
}

#[tokio::test]
async fn scripted_errors_reach_the_sdk_as_the_named_service_errors() {
    let fake = SourceFake::start().await.unwrap();
    let ddb = dynamodb(&fake);
    posts_table(&ddb, true).await;
    let arn = fake.latest_stream_arn("Posts").unwrap();
    let st = streams(&fake);
    let desc = st.describe_stream().stream_arn(&arn).send().await.unwrap();
    let shard = desc.stream_description().unwrap().shards()[0]
        .shard_id()
        .unwrap()
        .to_owned();
    let it = st
        .get_shard_iterator()
        .stream_arn(&arn)
        .shard_id(&shard)
        .shard_iterator_type(ShardIteratorType::Latest)
        .send()
        .await
        .unwrap();
    fake.fail(Fault {
        operation: "GetRecords".into(),
        shard: Some(shard.clone()),
        times: 1,
        error: AwsError::new(400, "ExpiredIteratorException", "Iterator expired"),
    });
    let err = st
        .get_records()
        .shard_iterator(it.shard_iterator().unwrap())
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_expired_iterator_exception());
    // the fault was used up: the next call answers
    st.get_records()
        .shard_iterator(it.shard_iterator().unwrap())
        .send()
        .await
        .unwrap();
    let err = st
        .get_shard_iterator()
        .stream_arn(&arn)
        .shard_id("shardId-nope")
        .shard_iterator_type(ShardIteratorType::Latest)
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_resource_not_found_exception());
    let err = ddb
        .scan()
        .table_name("Posts")
        .filter_expression("a = :b")
        .send()
        .await
        .unwrap_err();
    assert!(format!("{:?}", err.into_service_error()).contains("FilterExpression is not supported"));
}

#[tokio::test]
async fn an_expired_iterator_is_refused() {
    let fake = SourceFake::start_with(Options {
        streams_iterator_ttl: std::time::Duration::from_millis(50),
        ..Options::default()
    })
    .await
    .unwrap();
    let ddb = dynamodb(&fake);
    posts_table(&ddb, true).await;
    let arn = fake.latest_stream_arn("Posts").unwrap();
    let st = streams(&fake);
    let desc = st.describe_stream().stream_arn(&arn).send().await.unwrap();
    let shard = desc.stream_description().unwrap().shards()[0]
        .shard_id()
        .unwrap()
        .to_owned();
    let it = st
        .get_shard_iterator()
        .stream_arn(&arn)
        .shard_id(&shard)
        .shard_iterator_type(ShardIteratorType::Latest)
        .send()
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let err = st
        .get_records()
        .shard_iterator(it.shard_iterator().unwrap())
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_expired_iterator_exception());
}

#[tokio::test]
async fn kinesis_serves_a_thousand_shards_in_pages_and_reshards_with_child_shards() {
    let fake = SourceFake::start().await.unwrap();
    let k = kinesis(&fake);
    k.create_stream()
        .stream_name("big")
        .shard_count(1000)
        .send()
        .await
        .unwrap();
    let summary = k
        .describe_stream_summary()
        .stream_name("big")
        .send()
        .await
        .unwrap();
    let summary = summary.stream_description_summary().unwrap();
    assert_eq!(summary.open_shard_count(), 1000);
    assert_eq!(summary.retention_period_hours(), 24);
    let mut ids = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let req = k.list_shards().max_results(300);
        let req = match &token {
            Some(t) => req.next_token(t),
            None => req.stream_name("big"),
        };
        let out = req.send().await.unwrap();
        ids.extend(out.shards().iter().map(|s| s.shard_id().to_owned()));
        match out.next_token() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    assert_eq!(ids.len(), 1000);

    k.create_stream()
        .stream_name("small")
        .shard_count(2)
        .send()
        .await
        .unwrap();
    let records: Vec<_> = (0..200)
        .map(|i| {
            aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                .partition_key(format!("key-{i}"))
                .data(Blob::new(format!("r{i}")))
                .build()
                .unwrap()
        })
        .collect();
    k.put_records()
        .stream_name("small")
        .set_records(Some(records))
        .send()
        .await
        .unwrap();
    let lengths = fake.kinesis_shard_lengths("small");
    assert!(
        lengths.iter().all(|(_, n)| *n > 50),
        "MD5 spreads keys: {lengths:?}"
    );
    let shards = k.list_shards().stream_name("small").send().await.unwrap();
    let first = &shards.shards()[0];
    let middle = (first
        .hash_key_range()
        .unwrap()
        .starting_hash_key()
        .parse::<u128>()
        .unwrap()
        + first
            .hash_key_range()
            .unwrap()
            .ending_hash_key()
            .parse::<u128>()
            .unwrap())
        / 2;
    k.split_shard()
        .stream_name("small")
        .shard_to_split(first.shard_id())
        .new_starting_hash_key(middle.to_string())
        .send()
        .await
        .unwrap();
    let it = k
        .get_shard_iterator()
        .stream_name("small")
        .shard_id(first.shard_id())
        .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap();
    let out = k
        .get_records()
        .shard_iterator(it.shard_iterator().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(out.records().len(), lengths[0].1);
    assert!(out.next_shard_iterator().is_none());
    let children: Vec<_> = out
        .child_shards()
        .iter()
        .map(|c| c.shard_id().to_owned())
        .collect();
    assert_eq!(children, ["shardId-000000000002", "shardId-000000000003"]);
    assert_eq!(out.millis_behind_latest(), Some(0));
    k.merge_shards()
        .stream_name("small")
        .shard_to_merge("shardId-000000000003")
        .adjacent_shard_to_merge("shardId-000000000001")
        .send()
        .await
        .unwrap();
    let listed = k.list_shards().stream_name("small").send().await.unwrap();
    let merged = listed.shards().last().unwrap();
    assert_eq!(merged.parent_shard_id(), Some("shardId-000000000003"));
    assert_eq!(
        merged.adjacent_parent_shard_id(),
        Some("shardId-000000000001")
    );
    // after the merge every key goes to shard 2 or the merged shard 4
    k.put_record()
        .stream_name("small")
        .partition_key("late")
        .data(Blob::new("x"))
        .send()
        .await
        .unwrap();
    let lengths = fake.kinesis_shard_lengths("small");
    assert_eq!(lengths[2].1 + lengths[4].1, 1, "{lengths:?}");
}

#[tokio::test]
async fn kinesis_refuses_a_sixth_read_per_second_when_read_limits_are_on() {
    let fake = SourceFake::start_with(Options {
        kinesis_read_limits: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let k = kinesis(&fake);
    k.create_stream()
        .stream_name("s")
        .shard_count(1)
        .send()
        .await
        .unwrap();
    fake.kinesis_put("s", (0..10).map(|i| (format!("k{i}"), vec![b'x'; 10])))
        .unwrap();
    let it = k
        .get_shard_iterator()
        .stream_name("s")
        .shard_id("shardId-000000000000")
        .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap();
    let mut iterator = it.shard_iterator().unwrap().to_owned();
    // a burst of calls: never more than 5 answered within a second, and the rest refused
    let started = std::time::Instant::now();
    let (mut answered, mut refused) = (Vec::new(), 0);
    for _ in 0..10 {
        match k
            .get_records()
            .shard_iterator(&iterator)
            .limit(2)
            .send()
            .await
        {
            Ok(out) => {
                answered.push(std::time::Instant::now());
                iterator = out.next_shard_iterator().unwrap().to_owned();
            }
            Err(e) => {
                assert!(e
                    .into_service_error()
                    .is_provisioned_throughput_exceeded_exception());
                refused += 1;
            }
        }
    }
    assert!(answered
        .windows(6)
        .all(|w| w[5].duration_since(w[0]) >= std::time::Duration::from_millis(900)));
    if started.elapsed() < std::time::Duration::from_millis(1000) {
        assert_eq!((answered.len(), refused), (5, 5));
    }
    let at = k
        .get_shard_iterator()
        .stream_name("s")
        .shard_id("shardId-000000000000")
        .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::AtTimestamp)
        .timestamp(aws_sdk_kinesis::primitives::DateTime::from_secs(0))
        .send()
        .await
        .unwrap();
    assert!(at.shard_iterator().is_some());
}

#[tokio::test]
async fn a_page_that_stops_at_its_limit_names_its_last_key_even_at_the_end() {
    let fake = SourceFake::start().await.unwrap();
    let ddb = dynamodb(&fake);
    posts_table(&ddb, false).await;
    for i in 0..10 {
        ddb.put_item()
            .table_name("Posts")
            .item("id", s(&format!("p{i}")))
            .send()
            .await
            .unwrap();
    }
    let full = ddb
        .scan()
        .table_name("Posts")
        .limit(10)
        .send()
        .await
        .unwrap();
    assert_eq!(full.items().len(), 10);
    let last = full
        .last_evaluated_key()
        .expect("a page stopped by Limit names its last key")
        .clone();
    let after = ddb
        .scan()
        .table_name("Posts")
        .limit(10)
        .set_exclusive_start_key(Some(last))
        .send()
        .await
        .unwrap();
    assert!(after.items().is_empty());
    assert!(after.last_evaluated_key().is_none());
    // a page that ends with the table does not
    assert!(ddb
        .scan()
        .table_name("Posts")
        .limit(11)
        .send()
        .await
        .unwrap()
        .last_evaluated_key()
        .is_none());
}

#[tokio::test]
async fn a_sequence_number_of_another_shard_is_refused_and_bad_input_does_not_take_the_fake_down() {
    let fake = SourceFake::start().await.unwrap();
    let k = kinesis(&fake);
    k.create_stream()
        .stream_name("two")
        .shard_count(2)
        .send()
        .await
        .unwrap();
    let put = k
        .put_record()
        .stream_name("two")
        .partition_key("a")
        .data(Blob::new("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(put.sequence_number().len(), 56);
    let other = if put.shard_id() == "shardId-000000000000" {
        "shardId-000000000001"
    } else {
        "shardId-000000000000"
    };
    let err = k
        .get_shard_iterator()
        .stream_name("two")
        .shard_id(other)
        .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::AfterSequenceNumber)
        .starting_sequence_number(put.sequence_number())
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_invalid_argument_exception());
    k.get_shard_iterator()
        .stream_name("two")
        .shard_id(put.shard_id())
        .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::AfterSequenceNumber)
        .starting_sequence_number(put.sequence_number())
        .send()
        .await
        .unwrap();

    let ddb = dynamodb(&fake);
    posts_table(&ddb, false).await;
    let huge = "9".repeat(38);
    let err = ddb
        .update_item()
        .table_name("Posts")
        .key("id", s("a"))
        .update_expression("SET n = :a + :a")
        .expression_attribute_values(":a", AttributeValue::N(huge))
        .send()
        .await
        .unwrap_err();
    assert!(format!("{:?}", err.into_service_error()).contains("overflow"));
    let err = ddb
        .update_item()
        .table_name("Posts")
        .key("id", s("a"))
        .update_expression("SET = ")
        .send()
        .await
        .unwrap_err();
    assert!(format!("{:?}", err.into_service_error()).contains("Invalid UpdateExpression"));
    // still answering
    ddb.put_item()
        .table_name("Posts")
        .item("id", s("a"))
        .send()
        .await
        .unwrap();
}
