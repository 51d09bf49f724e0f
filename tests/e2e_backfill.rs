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
    let bed = PostsBed::without_stream(index).await;
    seed_posts(&bed.ddb, 0..n).await;
    bed.enable_stream().await;
    let sluice = follow_from_latest(&bed);
    sluice.wait_ready(Duration::from_secs(30)).await;
    (bed, sluice)
}

/// `sluice backfill` beside `sluice`, its log in `backfill.log` beside the daemon's.
fn backfill(sluice: &Sluice, args: &[&str]) -> std::process::Child {
    backfill_with_env(sluice, args, &[])
}

fn backfill_with_env(sluice: &Sluice, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("backfill")
        .arg("--config")
        .arg(&sluice.config)
        .args(args)
        .envs(aws_env())
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(sluice.log.with_file_name("backfill.log")).unwrap())
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
        if started.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            panic!("backfill did not finish in {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes posts `range` with BatchWriteItem (25 a call, 4 calls at a time): fast enough to
/// give the emulator a 50,000-item table.
async fn seed_posts(ddb: &aws_sdk_dynamodb::Client, range: std::ops::Range<usize>) {
    use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
    let ids: Vec<usize> = range.collect();
    let mut calls = tokio::task::JoinSet::new();
    for chunk in ids.chunks(25) {
        if calls.len() >= 4 {
            calls.join_next().await.unwrap().unwrap();
        }
        let ddb = ddb.clone();
        let chunk = chunk.to_vec();
        calls.spawn(async move {
            let mut rng = fastrand::Rng::with_seed(chunk[0] as u64);
            let mut pending: Vec<WriteRequest> = chunk
                .iter()
                .map(|i| {
                    let put = PutRequest::builder()
                        .set_item(Some(post(&format!("post-{i}"), 1, &mut rng)))
                        .build()
                        .unwrap();
                    WriteRequest::builder().put_request(put).build()
                })
                .collect();
            while !pending.is_empty() {
                let out = ddb
                    .batch_write_item()
                    .request_items("Posts", pending)
                    .send()
                    .await
                    .expect("batch write");
                pending = out
                    .unprocessed_items()
                    .and_then(|u| u.get("Posts").cloned())
                    .unwrap_or_default();
            }
        });
    }
    while let Some(done) = calls.join_next().await {
        done.unwrap();
    }
}

/// `n` random changes by `writers` concurrent writers over posts `0..keys` (each writer owns the
/// keys ≡ its number mod `writers`, so one key's changes are in order); posts below `existing`
/// exist at the start. Inserts, updates and deletes.
async fn concurrent_changes(
    ddb: &aws_sdk_dynamodb::Client,
    existing: usize,
    keys: usize,
    n: usize,
    writers: usize,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let ddb = ddb.clone();
        tasks.spawn(async move {
            let mut rng = fastrand::Rng::with_seed(100 + w as u64);
            let mut exists: std::collections::HashMap<usize, bool> = Default::default();
            for rev in 0..n / writers {
                let k = rng.usize(0..keys / writers) * writers + w;
                let present = *exists.entry(k).or_insert(k < existing);
                let change = match (present, rng.u8(0..10)) {
                    (false, _) | (true, 0..=3) => Change::Put,
                    (true, 4..=7) => Change::Update,
                    (true, _) => Change::Delete,
                };
                apply(
                    &ddb,
                    "Posts",
                    &format!("post-{k}"),
                    change,
                    2 + rev as u64,
                    &mut rng,
                )
                .await;
                exists.insert(k, !matches!(change, Change::Delete));
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// Acceptance 1 at its volume, on the source fake (moto stalls at 50,000 items under concurrent
/// writes: every Scan call reads the whole table): a table of 50,000 items, backfilled in 4
/// segments while 5,000 concurrent inserts, updates and deletes (8 writers, over 55,000 keys)
/// flow through a 4-shard stream whose shards roll over into children twice meanwhile → the
/// index equals the table; no scan image was ever applied over a newer change (the test server
/// keeps every document's version history).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_of_50_000_items_beside_5_000_stream_changes_ends_with_the_index_equal_to_the_table(
) {
    let bed = PostsBed::without_stream_on_fake("posts-backfill-volume").await;
    let Source::Fake(fake) = &bed.source else {
        unreachable!()
    };
    // the shards roll over after a third and after two thirds of the changes
    let rolls = async {
        let until = Instant::now() + Duration::from_secs(300);
        for share in [1, 2] {
            loop {
                assert!(
                    Instant::now() < until,
                    "the changes never reached {share}/3"
                );
                let records: usize = fake
                    .stream_shard_lengths("Posts")
                    .iter()
                    .map(|(_, n)| n)
                    .sum();
                if records >= 5_000 * share / 3 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            fake.roll_stream_shards("Posts").expect("roll the shards");
        }
    };
    tokio::join!(
        backfill_beside_concurrent_changes(&bed, 50_000, 5_000),
        rolls
    );
    let shards = fake.stream_shard_lengths("Posts");
    assert_eq!(shards.len(), 12, "4 shards, rolled twice");
    for generation in shards.chunks(4) {
        let records: usize = generation.iter().map(|(_, n)| n).sum();
        assert!(
            records > 0,
            "changes flowed through every generation: {shards:?}"
        );
    }
}

/// A table that answers a Scan page slower than the attempt timeout allows (moto under load, an
/// overloaded table): a page that timed out is asked again for fewer items, so the backfill
/// moves on instead of asking the same page for ever. 2,000 posts, 2 segments; every item of a
/// page costs the fake 5 ms and an attempt may take 1 s (test hook), so a 1 MB page (about 800
/// posts, 4 s) times out and only pages of ~100 posts are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_page_slower_than_the_attempt_timeout_is_asked_again_smaller() {
    let bed = PostsBed::without_stream_on_fake_with(
        "posts-backfill-slow-scan",
        source_fake::Options {
            scan_time_per_item: Duration::from_millis(5),
            ..Default::default()
        },
    )
    .await;
    seed_posts(&bed.ddb, 0..2_000).await;
    bed.enable_stream().await;
    let sluice = follow_from_latest(&bed);
    sluice.wait_ready(Duration::from_secs(30)).await;
    let child = backfill_with_env(
        &sluice,
        &["--segments", "2"],
        &[("SLUICE_TEST_AWS_ATTEMPT_TIMEOUT_MS", "1000")],
    );
    let (code, out) = tokio::task::spawn_blocking(move || wait(child, Duration::from_secs(120)))
        .await
        .expect("the backfill finishes: a timed-out page is asked again smaller");
    let log = std::fs::read_to_string(sluice.log.with_file_name("backfill.log")).unwrap();
    assert_eq!(code, Some(0), "{out}\n{log}");
    assert!(out.contains("2/2 segments done, 2000 items"), "{out}");
    let timeouts = log
        .lines()
        .filter(|l| l.contains("scan failed; retrying") && l.contains("timeout"))
        .count();
    assert!(
        timeouts >= 2,
        "both segments' first pages timed out (the fake is slow enough): {log}"
    );
    // the timeouts stop once the pages fit: no page size is retried for ever
    assert!(timeouts <= 2 * 4, "{timeouts} timeouts: {log}");
    bed.assert_converges(Duration::from_secs(60)).await;
}

/// The same at a tenth of the volume on moto: the scan and the stream as a second emulator
/// implements them. (The full volume by hand: SLUICE_TEST_BACKFILL_ITEMS=50000
/// SLUICE_TEST_BACKFILL_CHANGES=5000.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_beside_concurrent_stream_changes_ends_with_the_index_equal_to_the_table() {
    let from_env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let bed = PostsBed::without_stream("posts-backfill").await;
    backfill_beside_concurrent_changes(
        &bed,
        from_env("SLUICE_TEST_BACKFILL_ITEMS", ITEMS),
        from_env("SLUICE_TEST_BACKFILL_CHANGES", ITEMS / 5),
    )
    .await;
}

/// `items` posts written before the stream exists, `sluice run` following it from LATEST, then
/// `sluice backfill` (4 segments) while 8 writers make `changes` changes over 110 % of the keys.
async fn backfill_beside_concurrent_changes(bed: &PostsBed, items: usize, changes: usize) {
    let seeding = Instant::now();
    seed_posts(&bed.ddb, 0..items).await;
    let seeded_in = seeding.elapsed();
    bed.enable_stream().await;
    let sluice = follow_from_latest(bed);
    sluice.wait_ready(Duration::from_secs(30)).await;
    let writer = {
        let ddb = bed.ddb.clone();
        tokio::spawn(
            async move { concurrent_changes(&ddb, items, items * 11 / 10, changes, 8).await },
        )
    };
    let started = Instant::now();
    let child = backfill(&sluice, &["--segments", "4"]);
    let log = sluice.log.with_file_name("backfill.log");
    let (code, out) = tokio::task::spawn_blocking(move || wait(child, Duration::from_secs(600)))
        .await
        .unwrap_or_else(|e| {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            panic!("{e}; backfill log ends:\n{}", tail.join("\n"))
        });
    let backfilled_in = started.elapsed();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("4/4 segments done"), "{out}");
    let changes_done_in = {
        writer.await.unwrap();
        started.elapsed()
    };
    bed.assert_converges(Duration::from_secs(180)).await;
    let stats = bed.es.fake.stats();
    assert_eq!(stats.applied_backwards, 0, "{stats:?}");
    assert_eq!(stats.divergent, 0, "{stats:?}");
    println!(
        "{out}seeded {items} items in {seeded_in:.1?}; backfill beside {changes} concurrent changes took {backfilled_in:.1?} ({:.0} items/s), the changes {changes_done_in:.1?}",
        items as f64 / backfilled_in.as_secs_f64()
    );
}

const ITEMS: usize = 5_000;

/// `sluice run` following the bed's stream from LATEST (so rows written before reach the index
/// only through a backfill), with `extra` configuration.
fn follow_from_latest_with(bed: &PostsBed, extra: &str) -> Sluice {
    let options = SluiceOptions {
        extra,
        ..bed.options()
    };
    let port = free_port();
    let config = bed.dir.path().join(format!("stream-{port}.toml"));
    std::fs::write(
        &config,
        config_toml(&options, port).replace(
            "discovery_interval = \"2s\"\n",
            "discovery_interval = \"2s\"\nstart_position = \"latest\"\n",
        ),
    )
    .unwrap();
    Sluice::start_with_config(&config, port, bed.dir.path())
}

fn follow_from_latest(bed: &PostsBed) -> Sluice {
    follow_from_latest_with(bed, "")
}

/// `[backfill] on_start`: `sluice run` backfills the table itself beside the stream, once — a
/// restart on the same checkpoint file does not scan again — and reports it in its metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_on_start_backfills_the_table_once_beside_the_stream() {
    let bed = PostsBed::without_stream("posts-on-start").await;
    seed_posts(&bed.ddb, 0..2_000).await;
    bed.enable_stream().await;
    let extra = "[backfill]\non_start = true\nsegments = 3\npage_items = 200\n";
    let mut sluice = follow_from_latest_with(&bed, extra);
    sluice.wait_ready(Duration::from_secs(30)).await;
    concurrent_changes(&bed.ddb, 2_000, 2_400, 600, 4).await;
    bed.assert_converges(Duration::from_secs(120)).await;
    let until = Instant::now() + Duration::from_secs(30);
    while sluice.metric("sluice_backfill_complete", "").await != 1.0 {
        assert!(Instant::now() < until, "{}", sluice.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let items = sluice.metric("sluice_backfill_items_total", "").await;
    assert!(items >= 1_900.0, "{items}");
    assert_eq!(
        sluice
            .metric("sluice_backfill_segments", "state=\"done\"")
            .await,
        3.0
    );
    assert_eq!(bed.es.fake.stats().applied_backwards, 0);
    sluice.sigterm();
    assert_eq!(sluice.wait_exit(Duration::from_secs(20)).0, Some(0));

    let mut again = follow_from_latest_with(&bed, extra);
    again.wait_ready(Duration::from_secs(30)).await;
    let until = Instant::now() + Duration::from_secs(30);
    while !again.log_text().contains("backfilled before") {
        assert!(Instant::now() < until, "{}", again.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(again.metric("sluice_backfill_items_total", "").await, 0.0);
    assert_eq!(again.metric("sluice_backfill_complete", "").await, 1.0);
    again.sigterm();
    assert_eq!(again.wait_exit(Duration::from_secs(20)).0, Some(0));

    // pointed at a new, empty index: that one has never been filled, so it is backfilled too
    let moved = again.config.with_file_name("moved.toml");
    std::fs::write(
        &moved,
        std::fs::read_to_string(&again.config).unwrap().replace(
            "index = \"posts-on-start\"",
            "index = \"posts-on-start-v2\"",
        ),
    )
    .unwrap();
    let port = free_port();
    let text = std::fs::read_to_string(&moved).unwrap();
    let old_listen = text
        .lines()
        .find(|l| l.starts_with("listen = "))
        .unwrap()
        .to_string();
    std::fs::write(
        &moved,
        text.replace(&old_listen, &format!("listen = \"127.0.0.1:{port}\"")),
    )
    .unwrap();
    let elsewhere = Sluice::start_with_config(&moved, port, bed.dir.path());
    elsewhere.wait_ready(Duration::from_secs(30)).await;
    let until = Instant::now() + Duration::from_secs(60);
    while elsewhere.metric("sluice_backfill_complete", "").await != 1.0 {
        assert!(Instant::now() < until, "{}", elsewhere.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(elsewhere.metric("sluice_backfill_items_total", "").await >= 1_900.0);
    assert_converges(
        &bed.es,
        "posts-on-start-v2",
        &bed.ddb,
        "Posts",
        Duration::from_secs(60),
    )
    .await;
    println!(
        "on start: {items} items backfilled beside 600 stream changes; not again after a restart; again into a new index"
    );
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
            tokio::spawn(async move { concurrent_changes(&ddb, 400, 480, 400, 4).await })
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

/// The control for acceptance 3: the same bed with the scan's clock 60 s ahead and an allowance
/// of 5 s — a skew the allowance does not cover. Every scan image then carries a version above the
/// stream's next minute, so changes made after the backfill are refused as stale and the index
/// is left behind the table: the test bed sees it, and it is the allowance that prevents it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_skew_beyond_the_allowance_leaves_the_index_behind() {
    let (bed, sluice) = bed_with_existing_rows("posts-skew-beyond", 100).await;
    let config = sluice.config.with_file_name("skew.toml");
    std::fs::write(
        &config,
        std::fs::read_to_string(&sluice.config).unwrap()
            + "\n[backfill]\nclock_skew_allowance = \"5s\"\n",
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["backfill", "--config"])
        .arg(&config)
        .envs(aws_env())
        .env("SLUICE_TEST_BACKFILL_CLOCK_OFFSET_MS", "60000")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (code, out) = tokio::task::spawn_blocking(move || wait(child, Duration::from_secs(120)))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{out}");
    bed.assert_converges(Duration::from_secs(30)).await;
    // after the backfill: 5 updates and 5 deletes through the stream
    let stale_before = sluice
        .metric("sluice_documents_total", "result=\"stale\"")
        .await;
    let mut rng = fastrand::Rng::with_seed(5);
    for k in 0..10 {
        let change = if k < 5 { Change::Put } else { Change::Delete };
        apply(
            &bed.ddb,
            "Posts",
            &format!("post-{k}"),
            change,
            99,
            &mut rng,
        )
        .await;
    }
    let table = scan_table(&bed.ddb, "Posts").await;
    // every one of the 10 reached the index and was refused as stale (not merely late)
    let until = Instant::now() + Duration::from_secs(30);
    while sluice
        .metric("sluice_documents_total", "result=\"stale\"")
        .await
        < stale_before + 10.0
    {
        assert!(Instant::now() < until, "{}", sluice.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let index = bed.es.documents("posts-skew-beyond").await;
    let behind = diff(&table, &index);
    println!("scan clock 60 s ahead, allowance 5 s:\n{behind}");
    assert_eq!(
        behind
            .lines()
            .filter(|l| l.starts_with("differs") || l.starts_with("extra"))
            .count(),
        10,
        "{behind}"
    );
    drop(sluice);
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
    // deletes outlive the backfill: tombstones kept 24 h while it runs, also across the kill
    let gc_deletes = |state: Option<serde_json::Value>| {
        let state = state.expect("the index exists");
        state
            .as_object()
            .and_then(|m| m.values().next())
            .and_then(|s| s.pointer("/settings/index/gc_deletes"))
            .cloned()
    };
    assert_eq!(
        gc_deletes(bed.es.index_state("posts-resume").await),
        Some(serde_json::json!("86400s"))
    );
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
    assert_eq!(
        gc_deletes(bed.es.index_state("posts-resume").await),
        None,
        "the index's own setting (the default) is back"
    );
    bed.assert_converges(Duration::from_secs(60)).await;
    let scanned_twice = bed.es.fake.stats().redelivered - before;
    println!("status after the kill:\n{status}resumed:\n{out}items scanned twice: {scanned_twice}");
    // resumed from the saved keys: at most the one unsaved page of each segment again
    assert!(
        status.contains("in progress") && scanned_twice <= 3 * 20,
        "{status}: {scanned_twice} scanned twice"
    );
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

/// Uploads the export folder under `dir` to `s3://bucket/prefix/…` on moto.
async fn upload(
    moto: &Moto,
    dir: &std::path::Path,
    bucket: &str,
    prefix: &str,
) -> aws_sdk_s3::Client {
    let creds = aws_credential_types::Credentials::new("test", "test", None, None, "sluice-tests");
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(&moto.url)
        .credentials_provider(creds)
        .force_path_style(true)
        .build();
    let s3 = aws_sdk_s3::Client::from_conf(conf);
    s3.create_bucket()
        .bucket(bucket)
        .send()
        .await
        .expect("create bucket");
    let mut folders = vec![dir.join("AWSDynamoDB")];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            let key = format!("{prefix}/{}", path.strip_prefix(dir).unwrap().display());
            s3.put_object()
                .bucket(bucket)
                .key(key)
                .body(std::fs::read(&path).unwrap().into())
                .send()
                .await
                .expect("upload");
        }
    }
    s3
}

fn export_config(
    dir: &std::path::Path,
    es: &Es,
    index: &str,
    db: &str,
    extra: &str,
) -> std::path::PathBuf {
    let closed = free_port();
    let config = dir.join(format!("{index}.toml"));
    std::fs::write(
        &config,
        format!(
            "[source]\ntype = \"dynamodb_streams\"\ntable = \"Posts\"\nendpoint_url = \"http://127.0.0.1:{closed}\"\n[sink]\nurl = \"{}\"\nindex = \"{index}\"\ndocument_id = [\"id\"]\n[checkpoint]\npath = \"{}\"\n{extra}",
            es.url(),
            dir.join(db).display()
        ),
    )
    .unwrap();
    config
}

/// `sluice backfill --from-export FROM`: its stdout, after checking it succeeded.
fn load_export(config: &std::path::Path, from: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["backfill", "--from-export", from, "--config"])
        .arg(config)
        .envs(aws_env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Acceptance 4: an export of 100,000 items in 8 data files, from a local directory and from
/// the same export in S3 (moto) → each index equals the export; items/s printed; loading it
/// again skips every file already done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_loads_into_the_index_from_a_directory_and_from_s3() {
    let es = Es::start().await;
    let dir = tempfile::tempdir().unwrap();
    let expected = write_export(dir.path(), 100_000, 8);
    let moto = Moto::start();
    upload(&moto, dir.path(), "exports", "tables/posts").await;
    let from_dir = dir.path().display().to_string();
    let s3_extra = format!("[backfill]\ns3_endpoint_url = \"{}\"\n", moto.url);
    for (index, from, extra) in [
        ("exported", from_dir.as_str(), ""),
        (
            "exported-s3",
            "s3://exports/tables/posts",
            s3_extra.as_str(),
        ),
    ] {
        es.delete_index(index).await;
        let config = export_config(dir.path(), &es, index, &format!("{index}.db"), extra);
        let (config2, from2) = (config.clone(), from.to_string());
        let first = tokio::task::spawn_blocking(move || load_export(&config2, &from2))
            .await
            .unwrap();
        assert!(first.contains("100000 items"), "{first}");
        assert_eq!(
            es.documents(index).await,
            expected,
            "{index} equals the export"
        );
        let from2 = from.to_string();
        let again = tokio::task::spawn_blocking(move || load_export(&config, &from2))
            .await
            .unwrap();
        assert!(
            again.contains("(8 already done before), 0 items"),
            "{again}"
        );
        println!("from {from}: {first}");
    }
}

/// A delete made after the export time (through the stream) is not undone by the export load,
/// even though the index's own `gc_deletes` (1 s here) has collected its tombstone by then:
/// `sluice backfill --keep-deletes`, run before the export is requested, keeps deletes until the
/// load is complete, and the index's own setting is put back. The control (`keep_deletes_for =
/// "0s"`) shows the window: the deleted item comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_after_the_export_time_is_not_undone_by_the_load() {
    let es = Es::start().await;
    let dir = tempfile::tempdir().unwrap();
    let exported = write_export(dir.path(), 20, 1);
    let from = dir.path().display().to_string();
    let http = reqwest::Client::new();
    for (index, keep) in [("kept-deletes", true), ("lost-deletes", false)] {
        es.delete_index(index).await;
        http.put(format!("{}/{index}", es.url()))
            .json(&serde_json::json!({"settings": {"index": {"gc_deletes": "1s"}}}))
            .send()
            .await
            .unwrap();
        let extra = if keep {
            ""
        } else {
            "[backfill]\nkeep_deletes_for = \"0s\"\n"
        };
        let config = export_config(dir.path(), &es, index, &format!("{index}.db"), extra);
        if keep {
            let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
                .args(["backfill", "--keep-deletes", "--config"])
                .arg(&config)
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && said.contains("kept from now"),
                "{said}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // the stream deletes item-3 after the export time, with its (higher) version
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        let delete = serde_json::json!({"delete": {"_index": index, "_id": "item-3", "version": now_us, "version_type": "external"}});
        http.post(format!("{}/_bulk", es.url()))
            .header("content-type", "application/x-ndjson")
            .body(format!("{delete}\n"))
            .send()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (config2, from2) = (config.clone(), from.clone());
        tokio::task::spawn_blocking(move || load_export(&config2, &from2))
            .await
            .unwrap();
        let docs = es.documents(index).await;
        if keep {
            let mut expected = exported.clone();
            expected.remove("item-3");
            assert_eq!(docs, expected, "the delete holds");
            let state = es.index_state(index).await.expect("the index exists");
            assert_eq!(
                state[index]["settings"]["index"]["gc_deletes"], "1s",
                "the index's own setting is back: {state}"
            );
        } else {
            assert!(
                docs.contains_key("item-3"),
                "without kept deletes the item comes back"
            );
        }
    }
}

/// Acceptance 5 (display): on a terminal (a pseudo-terminal here) progress is one line redrawn in
/// place with items, items/s and the parts done; otherwise it is structured log lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_a_line_on_a_terminal_and_log_lines_otherwise() {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let es = Es::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_export(dir.path(), 20_000, 4);
    let from = dir.path().display().to_string();

    let config = export_config(dir.path(), &es, "progress-tty", "tty.db", "");
    let (mut leader, mut follower) = (0, 0);
    let opened = unsafe {
        libc::openpty(
            &mut leader,
            &mut follower,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(opened, 0, "openpty");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["backfill", "--from-export", &from, "--config"])
        .arg(&config)
        .envs(aws_env())
        .stdout(Stdio::null())
        .stderr(unsafe { Stdio::from_raw_fd(follower) })
        .spawn()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success());
    let mut screen = Vec::new();
    let mut terminal = unsafe { std::fs::File::from_raw_fd(leader) };
    // the child is gone: read what it wrote until the terminal has nothing more
    unsafe { libc::fcntl(leader, libc::F_SETFL, libc::O_NONBLOCK) };
    let _ = terminal.read_to_end(&mut screen);
    let screen = String::from_utf8_lossy(&screen);
    assert!(
        screen.contains(
            "\r\x1b[Kbackfill of export 01700000000000-abcdef12: 20,000 items of ~20,000 (100%)"
        ),
        "{screen:?}"
    );
    assert!(
        screen.contains("items/s") && screen.contains("4/4 files done"),
        "{screen:?}"
    );

    let config = export_config(dir.path(), &es, "progress-log", "log.db", "");
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["backfill", "--from-export", &from, "--config"])
        .arg(&config)
        .envs(aws_env())
        .output()
        .unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains('\r'), "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("backfill progress"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("items=20000") && line.contains("done=4") && line.contains("of=4"),
        "{line}"
    );
    println!("terminal: {:?}\nlog: {line}", screen.lines().last());
}
