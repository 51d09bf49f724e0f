//! `sluice healthcheck --config FILE`: asks the running sluice's `/readyz` (at `http.listen`)
//! and exits 0 when ready, 1 otherwise with the reason. No shell or curl needed, so a distroless
//! image can use it as its ECS container health check. It asks `?for=container`: a shard close
//! to losing records keeps `/readyz` at 503 for alerts, but does not get the task replaced — the
//! new task would read from the same checkpoint, only later.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Config;

/// `Ok(reason)` when ready, `Err(reason)` when not (or not answering).
pub async fn run(config: &Config) -> Result<String, String> {
    let addr = local(config.http.listen);
    let ask = async {
        let mut conn = TcpStream::connect(addr).await?;
        conn.write_all(
            b"GET /readyz?for=container HTTP/1.0\r\nHost: sluice\r\nConnection: close\r\n\r\n",
        )
        .await?;
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = match tokio::time::timeout(Duration::from_secs(4), ask).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return Err(format!("sluice is not answering on {addr}: {e}")),
        Err(_) => return Err(format!("sluice did not answer on {addr} within 4s")),
    };
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok());
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string())
        .unwrap_or_default();
    match status {
        Some(200) => Ok(body),
        Some(code) => Err(format!("HTTP {code}: {body}")),
        None => Err(format!("not an HTTP answer from {addr}")),
    }
}

/// The address to ask: a wildcard listen address is reached through loopback.
fn local(listen: SocketAddr) -> SocketAddr {
    match listen {
        SocketAddr::V4(a) if a.ip().is_unspecified() => (Ipv4Addr::LOCALHOST, a.port()).into(),
        SocketAddr::V6(a) if a.ip().is_unspecified() => (Ipv6Addr::LOCALHOST, a.port()).into(),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listen_address_is_asked_through_loopback() {
        assert_eq!(
            local("0.0.0.0:9464".parse().unwrap()),
            "127.0.0.1:9464".parse().unwrap()
        );
        assert_eq!(
            local("10.0.0.5:9464".parse().unwrap()),
            "10.0.0.5:9464".parse().unwrap()
        );
    }
}
