//! AWS Signature Version 4 for the requests sluice makes itself — `_bulk` to Amazon OpenSearch
//! Service, GetRecords to DynamoDB Streams — signed by `aws-sigv4` (the crate the AWS SDK signs
//! with) over the exact bytes that go out, with credentials from the standard chain.

use std::sync::atomic::{AtomicI64, Ordering};
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
    /// The service's clock minus ours, in ms, once it is off by more than [`SKEW_TOLERATED`]:
    /// a signature more than 5 minutes off the service's clock is refused, so a host whose
    /// clock drifted would otherwise fail every request (as the AWS SDK does, requests are
    /// signed at the service's time).
    skew_ms: AtomicI64,
}

/// Clock differences below this are left alone (the `Date` header has whole seconds).
const SKEW_TOLERATED: Duration = Duration::from_secs(60);

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
            skew_ms: AtomicI64::new(0),
        }
    }

    /// Notes the service's clock from an answer's `Date` header (an HTTP date).
    pub fn observe_service_date(&self, date: &str) {
        let Ok(theirs) = aws_smithy_types::DateTime::from_str(
            date,
            aws_smithy_types::date_time::Format::HttpDate,
        ) else {
            return;
        };
        let ours = aws_smithy_types::DateTime::from(SystemTime::now());
        let skew_ms = (theirs.secs() - ours.secs()).saturating_mul(1000)
            + i64::from(theirs.subsec_nanos() / 1_000_000)
            - i64::from(ours.subsec_nanos() / 1_000_000);
        let tolerated = SKEW_TOLERATED.as_millis() as i64;
        let skew_ms = if skew_ms.abs() > tolerated {
            skew_ms
        } else {
            0
        };
        if self.skew_ms.swap(skew_ms, Ordering::Relaxed) != skew_ms && skew_ms != 0 {
            tracing::warn!(
                service = %self.service,
                skew_seconds = skew_ms / 1000,
                "this host's clock is off the service's: requests are signed at the service's time; fix the host's clock"
            );
        }
    }

    /// Our time, moved by the clock difference the service's answers showed.
    fn signing_time(&self) -> SystemTime {
        let skew = self.skew_ms.load(Ordering::Relaxed);
        let by = Duration::from_millis(skew.unsigned_abs());
        let now = SystemTime::now();
        if skew >= 0 {
            now + by
        } else {
            now.checked_sub(by).unwrap_or(now)
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
            .time(self.signing_time())
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

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::Credentials;

    fn signer() -> Signer {
        let creds = Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
        Signer::new(
            SharedCredentialsProvider::new(creds),
            "us-east-1",
            "dynamodb",
            false,
        )
    }

    fn http_date(t: SystemTime) -> String {
        aws_smithy_types::DateTime::from(t)
            .fmt(aws_smithy_types::date_time::Format::HttpDate)
            .unwrap()
    }

    #[test]
    fn a_host_clock_off_the_service_s_signs_at_the_service_s_time() {
        let s = signer();
        let ahead = Duration::from_secs(600);
        s.observe_service_date(&http_date(SystemTime::now() + ahead));
        let signed_at = s.signing_time();
        let off = signed_at.duration_since(SystemTime::now()).unwrap();
        assert!(
            off > Duration::from_secs(598) && off < Duration::from_secs(602),
            "{off:?}"
        );
        // back in step: our own time again
        s.observe_service_date(&http_date(SystemTime::now()));
        let off = s
            .signing_time()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        assert!(off < Duration::from_secs(1), "{off:?}");
        // a service clock behind ours
        s.observe_service_date(&http_date(SystemTime::now() - ahead));
        assert!(
            SystemTime::now().duration_since(s.signing_time()).unwrap() > Duration::from_secs(598)
        );
        // not a date: nothing changes
        s.observe_service_date("yesterday");
        assert!(
            SystemTime::now().duration_since(s.signing_time()).unwrap() > Duration::from_secs(598)
        );
    }

    #[tokio::test]
    async fn a_session_token_is_signed_and_sent() {
        let creds = Credentials::new("AKIDEXAMPLE", "secret", Some("token".into()), None, "test");
        let s = Signer::new(
            SharedCredentialsProvider::new(creds),
            "us-east-1",
            "dynamodb",
            false,
        );
        let mut headers = vec![("host", "127.0.0.1:4566".to_string())];
        s.sign("POST", "http://127.0.0.1:4566/", &mut headers, b"{}")
            .await
            .unwrap();
        let names: Vec<&str> = headers.iter().map(|(k, _)| *k).collect();
        assert!(
            names.contains(&"authorization") && names.contains(&"x-amz-date"),
            "{names:?}"
        );
        assert!(headers.contains(&("x-amz-security-token", "token".to_string())));
        let auth = &headers
            .iter()
            .find(|(k, _)| *k == "authorization")
            .unwrap()
            .1;
        assert!(
            auth.contains("/us-east-1/dynamodb/aws4_request")
                && auth.contains("SignedHeaders=host;"),
            "{auth}"
        );
    }
}
