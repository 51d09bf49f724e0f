//! Pure functions: change records → document operations. No I/O, no async.
//! DynamoDB records (from DynamoDB Streams, or carried in Kinesis) here; DMS records in [`dms`].

pub mod dms;
mod dynamodb_json;
pub mod expr;
pub mod route;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use aws_sdk_dynamodbstreams::types::AttributeValue;
use base64::Engine;
use serde_json::{Map, Number, Value};

pub(crate) use dynamodb_json::export_item;
use route::{Image, Reads, RowChange};

/// What one change does to one document.
#[derive(Debug, Clone)]
pub enum DocAction {
    /// Replace the whole document with this source.
    Index(Value),
    /// The same, the source already JSON text (an object), written while the record was
    /// decoded: no tree of it was ever built.
    IndexJson(String),
    Delete,
}

/// The same operation: a document as text equals the tree it parses to (field order aside).
impl PartialEq for DocAction {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (DocAction::Delete, DocAction::Delete) => true,
            (DocAction::Delete, _) | (_, DocAction::Delete) => false,
            (DocAction::IndexJson(a), DocAction::IndexJson(b)) if a == b => true,
            (a, b) => match (a.clone().into_document(), b.clone().into_document()) {
                (Some(Ok(a)), Some(Ok(b))) => a == b,
                _ => false,
            },
        }
    }
}

impl DocAction {
    /// The source to write, as a tree (`None` for a delete): for the commands that compare
    /// documents, not for the data path.
    pub fn into_document(self) -> Option<Result<Value, DecodeError>> {
        match self {
            DocAction::Index(v) => Some(Ok(v)),
            DocAction::IndexJson(text) => Some(
                serde_json::from_str(&text)
                    .map_err(|e| DecodeError(format!("the document is not JSON: {e}"))),
            ),
            DocAction::Delete => None,
        }
    }
}

/// One document operation derived from one source record.
#[derive(Debug, Clone, PartialEq)]
pub struct DocChange {
    /// Target index; `None` → the sink's index.
    pub index: Option<Arc<str>>,
    pub id: String,
    /// Elasticsearch custom routing; `None` → by `_id`.
    pub routing: Option<String>,
    pub action: DocAction,
    /// A version the record itself determines (DynamoDB→Kinesis timestamps); `None` → the
    /// shard's version clock (see `version.rs`).
    pub version: Option<u64>,
}

impl DocChange {
    pub fn new(id: String, action: DocAction) -> Self {
        Self {
            index: None,
            id,
            routing: None,
            action,
            version: None,
        }
    }
}

/// Why a well-formed record produced no operation (counted, never an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    /// Metric label: `control_record`, `no_route`.
    pub reason: &'static str,
    pub detail: String,
}

/// What one record decodes to.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decoded {
    pub changes: Vec<DocChange>,
    pub skipped: Option<Skip>,
    /// The record's place in an order that holds across shards, in version units, when the
    /// record carries one (DMS `timestamp`): the shard's version clock never goes below it.
    /// `None` → the record's creation or arrival time.
    pub version_floor: Option<u64>,
    /// What of the record could not be written, while `changes` are: the record goes to the
    /// dead-letter table with this reason (a row that can no longer be placed is deleted from
    /// its old place, and refused).
    pub refused: Option<DecodeError>,
}

impl From<DocChange> for Decoded {
    fn from(c: DocChange) -> Self {
        Decoded {
            changes: vec![c],
            ..Decoded::default()
        }
    }
}

/// Joins `_id` parts. A single part is used as is; in composite ids `\` and the separator are
/// escaped with `\`, so two different keys can never produce the same `_id`.
pub fn join_id(mut parts: Vec<String>, separator: &str) -> Result<String, DecodeError> {
    let id = if parts.len() == 1 {
        parts.pop().unwrap_or_default()
    } else {
        let escaped: Vec<String> = parts
            .iter()
            .map(|p| {
                p.replace('\\', "\\\\")
                    .replace(separator, &format!("\\{separator}"))
            })
            .collect();
        escaped.join(separator)
    };
    if id.is_empty() {
        return Err(DecodeError("the document id is empty".into()));
    }
    if id.len() > 512 {
        return Err(DecodeError(format!(
            "the document id is {} bytes; Elasticsearch allows 512",
            id.len()
        )));
    }
    Ok(id)
}

