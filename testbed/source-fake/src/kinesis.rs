//! Kinesis Data Streams: streams of any number of shards, resharding, polling reads.

use base64::Engine as _;
use bytes::Bytes;
use md5::{Digest, Md5};
use serde_json::{json, Value};

use crate::shards::{self, now_ms, Iterator, Shard, Stored};
use crate::{reply, string, AwsError, Stream, StreamKind, World};

const MAX_HASH: u128 = u128::MAX;

/// Kinesis sequence numbers read as the service's: 56 digits, beginning `49`.
pub(crate) fn sequence_text(seq: u128) -> String {
    format!("49{seq:054}")
}

pub(crate) fn parse_sequence(text: &str) -> Option<u128> {
    let digits = text.strip_prefix("49").filter(|d| d.len() == 54)?;
    digits.parse().ok()
}

fn shard_id(i: usize) -> String {
    format!("shardId-{i:012}")
}

/// The stream a request names, by `StreamARN` or `StreamName`.
fn stream_arn(world: &World, request: &Value) -> Result<String, AwsError> {
    if let Some(arn) = request.get("StreamARN").and_then(Value::as_str) {
        return Ok(arn.to_owned());
    }
    let name = request
        .get("StreamName")
        .and_then(Value::as_str)
        .ok_or_else(|| AwsError::validation("StreamName or StreamARN is required"))?;
    world.kinesis_names.get(name).cloned().ok_or_else(|| {
        AwsError::not_found(format!(
            "Stream {name} under account {} not found.",
            world.options.account
        ))
    })
}

fn kinesis_stream<'a>(world: &'a World, arn: &str) -> Result<&'a Stream, AwsError> {
    match world.streams.get(arn) {
        Some(
            s @ Stream {
                kind: StreamKind::Kinesis { .. },
                ..
            },
        ) => Ok(s),
        _ => Err(AwsError::not_found(format!("Stream {arn} not found."))),
    }
}

/// The stream a Describe call names, with its name and retention.
fn described<'a>(
    world: &'a World,
    request: &Value,
) -> Result<(&'a Stream, &'a str, u32), AwsError> {
    let arn = stream_arn(world, request)?;
    let s = kinesis_stream(world, &arn)?;
    match &s.kind {
        StreamKind::Kinesis {
            name,
            retention_hours,
        } => Ok((s, name, *retention_hours)),
        StreamKind::Table { .. } => unreachable!("kinesis_stream returns Kinesis streams"),
    }
}

fn shard_json(s: &Shard) -> Value {
    let mut range = json!({ "StartingSequenceNumber": sequence_text(s.starting_seq) });
    if let Some(end) = s.ending_seq {
        range["EndingSequenceNumber"] = json!(sequence_text(end));
    }
    let mut shard = json!({
        "ShardId": s.id,
        "HashKeyRange": {
            "StartingHashKey": s.hash_range.0.to_string(),
            "EndingHashKey": s.hash_range.1.to_string(),
        },
        "SequenceNumberRange": range,
    });
    if let Some(p) = s.parents.first() {
        shard["ParentShardId"] = json!(p);
    }
    if let Some(p) = s.parents.get(1) {
        shard["AdjacentParentShardId"] = json!(p);
    }
    shard
}

