//! `sluice verify` on moto with the real binary: a synced table reports no difference; documents
//! deleted, altered and added behind sluice's back are each counted in their class; `--repair`
//! fixes them while the stream keeps running, and a second verify reports 0.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn verify(config: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("verify")
        .arg("--config")
        .arg(config)
        .args(args)
        .envs(aws_env())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn report(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Operate 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_counts_each_kind_of_drift_and_repair_fixes_it_while_the_stream_runs() {
    let bed = PostsBed::new("verify-posts").await;
    // sluice and moto share this host's clock: a small allowance lets the repair fix documents
    // changed a few seconds before it (with the 5 min default they would be left for a later run)
    let mut options = bed.options();
    options.extra = "[backfill]\nclock_skew_allowance = \"2s\"\n";
    let sluice = Sluice::start(&options, bed.dir.path());
    sluice.wait_ready(Duration::from_secs(30)).await;
    random_workload(&bed.ddb, "Posts", 60, 150, 7).await;
    bed.assert_converges(Duration::from_secs(60)).await;

    let (code, out, err) = verify(&sluice.config, &["--extra"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("0 missing, 0 different, 0 extra — the index equals the table"),
        "{out}"
    );

    // behind sluice's back: 3 deleted, 4 altered, 2 added
    let docs = bed.es.documents(bed.index).await;
    let ids: Vec<&String> = docs.keys().collect();
    assert!(ids.len() >= 10, "{} documents", ids.len());
    let mut lines = Vec::new();
    for id in &ids[0..3] {
        lines.push(json!({"delete": {"_index": bed.index, "_id": id}}));
    }
    for id in &ids[3..7] {
        let mut source = docs[*id].clone();
        source["title"] = json!("changed behind sluice's back");
        lines.push(json!({"index": {"_index": bed.index, "_id": id}}));
        lines.push(source);
    }
    for ghost in ["ghost-1", "ghost-2"] {
        lines.push(json!({"index": {"_index": bed.index, "_id": ghost}}));
        lines.push(json!({"id": ghost, "title": "no such item"}));
    }
    bed.es.tamper(lines).await;

    let (code, out, err) = verify(&sluice.config, &["--extra", "--json"]);
    assert_eq!(code, Some(1), "{out}{err}");
    let found = report(&out);
    assert_eq!(
        (
            found["missing"].clone(),
            found["different"].clone(),
            found["extra"].clone()
        ),
        (json!(3), json!(4), json!(2)),
        "{found:#}"
    );
    assert!(
        found["examples"]["extra"]
            .as_array()
            .unwrap()
            .contains(&json!("ghost-1")),
        "{found:#}"
    );
    assert!(
        found["examples"]["different"][0][1]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str().unwrap().starts_with("title:")),
        "{found:#}"
    );
    // the daemon exports the last run's figures for dashboards
    let until = Instant::now() + Duration::from_secs(20);
    while sluice
        .metric("sluice_verify_last_differences", "class=\"missing\"")
        .await
        != 3.0
    {
        assert!(
            Instant::now() < until,
            "sluice_verify_last_differences never showed the run"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // repair while the stream keeps running: other items change meanwhile
    let ddb = bed.ddb.clone();
    let writing = tokio::spawn(async move {
        let mut rng = fastrand::Rng::with_seed(11);
        for rev in 0..60u64 {
            let id = format!("live-{}", rev % 15);
            apply(&ddb, "Posts", &id, Change::Put, 1000 + rev, &mut rng).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let (code, out, err) = verify(&sluice.config, &["--extra", "--repair", "--json"]);
    assert_eq!(
        code,
        Some(1),
        "differences were found (and repaired): {out}{err}"
    );
    let repaired = report(&out);
    println!("repair: {}", repaired["repair"]);
    assert_eq!(repaired["repair"]["indexed"], json!(7), "{repaired:#}");
    assert_eq!(repaired["repair"]["deleted"], json!(2), "{repaired:#}");
    writing.await.unwrap();
    bed.assert_converges(Duration::from_secs(60)).await;

    let (code, out, err) = verify(&sluice.config, &["--extra"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("0 missing, 0 different, 0 extra"), "{out}");
    // a sample reads only part of the table
    let (code, out, err) = verify(&sluice.config, &["--sample", "20", "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let sample = report(&out);
    assert_eq!(sample["checked"], json!(20), "{sample:#}");
}