/// The `n` parts [`join_id`] joined into `id`, when it is such a join (`None` otherwise).
pub fn split_id(id: &str, n: usize, separator: &str) -> Option<Vec<String>> {
    if n == 1 {
        return Some(vec![id.to_owned()]);
    }
    if separator.is_empty() {
        return None;
    }
    let mut parts = vec![String::new()];
    let mut rest = id;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix('\\') {
            // an escaped `\` or separator
            if let Some(tail) = after.strip_prefix('\\') {
                parts.last_mut()?.push('\\');
                rest = tail;
            } else if let Some(tail) = after.strip_prefix(separator) {
                parts.last_mut()?.push_str(separator);
                rest = tail;
            } else {
                return None;
            }
        } else if let Some(tail) = rest.strip_prefix(separator) {
            parts.push(String::new());
            rest = tail;
        } else {
            parts.last_mut()?.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    (parts.len() == n).then_some(parts)
}

/// Why a record could not be turned into a document operation. Goes to the dead-letter table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

/// How `_id` is built from the item's key attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocIdSpec {
    /// Attribute names in order (hash key, then range key by default).
    pub attributes: Vec<String>,
    pub separator: String,
}

impl DocIdSpec {
    /// `_id` from the key attributes: each part rendered as text (S as is, N as its exact
    /// digits, B as base64), joined with the separator. `\` and the separator inside a part are
    /// escaped with `\`, so two different keys can never produce the same `_id`.
    pub fn render(&self, keys: &HashMap<String, AttributeValue>) -> Result<String, DecodeError> {
        let mut parts = Vec::with_capacity(self.attributes.len());
        for name in &self.attributes {
            parts.push(match keys.get(name) {
                Some(AttributeValue::S(s)) => s.clone(),
                Some(AttributeValue::N(n)) => n.clone(),
                Some(AttributeValue::B(b)) => base64_text(b.as_ref()),
                Some(other) => {
                    return Err(DecodeError(format!(
                        "key attribute `{name}` has type {}, not S, N or B",
                        type_name(other)
                    )))
                }
                None => {
                    return Err(DecodeError(format!(
                        "key attribute `{name}` is missing from the record's Keys"
                    )))
                }
            });
        }
        join_id(parts, &self.separator)
    }
}

/// A DynamoDB Streams record, as GetRecords returned it (DynamoDB JSON) → the row change,
/// keeping of the row what the routes read (`reads`).
pub fn dynamodb_row(
    record: &[u8],
    table: Option<&str>,
    reads: &Reads,
) -> Result<RowChange, DecodeError> {
    let record = dynamodb_json::change_record(record, reads)?;
    let stream = record
        .section
        .ok_or_else(|| DecodeError("record has no `dynamodb` section".into()))?;
    let keys = stream
        .keys
        .ok_or_else(|| DecodeError("record has no Keys".into()))?;
    let old = stream.old_image.map(|attributes| Image {
        attributes,
        whole: true,
    });
    let (new, old) = match record.event_name.as_deref() {
        Some(event @ ("INSERT" | "MODIFY")) => {
            let image = stream.new_image.ok_or_else(|| {
                DecodeError("INSERT/MODIFY record has no NewImage (the stream view type must be NEW_IMAGE or NEW_AND_OLD_IMAGES)".into())
            })?;
            // A MODIFY without OldImage: DynamoDB keys never change, and routes that place by
            // other attributes need old images (checked against the view type at start), so
            // the old place is the new one.
            let old = old.filter(|_| event == "MODIFY");
            (Some(image), old)
        }
        Some("REMOVE") => (None, Some(old.unwrap_or_else(|| keys_only(&keys)))),
        other => return Err(unknown_event(other)),
    };
    Ok(RowChange {
        table: table.map(str::to_owned),
        new_json: new.as_ref().and(stream.new_json),
        new,
        old,
        keys: Some(keys),
        version: None,
    })
}