pub(crate) fn call(
    world: &mut World,
    operation: &str,
    request: &Value,
) -> Result<Vec<u8>, AwsError> {
    if operation == "GetRecords" {
        let it = Iterator::decode(
            string(request, "ShardIterator")?,
            "InvalidArgumentException",
        )?;
        let shard = world
            .streams
            .get(&it.stream)
            .and_then(|s| s.shards.get(it.shard))
            .map(|s| s.id.clone());
        world.check_fault(operation, shard.as_deref())?;
        return get_records(world, &it, request);
    }
    world.check_fault(operation, request.get("ShardId").and_then(Value::as_str))?;
    match operation {
        "CreateStream" => create_stream(world, request),
        "DescribeStreamSummary" => {
            let (s, name, retention_hours) = described(world, request)?;
            reply(json!({ "StreamDescriptionSummary": {
                "StreamName": name,
                "StreamARN": s.arn,
                "StreamStatus": "ACTIVE",
                "StreamModeDetails": {"StreamMode": "PROVISIONED"},
                "RetentionPeriodHours": retention_hours,
                "StreamCreationTimestamp": s.created_ms as f64 / 1000.0,
                "EnhancedMonitoring": [{"ShardLevelMetrics": []}],
                "EncryptionType": "NONE",
                "OpenShardCount": s.shards.iter().filter(|s| s.is_open()).count(),
                "ConsumerCount": 0,
            }}))
        }
        "DescribeStream" => {
            let (s, name, retention_hours) = described(world, request)?;
            let limit = request
                .get("Limit")
                .and_then(Value::as_u64)
                .unwrap_or(100)
                .clamp(1, 10_000) as usize;
            let from = shards::page_start(
                &s.shards,
                request.get("ExclusiveStartShardId").and_then(Value::as_str),
            );
            let page: Vec<Value> = s.shards[from.min(s.shards.len())..]
                .iter()
                .take(limit)
                .map(shard_json)
                .collect();
            reply(json!({ "StreamDescription": {
                "StreamName": name,
                "StreamARN": s.arn,
                "StreamStatus": "ACTIVE",
                "RetentionPeriodHours": retention_hours,
                "StreamCreationTimestamp": s.created_ms as f64 / 1000.0,
                "EnhancedMonitoring": [{"ShardLevelMetrics": []}],
                "Shards": page,
                "HasMoreShards": from + limit < s.shards.len(),
            }}))
        }
        "ListShards" => list_shards(world, request),
        "GetShardIterator" => get_shard_iterator(world, request),
        "PutRecord" => {
            let arn = stream_arn(world, request)?;
            let data = blob(request)?;
            let key = string(request, "PartitionKey")?.to_owned();
            let explicit = request
                .get("ExplicitHashKey")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let (shard, seq) = put_arn(world, &arn, &key, explicit.as_deref(), &data)?;
            reply(json!({ "ShardId": shard, "SequenceNumber": sequence_text(seq) }))
        }
        "PutRecords" => {
            let arn = stream_arn(world, request)?;
            let records = request
                .get("Records")
                .and_then(Value::as_array)
                .ok_or_else(|| AwsError::validation("Records is required"))?;
            if records.is_empty() || records.len() > 500 {
                return Err(AwsError::validation(format!(
                    "PutRecords takes 1 to 500 records, not {}",
                    records.len()
                )));
            }
            let mut out = Vec::new();
            for r in records {
                let data = blob(r)?;
                let key = string(r, "PartitionKey")?.to_owned();
                let explicit = r
                    .get("ExplicitHashKey")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let (shard, seq) = put_arn(world, &arn, &key, explicit.as_deref(), &data)?;
                out.push(json!({ "ShardId": shard, "SequenceNumber": sequence_text(seq) }));
            }
            reply(json!({ "FailedRecordCount": 0, "Records": out }))
        }
        "SplitShard" => split_shard(world, request),
        "MergeShards" => merge_shards(world, request),
        other => Err(AwsError::bad_request(
            "UnknownOperationException",
            format!("the source fake does not serve Kinesis {other}"),
        )),
    }
}

fn blob(request: &Value) -> Result<Vec<u8>, AwsError> {
    let text = string(request, "Data")?;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| {
            AwsError::bad_request("SerializationException", format!("Data is not base64: {e}"))
        })
}

fn create_stream(world: &mut World, request: &Value) -> Result<Vec<u8>, AwsError> {
    let name = string(request, "StreamName")?.to_owned();
    if world.kinesis_names.contains_key(&name) {
        return Err(AwsError::bad_request(
            "ResourceInUseException",
            format!("Stream {name} already exists"),
        ));
    }
    let count = request
        .get("ShardCount")
        .and_then(Value::as_u64)
        .unwrap_or(4) as usize;
    if count == 0 || count > 100_000 {
        return Err(AwsError::validation(format!(
            "ShardCount must be at least 1: {count}"
        )));
    }
    let arn = format!(
        "arn:aws:kinesis:{}:{}:stream/{name}",
        world.options.region, world.options.account
    );
    let mut shards = Vec::with_capacity(count);
    let width = MAX_HASH / count as u128;
    for i in 0..count {
        let start = width * i as u128;
        let end = if i + 1 == count {
            MAX_HASH
        } else {
            width * (i as u128 + 1) - 1
        };
        let seq = world.seq();
        shards.push(Shard::new(shard_id(i), Vec::new(), (start, end), seq));
    }
    world.streams.insert(
        arn.clone(),
        Stream {
            arn: arn.clone(),
            created_ms: now_ms(),
            shards,
            kind: StreamKind::Kinesis {
                name: name.clone(),
                retention_hours: 24,
            },
        },
    );
    world.kinesis_names.insert(name, arn);
    reply(json!({}))
}

