//! AWS DMS messages (RDS → Kinesis) → document operations. Pure.
//!
//! A message is `{"data": {...}, "metadata": {...}}` (control records carry `control`). Each
//! source table needs a route: its index, and the primary-key columns that form `_id` (DMS does
//! not put the key in data records). Values pass through exactly as DMS wrote them — including
//! large integers DMS prints in scientific notation — thanks to serde_json's arbitrary precision.

use serde_json::{Map, Value};

use super::route::{Image, Routes, RowChange};
use super::{DecodeError, Decoded, Skip};

/// DMS messages and where their tables go.
#[derive(Debug)]
pub struct DmsRoutes {
    /// Each route names its `schema.table` and its primary-key columns (`id`).
    pub routes: Routes,
    /// Name of the before-image object (DMS BeforeImageSettings FieldName).
    pub before_image_field: String,
    /// Before images and deletes carry whole rows (`source.old_images`): an attribute they lack
    /// was absent, not left out.
    pub old_images: bool,
}

const BEFORE_IMAGE_PREFIX: &str = "BI_";

/// Versions of DMS records are the message's `timestamp` in µs times this, plus the shard
/// clock's `+1` steps: room for 1,000 records of one shard within one microsecond before a
/// version could reach the next microsecond's (ARCHITECTURE.md, "Versions for DMS records").
pub const DMS_VERSIONS_PER_MICROSECOND: u64 = 1000;

impl DmsRoutes {
    /// One DMS message → operations, a counted skip, or an error (dead letter). The message's
    /// `timestamp` becomes the version floor, so versions order across shards.
    pub fn decode(&self, payload: &[u8]) -> Result<Decoded, DecodeError> {
        let message: Value = serde_json::from_slice(payload)
            .map_err(|e| DecodeError(format!("not valid JSON: {e}")))?;
        let floor = version_floor(&message)?;
        let mut decoded = match self.row_change(&message)? {
            Ok(change) => self.routes.apply(change)?,
            Err(skip) => Decoded {
                skipped: Some(skip),
                ..Decoded::default()
            },
        };
        decoded.version_floor = floor;
        Ok(decoded)
    }

