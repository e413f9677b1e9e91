//! SPIFFE IDs and trust domain names.
//!
//! Parsing follows the SPIFFE ID specification to the letter, the same way
//! go-spiffe does, and reuses go-spiffe's error messages so that operators
//! see what SPIRE would have told them:
//!
//! - the scheme is exactly `spiffe://` (lowercase);
//! - the trust domain is non-empty, at most 255 bytes, made of `[a-z0-9._-]`
//!   (so no userinfo `@`, no port `:`, no percent-encoding, no uppercase);
//! - the path is empty or a sequence of `/segment`, each segment non-empty,
//!   not `.` or `..`, made of `[a-zA-Z0-9._-]` (so no query `?`, no fragment
//!   `#`, no percent-encoding), with no trailing slash;
//! - the whole ID is at most 2048 bytes.
//!
//! Because the allowed characters never need escaping, a valid ID has exactly
//! one spelling, and comparing IDs as strings is comparing identities.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The only scheme the SPIFFE ID specification allows.
const SCHEME_PREFIX: &str = "spiffe://";

/// Longest SPIFFE ID the specification allows, in bytes (URI length limit
/// that SPIFFE ID consumers must support).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// Longest trust domain name the specification allows, in bytes (the DNS
/// name limit, since trust domains are often DNS names).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a string is not a valid SPIFFE ID, trust domain or path.
///
/// Each variant is one rule of the SPIFFE ID specification. The messages are
/// go-spiffe's, word for word, where go-spiffe has the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum IdError {
    /// The input is the empty string.
    #[error("cannot be empty")]
    Empty,
    /// The input does not start with `spiffe://` (lowercase), e.g.
    /// `SPIFFE://x`, `http://x`, `spiffe:/x` or a bare `example.org/path`.
    #[error("scheme is missing or invalid")]
    WrongScheme,
    /// Nothing between `spiffe://` and the path, e.g. `spiffe:///path`.
    #[error("trust domain is missing")]
    MissingTrustDomain,
    /// The trust domain has a character outside `[a-z0-9._-]`: uppercase,
    /// percent-encoding (`%`), userinfo (`@`), a port (`:`), a query (`?`),
    /// a fragment (`#`), and so on.
    #[error(
        "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores"
    )]
    BadTrustDomainChar,
    /// The trust domain is longer than [`MAX_TRUST_DOMAIN_LEN`] bytes.
    #[error("trust domain cannot be longer than 255 bytes")]
    TrustDomainTooLong,
    /// The whole ID is longer than [`MAX_SPIFFE_ID_LEN`] bytes.
    #[error("SPIFFE ID cannot be longer than 2048 bytes")]
    TooLong,
    /// A non-empty path that does not start with `/` (only reachable through
    /// [`SpiffeId::from_path`] and [`validate_path`]).
    #[error("path must have a leading slash")]
    NoLeadingSlash,
    /// Two slashes in a row, e.g. `spiffe://td/a//b`.
    #[error("path cannot contain empty segments")]
    EmptySegment,
    /// A `.` or `..` segment, e.g. `spiffe://td/a/../b`.
    #[error("path cannot contain dot segments")]
    DotSegment,
    /// The path ends with `/`, e.g. `spiffe://td/a/` or `spiffe://td/`.
    #[error("path cannot have a trailing slash")]
    TrailingSlash,
    /// A path segment has a character outside `[a-zA-Z0-9._-]`: `%`, `?`,
    /// `#`, `:`, `@`, spaces, non-ASCII, and so on.
    #[error(
        "path segment characters are limited to letters, numbers, dots, dashes, and underscores"
    )]
    BadPathSegmentChar,
}

fn is_trust_domain_char(c: u8) -> bool {
    matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_')
}

fn is_path_segment_char(c: u8) -> bool {
    matches!(c, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_')
}

/// Checks a trust domain name (without scheme).
fn validate_trust_domain_name(name: &str) -> Result<(), IdError> {
    if name.is_empty() {
        return Err(IdError::MissingTrustDomain);
    }
    if !name.bytes().all(is_trust_domain_char) {
        return Err(IdError::BadTrustDomainChar);
    }
    if name.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(IdError::TrustDomainTooLong);
    }
    Ok(())
}

