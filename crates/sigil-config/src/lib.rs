//! SPIRE's configuration file format, walked one way for `sigil-server` and `sigil-agent`.
//!
//! Both binaries read SPIRE's HCL (or its JSON form): a `server {}` or `agent {}` block,
//! `plugins { Kind "name" { plugin_data { ... } } }`, `health_checks {}`, logging keys and
//! durations such as `"1h"`. This crate does the walking and the typing; each binary decides
//! what the values mean. So the same text gets the same verdict from both, and the verdict is
//! strict:
//!
//! - a key nobody reads is an error naming the key and its block ([`Block::finish`]): silently
//!   ignoring a key a SPIRE user relied on would be worse than refusing to start;
//! - a value of the wrong type is an error naming the key and what was expected
//!   (`listener_enabled = "treu"` is not `false`, `server = "x"` is not an empty block).
//!
//! Scalars are lenient the way SPIRE's configs need: `bind_port = "8081"` and `bind_port = 8081`
//! read the same, since SPIRE's examples quote numbers as often as not.

mod block;
mod env;
mod error;
mod health;
mod logging;
mod plugin;
mod port;

pub use self::block::{Block, parse};
pub use self::env::{expand_env, expand_env_with};
pub use self::error::ConfigError;
pub use self::health::{HealthChecksBlock, HealthListener};
pub use self::logging::{LogFormat, LogLevel};
pub use self::plugin::{Plugin, plugins};
pub use self::port::Port;

/// A duration as SPIRE writes them (`"1h"`, `"90s"`, `"1h30m"`, or plain seconds), for `key`.
pub fn parse_duration(key: &str, text: &str) -> Result<std::time::Duration, ConfigError> {
    sigil_flags::parse_duration(text).map_err(|reason| ConfigError::Invalid {
        key: key.to_string(),
        reason,
    })
}
