//! UpdateItem's `UpdateExpression`: `SET` (with `+`, `-`, `if_not_exists`, `list_append`) and
//! `REMOVE` on top-level attributes. Anything else is refused by name.

use serde_json::{Map, Value};

use crate::AwsError;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Name(String),
    Placeholder(String),
    Symbol(char),
}

fn tokens(text: &str) -> Result<Vec<Token>, AwsError> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let word = |i: &mut usize| {
        let start = *i;
        while *i < chars.len() && (chars[*i].is_ascii_alphanumeric() || chars[*i] == '_') {
            *i += 1;
        }
        chars[start..*i].iter().collect::<String>()
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '=' | '+' | '-' | ',' | '(' | ')' => {
                out.push(Token::Symbol(c));
                i += 1;
            }
            '#' | ':' => {
                i += 1;
                let w = word(&mut i);
                if w.is_empty() {
                    return Err(syntax(text, &format!("`{c}` without a name")));
                }
                out.push(if c == '#' {
                    Token::Name(w)
                } else {
                    Token::Placeholder(w)
                });
            }
            c if c.is_ascii_alphabetic() || c == '_' => out.push(Token::Word(word(&mut i))),
            '.' | '[' => {
                return Err(AwsError::validation(format!(
                    "the source fake updates top-level attributes only: `{text}`"
                )))
            }
            other => return Err(syntax(text, &format!("unexpected `{other}`"))),
        }
    }
    Ok(out)
}

fn syntax(text: &str, why: &str) -> AwsError {
    AwsError::validation(format!(
        "Invalid UpdateExpression: {why}; expression: {text}"
    ))
}

struct Parser<'a> {
    tokens: Vec<Token>,
    at: usize,
    text: &'a str,
    names: Option<&'a Map<String, Value>>,
    values: Option<&'a Map<String, Value>>,
}

enum Operand {
    Path(String),
    Value(Value),
    IfNotExists(String, Box<Operand>),
    ListAppend(Box<Operand>, Box<Operand>),
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn expect(&mut self, symbol: char) -> Result<(), AwsError> {
        match self.next() {
            Some(Token::Symbol(c)) if c == symbol => Ok(()),
            _ => Err(syntax(self.text, &format!("`{symbol}` expected"))),
        }
    }

    fn path(&mut self) -> Result<String, AwsError> {
        match self.next() {
            Some(Token::Word(w)) => Ok(w),
            Some(Token::Name(n)) => self
                .names
                .and_then(|m| m.get(&format!("#{n}")))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| {
                    AwsError::validation(format!(
                        "An expression attribute name used in the document path is not defined; attribute name: #{n}"
                    ))
                }),
            _ => Err(syntax(self.text, "an attribute name expected")),
        }
    }

    fn operand(&mut self) -> Result<Operand, AwsError> {
        match self.peek().cloned() {
            Some(Token::Placeholder(p)) => {
                self.at += 1;
                self.values
                    .and_then(|m| m.get(&format!(":{p}")))
                    .cloned()
                    .map(Operand::Value)
                    .ok_or_else(|| {
                        AwsError::validation(format!(
                            "An expression attribute value used in expression is not defined; attribute value: :{p}"
                        ))
                    })
            }
            Some(Token::Word(w))
                if matches!(self.tokens.get(self.at + 1), Some(Token::Symbol('('))) =>
            {
                self.at += 2;
                let op = match w.as_str() {
                    "if_not_exists" => {
                        let path = self.path()?;
                        self.expect(',')?;
                        Operand::IfNotExists(path, Box::new(self.operand()?))
                    }
                    "list_append" => {
                        let a = self.operand()?;
                        self.expect(',')?;
                        Operand::ListAppend(Box::new(a), Box::new(self.operand()?))
                    }
                    other => {
                        return Err(AwsError::validation(format!(
                            "the source fake does not know the function `{other}`"
                        )))
                    }
                };
                self.expect(')')?;
                Ok(op)
            }
            _ => Ok(Operand::Path(self.path()?)),
        }
    }
}

enum Action {
    Set(String, Operand, Option<(char, Operand)>),
    Remove(String),
}