/// Checks a SPIFFE ID path: `""` or `/seg(/seg)*` with valid segments.
///
/// Exposed so that callers building IDs from user input (e.g. entry paths on
/// a command line) can report path errors before they have a trust domain.
pub fn validate_path(path: &str) -> Result<(), IdError> {
    let Some(rest) = path.strip_prefix('/') else {
        return if path.is_empty() {
            Ok(())
        } else {
            Err(IdError::NoLeadingSlash)
        };
    };
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let is_last = segments.peek().is_none();
        match segment {
            // The empty last segment is what a trailing slash leaves behind;
            // go-spiffe reports it as such rather than as an empty segment.
            "" if is_last => return Err(IdError::TrailingSlash),
            "" => return Err(IdError::EmptySegment),
            "." | ".." => return Err(IdError::DotSegment),
            _ => validate_segment_chars(segment)?,
        }
    }
    Ok(())
}

fn validate_segment_chars(segment: &str) -> Result<(), IdError> {
    if segment.bytes().all(is_path_segment_char) {
        Ok(())
    } else {
        Err(IdError::BadPathSegmentChar)
    }
}

// === impl TrustDomain ===

/// A SPIFFE trust domain name, such as `example.org`.
///
/// Always valid: the only ways to build one check every rule.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a trust domain from either its bare name (`example.org`) or a
    /// SPIFFE ID in it (`spiffe://example.org` or `spiffe://example.org/x`),
    /// as go-spiffe's `TrustDomainFromString` and SPIRE's configuration do.
    pub fn from_id_or_name(s: &str) -> Result<TrustDomain, IdError> {
        if s.is_empty() {
            return Err(IdError::MissingTrustDomain);
        }
        // Anything that looks like it has a scheme is parsed as an ID. `:/`
        // rather than `://` gives the better message for `spiffe:/td`.
        if s.contains(":/") {
            return SpiffeId::from_str(s).map(|id| id.trust_domain());
        }
        validate_trust_domain_name(s)?;
        Ok(TrustDomain(s.to_owned()))
    }

    /// The trust domain name, without scheme.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SPIFFE ID of the trust domain itself: `spiffe://<name>`.
    pub fn id(&self) -> SpiffeId {
        // A valid name is at most 255 bytes, so the ID is well under the
        // 2048-byte limit and needs no re-validation.
        let id = format!("{SCHEME_PREFIX}{}", self.0);
        SpiffeId {
            path_idx: id.len(),
            id,
        }
    }

    /// The ID string of the trust domain, `spiffe://<name>`.
    pub fn id_string(&self) -> String {
        format!("{SCHEME_PREFIX}{}", self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TrustDomain").field(&self.0).finish()
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Same as [`TrustDomain::from_id_or_name`].
impl FromStr for TrustDomain {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TrustDomain::from_id_or_name(s)
    }
}

/// Same as [`TrustDomain::from_id_or_name`].
impl TryFrom<&str> for TrustDomain {
    type Error = IdError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        TrustDomain::from_id_or_name(s)
    }
}

/// Same as [`TrustDomain::from_id_or_name`].
impl TryFrom<String> for TrustDomain {
    type Error = IdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        TrustDomain::from_id_or_name(&s)
    }
}

impl AsRef<str> for TrustDomain {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Serialized as the bare name.
impl Serialize for TrustDomain {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        TrustDomain::from_id_or_name(&s).map_err(serde::de::Error::custom)
    }
}

// === impl SpiffeId ===

/// A SPIFFE ID, such as `spiffe://example.org/ns/prod/sa/web`.
///
/// Always valid: the only ways to build one check every rule.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// The whole ID; being canonical, it is also the comparison key.
    id: String,
    /// Byte offset where the path starts (`id.len()` when there is none).
    /// Derived from `id`, so deriving the comparison traits over both fields
    /// orders IDs by their string.
    path_idx: usize,
}

impl SpiffeId {
    /// Builds the ID `spiffe://<td><path>`; `path` is `""` or `/a/b`.
    pub fn from_path(td: &TrustDomain, path: &str) -> Result<SpiffeId, IdError> {
        validate_path(path)?;
        let id = format!("{SCHEME_PREFIX}{}{path}", td.as_str());
        if id.len() > MAX_SPIFFE_ID_LEN {
            return Err(IdError::TooLong);
        }
        Ok(SpiffeId {
            path_idx: SCHEME_PREFIX.len() + td.as_str().len(),
            id,
        })
    }

    /// Builds the ID `spiffe://<td>/<seg1>/<seg2>...` from individual path
    /// segments, each of which must be a valid segment (no `/`).
    pub fn from_segments(td: &TrustDomain, segments: &[&str]) -> Result<SpiffeId, IdError> {
        let mut path = String::new();
        for segment in segments {
            match *segment {
                "" => return Err(IdError::EmptySegment),
                "." | ".." => return Err(IdError::DotSegment),
                s => validate_segment_chars(s)?,
            }
            path.push('/');
            path.push_str(segment);
        }
        SpiffeId::from_path(td, &path)
    }

