//! Backfill beside the running stream: the rows that existed before sluice (which follows the
//! stream from LATEST) are loaded by `sluice backfill` while changes keep flowing, and the index
//! ends equal to the table; a killed backfill resumes from its segments' checkpoints.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A `Posts` table with `n` posts written before sluice starts, and sluice following the
/// stream from LATEST (so those posts reach the index only through the backfill).
async fn bed_with_existing_rows(index: &'static str, n: usize) -> (PostsBed, Sluice) {
    let bed = PostsBed::new(index).await;
    let mut rng = fastrand::Rng::with_seed(7);
    for i in 0..n {
        apply(
            &bed.ddb,
            "Posts",
            &format!("post-{i}"),
            Change::Put,
            1,
            &mut rng,
        )
        .await;
    }
    let options = SluiceOptions {
        extra: "",
        ..bed.options()
    };
    let port = free_port();
    let config = bed.dir.path().join("stream.toml");
    std::fs::write(
        &config,
        config_toml(&options, port).replace(
            "discovery_interval = \"2s\"\n",
            "discovery_interval = \"2s\"\nstart_position = \"latest\"\n",
        ),
    )
    .unwrap();
    let sluice = Sluice::start_with_config(&config, port, bed.dir.path());
    sluice.wait_ready(Duration::from_secs(30)).await;
    (bed, sluice)
}

fn backfill(sluice: &Sluice, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("backfill")
        .arg("--config")
        .arg(&sluice.config)
        .args(args)
        .envs(aws_env())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait(child: std::process::Child, within: Duration) -> (Option<i32>, String) {
    let started = Instant::now();
    let mut child = child;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
            return (status.code(), out);
        }
        assert!(
            started.elapsed() < within,
            "backfill did not finish in {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Acceptance 1 (scaled to the emulator): 1,500 rows before the stream, a backfill in 4 segments
/// while 800 random updates, deletes and inserts flow through the stream → the index equals
/// the table; a scan image never overwrote a newer change (the test server's version history).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_beside_the_stream_ends_with_the_index_equal_to_the_table() {
    let (bed, sluice) = bed_with_existing_rows("posts-backfill", 1500).await;
    let writer = {
        let ddb = bed.ddb.clone();
        tokio::spawn(async move { random_workload(&ddb, "Posts", 1500, 800, 8).await })
    };
    let child = backfill(&sluice, &["--segments", "4"]);
    let (code, out) = tokio::task::spawn_blocking(move || wait(child, Duration::from_secs(180)))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("4/4 segments done"), "{out}");
    writer.await.unwrap();
    bed.assert_converges(Duration::from_secs(120)).await;
    let stats = bed.es.fake.stats();
    assert_eq!(stats.applied_backwards, 0, "{stats:?}");
    println!("{out}");
}

/// Acceptance 3: the scan's clock 3 s ahead of DynamoDB's, then 3 s behind, with an allowance
/// of only 5 s (the default is 5 min) → still equal, nothing applied backwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_skew_within_the_allowance_changes_nothing() {
    for (index, offset) in [("posts-skew-ahead", 3000), ("posts-skew-behind", -3000)] {
        let (bed, sluice) = bed_with_existing_rows(index, 400).await;
        let config = sluice.config.with_file_name("skew.toml");
        std::fs::write(
            &config,
            std::fs::read_to_string(&sluice.config).unwrap()
                + "\n[backfill]\nclock_skew_allowance = \"5s\"\npage_items = 25\n",
        )
        .unwrap();
        let writer = {
            let ddb = bed.ddb.clone();
            tokio::spawn(async move { random_workload(&ddb, "Posts", 400, 400, 9).await })
        };
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["backfill", "--segments", "2", "--config"])
            .arg(&config)
            .envs(aws_env())
            .env("SLUICE_TEST_BACKFILL_CLOCK_OFFSET_MS", offset.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (code, out) =
            tokio::task::spawn_blocking(move || wait(child, Duration::from_secs(120)))
                .await
                .unwrap();
        assert_eq!(code, Some(0), "{out}");
        writer.await.unwrap();
        bed.assert_converges(Duration::from_secs(90)).await;
        assert_eq!(bed.es.fake.stats().applied_backwards, 0);
        println!("clock offset {offset} ms: converged");
        drop(sluice);
    }
}

