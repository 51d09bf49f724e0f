//! DynamoDB tables and their streams (DynamoDB Streams).

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::shards::{self, now_ms, Iterator, Shard, Stored};
use crate::{reply, string, AwsError, Stream, StreamKind, World};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamViewType {
    KeysOnly,
    NewImage,
    OldImage,
    NewAndOldImages,
}

impl StreamViewType {
    fn parse(s: &str) -> Result<StreamViewType, AwsError> {
        Ok(match s {
            "KEYS_ONLY" => StreamViewType::KeysOnly,
            "NEW_IMAGE" => StreamViewType::NewImage,
            "OLD_IMAGE" => StreamViewType::OldImage,
            "NEW_AND_OLD_IMAGES" => StreamViewType::NewAndOldImages,
            other => {
                return Err(AwsError::validation(format!(
                    "1 validation error detected: Value '{other}' at 'streamSpecification.streamViewType' failed to satisfy constraint"
                )))
            }
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            StreamViewType::KeysOnly => "KEYS_ONLY",
            StreamViewType::NewImage => "NEW_IMAGE",
            StreamViewType::OldImage => "OLD_IMAGE",
            StreamViewType::NewAndOldImages => "NEW_AND_OLD_IMAGES",
        }
    }
}

type Item = Map<String, Value>;

pub(crate) struct Table {
    name: String,
    arn: String,
    created_ms: u64,
    /// Key attribute names, the partition (HASH) key first.
    keys: Vec<String>,
    attribute_definitions: Value,
    /// Items in Scan order: by the hash of the partition key (which Segment/TotalSegments
    /// divide), then by the key's text.
    items: BTreeMap<(u64, String), Item>,
    bytes: usize,
    pub latest_stream: Option<String>,
}

impl Table {
    fn description(&self, world: &World) -> Value {
        let mut d = json!({
            "TableName": self.name,
            "TableArn": self.arn,
            "TableStatus": "ACTIVE",
            "CreationDateTime": self.created_ms as f64 / 1000.0,
            "KeySchema": self.keys.iter().enumerate().map(|(i, k)| json!({
                "AttributeName": k, "KeyType": if i == 0 { "HASH" } else { "RANGE" }
            })).collect::<Vec<_>>(),
            "AttributeDefinitions": self.attribute_definitions,
            "ItemCount": self.items.len(),
            "TableSizeBytes": self.bytes,
            "BillingModeSummary": {"BillingMode": "PAY_PER_REQUEST"},
            "ProvisionedThroughput": {"ReadCapacityUnits": 0, "WriteCapacityUnits": 0, "NumberOfDecreasesToday": 0},
        });
        if let Some(Stream {
            kind:
                StreamKind::Table {
                    label,
                    view,
                    enabled,
                    ..
                },
            arn,
            ..
        }) = self
            .latest_stream
            .as_ref()
            .and_then(|a| world.streams.get(a))
        {
            d["LatestStreamArn"] = json!(arn);
            d["LatestStreamLabel"] = json!(label);
            d["StreamSpecification"] = if *enabled {
                json!({"StreamEnabled": true, "StreamViewType": view.as_str()})
            } else {
                json!({"StreamEnabled": false})
            };
        }
        d
    }

