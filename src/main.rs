use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::config::{Config, LogFormat};

/// EX_CONFIG-style code for configuration errors (sysexits' EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Keeps an Elasticsearch index equal to a DynamoDB table, change by change"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Follow the stream and keep the index in sync.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate the configuration (file + SLUICE__… environment) without contacting any service.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Ask the running sluice whether it is ready (exit 0) or not (exit 1): a container health
    /// check that needs no shell or curl.
    Healthcheck {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Load the rows that existed before the stream (a parallel Scan, resumable), beside the
    /// running stream; `--status` prints each segment's progress.
    Backfill {
        #[arg(long, short)]
        config: PathBuf,
        /// Print progress per segment and exit.
        #[arg(long)]
        status: bool,
        /// Parallel Scan segments for a new backfill (a resumed one keeps its own).
        #[arg(long)]
        segments: Option<u32>,
        /// Load a DynamoDB export (DYNAMODB_JSON) from a directory or s3://bucket/prefix
        /// instead of scanning.
        #[arg(long, value_name = "PATH_OR_S3_URL")]
        from_export: Option<String>,
        /// Keep the index's deletes from now (index.gc_deletes), before requesting an export:
        /// the later --from-export load then cannot undo a delete made after the export time.
        #[arg(long)]
        keep_deletes: bool,
    },
    /// What Elasticsearch refused for good (or could not be read): list, show, replay, purge.
    DeadLetters {
        #[arg(long, short)]
        config: PathBuf,
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// Where each shard's reading stands (position, clock, owner, lag), and moving it.
    Checkpoints {
        #[arg(long, short)]
        config: PathBuf,
        #[command(subcommand)]
        action: CheckpointAction,
    },
    /// Set up the `[[index]]` indices: create the missing ones (settings, mappings, alias);
    /// report how existing ones differ, never changing them.
    Index {
        #[arg(long, short)]
        config: PathBuf,
        #[command(subcommand)]
        action: IndexAction,
    },
    /// Does the index equal the table? Scans the table (or --sample N items), compares each
    /// document; exit 0 only when nothing differs. --repair fixes what differs.
    Verify {
        #[arg(long, short)]
        config: PathBuf,
        /// Compare this many items from random segments instead of the whole table.
        #[arg(long)]
        sample: Option<u64>,
        /// Also find documents whose item is gone (reads every id of the index).
        #[arg(long)]
        extra: bool,
        /// Re-index missing and different items, delete extra documents (backfill versions: a
        /// newer stream change always wins).
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show each shard's lease: owner, epoch, heartbeat, handoff and checkpoint.
    Leases {
        #[arg(long, short)]
        config: PathBuf,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum IndexAction {
    /// Create what is missing; exit 1 when an existing index differs from the files.
    Ensure,
}

#[derive(Subcommand)]
enum CheckpointAction {
    /// Each shard: position, clock, finished, owner and lease, and its lag read from the stream
    /// (the age of the first record after the checkpoint).
    List {
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Move one shard's checkpoint; says first what will be read again or skipped. Refused while
    /// a live worker holds the shard, unless --force (the lease is then taken from it).
    Reset {
        #[arg(long)]
        shard: String,
        /// trim_horizon, latest, or a sequence number to resume after.
        #[arg(long, value_name = "trim_horizon|latest|SEQUENCE")]
        to: String,
        /// The stream, when the checkpoint file holds the shard for several.
        #[arg(long)]
        stream: Option<String>,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum DeadLetterAction {
    /// One line per dead letter: id, time, action, index, _id, shard and sequence number, reason.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter in full, with its document or record (JSON).
    Show { id: i64 },
    /// Send the stored operations again with their original versions (a newer document is
    /// never overwritten: 409, counted as stale); each row is removed once acknowledged.
    Replay {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        id: Vec<i64>,
        /// Stored since this time (RFC 3339) or this long ago (2h).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Delete dead letters without sending them.
    Purge {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        id: Vec<i64>,
        /// Stored before this time (RFC 3339) or more than this long ago (30d).
        #[arg(long)]
        before: Option<String>,
    },
}

async fn dead_letters(cfg: &Config, action: DeadLetterAction) -> anyhow::Result<String> {
    use sluice::commands::dead_letters as dl;
    match action {
        DeadLetterAction::List { json } => dl::list(cfg, json).await,
        DeadLetterAction::Show { id } => dl::show(cfg, id).await,
        DeadLetterAction::Replay {
            all,
            id,
            since,
            json,
        } => {
            let report = dl::replay(cfg, dl::selection(all, id, since.as_deref(), None)?).await?;
            Ok(if json {
                serde_json::to_string_pretty(&report)? + "\n"
            } else {
                report.render()
            })
        }
        DeadLetterAction::Purge { all, id, before } => {
            dl::purge(cfg, dl::selection(all, id, None, before.as_deref())?).await
        }
    }
}

/// Records become many short-lived allocations (SDK shapes, documents, bulk lines); mimalloc's
/// thread-local free lists cost a fraction of glibc's malloc here (bench/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (Command::Run { config }
    | Command::CheckConfig { config }
    | Command::Leases { config, .. }
    | Command::Healthcheck { config }
    | Command::Backfill { config, .. }
    | Command::DeadLetters { config, .. }
    | Command::Checkpoints { config, .. }
    | Command::Index { config, .. }
    | Command::Verify { config, .. }) = &cli.command;
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Command::CheckConfig { .. } = cli.command {
        println!("configuration OK: {}", config.display());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::Healthcheck { .. } = cli.command {
        return match runtime.block_on(sluice::commands::healthcheck::run(&cfg)) {
            Ok(why) => {
                println!("{why}");
                ExitCode::SUCCESS
            }
            Err(why) => {
                println!("sluice healthcheck: {why}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Backfill {
        status,
        segments,
        from_export,
        keep_deletes,
        ..
    } = cli.command
    {
        if !status {
            init_tracing(&cfg);
        }
        return match runtime.block_on(sluice::commands::backfill::run(
            &cfg,
            status,
            segments,
            from_export.as_deref(),
            keep_deletes,
        )) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluice backfill: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::DeadLetters { action, .. } = cli.command {
        if matches!(action, DeadLetterAction::Replay { .. }) {
            init_tracing(&cfg);
        }
        return match runtime.block_on(dead_letters(&cfg, action)) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluice dead-letters: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Verify {
        sample,
        extra,
        repair,
        json,
        ..
    } = cli.command
    {
        init_tracing(&cfg);
        let options = sluice::commands::verify::Options {
            sample,
            extra,
            repair,
        };
        return match runtime.block_on(sluice::commands::verify::run(&cfg, options)) {
            Ok(report) => {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&report).unwrap_or_default()
                    );
                } else {
                    print!("{}", report.render());
                }
                if report.differences() == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("sluice verify: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    if let Command::Index {
        action: IndexAction::Ensure,
        ..
    } = cli.command
    {
        return match runtime.block_on(sluice::commands::index::ensure(&cfg)) {
            Ok((text, all_match)) => {
                print!("{text}");
                if all_match {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("sluice index: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Checkpoints { action, .. } = cli.command {
        use sluice::commands::checkpoints;
        let answer = runtime.block_on(async {
            match action {
                CheckpointAction::List { json } => checkpoints::list(&cfg, json).await,
                CheckpointAction::Reset {
                    shard,
                    to,
                    stream,
                    force,
                } => checkpoints::reset(&cfg, &shard, &to, stream.as_deref(), force).await,
            }
        });
        return match answer {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluice checkpoints: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Leases { json, .. } = cli.command {
        return match runtime.block_on(sluice::commands::leases::run(&cfg, json)) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluice leases: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    init_tracing(&cfg);
    match runtime.block_on(sluice::app::run(cfg, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "sluice stopped");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::new(&cfg.log.level);
    // colours only for people: a log collector (CloudWatch, a file) gets plain text
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cfg.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// SIGTERM (ECS stop) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
