//! A delete leaves a versioned tombstone for `index.gc_deletes` (60 s by default): an older
//! version written meanwhile is refused (409); written after, it brings the document back — as in
//! Elasticsearch. The setting is per index, dynamic, and shown by `GET /{index}/_settings`.

use es_fake::FakeEs;
use serde_json::{json, Value};

async fn bulk(es: &FakeEs, op: &str, version: u64) -> Value {
    let line =
        json!({op: {"_index": "t", "_id": "x", "version": version, "version_type": "external"}});
    let mut body = line.to_string() + "\n";
    if op == "index" {
        body.push_str("{\"n\":1}\n");
    }
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/_bulk", es.url()))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["items"][0][op].clone()
}

async fn gc_deletes(es: &FakeEs, value: Value) {
    let r = reqwest::Client::new()
        .put(format!("{}/t/_settings", es.url()))
        .json(&json!({"index": {"gc_deletes": value}}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

#[tokio::test]
async fn an_older_write_is_refused_only_while_the_tombstone_lives() {
    let es = FakeEs::start().await.unwrap();
    reqwest::Client::new()
        .put(format!("{}/t", es.url()))
        .json(&json!({"settings": {"index": {"gc_deletes": "1s"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(bulk(&es, "index", 100).await["status"], 201);
    assert_eq!(bulk(&es, "delete", 200).await["status"], 200);
    assert_eq!(
        bulk(&es, "index", 150).await["status"],
        409,
        "the tombstone refuses it"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(
        bulk(&es, "index", 150).await["status"],
        201,
        "gone after gc_deletes: back"
    );

    gc_deletes(&es, json!("24h")).await;
    let settings: Value = reqwest::get(format!("{}/t/_settings", es.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(settings["t"]["settings"]["index"]["gc_deletes"], "24h");
    assert_eq!(bulk(&es, "delete", 300).await["status"], 200);
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(
        bulk(&es, "index", 250).await["status"],
        409,
        "kept for 24 h"
    );
    gc_deletes(&es, Value::Null).await;
    let settings: Value = reqwest::get(format!("{}/t/_settings", es.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        settings["t"]["settings"]["index"]
            .get("gc_deletes")
            .is_none(),
        "{settings}"
    );
}

#[tokio::test]
async fn index_settings_are_read_and_set_through_wildcards_and_lists() {
    let es = FakeEs::start().await.unwrap();
    let http = reqwest::Client::new();
    for name in ["posts-acme", "posts-globex", "people"] {
        http.put(format!("{}/{name}", es.url()))
            .send()
            .await
            .unwrap();
    }
    let get = |path: String| {
        let http = http.clone();
        async move {
            let r = http.get(path).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, settings) = get(format!("{}/posts-*/_settings", es.url())).await;
    assert_eq!(status, 200);
    let names: Vec<&String> = settings.as_object().unwrap().keys().collect();
    assert_eq!(names, ["posts-acme", "posts-globex"]);
    let (status, settings) = get(format!("{}/nothing-*/_settings", es.url())).await;
    assert_eq!(
        (status, settings),
        (200, json!({})),
        "a wildcard matching nothing is no error"
    );
    let (status, _) = get(format!("{}/people,missing/_settings", es.url())).await;
    assert_eq!(status, 404, "a name without a wildcard must exist");
    let r = http
        .put(format!("{}/posts-*/_settings", es.url()))
        .json(&json!({"index": {"gc_deletes": "24h"}}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let (_, settings) = get(format!("{}/posts-globex,people/_settings", es.url())).await;
    assert_eq!(
        settings["posts-globex"]["settings"]["index"]["gc_deletes"],
        "24h"
    );
    assert!(settings["people"]["settings"]["index"]["gc_deletes"].is_null());
}
