//! The batcher: operations are routed to `max_in_flight` lanes by document; each lane gathers a
//! bulk request (flushing on `max_documents`, `max_bytes` or `max_wait`), hands it to the sink
//! and waits for it to be fully resolved before the next one.
//!
//! Why lanes by document: every operation on one document goes through one lane, one request
//! at a time, in shard order — so a document's writes are never reordered or concurrent, while
//! different documents proceed in parallel even when the whole stream is one shard. Within a
//! batch, the newest operation on a document (highest version) replaces the others (it carries
//! the whole new state, or the delete), which also keeps a retried old write from racing a newer
//! one — and a late, older change from an out-of-order source can never displace a newer one.
//!
//! Backpressure is structural: lane queues are bounded, and a byte budget (a semaphore) caps the
//! encoded operations in flight between the readers and Elasticsearch. When the cluster is slow,
//! the budget runs out and readers stop polling.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use crate::config::BatchConfig;
use crate::metrics::Metrics;
use crate::sink::{BulkOp, BulkSink};

/// Sends operations to lanes. Cloned into every shard reader.
#[derive(Clone)]
pub struct Router {
    lanes: Vec<mpsc::Sender<BulkOp>>,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
    metrics: Metrics,
}

/// Bytes of encoded operations allowed between readers and the sink.
pub fn pipeline_budget(cfg: &BatchConfig) -> usize {
    // Enough for every lane to have one request in flight and the next one filling.
    (cfg.max_bytes as usize).saturating_mul(2 * cfg.max_in_flight + 1)
}

impl Router {
    /// Waits for budget and lane capacity, then queues the operation. This wait is the
    /// backpressure that stops readers when Elasticsearch is slow.
    pub async fn send(&self, mut op: BulkOp) -> Result<(), BulkOp> {
        let want = op.len().clamp(1, self.budget_bytes) as u32;
        let permit = match self.budget.clone().acquire_many_owned(want).await {
            Ok(p) => p,
            Err(_) => return Err(op),
        };
        self.metrics.pipeline_bytes.add(want as i64);
        op.permits.push(permit);
        let lane = lane_of(&op.index, &op.id, self.lanes.len());
        self.lanes[lane].send(op).await.map_err(|e| e.0)
    }
}

fn lane_of(index: &str, id: &str, lanes: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    index.hash(&mut h);
    id.hash(&mut h);
    (h.finish() % lanes as u64) as usize
}

/// Builds the router and the lane tasks. Lanes end when every router clone is dropped and
/// their queues are drained.
pub fn start(
    cfg: &BatchConfig,
    sink: Arc<BulkSink>,
    metrics: Metrics,
) -> (Router, Vec<tokio::task::JoinHandle<()>>) {
    let budget_bytes = pipeline_budget(cfg);
    metrics.pipeline_budget_bytes.set(budget_bytes as i64);
    let mut lanes = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..cfg.max_in_flight {
        let (tx, rx) = mpsc::channel(cfg.max_documents);
        lanes.push(tx);
        let lane = Lane {
            rx,
            sink: sink.clone(),
            cfg: cfg.clone(),
            metrics: metrics.clone(),
        };
        tasks.push(tokio::spawn(lane.run()));
    }
    let router = Router {
        lanes,
        budget: Arc::new(Semaphore::new(budget_bytes)),
        budget_bytes,
        metrics,
    };
    (router, tasks)
}

struct Lane {
    rx: mpsc::Receiver<BulkOp>,
    sink: Arc<BulkSink>,
    cfg: BatchConfig,
    metrics: Metrics,
}

impl Lane {
    async fn run(mut self) {
        let mut carry: Option<BulkOp> = None;
        loop {
            let first = match carry.take() {
                Some(op) => op,
                None => match self.rx.recv().await {
                    Some(op) => op,
                    None => return,
                },
            };
            let (batch, next) = gather(first, &mut self.rx, &self.cfg).await;
            carry = next;
            let released: i64 = batch
                .iter()
                .flat_map(|op| op.permits.iter())
                .map(|p| p.num_permits() as i64)
                .sum();
            self.sink.write(batch).await;
            self.metrics.pipeline_bytes.sub(released);
        }
    }
}

