//! Acknowledgements flow back here; only this component commits checkpoints.
//!
//! A reader registers each page it read as a [`Segment`]: the checkpoint at its end and how many
//! document operations it produced. Every operation carries an [`Ack`] for its segment; the sink
//! completes it once Elasticsearch has acknowledged the write (or it was dead-lettered). The
//! [`Committer`] commits, per shard, the checkpoint of the longest prefix of complete segments —
//! so a checkpoint never passes an operation that is not yet acknowledged, whatever order the
//! lanes finish in.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::checkpoint::ShardCheckpoint;
use crate::http::Health;
use crate::lease::keeper::LeaseEvent;
use crate::lease::{Fence, FencedCheckpoint, LeaseTable};
use crate::metrics::Metrics;

pub type ShardId = Arc<str>;

/// Segments one shard may have pending (read, not yet checkpointed). Segments with operations
/// are bounded by the pipeline's byte budget; this bounds the rest, and consecutive segments
/// without operations are merged, so a shard whose records are all skipped while Elasticsearch
/// is down does not grow memory without end.
pub const MAX_PENDING_SEGMENTS: usize = 1024;

/// One page of one shard: complete when `remaining` reaches zero.
#[derive(Debug)]
pub struct Segment {
    checkpoint: ShardCheckpoint,
    records: usize,
    remaining: AtomicUsize,
    /// Registered with no operations: no [`Ack`] refers to it, so it may absorb the next one.
    without_ops: bool,
    /// The lease epoch it was read under: its checkpoint is committed only under that epoch.
    epoch: u64,
    /// When its first record arrived in the stream (µs since 1970), if the service says: what
    /// the time to data loss counts from while the segment is not checkpointed.
    arrived: Option<u64>,
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
    /// Per shard, the lowest epoch still accepted: work of older epochs was discarded (the
    /// lease was lost), and a late registration of it must not block the shard again.
    floors: Mutex<HashMap<ShardId, u64>>,
    /// Wakes the committer.
    wake: Notify,
    /// Wakes readers waiting for room (segments were committed).
    room: Notify,
    /// Per shard being read: every record that arrived in the stream before this time (µs) has
    /// been read (set by the reader after each page).
    read_up_to: Mutex<HashMap<ShardId, u64>>,
}

