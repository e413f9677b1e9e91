//! `sigil-server run`: its flags, loading the configuration, and the logging it sets up.

use anyhow::{Result, bail};
use sigil_flags::{FlagSet, Parsed};

use crate::config::{LogFormat, Overrides, ServerConfig};

/// The flags of `run`.
pub(super) fn flags() -> FlagSet {
    FlagSet::new()
        .value("config", "Path to a SPIRE config file")
        .value(
            "trustDomain",
            "The trust domain that this server belongs to",
        )
        .value(
            "dataDir",
            "A directory the server can use for its runtime data",
        )
        .value("socketPath", "Path to bind the admin API socket to")
        .value("bindAddress", "IP address or DNS name of the server")
        .value("serverPort", "Port number of the server")
        .value("logLevel", "DEBUG, INFO, WARN or ERROR")
        .value("logFormat", "Format of logs, <text|json>")
        .value("logFile", "Unsupported: logs go to stderr")
        .bool(
            "expandEnv",
            "Expand environment variables in the config file",
        )
}

pub(super) async fn run_cmd(p: &Parsed) -> Result<i32> {
    let o = Overrides {
        trust_domain: p.get("trustDomain").map(Into::into),
        data_dir: p.get("dataDir").map(Into::into),
        socket_path: p.get("socketPath").map(Into::into),
        bind_address: p.get("bindAddress").map(Into::into),
        server_port: p.get("serverPort").map(Into::into),
        log_level: p.get("logLevel").map(Into::into),
        log_format: p.get("logFormat").map(Into::into),
    };
    if p.is_set("logFile") {
        bail!("-logFile is not supported: Sigil logs to stderr");
    }
    let cfg = ServerConfig::load(p.get("config"), &o)?;
    init_logging(&cfg.log_level, cfg.log_format);
    crate::run::run(cfg).await?;
    Ok(0)
}

/// Installs the tracing subscriber (stderr).
pub fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{level},h2=warn,hyper=warn,tower=warn,sqlx=warn"
        ))
    });
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => b.json().try_init(),
        LogFormat::Text => b.try_init(),
    };
}