    /// The item's key: its Scan position and the key attributes alone.
    fn key_of(&self, item: &Item) -> Result<((u64, String), Item), AwsError> {
        let mut key = Map::new();
        for k in &self.keys {
            let v = item.get(k).ok_or_else(|| {
                AwsError::validation(format!(
                    "One or more parameter values were invalid: Missing the key {k} in the item"
                ))
            })?;
            let scalar = v
                .as_object()
                .filter(|o| o.len() == 1 && ["S", "N", "B"].iter().any(|t| o.contains_key(*t)));
            if scalar.is_none() {
                return Err(AwsError::validation(format!(
                    "One or more parameter values were invalid: key attribute {k} must be a string, number or binary: {v}"
                )));
            }
            key.insert(k.clone(), v.clone());
        }
        let hash_text = key[&self.keys[0]].to_string();
        let text = Value::Object(key.clone()).to_string();
        Ok(((spread(fnv1a(hash_text.as_bytes())), text), key))
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A bijective mix, so that keys which differ in one character land far apart.
fn spread(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The first key hash of `segment` out of `total`: segments split the hash space evenly.
fn segment_start(segment: u64, total: u64) -> Option<u64> {
    let start = ((u128::from(segment) << 64) + u128::from(total) - 1) / u128::from(total);
    u64::try_from(start).ok()
}

/// An item's size as DynamoDB counts it: attribute names plus values (strings as UTF-8,
/// numbers about one byte per two digits plus one, binaries raw, 3 bytes plus one per element
/// for lists and maps).
fn item_size(item: &Item) -> usize {
    item.iter()
        .map(|(name, v)| name.len() + value_size(v))
        .sum()
}

fn value_size(v: &Value) -> usize {
    let Some((kind, v)) = v.as_object().and_then(|o| o.iter().next()) else {
        return 1;
    };
    let number = |n: &Value| {
        n.as_str()
            .map_or(1, |n| n.trim_start_matches('-').len().div_ceil(2) + 1)
    };
    let string = |s: &Value| s.as_str().map_or(0, str::len);
    let binary = |b: &Value| b.as_str().map_or(0, |b| b.len() * 3 / 4);
    let each = |f: &dyn Fn(&Value) -> usize| v.as_array().map_or(0, |a| a.iter().map(f).sum());
    match kind.as_str() {
        "S" => string(v),
        "N" => number(v),
        "B" => binary(v),
        "SS" => each(&string),
        "NS" => each(&number),
        "BS" => each(&binary),
        "L" => {
            3 + v
                .as_array()
                .map_or(0, |a| a.iter().map(|e| 1 + value_size(e)).sum())
        }
        "M" => {
            3 + v.as_object().map_or(0, |m| {
                m.iter().map(|(k, e)| 1 + k.len() + value_size(e)).sum()
            })
        }
        _ => 1,
    }
}

fn table<'a>(world: &'a World, name: &str) -> Result<&'a Table, AwsError> {
    world.tables.get(name).ok_or_else(|| {
        AwsError::not_found(format!(
            "Requested resource not found: Table: {name} not found"
        ))
    })
}

fn object<'a>(request: &'a Value, member: &str) -> Result<&'a Item, AwsError> {
    request
        .get(member)
        .and_then(Value::as_object)
        .ok_or_else(|| AwsError::validation(format!("{member} is required")))
}

fn refuse_unsupported(request: &Value, members: &[&str]) -> Result<(), AwsError> {
    for m in members {
        if request.get(*m).is_some() {
            return Err(AwsError::validation(format!(
                "{m} is not supported by the source fake"
            )));
        }
    }
    Ok(())
}

pub(crate) fn table_call(
    world: &mut World,
    operation: &str,
    request: &Value,
) -> Result<Vec<u8>, AwsError> {
    world.check_fault(operation, None)?;
    match operation {
        "CreateTable" => create_table(world, request),
        "UpdateTable" => update_table(world, request),
        "DescribeTable" => {
            let t = table(world, string(request, "TableName")?)?;
            reply(json!({ "Table": t.description(world) }))
        }
        "DeleteTable" => {
            let name = string(request, "TableName")?.to_owned();
            let t = table(world, &name)?;
            let description = t.description(world);
            set_stream(world, &name, None)?;
            world.tables.remove(&name);
            reply(json!({ "TableDescription": description }))
        }
        "ListTables" => reply(json!({ "TableNames": world.tables.keys().collect::<Vec<_>>() })),
        "PutItem" => {
            refuse_unsupported(request, &["ConditionExpression", "Expected"])?;
            let name = string(request, "TableName")?;
            let old = put(world, name, object(request, "Item")?.clone())?;
            reply(return_values(request, old))
        }
        "DeleteItem" => {
            refuse_unsupported(request, &["ConditionExpression", "Expected"])?;
            let name = string(request, "TableName")?;
            let old = delete(world, name, object(request, "Key")?)?;
            reply(return_values(request, old))
        }
        "UpdateItem" => update_item(world, request),
        "GetItem" => {
            refuse_unsupported(request, &["ProjectionExpression", "AttributesToGet"])?;
            let t = table(world, string(request, "TableName")?)?;
            let key = object(request, "Key")?;
            let (position, _) = t.key_of(key)?;
            reply(match t.items.get(&position) {
                Some(item) => json!({ "Item": item }),
                None => json!({}),
            })
        }
        "BatchWriteItem" => batch_write(world, request),
        "Scan" => scan(world, request),
        other => Err(AwsError::bad_request(
            "UnknownOperationException",
            format!("the source fake does not serve DynamoDB {other}"),
        )),
    }
}

