//! DynamoDB change records in their JSON wire form — a GetRecords `Records[]` entry, or the
//! payload of a DynamoDB→Kinesis record — decoded in one pass: each AttributeValue
//! (`{"N": "1.5"}`, `{"M": {...}}`) becomes plain JSON as it is parsed, with no tree of typed
//! values in between (that tree and its copies were a third of the daemon's CPU per record).
//!
//! When no route shapes documents, a new image is not built into a tree at all: its document's
//! JSON text is written while it is parsed ([`Text`]), and only the attributes the routes read
//! (the key, what places the row) are kept as values beside it.
//!
//! A malformed attribute fails only its own record, with a message that names where it is
//! ("dynamodb.NewImage: attribute `price`: `12,50` is not a number"); the reader dead-letters it.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize as _, Deserializer as _};
use serde_json::{Map, Value};

use super::route::Reads;
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
    /// The whole new image, or (when [`Reads::whole_row`] is false) only the attributes the
    /// routes read, the document being `new_json`.
    pub new_image: Option<Map<String, Value>>,
    /// The new image as the document's JSON text (an object), when it was written while parsed.
    pub new_json: Option<String>,
    /// Like `new_image`: whole, or only what the routes read.
    pub old_image: Option<Map<String, Value>>,
    pub created: Option<Value>,
    pub created_precision: Option<Value>,
}

