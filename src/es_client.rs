//! How requests reach the cluster: the URL, authentication (basic, API key, AWS SigV4 for Amazon
//! OpenSearch Service / OpenSearch Serverless), TLS, and gzip. The sink decides *what* to send;
//! this module only sends it.
//!
//! SigV4 is signed by `aws-sigv4` (the crate the AWS SDK signs with) over the exact bytes put on
//! the wire — after compression — and again for every attempt (a fresh date, fresh credentials
//! from the standard chain, which refreshes temporary credentials before they expire).

use std::io::Write as _;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;

use crate::config::{Compression, SinkAuth, SinkConfig};
use crate::sigv4::{error_chain, Signer};

/// One answer of the cluster.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// Why no answer came.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("{0}")]
    Connection(String),
    /// Credentials could not be obtained or the request could not be signed.
    #[error("cannot sign the request: {0}")]
    Signing(String),
}

enum Auth {
    None,
    /// A ready `Authorization` header value (basic or API key).
    Header(String),
    SigV4(Signer),
}

pub struct EsClient {
    http: reqwest::Client,
    base: String,
    auth: Auth,
    gzip: bool,
}

impl EsClient {
    /// Builds the client from `[sink]`; `source_region` is the default SigV4 region. Reads the
    /// secret files and the CA file now, so a wrong path fails at start, naming the key.
    pub async fn new(cfg: &SinkConfig, source_region: &str) -> anyhow::Result<Self> {
        let mut http = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .connect_timeout(Duration::from_secs(10))
            .no_proxy();
        if let Some(path) = &cfg.tls.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("sink.tls.ca_file `{}` cannot be read: {e}", path.display())
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                anyhow::anyhow!(
                    "sink.tls.ca_file `{}` is not PEM certificates: {e}",
                    path.display()
                )
            })?;
            if certs.is_empty() {
                anyhow::bail!("sink.tls.ca_file `{}` holds no certificate", path.display());
            }
            for cert in certs {
                http = http.add_root_certificate(cert);
            }
        }
        if cfg.tls.insecure_skip_verify {
            tracing::warn!("sink.tls.insecure_skip_verify = true: the cluster's certificate is NOT verified; anyone on the path can read and change what sluice writes");
            http = http.danger_accept_invalid_certs(true);
        }
        let auth = match cfg.auth() {
            SinkAuth::None => Auth::None,
            SinkAuth::Basic => {
                let user = cfg.username.clone().unwrap_or_default();
                let pass = cfg.password()?.unwrap_or_default();
                if pass.is_empty() {
                    anyhow::bail!("sink.password (or password_file) is empty");
                }
                let token =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
                Auth::Header(format!("Basic {token}"))
            }
            SinkAuth::ApiKey => {
                let key = cfg.api_key()?.unwrap_or_default();
                if key.is_empty() {
                    anyhow::bail!("sink.api_key (or api_key_file) is empty");
                }
                Auth::Header(format!("ApiKey {key}"))
            }
            SinkAuth::AwsSigv4 => {
                let region = cfg
                    .aws_region
                    .clone()
                    .unwrap_or_else(|| source_region.to_string());
                let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new(region.clone()))
                    .load()
                    .await;
                let credentials = sdk.credentials_provider().ok_or_else(|| {
                    anyhow::anyhow!(
                        "sink.auth = \"aws_sigv4\": no AWS credential provider could be set up"
                    )
                })?;
                // OpenSearch Serverless requires the payload hash header; it is harmless for es
                Auth::SigV4(Signer::new(credentials, &region, &cfg.aws_service, true))
            }
        };
        Ok(Self {
            http: http.build()?,
            base: cfg.url.trim_end_matches('/').to_string(),
            auth,
            gzip: cfg.compression == Compression::Gzip,
        })
    }

    /// `GET /`: is the cluster there (and do the credentials work)?
    pub async fn info(&self) -> Result<Answer, SendError> {
        self.send("GET", "/", None).await
    }

    /// `POST /_bulk` with the NDJSON lines.
    pub async fn bulk(&self, lines: &[Bytes]) -> Result<Answer, SendError> {
        let mut body = Vec::with_capacity(lines.iter().map(Bytes::len).sum());
        for l in lines {
            body.extend_from_slice(l);
        }
        self.send("POST", "/_bulk", Some(body)).await
    }

    /// Any other request (index set-up, `_mget`, searches of the tools), signed and
    /// compressed like the bulk requests.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, SendError> {
        self.send(method, path, body).await
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, SendError> {
        let url = reqwest::Url::parse(&format!("{}{path}", self.base))
            .map_err(|e| SendError::Connection(format!("sink.url: {e}")))?;
        let mut headers: Vec<(&'static str, String)> = Vec::new();
        let body: Vec<u8> = match body {
            Some(b) if self.gzip => {
                headers.push(("content-type", "application/json".into()));
                headers.push(("content-encoding", "gzip".into()));
                gzip(&b)
            }
            Some(b) => {
                headers.push(("content-type", "application/json".into()));
                b
            }
            None => Vec::new(),
        };
        headers.push(("accept", "application/json".into()));
        match &self.auth {
            Auth::None => {}
            Auth::Header(value) => headers.push(("authorization", value.clone())),
            Auth::SigV4(signer) => {
                let host = crate::sigv4::host_header(&url)
                    .ok_or_else(|| SendError::Signing("sink.url has no host".into()))?;
                headers.push(("host", host));
                signer
                    .sign(method, url.as_str(), &mut headers, &body)
                    .await
                    .map_err(SendError::Signing)?;
            }
        }
        let mut req = self
            .http
            .request(method.parse().expect("a valid method"), url);
        for (k, v) in &headers {
            let mut value = reqwest::header::HeaderValue::from_str(v)
                .map_err(|e| SendError::Signing(format!("header {k}: {e}")))?;
            if *k == "authorization" || *k == "x-amz-security-token" {
                value.set_sensitive(true);
            }
            req = req.header(*k, value);
        }
        if method != "GET" {
            req = req.body(body);
        }
        let response = req.send().await.map_err(classify)?;
        if let (Auth::SigV4(signer), Some(date)) = (
            &self.auth,
            response.headers().get("date").and_then(|v| v.to_str().ok()),
        ) {
            signer.observe_service_date(date);
        }
        let status = response.status().as_u16();
        let body = response.text().await.map_err(classify)?;
        Ok(Answer { status, body })
    }
}