fn unknown_event(event: Option<&str>) -> DecodeError {
    match event {
        Some(e) => DecodeError(format!(
            "unknown eventName `{e}` (INSERT, MODIFY or REMOVE)"
        )),
        None => DecodeError("record has no eventName".into()),
    }
}

fn keys_only(keys: &Map<String, Value>) -> Image {
    Image {
        attributes: keys.clone(),
        whole: false,
    }
}

/// A DynamoDB change record carried in Kinesis ("Kinesis Data Streams for DynamoDB") → the row
/// change, versioned by its own creation time in µs: such records may arrive out of order or
/// twice, and the version lets Elasticsearch keep the newest.
pub fn dynamodb_kinesis_row(payload: &[u8], reads: &Reads) -> Result<RowChange, DecodeError> {
    let record = dynamodb_json::change_record(payload, reads)?;
    let ddb = record
        .section
        .ok_or_else(|| DecodeError("record has no `dynamodb` object".into()))?;
    let keys = ddb
        .keys
        .ok_or_else(|| DecodeError("record has no dynamodb.Keys".into()))?;
    let created = ddb
        .created
        .as_ref()
        .and_then(Value::as_u64)
        .ok_or_else(|| {
            DecodeError("dynamodb.ApproximateCreationDateTime is missing or not an integer".into())
        })?;
    let micros = match ddb.created_precision.as_ref().and_then(Value::as_str) {
        Some("MICROSECOND") => Some(created),
        None | Some("MILLISECOND") => created.checked_mul(1000),
        Some(other) => {
            return Err(DecodeError(format!(
                "unknown ApproximateCreationDateTimePrecision `{other}`"
            )))
        }
    };
    // The version is the record's own time: one Elasticsearch cannot store would make the
    // whole bulk request fail, so the record is refused here, with the reason.
    let micros = micros.filter(|v| crate::version::in_range(*v)).ok_or_else(|| {
        DecodeError(format!(
            "dynamodb.ApproximateCreationDateTime {created} gives a version outside Elasticsearch's external version range 1..={}",
            crate::version::MAX_EXTERNAL_VERSION
        ))
    })?;
    let old = ddb.old_image.map(|attributes| Image {
        attributes,
        whole: true,
    });
    let (new, old) = match record.event_name.as_deref() {
        Some(event @ ("INSERT" | "MODIFY")) => {
            let new = ddb.new_image.ok_or_else(|| {
                DecodeError("INSERT/MODIFY record has no NewImage (the table's stream view type must include the new image)".into())
            })?;
            // A MODIFY without OldImage: keys never change, so a row placed by its key alone
            // has the new place for its old one. Otherwise the keys stand for the old image,
            // and a route that needs more says so (Kinesis has no view type to check at start).
            let old = match (event, old) {
                ("INSERT", _) => None,
                (_, Some(whole)) => Some(whole),
                (_, None) if reads.placed_by_key(&keys) => None,
                (_, None) => Some(keys_only(&keys)),
            };
            (Some(new), old)
        }
        Some("REMOVE") => (None, Some(old.unwrap_or_else(|| keys_only(&keys)))),
        other => return Err(unknown_event(other)),
    };
    Ok(RowChange {
        table: record.table_name,
        new_json: new.as_ref().and(ddb.new_json),
        new,
        old,
        keys: Some(keys),
        version: Some(micros),
    })
}

/// A whole item (attribute map) → a JSON object.
pub fn item_to_json(item: &HashMap<String, AttributeValue>) -> Result<Value, DecodeError> {
    let mut out = Map::with_capacity(item.len());
    for (name, value) in item {
        out.insert(
            name.clone(),
            attribute_to_json(value).map_err(|e| e.within(name))?,
        );
    }
    Ok(Value::Object(out))
}