fn parse(
    text: &str,
    names: Option<&Map<String, Value>>,
    values: Option<&Map<String, Value>>,
) -> Result<Vec<Action>, AwsError> {
    let mut p = Parser {
        tokens: tokens(text)?,
        at: 0,
        text,
        names,
        values,
    };
    let mut actions = Vec::new();
    while let Some(token) = p.next() {
        let Token::Word(clause) = token else {
            return Err(syntax(text, "SET or REMOVE expected"));
        };
        let clause = clause.to_ascii_uppercase();
        loop {
            match clause.as_str() {
                "SET" => {
                    let path = p.path()?;
                    p.expect('=')?;
                    let left = p.operand()?;
                    let right = match p.peek() {
                        Some(Token::Symbol(c @ ('+' | '-'))) => {
                            let c = *c;
                            p.at += 1;
                            Some((c, p.operand()?))
                        }
                        _ => None,
                    };
                    actions.push(Action::Set(path, left, right));
                }
                "REMOVE" => actions.push(Action::Remove(p.path()?)),
                other => {
                    return Err(AwsError::validation(format!(
                        "the source fake supports SET and REMOVE, not {other}"
                    )))
                }
            }
            if p.peek() == Some(&Token::Symbol(',')) {
                p.at += 1;
            } else {
                break;
            }
        }
    }
    if actions.is_empty() {
        return Err(syntax(text, "no action"));
    }
    Ok(actions)
}

fn eval(item: &Map<String, Value>, op: &Operand) -> Result<Value, AwsError> {
    match op {
        Operand::Value(v) => Ok(v.clone()),
        Operand::Path(p) => item.get(p).cloned().ok_or_else(|| {
            AwsError::validation(
                "The provided expression refers to an attribute that does not exist in the item",
            )
        }),
        Operand::IfNotExists(p, default) => match item.get(p) {
            Some(v) => Ok(v.clone()),
            None => eval(item, default),
        },
        Operand::ListAppend(a, b) => match (eval(item, a)?, eval(item, b)?) {
            (Value::Object(a), Value::Object(b)) => match (a.get("L"), b.get("L")) {
                (Some(Value::Array(x)), Some(Value::Array(y))) => {
                    let mut l = x.clone();
                    l.extend(y.iter().cloned());
                    Ok(serde_json::json!({ "L": l }))
                }
                _ => Err(wrong_type()),
            },
            _ => Err(wrong_type()),
        },
    }
}

fn wrong_type() -> AwsError {
    AwsError::validation("An operand in the update expression has an incorrect data type")
}

fn number(v: &Value) -> Result<&str, AwsError> {
    v.get("N").and_then(Value::as_str).ok_or_else(wrong_type)
}

fn arithmetic(a: &Value, op: char, b: &Value) -> Result<Value, AwsError> {
    let (x, y) = (number(a)?, number(b)?);
    let text = match (x.parse::<i128>(), y.parse::<i128>()) {
        (Ok(x), Ok(y)) => match if op == '+' {
            x.checked_add(y)
        } else {
            x.checked_sub(y)
        } {
            Some(n) => n.to_string(),
            None => {
                return Err(AwsError::validation(
                    "Number overflow. Attempting to store a number with magnitude larger than supported range",
                ))
            }
        },
        _ => {
            let (x, y): (f64, f64) = (
                x.parse().map_err(|_| wrong_type())?,
                y.parse().map_err(|_| wrong_type())?,
            );
            if op == '+' { x + y } else { x - y }.to_string()
        }
    };
    Ok(serde_json::json!({ "N": text }))
}

/// Applies the expression to `item` (which already holds the key), refusing changes to the key.
pub(crate) fn apply(
    item: &mut Map<String, Value>,
    key_attributes: &[String],
    text: &str,
    names: Option<&Map<String, Value>>,
    values: Option<&Map<String, Value>>,
) -> Result<(), AwsError> {
    let actions = parse(text, names, values)?;
    let before = item.clone();
    for action in actions {
        let path = match &action {
            Action::Set(p, ..) | Action::Remove(p) => p.clone(),
        };
        if key_attributes.contains(&path) {
            return Err(AwsError::validation(format!(
                "One or more parameter values were invalid: Cannot update attribute {path}. This attribute is part of the key"
            )));
        }
        match action {
            Action::Set(path, left, right) => {
                let l = eval(&before, &left)?;
                let value = match right {
                    None => l,
                    Some((op, r)) => arithmetic(&l, op, &eval(&before, &r)?)?,
                };
                item.insert(path, value);
            }
            Action::Remove(path) => {
                item.remove(&path);
            }
        }
    }
    Ok(())
}
