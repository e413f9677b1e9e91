//! The `sigil-server` command line, with spire-server's verbs, flag names and output shapes so
//! existing scripts keep working. Every failure prints `Error: <reason>` on stderr and exits 1.

use crate::config::{DEFAULT_SOCKET_PATH, LogFormat, Overrides, ServerConfig};
use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use serde_json::{Value, json};
use sigil_flags::{FlagSet, Parsed};
use sigil_proto::admin as pb;
use sigil_proto::admin::admin_client::AdminClient;
use sigil_proto::types;
use std::io::Read;
use tonic::transport::Channel;

const USAGE: &str = "Usage: sigil-server <command> [flags]

Commands:
  run                 Runs the server
  entry create|show|update|delete|count
  token generate      Generates a join token
  bundle show|list|set|delete
  agent list|show|evict|ban
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
        [group @ ("entry" | "token" | "bundle" | "agent"), verb, ..] if !verb.starts_with('-') => {
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

fn flags_for(cmd: &str) -> Option<FlagSet> {
    let entry_fields = |fs: FlagSet| {
        fs.value("spiffeID", "The SPIFFE ID that this record represents")
            .value("parentID", "The SPIFFE ID of this record's parent")
            .multi("selector", "A colon-delimited type:value selector. Can be used more than once")
            .multi("dns", "A DNS name that will be included in SVIDs for this entry. Can be used more than once")
            .value("x509SVIDTTL", "The lifetime, in seconds, for x509-SVIDs issued based on this registration entry")
            .value("jwtSVIDTTL", "The lifetime, in seconds, for JWT-SVIDs issued based on this registration entry")
            .multi("federatesWith", "SPIFFE ID of a trust domain to federate with. Can be used more than once")
            .bool("admin", "If set, the SPIFFE ID in this entry will be granted access to the Server APIs")
            .bool("downstream", "A boolean value that, when set, indicates that the entry describes a downstream SPIRE server")
            .value("hint", "The entry hint, used to disambiguate entries with the same SPIFFE ID")
            .value("entryID", "A custom ID for this registration entry (optional)")
            .value("data", "Path to a file containing registration JSON (optional). If set to '-', read the JSON from stdin.")
    };
    Some(match cmd {
        "run" => FlagSet::new()
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
            ),
        "healthcheck" => socket_flag(FlagSet::new())
            .bool("shallow", "Perform a less stringent health check")
            .bool("verbose", "Print verbose information"),
        "entry create" => socket_flag(entry_fields(FlagSet::new())),
        "entry update" => socket_flag(entry_fields(FlagSet::new())),
        "entry show" => socket_flag(FlagSet::new())
            .value("entryID", "The Entry ID of the records to show")
            .value("spiffeID", "The SPIFFE ID of the records to show")
            .value("parentID", "The Parent ID of the records to show")
            .multi(
                "selector",
                "A colon-delimited type:value selector. Can be used more than once",
            )
            .value(
                "matchSelectorsOn",
                "The match mode used when filtering by selectors (exact, subset, superset, any)",
            )
            .multi(
                "federatesWith",
                "SPIFFE ID of a trust domain an entry is federate with",
            )
            .value("hint", "The Hint of the records to show"),
        "entry delete" => socket_flag(FlagSet::new())
            .value(
                "entryID",
                "The Registration Entry ID of the record to delete",
            )
            .value(
                "file",
                "Path to a file containing a JSON structure for batch deletion",
            ),
        "entry count" => socket_flag(FlagSet::new()),
        "token generate" => socket_flag(FlagSet::new())
            .value(
                "spiffeID",
                "Additional SPIFFE ID to assign the token owner (optional)",
            )
            .value("ttl", "Token TTL in seconds (default 600)"),
        "bundle show" => socket_flag(FlagSet::new())
            .value("format", "The format to show the bundle (pem, spiffe)"),
        "bundle list" => socket_flag(FlagSet::new())
            .value("id", "The trust domain SPIFFE ID of the bundle to show")
            .value(
                "format",
                "The format to list federated bundles (pem, spiffe)",
            ),
        "bundle set" => socket_flag(FlagSet::new())
            .value("id", "SPIFFE ID of the trust domain")
            .value("path", "Path to the bundle data (default: stdin)")
            .value("format", "The format of the bundle data (pem, spiffe)"),
        "bundle delete" => socket_flag(FlagSet::new())
            .value("id", "SPIFFE ID of the trust domain")
            .value(
                "mode",
                "Deletion mode: restrict (only restrict is supported)",
            ),
        "agent list" => socket_flag(FlagSet::new()),
        "agent show" | "agent evict" | "agent ban" => {
            socket_flag(FlagSet::new()).value("spiffeID", "The SPIFFE ID of the agent")
        }
        _ => return None,
    })
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
        return run_cmd(&p).await;
    }
    let socket = p
        .get("socketPath")
        .unwrap_or(DEFAULT_SOCKET_PATH)
        .to_string();
    let out = Out { json: json_out };
    if cmd == "healthcheck" {
        return Ok(match connect(&socket).await {
            Ok(mut c) => match c.get_bundle(pb::GetBundleRequest {}).await {
                Ok(_) => {
                    println!("Server is healthy.");
                    0
                }
                Err(e) => {
                    eprintln!("Server is unhealthy: {}", e.message());
                    1
                }
            },
            Err(e) => {
                eprintln!("Server is unhealthy: unable to determine health: {e:#}");
                1
            }
        });
    }
    // Commands validate their inputs before dialing, so typos fail with the real reason even
    // when the server is down.
    let client = || async { connect(&socket).await };
    match cmd {
        "entry create" => entry_create(&socket, &p, out).await,
        "entry update" => entry_update(&socket, &p, out).await,
        "entry show" => entry_show(&socket, &p, out).await,
        "entry delete" => entry_delete(&socket, &p, out).await,
        "entry count" => {
            let n = client()
                .await?
                .count_entries(pb::CountEntriesRequest {})
                .await?
                .into_inner()
                .count;
            out.print(json!({"count": n}), || match n {
                1 => "1 registration entry".to_string(),
                n => format!("{n} registration entries"),
            });
            Ok(0)
        }
        "token generate" => {
            let ttl = p.parse_opt::<i32>("ttl")?.unwrap_or(600);
            if ttl <= 0 {
                bail!("invalid -ttl {ttl}: must be a positive number of seconds");
            }
            let spiffe_id = p.get("spiffeID").unwrap_or_default().to_string();
            if !spiffe_id.is_empty() {
                spiffe_id
                    .parse::<sigil_spiffe::SpiffeId>()
                    .map_err(|e| anyhow!("invalid -spiffeID {spiffe_id:?}: {e}"))?;
            }
            let t = client()
                .await?
                .create_join_token(pb::CreateJoinTokenRequest { ttl, spiffe_id })
                .await?
                .into_inner();
            out.print(
                json!({"value": t.value, "expires_at": t.expires_at}),
                || format!("Token: {}", t.value),
            );
            Ok(0)
        }
        "bundle show" => {
            let format = bundle_format(&p)?;
            let b = client()
                .await?
                .get_bundle(pb::GetBundleRequest {})
                .await?
                .into_inner();
            let b = bundle_from_proto(&b)?;
            print_bundle(&b, format, out);
            Ok(0)
        }
        "bundle list" => {
            let format = bundle_format(&p)?;
            let want = p
                .get("id")
                .map(sigil_spiffe::TrustDomain::from_id_or_name)
                .transpose()
                .map_err(|e| anyhow!("invalid -id: {e}"))?;
            let list = client()
                .await?
                .list_federated_bundles(pb::ListFederatedBundlesRequest {})
                .await?
                .into_inner()
                .bundles;
            let bundles: Vec<_> = list
                .iter()
                .map(bundle_from_proto)
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .filter(|b| want.as_ref().is_none_or(|w| w == &b.trust_domain))
                .collect();
            if want.is_some() && bundles.is_empty() {
                bail!(
                    "no federated bundle for {}",
                    p.get("id").unwrap_or_default()
                );
            }
            if out.json {
                let v: Vec<Value> = bundles
                    .iter()
                    .map(|b| serde_json::from_str(&b.to_spiffe_json()).unwrap_or(Value::Null))
                    .collect();
                println!("{}", json!({"bundles": v}));
            } else {
                for b in &bundles {
                    if want.is_none() {
                        println!("****************************************");
                        println!("* {}", b.trust_domain.id());
                        println!("****************************************");
                    }
                    print_bundle(b, format, Out { json: false });
                }
            }
            Ok(0)
        }
        "bundle set" => {
            let id = p.required("id")?;
            let td = sigil_spiffe::TrustDomain::from_id_or_name(id)
                .map_err(|e| anyhow!("invalid -id {id:?}: {e}"))?;
            let data = match p.get("path") {
                Some(path) => std::fs::read(path).with_context(|| format!("reading {path}"))?,
                None => {
                    let mut v = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut v)
                        .context("reading stdin")?;
                    v
                }
            };
            let b = match bundle_format(&p)? {
                BundleFormat::Pem => sigil_spiffe::bundle::Bundle::from_pem(td, &data)
                    .map_err(|e| anyhow!("invalid PEM bundle: {e}"))?,
                BundleFormat::Spiffe => sigil_spiffe::bundle::Bundle::from_spiffe_json(td, &data)
                    .map_err(|e| anyhow!("invalid SPIFFE bundle: {e}"))?,
            };
            client()
                .await?
                .set_federated_bundle(pb::SetFederatedBundleRequest {
                    bundle: Some(crate::api::node::bundle_to_proto(&b)),
                })
                .await?;
            out.print(json!({"trust_domain": b.trust_domain.as_str()}), || {
                "bundle set.".into()
            });
            Ok(0)
        }
        "bundle delete" => {
            let id = p.required("id")?;
            if let Some(mode) = p.get("mode")
                && mode != "restrict"
            {
                bail!("unsupported -mode {mode:?}: only restrict is supported");
            }
            client()
                .await?
                .delete_federated_bundle(pb::DeleteFederatedBundleRequest {
                    trust_domain: id.to_string(),
                })
                .await?;
            out.print(json!({}), || "bundle deleted.".into());
            Ok(0)
        }
        "agent list" => {
            let agents = client()
                .await?
                .list_agents(pb::ListAgentsRequest {})
                .await?
                .into_inner()
                .agents;
            if out.json {
                println!(
                    "{}",
                    json!({"agents": agents.iter().map(agent_json).collect::<Vec<_>>()})
                );
            } else if agents.is_empty() {
                println!("No attested agents found");
            } else {
                println!(
                    "Found {} attested agent{}:\n",
                    agents.len(),
                    if agents.len() == 1 { "" } else { "s" }
                );
                for a in &agents {
                    println!("{}", agent_text(a));
                }
            }
            Ok(0)
        }
        "agent show" => {
            let id = agent_id_flag(&p)?;
            let a = client()
                .await?
                .get_agent(pb::GetAgentRequest { spiffe_id: id })
                .await?
                .into_inner();
            out.print(agent_json(&a), || {
                format!(
                    "Found an attested agent given its SPIFFE ID\n\n{}",
                    agent_text(&a)
                )
            });
            Ok(0)
        }
        "agent evict" => {
            let id = agent_id_flag(&p)?;
            client()
                .await?
                .evict_agent(pb::AgentIdRequest { spiffe_id: id })
                .await?;
            out.print(json!({}), || "Agent evicted successfully".into());
            Ok(0)
        }
        "agent ban" => {
            let id = agent_id_flag(&p)?;
            client()
                .await?
                .ban_agent(pb::AgentIdRequest { spiffe_id: id })
                .await?;
            out.print(json!({}), || "Agent banned successfully".into());
            Ok(0)
        }
        other => bail!("unknown command {other:?}"),
    }
}

