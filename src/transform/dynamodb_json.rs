//! DynamoDB change records in their JSON wire form — a GetRecords `Records[]` entry, or the
//! payload of a DynamoDB→Kinesis record — decoded in one pass: each AttributeValue
//! (`{"N": "1.5"}`, `{"M": {...}}`) becomes plain JSON as it is parsed, with no tree of typed
//! values in between (that tree and its copies were a third of the daemon's CPU per record).
//!
//! A malformed attribute fails only its own record, with a message that names where it is
//! ("dynamodb.NewImage: attribute `price`: `12,50` is not a number"); the reader dead-letters it.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserializer as _;
use serde_json::{Map, Value};

use super::{number, short, DecodeError};

/// What a change record carries, attributes already plain JSON.
#[derive(Debug, Default)]
pub(crate) struct ChangeRecord {
    pub event_name: Option<String>,
    /// DynamoDB→Kinesis only.
    pub table_name: Option<String>,
    /// The `dynamodb` object; `None` if the record has none.
    pub section: Option<Section>,
}

#[derive(Debug, Default)]
pub(crate) struct Section {
    pub keys: Option<Map<String, Value>>,
    pub new_image: Option<Map<String, Value>>,
    pub old_image: Option<Map<String, Value>>,
    pub created: Option<Value>,
    pub created_precision: Option<Value>,
}

/// Decodes one change record. `Err` names what is wrong with it.
pub(crate) fn change_record(bytes: &[u8]) -> Result<ChangeRecord, DecodeError> {
    decode(bytes, "not a DynamoDB change record", |de, slot| {
        de.deserialize_map(RecordVisitor { slot })
    })
}

/// One line of a DynamoDB export to S3 (`{"Item": {...}}`) → the item as plain JSON.
pub(crate) fn export_item(line: &[u8]) -> Result<Map<String, Value>, DecodeError> {
    decode(line, "not an export line", |de, slot| {
        de.deserialize_map(ExportLine { slot })
    })?
    .ok_or_else(|| DecodeError("a line without an Item object".into()))
}

type Json<'a> = serde_json::Deserializer<serde_json::de::SliceRead<'a>>;

/// Runs one visitor over the whole of `bytes`. The error is the visitors' own message, or
/// "not JSON" (a syntax error), or `what` with serde's words.
fn decode<'a, T>(
    bytes: &'a [u8],
    what: &str,
    run: impl FnOnce(&mut Json<'a>, &Slot) -> Result<T, serde_json::Error>,
) -> Result<T, DecodeError> {
    let slot = Slot::default();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = run(&mut de, &slot).and_then(|r| de.end().map(|()| r));
    parsed.map_err(|e| match slot.take() {
        Some(reason) if !e.is_syntax() && !e.is_eof() => reason,
        _ if e.is_syntax() || e.is_eof() => DecodeError(format!("not JSON: {e}")),
        _ => DecodeError(format!("{what}: {e}")),
    })
}

/// The first error met, with where it is: serde's own errors carry only a position, so the
/// visitors put the readable message here and let serde unwind.
#[derive(Default)]
struct Slot(RefCell<Option<DecodeError>>);

impl Slot {
    fn fail<E: de::Error>(&self, message: String) -> E {
        self.0.borrow_mut().get_or_insert(DecodeError(message));
        E::custom("invalid AttributeValue")
    }

    /// On the way out of `name`: prefix it to the message (or take serde's own, if it is the
    /// first to fail).
    fn within<E: de::Error>(&self, name: &str, err: E) -> E {
        let mut slot = self.0.borrow_mut();
        let inner = slot.take().unwrap_or_else(|| DecodeError(err.to_string()));
        *slot = Some(inner.within(name));
        err
    }

    fn section<E: de::Error>(&self, name: &str, err: E) -> E {
        let mut slot = self.0.borrow_mut();
        let inner = slot.take().unwrap_or_else(|| DecodeError(err.to_string()));
        *slot = Some(DecodeError(format!("{name}: {}", inner.0)));
        err
    }

