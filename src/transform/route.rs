//! Routes: which index, `_id` and routing each change goes to, and the document's shape. Pure.
//!
//! Every source decodes its records to a [`RowChange`] — the row before and after, as plain
//! JSON — and the same routes apply to all of them (ARCHITECTURE.md, "Document shaping"):
//! in order, first match wins, on the table and on conditions over attributes. A change whose
//! row leaves a place (an attribute its route depends on changed, or it no longer matches) is
//! deleted from the old place, as a DMS primary-key move is.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::expr::{self, Expr};
use super::{join_id, DecodeError, Decoded, DocAction, DocChange, Skip};
use crate::config::{Config, ConfigError, IdConfig, KinesisFormat, SourceType};

/// One source change, before routing.
#[derive(Debug, Clone, Default)]
pub struct RowChange {
    /// DynamoDB: the table's name; DMS: `schema.table`.
    pub table: Option<String>,
    /// The row after the change; `None` for a delete. With `new_json`, only the attributes
    /// the routes read ([`Routes::reads`]).
    pub new: Option<Map<String, Value>>,
    /// The new row as the document's JSON text (an object), when the decoder wrote it while
    /// parsing because no route shapes documents: no tree of the row is built at all.
    pub new_json: Option<String>,
    /// The row before the change, as far as the record carries it.
    pub old: Option<Image>,
    /// The key attributes (DynamoDB `Keys`), when the record carries them apart.
    pub keys: Option<Map<String, Value>>,
    /// A version the record itself determines (see [`DocChange::version`]).
    pub version: Option<u64>,
}

/// A row as a record carries it: whole (a new image, an `OldImage`), or only some attributes
/// (a keys-only delete), in which case an absent attribute is unknown, not absent.
#[derive(Debug, Clone)]
pub struct Image {
    pub attributes: Map<String, Value>,
    pub whole: bool,
}

/// What the routes read of a row, known from the configuration: a decoder keeps no more.
#[derive(Debug, Clone, Default)]
pub struct Reads {
    /// Some route shapes its documents (include, exclude, rename, compute, drop_nulls), so
    /// rows are needed whole, as trees. Otherwise a document is the row's JSON text.
    pub whole_row: bool,
    /// The attributes that decide where a row goes: route tests, index, id and routing
    /// templates, the table's key.
    pub attributes: Vec<String>,
}

impl Reads {
    /// Whether a row with these `keys` is placed by its key alone: every attribute that decides
    /// a place is among them (and with none, the routes place by the record's table and keys).
    pub fn placed_by_key(&self, keys: &serde_json::Map<String, serde_json::Value>) -> bool {
        self.attributes.iter().all(|a| keys.contains_key(a))
    }

    /// Whole rows, for decoder tests: the decoding of [`Routes::reads`] without its placement
    /// (so the daemon cannot build one that claims to know where rows go).
    #[cfg(test)]
    pub fn whole_rows() -> Self {
        Reads {
            whole_row: true,
            attributes: Vec::new(),
        }
    }
}

/// Where a document lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub index: Arc<str>,
    pub id: String,
    pub routing: Option<String>,
}

/// A test on one attribute; every test given must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Test {
    pub begins_with: Option<String>,
    pub equals: Option<Value>,
    pub one_of: Option<Vec<Value>>,
    pub exists: Option<bool>,
}

/// Text with `{attribute}` placeholders (`posts-{tenant}`); `{{` and `}}` are braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    /// The text itself when there are no placeholders, shared (an index name per record
    /// would be an allocation per record).
    fixed: Option<Arc<str>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Attribute(String),
}

/// How a route builds `_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdRule {
    /// The table's key attributes (known at start, or the record's only key).
    Key,
    /// These attributes, joined with the separator (escaped: two keys never share an `_id`).
    Attributes(Vec<String>),
    Template(Template),
}

/// One route, compiled.
#[derive(Debug)]
pub struct Route {
    /// For errors, metrics and logs: the route's `name`, or `route[i]`.
    pub name: String,
    pub table: Option<String>,
    pub when: Vec<(String, Test)>,
    pub index: Template,
    pub id: IdRule,
    pub routing: Option<Template>,
    pub shape: Shape,
}

/// How a row becomes a document: computed fields read the whole row; then include / exclude,
/// rename, the computed fields are set, and nulls are dropped.
#[derive(Debug, Default)]
pub struct Shape {
    pub include: Option<Vec<Vec<String>>>,
    pub exclude: Vec<Vec<String>>,
    pub rename: Vec<(Vec<String>, Vec<String>)>,
    pub drop_nulls: bool,
    pub compute: Vec<(String, Vec<String>, Expr)>,
}