async fn run_cmd(p: &Parsed) -> Result<i32> {
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

#[derive(Debug, Clone, Copy)]
enum BundleFormat {
    Pem,
    Spiffe,
}

fn bundle_format(p: &Parsed) -> Result<BundleFormat> {
    match p.get("format").unwrap_or("pem") {
        "pem" => Ok(BundleFormat::Pem),
        "spiffe" => Ok(BundleFormat::Spiffe),
        other => bail!("invalid -format {other:?}: use pem or spiffe"),
    }
}

fn bundle_from_proto(b: &types::Bundle) -> Result<sigil_spiffe::bundle::Bundle> {
    let td = sigil_spiffe::TrustDomain::from_id_or_name(&b.trust_domain)?;
    let mut out = sigil_spiffe::bundle::Bundle::new(td);
    out.x509_authorities = b.x509_authorities.clone();
    out.jwt_authorities = b
        .jwt_authorities
        .iter()
        .map(|k| sigil_spiffe::bundle::JwtAuthority {
            key_id: k.key_id.clone(),
            public_key_der: k.public_key.clone(),
            expires_at: k.expires_at,
        })
        .collect();
    out.refresh_hint = (b.refresh_hint != 0).then_some(b.refresh_hint);
    out.sequence_number = (b.sequence_number != 0).then_some(b.sequence_number);
    Ok(out)
}

fn print_bundle(b: &sigil_spiffe::bundle::Bundle, format: BundleFormat, out: Out) {
    match (out.json, format) {
        (_, BundleFormat::Spiffe) | (true, _) => println!("{}", b.to_spiffe_json()),
        (false, BundleFormat::Pem) => print!("{}", b.to_pem()),
    }
}

fn agent_id_flag(p: &Parsed) -> Result<String> {
    let id = p.required("spiffeID")?;
    id.parse::<sigil_spiffe::SpiffeId>()
        .map_err(|e| anyhow!("invalid -spiffeID {id:?}: {e}"))?;
    Ok(id.to_string())
}

fn fmt_time(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

fn agent_json(a: &pb::Agent) -> Value {
    json!({
        "id": a.spiffe_id,
        "attestation_type": a.attestation_type,
        "x509svid_serial_number": a.x509_svid_serial_number,
        "x509svid_expires_at": a.x509_svid_expires_at,
        "banned": a.banned,
        "can_reattest": false,
    })
}

fn agent_text(a: &pb::Agent) -> String {
    format!(
        "SPIFFE ID         : {}\nAttestation type  : {}\nExpiration time   : {}\nSerial number     : {}\nCan re-attest     : false\nBanned            : {}\n",
        a.spiffe_id,
        a.attestation_type,
        fmt_time(a.x509_svid_expires_at),
        a.x509_svid_serial_number,
        a.banned
    )
}

// --- entries ---

fn selector_protos(values: &[String]) -> Result<Vec<types::Selector>> {
    values
        .iter()
        .map(|s| {
            let sel: sigil_spiffe::Selector = s
                .parse()
                .map_err(|e| anyhow!("invalid -selector {s:?}: {e} (expected type:value)"))?;
            Ok(types::Selector {
                r#type: sel.kind,
                value: sel.value,
            })
        })
        .collect()
}

fn ttl_flag(p: &Parsed, name: &str) -> Result<i32> {
    let v = p.parse_opt::<i32>(name)?.unwrap_or(0);
    if v < 0 {
        bail!("invalid -{name} {v}: must not be negative");
    }
    Ok(v)
}

fn entry_from_flags(p: &Parsed, need_id: bool) -> Result<types::Entry> {
    let id = p.get("entryID").unwrap_or_default().to_string();
    if need_id && id.is_empty() {
        bail!("flag -entryID is required");
    }
    let spiffe_id = p.required("spiffeID")?.to_string();
    let parent_id = p.required("parentID")?.to_string();
    // Check IDs here too, so the user gets the reason without a round trip.
    spiffe_id
        .parse::<sigil_spiffe::SpiffeId>()
        .map_err(|e| anyhow!("invalid -spiffeID {spiffe_id:?}: {e}"))?;
    parent_id
        .parse::<sigil_spiffe::SpiffeId>()
        .map_err(|e| anyhow!("invalid -parentID {parent_id:?}: {e}"))?;
    if p.all("selector").is_empty() {
        bail!("at least one selector is required (-selector type:value)");
    }
    Ok(types::Entry {
        id,
        spiffe_id,
        parent_id,
        selectors: selector_protos(p.all("selector"))?,
        x509_svid_ttl: ttl_flag(p, "x509SVIDTTL")?,
        jwt_svid_ttl: ttl_flag(p, "jwtSVIDTTL")?,
        dns_names: p.all("dns").to_vec(),
        federates_with: p.all("federatesWith").to_vec(),
        admin: p.flag("admin"),
        downstream: p.flag("downstream"),
        hint: p.get("hint").unwrap_or_default().to_string(),
        created_at: 0,
        revision: 0,
    })
}

/// Reads the `-data` JSON: `{"entries": [...]}` in SPIRE's format. IDs may be strings or
/// `{"trust_domain": .., "path": ..}` objects (both forms appear in SPIRE's docs).
fn entries_from_data(path: &str) -> Result<Vec<types::Entry>> {
    let text = if path == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading stdin")?;
        s
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?
    };
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {path} as JSON"))?;
    let list = v
        .get("entries")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("{path}: expected an object with an \"entries\" array"))?;
    list.iter()
        .enumerate()
        .map(|(i, e)| entry_from_json(e).with_context(|| format!("{path}: entries[{i}]")))
        .collect()
}