    /// The trust domain this ID belongs to.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_name().to_owned())
    }

    /// The trust domain name, without allocating.
    pub fn trust_domain_name(&self) -> &str {
        // Invariant: path_idx is within id and on a char boundary (the
        // parser only ever sets it to the position of an ASCII '/' or to
        // the end), and it is >= SCHEME_PREFIX.len().
        self.id
            .get(SCHEME_PREFIX.len()..self.path_idx)
            .unwrap_or_default()
    }

    /// The path: `""` for a trust domain ID, otherwise `/a/b`.
    pub fn path(&self) -> &str {
        // See `trust_domain_name` for why this slice is always in range.
        self.id.get(self.path_idx..).unwrap_or_default()
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// Whether the ID belongs to `td`.
    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        self.trust_domain_name() == td.as_str()
    }

    /// Whether this is the ID of a trust domain itself (no path).
    pub fn is_trust_domain_id(&self) -> bool {
        self.path_idx == self.id.len()
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SpiffeId").field(&self.id).finish()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;

    /// Parses a SPIFFE ID. The checks run in go-spiffe's order, so that a
    /// string breaking several rules reports the same error as SPIRE.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        let Some(rest) = s.strip_prefix(SCHEME_PREFIX) else {
            return Err(IdError::WrongScheme);
        };
        let td_len = rest.find('/').unwrap_or(rest.len());
        let (td, path) = rest.split_at(td_len);
        validate_trust_domain_name(td)?;
        validate_path(path)?;
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(IdError::TooLong);
        }
        Ok(SpiffeId {
            id: s.to_owned(),
            path_idx: SCHEME_PREFIX.len() + td_len,
        })
    }
}

impl TryFrom<&str> for SpiffeId {
    type Error = IdError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        SpiffeId::from_str(s)
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = IdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        SpiffeId::from_str(&s)
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> String {
        id.id
    }
}

