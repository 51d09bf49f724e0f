//! Acknowledgements flow back here; only this component commits checkpoints.
//!
//! A reader registers each page it read as a [`Segment`]: the checkpoint at its end and how many
//! document operations it produced. Every operation carries an [`Ack`] for its segment; the sink
//! completes it once Elasticsearch has acknowledged the write (or it was dead-lettered). The
//! [`Committer`] commits, per shard, the checkpoint of the longest prefix of complete segments —
//! so a checkpoint never passes an operation that is not yet acknowledged, whatever order the
//! lanes finish in.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{CheckpointStore, ShardCheckpoint};
use crate::metrics::Metrics;

pub type ShardId = Arc<str>;

/// One page of one shard: complete when `remaining` reaches zero.
#[derive(Debug)]
pub struct Segment {
    checkpoint: ShardCheckpoint,
    records: usize,
    remaining: AtomicUsize,
    tracker: Arc<Inner>,
}

/// A claim on one operation of a segment. Dropping it without [`Ack::done`] (shutdown, a crash
/// of the lane) leaves the segment incomplete, which is what keeps the checkpoint behind it.
#[derive(Debug)]
#[must_use = "an Ack must be completed once the write is acknowledged"]
pub struct Ack(Arc<Segment>);

impl Ack {
    pub fn done(self) {
        self.0.complete_one();
    }
}

impl Segment {
    fn complete_one(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tracker.wake.notify_one();
        }
    }
    fn is_complete(&self) -> bool {
        self.remaining.load(Ordering::Acquire) == 0
    }
}

#[derive(Debug, Default)]
struct Inner {
    pending: Mutex<HashMap<ShardId, VecDeque<Arc<Segment>>>>,
    wake: Notify,
}

/// Shared by readers (register) and the committer (drain). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct AckTracker {
    inner: Arc<Inner>,
}

impl AckTracker {
    /// Registers the next segment of `shard` (segments of one shard must be registered in read
    /// order) and returns one [`Ack`] per operation. A segment with no operations is complete at
    /// once but still waits for the segments before it.
    pub fn register(
        &self,
        shard: &ShardId,
        checkpoint: ShardCheckpoint,
        records: usize,
        ops: usize,
    ) -> Vec<Ack> {
        let segment = Arc::new(Segment {
            checkpoint,
            records,
            remaining: AtomicUsize::new(ops),
            tracker: self.inner.clone(),
        });
        self.inner
            .pending
            .lock()
            .expect("tracker lock")
            .entry(shard.clone())
            .or_default()
            .push_back(segment.clone());
        if ops == 0 {
            self.inner.wake.notify_one();
        }
        (0..ops).map(|_| Ack(segment.clone())).collect()
    }

    /// Pops every complete prefix; returns the newest checkpoint per shard among them.
    fn drain_complete(&self) -> Vec<(ShardId, ShardCheckpoint, usize)> {
        let mut pending = self.inner.pending.lock().expect("tracker lock");
        let mut out = Vec::new();
        for (shard, queue) in pending.iter_mut() {
            let mut newest = None;
            let mut records = 0;
            while queue.front().is_some_and(|s| s.is_complete()) {
                let s = queue.pop_front().expect("front checked");
                records += s.records;
                newest = Some(s.checkpoint.clone());
            }
            if let Some(cp) = newest {
                out.push((shard.clone(), cp, records));
            }
        }
        pending.retain(|_, q| !q.is_empty());
        out
    }

    /// Records read but not yet checkpointed, per shard.
    pub fn unacknowledged_records(&self) -> HashMap<ShardId, usize> {
        let pending = self.inner.pending.lock().expect("tracker lock");
        pending
            .iter()
            .map(|(s, q)| (s.clone(), q.iter().map(|seg| seg.records).sum()))
            .collect()
    }
}

/// Commits checkpoints as acknowledgements complete segments. Tells the coordinator when a shard
/// is finished (all its records acknowledged and its end reached), so children may start.
pub struct Committer {
    pub tracker: AckTracker,
    pub store: CheckpointStore,
    pub stream: String,
    pub metrics: Metrics,
    pub finished: mpsc::UnboundedSender<ShardId>,
}

