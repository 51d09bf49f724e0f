//! Kinesis enhanced fan-out: shards read through a registered stream consumer with
//! SubscribeToShard — each consumer has its own 2 MB/s per shard, and records are pushed as they
//! arrive — behind the same [`ShardApi`] the polling reader uses, so versions, batching,
//! acknowledgements, checkpoints and shard lineage are the polling path's.
//!
//! * The reader's "iterator" is a position token (shard and where to continue); `get_records`
//!   hands on the next event of the shard's subscription, opening one there if none is open.
//!   Each event's `ContinuationSequenceNumber` becomes the next token, so a subscription renewed —
//!   after `source.subscription_renewal`, or when the service ends it (5 minutes) — continues
//!   exactly where the last event left off (AFTER_SEQUENCE_NUMBER): nothing skipped, nothing read
//!   twice. A record a new subscription delivers again is dropped and counted.
//! * Backpressure: an event is taken from the subscription only when the reader asks for the
//!   next page, which it does once the previous one is queued within the pipeline's budget.
//!   Until then the HTTP flow control holds the service back.
//! * Failures (ResourceInUseException — a second call within 5 s, or another worker taking the
//!   shard over —, the call limit, a broken connection) are errors of `get_records`: the reader
//!   backs off and asks again from the last record it handed on.
//! * The consumer is registered if it does not exist and reused if it does; sluice never
//!   deregisters one (README: how to remove it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError;
use aws_sdk_kinesis::types::{
    ConsumerStatus, Record, ShardIteratorType, StartingPosition, SubscribeToShardEventStream,
};

use super::kinesis::Kinesis;
use super::{ApiError, RecordPage, ShardApi, ShardInfo, StartAt};
use crate::metrics::Metrics;

type Events = aws_sdk_kinesis::primitives::event_stream::EventReceiver<
    SubscribeToShardEventStream,
    SubscribeToShardEventStreamError,
>;

/// No event for this long: the connection is taken for dead and the subscription renewed (the
/// service sends an event at least every few seconds, records or not).
const SILENCE_LIMIT: Duration = Duration::from_secs(60);

pub struct FanOut {
    kinesis: Arc<Kinesis>,
    name: String,
    consumer_arn: std::sync::RwLock<String>,
    renew_after: Duration,
    metrics: Metrics,
    /// The open subscription of each shard being read (taken out while an event is awaited).
    open: Mutex<HashMap<String, Subscription>>,
    /// When each shard was last subscribed to: a new subscription sooner than 5 s after it is
    /// refused (ResourceInUseException), so it waits instead.
    subscribed: Mutex<HashMap<String, Instant>>,
}

/// The service refuses a SubscribeToShard this soon after the last for a consumer and shard.
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(5_100);

