//! Checkpoints and dead letters in one SQLite file.
//!
//! One dedicated thread owns the connection: async workers send it commands and await the reply,
//! so no SQLite call ever blocks a tokio worker. Every write is one transaction; a checkpoint is
//! durable once `commit` returns.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use crate::config::JournalMode;
use crate::source::StartAt;

/// Where a shard's reading stands, as far as the sink has acknowledged it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShardCheckpoint {
    /// Last sequence number acknowledged (or dead-lettered). `None`: the shard was started but
    /// nothing in it is acknowledged yet — it resumes from TRIM_HORIZON, never from LATEST, so a
    /// restart cannot skip the records that arrived meanwhile.
    pub sequence_number: Option<String>,
    /// The version clock after that record (see `version.rs`).
    pub clock: u64,
    /// Read to its end and every record acknowledged: children may start.
    pub finished: bool,
    /// Where reading starts while no sequence number is acknowledged (set by `sluice
    /// checkpoints reset`): LATEST or AT_TIMESTAMP. `None`: TRIM_HORIZON.
    pub start_at: Option<StartAt>,
}

/// How a reset start position is stored (a column of its own; the sequence number stays a
/// sequence number).
pub fn start_at_text(at: &StartAt) -> Option<String> {
    match at {
        StartAt::Latest => Some("latest".into()),
        StartAt::AtTimestamp(ms) => Some(format!("at_timestamp:{ms}")),
        StartAt::TrimHorizon | StartAt::AfterSequence(_) => None,
    }
}

pub fn start_at_of(text: Option<&str>) -> Option<StartAt> {
    match text? {
        "latest" => Some(StartAt::Latest),
        t => t
            .strip_prefix("at_timestamp:")
            .and_then(|ms| ms.parse().ok())
            .map(StartAt::AtTimestamp),
    }
}

/// An operation Elasticsearch refused for good (or a record that could not be decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub stream: String,
    pub shard_id: String,
    pub sequence_number: String,
    pub index: Option<String>,
    pub doc_id: Option<String>,
    /// The operation's custom routing (a route's `routing`), so a replay lands on its shard.
    pub routing: Option<String>,
    pub version: Option<u64>,
    /// "index", "delete" or "decode".
    pub action: String,
    /// The document source, or the raw record for decode failures.
    pub payload: String,
    pub error: String,
}

/// Which dead letters a command works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterSelection {
    All,
    Ids(Vec<i64>),
    /// Stored at or after this time (ms since the epoch).
    Since(i64),
    /// Stored before this time (ms since the epoch).
    Before(i64),
}

/// A dead letter as stored: its row id and when it was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDeadLetter {
    pub id: i64,
    pub created_at_ms: i64,
    pub letter: DeadLetter,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("checkpoint store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("checkpoint store thread has stopped")]
    Stopped,
}

enum Command {
    Load(
        String,
        oneshot::Sender<Result<HashMap<String, ShardCheckpoint>, StoreError>>,
    ),
    Commit(
        String,
        Vec<(String, ShardCheckpoint)>,
        oneshot::Sender<Result<(), StoreError>>,
    ),
    DeadLetter(Vec<DeadLetter>, oneshot::Sender<Result<(), StoreError>>),
    Forget(String, Vec<String>, oneshot::Sender<Result<(), StoreError>>),
    DeadLetters(oneshot::Sender<Result<Vec<DeadLetter>, StoreError>>),
    CountDeadLetters(oneshot::Sender<Result<u64, StoreError>>),
    /// Anything else on the connection (the SQLite lease backend).
    Run(Box<dyn FnOnce(&mut Connection) + Send>),
}

