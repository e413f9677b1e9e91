//! The `sigil-server` command line, with spire-server's verbs, flag names and output shapes so
//! existing scripts keep working. Every failure prints `Error: <reason>` on stderr and exits 1.
//!
//! This file holds the dispatch (usage, verb lookup, flag parsing, `-output`, exit codes) and
//! what every verb shares: the admin socket client and the output helper. Each verb group has
//! its own file: `run`, `healthcheck`, `entry`, `token`, `bundle`, `agent`.

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use serde_json::Value;
use sigil_flags::FlagSet;
use sigil_proto::admin::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::config::DEFAULT_SOCKET_PATH;

mod agent;
mod authority;
mod bundle;
mod entry;
mod federation;
mod healthcheck;
mod logger;
mod run;
mod token;

pub use run::init_logging;

const USAGE: &str = "Usage: sigil-server <command> [flags]

Commands:
  run                 Runs the server
  entry create|show|update|delete|count
  token generate      Generates a join token
  bundle show|list|set|delete
  agent list|show|evict|ban
  federation create|update|delete|list|show|refresh
  localauthority x509|jwt show|prepare|activate|taint|revoke
  upstreamauthority taint|revoke
  logger get|set|reset
  healthcheck         Determines server health status

Run `sigil-server <command> -h` for the flags of a command.";

/// Runs the CLI and returns the process exit code.
pub fn main(args: Vec<String>) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: starting the runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(dispatch(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            1
        }
    }
}

fn wants_help(args: &[String]) -> bool {
    args.iter()
        .any(|a| a == "-h" || a == "--help" || a == "-help")
}

async fn dispatch(args: Vec<String>) -> Result<i32> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let (cmd, rest) = match words.as_slice() {
        ["run", ..] => ("run", &args[1..]),
        ["healthcheck", ..] => ("healthcheck", &args[1..]),
        ["localauthority", kind @ ("x509" | "jwt"), verb, ..] if !verb.starts_with('-') => {
            let name = format!("localauthority {kind} {verb}");
            return sub(&name, &args[3..]).await;
        }
        [
            group @ ("entry" | "token" | "bundle" | "agent" | "federation" | "upstreamauthority"
            | "logger"),
            verb,
            ..,
        ] if !verb.starts_with('-') => {
            let name = format!("{group} {verb}");
            return sub(&name, &args[2..]).await;
        }
        [] | ["-h" | "--help" | "help"] => {
            println!("{USAGE}");
            return Ok(0);
        }
        [other, ..] => {
            eprintln!("Error: unknown command {other:?}\n\n{USAGE}");
            return Ok(1);
        }
    };
    sub(cmd, rest).await
}

fn socket_flag(fs: FlagSet) -> FlagSet {
    fs.value(
        "socketPath",
        "Path to the SPIRE-compatible admin socket (default /tmp/sigil-server/private/api.sock)",
    )
    .value("output", "Desired output format (pretty, json)")
}

/// The flags of `cmd` (`run`, `healthcheck`, `entry create`, ...); `None` for an unknown one.
fn flags_for(cmd: &str) -> Option<FlagSet> {
    match cmd {
        "run" => Some(run::flags()),
        "healthcheck" => Some(healthcheck::flags()),
        _ => entry::flags(cmd)
            .or_else(|| token::flags(cmd))
            .or_else(|| bundle::flags(cmd))
            .or_else(|| agent::flags(cmd))
            .or_else(|| federation::flags(cmd))
            .or_else(|| authority::flags(cmd))
            .or_else(|| logger::flags(cmd)),
    }
}

async fn sub(cmd: &str, args: &[String]) -> Result<i32> {
    let Some(fs) = flags_for(cmd) else {
        eprintln!("Error: unknown command {cmd:?}\n\n{USAGE}");
        return Ok(1);
    };
    if wants_help(args) {
        println!("Usage of sigil-server {cmd}:\n{}", fs.usage());
        return Ok(0);
    }
    let p = fs.parse(args.iter().cloned())?;
    p.no_args()?;
    let json_out = match p.get("output").unwrap_or("pretty") {
        "pretty" | "" => false,
        "json" => true,
        other => bail!("invalid -output {other:?}: use pretty or json"),
    };
    if cmd == "run" {
        return run::run_cmd(&p).await;
    }
    let socket = p
        .get("socketPath")
        .unwrap_or(DEFAULT_SOCKET_PATH)
        .to_string();
    let out = Out { json: json_out };
    if cmd == "healthcheck" {
        return Ok(healthcheck::healthcheck(&socket).await);
    }
    // Commands validate their inputs before dialing, so typos fail with the real reason even
    // when the server is down.
    match cmd {
        "entry create" => entry::entry_create(&socket, &p, out).await,
        "entry update" => entry::entry_update(&socket, &p, out).await,
        "entry show" => entry::entry_show(&socket, &p, out).await,
        "entry delete" => entry::entry_delete(&socket, &p, out).await,
        "entry count" => entry::entry_count(&socket, out).await,
        "token generate" => token::token_generate(&socket, &p, out).await,
        "bundle show" => bundle::bundle_show(&socket, &p, out).await,
        "bundle list" => bundle::bundle_list(&socket, &p, out).await,
        "bundle set" => bundle::bundle_set(&socket, &p, out).await,
        "bundle delete" => bundle::bundle_delete(&socket, &p, out).await,
        "agent list" => agent::agent_list(&socket, out).await,
        "agent show" => agent::agent_show(&socket, &p, out).await,
        "agent evict" => agent::agent_evict(&socket, &p, out).await,
        "agent ban" => agent::agent_ban(&socket, &p, out).await,
        "federation list" => federation::federation_list(&socket, out).await,
        "federation show" => federation::federation_show(&socket, &p, out).await,
        "federation refresh" => federation::federation_refresh(&socket, &p, out).await,
        "federation create" => federation::federation_create(&socket, &p, out).await,
        "federation update" => federation::federation_update(&socket, &p, out).await,
        "federation delete" => federation::federation_delete(&socket, &p, out).await,
        c if c.starts_with("logger ") => logger::run(&socket, c, &p, out).await,
        c if c.starts_with("localauthority ") || c.starts_with("upstreamauthority ") => {
            authority::run(&socket, c, &p, out).await
        }
        other => bail!("unknown command {other:?}"),
    }
}

/// Connects to the admin socket.
pub async fn connect(socket: &str) -> Result<AdminClient<Channel>> {
    let path = std::path::PathBuf::from(socket);
    if !path.exists() {
        bail!("admin socket {socket} does not exist (is the server running? see -socketPath)");
    }
    let ch = tonic::transport::Endpoint::try_from("http://[::1]:1")?
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .with_context(|| format!("connecting to {socket}"))?;
    Ok(AdminClient::new(ch).max_decoding_message_size(64 << 20))
}

#[derive(Debug, Clone, Copy)]
struct Out {
    json: bool,
}

impl Out {
    fn print(self, v: Value, text: impl FnOnce() -> String) {
        if self.json {
            println!("{v}");
        } else {
            println!("{}", text());
        }
    }
}

/// Base64 helper used by `-output json` consumers of DER blobs.
pub fn b64(der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(der)
}

/// A gRPC status code as Go's `codes.Code` prints it (`AlreadyExists`, `NotFound`, ...).
fn code_name(code: i32) -> String {
    format!("{:?}", tonic::Code::from(code))
}