impl Committer {
    /// Runs until `stop` is cancelled, then commits whatever is complete one last time.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            let stopping = tokio::select! {
                _ = self.tracker.inner.wake.notified() => false,
                // a safety net; every completion also wakes us
                _ = tokio::time::sleep(Duration::from_secs(1)) => false,
                _ = stop.cancelled() => true,
            };
            self.commit_complete().await;
            if stopping {
                return;
            }
        }
    }

    /// One pass: commit every complete prefix. Retries a failed SQLite write until it succeeds
    /// or the process stops (the acknowledged work is not lost: it would be re-delivered).
    pub async fn commit_complete(&self) {
        let done = self.tracker.drain_complete();
        if !done.is_empty() {
            let updates: Vec<(String, ShardCheckpoint)> = done
                .iter()
                .map(|(s, cp, _)| (s.to_string(), cp.clone()))
                .collect();
            let mut delay = Duration::from_millis(50);
            while let Err(e) = self.store.commit(&self.stream, updates.clone()).await {
                tracing::error!(error = %e, "checkpoint commit failed; retrying");
                self.metrics.checkpoint_errors.inc();
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            self.metrics.checkpoint_commits.inc();
            for (shard, cp, _) in &done {
                if cp.finished {
                    tracing::info!(shard_id = %shard, "shard finished: read to its end and fully acknowledged");
                    let _ = self.finished.send(shard.clone());
                }
            }
        }
        let lag = self.tracker.unacknowledged_records();
        for (shard, _, _) in &done {
            if !lag.contains_key(shard) {
                self.metrics
                    .checkpoint_lag_records
                    .with_label_values(&[shard])
                    .set(0);
            }
        }
        for (shard, n) in lag {
            self.metrics
                .checkpoint_lag_records
                .with_label_values(&[&shard])
                .set(n as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cp(seq: u64) -> ShardCheckpoint {
        ShardCheckpoint {
            sequence_number: Some(seq.to_string()),
            clock: seq,
            finished: false,
        }
    }

    #[test]
    fn a_checkpoint_waits_for_every_earlier_segment() {
        let t = AckTracker::default();
        let shard: ShardId = "s1".into();
        let mut first = t.register(&shard, cp(10), 2, 2);
        let second = t.register(&shard, cp(20), 1, 1);
        // the later segment completes first: nothing may be committed yet
        second.into_iter().for_each(Ack::done);
        assert!(t.drain_complete().is_empty());
        first.pop().unwrap().done();
        assert!(t.drain_complete().is_empty());
        first.pop().unwrap().done();
        let done = t.drain_complete();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].1, cp(20));
        assert_eq!(done[0].2, 3);
    }

    #[test]
    fn empty_segments_complete_in_order() {
        let t = AckTracker::default();
        let shard: ShardId = "s1".into();
        let a = t.register(&shard, cp(1), 1, 1);
        let _ = t.register(&shard, cp(2), 1, 0);
        assert!(t.drain_complete().is_empty());
        a.into_iter().for_each(Ack::done);
        assert_eq!(t.drain_complete()[0].1, cp(2));
    }

    proptest! {
        /// Whatever order acknowledgements arrive in, a committed checkpoint never covers an
        /// unacknowledged operation, and once everything is acknowledged the last one is committed.
        #[test]
        fn committed_checkpoints_only_cover_acknowledged_operations(
            ops in prop::collection::vec(0usize..4, 1..20),
            order in any::<prop::sample::Index>(),
            seed in any::<u64>(),
        ) {
            let t = AckTracker::default();
            let shard: ShardId = "s".into();
            let mut acks: Vec<(usize, Ack)> = Vec::new();
            for (i, n) in ops.iter().enumerate() {
                for a in t.register(&shard, cp(i as u64), 1, *n) {
                    acks.push((i, a));
                }
            }
            let mut rng = fastrand::Rng::with_seed(seed ^ order.index(1000) as u64);
            rng.shuffle(&mut acks);
            let mut acked: Vec<usize> = vec![0; ops.len()];
            let mut committed: Option<u64> = None;
            for (seg, ack) in acks {
                ack.done();
                acked[seg] += 1;
                for (_, c, _) in t.drain_complete() {
                    let upto = c.clock;
                    prop_assert!(committed.is_none_or(|p| p < upto));
                    for (i, n) in ops.iter().enumerate().take(upto as usize + 1) {
                        prop_assert_eq!(acked[i], *n, "segment {} not fully acknowledged", i);
                    }
                    committed = Some(upto);
                }
            }
            for (_, c, _) in t.drain_complete() {
                committed = Some(c.clock);
            }
            prop_assert_eq!(committed, Some(ops.len() as u64 - 1));
        }
    }
}
