//! AWS Signature Version 4 for the requests sluice makes itself — `_bulk` to Amazon OpenSearch
//! Service, GetRecords to DynamoDB Streams — signed by `aws-sigv4` (the crate the AWS SDK signs
//! with) over the exact bytes that go out, with credentials from the standard chain.
//!
//! Requests to a service's root (`POST /`, no query: the JSON protocol GetRecords speaks) take a
//! shorter road: the day's signing key is derived once instead of with four HMACs per request,
//! and the canonical request is written directly. At 1,000 idle shards GetRecords is signed
//! ~200 times a second, and aws-sigv4's general path was ~15 % of the idle daemon's CPU. The
//! tests hold the short road to aws-sigv4's answer byte for byte.

use std::borrow::Cow;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
};
use aws_sigv4::sign::v4;
use aws_smithy_types::date_time::{DateTime, Format};
use sha2::{Digest, Sha256};

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
    /// The signing key of the day, for the secret it was derived from.
    day_key: std::sync::Mutex<Option<DayKey>>,
}

/// SigV4's signing key depends only on the secret, the UTC date, the region and the service.
struct DayKey {
    date: String,
    secret: String,
    key: Vec<u8>,
}

/// Headers aws-sigv4 leaves out of the signature (proxies may change them), as its settings
/// list them; a request carrying one goes the general way.
static UNSIGNED_HEADERS: LazyLock<Vec<Cow<'static, str>>> = LazyLock::new(|| {
    SigningSettings::default()
        .excluded_headers
        .unwrap_or_default()
});

