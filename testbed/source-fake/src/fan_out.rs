//! Kinesis enhanced fan-out: stream consumers (RegisterStreamConsumer, DescribeStreamConsumer,
//! ListStreamConsumers, DeregisterStreamConsumer) and SubscribeToShard, whose answer is an
//! `application/vnd.amazon.eventstream` body: an `initial-response` message, then one
//! `SubscribeToShardEvent` per batch of records (and one a second while there are none), each
//! with its `ContinuationSequenceNumber` and `MillisBehindLatest`; the last event of a closed
//! shard read to its end carries `ChildShards` and no continuation. As the service does, a
//! subscription ends after its lifetime (5 minutes), a second SubscribeToShard for the same
//! consumer and shard within 5 s of the last is refused with ResourceInUseException, and a later
//! one takes the subscription over: the older stream ends with a ResourceInUseException event.
//! Events are produced only as fast as the client reads them (a bounded channel behind the body:
//! HTTP flow control holds the producer back). Served over HTTP/1.1 (the SDK reads the event
//! stream from any streaming body); the service itself speaks HTTP/2.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_smithy_types::event_stream::{Header, HeaderValue as EventHeader, Message};
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};

use crate::kinesis::{child_shards, parse_sequence, sequence_text};
use crate::shards::{self, now_ms};
use crate::{reply, string, AwsError, Shared, StreamKind, World};

/// A registered consumer of a stream.
pub(crate) struct Consumer {
    pub name: String,
    pub arn: String,
    pub stream_arn: String,
    pub created_ms: u64,
    /// Per shard: the current subscription's number and when it was made.
    pub subscriptions: HashMap<String, (u64, Instant)>,
}

impl Consumer {
    fn status(&self, activation: Duration) -> &'static str {
        if now_ms().saturating_sub(self.created_ms) >= activation.as_millis() as u64 {
            "ACTIVE"
        } else {
            "CREATING"
        }
    }

    fn description(&self, activation: Duration) -> Value {
        json!({
            "ConsumerName": self.name,
            "ConsumerARN": self.arn,
            "ConsumerStatus": self.status(activation),
            "ConsumerCreationTimestamp": self.created_ms as f64 / 1000.0,
            "StreamARN": self.stream_arn,
        })
    }
}

/// What the fan-out side has done, for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FanOutStats {
    /// SubscribeToShard calls that opened a subscription.
    pub subscriptions: u64,
    /// Records sent in events, per (consumer name, shard).
    pub records_sent: HashMap<(String, String), u64>,
    /// Records sent more than once to one consumer (a subscription starting before the end of
    /// what an earlier one sent).
    pub records_sent_again: u64,
    /// Per (consumer name, shard): the highest sequence number sent.
    pub last_sent: HashMap<(String, String), u128>,
}

fn consumer_by_arn<'a>(world: &'a World, arn: &str) -> Result<&'a Consumer, AwsError> {
    world.consumers.get(arn).ok_or_else(|| {
        AwsError::not_found(format!(
            "Consumer {arn} under account {} not found.",
            world.options.account
        ))
    })
}

/// The consumer a Describe/Deregister call names: by ConsumerARN, or StreamARN + ConsumerName.
fn named_consumer(world: &World, request: &Value) -> Result<String, AwsError> {
    if let Some(arn) = request.get("ConsumerARN").and_then(Value::as_str) {
        return consumer_by_arn(world, arn).map(|c| c.arn.clone());
    }
    let stream = string(request, "StreamARN")?;
    let name = string(request, "ConsumerName")?;
    world
        .consumers
        .values()
        .find(|c| c.stream_arn == stream && c.name == name)
        .map(|c| c.arn.clone())
        .ok_or_else(|| {
            AwsError::not_found(format!(
                "Consumer {name} under stream {stream} under account {} not found.",
                world.options.account
            ))
        })
}

/// The consumer calls answered as JSON.
pub(crate) fn call(
    world: &mut World,
    operation: &str,
    request: &Value,
) -> Result<Vec<u8>, AwsError> {
    let activation = world.options.consumer_activation;
    match operation {
        "RegisterStreamConsumer" => {
            let stream = string(request, "StreamARN")?.to_owned();
            let name = string(request, "ConsumerName")?.to_owned();
            if !is_kinesis(world, &stream) {
                return Err(AwsError::not_found(format!("Stream {stream} not found.")));
            }
            if world
                .consumers
                .values()
                .any(|c| c.stream_arn == stream && c.name == name)
            {
                return Err(AwsError::bad_request(
                    "ResourceInUseException",
                    format!("Consumer {name} under stream {stream} already exists."),
                ));
            }
            let created_ms = now_ms();
            let arn = format!("{stream}/consumer/{name}:{}", created_ms / 1000);
            let consumer = Consumer {
                name,
                arn: arn.clone(),
                stream_arn: stream,
                created_ms,
                subscriptions: HashMap::new(),
            };
            let mut described = consumer.description(activation);
            described["ConsumerStatus"] = json!("CREATING");
            world.consumers.insert(arn, consumer);
            world.consumer_registrations += 1;
            reply(json!({ "Consumer": described }))
        }
        "DescribeStreamConsumer" => {
            let arn = named_consumer(world, request)?;
            reply(json!({ "ConsumerDescription": world.consumers[&arn].description(activation) }))
        }
        "ListStreamConsumers" => {
            let stream = string(request, "StreamARN")?;
            let consumers: Vec<Value> = world
                .consumers
                .values()
                .filter(|c| c.stream_arn == stream)
                .map(|c| c.description(activation))
                .collect();
            reply(json!({ "Consumers": consumers }))
        }
        "DeregisterStreamConsumer" => {
            let arn = named_consumer(world, request)?;
            world.consumers.remove(&arn);
            reply(json!({}))
        }
        other => Err(AwsError::bad_request(
            "UnknownOperationException",
            format!("unknown operation {other}"),
        )),
    }
}

