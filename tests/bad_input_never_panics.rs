//! Bad input never panics: arbitrary bytes, arbitrary JSON and arbitrary records through every
//! decoder and the `_bulk` answer parser. A decoder either produces operations or refuses the
//! record with a reason (which the reader stores in the dead-letter table with the record).

use base64::Engine;
use proptest::prelude::*;
use serde_json::{json, Value};
use sluice::config::Config;
use sluice::sink::{judge_item, parse_bulk_response, OpKind};
use sluice::transform::dms::DmsRoutes;
use sluice::transform::route::Routes;
use sluice::transform::{dynamodb_kinesis_row, dynamodb_row, DecodeError, Decoded};

/// Routes as `sluice run` compiles them from a file: conditions, a template index, computed
/// fields — every part of shaping sees the bad input too.
fn compiled(toml: &str, key: &[&str]) -> Routes {
    let config = Config::from_toml(toml).unwrap();
    let key: Vec<String> = key.iter().map(|k| k.to_string()).collect();
    Routes::from_config(&config, Some(&key)).unwrap()
}

const SHAPED: &str = r#"[source]
type = "dynamodb_streams"
table = "t"
old_images = true

[[route]]
when.kind.one_of = ["post", 1]
index = "posts-{tenant}"
id = ["id"]
exclude = ["blocks", "a.b"]
rename = { title = "headline" }
drop_nulls = true
compute.text = '[.blocks[]? | select(.type == "paragraph") | .text] | join("\n")'
compute.n = '.n + 1'

[[route]]
index = "rest"
"#;

fn single(key: &[&str]) -> Routes {
    let key = key.iter().map(|k| k.to_string()).collect();
    Routes::single("posts", Some(key), "|")
}

fn dynamodb_change(r: &[u8], routes: &Routes) -> Result<Decoded, DecodeError> {
    routes.apply(dynamodb_row(r, Some("t"), &routes.reads())?)
}

fn dynamodb_kinesis_change(bytes: &[u8], routes: &Routes) -> Result<Decoded, DecodeError> {
    routes.apply(dynamodb_kinesis_row(bytes, &routes.reads())?)
}

fn ids() -> Routes {
    single(&["id"])
}

fn routes() -> DmsRoutes {
    let toml = "[source]\ntype = \"kinesis\"\nstream = \"s\"\nformat = \"dms\"\n[[route]]\ntable = \"public.customers\"\nindex = \"customers\"\nid = [\"id\"]\n";
    DmsRoutes {
        routes: compiled(toml, &[]),
        before_image_field: "before-image".into(),
        old_images: false,
    }
}

/// Any JSON value, nested a few levels, with numbers of every shape.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[0-9]{1,40}(\\.[0-9]{1,10})?(E[+-]?[0-9]{1,3})?"
            .prop_map(|n| serde_json::from_str(&n).unwrap_or(Value::Null)),
        "\\PC{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[A-Za-z_-]{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// JSON shaped like the record a decoder expects, with every part possibly wrong.
fn dms_like() -> impl Strategy<Value = Value> {
    (
        any_json(),
        prop::option::of(any_json()),
        prop::sample::select(vec!["data", "control", "other", ""]),
        prop::sample::select(vec![
            "load",
            "insert",
            "update",
            "delete",
            "create-table",
            "x",
        ]),
        prop::sample::select(vec!["public", "shop", ""]),
        prop::option::of("\\PC{0,30}"),
    )
        .prop_map(|(data, before, rt, op, schema, ts)| {
            let mut m = json!({"data": data, "metadata": {"record-type": rt, "operation": op,
                "schema-name": schema, "table-name": "customers"}});
            if let Some(ts) = ts {
                m["metadata"]["timestamp"] = json!(ts);
            }
            if let Some(b) = before {
                m["before-image"] = b;
            }
            m
        })
}

fn ddb_kinesis_like() -> impl Strategy<Value = Value> {
    (
        any_json(),
        any_json(),
        any::<u64>(),
        prop::sample::select(vec!["INSERT", "MODIFY", "REMOVE", "?"]),
        prop::option::of(prop::sample::select(vec![
            "MICROSECOND",
            "MILLISECOND",
            "NANO",
        ])),
    )
        .prop_map(|(keys, image, t, event, precision)| {
            let mut r = json!({"eventName": event, "dynamodb": {"Keys": keys, "NewImage": image,
                "ApproximateCreationDateTime": t}});
            if let Some(p) = precision {
                r["dynamodb"]["ApproximateCreationDateTimePrecision"] = json!(p);
            }
            r
        })
}

