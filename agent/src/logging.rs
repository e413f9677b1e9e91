//! Logging to stderr via tracing, text or JSON (`-logFormat`), at `-logLevel`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use sigil_config::{LogFormat, LogLevel};

/// Installs the global subscriber. The configured level applies to Sigil's own crates;
/// dependencies (h2, rustls, hyper) log at most at INFO, since their DEBUG output is a frame-by-
/// frame trace nobody asked for with `-logLevel DEBUG`. `RUST_LOG`, when set, overrides all of it.
/// Colors only on a terminal, and never with `NO_COLOR` set.
pub fn init(level: LogLevel, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let own = level.as_filter();
        let deps = match level {
            LogLevel::Trace | LogLevel::Debug | LogLevel::Info => "info",
            LogLevel::Warn | LogLevel::Error => own,
        };
        EnvFilter::new(format!("{deps},sigil_agent={own},sigil_spiffe={own}"))
    });
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    // A second init (tests, embedding) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
