//! `health_checks {}`: SPIRE's probe listener, read the same way by both binaries. Defaults and
//! what an address may be are each binary's (the server's health module, the agent's).

use crate::{Block, ConfigError};

/// The `health_checks` block, typed but not interpreted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthChecksBlock {
    /// `listener_enabled`: off unless set, as in SPIRE.
    pub listener_enabled: bool,
    pub bind_address: Option<String>,
    pub bind_port: Option<String>,
    pub live_path: Option<String>,
    pub ready_path: Option<String>,
}

// === impl HealthChecksBlock ===

impl HealthChecksBlock {
    /// Takes `health_checks` from the top level of a file, if it is there.
    pub fn take(root: &mut Block) -> Result<Option<Self>, ConfigError> {
        root.block("health_checks", "health_checks block")?
            .map(Self::from_block)
            .transpose()
    }

    pub fn from_block(mut block: Block) -> Result<Self, ConfigError> {
        let out = Self {
            listener_enabled: block.bool("listener_enabled")?.unwrap_or(false),
            bind_address: block.string("bind_address")?,
            bind_port: block.string("bind_port")?,
            live_path: block.string("live_path")?,
            ready_path: block.string("ready_path")?,
        };
        block.finish()?;
        Ok(out)
    }
}