fn classify(e: reqwest::Error) -> SendError {
    let text = error_chain(&e);
    if e.is_timeout() {
        SendError::Timeout(text)
    } else {
        SendError::Connection(text)
    }
}

/// `host[:port]` of a base URL, as written.
#[cfg(test)]
fn host_of(base: &str) -> String {
    let rest = base.split_once("://").map_or(base, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_string()
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(body).expect("compressing to memory");
    enc.finish().expect("compressing to memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_header_is_the_authority_of_the_url() {
        assert_eq!(
            host_of("https://search-x.us-east-1.es.amazonaws.com"),
            "search-x.us-east-1.es.amazonaws.com"
        );
        assert_eq!(host_of("http://127.0.0.1:9200"), "127.0.0.1:9200");
    }

    /// A one-shot HTTP server on loopback: the request it received, and a canned answer.
    async fn one_request() -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let n = conn.read(&mut buf).await.unwrap();
            let body = "{\"name\":\"x\"}";
            let answer = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
            conn.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).to_string()
        });
        (url, task)
    }

    fn sink(url: &str, extra: &str, dir: &std::path::Path) -> SinkConfig {
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            format!("[source]\ntype = \"dynamodb_streams\"\ntable = \"T\"\n[sink]\nurl = \"{url}\"\n{extra}\n"),
        )
        .unwrap();
        crate::config::Config::load_with_env(&path, Vec::new())
            .unwrap()
            .sink
    }

    #[tokio::test]
    async fn api_keys_and_passwords_come_from_their_files_and_go_in_the_authorization_header() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), "aWQ6c2VjcmV0\n").unwrap();
        let (url, seen) = one_request().await;
        let cfg = sink(
            &url,
            &format!(
                "auth = \"api_key\"\napi_key_file = \"{}\"",
                dir.path().join("key").display()
            ),
            dir.path(),
        );
        let client = EsClient::new(&cfg, "us-east-1").await.unwrap();
        assert_eq!(client.info().await.unwrap().status, 200);
        let request = seen.await.unwrap().to_lowercase();
        assert!(
            request.contains("authorization: apikey awq6c2vjcmv0"),
            "{request}"
        );

        std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
        let (url, seen) = one_request().await;
        let cfg = sink(
            &url,
            &format!(
                "username = \"u\"\npassword_file = \"{}\"",
                dir.path().join("pw").display()
            ),
            dir.path(),
        );
        assert_eq!(cfg.auth(), SinkAuth::Basic);
        let client = EsClient::new(&cfg, "us-east-1").await.unwrap();
        client.info().await.unwrap();
        let request = seen.await.unwrap();
        // base64("u:s3cret")
        assert!(request.contains("dTpzM2NyZXQ="), "{request}");
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = sink(
            "http://127.0.0.1:9",
            "username = \"u\"\npassword = \"hunter2\"",
            dir.path(),
        );
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("***"),
            "{shown}"
        );
    }

    #[test]
    fn gzip_round_trips() {
        let body = b"{\"index\":{}}\n{\"a\":1}\n".repeat(100);
        let packed = gzip(&body);
        assert!(packed.len() < body.len());
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&packed[..]), &mut out)
            .unwrap();
        assert_eq!(out, body);
    }
}
