//! Index set-up: create the `[[index]]` indices that are missing, with their settings, mappings
//! and alias; compare existing ones with the files and report every difference — never change
//! an existing index (a mapping cannot be changed in place; settings changes can close an index).
//! Used by `sluice index ensure` and, with `sink.manage_indices`, before reading starts.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, IndexConfig};
use crate::es_client::EsClient;
use crate::retry::Backoff;

/// An index as the configuration wants it: the files read and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub name: String,
    pub alias: Option<String>,
    pub settings: Value,
    pub mappings: Value,
}

/// What `ensure` found or did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Created,
    Matches {
        index: String,
    },
    /// The existing index differs from the files; it was left as it is.
    Differs {
        index: String,
        differences: Vec<String>,
    },
}

/// Why `ensure` could not finish: worth retrying (the cluster is not there or overloaded) or not
/// (the cluster refused the request: fix the files or the names).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Refused(String),
}

/// Reads and checks the `[[index]]` files. Errors name the key and the file.
pub fn desired(config: &Config) -> anyhow::Result<Vec<Desired>> {
    config
        .index
        .iter()
        .enumerate()
        .map(|(i, x)| desired_one(i, x))
        .collect()
}

fn desired_one(i: usize, x: &IndexConfig) -> anyhow::Result<Desired> {
    let read = |key: &str,
                path: &Option<std::path::PathBuf>,
                wrapper: &str|
     -> anyhow::Result<Value> {
        let Some(path) = path else {
            return Ok(json!({}));
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!("index[{i}].{key} `{}` cannot be read: {e}", path.display())
        })?;
        let v: Value = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!("index[{i}].{key} `{}` is not JSON: {e}", path.display())
        })?;
        let Value::Object(m) = &v else {
            anyhow::bail!(
                "index[{i}].{key} `{}` must hold a JSON object",
                path.display()
            );
        };
        if m.len() == 1 && m.contains_key(wrapper) {
            anyhow::bail!(
                "index[{i}].{key} `{}` holds {{\"{wrapper}\": …}}: put only what is inside it in the file",
                path.display()
            );
        }
        Ok(v)
    };
    Ok(Desired {
        name: x.name.clone(),
        alias: x.alias.clone(),
        settings: read("settings_file", &x.settings_file, "settings")?,
        mappings: read("mappings_file", &x.mappings_file, "mappings")?,
    })
}

/// Creates `d` if neither the index nor its alias exists; otherwise compares.
pub async fn ensure(client: &EsClient, d: &Desired) -> Result<Outcome, SetupError> {
    let target = d.alias.as_deref().unwrap_or(&d.name);
    if let Some(outcome) = compare_existing(client, d, target).await? {
        return Ok(outcome);
    }
    let mut body = json!({ "settings": d.settings, "mappings": d.mappings });
    if let Some(alias) = &d.alias {
        body["aliases"] = json!({ alias: { "is_write_index": true } });
    }
    let answer = call(client, "PUT", &format!("/{}", d.name), Some(body)).await?;
    match answer.status {
        200..=299 => Ok(Outcome::Created),
        // created meanwhile by another task: compare what is there
        400 if error_type(&answer.body).as_deref() == Some("resource_already_exists_exception") => {
            match compare_existing(client, d, target).await? {
                Some(outcome) => Ok(outcome),
                // the index exists, its alias does not
                None => Ok(Outcome::Differs {
                    index: d.name.clone(),
                    differences: vec![format!(
                        "index `{}` exists without the alias `{target}` that sluice writes to",
                        d.name
                    )],
                }),
            }
        }
        status => Err(judge(
            status,
            &format!("creating index `{}`", d.name),
            &answer.body,
        )),
    }
}

