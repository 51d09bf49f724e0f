//! The DynamoDB lease backend: many hosts, the way KCL does it — every write a conditional
//! UpdateItem on one table (created if missing, on-demand billing). The table holds each shard's
//! lease *and* its checkpoint, so a fenced commit is one conditional write.
//!
//! Item: `stream` (partition key), `shard_id` (sort key), `owner`, `epoch`, `counter`,
//! `next_owner`; once the shard is started: `started`, `sequence_number`, `clock`, `finished`.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ScalarAttributeType, TableStatus,
};
use aws_sdk_dynamodb::Client;

use super::{FencedCheckpoint, Lease, LeaseError, LeaseTable};
use crate::ack::ShardId;
use crate::checkpoint::ShardCheckpoint;
use crate::config::Config;

#[derive(Clone)]
pub struct DynamoDbLeases {
    client: Client,
    table: String,
    stream: String,
    worker: String,
}

type Item = HashMap<String, AttributeValue>;

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}
fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn text(e: impl std::error::Error) -> LeaseError {
    LeaseError(aws_smithy_types::error::display::DisplayErrorContext(e).to_string())
}

/// `Ok(None)` when the condition failed (someone else changed the lease), `Err` otherwise.
fn conditional<T, E, R>(r: Result<T, SdkError<E, R>>) -> Result<Option<T>, LeaseError>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(None),
        Err(e) => Err(text(e)),
    }
}

fn lease_of(item: &Item) -> Option<Lease> {
    let get_s = |k: &str| match item.get(k) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    };
    let get_n = |k: &str| match item.get(k) {
        Some(AttributeValue::N(v)) => v.parse::<u64>().ok(),
        _ => None,
    };
    Some(Lease {
        shard: get_s("shard_id")?.into(),
        owner: get_s("owner"),
        epoch: get_n("epoch").unwrap_or(0),
        counter: get_n("counter").unwrap_or(0),
        next_owner: get_s("next_owner"),
        finished: matches!(item.get("finished"), Some(AttributeValue::Bool(true))),
    })
}

fn checkpoint_of(item: &Item) -> Option<ShardCheckpoint> {
    if !matches!(item.get("started"), Some(AttributeValue::Bool(true))) {
        return None;
    }
    Some(ShardCheckpoint {
        sequence_number: match item.get("sequence_number") {
            Some(AttributeValue::S(v)) => Some(v.clone()),
            _ => None,
        },
        clock: match item.get("clock") {
            Some(AttributeValue::N(v)) => v.parse().unwrap_or(0),
            _ => 0,
        },
        finished: matches!(item.get("finished"), Some(AttributeValue::Bool(true))),
        start_at: match item.get("start_at") {
            Some(AttributeValue::S(v)) => crate::checkpoint::start_at_of(Some(v)),
            _ => None,
        },
    })
}

impl DynamoDbLeases {
    /// Connects (region and endpoint: `lease.*`, else the source's) and creates the table if it
    /// does not exist.
    pub async fn connect(config: &Config, stream: &str, worker: String) -> anyhow::Result<Self> {
        let leases = Self::client_for(config, stream, worker).await;
        leases
            .ensure_table()
            .await
            .map_err(|e| anyhow::anyhow!("lease table `{}` (lease.table): {e}", leases.table))?;
        Ok(leases)
    }

    async fn client_for(config: &Config, stream: &str, worker: String) -> Self {
        let mut source = config.source.clone();
        if let Some(region) = &config.lease.region {
            source.region = region.clone();
        }
        if let Some(url) = &config.lease.endpoint_url {
            source.endpoint_url = Some(url.clone());
        }
        let sdk = crate::source::dynamodb_streams::sdk_config(&source).await;
        Self {
            client: Client::new(&sdk),
            table: config.lease.table.clone(),
            stream: stream.to_string(),
            worker,
        }
    }