/// Decodes one change record, keeping of its images what `reads` says. `Err` names what is
/// wrong with it.
pub(crate) fn change_record(bytes: &[u8], reads: &Reads) -> Result<ChangeRecord, DecodeError> {
    decode(bytes, "not a DynamoDB change record", |de, slot| {
        de.deserialize_map(RecordVisitor {
            slot,
            reads,
            size: bytes.len(),
        })
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
    reads: &'s Reads,
    /// The record's length: room enough for its document's text.
    size: usize,
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
                    let seed = SectionVisitor {
                        slot,
                        reads: self.reads,
                        size: self.size,
                    };
                    let section = map
                        .next_value_seed(seed)
                        .map_err(|e| match slot.is_empty() {
                            true => slot.section("dynamodb", e),
                            false => e,
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
    reads: &'s Reads,
    size: usize,
}

impl SectionVisitor<'_> {
    /// An image: a whole tree, or its JSON text and the attributes the routes read.
    fn image<'de, A: MapAccess<'de>>(
        &self,
        map: &mut A,
        what: &str,
    ) -> Result<(Map<String, Value>, Option<String>), A::Error> {
        let slot = self.slot;
        let parsed = if self.reads.whole_row {
            map.next_value_seed(Item { slot, keys: false })
                .map(|tree| (tree, None))
        } else {
            let mut text = Text::with_capacity(self.size);
            map.next_value_seed(JsonItem {
                slot,
                text: &mut text,
                reads: Some(&self.reads.attributes),
            })
            .and_then(|read| Ok((read, Some(text.into_string(slot)?))))
        };
        parsed.map_err(|e| slot.section(what, e))
    }
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
                    let (image, json) = self.image(&mut map, "dynamodb.NewImage")?;
                    section.new_image = Some(image);
                    section.new_json = json;
                }
                "OldImage" => {
                    // only what places the row is read of an old image: its text is not kept
                    section.old_image = Some(self.image(&mut map, "dynamodb.OldImage")?.0);
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
            match out.entry(name) {
                serde_json::map::Entry::Vacant(slot) => {
                    slot.insert(value);
                }
                serde_json::map::Entry::Occupied(given) => {
                    return Err(self
                        .slot
                        .fail(format!("attribute `{}` is given twice", given.key())))
                }
            }
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
        not_an_object(self.slot, what)
    }
}

fn not_an_object<E: de::Error>(slot: &Slot, what: &str) -> E {
    slot.fail(format!(
        "an AttributeValue must be an object with one type key, got {what}"
    ))
}

/// An AttributeValue's type: its first key (a key attribute's: S, N or B).
fn type_key<'de, A: MapAccess<'de>>(map: &mut A, slot: &Slot, key: bool) -> Result<Tag, A::Error> {
    let tag = match map.next_key::<TagKey>()? {
        None => return Err(not_an_object(slot, "{}")),
        Some(TagKey::Type(tag)) => tag,
        Some(TagKey::Number) => {
            let digits: String = map.next_value()?;
            return Err(not_an_object(slot, &digits));
        }
        Some(TagKey::Unknown(other)) if key => {
            return Err(slot.fail(format!("a key attribute must be S, N or B, not {other}")))
        }
        Some(TagKey::Unknown(other)) => {
            return Err(slot.fail(format!("unknown AttributeValue type `{other}`")))
        }
    };
    if key && !matches!(tag, Tag::S | Tag::N | Tag::B) {
        return Err(slot.fail(format!(
            "a key attribute must be S, N or B, not {}",
            tag.name()
        )));
    }
    Ok(tag)
}

/// After the value: an AttributeValue has one type key only.
fn no_second_type_key<'de, A: MapAccess<'de>>(
    map: &mut A,
    slot: &Slot,
    tag: Tag,
) -> Result<(), A::Error> {
    match map.next_key::<TagKey>()? {
        Some(second) => Err(not_an_object(
            slot,
            &format!(
                "a second type key `{}` after `{}`",
                second.text(),
                tag.name()
            ),
        )),
        None => Ok(()),
    }
}

/// "N value must be a string, got 5".
fn wrong<E: de::Error>(slot: &Slot, tag: Tag, what: &str, got: &Value) -> E {
    slot.fail(format!(
        "{} value must be {what}, got {}",
        tag.name(),
        short(got)
    ))
}

impl<'de> Visitor<'de> for Attribute<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an AttributeValue")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let slot = self.slot;
        let tag = type_key(&mut map, slot, self.key)?;
        let must = |what: &str, v: &Value| -> A::Error { wrong(slot, tag, what, v) };
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
        no_second_type_key(&mut map, slot, tag)?;
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

/// An image's document as JSON text, written while the image is parsed.
struct Text {
    out: Vec<u8>,
    /// Where in `out` the names of the objects being written are, to find one given twice.
    names: Vec<(usize, usize)>,
}

impl Text {
    fn with_capacity(bytes: usize) -> Self {
        Text {
            out: Vec::with_capacity(bytes),
            names: Vec::new(),
        }
    }

    fn string(&mut self, s: &str) {
        serde_json::to_writer(&mut self.out, s).expect("writing JSON to memory");
    }

    /// Every byte written came from a `&str` or is ASCII punctuation; checked all the same.
    fn into_string<E: de::Error>(self, slot: &Slot) -> Result<String, E> {
        String::from_utf8(self.out)
            .map_err(|_| slot.fail("the document is not UTF-8 (sluice's fault)".into()))
    }

    /// A name given twice among the object's names from `first` on: a tree keeps only the last
    /// value, Elasticsearch refuses the document, so the record is refused here, saying so.
    fn name_given_twice(&self, first: usize) -> Option<String> {
        let names = &self.names[first..];
        let text = |&(start, end): &(usize, usize)| &self.out[start..end];
        let twice = if names.len() <= 16 {
            (1..names.len())
                .find(|&i| names[..i].iter().any(|n| text(n) == text(&names[i])))
                .map(|i| text(&names[i]))
        } else {
            let mut sorted: Vec<&[u8]> = names.iter().map(text).collect();
            sorted.sort_unstable();
            sorted.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
        };
        twice.map(|quoted| serde_json::from_slice(quoted).unwrap_or_default())
    }
}

/// An item (or an `M` value) → its JSON text; at the top (`reads`), also the attributes the
/// routes read, as values.
struct JsonItem<'s, 't, 'r> {
    slot: &'s Slot,
    text: &'t mut Text,
    reads: Option<&'r [String]>,
}

impl<'de> DeserializeSeed<'de> for JsonItem<'_, '_, '_> {
    type Value = Map<String, Value>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for JsonItem<'_, '_, '_> {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an item (an object of AttributeValues)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (slot, text) = (self.slot, self.text);
        let mut read = Map::new();
        let first = text.names.len();
        text.out.push(b'{');
        while let Some(Name(name)) = map.next_key::<Name>()? {
            if text.names.len() > first {
                text.out.push(b',');
            }
            let start = text.out.len();
            text.string(&name);
            text.names.push((start, text.out.len()));
            text.out.push(b':');
            let value = text.out.len();
            map.next_value_seed(JsonAttribute {
                slot,
                text: &mut *text,
            })
            .map_err(|e| slot.within(&name, e))?;
            if self.reads.is_some_and(|r| r.iter().any(|a| **a == *name)) {
                let v = serde_json::from_slice(&text.out[value..])
                    .map_err(|e| slot.fail::<A::Error>(format!("{e} (sluice's fault)")))?;
                read.insert(name.into_owned(), v);
            }
        }
        if let Some(name) = text.name_given_twice(first) {
            return Err(slot.fail(format!("attribute `{name}` is given twice")));
        }
        text.names.truncate(first);
        text.out.push(b'}');
        Ok(read)
    }
}

/// An attribute's name, borrowed where serde_json lends it.
struct Name<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Name<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(NameVisitor)
    }
}