/// `None` when `target` does not exist; otherwise how it compares with `d`.
async fn compare_existing(
    client: &EsClient,
    d: &Desired,
    target: &str,
) -> Result<Option<Outcome>, SetupError> {
    let answer = call(client, "GET", &format!("/{target}"), None).await?;
    if answer.status == 404 {
        return Ok(None);
    }
    if !(200..300).contains(&answer.status) {
        return Err(judge(
            answer.status,
            &format!("reading index `{target}`"),
            &answer.body,
        ));
    }
    let found: Map<String, Value> = serde_json::from_str(&answer.body).map_err(|e| {
        SetupError::Unavailable(format!("reading index `{target}`: not JSON ({e})"))
    })?;
    // behind an alias: the write index, or the only one
    let (index, state) = found
        .iter()
        .find(|(_, s)| {
            d.alias.as_ref().is_some_and(|a| {
                s.pointer(&format!("/aliases/{a}/is_write_index")) == Some(&Value::Bool(true))
            })
        })
        .or_else(|| found.iter().next())
        .ok_or_else(|| {
            SetupError::Unavailable(format!("reading index `{target}`: empty answer"))
        })?;
    let mut differences = differences(d, state);
    if let Some(alias) = &d.alias {
        if index == alias {
            differences.insert(0, format!("`{alias}` is an index, not an alias"));
        }
    }
    Ok(Some(if differences.is_empty() {
        Outcome::Matches {
            index: index.clone(),
        }
    } else {
        Outcome::Differs {
            index: index.clone(),
            differences,
        }
    }))
}

/// Every setting and mapping of the files that the index (`GET /{index}` state) lacks or holds
/// with another value. What the index has beyond the files (defaults, dynamic fields) is fine.
pub fn differences(d: &Desired, state: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let want = flat_settings(&d.settings);
    let have = flat_settings(state.get("settings").unwrap_or(&Value::Null));
    for (key, value) in &want {
        match have.get(key) {
            None => out.push(format!(
                "setting {key}: {value} in the file, not set in the index"
            )),
            Some(v) if v != value => out.push(format!(
                "setting {key}: {value} in the file, {v} in the index"
            )),
            Some(_) => {}
        }
    }
    subset(
        "mappings",
        &d.mappings,
        state.get("mappings").unwrap_or(&Value::Null),
        &mut out,
    );
    out
}

/// Settings as dotted `index.` paths with string values (how Elasticsearch stores them).
fn flat_settings(v: &Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            Value::Null => {}
            other => {
                out.insert(prefix.to_string(), scalar(other));
            }
        }
    }
    let mut flat = BTreeMap::new();
    walk("", v, &mut flat);
    flat.into_iter()
        .map(|(k, v)| {
            let k = if k.starts_with("index.") {
                k
            } else {
                format!("index.{k}")
            };
            (k, v)
        })
        .collect()
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(scalar).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Records where `want` is not contained in `have`.
fn subset(path: &str, want: &Value, have: &Value, out: &mut Vec<String>) {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => {
            for (k, wv) in w {
                let at = format!("{path}.{k}");
                match h.get(k) {
                    // Elasticsearch leaves out `"type": "object"` of a field with properties
                    None if k == "type" && wv == "object" && h.contains_key("properties") => {}
                    None => out.push(format!("{at}: {} in the file, not in the index", short(wv))),
                    Some(hv) => subset(&at, wv, hv, out),
                }
            }
        }
        (Value::Object(_), _) | (_, Value::Object(_)) => out.push(format!(
            "{path}: {} in the file, {} in the index",
            short(want),
            short(have)
        )),
        (w, h) if scalar(w) != scalar(h) => out.push(format!(
            "{path}: {} in the file, {} in the index",
            scalar(w),
            scalar(h)
        )),
        _ => {}
    }
}

fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.len() > 80 {
        format!("{}…", &text[..text.floor_char_boundary(80)])
    } else {
        text
    }
}

async fn call(
    client: &EsClient,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<crate::es_client::Answer, SetupError> {
    client
        .call(method, path, body.map(|b| b.to_string().into_bytes()))
        .await
        .map_err(|e| SetupError::Unavailable(format!("{method} {path}: {e}")))
}

fn error_type(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    Some(v.pointer("/error/type")?.as_str()?.to_string())
}

/// 429 and 5xx may pass; any other refusal needs a person.
fn judge(status: u16, doing: &str, body: &str) -> SetupError {
    let reason = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?;
            Some(format!(
                "{}: {}",
                e.get("type")?.as_str()?,
                e.get("reason").and_then(Value::as_str).unwrap_or("")
            ))
        })
        .unwrap_or_else(|| body.chars().take(300).collect());
    let text = format!("{doing}: HTTP {status}: {reason}");
    if status == 429 || status >= 500 {
        SetupError::Unavailable(text)
    } else {
        SetupError::Refused(text)
    }
}