/// Handle to the store thread. Cheap to clone.
#[derive(Clone)]
pub struct CheckpointStore {
    tx: std_mpsc::Sender<Command>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS checkpoints (
    stream          TEXT NOT NULL,
    shard_id        TEXT NOT NULL,
    sequence_number TEXT,
    clock           INTEGER NOT NULL,
    finished        INTEGER NOT NULL DEFAULT 0,
    updated_at_ms   INTEGER NOT NULL,
    start_at        TEXT,
    PRIMARY KEY (stream, shard_id)
);
-- Shard leases of the SQLite backend (src/lease/sqlite.rs): workers on one host share this file.
CREATE TABLE IF NOT EXISTS leases (
    stream          TEXT NOT NULL,
    shard_id        TEXT NOT NULL,
    owner           TEXT,
    epoch           INTEGER NOT NULL DEFAULT 0,
    counter         INTEGER NOT NULL DEFAULT 0,
    next_owner      TEXT,
    updated_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (stream, shard_id)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    stream          TEXT NOT NULL,
    shard_id        TEXT NOT NULL,
    sequence_number TEXT NOT NULL,
    index_name      TEXT,
    doc_id          TEXT,
    version         INTEGER,
    action          TEXT NOT NULL,
    payload         TEXT NOT NULL,
    error           TEXT NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    routing         TEXT
);
";

impl CheckpointStore {
    /// Opens (creating if needed) the file and starts the store thread.
    pub fn open(path: &Path, journal: JournalMode) -> Result<Self, StoreError> {
        // Workers starting together on one new file (the SQLite lease backend) race to switch
        // its journal mode, which SQLite answers "busy" at once rather than through the busy
        // handler: try again for a while.
        let mut attempt = 0;
        let conn = loop {
            match Self::prepare(path, journal) {
                Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy && attempt < 40 =>
                {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(
                        50 + fastrand::u64(0..100),
                    ));
                }
                other => break other?,
            }
        };
        let (tx, rx) = std_mpsc::channel();
        std::thread::Builder::new()
            .name("sluice-sqlite".into())
            .spawn(move || serve(conn, rx))
            .expect("spawning a thread");
        Ok(Self { tx })
    }

