//! Several `sluice run` workers share one stream's shards through leases: on one host through
//! the SQLite checkpoint file, across hosts through a DynamoDB lease table (moto). The real
//! binary, kinesalite with a multi-shard stream, the Elasticsearch test server.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use common::*;
use es_fake::Faults;
use serde_json::{json, Value};

const SHARDS: i32 = 6;
const LEASE: Duration = Duration::from_secs(3);
const RENEW: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    DynamoDb,
}

/// kinesalite with a 6-shard stream of DMS messages for one table, the Elasticsearch test
/// server, one scratch folder (and checkpoint file) for every worker; moto for the DynamoDB
/// lease table.
struct Bed {
    /// kinesalite, or the source fake (read with enhanced fan-out)
    _kinesalite: Option<KinesisEmulator>,
    fake: Option<source_fake::SourceFake>,
    url: String,
    source_extra: &'static str,
    es: Es,
    moto: Option<Moto>,
    dir: tempfile::TempDir,
    stream: String,
    backend: Backend,
    writer: Writer,
}

/// Writes DMS messages and remembers every row's latest state, as the index must end up.
#[derive(Clone)]
struct Writer {
    k: aws_sdk_kinesis::Client,
    stream: String,
    rows: BTreeMap<u64, Value>,
    rev: u64,
}

impl Bed {
    async fn new(name: &str, backend: Backend) -> Bed {
        let kinesis = KinesisEmulator::kinesalite();
        let url = kinesis.url.clone();
        Self::on(name, backend, Some(kinesis), None, url, "").await
    }

    /// On the source fake, every worker reading with enhanced fan-out.
    async fn fan_out(name: &str, backend: Backend) -> Bed {
        let fake = source_fake::SourceFake::start_with(source_fake::Options {
            consumer_activation: Duration::from_millis(300),
            ..source_fake::Options::default()
        })
        .await
        .expect("start the source fake");
        let url = fake.url();
        Self::on(
            name,
            backend,
            None,
            Some(fake),
            url,
            "consumer = \"enhanced_fan_out\"\n",
        )
        .await
    }

    async fn on(
        name: &str,
        backend: Backend,
        kinesalite: Option<KinesisEmulator>,
        fake: Option<source_fake::SourceFake>,
        url: String,
        source_extra: &'static str,
    ) -> Bed {
        let k = KinesisEmulator::client_for(&url);
        let es = Es::start().await;
        es.delete_index("customers").await;
        create_stream(&k, name, SHARDS).await;
        Bed {
            _kinesalite: kinesalite,
            fake,
            url,
            source_extra,
            es,
            moto: matches!(backend, Backend::DynamoDb).then(Moto::start),
            dir: tempfile::tempdir().unwrap(),
            stream: name.to_string(),
            backend,
            writer: Writer {
                k: k.clone(),
                stream: name.to_string(),
                rows: BTreeMap::new(),
                rev: 0,
            },
        }
    }

    /// A copy of the writer, to write concurrently; give it back with [`Bed::absorb`].
    fn writer_for(bed: &Bed) -> Writer {
        bed.writer.clone()
    }

    fn absorb(&mut self, writer: Writer) {
        self.writer = writer;
    }

    async fn write(&mut self, keys: u64, n: usize, seed: u64) {
        self.writer.write(keys, n, seed).await;
    }

    async fn assert_converges(&self) {
        let expected: BTreeMap<String, Value> = self
            .writer
            .rows
            .iter()
            .map(|(id, row)| (id.to_string(), row.clone()))
            .collect();
        assert_index_equals(&self.es, "customers", &expected, Duration::from_secs(90)).await;
    }

    fn start(&self, worker: &str) -> Sluice {
        let port = free_port();
        let lease = match (self.backend, &self.moto) {
            (Backend::DynamoDb, Some(moto)) => format!(
                "backend = \"dynamodb\"\ntable = \"sluice-leases\"\nendpoint_url = \"{}\"\n",
                moto.url
            ),
            _ => String::new(),
        };
        let routes = format!(
            "[[route]]\ntable = \"public.customers\"\nindex = \"customers\"\nid = [\"id\"]\n\n[lease]\n{lease}worker_id = \"{worker}\"\nduration = \"{}ms\"\nrenew_interval = \"{}ms\"\nbalance_interval = \"2s\"\n",
            LEASE.as_millis(),
            RENEW.as_millis()
        );
        let toml = kinesis_config_toml(
            &self.url,
            &self.es.url(),
            &self.stream,
            "dms",
            &self.dir.path().join("sluice.db"),
            port,
            &routes,
            self.source_extra,
        );
        let config = self.dir.path().join(format!("{worker}.toml"));
        std::fs::write(&config, toml).unwrap();
        Sluice::start_with_config(&config, port, self.dir.path())
    }
}

