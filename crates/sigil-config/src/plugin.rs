//! `plugins { Kind "name" { plugin_data { ... } } }`.

use crate::{Block, ConfigError};

/// One configured plugin. Which kinds and names exist is each binary's business; this is only
/// the walk.
#[derive(Clone, Debug, PartialEq)]
pub struct Plugin {
    /// `NodeAttestor`, `KeyManager`, ...
    pub kind: String,
    /// `join_token`, `disk`, ...
    pub name: String,
    /// Its `plugin_data`, named `Kind "name" plugin_data` in errors. Empty when left out.
    pub data: Block,
}

/// The plugins of a `plugins` block, by kind. A plugin with `enabled = false` is left out, as
/// SPIRE does. Anything in a plugin's body but `plugin_data` and `enabled` (`plugin_cmd`,
/// `plugin_checksum`: external plugins) is refused.
pub fn plugins(block: Block) -> Result<Vec<Plugin>, ConfigError> {
    let mut out = Vec::new();
    for (kind, by_name) in block.drain() {
        for named in crate::block::objects(&kind, by_name)? {
            for (name, body) in named {
                let what = format!("{kind} \"{name}\"");
                let mut body = Block::from_value(&what, format!("{what} plugin"), body)?;
                let enabled = body.bool("enabled")?.unwrap_or(true);
                let data = body
                    .block("plugin_data", &format!("{what} plugin_data"))?
                    .unwrap_or_else(|| {
                        Block::new(format!("{what} plugin_data"), Default::default())
                    });
                body.finish()?;
                if enabled {
                    out.push(Plugin {
                        kind: kind.clone(),
                        name,
                        data,
                    });
                }
            }
        }
    }
    Ok(out)
}

// === impl Plugin ===

impl Plugin {
    /// "unsupported {kind} plugin {name}".
    pub fn unsupported(&self, supported: Option<&'static str>) -> ConfigError {
        ConfigError::UnsupportedPlugin {
            kind: self.kind.clone(),
            name: self.name.clone(),
            supported,
        }
    }
}
