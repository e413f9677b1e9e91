//! Workload and node selectors, written `type:value` as in SPIRE
//! (`unix:uid:1000`, `k8s:ns:prod`, `docker:label:app:web`).
//!
//! The type is everything before the *first* colon; the value is everything
//! after it and may itself contain colons, because most attestors use
//! `sub-key:value` values.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a valid selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// No `:` at all (SPIRE's message).
    #[error("selector \"{0}\" must be formatted as type:value")]
    MissingSeparator(String),
    /// Nothing before the first `:`.
    #[error("selector type cannot be empty")]
    EmptyType,
    /// The type has a character outside `[a-z0-9_-]`.
    #[error(
        "selector type \"{0}\" may only contain lowercase letters, numbers, underscores, and dashes"
    )]
    BadTypeChar(String),
    /// Nothing after the first `:`.
    #[error("selector value cannot be empty")]
    EmptyValue,
}

// === impl Selector ===

/// One selector. Ordered by type, then value, which is the order SPIRE
/// shows and stores them in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    /// The selector type, e.g. `unix` or `k8s`.
    pub kind: String,
    /// The value, e.g. `uid:1000`.
    pub value: String,
}

impl Selector {
    /// Builds a selector from its two halves, checking both.
    pub fn new(kind: impl Into<String>, value: impl Into<String>) -> Result<Self, SelectorError> {
        let selector = Selector {
            kind: kind.into(),
            value: value.into(),
        };
        validate_kind(&selector.kind)?;
        if selector.value.is_empty() {
            return Err(SelectorError::EmptyValue);
        }
        Ok(selector)
    }
}

fn validate_kind(kind: &str) -> Result<(), SelectorError> {
    if kind.is_empty() {
        return Err(SelectorError::EmptyType);
    }
    let ok = kind
        .bytes()
        .all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'));
    if !ok {
        return Err(SelectorError::BadTypeChar(kind.to_owned()));
    }
    Ok(())
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, value) = s
            .split_once(':')
            .ok_or_else(|| SelectorError::MissingSeparator(s.to_owned()))?;
        Selector::new(kind, value)
    }
}

impl TryFrom<&str> for Selector {
    type Error = SelectorError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// Serialized as the `type:value` string.
impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Input, and `Ok((type, value))` or the expected error.
    type Row = (
        &'static str,
        Result<(&'static str, &'static str), SelectorError>,
    );

    #[test]
    fn table() {
        use SelectorError::*;
        let rows: Vec<Row> = vec![
            ("unix:uid:1000", Ok(("unix", "uid:1000"))),
            ("k8s:ns:prod", Ok(("k8s", "ns:prod"))),
            ("docker:label:app:web", Ok(("docker", "label:app:web"))),
            ("k8s_psat:cluster:c1", Ok(("k8s_psat", "cluster:c1"))),
            ("aws-iid:tag:Name:x", Ok(("aws-iid", "tag:Name:x"))),
            ("t:v", Ok(("t", "v"))),
            ("t::", Ok(("t", ":"))),
            ("t: spaced value ", Ok(("t", " spaced value "))),
            ("nocolon", Err(MissingSeparator("nocolon".into()))),
            ("", Err(MissingSeparator(String::new()))),
            (":value", Err(EmptyType)),
            ("unix:", Err(EmptyValue)),
            ("Unix:uid:1", Err(BadTypeChar("Unix".into()))),
            ("un ix:uid:1", Err(BadTypeChar("un ix".into()))),
            ("a.b:c", Err(BadTypeChar("a.b".into()))),
        ];
        for (input, expected) in rows {
            let got = input.parse::<Selector>();
            match expected {
                Ok((kind, value)) => {
                    let sel = got.unwrap_or_else(|e| panic!("{input:?}: {e}"));
                    assert_eq!((sel.kind.as_str(), sel.value.as_str()), (kind, value));
                    assert_eq!(sel.to_string(), input);
                }
                Err(err) => assert_eq!(got, Err(err), "{input:?}"),
            }
        }
    }

    #[test]
    fn ordering_and_serde() {
        let mut sels: Vec<Selector> = ["unix:uid:2", "k8s:ns:a", "unix:gid:1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        sels.sort();
        let shown: Vec<String> = sels.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["k8s:ns:a", "unix:gid:1", "unix:uid:2"]);

        let json = serde_json::to_string(&sels[0]).unwrap();
        assert_eq!(json, "\"k8s:ns:a\"");
        assert_eq!(serde_json::from_str::<Selector>(&json).unwrap(), sels[0]);
        assert!(serde_json::from_str::<Selector>("\"bad\"").is_err());
    }

    #[test]
    fn messages() {
        assert_eq!(
            "x".parse::<Selector>().unwrap_err().to_string(),
            "selector \"x\" must be formatted as type:value"
        );
    }
}
