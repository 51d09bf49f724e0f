//! AWS Signature Version 4 for the requests sluice makes itself — `_bulk` to Amazon OpenSearch
//! Service, GetRecords to DynamoDB Streams — signed by `aws-sigv4` (the crate the AWS SDK signs
//! with) over the exact bytes that go out, with credentials from the standard chain.

use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
};
use aws_sigv4::sign::v4;

/// Temporary credentials are renewed this long before they expire (as the AWS SDK does).
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(10);

pub struct Signer {
    credentials: SharedCredentialsProvider,
    /// The chain itself does not cache: credentials are kept until shortly before they
    /// expire, so the ECS endpoint (or STS) is not asked at every request.
    cached: tokio::sync::Mutex<Option<Credentials>>,
    region: String,
    service: String,
    /// Send `x-amz-content-sha256` (OpenSearch Serverless requires it).
    payload_hash_header: bool,
}

impl Signer {
    pub fn new(
        credentials: SharedCredentialsProvider,
        region: &str,
        service: &str,
        payload_hash_header: bool,
    ) -> Self {
        Self {
            credentials,
            cached: tokio::sync::Mutex::default(),
            region: region.into(),
            service: service.into(),
            payload_hash_header,
        }
    }

    /// Signs a request whose `headers` are every header that goes out, `host` included
    /// (exactly as sent: lower-case, no default port); appends the signature's headers.
    pub async fn sign(
        &self,
        method: &str,
        url: &str,
        headers: &mut Vec<(&'static str, String)>,
        body: &[u8],
    ) -> Result<(), String> {
        let identity = self.current_credentials().await?.into();
        let mut settings = SigningSettings::default();
        if self.payload_hash_header {
            settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        }
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(&self.service)
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| e.to_string())?
            .into();
        let request = SignableRequest::new(
            method,
            url,
            headers.iter().map(|(k, v)| (*k, v.as_str())),
            SignableBody::Bytes(body),
        )
        .map_err(|e| e.to_string())?;
        let (instructions, _) = sign(request, &params)
            .map_err(|e| e.to_string())?
            .into_parts();
        for (k, v) in instructions.headers() {
            headers.push((static_name(k), v.to_string()));
        }
        Ok(())
    }

    /// The cached credentials, or fresh ones when none are cached or they expire soon.
    async fn current_credentials(&self) -> Result<Credentials, String> {
        let mut slot = self.cached.lock().await;
        let fresh_enough = |c: &Credentials| {
            c.expiry().is_none_or(|at| {
                at.duration_since(SystemTime::now())
                    .is_ok_and(|left| left > REFRESH_BEFORE_EXPIRY)
            })
        };
        if let Some(c) = slot.as_ref().filter(|c| fresh_enough(c)) {
            return Ok(c.clone());
        }
        let creds = self
            .credentials
            .provide_credentials()
            .await
            .map_err(|e| format!("no AWS credentials: {}", error_chain(&e)))?;
        *slot = Some(creds.clone());
        Ok(creds)
    }
}

/// `host[:port]` of a URL, as the request carries it.
pub fn host_header(url: &reqwest::Url) -> Option<String> {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => Some(format!("{h}:{p}")),
        (Some(h), None) => Some(h.to_string()),
        (None, _) => None,
    }
}

/// The signer names the headers it adds; requests want `'static` names for them.
fn static_name(name: &str) -> &'static str {
    match name {
        "authorization" => "authorization",
        "x-amz-date" => "x-amz-date",
        "x-amz-security-token" => "x-amz-security-token",
        "x-amz-content-sha256" => "x-amz-content-sha256",
        other => Box::leak(other.to_string().into_boxed_str()),
    }
}

/// An error and its causes, in plain words ("error sending request: … : invalid peer certificate").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}
