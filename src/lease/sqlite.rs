//! The SQLite lease backend: several sluice processes on one host sharing the checkpoint file.
//! Leases live in the `leases` table beside `checkpoints`; a fenced checkpoint commit checks the
//! lease and writes the checkpoint in one transaction. SQLite's file locking is trustworthy on a
//! local disk only — not over NFS/EFS between hosts (use the DynamoDB backend there).

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension};

use super::{FencedCheckpoint, Lease, LeaseError, LeaseTable};
use crate::ack::ShardId;
use crate::checkpoint::{self, CheckpointStore, ShardCheckpoint, StoreError};

pub struct SqliteLeases {
    store: CheckpointStore,
    stream: String,
    worker: String,
}

impl SqliteLeases {
    pub fn new(
        store: CheckpointStore,
        stream: impl Into<String>,
        worker: impl Into<String>,
    ) -> Self {
        Self {
            store,
            stream: stream.into(),
            worker: worker.into(),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection, &str, &str) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, LeaseError> {
        let (stream, worker) = (self.stream.clone(), self.worker.clone());
        self.store
            .with_connection(move |conn| work(conn, &stream, &worker))
            .await
            .map_err(|e| LeaseError(e.to_string()))
    }
}

const SELECT: &str =
    "SELECT l.shard_id, l.owner, l.epoch, l.counter, l.next_owner, COALESCE(c.finished, 0)
     FROM leases l LEFT JOIN checkpoints c ON c.stream = l.stream AND c.shard_id = l.shard_id
     WHERE l.stream = ?1";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Lease> {
    Ok(Lease {
        shard: r.get::<_, String>(0)?.into(),
        owner: r.get(1)?,
        epoch: r.get::<_, i64>(2)? as u64,
        counter: r.get::<_, i64>(3)? as u64,
        next_owner: r.get(4)?,
        finished: r.get::<_, i64>(5)? != 0,
    })
}

fn one(conn: &Connection, stream: &str, shard: &str) -> Result<Option<Lease>, StoreError> {
    // cached: a round of heartbeats reads every held lease back
    let mut stmt = conn.prepare_cached(&format!("{SELECT} AND l.shard_id = ?2"))?;
    Ok(stmt.query_row(params![stream, shard], row).optional()?)
}