    async fn ensure_table(&self) -> Result<(), LeaseError> {
        match self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
        {
            Ok(out) => {
                if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                    return Ok(());
                }
            }
            Err(e) if e.code() == Some("ResourceNotFoundException") => {
                tracing::info!(table = %self.table, "creating the lease table (on-demand billing)");
                let created = self
                    .client
                    .create_table()
                    .table_name(&self.table)
                    .billing_mode(BillingMode::PayPerRequest)
                    .attribute_definitions(attr("stream")?)
                    .attribute_definitions(attr("shard_id")?)
                    .key_schema(key("stream", KeyType::Hash)?)
                    .key_schema(key("shard_id", KeyType::Range)?)
                    .send()
                    .await;
                match created {
                    Ok(_) => {}
                    // another worker created it meanwhile
                    Err(e) if e.code() == Some("ResourceInUseException") => {}
                    Err(e) => return Err(text(e)),
                }
            }
            Err(e) => return Err(text(e)),
        }
        for _ in 0..120 {
            let out = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(text)?;
            if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(LeaseError(
            "the table did not become ACTIVE within a minute".into(),
        ))
    }

    async fn items(&self) -> Result<Vec<Item>, LeaseError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#s = :s")
                .expression_attribute_names("#s", "stream")
                .expression_attribute_values(":s", s(&self.stream))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(text)?;
            items.extend(out.items().iter().cloned());
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(items),
            }
        }
    }

    fn key(&self, shard: &str) -> Item {
        [
            ("stream".to_string(), s(&self.stream)),
            ("shard_id".to_string(), s(shard)),
        ]
        .into()
    }
}

fn attr(name: &str) -> Result<AttributeDefinition, LeaseError> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .map_err(text)
}

fn key(name: &str, kind: KeyType) -> Result<KeySchemaElement, LeaseError> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(text)
}

/// Every lease and checkpoint in the table, for `sluice leases` (all streams).
pub async fn list_all(config: &Config) -> anyhow::Result<Vec<super::LeaseRow>> {
    // reads only: a missing table is reported, not created
    let leases = DynamoDbLeases::client_for(config, "", String::new()).await;
    let mut rows = Vec::new();
    let mut start: Option<Item> = None;
    loop {
        let out = leases
            .client
            .scan()
            .table_name(&leases.table)
            .consistent_read(true)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!("lease table `{}` (lease.table): {}", leases.table, text(e))
            })?;
        for item in out.items() {
            let (Some(lease), Some(AttributeValue::S(stream))) =
                (lease_of(item), item.get("stream"))
            else {
                continue;
            };
            let renewed_at_ms = match item.get("renewed_at_ms") {
                Some(AttributeValue::N(v)) => v.parse().ok(),
                _ => None,
            };
            rows.push(super::LeaseRow {
                stream: stream.clone(),
                lease,
                renewed_at_ms,
                checkpoint: checkpoint_of(item),
            });
        }
        match out.last_evaluated_key() {
            Some(k) if !k.is_empty() => start = Some(k.clone()),
            _ => break,
        }
    }
    Ok(rows)
}

/// `sluice checkpoints reset` on the lease table: the same change as the SQLite backend's
/// [`super::sqlite::reset`] — position moved, clock kept, lease taken from its holder (epoch + 1)
/// — in one conditional write. `false` when the shard has no checkpoint or is finished.
pub async fn reset(
    config: &Config,
    stream: &str,
    shard: &str,
    sequence_number: Option<String>,
    start_at: Option<crate::source::StartAt>,
    clock_at_least: u64,
) -> anyhow::Result<bool> {
    let leases = DynamoDbLeases::client_for(config, stream, String::new()).await;
    let current = leases
        .client
        .get_item()
        .table_name(&leases.table)
        .set_key(Some(leases.key(shard)))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!("lease table `{}` (lease.table): {}", leases.table, text(e))
        })?;
    let clock = current
        .item()
        .and_then(checkpoint_of)
        .map_or(0, |c| c.clock)
        .max(clock_at_least);
    let mut set = vec!["#ep = #ep + :one", "#ct = #ct + :one", "#cl = :clock"];
    let mut remove = vec!["#ow", "#no"];
    let mut req = leases
        .client
        .update_item()
        .table_name(&leases.table)
        .set_key(Some(leases.key(shard)))
        .condition_expression(
            "#st = :t AND NOT (#f = :t) AND (attribute_not_exists(#cl) OR #cl <= :clock)",
        )
        .expression_attribute_names("#st", "started")
        .expression_attribute_names("#f", "finished")
        .expression_attribute_names("#ep", "epoch")
        .expression_attribute_names("#ct", "counter")
        .expression_attribute_names("#ow", "owner")
        .expression_attribute_names("#no", "next_owner")
        .expression_attribute_names("#sq", "sequence_number")
        .expression_attribute_names("#sa", "start_at")
        .expression_attribute_names("#cl", "clock")
        .expression_attribute_values(":t", AttributeValue::Bool(true))
        .expression_attribute_values(":one", n(1))
        .expression_attribute_values(":clock", n(clock));
    match sequence_number {
        Some(seq) => {
            set.push("#sq = :sq");
            req = req.expression_attribute_values(":sq", s(seq));
        }
        None => remove.push("#sq"),
    }
    match start_at.as_ref().and_then(crate::checkpoint::start_at_text) {
        Some(at) => {
            set.push("#sa = :sa");
            req = req.expression_attribute_values(":sa", s(at));
        }
        None => remove.push("#sa"),
    }
    let update = format!("SET {} REMOVE {}", set.join(", "), remove.join(", "));
    let done = conditional(req.update_expression(update).send().await)
        .map_err(|e| anyhow::anyhow!("lease table `{}` (lease.table): {e}", leases.table))?;
    Ok(done.is_some())
}

