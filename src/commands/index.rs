//! `sluice index ensure --config FILE`: creates the `[[index]]` indices that are missing, with
//! their settings, mappings and alias, and reports how existing ones differ from the files
//! (never changing them). Exit 1 when any differs, so a deploy pipeline notices.

use crate::config::Config;
use crate::es_client::EsClient;
use crate::index_setup::{self, Outcome};

/// The report, and whether every index is as the files say.
pub async fn ensure(config: &Config) -> anyhow::Result<(String, bool)> {
    let wanted = index_setup::desired(config)?;
    if wanted.is_empty() {
        return Ok((
            "no [[index]] in the configuration: nothing to set up\n".into(),
            true,
        ));
    }
    let client = EsClient::new(&config.sink, &config.source.region).await?;
    let mut out = String::new();
    let mut all_match = true;
    for d in &wanted {
        let outcome = index_setup::ensure(&client, d).await?;
        all_match &= !matches!(outcome, Outcome::Differs { .. });
        out.push_str(&index_setup::report(d, &outcome));
    }
    Ok((out, all_match))
}