#[derive(Debug)]
pub struct Routes {
    pub routes: Vec<Route>,
    /// The table's key attributes in order, when known (DescribeTable, `sink.document_id`).
    pub key: Option<Vec<String>>,
    pub separator: String,
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed {
                        return Err(format!("`{text}`: a `{{` without its `}}`"));
                    }
                    if name.is_empty() || name.contains('{') {
                        return Err(format!("`{text}`: `{{…}}` must name an attribute"));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Attribute(name));
                }
                '}' => return Err(format!("`{text}`: a lone `}}` (write `}}}}` for a brace)")),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template::of(parts))
    }

    /// A template without placeholders.
    pub fn literal(text: &str) -> Self {
        Template::of(vec![Part::Text(text.to_owned())])
    }

    fn of(parts: Vec<Part>) -> Self {
        let fixed = match &parts[..] {
            [Part::Text(t)] => Some(t.as_str().into()),
            [] => Some("".into()),
            _ => None,
        };
        Template { parts, fixed }
    }

    /// The attributes it reads.
    pub fn attributes(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Attribute(a) => Some(a.as_str()),
            Part::Text(_) => None,
        })
    }

    /// Every name it can render, as an Elasticsearch wildcard expression (`posts-{tenant}` →
    /// `posts-*`); the text itself when there are no placeholders.
    pub fn wildcard(&self) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Attribute(_) if out.ends_with('*') => {}
                Part::Attribute(_) => out.push('*'),
            }
        }
        out
    }

    /// The text itself when there are no placeholders.
    pub fn as_literal(&self) -> Option<&str> {
        match &self.parts[..] {
            [Part::Text(t)] => Some(t),
            _ => None,
        }
    }

    fn render(&self, row: &Map<String, Value>, what: &str) -> Result<String, DecodeError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Attribute(a) => out.push_str(&text_of(row.get(a)).ok_or_else(|| {
                    DecodeError(format!(
                        "{what} needs attribute `{a}`, which is missing, null, or not a string, number or boolean"
                    ))
                })?),
            }
        }
        Ok(out)
    }
}

/// A key or template value as text: strings as they are, numbers with their exact digits.
fn text_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl Test {
    fn holds(&self, value: Option<&Value>) -> bool {
        let present = value.is_some_and(|v| !v.is_null());
        if let Some(exists) = self.exists {
            if exists != present {
                return false;
            }
        }
        if let Some(prefix) = &self.begins_with {
            if !value
                .and_then(Value::as_str)
                .is_some_and(|s| s.starts_with(prefix.as_str()))
            {
                return false;
            }
        }
        if let Some(want) = &self.equals {
            if !value.is_some_and(|v| same(v, want)) {
                return false;
            }
        }
        if let Some(any) = &self.one_of {
            if !value.is_some_and(|v| any.iter().any(|w| same(v, w))) {
                return false;
            }
        }
        true
    }
}

/// Equality where numbers compare by value text (`1.50` in the table equals `1.5` in the file).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => decimal(x.as_str()) == decimal(y.as_str()),
        _ => a == b,
    }
}

/// A number's value as (negative, significant digits, exponent): `1.50` and `15e-1` alike, and
/// exact beyond f64 (`9007199254740993` ≠ `9007199254740992`).
fn decimal(text: &str) -> Option<(bool, String, i64)> {
    let (negative, text) = match text.strip_prefix('-') {
        Some(t) => (true, t),
        None => (false, text),
    };
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().ok()?),
        None => (text, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{whole}{fraction}");
    let mut exponent = exponent - fraction.len() as i64;
    let trimmed = digits.trim_start_matches('0');
    let significant = trimmed.trim_end_matches('0');
    exponent += (trimmed.len() - significant.len()) as i64;
    if significant.is_empty() {
        return Some((false, String::new(), 0));
    }
    Some((negative, significant.to_owned(), exponent))
}

impl Route {
    /// A route that indexes the whole row.
    pub fn new(name: &str, table: Option<&str>, index: Template, id: IdRule) -> Self {
        Route {
            name: name.to_owned(),
            table: table.map(str::to_owned),
            when: vec![],
            index,
            id,
            routing: None,
            shape: Shape::default(),
        }
    }

    /// Every attribute that decides where this route puts a row (and so must be known to find
    /// a deleted row's document).
    pub fn placed_by(&self) -> Vec<String> {
        let mut out: Vec<String> = self.when.iter().map(|(a, _)| a.clone()).collect();
        out.extend(self.index.attributes().map(str::to_owned));
        if let Some(r) = &self.routing {
            out.extend(r.attributes().map(str::to_owned));
        }
        out.extend(self.id_attributes().unwrap_or_default());
        out.sort();
        out.dedup();
        out
    }

    /// Whether its documents carry `attribute` as the row holds it: not left out by `include`,
    /// excluded, renamed, or replaced by a computed field.
    pub fn document_keeps(&self, attribute: &str) -> bool {
        let shape = &self.shape;
        let touches = |path: &[String]| path.first().is_some_and(|p| p == attribute);
        shape
            .include
            .as_ref()
            .is_none_or(|paths| paths.iter().any(|p| p.len() == 1 && p[0] == attribute))
            && !shape.exclude.iter().any(|p| touches(p))
            && !shape
                .rename
                .iter()
                .any(|(from, to)| touches(from) || touches(to))
            && !shape.compute.iter().any(|(_, path, _)| touches(path))
    }