/// Where a subscription starts: a record index in the shard.
fn starting_index(shard: &shards::Shard, position: &Value) -> Result<usize, AwsError> {
    let invalid = |why: String| AwsError::bad_request("InvalidArgumentException", why);
    match position.get("Type").and_then(Value::as_str) {
        Some("TRIM_HORIZON") => Ok(0),
        Some("LATEST") => Ok(shard.records.len()),
        Some(kind @ ("AT_SEQUENCE_NUMBER" | "AFTER_SEQUENCE_NUMBER")) => {
            let text = position
                .get("SequenceNumber")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("SequenceNumber is required with {kind}")))?;
            let seq = parse_sequence(text)
                .filter(|s| shard.owns_sequence(*s))
                .ok_or_else(|| {
                    invalid(format!(
                        "Invalid SequenceNumber {text} for shard {}",
                        shard.id
                    ))
                })?;
            Ok(shard.position_of(seq, kind == "AFTER_SEQUENCE_NUMBER"))
        }
        Some("AT_TIMESTAMP") => {
            let t = position
                .get("Timestamp")
                .and_then(Value::as_f64)
                .ok_or_else(|| invalid("Timestamp is required with AT_TIMESTAMP".into()))?;
            Ok(shard.position_at_time((t * 1000.0) as u64))
        }
        other => Err(invalid(format!("Invalid StartingPosition type {other:?}"))),
    }
}

fn frame(message: &Message) -> Bytes {
    let mut out = Vec::new();
    aws_smithy_eventstream::frame::write_message_to(message, &mut out)
        .expect("an event stream message is written to memory");
    Bytes::from(out)
}

fn event(event_type: &str, payload: Vec<u8>) -> Bytes {
    frame(
        &Message::new(payload)
            .add_header(Header::new(
                ":message-type",
                EventHeader::String("event".into()),
            ))
            .add_header(Header::new(
                ":event-type",
                EventHeader::String(event_type.to_owned().into()),
            ))
            .add_header(Header::new(
                ":content-type",
                EventHeader::String("application/json".into()),
            )),
    )
}

fn exception(code: &str, message: &str) -> Bytes {
    frame(
        &Message::new(serde_json::to_vec(&json!({ "message": message })).unwrap_or_default())
            .add_header(Header::new(
                ":message-type",
                EventHeader::String("exception".into()),
            ))
            .add_header(Header::new(
                ":exception-type",
                EventHeader::String(code.to_owned().into()),
            ))
            .add_header(Header::new(
                ":content-type",
                EventHeader::String("application/json".into()),
            )),
    )
}

/// Records per event at most (the service sends what 2 MB/s allows, in events of up to ~1 MB).
const EVENT_RECORDS: usize = 1_000;
const EVENT_BYTES: usize = 1 << 20;

