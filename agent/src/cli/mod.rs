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

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sigil_flags::{FlagError, FlagSet, Parsed};
use sigil_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use sigil_proto::workload::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, X509BundlesRequest, X509svidRequest,
    X509svidResponse,
};
use tonic::transport::{Channel, Endpoint};

use crate::config::{Config, DEFAULT_SOCKET_PATH};
use crate::svid;
use crate::workload::api::SECURITY_HEADER;

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
        ["run", rest @ ..] => run_cmd(rest),
        ["validate", rest @ ..] => validate_cmd(rest),
        ["healthcheck", rest @ ..] => healthcheck_cmd(rest),
        ["api", "fetch", "x509", rest @ ..] => fetch_x509_cmd(rest),
        ["api", "fetch", "jwtbundle" | "jwt_bundle", rest @ ..] => fetch_jwt_bundle_cmd(rest),
        ["api", "fetch", "jwt", "bundle", rest @ ..] => fetch_jwt_bundle_cmd(rest),
        ["api", "fetch", "jwt", rest @ ..] => fetch_jwt_cmd(rest),
        ["api", "fetch", other, ..] => Err(unknown(&format!("api fetch {other}"))),
        ["api", "fetch"] => Err(CliError::Usage(
            "api fetch needs a subcommand: x509, jwt, jwt bundle".into(),
            USAGE.into(),
        )),
        ["api", "validate", "jwt", rest @ ..] => validate_jwt_cmd(rest),
        ["api", "validate", ..] => Err(CliError::Usage(
            "api validate needs a subcommand: jwt".into(),
            USAGE.into(),
        )),
        ["api", "watch", rest @ ..] => watch_cmd(rest),
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

// === run / validate ===

