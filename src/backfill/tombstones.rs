//! Deletes must outlive the backfill.
//!
//! A scan (or export) image carries a version from before the backfill started; a stream delete
//! of the same item, made after it was read, carries a higher one. Elasticsearch refuses the older
//! image only while the delete's tombstone lives — `index.gc_deletes`, 60 s by default. An export
//! reaches an item hours after its export time, and a scan page can wait in the pipeline through
//! an Elasticsearch outage: past 60 s the image would bring the deleted item back. So the backfill
//! raises the index's `gc_deletes` to `backfill.keep_deletes_for` (24 h) before it writes, keeps it
//! raised while it is interrupted, and puts the original back once it is complete. The original is
//! saved in the checkpoint file first, so a killed backfill restores it when it completes.

use std::time::Duration;

use rusqlite::{params, OptionalExtension};
use serde_json::{json, Value};

use crate::checkpoint::CheckpointStore;
use crate::config::Config;
use crate::es_client::{Answer, EsClient};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS backfill_gc_deletes (
    index_name TEXT PRIMARY KEY,
    -- the index's own setting before the backfill; NULL: it had none (the default)
    original   TEXT
)";

/// An Elasticsearch time value (`60s`, `24h`, `500ms`, `2d`, `-1`: never) as a duration.
pub fn time_value(text: &str) -> Option<Duration> {
    if text.trim() == "-1" {
        return Some(Duration::MAX);
    }
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "nanos" => Duration::from_nanos(n),
        "micros" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86_400),
        _ => return None,
    })
}

