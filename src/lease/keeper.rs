//! The lease keeper: the only code that talks to the lease table about ownership. Every
//! `renew_interval` it renews this worker's leases (noticing handoff requests and losses),
//! watches everyone else's heartbeats, takes unowned and expired leases up to a fair share, and —
//! every `balance_interval` — asks the busiest worker for one lease when it holds too few. What it
//! holds is published to the coordinator as a [`LeaseView`]; the coordinator answers with
//! [`LeaseEvent`]s (a handed-over shard is drained, a commit was refused).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{plan_leases, Lease, LeaseTable};
use crate::ack::ShardId;
use crate::http::Health;
use crate::metrics::Metrics;

/// A lease this worker holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLease {
    pub epoch: u64,
    /// Another worker asked for it: stop reading at a page boundary, let everything read be
    /// acknowledged and committed, then report [`LeaseEvent::Drained`].
    pub handing_to: Option<String>,
}

/// What the coordinator needs to know about leases.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseView {
    /// The first pass over the lease table is done.
    pub ready: bool,
    pub mine: BTreeMap<ShardId, HeldLease>,
    /// Shards held by other live workers (their parents' waits are not orphaned).
    pub others: HashSet<ShardId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// The shard being handed over is no longer read and everything read from it is committed.
    Drained(ShardId),
    /// A fenced checkpoint commit was refused: another worker holds the shard now.
    Lost(ShardId),
    /// New shards got leases (first start, a reshard): look for free leases now, not at the
    /// next renewal.
    Created,
}

pub struct LeaseKeeper<L: LeaseTable> {
    pub table: Arc<L>,
    /// A lease whose heartbeat has not changed for this long is expired.
    pub duration: Duration,
    pub renew_interval: Duration,
    pub balance_interval: Duration,
    pub metrics: Metrics,
    pub health: Arc<Health>,
    pub view: watch::Sender<LeaseView>,
    pub events: mpsc::UnboundedReceiver<LeaseEvent>,
    /// Shards with a `sluice_lease_held` series, to remove it once the lease is gone.
    gauges: std::sync::Mutex<HashSet<ShardId>>,
}

/// How a lease looked the last time it changed, on this worker's clock.
struct Seen {
    owner: Option<String>,
    epoch: u64,
    counter: u64,
    since: Instant,
}

struct Mine {
    epoch: u64,
    handing_to: Option<String>,
    renewed: Instant,
}

impl<L: LeaseTable> LeaseKeeper<L> {
    pub fn new(
        table: Arc<L>,
        config: &crate::config::LeaseConfig,
        metrics: Metrics,
        health: Arc<Health>,
        view: watch::Sender<LeaseView>,
        events: mpsc::UnboundedReceiver<LeaseEvent>,
    ) -> Self {
        Self {
            table,
            duration: config.duration,
            renew_interval: config.renew_interval,
            balance_interval: config.balance_interval,
            metrics,
            health,
            view,
            events,
            gauges: std::sync::Mutex::default(),
        }
    }

