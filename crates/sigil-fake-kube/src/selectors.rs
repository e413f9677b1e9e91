//! Label and field selectors, parsed from the `labelSelector` / `fieldSelector` query
//! parameters with the API server's grammar, so a client that builds a wrong selector gets the
//! 400 it would get from a real cluster instead of a silently empty list.

use crate::ApiError;
use serde_json::Value;
use std::collections::BTreeSet;

/// A parsed `labelSelector`: requirements joined by commas, all of which must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    reqs: Vec<LabelReq>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelReq {
    /// `k=v`, `k==v`
    Eq(String, String),
    /// `k!=v`: also holds when the label is absent.
    NotEq(String, String),
    /// `k`
    Exists(String),
    /// `!k`
    NotExists(String),
    /// `k in (a,b)`
    In(String, BTreeSet<String>),
    /// `k notin (a,b)`: also holds when the label is absent.
    NotIn(String, BTreeSet<String>),
    /// `k>n`, `k<n`: the label must be an integer.
    Gt(String, i64),
    Lt(String, i64),
}

/// A parsed `fieldSelector`: `field=value`, `field==value`, `field!=value`, joined by commas.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    reqs: Vec<(String, bool, String)>,
}

// === impl LabelSelector ===

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut p = Lexer {
            s: s.as_bytes(),
            i: 0,
        };
        let mut reqs = Vec::new();
        p.skip_ws();
        if p.at_end() {
            return Ok(Self { reqs });
        }
        loop {
            reqs.push(
                p.requirement().map_err(|e| {
                    ApiError::bad_request(format!("unable to parse requirement: {e}"))
                })?,
            );
            p.skip_ws();
            if p.at_end() {
                break;
            }
            if !p.eat(b',') {
                return Err(ApiError::bad_request(format!(
                    "unable to parse requirement: found '{}', expected: ','",
                    p.rest()
                )));
            }
        }
        Ok(Self { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Whether an object (its `metadata.labels`) satisfies every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.reqs.iter().all(|r| match r {
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
            LabelReq::In(k, vs) => get(k).is_some_and(|v| vs.contains(v)),
            LabelReq::NotIn(k, vs) => get(k).is_none_or(|v| !vs.contains(v)),
            LabelReq::Gt(k, n) => get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            LabelReq::Lt(k, n) => get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
        })
    }
}

/// A hand-written scanner for the label selector grammar: keys and values are runs of
/// `[A-Za-z0-9._/-]`, separated by operators and optional whitespace.
struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl Lexer<'_> {
    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }

    fn rest(&self) -> String {
        String::from_utf8_lossy(&self.s[self.i..]).into_owned()
    }

    fn skip_ws(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn eat_str(&mut self, t: &str) -> bool {
        if self.s[self.i..].starts_with(t.as_bytes()) {
            self.i += t.len();
            true
        } else {
            false
        }
    }

    fn word(&mut self) -> String {
        let start = self.i;
        while self
            .s
            .get(self.i)
            .is_some_and(|c| c.is_ascii_alphanumeric() || b"._/-".contains(c))
        {
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    fn key(&mut self) -> Result<String, String> {
        self.skip_ws();
        let k = self.word();
        if k.is_empty() {
            return Err(format!("found '{}', expected: identifier", self.rest()));
        }
        Ok(k)
    }

    fn value(&mut self) -> String {
        self.skip_ws();
        self.word()
    }

    fn requirement(&mut self) -> Result<LabelReq, String> {
        self.skip_ws();
        if self.eat(b'!') {
            return Ok(LabelReq::NotExists(self.key()?));
        }
        let k = self.key()?;
        self.skip_ws();
        if self.at_end() || self.s[self.i] == b',' {
            return Ok(LabelReq::Exists(k));
        }
        if self.eat_str("==") || self.eat(b'=') {
            return Ok(LabelReq::Eq(k, self.value()));
        }
        if self.eat_str("!=") {
            return Ok(LabelReq::NotEq(k, self.value()));
        }
        if self.eat(b'>') || self.eat(b'<') {
            let gt = self.s[self.i - 1] == b'>';
            let v = self.value();
            let n = v.parse::<i64>().map_err(|_| {
                format!("for 'gt', 'lt' operators, the value must be an integer: {v}")
            })?;
            return Ok(if gt {
                LabelReq::Gt(k, n)
            } else {
                LabelReq::Lt(k, n)
            });
        }
        let op = self.word();
        let set = match op.as_str() {
            "in" | "notin" => self.set()?,
            _ => {
                return Err(format!(
                    "found '{op}', expected: in, notin, =, ==, !=, gt, lt"
                ));
            }
        };
        Ok(if op == "in" {
            LabelReq::In(k, set)
        } else {
            LabelReq::NotIn(k, set)
        })
    }

    fn set(&mut self) -> Result<BTreeSet<String>, String> {
        self.skip_ws();
        if !self.eat(b'(') {
            return Err(format!("found '{}', expected: '('", self.rest()));
        }
        let mut set = BTreeSet::new();
        loop {
            set.insert(self.value());
            self.skip_ws();
            if self.eat(b')') {
                return Ok(set);
            }
            if !self.eat(b',') {
                return Err(format!("found '{}', expected: ',' or ')'", self.rest()));
            }
        }
    }
}

// === impl FieldSelector ===

impl FieldSelector {
    /// Parses `s`; every field must be one `supported` lists (the resource's field labels),
    /// else the real server's 400 `field label not supported: x`.
    pub fn parse(s: &str, supported: &[&str]) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for term in split_unescaped(s, ',') {
            if term.trim().is_empty() {
                continue;
            }
            let (field, eq, value) = if let Some((f, v)) = find_op(&term, "!=") {
                (f, false, v)
            } else if let Some((f, v)) = find_op(&term, "==") {
                (f, true, v)
            } else if let Some((f, v)) = find_op(&term, "=") {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{term}'"
                )));
            };
            let field = field.trim().to_string();
            if !supported.contains(&field.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            reqs.push((field, eq, unescape(&value)));
        }
        Ok(Self { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Whether `obj` satisfies every requirement; a field the object lacks reads as "".
    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|(field, eq, want)| {
            let pointer = format!("/{}", field.replace('.', "/"));
            let have = match obj.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            (have == *want) == *eq
        })
    }
}