    /// The message as a row change, or why it carries none (a control record).
    fn row_change(&self, message: &Value) -> Result<Result<RowChange, Skip>, DecodeError> {
        let meta = message
            .get("metadata")
            .and_then(Value::as_object)
            .ok_or_else(|| DecodeError("not a DMS message: no `metadata` object".into()))?;
        let field = |name: &str| {
            meta.get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| DecodeError(format!("DMS metadata has no `{name}`")))
        };
        let record_type = field("record-type")?;
        let operation = field("operation")?;
        let table = format!("{}.{}", field("schema-name")?, field("table-name")?);
        match record_type {
            "data" => {}
            "control" => {
                return Ok(Err(Skip {
                    reason: "control_record",
                    detail: format!("{operation} on {table}"),
                }))
            }
            other => return Err(DecodeError(format!("unknown DMS record-type `{other}`"))),
        }
        let data = message
            .get("data")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                DecodeError(format!(
                    "DMS {operation} record for {table} has no `data` object"
                ))
            })?;
        let (new, old) = match operation {
            "load" | "insert" => (Some(row(data)), None),
            "update" => (Some(row(data)), self.before_image(message, data, &table)?),
            // the deleted row: whole only when the source logs whole rows (PostgreSQL
            // REPLICA IDENTITY FULL); otherwise its key columns, the rest null
            "delete" => {
                let deleted = row(data);
                // whole only if it carries more than the key: PostgreSQL without REPLICA
                // IDENTITY FULL sends the key columns and nulls
                let key = self.key_columns(&table);
                let whole = deleted
                    .iter()
                    .any(|(k, v)| !v.is_null() && !key.contains(k));
                (None, Some(self.image(deleted, whole, true)))
            }
            other => {
                return Err(DecodeError(format!(
                    "unknown DMS operation `{other}` for {table}"
                )))
            }
        };
        Ok(Ok(RowChange {
            table: Some(table),
            new,
            new_json: None,
            old,
            keys: None,
            version: None,
        }))
    }

    /// An old row as the record carries it: whole only when `source.old_images` says so *and*
    /// the record shows it (`looks_whole`) — a before image of the key alone (ColumnFilter
    /// pk-only) is partial whatever the setting, so a test it cannot answer is an error, not a
    /// guess.
    fn image(&self, mut attributes: Map<String, Value>, looks_whole: bool, deleted: bool) -> Image {
        let whole = self.old_images && looks_whole;
        if !whole && deleted {
            // a partial delete's nulls stand for columns it does not carry (PostgreSQL sends
            // the key and nulls); a before image's null is the column's value
            attributes.retain(|_, v| !v.is_null());
        }
        Image { attributes, whole }
    }

    /// The primary-key columns the routes of `table` name.
    fn key_columns(&self, table: &str) -> Vec<String> {
        self.routes
            .routes
            .iter()
            .filter(|r| r.table.as_deref() == Some(table))
            .flat_map(|r| r.id_attributes().unwrap_or_default())
            .collect()
    }

    /// The row before an update, from the before-image object or `BI_` columns, if present.
    fn before_image(
        &self,
        message: &Value,
        data: &Map<String, Value>,
        table: &str,
    ) -> Result<Option<Image>, DecodeError> {
        // a before image without the key columns says nothing of where the row was
        let key = self.key_columns(table);
        let has_key = |image: &Map<String, Value>| {
            key.iter()
                .all(|c| image.get(c).is_some_and(|v| !v.is_null()))
        };
        // whole when it has every column the row has now
        let covers = |image: &Map<String, Value>| {
            data.keys()
                .filter(|k| !k.starts_with(BEFORE_IMAGE_PREFIX))
                .all(|k| image.contains_key(k))
        };
        if let Some(before) = message
            .get(&self.before_image_field)
            .and_then(Value::as_object)
            .filter(|b| has_key(b))
        {
            return Ok(Some(self.image(before.clone(), covers(before), false)));
        }
        let prefixed: Map<String, Value> = data
            .iter()
            .filter_map(|(k, v)| {
                let column = k.strip_prefix(BEFORE_IMAGE_PREFIX)?;
                data.contains_key(column)
                    .then(|| (column.to_owned(), v.clone()))
            })
            .collect();
        if !prefixed.is_empty() && has_key(&prefixed) {
            let whole = covers(&prefixed);
            return Ok(Some(self.image(prefixed, whole, false)));
        }
        if self.old_images {
            return Err(DecodeError(format!(
                "{table}: this update carries no before image, and source.old_images says every one does (DMS BeforeImageSettings)"
            )));
        }
        // Without a before image the old place is taken to be the new one (routes that place
        // by other columns than the key need old images: refused at start).
        Ok(None)
    }
}

/// `metadata.timestamp` (µs, written by the DMS task in the order it reads the source's log)
/// in version units; `None` when absent.
fn version_floor(message: &Value) -> Result<Option<u64>, DecodeError> {
    let Some(text) = message
        .get("metadata")
        .and_then(|m| m.get("timestamp"))
        .and_then(Value::as_str)
    else {
        return Ok(None);
    };
    let micros = humantime::parse_rfc3339_weak(text.trim_end_matches('Z'))
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| u64::try_from(d.as_micros()).ok())
        .ok_or_else(|| {
            DecodeError(format!(
                "DMS metadata.timestamp `{text}` is not a time like 2024-07-29T00:59:07.686557Z"
            ))
        })?;
    // A time whose version Elasticsearch could not store would be ignored as a floor and
    // leave this change unordered against other shards: refuse it, with the reason.
    micros
        .checked_mul(DMS_VERSIONS_PER_MICROSECOND)
        .filter(|v| crate::version::in_range(*v))
        .map(Some)
        .ok_or_else(|| {
            DecodeError(format!(
                "DMS metadata.timestamp `{text}` is beyond the versions Elasticsearch can store (after the year 2262)"
            ))
        })
}