struct Subscription {
    events: Events,
    /// The position token the next event continues from.
    at: String,
    opened: Instant,
    /// The last record handed on (or the sequence number it started after): a record at or
    /// before it is one delivered again.
    floor: Option<String>,
    gauge: prometheus::IntGauge,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Where a subscription starts, as the token the reader holds.
fn token(shard: &str, at: &StartAt) -> String {
    match at {
        StartAt::TrimHorizon => format!("{shard}\nTRIM_HORIZON"),
        StartAt::Latest => format!("{shard}\nLATEST"),
        StartAt::AfterSequence(seq) => format!("{shard}\nAFTER_SEQUENCE_NUMBER\n{seq}"),
        StartAt::AtTimestamp(ms) => format!("{shard}\nAT_TIMESTAMP\n{ms}"),
    }
}

fn parse_token(text: &str) -> Result<(&str, StartAt), ApiError> {
    let bad = || ApiError::Transient(format!("not a fan-out position: {text:?}"));
    let mut parts = text.splitn(3, '\n');
    let shard = parts.next().filter(|s| !s.is_empty()).ok_or_else(bad)?;
    let at = match (parts.next(), parts.next()) {
        (Some("TRIM_HORIZON"), None) => StartAt::TrimHorizon,
        (Some("LATEST"), None) => StartAt::Latest,
        (Some("AFTER_SEQUENCE_NUMBER"), Some(seq)) => StartAt::AfterSequence(seq.to_owned()),
        (Some("AT_TIMESTAMP"), Some(ms)) => StartAt::AtTimestamp(ms.parse().map_err(|_| bad())?),
        _ => return Err(bad()),
    };
    Ok((shard, at))
}

/// Kinesis sequence numbers are decimal strings of up to 129 digits: compared as numbers.
fn sequence_le(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    (a.len(), a) <= (b.len(), b)
}

/// A SubscribeToShard error's code and text, and the failure reason it is counted under.
fn failure<E, R>(err: &SdkError<E, R>) -> (ApiError, &'static str)
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    classified(err.code(), err)
}

/// An error event of the subscription's stream: its type is the exception's (the payload
/// carries no code).
fn stream_failure<R: std::fmt::Debug>(
    err: &SdkError<SubscribeToShardEventStreamError, R>,
) -> (ApiError, &'static str) {
    use SubscribeToShardEventStreamError as E;
    let code = match err.as_service_error() {
        Some(E::ResourceInUseException(_)) => Some("ResourceInUseException"),
        Some(E::ResourceNotFoundException(_)) => Some("ResourceNotFoundException"),
        Some(E::KmsThrottlingException(_)) => Some("LimitExceededException"),
        Some(other) => other.code().or(Some("InternalFailureException")),
        None => err.code(),
    };
    classified(code, err)
}

fn classified(code: Option<&str>, err: &dyn std::error::Error) -> (ApiError, &'static str) {
    let text = aws_smithy_types::error::display::DisplayErrorContext(err).to_string();
    let reason = match code {
        Some("ResourceInUseException") if text.contains("ACTIVE") => "consumer_not_active",
        Some("ResourceInUseException") => "resource_in_use",
        Some("LimitExceededException") => "limit_exceeded",
        Some("ResourceNotFoundException") => "not_found",
        Some(_) => "other",
        None => "network",
    };
    let api = match reason {
        // wait and subscribe again: the reader backs off on Throttled
        "resource_in_use" | "limit_exceeded" | "consumer_not_active" => ApiError::Throttled(text),
        "not_found" => ApiError::NotFound(text),
        _ => ApiError::Transient(text),
    };
    (api, reason)
}

/// Errors of the consumer calls that waiting cannot mend.
fn fatal(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "AccessDeniedException"
                | "ValidationException"
                | "InvalidArgumentException"
                | "UnrecognizedClientException"
                | "MissingAuthenticationTokenException"
        )
    )
}