fn return_values(request: &Value, old: Option<Item>) -> Value {
    match (request.get("ReturnValues").and_then(Value::as_str), old) {
        (Some("ALL_OLD"), Some(old)) => json!({ "Attributes": old }),
        _ => json!({}),
    }
}

fn create_table(world: &mut World, request: &Value) -> Result<Vec<u8>, AwsError> {
    refuse_unsupported(
        request,
        &["GlobalSecondaryIndexes", "LocalSecondaryIndexes"],
    )?;
    let name = string(request, "TableName")?.to_owned();
    if world.tables.contains_key(&name) {
        return Err(AwsError::bad_request(
            "ResourceInUseException",
            format!("Table already exists: {name}"),
        ));
    }
    let schema = request
        .get("KeySchema")
        .and_then(Value::as_array)
        .ok_or_else(|| AwsError::validation("KeySchema is required"))?;
    let key_named = |kind: &str| {
        schema
            .iter()
            .find(|k| k["KeyType"] == kind)
            .and_then(|k| k["AttributeName"].as_str())
            .map(str::to_owned)
    };
    let mut keys =
        vec![key_named("HASH").ok_or_else(|| AwsError::validation("KeySchema needs a HASH key"))?];
    keys.extend(key_named("RANGE"));
    let t = Table {
        arn: format!(
            "arn:aws:dynamodb:{}:{}:table/{name}",
            world.options.region, world.options.account
        ),
        name: name.clone(),
        created_ms: now_ms(),
        keys,
        attribute_definitions: request
            .get("AttributeDefinitions")
            .cloned()
            .unwrap_or(json!([])),
        items: BTreeMap::new(),
        bytes: 0,
        latest_stream: None,
    };
    world.tables.insert(name.clone(), t);
    if let Some(spec) = request.get("StreamSpecification") {
        stream_specification(world, &name, spec)?;
    }
    let description = table(world, &name)?.description(world);
    reply(json!({ "TableDescription": description }))
}

fn update_table(world: &mut World, request: &Value) -> Result<Vec<u8>, AwsError> {
    let name = string(request, "TableName")?.to_owned();
    table(world, &name)?;
    if let Some(spec) = request.get("StreamSpecification") {
        stream_specification(world, &name, spec)?;
    }
    let description = table(world, &name)?.description(world);
    reply(json!({ "TableDescription": description }))
}

fn stream_specification(world: &mut World, name: &str, spec: &Value) -> Result<(), AwsError> {
    if spec["StreamEnabled"].as_bool() == Some(true) {
        let view = StreamViewType::parse(spec["StreamViewType"].as_str().unwrap_or(""))?;
        set_stream(world, name, Some(view))
    } else {
        set_stream(world, name, None)
    }
}