    fn is_empty(&self) -> bool {
        self.0.borrow().is_none()
    }

    fn take(&self) -> Option<DecodeError> {
        self.0.borrow_mut().take()
    }
}

struct RecordVisitor<'s> {
    slot: &'s Slot,
}

impl<'de> Visitor<'de> for RecordVisitor<'_> {
    type Value = ChangeRecord;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a DynamoDB change record (an object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ChangeRecord, A::Error> {
        let mut record = ChangeRecord::default();
        const KNOWN: &[&str] = &["eventName", "tableName", "dynamodb"];
        while let Some(key) = map.next_key_seed(OneOf(KNOWN))? {
            match key {
                "eventName" => record.event_name = text(map.next_value()?),
                "tableName" => record.table_name = text(map.next_value()?),
                "dynamodb" => {
                    let slot = self.slot;
                    let section = map.next_value_seed(SectionVisitor { slot }).map_err(|e| {
                        match slot.is_empty() {
                            true => slot.section("dynamodb", e),
                            false => e,
                        }
                    })?;
                    record.section = Some(section);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(record)
    }
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s),
        _ => None,
    }
}

/// An export line: its `Item`, other fields passed over.
struct ExportLine<'s> {
    slot: &'s Slot,
}

impl<'de> Visitor<'de> for ExportLine<'_> {
    type Value = Option<Map<String, Value>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an export line (an object with an Item)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut item = None;
        while let Some(key) = map.next_key_seed(OneOf(&["Item"]))? {
            if key == "Item" {
                let slot = self.slot;
                item = Some(
                    map.next_value_seed(Item { slot, keys: false })
                        .map_err(|e| slot.section("Item", e))?,
                );
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(item)
    }
}

struct SectionVisitor<'s> {
    slot: &'s Slot,
}

impl<'de> DeserializeSeed<'de> for SectionVisitor<'_> {
    type Value = Section;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Section, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for SectionVisitor<'_> {
    type Value = Section;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the record's `dynamodb` object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Section, A::Error> {
        let mut section = Section::default();
        const KNOWN: &[&str] = &[
            "Keys",
            "NewImage",
            "OldImage",
            "ApproximateCreationDateTime",
            "ApproximateCreationDateTimePrecision",
        ];
        while let Some(key) = map.next_key_seed(OneOf(KNOWN))? {
            let slot = self.slot;
            let item = |keys| Item { slot, keys };
            match key {
                "Keys" => {
                    section.keys = Some(
                        map.next_value_seed(item(true))
                            .map_err(|e| slot.section("dynamodb.Keys", e))?,
                    )
                }
                "NewImage" => {
                    section.new_image = Some(
                        map.next_value_seed(item(false))
                            .map_err(|e| slot.section("dynamodb.NewImage", e))?,
                    )
                }
                "OldImage" => {
                    section.old_image = Some(
                        map.next_value_seed(item(false))
                            .map_err(|e| slot.section("dynamodb.OldImage", e))?,
                    )
                }
                "ApproximateCreationDateTime" => section.created = Some(map.next_value()?),
                "ApproximateCreationDateTimePrecision" => {
                    section.created_precision = Some(map.next_value()?)
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(section)
    }
}

/// A field name that is one of these, or `""` for any other: matched where serde_json lends
/// the text, so passing over a field copies nothing.
struct OneOf(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for OneOf {
    type Value = &'static str;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for OneOf {
    type Value = &'static str;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self
            .0
            .iter()
            .find(|name| **name == v)
            .copied()
            .unwrap_or(""))
    }
}

/// An AttributeValue's type key, read without copying it (one per attribute).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tag {
    S,
    N,
    B,
    Bool,
    Null,
    M,
    L,
    Ss,
    Ns,
    Bs,
}

impl Tag {
    const NAMES: [(&'static str, Tag); 10] = [
        ("S", Tag::S),
        ("N", Tag::N),
        ("B", Tag::B),
        ("BOOL", Tag::Bool),
        ("NULL", Tag::Null),
        ("M", Tag::M),
        ("L", Tag::L),
        ("SS", Tag::Ss),
        ("NS", Tag::Ns),
        ("BS", Tag::Bs),
    ];

    fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("?", |(name, _)| name)
    }
}

