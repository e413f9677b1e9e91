//! Go's builtin template functions.
//!
//! spire-controller-manager parses its templates without a FuncMap, so these are all a
//! ClusterSPIFFEID can call. `and` and `or` short-circuit and are evaluated by the
//! executor; the rest take evaluated arguments here. Error texts are Go's.

use std::borrow::Cow;
use std::cmp::Ordering;

use crate::fmt::{sprint, sprintf, sprintln};
use crate::value::{Ctx, Val};

/// Arity of a builtin: fixed parameters and whether more may follow (Go variadics).
pub(crate) struct Arity {
    pub fixed: usize,
    pub variadic: bool,
}

/// The builtins and their Go signatures' arity.
pub(crate) fn arity(name: &str) -> Option<Arity> {
    let (fixed, variadic) = match name {
        "and" | "or" | "index" | "slice" | "printf" | "eq" | "call" => (1, true),
        "print" | "println" | "html" | "js" | "urlquery" => (0, true),
        "not" | "len" => (1, false),
        "ne" | "lt" | "le" | "gt" | "ge" => (2, false),
        _ => return None,
    };
    Some(Arity { fixed, variadic })
}

pub(crate) fn is_builtin(name: &str) -> bool {
    arity(name).is_some()
}

/// Calls a builtin other than `and`/`or` on evaluated arguments (arity already checked).
/// `Err` is the message Go's function would return.
pub(crate) fn call<'d>(name: &str, args: Vec<Val<'d>>) -> Result<Val<'d>, String> {
    match name {
        "not" => Ok(Val::Bool(!args.first().is_some_and(Val::truth))),
        "len" => len(args.first().unwrap_or(&Val::NoValue)).map(|n| Val::Int(n as i64)),
        "index" => index(args),
        "slice" => slice(args),
        "print" => Ok(owned(sprint(&args))),
        "println" => Ok(owned(sprintln(&args))),
        "printf" => {
            let mut it = args.into_iter();
            match it.next() {
                Some(Val::Str(f)) => {
                    let rest: Vec<_> = it.collect();
                    Ok(owned(sprintf(&f, &rest)))
                }
                // The executor checks the format's type; this is unreachable in practice.
                _ => Err("format is not a string".into()),
            }
        }
        "html" => Ok(owned(html_escape(&eval_args(&args)))),
        "js" => Ok(owned(js_escape(&eval_args(&args)))),
        "urlquery" => Ok(owned(query_escape(&eval_args(&args)))),
        "eq" => eq(&args).map(Val::Bool),
        "ne" => match args.as_slice() {
            [a, b] => eq(&[a.clone(), b.clone()]).map(|t| Val::Bool(!t)),
            _ => Err("wrong number of args".into()),
        },
        "lt" | "le" | "gt" | "ge" => {
            let [a, b] = args.as_slice() else {
                return Err("wrong number of args".into());
            };
            let ord = compare(a, b)?;
            Ok(Val::Bool(match name {
                "lt" => ord == Ordering::Less,
                "le" => ord != Ordering::Greater,
                "gt" => ord == Ordering::Greater,
                _ => ord != Ordering::Less,
            }))
        }
        "call" => match args.first() {
            None | Some(Val::NoValue | Val::Nil) => Err("call of nil".into()),
            Some(v) => Err(format!("non-function of type {}", v.type_name())),
        },
        other => Err(format!("function {other:?} not defined")),
    }
}

fn owned<'d>(s: String) -> Val<'d> {
    Val::Str(Cow::Owned(s))
}

fn len(v: &Val<'_>) -> Result<usize, String> {
    match v {
        Val::Str(s) => Ok(s.len()),
        Val::List(l, _) => Ok(l.len()),
        Val::Map(m) => Ok(m.len()),
        Val::NilMap => Ok(0),
        Val::Nil | Val::NilPtr => Err("len of nil pointer".into()),
        Val::NoValue => Err("len of untyped nil".into()),
        other => Err(format!("len of type {}", other.type_name())),
    }
}

/// An integer index argument (Go's `indexArg`), checked against `cap` (inclusive when
/// slicing, exclusive when indexing).
fn index_arg(v: &Val<'_>, cap: usize, inclusive: bool) -> Result<usize, String> {
    let x: i128 = match v {
        Val::Int(i) => i128::from(*i),
        Val::Uint(u) => i128::from(*u),
        Val::NoValue | Val::Nil => return Err("cannot index slice/array with nil".into()),
        other => {
            return Err(format!(
                "cannot index slice/array with type {}",
                other.type_name()
            ));
        }
    };
    let cap = cap as i128;
    if x < 0 || x > cap || (!inclusive && x == cap) {
        return Err(format!("index out of range: {x}"));
    }
    Ok(x as usize)
}