/// `SubscribeToShard`: checks the call as the service does, then streams events.
pub(crate) fn subscribe(shared: &Arc<Shared>, request: &Value) -> Result<Response, AwsError> {
    let mut world = shared.world();
    let consumer_arn = string(request, "ConsumerARN")?.to_owned();
    let shard_id = string(request, "ShardId")?.to_owned();
    world.check_fault("SubscribeToShard", Some(&shard_id))?;
    let activation = world.options.consumer_activation;
    let consumer = consumer_by_arn(&world, &consumer_arn)?;
    if consumer.status(activation) != "ACTIVE" {
        return Err(AwsError::bad_request(
            "ResourceInUseException",
            format!("Consumer {consumer_arn} is not ACTIVE."),
        ));
    }
    let stream = consumer.stream_arn.clone();
    let consumer_name = consumer.name.clone();
    let s = world
        .streams
        .get(&stream)
        .ok_or_else(|| AwsError::not_found(format!("Stream {stream} not found.")))?;
    let shard_index = s
        .shards
        .iter()
        .position(|sh| sh.id == shard_id)
        .ok_or_else(|| {
            AwsError::not_found(format!(
                "Shard {shard_id} in stream {stream} does not exist"
            ))
        })?;
    let position = request
        .get("StartingPosition")
        .ok_or_else(|| AwsError::validation("StartingPosition is required"))?;
    let mut at = starting_index(&s.shards[shard_index], position)?;
    let consumer = world.consumers.get_mut(&consumer_arn).expect("found above");
    let generation = match consumer.subscriptions.get(&shard_id) {
        Some((_, since)) if since.elapsed() < Duration::from_secs(5) => {
            return Err(AwsError::bad_request(
                "ResourceInUseException",
                format!("Another active subscription exists for consumer {consumer_arn} and shard {shard_id}; a new one may be made 5 seconds after the last."),
            ))
        }
        Some((g, _)) => g + 1,
        None => 1,
    };
    consumer
        .subscriptions
        .insert(shard_id.clone(), (generation, Instant::now()));
    world.fan_out.subscriptions += 1;
    let lifetime = world.options.subscription_lifetime;
    drop(world);

    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let shared = shared.clone();
    tokio::spawn(async move {
        let key = (consumer_name, shard_id.clone());
        let started = Instant::now();
        let mut last_event = Instant::now() - Duration::from_secs(10);
        if tx
            .send(event("initial-response", b"{}".to_vec()))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let next = {
                let mut world = shared.world();
                let taken_over = world
                    .consumers
                    .get(&consumer_arn)
                    .and_then(|c| c.subscriptions.get(&shard_id))
                    .is_none_or(|(g, _)| *g != generation);
                if taken_over {
                    Some(Err(exception(
                        "ResourceInUseException",
                        "Another subscription took this shard over.",
                    )))
                } else if started.elapsed() >= lifetime {
                    // the subscription's time is up: the stream ends, the client subscribes again
                    None
                } else {
                    let Some(shard) = world
                        .streams
                        .get(&stream)
                        .and_then(|s| s.shards.get(shard_index))
                    else {
                        return;
                    };
                    let page = shards::read(shard, at, EVENT_RECORDS, EVENT_BYTES);
                    let read_to = page.next.unwrap_or(shard.records.len());
                    let sent = read_to - at;
                    let ended = page.next.is_none();
                    if sent == 0 && !ended && last_event.elapsed() < Duration::from_secs(1) {
                        Some(Ok(None))
                    } else {
                        let continuation = match read_to {
                            0 => shard.starting_seq,
                            n => shard.records[n - 1].seq,
                        };
                        let mut body = Vec::with_capacity(page.records.len() + 200);
                        body.extend_from_slice(b"{\"Records\":[");
                        body.extend_from_slice(&page.records);
                        body.extend_from_slice(
                            format!("],\"MillisBehindLatest\":{}", page.millis_behind_latest)
                                .as_bytes(),
                        );
                        if ended {
                            let children = child_shards(&world.streams[&stream], &shard.id);
                            body.extend_from_slice(
                                format!(",\"ChildShards\":{children}").as_bytes(),
                            );
                        } else {
                            body.extend_from_slice(
                                format!(
                                    ",\"ContinuationSequenceNumber\":\"{}\"",
                                    sequence_text(continuation)
                                )
                                .as_bytes(),
                            );
                        }
                        body.push(b'}');
                        let seqs: Vec<u128> =
                            shard.records[at..read_to].iter().map(|r| r.seq).collect();
                        let stats = &mut world.fan_out;
                        if let Some(&last) = seqs.last() {
                            if let Some(before) = stats.last_sent.get(&key) {
                                stats.records_sent_again +=
                                    seqs.iter().filter(|s| **s <= *before).count() as u64;
                            }
                            let highest = stats.last_sent.entry(key.clone()).or_insert(0);
                            *highest = (*highest).max(last);
                            *stats.records_sent.entry(key.clone()).or_default() += sent as u64;
                        }
                        at = read_to;
                        Some(Ok(Some((event("SubscribeToShardEvent", body), ended))))
                    }
                }
            };
            match next {
                None => return,
                Some(Err(frame)) => {
                    let _ = tx.send(frame).await;
                    return;
                }
                Some(Ok(None)) => tokio::time::sleep(Duration::from_millis(20)).await,
                Some(Ok(Some((frame, ended)))) => {
                    last_event = Instant::now();
                    if tx.send(frame).await.is_err() {
                        return;
                    }
                    if ended {
                        return;
                    }
                }
            }
        }
    });
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    }));
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/vnd.amazon.eventstream"),
    );
    Ok(response)
}

/// Whether a stream is Kinesis (consumers are registered on Kinesis streams only).
fn is_kinesis(world: &World, arn: &str) -> bool {
    matches!(
        world.streams.get(arn).map(|s| &s.kind),
        Some(StreamKind::Kinesis { .. })
    )
}
