//! `health_checks {}`: SPIRE's probe listener, read and checked the same way by both binaries
//! (SPIRE's server and agent share one `health_checks` type): same input, same verdict.

use crate::{Block, ConfigError, Port};

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

/// An enabled probe listener, with SPIRE's defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthListener {
    /// A host name or IP address (SPIRE's default: `localhost`).
    pub bind_address: String,
    pub bind_port: Port,
    pub live_path: String,
    pub ready_path: String,
}

// === impl HealthChecksBlock ===

impl HealthChecksBlock {
    /// Takes `health_checks` from the top level of a file, if it is there.
    pub fn take(root: &mut Block) -> Result<Option<Self>, ConfigError> {
        root.block("health_checks", "health_checks block")?
            .map(Self::from_block)
            .transpose()
    }

    /// SPIRE's reading: every value is checked whether or not the listener is enabled (a typo
    /// in a disabled block is still a typo); the listener only when `listener_enabled = true`.
    /// Defaults as SPIRE's: `localhost`, port 80, `/live`, `/ready`.
    pub fn listener(self) -> Result<Option<HealthListener>, ConfigError> {
        let bind_address = match self.bind_address {
            Some(a) if a.trim().is_empty() || a.contains(char::is_whitespace) => {
                return Err(ConfigError::invalid(
                    "bind_address",
                    "must be a host name or IP address",
                ));
            }
            Some(a) => a,
            None => "localhost".to_string(),
        };
        let bind_port = self
            .bind_port
            .as_deref()
            .unwrap_or("80")
            .parse()
            .map_err(|e: String| ConfigError::invalid("bind_port", e))?;
        let path = |key: &str, value: Option<String>, default: &str| {
            let p = value.unwrap_or_else(|| default.to_string());
            if p.starts_with('/') {
                Ok(p)
            } else {
                Err(ConfigError::invalid(key, "must start with /"))
            }
        };
        let listener = HealthListener {
            bind_address,
            bind_port,
            live_path: path("live_path", self.live_path, "/live")?,
            ready_path: path("ready_path", self.ready_path, "/ready")?,
        };
        Ok(self.listener_enabled.then_some(listener))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Option<HealthListener>, ConfigError> {
        let mut root = crate::parse(text)?;
        HealthChecksBlock::take(&mut root)?
            .unwrap_or_default()
            .listener()
    }

    #[test]
    fn spire_defaults_and_checks() {
        let l = read("health_checks {\n listener_enabled = true\n}\n")
            .unwrap()
            .unwrap();
        assert_eq!(l.bind_address, "localhost");
        assert_eq!(l.bind_port, Port(80));
        assert_eq!(
            (l.live_path.as_str(), l.ready_path.as_str()),
            ("/live", "/ready")
        );
        assert_eq!(read("").unwrap(), None);
        // Checked even when disabled.
        for bad in [
            "bind_port = \"http\"",
            "bind_port = \"70000\"",
            "live_path = \"live\"",
            "bind_address = \"\"",
        ] {
            for enabled in ["true", "false"] {
                let text = format!("health_checks {{\n listener_enabled = {enabled}\n {bad}\n}}\n");
                assert!(read(&text).is_err(), "{text}");
            }
        }
        let l = read("health_checks {\n listener_enabled = \"true\"\n bind_address = \"0.0.0.0\"\n bind_port = \"8080\"\n}\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (l.bind_address.as_str(), l.bind_port),
            ("0.0.0.0", Port(8080))
        );
    }
}
