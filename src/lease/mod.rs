//! Shard leases: several workers share a stream's shards.
//!
//! A lease per shard holds its owner (a worker id), an **epoch** that rises on every change of
//! owner, a **counter** that rises on every renewal (the heartbeat), and a handoff request
//! (`next_owner`). Every write is conditional:
//!
//! * take — only if owner, epoch and counter are still what this worker last saw;
//! * renew — only if this worker still owns it at its epoch;
//! * release / hand over — the same condition;
//! * checkpoint commit — the same condition, in the same transaction as the checkpoint (fencing).
//!
//! Expiry is observed, not computed from a stored deadline: a lease whose counter has not changed
//! for one lease duration *on this worker's monotonic clock* is expired. Clock skew between hosts
//! cannot make a live lease look expired (KCL does the same).
//!
//! One trait, [`LeaseTable`], a backend per store (`sqlite`, `dynamodb`); the decisions — which
//! leases to take, which to ask for — are pure functions here, property-tested without a store.

pub mod dynamodb;
pub mod keeper;
pub mod sqlite;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, RwLock};

use tokio::time::Instant;

use crate::ack::ShardId;
use crate::checkpoint::ShardCheckpoint;

/// One shard's lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub shard: ShardId,
    pub owner: Option<String>,
    /// Rises on every change of owner; travels with the work the owner sends downstream.
    pub epoch: u64,
    /// Rises on every renewal: what others watch to decide the lease has expired.
    pub counter: u64,
    /// A worker that asked the owner to hand the shard over.
    pub next_owner: Option<String>,
    /// The shard is read to its end and fully acknowledged: nobody needs to hold it.
    pub finished: bool,
}

/// One line of `sluice leases`.
#[derive(Debug, Clone)]
pub struct LeaseRow {
    pub stream: String,
    pub lease: Lease,
    /// When the lease was last taken or renewed (wall clock of the writer), for people.
    pub renewed_at_ms: Option<u64>,
    pub checkpoint: Option<ShardCheckpoint>,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("lease table: {0}")]
pub struct LeaseError(pub String);

/// A checkpoint to commit under a lease: refused unless the worker still holds `shard` at `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FencedCheckpoint {
    pub shard: ShardId,
    pub epoch: u64,
    pub checkpoint: ShardCheckpoint,
}

/// Leases and checkpoints of one stream, as seen by one worker. Conditional writes answer
/// `Ok(false)` / `Ok(None)` when the condition failed (someone else changed the lease) and `Err`
/// only for trouble with the store itself.
pub trait LeaseTable: Send + Sync + 'static {
    /// This worker's id.
    fn worker(&self) -> &str;

    /// Every lease of the stream.
    fn leases(&self) -> impl Future<Output = Result<Vec<Lease>, LeaseError>> + Send;

    /// Creates unowned leases for listed shards that have none.
    fn create_missing(
        &self,
        shards: &[ShardId],
    ) -> impl Future<Output = Result<(), LeaseError>> + Send;

    /// Takes `seen.shard` if its lease is still exactly as `seen`: owner = this worker, epoch + 1,
    /// the handoff request cleared. The new lease, or `None` if someone was faster.
    fn take(&self, seen: &Lease) -> impl Future<Output = Result<Option<Lease>, LeaseError>> + Send;

    /// The heartbeat: counter + 1 if this worker still holds `shard` at `epoch`. The lease as it
    /// now is (with any handoff request), or `None` if it was lost.
    fn renew(
        &self,
        shard: &ShardId,
        epoch: u64,
    ) -> impl Future<Output = Result<Option<Lease>, LeaseError>> + Send;

    /// [`renew`](Self::renew) of every lease this worker holds, as one round of heartbeats:
    /// one answer per `(shard, epoch)`, in order. As cheap as the store allows — one
    /// transaction for SQLite (a thousand leases are a thousand writes to the file otherwise),
    /// concurrent conditional updates for DynamoDB (which has no conditional batch write).
    fn renew_all(
        &self,
        held: Vec<(ShardId, u64)>,
    ) -> impl Future<Output = Vec<Result<Option<Lease>, LeaseError>>> + Send;

    /// Gives the lease up if still held at `epoch`: to `to` (a handoff: epoch + 1, that worker
    /// owns it now) or to nobody.
    fn release(
        &self,
        shard: &ShardId,
        epoch: u64,
        to: Option<&str>,
    ) -> impl Future<Output = Result<bool, LeaseError>> + Send;

    /// Asks the holder of `shard` (at `epoch`) to hand it to this worker.
    fn request(
        &self,
        shard: &ShardId,
        epoch: u64,
    ) -> impl Future<Output = Result<bool, LeaseError>> + Send;

    /// Commits checkpoints, each only if this worker still holds its shard at its epoch (one
    /// transaction per shard at least). Returns the shards whose commit was refused.
    fn commit(
        &self,
        updates: Vec<FencedCheckpoint>,
    ) -> impl Future<Output = Result<Vec<ShardId>, LeaseError>> + Send;

    /// Every checkpoint of the stream, whoever holds the shard.
    fn checkpoints(
        &self,
    ) -> impl Future<Output = Result<HashMap<String, ShardCheckpoint>, LeaseError>> + Send;

    /// Deletes the checkpoints and leases of finished shards nobody needs any more.
    fn forget(&self, shards: Vec<String>) -> impl Future<Output = Result<(), LeaseError>> + Send;
}