/// One AttributeValue → plain JSON. Numbers keep their exact decimal digits; binary becomes
/// base64 text; sets become arrays.
pub fn attribute_to_json(value: &AttributeValue) -> Result<Value, DecodeError> {
    Ok(match value {
        AttributeValue::S(s) => Value::String(s.clone()),
        AttributeValue::N(n) => number(n)?,
        AttributeValue::B(b) => Value::String(base64_text(b.as_ref())),
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::Null(_) => Value::Null,
        AttributeValue::M(m) => item_to_json(m)?,
        AttributeValue::L(l) => Value::Array(
            l.iter()
                .enumerate()
                .map(|(i, v)| attribute_to_json(v).map_err(|e| e.within(&format!("[{i}]"))))
                .collect::<Result<_, _>>()?,
        ),
        AttributeValue::Ss(ss) => Value::Array(ss.iter().cloned().map(Value::String).collect()),
        AttributeValue::Ns(ns) => {
            Value::Array(ns.iter().map(|n| number(n)).collect::<Result<_, _>>()?)
        }
        AttributeValue::Bs(bs) => Value::Array(
            bs.iter()
                .map(|b| Value::String(base64_text(b.as_ref())))
                .collect(),
        ),
        other => return Err(DecodeError(format!("unsupported attribute type {other:?}"))),
    })
}

/// A DynamoDB number string → a JSON number with exactly the same digits (serde_json's
/// arbitrary_precision keeps the text; no f64 round trip).
fn number(text: &str) -> Result<Value, DecodeError> {
    Number::from_str(text)
        .map(Value::Number)
        .map_err(|_| DecodeError(format!("`{text}` is not a number")))
}

fn base64_text(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn type_name(v: &AttributeValue) -> &'static str {
    match v {
        AttributeValue::S(_) => "S",
        AttributeValue::N(_) => "N",
        AttributeValue::B(_) => "B",
        AttributeValue::Bool(_) => "BOOL",
        AttributeValue::Null(_) => "NULL",
        AttributeValue::M(_) => "M",
        AttributeValue::L(_) => "L",
        AttributeValue::Ss(_) => "SS",
        AttributeValue::Ns(_) => "NS",
        AttributeValue::Bs(_) => "BS",
        _ => "unknown",
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        format!("{}…", &s[..s.floor_char_boundary(80)])
    } else {
        s
    }
}