/// Enables a new stream (a new ARN and label) or disables the current one (its shards close).
fn set_stream(world: &mut World, name: &str, view: Option<StreamViewType>) -> Result<(), AwsError> {
    let current = world.tables[name].latest_stream.clone();
    let enabled = current.as_ref().is_some_and(|arn| {
        matches!(
            world.streams[arn].kind,
            StreamKind::Table { enabled: true, .. }
        )
    });
    match view {
        Some(_) if enabled => Err(AwsError::validation(format!(
            "Table already has an enabled stream: {}",
            current.unwrap_or_default()
        ))),
        Some(view) => {
            let mut ms = now_ms();
            let label = loop {
                let label = label(ms);
                let arn = format!("{}/stream/{label}", world.tables[name].arn);
                if !world.streams.contains_key(&arn) {
                    break label;
                }
                ms += 1;
            };
            let arn = format!("{}/stream/{label}", world.tables[name].arn);
            let mut stream = Stream {
                arn: arn.clone(),
                created_ms: ms,
                shards: Vec::new(),
                kind: StreamKind::Table {
                    table: name.to_owned(),
                    label,
                    view,
                    enabled: true,
                },
            };
            for i in 0..world.options.stream_shards.max(1) {
                let seq = world.seq();
                stream
                    .shards
                    .push(Shard::new(shard_id(ms, i), Vec::new(), (0, 0), seq));
            }
            world.streams.insert(arn.clone(), stream);
            world.tables.get_mut(name).unwrap().latest_stream = Some(arn);
            Ok(())
        }
        None => {
            if let Some(arn) = current {
                let stream = world.streams.get_mut(&arn).unwrap();
                if let StreamKind::Table { enabled, .. } = &mut stream.kind {
                    *enabled = false;
                }
                stream.shards.iter_mut().for_each(Shard::close);
            }
            Ok(())
        }
    }
}

fn shard_id(ms: u64, i: usize) -> String {
    format!(
        "shardId-{ms:020}-{:08x}",
        (i as u32).wrapping_mul(0x9e37_79b9) ^ 0x5bd1_e995
    )
}

/// `2026-12-01T20:40:11.123`: the stream label's form.
fn label(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let (h, m, s) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    // civil from days (H. Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{:03}",
        ms % 1000
    )
}

/// Writes `item`, returning the item it replaced; a change becomes a stream record.
pub(crate) fn put(world: &mut World, name: &str, item: Item) -> Result<Option<Item>, AwsError> {
    let t = table(world, name)?;
    let (position, key) = t.key_of(&item)?;
    let t = world.tables.get_mut(name).unwrap();
    t.bytes += item_size(&item);
    let old = t.items.insert(position.clone(), item.clone());
    if let Some(old) = &old {
        t.bytes -= item_size(old);
    }
    if old.as_ref() != Some(&item) {
        let event = if old.is_some() { "MODIFY" } else { "INSERT" };
        record(world, name, position.0, event, key, old.clone(), Some(item));
    }
    Ok(old)
}

fn delete(world: &mut World, name: &str, key: &Item) -> Result<Option<Item>, AwsError> {
    let t = table(world, name)?;
    let (position, key) = t.key_of(key)?;
    let t = world.tables.get_mut(name).unwrap();
    let old = t.items.remove(&position);
    if let Some(old) = &old {
        t.bytes -= item_size(old);
        record(
            world,
            name,
            position.0,
            "REMOVE",
            key,
            Some(old.clone()),
            None,
        );
    }
    Ok(old)
}

fn update_item(world: &mut World, request: &Value) -> Result<Vec<u8>, AwsError> {
    refuse_unsupported(
        request,
        &["ConditionExpression", "Expected", "AttributeUpdates"],
    )?;
    let name = string(request, "TableName")?;
    let key = object(request, "Key")?;
    if let Some(r @ ("UPDATED_NEW" | "UPDATED_OLD")) =
        request.get("ReturnValues").and_then(Value::as_str)
    {
        return Err(AwsError::validation(format!(
            "ReturnValues {r} is not supported by the source fake"
        )));
    }
    let t = table(world, name)?;
    let (position, key) = t.key_of(key)?;
    let old = t.items.get(&position).cloned();
    let mut item = old.clone().unwrap_or_else(|| key.clone());
    crate::update::apply(
        &mut item,
        &t.keys,
        string(request, "UpdateExpression")?,
        request
            .get("ExpressionAttributeNames")
            .and_then(Value::as_object),
        request
            .get("ExpressionAttributeValues")
            .and_then(Value::as_object),
    )?;
    put(world, name, item.clone())?;
    reply(match request.get("ReturnValues").and_then(Value::as_str) {
        Some("ALL_NEW") => json!({ "Attributes": item }),
        Some("ALL_OLD") => old.map_or(json!({}), |o| json!({ "Attributes": o })),
        _ => json!({}),
    })
}