fn run_cmd(args: &[&str]) -> Result<(), CliError> {
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

fn validate_cmd(args: &[&str]) -> Result<(), CliError> {
    let set = Config::flag_set();
    let flags = parse(&set, args, "validate")?;
    Config::from_flags(&flags).map_err(|e| CliError::Failed(e.to_string()))?;
    println!("Sigil agent configuration file is valid.");
    Ok(())
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

// === api fetch x509 ===

fn fetch_x509_cmd(args: &[&str]) -> Result<(), CliError> {
    let set = output_flag(api_flags())
        .value("write", "Write SVID data to the specified path (optional)")
        .bool("silent", "Suppress stdout");
    let p = parse(&set, args, "api fetch x509")?;
    let output = output_of(&p)?;
    let timeout = timeout_of(&p)?;
    let socket = p
        .get("socketPath")
        .unwrap_or(DEFAULT_SOCKET_PATH)
        .to_string();
    runtime()?.block_on(async {
        let start = Instant::now();
        let resp = with_timeout(timeout, async {
            let mut c = Client::connect(&socket, timeout).await?;
            let mut stream = c
                .inner
                .fetch_x509svid(Client::request(X509svidRequest {}, None))
                .await
                .map_err(|s| rpc_error(&s))?
                .into_inner();
            stream
                .message()
                .await
                .map_err(|s| rpc_error(&s))?
                .ok_or_else(|| CliError::Failed("the Workload API closed the stream".into()))
        })
        .await?;
        let elapsed = start.elapsed();
        let svids = parse_x509_response(&resp)?;
        if !p.flag("silent") {
            match output {
                Output::Pretty => print!("{}", format_x509(&svids, elapsed)),
                Output::Json => println!("{}", x509_json(&resp)),
            }
        }
        if let Some(dir) = p.get("write") {
            write_x509(Path::new(dir), &svids, p.flag("silent"))?;
        }
        Ok(())
    })
}

/// One SVID of a response, parsed for printing and writing.
struct ParsedSvid {
    spiffe_id: String,
    hint: String,
    chain: Vec<Vec<u8>>,
    key: Vec<u8>,
    bundle: Vec<Vec<u8>>,
    /// Trust domain ID → certificates.
    federated: BTreeMap<String, Vec<Vec<u8>>>,
}

fn parse_x509_response(resp: &X509svidResponse) -> Result<Vec<ParsedSvid>, CliError> {
    let bad = |what: &str, e: svid::SvidError| {
        CliError::Failed(format!("invalid {what} in response: {e}"))
    };
    let mut federated = BTreeMap::new();
    for (td, der) in &resp.federated_bundles {
        federated.insert(
            td.clone(),
            svid::split_der_certs(der).map_err(|e| bad("federated bundle", e))?,
        );
    }
    resp.svids
        .iter()
        .map(|s| {
            Ok(ParsedSvid {
                spiffe_id: s.spiffe_id.clone(),
                hint: s.hint.clone(),
                chain: svid::split_der_certs(&s.x509_svid).map_err(|e| bad("SVID", e))?,
                key: s.x509_svid_key.clone(),
                bundle: svid::split_der_certs(&s.bundle).map_err(|e| bad("bundle", e))?,
                federated: federated.clone(),
            })
        })
        .collect()
}

fn format_x509(svids: &[ParsedSvid], elapsed: Duration) -> String {
    let mut out = format!(
        "Received {} svid after {}\n\n",
        svids.len(),
        go_duration(elapsed)
    );
    for s in svids {
        out.push_str(&format_svid(s));
    }
    out
}

/// One SVID as `spire-agent api fetch x509` prints it.
fn format_svid(s: &ParsedSvid) -> String {
    let mut out = format!("SPIFFE ID:\t\t{}\n", s.spiffe_id);
    if !s.hint.is_empty() {
        out.push_str(&format!("Hint:\t\t\t{}\n", s.hint));
    }
    let window = |der: &[u8]| svid::validity(der).ok();
    if let Some((nb, na)) = s.chain.first().and_then(|c| window(c)) {
        out.push_str(&format!("SVID Valid After:\t{}\n", go_time(nb)));
        out.push_str(&format!("SVID Valid Until:\t{}\n", go_time(na)));
    }
    for (i, cert) in s.chain.iter().skip(1).enumerate() {
        if let Some((nb, na)) = window(cert) {
            out.push_str(&format!(
                "Intermediate #{} Valid After:\t{}\n",
                i + 1,
                go_time(nb)
            ));
            out.push_str(&format!(
                "Intermediate #{} Valid Until:\t{}\n",
                i + 1,
                go_time(na)
            ));
        }
    }
    for (i, cert) in s.bundle.iter().enumerate() {
        if let Some((nb, na)) = window(cert) {
            out.push_str(&format!("CA #{} Valid After:\t{}\n", i + 1, go_time(nb)));
            out.push_str(&format!("CA #{} Valid Until:\t{}\n", i + 1, go_time(na)));
        }
    }
    for (td, certs) in &s.federated {
        for (i, cert) in certs.iter().enumerate() {
            if let Some((nb, na)) = window(cert) {
                out.push_str(&format!(
                    "[{td}] CA #{} Valid After:\t{}\n",
                    i + 1,
                    go_time(nb)
                ));
                out.push_str(&format!(
                    "[{td}] CA #{} Valid Until:\t{}\n",
                    i + 1,
                    go_time(na)
                ));
            }
        }
    }
    out.push('\n');
    out
}

fn x509_json(resp: &X509svidResponse) -> serde_json::Value {
    let svids: Vec<_> = resp
        .svids
        .iter()
        .map(|s| {
            serde_json::json!({
                "spiffe_id": s.spiffe_id,
                "hint": s.hint,
                "x509_svid": B64.encode(&s.x509_svid),
                "x509_svid_key": B64.encode(&s.x509_svid_key),
                "bundle": B64.encode(&s.bundle),
            })
        })
        .collect();
    let federated: BTreeMap<_, _> = resp
        .federated_bundles
        .iter()
        .map(|(k, v)| (k.clone(), B64.encode(v)))
        .collect();
    serde_json::json!({ "svids": svids, "federated_bundles": federated })
}

/// `-write DIR`: svid.N.pem, svid.N.key (0600), bundle.N.pem, federated_bundle.N.M.pem.
fn write_x509(dir: &Path, svids: &[ParsedSvid], silent: bool) -> Result<(), CliError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::Failed(format!("creating {}: {e}", dir.display())))?;
    let write = |path: &Path, data: &[u8], mode: u32| {
        crate::node::storage::write_atomic(path, data, mode)
            .map_err(|e| CliError::Failed(format!("writing {e}")))
    };
    let say = |msg: String| {
        if !silent {
            println!("{msg}");
        }
    };
    for (i, s) in svids.iter().enumerate() {
        let svid_path = dir.join(format!("svid.{i}.pem"));
        let key_path = dir.join(format!("svid.{i}.key"));
        let bundle_path = dir.join(format!("bundle.{i}.pem"));
        say(format!(
            "Writing SVID #{i} to file {}.",
            svid_path.display()
        ));
        write(&svid_path, svid::certs_to_pem(&s.chain).as_bytes(), 0o644)?;
        say(format!("Writing key #{i} to file {}.", key_path.display()));
        let key_pem = crate::keys::PrivateKeyDer::new(s.key.clone()).to_pem();
        write(&key_path, key_pem.as_bytes(), 0o600)?;
        say(format!(
            "Writing bundle #{i} to file {}.",
            bundle_path.display()
        ));
        write(
            &bundle_path,
            svid::certs_to_pem(&s.bundle).as_bytes(),
            0o644,
        )?;
        for (j, (td, certs)) in s.federated.iter().enumerate() {
            let path = dir.join(format!("federated_bundle.{i}.{j}.pem"));
            say(format!(
                "Writing federated bundle #{j} for trust domain {td} to file {}.",
                path.display()
            ));
            write(&path, svid::certs_to_pem(certs).as_bytes(), 0o644)?;
        }
    }
    Ok(())
}