/// The key of an AttributeValue object.
enum TagKey {
    Type(Tag),
    /// serde_json hands an arbitrary-precision number over as a map with one private key.
    Number,
    /// Its text, for the message.
    Unknown(String),
}

impl TagKey {
    fn text(&self) -> &str {
        match self {
            TagKey::Type(tag) => tag.name(),
            TagKey::Number => "$serde_json::private::Number",
            TagKey::Unknown(text) => text,
        }
    }
}

impl<'de> de::Deserialize<'de> for TagKey {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TagVisitor)
    }
}

struct TagVisitor;

impl Visitor<'_> for TagVisitor {
    type Value = TagKey;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an AttributeValue type")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<TagKey, E> {
        Ok(match Tag::NAMES.iter().find(|(name, _)| *name == v) {
            Some((_, tag)) => TagKey::Type(*tag),
            None if v == "$serde_json::private::Number" => TagKey::Number,
            None => TagKey::Unknown(v.to_owned()),
        })
    }
}

/// An attribute's name.
struct Field(String);

impl<'de> de::Deserialize<'de> for Field {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(FieldVisitor)
    }
}

struct FieldVisitor;

impl Visitor<'_> for FieldVisitor {
    type Value = Field;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
        Ok(Field(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Field, E> {
        Ok(Field(v))
    }
}

/// A whole item (or `Keys`, whose attributes must be S, N or B) → a JSON object.
struct Item<'s> {
    slot: &'s Slot,
    keys: bool,
}

impl<'de> DeserializeSeed<'de> for Item<'_> {
    type Value = Map<String, Value>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Item<'_> {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an item (an object of AttributeValues)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Map::new();
        while let Some(Field(name)) = map.next_key::<Field>()? {
            let value = map
                .next_value_seed(Attribute {
                    slot: self.slot,
                    key: self.keys,
                })
                .map_err(|e| self.slot.within(&name, e))?;
            out.insert(name, value);
        }
        Ok(out)
    }
}

/// One AttributeValue → plain JSON: numbers keep their exact digits, binary stays base64
/// text, sets become arrays.
struct Attribute<'s> {
    slot: &'s Slot,
    /// A key attribute: S, N or B only.
    key: bool,
}

impl<'de> DeserializeSeed<'de> for Attribute<'_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl Attribute<'_> {
    fn not_an_object<E: de::Error>(&self, what: &str) -> E {
        self.slot.fail(format!(
            "an AttributeValue must be an object with one type key, got {what}"
        ))
    }
}

