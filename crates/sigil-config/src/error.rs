use std::path::PathBuf;

/// A configuration problem, reported at start-up. The message is what the operator sees: it
/// names the key, block or plugin at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing config file{}: {message}", fmt_path(path))]
    Parse {
        path: Option<PathBuf>,
        message: String,
    },
    #[error("unsupported key {key:?} in {block}")]
    UnsupportedKey { key: String, block: String },
    /// A value of the wrong type (a string where a block belongs, `"treu"` for a boolean).
    #[error("invalid value for {key}: expected {expected}")]
    Type { key: String, expected: &'static str },
    #[error("unsupported {kind} plugin {name:?}{}", fmt_supported(supported))]
    UnsupportedPlugin {
        kind: String,
        name: String,
        /// What the binary supports instead, when it says.
        supported: Option<&'static str>,
    },
    #[error("unsupported plugin type {0:?} in plugins block")]
    UnsupportedPluginType(String),
    #[error("more than one {0} plugin configured")]
    DuplicatePlugin(String),
    #[error("invalid value for {key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error("{0} must be configured")]
    Missing(&'static str),
    #[error("{0}")]
    Flag(#[from] sigil_flags::FlagError),
}

// === impl ConfigError ===

impl ConfigError {
    /// [`ConfigError::Invalid`] for `key`.
    pub fn invalid(key: &str, reason: impl std::fmt::Display) -> Self {
        Self::Invalid {
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }

    /// The same error, attributed to the file at `path` if it is a parse error.
    pub fn in_file(self, path: &std::path::Path) -> Self {
        match self {
            Self::Parse { message, .. } => Self::Parse {
                path: Some(path.to_path_buf()),
                message,
            },
            other => other,
        }
    }
}

fn fmt_path(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!(" {}", p.display()))
        .unwrap_or_default()
}

fn fmt_supported(supported: &Option<&'static str>) -> String {
    supported
        .map(|s| format!(" (Sigil supports: {s})"))
        .unwrap_or_default()
}
