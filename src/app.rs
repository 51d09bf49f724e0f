//! Wiring: source → transform → batcher → sink, acknowledgements → committer → checkpoints.
//!
//! Shutdown runs in a fixed order under one deadline: stop reading → lanes flush what they
//! hold → wait for their acknowledgements → commit checkpoints → stop the HTTP endpoint.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::ack::{AckTracker, Committer};
use crate::batch;
use crate::checkpoint::CheckpointStore;
use crate::config::{Config, Consumer, KinesisFormat, LeaseBackend, SourceType, StartPosition};
use crate::http::{self, Health};
use crate::lease::dynamodb::DynamoDbLeases;
use crate::lease::keeper::{LeaseKeeper, LeaseView};
use crate::lease::sqlite::SqliteLeases;
use crate::lease::{Fence, LeaseTable};
use crate::metrics::Metrics;
use crate::retry::Backoff;
use crate::sink::BulkSink;
use crate::source::coordinator::Coordinator;
use crate::source::dynamodb_streams::{DynamoDbStreams, SetupError, StreamMeta, StreamRecord};
use crate::source::fan_out::FanOut;
use crate::source::kinesis::Kinesis;
use crate::source::reader::{Decoder, ReaderContext};
use crate::source::{ApiError, ShardApi, StartAt};
use crate::transform;
use crate::transform::dms::DmsRoutes;
use crate::transform::route::Routes;

/// Runs sluice until `shutdown` resolves (SIGTERM/SIGINT in the binary; anything in tests).
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let health = Arc::new(Health::new(config.health.sink_error_grace));
    let background = CancellationToken::new();
    let http = http::serve(
        config.http.listen,
        metrics.clone(),
        health.clone(),
        background.clone(),
    )
    .await
    .with_context(|| format!("failed to listen on http.listen = {}", config.http.listen))?;
    let store = CheckpointStore::open(&config.checkpoint.path, config.checkpoint.journal_mode)
        .with_context(|| {
            format!(
                "failed to open checkpoint.path = {}",
                config.checkpoint.path.display()
            )
        })?;
    health.set_store_open(true);
    let services = Services {
        metrics,
        health,
        store,
        tracker: AckTracker::default(),
    };
    let result = match config.source.kind {
        SourceType::DynamodbStreams => run_dynamodb_streams(&config, services, shutdown).await,
        SourceType::Kinesis => run_kinesis(&config, services, shutdown).await,
    };
    background.cancel();
    let _ = http.await;
    result
}

async fn run_dynamodb_streams(
    config: &Config,
    services: Services,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let (api, meta) = tokio::select! {
        r = connect(config) => r?,
        _ = &mut shutdown => return Ok(()),
    };
    let routes = Routes::from_config(config, Some(&meta.key_attributes))?;
    if config.source.old_images && meta.view_type != "NEW_AND_OLD_IMAGES" {
        anyhow::bail!(
            "source.old_images = true, but stream {} has view type {}: its records carry no old images (use NEW_AND_OLD_IMAGES)",
            meta.arn,
            meta.view_type
        );
    }
    let table = stream_table(config, &meta.arn);
    // a route on another table would silently take nothing
    if let Some(r) = config
        .route
        .iter()
        .find(|r| r.table.is_some() && r.table != table)
    {
        anyhow::bail!(
            "route `{}` takes table `{}`, but this stream is table `{}`'s: remove `table` or correct it",
            r.name.as_deref().unwrap_or("(unnamed)"),
            r.table.as_deref().unwrap_or_default(),
            table.as_deref().unwrap_or("?")
        );
    }
    tracing::info!(stream = %meta.arn, view_type = %meta.view_type, key = ?meta.key_attributes, routes = ?routes.routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), "following DynamoDB stream");
    let reads = routes.reads();
    let decode: Decoder<StreamRecord> = Arc::new(move |r| {
        routes.apply(transform::dynamodb_row(
            r.json().as_bytes(),
            table.as_deref(),
            &reads,
        )?)
    });
    run_pipeline(config, services, api, meta.arn, decode, shutdown).await
}

