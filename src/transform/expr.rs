//! Computed document fields: jq expressions, as `jaq` implements them, compiled once at start
//! and run per record. Pure: no I/O, no clock, no environment (ARCHITECTURE.md, "Document
//! shaping").
//!
//! jaq has no operation budget, so what could run without end or reach outside is refused at
//! compile time instead: user definitions (`def`, the only way to recurse), modules, the
//! unbounded generators (`range`, `repeat`, `recurse`, `while`, `until`, `combinations`),
//! and everything that reads the process or the world (`env`, `$ENV`, `now`, `input`, `halt`,
//! `debug`, `stderr`, local time). What remains walks the record it is given.

use std::str::FromStr;

use jaq_core::data::JustLut;
use jaq_core::load::lex::{StrPart, Tok, Token};
use jaq_core::load::{Arena, File, Lexer, Loader};
use jaq_core::{Compiler, Ctx, Vars};
use jaq_json::{Num, Rc, Val};
use serde_json::{Map, Number, Value};

type Data = JustLut<Val>;

/// A compiled expression.
pub struct Expr {
    filter: jaq_core::Filter<Data>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Expr")
    }
}

/// Why an expression does not compile: where (line and column, from 1) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

/// Names refused in expressions, and why.
const REFUSED: &[(&str, &str)] = &[
    (
        "def",
        "definitions are not allowed (they are the only way to recurse without end)",
    ),
    ("import", "modules are not allowed"),
    ("include", "modules are not allowed"),
    ("range", "unbounded generators are not allowed"),
    ("repeat", "unbounded generators are not allowed"),
    ("while", "unbounded generators are not allowed"),
    ("until", "unbounded generators are not allowed"),
    ("combinations", "unbounded generators are not allowed"),
    ("walk", "`walk` may not end when its filter grows the value"),
    (
        "fromjson",
        "parsing JSON text inside an expression has no depth limit",
    ),
    (
        "tonumber",
        "it parses its text as JSON, without a depth limit",
    ),
    (
        "toboolean",
        "it parses its text as JSON, without a depth limit",
    ),
    (
        "totype",
        "it parses its text as JSON, without a depth limit",
    ),
    ("recurse", "its updates may not end (`..` walks the record)"),
    ("stderr_empty", "expressions cannot write to the log"),
    ("debug_empty", "expressions cannot write to the log"),
    ("env", "expressions cannot read the environment"),
    ("$ENV", "expressions cannot read the environment"),
    (
        "now",
        "expressions cannot read the clock (the document must depend on the record only)",
    ),
    ("localtime", "expressions cannot read the local time zone"),
    (
        "strflocaltime",
        "expressions cannot read the local time zone",
    ),
    ("mktime", "expressions cannot read the local time zone"),
    ("input", "expressions read the record only"),
    ("inputs", "expressions read the record only"),
    ("input_filename", "expressions read the record only"),
    ("halt", "expressions cannot stop the process"),
    ("halt_error", "expressions cannot stop the process"),
    ("debug", "expressions cannot write to the log"),
    ("stderr", "expressions cannot write to the log"),
];

impl Expr {
    /// Compiles `code`; every error names its line and column in `code`.
    pub fn compile(code: &str) -> Result<Self, CompileError> {
        let at = |slice: &str, message: String| position(code, slice, message);
        let tokens = Lexer::new(code).lex().map_err(|errors| {
            let (expected, slice) = &errors[0];
            at(slice, format!("expected {}", expected.as_str()))
        })?;
        refuse(&tokens, false, &at)?;
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs());
        let arena = Arena::default();
        let modules = Loader::new(defs)
            .load(&arena, File { code, path: () })
            .map_err(|errors| {
                let (_, error) = errors.into_iter().next().expect("one error at least");
                match error {
                    jaq_core::load::Error::Lex(e) => {
                        at(e[0].1, format!("expected {}", e[0].0.as_str()))
                    }
                    jaq_core::load::Error::Parse(e) => {
                        at(e[0].1, format!("expected {}", e[0].0.as_str()))
                    }
                    jaq_core::load::Error::Io(e) => at(e[0].0, e[0].1.clone()),
                }
            })?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errors| {
                let (_, undefined) = errors.into_iter().next().expect("one error at least");
                let (slice, what) = &undefined[0];
                at(slice, format!("undefined {}: `{slice}`", what.as_str()))
            })?;
        Ok(Expr { filter })
    }

    /// Runs on `input`: its one value, `None` when it yields none (`empty`), or an error in
    /// plain words (the expression's own `error(...)`, a type error, several values).
    pub fn eval(&self, input: &Val) -> Result<Option<Value>, String> {
        // jaq panics on some data (`"x" * .n` with a huge `.n`: capacity overflow): that is
        // the record's fault, and it becomes the record's error, not the process's end.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.eval_inner(input)))
            .unwrap_or_else(|_| {
                Err("the expression failed on this record (jaq gave up: a value too large?)".into())
            })
    }

    fn eval_inner(&self, input: &Val) -> Result<Option<Value>, String> {
        let ctx = Ctx::<Data>::new(&self.filter.lut, Vars::new([]));
        let mut outputs = self.filter.id.run((ctx, input.clone()));
        let first = match outputs.next() {
            None => return Ok(None),
            Some(r) => r.map_err(exception)?,
        };
        if outputs.next().is_some() {
            return Err(
                "the expression gives more than one value (collect them with [ … ])".into(),
            );
        }
        to_json(&first).map(Some)
    }
}

