//! `sluice index ensure`: the indices sluice writes to are created from the `[[index]]` files
//! (settings, mappings, alias) on the test server — or a real cluster when SLUICE_TEST_ES_URL is
//! set — and an existing index that differs from the files is reported, never changed.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::{json, Value};

const INDEX: &str = "ensure-posts-000001";
const ALIAS: &str = "ensure-posts";

fn ensure(config: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["index", "--config"])
        .arg(config)
        .arg("ensure")
        .envs(aws_env())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

async fn bulk(es: &Es, lines: &[Value]) -> Value {
    let body: String = lines.iter().map(|l| l.to_string() + "\n").collect();
    reqwest::Client::new()
        .post(format!("{}/_bulk", es.url()))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Operate 5: created with the files and the alias, written through the alias; a second run
/// finds it matching; a mappings file that no longer matches is reported with the field and both
/// types, exit 1, and the index keeps its mapping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_ensure_creates_from_the_files_and_reports_a_differing_index_without_changing_it() {
    let es = Es::start().await;
    es.delete_index(INDEX).await;
    let dir = tempfile::tempdir().unwrap();
    let mappings = dir.path().join("mappings.json");
    let settings = dir.path().join("settings.json");
    std::fs::write(
        &mappings,
        json!({"properties": {
            "title": {"type": "text"},
            "score": {"type": "long"},
            "author": {"properties": {"name": {"type": "keyword"}}}
        }})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        &settings,
        json!({"index": {"number_of_shards": 1, "number_of_replicas": 0}}).to_string(),
    )
    .unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            r#"[source]
type = "dynamodb_streams"
table = "Posts"
region = "us-east-1"
[sink]
url = "{}"
index = "{ALIAS}"
[checkpoint]
path = "{}"
[[index]]
name = "{INDEX}"
alias = "{ALIAS}"
settings_file = "{}"
mappings_file = "{}"
"#,
            es.url(),
            dir.path().join("sluice.db").display(),
            settings.display(),
            mappings.display()
        ),
    )
    .unwrap();

    let (code, out) = ensure(&config);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("created {INDEX} (alias {ALIAS})")),
        "{out}"
    );
    let state = es.index_state(ALIAS).await.expect("the alias resolves");
    let created = &state[INDEX];
    assert_eq!(
        created["mappings"]["properties"]["title"]["type"], "text",
        "{state}"
    );
    assert_eq!(
        created["mappings"]["properties"]["author"]["properties"]["name"]["type"],
        "keyword"
    );
    assert_eq!(
        created["settings"]["index"]["number_of_replicas"], "0",
        "{state}"
    );
    assert_eq!(created["aliases"][ALIAS]["is_write_index"], true, "{state}");

    // written through the alias into the index, under the mapping: a score that is not a number
    // is refused by the `long` field
    let answer = bulk(
        &es,
        &[
            json!({"index": {"_index": ALIAS, "_id": "1", "version": 5, "version_type": "external"}}),
            json!({"title": "hello", "score": 3}),
            json!({"index": {"_index": ALIAS, "_id": "2", "version": 5, "version_type": "external"}}),
            json!({"title": "bad", "score": "many"}),
        ],
    )
    .await;
    assert_eq!(answer["items"][0]["index"]["_index"], INDEX, "{answer}");
    assert_eq!(answer["items"][0]["index"]["status"], 201, "{answer}");
    assert_eq!(answer["items"][1]["index"]["status"], 400, "{answer}");
    // Elasticsearch before 8.8 says mapper_parsing_exception, later document_parsing_exception
    let refused = answer["items"][1]["index"]["error"]["type"]
        .as_str()
        .unwrap_or_default();
    assert!(refused.ends_with("_parsing_exception"), "{answer}");

    let (code, out) = ensure(&config);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("exists as `{INDEX}` and matches")),
        "{out}"
    );

    // the file changes; the index does not
    std::fs::write(
        &mappings,
        json!({"properties": {"title": {"type": "keyword"}, "score": {"type": "long"}}})
            .to_string(),
    )
    .unwrap();
    let (code, out) = ensure(&config);
    println!("{out}");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("DIFFERS")
            && out
                .contains("mappings.properties.title.type: keyword in the file, text in the index"),
        "{out}"
    );
    let state = es.index_state(ALIAS).await.unwrap();
    assert_eq!(
        state[INDEX]["mappings"]["properties"]["title"]["type"], "text",
        "{state}"
    );
    es.delete_index(INDEX).await;
}