impl LeaseTable for DynamoDbLeases {
    fn worker(&self) -> &str {
        &self.worker
    }

    async fn leases(&self) -> Result<Vec<Lease>, LeaseError> {
        Ok(self.items().await?.iter().filter_map(lease_of).collect())
    }

    async fn create_missing(&self, shards: &[ShardId]) -> Result<(), LeaseError> {
        let known: std::collections::HashSet<ShardId> =
            self.leases().await?.into_iter().map(|l| l.shard).collect();
        for shard in shards.iter().filter(|s| !known.contains(*s)) {
            let mut item = self.key(shard);
            item.insert("epoch".into(), n(0));
            item.insert("counter".into(), n(0));
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(#k)")
                .expression_attribute_names("#k", "shard_id")
                .send()
                .await;
            conditional(put)?;
        }
        Ok(())
    }

    async fn take(&self, seen: &Lease) -> Result<Option<Lease>, LeaseError> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self.key(&seen.shard)))
            .update_expression("SET #o = :me, #e = #e + :one, #c = #c + :one, #r = :now REMOVE #n")
            .expression_attribute_values(":now", n(crate::checkpoint::now_ms() as u64))
            .expression_attribute_names("#o", "owner")
            .expression_attribute_names("#c", "counter")
            .expression_attribute_names("#e", "epoch")
            .expression_attribute_names("#n", "next_owner")
            .expression_attribute_names("#r", "renewed_at_ms")
            .expression_attribute_values(":me", s(&self.worker))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":e", n(seen.epoch))
            .expression_attribute_values(":n", n(seen.counter))
            .return_values(ReturnValue::AllNew);
        req = match &seen.owner {
            Some(owner) => req
                .condition_expression("#o = :seen AND #e = :e AND #c = :n")
                .expression_attribute_values(":seen", s(owner)),
            None => req.condition_expression("attribute_not_exists(#o) AND #e = :e AND #c = :n"),
        };
        Ok(conditional(req.send().await)?.and_then(|out| out.attributes().and_then(lease_of)))
    }

    async fn renew(&self, shard: &ShardId, epoch: u64) -> Result<Option<Lease>, LeaseError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self.key(shard)))
            .update_expression("SET #c = #c + :one, #r = :now")
            .condition_expression("#o = :me AND #e = :e")
            .expression_attribute_values(":now", n(crate::checkpoint::now_ms() as u64))
            .expression_attribute_names("#o", "owner")
            .expression_attribute_names("#c", "counter")
            .expression_attribute_names("#e", "epoch")
            .expression_attribute_names("#r", "renewed_at_ms")
            .expression_attribute_values(":me", s(&self.worker))
            .expression_attribute_values(":e", n(epoch))
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        Ok(conditional(out)?.and_then(|out| out.attributes().and_then(lease_of)))
    }

    async fn renew_all(&self, held: Vec<(ShardId, u64)>) -> Vec<Result<Option<Lease>, LeaseError>> {
        // one conditional update per lease, all at once
        let mut calls = tokio::task::JoinSet::new();
        for (i, (shard, epoch)) in held.into_iter().enumerate() {
            let table = self.clone();
            calls.spawn(async move { (i, table.renew(&shard, epoch).await) });
        }
        let mut answers: Vec<Option<Result<Option<Lease>, LeaseError>>> =
            (0..calls.len()).map(|_| None).collect();
        while let Some(joined) = calls.join_next().await {
            if let Ok((i, answer)) = joined {
                answers[i] = Some(answer);
            }
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(LeaseError("the renewal task failed".into()))))
            .collect()
    }

    async fn release(
        &self,
        shard: &ShardId,
        epoch: u64,
        to: Option<&str>,
    ) -> Result<bool, LeaseError> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self.key(shard)))
            .condition_expression("#o = :me AND #e = :e")
            .expression_attribute_names("#o", "owner")
            .expression_attribute_names("#c", "counter")
            .expression_attribute_names("#e", "epoch")
            .expression_attribute_names("#n", "next_owner")
            .expression_attribute_values(":me", s(&self.worker))
            .expression_attribute_values(":e", n(epoch))
            .expression_attribute_values(":one", n(1));
        req = match to {
            Some(to) => req
                .update_expression("SET #o = :to, #e = #e + :one, #c = #c + :one REMOVE #n")
                .expression_attribute_values(":to", s(to)),
            None => req.update_expression("SET #c = #c + :one REMOVE #o, #n"),
        };
        Ok(conditional(req.send().await)?.is_some())
    }

    async fn request(&self, shard: &ShardId, epoch: u64) -> Result<bool, LeaseError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self.key(shard)))
            .update_expression("SET #n = :me")
            .condition_expression(
                "attribute_exists(#o) AND #o <> :me AND #e = :e AND attribute_not_exists(#n)",
            )
            .expression_attribute_names("#o", "owner")
            .expression_attribute_names("#e", "epoch")
            .expression_attribute_names("#n", "next_owner")
            .expression_attribute_values(":me", s(&self.worker))
            .expression_attribute_values(":e", n(epoch))
            .send()
            .await;
        Ok(conditional(out)?.is_some())
    }

    async fn commit(&self, updates: Vec<FencedCheckpoint>) -> Result<Vec<ShardId>, LeaseError> {
        let mut refused = Vec::new();
        for u in updates {
            let mut set = vec!["#st = :t", "#cl = :clock"];
            let mut req = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(self.key(&u.shard)))
                .condition_expression("#o = :me AND #e = :e")
                .expression_attribute_names("#o", "owner")
                .expression_attribute_names("#e", "epoch")
                .expression_attribute_names("#st", "started")
                .expression_attribute_names("#cl", "clock")
                .expression_attribute_values(":me", s(&self.worker))
                .expression_attribute_values(":e", n(u.epoch))
                .expression_attribute_values(":t", AttributeValue::Bool(true))
                .expression_attribute_values(":clock", n(u.checkpoint.clock));
            if let Some(seq) = &u.checkpoint.sequence_number {
                set.push("#sq = :seq");
                req = req
                    .expression_attribute_values(":seq", s(seq))
                    .expression_attribute_names("#sq", "sequence_number");
            }
            // only the holder writes, in read order: a checkpoint never moves back; a finished
            // shard never becomes unfinished
            if u.checkpoint.finished {
                set.push("#f = :t");
                req = req.expression_attribute_names("#f", "finished");
            }
            let out = req
                .update_expression(format!("SET {}", set.join(", ")))
                .send()
                .await;
            if conditional(out)?.is_none() {
                refused.push(u.shard);
            }
        }
        Ok(refused)
    }

    async fn checkpoints(&self) -> Result<HashMap<String, ShardCheckpoint>, LeaseError> {
        Ok(self
            .items()
            .await?
            .iter()
            .filter_map(|item| {
                let shard = match item.get("shard_id") {
                    Some(AttributeValue::S(v)) => v.clone(),
                    _ => return None,
                };
                Some((shard, checkpoint_of(item)?))
            })
            .collect())
    }

    async fn forget(&self, shards: Vec<String>) -> Result<(), LeaseError> {
        for shard in shards {
            let out = self
                .client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(self.key(&shard)))
                .condition_expression("#f = :t")
                .expression_attribute_names("#f", "finished")
                .expression_attribute_values(":t", AttributeValue::Bool(true))
                .send()
                .await;
            conditional(out)?;
        }
        Ok(())
    }
}
