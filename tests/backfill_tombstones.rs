//! A backfill keeps deletes (`index.gc_deletes`) on every index its routes write, against the
//! Elasticsearch test server: a fixed index (created with the setting when missing), each index a
//! template's wildcard names — an alias behind such a name included —, and those that appear while
//! it runs; when it completes, each index gets its own setting back.

use es_fake::FakeEs;
use serde_json::{json, Value};
use sluice::backfill::tombstones;
use sluice::checkpoint::CheckpointStore;
use sluice::config::{Config, JournalMode};

fn config(es: &str, db: &std::path::Path) -> Config {
    Config::from_toml(&format!(
        r#"
[source]
type = "dynamodb_streams"
table = "App"
old_images = true

[sink]
url = "{es}"
index = "unused"

[checkpoint]
path = "{db}"

[[route]]
name = "posts"
when.SK.begins_with = "POST#"
index = "posts-{{tenant}}"
id = ["PK", "SK"]

[[route]]
name = "comments"
when.SK.begins_with = "COMMENT#"
index = "comments"
id = ["PK", "SK"]
"#,
        db = db.display()
    ))
    .unwrap()
}

async fn gc_deletes(es: &FakeEs) -> Value {
    let all: Value = reqwest::get(format!("{}/*/_settings", es.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Value::Object(
        all.as_object()
            .unwrap()
            .iter()
            .map(|(name, s)| (name.clone(), s["settings"]["index"]["gc_deletes"].clone()))
            .collect(),
    )
}

#[tokio::test]
async fn deletes_are_kept_on_every_index_the_routes_write_while_the_backfill_runs() {
    let es = FakeEs::start().await.unwrap();
    let http = reqwest::Client::new();
    let create = |name: &str, body: Value| {
        let (http, url) = (http.clone(), format!("{}/{name}", es.url()));
        async move {
            let r = http.put(url).json(&body).send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        }
    };
    create(
        "posts-acme",
        json!({"settings": {"index": {"gc_deletes": "90s"}}}),
    )
    .await;
    // a tenant's index under an alias the template names
    create("acme-v2", json!({"aliases": {"posts-globex": {}}})).await;
    create("people", json!({})).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(&es.url(), &dir.path().join("sluice.db"));
    let store = CheckpointStore::open(&config.checkpoint.path, JournalMode::Wal).unwrap();

    let since = tombstones::keep(&config, &store, "App → posts-{tenant}, comments")
        .await
        .unwrap();
    assert!(since.is_some());
    assert_eq!(
        gc_deletes(&es).await,
        json!({"posts-acme": "86400s", "acme-v2": "86400s", "comments": "86400s", "people": null}),
        "the template's indices, the one behind its alias, and the fixed one (created): not others"
    );

    // a stream delete creates a new tenant's index: the next sweep keeps its deletes too
    create("posts-beta", json!({})).await;
    tombstones::sweep(&config, &store, "App → posts-{tenant}, comments")
        .await
        .unwrap();
    assert_eq!(gc_deletes(&es).await["posts-beta"], json!("86400s"));

    tombstones::restore(&config, &store, "App → posts-{tenant}, comments")
        .await
        .unwrap();
    assert_eq!(
        gc_deletes(&es).await,
        json!({"posts-acme": "90s", "acme-v2": null, "comments": null, "posts-beta": null, "people": null}),
        "each index has its own setting back"
    );
}