impl Writer {
    /// `n` changes (inserts, updates, deletes) over `keys` rows, one PutRecords call per 50.
    async fn write(&mut self, keys: u64, n: usize, seed: u64) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut entries = Vec::new();
        for _ in 0..n {
            let id = rng.u64(0..keys);
            self.rev += 1;
            let (op, data) = if self.rows.contains_key(&id) && rng.u8(0..10) == 0 {
                self.rows.remove(&id);
                ("delete", json!({"id": id}))
            } else {
                let row = json!({"id": id, "rev": self.rev, "name": format!("row {id} rev {}", self.rev)});
                let op = if self.rows.insert(id, row.clone()).is_some() {
                    "update"
                } else {
                    "insert"
                };
                (op, row)
            };
            let message = json!({"data": data, "metadata": {"timestamp": dms_now(), "record-type": "data",
                "operation": op, "schema-name": "public", "table-name": "customers"}});
            entries.push(
                aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                    .partition_key(format!("public.customers.{id}"))
                    .data(Blob::new(message.to_string().into_bytes()))
                    .build()
                    .unwrap(),
            );
            if entries.len() == 50 {
                self.put(std::mem::take(&mut entries)).await;
            }
        }
        if !entries.is_empty() {
            self.put(entries).await;
        }
    }

    async fn put(&self, entries: Vec<aws_sdk_kinesis::types::PutRecordsRequestEntry>) {
        let out = self
            .k
            .put_records()
            .stream_name(&self.stream)
            .set_records(Some(entries))
            .send()
            .await
            .expect("put records");
        assert_eq!(out.failed_record_count(), Some(0));
    }
}

/// DMS `timestamp`: µs, increasing in the order messages are built.
fn dms_now() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let prev = LAST.fetch_max(now, Ordering::SeqCst);
    let us = if prev >= now {
        LAST.fetch_add(1, Ordering::SeqCst) + 1
    } else {
        now
    };
    humantime::format_rfc3339_micros(std::time::UNIX_EPOCH + Duration::from_micros(us)).to_string()
}

/// Which shards each worker says it holds (`sluice_lease_held{shard}`), now.
async fn holders(workers: &[(&str, &Sluice)]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, w) in workers {
        let Some((_, text)) = w.get("/metrics").await else {
            continue;
        };
        for line in text.lines().filter(|l| l.starts_with("sluice_lease_held{")) {
            if let Some(shard) = line.split('"').nth(1) {
                if line.ends_with(" 1") {
                    out.entry(shard.to_string())
                        .or_default()
                        .insert(name.to_string());
                }
            }
        }
    }
    out
}

