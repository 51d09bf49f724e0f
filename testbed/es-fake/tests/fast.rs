//! Fast mode answers every `_bulk` item as the full test server does — status, result, version,
//! the 409 of a stale external version — while keeping no sources.

use es_fake::FakeEs;
use serde_json::{json, Value};

async fn bulk(es: &FakeEs, body: &str) -> Value {
    reqwest::Client::new()
        .post(format!("{}/_bulk", es.url()))
        .header("content-type", "application/x-ndjson")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Each item's (action, status, result or error type, version).
fn outcomes(answer: &Value) -> Vec<(String, u64, String, Option<u64>)> {
    answer["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            let (op, r) = item.as_object().unwrap().iter().next().unwrap();
            let what = r["result"]
                .as_str()
                .or(r["error"]["type"].as_str())
                .unwrap()
                .to_owned();
            (
                op.clone(),
                r["status"].as_u64().unwrap(),
                what,
                r["_version"].as_u64(),
            )
        })
        .collect()
}

#[tokio::test]
async fn fast_mode_answers_every_item_as_the_full_server_does() {
    let line = |op: &str, id: &str, v: u64| {
        let mut l =
            json!({op: {"_index": "t", "_id": id, "version": v, "version_type": "external"}})
                .to_string()
                + "\n";
        if op == "index" {
            l.push_str("{\"title\":\"x\",\"blocks\":[{\"type\":\"paragraph\"}]}\n");
        }
        l
    };
    let body = [
        line("index", "a", 1),
        line("index", "a", 1),
        line("index", "a", 5),
        line("index", "a", 3),
        line("delete", "a", 6),
        line("index", "a", 6),
        line("index", "a", 7),
        line("delete", "never", 2),
        line("index", "b", 10),
    ]
    .concat();
    let full = FakeEs::start().await.unwrap();
    let fast = FakeEs::start_fast().await.unwrap();
    let (expected, answered) = (bulk(&full, &body).await, bulk(&fast, &body).await);
    assert_eq!(outcomes(&answered), outcomes(&expected));
    assert_eq!(answered["errors"], expected["errors"]);
    assert_eq!(answered["errors"], true);
    assert_eq!(fast.fast_live_documents(), 2);
    let seen = fast.fast_first_seen(&["a".into(), "nobody".into()]);
    assert!(seen[0].is_some() && seen[1].is_none());
    // a malformed action line refuses the request, as in Elasticsearch
    let bad = reqwest::Client::new()
        .post(format!("{}/_bulk", fast.url()))
        .body("{not json}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}