/// Registers the consumer `name` on the stream unless it exists, and waits until it is ACTIVE;
/// returns its ARN. Never deregisters anything.
async fn ensure_consumer(kinesis: &Kinesis, name: &str) -> anyhow::Result<String> {
    let client = kinesis.client();
    let stream = &kinesis.arn;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut registered = false;
    let mut attempt = 0;
    let mut last_error = String::new();
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "stream consumer `{name}` did not become ACTIVE within 5 minutes{}",
            if last_error.is_empty() {
                String::new()
            } else {
                format!(" (last error: {last_error})")
            }
        );
        let described = client
            .describe_stream_consumer()
            .stream_arn(stream)
            .consumer_name(name)
            .send()
            .await;
        match described {
            Ok(out) => {
                let d = out.consumer_description().ok_or_else(|| {
                    anyhow::anyhow!("DescribeStreamConsumer answered without a description")
                })?;
                match d.consumer_status() {
                    ConsumerStatus::Active => {
                        if !registered {
                            tracing::info!(
                                consumer = name,
                                consumer_arn = d.consumer_arn(),
                                "reusing the stream consumer"
                            );
                        }
                        return Ok(d.consumer_arn().to_owned());
                    }
                    // being created, or deleted (then registered again below)
                    status => tracing::info!(
                        consumer = name,
                        status = status.as_str(),
                        "waiting for the stream consumer"
                    ),
                }
            }
            Err(e) if e.code() == Some("ResourceNotFoundException") => {
                match client
                    .register_stream_consumer()
                    .stream_arn(stream)
                    .consumer_name(name)
                    .send()
                    .await
                {
                    Ok(_) => {
                        registered = true;
                        tracing::info!(consumer = name, stream = %stream, "registered the stream consumer (sluice never deregisters it; to remove it: aws kinesis deregister-stream-consumer --stream-arn {stream} --consumer-name {name})");
                    }
                    // registered meanwhile by another task
                    Err(e) if e.code() == Some("ResourceInUseException") => {}
                    Err(e) if !fatal(e.code()) => {
                        // LimitExceeded: the calls per second, 5 consumers CREATING, or the
                        // stream's 20 consumers — said, and tried again
                        last_error =
                            aws_smithy_types::error::display::DisplayErrorContext(&e).to_string();
                        tracing::warn!(consumer = name, error = %last_error, "RegisterStreamConsumer failed; retrying");
                    }
                    Err(e) => anyhow::bail!(
                        "cannot register stream consumer `{name}` on {stream}: {}",
                        aws_smithy_types::error::display::DisplayErrorContext(e)
                    ),
                }
            }
            Err(e) if fatal(e.code()) => anyhow::bail!(
                "cannot describe stream consumer `{name}` on {stream}: {}",
                aws_smithy_types::error::display::DisplayErrorContext(e)
            ),
            // throttling, the service's own errors, the network: try again
            Err(e) => {
                last_error = aws_smithy_types::error::display::DisplayErrorContext(&e).to_string();
                tracing::warn!(consumer = name, error = %last_error, "DescribeStreamConsumer failed; retrying");
            }
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(250 * attempt.min(8))).await;
    }
}

impl FanOut {
    /// Registers the consumer `name` on the stream unless it exists, and waits until it is
    /// ACTIVE. Never deregisters anything.
    pub async fn connect(
        kinesis: Arc<Kinesis>,
        name: &str,
        renew_after: Duration,
        metrics: Metrics,
    ) -> anyhow::Result<FanOut> {
        let consumer_arn = ensure_consumer(&kinesis, name).await?;
        Ok(FanOut {
            kinesis,
            name: name.to_owned(),
            consumer_arn: std::sync::RwLock::new(consumer_arn),
            renew_after,
            metrics,
            open: Mutex::new(HashMap::new()),
            subscribed: Mutex::new(HashMap::new()),
        })
    }

