//! gRPC services: the agent API (`node`, TLS) and the admin API (`admin`, Unix socket).

pub mod admin;
pub mod node;

use crate::ca::Ca;
use crate::config::ServerConfig;
use crate::datastore::DataStore;
use std::sync::Arc;

/// State every service shares.
#[derive(Debug, Clone)]
pub struct Shared {
    pub cfg: Arc<ServerConfig>,
    pub ca: Arc<Ca>,
    pub ds: DataStore,
}

/// A per-item status in batch responses.
pub(crate) fn entry_status(code: tonic::Code, message: String) -> sigil_proto::types::Status {
    sigil_proto::types::Status {
        code: code as i32,
        message,
    }
}
