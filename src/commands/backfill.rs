//! `sluice backfill --config FILE [--status] [--segments N]`: loads (or resumes loading) the
//! table's existing rows beside the running stream; `--status` prints each segment's progress;
//! `--from-export DIR|s3://…` loads a DynamoDB export instead.

use crate::checkpoint::CheckpointStore;
use crate::config::Config;

pub async fn run(
    config: &Config,
    status: bool,
    segments: Option<u32>,
    from_export: Option<&str>,
    keep_deletes: bool,
) -> anyhow::Result<String> {
    if keep_deletes {
        return crate::backfill::export::keep_deletes_ahead(config).await;
    }
    if let Some(path) = from_export {
        // the key schema from the table when it can be read; else sink.document_id must say
        let keys = crate::backfill::table_keys(config)
            .await
            .unwrap_or_default();
        let report = crate::backfill::export::run(config, path, keys).await?;
        return Ok(report.render());
    }
    let table = crate::backfill::table_name(config)?;
    if status {
        let store = CheckpointStore::open(&config.checkpoint.path, config.checkpoint.journal_mode)?;
        let segments =
            crate::backfill::progress(&store, &crate::backfill::progress_key(config)?).await?;
        return Ok(crate::backfill::render_status(&table, &segments));
    }
    let done = crate::backfill::run_alone(config, segments).await?;
    Ok(crate::backfill::render_status(&table, &done))
}