/// Raises the index's `gc_deletes` for the backfill (no-op when `keep_deletes_for` is 0 or the
/// index already keeps tombstones as long).
pub async fn keep(config: &Config, store: &CheckpointStore) -> anyhow::Result<()> {
    let keep_for = config.backfill.keep_deletes_for;
    let index = config.sink.index.clone();
    if keep_for.is_zero() {
        tracing::warn!(index = %index, "backfill.keep_deletes_for = 0: a stream delete older than index.gc_deletes can be undone by an older backfill image");
        return Ok(());
    }
    let es = EsClient::new(&config.sink, &config.source.region).await?;
    let saved = saved(store, &index).await?;
    if saved.is_none() {
        let answer = call(&es, "GET", &format!("/{index}/_settings"), None).await?;
        let original: Option<String> = match answer.status {
            404 => None,
            200..=299 => {
                let v: Value = serde_json::from_str(&answer.body)
                    .map_err(|e| anyhow::anyhow!("index `{index}` settings: not JSON ({e})"))?;
                v.as_object()
                    .and_then(|m| m.values().next())
                    .and_then(|s| s.pointer("/settings/index/gc_deletes"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            }
            status => anyhow::bail!(
                "reading index `{index}` settings: HTTP {status}: {}",
                answer.body
            ),
        };
        if original
            .as_deref()
            .and_then(time_value)
            .is_some_and(|d| d >= keep_for)
        {
            return Ok(());
        }
        remember(store, &index, original).await?;
    }
    let value = format!("{}s", keep_for.as_secs().max(1));
    let body = json!({"index": {"gc_deletes": value}})
        .to_string()
        .into_bytes();
    let mut answer = call(
        &es,
        "PUT",
        &format!("/{index}/_settings"),
        Some(body.clone()),
    )
    .await?;
    if answer.status == 404 {
        // day one: the index does not exist yet — create it with the setting (templates apply)
        let create = json!({"settings": {"index": {"gc_deletes": value}}})
            .to_string()
            .into_bytes();
        answer = call(&es, "PUT", &format!("/{index}"), Some(create)).await?;
        if answer.status == 400 && answer.body.contains("resource_already_exists_exception") {
            answer = call(&es, "PUT", &format!("/{index}/_settings"), Some(body)).await?;
        }
    }
    if !(200..300).contains(&answer.status) {
        anyhow::bail!(
            "cannot raise index.gc_deletes of `{index}` to {value} for the backfill (HTTP {}: {}); \
             without it a stream delete older than 60 s can be undone by an older backfill image. \
             Allow the setting, or set backfill.keep_deletes_for = \"0s\" to accept that risk",
            answer.status,
            answer.body.chars().take(300).collect::<String>()
        );
    }
    tracing::info!(index = %index, gc_deletes = %value, "deletes are kept while the backfill runs");
    Ok(())
}

/// Puts the index's own `gc_deletes` back once the backfill is complete.
pub async fn restore(config: &Config, store: &CheckpointStore) -> anyhow::Result<()> {
    let index = config.sink.index.clone();
    let Some(original) = saved(store, &index).await? else {
        return Ok(());
    };
    let es = EsClient::new(&config.sink, &config.source.region).await?;
    let body = json!({"index": {"gc_deletes": original}})
        .to_string()
        .into_bytes();
    let answer = call(&es, "PUT", &format!("/{index}/_settings"), Some(body)).await?;
    if !(200..300).contains(&answer.status) {
        anyhow::bail!(
            "the backfill is complete, but index.gc_deletes of `{index}` could not be put back to {} (HTTP {}: {})",
            original.as_deref().unwrap_or("its default"),
            answer.status,
            answer.body.chars().take(300).collect::<String>()
        );
    }
    forget(store, &index).await?;
    tracing::info!(index = %index, gc_deletes = original.as_deref().unwrap_or("default"), "index.gc_deletes put back");
    Ok(())
}

async fn call(
    es: &EsClient,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<Answer> {
    let mut attempt = 0;
    loop {
        match es.call(method, path, body.clone()).await {
            Ok(a) if a.status != 429 && a.status < 500 => return Ok(a),
            Ok(a) if attempt >= 8 => {
                anyhow::bail!("{method} {path}: HTTP {}: {}", a.status, a.body)
            }
            Err(e) if attempt >= 8 => anyhow::bail!("{method} {path}: {e}"),
            _ => {}
        }
        attempt += 1;
        tokio::time::sleep(crate::retry::Backoff::AWS.delay(attempt)).await;
    }
}

/// `Some(original)` once the setting was raised for this index (and not yet put back).
async fn saved(store: &CheckpointStore, index: &str) -> anyhow::Result<Option<Option<String>>> {
    let index = index.to_string();
    Ok(store
        .with_connection(move |conn| {
            conn.execute_batch(SCHEMA)?;
            Ok(conn
                .query_row(
                    "SELECT original FROM backfill_gc_deletes WHERE index_name = ?1",
                    params![index],
                    |r| r.get::<_, Option<String>>(0),
                )
                .optional()?)
        })
        .await?)
}

async fn remember(
    store: &CheckpointStore,
    index: &str,
    original: Option<String>,
) -> anyhow::Result<()> {
    let index = index.to_string();
    store
        .with_connection(move |conn| {
            conn.execute_batch(SCHEMA)?;
            conn.execute(
                "INSERT OR IGNORE INTO backfill_gc_deletes (index_name, original) VALUES (?1, ?2)",
                params![index, original],
            )?;
            Ok(())
        })
        .await?;
    Ok(())
}

async fn forget(store: &CheckpointStore, index: &str) -> anyhow::Result<()> {
    let index = index.to_string();
    store
        .with_connection(move |conn| {
            conn.execute(
                "DELETE FROM backfill_gc_deletes WHERE index_name = ?1",
                params![index],
            )?;
            Ok(())
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elasticsearch_time_values_are_read() {
        assert_eq!(time_value("60s"), Some(Duration::from_secs(60)));
        assert_eq!(time_value("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(time_value("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(time_value("2d"), Some(Duration::from_secs(172_800)));
        assert_eq!(time_value("-1"), Some(Duration::MAX));
        assert_eq!(time_value("soon"), None);
        assert_eq!(time_value("10"), None);
    }
}