fn list_shards(world: &mut World, request: &Value) -> Result<Vec<u8>, AwsError> {
    if request.get("ShardFilter").is_some() {
        return Err(AwsError::validation(
            "ShardFilter is not supported by the source fake",
        ));
    }
    let max = request
        .get("MaxResults")
        .and_then(Value::as_u64)
        .unwrap_or(1000);
    if !(1..=10_000).contains(&max) {
        return Err(AwsError::validation(format!(
            "MaxResults must be 1 to 10000: {max}"
        )));
    }
    let (arn, from) = match request.get("NextToken").and_then(Value::as_str) {
        Some(token) => {
            if request.get("StreamName").is_some() || request.get("StreamARN").is_some() {
                return Err(AwsError::bad_request(
                    "InvalidArgumentException",
                    "NextToken and StreamName cannot be provided together.",
                ));
            }
            let plain = base64::engine::general_purpose::STANDARD
                .decode(token)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    AwsError::bad_request("InvalidArgumentException", "Invalid NextToken")
                })?;
            let (arn, from) = plain
                .rsplit_once('|')
                .and_then(|(a, f)| Some((a.to_owned(), f.parse::<usize>().ok()?)))
                .ok_or_else(|| {
                    AwsError::bad_request("InvalidArgumentException", "Invalid NextToken")
                })?;
            (arn, from)
        }
        None => {
            let arn = stream_arn(world, request)?;
            let s = kinesis_stream(world, &arn)?;
            let from = match request.get("ExclusiveStartShardId").and_then(Value::as_str) {
                Some(id) => s
                    .shards
                    .iter()
                    .position(|sh| sh.id.as_str() > id)
                    .unwrap_or(s.shards.len()),
                None => 0,
            };
            (arn, from)
        }
    };
    let s = kinesis_stream(world, &arn)?;
    let end = from.saturating_add(max as usize).min(s.shards.len());
    let page: Vec<Value> = s.shards[from.min(end)..end]
        .iter()
        .map(shard_json)
        .collect();
    let mut out = json!({ "Shards": page });
    if end < s.shards.len() {
        out["NextToken"] =
            json!(base64::engine::general_purpose::STANDARD.encode(format!("{arn}|{end}")));
    }
    reply(out)
}

fn get_shard_iterator(world: &mut World, request: &Value) -> Result<Vec<u8>, AwsError> {
    let arn = stream_arn(world, request)?;
    let shard_id = string(request, "ShardId")?;
    let s = kinesis_stream(world, &arn)?;
    let (index, shard) = s
        .shards
        .iter()
        .enumerate()
        .find(|(_, sh)| sh.id == shard_id)
        .ok_or_else(|| {
            AwsError::not_found(format!(
                "Shard {shard_id} in stream {arn} under account {} does not exist",
                world.options.account
            ))
        })?;
    let invalid = |why: String| AwsError::bad_request("InvalidArgumentException", why);
    let position = match string(request, "ShardIteratorType")? {
        "TRIM_HORIZON" => 0,
        "LATEST" => shard.records.len(),
        kind @ ("AT_SEQUENCE_NUMBER" | "AFTER_SEQUENCE_NUMBER") => {
            let text = string(request, "StartingSequenceNumber")?;
            let seq = parse_sequence(text).ok_or_else(|| {
                invalid(format!(
                    "StartingSequenceNumber {text} is not a sequence number of this stream"
                ))
            })?;
            if !shard.owns_sequence(seq) {
                return Err(invalid(format!("StartingSequenceNumber {text} used in GetShardIterator on shard {shard_id} in stream {arn} is invalid because it did not come from this stream.")));
            }
            shard.position_of(seq, kind == "AFTER_SEQUENCE_NUMBER")
        }
        "AT_TIMESTAMP" => {
            let t = request
                .get("Timestamp")
                .and_then(Value::as_f64)
                .ok_or_else(|| invalid("Timestamp is required with AT_TIMESTAMP".into()))?;
            shard.position_at_time((t * 1000.0) as u64)
        }
        other => return Err(invalid(format!("Invalid ShardIteratorType: {other}"))),
    };
    let it = Iterator {
        stream: arn,
        shard: index,
        position,
        issued_ms: now_ms(),
    };
    reply(json!({ "ShardIterator": it.encode() }))
}