fn batch_write(world: &mut World, request: &Value) -> Result<Vec<u8>, AwsError> {
    let requests = object(request, "RequestItems")?;
    let count: usize = requests
        .values()
        .map(|v| v.as_array().map_or(0, Vec::len))
        .sum();
    if count == 0 || count > 25 {
        return Err(AwsError::validation(format!(
            "Too many items requested for the BatchWriteItem call: {count} (1 to 25)"
        )));
    }
    for (name, writes) in requests {
        table(world, name)?;
        for w in writes.as_array().into_iter().flatten() {
            if let Some(item) = w.pointer("/PutRequest/Item").and_then(Value::as_object) {
                put(world, name, item.clone())?;
            } else if let Some(key) = w.pointer("/DeleteRequest/Key").and_then(Value::as_object) {
                delete(world, name, key)?;
            } else {
                return Err(AwsError::validation(format!(
                    "a write request is neither PutRequest nor DeleteRequest: {w}"
                )));
            }
        }
    }
    reply(json!({ "UnprocessedItems": {} }))
}

/// One page of a (parallel) Scan: at most `Limit` items and 1 MB, in hash order within the
/// segment; `LastEvaluatedKey` whenever the page stopped early.
fn scan(world: &mut World, request: &Value) -> Result<Vec<u8>, AwsError> {
    refuse_unsupported(
        request,
        &[
            "FilterExpression",
            "ScanFilter",
            "ProjectionExpression",
            "AttributesToGet",
            "IndexName",
            "Select",
        ],
    )?;
    let t = table(world, string(request, "TableName")?)?;
    let segment = request.get("Segment").and_then(Value::as_u64);
    let total = request.get("TotalSegments").and_then(Value::as_u64);
    let (low, high) = match (segment, total) {
        (None, None) => (0, None),
        (Some(s), Some(n)) if n >= 1 && n <= 1_000_000 && s < n => (
            segment_start(s, n).unwrap_or(u64::MAX),
            segment_start(s + 1, n),
        ),
        _ => {
            return Err(AwsError::validation(format!(
                "Segment and TotalSegments must be given together, with 0 <= Segment < TotalSegments <= 1000000: {segment:?} of {total:?}"
            )))
        }
    };
    let limit = match request.get("Limit").and_then(Value::as_u64) {
        Some(0) => return Err(AwsError::validation("Limit must be at least 1")),
        Some(n) => n as usize,
        None => usize::MAX,
    };
    let start = match request.get("ExclusiveStartKey").and_then(Value::as_object) {
        Some(k) => {
            let (position, _) = t.key_of(k)?;
            if position.0 < low || high.is_some_and(|h| position.0 >= h) {
                return Err(AwsError::validation(
                    "The provided Starting Key is invalid: it is not in this segment",
                ));
            }
            Bound::Excluded(position)
        }
        None => Bound::Included((low, String::new())),
    };
    let end = high.map_or(Bound::Unbounded, |h| Bound::Excluded((h, String::new())));
    let mut items = Vec::new();
    let mut bytes = 0;
    let mut last_evaluated = None;
    for ((_, text), item) in t.items.range((start, end)) {
        bytes += item_size(item);
        items.push(item);
        // as the service: a page that stops at Limit or 1 MB names its last key, even when
        // nothing follows (the next call then answers an empty page without one)
        if items.len() >= limit || bytes >= 1024 * 1024 {
            last_evaluated = Some(text);
            break;
        }
    }
    let wait = world.options.scan_time_per_item * items.len() as u32;
    let mut out = json!({ "Items": items, "Count": items.len(), "ScannedCount": items.len() });
    if let Some(text) = last_evaluated {
        out["LastEvaluatedKey"] = serde_json::from_str(text).unwrap_or(json!({}));
    }
    if matches!(
        request
            .get("ReturnConsumedCapacity")
            .and_then(Value::as_str),
        Some("TOTAL" | "INDEXES")
    ) {
        let consistent = request.get("ConsistentRead").and_then(Value::as_bool) == Some(true);
        let units = (bytes.div_ceil(4096).max(1)) as f64 * if consistent { 1.0 } else { 0.5 };
        out["ConsumedCapacity"] = json!({ "TableName": t.name, "CapacityUnits": units });
    }
    let answer = reply(out);
    world.answer_after = wait;
    answer
}

