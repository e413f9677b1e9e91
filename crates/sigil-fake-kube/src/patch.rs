//! PATCH bodies: JSON merge patch (RFC 7386, also standing in for strategic merge patch),
//! JSON patch (RFC 6902) and server-side apply.
//!
//! Server-side apply is modelled as a deep merge in which the applied object's fields win:
//! maps merge key by key, everything else (lists included) is replaced. Field ownership
//! (`managedFields`), conflicts between managers and the removal of fields a manager stopped
//! applying are not modelled, so `force` changes nothing: every apply succeeds as a forced
//! one would.

use crate::ApiError;
use serde_json::{Value, json};

/// The patch types, by `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `application/merge-patch+json` or `application/strategic-merge-patch+json`.
    Merge,
    /// `application/json-patch+json`.
    Json,
    /// `application/apply-patch+yaml` (YAML or JSON).
    Apply,
}

// === impl Kind ===

impl Kind {
    pub fn of(content_type: &str) -> Result<Kind, ApiError> {
        let media = content_type.split(';').next().unwrap_or_default().trim();
        match media {
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                Ok(Kind::Merge)
            }
            "application/json-patch+json" => Ok(Kind::Json),
            "application/apply-patch+yaml" => Ok(Kind::Apply),
            _ => Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (not {media})"
                ),
            )),
        }
    }
}

/// The parsed body: an object for merge patch and apply, an array of operations for JSON
/// patch.
pub fn body(kind: Kind, raw: &[u8]) -> Result<Value, ApiError> {
    let parsed = match kind {
        Kind::Merge | Kind::Json => serde_json::from_slice::<Value>(raw).ok(),
        // YAML is a superset of JSON, but JSON parses faster and exactly (kube-rs and
        // kubectl send JSON).
        Kind::Apply => serde_json::from_slice::<Value>(raw)
            .ok()
            .or_else(|| serde_norway::from_slice::<Value>(raw).ok()),
    };
    let want_array = kind == Kind::Json;
    parsed
        .filter(|v| {
            if want_array {
                v.is_array()
            } else {
                v.is_object()
            }
        })
        .ok_or_else(|| {
            ApiError::bad_request(if want_array {
                "the body of the request is not a JSON patch (an array of operations)"
            } else {
                "the body of the request is not an object (JSON or YAML)"
            })
        })
}

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Some(t) = target.as_object_mut() else {
        return;
    }; // made an object above
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Server-side apply as a deep merge: the applied fields win, maps merge, the rest is
/// replaced. Unlike a merge patch, a null is a value, not a removal.
pub fn apply(target: &mut Value, applied: &Value) {
    match (target.as_object_mut(), applied.as_object()) {
        (Some(t), Some(a)) => {
            for (k, v) in a {
                apply(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        _ => *target = applied.clone(),
    }
}

/// RFC 6902 JSON patch: `add`, `remove`, `replace`, `move`, `copy`, `test`. All or nothing:
/// `target` is changed only if every operation succeeds.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), ApiError> {
    let mut doc = target.clone();
    for op in ops.as_array().map(Vec::as_slice).unwrap_or_default() {
        let path = op["path"].as_str().ok_or_else(|| invalid(op, "no path"))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| invalid(op, "no value"))
        };
        let from = || op["from"].as_str().ok_or_else(|| invalid(op, "no from"));
        match op["op"].as_str().unwrap_or_default() {
            "add" => add(&mut doc, path, value()?).map_err(|e| invalid(op, e))?,
            "remove" => {
                remove(&mut doc, path).map_err(|e| invalid(op, e))?;
            }
            "replace" => {
                remove(&mut doc, path).map_err(|e| invalid(op, e))?;
                add(&mut doc, path, value()?).map_err(|e| invalid(op, e))?;
            }
            "move" => {
                let v = remove(&mut doc, from()?).map_err(|e| invalid(op, e))?;
                add(&mut doc, path, v).map_err(|e| invalid(op, e))?;
            }
            "copy" => {
                let v = doc
                    .pointer(from()?)
                    .cloned()
                    .ok_or_else(|| invalid(op, "missing from"))?;
                add(&mut doc, path, v).map_err(|e| invalid(op, e))?;
            }
            "test" => {
                if doc.pointer(path) != Some(&value()?) {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        format!("the test operation failed: {op}"),
                    ));
                }
            }
            other => return Err(invalid(op, &format!("unknown op {other:?}"))),
        }
    }
    *target = doc;
    Ok(())
}