/// Watches the holders for `within`: the longest time any shard was held by two workers at once.
async fn longest_double_hold(workers: &[(&str, &Sluice)], within: Duration) -> Duration {
    let until = Instant::now() + within;
    let mut since: BTreeMap<String, Instant> = BTreeMap::new();
    let mut longest = Duration::ZERO;
    while Instant::now() < until {
        let now = Instant::now();
        let held = holders(workers).await;
        since.retain(|shard, _| held.get(shard).is_some_and(|w| w.len() > 1));
        for (shard, ws) in &held {
            if ws.len() > 1 {
                let at = *since.entry(shard.clone()).or_insert(now);
                longest = longest.max(now - at);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    longest
}

/// Waits until every shard is held by exactly one of `workers`; returns how long it took.
async fn until_every_shard_held(workers: &[(&str, &Sluice)], within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let held = holders(workers).await;
        if held.len() == SHARDS as usize && held.values().all(|w| w.len() == 1) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "shards not all held within {within:?}: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until each of `workers` holds exactly `each` shards (balancing has settled).
async fn until_each_holds(workers: &[(&str, &Sluice)], each: usize) {
    let started = Instant::now();
    loop {
        let split = per_worker(&holders(workers).await);
        if split.len() == workers.len() && split.values().all(|n| *n == each) {
            return;
        }
        if started.elapsed() > Duration::from_secs(40) {
            for (name, w) in workers {
                let log = w.log_text();
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|l| {
                        l.contains("lease")
                            || l.contains("drain")
                            || l.contains("ERROR")
                            || l.contains("WARN")
                    })
                    .collect();
                println!("--- {name}\n{}", lines.join("\n"));
            }
            panic!("never settled at {each} shards each: {split:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn per_worker(held: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for ws in held.values() {
        for w in ws {
            *n.entry(w.clone()).or_default() += 1;
        }
    }
    n
}

async fn metric_sum(workers: &[&Sluice], name: &str, labels: &str) -> f64 {
    let mut total = 0.0;
    for w in workers {
        total += w.metric(name, labels).await;
    }
    total
}

/// Acceptance 1: three workers on one lease table share six shards about evenly, no shard is
/// held by two at once beyond one lease duration, and the index equals the source.
async fn three_workers_share_the_shards(backend: Backend) {
    let mut bed = Bed::new(&format!("share-{backend:?}").to_lowercase(), backend).await;
    let (a, b, c) = (bed.start("w1"), bed.start("w2"), bed.start("w3"));
    let workers = [("w1", &a), ("w2", &b), ("w3", &c)];
    bed.write(300, 600, 1).await;
    let double = longest_double_hold(&workers, Duration::from_secs(12)).await;
    until_every_shard_held(&workers, Duration::from_secs(30)).await;
    let split = per_worker(&holders(&workers).await);
    bed.write(300, 600, 2).await;
    bed.assert_converges().await;
    // the operator's view: every shard, its owner and epoch, its checkpoint
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["leases", "--config"])
        .arg(bed.dir.path().join("w1.toml"))
        .envs(aws_env())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = table.lines().filter(|l| l.contains("shardId-")).collect();
    assert_eq!(lines.len(), SHARDS as usize, "{table}");
    assert!(
        lines
            .iter()
            .all(|l| ["w1", "w2", "w3"].iter().any(|w| l.contains(w)) && l.contains("after ")),
        "{table}"
    );
    println!("{table}");
    println!("{backend:?}: split {split:?}; longest double hold {double:?}");
    assert_eq!(split.len(), 3, "every worker holds shards: {split:?}");
    assert!(split.values().all(|n| (1..=3).contains(n)), "{split:?}");
    assert!(
        double < LEASE,
        "a shard was held by two workers for {double:?}"
    );
    assert_eq!(bed.es.fake.stats().divergent, 0);
}

/// Acceptance 2: kill -9 one of three → its shards are taken over within a lease duration and
/// a renewal (measured), the index converges, and what is re-delivered is bounded by what the
/// killed worker had read but not yet checkpointed.
async fn a_killed_worker_is_taken_over(backend: Backend) {
    let mut bed = Bed::new(&format!("kill-{backend:?}").to_lowercase(), backend).await;
    bed.es.fake.set_faults(Faults {
        delay_ms: 150,
        ..Faults::default()
    });
    let (a, b, mut c) = (bed.start("w1"), bed.start("w2"), bed.start("w3"));
    until_each_holds(&[("w1", &a), ("w2", &b), ("w3", &c)], 2).await;
    // killed while its requests are in flight: some of what it read is not acknowledged
    let writer = {
        let mut more = Bed::writer_for(&bed);
        tokio::spawn(async move {
            more.write(300, 900, 3).await;
            more
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let lag = c.metric("sluice_checkpoint_lag_records", "").await;
    let before = bed.es.fake.stats().redelivered;
    c.kill9();
    let killed = Instant::now();
    until_every_shard_held(&[("w1", &a), ("w2", &b)], Duration::from_secs(30)).await;
    let takeover = killed.elapsed();
    bed.absorb(writer.await.unwrap());
    bed.write(300, 300, 4).await;
    bed.assert_converges().await;
    let redelivered = bed.es.fake.stats().redelivered - before;
    println!(
        "{backend:?}: takeover after kill -9 in {takeover:?} (lease {LEASE:?} + renew {RENEW:?}); re-delivered {redelivered}, unacknowledged at the kill ≈ {lag}"
    );
    assert!(
        takeover <= LEASE + RENEW + Duration::from_millis(1500),
        "takeover took {takeover:?}"
    );
    assert!(
        redelivered as f64 <= lag + 100.0,
        "re-delivered {redelivered} > unacknowledged {lag} (+ what was read in the last moment)"
    );
    assert_eq!(bed.es.fake.stats().divergent, 0);
}

/// Acceptance 4, fencing: a worker paused (SIGSTOP) past its lease expiry with a bulk request in
/// flight loses its shards to another; when it resumes, its checkpoint commit is refused, it
/// stops those shards, and no document goes backwards (the test server never received one
/// version with two different contents).
async fn a_paused_worker_is_fenced(backend: Backend) {
    let mut bed = Bed::new(&format!("fence-{backend:?}").to_lowercase(), backend).await;
    let (a, b) = (bed.start("w1"), bed.start("w2"));
    until_each_holds(&[("w1", &a), ("w2", &b)], 3).await;
    // requests of w1 hang while it is paused
    bed.es.fake.set_faults(Faults {
        delay_ms: 1500,
        ..Faults::default()
    });
    bed.write(300, 400, 5).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    unsafe { libc::kill(a.pid(), libc::SIGSTOP) };
    bed.es.fake.set_faults(Faults::default());
    // w2 takes w1's shards after a lease duration and makes progress with them
    let took = until_every_shard_held(&[("w2", &b)], Duration::from_secs(30)).await;
    bed.write(300, 400, 6).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    unsafe { libc::kill(a.pid(), libc::SIGCONT) };
    bed.write(300, 200, 7).await;
    bed.assert_converges().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let losses = a.metric("sluice_lease_losses_total", "").await;
    let log = a.log_text();
    println!(
        "{backend:?}: w2 held everything {took:?} after the pause; w1 lost {losses} leases on resuming"
    );
    assert!(
        losses >= 1.0,
        "the paused worker noticed it lost its leases"
    );
    let stats = bed.es.fake.stats();
    assert_eq!(
        stats.applied_backwards, 0,
        "no document was ever written below a version it already had; log of w1:\n{log}"
    );
    assert_eq!(
        stats.divergent, 0,
        "one version never meant two document states"
    );
    // and the paused worker's late writes changed nothing: the index still equals the source
    bed.assert_converges().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_three_workers_share_the_shards() {
    three_workers_share_the_shards(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_killed_worker_is_taken_over() {
    a_killed_worker_is_taken_over(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_paused_worker_is_fenced() {
    a_paused_worker_is_fenced(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_three_workers_share_the_shards() {
    three_workers_share_the_shards(Backend::DynamoDb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_a_killed_worker_is_taken_over() {
    a_killed_worker_is_taken_over(Backend::DynamoDb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_a_paused_worker_is_fenced() {
    a_paused_worker_is_fenced(Backend::DynamoDb).await;
}

/// Acceptance 3: SIGTERM one worker → its leases are released at once (the others hold them
/// well before a lease duration), and nothing it had acknowledged is re-delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_releases_its_leases_at_once() {
    let mut bed = Bed::new("term", Backend::Sqlite).await;
    let (a, b, mut c) = (bed.start("w1"), bed.start("w2"), bed.start("w3"));
    until_every_shard_held(
        &[("w1", &a), ("w2", &b), ("w3", &c)],
        Duration::from_secs(30),
    )
    .await;
    bed.write(300, 600, 8).await;
    bed.assert_converges().await;
    let before = bed.es.fake.stats().redelivered;
    c.sigterm();
    let stopped = Instant::now();
    let (code, _) = c.wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(0), "log:\n{}", c.log_text());
    until_every_shard_held(&[("w1", &a), ("w2", &b)], Duration::from_secs(30)).await;
    let took = stopped.elapsed();
    bed.write(300, 300, 9).await;
    bed.assert_converges().await;
    let redelivered = bed.es.fake.stats().redelivered - before;
    println!("SIGTERM: leases taken over {took:?} after the signal; re-delivered {redelivered}");
    assert!(took < LEASE, "successors did not wait for expiry: {took:?}");
    assert_eq!(redelivered, 0, "nothing acknowledged was re-delivered");
}

/// Acceptance 6: a fourth worker started later receives a share within a few balance intervals,
/// handed over gracefully (nothing re-delivered), without leases moving back and forth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_worker_gets_a_share_by_graceful_handoff() {
    let mut bed = Bed::new("late", Backend::Sqlite).await;
    let (a, b, c) = (bed.start("w1"), bed.start("w2"), bed.start("w3"));
    until_each_holds(&[("w1", &a), ("w2", &b), ("w3", &c)], 2).await;
    bed.write(300, 600, 10).await;
    bed.assert_converges().await;
    let before = bed.es.fake.stats().redelivered;
    let handoffs_before = metric_sum(&[&a, &b, &c], "sluice_lease_handoffs_total", "").await;
    let d = bed.start("w4");
    let all = [("w1", &a), ("w2", &b), ("w3", &c), ("w4", &d)];
    let started = Instant::now();
    let writer = bed.write(300, 600, 11);
    writer.await;
    loop {
        if per_worker(&holders(&all).await)
            .get("w4")
            .copied()
            .unwrap_or(0)
            >= 1
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "w4 never got a lease"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = started.elapsed();
    // let balancing settle, then count every move
    tokio::time::sleep(Duration::from_secs(8)).await;
    let split = per_worker(&holders(&all).await);
    let handoffs =
        metric_sum(&[&a, &b, &c, &d], "sluice_lease_handoffs_total", "").await - handoffs_before;
    if split.len() < 4 {
        for (name, w) in &all {
            let log = w.log_text();
            let lines: Vec<&str> = log.lines().filter(|l| l.contains("lease")).collect();
            println!("--- {name}\n{}", lines.join("\n"));
        }
    }
    bed.assert_converges().await;
    let redelivered = bed.es.fake.stats().redelivered - before;
    println!("late worker: first lease after {got:?}; split {split:?}; {handoffs} handoffs; re-delivered {redelivered}");
    assert!(
        handoffs <= 3.0,
        "leases flapped: {handoffs} handoffs for one new worker"
    );
    assert_eq!(redelivered, 0, "handed-over shards re-delivered nothing");
    assert!(
        split.values().max().unwrap() - split.values().min().unwrap() <= 1,
        "{split:?}"
    );
}

/// Acceptance 7, a rolling deploy: worker A runs, worker B starts with the same configuration,
/// A gets SIGTERM 10 s later → B holds every shard, nothing A acknowledged is re-delivered, and
/// the index converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_deploy_hands_every_shard_over() {
    let mut bed = Bed::new("deploy", Backend::Sqlite).await;
    let mut a = bed.start("task-a");
    until_every_shard_held(&[("a", &a)], Duration::from_secs(30)).await;
    bed.write(300, 600, 12).await;
    bed.assert_converges().await;
    let before = bed.es.fake.stats().redelivered;
    let b = bed.start("task-b");
    bed.write(300, 400, 13).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    a.sigterm();
    let (code, _) = a.wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(0), "log:\n{}", a.log_text());
    until_every_shard_held(&[("b", &b)], Duration::from_secs(10)).await;
    bed.write(300, 300, 14).await;
    bed.assert_converges().await;
    let redelivered = bed.es.fake.stats().redelivered - before;
    println!("rolling deploy: B holds every shard; re-delivered {redelivered}");
    assert_eq!(redelivered, 0);
}

/// Enhanced fan-out under leases (two ECS tasks during a deploy, and more): three workers on one
/// checkpoint file share the shards, each subscribing only to the shards it holds; one is killed
/// with -9 and its shards' subscriptions are taken over (ResourceInUseException until 5 s after
/// the dead worker's, retried) → the index equals the table, and nothing was polled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_fan_out_workers_share_the_shards_and_take_over_a_killed_one() {
    let mut bed = Bed::fan_out("share-fan-out", Backend::Sqlite).await;
    let (a, b, mut c) = (bed.start("w1"), bed.start("w2"), bed.start("w3"));
    let workers = [("w1", &a), ("w2", &b), ("w3", &c)];
    bed.write(300, 600, 1).await;
    until_every_shard_held(&workers, Duration::from_secs(30)).await;
    bed.assert_converges().await;
    let held = per_worker(&holders(&workers).await);
    for (name, worker) in workers {
        let subscriptions = worker.metric("sluice_fan_out_subscriptions", "").await;
        let holds = held.get(name).copied().unwrap_or(0) as f64;
        assert!(
            subscriptions <= holds,
            "{name} subscribes to {subscriptions} shards and holds {holds}"
        );
    }
    c.kill9();
    let survivors = [("w1", &a), ("w2", &b)];
    bed.write(300, 600, 2).await;
    until_every_shard_held(&survivors, Duration::from_secs(30)).await;
    bed.assert_converges().await;
    let fake = bed.fake.as_ref().unwrap();
    assert_eq!(fake.calls("GetRecords"), 0, "read by subscriptions only");
    assert_eq!(
        fake.consumer_registrations(),
        1,
        "one consumer, shared by the workers"
    );
    assert_eq!(bed.es.fake.stats().divergent, 0);
}
