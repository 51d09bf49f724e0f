//! What the whole-daemon benchmarks share: the real `sluice` binary started on a configuration,
//! its CPU seconds and peak RSS read from `/proc` (so the fakes' cost, in this process, is not
//! counted), and min/median/max over runs.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The source fake, the Elasticsearch test server in fast mode, and a scratch folder.
pub struct Bed {
    pub fake: source_fake::SourceFake,
    pub es: es_fake::FakeEs,
    pub dir: tempfile::TempDir,
}

impl Bed {
    /// A table's new stream gets `stream_shards` shards.
    pub async fn start(stream_shards: usize) -> Bed {
        let fake = source_fake::SourceFake::start_with(source_fake::Options {
            stream_shards,
            ..Default::default()
        })
        .await
        .unwrap();
        Bed {
            fake,
            es: es_fake::FakeEs::start_fast().await.unwrap(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// `sluice run` on this bed: `source` lines in `[source]` (beside the region and the fake's
    /// endpoint), default settings elsewhere but the `extra` sections, warnings only.
    pub fn daemon(&self, source: &str, extra: &str) -> Daemon {
        let config = format!(
            "[source]\n{source}\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n\n[sink]\nurl = \"{}\"\nindex = \"posts\"\n\n[checkpoint]\npath = \"{}\"\n\n[http]\nlisten = \"127.0.0.1:{{port}}\"\n\n[log]\nlevel = \"warn\"\n\n{extra}",
            self.fake.url(),
            self.es.url(),
            self.dir.path().join("sluice.db").display()
        );
        Daemon::start(self.dir.path(), &config)
    }
}

pub struct Daemon {
    pub child: Child,
    pub http_port: u16,
}

impl Daemon {
    /// `sluice run` on `config` (with `{port}` replaced by a free port), its log in `dir`.
    pub fn start(dir: &Path, config: &str) -> Daemon {
        let http_port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let path = dir.join(format!("bench-{http_port}.toml"));
        std::fs::write(&path, config.replace("{port}", &http_port.to_string())).unwrap();
        // SLUICE_BENCH_BIN: another build of sluice, for paired runs of two versions
        let binary = std::env::var_os("SLUICE_BENCH_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_sluice").into());
        let child = Command::new(binary)
            .args(["run", "--config"])
            .arg(&path)
            .envs([
                ("AWS_ACCESS_KEY_ID", "test"),
                ("AWS_SECRET_ACCESS_KEY", "test"),
                ("AWS_REGION", "us-east-1"),
                ("AWS_EC2_METADATA_DISABLED", "true"),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("bench-{http_port}.log"))).unwrap())
            .spawn()
            .expect("starting sluice");
        Daemon { child, http_port }
    }

    pub async fn wait_ready(&self, within: Duration) {
        let url = format!("http://127.0.0.1:{}/readyz", self.http_port);
        let until = std::time::Instant::now() + within;
        loop {
            if let Ok(r) = reqwest::get(&url).await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < until,
                "sluice not ready in {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// With SLUICE_BENCH_PROFILE=FILE: `perf record -g` of the sluice process into FILE until
    /// the returned guard is dropped (the profiles in bench/README.md were taken this way).
    /// SLUICE_BENCH_PROFILE_CALL_GRAPH=dwarf unwinds by DWARF instead of frame pointers (which
    /// the release build does not keep): callers of the allocator are then named.
    pub fn profile(&self) -> Option<Profile> {
        let out = std::env::var("SLUICE_BENCH_PROFILE").ok()?;
        let call_graph =
            std::env::var("SLUICE_BENCH_PROFILE_CALL_GRAPH").unwrap_or_else(|_| "fp".into());
        let child = Command::new("perf")
            .args([
                "record",
                "-F",
                "1999",
                "--call-graph",
                &call_graph,
                "-o",
                &out,
                "-p",
            ])
            .arg(self.child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        std::thread::sleep(Duration::from_millis(300));
        Some(Profile(child))
    }

    /// User + system CPU seconds of the sluice process so far.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // fields after the command name, which is in parentheses and may hold spaces
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    }

    fn status_kib(&self, field: &str) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0)
    }

    /// Peak resident memory, MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.status_kib("VmHWM:") / 1024.0
    }

    pub fn rss_mib(&self) -> f64 {
        self.status_kib("VmRSS:") / 1024.0
    }
}

pub struct Profile(Child);

impl Drop for Profile {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A setting from the environment, or its default.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `min / median / max` of the figures.
pub fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A ~1 KB blog post made of blocks, in DynamoDB JSON: paragraphs with text, images with
/// src/alt/width/height.
pub fn blog_post(id: &str, rev: u64) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::json;
    let mut blocks = Vec::new();
    for b in 0..6 {
        blocks.push(if b % 3 == 2 {
            json!({"M": {"type": {"S": "image"}, "src": {"S": format!("https://img.example/{id}/{b}.png")},
                         "alt": {"S": format!("figure {b}")}, "width": {"N": "1200"}, "height": {"N": "800"}}})
        } else {
            json!({"M": {"type": {"S": "paragraph"},
                         "text": {"S": format!("Paragraph {b} of {id}, revision {rev}: change data capture keeps the index equal to the table.")}}})
        });
    }
    json!({
        "id": {"S": id},
        "title": {"S": format!("Post {id}, revision {rev}")},
        "rev": {"N": rev.to_string()},
        "views": {"N": (rev * 7919 % 1_000_000).to_string()},
        "published": {"BOOL": true},
        "tags": {"SS": ["cdc", "search", "dynamodb"]},
        "author": {"M": {"name": {"S": "Ada"}, "id": {"N": "42"}}},
        "blocks": {"L": blocks},
    })
    .as_object()
    .unwrap()
    .clone()
}
