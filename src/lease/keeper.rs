//! The lease keeper: the only code that talks to the lease table about ownership. Every
//! `renew_interval` it renews this worker's leases (noticing handoff requests and losses),
//! watches everyone else's heartbeats, takes unowned and expired leases up to a fair share, and —
//! every `balance_interval` — asks the busiest worker for one lease when it holds too few. What it
//! holds is published to the coordinator as a [`LeaseView`] and to the sink and committer as the
//! [`Fence`]; the coordinator answers with [`LeaseEvent`]s (a handed-over shard is drained, a
//! commit was refused).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{plan_leases, Fence, Lease, LeaseError, LeaseTable};
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
    /// Work read under this epoch could not be committed (refused, or the hold lapsed).
    Lost(ShardId, u64),
    /// New shards got leases (first start, a reshard): look for free leases now, not at the
    /// next renewal.
    Created,
}

pub struct LeaseKeeper<L: LeaseTable> {
    table: Arc<L>,
    /// A lease whose heartbeat has not changed for this long is expired.
    duration: Duration,
    renew_interval: Duration,
    balance_interval: Duration,
    metrics: Metrics,
    health: Arc<Health>,
    view: watch::Sender<LeaseView>,
    events: mpsc::UnboundedReceiver<LeaseEvent>,
    fence: Fence,
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
    /// The coordinator reported the shard drained: hand it over (again, if that failed).
    drained: bool,
    /// Until when this worker may write under the lease: the last renewal *sent*, plus a lease
    /// duration less half a renew interval (before anyone can see it expired).
    until: Instant,
}

/// The keeper's state between passes.
#[derive(Default)]
struct State {
    seen: HashMap<ShardId, Seen>,
    mine: BTreeMap<ShardId, Mine>,
    /// The lease this worker asked another for, at that lease's epoch.
    asked: Option<(ShardId, u64)>,
}