/// Headers the signature adds.
const SIGNATURE_HEADERS: [&str; 3] = ["x-amz-date", "x-amz-security-token", "x-amz-content-sha256"];

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
            day_key: std::sync::Mutex::default(),
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
        let credentials = self.current_credentials().await?;
        self.sign_at(
            &credentials,
            self.signing_time(),
            method,
            url,
            headers,
            body,
        )
    }

    /// [`Signer::sign`] with the credentials and time given.
    fn sign_at(
        &self,
        credentials: &Credentials,
        time: SystemTime,
        method: &str,
        url: &str,
        headers: &mut Vec<(&'static str, String)>,
        body: &[u8],
    ) -> Result<(), String> {
        match amz_date(time).filter(|_| is_root_request(url, headers)) {
            Some(amz_date) => {
                self.sign_root(credentials, time, &amz_date, method, headers, body);
                Ok(())
            }
            None => self.sign_general(credentials, time, method, url, headers, body),
        }
    }

    /// Any request, by aws-sigv4.
    fn sign_general(
        &self,
        credentials: &Credentials,
        time: SystemTime,
        method: &str,
        url: &str,
        headers: &mut Vec<(&'static str, String)>,
        body: &[u8],
    ) -> Result<(), String> {
        let identity = credentials.clone().into();
        let mut settings = SigningSettings::default();
        if self.payload_hash_header {
            settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        }
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(&self.service)
            .time(time)
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

    /// A request to the service's root (see [`is_root_request`]): the canonical request is
    /// `METHOD`, `/`, an empty query, the headers sorted by name, their names, the body's hash.
    fn sign_root(
        &self,
        credentials: &Credentials,
        time: SystemTime,
        amz_date: &str,
        method: &str,
        headers: &mut Vec<(&'static str, String)>,
        body: &[u8],
    ) {
        let (date, _) = amz_date.split_once('T').unwrap_or((amz_date, ""));
        let payload_hash = hex::encode(Sha256::digest(body));
        headers.push(("x-amz-date", amz_date.to_owned()));
        if let Some(token) = credentials.session_token() {
            headers.push(("x-amz-security-token", token.to_owned()));
        }
        if self.payload_hash_header {
            headers.push(("x-amz-content-sha256", payload_hash.clone()));
        }
        let mut signed: Vec<&(&'static str, String)> = headers.iter().collect();
        signed.sort_unstable_by_key(|(name, _)| *name);
        let names = signed
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(";");
        let mut canonical = String::with_capacity(512);
        for part in [method, "\n/\n\n"] {
            canonical.push_str(part);
        }
        for (name, value) in &signed {
            for part in [name, ":", value.as_str(), "\n"] {
                canonical.push_str(part);
            }
        }
        for part in ["\n", &names, "\n", &payload_hash] {
            canonical.push_str(part);
        }
        let scope = format!("{date}/{}/{}/aws4_request", self.region, self.service);
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let signature = {
            let mut slot = self.day_key.lock().unwrap_or_else(|p| p.into_inner());
            let current = slot
                .as_ref()
                .is_some_and(|k| k.date == date && k.secret == credentials.secret_access_key());
            if !current {
                *slot = Some(DayKey {
                    date: date.to_owned(),
                    secret: credentials.secret_access_key().to_owned(),
                    key: v4::generate_signing_key(
                        credentials.secret_access_key(),
                        time,
                        &self.region,
                        &self.service,
                    )
                    .as_ref()
                    .to_vec(),
                });
            }
            let key = &slot.as_ref().expect("set above").key;
            v4::calculate_signature(key, string_to_sign.as_bytes())
        };
        headers.push((
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={names}, Signature={signature}",
                credentials.access_key_id()
            ),
        ));
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

/// A request the short road signs exactly as aws-sigv4 would: the URL's path is `/` with no
/// query, a `host` header is given, and every header is signed as it stands — a lower-case
/// name given once, none that the signer leaves out or adds, a value without spaces to trim
/// or fold.
fn is_root_request(url: &str, headers: &[(&'static str, String)]) -> bool {
    let root = url
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|at| &rest[at..]))
        == Some("/");
    let plain = |(name, value): &(&'static str, String)| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !UNSIGNED_HEADERS.iter().any(|h| h == name)
            && !SIGNATURE_HEADERS.contains(name)
            && !value.starts_with(' ')
            && !value.ends_with(' ')
            && !value.contains("  ")
    };
    let mut names: Vec<&str> = headers.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    names.dedup();
    root && names.contains(&"host") && names.len() == headers.len() && headers.iter().all(plain)
}

/// `x-amz-date`: the UTC time in whole seconds, as `20261203T154200Z`; `None` for a time
/// the calendar cannot write.
fn amz_date(time: SystemTime) -> Option<String> {
    let whole = DateTime::from_secs(DateTime::from(time).secs());
    let text = whole.fmt(Format::DateTime).ok()?; // 2026-12-03T15:42:00Z
    Some(text.chars().filter(|c| !matches!(c, '-' | ':')).collect())
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

    /// What aws-sigv4 and the short road add to a copy of `headers`, signed at `time`.
    fn both_ways(
        s: &Signer,
        credentials: &Credentials,
        time: SystemTime,
        (method, url): (&str, &str),
        headers: &[(&'static str, String)],
        body: &[u8],
    ) -> (Vec<(&'static str, String)>, Vec<(&'static str, String)>) {
        let mut general = headers.to_vec();
        s.sign_general(credentials, time, method, url, &mut general, body)
            .unwrap();
        let mut short = headers.to_vec();
        s.sign_at(credentials, time, method, url, &mut short, body)
            .unwrap();
        general.sort();
        short.sort();
        (general, short)
    }

    fn get_records_headers() -> Vec<(&'static str, String)> {
        vec![
            ("content-type", "application/x-amz-json-1.0".into()),
            ("x-amz-target", "DynamoDBStreams_20120810.GetRecords".into()),
            ("host", "streams.dynamodb.eu-west-1.amazonaws.com".into()),
        ]
    }

    #[test]
    fn a_request_to_the_service_s_root_is_signed_as_aws_sigv4_signs_it() {
        let url = "https://streams.dynamodb.eu-west-1.amazonaws.com/";
        let body = br#"{"ShardIterator":"arn:aws:dynamodb:eu-west-1:1:table/t/stream/x|1|AAAA","Limit":1000}"#;
        let keys = Credentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG", None, None, "t");
        let session = Credentials::new(
            "ASIAEXAMPLE",
            "s3cr3t",
            Some("FwoGZXIv//token".into()),
            None,
            "t",
        );
        // 2026-12-03 15:42:07 UTC, a leap day, the last second of a year, the epoch
        let times = [1_796_312_527, 1_709_208_000, 1_798_761_599, 0]
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        for payload_hash_header in [false, true] {
            let s = Signer::new(
                SharedCredentialsProvider::new(keys.clone()),
                "eu-west-1",
                "dynamodb",
                payload_hash_header,
            );
            for credentials in [&keys, &session] {
                for time in times {
                    for body in [&body[..], b""] {
                        let (general, short) = both_ways(
                            &s,
                            credentials,
                            time,
                            ("POST", url),
                            &get_records_headers(),
                            body,
                        );
                        assert_eq!(
                            short, general,
                            "at {time:?}, hash header {payload_hash_header}"
                        );
                    }
                }
            }
        }
        // a Kinesis endpoint on a port, as the emulators and the source fake serve it
        let mut headers = get_records_headers();
        headers[2].1 = "127.0.0.1:4567".into();
        let (general, short) = both_ways(
            &signer(),
            &keys,
            times[0],
            ("POST", "http://127.0.0.1:4567/"),
            &headers,
            body,
        );
        assert_eq!(short, general);
        // the sink's `GET /` to Amazon OpenSearch Service (its health check): the payload hash
        // header, an `accept`, no body
        let es = Signer::new(
            SharedCredentialsProvider::new(session.clone()),
            "eu-west-1",
            "es",
            true,
        );
        let headers = vec![
            ("accept", "application/json".to_string()),
            ("host", "search-posts-abc.eu-west-1.es.amazonaws.com".into()),
        ];
        for credentials in [&keys, &session] {
            let (general, short) = both_ways(
                &es,
                credentials,
                times[0],
                (
                    "GET",
                    "https://search-posts-abc.eu-west-1.es.amazonaws.com/",
                ),
                &headers,
                b"",
            );
            assert_eq!(short, general);
        }
    }

    #[test]
    fn the_day_s_signing_key_follows_the_date_and_the_credentials() {
        let s = signer();
        let url = "https://streams.dynamodb.us-east-1.amazonaws.com/";
        let before_midnight = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_342_399);
        let after_midnight = before_midnight + Duration::from_secs(1);
        let first = Credentials::new("AKIDEXAMPLE", "secret", None, None, "t");
        let rotated = Credentials::new("AKIDEXAMPLE", "rotated", None, None, "t");
        let other = Credentials::new("AKIDOTHER", "rotated", None, None, "t");
        // each step after a signature that cached the key of the step before
        for (credentials, time) in [
            (&first, before_midnight),
            (&first, after_midnight),
            (&rotated, after_midnight),
            (&other, after_midnight),
            (&first, before_midnight),
        ] {
            let (general, short) = both_ways(
                &s,
                credentials,
                time,
                ("POST", url),
                &get_records_headers(),
                b"{}",
            );
            assert_eq!(
                short,
                general,
                "{} at {time:?}",
                credentials.access_key_id()
            );
        }
    }

    #[test]
    fn only_requests_it_signs_exactly_take_the_short_road() {
        let plain = get_records_headers();
        assert!(is_root_request("https://h.example/", &plain));
        assert!(is_root_request("http://127.0.0.1:4567/", &plain));
        for url in [
            "https://h.example/_bulk",
            "https://h.example/?list",
            "https://h.example/a/",
            "https://h.example",
            "h.example/",
        ] {
            assert!(!is_root_request(url, &plain), "{url}");
        }
        let with = |name: &'static str, value: &str| {
            let mut h = plain.clone();
            h.push((name, value.into()));
            h
        };
        for headers in [
            with("user-agent", "sluice"),
            with("x-amz-date", "20261203T000000Z"),
            with("content-type", "text/plain"),
            with("x-custom", " padded"),
            with("x-custom", "two  spaces"),
            with("X-Custom", "upper"),
            with("", "no name"),
            plain
                .iter()
                .filter(|(n, _)| *n != "host")
                .cloned()
                .collect(),
        ] {
            assert!(
                !is_root_request("https://h.example/", &headers),
                "{headers:?}"
            );
        }
        // and those still sign as aws-sigv4 does, by aws-sigv4
        let creds = Credentials::new("AKIDEXAMPLE", "secret", None, None, "t");
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_312_527);
        let (general, signed) = both_ways(
            &signer(),
            &creds,
            time,
            ("POST", "https://h.example/_bulk"),
            &plain,
            b"{}",
        );
        assert_eq!(signed, general);
    }

    #[test]
    fn amz_date_is_the_utc_calendar_time() {
        let at = |s: u64| amz_date(SystemTime::UNIX_EPOCH + Duration::from_secs(s)).unwrap();
        assert_eq!(at(0), "19700101T000000Z");
        assert_eq!(at(951_782_400), "20000229T000000Z");
        assert_eq!(at(1_796_312_527), "20261203T154207Z");
        assert_eq!(at(4_102_444_799), "20991231T235959Z");
        // fractions of a second are dropped, as aws-sigv4 drops them
        let fraction = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_312_527_999);
        assert_eq!(amz_date(fraction).unwrap(), "20261203T154207Z");
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
