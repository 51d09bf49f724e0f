//! External document versions that strictly increase in change order.
//!
//! Elasticsearch applies a `version_type=external` write only when its version is strictly greater
//! than the stored one, so a stale replay can never overwrite a newer document. Sequence numbers do
//! not fit in an i64 and `ApproximateCreationDateTime` has one-second resolution, so the version
//! is a per-shard *hybrid logical clock*:
//!
//! ```text
//! version(record) = max(previous version in this shard lineage + 1, creation time in µs)
//! ```
//!
//! * Strictly increasing within a shard, hence for every document (one item's changes are in one
//!   shard at a time, in modification order).
//! * A child shard starts from the largest final clock of its parents (persisted with their
//!   checkpoints), and only after they are finished, so versions keep increasing across reshards.
//! * The clock is saved with each checkpoint, so a replay after a restart starts from the same
//!   clock on the same records and reproduces exactly the same versions.
//! * The time floor keeps versions ahead of older ones when there is no saved clock (first start
//!   at LATEST, a lost checkpoint file): it grows by 10⁶ per second, far more than a shard's records.
//!
//! µs since 1970 stay below Elasticsearch's maximum version (9.2e18) until the year 2262.

/// Largest version Elasticsearch accepts for `version_type=external`.
pub const MAX_EXTERNAL_VERSION: u64 = i64::MAX as u64;

/// Smallest version sluice writes: 0 is accepted by Elasticsearch but loses to every write.
pub const MIN_EXTERNAL_VERSION: u64 = 1;

/// Can Elasticsearch store this as an external version? Outside this range a `_bulk` request is
/// refused as a whole, so such an operation is dead-lettered before it reaches a lane.
pub fn in_range(version: u64) -> bool {
    (MIN_EXTERNAL_VERSION..=MAX_EXTERNAL_VERSION).contains(&version)
}

/// The out-of-range message, for dead letters.
pub fn out_of_range(version: u64) -> String {
    format!(
        "version {version} is outside Elasticsearch's external version range {MIN_EXTERNAL_VERSION}..={MAX_EXTERNAL_VERSION}"
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VersionClock {
    last: u64,
}

impl VersionClock {
    /// A clock resuming after `last` (0 for a shard with no history).
    pub fn resume(last: u64) -> Self {
        Self { last }
    }

    /// The clock a child shard starts with: after every one of its parents.
    pub fn after_parents(parents: impl IntoIterator<Item = u64>) -> Self {
        Self {
            last: parents.into_iter().max().unwrap_or(0),
        }
    }

    /// The version for the next record, whose source time (in version units: µs, or the DMS
    /// scale) is `floor`, if the source says. A floor Elasticsearch could not store is ignored
    /// (it is only a hint); a clock that has run out of range yields out-of-range versions,
    /// which the reader dead-letters rather than writing them with a repeated version.
    pub fn next(&mut self, floor: Option<u64>) -> u64 {
        let floor = floor.filter(|f| *f <= MAX_EXTERNAL_VERSION).unwrap_or(0);
        let v = self.last.saturating_add(1).max(floor);
        self.last = v;
        v
    }

    /// The last version handed out: what a checkpoint stores.
    pub fn last(&self) -> u64 {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Creation times like DynamoDB's: whole seconds, mostly non-decreasing, sometimes jittering
    /// backwards (clock skew between partitions), many records in the same second.
    fn timestamps() -> impl Strategy<Value = Vec<Option<u64>>> {
        prop::collection::vec((0u64..3, any::<bool>(), prop::bool::weighted(0.05)), 1..300)
            .prop_map(|steps| {
                let mut t: u64 = 1_700_000_000;
                steps
                    .into_iter()
                    .map(|(step, back, missing)| {
                        t = if back && step == 2 {
                            t - 1
                        } else {
                            t + step / 2
                        };
                        (!missing).then_some(t * 1_000_000)
                    })
                    .collect()
            })
    }

    fn run(clock: &mut VersionClock, ts: &[Option<u64>]) -> Vec<u64> {
        ts.iter().map(|t| clock.next(*t)).collect()
    }

    proptest! {
        #[test]
        fn versions_strictly_increase_in_shard_order(ts in timestamps()) {
            let v = run(&mut VersionClock::default(), &ts);
            prop_assert!(v.windows(2).all(|w| w[0] < w[1]));
        }

        /// Checkpoint after any record, restart from the saved clock: the replay yields the very
        /// same versions as the first run.
        #[test]
        fn replay_from_a_checkpoint_reproduces_versions(ts in timestamps(), cut in any::<prop::sample::Index>()) {
            let first = run(&mut VersionClock::default(), &ts);
            let cut = cut.index(ts.len());
            let mut clock = VersionClock::default();
            run(&mut clock, &ts[..cut]);
            let saved = clock.last();
            let replay = run(&mut VersionClock::resume(saved), &ts[cut..]);
            prop_assert_eq!(&first[cut..], &replay[..]);
        }

        /// Split then merge: every version in a child is above every version in its parents,
        /// whatever the children's timestamps say.
        #[test]
        fn children_continue_above_their_parents(a in timestamps(), b in timestamps(), c in timestamps()) {
            let mut pa = VersionClock::default();
            let va = run(&mut pa, &a);
            let mut pb = VersionClock::resume(*va.last().unwrap() / 2);
            let vb = run(&mut pb, &b);
            let mut child = VersionClock::after_parents([pa.last(), pb.last()]);
            let vc = run(&mut child, &c);
            let parent_max = va.iter().chain(&vb).max().unwrap();
            prop_assert!(vc.iter().all(|v| v > parent_max));
        }
    }

    #[test]
    fn same_second_changes_get_distinct_versions() {
        let mut c = VersionClock::default();
        let t = Some(1_700_000_000_000_000);
        let v: Vec<u64> = (0..5).map(|_| c.next(t)).collect();
        assert_eq!(
            v,
            [
                1_700_000_000_000_000,
                1_700_000_000_000_001,
                1_700_000_000_000_002,
                1_700_000_000_000_003,
                1_700_000_000_000_004
            ]
        );
        // the next second starts at its own floor again
        assert_eq!(c.next(Some(1_700_000_001_000_000)), 1_700_000_001_000_000);
    }

    #[test]
    fn a_floor_beyond_the_elasticsearch_range_is_ignored_and_an_exhausted_clock_is_out_of_range() {
        let mut c = VersionClock::resume(41);
        assert_eq!(c.next(Some(u64::MAX)), 42);
        assert!(in_range(42));
        let mut c = VersionClock::resume(MAX_EXTERNAL_VERSION - 1);
        assert_eq!(c.next(None), MAX_EXTERNAL_VERSION);
        assert!(in_range(MAX_EXTERNAL_VERSION));
        // never the same version twice: the next one is out of range, and dead-lettered
        assert!(!in_range(c.next(None)));
        assert!(!in_range(0));
    }
}