/// Serialized as the ID string.
impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.id)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        SpiffeId::from_str(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row: input, and `Ok((trust domain, path))` or the expected error.
    type Row = (&'static str, Result<(&'static str, &'static str), IdError>);

    fn id_table() -> Vec<Row> {
        use IdError::*;
        let long_td = "a".repeat(255);
        let too_long_td = "a".repeat(256);
        let long_path = format!("/{}", "p".repeat(2048 - "spiffe://td/".len()));
        let too_long_path = format!("/{}", "p".repeat(2049 - "spiffe://td/".len()));
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        vec![
            // Valid.
            ("spiffe://example.org", Ok(("example.org", ""))),
            (
                "spiffe://example.org/workload",
                Ok(("example.org", "/workload")),
            ),
            (
                "spiffe://example.org/ns/prod/sa/web",
                Ok(("example.org", "/ns/prod/sa/web")),
            ),
            (
                "spiffe://a-b_c.d/A-Z_a.z0-9",
                Ok(("a-b_c.d", "/A-Z_a.z0-9")),
            ),
            ("spiffe://1.2.3.4/x", Ok(("1.2.3.4", "/x"))),
            ("spiffe://td/...", Ok(("td", "/..."))),
            ("spiffe://td/.a/a./..b", Ok(("td", "/.a/a./..b"))),
            ("spiffe://td/UPPER/Case", Ok(("td", "/UPPER/Case"))),
            ("spiffe://_/-", Ok(("_", "/-"))),
            (leak(format!("spiffe://{long_td}")), Ok((leak(long_td), ""))),
            (
                leak(format!("spiffe://td{long_path}")),
                Ok(("td", leak(long_path))),
            ),
            // Scheme.
            ("", Err(Empty)),
            ("example.org", Err(WrongScheme)),
            ("example.org/path", Err(WrongScheme)),
            ("SPIFFE://example.org", Err(WrongScheme)),
            ("Spiffe://example.org", Err(WrongScheme)),
            ("spiffe:/example.org", Err(WrongScheme)),
            ("spiffe:example.org", Err(WrongScheme)),
            ("http://example.org", Err(WrongScheme)),
            (" spiffe://example.org", Err(WrongScheme)),
            ("spiffe//example.org", Err(WrongScheme)),
            // Trust domain.
            ("spiffe://", Err(MissingTrustDomain)),
            ("spiffe:///path", Err(MissingTrustDomain)),
            ("spiffe://Example.org", Err(BadTrustDomainChar)),
            ("spiffe://exa%6dple.org", Err(BadTrustDomainChar)),
            ("spiffe://user@example.org", Err(BadTrustDomainChar)),
            ("spiffe://user:pass@example.org/x", Err(BadTrustDomainChar)),
            ("spiffe://example.org:8080", Err(BadTrustDomainChar)),
            ("spiffe://example.org:8080/path", Err(BadTrustDomainChar)),
            ("spiffe://example.org?query", Err(BadTrustDomainChar)),
            ("spiffe://example.org#frag", Err(BadTrustDomainChar)),
            ("spiffe://exa mple.org", Err(BadTrustDomainChar)),
            ("spiffe://exämple.org", Err(BadTrustDomainChar)),
            ("spiffe://[::1]/x", Err(BadTrustDomainChar)),
            (
                leak(format!("spiffe://{too_long_td}")),
                Err(TrustDomainTooLong),
            ),
            // Path.
            ("spiffe://example.org/", Err(TrailingSlash)),
            ("spiffe://example.org//", Err(EmptySegment)),
            ("spiffe://example.org//path", Err(EmptySegment)),
            ("spiffe://example.org/a//b", Err(EmptySegment)),
            ("spiffe://example.org/path/", Err(TrailingSlash)),
            ("spiffe://example.org/a/b/", Err(TrailingSlash)),
            ("spiffe://example.org/.", Err(DotSegment)),
            ("spiffe://example.org/..", Err(DotSegment)),
            ("spiffe://example.org/a/./b", Err(DotSegment)),
            ("spiffe://example.org/a/../b", Err(DotSegment)),
            ("spiffe://example.org/a/..", Err(DotSegment)),
            ("spiffe://example.org/p%41th", Err(BadPathSegmentChar)),
            ("spiffe://example.org/path?query=1", Err(BadPathSegmentChar)),
            ("spiffe://example.org/path#frag", Err(BadPathSegmentChar)),
            ("spiffe://example.org/a:b", Err(BadPathSegmentChar)),
            ("spiffe://example.org/a@b", Err(BadPathSegmentChar)),
            ("spiffe://example.org/a b", Err(BadPathSegmentChar)),
            ("spiffe://example.org/ä", Err(BadPathSegmentChar)),
            ("spiffe://example.org/a\\b", Err(BadPathSegmentChar)),
            ("spiffe://example.org/a+b", Err(BadPathSegmentChar)),
            // Length.
            (leak(format!("spiffe://td{too_long_path}")), Err(TooLong)),
        ]
    }

    #[test]
    fn spiffe_id_table() {
        let table = id_table();
        assert!(table.len() >= 30);
        for (input, expected) in table {
            let got = SpiffeId::from_str(input);
            match expected {
                Ok((td, path)) => {
                    let id = got.unwrap_or_else(|e| panic!("{input:?} should parse: {e}"));
                    assert_eq!(id.trust_domain_name(), td, "{input:?}");
                    assert_eq!(id.trust_domain().as_str(), td, "{input:?}");
                    assert_eq!(id.path(), path, "{input:?}");
                    assert_eq!(id.as_str(), input);
                    assert_eq!(id.to_string(), input);
                    assert_eq!(id.is_trust_domain_id(), path.is_empty());
                    // Rebuilding from parts gives the same ID.
                    let td = TrustDomain::from_id_or_name(td).unwrap();
                    assert!(id.is_member_of(&td));
                    assert_eq!(SpiffeId::from_path(&td, path).unwrap(), id);
                }
                Err(err) => assert_eq!(got, Err(err), "{input:?}"),
            }
        }
    }

    #[test]
    fn trust_domain_table() {
        use IdError::*;
        let rows: Vec<(&str, Result<&str, IdError>)> = vec![
            ("example.org", Ok("example.org")),
            ("spiffe://example.org", Ok("example.org")),
            ("spiffe://example.org/path", Ok("example.org")),
            ("a_b-c.d", Ok("a_b-c.d")),
            ("", Err(MissingTrustDomain)),
            ("Example.org", Err(BadTrustDomainChar)),
            ("example.org/path", Err(BadTrustDomainChar)),
            ("example.org:80", Err(BadTrustDomainChar)),
            ("spiffe:/example.org", Err(WrongScheme)),
            ("http://example.org", Err(WrongScheme)),
            ("spiffe://", Err(MissingTrustDomain)),
            ("spiffe://example.org/", Err(TrailingSlash)),
            ("spiffe://Example.org", Err(BadTrustDomainChar)),
        ];
        for (input, expected) in rows {
            let got = TrustDomain::from_id_or_name(input);
            assert_eq!(
                got.as_ref().map(TrustDomain::as_str),
                expected.as_deref(),
                "{input:?}"
            );
            assert_eq!(input.parse::<TrustDomain>(), got, "{input:?}");
            assert_eq!(TrustDomain::try_from(input), got, "{input:?}");
        }
        assert_eq!(
            TrustDomain::from_id_or_name(&"a".repeat(256)),
            Err(TrustDomainTooLong)
        );
    }

    #[test]
    fn trust_domain_id() {
        let td: TrustDomain = "example.org".parse().unwrap();
        let id = td.id();
        assert_eq!(id.as_str(), "spiffe://example.org");
        assert_eq!(id.path(), "");
        assert_eq!(id.trust_domain(), td);
        assert_eq!(id, "spiffe://example.org".parse().unwrap());
        assert_eq!(td.id_string(), "spiffe://example.org");
        assert_eq!(td.to_string(), "example.org");
        assert_eq!(format!("{td:?}"), "TrustDomain(\"example.org\")");
    }

    #[test]
    fn from_path_rules() {
        use IdError::*;
        let td: TrustDomain = "td".parse().unwrap();
        assert_eq!(
            SpiffeId::from_path(&td, "").unwrap().as_str(),
            "spiffe://td"
        );
        assert_eq!(SpiffeId::from_path(&td, "/a/b").unwrap().path(), "/a/b");
        assert_eq!(SpiffeId::from_path(&td, "a"), Err(NoLeadingSlash));
        assert_eq!(SpiffeId::from_path(&td, "/"), Err(TrailingSlash));
        assert_eq!(SpiffeId::from_path(&td, "/a//b"), Err(EmptySegment));
        assert_eq!(SpiffeId::from_path(&td, "/./b"), Err(DotSegment));
        assert_eq!(SpiffeId::from_path(&td, "/a?b"), Err(BadPathSegmentChar));
        let long = format!("/{}", "x".repeat(2048));
        assert_eq!(SpiffeId::from_path(&td, &long), Err(TooLong));
    }

    #[test]
    fn from_segments_rules() {
        use IdError::*;
        let td: TrustDomain = "td".parse().unwrap();
        let id = SpiffeId::from_segments(&td, &["ns", "prod"]).unwrap();
        assert_eq!(id.as_str(), "spiffe://td/ns/prod");
        assert_eq!(SpiffeId::from_segments(&td, &[]).unwrap(), td.id());
        assert_eq!(
            SpiffeId::from_segments(&td, &["a/b"]),
            Err(BadPathSegmentChar)
        );
        assert_eq!(SpiffeId::from_segments(&td, &[""]), Err(EmptySegment));
        assert_eq!(SpiffeId::from_segments(&td, &[".."]), Err(DotSegment));
    }

    #[test]
    fn messages_match_go_spiffe() {
        assert_eq!(
            IdError::BadTrustDomainChar.to_string(),
            "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores"
        );
        assert_eq!(
            IdError::BadPathSegmentChar.to_string(),
            "path segment characters are limited to letters, numbers, dots, dashes, and underscores"
        );
        assert_eq!(
            IdError::EmptySegment.to_string(),
            "path cannot contain empty segments"
        );
        assert_eq!(
            IdError::DotSegment.to_string(),
            "path cannot contain dot segments"
        );
        assert_eq!(
            IdError::TrailingSlash.to_string(),
            "path cannot have a trailing slash"
        );
        assert_eq!(
            IdError::WrongScheme.to_string(),
            "scheme is missing or invalid"
        );
        assert_eq!(
            IdError::MissingTrustDomain.to_string(),
            "trust domain is missing"
        );
    }

    #[test]
    fn ordering_and_serde() {
        let a: SpiffeId = "spiffe://a/z".parse().unwrap();
        let b: SpiffeId = "spiffe://b/a".parse().unwrap();
        assert!(a < b);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, "\"spiffe://a/z\"");
        let back: SpiffeId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
        let err = serde_json::from_str::<SpiffeId>("\"spiffe://A\"").unwrap_err();
        assert!(err.to_string().contains("trust domain characters"), "{err}");
        let td: TrustDomain = serde_json::from_str("\"example.org\"").unwrap();
        assert_eq!(serde_json::to_string(&td).unwrap(), "\"example.org\"");
        assert_eq!(format!("{a:?}"), "SpiffeId(\"spiffe://a/z\")");
    }
}
