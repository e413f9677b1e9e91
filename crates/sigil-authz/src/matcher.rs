//! String matching as Istio compiles policy values into Envoy matchers
//! (`pilot/pkg/security/authz/matcher`): `*` alone, a leading `*` (suffix), a trailing `*`
//! (prefix), or an exact value. A `*` anywhere else is an ordinary character.

/// Istio's `StringMatcher(v)`: `*` is Envoy's regex `.+` (any non-empty value), `*abc` a suffix,
/// `abc*` a prefix, anything else exact. With `ignore_case` (hosts), ASCII case is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StrMatch {
    NonEmpty,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl StrMatch {
    pub fn new(v: &str) -> Self {
        if v == "*" {
            Self::NonEmpty
        } else if let Some(s) = v.strip_prefix('*') {
            Self::Suffix(s.to_owned())
        } else if let Some(p) = v.strip_suffix('*') {
            Self::Prefix(p.to_owned())
        } else {
            Self::Exact(v.to_owned())
        }
    }

    pub fn matches(&self, s: &str, ignore_case: bool) -> bool {
        match self {
            Self::NonEmpty => !s.is_empty(),
            Self::Exact(e) => eq(s, e, ignore_case),
            Self::Prefix(p) => s.len() >= p.len() && eq(&s.as_bytes()[..p.len()], p, ignore_case),
            Self::Suffix(x) => {
                s.len() >= x.len() && eq(&s.as_bytes()[s.len() - x.len()..], x, ignore_case)
            }
        }
    }
}

fn eq(a: impl AsRef<[u8]>, b: &str, ignore_case: bool) -> bool {
    if ignore_case {
        a.as_ref().eq_ignore_ascii_case(b.as_bytes())
    } else {
        a.as_ref() == b.as_bytes()
    }
}

/// A principal value (`td/ns/x/sa/y`, or a whole `spiffe://` ID) as Istio's
/// `StringMatcherWithPrefix(v, "spiffe://")` matches it against the peer's URI SAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalMatch {
    /// `*`: any authenticated peer.
    Any,
    /// The whole ID.
    Exact(String),
    /// `spiffe://` + the value without its trailing `*`.
    Prefix(String),
    /// `*suffix`: Istio's regex `spiffe://.*suffix`.
    SpiffeSuffix(String),
}

pub const SPIFFE: &str = "spiffe://";

impl PrincipalMatch {
    /// `v` is Istio-style (no scheme); callers strip a `spiffe://` first.
    pub fn new(v: &str) -> Self {
        if v == "*" {
            Self::Any
        } else if let Some(s) = v.strip_prefix('*') {
            Self::SpiffeSuffix(s.to_owned())
        } else if let Some(p) = v.strip_suffix('*') {
            Self::Prefix(format!("{SPIFFE}{p}"))
        } else {
            Self::Exact(format!("{SPIFFE}{v}"))
        }
    }

    pub fn matches(&self, uri: &str) -> bool {
        match self {
            Self::Any => !uri.is_empty(),
            Self::Exact(e) => uri == e,
            Self::Prefix(p) => uri.starts_with(p.as_str()),
            Self::SpiffeSuffix(x) => {
                uri.len() >= SPIFFE.len() + x.len()
                    && uri.starts_with(SPIFFE)
                    && uri.ends_with(x.as_str())
            }
        }
    }
}

/// A whole-string glob where `*` matches any run of characters (Istio turns `*` in a namespace
/// into the regex `.*`); used for namespaces: `*/ns/<value>/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    /// The literal pieces between the stars; the pattern starts and ends with a piece (which
    /// may be empty).
    parts: Vec<String>,
}

impl Glob {
    pub fn new(pattern: &str) -> Self {
        Self {
            parts: pattern.split('*').map(str::to_owned).collect(),
        }
    }

    /// The namespace matcher of Istio's `srcNamespaceGenerator`: regex `.*/ns/<v>/.*` with
    /// each `*` of `v` as `.*`.
    pub fn namespace(v: &str) -> Self {
        Self::new(&format!("*/ns/{v}/*"))
    }

    pub fn matches(&self, s: &str) -> bool {
        let (first, rest) = match self.parts.split_first() {
            Some(x) => x,
            None => return s.is_empty(),
        };
        let Some(mut s) = s.strip_prefix(first.as_str()) else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            // No star: the pattern is the literal `first`.
            return s.is_empty();
        };
        // Greedy leftmost placement of the middle pieces is optimal for `*`-only globs.
        for piece in middle {
            match s.find(piece.as_str()) {
                Some(i) => s = &s[i + piece.len()..],
                None => return false,
            }
        }
        s.ends_with(last.as_str())
    }
}

