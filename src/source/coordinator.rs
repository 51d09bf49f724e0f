//! Which shards run, and from where: discovery, lineage and start positions.
//!
//! A shard starts only when each of its parents is finished — read to its end **and** every
//! record acknowledged and checkpointed (the committer reports that). A parent that is no longer
//! listed and was never seen unfinished is treated as done (it aged out of the stream). A shard
//! with an unfinished checkpoint that is no longer listed is read from its checkpoint all the
//! same: to its end if the service still serves it, else the reader records the loss
//! (ResourceNotFound → `shard_gone`) and finishes it — either way its children start.
//!
//! Only shards whose lease this worker holds are read (see `lease`): a lost lease stops its
//! reader at once, a lease another worker asked for stops at the next page boundary and is handed
//! over once everything read from it is committed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::reader::{ReaderContext, ReaderExit, ShardReader};
use super::{ShardApi, ShardInfo, StartAt};
use crate::ack::ShardId;
use crate::checkpoint::{CheckpointStore, ShardCheckpoint};
use crate::http::Health;
use crate::lease::keeper::{LeaseEvent, LeaseView};
use crate::lease::{FencedCheckpoint, LeaseTable};
use crate::metrics::Metrics;

/// How a shard without a checkpoint of its own starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Run from here with this clock.
    Read(StartAt, u64),
    /// Nothing to read (a closed shard when starting at LATEST): mark it finished.
    SkipFinished(u64),
    /// A parent is still being read or acknowledged.
    Wait,
}

/// The start plan for `shard`, given what is listed and what is checkpointed. Pure.
pub fn plan(
    shard: &ShardInfo,
    listed: &HashSet<ShardId>,
    checkpoints: &HashMap<String, ShardCheckpoint>,
    initial: &StartAt,
) -> Plan {
    if let Some(cp) = checkpoints.get(&*shard.id) {
        return match (&cp.sequence_number, &cp.start_at) {
            (Some(seq), _) => Plan::Read(StartAt::AfterSequence(seq.clone()), cp.clock),
            // Reset by `sluice checkpoints reset` to LATEST or a time, nothing read since.
            (None, Some(at)) => Plan::Read(at.clone(), cp.clock),
            // Started before but nothing acknowledged yet: TRIM_HORIZON, so nothing is skipped.
            (None, None) => Plan::Read(StartAt::TrimHorizon, cp.clock),
        };
    }
    let known_parents: Vec<&ShardId> = shard
        .parents
        .iter()
        .filter(|p| listed.contains(*p) || checkpoints.contains_key(&***p))
        .collect();
    let lineage_started = known_parents
        .iter()
        .any(|p| checkpoints.contains_key(&***p));
    if !lineage_started && *initial == StartAt::Latest {
        // First start at LATEST: nothing of this lineage was read, and nothing older is wanted.
        return if shard.closed {
            Plan::SkipFinished(0)
        } else {
            Plan::Read(StartAt::Latest, 0)
        };
    }
    if known_parents
        .iter()
        .any(|p| !checkpoints.get(&***p).is_some_and(|cp| cp.finished))
    {
        return Plan::Wait;
    }
    // A child of a shard we read starts at its beginning, whatever start_position says, with a
    // clock after every parent's.
    let parents_clock = known_parents
        .iter()
        .filter_map(|p| checkpoints.get(&***p))
        .map(|cp| cp.clock)
        .max()
        .unwrap_or(0);
    Plan::Read(StartAt::TrimHorizon, parents_clock)
}

/// Checkpoints no longer needed: finished shards that are no longer listed and that no listed
/// shard names as a parent (DynamoDB rolls shards over every few hours). Pure.
pub fn forgettable(
    shards: &[ShardInfo],
    checkpoints: &HashMap<String, ShardCheckpoint>,
) -> Vec<String> {
    let listed: HashSet<&str> = shards.iter().map(|s| &*s.id).collect();
    let parents: HashSet<&str> = shards
        .iter()
        .flat_map(|s| s.parents.iter().map(|p| &**p))
        .collect();
    let mut stale: Vec<String> = checkpoints
        .iter()
        .filter(|(id, cp)| {
            cp.finished && !listed.contains(id.as_str()) && !parents.contains(id.as_str())
        })
        .map(|(id, _)| id.clone())
        .collect();
    stale.sort();
    stale
}