/// Collects one bulk request starting with `first`: until `max_documents`, until the next
/// operation would push the body past `max_bytes` (it is returned as the carry-over), or until
/// `max_wait` has passed since the first. Of several operations on one document, the one with
/// the highest version (the latest change) is kept and carries the others' acknowledgements.
pub async fn gather(
    first: BulkOp,
    rx: &mut mpsc::Receiver<BulkOp>,
    cfg: &BatchConfig,
) -> (Vec<BulkOp>, Option<BulkOp>) {
    let deadline = Instant::now() + cfg.max_wait;
    let mut batch = Batch::new(first);
    while batch.ops.len() < cfg.max_documents {
        let op = match rx.try_recv() {
            Ok(op) => op,
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(op)) => op,
                    Ok(None) | Err(_) => break,
                }
            }
        };
        if let Err(op) = batch.push(op, cfg.max_bytes as usize) {
            return (batch.ops, Some(op));
        }
    }
    (batch.ops, None)
}

struct Batch {
    ops: Vec<BulkOp>,
    bytes: usize,
    by_doc: HashMap<(Arc<str>, String), usize>,
}

impl Batch {
    fn new(first: BulkOp) -> Self {
        let mut b = Batch {
            ops: Vec::new(),
            bytes: 0,
            by_doc: HashMap::new(),
        };
        b.by_doc.insert((first.index.clone(), first.id.clone()), 0);
        b.bytes = first.len();
        b.ops.push(first);
        b
    }

