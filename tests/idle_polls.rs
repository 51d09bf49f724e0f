//! Idle shards poll within the process-wide budget (`source.idle_polls_per_second`): with 40
//! idle shards and a budget of 20 polls a second, each polls about every 2 s instead of every
//! `poll_interval` — and a change on one of them still reaches the index. Without a budget
//! (0), the same shards poll at `poll_interval`. On the source fake, which counts the calls.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{AttributeValue, StreamViewType};
use common::*;

/// GetRecords calls per second per shard over `window`, after the readers have settled.
async fn idle_poll_rate(budget: u32) -> f64 {
    let fake = source_fake::SourceFake::start_with(source_fake::Options {
        stream_shards: 40,
        ..Default::default()
    })
    .await
    .unwrap();
    let ddb = dynamodb_client(&fake.url());
    create_table(&ddb, "Posts", StreamViewType::NewAndOldImages).await;
    let es = Es::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sluice.db");
    let (url, es_url) = (fake.url(), es.url());
    let options = SluiceOptions {
        moto: &url,
        es: &es_url,
        table: "Posts",
        index: "posts-idle",
        db: &db,
        extra: "",
    };
    let port = free_port();
    let config = dir.path().join("idle.toml");
    std::fs::write(
        &config,
        config_toml(&options, port).replace(
            "poll_interval = \"100ms\"",
            &format!("poll_interval = \"250ms\"\nidle_polls_per_second = {budget}"),
        ),
    )
    .unwrap();
    let sluice = Sluice::start_with_config(&config, port, dir.path());
    sluice.wait_ready(Duration::from_secs(30)).await;
    let arn = fake.latest_stream_arn("Posts").unwrap();
    // the back-off reaches its ceiling after 62 + 125 + … ms
    tokio::time::sleep(Duration::from_secs(6)).await;
    let before: HashMap<String, u64> = fake.get_records_calls(&arn).into_iter().collect();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let calls: u64 = fake
        .get_records_calls(&arn)
        .iter()
        .map(|(id, n)| n - before[id])
        .sum();
    let rate = calls as f64 / started.elapsed().as_secs_f64() / 40.0;

    // a change on an idle shard still reaches the index
    ddb.put_item()
        .table_name("Posts")
        .item("id", AttributeValue::S("woken".into()))
        .send()
        .await
        .unwrap();
    assert_converges(&es, "posts-idle", &ddb, "Posts", Duration::from_secs(30)).await;
    rate
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_idle_shards_poll_within_a_budget_of_twenty_a_second_and_still_see_a_change() {
    let budgeted = idle_poll_rate(20).await;
    // 40 shards ÷ 20 polls/s: every 2 s each
    assert!(
        (0.3..=0.8).contains(&budgeted),
        "{budgeted:.2} polls/s per idle shard"
    );
    let unbounded = idle_poll_rate(0).await;
    // every poll_interval (250 ms): 4 a second, well apart from the budget even on a loaded machine
    assert!(unbounded > 2.0, "{unbounded:.2} polls/s per idle shard");
    println!("idle polls per shard and second: {budgeted:.2} with a budget of 20/s for 40 shards, {unbounded:.2} without");
}