/// Splits on `sep` not preceded by a backslash (values may escape `\,` `\=` `\\`).
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let last = out.last_mut().expect("out starts non-empty and only grows");
            last.push(c);
            if let Some(n) = chars.next() {
                last.push(n);
            }
        } else if c == sep {
            out.push(String::new());
        } else {
            out.last_mut()
                .expect("out starts non-empty and only grows")
                .push(c);
        }
    }
    out
}

/// The first unescaped `op` in `term`, splitting it into field and value.
fn find_op(term: &str, op: &str) -> Option<(String, String)> {
    let b = term.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            i += 2;
            continue;
        }
        if term[i..].starts_with(op) {
            return Some((term[..i].to_string(), term[i + op.len()..].to_string()));
        }
        i += 1;
    }
    None
}

fn unescape(v: &str) -> String {
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "labels": labels}, "spec": {"nodeName": "n1"}})
    }

    fn lmatch(sel: &str, labels: Value) -> bool {
        LabelSelector::parse(sel).unwrap().matches(&pod(labels))
    }

    #[test]
    fn label_operators() {
        let l = json!({"app": "x", "tier": "web", "n": "5"});
        assert!(lmatch("", l.clone()));
        assert!(lmatch("app=x", l.clone()));
        assert!(lmatch("app==x", l.clone()));
        assert!(!lmatch("app=y", l.clone()));
        assert!(lmatch("app!=y", l.clone()));
        assert!(
            lmatch("missing!=y", l.clone()),
            "!= holds when the label is absent"
        );
        assert!(lmatch("app", l.clone()));
        assert!(!lmatch("!app", l.clone()));
        assert!(lmatch("!missing", l.clone()));
        assert!(lmatch("app in (x, y)", l.clone()));
        assert!(!lmatch("app in (y,z)", l.clone()));
        assert!(lmatch("app notin (y,z)", l.clone()));
        assert!(lmatch("missing notin (y)", l.clone()));
        assert!(lmatch("app=x,tier=web", l.clone()));
        assert!(!lmatch("app=x,tier=db", l.clone()), "comma is AND");
        assert!(lmatch(" app = x , tier in (web) ", l.clone()));
        assert!(lmatch("n>4,n<6", l.clone()));
        assert!(!lmatch("n>5", l.clone()));
        assert!(lmatch("app=x,!missing,tier", l.clone()));
        assert!(lmatch("k8s.io/name=", json!({"k8s.io/name": ""})));
    }

    #[test]
    fn label_parse_errors() {
        for bad in ["app=x,", "=x", "app in x", "app in (x", "app ~ x", "n>x"] {
            let err = LabelSelector::parse(bad).unwrap_err();
            assert_eq!(err.code, 400, "{bad}");
            assert!(
                err.message.starts_with("unable to parse requirement"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn field_selectors() {
        let supported = ["metadata.name", "metadata.namespace", "spec.nodeName"];
        let f = |s: &str| FieldSelector::parse(s, &supported).unwrap();
        let p = pod(json!({}));
        assert!(f("spec.nodeName=n1").matches(&p));
        assert!(f("spec.nodeName==n1").matches(&p));
        assert!(!f("spec.nodeName!=n1").matches(&p));
        assert!(f("spec.nodeName=n1,metadata.namespace=ns").matches(&p));
        assert!(!f("spec.nodeName=n1,metadata.name=q").matches(&p));
        assert!(f("metadata.name!=q").matches(&p));
        let unscheduled = json!({"metadata": {"name": "p"}, "spec": {}});
        assert!(
            f("spec.nodeName=").matches(&unscheduled),
            "absent reads as empty"
        );
        assert!(f("metadata.name=a\\,b").matches(&json!({"metadata": {"name": "a,b"}})));
        let err = FieldSelector::parse("spec.foo=x", &supported).unwrap_err();
        assert_eq!(
            (err.code, err.message.as_str()),
            (400, "field label not supported: spec.foo")
        );
        assert_eq!(
            FieldSelector::parse("nonsense", &supported)
                .unwrap_err()
                .code,
            400
        );
    }
}