    /// The consumer's ARN now (a consumer deleted and registered again has a new one).
    pub fn consumer_arn(&self) -> String {
        self.consumer_arn
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// After ResourceNotFound: is it the consumer that is gone (deregistered, or re-created
    /// with a new ARN)? Then it is registered again (or found under its new ARN) and the caller
    /// subscribes again: `Throttled`. Otherwise it is the shard: `NotFound`, for the reader's
    /// "is the shard still listed?" check.
    async fn not_found(&self, api: ApiError) -> ApiError {
        let arn = self.consumer_arn();
        let described = self
            .kinesis
            .client()
            .describe_stream_consumer()
            .consumer_arn(&arn)
            .send()
            .await;
        let active = match &described {
            Ok(out) => out
                .consumer_description()
                .is_some_and(|d| d.consumer_status() == &ConsumerStatus::Active),
            Err(e) if e.code() == Some("ResourceNotFoundException") => false,
            // cannot tell: let the reader retry
            Err(_) => {
                return ApiError::Transient(format!(
                    "{api}; and the consumer could not be described"
                ))
            }
        };
        if active {
            return api;
        }
        tracing::warn!(consumer = %self.name, consumer_arn = %arn, "the stream consumer is gone or not ACTIVE; registering it again");
        self.metrics
            .fan_out_failures
            .with_label_values(&["consumer_not_active"])
            .inc();
        match ensure_consumer(&self.kinesis, &self.name).await {
            Ok(new) => {
                *self
                    .consumer_arn
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = new;
                ApiError::Throttled("the stream consumer was registered again".into())
            }
            Err(e) => ApiError::Transient(format!("the stream consumer is gone: {e:#}")),
        }
    }

    fn starting_position(at: &StartAt) -> StartingPosition {
        let b = StartingPosition::builder();
        let b = match at {
            StartAt::TrimHorizon => b.r#type(ShardIteratorType::TrimHorizon),
            StartAt::Latest => b.r#type(ShardIteratorType::Latest),
            StartAt::AfterSequence(seq) => b
                .r#type(ShardIteratorType::AfterSequenceNumber)
                .sequence_number(seq),
            StartAt::AtTimestamp(ms) => b
                .r#type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from_millis(*ms)),
        };
        b.build().expect("a starting position has its type")
    }

    async fn subscribe(
        &self,
        shard: &str,
        at_token: &str,
        at: &StartAt,
    ) -> Result<Subscription, ApiError> {
        let last = self
            .subscribed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(shard)
            .copied();
        if let Some(wait) = last.and_then(|t| RESUBSCRIBE_AFTER.checked_sub(t.elapsed())) {
            tokio::time::sleep(wait).await;
        }
        let answer = self
            .kinesis
            .client()
            .subscribe_to_shard()
            .consumer_arn(self.consumer_arn())
            .shard_id(shard)
            .starting_position(Self::starting_position(at))
            .send()
            .await;
        let out = match answer {
            Ok(out) => out,
            Err(e) => {
                let (api, reason) = failure(&e);
                self.metrics
                    .fan_out_failures
                    .with_label_values(&[reason])
                    .inc();
                return Err(match api {
                    ApiError::NotFound(_) => self.not_found(api).await,
                    other => other,
                });
            }
        };
        self.subscribed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(shard.to_owned(), Instant::now());
        let gauge = self.metrics.fan_out_subscriptions.clone();
        gauge.inc();
        Ok(Subscription {
            events: out.event_stream,
            at: at_token.to_owned(),
            opened: Instant::now(),
            floor: match at {
                StartAt::AfterSequence(seq) => Some(seq.clone()),
                _ => None,
            },
            gauge,
        })
    }
}

impl ShardApi for FanOut {
    type Record = Record;

    async fn list_shards(&self) -> Result<Vec<ShardInfo>, ApiError> {
        self.kinesis.list_shards().await
    }

    /// No call: the position itself, subscribed to when the reader asks for records.
    async fn shard_iterator(&self, shard: &str, at: &StartAt) -> Result<String, ApiError> {
        Ok(token(shard, at))
    }