fn invalid(op: &Value, why: &str) -> ApiError {
    ApiError::new(
        422,
        "Invalid",
        format!("cannot apply the JSON patch operation {op}: {why}"),
    )
}

/// The parent of the JSON pointer `path` and its last token (unescaped).
fn split(path: &str) -> Result<(&str, String), &'static str> {
    let i = path.rfind('/').ok_or("not a JSON pointer")?;
    let token = path[i + 1..].replace("~1", "/").replace("~0", "~");
    Ok((&path[..i], token))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), &'static str> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, token) = split(path)?;
    match doc.pointer_mut(parent).ok_or("missing parent")? {
        Value::Object(m) => {
            m.insert(token, value);
        }
        Value::Array(a) => {
            let i = if token == "-" {
                a.len()
            } else {
                token.parse().map_err(|_| "bad index")?
            };
            if i > a.len() {
                return Err("index out of range");
            }
            a.insert(i, value);
        }
        _ => return Err("parent is not a container"),
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, &'static str> {
    let (parent, token) = split(path)?;
    match doc.pointer_mut(parent).ok_or("missing parent")? {
        Value::Object(m) => m.remove(&token).ok_or("missing path"),
        Value::Array(a) => {
            let i: usize = token.parse().map_err(|_| "bad index")?;
            (i < a.len())
                .then(|| a.remove(i))
                .ok_or("index out of range")
        }
        _ => Err("parent is not a container"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge(&mut t, &json!({"a": {"b": null, "d": 3}, "l": [3]}));
        assert_eq!(t, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
    }

    #[test]
    fn apply_is_a_deep_merge_where_applied_fields_win() {
        let mut t = json!({"spec": {"a": 1, "b": {"c": 2}, "l": [1, 2]}, "status": {"x": 1}});
        apply(&mut t, &json!({"spec": {"b": {"d": 3}, "l": [3]}}));
        assert_eq!(
            t,
            json!({"spec": {"a": 1, "b": {"c": 2, "d": 3}, "l": [3]}, "status": {"x": 1}})
        );
    }

    #[test]
    fn json_patch_rfc6902() {
        let mut t = json!({"metadata": {"labels": {"a/b": "1"}}, "l": [1, 2]});
        let ops = json!([
            {"op": "test", "path": "/metadata/labels/a~1b", "value": "1"},
            {"op": "add", "path": "/metadata/labels/c", "value": "2"},
            {"op": "remove", "path": "/metadata/labels/a~1b"},
            {"op": "replace", "path": "/l/0", "value": 9},
            {"op": "add", "path": "/l/-", "value": 3},
            {"op": "copy", "from": "/l/0", "path": "/first"},
            {"op": "move", "from": "/first", "path": "/moved"},
        ]);
        json_patch(&mut t, &ops).unwrap();
        assert_eq!(
            t,
            json!({"metadata": {"labels": {"c": "2"}}, "l": [9, 2, 3], "moved": 9})
        );
        // A failed test changes nothing.
        let before = t.clone();
        let failing = json!([
            {"op": "add", "path": "/x", "value": 1},
            {"op": "test", "path": "/moved", "value": 8},
        ]);
        assert_eq!(json_patch(&mut t, &failing).unwrap_err().code, 422);
        assert_eq!(t, before);
        assert!(json_patch(&mut t, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    }

    #[test]
    fn bodies() {
        assert_eq!(
            Kind::of("application/apply-patch+yaml").unwrap(),
            Kind::Apply
        );
        assert_eq!(Kind::of("application/json").unwrap_err().code, 415);
        let yaml = b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n";
        assert_eq!(body(Kind::Apply, yaml).unwrap()["metadata"]["name"], "p");
        assert!(body(Kind::Json, b"{}").is_err());
        assert!(body(Kind::Merge, b"[]").is_err());
    }
}