fn exception(e: jaq_core::Exn<Val>) -> String {
    match e.get_err() {
        Ok(error) => error.to_string(),
        // `halt` and `label`/`break` out of place: refused or unreachable; never exit.
        Err(_) => "the expression stopped without a value".into(),
    }
}

/// Refuses the names in [`REFUSED`] wherever they are called: everywhere but after a `.`
/// (`.range`) and as a key of an object (`{now: .now}`) — a `name:` elsewhere is a slice
/// bound (`.[env:]`), a call.
fn refuse(
    tokens: &[Token<&str>],
    in_object: bool,
    at: &impl Fn(&str, String) -> CompileError,
) -> Result<(), CompileError> {
    for (i, Token(text, tok)) in tokens.iter().enumerate() {
        match tok {
            Tok::Word | Tok::Var => {
                let after_dot = i > 0 && matches!(&tokens[i - 1], Token(".", Tok::Sym));
                let is_key = in_object
                    && matches!(tokens.get(i + 1), Some(Token(":", Tok::Sym)))
                    && (i == 0 || matches!(&tokens[i - 1], Token(",", Tok::Sym)));
                if after_dot || is_key {
                    continue;
                }
                if let Some((_, why)) = REFUSED.iter().find(|(name, _)| name == text) {
                    return Err(at(text, format!("`{text}`: {why}")));
                }
            }
            Tok::Sym if *text == ".." => {
                // `.. |= f` is `walk`: it may not end when `f` grows the value
                if matches!(tokens.get(i + 1), Some(Token(t, Tok::Sym)) if ["|=", "=", "+=", "-=", "*=", "/=", "%=", "//="].contains(t))
                {
                    return Err(at(
                        text,
                        "`.. |= f` may not end when `f` grows the value".into(),
                    ));
                }
            }
            Tok::Block(inner) => refuse(inner, text.starts_with('{'), at)?,
            Tok::Str(parts) => {
                for part in parts {
                    if let StrPart::Term(Token(t, Tok::Block(inner))) = part {
                        refuse(inner, t.starts_with('{'), at)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Line and column (from 1) of `slice`, a part of `code`.
fn position(code: &str, slice: &str, message: String) -> CompileError {
    let offset = (slice.as_ptr() as usize)
        .checked_sub(code.as_ptr() as usize)
        .filter(|o| *o <= code.len())
        .unwrap_or(0);
    let before = &code[..code.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    CompileError {
        line,
        column,
        message,
    }
}

/// A row → a jq object, without building a `Value` first.
pub fn object_to_val(row: &Map<String, Value>) -> Val {
    Val::obj(
        row.iter()
            .map(|(k, v)| (Val::from(k.clone()), to_val(v)))
            .collect(),
    )
}

/// A document value → jq. Numbers keep their decimal text (`Num::Dec`) unless they are integers.
pub fn to_val(value: &Value) -> Val {
    match value {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(*b),
        Value::Number(n) => {
            let text = n.as_str();
            Val::Num(
                Num::from_str_radix(text, 10).unwrap_or_else(|| Num::Dec(Rc::new(text.to_owned()))),
            )
        }
        Value::String(s) => Val::from(s.clone()),
        Value::Array(a) => a.iter().map(to_val).collect(),
        Value::Object(o) => Val::obj(
            o.iter()
                .map(|(k, v)| (Val::from(k.clone()), to_val(v)))
                .collect(),
        ),
    }
}

/// jq → a document value. Decimals pass through with their digits; NaN and infinities have no
/// JSON form and are an error.
pub fn to_json(val: &Val) -> Result<Value, String> {
    Ok(match val {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(*b),
        Val::Num(n) => Value::Number(number(n)?),
        Val::TStr(b) | Val::BStr(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        Val::Arr(a) => Value::Array(a.iter().map(to_json).collect::<Result<_, _>>()?),
        Val::Obj(o) => {
            let mut out = Map::with_capacity(o.len());
            for (k, v) in o.iter() {
                let key = match k {
                    Val::TStr(b) | Val::BStr(b) => String::from_utf8_lossy(b).into_owned(),
                    other => return Err(format!("an object key must be a string, got {other}")),
                };
                out.insert(key, to_json(v)?);
            }
            Value::Object(out)
        }
    })
}

fn number(n: &Num) -> Result<Number, String> {
    let text = match n {
        Num::Int(i) => return Ok(Number::from(*i as i64)),
        Num::BigInt(b) => b.to_string(),
        Num::Dec(d) => d.to_string(),
        Num::Float(f) if f.is_finite() => {
            if f.fract() == 0.0 && f.abs() < 1e15 {
                return Ok(Number::from(*f as i64));
            }
            return Number::from_f64(*f).ok_or_else(|| format!("{f} is not a JSON number"));
        }
        Num::Float(f) => return Err(format!("the number {f} has no JSON form")),
    };
    Number::from_str(&text).map_err(|_| format!("`{text}` is not a JSON number"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(code: &str, input: Value) -> Result<Option<Value>, String> {
        Expr::compile(code).unwrap().eval(&to_val(&input))
    }

    #[test]
    fn the_blog_post_fields_are_two_short_expressions() {
        let post = json!({"title": "Hi", "blocks": [
            {"type": "paragraph", "text": "One."}, {"type": "image", "src": "a.png", "width": 640},
            {"type": "paragraph", "text": "Two."}, {"type": "image", "src": "b.png"}]});
        let text = r#"[.blocks[]? | select(.type == "paragraph") | .text] | join("\n")"#;
        let images = r#"[.blocks[]? | select(.type == "image")] | length"#;
        assert_eq!(run(text, post.clone()).unwrap(), Some(json!("One.\nTwo.")));
        assert_eq!(run(images, post).unwrap(), Some(json!(2)));
        // a post without blocks: the `?` makes it empty, not an error
        assert_eq!(run(images, json!({"title": "x"})).unwrap(), Some(json!(0)));
    }

    #[test]
    fn numbers_pass_through_digit_for_digit() {
        let big = Number::from_str("12345678901234567890123.000000000000001").unwrap();
        let int = Number::from_str("123456789012345678901234567890").unwrap();
        let out = run(
            "[.a, .b, .c]",
            json!({"a": big.clone(), "b": int.clone(), "c": 7}),
        )
        .unwrap();
        assert_eq!(out, Some(json!([big, int, 7])));
        assert_eq!(run(".a + 1", json!({"a": 41})).unwrap(), Some(json!(42)));
        assert_eq!(run(".a / 4", json!({"a": 2})).unwrap(), Some(json!(0.5)));
        assert!(run("1 / 0", json!({}))
            .unwrap_err()
            .contains("no JSON form"));
    }

    #[test]
    fn failures_are_errors_in_words_never_a_panic() {
        let e = run(r#".n // error("n is required")"#, json!({})).unwrap_err();
        assert!(e.contains("n is required"), "{e}");
        let e = run(".title + 1", json!({"title": "x"})).unwrap_err();
        assert!(e.contains("cannot"), "{e}");
        assert!(run(".tags[]", json!({"tags": [1, 2]}))
            .unwrap_err()
            .contains("more than one value"));
        assert_eq!(run("empty", json!({})).unwrap(), None);
    }

    #[test]
    fn compile_errors_name_the_line_and_column() {
        let e = Expr::compile(".a |\n  map(.b").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        let e = Expr::compile(".a | frobnicate").unwrap_err();
        assert_eq!((e.line, e.column), (1, 6), "{e}");
        assert!(e.message.contains("frobnicate"), "{e}");
    }

    #[test]
    fn what_could_run_without_end_or_reach_outside_is_refused() {
        for (code, column) in [
            ("def f: f; f", 1),
            ("[range(1e18)] | length", 2),
            ("[.a | recurse(.b)]", 7),
            ("last(repeat(1))", 6),
            ("env.HOME", 1),
            ("$ENV.HOME", 1),
            ("now", 1),
            (".x | halt", 6),
            ("\"\\(input)\"", 4),
            ("\"\" | .[env:]", 8),
            ("\"\" | .[now:]", 8),
            ("{a: env}", 5),
            ("walk(if type == \"string\" then [.] else . end)", 1),
            (".. |= [.]", 1),
            (".payload | fromjson", 12),
        ] {
            let e = Expr::compile(code).unwrap_err();
            assert_eq!((e.line, e.column), (1, column), "{code}: {e}");
        }
        // the same names as fields and keys are fine, and `..` walks the record
        assert!(Expr::compile("{range: .range, now: .now} | [..] | length").is_ok());
        assert!(Expr::compile("[.. | numbers] | length").is_ok());
        assert!(Expr::compile("[.. != 1] | length").is_ok());
        for code in [
            "recurse |= [.]",
            "[recurse(.a)]",
            ".price | tonumber",
            "\"[[[\" | fromjson",
        ] {
            assert!(Expr::compile(code).is_err(), "{code}");
        }
        assert!(Expr::compile("[limit(2; .tags[])]").is_ok());
    }

    #[test]
    fn a_value_too_large_for_jaq_fails_the_record_not_the_process() {
        let e = run(r#""x" * .n"#, json!({"n": 1e300})).unwrap_err();
        assert!(!e.is_empty());
    }

    #[test]
    fn an_expression_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>(_: &T) {}
        shared(&Expr::compile(".a").unwrap());
    }
}