struct NameVisitor;

impl<'de> Visitor<'de> for NameVisitor {
    type Value = Name<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Name(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Name(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Name(Cow::Owned(v)))
    }
}

/// One AttributeValue → its JSON text, under the same rules as [`Attribute`].
struct JsonAttribute<'s, 't> {
    slot: &'s Slot,
    text: &'t mut Text,
}

impl<'de> DeserializeSeed<'de> for JsonAttribute<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for JsonAttribute<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an AttributeValue")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (slot, text) = (self.slot, self.text);
        let tag = type_key(&mut map, slot, false)?;
        let scalar = |text, want, what| Scalar {
            slot,
            text,
            tag,
            want,
            what,
        };
        match tag {
            Tag::S | Tag::B => map.next_value_seed(scalar(text, Want::String, "a string"))?,
            Tag::N => map.next_value_seed(scalar(text, Want::Number, "a string"))?,
            Tag::Bool => map.next_value_seed(scalar(text, Want::Bool, "true or false"))?,
            Tag::Null => {
                map.next_value::<IgnoredAny>()?;
                text.out.extend_from_slice(b"null");
            }
            Tag::M => {
                map.next_value_seed(JsonItem {
                    slot,
                    text,
                    reads: None,
                })?;
            }
            Tag::L => map.next_value_seed(JsonList { slot, text })?,
            Tag::Ss | Tag::Bs | Tag::Ns => map.next_value_seed(JsonSet { slot, text, tag })?,
        }
        no_second_type_key(&mut map, slot, tag)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        Err(not_an_object(
            self.slot,
            &short(&Value::String(v.to_owned())),
        ))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        Err(not_an_object(self.slot, &v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        Err(not_an_object(self.slot, &v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        Err(not_an_object(self.slot, &v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        Err(not_an_object(self.slot, &v.to_string()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(not_an_object(self.slot, "null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<(), A::Error> {
        Err(not_an_object(self.slot, "an array"))
    }
}

/// An `L` value → a JSON array.
struct JsonList<'s, 't> {
    slot: &'s Slot,
    text: &'t mut Text,
}

impl<'de> DeserializeSeed<'de> for JsonList<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for JsonList<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of AttributeValues")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let (slot, text) = (self.slot, self.text);
        text.out.push(b'[');
        for i in 0.. {
            let mark = text.out.len();
            if i > 0 {
                text.out.push(b',');
            }
            let element = seq
                .next_element_seed(JsonAttribute {
                    slot,
                    text: &mut *text,
                })
                .map_err(|e| slot.within(&format!("[{i}]"), e))?;
            if element.is_none() {
                text.out.truncate(mark);
                break;
            }
        }
        text.out.push(b']');
        Ok(())
    }
}

/// An `SS`, `NS` or `BS` value → a JSON array of strings or numbers.
struct JsonSet<'s, 't> {
    slot: &'s Slot,
    text: &'t mut Text,
    tag: Tag,
}

impl<'de> DeserializeSeed<'de> for JsonSet<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for JsonSet<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let (slot, text, tag) = (self.slot, self.text, self.tag);
        let want = if tag == Tag::Ns {
            Want::Number
        } else {
            Want::String
        };
        text.out.push(b'[');
        for i in 0.. {
            let mark = text.out.len();
            if i > 0 {
                text.out.push(b',');
            }
            let element = seq.next_element_seed(Scalar {
                slot,
                text: &mut *text,
                tag,
                want,
                what: "a list of strings",
            })?;
            if element.is_none() {
                text.out.truncate(mark);
                break;
            }
        }
        text.out.push(b']');
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let got = Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Err(wrong(self.slot, self.tag, "an array", &got))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        Err(wrong(self.slot, self.tag, "an array", &Value::from(v)))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        Err(wrong(self.slot, self.tag, "an array", &Value::from(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        Err(wrong(self.slot, self.tag, "an array", &Value::from(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        Err(wrong(self.slot, self.tag, "an array", &Value::from(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        Err(wrong(self.slot, self.tag, "an array", &Value::from(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(wrong(self.slot, self.tag, "an array", &Value::Null))
    }
}

#[derive(Clone, Copy)]
enum Want {
    String,
    /// A string holding a number (`N`, an `NS` element).
    Number,
    Bool,
}

/// A string, number or boolean value → its JSON text; any other JSON is an error naming what
/// it got ("S value must be a string, got 5").
struct Scalar<'s, 't> {
    slot: &'s Slot,
    text: &'t mut Text,
    tag: Tag,
    want: Want,
    /// What the message says the value must be.
    what: &'static str,
}

impl Scalar<'_, '_> {
    fn wrong<E: de::Error>(&self, got: &Value) -> E {
        wrong(self.slot, self.tag, self.what, got)
    }
}

impl<'de> DeserializeSeed<'de> for Scalar<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Scalar<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.what)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        match self.want {
            Want::String => self.text.string(v),
            Want::Number => {
                if !write_number(&mut self.text.out, v) {
                    return Err(self.slot.fail(format!("`{v}` is not a number")));
                }
            }
            Want::Bool => return Err(self.wrong(&Value::from(v))),
        }
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        match self.want {
            Want::Bool => {
                let word: &[u8] = if v { b"true" } else { b"false" };
                self.text.out.extend_from_slice(word);
                Ok(())
            }
            _ => Err(self.wrong(&Value::from(v))),
        }
    }
    // serde_json hands numbers over as a map (arbitrary precision), objects as maps
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let got = Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Err(self.wrong(&got))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        let got = Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        Err(self.wrong(&got))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        Err(self.wrong(&Value::from(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        Err(self.wrong(&Value::from(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        Err(self.wrong(&Value::from(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.wrong(&Value::Null))
    }
}

/// A DynamoDB number's text → JSON, written exactly as serde_json writes the number
/// `Number::from_str` makes of it (the tree's way): the same digits, the exponent as `e` with
/// its sign. `false`, writing nothing, when the text is not a JSON number.
fn write_number(out: &mut Vec<u8>, text: &str) -> bool {
    let b = text.as_bytes();
    let digits = |from: usize| from + b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let int_end = digits(i);
    // one digit, or no leading zero
    if int_end == i || (b[i] == b'0' && int_end > i + 1) {
        return false;
    }
    i = int_end;
    if b.get(i) == Some(&b'.') {
        let end = digits(i + 1);
        if end == i + 1 {
            return false;
        }
        i = end;
    }
    let mantissa = i;
    let mut sign: &[u8] = b"+";
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if let Some(s @ (b'+' | b'-')) = b.get(i) {
            sign = if *s == b'-' { b"-" } else { b"+" };
            i += 1;
        }
        let end = digits(i);
        if end == i {
            return false;
        }
        if end != b.len() {
            return false;
        }
        out.extend_from_slice(&b[..mantissa]);
        out.push(b'e');
        out.extend_from_slice(sign);
        out.extend_from_slice(&b[i..end]);
        return true;
    }
    if i != b.len() {
        return false;
    }
    out.extend_from_slice(b);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Routes that read these attributes and shape nothing: images are written as JSON text.
    fn text_reading(attributes: &[&str]) -> Reads {
        Reads {
            whole_row: false,
            attributes: attributes.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// A new image decoded both ways — as a tree, and written as JSON text — which must agree:
    /// the same document, or the same error.
    fn image(v: Value) -> Result<Map<String, Value>, DecodeError> {
        let record = json!({"eventName": "INSERT", "dynamodb": {"NewImage": v}}).to_string();
        let tree = change_record(record.as_bytes(), &Reads::whole_rows())
            .map(|r| r.section.unwrap().new_image.unwrap());
        let text = change_record(record.as_bytes(), &text_reading(&[])).map(|r| {
            let section = r.section.unwrap();
            assert_eq!(section.new_image.unwrap(), Map::new(), "reads nothing");
            section.new_json.unwrap()
        });
        match (&tree, text) {
            (Ok(tree), Ok(text)) => {
                let parsed: Map<String, Value> = serde_json::from_str(&text).unwrap();
                assert_eq!(&parsed, tree, "{text}");
                // exactly as a tree of the document would be written
                assert_eq!(
                    text.len(),
                    serde_json::to_string(tree).unwrap().len(),
                    "{text}"
                );
            }
            (Err(tree), Err(text)) => assert_eq!(tree, &text),
            (tree, text) => panic!("the tree gave {tree:?}, the text {text:?}"),
        }
        tree
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
        let r = change_record(record, &Reads::whole_rows()).unwrap();
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
        let err = change_record(record.to_string().as_bytes(), &Reads::whole_rows()).unwrap_err();
        assert_eq!(
            err.0,
            "dynamodb.Keys: attribute `id`: a key attribute must be S, N or B, not BOOL"
        );
        let record = json!({"dynamodb": {"Keys": {"id": {"Q": "x"}}}});
        let err = change_record(record.to_string().as_bytes(), &Reads::whole_rows()).unwrap_err();
        assert_eq!(
            err.0,
            "dynamodb.Keys: attribute `id`: a key attribute must be S, N or B, not Q"
        );
    }

    #[test]
    fn text_that_is_not_one_json_object_is_refused_as_such() {
        for bad in [&b"{\"dynamodb\": "[..], b"{} trailing", b"\xff"] {
            let err = change_record(bad, &Reads::whole_rows()).unwrap_err();
            assert!(err.0.starts_with("not JSON"), "{err}");
        }
        let err = change_record(b"[1]", &Reads::whole_rows()).unwrap_err();
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
        let r = change_record(record.to_string().as_bytes(), &Reads::whole_rows()).unwrap();
        assert_eq!(r.event_name.as_deref(), Some("REMOVE"));
        assert_eq!(
            Value::Object(r.section.unwrap().keys.unwrap()),
            json!({"id": "a"})
        );
    }

    #[test]
    fn written_as_text_an_image_keeps_only_what_the_routes_read_as_values() {
        let record = json!({"eventName": "MODIFY", "dynamodb": {
            "Keys": {"id": {"S": "p1"}},
            "NewImage": {"id": {"S": "p1"}, "tenant": {"S": "acme"}, "body": {"M": {"t": {"S": "x"}}}},
            "OldImage": {"id": {"S": "p1"}, "tenant": {"S": "old"}, "body": {"M": {}}}}});
        let r = change_record(
            record.to_string().as_bytes(),
            &text_reading(&["tenant", "absent"]),
        )
        .unwrap();
        let section = r.section.unwrap();
        assert_eq!(
            Value::Object(section.new_image.unwrap()),
            json!({"tenant": "acme"})
        );
        assert_eq!(
            section.new_json.as_deref(),
            // the record's own field order (json! wrote it sorted)
            Some(r#"{"body":{"t":"x"},"id":"p1","tenant":"acme"}"#)
        );
        assert_eq!(
            Value::Object(section.old_image.unwrap()),
            json!({"tenant": "old"})
        );
        assert_eq!(Value::Object(section.keys.unwrap()), json!({"id": "p1"}));
    }

    #[test]
    fn an_attribute_given_twice_is_refused_not_half_kept() {
        // a tree would keep the last value and Elasticsearch refuses such a document: neither
        // is the item; DynamoDB never sends it, so the record is refused with the reason
        let record = br#"{"eventName": "INSERT", "dynamodb": {"NewImage": {"a": {"S": "1"}, "b": {"N": "2"}, "a": {"S": "3"}}}}"#;
        for reads in [Reads::whole_rows(), text_reading(&[])] {
            assert_eq!(
                change_record(record, &reads).unwrap_err().0,
                "dynamodb.NewImage: attribute `a` is given twice"
            );
        }
        let nested =
            br#"{"dynamodb": {"NewImage": {"m": {"M": {"x": {"S": "1"}, "x": {"S": "1"}}}}}}"#;
        for reads in [Reads::whole_rows(), text_reading(&[])] {
            assert_eq!(
                change_record(nested, &reads).unwrap_err().0,
                "dynamodb.NewImage: attribute `m`: attribute `x` is given twice"
            );
        }
        let many: Vec<String> = (0..40)
            .map(|i| format!("\"k{}\": {{\"N\": \"{i}\"}}", i % 39))
            .collect();
        let record = format!(r#"{{"dynamodb": {{"NewImage": {{{}}}}}}}"#, many.join(","));
        assert_eq!(
            change_record(record.as_bytes(), &text_reading(&[]))
                .unwrap_err()
                .0,
            "dynamodb.NewImage: attribute `k0` is given twice"
        );
    }

    #[test]
    fn numbers_are_written_as_the_tree_writes_them() {
        let mut rng = fastrand::Rng::with_seed(7);
        let alphabet = b"0123456789-+.eE x";
        let mut texts: Vec<String> = [
            "0",
            "-0",
            "7",
            "-19",
            "123.45",
            "1E5",
            "1e-5",
            "1E+125",
            "-0.0e0",
            "00",
            "01",
            ".5",
            "5.",
            "+5",
            "1e",
            "1e+",
            "--1",
            "1.2.3",
            " 1",
            "1 ",
            "",
            "-",
            "18446744073709551616",
            "9.9999999999999999999999999999999999999E+125",
        ]
        .map(String::from)
        .into();
        for _ in 0..20_000 {
            let len = rng.usize(1..9);
            texts.push(
                (0..len)
                    .map(|_| alphabet[rng.usize(..alphabet.len())] as char)
                    .collect(),
            );
        }
        for text in texts {
            let mut out = Vec::new();
            let tree = number(&text).ok().map(|n| n.to_string());
            let written = write_number(&mut out, &text).then(|| String::from_utf8(out).unwrap());
            assert_eq!(written, tree, "`{text}`");
        }
    }
}
