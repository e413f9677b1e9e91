//! `sigil-agent run` and `sigil-agent validate`: both read the configuration from flags and
//! the config file; `run` then starts the agent.

use crate::config::Config;

use super::{CliError, parse};

// === run / validate ===

pub(super) fn run_cmd(args: &[&str]) -> Result<(), CliError> {
    let set = Config::flag_set();
    let flags = parse(&set, args, "run")?;
    let config = Config::from_flags(&flags).map_err(|e| CliError::Failed(e.to_string()))?;
    crate::logging::init(config.log_level, config.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("starting the runtime: {e}")))?;
    rt.block_on(crate::run(config)).map_err(|e| {
        tracing::error!(error = %crate::error_chain(&e), "agent stopped");
        CliError::Failed(crate::error_chain(&e))
    })
}

pub(super) fn validate_cmd(args: &[&str]) -> Result<(), CliError> {
    let set = Config::flag_set();
    let flags = parse(&set, args, "validate")?;
    Config::from_flags(&flags).map_err(|e| CliError::Failed(e.to_string()))?;
    println!("Sigil agent configuration file is valid.");
    Ok(())
}
