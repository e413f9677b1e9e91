//! `sigil-agent` verbs, named and flagged like `spire-agent`'s so existing scripts keep working:
//!
//! ```text
//! sigil-agent run [-config FILE] [-joinToken T] ...
//! sigil-agent api fetch x509 [-write DIR] [-silent]
//! sigil-agent api fetch jwt -audience A[,B] [-spiffeID ID]
//! sigil-agent api fetch jwt bundle        (also: api fetch jwtbundle)
//! sigil-agent api validate jwt -audience A -svid TOKEN
//! sigil-agent api watch
//! sigil-agent healthcheck [-shallow] [-verbose]
//! sigil-agent validate -config FILE
//! ```
//!
//! Every `api` verb and `healthcheck` takes `-socketPath` (and `-timeout`); fetch verbs take
//! `-output json`. Failures print one line on stderr and exit with status 1.
//!
//! This file holds the dispatch (usage, verb lookup, flag parsing, `-output`, `-timeout`, exit
//! status) and the Workload API client every verb uses; `run` (with `validate`), `api`,
//! `healthcheck` and `format` (Go-style durations and times) hold the rest.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use sigil_flags::{FlagError, FlagSet, Parsed};
use sigil_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tonic::transport::{Channel, Endpoint};

use crate::workload::api::SECURITY_HEADER;

mod api;
mod format;
mod healthcheck;
mod run;

use format::parse_go_duration;
pub use format::{go_duration, go_time};

const USAGE: &str = "Usage: sigil-agent <command> [flags]

Commands:
    run                   Runs the agent
    api fetch x509        Fetches X509-SVIDs from the Workload API
    api fetch jwt         Fetches JWT-SVIDs (-audience required)
    api fetch jwt bundle  Fetches JWT bundles (also: api fetch jwtbundle)
    api validate jwt      Validates a JWT-SVID
    api watch             Watches X509-SVID updates
    healthcheck           Determines agent health status
    validate              Validates an agent configuration file
";

/// A CLI failure: printed as `Error: <message>` (or verbatim for some), exit status 1.
#[derive(Debug)]
enum CliError {
    /// Bad command line: the message, then the command's usage.
    Usage(String, String),
    /// Printed as `Error: <message>`.
    Failed(String),
    /// Printed as is (commands with SPIRE-specific failure lines).
    Raw(String),
    /// `-h`/`-help`: usage on stdout, exit 0.
    Help(String),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(m, _) | Self::Failed(m) | Self::Raw(m) | Self::Help(m) => f.write_str(m),
        }
    }
}

impl From<FlagError> for CliError {
    fn from(e: FlagError) -> Self {
        Self::Usage(e.to_string(), String::new())
    }
}

/// The output format of fetch verbs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Pretty,
    Json,
}

/// Runs the CLI with `args` (without the program name); returns the exit status.
pub fn cli_main(args: Vec<String>) -> i32 {
    let result = dispatch(&args);
    match result {
        Ok(()) => 0,
        Err(CliError::Usage(msg, usage)) => {
            if !msg.is_empty() {
                eprintln!("Error: {msg}");
            }
            if !usage.is_empty() {
                eprint!("{usage}");
            }
            1
        }
        Err(CliError::Failed(msg)) => {
            eprintln!("Error: {msg}");
            1
        }
        Err(CliError::Raw(msg)) => {
            eprintln!("{msg}");
            1
        }
        Err(CliError::Help(usage)) => {
            print!("{usage}");
            0
        }
    }
}

fn dispatch(args: &[String]) -> Result<(), CliError> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        [] => Err(CliError::Usage(String::new(), USAGE.into())),
        ["-h" | "--help" | "-help" | "help", ..] => {
            print!("{USAGE}");
            Ok(())
        }
        ["run", rest @ ..] => run::run_cmd(rest),
        ["validate", rest @ ..] => run::validate_cmd(rest),
        ["healthcheck", rest @ ..] => healthcheck::healthcheck_cmd(rest),
        ["api", "fetch", "x509", rest @ ..] => api::fetch_x509_cmd(rest),
        ["api", "fetch", "jwtbundle" | "jwt_bundle", rest @ ..] => api::fetch_jwt_bundle_cmd(rest),
        ["api", "fetch", "jwt", "bundle", rest @ ..] => api::fetch_jwt_bundle_cmd(rest),
        ["api", "fetch", "jwt", rest @ ..] => api::fetch_jwt_cmd(rest),
        ["api", "fetch", other, ..] => Err(unknown(&format!("api fetch {other}"))),
        ["api", "fetch"] => Err(CliError::Usage(
            "api fetch needs a subcommand: x509, jwt, jwt bundle".into(),
            USAGE.into(),
        )),
        ["api", "validate", "jwt", rest @ ..] => api::validate_jwt_cmd(rest),
        ["api", "validate", ..] => Err(CliError::Usage(
            "api validate needs a subcommand: jwt".into(),
            USAGE.into(),
        )),
        ["api", "watch", rest @ ..] => api::watch_cmd(rest),
        ["api", other, ..] => Err(unknown(&format!("api {other}"))),
        ["api"] => Err(CliError::Usage(
            "api needs a subcommand: fetch, validate, watch".into(),
            USAGE.into(),
        )),
        [other, ..] => Err(unknown(other)),
    }
}

