//! What the node subsystem is configured with: where the server is, the join token or the
//! k8s_psat settings, the identity the server must present. The agent's `config` module parses SPIRE's keys and flags into these.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use sigil_spiffe::{SpiffeId, TrustDomain};

/// The server's host name or IP address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerHost(String);

/// A join token. Single-use, but still a credential until used: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken(String);

/// Where kubelet projects the agent's service account token when `token_path` is not set
/// (SPIRE's default).
pub const DEFAULT_PSAT_TOKEN_PATH: &str = "/var/run/secrets/tokens/spire-agent";

/// `NodeAttestor "k8s_psat"` (agent side): the cluster's name as the server knows it, and the
/// projected service account token file, read again at every attestation (kubelet rotates it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PsatConfig {
    pub cluster: String,
    pub token_path: PathBuf,
}

/// `spiffe://<td>/spire/server`, the ID the server's TLS certificate must carry.
pub fn server_id(td: &TrustDomain) -> SpiffeId {
    // Invariant: "/spire/server" is a valid path, so this cannot fail; fall back to the trust
    // domain ID rather than panic (which would then fail every verification, safely).
    SpiffeId::from_path(td, "/spire/server").unwrap_or_else(|_| td.id())
}

// === impl ServerHost ===

impl FromStr for ServerHost {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty address".into());
        }
        if s.contains("://") || s.contains('/') {
            return Err(format!("{s:?} is not a host name or IP address"));
        }
        // A bracketed IPv6 literal is accepted and unbracketed.
        let host = s
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(s);
        if host.parse::<IpAddr>().is_err()
            && rustls_pki_types::DnsName::try_from(host.to_string()).is_err()
        {
            return Err(format!("{s:?} is not a host name or IP address"));
        }
        Ok(Self(host.to_string()))
    }
}

impl ServerHost {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServerHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// === impl JoinToken ===

impl JoinToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinToken([redacted])")
    }
}