fn get_records(world: &mut World, it: &Iterator, request: &Value) -> Result<Vec<u8>, AwsError> {
    let limit = request
        .get("Limit")
        .and_then(Value::as_u64)
        .unwrap_or(10_000);
    if !(1..=10_000).contains(&limit) {
        return Err(AwsError::bad_request(
            "InvalidArgumentException",
            format!("Limit must be 1 to 10000: {limit}"),
        ));
    }
    let now = now_ms();
    if now.saturating_sub(it.issued_ms) > world.options.kinesis_iterator_ttl.as_millis() as u64 {
        return Err(AwsError::bad_request("ExpiredIteratorException", format!("Iterator expired. The iterator was created at time {} while right now it is {now} which is further in the future than the tolerated delay.", it.issued_ms)));
    }
    let read_limits = world.options.kinesis_read_limits;
    let s = kinesis_stream(world, &it.stream)?;
    let arn = s.arn.clone();
    let shard = s
        .shards
        .get(it.shard)
        .ok_or_else(|| AwsError::not_found("Shard does not exist"))?;
    if read_limits
        && shard
            .recent_reads
            .iter()
            .filter(|t| now.saturating_sub(**t) < 1000)
            .count()
            >= 5
    {
        return Err(AwsError::bad_request(
            "ProvisionedThroughputExceededException",
            "Rate exceeded for shard: more than 5 GetRecords calls in a second.",
        ));
    }
    let page = shards::read(shard, it.position, limit as usize, 10 * 1024 * 1024);
    let mut body = Vec::with_capacity(page.records.len() + 300);
    body.extend_from_slice(b"{\"Records\":[");
    body.extend_from_slice(&page.records);
    body.extend_from_slice(
        format!("],\"MillisBehindLatest\":{}", page.millis_behind_latest).as_bytes(),
    );
    match page.next {
        Some(next) => {
            let next = Iterator {
                stream: arn.clone(),
                shard: it.shard,
                position: next,
                issued_ms: now,
            };
            body.extend_from_slice(
                format!(",\"NextShardIterator\":\"{}\"", next.encode()).as_bytes(),
            );
        }
        None => {
            body.extend_from_slice(
                format!(",\"ChildShards\":{}", child_shards(s, &shard.id)).as_bytes(),
            );
        }
    }
    body.push(b'}');
    let shard = &mut world.streams.get_mut(&arn).unwrap().shards[it.shard];
    shard.get_records_calls += 1;
    if read_limits {
        shard.recent_reads.push_back(now);
        while shard.recent_reads.len() > 5 {
            shard.recent_reads.pop_front();
        }
    }
    Ok(body)
}

/// The `ChildShards` of a closed shard read to its end (GetRecords, fan-out events).
pub(crate) fn child_shards(stream: &Stream, parent: &str) -> Value {
    Value::Array(
        stream
            .shards
            .iter()
            .filter(|c| c.parents.iter().any(|p| p == parent))
            .map(|c| json!({
                "ShardId": c.id,
                "ParentShards": c.parents,
                "HashKeyRange": {"StartingHashKey": c.hash_range.0.to_string(), "EndingHashKey": c.hash_range.1.to_string()},
            }))
            .collect(),
    )
}

fn hash_key(partition_key: &str, explicit: Option<&str>) -> Result<u128, AwsError> {
    match explicit {
        Some(text) => text.parse().map_err(|_| {
            AwsError::bad_request(
                "InvalidArgumentException",
                format!("ExplicitHashKey {text} is not a 128-bit number"),
            )
        }),
        None => {
            let digest = Md5::digest(partition_key.as_bytes());
            Ok(u128::from_be_bytes(digest.into()))
        }
    }
}

pub(crate) fn put(
    world: &mut World,
    name: &str,
    partition_key: &str,
    explicit: Option<&str>,
    data: &[u8],
) -> Result<(String, u128), AwsError> {
    let arn = world
        .kinesis_names
        .get(name)
        .cloned()
        .ok_or_else(|| AwsError::not_found(format!("Stream {name} not found.")))?;
    put_arn(world, &arn, partition_key, explicit, data)
}