/// One line per index, for people.
pub fn report(d: &Desired, outcome: &Outcome) -> String {
    let shown = match &d.alias {
        Some(a) => format!("{} (alias {a})", d.name),
        None => d.name.clone(),
    };
    match outcome {
        Outcome::Created => format!("created {shown} with the configured settings and mappings\n"),
        Outcome::Matches { index } => format!("{shown}: exists as `{index}` and matches\n"),
        Outcome::Differs { index, differences } => {
            let mut t = format!(
                "{shown}: exists as `{index}` and DIFFERS from the files (left unchanged; reindex into a new index to apply them):\n"
            );
            for diff in differences {
                t.push_str(&format!("  - {diff}\n"));
            }
            t
        }
    }
}

/// `sink.manage_indices`: every `[[index]]` ensured before reading starts, retried while the
/// cluster is not there; a refusal stops the start, a difference is logged.
pub async fn at_start(config: &Config, stop: &CancellationToken) -> anyhow::Result<()> {
    let wanted = desired(config)?;
    let client = EsClient::new(&config.sink, &config.source.region).await?;
    for d in &wanted {
        let mut attempt = 0;
        loop {
            match ensure(&client, d).await {
                Ok(Outcome::Differs { index, differences }) => {
                    tracing::warn!(index = %index, differences = %differences.join("; "), "the index differs from its [[index]] files; it is left unchanged");
                    break;
                }
                Ok(outcome) => {
                    tracing::info!(index = %d.name, result = %report(d, &outcome).trim_end(), "index set up");
                    break;
                }
                Err(SetupError::Refused(why)) => anyhow::bail!("sink.manage_indices: {why}"),
                Err(SetupError::Unavailable(why)) => {
                    attempt += 1;
                    let delay = Backoff::AWS.delay(attempt).min(Duration::from_secs(30));
                    tracing::warn!(error = %why, attempt, "cannot set up the index yet; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.cancelled() => return Ok(()),
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(settings: Value, mappings: Value) -> Desired {
        Desired {
            name: "posts-000001".into(),
            alias: Some("posts".into()),
            settings,
            mappings,
        }
    }

    #[test]
    fn what_the_index_adds_is_fine_what_it_lacks_or_changes_is_reported() {
        let d = want(
            json!({"number_of_shards": 2, "analysis": {"analyzer": {"folded": {"type": "custom", "filter": ["lowercase", "asciifolding"]}}}}),
            json!({"properties": {"title": {"type": "text"}, "author": {"type": "object", "properties": {"name": {"type": "keyword"}}}, "score": {"type": "long"}}}),
        );
        let state = json!({
            "settings": {"index": {"number_of_shards": "2", "number_of_replicas": "1",
                "analysis": {"analyzer": {"folded": {"type": "custom", "filter": ["lowercase", "asciifolding"]}}}}},
            "mappings": {"properties": {"title": {"type": "text"}, "author": {"properties": {"name": {"type": "keyword"}}},
                "score": {"type": "long"}, "extra": {"type": "keyword"}}}
        });
        assert_eq!(differences(&d, &state), Vec::<String>::new());

        let changed = json!({
            "settings": {"index": {"number_of_shards": "1"}},
            "mappings": {"properties": {"title": {"type": "keyword"}, "author": {"properties": {}}}}
        });
        let diffs = differences(&d, &changed);
        assert!(
            diffs.contains(
                &"setting index.number_of_shards: 2 in the file, 1 in the index".to_string()
            ),
            "{diffs:#?}"
        );
        assert!(diffs.iter().any(|d| d.starts_with("setting index.analysis.analyzer.folded.filter: lowercase,asciifolding in the file, not set")), "{diffs:#?}");
        assert!(
            diffs.contains(
                &"mappings.properties.title.type: text in the file, keyword in the index"
                    .to_string()
            ),
            "{diffs:#?}"
        );
        assert!(diffs.contains(&"mappings.properties.author.properties.name: {\"type\":\"keyword\"} in the file, not in the index".to_string()), "{diffs:#?}");
        assert!(
            diffs
                .iter()
                .any(|d| d.starts_with("mappings.properties.score")),
            "{diffs:#?}"
        );
    }

    #[test]
    fn a_file_wrapped_in_its_key_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        std::fs::write(&path, r#"{"mappings": {"properties": {}}}"#).unwrap();
        let x = IndexConfig {
            name: "posts".into(),
            alias: None,
            settings_file: None,
            mappings_file: Some(path),
        };
        let e = desired_one(0, &x).unwrap_err().to_string();
        assert!(
            e.contains("index[0].mappings_file") && e.contains("only what is inside"),
            "{e}"
        );
    }
}
