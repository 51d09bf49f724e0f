//! The dashboard and the alerts are checked with the tools their ecosystem uses: `promtool check
//! rules` and `promtool test rules` for the alerts, and a real Prometheus scraping a real sluice
//! for the dashboard — every query of `dashboards/sluice.json` must parse and return at least one
//! series, so a metric renamed in the code breaks this test. `sluice healthcheck` answers for a
//! ready and a not-ready sluice.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use common::*;
use serde_json::{json, Value};

const DASHBOARDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards");

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(DASHBOARDS)
        .output()
        .expect("promtool is installed by the test command (scripts/test.sh: Debian's prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_alert_rules_are_valid_and_each_alert_fires_when_it_should() {
    let (ok, text) = promtool(&["check", "rules", "alerts.yaml"]);
    assert!(ok, "{text}");
    let (ok, text) = promtool(&["test", "rules", "alerts.test.yaml"]);
    assert!(ok, "{text}");
}

/// Every PromQL expression of the dashboard (panel targets and template variables), with the
/// template variables Grafana would substitute.
fn dashboard_queries() -> Vec<String> {
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(DASHBOARDS).join("sluice.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    for var in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["query"]["query"].as_str() {
            // label_values(metric, label) is Grafana's; Prometheus answers the metric itself
            let metric = q
                .trim_start_matches("label_values(")
                .split(',')
                .next()
                .unwrap()
                .to_string();
            exprs.push(metric);
        }
    }
    exprs
        .into_iter()
        .map(|e| {
            e.replace("$__rate_interval", "30s")
                .replace("$instance", ".*")
                .replace("$shard", ".*")
        })
        .collect()
}

/// Prometheus on loopback, scraping `target` every second; stopped (by PID) when dropped.
struct Prometheus {
    url: String,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {DASHBOARDS}/alerts.yaml\nscrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus is installed by the test command");
        Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            _proc: Proc(child),
            _dir: dir,
        }
    }

    async fn query(&self, expr: &str) -> Value {
        reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// A real Prometheus scrapes sluice (Kinesis DMS source on kinesalite, one record of each kind
/// of fate); every dashboard query parses and returns at least one series, and the alert rules
/// load and evaluate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_series_from_a_real_prometheus() {
    let kinesis = KinesisEmulator::kinesalite();
    let k = kinesis.client();
    let es = Es::start().await;
    create_stream(&k, "observed", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let routes = "[[route]]\ntable = \"public.customers\"\nindex = \"customers\"\nid = [\"id\"]\n";
    let toml = kinesis_config_toml(
        &kinesis.url,
        &es.url(),
        "observed",
        "dms",
        &dir.path().join("sluice.db"),
        port,
        routes,
        "",
    );
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, toml).unwrap();
    let sluice = Sluice::start_with_config(&config, port, dir.path());
    sluice.wait_ready(Duration::from_secs(30)).await;
    let prometheus = Prometheus::start(&format!("127.0.0.1:{port}"));
    for i in 0..40u64 {
        let m = json!({"data": {"id": i, "n": i}, "metadata": {"timestamp": "2026-01-01T00:00:00.000001Z",
            "record-type": "data", "operation": "insert", "schema-name": "public", "table-name": "customers"}});
        k.put_record()
            .stream_name("observed")
            .partition_key(i.to_string())
            .data(Blob::new(m.to_string().into_bytes()))
            .send()
            .await
            .unwrap();
    }
    // enough scrapes for rates over 30 s windows
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "{queries:?}");
    let until = Instant::now() + Duration::from_secs(60);
    let mut missing: Vec<String>;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        missing = Vec::new();
        for q in &queries {
            let answer = prometheus.query(q).await;
            assert_eq!(answer["status"], "success", "{q}: {answer}");
            if answer["data"]["result"]
                .as_array()
                .is_none_or(|r| r.is_empty())
            {
                missing.push(q.clone());
            }
        }
        if missing.is_empty() || Instant::now() > until {
            break;
        }
    }
    assert!(missing.is_empty(), "queries with no series: {missing:#?}");
    // the rules loaded into the same Prometheus, and are evaluated
    let rules: Value = reqwest::get(format!("{}/api/v1/rules", prometheus.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let loaded = rules["data"]["groups"][0]["rules"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(loaded, 8, "{rules}");
    println!("{} dashboard queries answered by Prometheus", queries.len());
    drop(sluice);
}

/// `sluice healthcheck`: exit 0 against a ready sluice, 1 (with the reason) against one that is
/// not ready, and 1 when nothing answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exit_codes_follow_readiness() {
    let check = |config: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["healthcheck", "--config"])
            .arg(config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let kinesis = KinesisEmulator::kinesalite();
    let k = kinesis.client();
    create_stream(&k, "health", 1).await;
    let es = Es::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let routes = "[[route]]\ntable = \"public.customers\"\nindex = \"customers\"\nid = [\"id\"]\n";
    let write = |es_url: &str, name: &str| {
        let toml = kinesis_config_toml(
            &kinesis.url,
            es_url,
            "health",
            "dms",
            &dir.path().join(format!("{name}.db")),
            port,
            routes,
            "",
        );
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, toml).unwrap();
        path
    };
    // nothing listening yet
    let ready_config = write(&es.url(), "ready");
    let (code, text) = check(&ready_config);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("not answering"), "{text}");
    let sluice = Sluice::start_with_config(&ready_config, port, dir.path());
    sluice.wait_ready(Duration::from_secs(30)).await;
    let (code, text) = check(&ready_config);
    assert_eq!(code, Some(0), "{text}");
    drop(sluice);
    // a sluice whose Elasticsearch is not there: running, not ready, and it says why
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let unready_config = write(&nowhere, "unready");
    let _sluice = Sluice::start_with_config(&unready_config, port, dir.path());
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, text) = check(&unready_config);
        if code == Some(1) && text.contains("HTTP 503") {
            assert!(text.contains("sink not reachable"), "{text}");
            break;
        }
        assert!(
            Instant::now() < until,
            "never answered not-ready: {code:?} {text}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