    /// The attributes `_id` is made of; `None` for the table's key.
    pub fn id_attributes(&self) -> Option<Vec<String>> {
        match &self.id {
            IdRule::Key => None,
            IdRule::Attributes(a) => Some(a.clone()),
            IdRule::Template(t) => Some(t.attributes().map(str::to_owned).collect()),
        }
    }

    fn matches_table(&self, table: Option<&str>) -> bool {
        match (&self.table, table) {
            (None, _) => true,
            (Some(want), Some(got)) => want == got,
            (Some(_), None) => false,
        }
    }

    /// Whether the row matches; an error when the image lacks an attribute a test reads.
    fn matches(&self, row: &Map<String, Value>, whole: bool) -> Result<bool, DecodeError> {
        for (attribute, test) in &self.when {
            let value = row.get(attribute);
            if value.is_none() && !whole {
                return Err(DecodeError(format!(
                    "route `{}` tests attribute `{attribute}`, which this record's old image does not carry (the stream needs whole old images: source.old_images)",
                    self.name
                )));
            }
            if !test.holds(value) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl Routes {
    /// The one route of a configuration without `[[route]]`: `sink.index`, the key as `_id`.
    pub fn single(index: &str, key: Option<Vec<String>>, separator: &str) -> Self {
        Routes {
            routes: vec![Route {
                name: "sink.index".into(),
                table: None,
                when: vec![],
                index: Template::literal(index),
                id: IdRule::Key,
                routing: None,
                shape: Shape::default(),
            }],
            key,
            separator: separator.to_owned(),
        }
    }

    /// What of a row these routes read: decoders keep only that.
    pub fn reads(&self) -> Reads {
        let mut attributes: Vec<String> = self.routes.iter().flat_map(Route::placed_by).collect();
        attributes.extend(self.key.iter().flatten().cloned());
        attributes.sort();
        attributes.dedup();
        Reads {
            whole_row: self.routes.iter().any(|r| !r.shape.is_identity()),
            attributes,
        }
    }

    /// A change → the document operations it implies, a counted skip, or an error with the
    /// reason (the record goes to the dead-letter table).
    pub fn apply(&self, change: RowChange) -> Result<Decoded, DecodeError> {
        let RowChange {
            table,
            new,
            new_json,
            old,
            keys,
            version,
        } = change;
        let table = table.as_deref();
        let keys = keys.as_ref();
        let new_place = match &new {
            Some(row) => self.place(table, row, true, keys),
            None => Ok(None),
        };
        let old_place = match &old {
            // A whole old image that cannot be placed has no document: when that row came, its
            // old document was deleted and the row refused (below).
            Some(image) if image.whole => self
                .place(table, &image.attributes, true, keys)
                .unwrap_or(None),
            Some(image) => self.place(table, &image.attributes, false, keys)?,
            None => None,
        };
        let new_place = match new_place {
            Ok(p) => p,
            // The row can no longer be placed (an attribute its route needs is gone, or makes
            // an invalid index name): its old document would stay, stale, where no later change
            // could find it. It is deleted, and the record refused with the reason.
            Err(e) => {
                let Some((_, place)) = old_place else {
                    return Err(e);
                };
                return Ok(Decoded {
                    changes: vec![self.change(place, DocAction::Delete, version)],
                    refused: Some(e),
                    ..Decoded::default()
                });
            }
        };
        let mut changes = Vec::with_capacity(2);
        if let Some((_, place)) = old_place {
            // gone, or placed elsewhere now: the document at the old place is deleted
            if new_place.as_ref().is_none_or(|(_, p)| *p != place) {
                changes.push(self.change(place, DocAction::Delete, version));
            }
        }
        if let (Some((route, place)), Some(row)) = (new_place, new) {
            let action = match new_json {
                Some(json) if route.shape.is_identity() => DocAction::IndexJson(json),
                Some(_) => {
                    return Err(DecodeError(format!(
                        "route `{}` shapes its documents, but the row was decoded without its tree (sluice's fault: the decoder was not given Routes::reads)",
                        route.name
                    )))
                }
                None => DocAction::Index(
                    route
                        .shape
                        .apply(row)
                        .map_err(|e| DecodeError(format!("route `{}`: {e}", route.name)))?,
                ),
            };
            changes.push(self.change(place, action, version));
        }
        if changes.is_empty() {
            return Ok(Decoded {
                changes,
                skipped: Some(Skip {
                    reason: "no_route",
                    detail: table.unwrap_or("the record").to_owned(),
                }),
                ..Decoded::default()
            });
        }
        Ok(Decoded {
            changes,
            ..Decoded::default()
        })
    }

    fn change(&self, place: Place, action: DocAction, version: Option<u64>) -> DocChange {
        DocChange {
            index: Some(place.index),
            id: place.id,
            routing: place.routing,
            action,
            version,
        }
    }

    /// The first route the row matches, and where it puts it.
    fn place<'r>(
        &'r self,
        table: Option<&str>,
        row: &Map<String, Value>,
        whole: bool,
        keys: Option<&Map<String, Value>>,
    ) -> Result<Option<(&'r Route, Place)>, DecodeError> {
        for route in &self.routes {
            if !route.matches_table(table) || !route.matches(row, whole)? {
                continue;
            }
            let within = |e: DecodeError| DecodeError(format!("route `{}`: {}", route.name, e.0));
            // a fixed name was checked with the configuration
            let index: Arc<str> = match &route.index.fixed {
                Some(name) => name.clone(),
                None => {
                    let index = route.index.render(row, "the index").map_err(within)?;
                    if !crate::config::valid_index(&index) {
                        return Err(within(DecodeError(format!(
                            "`{index}` is not a valid index name (lowercase, no spaces or \\/*?\"<>|,#:, at most 255 bytes)"
                        ))));
                    }
                    index.into()
                }
            };
            let id = self.id(route, row, keys).map_err(within)?;
            let routing = match &route.routing {
                Some(t) => Some(t.render(row, "routing").map_err(within)?),
                None => None,
            };
            return Ok(Some((route, Place { index, id, routing })));
        }
        Ok(None)
    }

    fn id(
        &self,
        route: &Route,
        row: &Map<String, Value>,
        keys: Option<&Map<String, Value>>,
    ) -> Result<String, DecodeError> {
        // borrowed: this runs for every record
        let names: &[String] = match &route.id {
            IdRule::Template(t) => {
                let id = t.render(row, "the id")?;
                return join_id(vec![id], &self.separator);
            }
            IdRule::Attributes(names) => names,
            IdRule::Key => match (&self.key, keys) {
                (Some(key), _) => key,
                (None, Some(keys)) if keys.len() == 1 => {
                    keys.keys().next().map(std::slice::from_ref).unwrap_or_default()
                }
                (None, Some(keys)) => {
                    return Err(DecodeError(format!(
                        "the key has {} attributes ({}): set the route's `id` (or sink.document_id) to give their order",
                        keys.len(),
                        keys.keys().cloned().collect::<Vec<_>>().join(", ")
                    )))
                }
                (None, None) => {
                    return Err(DecodeError("the route needs `id`: the record carries no key".into()))
                }
            },
        };
        let parts = names
            .iter()
            .map(|name| {
                text_of(row.get(name).or_else(|| keys.and_then(|k| k.get(name)))).ok_or_else(|| {
                    DecodeError(format!(
                        "the id needs attribute `{name}`, which is missing, null, or not a string or number"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        join_id(parts, &self.separator)
    }
}

impl Shape {
    pub fn is_identity(&self) -> bool {
        self.include.is_none()
            && self.exclude.is_empty()
            && self.rename.is_empty()
            && !self.drop_nulls
            && self.compute.is_empty()
    }

    /// The row → the document.
    pub fn apply(&self, row: Map<String, Value>) -> Result<Value, String> {
        if self.is_identity() {
            return Ok(Value::Object(row));
        }
        // computed from the whole row, before anything is taken away
        let mut computed = Vec::with_capacity(self.compute.len());
        if !self.compute.is_empty() {
            let input = expr::object_to_val(&row);
            for (name, path, expression) in &self.compute {
                match expression.eval(&input) {
                    Ok(Some(v)) => computed.push((path, v)),
                    Ok(None) => {}
                    Err(e) => return Err(format!("compute.{name}: {e}")),
                }
            }
        }
        let mut doc = match &self.include {
            Some(paths) => {
                let mut out = Map::new();
                for path in paths {
                    if let Some(v) = get(&row, path) {
                        set(&mut out, path, v.clone());
                    }
                }
                out
            }
            None => row,
        };
        for path in &self.exclude {
            remove(&mut doc, path);
        }
        for (from, to) in &self.rename {
            if let Some(v) = remove(&mut doc, from) {
                set(&mut doc, to, v);
            }
        }
        for (path, v) in computed {
            set(&mut doc, path, v);
        }
        if self.drop_nulls {
            drop_nulls(&mut doc);
        }
        Ok(Value::Object(doc))
    }
}

/// `a.b.c` → `["a", "b", "c"]`.
pub fn path(text: &str) -> Result<Vec<String>, String> {
    let parts: Vec<String> = text.split('.').map(str::to_owned).collect();
    if parts.iter().any(String::is_empty) {
        return Err(format!("`{text}` is not a field path like `author.name`"));
    }
    Ok(parts)
}

fn get<'a>(row: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let v = row.get(first)?;
    if rest.is_empty() {
        Some(v)
    } else {
        get(v.as_object()?, rest)
    }
}

fn set(doc: &mut Map<String, Value>, path: &[String], value: Value) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        doc.insert(first.clone(), value);
        return;
    }
    let inner = doc
        .entry(first.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    if !inner.is_object() {
        *inner = Value::Object(Map::new());
    }
    set(inner.as_object_mut().expect("made an object"), rest, value);
}

fn remove(doc: &mut Map<String, Value>, path: &[String]) -> Option<Value> {
    let (first, rest) = path.split_first()?;
    if rest.is_empty() {
        return doc.remove(first);
    }
    remove(doc.get_mut(first)?.as_object_mut()?, rest)
}

fn drop_nulls(doc: &mut Map<String, Value>) {
    doc.retain(|_, v| !v.is_null());
    for v in doc.values_mut() {
        if let Value::Object(inner) = v {
            drop_nulls(inner);
        }
    }
}

/// The attributes a route may place by when deletes carry only `key`: what is missing.
pub fn unroutable_deletes(route: &Route, key: &[String]) -> Vec<String> {
    route
        .placed_by()
        .into_iter()
        .filter(|a| !key.contains(a))
        .collect()
}

/// Conditions in their configured form, sorted by attribute for a stable order.
pub fn tests(when: &BTreeMap<String, Test>) -> Vec<(String, Test)> {
    when.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

impl Template {
    /// Whether the two could name one index (conservative for two templates: their leading
    /// texts agree).
    pub fn may_meet(&self, other: &Template) -> bool {
        match (&self.fixed, &other.fixed) {
            (Some(a), Some(b)) => a == b,
            (Some(a), None) => other.could_render(a),
            (None, Some(b)) => self.could_render(b),
            (None, None) => {
                let lead = |t: &Template| match t.parts.first() {
                    Some(Part::Text(x)) => x.clone(),
                    _ => String::new(),
                };
                let (a, b) = (lead(self), lead(other));
                a.starts_with(&b) || b.starts_with(&a)
            }
        }
    }

    /// Whether some row could render to `name` (for `[[index]]` entries behind a template).
    pub fn could_render(&self, name: &str) -> bool {
        fn rest(parts: &[Part], name: &str) -> bool {
            match parts.split_first() {
                None => name.is_empty(),
                Some((Part::Text(t), tail)) => {
                    name.strip_prefix(t.as_str()).is_some_and(|n| rest(tail, n))
                }
                Some((Part::Attribute(_), tail)) => (1..=name.len())
                    .filter(|i| name.is_char_boundary(*i))
                    .any(|i| rest(tail, &name[i..])),
            }
        }
        rest(&self.parts, name)
    }
}

impl Routes {
    /// The configured routes, compiled. `key`: the table's key attributes when known (at start,
    /// from DescribeTable); without it, checks that need the key are left to the start, except
    /// where nothing at start will know it either (DynamoDB→Kinesis).
    pub fn from_config(config: &Config, key: Option<&[String]>) -> Result<Self, ConfigError> {
        let separator = &config.sink.document_id_separator;
        let document_id =
            (!config.sink.document_id.is_empty()).then(|| config.sink.document_id.clone());
        // what every delete record carries: the table's key, when DescribeTable has said it
        let table_key: Option<Vec<String>> = key.map(<[String]>::to_vec);
        let key: Option<Vec<String>> = document_id.clone().or_else(|| table_key.clone());
        if config.route.is_empty() {
            return Ok(Routes::single(&config.sink.index, key, separator));
        }
        let dms = config.source.format == Some(KinesisFormat::Dms);
        let key_known_later = config.source.kind == SourceType::DynamodbStreams;
        let presumed_key: Option<Vec<String>> = {
            let mut names: Vec<String> = Vec::new();
            let mut uses_table_key = false;
            for r in &config.route {
                match &r.id {
                    Some(IdConfig::Attributes(a)) => names.extend(a.iter().cloned()),
                    Some(IdConfig::Template(t)) => names.extend(
                        Template::parse(t)
                            .map(|t| t.attributes().map(str::to_owned).collect::<Vec<_>>())
                            .unwrap_or_default(),
                    ),
                    // a route on the table's key: only the start knows it
                    None => uses_table_key = true,
                }
            }
            names.sort();
            names.dedup();
            (!names.is_empty() && !uses_table_key).then_some(names)
        };
        let mut routes = Vec::with_capacity(config.route.len());
        for (i, r) in config.route.iter().enumerate() {
            let label = match &r.name {
                Some(n) => format!("route[{i}] ({n})"),
                None => format!("route[{i}]"),
            };
            let bad = |field: &str, why: String| ConfigError(format!("{label}.{field}: {why}"));
            let index_text = r.index.as_deref().unwrap_or(&config.sink.index);
            let index = Template::parse(index_text).map_err(|e| bad("index", e))?;
            let sample: String = index
                .parts
                .iter()
                .map(|p| match p {
                    Part::Text(t) => t.as_str(),
                    Part::Attribute(_) => "a",
                })
                .collect();
            if !crate::config::valid_index(&sample) {
                return Err(bad(
                    "index",
                    format!("`{index_text}` is not a lowercase Elasticsearch index name"),
                ));
            }
            let id = match &r.id {
                None => IdRule::Key,
                Some(IdConfig::Attributes(names)) => {
                    if names.is_empty() || names.iter().any(|n| n.is_empty()) {
                        return Err(bad("id", "needs attribute names".into()));
                    }
                    IdRule::Attributes(names.clone())
                }
                Some(IdConfig::Template(text)) => {
                    let t = Template::parse(text).map_err(|e| bad("id", e))?;
                    if t.attributes().next().is_none() {
                        return Err(bad(
                            "id",
                            format!(
                                "`{text}` names no attribute: every document would share one _id"
                            ),
                        ));
                    }
                    IdRule::Template(t)
                }
            };
            let routing = r
                .routing
                .as_deref()
                .map(|t| Template::parse(t).map_err(|e| bad("routing", e)))
                .transpose()?;
            let paths = |field: &str, list: &[String]| -> Result<Vec<Vec<String>>, ConfigError> {
                list.iter()
                    .map(|p| path(p).map_err(|e| bad(field, e)))
                    .collect()
            };
            if r.include.is_some() && !r.exclude.is_empty() {
                return Err(bad("include", "set include or exclude, not both".into()));
            }
            let mut compute = Vec::with_capacity(r.compute.len());
            for (field, code) in &r.compute {
                let expression = Expr::compile(code)
                    .map_err(|e| bad(&format!("compute.{field}"), e.to_string()))?;
                compute.push((
                    field.clone(),
                    path(field).map_err(|e| bad("compute", e))?,
                    expression,
                ));
            }
            let mut when = Vec::with_capacity(r.when.len());
            for (attribute, t) in &r.when {
                if t.begins_with.is_none()
                    && t.equals.is_none()
                    && t.one_of.is_none()
                    && t.exists.is_none()
                {
                    return Err(bad(
                        &format!("when.{attribute}"),
                        "needs begins_with, equals, one_of or exists".into(),
                    ));
                }
                when.push((
                    attribute.clone(),
                    Test {
                        begins_with: t.begins_with.clone(),
                        equals: t.equals.clone(),
                        one_of: t.one_of.clone(),
                        exists: t.exists,
                    },
                ));
            }
            let route = Route {
                name: r
                    .name
                    .clone()
                    .or_else(|| r.table.clone())
                    .unwrap_or_else(|| format!("route[{i}]")),
                table: r.table.clone(),
                when,
                index,
                id,
                routing,
                shape: Shape {
                    include: r
                        .include
                        .as_deref()
                        .map(|l| paths("include", l))
                        .transpose()?,
                    exclude: paths("exclude", &r.exclude)?,
                    rename: r
                        .rename
                        .iter()
                        .map(|(from, to)| {
                            Ok((
                                path(from).map_err(|e| bad("rename", e))?,
                                path(to).map_err(|e| bad("rename", e))?,
                            ))
                        })
                        .collect::<Result<_, ConfigError>>()?,
                    drop_nulls: r.drop_nulls,
                    compute,
                },
            };
            // What a delete record carries: the key (DMS: the route's primary-key columns),
            // unless whole old images come with every change.
            // DynamoDB: the table's key (DescribeTable at start, or sink.document_id). Before the
            // start (check-config), and on DynamoDB→Kinesis where nothing describes the table,
            // it is presumed to be what the routes' ids are made of.
            let route_key = if dms {
                route.id_attributes()
            } else {
                table_key
                    .clone()
                    .or_else(|| key.clone())
                    .or_else(|| presumed_key.clone())
            };
            // `_id` of a route on the table's key is sink.document_id when set
            let id_attributes = route.id_attributes().or_else(|| document_id.clone());
            if let (Some(routing), Some(ids)) = (&route.routing, &id_attributes) {
                // the batcher knows a document by index and _id: one _id, one routing
                if let Some(a) = routing.attributes().find(|a| !ids.iter().any(|x| x == a)) {
                    return Err(bad("routing", format!("uses `{a}`, which is not part of the route's `_id` ({}): one _id must always have one routing", ids.join(", "))));
                }
            }
            if let Some(other) = routes
                .iter()
                .find(|o: &&Route| o.index.may_meet(&route.index) && o.routing != route.routing)
            {
                return Err(bad("routing", format!("differs from route `{}`, which writes to the same index: a document moving between them would keep a copy under the other routing", other.name)));
            }
            match &route_key {
                Some(k) => {
                    if let Some(routing) = &route.routing {
                        if let Some(a) = routing.attributes().find(|a| !k.iter().any(|x| x == a)) {
                            return Err(bad("routing", format!("uses `{a}`, which is not a key attribute ({}): a document's routing must never change", k.join(", "))));
                        }
                    }
                    let mut missing = unroutable_deletes(&route, k);
                    if matches!(route.id, IdRule::Key) {
                        for a in document_id.iter().flatten() {
                            if !k.contains(a) && !missing.contains(a) {
                                missing.push(a.clone());
                            }
                        }
                    }
                    if !config.source.old_images && !missing.is_empty() {
                        return Err(ConfigError(format!(
                            "{label}: deletes cannot be routed: the route places documents by {}, which a delete record does not carry (it carries the key: {}; list the table's whole key in sink.document_id if it has more). Set source.old_images = true (a DynamoDB stream of view type NEW_AND_OLD_IMAGES; DMS BeforeImageSettings with whole-row logging), or place by key attributes only",
                            quoted(&missing),
                            k.join(", ")
                        )));
                    }
                }
                None if key_known_later => {}
                None => {
                    let placed = route.placed_by();
                    if !placed.is_empty() && (!config.source.old_images || route.routing.is_some())
                    {
                        return Err(ConfigError(format!(
                            "{label}: sluice cannot tell whether {} are key attributes, which every delete record carries: set sink.document_id to the table's key{}",
                            quoted(&placed),
                            if route.routing.is_some() { "" } else { ", or set source.old_images = true" }
                        )));
                    }
                }
            }
            if let Some(earlier) = routes.iter().position(|e: &Route| {
                e.when.is_empty() && (e.table.is_none() || e.table == route.table)
            }) {
                return Err(ConfigError(format!(
                    "{label} can never match: route[{earlier}] takes every record {} first",
                    route
                        .table
                        .as_deref()
                        .map(|t| format!("of {t}"))
                        .unwrap_or_default()
                )));
            }
            routes.push(route);
        }
        Ok(Routes {
            routes,
            key,
            separator: separator.clone(),
        })
    }
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn routes(toml: &str, key: &[&str]) -> Routes {
        let config = Config::from_toml(toml).unwrap();
        let key: Vec<String> = key.iter().map(|k| k.to_string()).collect();
        Routes::from_config(&config, Some(&key)).unwrap()
    }

    fn row(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }
    fn upsert(new: Value, old: Option<Value>) -> RowChange {
        RowChange {
            table: Some("app".into()),
            keys: Some(row(json!({"PK": new["PK"], "SK": new["SK"]}))),
            new: Some(row(new)),
            new_json: None,
            old: old.map(|o| Image {
                attributes: row(o),
                whole: true,
            }),
            version: None,
        }
    }
    fn delete_by_key(pk: &str, sk: &str) -> RowChange {
        let keys = row(json!({"PK": pk, "SK": sk}));
        RowChange {
            table: Some("app".into()),
            keys: Some(keys.clone()),
            new: None,
            new_json: None,
            old: Some(Image {
                attributes: keys,
                whole: false,
            }),
            version: None,
        }
    }
    fn places(d: &Decoded) -> Vec<(String, String, Option<String>, bool)> {
        d.changes
            .iter()
            .map(|c| {
                (
                    c.index.as_deref().unwrap().to_owned(),
                    c.id.clone(),
                    c.routing.clone(),
                    c.action == DocAction::Delete,
                )
            })
            .collect()
    }
    fn source(d: &Decoded) -> &Value {
        match &d.changes.last().unwrap().action {
            DocAction::Index(v) => v,
            other => panic!("not a tree: {other:?}"),
        }
    }

    const SINGLE_TABLE: &str = concat!(
        "[source]\ntype = \"dynamodb_streams\"\ntable = \"app\"\n",
        include_str!("../../config/routes-single-table.toml")
    );

    #[test]
    fn single_table_entities_go_to_their_own_index_and_the_rest_is_skipped() {
        let r = routes(SINGLE_TABLE, &["PK", "SK"]);
        let post = r
            .apply(upsert(json!({"PK": "POST#42", "SK": "POST#42", "title": "Hi", "blocks": [
                {"type": "paragraph", "text": "One."}, {"type": "image", "src": "a.png"}, {"type": "paragraph", "text": "Two."}]}), None))
            .unwrap();
        assert_eq!(
            places(&post),
            [("posts".into(), "POST#42".into(), None, false)]
        );
        assert_eq!(
            source(&post),
            &json!({"PK": "POST#42", "SK": "POST#42", "title": "Hi", "text": "One.\nTwo.", "image_count": 1})
        );
        let comment = r
            .apply(upsert(
                json!({"PK": "POST#42", "SK": "COMMENT#7", "body": "Nice", "by": null}),
                None,
            ))
            .unwrap();
        assert_eq!(
            places(&comment),
            [(
                "comments".into(),
                "POST#42|COMMENT#7".into(),
                Some("POST#42".into()),
                false
            )]
        );
        assert_eq!(
            source(&comment),
            &json!({"PK": "POST#42", "SK": "COMMENT#7", "text": "Nice"})
        );
        let user = r
            .apply(upsert(json!({"PK": "USER#1", "SK": "PROFILE"}), None))
            .unwrap();
        assert!(user.changes.is_empty());
        assert_eq!(user.skipped.unwrap().reason, "no_route");
    }

    #[test]
    fn a_keys_only_delete_reaches_the_index_id_and_routing_its_document_was_written_to() {
        let r = routes(SINGLE_TABLE, &["PK", "SK"]);
        let d = r.apply(delete_by_key("POST#42", "COMMENT#7")).unwrap();
        assert_eq!(
            places(&d),
            [(
                "comments".into(),
                "POST#42|COMMENT#7".into(),
                Some("POST#42".into()),
                true
            )]
        );
        let d = r.apply(delete_by_key("POST#42", "POST#42")).unwrap();
        assert_eq!(places(&d), [("posts".into(), "POST#42".into(), None, true)]);
        assert_eq!(
            r.apply(delete_by_key("USER#1", "PROFILE"))
                .unwrap()
                .skipped
                .unwrap()
                .reason,
            "no_route"
        );
    }

    const TENANTS: &str = r#"[source]
type = "dynamodb_streams"
table = "app"
old_images = true

[[route]]
name = "published"
when.status.equals = "published"
index = "posts-{tenant}"
id = ["PK"]
"#;

    #[test]
    fn a_row_that_leaves_its_place_is_deleted_from_the_old_one() {
        let r = routes(TENANTS, &["PK"]);
        let moved = r
            .apply(upsert(
                json!({"PK": "p1", "tenant": "beta", "status": "published"}),
                Some(json!({"PK": "p1", "tenant": "acme", "status": "published"})),
            ))
            .unwrap();
        assert_eq!(
            places(&moved),
            [
                ("posts-acme".into(), "p1".into(), None, true),
                ("posts-beta".into(), "p1".into(), None, false)
            ]
        );
        // no longer matching: only the delete
        let unpublished = r
            .apply(upsert(
                json!({"PK": "p1", "tenant": "beta", "status": "draft"}),
                Some(json!({"PK": "p1", "tenant": "beta", "status": "published"})),
            ))
            .unwrap();
        assert_eq!(
            places(&unpublished),
            [("posts-beta".into(), "p1".into(), None, true)]
        );
        // a plain update: one write
        let same = r
            .apply(upsert(
                json!({"PK": "p1", "tenant": "beta", "status": "published", "n": 2}),
                Some(json!({"PK": "p1", "tenant": "beta", "status": "published", "n": 1})),
            ))
            .unwrap();
        assert_eq!(
            places(&same),
            [("posts-beta".into(), "p1".into(), None, false)]
        );
    }

    #[test]
    fn a_row_that_can_no_longer_be_placed_leaves_its_old_place_and_is_refused() {
        let r = routes(TENANTS, &["PK"]);
        let d = r
            .apply(upsert(
                json!({"PK": "p1", "status": "published"}),
                Some(json!({"PK": "p1", "tenant": "acme", "status": "published"})),
            ))
            .unwrap();
        assert_eq!(places(&d), [("posts-acme".into(), "p1".into(), None, true)]);
        assert!(d.refused.unwrap().0.contains("`tenant`"));
        // its next change finds no document at the unplaceable old row, and places the new one
        let d = r
            .apply(upsert(
                json!({"PK": "p1", "tenant": "beta", "status": "published"}),
                Some(json!({"PK": "p1", "status": "published"})),
            ))
            .unwrap();
        assert_eq!(
            places(&d),
            [("posts-beta".into(), "p1".into(), None, false)]
        );
    }

    #[test]
    fn a_record_that_cannot_be_placed_is_an_error_that_says_why() {
        let r = routes(TENANTS, &["PK"]);
        // the stream promised old images and this delete carries only the key
        let mut keys_only = delete_by_key("p1", "x");
        keys_only.old.as_mut().unwrap().attributes.remove("SK");
        let e = r.apply(keys_only).unwrap_err();
        assert!(e.0.contains("`status`") && e.0.contains("old image"), "{e}");
        let e = r
            .apply(upsert(json!({"PK": "p1", "status": "published"}), None))
            .unwrap_err();
        assert!(
            e.0.contains("route `published`") && e.0.contains("`tenant`"),
            "{e}"
        );
        let e = r
            .apply(upsert(
                json!({"PK": "p1", "status": "published", "tenant": "ACME"}),
                None,
            ))
            .unwrap_err();
        assert!(
            e.0.contains("`posts-ACME` is not a valid index name"),
            "{e}"
        );
        let failing = routes(
            &SINGLE_TABLE.replace("| length'", "| length | error(\"no \\(.)\")'"),
            &["PK", "SK"],
        );
        let e = failing
            .apply(upsert(json!({"PK": "POST#1", "SK": "POST#1"}), None))
            .unwrap_err();
        assert!(
            e.0.contains("route `posts`: compute.image_count") && e.0.contains("no 0"),
            "{e}"
        );
    }

    #[test]
    fn shaping_includes_renames_and_drops_nested_fields() {
        let shape = Shape {
            include: Some(vec![
                path("title").unwrap(),
                path("author.name").unwrap(),
                path("n").unwrap(),
            ]),
            rename: vec![(path("author.name").unwrap(), path("author_name").unwrap())],
            drop_nulls: true,
            ..Shape::default()
        };
        let doc = shape
            .apply(row(json!({"title": "T", "author": {"name": "Ada", "email": "a@x"}, "n": null, "secret": 1})))
            .unwrap();
        assert_eq!(
            doc,
            json!({"title": "T", "author": {}, "author_name": "Ada"})
        );
    }

    #[test]
    fn templates_render_attributes_and_escape_braces() {
        let t = Template::parse("posts-{tenant}-{{x}}").unwrap();
        assert_eq!(
            t.render(&row(json!({"tenant": 7})), "the index").unwrap(),
            "posts-7-{x}"
        );
        assert!(t.could_render("posts-acme-{x}") && !t.could_render("comments-acme"));
        assert!(Template::parse("posts-{}").is_err() && Template::parse("a}b").is_err());
    }
}