pub struct Coordinator<A: ShardApi, L: LeaseTable> {
    pub api: Arc<A>,
    pub ctx: Arc<ReaderContext<A::Record>>,
    /// Leases and checkpoints of the stream.
    pub table: Arc<L>,
    /// The local store, for the dead-letter gauge.
    pub store: CheckpointStore,
    pub metrics: Metrics,
    pub health: Arc<Health>,
    /// Where shards with no checkpoint and no parent we read start: TRIM_HORIZON, LATEST or AT_TIMESTAMP.
    pub initial: StartAt,
    pub discovery_interval: Duration,
    /// Readiness closes when a shard has waited this long (plus a discovery cycle) on parents
    /// that no reader is reading.
    pub parent_timeout: Duration,
    /// Shards the committer has finished (end reached, everything acknowledged).
    pub finished: mpsc::UnboundedReceiver<ShardId>,
    /// What this worker holds, from the lease keeper.
    pub leases: watch::Receiver<LeaseView>,
    /// Back to the keeper: a shard being handed over is drained.
    pub lease_events: mpsc::UnboundedSender<LeaseEvent>,
}

impl<A: ShardApi, L: LeaseTable> Coordinator<A, L> {
    /// Runs readers for the shards this worker holds until `cancel`; returns once every reader
    /// has stopped.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut readers: JoinSet<(ShardId, ReaderExit)> = JoinSet::new();
        let mut shards = Shards::default();
        let stream = self.ctx.stream.clone();
        // nothing is read before the first pass over the lease table
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = self.leases.wait_for(|v| v.ready) => {}
        }
        let mut rediscover = true;
        loop {
            let view = self.leases.borrow_and_update().clone();
            self.reconcile(&view, &mut shards);
            if rediscover {
                match self
                    .discover(&view, &mut readers, &mut shards, &cancel)
                    .await
                {
                    Ok(()) => self.health.set_shards_discovered(true),
                    Err(e) => {
                        tracing::warn!(stream = %stream, error = %e, "shard discovery failed; retrying later")
                    }
                }
            }
            rediscover = true;
            let handing_over = !shards.handing_over.is_empty();
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(self.discovery_interval) => {}
                // a handover waits for the shard's last writes to be committed: look often,
                // without listing shards each time
                _ = tokio::time::sleep(Duration::from_millis(100)), if handing_over => rediscover = false,
                r = self.leases.changed() => if r.is_err() { break },
                Some(joined) = readers.join_next_with_id(), if !readers.is_empty() => {
                    match joined {
                        Ok((task, (shard, exit))) => {
                            shards.reading.remove(&task);
                            shards.tokens.remove(&shard);
                            if exit == ReaderExit::ShardEnded {
                                // Not finished until its last writes are acknowledged: never
                                // start a second reader on it meanwhile.
                                shards.ended.insert(shard.clone());
                            }
                            tracing::debug!(shard_id = %shard, ?exit, "reader stopped");
                        }
                        Err(e) => {
                            // A reader that panicked restarts from its checkpoint at the next
                            // discovery; what it queued but did not finish is re-read.
                            let shard = shards.reading.remove(&e.id());
                            if let Some(s) = &shard {
                                shards.tokens.remove(s);
                            }
                            tracing::error!(shard_id = ?shard, error = %e, "shard reader failed; it will restart from its checkpoint");
                        }
                    }
                    self.metrics.shards_owned.set(shards.reading.len() as i64);
                }
                Some(shard) = self.finished.recv() => {
                    shards.ended.remove(&shard);
                    self.metrics.shards_finished.inc();
                    self.metrics.forget_shard(&shard);
                }
            }
        }
        // Shutdown: readers see the same token; wait until each has stopped queueing.
        while readers.join_next().await.is_some() {}
        self.metrics.shards_owned.set(0);
    }

    /// Follows the lease view: a lost lease stops its reader at once and drops the shard's
    /// pending work (the new holder re-reads from the last committed checkpoint); a lease asked
    /// for stops its reader at the next page boundary, and once everything read from the shard
    /// is committed the keeper is told it can hand it over.
    fn reconcile(&self, view: &LeaseView, shards: &mut Shards) {
        let reading: Vec<ShardId> = shards.tokens.keys().cloned().collect();
        for shard in reading {
            let Some(epoch) = shards.tokens.get(&shard).map(|t| t.epoch) else {
                continue;
            };
            match view.mine.get(&shard) {
                Some(held) if held.epoch != epoch => {
                    // held again under a newer epoch: the old reader's work is void
                    if let Some(t) = shards.tokens.remove(&shard) {
                        t.hard.cancel();
                    }
                    self.ctx.tracker.discard(&shard, epoch);
                }
                None => {
                    if let Some(t) = shards.tokens.remove(&shard) {
                        t.hard.cancel();
                    }
                    self.ctx.tracker.discard(&shard, epoch);
                    shards.ended.remove(&shard);
                }
                Some(held) if held.handing_to.is_some() => {
                    if let Some(t) = shards.tokens.get(&shard) {
                        t.soft.cancel();
                    }
                }
                Some(_) => {}
            }
        }
        // ended shards whose lease is gone: the new holder finishes them
        shards.ended.retain(|s| view.mine.contains_key(s));
        shards.handing_over = view
            .mine
            .iter()
            .filter(|(_, h)| h.handing_to.is_some())
            .map(|(s, _)| s.clone())
            .collect();
        shards.drained.retain(|s| shards.handing_over.contains(s));
        let ready: Vec<ShardId> = shards
            .handing_over
            .iter()
            .filter(|s| {
                !shards.drained.contains(*s)
                    && !shards.tokens.contains_key(*s)
                    && self.ctx.tracker.pending_segments(s) == 0
            })
            .cloned()
            .collect();
        for shard in ready {
            tracing::info!(shard_id = %shard, "shard drained for handover: everything read is committed");
            let _ = self.lease_events.send(LeaseEvent::Drained(shard.clone()));
            shards.drained.insert(shard);
        }
    }

    async fn discover(
        &mut self,
        view: &LeaseView,
        readers: &mut JoinSet<(ShardId, ReaderExit)>,
        owned: &mut Shards,
        cancel: &CancellationToken,
    ) -> anyhow::Result<()> {
        let shards = self.api.list_shards().await?;
        let listed: HashSet<ShardId> = shards.iter().map(|s| s.id.clone()).collect();
        let checkpoints = self.table.checkpoints().await?;
        let unlisted = unlisted_unfinished(&listed, &checkpoints);
        let ids: Vec<ShardId> = shards
            .iter()
            .chain(&unlisted)
            .filter(|s| !checkpoints.get(&*s.id).is_some_and(|cp| cp.finished))
            .map(|s| s.id.clone())
            .collect();
        if ids.iter().any(|s| !owned.leased.contains(s)) {
            self.table.create_missing(&ids).await?;
            owned.leased.extend(ids);
            let _ = self.lease_events.send(LeaseEvent::Created);
        }
        let mut waiting: HashMap<ShardId, Vec<ShardId>> = HashMap::new();
        for shard in shards.iter().chain(&unlisted) {
            if owned.is_owned(&shard.id)
                || checkpoints.get(&*shard.id).is_some_and(|cp| cp.finished)
            {
                continue;
            }
            let Some(held) = view.mine.get(&shard.id).filter(|h| h.handing_to.is_none()) else {
                continue;
            };
            let epoch = held.epoch;
            let (start, clock) = match plan(shard, &listed, &checkpoints, &self.initial) {
                Plan::Wait => {
                    let blocking = shard
                        .parents
                        .iter()
                        .filter(|p| !checkpoints.get(&***p).is_some_and(|cp| cp.finished))
                        .cloned()
                        .collect();
                    waiting.insert(shard.id.clone(), blocking);
                    continue;
                }
                Plan::SkipFinished(clock) => {
                    tracing::info!(shard_id = %shard.id, "closed shard skipped (start_position = latest)");
                    let done = ShardCheckpoint {
                        sequence_number: None,
                        clock,
                        finished: true,
                        start_at: None,
                    };
                    self.commit_under_lease(&shard.id, epoch, done).await?;
                    continue;
                }
                Plan::Read(start, clock) => (start, clock),
            };
            if !checkpoints.contains_key(&*shard.id) {
                // Remember the shard was started, with its clock, before reading anything.
                let started = ShardCheckpoint {
                    sequence_number: None,
                    clock,
                    finished: false,
                    start_at: None,
                };
                if !self.commit_under_lease(&shard.id, epoch, started).await? {
                    continue;
                }
            }
            tracing::info!(shard_id = %shard.id, start = ?start, clock, epoch, parents = ?shard.parents, "starting shard reader");
            // whatever an earlier epoch of this worker left for the shard is void
            self.ctx.tracker.discard(&shard.id, epoch.saturating_sub(1));
            let hard = cancel.child_token();
            let soft = hard.child_token();
            let reader = ShardReader {
                api: self.api.clone(),
                shard: shard.id.clone(),
                epoch,
                start,
                clock: crate::version::VersionClock::resume(clock),
                ctx: self.ctx.clone(),
            };
            let id = shard.id.clone();
            let (h, s) = (hard.clone(), soft.clone());
            let task = readers.spawn(async move { (id, reader.run(h, s).await) });
            owned.reading.insert(task.id(), shard.id.clone());
            owned
                .tokens
                .insert(shard.id.clone(), ReaderTokens { hard, soft, epoch });
        }
        let stale = forgettable(&shards, &checkpoints);
        if !stale.is_empty() {
            tracing::debug!(shards = ?stale, "forgetting checkpoints of finished shards that left the stream");
            self.table.forget(stale).await?;
        }
        // Shards read to their end are `ended` until their finish is committed (or seen here).
        owned
            .ended
            .retain(|id| !checkpoints.get(&**id).is_some_and(|cp| cp.finished));
        self.metrics.shards_owned.set(owned.reading.len() as i64);
        self.report_orphaned_waits(waiting, owned, view);
        if let Ok(n) = self.store.count_dead_letters().await {
            self.metrics.dead_letters.set(n as i64);
        }
        Ok(())
    }

    /// Writes a checkpoint the reader has not produced (a start, a skip) under the lease;
    /// `false` if the lease is no longer this worker's.
    async fn commit_under_lease(
        &self,
        shard: &ShardId,
        epoch: u64,
        checkpoint: ShardCheckpoint,
    ) -> anyhow::Result<bool> {
        let refused = self
            .table
            .commit(vec![FencedCheckpoint {
                shard: shard.clone(),
                epoch,
                checkpoint,
            }])
            .await?;
        if refused.is_empty() {
            return Ok(true);
        }
        let _ = self
            .lease_events
            .send(LeaseEvent::Lost(shard.clone(), epoch));
        Ok(false)
    }

    /// Readiness: a shard waiting on parents that nobody reads — not a reader here, not another
    /// live worker, nor (through its own waiting parents) one that waits on such a reader —
    /// cannot make progress; say so once it has waited a discovery cycle plus `parent_timeout`.
    fn report_orphaned_waits(
        &self,
        waiting: HashMap<ShardId, Vec<ShardId>>,
        owned: &mut Shards,
        view: &LeaseView,
    ) {
        let progressing =
            progressing_waits(&waiting, |s| owned.is_owned(s) || view.others.contains(s));
        let now = tokio::time::Instant::now();
        owned
            .orphaned_since
            .retain(|s, _| waiting.contains_key(s) && !progressing.contains(s));
        let limit = self.discovery_interval + self.parent_timeout;
        let mut stuck: Vec<String> = Vec::new();
        for (shard, parents) in &waiting {
            if progressing.contains(shard) {
                continue;
            }
            let since = *owned.orphaned_since.entry(shard.clone()).or_insert(now);
            let waited = now.duration_since(since);
            if waited >= limit {
                tracing::warn!(shard_id = %shard, ?parents, waited_s = waited.as_secs(), "shard is waiting on parents that nobody is reading");
                stuck.push(format!("{shard} (parents {})", parents.join(", ")));
            }
        }
        stuck.sort();
        self.health.set_orphaned_waits((!stuck.is_empty()).then(|| {
            format!(
                "shards waiting on parents nobody is reading for over {}s: {}",
                limit.as_secs(),
                stuck.join(", ")
            )
        }));
    }
}

