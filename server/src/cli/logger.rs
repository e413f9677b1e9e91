//! `sigil-server logger get|set|reset`: the server's log level at run time, with spire-server's
//! flags, output and messages.

use anyhow::{Result, anyhow, bail};
use serde_json::json;
use sigil_flags::{FlagSet, Parsed};
use sigil_proto::admin as pb;

use super::{Out, connect, socket_flag};
use crate::logger::Level;

/// The flags of the `logger` verbs; `None` if `cmd` is not one.
pub(super) fn flags(cmd: &str) -> Option<FlagSet> {
    Some(match cmd {
        "logger get" | "logger reset" => socket_flag(FlagSet::new()),
        "logger set" => socket_flag(FlagSet::new()).value(
            "level",
            "The new log level, one of (panic, fatal, error, warn, info, debug, trace)",
        ),
        _ => return None,
    })
}

fn print(l: &pb::Logger, out: Out) {
    let name = |api: &str| Level::parse(api).map_or("unknown", Level::logrus_name);
    out.print(
        json!({"current_level": l.current_level, "launch_level": l.launch_level}),
        || {
            format!(
                "Logger Level : {}\nLaunch Level : {}\n",
                name(&l.current_level),
                name(&l.launch_level)
            )
        },
    );
}

fn rpc(context: &str, s: tonic::Status) -> anyhow::Error {
    anyhow!(
        "{context}: rpc error: code = {:?} desc = {}",
        s.code(),
        s.message()
    )
}

pub(super) async fn run(socket: &str, cmd: &str, p: &Parsed, out: Out) -> Result<i32> {
    let logger = match cmd {
        "logger get" => connect(socket)
            .await?
            .get_logger(pb::GetLoggerRequest {})
            .await
            .map_err(|s| rpc("error fetching logger", s))?,
        "logger set" => {
            let wanted = p.get("level").unwrap_or_default();
            if wanted.is_empty() {
                bail!("a value (-level) must be set");
            }
            let level = Level::parse(wanted)
                .ok_or_else(|| anyhow!("the value {wanted:?} is not a valid setting"))?;
            connect(socket)
                .await?
                .set_log_level(pb::SetLogLevelRequest {
                    new_level: level.api_name().into(),
                })
                .await
                .map_err(|s| rpc("failed to set log level", s))?
        }
        "logger reset" => connect(socket)
            .await?
            .reset_log_level(pb::ResetLogLevelRequest {})
            .await
            .map_err(|s| rpc("failed to reset logger", s))?,
        other => bail!("unknown command {other:?}"),
    }
    .into_inner();
    print(&logger, out);
    Ok(0)
}
