//! AWS SigV4 checking, as Amazon OpenSearch Service does it: the test server recomputes the
//! signature of every request from the bytes it received, with the credentials it knows, and
//! answers 403 (`{"message": …}`, AWS's shape) when it does not match, when the access key is
//! unknown, or when the request is more than 5 minutes old. Recomputed with `aws-sigv4`, over the
//! received method, path, signed headers and *compressed* body — so a client that signs other
//! bytes than it sends is caught.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
};
use aws_sigv4::sign::v4;
use axum::http::{HeaderMap, Method, Uri};

/// What the server accepts.
#[derive(Debug, Clone)]
pub struct SigV4Keys {
    pub region: String,
    pub service: String,
    /// (access key id, secret, session token): several, so a test can rotate them.
    pub credentials: Vec<(String, String, Option<String>)>,
}

/// `Err(message)` when the request is not correctly signed with one of `keys`.
pub fn check(
    keys: &SigV4Keys,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), String> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or("Authorization header requires 'Credential' parameter. Authorization header requires 'Signature' parameter.")?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("Authorization header requires the AWS4-HMAC-SHA256 algorithm")?;
    let field = |name: &str| {
        rest.split(',')
            .map(str::trim)
            .find_map(|p| p.strip_prefix(name))
            .map(str::to_owned)
    };
    let credential = field("Credential=").ok_or("no Credential")?;
    let signed = field("SignedHeaders=").ok_or("no SignedHeaders")?;
    let signature = field("Signature=").ok_or("no Signature")?;
    let mut scope = credential.split('/');
    let key_id = scope.next().unwrap_or_default();
    let (_, region, service) = (scope.next(), scope.next(), scope.next());
    if region != Some(keys.region.as_str()) || service != Some(keys.service.as_str()) {
        return Err(format!(
            "Credential should be scoped to a valid region and service ({}/{})",
            keys.region, keys.service
        ));
    }
    let token = headers
        .get("x-amz-security-token")
        .and_then(|v| v.to_str().ok());
    let (_, secret, expected_token) = keys
        .credentials
        .iter()
        .find(|(k, _, _)| k == key_id)
        .ok_or("The security token included in the request is invalid.")?;
    if expected_token.as_deref() != token {
        return Err("The security token included in the request is invalid.".into());
    }
    let date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or("no X-Amz-Date")?;
    let time = parse_amz_date(date).ok_or("X-Amz-Date is not a date")?;
    let skew = SystemTime::now()
        .duration_since(time)
        .unwrap_or_else(|e| e.duration());
    if skew > Duration::from_secs(300) {
        return Err("Signature expired".into());
    }
    // the headers the client signed, except those the signer adds itself
    let added = ["x-amz-date", "x-amz-content-sha256", "x-amz-security-token"];
    let mut signed_headers: Vec<(String, String)> = Vec::new();
    for name in signed.split(';').filter(|h| !added.contains(h)) {
        let value = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| format!("signed header {name} is missing"))?;
        signed_headers.push((name.to_string(), value.to_string()));
    }
    let identity = Credentials::new(key_id, secret, expected_token.clone(), None, "es-fake").into();
    let mut settings = SigningSettings::default();
    if headers.contains_key("x-amz-content-sha256") {
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&keys.region)
        .name(&keys.service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let url = format!(
        "http://{host}{}",
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    let request = SignableRequest::new(
        method.as_str(),
        url.as_str(),
        signed_headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )
    .map_err(|e| e.to_string())?;
    let (_, expected) = sign(request, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    if expected != signature {
        return Err("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.".into());
    }
    Ok(())
}

/// `20261122T101500Z`.
fn parse_amz_date(s: &str) -> Option<SystemTime> {
    if s.len() != 16 || !s.ends_with('Z') || &s[8..9] != "T" {
        return None;
    }
    let n = |a: usize, b: usize| s.get(a..b)?.parse::<u64>().ok();
    let (y, mo, d, h, mi, se) = (
        n(0, 4)?,
        n(4, 6)?,
        n(6, 8)?,
        n(9, 11)?,
        n(11, 13)?,
        n(13, 15)?,
    );
    // days from civil (Howard Hinnant's algorithm)
    let (y2, m2) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y2 / 400;
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(days * 86_400 + h * 3600 + mi * 60 + se))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_dates_parse() {
        let t = parse_amz_date("20240729T005907Z").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_722_214_747
        );
    }
}