    async fn get_records(
        &self,
        iterator: &str,
        _limit: u32,
    ) -> Result<RecordPage<Record>, ApiError> {
        let (shard, at) = parse_token(iterator)?;
        // the open subscription continues from here only if it is where the reader is
        let mut open = {
            let mut all = self
                .open
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            all.remove(shard).filter(|s| s.at == iterator)
        };
        loop {
            let mut sub = match open.take() {
                Some(s) if s.opened.elapsed() < self.renew_after => s,
                renewing => {
                    if renewing.is_some() {
                        // before the service's 5-minute limit, from where the last event ended
                        self.metrics.fan_out_renewals.inc();
                        tracing::debug!(shard_id = shard, "renewing the fan-out subscription");
                    }
                    drop(renewing);
                    self.subscribe(shard, iterator, &at).await?
                }
            };
            let event = match tokio::time::timeout(SILENCE_LIMIT, sub.events.recv()).await {
                Ok(event) => event,
                Err(_) => {
                    self.metrics
                        .fan_out_failures
                        .with_label_values(&["network"])
                        .inc();
                    return Err(ApiError::Transient(format!(
                        "no fan-out event for {} s on shard {shard}",
                        SILENCE_LIMIT.as_secs()
                    )));
                }
            };
            match event {
                Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(ev))) => {
                    let before = ev.records.len();
                    let records: Vec<Record> = match &sub.floor {
                        Some(floor) => ev
                            .records
                            .into_iter()
                            .filter(|r| !sequence_le(r.sequence_number(), floor))
                            .collect(),
                        None => ev.records,
                    };
                    let again = before - records.len();
                    if again > 0 {
                        self.metrics.fan_out_redelivered.inc_by(again as u64);
                        tracing::warn!(
                            shard_id = shard,
                            records = again,
                            "a fan-out subscription delivered records again; dropped"
                        );
                    }
                    if let Some(last) = records.last() {
                        sub.floor = Some(last.sequence_number().to_owned());
                    }
                    let child_shards: Vec<ShardInfo> = ev
                        .child_shards
                        .unwrap_or_default()
                        .iter()
                        .map(super::kinesis::child_shard)
                        .collect();
                    // The last event of a closed shard read to its end has no continuation, and
                    // names the children. An event without either (a continuation the SDK
                    // filled in as empty) ends the shard only if the shard is closed: ending an
                    // open one would pass over the rest of it. Else it is dropped, and the
                    // reader subscribes again from where it was (its records come again).
                    if ev.continuation_sequence_number.is_empty() && child_shards.is_empty() {
                        let closed = match self.kinesis.list_shards().await {
                            Ok(shards) => shards
                                .iter()
                                .find(|s| &*s.id == shard)
                                .is_none_or(|s| s.closed),
                            Err(_) => false,
                        };
                        if !closed {
                            self.metrics
                                .fan_out_failures
                                .with_label_values(&["other"])
                                .inc();
                            return Err(ApiError::Transient(format!(
                                "a fan-out event on open shard {shard} without a continuation"
                            )));
                        }
                    }
                    let next = (!ev.continuation_sequence_number.is_empty()).then(|| {
                        token(
                            shard,
                            &StartAt::AfterSequence(ev.continuation_sequence_number.clone()),
                        )
                    });
                    if let Some(next) = &next {
                        sub.at = next.clone();
                        self.open
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .insert(shard.to_owned(), sub);
                    }
                    return Ok(RecordPage {
                        records,
                        next_iterator: next,
                        millis_behind_latest: Some(ev.millis_behind_latest),
                        child_shards,
                    });
                }
                // an event type this SDK does not know: passed over
                Ok(Some(_)) => open = Some(sub),
                // the service ended the subscription (its 5 minutes): a new one continues
                Ok(None) => {
                    self.metrics.fan_out_renewals.inc();
                    tracing::debug!(
                        shard_id = shard,
                        "the service ended the fan-out subscription; renewing"
                    );
                    drop(sub);
                }
                Err(e) => {
                    let (api, reason) = stream_failure(&e);
                    tracing::warn!(shard_id = shard, reason, error = %api, "the fan-out subscription broke");
                    self.metrics
                        .fan_out_failures
                        .with_label_values(&[reason])
                        .inc();
                    return Err(match api {
                        ApiError::NotFound(_) => self.not_found(api).await,
                        other => other,
                    });
                }
            }
        }
    }

    /// Pushed: no gap to keep between calls (the service sends what arrives).
    fn min_poll_gap(&self) -> Duration {
        Duration::ZERO
    }

    /// The consumer's own 2 MB/s per shard, paced by the service itself.
    fn max_read_bytes_per_sec(&self) -> Option<u64> {
        None
    }

    fn pushes(&self) -> bool {
        true
    }

    /// The shard's reader is gone (lease lost or handed over, shard ended, shutdown): its
    /// subscription is closed, not left holding a connection's flow-control window.
    fn reader_stopped(&self, shard: &str) {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(shard);
    }

    async fn retention(&self) -> Result<Duration, ApiError> {
        self.kinesis.retention().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_token_reads_back_as_the_position() {
        for at in [
            StartAt::TrimHorizon,
            StartAt::Latest,
            StartAt::AfterSequence(
                "49590338271490256608559692538361571095921575989136588898".into(),
            ),
            StartAt::AtTimestamp(1_700_000_000_000),
        ] {
            let t = token("shardId-000000000007", &at);
            assert_eq!(parse_token(&t).unwrap(), ("shardId-000000000007", at));
        }
        assert!(parse_token("shardId-1\nSOMEWHERE").is_err());
    }

    #[test]
    fn sequence_numbers_compare_as_numbers() {
        assert!(sequence_le("9", "10"));
        assert!(!sequence_le("10", "9"));
        assert!(sequence_le("4959", "4959"));
        assert!(sequence_le("0042", "43"));
    }
}
