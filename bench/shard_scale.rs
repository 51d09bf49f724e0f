//! Shard scale: 10, 100 and 1,000 DynamoDB Streams shards in one process, all idle but three
//! hot ones (one key each, 20 changes/s, which wake after 5 s of silence). Prints sluice's CPU (% of one core) and RSS, and
//! GetRecords calls per second per idle shard (poll cost is money on DynamoDB Streams), at the
//! default `poll_interval` (250 ms, the idle back-off's ceiling) and at 2 s. Three runs each,
//! min/median/max. Run: `cargo bench --bench shard_scale`
//! (SLUICE_BENCH_WINDOW_SECS: the measured window, default 10).

#[path = "harness.rs"]
mod harness;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use harness::*;
use serde_json::json;
use source_fake::StreamViewType;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("shard_scale: a benchmark; run it with `cargo bench --bench shard_scale`");
        return;
    }
    let window: u64 = env_or("SLUICE_BENCH_WINDOW_SECS", 10);
    let rt = runtime();
    // SLUICE_BENCH_ONLY="1000 2s": one shard count and poll interval (for profiles)
    let only = std::env::var("SLUICE_BENCH_ONLY").ok();
    let (polls, counts): (Vec<String>, Vec<usize>) =
        match only.as_deref().and_then(|o| o.split_once(' ')) {
            Some((n, poll)) => (
                vec![poll.to_owned()],
                vec![n.parse().expect("a shard count")],
            ),
            None => (vec!["250ms".into(), "2s".into()], vec![10, 100, 1000]),
        };
    for poll in &polls {
        for &shards in &counts {
            let runs: Vec<Figures> = (0..3)
                .map(|_| rt.block_on(run(shards, poll, Duration::from_secs(window))))
                .collect();
            let (c0, c1, c2) = spread(runs.iter().map(|r| r.cpu_percent).collect());
            let (r0, r1, r2) = spread(runs.iter().map(|r| r.rss_mib).collect());
            let (g0, g1, g2) = spread(runs.iter().map(|r| r.idle_calls_per_sec).collect());
            let (h0, h1, h2) = spread(runs.iter().map(|r| r.wake_ms).collect());
            println!(
                "{shards} shards, poll_interval {poll}: CPU {c0:.1} / {c1:.1} / {c2:.1} % of a core; RSS {r0:.0} / {r1:.0} / {r2:.0} MiB; {g0:.2} / {g1:.2} / {g2:.2} GetRecords/s per idle shard; an idle shard's first change → acknowledged (slowest of 3) {h0:.0} / {h1:.0} / {h2:.0} ms (min/median/max of 3 runs)"
            );
        }
    }
}

struct Figures {
    cpu_percent: f64,
    rss_mib: f64,
    idle_calls_per_sec: f64,
    wake_ms: f64,
}

async fn run(shards: usize, poll: &str, window: Duration) -> Figures {
    let bed = Bed::start(shards).await;
    let (fake, es) = (&bed.fake, &bed.es);
    fake.create_table("Posts", "id", StreamViewType::NewAndOldImages)
        .unwrap();
    let daemon = bed.daemon(
        &format!("type = \"dynamodb_streams\"\ntable = \"Posts\"\npoll_interval = \"{poll}\""),
        "",
    );
    daemon.wait_ready(Duration::from_secs(120)).await;
    let arn = fake.latest_stream_arn("Posts").unwrap();
    // settle: every reader started and backed off to its ceiling (the idle budget's, 200 polls
    // a second by default: shards ÷ 200 s), which the doubling back-off takes about twice the
    // ceiling to reach; measured from earlier, the window counted the back-off's first polls
    let poll_secs = humantime::parse_duration(poll)
        .expect("a duration")
        .as_secs_f64();
    let ceiling = poll_secs.max(shards as f64 / 200.0);
    tokio::time::sleep(Duration::from_secs_f64(5.0 + 2.0 * ceiling)).await;
    let calls_before: HashMap<String, u64> = fake.get_records_calls(&arn).into_iter().collect();
    let profile = daemon.profile();
    let cpu_before = daemon.cpu_seconds();
    let started = Instant::now();
    let mut first_write = HashMap::new();
    let mut n = 0u64;
    while started.elapsed() < window {
        // three hot keys, each in its shard, rewritten with a new revision
        for hot in 0..3 {
            let id = format!("hot-{hot}");
            first_write.entry(id.clone()).or_insert_with(Instant::now);
            let item = json!({"id": {"S": id}, "rev": {"N": n.to_string()}});
            fake.put_items("Posts", [item.as_object().unwrap().clone()])
                .unwrap();
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = daemon.cpu_seconds() - cpu_before;
    drop(profile);
    let rss = daemon.rss_mib();
    let hot: Vec<String> = fake
        .stream_shard_lengths("Posts")
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(id, _)| id)
        .collect();
    let idle: Vec<f64> = fake
        .get_records_calls(&arn)
        .iter()
        .filter(|(id, _)| !hot.contains(id))
        .map(|(id, c)| (c - calls_before.get(id).copied().unwrap_or(0)) as f64 / elapsed)
        .collect();
    let idle_calls_per_sec = idle.iter().sum::<f64>() / idle.len().max(1) as f64;
    // an idle shard waking up: its first change, written after 5 s of silence → acknowledged
    let ids: Vec<String> = first_write.keys().cloned().collect();
    let seen = es.fast_first_seen(&ids);
    let wake_ms = ids
        .iter()
        .zip(seen)
        .map(|(id, t)| {
            t.map_or(f64::NAN, |t| {
                t.duration_since(first_write[id]).as_secs_f64() * 1000.0
            })
        })
        .fold(0.0, f64::max);
    Figures {
        cpu_percent: cpu / elapsed * 100.0,
        rss_mib: rss,
        idle_calls_per_sec,
        wake_ms,
    }
}
