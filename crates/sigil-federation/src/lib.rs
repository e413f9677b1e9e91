//! SPIFFE federation as SPIRE does it, for `sigil-server`:
//!
//! - [`endpoint`]: the bundle endpoint, the trust domain's bundle as SPIFFE bundle JSON on
//!   `GET /` over TLS, with the server's own SVID (`https_spiffe`) or a Web PKI certificate
//!   from files (`https_web`);
//! - [`fetch`]: one fetch of a federated trust domain's bundle, authenticated by the
//!   relationship's profile;
//! - [`refresh`]: the relationships' refresh loops, the rules a fetched bundle must pass before
//!   it replaces the stored one, and their visible state (last success, last error, next
//!   attempt).
//!
//! What a relationship is ([`Relationship`], [`Profile`]) is shared by all three. Storage is
//! the caller's ([`refresh::BundleStore`]): the server keeps federated bundles in its
//! datastore, which pushes them to agents.

pub mod endpoint;
pub mod fetch;
pub mod refresh;

use sigil_spiffe::{SpiffeId, TrustDomain};

/// How a bundle endpoint is authenticated (SPIRE's `bundle_endpoint_profile`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Profile {
    /// The endpoint presents an X509-SVID with this ID, verified against the stored bundle of
    /// the ID's trust domain; no host name check.
    HttpsSpiffe { endpoint_spiffe_id: SpiffeId },
    /// The endpoint presents a Web PKI certificate for the URL's host, verified against the
    /// system roots.
    HttpsWeb,
}

/// A federation relationship: whose bundle, from where, authenticated how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relationship {
    pub trust_domain: TrustDomain,
    pub url: EndpointUrl,
    pub profile: Profile,
}

/// An `https://host[:port][/path]` URL with a host and no user info, as SPIRE (and
/// spire-controller-manager's ClusterFederatedTrustDomain) require.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointUrl {
    text: String,
    host: String,
    port: u16,
    path_and_query: String,
}

/// Why a bundle endpoint URL was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("invalid bundle endpoint URL {0:?}: {1}")]
    Invalid(String, String),
    #[error("invalid bundle endpoint URL {0:?}: scheme must be https")]
    NotHttps(String),
    #[error("invalid bundle endpoint URL {0:?}: a host is required")]
    NoHost(String),
    #[error("invalid bundle endpoint URL {0:?}: user info is not allowed")]
    UserInfo(String),
}

// === impl Profile ===

impl Profile {
    /// SPIRE's name of the profile (`https_spiffe`, `https_web`).
    pub fn name(&self) -> &'static str {
        match self {
            Profile::HttpsSpiffe { .. } => "https_spiffe",
            Profile::HttpsWeb => "https_web",
        }
    }
}

// === impl EndpointUrl ===

impl EndpointUrl {
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        let uri: hyper::Uri = text.parse().map_err(|e: hyper::http::uri::InvalidUri| {
            UrlError::Invalid(text.to_string(), e.to_string())
        })?;
        if uri.scheme_str() != Some("https") {
            return Err(UrlError::NotHttps(text.to_string()));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| UrlError::NoHost(text.to_string()))?;
        if authority.as_str().contains('@') {
            return Err(UrlError::UserInfo(text.to_string()));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(UrlError::NoHost(text.to_string()));
        }
        Ok(Self {
            text: text.to_string(),
            host,
            port: authority.port_u16().unwrap_or(443),
            path_and_query: uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into()),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn path_and_query(&self) -> &str {
        &self.path_and_query
    }
}

impl std::fmt::Display for EndpointUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_as_spire_takes_them() {
        let u = EndpointUrl::parse("https://example.org:8443/bundle?x=1").unwrap();
        assert_eq!(
            (u.host(), u.port(), u.path_and_query()),
            ("example.org", 8443, "/bundle?x=1")
        );
        let u = EndpointUrl::parse("https://[::1]").unwrap();
        assert_eq!((u.host(), u.port(), u.path_and_query()), ("::1", 443, "/"));
        assert!(matches!(
            EndpointUrl::parse("http://example.org"),
            Err(UrlError::NotHttps(_))
        ));
        assert!(matches!(
            EndpointUrl::parse("https://u:p@example.org"),
            Err(UrlError::UserInfo(_))
        ));
        assert!(matches!(
            EndpointUrl::parse("https:///x"),
            Err(UrlError::Invalid(..) | UrlError::NoHost(_))
        ));
        assert!(EndpointUrl::parse("example.org").is_err());
    }
}