impl<'de> Visitor<'de> for Attribute<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an AttributeValue")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let slot = self.slot;
        let tag = match map.next_key::<TagKey>()? {
            None => return Err(self.not_an_object("{}")),
            Some(TagKey::Type(tag)) => tag,
            Some(TagKey::Number) => {
                let digits: String = map.next_value()?;
                return Err(self.not_an_object(&digits));
            }
            Some(TagKey::Unknown(other)) if self.key => {
                return Err(slot.fail(format!("a key attribute must be S, N or B, not {other}")))
            }
            Some(TagKey::Unknown(other)) => {
                return Err(slot.fail(format!("unknown AttributeValue type `{other}`")))
            }
        };
        if self.key && !matches!(tag, Tag::S | Tag::N | Tag::B) {
            return Err(slot.fail(format!(
                "a key attribute must be S, N or B, not {}",
                tag.name()
            )));
        }
        let must = |what: &str, v: &Value| -> A::Error {
            slot.fail(format!(
                "{} value must be {what}, got {}",
                tag.name(),
                short(v)
            ))
        };
        let value = match tag {
            Tag::S | Tag::B => match map.next_value()? {
                s @ Value::String(_) => s,
                other => return Err(must("a string", &other)),
            },
            Tag::N => match map.next_value()? {
                Value::String(s) => number(&s).map_err(|e| slot.fail::<A::Error>(e.0))?,
                other => return Err(must("a string", &other)),
            },
            Tag::Bool => match map.next_value()? {
                b @ Value::Bool(_) => b,
                other => return Err(must("true or false", &other)),
            },
            Tag::Null => {
                map.next_value::<IgnoredAny>()?;
                Value::Null
            }
            Tag::M => Value::Object(map.next_value_seed(Item { slot, keys: false })?),
            Tag::L => Value::Array(map.next_value_seed(List { slot })?),
            Tag::Ss | Tag::Bs | Tag::Ns => match map.next_value()? {
                Value::Array(items) => {
                    let mut out = Vec::with_capacity(items.len());
                    for item in items {
                        out.push(match item {
                            Value::String(s) if tag == Tag::Ns => {
                                number(&s).map_err(|e| slot.fail::<A::Error>(e.0))?
                            }
                            s @ Value::String(_) => s,
                            other => return Err(must("a list of strings", &other)),
                        });
                    }
                    Value::Array(out)
                }
                other => return Err(must("an array", &other)),
            },
        };
        if let Some(second) = map.next_key::<TagKey>()? {
            return Err(self.not_an_object(&format!(
                "a second type key `{}` after `{}`",
                second.text(),
                tag.name()
            )));
        }
        Ok(value)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Err(self.not_an_object(&short(&Value::String(v.to_owned()))))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Err(self.not_an_object(&v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Err(self.not_an_object(&v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Err(self.not_an_object(&v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Err(self.not_an_object(&v.to_string()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Err(self.not_an_object("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<Value, A::Error> {
        Err(self.not_an_object("an array"))
    }
}

/// An `L` value: a list of AttributeValues.
struct List<'s> {
    slot: &'s Slot,
}

impl<'de> DeserializeSeed<'de> for List<'_> {
    type Value = Vec<Value>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for List<'_> {
    type Value = Vec<Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of AttributeValues")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        loop {
            let element = seq
                .next_element_seed(Attribute {
                    slot: self.slot,
                    key: false,
                })
                .map_err(|e| self.slot.within(&format!("[{}]", out.len()), e))?;
            match element {
                Some(v) => out.push(v),
                None => return Ok(out),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn image(v: Value) -> Result<Map<String, Value>, DecodeError> {
        let record = json!({"eventName": "INSERT", "dynamodb": {"NewImage": v}});
        let r = change_record(record.to_string().as_bytes())?;
        Ok(r.section.unwrap().new_image.unwrap())
    }

    #[test]
    fn every_attribute_type_becomes_plain_json_in_one_pass() {
        let doc = image(json!({
            "s": {"S": "Hello \"you\""}, "n": {"N": "123.45"}, "b": {"B": "dGhpcw=="},
            "bool": {"BOOL": true}, "null": {"NULL": true},
            "m": {"M": {"Name": {"S": "Joe"}, "Age": {"N": "35"}}},
            "l": {"L": [{"S": "Cookies"}, {"N": "1.25"}, {"L": []}]},
            "ss": {"SS": ["Giraffe", "Zebra"]}, "ns": {"NS": ["42.2", "-19"]}, "bs": {"BS": ["U3Vubnk="]}
        }))
        .unwrap();
        assert_eq!(
            Value::Object(doc),
            json!({
                "s": "Hello \"you\"", "n": 123.45, "b": "dGhpcw==", "bool": true, "null": null,
                "m": {"Name": "Joe", "Age": 35}, "l": ["Cookies", 1.25, []],
                "ss": ["Giraffe", "Zebra"], "ns": [42.2, -19], "bs": ["U3Vubnk="]
            })
        );
    }

    #[test]
    fn escaped_type_keys_and_field_names_are_read_as_their_text() {
        let record = br#"{"\u0064ynamodb": {"NewImage": {"x": {"\u0053": "a"}}}}"#;
        let r = change_record(record).unwrap();
        assert_eq!(
            Value::Object(r.section.unwrap().new_image.unwrap()),
            json!({"x": "a"})
        );
    }

    #[test]
    fn numbers_keep_every_digit() {
        let text = "12345678901234567890123.000000000000000000001";
        let doc = image(json!({"n": {"N": text}})).unwrap();
        assert_eq!(
            serde_json::to_string(&doc).unwrap(),
            format!("{{\"n\":{text}}}")
        );
    }

    #[test]
    fn a_malformed_attribute_is_named_with_its_path() {
        let cases = [
            (json!({"price": {"N": "12,50"}}), "dynamodb.NewImage: attribute `price`: `12,50` is not a number"),
            (
                json!({"m": {"M": {"l": {"L": [{"S": "ok"}, {"N": 5}]}}}}),
                "dynamodb.NewImage: attribute `m`: attribute `l`: [1]: N value must be a string, got 5",
            ),
            (json!({"x": "plain"}), "dynamodb.NewImage: attribute `x`: an AttributeValue must be an object with one type key, got \"plain\""),
            (json!({"x": 7}), "dynamodb.NewImage: attribute `x`: an AttributeValue must be an object with one type key, got 7"),
            (json!({"x": {"Q": 1}}), "dynamodb.NewImage: attribute `x`: unknown AttributeValue type `Q`"),
            (json!({"x": {"S": "a", "N": "1"}}), "dynamodb.NewImage: attribute `x`: an AttributeValue must be an object with one type key, got a second type key `S` after `N`"),
            (json!({"x": {"S": "a", "Zed": 1}}), "dynamodb.NewImage: attribute `x`: an AttributeValue must be an object with one type key, got a second type key `Zed` after `S`"),
            (json!({"x": {}}), "dynamodb.NewImage: attribute `x`: an AttributeValue must be an object with one type key, got {}"),
            (json!({"x": {"SS": ["a", 1]}}), "dynamodb.NewImage: attribute `x`: SS value must be a list of strings, got 1"),
            (json!({"x": {"BOOL": "yes"}}), "dynamodb.NewImage: attribute `x`: BOOL value must be true or false, got \"yes\""),
        ];
        for (item, expected) in cases {
            assert_eq!(image(item).unwrap_err().0, expected);
        }
    }

    #[test]
    fn key_attributes_must_be_strings_numbers_or_binary() {
        let record = json!({"dynamodb": {"Keys": {"id": {"BOOL": true}}}});
        let err = change_record(record.to_string().as_bytes()).unwrap_err();
        assert_eq!(
            err.0,
            "dynamodb.Keys: attribute `id`: a key attribute must be S, N or B, not BOOL"
        );
        let record = json!({"dynamodb": {"Keys": {"id": {"Q": "x"}}}});
        let err = change_record(record.to_string().as_bytes()).unwrap_err();
        assert_eq!(
            err.0,
            "dynamodb.Keys: attribute `id`: a key attribute must be S, N or B, not Q"
        );
    }

    #[test]
    fn text_that_is_not_one_json_object_is_refused_as_such() {
        for bad in [&b"{\"dynamodb\": "[..], b"{} trailing", b"\xff"] {
            let err = change_record(bad).unwrap_err();
            assert!(err.0.starts_with("not JSON"), "{err}");
        }
        let err = change_record(b"[1]").unwrap_err();
        assert!(
            err.0
                .starts_with("not a DynamoDB change record: invalid type: sequence"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_are_passed_over() {
        let record = json!({"eventID": "1", "userIdentity": {"Type": "Service"}, "eventName": "REMOVE",
            "dynamodb": {"SizeBytes": 9, "Keys": {"id": {"S": "a"}}, "StreamViewType": "KEYS_ONLY"}});
        let r = change_record(record.to_string().as_bytes()).unwrap();
        assert_eq!(r.event_name.as_deref(), Some("REMOVE"));
        assert_eq!(
            Value::Object(r.section.unwrap().keys.unwrap()),
            json!({"id": "a"})
        );
    }
}