/// Appends the stream record of one change to the shard the key hashes to.
fn record(
    world: &mut World,
    name: &str,
    key_hash: u64,
    event: &str,
    keys: Item,
    old: Option<Item>,
    new: Option<Item>,
) {
    let Some(arn) = world.tables[name].latest_stream.clone() else {
        return;
    };
    let view = match world.streams[&arn].kind {
        StreamKind::Table {
            enabled: true,
            view,
            ..
        } => view,
        _ => return,
    };
    let seq = world.seq();
    let region = world.options.region.clone();
    let stream = world.streams.get_mut(&arn).unwrap();
    let open: Vec<usize> = (0..stream.shards.len())
        .filter(|i| stream.shards[*i].is_open())
        .collect();
    let Some(&shard) = open.get((key_hash % open.len().max(1) as u64) as usize) else {
        return;
    };
    let now = now_ms();
    let mut dynamodb = json!({
        "ApproximateCreationDateTime": now / 1000,
        "Keys": keys,
        "SequenceNumber": seq.to_string(),
        "StreamViewType": view.as_str(),
    });
    if matches!(
        view,
        StreamViewType::NewImage | StreamViewType::NewAndOldImages
    ) {
        if let Some(new) = new {
            dynamodb["NewImage"] = Value::Object(new);
        }
    }
    if matches!(
        view,
        StreamViewType::OldImage | StreamViewType::NewAndOldImages
    ) {
        if let Some(old) = old {
            dynamodb["OldImage"] = Value::Object(old);
        }
    }
    let size: usize = ["Keys", "NewImage", "OldImage"]
        .iter()
        .filter_map(|k| dynamodb.get(*k).and_then(Value::as_object))
        .map(item_size)
        .sum();
    dynamodb["SizeBytes"] = json!(size);
    let body = json!({
        "eventID": format!("{seq:x}"),
        "eventName": event,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": region,
        "dynamodb": dynamodb,
    });
    let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    stream.shards[shard].records.push(Stored {
        seq,
        arrival_ms: now,
        size: body.len(),
        body,
    });
}

pub(crate) fn roll_shards(world: &mut World, name: &str) -> Result<Vec<String>, AwsError> {
    let arn = table(world, name)?
        .latest_stream
        .clone()
        .ok_or_else(|| AwsError::validation(format!("table {name} has no stream")))?;
    let open: Vec<usize> = world.streams[&arn]
        .shards
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_open())
        .map(|(i, _)| i)
        .collect();
    let ms = now_ms();
    let mut children = Vec::new();
    for i in open {
        let seq = world.seq();
        let stream = world.streams.get_mut(&arn).unwrap();
        stream.shards[i].close();
        let parent = stream.shards[i].id.clone();
        let id = shard_id(ms, stream.shards.len());
        stream
            .shards
            .push(Shard::new(id.clone(), vec![parent], (0, 0), seq));
        children.push(id);
    }
    Ok(children)
}