    fn prepare(path: &Path, journal: JournalMode) -> Result<Connection, StoreError> {
        let conn = Connection::open(path)?;
        // other workers may share the file: wait for their locks rather than fail at once
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mode = match journal {
            JournalMode::Wal => "WAL",
            JournalMode::Delete => "DELETE",
        };
        conn.pragma_update(None, "journal_mode", mode)?;
        // FULL: a committed checkpoint survives power loss too, in either journal mode.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        // files written before `checkpoints reset` existed
        let has_start_at: bool = conn.query_row(
            "SELECT COUNT(*) FROM pragma_table_info('checkpoints') WHERE name = 'start_at'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !has_start_at {
            add_column(&conn, "ALTER TABLE checkpoints ADD COLUMN start_at TEXT")?;
        }
        // files written before routes had custom routing
        let has_routing: bool = conn.query_row(
            "SELECT COUNT(*) FROM pragma_table_info('dead_letters') WHERE name = 'routing'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !has_routing {
            add_column(&conn, "ALTER TABLE dead_letters ADD COLUMN routing TEXT")?;
        }
        Ok(conn)
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| StoreError::Stopped)?;
        answer.await.map_err(|_| StoreError::Stopped)?
    }

    pub async fn load(&self, stream: &str) -> Result<HashMap<String, ShardCheckpoint>, StoreError> {
        self.ask(|r| Command::Load(stream.to_owned(), r)).await
    }

    /// Writes the checkpoints of several shards in one transaction.
    pub async fn commit(
        &self,
        stream: &str,
        updates: Vec<(String, ShardCheckpoint)>,
    ) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        self.ask(|r| Command::Commit(stream.to_owned(), updates, r))
            .await
    }

    /// Deletes the checkpoints of finished shards nobody needs any more (see the coordinator).
    pub async fn forget(&self, stream: &str, shards: Vec<String>) -> Result<(), StoreError> {
        if shards.is_empty() {
            return Ok(());
        }
        self.ask(|r| Command::Forget(stream.to_owned(), shards, r))
            .await
    }

    pub async fn dead_letter(&self, letters: Vec<DeadLetter>) -> Result<(), StoreError> {
        if letters.is_empty() {
            return Ok(());
        }
        self.ask(|r| Command::DeadLetter(letters, r)).await
    }

    /// Stores dead letters, retrying until SQLite accepts them: a dead letter must be durable
    /// before the operation is acknowledged, or the checkpoint could pass a refused write.
    pub async fn dead_letter_durably(&self, letters: Vec<DeadLetter>) {
        let mut delay = std::time::Duration::from_millis(50);
        while let Err(e) = self.dead_letter(letters.clone()).await {
            tracing::error!(error = %e, "writing dead letters failed; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_secs(5));
        }
    }

    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.ask(Command::DeadLetters).await
    }

    /// Runs `work` on the store's connection, on its thread.
    pub async fn with_connection<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn FnOnce(&mut Connection) + Send> = Box::new(move |conn| {
            let _ = reply.send(work(conn));
        });
        self.tx
            .send(Command::Run(job))
            .map_err(|_| StoreError::Stopped)?;
        answer.await.map_err(|_| StoreError::Stopped)?
    }

    /// The dead letters `which` selects, oldest first, with their row ids and times.
    pub async fn stored_dead_letters(
        &self,
        which: DeadLetterSelection,
    ) -> Result<Vec<StoredDeadLetter>, StoreError> {
        self.with_connection(move |conn| {
            let (clause, values): (String, Vec<i64>) = match &which {
                DeadLetterSelection::All => ("1 = 1".into(), vec![]),
                DeadLetterSelection::Ids(ids) => (
                    format!("id IN ({})", vec!["?"; ids.len()].join(", ")),
                    ids.clone(),
                ),
                DeadLetterSelection::Since(ms) => ("created_at_ms >= ?".into(), vec![*ms]),
                DeadLetterSelection::Before(ms) => ("created_at_ms < ?".into(), vec![*ms]),
            };
            let mut stmt = conn.prepare(&format!(
                "SELECT id, created_at_ms, stream, shard_id, sequence_number, index_name, doc_id, version, action, payload, error, routing
                 FROM dead_letters WHERE {clause} ORDER BY id"
            ))?;
            let rows = stmt.query_map(rusqlite::params_from_iter(values), |r| {
                Ok(StoredDeadLetter {
                    id: r.get(0)?,
                    created_at_ms: r.get(1)?,
                    letter: letter_at(r, 2)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Removes these dead letters; returns how many were there.
    pub async fn remove_dead_letters(&self, ids: Vec<i64>) -> Result<usize, StoreError> {
        self.with_connection(move |conn| {
            let tx = conn.transaction()?;
            let mut removed = 0;
            {
                let mut stmt = tx.prepare_cached("DELETE FROM dead_letters WHERE id = ?1")?;
                for id in ids {
                    removed += stmt.execute([id])?;
                }
            }
            tx.commit()?;
            Ok(removed)
        })
        .await
    }

    /// Rows in the dead-letter table (the `sluice_dead_letters` gauge).
    pub async fn count_dead_letters(&self) -> Result<u64, StoreError> {
        self.ask(Command::CountDeadLetters).await
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn serve(mut conn: Connection, rx: std_mpsc::Receiver<Command>) {
    // Ends when every handle is dropped.
    while let Ok(cmd) = rx.recv() {
        match cmd {
            Command::Load(stream, reply) => {
                let _ = reply.send(load(&conn, &stream));
            }
            Command::Commit(stream, updates, reply) => {
                let _ = reply.send(commit(&mut conn, &stream, &updates));
            }
            Command::DeadLetter(letters, reply) => {
                let _ = reply.send(dead_letter(&mut conn, &letters));
            }
            Command::Forget(stream, shards, reply) => {
                let _ = reply.send(forget(&mut conn, &stream, &shards));
            }
            Command::DeadLetters(reply) => {
                let _ = reply.send(dead_letters(&conn));
            }
            Command::Run(job) => job(&mut conn),
            Command::CountDeadLetters(reply) => {
                let count = conn
                    .query_row("SELECT COUNT(*) FROM dead_letters", [], |r| {
                        r.get::<_, i64>(0)
                    })
                    .map(|n| n as u64)
                    .map_err(StoreError::from);
                let _ = reply.send(count);
            }
        }
    }
}

pub(crate) fn load(
    conn: &Connection,
    stream: &str,
) -> Result<HashMap<String, ShardCheckpoint>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT shard_id, sequence_number, clock, finished, start_at FROM checkpoints WHERE stream = ?1",
    )?;
    let rows = stmt.query_map(params![stream], |r| {
        Ok((
            r.get::<_, String>(0)?,
            ShardCheckpoint {
                sequence_number: r.get(1)?,
                clock: r.get::<_, i64>(2)? as u64,
                finished: r.get::<_, i64>(3)? != 0,
                start_at: start_at_of(r.get::<_, Option<String>>(4)?.as_deref()),
            },
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn commit(
    conn: &mut Connection,
    stream: &str,
    updates: &[(String, ShardCheckpoint)],
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    for (shard, cp) in updates {
        upsert_checkpoint(&tx, stream, shard, cp)?;
    }
    tx.commit()?;
    Ok(())
}

/// Writes one checkpoint inside a transaction. A checkpoint never moves back (sequence number,
/// clock) nor back to "unfinished".
pub(crate) fn upsert_checkpoint(
    tx: &rusqlite::Transaction<'_>,
    stream: &str,
    shard: &str,
    cp: &ShardCheckpoint,
) -> Result<(), StoreError> {
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO checkpoints (stream, shard_id, sequence_number, clock, finished, updated_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (stream, shard_id) DO UPDATE SET
               sequence_number = CASE
                 WHEN excluded.sequence_number IS NULL THEN checkpoints.sequence_number
                 WHEN checkpoints.sequence_number IS NULL THEN excluded.sequence_number
                 -- decimal strings without leading zeros: longer is larger, else compare as text
                 WHEN length(excluded.sequence_number) > length(checkpoints.sequence_number)
                   OR (length(excluded.sequence_number) = length(checkpoints.sequence_number)
                       AND excluded.sequence_number > checkpoints.sequence_number)
                 THEN excluded.sequence_number
                 ELSE checkpoints.sequence_number END,
               clock = MAX(excluded.clock, checkpoints.clock),
               finished = MAX(excluded.finished, checkpoints.finished),
               updated_at_ms = excluded.updated_at_ms",
        )?;
        stmt.execute(params![
            stream,
            shard,
            cp.sequence_number,
            cp.clock as i64,
            cp.finished as i64,
            now_ms()
        ])?;
    }
    Ok(())
}

pub(crate) fn forget(
    conn: &mut Connection,
    stream: &str,
    shards: &[String],
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        // Only finished rows: an unfinished checkpoint is never thrown away.
        let mut stmt = tx.prepare_cached(
            "DELETE FROM checkpoints WHERE stream = ?1 AND shard_id = ?2 AND finished = 1",
        )?;
        for shard in shards {
            stmt.execute(params![stream, shard])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Adds a column to a file an older sluice wrote.
fn add_column(conn: &Connection, statement: &str) -> Result<(), rusqlite::Error> {
    match conn.execute_batch(statement) {
        // another process opening the same file added it first
        Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("duplicate column") => Ok(()),
        other => other,
    }
}

fn dead_letter(conn: &mut Connection, letters: &[DeadLetter]) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO dead_letters (stream, shard_id, sequence_number, index_name, doc_id, version, action, payload, error, created_at_ms, routing)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        let now = now_ms();
        for d in letters {
            stmt.execute(params![
                d.stream,
                d.shard_id,
                d.sequence_number,
                d.index,
                d.doc_id,
                d.version.map(|v| v as i64),
                d.action,
                d.payload,
                d.error,
                now,
                d.routing
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn dead_letters(conn: &Connection) -> Result<Vec<DeadLetter>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT stream, shard_id, sequence_number, index_name, doc_id, version, action, payload, error, routing FROM dead_letters ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| letter_at(r, 0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A dead letter from its ten columns (stream … error, routing), starting at column `from`.
fn letter_at(r: &rusqlite::Row, from: usize) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        stream: r.get(from)?,
        shard_id: r.get(from + 1)?,
        sequence_number: r.get(from + 2)?,
        index: r.get(from + 3)?,
        doc_id: r.get(from + 4)?,
        version: r.get::<_, Option<i64>>(from + 5)?.map(|v| v as u64),
        action: r.get(from + 6)?,
        payload: r.get(from + 7)?,
        error: r.get(from + 8)?,
        routing: r.get(from + 9)?,
    })
}

/// Reads the checkpoints of a file without starting a store (tests, tooling).
pub fn read_checkpoints(
    path: &Path,
    stream: &str,
) -> Result<HashMap<String, ShardCheckpoint>, StoreError> {
    let conn = Connection::open(path)?;
    let exists: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_master WHERE name = 'checkpoints'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if exists.is_none() {
        return Ok(HashMap::new());
    }
    load(&conn, stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn checkpoints_survive_reopening_and_never_regress() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [JournalMode::Wal, JournalMode::Delete] {
            let path = dir.path().join(format!("{mode:?}.db"));
            let store = CheckpointStore::open(&path, mode).unwrap();
            let cp = |seq: &str, clock, finished| ShardCheckpoint {
                sequence_number: Some(seq.into()),
                clock,
                finished,
                start_at: None,
            };
            store
                .commit("s", vec![("shard-1".into(), cp("100", 7, false))])
                .await
                .unwrap();
            store
                .commit("s", vec![("shard-1".into(), cp("200", 9, true))])
                .await
                .unwrap();
            // a stale update neither un-finishes the shard nor lowers its clock or sequence number
            store
                .commit("s", vec![("shard-1".into(), cp("200", 8, false))])
                .await
                .unwrap();
            drop(store);
            let loaded = read_checkpoints(&path, "s").unwrap();
            assert_eq!(loaded["shard-1"], cp("200", 9, true));
            assert!(read_checkpoints(&path, "other").unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn only_finished_checkpoints_can_be_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.db");
        let store = CheckpointStore::open(&path, JournalMode::Wal).unwrap();
        let cp = |finished| ShardCheckpoint {
            sequence_number: Some("1".into()),
            clock: 1,
            finished,
            start_at: None,
        };
        store
            .commit(
                "s",
                vec![("old".into(), cp(true)), ("open".into(), cp(false))],
            )
            .await
            .unwrap();
        store
            .forget("s", vec!["old".into(), "open".into()])
            .await
            .unwrap();
        let left = store.load("s").await.unwrap();
        assert!(!left.contains_key("old"));
        assert!(
            left.contains_key("open"),
            "an unfinished checkpoint is kept"
        );
    }

    #[tokio::test]
    async fn dead_letters_keep_the_operation_and_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(&dir.path().join("cp.db"), JournalMode::Wal).unwrap();
        let letter = DeadLetter {
            stream: "s".into(),
            shard_id: "shard-1".into(),
            sequence_number: "42".into(),
            index: Some("posts".into()),
            doc_id: Some("p1".into()),
            routing: Some("tenant-7".into()),
            version: Some(1_700_000_000_000_000),
            action: "index".into(),
            payload: "{\"n\":\"x\"}".into(),
            error: "mapper_parsing_exception: failed to parse field [n]".into(),
        };
        store.dead_letter(vec![letter.clone()]).await.unwrap();
        assert_eq!(store.dead_letters().await.unwrap(), vec![letter]);
    }

    #[tokio::test]
    async fn a_file_from_before_dead_letters_kept_their_routing_opens_with_its_letters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.db");
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE dead_letters (
                    id INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL, shard_id TEXT NOT NULL,
                    sequence_number TEXT NOT NULL, index_name TEXT, doc_id TEXT, version INTEGER,
                    action TEXT NOT NULL, payload TEXT NOT NULL, error TEXT NOT NULL,
                    created_at_ms INTEGER NOT NULL);
                 INSERT INTO dead_letters (stream, shard_id, sequence_number, index_name, doc_id, version, action, payload, error, created_at_ms)
                 VALUES ('s', 'shard-1', '41', 'posts', 'p0', 7, 'delete', '', 'refused', 0);",
            )
            .unwrap();
        }
        let store = CheckpointStore::open(&path, JournalMode::Wal).unwrap();
        let routed = DeadLetter {
            stream: "s".into(),
            shard_id: "shard-1".into(),
            sequence_number: "42".into(),
            index: Some("comments".into()),
            doc_id: Some("POST#1|COMMENT#1".into()),
            routing: Some("POST#1".into()),
            version: Some(8),
            action: "delete".into(),
            payload: String::new(),
            error: "refused".into(),
        };
        store.dead_letter(vec![routed.clone()]).await.unwrap();
        let letters = store.dead_letters().await.unwrap();
        assert_eq!(letters.len(), 2);
        assert_eq!(letters[0].doc_id.as_deref(), Some("p0"));
        assert_eq!(letters[0].routing, None);
        assert_eq!(letters[1], routed);
    }
}