/// Go's `index`, except that a missing map key yields `""` (see the crate docs).
fn index<'d>(args: Vec<Val<'d>>) -> Result<Val<'d>, String> {
    let mut it = args.into_iter();
    let mut item = it.next().unwrap_or(Val::NoValue);
    if matches!(item, Val::NoValue | Val::Nil) {
        return Err("index of untyped nil".into());
    }
    for idx in it {
        item = match item {
            Val::NilPtr => return Err("index of nil pointer".into()),
            Val::List(l, ctx) => {
                let i = index_arg(&idx, l.len(), false)?;
                l.get(i).map_or(Val::NoValue, |v| Val::from_json(v, ctx))
            }
            Val::Str(s) => {
                let i = index_arg(&idx, s.len(), false)?;
                Val::Uint(u64::from(s.as_bytes().get(i).copied().unwrap_or(0)))
            }
            Val::Map(_) | Val::NilMap => {
                let key = match &idx {
                    Val::Str(k) => k.clone(),
                    Val::NoValue | Val::Nil => {
                        return Err("value is nil; should be of type string".into());
                    }
                    other => {
                        return Err(format!(
                            "value has type {}; should be string",
                            other.type_name()
                        ));
                    }
                };
                let found = match &item {
                    Val::Map(m) => m.get(key.as_ref()),
                    _ => None,
                };
                match found {
                    Some(v) => Val::from_json(v, Ctx::Any),
                    // The zero value of the map's element type. JSON does not say what
                    // that is; every map spire-controller-manager's data holds is a
                    // map[string]string, whose zero value is "".
                    None => Val::Str(Cow::Borrowed("")),
                }
            }
            other => return Err(format!("can't index item of type {}", other.type_name())),
        };
    }
    Ok(item)
}

fn slice<'d>(args: Vec<Val<'d>>) -> Result<Val<'d>, String> {
    let mut it = args.into_iter();
    let item = it.next().unwrap_or(Val::NoValue);
    let idx: Vec<Val<'d>> = it.collect();
    if matches!(item, Val::NoValue | Val::Nil) {
        return Err("slice of untyped nil".into());
    }
    if idx.len() > 3 {
        return Err(format!("too many slice indexes: {}", idx.len()));
    }
    let len = match &item {
        Val::Str(s) => {
            if idx.len() == 3 {
                return Err("cannot 3-index slice a string".into());
            }
            s.len()
        }
        Val::List(l, _) => l.len(),
        other => return Err(format!("can't slice item of type {}", other.type_name())),
    };
    let mut bounds = [0, len, len];
    for (i, v) in idx.iter().enumerate() {
        bounds[i] = index_arg(v, len, true)?;
    }
    if bounds[0] > bounds[1] {
        return Err(format!(
            "invalid slice index: {} > {}",
            bounds[0], bounds[1]
        ));
    }
    if idx.len() == 3 && bounds[1] > bounds[2] {
        return Err(format!(
            "invalid slice index: {} > {}",
            bounds[1], bounds[2]
        ));
    }
    Ok(match item {
        Val::Str(Cow::Borrowed(s)) => match s.get(bounds[0]..bounds[1]) {
            Some(sub) => Val::Str(Cow::Borrowed(sub)),
            // Go slices bytes; a cut inside a character gives invalid UTF-8, which a
            // Rust string cannot hold: replacement characters stand in.
            None => {
                owned(String::from_utf8_lossy(&s.as_bytes()[bounds[0]..bounds[1]]).into_owned())
            }
        },
        Val::Str(Cow::Owned(s)) => {
            owned(String::from_utf8_lossy(&s.as_bytes()[bounds[0]..bounds[1]]).into_owned())
        }
        Val::List(l, ctx) => Val::List(&l[bounds[0]..bounds[1]], ctx),
        _ => Val::NoValue,
    })
}

