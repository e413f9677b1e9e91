//! The agent's side of the server <-> agent (Node) API: node attestation (join token or
//! k8s_psat), agent SVID renewal or re-attestation, and the mTLS channel everything else runs
//! over.

pub mod attestor;
pub mod client;
pub mod config;
pub mod storage;
pub mod tls;

use std::fmt;

use sigil_spiffe::SpiffeId;

use crate::keys::PrivateKeyDer;
use crate::svid::{self, SvidError};

pub use self::attestor::NodeAttestor;
pub use self::client::{NodeError, ServerEndpoint};
pub use self::config::server_id;

/// The agent's own X509-SVID (`spiffe://<td>/spire/agent/...`) and its key.
#[derive(Clone)]
pub struct AgentSvid {
    pub id: SpiffeId,
    /// DER, leaf first.
    pub chain: Vec<Vec<u8>>,
    pub key: PrivateKeyDer,
    pub not_before: i64,
    pub not_after: i64,
    /// When this process got it (issued, or loaded from disk): renewal is at half of the
    /// lifetime left from then.
    pub received_at: i64,
}

// === impl AgentSvid ===

impl AgentSvid {
    pub fn new(chain: Vec<Vec<u8>>, key: PrivateKeyDer) -> Result<Self, SvidError> {
        let leaf = chain
            .first()
            .ok_or_else(|| SvidError("empty certificate chain".into()))?;
        let id = svid::spiffe_id(leaf)?;
        let (not_before, not_after) = svid::validity(leaf)?;
        Ok(Self {
            id,
            chain,
            key,
            not_before,
            not_after,
            received_at: svid::now_unix(),
        })
    }

    pub fn identity(&self) -> tls::ClientIdentity {
        tls::ClientIdentity {
            chain: self.chain.clone(),
            key: self.key.clone(),
        }
    }

    pub fn is_expired(&self, now: i64) -> bool {
        now >= self.not_after
    }
}

impl fmt::Debug for AgentSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentSvid")
            .field("id", &self.id)
            .field("not_after", &self.not_after)
            .field("key", &self.key)
            .finish()
    }
}