// === api fetch jwt ===

fn fetch_jwt_cmd(args: &[&str]) -> Result<(), CliError> {
    let set = output_flag(api_flags())
        .value("audience", "comma separated list of audience values")
        .value("spiffeID", "SPIFFE ID subject (optional)");
    let p = parse(&set, args, "api fetch jwt")?;
    let output = output_of(&p)?;
    let timeout = timeout_of(&p)?;
    let audience: Vec<String> = p
        .get("audience")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect();
    if audience.is_empty() {
        return Err(CliError::Failed("audience must be specified".into()));
    }
    let socket = p
        .get("socketPath")
        .unwrap_or(DEFAULT_SOCKET_PATH)
        .to_string();
    let spiffe_id = p.get("spiffeID").unwrap_or("").to_string();
    if !spiffe_id.is_empty() {
        spiffe_id.parse::<sigil_spiffe::SpiffeId>().map_err(|e| {
            CliError::Failed(format!("invalid SPIFFE ID {spiffe_id:?} (-spiffeID): {e}"))
        })?;
    }
    runtime()?.block_on(async {
        let (svids, bundles) = with_timeout(timeout, async {
            let mut c = Client::connect(&socket, timeout).await?;
            let svids = c
                .inner
                .fetch_jwtsvid(Client::request(
                    JwtsvidRequest {
                        audience,
                        spiffe_id,
                    },
                    Some(timeout),
                ))
                .await
                .map_err(|s| rpc_error(&s))?
                .into_inner();
            let bundles = first_jwt_bundles(&mut c).await?;
            Ok((svids, bundles))
        })
        .await?;
        match output {
            Output::Pretty => {
                for s in &svids.svids {
                    println!("token({}):\n\t{}", s.spiffe_id, s.svid);
                    if !s.hint.is_empty() {
                        println!("hint({}):\n\t{}", s.spiffe_id, s.hint);
                    }
                }
                for (td, jwks) in &bundles {
                    println!("bundle({td}):\n\t{}", String::from_utf8_lossy(jwks));
                }
            }
            Output::Json => {
                let svids: Vec<_> = svids
                    .svids
                    .iter()
                    .map(|s| serde_json::json!({"spiffe_id": s.spiffe_id, "svid": s.svid, "hint": s.hint}))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!([{ "svids": svids }, { "bundles": jwks_json(&bundles) }])
                );
            }
        }
        Ok(())
    })
}