impl DecodeError {
    /// Prefix where in the item the problem is: "attribute `m`: [2]: `x` is not a number".
    fn within(self, name: &str) -> Self {
        if name.starts_with('[') {
            DecodeError(format!("{name}: {}", self.0))
        } else {
            DecodeError(format!("attribute `{name}`: {}", self.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodbstreams::primitives::Blob;
    use route::Routes;
    use serde_json::json;

    /// The route of a configuration without `[[route]]`: index `posts`, the key as `_id`.
    fn single(ids: &DocIdSpec) -> Routes {
        let key = (!ids.attributes.is_empty()).then(|| ids.attributes.clone());
        Routes::single("posts", key, &ids.separator)
    }
    /// As the daemon decodes: keeping of the row what the routes read.
    fn dynamodb_change(r: &Value, ids: &DocIdSpec) -> Result<Decoded, DecodeError> {
        let routes = single(ids);
        routes.apply(dynamodb_row(
            r.to_string().as_bytes(),
            Some("posts"),
            &routes.reads(),
        )?)
    }
    fn dynamodb_kinesis_change(p: &[u8], ids: &DocIdSpec) -> Result<Decoded, DecodeError> {
        let routes = single(ids);
        routes.apply(dynamodb_kinesis_row(p, &routes.reads())?)
    }
    fn at_posts(id: &str, action: DocAction) -> Decoded {
        DocChange {
            index: Some("posts".into()),
            ..DocChange::new(id.into(), action)
        }
        .into()
    }

    fn s(v: &str) -> AttributeValue {
        AttributeValue::S(v.into())
    }
    fn n(v: &str) -> AttributeValue {
        AttributeValue::N(v.into())
    }

    #[test]
    fn every_attribute_type_becomes_plain_json() {
        let item: HashMap<String, AttributeValue> = [
            ("s", s("Hello")),
            ("n", n("123.45")),
            (
                "b",
                AttributeValue::B(Blob::new("this text is base64-encoded")),
            ),
            ("bool", AttributeValue::Bool(true)),
            ("null", AttributeValue::Null(true)),
            (
                "m",
                AttributeValue::M(
                    [("Name".to_string(), s("Joe")), ("Age".to_string(), n("35"))].into(),
                ),
            ),
            ("l", AttributeValue::L(vec![s("Cookies"), n("3.14159")])),
            (
                "ss",
                AttributeValue::Ss(vec!["Giraffe".into(), "Zebra".into()]),
            ),
            ("ns", AttributeValue::Ns(vec!["42.2".into(), "-19".into()])),
            (
                "bs",
                AttributeValue::Bs(vec![Blob::new("Sunny"), Blob::new("Rainy")]),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let doc = item_to_json(&item).unwrap();
        assert_eq!(
            doc.to_string(),
            json!({
                "s": "Hello", "n": 123.45, "b": "dGhpcyB0ZXh0IGlzIGJhc2U2NC1lbmNvZGVk", "bool": true, "null": null,
                "m": {"Name": "Joe", "Age": 35}, "l": ["Cookies", 3.14159], "ss": ["Giraffe", "Zebra"],
                "ns": [42.2, -19], "bs": ["U3Vubnk=", "UmFpbnk="]
            })
            .to_string()
        );
    }

    #[test]
    fn numbers_reach_the_document_digit_for_digit() {
        for text in [
            "12345678901234567890123",
            "0.1000000000000000055511151231257827",
            "-0.000000000000000000000000000000000001",
            "9.9999999999999999999999999999999999999E+125",
            "1E-130",
        ] {
            let v = attribute_to_json(&n(text)).unwrap();
            let bytes = serde_json::to_string(&json!({ "x": v })).unwrap();
            // serde_json writes the exponent marker in lower case; every digit is kept
            assert_eq!(bytes, format!("{{\"x\":{}}}", text.replace('E', "e")));
        }
    }

    #[test]
    fn a_malformed_number_is_an_error_naming_the_attribute() {
        let item: HashMap<String, AttributeValue> = [("price".to_string(), n("12,50"))].into();
        let err = item_to_json(&item).unwrap_err();
        assert!(err.0.contains("price") && err.0.contains("12,50"), "{err}");
    }

    #[test]
    fn wire_form_attribute_values_decode_like_sdk_ones() {
        let wire = json!({"M": {
            "number set": {"NS": ["0", "1"]}, "number": {"N": "10"}, "binary set": {"BS": ["MTMyMQ==", "MTQzMQ=="]},
            "string": {"S": "some-string"}, "null": {"NULL": true}, "boolean": {"BOOL": false},
            "string set": {"SS": ["a", "b"]}, "binary": {"B": "MTMyMQ=="},
            "list": {"L": [{"S": "x"}, {"N": "13"}]}, "big": {"N": "12345678901234567890123"}
        }});
        let line = |item: &Value| json!({ "Item": item }).to_string();
        let doc = Value::Object(export_item(line(&wire["M"]).as_bytes()).unwrap());
        assert_eq!(
            doc,
            json!({"number set": [0, 1], "number": 10, "binary set": ["MTMyMQ==", "MTQzMQ=="], "string": "some-string",
                   "null": null, "boolean": false, "string set": ["a", "b"], "binary": "MTMyMQ==", "list": ["x", 13],
                   "big": Number::from_str("12345678901234567890123").unwrap()})
        );
        let err = export_item(line(&json!({"a": {"L": [{"N": "x"}]}})).as_bytes()).unwrap_err();
        assert!(err.0.contains("`a`") && err.0.contains("[0]"), "{err}");
        assert!(export_item(line(&json!({"x": {"Q": 1}})).as_bytes())
            .unwrap_err()
            .0
            .contains("`Q`"));
        assert_eq!(
            export_item(b"{\"Keys\": {}}").unwrap_err().0,
            "a line without an Item object"
        );
    }

    /// A GetRecords record, as the service sends it.
    fn record(event: &str, keys: Value, new_image: Option<Value>) -> Value {
        let mut section = json!({"Keys": keys, "SequenceNumber": "400000000000000499660"});
        if let Some(image) = new_image {
            section["NewImage"] = image;
        }
        json!({"eventName": event, "dynamodb": section})
    }

    #[test]
    fn insert_and_modify_index_the_new_image_remove_deletes() {
        let ids = DocIdSpec {
            attributes: vec!["id".into()],
            separator: "|".into(),
        };
        let key = json!({"id": {"S": "p1"}});
        let insert = record(
            "INSERT",
            key.clone(),
            Some(json!({"id": {"S": "p1"}, "title": {"S": "Hi"}})),
        );
        assert_eq!(
            dynamodb_change(&insert, &ids).unwrap(),
            at_posts("p1", DocAction::Index(json!({"id": "p1", "title": "Hi"})))
        );
        let remove = record("REMOVE", key.clone(), None);
        assert_eq!(
            dynamodb_change(&remove, &ids).unwrap(),
            at_posts("p1", DocAction::Delete)
        );
        let keys_only = record("MODIFY", key.clone(), None);
        assert!(dynamodb_change(&keys_only, &ids)
            .unwrap_err()
            .0
            .contains("NEW_IMAGE"));
        let unknown = record("UPSERT", key, None);
        assert_eq!(
            dynamodb_change(&unknown, &ids).unwrap_err().0,
            "unknown eventName `UPSERT` (INSERT, MODIFY or REMOVE)"
        );
    }

    #[test]
    fn a_joined_id_splits_back_into_its_parts() {
        let sep = "|";
        for parts in [
            vec!["POST#1", "COMMENT#2"],
            vec!["a|b", "c"],
            vec!["a", "b|c"],
            vec!["back\\slash|", "\\|"],
            vec!["é", ""],
        ] {
            let parts: Vec<String> = parts.into_iter().map(str::to_owned).collect();
            let id = join_id(parts.clone(), sep).unwrap();
            assert_eq!(split_id(&id, parts.len(), sep), Some(parts), "{id}");
        }
        assert_eq!(split_id("one", 1, sep), Some(vec!["one".to_string()]));
        assert_eq!(split_id("a|b|c", 2, sep), None, "three parts, not two");
        assert_eq!(
            split_id("a\\x|b", 2, sep),
            None,
            "not an escape join_id writes"
        );
    }

    #[test]
    fn composite_ids_join_hash_and_range_and_cannot_collide() {
        let ids = DocIdSpec {
            attributes: vec!["ForumName".into(), "Subject".into()],
            separator: "|".into(),
        };
        let keys = |a: &str, b: &str| {
            [
                ("ForumName".to_string(), s(a)),
                ("Subject".to_string(), s(b)),
            ]
            .into()
        };
        assert_eq!(
            ids.render(&keys("DynamoDB", "Thread 3")).unwrap(),
            "DynamoDB|Thread 3"
        );
        assert_ne!(
            ids.render(&keys("a|b", "c")).unwrap(),
            ids.render(&keys("a", "b|c")).unwrap()
        );
        let numeric: HashMap<_, _> = [
            ("ForumName".to_string(), n("101")),
            ("Subject".to_string(), n("7")),
        ]
        .into();
        assert_eq!(ids.render(&numeric).unwrap(), "101|7");
        let missing: HashMap<_, _> = [("ForumName".to_string(), s("x"))].into();
        assert!(ids.render(&missing).unwrap_err().0.contains("Subject"));
    }

    /// Routes for a DynamoDB → Kinesis stream, compiled as `sluice run` compiles them.
    fn kinesis_routes(extra: &str) -> Routes {
        let toml =
            format!("[source]\ntype = \"kinesis\"\nstream = \"s\"\nformat = \"dynamodb\"\n{extra}");
        let config = crate::config::Config::from_toml(&toml).unwrap();
        Routes::from_config(&config, None).unwrap()
    }

    const MODIFY_WITHOUT_OLD_IMAGE: &[u8] = br#"{"eventName":"MODIFY","tableName":"Posts","dynamodb":{"ApproximateCreationDateTime":1719347890250,"Keys":{"id":{"S":"p1"}},"NewImage":{"id":{"S":"p1"},"tenant":{"S":"beta"}}}}"#;

    #[test]
    fn a_kinesis_modify_without_old_image_stays_in_place_when_the_key_alone_places_it() {
        let routes = kinesis_routes("[[route]]\nindex = \"posts\"\nid = [\"id\"]\n");
        let d = routes
            .apply(dynamodb_kinesis_row(MODIFY_WITHOUT_OLD_IMAGE, &routes.reads()).unwrap())
            .unwrap();
        assert_eq!(d.changes.len(), 1, "{d:?}");
        assert_eq!(
            (d.changes[0].index.as_deref(), d.changes[0].id.as_str()),
            (Some("posts"), "p1")
        );
        assert!(matches!(d.changes[0].action, DocAction::IndexJson(_)));
    }

    #[test]
    fn a_kinesis_modify_without_old_image_is_refused_when_its_old_place_is_unknown() {
        // placed by `tenant`, which the keys do not carry: the old document may be elsewhere
        let routes = kinesis_routes(
            "old_images = true\n[[route]]\nindex = \"posts-{tenant}\"\nid = [\"id\"]\n",
        );
        let e = routes
            .apply(dynamodb_kinesis_row(MODIFY_WITHOUT_OLD_IMAGE, &routes.reads()).unwrap())
            .unwrap_err();
        assert!(e.0.contains("tenant"), "{e:?}");
        // with the old image it carries, the row moves
        let with_old = String::from_utf8(MODIFY_WITHOUT_OLD_IMAGE.to_vec())
            .unwrap()
            .replace(
                r#""NewImage""#,
                r#""OldImage":{"id":{"S":"p1"},"tenant":{"S":"acme"}},"NewImage""#,
            );
        let d = routes
            .apply(dynamodb_kinesis_row(with_old.as_bytes(), &routes.reads()).unwrap())
            .unwrap();
        let places: Vec<_> = d
            .changes
            .iter()
            .map(|c| (c.index.as_deref().unwrap(), &c.action))
            .collect();
        assert!(
            matches!(
                places[..],
                [
                    ("posts-acme", DocAction::Delete),
                    ("posts-beta", DocAction::IndexJson(_))
                ]
            ),
            "{places:?}"
        );
    }

    #[test]
    fn dynamodb_records_from_kinesis_are_versioned_by_their_own_time() {
        let ids = DocIdSpec {
            attributes: vec![],
            separator: "|".into(),
        };
        let micro =
            br#"{"eventName":"INSERT","dynamodb":{"ApproximateCreationDateTime":1719347890250647,
            "ApproximateCreationDateTimePrecision":"MICROSECOND","Keys":{"id":{"S":"k"}},
            "NewImage":{"id":{"S":"k"},"n":{"N":"12345678901234567890123"}}}}"#;
        let d = dynamodb_kinesis_change(micro, &ids).unwrap();
        assert_eq!(d.changes[0].version, Some(1719347890250647));
        assert_eq!(d.changes[0].id, "k");
        assert_eq!(
            d.changes[0].action,
            DocAction::IndexJson(r#"{"id":"k","n":12345678901234567890123}"#.into())
        );
        let milli = br#"{"eventName":"REMOVE","dynamodb":{"ApproximateCreationDateTime":1719347890250,"Keys":{"id":{"S":"k"}}}}"#;
        let d = dynamodb_kinesis_change(milli, &ids).unwrap();
        assert_eq!(d.changes[0].version, Some(1719347890250000));
        assert_eq!(d.changes[0].action, DocAction::Delete);
        let composite = br#"{"eventName":"REMOVE","dynamodb":{"ApproximateCreationDateTime":1,"Keys":{"a":{"S":"x"},"b":{"N":"1"}}}}"#;
        assert!(dynamodb_kinesis_change(composite, &ids)
            .unwrap_err()
            .0
            .contains("sink.document_id"));
        let ordered = DocIdSpec {
            attributes: vec!["a".into(), "b".into()],
            separator: "|".into(),
        };
        assert_eq!(
            dynamodb_kinesis_change(composite, &ordered)
                .unwrap()
                .changes[0]
                .id,
            "x|1"
        );
        assert!(dynamodb_kinesis_change(b"not json", &ids)
            .unwrap_err()
            .0
            .contains("not JSON"));
    }
}
