//! The attestation payload: `{"cluster":"<name>","token":"<PSAT>"}` (SPIRE's
//! `PSATAttestationData`).

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

/// What the agent sends. The token is a credential for as long as it is valid: never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AttestationData {
    pub cluster: String,
    pub token: String,
}

/// The payload is not the JSON object SPIRE's agents send.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PayloadError(String);

// === impl AttestationData ===

impl AttestationData {
    /// Decodes a payload the way Go's `encoding/json` fills SPIRE's struct: keys match the
    /// field names ignoring ASCII case, unknown keys and `null` values are ignored, the last
    /// of repeated keys wins, and `null` as a whole is an empty payload.
    pub fn parse(payload: &[u8]) -> Result<Self, PayloadError> {
        let mut de = serde_json::Deserializer::from_slice(payload);
        let data = de
            .deserialize_option(PayloadVisitor)
            .map_err(|e| PayloadError(e.to_string()))?;
        de.end().map_err(|e| PayloadError(e.to_string()))?;
        Ok(data)
    }

    /// The payload bytes, as Go's `json.Marshal` writes them (which escapes `<`, `>` and `&`
    /// inside strings).
    pub fn to_json(&self) -> Vec<u8> {
        // serde_json's map is sorted by key, which happens to be the struct's field order in
        // Go: `cluster`, then `token`.
        let json = serde_json::json!({"cluster": self.cluster, "token": self.token}).to_string();
        go_html_escape(&json).into_bytes()
    }
}

/// `json.Marshal`'s HTML escaping. The characters only ever occur inside strings in the
/// output, so replacing them everywhere is exact.
fn go_html_escape(json: &str) -> String {
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

impl fmt::Debug for AttestationData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttestationData")
            .field("cluster", &self.cluster)
            .field("token", &"[redacted]")
            .finish()
    }
}

struct PayloadVisitor;

impl<'de> Visitor<'de> for PayloadVisitor {
    type Value = AttestationData;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object with \"cluster\" and \"token\"")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(AttestationData::default())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(AttestationData::default())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut data = AttestationData::default();
        while let Some(key) = map.next_key::<String>()? {
            let slot = if key.eq_ignore_ascii_case("cluster") {
                &mut data.cluster
            } else if key.eq_ignore_ascii_case("token") {
                &mut data.token
            } else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            if let Some(v) = map.next_value::<Option<String>>()? {
                *slot = v;
            }
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_go() {
        let d = AttestationData::parse(br#"{"cluster": "FOO", "token": "T"}"#).unwrap();
        assert_eq!((d.cluster.as_str(), d.token.as_str()), ("FOO", "T"));
        let d =
            AttestationData::parse(br#"{"Cluster":"A","TOKEN":"B","x":[1],"token":null}"#).unwrap();
        assert_eq!((d.cluster.as_str(), d.token.as_str()), ("A", "B"));
        let d = AttestationData::parse(b"null").unwrap();
        assert_eq!(d, AttestationData::default());
        assert!(AttestationData::parse(b"{").is_err());
        assert!(AttestationData::parse(br#"{"cluster": 1}"#).is_err());
        assert!(AttestationData::parse(br#"{} x"#).is_err());
    }

    #[test]
    fn encodes_like_go() {
        let d = AttestationData {
            cluster: "demo".into(),
            token: "a.b<c>&".into(),
        };
        assert_eq!(
            String::from_utf8(d.to_json()).unwrap(),
            r#"{"cluster":"demo","token":"a.b\u003cc\u003e\u0026"}"#
        );
        assert!(!format!("{d:?}").contains("a.b"));
    }
}