    /// Adds `op`, or hands it back if the body would exceed `max_bytes`.
    fn push(&mut self, op: BulkOp, max_bytes: usize) -> Result<(), BulkOp> {
        let key = (op.index.clone(), op.id.clone());
        if let Some(&at) = self.by_doc.get(&key) {
            if op.version < self.ops[at].version {
                // Arrived late (an out-of-order source): what the batch holds is newer.
                self.ops[at].supersede(op);
                return Ok(());
            }
            let grown = self.bytes - self.ops[at].len() + op.len();
            if grown > max_bytes && grown > self.bytes {
                return Err(op);
            }
            self.bytes = grown;
            let earlier = std::mem::replace(&mut self.ops[at], op);
            self.ops[at].supersede(earlier);
            return Ok(());
        }
        if self.bytes + op.len() > max_bytes {
            return Err(op);
        }
        self.bytes += op.len();
        self.by_doc.insert(key, self.ops.len());
        self.ops.push(op);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::AckTracker;
    use crate::checkpoint::ShardCheckpoint;
    use crate::sink::Origin;
    use crate::transform::DocAction;
    use proptest::prelude::*;
    use serde_json::json;
    use std::time::Duration;

    fn op(id: &str, version: u64, body_len: usize) -> BulkOp {
        let origin = Origin {
            stream: "s".into(),
            shard: "sh".into(),
            sequence_number: version.to_string(),
            epoch: 1,
        };
        BulkOp::new(
            "posts".into(),
            id.into(),
            version,
            DocAction::Index(json!({"pad": "x".repeat(body_len)})),
            origin,
        )
    }

    fn cfg(max_documents: usize, max_bytes: u64) -> BatchConfig {
        BatchConfig {
            max_documents,
            max_bytes,
            max_wait: Duration::from_millis(20),
            max_in_flight: 1,
        }
    }

    #[tokio::test]
    async fn flushes_on_count() {
        let (tx, mut rx) = mpsc::channel(100);
        for i in 0..10 {
            tx.send(op(&i.to_string(), i, 10)).await.unwrap();
        }
        let (batch, carry) = gather(op("first", 0, 10), &mut rx, &cfg(4, 1 << 20)).await;
        assert_eq!(batch.len(), 4);
        assert!(carry.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn flushes_on_max_wait_when_the_stream_is_quiet() {
        let (_tx, mut rx) = mpsc::channel::<BulkOp>(100);
        let started = Instant::now();
        let (batch, _) = gather(op("a", 1, 10), &mut rx, &cfg(100, 1 << 20)).await;
        assert_eq!(batch.len(), 1);
        assert_eq!(started.elapsed(), Duration::from_millis(20));
    }

    #[tokio::test]
    async fn an_oversized_document_goes_alone() {
        let (tx, mut rx) = mpsc::channel(10);
        tx.send(op("b", 2, 10)).await.unwrap();
        let (batch, carry) = gather(op("big", 1, 5000), &mut rx, &cfg(100, 1024)).await;
        assert_eq!(batch.len(), 1);
        assert_eq!(carry.unwrap().id, "b");
    }

    #[tokio::test]
    async fn a_late_older_change_does_not_displace_a_newer_one_in_a_batch() {
        let (tx, mut rx) = mpsc::channel(10);
        tx.send(op("a", 5, 10)).await.unwrap();
        drop(tx);
        let (batch, _) = gather(op("a", 9, 10), &mut rx, &cfg(100, 1 << 20)).await;
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].version, 9);
    }

    #[tokio::test]
    async fn a_later_change_to_the_same_document_replaces_the_earlier_and_carries_its_ack() {
        let tracker = AckTracker::default();
        let shard = "sh".into();
        let mut acks = tracker.register(&shard, 1, ShardCheckpoint::default(), 2, 2);
        let mut first = op("a", 1, 10);
        first.acks.push(acks.remove(0));
        let mut second = op("a", 2, 10);
        second.acks.push(acks.remove(0));
        let (tx, mut rx) = mpsc::channel(10);
        tx.send(second).await.unwrap();
        drop(tx);
        let (batch, _) = gather(first, &mut rx, &cfg(100, 1 << 20)).await;
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].version, 2);
        assert_eq!(batch[0].acks.len(), 2);
        for a in batch.into_iter().flat_map(|o| o.acks) {
            a.done();
        }
    }

    proptest! {
        /// No request body exceeds max_bytes unless it is a single document; nothing is lost:
        /// every document's newest version is in some batch, in arrival order per document.
        #[test]
        fn batches_respect_bytes_and_keep_the_newest_version(
            sizes in prop::collection::vec((0usize..8, 1usize..400), 1..60),
            max_docs in 1usize..10,
            max_bytes in 200u64..2000,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            rt.block_on(async {
                let (tx, mut rx) = mpsc::channel(100);
                for (v, (doc, len)) in sizes.iter().enumerate() {
                    tx.send(op(&doc.to_string(), v as u64 + 1, *len)).await.unwrap();
                }
                drop(tx);
                let c = cfg(max_docs, max_bytes);
                let mut carry = None;
                let mut newest: HashMap<String, u64> = HashMap::new();
                loop {
                    let first = match carry.take() { Some(o) => o, None => match rx.recv().await { Some(o) => o, None => break } };
                    let (batch, next) = gather(first, &mut rx, &c).await;
                    carry = next;
                    let bytes: usize = batch.iter().map(BulkOp::len).sum();
                    prop_assert!(batch.len() <= max_docs);
                    prop_assert!(batch.len() == 1 || bytes <= max_bytes as usize, "{} bytes in {} docs", bytes, batch.len());
                    for o in &batch {
                        let prev = newest.insert(o.id.clone(), o.version);
                        prop_assert!(prev.is_none_or(|p| p < o.version));
                    }
                }
                let mut expect: HashMap<String, u64> = HashMap::new();
                for (v, (doc, _)) in sizes.iter().enumerate() {
                    expect.insert(doc.to_string(), v as u64 + 1);
                }
                prop_assert_eq!(newest, expect);
                Ok(())
            })?;
        }
    }
}