/// Shards with an unfinished checkpoint that the service no longer lists (aged out during an
/// outage, or listed no more for any reason): they are read from their checkpoint like any
/// other, so that their loss — if they are gone — is recorded and their children can start.
fn unlisted_unfinished(
    listed: &HashSet<ShardId>,
    checkpoints: &HashMap<String, ShardCheckpoint>,
) -> Vec<ShardInfo> {
    let mut out: Vec<ShardInfo> = checkpoints
        .iter()
        .filter(|(id, cp)| !cp.finished && !listed.contains(id.as_str()))
        .map(|(id, _)| ShardInfo {
            id: id.as_str().into(),
            parents: Vec::new(),
            closed: true,
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Of the waiting shards (each with the parents it waits on), those whose every parent is
/// being read here or is itself a waiting shard that makes progress. Pure.
pub fn progressing_waits(
    waiting: &HashMap<ShardId, Vec<ShardId>>,
    owned: impl Fn(&ShardId) -> bool,
) -> HashSet<ShardId> {
    let mut progressing: HashSet<ShardId> = HashSet::new();
    loop {
        let before = progressing.len();
        for (shard, parents) in waiting {
            if !progressing.contains(shard)
                && parents.iter().all(|p| owned(p) || progressing.contains(p))
            {
                progressing.insert(shard.clone());
            }
        }
        if progressing.len() == before {
            return progressing;
        }
    }
}

/// How a reader is stopped: `hard` at once (lost lease, shutdown), `soft` at the next page
/// boundary (a handover: nothing half-delivered).
struct ReaderTokens {
    hard: CancellationToken,
    soft: CancellationToken,
    /// The lease epoch the reader reads under.
    epoch: u64,
}

/// The shards this process has taken on.
#[derive(Default)]
struct Shards {
    /// Reader task → its shard.
    reading: HashMap<tokio::task::Id, ShardId>,
    tokens: HashMap<ShardId, ReaderTokens>,
    /// Held leases another worker asked for, and those already reported drained.
    handing_over: HashSet<ShardId>,
    drained: HashSet<ShardId>,
    /// Shards known to have a lease row.
    leased: HashSet<ShardId>,
    /// Read to their end; waiting for their last writes to be acknowledged.
    ended: HashSet<ShardId>,
    /// Waiting shards whose parents nobody reads, since when.
    orphaned_since: HashMap<ShardId, tokio::time::Instant>,
}

impl Shards {
    fn is_owned(&self, shard: &ShardId) -> bool {
        self.ended.contains(shard) || self.reading.values().any(|s| s == shard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, parents: &[&str], closed: bool) -> ShardInfo {
        ShardInfo {
            id: id.into(),
            parents: parents.iter().map(|p| (*p).into()).collect(),
            closed,
        }
    }
    fn listed(ids: &[&str]) -> HashSet<ShardId> {
        ids.iter().map(|s| (*s).into()).collect()
    }
    fn cp(seq: Option<&str>, clock: u64, finished: bool) -> ShardCheckpoint {
        ShardCheckpoint {
            sequence_number: seq.map(str::to_owned),
            clock,
            finished,
            start_at: None,
        }
    }

    #[test]
    fn a_child_waits_until_its_parent_is_finished_then_starts_at_trim_horizon_after_its_clock() {
        let child = shard("c", &["p"], false);
        let l = listed(&["p", "c"]);
        let reading: HashMap<_, _> = [("p".to_string(), cp(Some("10"), 500, false))].into();
        assert_eq!(plan(&child, &l, &reading, &StartAt::Latest), Plan::Wait);
        let done: HashMap<_, _> = [("p".to_string(), cp(Some("20"), 900, true))].into();
        assert_eq!(
            plan(&child, &l, &done, &StartAt::Latest),
            Plan::Read(StartAt::TrimHorizon, 900)
        );
    }

    #[test]
    fn a_merge_child_waits_for_both_parents_and_takes_the_larger_clock() {
        let child = shard("c", &["p1", "p2"], false);
        let l = listed(&["p1", "p2", "c"]);
        let one: HashMap<_, _> = [("p1".to_string(), cp(Some("1"), 7, true))].into();
        assert_eq!(plan(&child, &l, &one, &StartAt::TrimHorizon), Plan::Wait);
        let both: HashMap<_, _> = [
            ("p1".to_string(), cp(Some("1"), 7, true)),
            ("p2".to_string(), cp(Some("2"), 9, true)),
        ]
        .into();
        assert_eq!(
            plan(&child, &l, &both, &StartAt::TrimHorizon),
            Plan::Read(StartAt::TrimHorizon, 9)
        );
    }

    #[test]
    fn a_parent_that_aged_out_of_the_stream_does_not_block() {
        let child = shard("c", &["gone"], false);
        assert_eq!(
            plan(
                &child,
                &listed(&["c"]),
                &HashMap::new(),
                &StartAt::TrimHorizon
            ),
            Plan::Read(StartAt::TrimHorizon, 0)
        );
    }

    #[test]
    fn checkpoints_resume_after_the_sequence_number_and_started_shards_never_resume_at_latest() {
        let s = shard("s", &[], false);
        let l = listed(&["s"]);
        let at: HashMap<_, _> = [("s".to_string(), cp(Some("42"), 5, false))].into();
        assert_eq!(
            plan(&s, &l, &at, &StartAt::Latest),
            Plan::Read(StartAt::AfterSequence("42".into()), 5)
        );
        let started: HashMap<_, _> = [("s".to_string(), cp(None, 0, false))].into();
        assert_eq!(
            plan(&s, &l, &started, &StartAt::Latest),
            Plan::Read(StartAt::TrimHorizon, 0)
        );
    }

    #[test]
    fn latest_skips_closed_roots_and_tails_open_ones_but_children_of_read_shards_start_at_the_beginning(
    ) {
        let l = listed(&["old", "new"]);
        assert_eq!(
            plan(
                &shard("old", &[], true),
                &l,
                &HashMap::new(),
                &StartAt::Latest
            ),
            Plan::SkipFinished(0)
        );
        assert_eq!(
            plan(
                &shard("new", &["old"], false),
                &l,
                &HashMap::new(),
                &StartAt::Latest
            ),
            Plan::Read(StartAt::Latest, 0)
        );
        // later: "new" was read and has ended; its child must not skip anything
        let read: HashMap<_, _> = [("new".to_string(), cp(Some("9"), 77, true))].into();
        let l2 = listed(&["new", "newer"]);
        assert_eq!(
            plan(
                &shard("newer", &["new"], false),
                &l2,
                &read,
                &StartAt::Latest
            ),
            Plan::Read(StartAt::TrimHorizon, 77)
        );
    }

    #[test]
    fn unfinished_shards_that_are_no_longer_listed_are_read_from_their_checkpoint() {
        let l = listed(&["child"]);
        let cps: HashMap<_, _> = [
            ("aged-out".to_string(), cp(Some("17"), 40, false)),
            ("done".to_string(), cp(Some("1"), 1, true)),
        ]
        .into();
        let unlisted = unlisted_unfinished(&l, &cps);
        assert_eq!(unlisted.len(), 1);
        assert_eq!(&*unlisted[0].id, "aged-out");
        // it resumes after its checkpoint; its child waits for it, not for ever but until the
        // reader has finished it (read to the end, or recorded as lost)
        assert_eq!(
            plan(&unlisted[0], &l, &cps, &StartAt::TrimHorizon),
            Plan::Read(StartAt::AfterSequence("17".into()), 40)
        );
        assert_eq!(
            plan(
                &shard("child", &["aged-out"], false),
                &l,
                &cps,
                &StartAt::TrimHorizon
            ),
            Plan::Wait
        );
    }

    #[test]
    fn a_wait_makes_progress_only_if_every_parent_is_read_here_or_itself_progresses() {
        let w = |pairs: &[(&str, &[&str])]| -> HashMap<ShardId, Vec<ShardId>> {
            pairs
                .iter()
                .map(|(s, ps)| ((*s).into(), ps.iter().map(|p| (*p).into()).collect()))
                .collect()
        };
        let owned = |s: &ShardId| &**s == "reading";
        // grandchild → child → reading: both progress
        let chain = w(&[("child", &["reading"]), ("grandchild", &["child"])]);
        assert_eq!(progressing_waits(&chain, owned).len(), 2);
        // a merge child with one parent nobody reads does not progress, nor does its child
        let orphan = w(&[("merge", &["reading", "nobody"]), ("next", &["merge"])]);
        assert!(progressing_waits(&orphan, owned).is_empty());
    }

    #[test]
    fn only_finished_shards_that_left_the_stream_and_have_no_listed_child_are_forgotten() {
        let listing = vec![shard("child", &["parent"], false)];
        let cps: HashMap<_, _> = [
            ("parent".to_string(), cp(Some("1"), 1, true)), // gone, but its child is listed
            ("ancient".to_string(), cp(Some("1"), 1, true)), // gone, nobody refers to it
            ("unfinished".to_string(), cp(Some("1"), 1, false)), // gone before we finished it
            ("child".to_string(), cp(Some("2"), 2, false)),
        ]
        .into();
        assert_eq!(forgettable(&listing, &cps), vec!["ancient".to_string()]);
    }
}
