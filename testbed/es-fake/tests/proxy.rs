//! The fault-injecting proxy mode (used when SLUICE_TEST_ES_URL names a real cluster), here in
//! front of a second test server standing in for the cluster.

use es_fake::{FakeEs, Faults};
use serde_json::Value;

#[tokio::test]
async fn faulted_items_are_answered_by_the_proxy_and_the_rest_reach_the_cluster_in_order() {
    let cluster = FakeEs::start().await.unwrap();
    let proxy = FakeEs::start_with("127.0.0.1:0".parse().unwrap(), Some(cluster.url()))
        .await
        .unwrap();
    proxy.set_faults(Faults {
        item_429_rate: 0.5,
        ..Faults::default()
    });
    let mut body = String::new();
    for i in 0..40 {
        body.push_str(&format!("{{\"index\":{{\"_index\":\"p\",\"_id\":\"{i}\",\"version\":5,\"version_type\":\"external\"}}}}\n{{\"n\":{i}}}\n"));
    }
    let http = reqwest::Client::new();
    let r: Value = http
        .post(format!("{}/_bulk", proxy.url()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = r["items"].as_array().unwrap();
    assert_eq!(items.len(), 40);
    let mut applied = 0;
    for (i, item) in items.iter().enumerate() {
        assert_eq!(
            item["index"]["_id"],
            i.to_string(),
            "answers in request order"
        );
        match item["index"]["status"].as_u64().unwrap() {
            201 => applied += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        applied > 0 && applied < 40,
        "some items faulted, some applied: {applied}"
    );
    assert_eq!(r["errors"], true);
    assert_eq!(proxy.stats().item_429, 40 - applied);
    // the cluster holds exactly the applied items; reads through the proxy reach it
    let count = |url: String| {
        let http = http.clone();
        async move {
            http.get(format!("{url}/p/_count"))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    assert_eq!(count(proxy.url()).await["count"], applied);
    let direct = count(cluster.url()).await;
    assert_eq!(direct["count"], applied);
}