/// What this worker may still write, per shard: the epoch it holds and until when, on its own
/// monotonic clock — the moment of the last renewal *sent*, plus less than a lease duration, so
/// it ends before any other worker can consider the lease expired. The keeper grants and
/// revokes; the sink checks before every request and the committer before every commit, so a
/// worker that was paused (SIGSTOP, a frozen VM) past its lease writes nothing when it resumes.
#[derive(Debug, Clone, Default)]
pub struct Fence(Arc<RwLock<HashMap<ShardId, (u64, Instant)>>>);

impl Fence {
    pub fn grant(&self, shard: &ShardId, epoch: u64, until: Instant) {
        self.0
            .write()
            .expect("fence lock")
            .insert(shard.clone(), (epoch, until));
    }

    pub fn revoke(&self, shard: &ShardId) {
        self.0.write().expect("fence lock").remove(shard);
    }

    /// Still held at `epoch`, and not past the deadline.
    pub fn holds(&self, shard: &ShardId, epoch: u64) -> bool {
        self.0
            .read()
            .expect("fence lock")
            .get(shard)
            .is_some_and(|(e, until)| *e == epoch && Instant::now() < *until)
    }
}

/// The default worker id: host name, process id and a random suffix — containers on one host
/// can share a host name and all run as pid 1, and two workers with one id would not exclude
/// each other.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sluice".into());
    format!("{host}-{}-{:04x}", std::process::id(), fastrand::u16(..))
}

/// What one worker decides to do with the leases it sees. Pure.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeasePlan {
    /// Unowned or expired leases to take now.
    pub take: Vec<Lease>,
    /// A lease of the most loaded worker to ask for (at most one at a time: no flapping).
    pub request: Option<Lease>,
}