async fn first_jwt_bundles(c: &mut Client) -> Result<BTreeMap<String, Vec<u8>>, CliError> {
    let mut stream = c
        .inner
        .fetch_jwt_bundles(Client::request(JwtBundlesRequest {}, None))
        .await
        .map_err(|s| rpc_error(&s))?
        .into_inner();
    let resp = stream
        .message()
        .await
        .map_err(|s| rpc_error(&s))?
        .ok_or_else(|| CliError::Failed("the Workload API closed the stream".into()))?;
    Ok(resp.bundles.into_iter().collect())
}

fn jwks_json(bundles: &BTreeMap<String, Vec<u8>>) -> serde_json::Value {
    serde_json::Value::Object(
        bundles
            .iter()
            .map(|(td, jwks)| {
                let v = serde_json::from_slice(jwks).unwrap_or_else(|_| {
                    serde_json::Value::String(String::from_utf8_lossy(jwks).into())
                });
                (td.clone(), v)
            })
            .collect(),
    )
}

fn fetch_jwt_bundle_cmd(args: &[&str]) -> Result<(), CliError> {
    let set = output_flag(api_flags());
    let p = parse(&set, args, "api fetch jwt bundle")?;
    let output = output_of(&p)?;
    let timeout = timeout_of(&p)?;
    let socket = p
        .get("socketPath")
        .unwrap_or(DEFAULT_SOCKET_PATH)
        .to_string();
    runtime()?.block_on(async {
        let bundles = with_timeout(timeout, async {
            let mut c = Client::connect(&socket, timeout).await?;
            first_jwt_bundles(&mut c).await
        })
        .await?;
        match output {
            Output::Pretty => {
                for (td, jwks) in &bundles {
                    println!("bundle({td}):\n\t{}", String::from_utf8_lossy(jwks));
                }
            }
            Output::Json => println!("{}", serde_json::json!({ "bundles": jwks_json(&bundles) })),
        }
        Ok(())
    })
}

// === api validate jwt ===

fn validate_jwt_cmd(args: &[&str]) -> Result<(), CliError> {
    let set = output_flag(api_flags())
        .value("audience", "expected audience value")
        .value("svid", "JWT SVID");
    let p = parse(&set, args, "api validate jwt")?;
    let output = output_of(&p)?;
    let timeout = timeout_of(&p)?;
    let audience = p.get("audience").unwrap_or("").to_string();
    if audience.is_empty() {
        return Err(CliError::Failed("audience must be specified".into()));
    }
    let token = p.get("svid").unwrap_or("").to_string();
    if token.is_empty() {
        return Err(CliError::Failed("svid must be specified".into()));
    }
    let socket = p
        .get("socketPath")
        .unwrap_or(DEFAULT_SOCKET_PATH)
        .to_string();
    runtime()?.block_on(async {
        let resp = with_timeout(timeout, async {
            let mut c = Client::connect(&socket, timeout).await?;
            c.inner
                .validate_jwtsvid(Client::request(
                    ValidateJwtsvidRequest {
                        audience,
                        svid: token,
                    },
                    Some(timeout),
                ))
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| match s.code() {
                    tonic::Code::InvalidArgument => {
                        CliError::Raw(format!("SVID is not valid: {}", s.message()))
                    }
                    _ => rpc_error(&s),
                })
        })
        .await?;
        let claims = resp
            .claims
            .map(struct_to_json)
            .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
        match output {
            Output::Pretty => {
                println!("SVID is valid.");
                println!("SPIFFE ID : {}", resp.spiffe_id);
                println!("Claims    : {claims}");
            }
            Output::Json => println!(
                "{}",
                serde_json::json!({ "spiffe_id": resp.spiffe_id, "claims": claims })
            ),
        }
        Ok(())
    })
}

