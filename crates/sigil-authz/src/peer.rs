//! The peer's identity: a SPIFFE ID checked against the SPIFFE-ID specification.

use std::fmt;

/// Longest SPIFFE ID the specification allows (URI length in bytes).
const MAX_LEN: usize = 2048;
const SCHEME: &str = "spiffe://";

/// A syntactically valid SPIFFE ID, borrowed from the connection attribute it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpiffeId<'a> {
    uri: &'a str,
}

/// Why a connection has no usable peer identity. Every variant denies (fail closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerError {
    /// The connection is not mutual TLS (`connection.mtls` is false).
    NotMtls,
    /// The peer presented no certificate with a URI SAN.
    NoUriSan,
    /// The URI SAN is not a valid SPIFFE ID (the reason is static text).
    InvalidSpiffeId(&'static str),
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotMtls => f.write_str("connection is not mutual TLS"),
            Self::NoUriSan => f.write_str("peer certificate has no URI SAN"),
            Self::InvalidSpiffeId(why) => write!(f, "peer URI SAN is not a SPIFFE ID: {why}"),
        }
    }
}

impl std::error::Error for PeerError {}

impl<'a> SpiffeId<'a> {
    /// Parses `uri` as a SPIFFE ID (`spiffe://<trust domain>[/<segment>...]`): lowercase
    /// scheme, a trust domain of `[a-z0-9._-]`, path segments of `[a-zA-Z0-9._-]` that are
    /// neither empty nor `.`/`..`, no query, fragment, port or user info, at most 2048 bytes.
    pub fn parse(uri: &'a str) -> Result<Self, PeerError> {
        if uri.len() > MAX_LEN {
            return Err(PeerError::InvalidSpiffeId("longer than 2048 bytes"));
        }
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or(PeerError::InvalidSpiffeId("scheme is not spiffe://"))?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if td.is_empty() {
            return Err(PeerError::InvalidSpiffeId("empty trust domain"));
        }
        if !td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        {
            return Err(PeerError::InvalidSpiffeId(
                "trust domain has characters other than [a-z0-9._-]",
            ));
        }
        if !path.is_empty() {
            // `path` starts with '/': every segment after it must be valid.
            for seg in path[1..].split('/') {
                if seg.is_empty() {
                    return Err(PeerError::InvalidSpiffeId("empty path segment"));
                }
                if seg == "." || seg == ".." {
                    return Err(PeerError::InvalidSpiffeId("dot path segment"));
                }
                if !seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                {
                    return Err(PeerError::InvalidSpiffeId(
                        "path has characters other than [a-zA-Z0-9._-]",
                    ));
                }
            }
        }
        Ok(Self { uri })
    }

    /// The whole ID, `spiffe://td/path`.
    pub fn as_str(&self) -> &'a str {
        self.uri
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &'a str {
        let rest = &self.uri[SCHEME.len()..];
        rest.split('/').next().unwrap_or(rest)
    }
}

impl fmt::Display for SpiffeId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids() {
        for ok in [
            "spiffe://cluster.local/ns/default/sa/sleep",
            "spiffe://example.org",
            "spiffe://a-b_c.9/x.y/Z_-",
        ] {
            assert!(SpiffeId::parse(ok).is_ok(), "{ok}");
        }
        let id = SpiffeId::parse("spiffe://td.x/ns/a").unwrap();
        assert_eq!(id.trust_domain(), "td.x");
    }

    #[test]
    fn invalid_ids() {
        let long = format!("spiffe://td/{}", "a".repeat(2100));
        for bad in [
            "",
            "https://td/x",
            "SPIFFE://td/x",
            "spiffe://",
            "spiffe:///x",
            "spiffe://TD/x",
            "spiffe://td:8080/x",
            "spiffe://user@td/x",
            "spiffe://td/",
            "spiffe://td//x",
            "spiffe://td/./x",
            "spiffe://td/../x",
            "spiffe://td/x?q=1",
            "spiffe://td/x#f",
            "spiffe://td/x%20y",
            long.as_str(),
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