/// Any DynamoDB AttributeValue in its wire form, nested — and now and then any JSON at all
/// where an AttributeValue belongs.
fn any_attribute() -> impl Strategy<Value = Value> {
    let base64 = |b: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(b);
    let leaf = prop_oneof![
        "\\PC{0,12}".prop_map(|s| json!({ "S": s })),
        "[-+]?[0-9.eE]{0,20}".prop_map(|n| json!({ "N": n })),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(move |b| json!({ "B": base64(b) })),
        any::<bool>().prop_map(|b| json!({ "BOOL": b })),
        any::<bool>().prop_map(|b| json!({ "NULL": b })),
        prop::collection::vec("\\PC{0,5}", 0..3).prop_map(|ss| json!({ "SS": ss })),
        prop::collection::vec("[0-9x.]{0,5}", 0..3).prop_map(|ns| json!({ "NS": ns })),
        any_json(),
        (
            any_json(),
            prop::sample::select(vec![
                "S", "N", "B", "BOOL", "NULL", "M", "L", "SS", "NS", "BS", "Q"
            ])
        )
            .prop_map(|(v, tag)| json!({ tag: v })),
    ];
    leaf.prop_recursive(3, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|l| json!({ "L": l })),
            prop::collection::btree_map("[a-z]{0,6}", inner, 0..4).prop_map(|m| json!({ "M": m })),
        ]
    })
}

/// A GetRecords record: every part present or not, right or wrong.
fn any_stream_record() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::option::of(prop::collection::btree_map(
            "(id|[a-z]{0,3})",
            any_attribute(),
            0..3,
        )),
        prop::option::of(prop::collection::btree_map(
            "[a-z]{0,6}",
            any_attribute(),
            0..5,
        )),
        prop::option::of(prop::sample::select(vec![
            "INSERT", "MODIFY", "REMOVE", "UNKNOWN",
        ])),
        any::<bool>(),
    )
        .prop_map(|(keys, image, event, has_section)| {
            let mut r = json!({});
            if let Some(e) = event {
                r["eventName"] = json!(e);
            }
            if has_section {
                r["dynamodb"] = json!({"SequenceNumber": "1"});
                if let Some(k) = keys {
                    r["dynamodb"]["Keys"] = json!(k);
                }
                if let Some(i) = image {
                    r["dynamodb"]["NewImage"] = json!(i);
                }
            }
            r.to_string().into_bytes()
        })
}

fn refused_with_a_reason(
    r: Result<sluice::transform::Decoded, DecodeError>,
) -> Result<(), TestCaseError> {
    if let Err(e) = r {
        prop_assert!(!e.0.trim().is_empty(), "a refusal names its reason");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_any_decoder(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        refused_with_a_reason(dynamodb_kinesis_change(&bytes, &ids()))?;
        refused_with_a_reason(dynamodb_change(&bytes, &ids()))?;
        refused_with_a_reason(routes().decode(&bytes))?;
        let _ = parse_bulk_response(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn arbitrary_json_never_panics_any_decoder(v in any_json()) {
        let bytes = v.to_string().into_bytes();
        refused_with_a_reason(dynamodb_kinesis_change(&bytes, &ids()))?;
        refused_with_a_reason(dynamodb_change(&bytes, &ids()))?;
        refused_with_a_reason(routes().decode(&bytes))?;
        let _ = parse_bulk_response(&v.to_string());
    }

    #[test]
    fn dms_shaped_messages_never_panic(m in dms_like()) {
        refused_with_a_reason(routes().decode(m.to_string().as_bytes()))?;
    }

    #[test]
    fn dynamodb_kinesis_shaped_records_never_panic(r in ddb_kinesis_like()) {
        refused_with_a_reason(dynamodb_kinesis_change(r.to_string().as_bytes(), &compiled(SHAPED, &["id"])))?;
        let decoded = dynamodb_kinesis_change(r.to_string().as_bytes(), &ids());
        if let Ok(d) = &decoded {
            for c in &d.changes {
                prop_assert!(c.version.is_some_and(sluice::version::in_range));
            }
        }
        refused_with_a_reason(decoded)?;
    }

    #[test]
    fn dynamodb_stream_records_never_panic(r in any_stream_record()) {
        refused_with_a_reason(dynamodb_change(&r, &ids()))?;
        refused_with_a_reason(dynamodb_change(&r, &single(&["id", "a"])))?;
        refused_with_a_reason(dynamodb_change(&r, &compiled(SHAPED, &["id"])))?;
    }

    #[test]
    fn bulk_answers_of_any_shape_never_panic(items in prop::collection::vec((any::<u16>(), any_json()), 0..6)) {
        let items: Vec<Value> = items
            .into_iter()
            .map(|(status, error)| json!({"index": {"status": status, "error": error}}))
            .collect();
        let text = json!({"items": items}).to_string();
        if let Ok(parsed) = parse_bulk_response(&text) {
            for item in parsed {
                let _ = judge_item(OpKind::Index, item.status, item.error.as_ref());
                let _ = judge_item(OpKind::Delete, item.status, item.error.as_ref());
            }
        }
    }
}

#[test]
fn key_attributes_of_the_wrong_kind_are_refused_with_their_name() {
    let r = json!({"eventName": "REMOVE", "dynamodb": {"Keys": {"id": {"BOOL": true}}, "SequenceNumber": "1"}});
    let e = dynamodb_change(r.to_string().as_bytes(), &ids()).unwrap_err();
    assert!(e.0.contains("`id`"), "{e}");
}