impl<L: LeaseTable> LeaseKeeper<L> {
    pub fn new(
        table: Arc<L>,
        config: &crate::config::LeaseConfig,
        metrics: Metrics,
        health: Arc<Health>,
        view: watch::Sender<LeaseView>,
        events: mpsc::UnboundedReceiver<LeaseEvent>,
        fence: Fence,
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
            fence,
            gauges: std::sync::Mutex::default(),
        }
    }

    /// How long a renewal sent now keeps this worker's writes valid.
    fn hold(&self) -> Duration {
        self.duration.saturating_sub(self.renew_interval / 2)
    }

    /// Runs until `stop`, then gives every lease up (the caller stops it only after the last
    /// checkpoints are committed), so successors start at once.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut state = State::default();
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
                    next_expiry = self.pass(&mut state, balance).await;
                }
                _ = tokio::time::sleep_until(expiry.unwrap_or_else(Instant::now)), if expiry.is_some() => {
                    next_expiry = self.pass(&mut state, false).await;
                }
                Some(event) = self.events.recv() => match event {
                    LeaseEvent::Created => next_expiry = self.pass(&mut state, false).await,
                    LeaseEvent::Drained(shard) => {
                        if let Some(m) = state.mine.get_mut(&shard) {
                            m.drained = true;
                        }
                        self.hand_over(&mut state).await;
                    }
                    LeaseEvent::Lost(shard, epoch) => {
                        if state.mine.get(&shard).is_some_and(|m| m.epoch == epoch) {
                            tracing::warn!(shard_id = %shard, epoch, "checkpoint refused: the lease is held by another worker now, or this worker's hold lapsed; shard stopped");
                            self.forget(&mut state, &shard, "fenced");
                            self.publish(&state, None);
                        }
                    }
                },
            }
        }
        for (shard, m) in &state.mine {
            self.fence.revoke(shard);
            match self.table.release(shard, m.epoch, None).await {
                Ok(true) => tracing::info!(shard_id = %shard, "lease released"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(shard_id = %shard, error = %e, "releasing a lease failed; it will expire")
                }
            }
        }
        state.mine.clear();
        self.publish(&state, None);
    }

    /// Drops a lease locally: no more writes under it, and the coordinator stops the shard.
    fn forget(&self, state: &mut State, shard: &ShardId, reason: &str) {
        if state.mine.remove(shard).is_some() {
            self.fence.revoke(shard);
            self.metrics.lease_losses.with_label_values(&[reason]).inc();
        }
    }

    /// Hands over every drained shard that was asked for (retried at every pass if the table
    /// was not reachable).
    async fn hand_over(&self, state: &mut State) {
        let ready: Vec<(ShardId, u64, String)> = state
            .mine
            .iter()
            .filter(|(_, m)| m.drained)
            .filter_map(|(s, m)| Some((s.clone(), m.epoch, m.handing_to.clone()?)))
            .collect();
        for (shard, epoch, to) in ready {
            self.fence.revoke(&shard);
            match self.table.release(&shard, epoch, Some(&to)).await {
                Ok(true) => {
                    tracing::info!(shard_id = %shard, to = %to, "lease handed over");
                    self.metrics.lease_handoffs.inc();
                    state.mine.remove(&shard);
                }
                Ok(false) => {
                    tracing::warn!(shard_id = %shard, "lease changed before it could be handed over");
                    self.forget(state, &shard, "taken");
                }
                // keep it; the next pass tries again (the shard is not read meanwhile)
                Err(e) => {
                    tracing::warn!(shard_id = %shard, error = %e, "handing a lease over failed; retrying")
                }
            }
        }
        self.publish(state, None);
    }

    /// Renews every held lease at once, each bounded so that a slow store cannot keep a
    /// worker writing past its hold.
    async fn renew_all(&self, state: &mut State) {
        let me = self.table.worker().to_string();
        let now = Instant::now();
        // a hold that lapsed (a pause, a store that did not answer) ends here, before anything
        // else: the sink and committer already refuse to write under it
        let lapsed: Vec<ShardId> = state
            .mine
            .iter()
            .filter(|(_, m)| now >= m.until)
            .map(|(s, _)| s.clone())
            .collect();
        for shard in lapsed {
            tracing::warn!(shard_id = %shard, "lease not renewed in time; shard stopped (it is taken again if still free)");
            self.forget(state, &shard, "renew_failed");
        }
        let limit = self.renew_interval.max(Duration::from_millis(100));
        let held: Vec<(ShardId, u64)> = state
            .mine
            .iter()
            .map(|(shard, m)| (shard.clone(), m.epoch))
            .collect();
        if held.is_empty() {
            return;
        }
        // one round of heartbeats, bounded as a whole: the hold counts from when it was sent
        let sent = Instant::now();
        let answers = match tokio::time::timeout(limit, self.table.renew_all(held.clone())).await {
            Ok(answers) => answers,
            Err(_) => held
                .iter()
                .map(|_| Err(LeaseError("renewal timed out".into())))
                .collect(),
        };
        for ((shard, _), answer) in held.into_iter().zip(answers) {
            let Some(m) = state.mine.get_mut(&shard) else {
                continue;
            };
            match answer {
                Ok(Some(lease)) if Instant::now() < m.until => {
                    m.until = sent + self.hold();
                    self.fence.grant(&shard, m.epoch, m.until);
                    if lease.finished {
                        // nobody needs to hold a finished shard
                        let epoch = m.epoch;
                        self.fence.revoke(&shard);
                        if let Ok(true) = self.table.release(&shard, epoch, None).await {
                            state.mine.remove(&shard);
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
                Ok(Some(_)) => {
                    // renewed, but only after the hold had lapsed: writes were refused
                    // meanwhile, so the work read under this epoch is void — start over
                    tracing::warn!(shard_id = %shard, "lease renewed too late; shard stopped");
                    self.forget(state, &shard, "renew_failed");
                }
                Ok(None) => {
                    tracing::warn!(shard_id = %shard, "lease lost to another worker; shard stopped");
                    self.forget(state, &shard, "taken");
                }
                Err(e) => {
                    self.metrics.lease_renew_failures.inc();
                    tracing::warn!(shard_id = %shard, error = %e, "lease renewal failed; retrying");
                }
            }
        }
    }

    async fn pass(&self, state: &mut State, balance: bool) -> Option<Instant> {
        let me = self.table.worker().to_string();
        // 1. heartbeats of what this worker holds; handovers that are due
        self.renew_all(state).await;
        self.hand_over(state).await;
        // 2. everyone's leases, and whose heartbeat has stopped
        let leases = match self.table.leases().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "reading the lease table failed; retrying");
                self.publish(state, None);
                return None;
            }
        };
        let now = Instant::now();
        for l in &leases {
            let changed = state
                .seen
                .get(&l.shard)
                .is_none_or(|s| s.owner != l.owner || s.epoch != l.epoch || s.counter != l.counter);
            if changed {
                state.seen.insert(
                    l.shard.clone(),
                    Seen {
                        owner: l.owner.clone(),
                        epoch: l.epoch,
                        counter: l.counter,
                        since: now,
                    },
                );
            }
        }
        let duration = self.duration;
        let seen = &state.seen;
        let expired = |l: &Lease| {
            l.owner.is_some()
                && seen
                    .get(&l.shard)
                    .is_some_and(|s| now.duration_since(s.since) >= duration)
        };
        // a request stands until the lease moves (to this worker, or its epoch changes) or the
        // holder clears it: withdrawing it on a timer would only move two leases instead of one
        if let Some((shard, epoch)) = &state.asked {
            let standing = leases.iter().any(|l| {
                l.shard == *shard
                    && l.epoch == *epoch
                    && l.next_owner.as_deref() == Some(me.as_str())
            });
            if !standing {
                state.asked = None;
            }
        }
        let mut view_leases = leases.clone();
        for l in &mut view_leases {
            // what this worker holds counts as its own, whatever the table said a moment ago
            if let Some(m) = state.mine.get(&l.shard) {
                l.owner = Some(me.clone());
                l.epoch = m.epoch;
            }
        }
        let mut plan = plan_leases(&me, &view_leases, expired, balance && state.asked.is_none());
        // leases the table says are this worker's but it does not hold (handed to it, or held
        // in an earlier life under the same id, or dropped when a hold lapsed): taken again, so
        // the epoch rises and nothing of an older holder under the same id can commit
        plan.take.extend(
            leases
                .iter()
                .filter(|l| {
                    l.owner.as_deref() == Some(me.as_str())
                        && !l.finished
                        && !state.mine.contains_key(&l.shard)
                })
                .cloned(),
        );
        fastrand::shuffle(&mut plan.take);
        // 3. take what is free (or ours)
        for lease in plan.take {
            let from = match lease.owner.as_deref() {
                None => "unowned",
                Some(o) if o == me => "handoff",
                Some(_) => "expired",
            };
            let sent = Instant::now();
            match self.table.take(&lease).await {
                Ok(Some(taken)) => {
                    tracing::info!(shard_id = %taken.shard, epoch = taken.epoch, previous_owner = ?lease.owner, "lease taken");
                    self.metrics
                        .lease_takeovers
                        .with_label_values(&[from])
                        .inc();
                    let until = sent + self.hold();
                    self.fence.grant(&taken.shard, taken.epoch, until);
                    state.mine.insert(
                        taken.shard.clone(),
                        Mine {
                            epoch: taken.epoch,
                            handing_to: None,
                            drained: false,
                            until,
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
                state.asked = Some((lease.shard.clone(), lease.epoch));
            }
        }
        let others: HashSet<ShardId> = leases
            .iter()
            .filter(|l| l.owner.as_deref().is_some_and(|o| o != me) && !l.finished && !expired(l))
            .map(|l| l.shard.clone())
            .collect();
        let unowned = leases
            .iter()
            .filter(|l| {
                !l.finished && !state.mine.contains_key(&l.shard) && !others.contains(&l.shard)
            })
            .count();
        self.health.set_leases(
            (state.mine.is_empty() && unowned > 0)
                .then(|| format!("this worker holds no lease while {unowned} shards are unowned")),
        );
        // when the next live lease of another worker would expire, if its heartbeat stops now
        let next = leases
            .iter()
            .filter(|l| l.owner.as_deref().is_some_and(|o| o != me) && !l.finished && !expired(l))
            .filter_map(|l| seen.get(&l.shard).map(|s| s.since + duration))
            .min();
        self.publish(state, Some(others));
        next
    }

    fn publish(&self, state: &State, others: Option<HashSet<ShardId>>) {
        let mine = &state.mine;
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