    /// Runs until `stop`, then gives every lease up (the caller stops it only after the last
    /// checkpoints are committed), so successors start at once.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut seen: HashMap<ShardId, Seen> = HashMap::new();
        let mut mine: BTreeMap<ShardId, Mine> = BTreeMap::new();
        let mut asked: Option<(ShardId, u64, Instant)> = None;
        let mut last_balance = Instant::now();
        let mut tick = tokio::time::interval(self.renew_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // the moment the next lease of another worker would expire: looked at then, not at the
        // next tick, so a dead worker's shards move within a lease duration and one renewal
        let mut next_expiry: Option<Instant> = None;
        loop {
            let expiry = next_expiry;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    let balance = last_balance.elapsed() >= self.balance_interval;
                    if balance {
                        last_balance = Instant::now();
                    }
                    next_expiry = self.pass(&mut seen, &mut mine, &mut asked, balance).await;
                }
                _ = tokio::time::sleep_until(expiry.unwrap_or_else(Instant::now)), if expiry.is_some() => {
                    next_expiry = self.pass(&mut seen, &mut mine, &mut asked, false).await;
                }
                Some(event) = self.events.recv() => {
                    if event == LeaseEvent::Created {
                        next_expiry = self.pass(&mut seen, &mut mine, &mut asked, false).await;
                    } else {
                        self.on_event(event, &mut mine).await;
                    }
                }
            }
        }
        for (shard, m) in &mine {
            match self.table.release(shard, m.epoch, None).await {
                Ok(true) => tracing::info!(shard_id = %shard, "lease released"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(shard_id = %shard, error = %e, "releasing a lease failed; it will expire")
                }
            }
            let _ = self.metrics.lease_held.remove_label_values(&[shard]);
        }
        self.metrics.leases_held.set(0);
        self.view.send_modify(|v| v.mine.clear());
    }

    async fn on_event(&self, event: LeaseEvent, mine: &mut BTreeMap<ShardId, Mine>) {
        match event {
            LeaseEvent::Drained(shard) => {
                let Some(m) = mine.get(&shard) else { return };
                let Some(to) = m.handing_to.clone() else {
                    return;
                };
                match self.table.release(&shard, m.epoch, Some(&to)).await {
                    Ok(true) => {
                        tracing::info!(shard_id = %shard, to = %to, "lease handed over");
                        self.metrics.lease_handoffs.inc();
                    }
                    Ok(false) => {
                        tracing::warn!(shard_id = %shard, "lease changed before it could be handed over");
                        self.lost(&shard, "taken");
                    }
                    Err(e) => {
                        // keep it; the next Drained (or expiry) settles it
                        tracing::warn!(shard_id = %shard, error = %e, "handing a lease over failed");
                        return;
                    }
                }
                mine.remove(&shard);
            }
            LeaseEvent::Lost(shard) => {
                if mine.remove(&shard).is_some() {
                    tracing::warn!(shard_id = %shard, "checkpoint refused: the lease is held by another worker now; shard stopped");
                    self.lost(&shard, "fenced");
                }
            }
            LeaseEvent::Created => {}
        }
        self.publish(mine, None);
    }

    fn lost(&self, shard: &ShardId, reason: &str) {
        self.metrics.lease_losses.with_label_values(&[reason]).inc();
        let _ = self.metrics.lease_held.remove_label_values(&[shard]);
    }

    async fn pass(
        &self,
        seen: &mut HashMap<ShardId, Seen>,
        mine: &mut BTreeMap<ShardId, Mine>,
        asked: &mut Option<(ShardId, u64, Instant)>,
        balance: bool,
    ) -> Option<Instant> {
        let me = self.table.worker().to_string();
        // 1. heartbeats of what this worker holds
        let held: Vec<(ShardId, u64)> = mine.iter().map(|(s, m)| (s.clone(), m.epoch)).collect();
        for (shard, epoch) in held {
            match self.table.renew(&shard, epoch).await {
                Ok(Some(lease)) => {
                    let m = mine.get_mut(&shard).expect("held");
                    m.renewed = Instant::now();
                    if lease.finished {
                        // nobody needs to hold a finished shard
                        if let Ok(true) = self.table.release(&shard, epoch, None).await {
                            mine.remove(&shard);
                            let _ = self.metrics.lease_held.remove_label_values(&[&shard]);
                        }
                        continue;
                    }
                    if let Some(to) = lease.next_owner.filter(|to| *to != me) {
                        if m.handing_to.is_none() {
                            tracing::info!(shard_id = %shard, to = %to, "lease asked for; draining the shard to hand it over");
                            m.handing_to = Some(to);
                        }
                    }
                }
                Ok(None) => {
                    tracing::warn!(shard_id = %shard, "lease lost to another worker; shard stopped");
                    mine.remove(&shard);
                    self.lost(&shard, "taken");
                }
                Err(e) => {
                    self.metrics.lease_renew_failures.inc();
                    let m = mine.get(&shard).expect("held");
                    if m.renewed.elapsed() >= self.duration {
                        // others may consider it expired by now: stop before they start
                        tracing::warn!(shard_id = %shard, error = %e, "lease could not be renewed for a whole lease duration; shard stopped");
                        mine.remove(&shard);
                        self.lost(&shard, "renew_failed");
                    } else {
                        tracing::warn!(shard_id = %shard, error = %e, "lease renewal failed; retrying");
                    }
                }
            }
        }
        // 2. everyone's leases, and whose heartbeat has stopped
        let leases = match self.table.leases().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "reading the lease table failed; retrying");
                self.publish(mine, None);
                return None;
            }
        };
        let now = Instant::now();
        for l in &leases {
            let changed = seen
                .get(&l.shard)
                .is_none_or(|s| s.owner != l.owner || s.epoch != l.epoch || s.counter != l.counter);
            if changed {
                seen.insert(
                    l.shard.clone(),
                    Seen {
                        owner: l.owner.clone(),
                        epoch: l.epoch,
                        counter: l.counter,
                        since: now,
                    },
                );
            }
            // handed to this worker, or held by it from an earlier life with the same id
            if l.owner.as_deref() == Some(me.as_str())
                && !l.finished
                && !mine.contains_key(&l.shard)
            {
                tracing::info!(shard_id = %l.shard, epoch = l.epoch, "lease received");
                self.metrics
                    .lease_takeovers
                    .with_label_values(&["handoff"])
                    .inc();
                mine.insert(
                    l.shard.clone(),
                    Mine {
                        epoch: l.epoch,
                        handing_to: None,
                        renewed: now,
                    },
                );
            }
        }
        let duration = self.duration;
        let expired = |l: &Lease| {
            l.owner.is_some()
                && seen
                    .get(&l.shard)
                    .is_some_and(|s| now.duration_since(s.since) >= duration)
        };
        // a request not honoured within two lease durations is withdrawn (another may be tried)
        if asked
            .as_ref()
            .is_some_and(|(_, _, at)| at.elapsed() >= 2 * self.duration)
        {
            *asked = None;
        }
        let mut view_leases = leases.clone();
        for l in &mut view_leases {
            // what this worker holds counts as its own, whatever the table said a moment ago
            if let Some(m) = mine.get(&l.shard) {
                l.owner = Some(me.clone());
                l.epoch = m.epoch;
            }
        }
        let mut plan = plan_leases(&me, &view_leases, expired, balance && asked.is_none());
        fastrand::shuffle(&mut plan.take);
        // 3. take what is free
        for lease in plan.take {
            let from = if lease.owner.is_some() {
                "expired"
            } else {
                "unowned"
            };
            match self.table.take(&lease).await {
                Ok(Some(taken)) => {
                    tracing::info!(shard_id = %taken.shard, epoch = taken.epoch, previous_owner = ?lease.owner, "lease taken");
                    self.metrics
                        .lease_takeovers
                        .with_label_values(&[from])
                        .inc();
                    mine.insert(
                        taken.shard.clone(),
                        Mine {
                            epoch: taken.epoch,
                            handing_to: None,
                            renewed: Instant::now(),
                        },
                    );
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(shard_id = %lease.shard, error = %e, "taking a lease failed")
                }
            }
        }
        // 4. ask the busiest worker for one
        if let Some(lease) = plan.request {
            if let Ok(true) = self.table.request(&lease.shard, lease.epoch).await {
                tracing::info!(shard_id = %lease.shard, owner = ?lease.owner, "asked for a lease (balance)");
                *asked = Some((lease.shard.clone(), lease.epoch, Instant::now()));
            }
        }
        if asked
            .as_ref()
            .is_some_and(|(shard, _, _)| mine.contains_key(shard))
        {
            *asked = None;
        }
        let others: HashSet<ShardId> = leases
            .iter()
            .filter(|l| l.owner.as_deref().is_some_and(|o| o != me) && !l.finished && !expired(l))
            .map(|l| l.shard.clone())
            .collect();
        let unowned = leases
            .iter()
            .filter(|l| !l.finished && !mine.contains_key(&l.shard) && !others.contains(&l.shard))
            .count();
        self.health.set_leases(
            (mine.is_empty() && unowned > 0)
                .then(|| format!("this worker holds no lease while {unowned} shards are unowned")),
        );
        self.publish(mine, Some(others));
        // when the next live lease of another worker would expire, if its heartbeat stops now
        leases
            .iter()
            .filter(|l| l.owner.as_deref().is_some_and(|o| o != me) && !l.finished && !expired(l))
            .filter_map(|l| seen.get(&l.shard).map(|s| s.since + duration))
            .min()
    }

    fn publish(&self, mine: &BTreeMap<ShardId, Mine>, others: Option<HashSet<ShardId>>) {
        self.metrics.leases_held.set(mine.len() as i64);
        let mut gauges = self.gauges.lock().expect("gauge lock");
        gauges.retain(|shard| {
            let keep = mine.contains_key(shard);
            if !keep {
                let _ = self.metrics.lease_held.remove_label_values(&[shard]);
            }
            keep
        });
        for shard in mine.keys() {
            self.metrics.lease_held.with_label_values(&[shard]).set(1);
            gauges.insert(shard.clone());
        }
        drop(gauges);
        let next: BTreeMap<ShardId, HeldLease> = mine
            .iter()
            .map(|(s, m)| {
                (
                    s.clone(),
                    HeldLease {
                        epoch: m.epoch,
                        handing_to: m.handing_to.clone(),
                    },
                )
            })
            .collect();
        self.view.send_if_modified(|v| {
            let mut changed = false;
            if let Some(others) = others {
                changed |= !v.ready || v.others != others;
                v.ready = true;
                v.others = others;
            }
            if v.mine != next {
                v.mine = next;
                changed = true;
            }
            changed
        });
    }
}