fn unknown(cmd: &str) -> CliError {
    CliError::Usage(format!("unknown command {cmd:?}"), USAGE.into())
}

/// Parses flags, attaching the command's usage to errors.
fn parse(set: &FlagSet, args: &[&str], name: &str) -> Result<Parsed, CliError> {
    let usage = || format!("Usage of {name}:\n{}", set.usage());
    if args
        .iter()
        .take_while(|a| **a != "--")
        .any(|a| matches!(*a, "-h" | "-help" | "--help"))
    {
        return Err(CliError::Help(usage()));
    }
    let parsed = set
        .parse(args.iter().copied())
        .map_err(|e| CliError::Usage(e.to_string(), usage()))?;
    parsed
        .no_args()
        .map_err(|e| CliError::Usage(e.to_string(), usage()))?;
    Ok(parsed)
}

fn api_flags() -> FlagSet {
    FlagSet::new()
        .value(
            "socketPath",
            "Path to the Workload API socket (default /tmp/sigil-agent/public/api.sock)",
        )
        .value("timeout", "Time to wait for a response (default 5s)")
}

fn output_flag(set: FlagSet) -> FlagSet {
    set.value(
        "output",
        "Desired output format (pretty, json; default: pretty)",
    )
}

fn output_of(p: &Parsed) -> Result<Output, CliError> {
    match p.get("output").unwrap_or("pretty") {
        "pretty" | "" => Ok(Output::Pretty),
        "json" => Ok(Output::Json),
        other => Err(CliError::Failed(format!(
            "invalid output format {other:?}: expected pretty or json"
        ))),
    }
}

fn timeout_of(p: &Parsed) -> Result<Duration, CliError> {
    match p.get("timeout") {
        None => Ok(Duration::from_secs(5)),
        Some(s) => {
            parse_go_duration(s).map_err(|e| CliError::Failed(format!("invalid -timeout: {e}")))
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("starting the runtime: {e}")))
}

// === Workload API client ===

/// A Workload API client over the Unix socket. Every request carries the security header.
struct Client {
    inner: SpiffeWorkloadApiClient<Channel>,
    socket: PathBuf,
}

impl Client {
    async fn connect(socket: &str, timeout: Duration) -> Result<Self, CliError> {
        let path = PathBuf::from(socket.strip_prefix("unix://").unwrap_or(socket));
        let p = path.clone();
        let connector = tower::service_fn(move |_: tonic::codegen::http::Uri| {
            let p = p.clone();
            async move {
                let s = tokio::net::UnixStream::connect(p).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        });
        // The authority is irrelevant on a Unix socket; the scheme keeps tonic off TLS.
        let channel = Endpoint::from_static("http://localhost")
            .connect_timeout(timeout)
            .connect_with_connector(connector)
            .await
            .map_err(|e| {
                CliError::Failed(format!(
                    "unable to connect to the Workload API at {}: {}",
                    path.display(),
                    crate::error_chain(&e)
                ))
            })?;
        Ok(Self {
            inner: SpiffeWorkloadApiClient::new(channel),
            socket: path,
        })
    }

    fn request<T>(msg: T, timeout: Option<Duration>) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut().insert(
            SECURITY_HEADER,
            tonic::metadata::MetadataValue::from_static("true"),
        );
        if let Some(t) = timeout {
            req.set_timeout(t);
        }
        req
    }
}

/// gRPC errors the way Go's grpc prints them, as SPIRE's CLI shows.
fn rpc_error(s: &tonic::Status) -> CliError {
    CliError::Failed(format!(
        "rpc error: code = {:?} desc = {}",
        s.code(),
        s.message()
    ))
}

async fn with_timeout<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, CliError>>,
) -> Result<T, CliError> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| CliError::Failed(format!("timed out after {}", go_duration(timeout))))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_command_lines_fail_cleanly() {
        let run = |args: &[&str]| dispatch(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(matches!(run(&[]), Err(CliError::Usage(..))));
        assert!(matches!(run(&["bogus"]), Err(CliError::Usage(m, _)) if m.contains("bogus")));
        assert!(
            matches!(run(&["api", "fetch", "x509", "-nope"]), Err(CliError::Usage(m, _)) if m.contains("-nope"))
        );
        assert!(
            matches!(run(&["api", "fetch", "jwt"]), Err(CliError::Failed(m)) if m == "audience must be specified")
        );
        assert!(
            matches!(run(&["api", "validate", "jwt", "-svid", "x"]), Err(CliError::Failed(m)) if m == "audience must be specified")
        );
        assert!(
            matches!(run(&["api", "fetch", "x509", "-socketPath", "/nonexistent/sock"]), Err(CliError::Failed(m)) if m.contains("unable to connect"))
        );
        assert!(
            matches!(run(&["healthcheck", "-socketPath", "/nonexistent/sock"]), Err(CliError::Raw(m)) if m.starts_with("Agent is unhealthy"))
        );
        assert!(
            matches!(run(&["api", "validate", "jwt", "-audience", "a"]), Err(CliError::Failed(m)) if m == "svid must be specified")
        );
        assert!(
            matches!(run(&["api", "fetch", "jwt", "-audience", "a", "-spiffeID", "not-an-id"]), Err(CliError::Failed(m)) if m.contains("not-an-id"))
        );
        assert_eq!(cli_main(vec!["api".into(), "frobnicate".into()]), 1);
    }
}
