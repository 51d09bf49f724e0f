//! `sluice dead-letters`: what the index refused is listed with its reason, and sent again once
//! the mapping is fixed — with its original version, so a newer document is never overwritten.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use common::*;

fn dead_letters(sluice: &Sluice, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("dead-letters")
        .arg("--config")
        .arg(&sluice.config)
        .args(args)
        .envs(aws_env())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

async fn put(ddb: &aws_sdk_dynamodb::Client, id: &str, title: &str, score: AttributeValue) {
    let item: HashMap<String, AttributeValue> = [
        ("id".to_string(), AttributeValue::S(id.into())),
        ("title".to_string(), AttributeValue::S(title.into())),
        ("score".to_string(), score),
    ]
    .into();
    ddb.put_item()
        .table_name("Posts")
        .set_item(Some(item))
        .send()
        .await
        .expect("put");
}

async fn create_index(es: &Es, index: &str, score_type: &str) {
    let r = reqwest::Client::new()
        .put(format!("{}/{index}", es.url()))
        .json(&serde_json::json!({"mappings": {"properties": {"score": {"type": score_type}}}}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

/// Acceptance 1: a mapping error dead-letters 3 documents; the index is recreated with a looser
/// mapping; one of the 3 is updated meanwhile by the stream; `replay --all` indexes the other
/// two, gets 409 for the updated one (the newer version stays), and empties the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_after_the_mapping_is_fixed_indexes_the_refused_and_keeps_newer_versions() {
    let bed = PostsBed::new("posts-dl").await;
    create_index(&bed.es, "posts-dl", "long").await;
    let sluice = bed.start_sluice();
    sluice.wait_ready(Duration::from_secs(30)).await;
    put(&bed.ddb, "post-0", "fine", AttributeValue::N("1".into())).await;
    for i in 1..=3 {
        put(
            &bed.ddb,
            &format!("post-{i}"),
            "refused",
            AttributeValue::S("high".into()),
        )
        .await;
    }
    let until = Instant::now() + Duration::from_secs(60);
    let listed = loop {
        let (ok, text) = dead_letters(&sluice, &["list", "--json"]);
        assert!(ok, "{text}");
        let rows: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        if rows.len() == 3 {
            break rows;
        }
        assert!(Instant::now() < until, "{text}\n{}", sluice.log_text());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for row in &listed {
        assert_eq!(row["index"], "posts-dl");
        assert_eq!(row["action"], "index");
        assert!(
            row["reason"]
                .as_str()
                .unwrap()
                .contains("mapper_parsing_exception"),
            "{row}"
        );
        assert!(
            row["shard_id"].as_str().unwrap().starts_with("shardId-"),
            "{row}"
        );
    }
    let (_, table) = dead_letters(&sluice, &["list"]);
    assert!(
        table.contains("3 dead letters") && table.contains("post-2"),
        "{table}"
    );
    let first = listed[0]["id"].to_string();
    let (_, shown) = dead_letters(&sluice, &["show", &first]);
    assert!(shown.contains("\"score\": \"high\""), "{shown}");

    // the fix: the index recreated with a mapping that takes the values
    bed.es.delete_index("posts-dl").await;
    create_index(&bed.es, "posts-dl", "keyword").await;
    // meanwhile the stream writes post-2 anew (newer version), and post-0 again
    put(
        &bed.ddb,
        "post-2",
        "newer",
        AttributeValue::S("higher".into()),
    )
    .await;
    put(
        &bed.ddb,
        "post-0",
        "fine again",
        AttributeValue::N("2".into()),
    )
    .await;
    let until = Instant::now() + Duration::from_secs(60);
    while bed.es.documents("posts-dl").await.len() < 2 {
        assert!(Instant::now() < until, "{}", sluice.log_text());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let (ok, replayed) = dead_letters(&sluice, &["replay", "--all"]);
    assert!(ok, "{replayed}");
    assert!(
        replayed.contains("replayed 3 of 3 dead letters: 2 indexed, 0 deleted, 1 stale"),
        "{replayed}"
    );
    let (_, after) = dead_letters(&sluice, &["list"]);
    assert_eq!(after, "no dead letters\n");
    bed.assert_converges(Duration::from_secs(30)).await;
    let post2 = &bed.es.documents("posts-dl").await["post-2"];
    assert_eq!(post2["title"], "newer", "the stream's newer version stays");
    println!("{table}{replayed}");
}

/// Nothing is replayed or purged unless the rows are named: no flag is an error, not "all".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_and_purge_need_to_be_told_which_rows() {
    let es = Es::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("s.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\ntype = \"dynamodb_streams\"\ntable = \"Posts\"\n[sink]\nurl = \"{}\"\nindex = \"x\"\n[checkpoint]\npath = \"{}\"\n",
            es.url(),
            dir.path().join("s.db").display()
        ),
    )
    .unwrap();
    for args in [
        &["replay"][..],
        &["purge"],
        &["purge", "--all", "--id", "3"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["dead-letters", "--config"])
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("exactly one of --all, --id, --since, --before"),
            "{err}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["dead-letters", "--config"])
        .arg(&config)
        .args(["purge", "--before", "30d"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "0 dead letters purged\n"
    );
}