async fn run_kinesis(
    config: &Config,
    services: Services,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let stream = config.source.stream.clone().unwrap_or_default();
    let api = tokio::select! {
        r = retry_setup("the Kinesis stream", || Kinesis::connect(&config.source), |e| !matches!(e, ApiError::NotFound(_))) => {
            r.map_err(|e| anyhow::anyhow!("Kinesis stream `{stream}` (source.stream): {e}"))?
        }
        _ = &mut shutdown => return Ok(()),
    };
    let decode: Decoder<aws_sdk_kinesis::types::Record> = match config.source.format {
        Some(KinesisFormat::Dms) => {
            let routes = DmsRoutes {
                routes: Routes::from_config(config, None)?,
                before_image_field: config.source.before_image_field.clone(),
                old_images: config.source.old_images,
            };
            tracing::info!(stream = %api.arn, tables = ?routes.routes.routes.iter().filter_map(|r| r.table.as_deref()).collect::<Vec<_>>(), "following DMS messages in Kinesis");
            Arc::new(move |r| routes.decode(r.data().as_ref()))
        }
        Some(KinesisFormat::Dynamodb) | None => {
            let routes = Routes::from_config(config, None)?;
            tracing::info!(stream = %api.arn, routes = ?routes.routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), "following DynamoDB changes in Kinesis");
            let reads = routes.reads();
            Arc::new(move |r| {
                routes.apply(transform::dynamodb_kinesis_row(r.data().as_ref(), &reads)?)
            })
        }
    };
    let arn = api.arn.clone();
    match config.source.consumer {
        Consumer::Polling => run_pipeline(config, services, api, arn, decode, shutdown).await,
        Consumer::EnhancedFanOut => {
            let name = consumer_name(config);
            let fan_out = tokio::select! {
                r = FanOut::connect(api, &name, config.source.subscription_renewal, services.metrics.clone()) => r?,
                _ = &mut shutdown => return Ok(()),
            };
            tracing::info!(stream = %arn, consumer = %name, consumer_arn = %fan_out.consumer_arn(), "reading with enhanced fan-out");
            run_pipeline(config, services, Arc::new(fan_out), arn, decode, shutdown).await
        }
    }
}