pub(crate) fn stream_call(
    world: &mut World,
    operation: &str,
    request: &Value,
) -> Result<Vec<u8>, AwsError> {
    let shard_named = request.get("ShardId").and_then(Value::as_str);
    match operation {
        "GetRecords" => {
            let it = Iterator::decode(string(request, "ShardIterator")?, "ValidationException")?;
            let shard = world
                .streams
                .get(&it.stream)
                .and_then(|s| s.shards.get(it.shard))
                .map(|s| s.id.clone());
            world.check_fault(operation, shard.as_deref())?;
            get_records(world, &it, request)
        }
        _ => {
            world.check_fault(operation, shard_named)?;
            match operation {
                "DescribeStream" => describe_stream(world, request),
                "ListStreams" => {
                    let table_name = request.get("TableName").and_then(Value::as_str);
                    let mut streams: Vec<_> = world
                        .streams
                        .values()
                        .filter_map(|s| match &s.kind {
                            StreamKind::Table { table, label, .. }
                                if table_name.is_none_or(|n| n == table) =>
                            {
                                Some((s.created_ms, json!({"StreamArn": s.arn, "TableName": table, "StreamLabel": label})))
                            }
                            _ => None,
                        })
                        .collect();
                    streams.sort_by_key(|(ms, _)| *ms);
                    reply(
                        json!({ "Streams": streams.into_iter().map(|(_, s)| s).collect::<Vec<_>>() }),
                    )
                }
                "GetShardIterator" => get_shard_iterator(world, request),
                other => Err(AwsError::bad_request(
                    "UnknownOperationException",
                    format!("the source fake does not serve DynamoDB Streams {other}"),
                )),
            }
        }
    }
}

fn table_stream<'a>(world: &'a World, arn: &str) -> Result<&'a Stream, AwsError> {
    match world.streams.get(arn) {
        Some(
            s @ Stream {
                kind: StreamKind::Table { .. },
                ..
            },
        ) => Ok(s),
        _ => Err(AwsError::not_found(format!(
            "Requested resource not found: Stream: {arn} not found"
        ))),
    }
}

fn describe_stream(world: &mut World, request: &Value) -> Result<Vec<u8>, AwsError> {
    let arn = string(request, "StreamArn")?;
    let stream = table_stream(world, arn)?;
    let StreamKind::Table {
        table: name,
        label,
        view,
        enabled,
    } = &stream.kind
    else {
        unreachable!("table_stream returns table streams")
    };
    refuse_unsupported(request, &["ShardFilter"])?;
    let limit = request.get("Limit").and_then(Value::as_u64).unwrap_or(100);
    if !(1..=100).contains(&limit) {
        return Err(AwsError::validation(format!(
            "1 validation error detected: Value '{limit}' at 'limit' failed to satisfy constraint: Member must have value between 1 and 100"
        )));
    }
    let limit = limit as usize;
    let from = shards::page_start(
        &stream.shards,
        request.get("ExclusiveStartShardId").and_then(Value::as_str),
    );
    let page: Vec<Value> = stream.shards[from.min(stream.shards.len())..]
        .iter()
        .take(limit)
        .map(|s| {
            let mut range = json!({ "StartingSequenceNumber": s.starting_seq.to_string() });
            if let Some(end) = s.ending_seq {
                range["EndingSequenceNumber"] = json!(end.to_string());
            }
            let mut shard = json!({ "ShardId": s.id, "SequenceNumberRange": range });
            if let Some(p) = s.parents.first() {
                shard["ParentShardId"] = json!(p);
            }
            shard
        })
        .collect();
    let keys = world.tables.get(name).map_or(json!([]), |t| {
        json!(t
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| json!({
                "AttributeName": k, "KeyType": if i == 0 { "HASH" } else { "RANGE" }
            }))
            .collect::<Vec<_>>())
    });
    let mut description = json!({
        "StreamArn": stream.arn,
        "StreamLabel": label,
        "StreamStatus": if *enabled { "ENABLED" } else { "DISABLED" },
        "StreamViewType": view.as_str(),
        "CreationRequestDateTime": stream.created_ms as f64 / 1000.0,
        "TableName": name,
        "KeySchema": keys,
        "Shards": page,
    });
    if from + limit < stream.shards.len() {
        description["LastEvaluatedShardId"] = json!(stream.shards[from + limit - 1].id);
    }
    reply(json!({ "StreamDescription": description }))
}

