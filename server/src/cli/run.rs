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

/// The filter for `level` (a tracing directive), with the chatty dependencies kept quiet.
fn filter(level: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::new(format!("{level},h2=warn,hyper=warn,tower=warn,sqlx=warn"))
}

/// Installs the tracing subscriber (stderr), with its level switchable at run time
/// (`logger set`) unless `RUST_LOG` decides it.
pub fn init_logging(level: &str, format: LogFormat) {
    let env = tracing_subscriber::EnvFilter::try_from_default_env().ok();
    let from_env = env.is_some();
    let initial = env.unwrap_or_else(|| filter(level));
    let launch = crate::logger::Level::parse(level).unwrap_or(crate::logger::Level::Info);
    macro_rules! install {
        ($b:expr) => {{
            let b = $b
                .with_env_filter(initial)
                .with_writer(std::io::stderr)
                .with_filter_reloading();
            let handle = b.reload_handle();
            let apply: crate::logger::Apply = Box::new(move |directive: &str| {
                if from_env {
                    return Err("the log level is set by RUST_LOG".into());
                }
                handle.reload(filter(directive)).map_err(|e| e.to_string())
            });
            if b.try_init().is_ok() {
                crate::logger::install(launch, apply);
            }
        }};
    }
    match format {
        // One line per event, the event's fields at the top level: the same shape as the
        // agent's, the controller's and sigil-oidc's.
        LogFormat::Json => install!(
            tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_target(false)
        ),
        LogFormat::Text => install!(tracing_subscriber::fmt()),
    }
}