/// A protobuf `Struct` as JSON; whole numbers print without a fraction, as Go's protojson does.
fn struct_to_json(s: prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .into_iter()
            .map(|(k, v)| (k, value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => b.into(),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => (n as i64).into(),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Some(Kind::StringValue(s)) => s.into(),
        Some(Kind::ListValue(l)) => l.values.into_iter().map(value_to_json).collect(),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

// === api watch ===

fn watch_cmd(args: &[&str]) -> Result<(), CliError> {
    let set = FlagSet::new().value(
        "socketPath",
        "Path to the Workload API socket (default /tmp/sigil-agent/public/api.sock)",
    );
    let p = parse(&set, args, "api watch")?;
    let socket = p
        .get("socketPath")
        .unwrap_or(DEFAULT_SOCKET_PATH)
        .to_string();
    runtime()?.block_on(async {
        let watch = async {
            loop {
                match watch_once(&socket).await {
                    Ok(()) => eprintln!("Workload API stream closed; reconnecting"),
                    Err(e) => eprintln!("Error: {e}; retrying"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        tokio::select! {
            _ = watch => Ok(()),
            _ = crate::shutdown_signal() => Ok(()),
        }
    })
}

async fn watch_once(socket: &str) -> Result<(), CliError> {
    let mut c = Client::connect(socket, Duration::from_secs(5)).await?;
    let mut start = Instant::now();
    let mut stream = c
        .inner
        .fetch_x509svid(Client::request(X509svidRequest {}, None))
        .await
        .map_err(|s| rpc_error(&s))?
        .into_inner();
    while let Some(resp) = stream.message().await.map_err(|s| rpc_error(&s))? {
        let svids = parse_x509_response(&resp)?;
        print!("{}", format_x509(&svids, start.elapsed()));
        let _ = std::io::stdout().flush();
        start = Instant::now();
    }
    Ok(())
}

// === healthcheck ===

fn healthcheck_cmd(args: &[&str]) -> Result<(), CliError> {
    let set = api_flags()
        .bool("shallow", "Perform a less stringent health check")
        .bool("verbose", "Print verbose information");
    let p = parse(&set, args, "healthcheck")?;
    let timeout = timeout_of(&p)?;
    let socket = p
        .get("socketPath")
        .unwrap_or(DEFAULT_SOCKET_PATH)
        .to_string();
    let verbose = p.flag("verbose");
    let shallow = p.flag("shallow");
    let result = runtime()?.block_on(async {
        if verbose {
            println!("Checking agent health...");
        }
        let mut c = Client::connect(&socket, timeout)
            .await
            .map_err(|e| e.to_string())?;
        if shallow {
            return Ok(None);
        }
        if verbose {
            println!(
                "Connected to {}; calling FetchX509Bundles",
                c.socket.display()
            );
        }
        // The agent names its workload attestation tier in a response header.
        let tier = |md: &tonic::metadata::MetadataMap| {
            md.get(crate::workload::TIER_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let call = async {
            let response = c
                .inner
                .fetch_x509_bundles(Client::request(X509BundlesRequest {}, None))
                .await?;
            let t = tier(response.metadata());
            let mut stream = response.into_inner();
            stream.message().await.map(|_| t)
        };
        match tokio::time::timeout(timeout, call).await {
            Err(_) => Err("timed out waiting for the Workload API".to_string()),
            Ok(Ok(t)) => Ok(t),
            // The agent answered; it just has nothing for this caller.
            Ok(Err(s)) if matches!(s.code(), tonic::Code::PermissionDenied) => {
                Ok(tier(s.metadata()))
            }
            Ok(Err(s)) => Err(format!(
                "Workload API returned {:?}: {}",
                s.code(),
                s.message()
            )),
        }
    });
    match result {
        Ok(tier) => {
            println!("Agent is healthy.");
            if let Some(tier) = tier {
                println!("Workload attestation tier: {tier}");
            }
            Ok(())
        }
        Err(reason) => Err(CliError::Raw(format!("Agent is unhealthy: {reason}"))),
    }
}

// === formatting ===

/// Go's `time.Duration.String()`: `1.234567ms`, `2.5s`, `1m30s`.
pub fn go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    fn frac(v: u128, unit: u128, digits: usize) -> String {
        let (int, rem) = (v / unit, v % unit);
        if rem == 0 {
            int.to_string()
        } else {
            let s = format!("{int}.{rem:0digits$}");
            s.trim_end_matches('0').to_string()
        }
    }
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{}µs", frac(ns, 1_000, 3))
    } else if ns < 1_000_000_000 {
        format!("{}ms", frac(ns, 1_000_000, 6))
    } else {
        let h = ns / 3_600_000_000_000;
        let m = (ns / 60_000_000_000) % 60;
        let s = ns % 60_000_000_000;
        let mut out = String::new();
        if h > 0 {
            out.push_str(&format!("{h}h"));
        }
        if h > 0 || m > 0 {
            out.push_str(&format!("{m}m"));
        }
        out.push_str(&format!("{}s", frac(s, 1_000_000_000, 9)));
        out
    }
}

/// Parses Go durations with sub-second units too (`500ms`, `1.5s`, `2m`).
fn parse_go_duration(s: &str) -> Result<Duration, String> {
    if let Some(ms) = s.strip_suffix("ms") {
        return ms
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(|v| Duration::from_secs_f64(v / 1000.0))
            .ok_or_else(|| format!("invalid duration {s:?}"));
    }
    if let Some(secs) = s.strip_suffix('s')
        && let Ok(v) = secs.parse::<f64>()
        && v.is_finite()
        && v >= 0.0
    {
        return Ok(Duration::from_secs_f64(v));
    }
    sigil_flags::parse_duration_secs(s).map(Duration::from_secs)
}

/// Go's default `time.Time` formatting in UTC: `2018-01-10 19:37:24 +0000 UTC`. A time
/// outside what `time` represents (years beyond ±9999) is printed as its Unix seconds.
pub fn go_time(unix: i64) -> String {
    const GO_UTC: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second] +0000 UTC"
    );
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(GO_UTC).ok())
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_nanos(500)), "500ns");
        assert_eq!(go_duration(Duration::from_micros(1500)), "1.5ms");
        assert_eq!(go_duration(Duration::from_nanos(8_374_291)), "8.374291ms");
        assert_eq!(go_duration(Duration::from_nanos(1_200)), "1.2µs");
        assert_eq!(go_duration(Duration::from_millis(2500)), "2.5s");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(
            parse_go_duration("500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            parse_go_duration("1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_go_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_go_duration("soon").is_err());
    }

    #[test]
    fn go_times() {
        assert_eq!(go_time(0), "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(go_time(1_515_613_044), "2018-01-10 19:37:24 +0000 UTC");
        assert_eq!(go_time(951_782_400), "2000-02-29 00:00:00 +0000 UTC");
    }

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

    #[test]
    fn struct_json_round_trip() {
        let claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"aud":["a"],"exp":1700000000,"sub":"spiffe://td/x","f":1.5}"#)
                .unwrap();
        let json = struct_to_json(crate::workload::api::claims_to_struct(claims));
        assert_eq!(
            json.to_string(),
            r#"{"aud":["a"],"exp":1700000000,"f":1.5,"sub":"spiffe://td/x"}"#
        );
    }
}