fn id_from_json(v: Option<&Value>, field: &str) -> Result<String> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Object(o)) => {
            let td = o
                .get("trust_domain")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let path = o.get("path").and_then(Value::as_str).unwrap_or_default();
            Ok(format!("spiffe://{td}{path}"))
        }
        Some(_) => bail!("{field} must be a string"),
        None => bail!("{field} is required"),
    }
}

fn entry_from_json(e: &Value) -> Result<types::Entry> {
    let str_list = |k: &str| -> Result<Vec<String>> {
        match e.get(k) {
            None | Some(Value::Null) => Ok(vec![]),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(String::from)
                        .ok_or_else(|| anyhow!("{k} must hold strings"))
                })
                .collect(),
            Some(_) => bail!("{k} must be an array"),
        }
    };
    let int = |k: &str| -> Result<i32> {
        match e.get(k) {
            None | Some(Value::Null) => Ok(0),
            Some(v) => v
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(|| anyhow!("{k} must be an integer")),
        }
    };
    let selectors = e
        .get("selectors")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("selectors is required"))?
        .iter()
        .map(|s| {
            Ok(types::Selector {
                r#type: s
                    .get("type")
                    .and_then(Value::as_str)
                    .ok_or_else(|| anyhow!("selector type is required"))?
                    .into(),
                value: s
                    .get("value")
                    .and_then(Value::as_str)
                    .ok_or_else(|| anyhow!("selector value is required"))?
                    .into(),
            })
        })
        .collect::<Result<_>>()?;
    Ok(types::Entry {
        id: e
            .get("id")
            .or_else(|| e.get("entry_id"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .into(),
        spiffe_id: id_from_json(e.get("spiffe_id"), "spiffe_id")?,
        parent_id: id_from_json(e.get("parent_id"), "parent_id")?,
        selectors,
        x509_svid_ttl: int("x509_svid_ttl").or_else(|_| int("ttl"))?,
        jwt_svid_ttl: int("jwt_svid_ttl")?,
        dns_names: str_list("dns_names")?,
        federates_with: str_list("federates_with")?,
        admin: e.get("admin").and_then(Value::as_bool).unwrap_or(false),
        downstream: e
            .get("downstream")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        hint: e
            .get("hint")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .into(),
        created_at: 0,
        revision: 0,
    })
}

fn ttl_text(v: i32) -> String {
    if v == 0 {
        "default".into()
    } else {
        v.to_string()
    }
}

fn entry_text(e: &types::Entry) -> String {
    let mut s = format!(
        "Entry ID         : {}\nSPIFFE ID        : {}\nParent ID        : {}\nRevision         : {}\nX509-SVID TTL    : {}\nJWT-SVID TTL     : {}\n",
        e.id,
        e.spiffe_id,
        e.parent_id,
        e.revision,
        ttl_text(e.x509_svid_ttl),
        ttl_text(e.jwt_svid_ttl)
    );
    for sel in &e.selectors {
        s.push_str(&format!(
            "Selector         : {}:{}\n",
            sel.r#type, sel.value
        ));
    }
    for f in &e.federates_with {
        s.push_str(&format!("FederatesWith    : {f}\n"));
    }
    for d in &e.dns_names {
        s.push_str(&format!("DNS name         : {d}\n"));
    }
    if e.admin {
        s.push_str("Admin            : true\n");
    }
    if e.downstream {
        s.push_str("Downstream       : true\n");
    }
    if !e.hint.is_empty() {
        s.push_str(&format!("Hint             : {}\n", e.hint));
    }
    s
}

fn entry_json(e: &types::Entry) -> Value {
    json!({
        "id": e.id,
        "spiffe_id": e.spiffe_id,
        "parent_id": e.parent_id,
        "selectors": e.selectors.iter().map(|s| json!({"type": s.r#type, "value": s.value})).collect::<Vec<_>>(),
        "x509_svid_ttl": e.x509_svid_ttl,
        "jwt_svid_ttl": e.jwt_svid_ttl,
        "federates_with": e.federates_with,
        "dns_names": e.dns_names,
        "admin": e.admin,
        "downstream": e.downstream,
        "hint": e.hint,
        "created_at": e.created_at,
        "revision_number": e.revision,
    })
}

fn status_ok(s: &Option<types::Status>) -> bool {
    s.as_ref().is_none_or(|s| s.code == 0)
}

fn report_batch(results: &[pb::EntryResult], out: Out, verb: &str) -> i32 {
    if out.json {
        let v: Vec<Value> = results
            .iter()
            .map(|r| {
                json!({
                    "status": {"code": r.status.as_ref().map(|s| s.code).unwrap_or(0), "message": r.status.as_ref().map(|s| s.message.clone()).unwrap_or_default()},
                    "entry": r.entry.as_ref().map(entry_json),
                    "id": r.id,
                })
            })
            .collect();
        println!("{}", json!({"results": v}));
    }
    let mut failed = false;
    for r in results {
        if status_ok(&r.status) {
            if !out.json {
                if let Some(e) = &r.entry {
                    println!("{}", entry_text(e));
                } else {
                    println!("Deleted entry with ID: {}\n", r.id);
                }
            }
        } else {
            failed = true;
            let s = r.status.clone().unwrap_or_default();
            let code = tonic::Code::from_i32(s.code);
            eprintln!(
                "FAILED to {verb} the following entry (code: {code:?}, msg: {:?}):",
                s.message
            );
            match &r.entry {
                Some(e) => eprintln!("{}", entry_text(e)),
                None => eprintln!("Entry ID         : {}\n", r.id),
            }
        }
    }
    i32::from(failed)
}

async fn entry_create(socket: &str, p: &Parsed, out: Out) -> Result<i32> {
    let entries = match p.get("data") {
        Some(path) => entries_from_data(path)?,
        None => vec![entry_from_flags(p, false)?],
    };
    let res = connect(socket)
        .await?
        .batch_create_entry(pb::BatchCreateEntryRequest { entries })
        .await?
        .into_inner();
    Ok(report_batch(&res.results, out, "create"))
}

async fn entry_update(socket: &str, p: &Parsed, out: Out) -> Result<i32> {
    let entries = match p.get("data") {
        Some(path) => entries_from_data(path)?,
        None => vec![entry_from_flags(p, true)?],
    };
    let res = connect(socket)
        .await?
        .batch_update_entry(pb::BatchUpdateEntryRequest { entries })
        .await?
        .into_inner();
    Ok(report_batch(&res.results, out, "update"))
}

async fn entry_delete(socket: &str, p: &Parsed, out: Out) -> Result<i32> {
    let ids = match (p.get("entryID"), p.get("file")) {
        (Some(id), None) => vec![id.to_string()],
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
            let v: Value =
                serde_json::from_str(&text).with_context(|| format!("parsing {file}"))?;
            v.get("ids")
                .and_then(Value::as_array)
                .ok_or_else(|| anyhow!("{file}: expected {{\"ids\": [...]}}"))?
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(String::from)
                        .ok_or_else(|| anyhow!("{file}: ids must be strings"))
                })
                .collect::<Result<_>>()?
        }
        (Some(_), Some(_)) => bail!("use either -entryID or -file, not both"),
        (None, None) => bail!("an entry ID is required (-entryID)"),
    };
    let res = connect(socket)
        .await?
        .batch_delete_entry(pb::BatchDeleteEntryRequest { ids })
        .await?
        .into_inner();
    Ok(report_batch(&res.results, out, "delete"))
}

async fn entry_show(socket: &str, p: &Parsed, out: Out) -> Result<i32> {
    let by_selectors = selector_protos(p.all("selector"))?;
    let mut c = connect(socket).await?;
    let entries = if let Some(id) = p.get("entryID") {
        vec![
            c.get_entry(pb::GetEntryRequest { id: id.into() })
                .await?
                .into_inner(),
        ]
    } else {
        let mut all = Vec::new();
        let mut page_token = String::new();
        loop {
            let r = c
                .list_entries(pb::ListEntriesRequest {
                    by_spiffe_id: p.get("spiffeID").unwrap_or_default().into(),
                    by_parent_id: p.get("parentID").unwrap_or_default().into(),
                    by_selectors: by_selectors.clone(),
                    selector_match: p.get("matchSelectorsOn").unwrap_or("superset").into(),
                    page_size: 1000,
                    page_token,
                    by_hint: p.get("hint").unwrap_or_default().into(),
                })
                .await?
                .into_inner();
            all.extend(r.entries);
            if r.next_page_token.is_empty() {
                break;
            }
            page_token = r.next_page_token;
        }
        let fw = p.all("federatesWith");
        if !fw.is_empty() {
            all.retain(|e| fw.iter().all(|f| e.federates_with.contains(f)));
        }
        all
    };
    if out.json {
        println!(
            "{}",
            json!({"entries": entries.iter().map(entry_json).collect::<Vec<_>>()})
        );
    } else {
        match entries.len() {
            0 => println!("Found 0 entries"),
            1 => println!("Found 1 entry"),
            n => println!("Found {n} entries"),
        }
        for e in &entries {
            println!("{}", entry_text(e));
        }
    }
    Ok(0)
}

/// Base64 helper used by `-output json` consumers of DER blobs.
pub fn b64(der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(der)
}