/// The row's columns without DMS's `BI_` copies of them.
fn row(data: &Map<String, Value>) -> Map<String, Value> {
    data.iter()
        .filter(|(k, _)| {
            !k.strip_prefix(BEFORE_IMAGE_PREFIX)
                .is_some_and(|c| data.contains_key(c))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::route::{IdRule, Route, Template};
    use crate::transform::DocAction;
    use serde_json::json;

    fn routes() -> DmsRoutes {
        let path = |p: &str| vec![p.to_string()];
        let mut customers = Route::new(
            "customers",
            Some("public.customers"),
            Template::literal("customers"),
            IdRule::Attributes(vec!["customer_id".into()]),
        );
        customers.shape.exclude = vec![path("secret")];
        let mut lines = Route::new(
            "lines",
            Some("shop.order_lines"),
            Template::literal("lines"),
            IdRule::Attributes(vec!["order_id".into(), "line".into()]),
        );
        lines.shape.include = Some(vec![path("order_id"), path("line"), path("qty")]);
        DmsRoutes {
            routes: Routes {
                routes: vec![customers, lines],
                key: None,
                separator: "|".into(),
            },
            before_image_field: "before-image".into(),
            old_images: false,
        }
    }

    fn msg(op: &str, table: (&str, &str), data: Value) -> Vec<u8> {
        json!({"data": data, "metadata": {"timestamp": "2024-07-29T01:09:25.375525Z", "record-type": "data", "operation": op,
            "partition-key-type": "primary-key", "schema-name": table.0, "table-name": table.1,
            "commit-timestamp": "2024-07-29T01:09:25.366257Z", "transaction-id": 1144}})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn data_records_index_or_delete_with_the_route_id() {
        let d = routes()
            .decode(&msg(
                "insert",
                ("public", "customers"),
                json!({"customer_id": 7, "name": "Ada", "secret": "x"}),
            ))
            .unwrap();
        assert_eq!(d.changes.len(), 1);
        assert_eq!(d.changes[0].id, "7");
        assert_eq!(d.changes[0].index.as_deref(), Some("customers"));
        assert_eq!(
            d.changes[0].action,
            DocAction::Index(json!({"customer_id": 7, "name": "Ada"}))
        );
        for op in ["load", "update"] {
            assert!(matches!(
                routes()
                    .decode(&msg(op, ("public", "customers"), json!({"customer_id": 7})))
                    .unwrap()
                    .changes[0]
                    .action,
                DocAction::Index(_)
            ));
        }
        let del = routes()
            .decode(&msg(
                "delete",
                ("public", "customers"),
                json!({"customer_id": 7, "name": null}),
            ))
            .unwrap();
        assert_eq!(del.changes[0].action, DocAction::Delete);
    }

    #[test]
    fn composite_keys_and_include_lists() {
        let d = routes()
            .decode(&msg(
                "insert",
                ("shop", "order_lines"),
                json!({"order_id": "A|1", "line": 2, "qty": 3, "note": "n"}),
            ))
            .unwrap();
        assert_eq!(d.changes[0].id, "A\\|1|2");
        assert_eq!(
            d.changes[0].action,
            DocAction::Index(json!({"order_id": "A|1", "line": 2, "qty": 3}))
        );
    }

    #[test]
    fn values_keep_their_exact_digits_including_scientific_notation() {
        let raw = br#"{"data":{"customer_id":12345678901234567890123,"big":1.2345678901234567E+19,"f":0.1000000000000000055511151231257827},
            "metadata":{"record-type":"data","operation":"insert","schema-name":"public","table-name":"customers"}}"#;
        let d = routes().decode(raw).unwrap();
        assert_eq!(d.changes[0].id, "12345678901234567890123");
        let DocAction::Index(doc) = &d.changes[0].action else {
            panic!()
        };
        assert_eq!(
            serde_json::to_string(doc).unwrap(),
            r#"{"big":1.2345678901234567e+19,"customer_id":12345678901234567890123,"f":0.1000000000000000055511151231257827}"#
        );
    }

    #[test]
    fn a_primary_key_change_with_a_before_image_moves_the_document() {
        let moved = json!({"before-image": {"customer_id": 46}, "data": {"customer_id": 45, "name": "Jane"},
            "metadata": {"record-type": "data", "operation": "update", "schema-name": "public", "table-name": "customers"}});
        let d = routes().decode(moved.to_string().as_bytes()).unwrap();
        assert_eq!(d.changes.len(), 2);
        assert_eq!(
            (d.changes[0].id.as_str(), &d.changes[0].action),
            ("46", &DocAction::Delete)
        );
        assert_eq!(d.changes[1].id, "45");
        // BI_ columns work the same, and are not indexed
        let bi = msg(
            "update",
            ("public", "customers"),
            json!({"customer_id": 45, "BI_customer_id": 44, "name": "Jane"}),
        );
        let d = routes().decode(&bi).unwrap();
        assert_eq!(d.changes[0].id, "44");
        assert_eq!(
            d.changes[1].action,
            DocAction::Index(json!({"customer_id": 45, "name": "Jane"}))
        );
        // an unchanged key in the before image: a plain update
        let same = json!({"before-image": {"customer_id": 45}, "data": {"customer_id": 45},
            "metadata": {"record-type": "data", "operation": "update", "schema-name": "public", "table-name": "customers"}});
        assert_eq!(
            routes()
                .decode(same.to_string().as_bytes())
                .unwrap()
                .changes
                .len(),
            1
        );
        // without a before image the old _id cannot be known (documented limitation)
        let blind = routes()
            .decode(&msg(
                "update",
                ("public", "customers"),
                json!({"customer_id": 45}),
            ))
            .unwrap();
        assert_eq!(blind.changes.len(), 1);
    }

    #[test]
    fn the_dms_timestamp_orders_versions_across_shards() {
        let at = |ts: &str| {
            let m = json!({"data": {"customer_id": 1}, "metadata": {"timestamp": ts, "record-type": "data",
                "operation": "update", "schema-name": "public", "table-name": "customers"}});
            routes()
                .decode(m.to_string().as_bytes())
                .unwrap()
                .version_floor
                .unwrap()
        };
        assert_eq!(at("2024-07-29T00:59:07.686557Z"), 1_722_214_747_686_557_000);
        // one microsecond later is 1,000 versions later, whatever shard it is in
        assert_eq!(
            at("2024-07-29T00:59:07.686558Z") - at("2024-07-29T00:59:07.686557Z"),
            1000
        );
        let garbled = json!({"data": {"customer_id": 1}, "metadata": {"timestamp": "yesterday", "record-type": "data",
            "operation": "insert", "schema-name": "public", "table-name": "customers"}});
        assert!(routes()
            .decode(garbled.to_string().as_bytes())
            .unwrap_err()
            .0
            .contains("metadata.timestamp `yesterday`"));
        let far = json!({"data": {"customer_id": 1}, "metadata": {"timestamp": "2300-01-01T00:00:00.000001Z",
            "record-type": "data", "operation": "insert", "schema-name": "public", "table-name": "customers"}});
        assert!(routes()
            .decode(far.to_string().as_bytes())
            .unwrap_err()
            .0
            .contains("beyond the versions Elasticsearch can store"));
    }

    #[test]
    fn control_records_and_unrouted_tables_are_skipped_and_say_why() {
        let control = br#"{"control":{"table-def":{"columns":{},"primary-key":["id"]}},"metadata":{"timestamp":"2019-11-21T19:14:22.223792Z",
            "record-type":"control","operation":"create-table","partition-key-type":"task-id","schema-name":"sbtest","table-name":"t1"}}"#;
        let d = routes().decode(control).unwrap();
        assert!(d.changes.is_empty());
        assert_eq!(d.skipped.unwrap().reason, "control_record");
        let d = routes()
            .decode(&msg("insert", ("public", "other"), json!({"id": 1})))
            .unwrap();
        assert_eq!(
            d.skipped,
            Some(Skip {
                reason: "no_route",
                detail: "public.other".into()
            })
        );
        assert!(
            d.version_floor.is_some(),
            "skipped records still carry their time"
        );
    }

    #[test]
    fn malformed_messages_are_errors_that_say_what_is_wrong() {
        let r = routes();
        assert!(r
            .decode(b"{not json")
            .unwrap_err()
            .0
            .contains("not valid JSON"));
        assert!(r
            .decode(br#"{"data":{}}"#)
            .unwrap_err()
            .0
            .contains("metadata"));
        let no_op = br#"{"data":{},"metadata":{"record-type":"data","schema-name":"public","table-name":"customers"}}"#;
        assert!(r.decode(no_op).unwrap_err().0.contains("operation"));
        assert!(r
            .decode(&msg(
                "upsert",
                ("public", "customers"),
                json!({"customer_id": 1})
            ))
            .unwrap_err()
            .0
            .contains("unknown DMS operation `upsert`"));
        assert!(r
            .decode(&msg(
                "insert",
                ("public", "customers"),
                json!({"name": "x"})
            ))
            .unwrap_err()
            .0
            .contains("attribute `customer_id`"));
        assert!(r
            .decode(&msg(
                "insert",
                ("public", "customers"),
                json!({"customer_id": null})
            ))
            .unwrap_err()
            .0
            .contains("customer_id"));
    }
}
