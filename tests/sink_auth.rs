//! Amazon OpenSearch Service with IAM access: every request signed with SigV4, checked by the test
//! server the way the service checks it (recomputed over the received bytes); temporary
//! credentials from the ECS container endpoint, rotating while sluice runs; gzip bodies.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use axum::routing::get;
use common::*;
use es_fake::sigv4::SigV4Keys;
use serde_json::{json, Value};

/// kinesalite with a one-shard DMS stream, and sluice writing to the test server.
struct AuthBed {
    kinesis: KinesisEmulator,
    k: aws_sdk_kinesis::Client,
    es: Es,
    dir: tempfile::TempDir,
}

impl AuthBed {
    async fn new(stream: &str) -> AuthBed {
        let kinesis = KinesisEmulator::kinesalite();
        let k = kinesis.client();
        create_stream(&k, stream, 1).await;
        let es = Es::start().await;
        es.delete_index("customers").await;
        AuthBed {
            kinesis,
            k,
            es,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn start(&self, stream: &str, sink: &str, env: &[(&str, String)]) -> Sluice {
        let port = free_port();
        let routes = format!(
            "[[route]]\ntable = \"public.customers\"\nindex = \"customers\"\nid = [\"id\"]\n\n[health]\nsink_error_grace = \"2s\"\n"
        );
        let toml = kinesis_config_toml(
            &self.kinesis.url,
            &self.es.url(),
            stream,
            "dms",
            &self.dir.path().join(format!("{port}.db")),
            port,
            &routes,
            "",
        )
        .replace("[sink]\n", &format!("[sink]\n{sink}\n"));
        // a sink URL given here replaces the test server's plain one
        let toml = if sink.contains("url = ") {
            toml.replace(&format!("url = \"{}\"\n", self.es.url()), "")
        } else {
            toml
        };
        let config = self.dir.path().join(format!("{port}.toml"));
        std::fs::write(&config, toml).unwrap();
        let log = self.dir.path().join(format!("{port}.log"));
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.args(["run", "--config"]).arg(&config);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Sluice {
            child: Some(child),
            http_port: port,
            log,
            config,
        }
    }

    async fn write(&self, stream: &str, ids: std::ops::Range<u64>) -> BTreeMap<String, Value> {
        let mut expected = BTreeMap::new();
        for id in ids {
            let row = json!({"id": id, "name": format!("row {id}")});
            let m = json!({"data": row, "metadata": {"timestamp": "2026-01-01T00:00:00.000001Z",
                "record-type": "data", "operation": "insert", "schema-name": "public", "table-name": "customers"}});
            self.k
                .put_record()
                .stream_name(stream)
                .partition_key(id.to_string())
                .data(Blob::new(m.to_string().into_bytes()))
                .send()
                .await
                .unwrap();
            expected.insert(id.to_string(), row);
        }
        expected
    }
}

/// Static credentials, for the process and the Kinesis emulator alike.
fn static_keys(secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "AKIDSLUICETEST".into()),
        ("AWS_SECRET_ACCESS_KEY", secret.into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
}

fn domain(credentials: Vec<(String, String, Option<String>)>) -> SigV4Keys {
    SigV4Keys {
        region: "us-east-1".into(),
        service: "es".into(),
        credentials,
    }
}

/// Acceptance 1: signed with SigV4 (gzip bodies, so the signature must cover the compressed
/// bytes) against a server that checks every signature → the index converges; nothing unsigned
/// got through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigv4_signed_gzip_writes_converge() {
    let bed = AuthBed::new("signed").await;
    bed.es.fake.require_sigv4(domain(vec![(
        "AKIDSLUICETEST".into(),
        "right-secret".into(),
        None,
    )]));
    let sluice = bed.start(
        "signed",
        "auth = \"aws_sigv4\"\ncompression = \"gzip\"",
        &static_keys("right-secret"),
    );
    sluice.wait_ready(Duration::from_secs(30)).await;
    let expected = bed.write("signed", 0..50).await;
    assert_index_equals(&bed.es, "customers", &expected, Duration::from_secs(30)).await;
    let stats = bed.es.fake.stats();
    assert_eq!(stats.unsigned, 0, "every request was correctly signed");
    assert!(stats.gzipped > 0, "bodies were compressed: {stats:?}");
}

/// Acceptance 1: a wrong secret → every request answered 403 by the service, nothing written or
/// dropped, and /readyz 503 saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_gets_403s_and_readiness_says_why() {
    let bed = AuthBed::new("wrongkey").await;
    bed.es.fake.require_sigv4(domain(vec![(
        "AKIDSLUICETEST".into(),
        "right-secret".into(),
        None,
    )]));
    let sluice = bed.start(
        "wrongkey",
        "auth = \"aws_sigv4\"",
        &static_keys("wrong-secret"),
    );
    bed.write("wrongkey", 0..5).await;
    let until = Instant::now() + Duration::from_secs(30);
    let reason = loop {
        if let Some((503, body)) = sluice.get("/readyz").await {
            if body.contains("signature") {
                break body;
            }
        }
        assert!(
            Instant::now() < until,
            "readiness never named the signature; log:\n{}",
            sluice.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(bed.es.fake.stats().unsigned > 0);
    assert!(bed.es.documents("customers").await.is_empty());
    assert_eq!(
        sluice
            .metric("sluice_documents_total", "dead_lettered")
            .await,
        0.0
    );
    println!("/readyz: {reason}");
}

/// The ECS container credentials endpoint, handing out a new session every time it is asked;
/// the test server accepts only the sessions handed out so far.
async fn rotating_credentials(
    accepted: Arc<Mutex<Vec<(String, String, Option<String>)>>>,
    on_issue: impl Fn(Vec<(String, String, Option<String>)>) + Send + Sync + 'static,
) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/creds", listener.local_addr().unwrap());
    let on_issue = Arc::new(on_issue);
    let app = axum::Router::new().route(
        "/creds",
        get(move || {
            let accepted = accepted.clone();
            let on_issue = on_issue.clone();
            async move {
                let mut list = accepted.lock().unwrap();
                let n = list.len();
                let session = (
                    format!("ASIAROTATE{n}"),
                    format!("secret-{n}"),
                    Some(format!("token-{n}")),
                );
                list.push(session.clone());
                // only the two newest sessions are valid: an old one must not be used for long
                let keep: Vec<_> = list.iter().rev().take(2).cloned().collect();
                on_issue(keep);
                // short-lived: the SDK refreshes temporary credentials before they expire
                let expires = humantime::format_rfc3339_seconds(
                    std::time::SystemTime::now() + Duration::from_secs(20),
                );
                axum::Json(
                    json!({"AccessKeyId": session.0, "SecretAccessKey": session.1,
                    "Token": session.2, "Expiration": expires.to_string()}),
                )
            }
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, task)
}

/// Acceptance 1: credentials rotating mid-run (a new session token from the ECS container
/// endpoint every ~10 s, the old one soon refused) keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_temporary_credentials_keep_working() {
    let bed = Arc::new(AuthBed::new("rotating").await);
    let issued = Arc::new(Mutex::new(Vec::new()));
    let fake = bed.clone();
    let (url, _server) = rotating_credentials(issued.clone(), move |valid| {
        fake.es.fake.require_sigv4(domain(valid));
    })
    .await;
    // the emulator needs keys of its own; the process takes its credentials from the endpoint
    let env = vec![
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", url),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        // one document per bulk request: many signed requests
        ("SLUICE__BATCH__MAX_DOCUMENTS", "1".to_string()),
    ];
    let sluice = bed.start("rotating", "auth = \"aws_sigv4\"", &env);
    sluice.wait_ready(Duration::from_secs(30)).await;
    let mut expected = bed.write("rotating", 0..20).await;
    assert_index_equals(&bed.es, "customers", &expected, Duration::from_secs(30)).await;
    // through at least two rotations
    tokio::time::sleep(Duration::from_secs(25)).await;
    expected.extend(bed.write("rotating", 20..40).await);
    assert_index_equals(&bed.es, "customers", &expected, Duration::from_secs(30)).await;
    let sessions = issued.lock().unwrap().len();
    let requests = bed.es.fake.stats().bulk_requests;
    println!(
        "rotating credentials: {sessions} sessions issued for {requests} bulk requests; {} requests refused",
        bed.es.fake.stats().unsigned
    );
    assert!(sessions >= 3, "credentials were refreshed: {sessions}");
    // kept between requests and renewed before expiry, not fetched for every request (the
    // source's Kinesis client asks the endpoint too, with its own cache)
    assert!(
        sessions * 2 < requests as usize,
        "{sessions} sessions for {requests} requests"
    );
}

/// A CA made for this test, and a certificate for 127.0.0.1 signed by it: (CA PEM, cert DER, key DER).
fn test_ca() -> (String, Vec<u8>, Vec<u8>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "sluice test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = server.signed_by(&key, &ca_cert, &ca_key).unwrap();
    (ca_cert.pem(), cert.der().to_vec(), key.serialize_der())
}

/// A TLS front on loopback for the test server (terminates TLS, passes the bytes on).
async fn tls_front(backend: String, cert: Vec<u8>, key: Vec<u8>) -> String {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(cert)],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, backend) = (acceptor.clone(), backend.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(&backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    url
}

/// Acceptance 2: TLS with a CA made in the test. Without `tls.ca_file` the certificate is
/// refused, with a clear error in the log and /readyz; with it, the writes converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_verified_and_a_private_ca_can_be_trusted() {
    let bed = AuthBed::new("tls").await;
    let (ca_pem, cert, key) = test_ca();
    let backend = bed.es.url().trim_start_matches("http://").to_string();
    let https = tls_front(backend, cert, key).await;
    let ca_file = bed.dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let keys = static_keys("unused");

    // untrusted: refused, said plainly
    let untrusted = bed.start("tls", &format!("url = \"{https}\""), &keys);
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let log = untrusted.log_text();
        if log.contains("certificate") {
            assert!(
                log.to_lowercase().contains("unknown issuer")
                    || log.contains("UnknownIssuer")
                    || log.contains("invalid peer certificate"),
                "the error names the certificate problem:\n{log}"
            );
            let line = log
                .lines()
                .find(|l| l.contains("certificate"))
                .unwrap_or_default();
            println!("untrusted: {line}");
            break;
        }
        assert!(
            Instant::now() < until,
            "no certificate error logged:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(untrusted.get("/readyz").await.map(|r| r.0), Some(503));
    drop(untrusted);

    // the private CA trusted: converges over TLS
    let trusted = bed.start(
        "tls",
        &format!(
            "url = \"{https}\"\ntls = {{ ca_file = \"{}\" }}",
            ca_file.display()
        ),
        &keys,
    );
    trusted.wait_ready(Duration::from_secs(30)).await;
    let expected = bed.write("tls", 0..20).await;
    assert_index_equals(&bed.es, "customers", &expected, Duration::from_secs(30)).await;
}