fn put_arn(
    world: &mut World,
    arn: &str,
    partition_key: &str,
    explicit: Option<&str>,
    data: &[u8],
) -> Result<(String, u128), AwsError> {
    if partition_key.is_empty() || partition_key.len() > 256 {
        return Err(AwsError::validation(
            "PartitionKey must be 1 to 256 characters",
        ));
    }
    if data.len() > 1024 * 1024 {
        return Err(AwsError::validation("Data is larger than 1 MiB"));
    }
    let hash = hash_key(partition_key, explicit)?;
    kinesis_stream(world, arn)?;
    let seq = world.seq();
    let s = world.streams.get_mut(arn).unwrap();
    let shard = s
        .shards
        .iter_mut()
        .find(|sh| sh.is_open() && sh.hash_range.0 <= hash && hash <= sh.hash_range.1)
        .ok_or_else(|| AwsError::new(500, "InternalFailure", "no open shard owns the hash key"))?;
    let now = now_ms();
    let body = json!({
        "SequenceNumber": sequence_text(seq),
        "ApproximateArrivalTimestamp": now as f64 / 1000.0,
        "Data": base64::engine::general_purpose::STANDARD.encode(data),
        "PartitionKey": partition_key,
    });
    let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    shard.records.push(Stored {
        seq,
        arrival_ms: now,
        size: data.len() + partition_key.len(),
        body,
    });
    Ok((shard.id.clone(), seq))
}

fn open_shard(world: &World, arn: &str, id: &str) -> Result<usize, AwsError> {
    let s = kinesis_stream(world, arn)?;
    match s.shards.iter().position(|sh| sh.id == id) {
        Some(i) if s.shards[i].is_open() => Ok(i),
        Some(_) => Err(AwsError::bad_request(
            "ResourceInUseException",
            format!("Shard {id} is closed"),
        )),
        None => Err(AwsError::not_found(format!("Shard {id} does not exist"))),
    }
}

fn split_shard(world: &mut World, request: &Value) -> Result<Vec<u8>, AwsError> {
    let arn = stream_arn(world, request)?;
    let i = open_shard(world, &arn, string(request, "ShardToSplit")?)?;
    let text = string(request, "NewStartingHashKey")?;
    let at: u128 = text.parse().map_err(|_| {
        AwsError::bad_request(
            "InvalidArgumentException",
            format!("NewStartingHashKey {text} is not a number"),
        )
    })?;
    let (lo, hi) = world.streams[&arn].shards[i].hash_range;
    if at <= lo || at > hi {
        return Err(AwsError::bad_request(
            "InvalidArgumentException",
            format!("NewStartingHashKey {at} is not inside the shard's range {lo}..{hi}"),
        ));
    }
    let (a, b) = (world.seq(), world.seq());
    let s = world.streams.get_mut(&arn).unwrap();
    s.shards[i].close();
    let parent = s.shards[i].id.clone();
    let n = s.shards.len();
    s.shards.push(Shard::new(
        shard_id(n),
        vec![parent.clone()],
        (lo, at - 1),
        a,
    ));
    s.shards
        .push(Shard::new(shard_id(n + 1), vec![parent], (at, hi), b));
    reply(json!({}))
}

fn merge_shards(world: &mut World, request: &Value) -> Result<Vec<u8>, AwsError> {
    let arn = stream_arn(world, request)?;
    let i = open_shard(world, &arn, string(request, "ShardToMerge")?)?;
    let j = open_shard(world, &arn, string(request, "AdjacentShardToMerge")?)?;
    let (x, y) = (
        world.streams[&arn].shards[i].hash_range,
        world.streams[&arn].shards[j].hash_range,
    );
    let range = if x.1.checked_add(1) == Some(y.0) {
        (x.0, y.1)
    } else if y.1.checked_add(1) == Some(x.0) {
        (y.0, x.1)
    } else {
        return Err(AwsError::bad_request(
            "InvalidArgumentException",
            "the shards to merge are not adjacent",
        ));
    };
    let seq = world.seq();
    let s = world.streams.get_mut(&arn).unwrap();
    s.shards[i].close();
    s.shards[j].close();
    let parents = vec![s.shards[i].id.clone(), s.shards[j].id.clone()];
    let n = s.shards.len();
    s.shards.push(Shard::new(shard_id(n), parents, range, seq));
    reply(json!({}))
}