/// Go's `evalArgs` for html/js/urlquery: a lone string as is, otherwise `fmt.Sprint` with
/// nil operands shown as `<no value>`.
fn eval_args(args: &[Val<'_>]) -> String {
    if let [Val::Str(s)] = args {
        return s.to_string();
    }
    let shown: Vec<Val<'_>> = args
        .iter()
        .map(|a| match a {
            Val::NoValue | Val::Nil => Val::Str(Cow::Borrowed("<no value>")),
            other => other.clone(),
        })
        .collect();
    sprint(&shown)
}

/// Go's `template.HTMLEscapeString`.
pub(crate) fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\0' => out.push('\u{FFFD}'),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Go's `template.JSEscapeString`.
pub(crate) fn js_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '<' => out.push_str("\\u003C"),
            '>' => out.push_str("\\u003E"),
            '&' => out.push_str("\\u0026"),
            '=' => out.push_str("\\u003D"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u00{:02X}", c as u32)),
            c if c.is_ascii() || !c.is_control() => out.push(c),
            c => out.push_str(&format!("\\u{:04X}", c as u32)),
        }
    }
    out
}

/// Go's `url.QueryEscape`.
pub(crate) fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Go's basic kinds for comparisons.
#[derive(PartialEq, Eq, Clone, Copy)]
enum Kind {
    Bool,
    Int,
    Uint,
    Float,
    Str,
    Nil,
    Other,
}

fn kind(v: &Val<'_>) -> Kind {
    match v {
        Val::Bool(_) => Kind::Bool,
        Val::Int(_) => Kind::Int,
        Val::Uint(_) => Kind::Uint,
        Val::Float(_) => Kind::Float,
        Val::Str(_) => Kind::Str,
        Val::NoValue | Val::Nil | Val::NilPtr | Val::NilMap => Kind::Nil,
        Val::List(..) | Val::Map(_) | Val::Struct(_) => Kind::Other,
    }
}

const BAD_COMPARISON: &str = "incompatible types for comparison";
const BAD_COMPARISON_TYPE: &str = "invalid type for comparison";

/// Go's `eq arg1 arg2...`: true if arg1 equals any of the others.
fn eq(args: &[Val<'_>]) -> Result<bool, String> {
    let Some((a, rest)) = args.split_first() else {
        return Err("missing argument for comparison".into());
    };
    if rest.is_empty() {
        return Err("missing argument for comparison".into());
    }
    let ka = kind(a);
    for b in rest {
        let kb = kind(b);
        let truth = match (a, b) {
            (Val::Int(x), Val::Uint(y)) | (Val::Uint(y), Val::Int(x)) => *x >= 0 && *x as u64 == *y,
            _ if ka == Kind::Nil || kb == Kind::Nil => ka == kb,
            _ if ka != kb => return Err(BAD_COMPARISON.into()),
            (Val::Bool(x), Val::Bool(y)) => x == y,
            (Val::Int(x), Val::Int(y)) => x == y,
            (Val::Uint(x), Val::Uint(y)) => x == y,
            (Val::Float(x), Val::Float(y)) => x == y,
            (Val::Str(x), Val::Str(y)) => x == y,
            _ => return Err(format!("non-comparable type {}", b.type_name())),
        };
        if truth {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Go's `lt` ordering: numbers and strings of the same kind (int and uint mix).
fn compare(a: &Val<'_>, b: &Val<'_>) -> Result<Ordering, String> {
    match (a, b) {
        (Val::Int(x), Val::Int(y)) => Ok(x.cmp(y)),
        (Val::Uint(x), Val::Uint(y)) => Ok(x.cmp(y)),
        (Val::Int(x), Val::Uint(y)) => Ok(i128::from(*x).cmp(&i128::from(*y))),
        (Val::Uint(x), Val::Int(y)) => Ok(i128::from(*x).cmp(&i128::from(*y))),
        (Val::Float(x), Val::Float(y)) => Ok(x.partial_cmp(y).unwrap_or(Ordering::Greater)),
        (Val::Str(x), Val::Str(y)) => Ok(x.as_bytes().cmp(y.as_bytes())),
        _ => {
            let (ka, kb) = (kind(a), kind(b));
            let basic = |k| matches!(k, Kind::Int | Kind::Uint | Kind::Float | Kind::Str);
            if !basic(ka) || !basic(kb) {
                Err(BAD_COMPARISON_TYPE.into())
            } else {
                Err(BAD_COMPARISON.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapers_like_go() {
        assert_eq!(
            html_escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&#34;x&#34;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(
            js_escape("a'b\"c<d>&=\\\n"),
            "a\\'b\\\"c\\u003Cd\\u003E\\u0026\\u003D\\\\\\u000A"
        );
        assert_eq!(query_escape("a b&c=d/é~"), "a+b%26c%3Dd%2F%C3%A9~");
    }
}
