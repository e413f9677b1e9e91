//! The one protobuf body this server reads: kubectl's typed clients send TokenRequest as
//! `application/vnd.kubernetes.protobuf` (`kubectl create token`), and a real server accepts
//! it. The envelope is the API machinery's: the magic `k8s\0`, then a `runtime.Unknown`
//! message whose `raw` field holds the object. Answers stay JSON (clients accept both).

use serde_json::{Value, json};

/// The protobuf content type of Kubernetes objects.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";

/// One field of a message: (number, value), where a length-delimited value is its bytes and
/// a varint its number.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The fields of a message, or `None` if it is not well-formed protobuf.
fn fields(b: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let tag = varint(b, &mut i)?;
        let field = match tag & 7 {
            0 => Field::Varint(varint(b, &mut i)?),
            2 => {
                let len = usize::try_from(varint(b, &mut i)?).ok()?;
                let v = b.get(i..i.checked_add(len)?)?;
                i += len;
                Field::Bytes(v)
            }
            1 => {
                i += 8;
                continue;
            }
            5 => {
                i += 4;
                continue;
            }
            _ => return None,
        };
        out.push((tag >> 3, field));
    }
    (i == b.len()).then_some(out)
}

fn string(f: &Field<'_>) -> Option<String> {
    match f {
        Field::Bytes(b) => std::str::from_utf8(b).ok().map(str::to_string),
        Field::Varint(_) => None,
    }
}

/// A TokenRequest in the protobuf envelope, as the JSON object its spec would be sent as.
pub fn token_request(body: &[u8]) -> Option<Value> {
    let envelope = fields(body.strip_prefix(MAGIC)?)?;
    let raw = envelope.iter().find_map(|(n, f)| match (n, f) {
        (2, Field::Bytes(b)) => Some(*b),
        _ => None,
    })?;
    let mut spec = json!({});
    for (n, f) in fields(raw)? {
        // TokenRequest: metadata = 1, spec = 2, status = 3.
        let (2, Field::Bytes(s)) = (n, &f) else {
            continue;
        };
        let mut audiences = Vec::new();
        for (n, f) in fields(s)? {
            // TokenRequestSpec: audiences = 1, boundObjectRef = 3, expirationSeconds = 4.
            match (n, &f) {
                (1, _) => audiences.push(string(&f)?),
                (3, Field::Bytes(r)) => {
                    let mut bound = json!({});
                    for (n, f) in fields(r)? {
                        // BoundObjectReference: kind, apiVersion, name, uid.
                        let key = match n {
                            1 => "kind",
                            2 => "apiVersion",
                            3 => "name",
                            4 => "uid",
                            _ => continue,
                        };
                        bound[key] = json!(string(&f)?);
                    }
                    spec["boundObjectRef"] = bound;
                }
                (4, Field::Varint(v)) => spec["expirationSeconds"] = json!(v),
                _ => {}
            }
        }
        spec["audiences"] = json!(audiences);
    }
    Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_create_token_body() {
        // What `kubectl create token default --audience a` (1.37) sends.
        let body: &[u8] = b"k8s\x00\x0a\x28\x0a\x18authentication.k8s.io/v1\x12\x0cTokenRequest\x12\x1d\x0a\x10\x0a\x00\x12\x00\x1a\x00\x22\x00\x2a\x00\x32\x00\x38\x00\x42\x00\x12\x03\x0a\x01a\x1a\x04\x0a\x00\x12\x00\x1a\x00\x22\x00";
        let tr = token_request(body).unwrap();
        assert_eq!(tr["spec"], json!({"audiences": ["a"]}));
        assert!(token_request(b"k8s\x00\x0a\xff").is_none());
        assert!(token_request(b"{}").is_none());
    }
}