/// A shard's complete segments at the front of its queue: what one commit covers.
struct Prefix {
    shard: ShardId,
    epoch: u64,
    checkpoint: ShardCheckpoint,
    records: usize,
    segments: Vec<Arc<Segment>>,
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
        epoch: u64,
        checkpoint: ShardCheckpoint,
        records: usize,
        ops: usize,
    ) -> Vec<Ack> {
        self.register_page(shard, epoch, checkpoint, records, ops, None)
    }

    /// [`register`](Self::register) for a page read from a stream, with the arrival time of its
    /// first record (µs since 1970).
    pub fn register_page(
        &self,
        shard: &ShardId,
        epoch: u64,
        checkpoint: ShardCheckpoint,
        records: usize,
        ops: usize,
        arrived: Option<u64>,
    ) -> Vec<Ack> {
        let floor = self
            .inner
            .floors
            .lock()
            .expect("tracker lock")
            .get(shard)
            .copied()
            .unwrap_or(0);
        let mut pending = self.inner.pending.lock().expect("tracker lock");
        let queue = pending.entry(shard.clone()).or_default();
        let mut records = records;
        let mut arrived = arrived;
        // a reader of a discarded epoch, not yet stopped: its work goes nowhere
        let detached = epoch < floor;
        if !detached
            && ops == 0
            && queue
                .back()
                .is_some_and(|s| s.without_ops && s.epoch == epoch)
        {
            // Two pages in a row without operations: one segment ending at the later one.
            let merged = queue.pop_back().expect("back checked");
            records += merged.records;
            arrived = merged.arrived.or(arrived);
        }
        let segment = Arc::new(Segment {
            checkpoint,
            records,
            remaining: AtomicUsize::new(ops),
            without_ops: ops == 0,
            epoch,
            arrived,
            tracker: self.inner.clone(),
        });
        if detached {
            if queue.is_empty() {
                pending.remove(shard);
            }
            return (0..ops).map(|_| Ack(segment.clone())).collect();
        }
        queue.push_back(segment.clone());
        drop(pending);
        if ops == 0 {
            self.inner.wake.notify_one();
        }
        (0..ops).map(|_| Ack(segment.clone())).collect()
    }

    /// Waits until `shard` has fewer than [`MAX_PENDING_SEGMENTS`] pending segments.
    pub async fn room_for(&self, shard: &ShardId) {
        loop {
            let committed = self.inner.room.notified();
            tokio::pin!(committed);
            committed.as_mut().enable();
            if self.pending_segments(shard) < MAX_PENDING_SEGMENTS {
                return;
            }
            committed.await;
        }
    }

    /// Forgets what is pending for `shard` under `epoch` or older (that lease was lost: the new
    /// holder re-reads from the last committed checkpoint), and refuses such work from now on.
    /// Acks still out complete segments nobody looks at.
    pub fn discard(&self, shard: &ShardId, epoch: u64) {
        {
            let mut floors = self.inner.floors.lock().expect("tracker lock");
            let floor = floors.entry(shard.clone()).or_default();
            *floor = (*floor).max(epoch + 1);
        }
        let mut pending = self.inner.pending.lock().expect("tracker lock");
        if let Some(queue) = pending.get_mut(shard) {
            queue.retain(|s| s.epoch > epoch);
            if queue.is_empty() {
                pending.remove(shard);
            }
        }
        drop(pending);
        self.inner.room.notify_waiters();
    }

    /// Pops the complete prefix of `shard`, for tools that keep their own progress (the
    /// backfill); `true` when nothing of it is pending any more.
    pub fn complete_prefix(&self, shard: &ShardId) -> bool {
        let mut pending = self.inner.pending.lock().expect("tracker lock");
        let Some(queue) = pending.get_mut(shard) else {
            return true;
        };
        while queue.front().is_some_and(|s| s.is_complete()) {
            queue.pop_front();
        }
        let empty = queue.is_empty();
        if empty {
            pending.remove(shard);
        }
        empty
    }

    /// Segments of `shard` read and not yet checkpointed.
    pub fn pending_segments(&self, shard: &ShardId) -> usize {
        let pending = self.inner.pending.lock().expect("tracker lock");
        pending.get(shard).map_or(0, VecDeque::len)
    }

    /// The complete prefix of every shard, without removing it.
    fn complete_prefixes(&self) -> Vec<Prefix> {
        let pending = self.inner.pending.lock().expect("tracker lock");
        let mut out = Vec::new();
        for (shard, queue) in pending.iter() {
            let epoch = queue.front().map(|s| s.epoch);
            let segments: Vec<Arc<Segment>> = queue
                .iter()
                .take_while(|s| s.is_complete() && Some(s.epoch) == epoch)
                .cloned()
                .collect();
            if let Some(last) = segments.last() {
                out.push(Prefix {
                    shard: shard.clone(),
                    epoch: last.epoch,
                    checkpoint: last.checkpoint.clone(),
                    records: segments.iter().map(|s| s.records).sum(),
                    segments,
                });
            }
        }
        out
    }

    /// Forgets the segments of a prefix whose checkpoint is committed. Only the committer
    /// removes segments, so they are still at the front — except the last one, which a reader
    /// may have merged into a newer segment meanwhile: that one stays, to be committed next.
    fn committed(&self, prefix: &Prefix) {
        let mut pending = self.inner.pending.lock().expect("tracker lock");
        if let Some(queue) = pending.get_mut(&prefix.shard) {
            for seg in &prefix.segments {
                if queue.front().is_some_and(|f| Arc::ptr_eq(f, seg)) {
                    queue.pop_front();
                } else {
                    break;
                }
            }
            if queue.is_empty() {
                pending.remove(&prefix.shard);
            }
        }
        drop(pending);
        self.inner.room.notify_waiters();
    }

    /// Pops every complete prefix; returns the newest checkpoint per shard among them.
    #[cfg(test)]
    fn drain_complete(&self) -> Vec<(ShardId, ShardCheckpoint, usize)> {
        let done = self.complete_prefixes();
        for p in &done {
            self.committed(p);
        }
        done.into_iter()
            .map(|p| (p.shard, p.checkpoint, p.records))
            .collect()
    }

    /// Records acknowledged (complete prefixes) but not yet checkpointed.
    pub fn committable_records(&self) -> usize {
        self.complete_prefixes().iter().map(|p| p.records).sum()
    }

    /// The reader of `shard` has read every record that arrived before `micros`.
    pub fn read_up_to(&self, shard: &ShardId, micros: u64) {
        self.inner
            .read_up_to
            .lock()
            .expect("tracker lock")
            .insert(shard.clone(), micros);
    }

    /// Nobody reads `shard` here any more (it ended, or its lease moved).
    pub fn reader_stopped(&self, shard: &ShardId) {
        self.inner
            .read_up_to
            .lock()
            .expect("tracker lock")
            .remove(shard);
    }

    /// Per shard read or pending here: when the oldest record not yet checkpointed arrived in
    /// the stream (µs since 1970) — the oldest pending page's first record, or, with nothing
    /// pending, the first record not yet read. A restart would read from there, so this is the
    /// record the stream's retention must not pass.
    pub fn oldest_unacknowledged(&self) -> HashMap<ShardId, u64> {
        let mut oldest: HashMap<ShardId, u64> =
            self.inner.read_up_to.lock().expect("tracker lock").clone();
        let pending = self.inner.pending.lock().expect("tracker lock");
        for (shard, queue) in pending.iter() {
            if let Some(t) = queue.iter().filter_map(|s| s.arrived).min() {
                oldest
                    .entry(shard.clone())
                    .and_modify(|o| *o = (*o).min(t))
                    .or_insert(t);
            }
        }
        oldest
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

/// Commits checkpoints as acknowledgements complete segments, each under the lease epoch it was
/// read with (a refused commit means the lease is lost: the shard's pending work is dropped and
/// the keeper told). Tells the coordinator when a shard is finished (all its records
/// acknowledged and its end reached), so children may start.
pub struct Committer<L: LeaseTable> {
    pub tracker: AckTracker,
    pub table: Arc<L>,
    pub metrics: Metrics,
    pub health: Arc<Health>,
    /// Readiness closes when no checkpoint advances for this long while records are pending.
    pub stall_after: Duration,
    /// At most one commit per this interval (`checkpoint.commit_interval`).
    pub commit_interval: Duration,
    pub finished: mpsc::UnboundedSender<ShardId>,
    pub lease_events: mpsc::UnboundedSender<LeaseEvent>,
    /// What this worker may still write: a checkpoint under a lapsed or lost lease is refused
    /// here, before the store is asked.
    pub fence: Fence,
    /// Set once any checkpoint was committed by this process (shutdown reports it).
    pub committed_any: Arc<AtomicBool>,
}

impl<L: LeaseTable> Committer<L> {
    /// Runs until `stop` is cancelled, then commits whatever is complete one last time. The
    /// caller bounds that last pass by the shutdown deadline (a hung file system must not keep
    /// the process alive): segments are removed only once committed, so whatever is left in the
    /// tracker is exactly what will be re-delivered.
    pub async fn run(self, stop: CancellationToken) {
        let mut last_advance = HashMap::new();
        let mut last_commit: Option<tokio::time::Instant> = None;
        loop {
            let mut stopping = tokio::select! {
                _ = self.tracker.inner.wake.notified() => false,
                // a safety net, and the stall check; every completion also wakes us
                _ = tokio::time::sleep(Duration::from_secs(1)) => false,
                _ = stop.cancelled() => true,
            };
            // what completes meanwhile joins this commit (the wake-ups it sends are folded in)
            if let Some(due) = last_commit.and_then(|at| at.checked_add(self.commit_interval)) {
                if !stopping && due > tokio::time::Instant::now() {
                    stopping = tokio::select! {
                        _ = tokio::time::sleep_until(due) => false,
                        _ = stop.cancelled() => true,
                    };
                }
            }
            if self.commit_complete(&mut last_advance).await {
                last_commit = Some(tokio::time::Instant::now());
            }
            if stopping {
                return;
            }
        }
    }

    /// One pass: commit every complete prefix. Retries a failed write until it succeeds (the
    /// acknowledged work is not lost meanwhile: it would be re-delivered). True when it wrote.
    async fn commit_complete(&self, last_advance: &mut HashMap<ShardId, Instant>) -> bool {
        let (done, lapsed): (Vec<Prefix>, Vec<Prefix>) = self
            .tracker
            .complete_prefixes()
            .into_iter()
            .partition(|p| self.fence.holds(&p.shard, p.epoch));
        for prefix in lapsed {
            self.lost(&prefix.shard, prefix.epoch);
        }
        if !done.is_empty() {
            let updates: Vec<FencedCheckpoint> = done
                .iter()
                .map(|p| FencedCheckpoint {
                    shard: p.shard.clone(),
                    epoch: p.epoch,
                    checkpoint: p.checkpoint.clone(),
                })
                .collect();
            let mut delay = Duration::from_millis(50);
            let refused = loop {
                match self.table.commit(updates.clone()).await {
                    Ok(refused) => break refused,
                    Err(e) => {
                        tracing::error!(error = %e, "checkpoint commit failed; retrying");
                        self.metrics.checkpoint_errors.inc();
                        self.check_stall(last_advance);
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            };
            self.committed_any.store(true, Ordering::Release);
            let now = Instant::now();
            self.metrics.checkpoint_commits.inc();
            for prefix in &done {
                if refused.contains(&prefix.shard) {
                    self.lost(&prefix.shard, prefix.epoch);
                    continue;
                }
                last_advance.insert(prefix.shard.clone(), now);
                self.tracker.committed(prefix);
                if prefix.checkpoint.finished {
                    tracing::info!(shard_id = %prefix.shard, "shard finished: read to its end and fully acknowledged");
                    let _ = self.finished.send(prefix.shard.clone());
                }
            }
        }
        let lag = self.tracker.unacknowledged_records();
        // A shard with nothing pending is not stalled, however long since its last commit; one
        // with records pending is measured from its last commit, or from when it had some.
        last_advance.retain(|shard, _| lag.contains_key(shard));
        for shard in lag.keys() {
            last_advance
                .entry(shard.clone())
                .or_insert_with(Instant::now);
        }
        self.check_stall(last_advance);
        for prefix in &done {
            if !lag.contains_key(&prefix.shard) {
                self.metrics
                    .checkpoint_lag_records
                    .with_label_values(&[&prefix.shard])
                    .set(0);
            }
        }
        for (shard, n) in lag {
            self.metrics
                .checkpoint_lag_records
                .with_label_values(&[&shard])
                .set(n as i64);
        }
        !done.is_empty()
    }

    /// Fenced: another worker holds the shard (or this worker's hold lapsed); it re-reads from
    /// the last checkpoint committed while the lease was still this worker's.
    fn lost(&self, shard: &ShardId, epoch: u64) {
        self.tracker.discard(shard, epoch);
        let _ = self
            .lease_events
            .send(LeaseEvent::Lost(shard.clone(), epoch));
    }

    /// Readiness: any shard with records pending whose checkpoint has not advanced for
    /// `stall_after` (one shard stuck behind a blocked index counts, even while others move).
    fn check_stall(&self, last_advance: &HashMap<ShardId, Instant>) {
        let lag = self.tracker.unacknowledged_records();
        let mut stalled: Vec<String> = last_advance
            .iter()
            .filter(|(shard, at)| lag.contains_key(*shard) && at.elapsed() >= self.stall_after)
            .map(|(shard, at)| {
                format!(
                    "{shard} ({}s, {} records pending)",
                    at.elapsed().as_secs(),
                    lag[shard]
                )
            })
            .collect();
        stalled.sort();
        self.health.set_stalled((!stalled.is_empty()).then(|| {
            format!(
                "no checkpoint has advanced for over {}s while records are pending: {}",
                self.stall_after.as_secs(),
                stalled.join(", ")
            )
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A running committer over a SQLite lease table holding `shard-1`.
    struct Running {
        _dir: tempfile::TempDir,
        shard: ShardId,
        epoch: u64,
        tracker: AckTracker,
        metrics: Metrics,
        store: crate::checkpoint::CheckpointStore,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    impl Running {
        async fn start(commit_interval: Duration) -> Running {
            let dir = tempfile::tempdir().unwrap();
            let shard: ShardId = "shard-1".into();
            let store = crate::checkpoint::CheckpointStore::open(
                &dir.path().join("s.db"),
                crate::config::JournalMode::Wal,
            )
            .unwrap();
            let table = crate::lease::sqlite::SqliteLeases::new(store.clone(), "stream", "me");
            table
                .create_missing(std::slice::from_ref(&shard))
                .await
                .unwrap();
            let seen = table.leases().await.unwrap().remove(0);
            let held = table.take(&seen).await.unwrap().expect("taken");
            let fence = Fence::default();
            fence.grant(
                &shard,
                held.epoch,
                tokio::time::Instant::now() + Duration::from_secs(600),
            );
            let committer = Committer {
                tracker: AckTracker::default(),
                table: Arc::new(table),
                metrics: Metrics::new(),
                health: Arc::new(Health::new(Duration::from_secs(60))),
                stall_after: Duration::from_secs(60),
                commit_interval,
                finished: mpsc::unbounded_channel().0,
                lease_events: mpsc::unbounded_channel().0,
                fence,
                committed_any: Arc::default(),
            };
            let (tracker, metrics) = (committer.tracker.clone(), committer.metrics.clone());
            let stop = CancellationToken::new();
            let task = tokio::spawn(committer.run(stop.clone()));
            Running {
                _dir: dir,
                shard,
                epoch: held.epoch,
                tracker,
                metrics,
                store,
                stop,
                task,
            }
        }

        /// A page of one record, read and acknowledged by Elasticsearch.
        fn acknowledge(&self, seq: u64) {
            for ack in self
                .tracker
                .register(&self.shard, self.epoch, cp(seq), 1, 1)
            {
                ack.done();
            }
        }

        async fn until_committed(&self) {
            while self.tracker.pending_segments(&self.shard) > 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }

        async fn saved(&self) -> ShardCheckpoint {
            self.store.load("stream").await.unwrap()["shard-1"].clone()
        }

        async fn stop(self) {
            self.stop.cancel();
            tokio::time::timeout(Duration::from_secs(5), self.task)
                .await
                .expect("stopping does not wait out the interval")
                .unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledgements_within_the_commit_interval_share_one_commit() {
        let c = Running::start(Duration::from_secs(2)).await;
        // 20 pages acknowledged one after another over ~100 ms, well inside the interval
        for seq in 1..=20 {
            c.acknowledge(seq);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        c.until_committed().await;
        assert!(
            c.metrics.checkpoint_commits.get() <= 2,
            "the first acknowledgement commits at once, the rest together: {} commits",
            c.metrics.checkpoint_commits.get()
        );
        assert_eq!(
            c.saved().await,
            cp(20),
            "the last page's checkpoint is the one kept"
        );
        c.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_no_commit_interval_every_acknowledgement_is_committed_on_its_own() {
        let c = Running::start(Duration::ZERO).await;
        for seq in 1..=20 {
            c.acknowledge(seq);
            c.until_committed().await;
        }
        assert_eq!(c.metrics.checkpoint_commits.get(), 20);
        assert_eq!(c.saved().await, cp(20));
        c.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stopping_commits_what_waits_for_the_interval() {
        let c = Running::start(Duration::from_secs(30)).await;
        c.acknowledge(1);
        c.until_committed().await;
        c.acknowledge(2);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let store = c.store.clone();
        c.stop().await;
        assert_eq!(store.load("stream").await.unwrap()["shard-1"], cp(2));
    }

    fn cp(seq: u64) -> ShardCheckpoint {
        ShardCheckpoint {
            sequence_number: Some(seq.to_string()),
            clock: seq,
            finished: false,
            start_at: None,
        }
    }

    #[test]
    fn a_checkpoint_waits_for_every_earlier_segment() {
        let t = AckTracker::default();
        let shard: ShardId = "s1".into();
        let mut first = t.register(&shard, 1, cp(10), 2, 2);
        let second = t.register(&shard, 1, cp(20), 1, 1);
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
        let a = t.register(&shard, 1, cp(1), 1, 1);
        let _ = t.register(&shard, 1, cp(2), 1, 0);
        assert!(t.drain_complete().is_empty());
        a.into_iter().for_each(Ack::done);
        assert_eq!(t.drain_complete()[0].1, cp(2));
    }

    #[test]
    fn pages_without_operations_merge_so_pending_segments_stay_bounded() {
        let t = AckTracker::default();
        let shard: ShardId = "s1".into();
        let blocked = t.register(&shard, 1, cp(1), 1, 1);
        for seq in 2..10_000 {
            let _ = t.register(&shard, 1, cp(seq), 1, 0);
        }
        assert_eq!(t.pending_segments(&shard), 2);
        assert!(t.drain_complete().is_empty());
        blocked.into_iter().for_each(Ack::done);
        let done = t.drain_complete();
        assert_eq!((done[0].1.clone(), done[0].2), (cp(9_999), 9_999));
    }

    #[tokio::test]
    async fn a_reader_waits_for_room_when_a_shard_has_too_many_pending_segments() {
        let t = AckTracker::default();
        let shard: ShardId = "s1".into();
        let mut first = None;
        let mut rest = Vec::new();
        for seq in 0..MAX_PENDING_SEGMENTS as u64 {
            let acks = t.register(&shard, 1, cp(seq), 1, 1);
            if seq == 0 {
                first = Some(acks);
            } else {
                rest.push(acks);
            }
        }
        let waiting = tokio::spawn({
            let t = t.clone();
            let shard = shard.clone();
            async move { t.room_for(&shard).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "no room at the bound");
        first.unwrap().into_iter().for_each(Ack::done);
        assert_eq!(t.drain_complete().len(), 1);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the committed segment makes room")
            .unwrap();
        drop(rest);
    }

    #[test]
    fn a_segment_merged_while_its_prefix_is_committed_is_committed_next() {
        let t = AckTracker::default();
        let shard: ShardId = "s1".into();
        let _ = t.register(&shard, 1, cp(1), 1, 0);
        let seen = t.complete_prefixes();
        // a reader merges a later empty page (the shard's end) into the segment being committed
        let end = ShardCheckpoint {
            finished: true,
            ..cp(2)
        };
        let _ = t.register(&shard, 1, end.clone(), 1, 0);
        t.committed(&seen[0]);
        assert_eq!(t.drain_complete()[0].1, end, "the end is not lost");
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
                for a in t.register(&shard, 1, cp(i as u64), 1, *n) {
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