/// The enhanced fan-out consumer's name: `source.consumer_name`, else `sluice-`, the indices
/// this configuration writes and a digest of the cluster it writes them to — the same across
/// restarts and deploys of one configuration, different for a deployment that fills other
/// indices or another cluster (two deployments sharing a consumer would take each other's
/// subscriptions over). Adding a route changes it: set `consumer_name` to keep one.
pub fn consumer_name(config: &Config) -> String {
    if let Some(name) = &config.source.consumer_name {
        return name.clone();
    }
    // FNV-1a: the same in every build, unlike std's hasher
    let digest = |text: &str| {
        text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    };
    let targets = crate::backfill::targets(config)
        .map(|t| crate::backfill::target_names(&t))
        .unwrap_or_else(|_| config.sink.index.clone());
    let readable: String = format!("sluice-{targets}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cluster = format!("{:08x}", digest(&config.sink.url) as u32);
    if readable.len() + 9 > 128 {
        // long lists of indices: a prefix and a digest of the whole
        return format!("{}-{:016x}-{cluster}", &readable[..100], digest(&readable));
    }
    format!("{readable}-{cluster}")
}

/// The name of the table a DynamoDB stream belongs to, from the stream's ARN
/// (`arn:aws:dynamodb:…:table/NAME/stream/…`), else `source.table`.
fn stream_table(config: &Config, arn: &str) -> Option<String> {
    arn.split_once(":table/")
        .and_then(|(_, rest)| rest.split('/').next())
        .map(str::to_owned)
        .or_else(|| config.source.table.clone())
}

/// What a pipeline shares with the rest of the process.
pub struct Services {
    pub metrics: Metrics,
    pub health: Arc<Health>,
    pub store: CheckpointStore,
    /// Pages read and not yet checkpointed (shutdown reports from it; tests observe it).
    pub tracker: AckTracker,
}

/// This worker's id: `lease.worker_id`, or host name and process id.
pub fn worker_id(config: &Config) -> String {
    config
        .lease
        .worker_id
        .clone()
        .unwrap_or_else(crate::lease::default_worker_id)
}

/// Source → batcher → sink → committer for any [`ShardApi`], with the lease backend the
/// configuration names, until `shutdown`.
pub async fn run_pipeline<A: ShardApi>(
    config: &Config,
    services: Services,
    api: Arc<A>,
    stream: String,
    decode: Decoder<A::Record>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let worker = worker_id(config);
    match config.lease.backend {
        LeaseBackend::Sqlite => {
            let table = SqliteLeases::new(services.store.clone(), stream.clone(), worker);
            run_with_leases(
                config,
                services,
                api,
                stream,
                decode,
                Arc::new(table),
                shutdown,
            )
            .await
        }
        LeaseBackend::Dynamodb => {
            let table = DynamoDbLeases::connect(config, &stream, worker).await?;
            run_with_leases(
                config,
                services,
                api,
                stream,
                decode,
                Arc::new(table),
                shutdown,
            )
            .await
        }
    }
}

async fn run_with_leases<A: ShardApi, L: LeaseTable>(
    config: &Config,
    services: Services,
    api: Arc<A>,
    stream: String,
    decode: Decoder<A::Record>,
    table: Arc<L>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let Services {
        metrics,
        health,
        store,
        tracker,
    } = services;
    tracing::info!(worker_id = table.worker(), backend = ?config.lease.backend, "shard leases");
    let background = CancellationToken::new();
    let fence = Fence::default();
    let sink = Arc::new(
        BulkSink::new(
            &config.sink,
            &config.source.region,
            store.clone(),
            metrics.clone(),
            health.clone(),
            fence.clone(),
        )
        .await?,
    );
    if !sink.probe().await {
        tracing::warn!(url = %config.sink.url, "elasticsearch not reachable yet; writes will wait and retry");
    }
    tokio::spawn(probe_while_unreachable(
        sink.clone(),
        health.clone(),
        background.clone(),
    ));

    tokio::pin!(shutdown);
    if config.sink.manage_indices {
        // before anything is written: the first write would create the index dynamically
        tokio::select! {
            r = crate::index_setup::at_start(config, &background) => if let Err(e) = r {
                background.cancel();
                return Err(e);
            },
            _ = &mut shutdown => {
                background.cancel();
                return Ok(());
            }
        }
    }
    let (router, mut lanes) = batch::start(&config.batch, sink.clone(), metrics.clone());
    let (finished_tx, finished_rx) = mpsc::unbounded_channel();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (view_tx, view_rx) = watch::channel(LeaseView::default());
    let keeping = CancellationToken::new();
    let keeper = LeaseKeeper::new(
        table.clone(),
        &config.lease,
        metrics.clone(),
        health.clone(),
        view_tx,
        events_rx,
        fence.clone(),
    );
    let mut keeper = tokio::spawn(keeper.run(keeping.clone()));
    let committing = CancellationToken::new();
    let committed_any = Arc::new(AtomicBool::new(false));
    let committer = Committer {
        tracker: tracker.clone(),
        table: table.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        stall_after: config.health.stall_after,
        commit_interval: config.checkpoint.commit_interval,
        finished: finished_tx,
        lease_events: events_tx.clone(),
        fence: fence.clone(),
        committed_any: committed_any.clone(),
    };
    let mut committer = tokio::spawn(committer.run(committing.clone()));

    let backfill_out = crate::backfill::Writer {
        router: router.clone(),
        fence: fence.clone(),
    };
    let ctx = Arc::new(ReaderContext {
        stream: stream.into(),
        index: config.sink.index.clone().into(),
        decode,
        router,
        tracker: tracker.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
        poll_interval: config.source.poll_interval,
        idle_polls_per_second: config.source.idle_polls_per_second,
        idle_readers: Default::default(),
        records_per_call: config.source.records_per_call,
        backoff: Backoff::AWS,
    });
    let reading = CancellationToken::new();
    tokio::spawn(crate::commands::verify::export_last_run(
        store.clone(),
        metrics.clone(),
        background.clone(),
    ));
    tokio::spawn(crate::data_loss::watch(
        api.clone(),
        tracker.clone(),
        metrics.clone(),
        health.clone(),
        config.health.min_time_to_data_loss,
        background.clone(),
    ));
    let coordinator = Coordinator {
        api,
        ctx,
        table: table.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        initial: initial_position(config)?,
        discovery_interval: config.source.discovery_interval,
        parent_timeout: config.health.parent_timeout,
        finished: finished_rx,
        leases: view_rx,
        lease_events: events_tx,
    };
    let mut coordinator = tokio::spawn(coordinator.run(reading.clone()));
    // the backfill holds a router: it stops with the readers, so that the lanes can drain
    let backfill = config.backfill.on_start.then(|| {
        tokio::spawn(crate::backfill::on_start(
            config.clone(),
            store.clone(),
            backfill_out,
            metrics.clone(),
            health.clone(),
            reading.clone(),
        ))
    });

    tokio::select! {
        _ = &mut shutdown => tracing::info!("shutdown requested: stop reading, flush, commit"),
        r = &mut coordinator => anyhow::bail!("shard coordinator stopped unexpectedly: {r:?}"),
    }
    // One deadline for everything; the last part of it is kept for the final commit.
    let started = tokio::time::Instant::now();
    let timeout = config.shutdown.timeout;
    let drain_deadline = started + timeout.mul_f64(0.8);
    let commit_deadline = started + timeout.mul_f64(0.95);
    reading.cancel();
    if let Some(backfill) = backfill {
        let _ = backfill.await;
    }
    // Readers stop; when the last one is gone the router is dropped and each lane flushes
    // what it holds, waits for Elasticsearch's answer, and ends.
    let drained = tokio::time::timeout_at(drain_deadline, async {
        let _ = (&mut coordinator).await;
        for lane in lanes.iter_mut() {
            let _ = lane.await;
        }
    })
    .await
    .is_ok();
    if !drained {
        coordinator.abort();
        for lane in &lanes {
            lane.abort();
        }
    }
    committing.cancel();
    // A hung checkpoint store (an EFS mount that stopped answering) must not keep the process
    // past its deadline: the committer is abandoned there, and what it had not committed is
    // re-delivered on restart (with the same versions: harmless).
    let committed = tokio::time::timeout_at(commit_deadline, &mut committer)
        .await
        .is_ok();
    if !committed {
        committer.abort();
    }
    // Leases go last, once the checkpoints are committed: a successor starts at once, from
    // exactly where this worker stopped. (If the deadline passes first, they expire.)
    keeping.cancel();
    let release_deadline = started + timeout.mul_f64(0.99);
    if tokio::time::timeout_at(release_deadline, &mut keeper)
        .await
        .is_err()
    {
        keeper.abort();
        tracing::warn!(
            "shutdown deadline reached before every lease was released; they will expire"
        );
    }
    background.cancel();
    let unacknowledged: usize = tracker.unacknowledged_records().values().sum();
    if drained && committed {
        tracing::info!("shutdown complete: every acknowledged change is checkpointed");
    } else if committed {
        tracing::warn!(will_be_redelivered = unacknowledged, "shutdown deadline reached: acknowledged changes are checkpointed; the rest will be re-delivered on restart");
    } else {
        tracing::error!(will_be_redelivered = unacknowledged, "shutdown deadline reached while the checkpoint store was not answering; the records read since the last committed checkpoint will be re-delivered on restart");
    }
    let committable = tracker.committable_records();
    if committable > 0 && !committed_any.load(Ordering::Acquire) {
        anyhow::bail!(
            "no checkpoint could be committed while this process ran ({committable} acknowledged records will be re-delivered): is checkpoint.path on storage that answers?"
        );
    }
    Ok(())
}

fn initial_position(config: &Config) -> anyhow::Result<StartAt> {
    Ok(match config.source.start_position {
        StartPosition::TrimHorizon => StartAt::TrimHorizon,
        StartPosition::Latest => StartAt::Latest,
        StartPosition::AtTimestamp => {
            let text = config.source.start_timestamp.as_deref().unwrap_or_default();
            let t = humantime::parse_rfc3339_weak(text).context("source.start_timestamp")?;
            let ms = t
                .duration_since(std::time::UNIX_EPOCH)
                .context("source.start_timestamp before 1970")?
                .as_millis();
            StartAt::AtTimestamp(ms as i64)
        }
    })
}

/// Finds the DynamoDB stream; a wrong stream (none, wrong view type) is not retried.
async fn connect(config: &Config) -> anyhow::Result<(Arc<DynamoDbStreams>, StreamMeta)> {
    Ok(retry_setup(
        "the DynamoDB stream",
        || DynamoDbStreams::connect(&config.source),
        |e| matches!(e, SetupError::Aws(_)),
    )
    .await?)
}

/// Start-up calls to AWS: failures `transient` says may pass (the service or an emulator still
/// starting) are retried a few times with backoff; a definite answer is returned at once.
async fn retry_setup<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    mut call: impl FnMut() -> F,
    transient: impl Fn(&E) -> bool,
) -> Result<T, E> {
    let mut attempt = 0;
    loop {
        match call().await {
            Err(e) if transient(&e) && attempt < 8 => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "cannot reach {what} yet; retrying");
                tokio::time::sleep(Backoff::AWS.delay(attempt)).await;
            }
            result => return result,
        }
    }
}

/// Probes every 5 s while the sink is unreachable or its last answers were errors: a probe that
/// succeeds again clears the error, even when no write is waiting.
async fn probe_while_unreachable(
    sink: Arc<BulkSink>,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        if !health.sink_reachable() || health.probe_is_failing() {
            sink.probe().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_timestamp_starts_from_the_configured_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.toml");
        std::fs::write(
            &path,
            "[source]\ntype = \"kinesis\"\nstream = \"s\"\nformat = \"dynamodb\"\nstart_position = \"at_timestamp\"\nstart_timestamp = \"2024-07-29T00:00:01.500Z\"\n",
        )
        .unwrap();
        let config = Config::load_with_env(&path, Vec::new()).unwrap();
        assert_eq!(
            initial_position(&config).unwrap(),
            StartAt::AtTimestamp(1_722_211_201_500)
        );
    }
}