fn sequence(request: &Value) -> Result<u128, AwsError> {
    let text = string(request, "SequenceNumber")?;
    text.parse()
        .map_err(|_| AwsError::validation(format!("Invalid SequenceNumber: {text}")))
}

fn get_shard_iterator(world: &mut World, request: &Value) -> Result<Vec<u8>, AwsError> {
    let arn = string(request, "StreamArn")?;
    let shard_id = string(request, "ShardId")?;
    let stream = table_stream(world, arn)?;
    let (index, shard) = stream
        .shards
        .iter()
        .enumerate()
        .find(|(_, s)| s.id == shard_id)
        .ok_or_else(|| {
            AwsError::not_found(format!(
                "Requested resource not found: Shard does not exist: {shard_id}"
            ))
        })?;
    let position = match string(request, "ShardIteratorType")? {
        "TRIM_HORIZON" => 0,
        "LATEST" => shard.records.len(),
        kind @ ("AT_SEQUENCE_NUMBER" | "AFTER_SEQUENCE_NUMBER") => {
            let seq = sequence(request)?;
            if !shard.owns_sequence(seq) {
                return Err(AwsError::validation(format!(
                    "Invalid SequenceNumber {seq} for shard {shard_id}: outside its range"
                )));
            }
            shard.position_of(seq, kind == "AFTER_SEQUENCE_NUMBER")
        }
        other => {
            return Err(AwsError::validation(format!(
                "Invalid ShardIteratorType: {other}"
            )))
        }
    };
    let it = Iterator {
        stream: arn.to_owned(),
        shard: index,
        position,
        issued_ms: now_ms(),
    };
    reply(json!({ "ShardIterator": it.encode() }))
}

fn get_records(world: &mut World, it: &Iterator, request: &Value) -> Result<Vec<u8>, AwsError> {
    let limit = request.get("Limit").and_then(Value::as_u64).unwrap_or(1000);
    if !(1..=1000).contains(&limit) {
        return Err(AwsError::validation(format!(
            "1 validation error detected: Value '{limit}' at 'limit' failed to satisfy constraint: Member must have value between 1 and 1000"
        )));
    }
    let ttl = world.options.streams_iterator_ttl.as_millis() as u64;
    if now_ms().saturating_sub(it.issued_ms) > ttl {
        return Err(AwsError::bad_request(
            "ExpiredIteratorException",
            "Iterator expired. The iterator was created more than 15 minutes ago.",
        ));
    }
    let stream = table_stream(world, &it.stream)?;
    let arn = stream.arn.clone();
    let shard = stream
        .shards
        .get(it.shard)
        .ok_or_else(|| AwsError::not_found("Requested resource not found: Shard does not exist"))?;
    let page = shards::read(shard, it.position, limit as usize, 1024 * 1024);
    let mut body = Vec::with_capacity(page.records.len() + 200);
    body.extend_from_slice(b"{\"Records\":[");
    body.extend_from_slice(&page.records);
    body.push(b']');
    if let Some(next) = page.next {
        let next = Iterator {
            stream: arn.clone(),
            shard: it.shard,
            position: next,
            issued_ms: now_ms(),
        };
        body.extend_from_slice(format!(",\"NextShardIterator\":\"{}\"", next.encode()).as_bytes());
    }
    body.push(b'}');
    world.streams.get_mut(&arn).unwrap().shards[it.shard].get_records_calls += 1;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_split_the_hash_space_without_gaps_or_overlaps() {
        for total in [1u64, 2, 3, 7, 1000] {
            assert_eq!(segment_start(0, total), Some(0));
            assert_eq!(segment_start(total, total), None);
            for s in 0..total.min(50) {
                assert!(segment_start(s, total) < segment_start(s + 1, total).or(Some(u64::MAX)));
            }
        }
    }

    #[test]
    fn a_label_reads_as_the_time_it_was_made() {
        assert_eq!(label(0), "1970-01-01T00:00:00.000");
        assert_eq!(label(1_795_811_211_123), "2026-11-27T20:26:51.123");
    }
}