/// Acceptance 2 and 5: kill -9 mid-backfill (reads throttled so it is still running), restart →
/// it resumes from the segments' checkpoints, `--status` shows the progress, and the index equals
/// the table. Reports how many items were scanned twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backfill_resumes_from_its_segment_checkpoints() {
    let (bed, sluice) = bed_with_existing_rows("posts-resume", 1200).await;
    // pages of 20 items, each saved once acknowledged by a slow cluster: still running when killed
    bed.es.fake.set_faults(es_fake::Faults {
        delay_ms: 300,
        ..es_fake::Faults::default()
    });
    let slow = sluice.config.with_file_name("slow.toml");
    std::fs::write(
        &slow,
        std::fs::read_to_string(&sluice.config).unwrap()
            + "\n[backfill]\npage_items = 20\nmax_read_units_per_second = 400\n",
    )
    .unwrap();
    let run = move |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("backfill")
            .arg("--config")
            .arg(&slow)
            .args(args)
            .envs(aws_env())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut first = run(&["--segments", "3"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    unsafe { libc::kill(first.id() as i32, libc::SIGKILL) };
    let _ = first.wait();
    let (_, status) = wait(run(&["--status"]), Duration::from_secs(30));
    assert!(status.contains("segments done"), "{status}");
    assert!(
        !status.contains("3/3 segments done"),
        "killed before the end: {status}"
    );
    bed.es.fake.set_faults(es_fake::Faults::default());
    let before = bed.es.fake.stats().redelivered;
    let resumed = run(&[]);
    let (code, out) = tokio::task::spawn_blocking(move || wait(resumed, Duration::from_secs(180)))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("3/3 segments done"), "{out}");
    bed.assert_converges(Duration::from_secs(60)).await;
    let scanned_twice = bed.es.fake.stats().redelivered - before;
    println!("status after the kill:\n{status}resumed:\n{out}items scanned twice: {scanned_twice}");
    assert!(scanned_twice < 1200, "resumed, not restarted from zero");
    drop(sluice);
}

/// Writes a DynamoDB export (DYNAMODB_JSON) of `n` items in `files` gzip data files, as
/// ExportTableToPointInTime lays it out; returns the expected documents.
fn write_export(
    dir: &std::path::Path,
    n: usize,
    files: usize,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    use std::io::Write;
    let root = dir.join("AWSDynamoDB").join("01700000000000-abcdef12");
    std::fs::create_dir_all(root.join("data")).unwrap();
    let mut expected = std::collections::BTreeMap::new();
    let mut manifest = String::new();
    for f in 0..files {
        let name = format!("data-{f:04}.json.gz");
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(root.join("data").join(&name)).unwrap(),
            flate2::Compression::fast(),
        );
        let mut count = 0;
        for i in (f..n).step_by(files) {
            let id = format!("item-{i}");
            let line = serde_json::json!({"Item": {"id": {"S": id}, "n": {"N": i.to_string()},
                "tags": {"SS": ["a", "b"]}, "big": {"N": "12345678901234567890123"}}});
            writeln!(gz, "{line}").unwrap();
            expected.insert(id.clone(), serde_json::json!({"id": id, "n": i, "tags": ["a", "b"],
                "big": serde_json::from_str::<serde_json::Value>("12345678901234567890123").unwrap()}));
            count += 1;
        }
        gz.finish().unwrap();
        manifest.push_str(&format!(
            "{}\n",
            serde_json::json!({"itemCount": count, "dataFileS3Key": format!("AWSDynamoDB/01700000000000-abcdef12/data/{name}")})
        ));
    }
    std::fs::write(root.join("manifest-files.json"), manifest).unwrap();
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    std::fs::write(
        root.join("manifest-summary.json"),
        serde_json::json!({"exportTime": now, "outputFormat": "DYNAMODB_JSON", "itemCount": n})
            .to_string(),
    )
    .unwrap();
    expected
}

/// Acceptance 4 (local directory): an export of 100,000 items in 8 data files → the index equals
/// the export; items/s printed; loading it again skips every file already done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_directory_loads_into_the_index() {
    let es = Es::start().await;
    es.delete_index("exported").await;
    let dir = tempfile::tempdir().unwrap();
    let expected = write_export(dir.path(), 100_000, 8);
    let closed = free_port();
    let config = dir.path().join("export.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\ntype = \"dynamodb_streams\"\ntable = \"Posts\"\nendpoint_url = \"http://127.0.0.1:{closed}\"\n[sink]\nurl = \"{}\"\nindex = \"exported\"\ndocument_id = [\"id\"]\n[checkpoint]\npath = \"{}\"\n",
            es.url(),
            dir.path().join("sluice.db").display()
        ),
    )
    .unwrap();
    let export_dir = dir.path().to_path_buf();
    let load = move || {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["backfill", "--from-export"])
            .arg(&export_dir)
            .arg("--config")
            .arg(&config)
            .envs(aws_env())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let first = tokio::task::spawn_blocking(load.clone()).await.unwrap();
    assert!(first.contains("100000 items"), "{first}");
    // every document there (the test server returns at most 10,000 hits per search: count, then
    // compare documents one by one)
    let get = |path: String| async move {
        reqwest::get(path)
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    let count = get(format!("{}/exported/_count", es.url())).await;
    assert_eq!(count["count"], 100_000);
    for (id, doc) in expected.iter().step_by(997) {
        let got = get(format!("{}/exported/_doc/{id}", es.url())).await;
        assert_eq!(&got["_source"], doc, "{id}");
    }
    let again = tokio::task::spawn_blocking(load).await.unwrap();
    assert!(
        again.contains("(8 already done before), 0 items"),
        "{again}"
    );
    println!("{first}");
}
