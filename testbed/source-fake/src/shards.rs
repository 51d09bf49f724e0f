//! A stream's shards as both services keep them: an append-only log per shard, closed with an
//! ending sequence number when the shard splits, merges or rolls over, read through iterators
//! that name a position and expire.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;

use crate::AwsError;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One record, already serialised as its service's JSON object: a GetRecords answer is the
/// concatenation of these, so serving records costs a copy, not an encoding.
pub(crate) struct Stored {
    pub seq: u128,
    pub arrival_ms: u64,
    pub body: Bytes,
    /// What counts against the answer's size limit.
    pub size: usize,
}

pub(crate) struct Shard {
    pub id: String,
    pub parents: Vec<String>,
    /// Kinesis: the hash keys this shard owns (inclusive). DynamoDB Streams: unused.
    pub hash_range: (u128, u128),
    pub starting_seq: u128,
    pub ending_seq: Option<u128>,
    pub records: Vec<Stored>,
    /// GetRecords calls answered for this shard (poll cost).
    pub get_records_calls: u64,
    /// Times of the last GetRecords calls, for the Kinesis per-shard read limit.
    pub recent_reads: std::collections::VecDeque<u64>,
}

impl Shard {
    pub fn new(id: String, parents: Vec<String>, hash_range: (u128, u128), seq: u128) -> Shard {
        Shard {
            id,
            parents,
            hash_range,
            starting_seq: seq,
            ending_seq: None,
            records: Vec::new(),
            get_records_calls: 0,
            recent_reads: Default::default(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.ending_seq.is_none()
    }

    /// Closes the shard: its ending sequence number is its last record's (or, empty, its start).
    pub fn close(&mut self) {
        if self.is_open() {
            self.ending_seq = Some(self.records.last().map_or(self.starting_seq, |r| r.seq));
        }
    }

    /// Index of the first record with a sequence number above (`after`) or at `seq`.
    pub fn position_of(&self, seq: u128, after: bool) -> usize {
        self.records
            .partition_point(|r| if after { r.seq <= seq } else { r.seq < seq })
    }

    pub fn position_at_time(&self, ms: u64) -> usize {
        self.records.partition_point(|r| r.arrival_ms < ms)
    }

    /// Whether `seq` names a position in this shard: its start, its end, or one of its
    /// records (sibling shards' sequence numbers interleave with its own, and are refused, as
    /// the services refuse them).
    pub fn owns_sequence(&self, seq: u128) -> bool {
        seq == self.starting_seq
            || self.ending_seq == Some(seq)
            || self.records.binary_search_by(|r| r.seq.cmp(&seq)).is_ok()
    }
}

/// Where a page of shards starts: after `exclusive_start` (DescribeStream's
/// ExclusiveStartShardId), or at the first shard.
pub(crate) fn page_start(shards: &[Shard], exclusive_start: Option<&str>) -> usize {
    exclusive_start
        .and_then(|id| shards.iter().position(|s| s.id == id))
        .map_or(0, |i| i + 1)
}

/// An iterator names a stream, a shard (by index), a position and the time it was issued.
pub(crate) struct Iterator {
    pub stream: String,
    pub shard: usize,
    pub position: usize,
    pub issued_ms: u64,
}

impl Iterator {
    pub fn encode(&self) -> String {
        let plain = format!(
            "{}|{}|{}|{}",
            self.stream, self.shard, self.position, self.issued_ms
        );
        base64::engine::general_purpose::STANDARD.encode(plain)
    }

    pub fn decode(text: &str, invalid: &str) -> Result<Iterator, AwsError> {
        let bad = || AwsError::bad_request(invalid, format!("Invalid ShardIterator: {text}"));
        let plain = base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(bad)?;
        let mut parts = plain.rsplitn(4, '|');
        let issued_ms = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let position = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let shard = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let stream = parts.next().ok_or_else(bad)?.to_owned();
        Ok(Iterator {
            stream,
            shard,
            position,
            issued_ms,
        })
    }
}

/// What a GetRecords call read from a shard.
pub(crate) struct Page {
    /// The records' JSON objects joined with commas.
    pub records: Vec<u8>,
    /// Where the next call starts; `None` once a closed shard is read to its end.
    pub next: Option<usize>,
    pub millis_behind_latest: u64,
}

/// Reads up to `limit` records or `max_bytes` (at least one record) from `position`.
pub(crate) fn read(shard: &Shard, position: usize, limit: usize, max_bytes: usize) -> Page {
    let mut records = Vec::new();
    let mut bytes = 0;
    let mut at = position.min(shard.records.len());
    let mut count = 0;
    while at < shard.records.len() && count < limit {
        let r = &shard.records[at];
        if count > 0 && bytes + r.size > max_bytes {
            break;
        }
        if count > 0 {
            records.push(b',');
        }
        records.extend_from_slice(&r.body);
        bytes += r.size;
        count += 1;
        at += 1;
    }
    let next = if !shard.is_open() && at >= shard.records.len() {
        None
    } else {
        Some(at)
    };
    let millis_behind_latest = shard
        .records
        .get(at)
        .map_or(0, |r| now_ms().saturating_sub(r.arrival_ms));
    Page {
        records,
        next,
        millis_behind_latest,
    }
}
