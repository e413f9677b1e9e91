//! The little of Go's `net/url` the provider needs: split `jwt_issuer` and `jwks_uri` into
//! scheme, host and path, and join paths as `url.JoinPath` does.

/// A URL as Go's `url.Parse` splits it. `scheme` or `host` may be empty (a relative URL);
/// the config refuses those where SPIRE does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbsUrl {
    /// As written: what the discovery document shows.
    pub raw: String,
    pub scheme: String,
    pub host: String,
    pub path: String,
}

/// Why a URL does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("parse {0:?}: invalid character in URL")]
    InvalidChar(String),
    #[error("parse {0:?}: first path segment in URL cannot contain colon")]
    MissingScheme(String),
}

// === impl AbsUrl ===

impl AbsUrl {
    pub fn parse(raw: &str) -> Result<Self, UrlError> {
        if raw.chars().any(|c| c.is_control() || c == ' ') {
            return Err(UrlError::InvalidChar(raw.to_string()));
        }
        // Query and fragment are not part of the path (and never of an issuer's host).
        let without_fragment = raw.split('#').next().unwrap_or_default();
        let without_query = without_fragment.split('?').next().unwrap_or_default();
        let (scheme, rest) = match without_query.split_once(':') {
            Some((s, rest))
                if !s.is_empty()
                    && s.starts_with(|c: char| c.is_ascii_alphabetic())
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) =>
            {
                (s.to_ascii_lowercase(), rest)
            }
            Some((s, _)) if !s.contains('/') => {
                return Err(UrlError::MissingScheme(raw.to_string()));
            }
            _ => (String::new(), without_query),
        };
        let (host, path) = match rest.strip_prefix("//") {
            Some(authority_and_path) => {
                let (authority, path) = match authority_and_path.find('/') {
                    Some(i) => authority_and_path.split_at(i),
                    None => (authority_and_path, ""),
                };
                // Userinfo is not part of the host.
                let host = authority.rsplit('@').next().unwrap_or_default();
                (host.to_string(), path.to_string())
            }
            None => (String::new(), rest.to_string()),
        };
        Ok(Self {
            raw: raw.to_string(),
            scheme,
            host,
            path,
        })
    }
}

/// `url.JoinPath(base, elem)`: the elements joined with `/` and cleaned; a relative base
/// stays relative; a trailing slash on the last element is kept.
pub fn join_path(base: &str, elem: &str) -> String {
    let relative = !base.starts_with('/');
    let joined = format!("/{base}/{elem}");
    let mut p = clean(&joined);
    if relative {
        p.remove(0);
    }
    if elem.ends_with('/') && !p.ends_with('/') {
        p.push('/');
    }
    p
}

/// Go's `path.Clean` for an absolute path.
pub fn clean(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// What Go's `ServeMux` redirects a request path to (`path.Clean`, keeping a trailing slash),
/// or `None` when the path is already clean.
pub fn mux_clean(p: &str) -> Option<String> {
    if p.is_empty() {
        return Some("/".into());
    }
    let mut c = clean(p);
    if p.ends_with('/') && c != "/" {
        c.push('/');
    }
    (c != p).then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_join_as_go() {
        let u = AbsUrl::parse("https://user@oidc.example.org:8443/td/a?x=1#f").unwrap();
        assert_eq!(
            (u.scheme.as_str(), u.host.as_str(), u.path.as_str()),
            ("https", "oidc.example.org:8443", "/td/a")
        );
        let u = AbsUrl::parse("oidc.example.org").unwrap();
        assert_eq!((u.scheme.as_str(), u.host.as_str()), ("", ""));
        assert!(AbsUrl::parse("http://a b").is_err());
        assert!(AbsUrl::parse(":foo").is_err());

        assert_eq!(
            join_path("/", "/.well-known/openid-configuration"),
            "/.well-known/openid-configuration"
        );
        assert_eq!(join_path("/foo/", "keys"), "/foo/keys");
        assert_eq!(join_path("/foo", "/keys"), "/foo/keys");
        assert_eq!(join_path("", "keys"), "keys");
        assert_eq!(join_path("/a/../b", "keys"), "/b/keys");

        assert_eq!(mux_clean("/keys"), None);
        assert_eq!(mux_clean("//keys").as_deref(), Some("/keys"));
        assert_eq!(mux_clean("/a/../keys").as_deref(), Some("/keys"));
        assert_eq!(mux_clean("/a/"), None);
    }
}
