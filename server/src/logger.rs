//! The log level at run time (`sigil-server logger get|set|reset`, SPIRE's Logger API): the
//! level the server was launched with, the current one, and the switch between them.
//!
//! Levels are logrus's, as spire-server names them (`panic`, `fatal`, `error`, `warning`,
//! `info`, `debug`, `trace`); tracing has no panic or fatal level, so those filter as `error`
//! while reporting what was asked for.

use std::sync::{Mutex, OnceLock};

/// Applies a tracing filter directive such as `debug`.
pub type Apply = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

struct Control {
    launch: Level,
    current: Mutex<Level>,
    apply: Apply,
}

static CONTROL: OnceLock<Control> = OnceLock::new();

/// A logrus level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Panic,
    Fatal,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl Level {
    /// logrus's `ParseLevel` (case-insensitive; `warn` and `warning`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "panic" => Self::Panic,
            "fatal" => Self::Fatal,
            "error" => Self::Error,
            "warn" | "warning" => Self::Warn,
            "info" => Self::Info,
            "debug" => Self::Debug,
            "trace" => Self::Trace,
            _ => return None,
        })
    }

    /// The API's name (`WARN`).
    pub fn api_name(self) -> &'static str {
        match self {
            Self::Panic => "PANIC",
            Self::Fatal => "FATAL",
            Self::Error => "ERROR",
            Self::Warn => "WARN",
            Self::Info => "INFO",
            Self::Debug => "DEBUG",
            Self::Trace => "TRACE",
        }
    }

    /// logrus's `Level.String()` (`warning`), what `logger get` prints.
    pub fn logrus_name(self) -> &'static str {
        match self {
            Self::Warn => "warning",
            other => match other {
                Self::Panic => "panic",
                Self::Fatal => "fatal",
                Self::Error => "error",
                Self::Info => "info",
                Self::Debug => "debug",
                _ => "trace",
            },
        }
    }

    /// The tracing directive that shows what this level shows.
    fn directive(self) -> &'static str {
        match self {
            Self::Panic | Self::Fatal | Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

/// Records the launch level and how to change it (once, at start-up).
pub fn install(launch: Level, apply: Apply) {
    let _ = CONTROL.set(Control {
        launch,
        current: Mutex::new(launch),
        apply,
    });
}

/// `(current, launch)`; `None` when logging was not set up by `run`.
pub fn get() -> Option<(Level, Level)> {
    let c = CONTROL.get()?;
    Some((
        *c.current.lock().unwrap_or_else(|p| p.into_inner()),
        c.launch,
    ))
}

/// Switches to `level`.
pub fn set(level: Level) -> Result<(Level, Level), String> {
    let c = CONTROL
        .get()
        .ok_or_else(|| "logging is not configured".to_string())?;
    (c.apply)(level.directive())?;
    *c.current.lock().unwrap_or_else(|p| p.into_inner()) = level;
    tracing::info!(level = level.logrus_name(), "log level changed");
    Ok((level, c.launch))
}

/// Back to the launch level.
pub fn reset() -> Result<(Level, Level), String> {
    let launch = CONTROL
        .get()
        .ok_or_else(|| "logging is not configured".to_string())?
        .launch;
    set(launch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logrus_names_round_trip() {
        for n in [
            "panic", "fatal", "error", "warning", "info", "debug", "trace",
        ] {
            assert_eq!(Level::parse(n).unwrap().logrus_name(), n);
        }
        assert_eq!(Level::parse("WARN"), Some(Level::Warn));
        assert_eq!(Level::parse("never"), None);
        assert_eq!(Level::Warn.api_name(), "WARN");
    }
}