/// Istio's `serviceAccounts` matcher: regex `spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountMatch {
    ns_needle: String,
    sa: String,
}

impl ServiceAccountMatch {
    pub fn new(ns: &str, sa: &str) -> Self {
        Self {
            ns_needle: format!("/ns/{ns}/"),
            sa: format!("sa/{sa}"),
        }
    }

    pub fn matches(&self, uri: &str) -> bool {
        let Some(rest) = uri.strip_prefix(SPIFFE) else {
            return false;
        };
        // `.+` before `/ns/`: the needle may not start at 0.
        rest.match_indices(self.ns_needle.as_str())
            .filter(|(i, _)| *i >= 1)
            .any(|(i, _)| self.tail_matches(&rest[i + self.ns_needle.len()..]))
    }

    /// `(.+/|)sa/<sa>(/.+)?` over what follows `/ns/<ns>/`.
    fn tail_matches(&self, after: &str) -> bool {
        let end_ok = |t: &str| t.is_empty() || (t.len() > 1 && t.starts_with('/'));
        if let Some(t) = after.strip_prefix(self.sa.as_str())
            && end_ok(t)
        {
            return true;
        }
        let needle = format!("/{}", self.sa);
        after
            .match_indices(needle.as_str())
            .filter(|(j, _)| *j >= 1)
            .any(|(j, _)| end_ok(&after[j + needle.len()..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn str_match() {
        let m = |p: &str, s: &str| StrMatch::new(p).matches(s, false);
        assert!(m("*", "x") && !m("*", ""));
        assert!(m("/admin*", "/admin/x") && !m("/admin*", "/adm"));
        assert!(m("*.html", "/a/b.html") && !m("*.html", "/a/b.htm"));
        assert!(m("GET", "GET") && !m("GET", "get"));
        assert!(m("a*b", "a*b") && !m("a*b", "axb"), "inner * is literal");
        assert!(StrMatch::new("*.Example.COM").matches("www.example.com", true));
    }

    #[test]
    fn principal_match() {
        let m = |p: &str, s: &str| PrincipalMatch::new(p).matches(s);
        let sleep = "spiffe://cluster.local/ns/default/sa/sleep";
        assert!(m("cluster.local/ns/default/sa/sleep", sleep));
        assert!(!m("cluster.local/ns/default/sa/slee", sleep));
        assert!(m("cluster.local/ns/default/*", sleep));
        assert!(m("*/ns/default/sa/sleep", sleep));
        assert!(m("*", sleep));
        assert!(!m("*sleep", "http://x/sleep"));
    }

    #[test]
    fn glob() {
        let ns = |v: &str, s: &str| Glob::namespace(v).matches(s);
        assert!(ns("default", "spiffe://td/ns/default/sa/x"));
        assert!(!ns("default", "spiffe://td/ns/default"));
        assert!(!ns("default", "spiffe://td/ns/defaultx/sa/y"));
        assert!(ns("prod-*", "spiffe://td/ns/prod-eu/sa/y"));
        assert!(ns("*-eu", "spiffe://td/ns/prod-eu/sa/y"));
        assert!(ns("*", "spiffe://td/ns/a/sa/y"));
        assert!(Glob::new("a*b*c").matches("aXbYc"));
        assert!(Glob::new("a*b*c").matches("abc"));
        assert!(!Glob::new("a*b*c").matches("acb"));
        assert!(Glob::new("abc").matches("abc") && !Glob::new("abc").matches("abcd"));
    }

    #[test]
    fn service_account() {
        let m = |ns: &str, sa: &str, s: &str| ServiceAccountMatch::new(ns, sa).matches(s);
        assert!(m("default", "sleep", "spiffe://td/ns/default/sa/sleep"));
        assert!(m(
            "default",
            "sleep",
            "spiffe://td/ns/default/x/y/sa/sleep/z"
        ));
        assert!(!m("default", "sleep", "spiffe://td/ns/default/sa/sleep-2"));
        assert!(!m("default", "sleep", "spiffe://td/ns/default/sa/sleep/"));
        assert!(!m("default", "sleep", "spiffe://td/ns/other/sa/sleep"));
    }
}