/// Every lease and checkpoint in the file, for `sluice leases` (all streams).
pub async fn list_all(store: &CheckpointStore) -> Result<Vec<super::LeaseRow>, StoreError> {
    store
        .with_connection(|conn| {
            let mut stmt = conn.prepare(
                "SELECT l.shard_id, l.owner, l.epoch, l.counter, l.next_owner, COALESCE(c.finished, 0),
                        l.stream, l.updated_at_ms, c.sequence_number, c.clock, c.shard_id IS NOT NULL, c.start_at
                 FROM leases l LEFT JOIN checkpoints c ON c.stream = l.stream AND c.shard_id = l.shard_id
                 ORDER BY l.stream, l.shard_id",
            )?;
            let rows = stmt.query_map([], |r| {
                let lease = row(r)?;
                let started: bool = r.get(10)?;
                Ok(super::LeaseRow {
                    stream: r.get(6)?,
                    renewed_at_ms: Some(r.get::<_, i64>(7)? as u64),
                    checkpoint: started.then(|| -> rusqlite::Result<ShardCheckpoint> {
                        Ok(ShardCheckpoint {
                            sequence_number: r.get(8)?,
                            clock: r.get::<_, Option<i64>>(9)?.unwrap_or(0) as u64,
                            finished: lease.finished,
                            start_at: crate::checkpoint::start_at_of(r.get::<_, Option<String>>(11)?.as_deref()),
                        })
                    }).transpose()?,
                    lease,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
}

/// `sluice checkpoints reset`: moves a started, unfinished shard's checkpoint to
/// `sequence_number` (resume after it) or, without one, to `start_at` (LATEST, AT_TIMESTAMP;
/// neither: TRIM_HORIZON). The clock never goes back (raised to `clock_at_least`). In the same transaction
/// the lease is taken from whoever holds it (epoch + 1): a running holder's next renewal or
/// commit is refused, it drops what it has in flight, and the shard is read again from here.
/// `false` when the shard has no checkpoint or is finished (nothing was changed).
pub async fn reset(
    store: &CheckpointStore,
    stream: &str,
    shard: &str,
    sequence_number: Option<String>,
    start_at: Option<crate::source::StartAt>,
    clock_at_least: u64,
) -> Result<bool, StoreError> {
    let (stream, shard) = (stream.to_string(), shard.to_string());
    store
        .with_connection(move |conn| {
            let tx = conn.transaction()?;
            let now = checkpoint::now_ms();
            let moved = tx.execute(
                "UPDATE checkpoints SET sequence_number = ?3, start_at = ?4, updated_at_ms = ?5,
                   clock = MAX(clock, ?6)
                 WHERE stream = ?1 AND shard_id = ?2 AND finished = 0",
                params![
                    stream,
                    shard,
                    sequence_number,
                    start_at.as_ref().and_then(checkpoint::start_at_text),
                    now,
                    clock_at_least as i64
                ],
            )?;
            if moved == 0 {
                return Ok(false);
            }
            tx.execute(
                "UPDATE leases SET owner = NULL, next_owner = NULL, epoch = epoch + 1,
                   counter = counter + 1, updated_at_ms = ?3
                 WHERE stream = ?1 AND shard_id = ?2",
                params![stream, shard, now],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
}

impl LeaseTable for SqliteLeases {
    fn worker(&self) -> &str {
        &self.worker
    }

    async fn leases(&self) -> Result<Vec<Lease>, LeaseError> {
        self.run(|conn, stream, _| {
            let mut stmt = conn.prepare_cached(SELECT)?;
            let rows = stmt.query_map(params![stream], row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn create_missing(&self, shards: &[ShardId]) -> Result<(), LeaseError> {
        let shards: Vec<String> = shards.iter().map(|s| s.to_string()).collect();
        self.run(move |conn, stream, _| {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT OR IGNORE INTO leases (stream, shard_id, updated_at_ms) VALUES (?1, ?2, ?3)",
                )?;
                for shard in &shards {
                    stmt.execute(params![stream, shard, checkpoint::now_ms()])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn take(&self, seen: &Lease) -> Result<Option<Lease>, LeaseError> {
        let seen = seen.clone();
        self.run(move |conn, stream, me| {
            let changed = conn.execute(
                "UPDATE leases SET owner = ?3, epoch = epoch + 1, counter = counter + 1,
                        next_owner = NULL, updated_at_ms = ?7
                 WHERE stream = ?1 AND shard_id = ?2 AND owner IS ?4 AND epoch = ?5 AND counter = ?6",
                params![
                    stream,
                    &*seen.shard,
                    me,
                    seen.owner,
                    seen.epoch as i64,
                    seen.counter as i64,
                    checkpoint::now_ms()
                ],
            )?;
            if changed == 0 {
                return Ok(None);
            }
            one(conn, stream, &seen.shard)
        })
        .await
    }

    async fn renew(&self, shard: &ShardId, epoch: u64) -> Result<Option<Lease>, LeaseError> {
        let shard = shard.clone();
        self.run(move |conn, stream, me| {
            let changed = conn.execute(
                "UPDATE leases SET counter = counter + 1, updated_at_ms = ?5
                 WHERE stream = ?1 AND shard_id = ?2 AND owner = ?3 AND epoch = ?4",
                params![stream, &*shard, me, epoch as i64, checkpoint::now_ms()],
            )?;
            if changed == 0 {
                return Ok(None);
            }
            one(conn, stream, &shard)
        })
        .await
    }

    async fn renew_all(&self, held: Vec<(ShardId, u64)>) -> Vec<Result<Option<Lease>, LeaseError>> {
        let n = held.len();
        let answers = self
            .run(move |conn, stream, me| {
                let tx = conn.transaction()?;
                let now = checkpoint::now_ms();
                let mut answers = Vec::with_capacity(held.len());
                for (shard, epoch) in &held {
                    // cached: one statement for the round, not a parse per lease
                    let changed = tx
                        .prepare_cached(
                            "UPDATE leases SET counter = counter + 1, updated_at_ms = ?5
                             WHERE stream = ?1 AND shard_id = ?2 AND owner = ?3 AND epoch = ?4",
                        )?
                        .execute(params![stream, &**shard, me, *epoch as i64, now])?;
                    answers.push(if changed == 0 {
                        None
                    } else {
                        one(&tx, stream, shard)?
                    });
                }
                tx.commit()?;
                Ok(answers)
            })
            .await;
        match answers {
            Ok(answers) => answers.into_iter().map(Ok).collect(),
            // the transaction failed as a whole: no lease was renewed
            Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
        }
    }

    async fn release(
        &self,
        shard: &ShardId,
        epoch: u64,
        to: Option<&str>,
    ) -> Result<bool, LeaseError> {
        let (shard, to) = (shard.clone(), to.map(str::to_owned));
        self.run(move |conn, stream, me| {
            let changed = conn.execute(
                "UPDATE leases SET owner = ?5,
                        epoch = epoch + (CASE WHEN ?5 IS NULL THEN 0 ELSE 1 END),
                        counter = counter + 1, next_owner = NULL, updated_at_ms = ?6
                 WHERE stream = ?1 AND shard_id = ?2 AND owner = ?3 AND epoch = ?4",
                params![stream, &*shard, me, epoch as i64, to, checkpoint::now_ms()],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn request(&self, shard: &ShardId, epoch: u64) -> Result<bool, LeaseError> {
        let shard = shard.clone();
        self.run(move |conn, stream, me| {
            let changed = conn.execute(
                "UPDATE leases SET next_owner = ?3, updated_at_ms = ?5
                 WHERE stream = ?1 AND shard_id = ?2 AND owner IS NOT NULL AND owner <> ?3
                   AND epoch = ?4 AND next_owner IS NULL",
                params![stream, &*shard, me, epoch as i64, checkpoint::now_ms()],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn commit(&self, updates: Vec<FencedCheckpoint>) -> Result<Vec<ShardId>, LeaseError> {
        self.run(move |conn, stream, me| {
            // IMMEDIATE: read-then-write under WAL must take the write lock first, or a busy
            // snapshot fails at once instead of waiting for the other worker
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut refused = Vec::new();
            for u in &updates {
                let holder: Option<(Option<String>, i64)> = tx
                    .prepare_cached(
                        "SELECT owner, epoch FROM leases WHERE stream = ?1 AND shard_id = ?2",
                    )?
                    .query_row(params![stream, &*u.shard], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                match holder {
                    Some((Some(owner), epoch)) if owner == me && epoch as u64 == u.epoch => {
                        checkpoint::upsert_checkpoint(&tx, stream, &u.shard, &u.checkpoint)?;
                    }
                    _ => refused.push(u.shard.clone()),
                }
            }
            tx.commit()?;
            Ok(refused)
        })
        .await
    }

    async fn checkpoints(&self) -> Result<HashMap<String, ShardCheckpoint>, LeaseError> {
        self.run(|conn, stream, _| checkpoint::load(conn, stream))
            .await
    }

    async fn forget(&self, shards: Vec<String>) -> Result<(), LeaseError> {
        self.run(move |conn, stream, _| {
            // one transaction: a finished checkpoint and its lease go together
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut checkpoint = tx.prepare_cached(
                    "DELETE FROM checkpoints WHERE stream = ?1 AND shard_id = ?2 AND finished = 1",
                )?;
                let mut lease = tx.prepare_cached(
                    "DELETE FROM leases WHERE stream = ?1 AND shard_id = ?2
                       AND NOT EXISTS (SELECT 1 FROM checkpoints c WHERE c.stream = ?1 AND c.shard_id = ?2)",
                )?;
                for shard in &shards {
                    checkpoint.execute(params![stream, shard])?;
                    lease.execute(params![stream, shard])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `checkpoints reset`: the position moves back or forth, the clock only rises, and the
    /// lease is taken from its holder, whose next commit is refused (fenced).
    #[tokio::test]
    async fn a_reset_moves_the_position_raises_the_clock_and_fences_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            CheckpointStore::open(&dir.path().join("s.db"), crate::config::JournalMode::Wal)
                .unwrap();
        let worker = SqliteLeases::new(store.clone(), "stream", "worker-a");
        let shard: ShardId = "shard-1".into();
        worker
            .create_missing(std::slice::from_ref(&shard))
            .await
            .unwrap();
        let seen = worker.leases().await.unwrap().remove(0);
        let held = worker.take(&seen).await.unwrap().expect("taken");
        let at = |seq: &str, clock| FencedCheckpoint {
            shard: shard.clone(),
            epoch: held.epoch,
            checkpoint: ShardCheckpoint {
                sequence_number: Some(seq.into()),
                clock,
                finished: false,
                start_at: None,
            },
        };
        assert!(worker
            .commit(vec![at("500", 7_000)])
            .await
            .unwrap()
            .is_empty());

        assert!(
            reset(&store, "stream", "shard-1", Some("100".into()), None, 5_000)
                .await
                .unwrap()
        );
        let cp = worker
            .checkpoints()
            .await
            .unwrap()
            .remove("shard-1")
            .unwrap();
        assert_eq!(cp.sequence_number.as_deref(), Some("100"), "moved back");
        assert_eq!(cp.clock, 7_000, "never lowered");
        // the holder, still running, cannot commit over the reset
        assert_eq!(
            worker.commit(vec![at("600", 7_100)]).await.unwrap(),
            vec![shard.clone()]
        );
        let lease = worker.leases().await.unwrap().remove(0);
        assert_eq!((lease.owner, lease.epoch), (None, held.epoch + 1));

        assert!(reset(
            &store,
            "stream",
            "shard-1",
            None,
            Some(crate::source::StartAt::AtTimestamp(1_700_000_000_000)),
            9_000
        )
        .await
        .unwrap());
        let cp = worker
            .checkpoints()
            .await
            .unwrap()
            .remove("shard-1")
            .unwrap();
        assert_eq!(cp.sequence_number, None);
        assert_eq!(
            cp.start_at,
            Some(crate::source::StartAt::AtTimestamp(1_700_000_000_000))
        );
        assert_eq!(cp.clock, 9_000, "raised");
        // a shard nobody started has nothing to reset
        assert!(!reset(&store, "stream", "shard-9", None, None, 0)
            .await
            .unwrap());
    }
    use crate::config::JournalMode;

    fn cp(seq: &str) -> ShardCheckpoint {
        ShardCheckpoint {
            sequence_number: Some(seq.into()),
            clock: 1,
            finished: false,
            start_at: None,
        }
    }

    #[tokio::test]
    async fn one_round_of_heartbeats_renews_each_lease_still_held_at_its_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(&dir.path().join("r.db"), JournalMode::Wal).unwrap();
        let worker = SqliteLeases::new(store, "s", "a");
        let shards: Vec<ShardId> = (1..=3).map(|i| format!("shard-{i}").into()).collect();
        worker.create_missing(&shards).await.unwrap();
        let mut held = Vec::new();
        for seen in worker.leases().await.unwrap() {
            held.push(worker.take(&seen).await.unwrap().expect("taken"));
        }
        let before: Vec<u64> = held.iter().map(|l| l.counter).collect();
        // the second at an epoch this worker no longer holds it at
        let round: Vec<(ShardId, u64)> = held
            .iter()
            .enumerate()
            .map(|(i, l)| (l.shard.clone(), if i == 1 { l.epoch + 1 } else { l.epoch }))
            .collect();
        let answers = worker.renew_all(round).await;
        assert_eq!(answers.len(), 3);
        let renewed: Vec<Option<u64>> = answers
            .into_iter()
            .map(|a| a.unwrap().map(|l| l.counter))
            .collect();
        assert_eq!(
            renewed,
            vec![Some(before[0] + 1), None, Some(before[2] + 1)],
            "in order; the lost one is None"
        );
        assert!(worker.renew_all(Vec::new()).await.is_empty());
    }

    #[tokio::test]
    async fn every_write_is_conditional_on_what_the_worker_last_saw() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        // two processes' worth: two stores on one file
        let a = SqliteLeases::new(
            CheckpointStore::open(&path, JournalMode::Wal).unwrap(),
            "s",
            "a",
        );
        let b = SqliteLeases::new(
            CheckpointStore::open(&path, JournalMode::Wal).unwrap(),
            "s",
            "b",
        );
        let shard: ShardId = "shard-1".into();
        a.create_missing(std::slice::from_ref(&shard))
            .await
            .unwrap();
        let seen = b.leases().await.unwrap().remove(0);
        let held = a
            .take(&seen)
            .await
            .unwrap()
            .expect("a takes the unowned lease");
        assert_eq!((held.owner.as_deref(), held.epoch), (Some("a"), 1));
        assert_eq!(
            b.take(&seen).await.unwrap(),
            None,
            "b saw an older lease: refused"
        );
        // a renews; b's view of a's lease changes with every heartbeat
        let renewed = a.renew(&shard, 1).await.unwrap().unwrap();
        assert_eq!(renewed.counter, held.counter + 1);
        // fencing: only the holder at its epoch commits
        assert!(a
            .commit(vec![FencedCheckpoint {
                shard: shard.clone(),
                epoch: 1,
                checkpoint: cp("10")
            }])
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            b.commit(vec![FencedCheckpoint {
                shard: shard.clone(),
                epoch: 1,
                checkpoint: cp("20")
            }])
            .await
            .unwrap(),
            vec![shard.clone()]
        );
        // b asks; a hands over: b owns it at epoch 2, a can neither renew nor commit any more
        assert!(b.request(&shard, 1).await.unwrap());
        assert_eq!(
            a.renew(&shard, 1)
                .await
                .unwrap()
                .unwrap()
                .next_owner
                .as_deref(),
            Some("b")
        );
        assert!(a.release(&shard, 1, Some("b")).await.unwrap());
        assert_eq!(a.renew(&shard, 1).await.unwrap(), None);
        assert_eq!(
            a.commit(vec![FencedCheckpoint {
                shard: shard.clone(),
                epoch: 1,
                checkpoint: cp("30")
            }])
            .await
            .unwrap(),
            vec![shard.clone()]
        );
        let now = b.leases().await.unwrap().remove(0);
        assert_eq!(
            (now.owner.as_deref(), now.epoch, now.next_owner),
            (Some("b"), 2, None)
        );
        assert_eq!(b.checkpoints().await.unwrap()["shard-1"], cp("10"));
        // released to nobody on shutdown: anyone may take it at once
        assert!(b.release(&shard, 2, None).await.unwrap());
        assert_eq!(a.leases().await.unwrap()[0].owner, None);
    }
}