/// Which leases `me` should take or ask for. `expired(lease)` says whether its owner has stopped
/// renewing. A worker takes free leases up to its fair share, ⌈unfinished leases / live
/// workers⌉; one that finds nothing free asks the busiest worker for one lease, but only when
/// that worker holds at least two more than it — a move then narrows the gap without reversing
/// it, so leases never flap back and forth and every worker ends within one of every other.
pub fn plan_leases(
    me: &str,
    leases: &[Lease],
    expired: impl Fn(&Lease) -> bool,
    may_request: bool,
) -> LeasePlan {
    let live: Vec<&Lease> = leases.iter().filter(|l| !l.finished).collect();
    let mut load: BTreeMap<&str, usize> = BTreeMap::new();
    load.insert(me, 0);
    for l in &live {
        if let Some(owner) = l.owner.as_deref() {
            if owner == me || !expired(l) {
                *load.entry(owner).or_default() += 1;
            }
        }
    }
    let workers = load.len();
    let total = live.len();
    let ceiling = total.div_ceil(workers);
    let mine = load[me];
    let mut plan = LeasePlan::default();
    let free: Vec<&Lease> = live
        .iter()
        .copied()
        .filter(|l| l.owner.is_none() || (l.owner.as_deref() != Some(me) && expired(l)))
        .collect();
    // unowned first, then expired; within each, by shard id (callers shuffle to spread races)
    let (mut unowned, mut stale): (Vec<&Lease>, Vec<&Lease>) =
        free.into_iter().partition(|l| l.owner.is_none());
    unowned.sort_by(|a, b| a.shard.cmp(&b.shard));
    stale.sort_by(|a, b| a.shard.cmp(&b.shard));
    let room = ceiling.saturating_sub(mine);
    plan.take = unowned
        .into_iter()
        .chain(stale)
        .take(room)
        .cloned()
        .collect();
    if plan.take.is_empty() && may_request {
        let busiest = load
            .iter()
            .filter(|(w, _)| **w != me)
            .max_by_key(|(w, n)| (**n, std::cmp::Reverse(**w)));
        if let Some((busy, n)) = busiest {
            if *n >= mine + 2 {
                plan.request = live
                    .iter()
                    .filter(|l| l.owner.as_deref() == Some(*busy) && l.next_owner.is_none())
                    .max_by(|a, b| a.shard.cmp(&b.shard))
                    .map(|l| (*l).clone());
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lease(shard: &str, owner: Option<&str>) -> Lease {
        Lease {
            shard: shard.into(),
            owner: owner.map(str::to_owned),
            epoch: 1,
            counter: 1,
            next_owner: None,
            finished: false,
        }
    }

    #[test]
    fn a_lone_worker_takes_every_unowned_lease() {
        let leases: Vec<Lease> = (0..5).map(|i| lease(&format!("s{i}"), None)).collect();
        let plan = plan_leases("a", &leases, |_| false, true);
        assert_eq!(plan.take.len(), 5);
        assert_eq!(plan.request, None);
    }

    #[test]
    fn a_new_worker_takes_its_share_of_expired_leases_and_asks_for_the_rest_one_at_a_time() {
        let mut leases: Vec<Lease> = (0..6).map(|i| lease(&format!("s{i}"), Some("a"))).collect();
        // a's leases are live: b has nothing free, and asks a for one
        let plan = plan_leases("b", &leases, |_| false, true);
        assert!(plan.take.is_empty());
        assert_eq!(
            plan.request.as_ref().map(|l| l.owner.as_deref()),
            Some(Some("a"))
        );
        // a died: b takes them all (a no longer counts as a live worker)
        let plan = plan_leases("b", &leases, |l| l.owner.as_deref() == Some("a"), true);
        assert_eq!(plan.take.len(), 6);
        // finished shards are nobody's load
        for l in leases.iter_mut().take(5) {
            l.finished = true;
        }
        let plan = plan_leases("b", &leases, |_| false, true);
        assert_eq!(plan, LeasePlan::default(), "1 lease, a holds it: fair");
    }

    #[test]
    fn a_worker_one_below_the_busiest_does_not_ask() {
        // 5 leases, a has 3, b has 2: asking would only move the imbalance to the other side
        let leases: Vec<Lease> = (0..5)
            .map(|i| lease(&format!("s{i}"), Some(if i < 3 { "a" } else { "b" })))
            .collect();
        assert_eq!(
            plan_leases("b", &leases, |_| false, true),
            LeasePlan::default()
        );
        assert_eq!(
            plan_leases("a", &leases, |_| false, true),
            LeasePlan::default()
        );
    }

    proptest! {
        /// Workers that repeatedly apply their plans (takes and granted requests) reach a split
        /// where no worker holds more than one lease more than another, and then stop moving.
        #[test]
        fn repeated_plans_converge_to_an_even_split_and_stay(
            shards in 1usize..40,
            workers in 1usize..6,
            order in prop::collection::vec(0usize..6, 1..200),
        ) {
            let names: Vec<String> = (0..workers).map(|w| format!("w{w}")).collect();
            let mut leases: Vec<Lease> = (0..shards).map(|i| lease(&format!("s{i:02}"), None)).collect();
            let step = |w: usize, leases: &mut Vec<Lease>| -> bool {
                let me = &names[w % workers];
                let plan = plan_leases(me, leases, |_| false, true);
                let mut moved = false;
                for t in plan.take {
                    let l = leases.iter_mut().find(|l| l.shard == t.shard).unwrap();
                    l.owner = Some(me.clone());
                    moved = true;
                }
                if let Some(r) = plan.request {
                    // the holder honours the request (graceful handoff)
                    let l = leases.iter_mut().find(|l| l.shard == r.shard).unwrap();
                    l.owner = Some(me.clone());
                    moved = true;
                }
                moved
            };
            for w in order {
                step(w, &mut leases);
            }
            // then everyone keeps planning until nothing moves
            let mut rounds = 0;
            while (0..workers).any(|w| step(w, &mut leases)) {
                rounds += 1;
                prop_assert!(rounds < 200, "plans keep moving leases: flapping");
            }
            let mut counts: BTreeMap<String, usize> = names.iter().map(|n| (n.clone(), 0)).collect();
            for l in &leases {
                *counts.get_mut(l.owner.as_ref().unwrap()).unwrap() += 1;
            }
            let (min, max) = (counts.values().min().unwrap(), counts.values().max().unwrap());
            prop_assert!(max - min <= 1, "uneven split: {counts:?}");
        }
    }
}
