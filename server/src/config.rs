//! Server configuration: SPIRE's `server.conf` HCL format (the parts Sigil implements) plus
//! spire-server's command-line overrides. Anything Sigil does not implement is a start-up error
//! naming it: silently ignoring a key a SPIRE user relied on would be worse than refusing.

use sigil_config::{Block, HealthChecksBlock, Plugin};
use sigil_spiffe::TrustDomain;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use sigil_config::ConfigError;

fn invalid(key: &str, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::invalid(key, reason)
}

// The CA's own settings live with the CA; re-exported so `config::` paths keep working.
pub use crate::ca::{CaSubject, KeyManager, KeyType};

pub use sigil_config::LogFormat;

/// The `/live` and `/ready` listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChecks {
    /// A host name or IP address, as SPIRE takes it.
    pub bind_address: String,
    pub bind_port: u16,
    pub live_path: String,
    pub ready_path: String,
}

/// The validated server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub trust_domain: TrustDomain,
    pub data_dir: PathBuf,
    pub bind_address: IpAddr,
    pub bind_port: u16,
    pub socket_path: PathBuf,
    pub ca_ttl: Duration,
    pub default_x509_svid_ttl: Duration,
    pub default_jwt_svid_ttl: Duration,
    pub agent_ttl: Duration,
    pub ca_subject: CaSubject,
    pub ca_key_type: KeyType,
    pub jwt_issuer: Option<String>,
    pub log_level: String,
    pub log_format: LogFormat,
    /// `DataStore "sql"`: SQLite (default `<data_dir>/datastore.sqlite3`) or PostgreSQL.
    pub datastore: crate::datastore::Config,
    pub key_manager: KeyManager,
    pub health_checks: Option<HealthChecks>,
    /// `NodeAttestor "k8s_psat"`, if configured. Join tokens are always accepted (as in SPIRE,
    /// where `join_token` is built in).
    pub k8s_psat: Option<sigil_k8s_psat::ServerConfig>,
    /// `Notifier "k8sbundle"`: the trust bundle kept in a ConfigMap.
    pub k8sbundle: Option<sigil_k8sbundle::Config>,
    /// `server { federation { ... } }`.
    pub federation: FederationConfig,
    /// `UpstreamAuthority "disk"`: the CA is an intermediate of the operator's upstream CA.
    pub upstream_authority: Option<crate::ca::Upstream>,
    /// `telemetry { Prometheus { host port } }`.
    pub telemetry: sigil_telemetry::Config,
    /// `BundlePublisher "k8s_configmap"`.
    pub bundle_publisher: Option<sigil_k8sbundle::publisher::PublisherConfig>,
}

/// SPIRE's `federation` block: the bundle endpoint this server serves, and the trust domains
/// it federates with (static relationships: they win over ones made through the API).
#[derive(Debug, Clone, Default)]
pub struct FederationConfig {
    pub bundle_endpoint: Option<BundleEndpointConfig>,
    pub federates_with: Vec<sigil_federation::Relationship>,
}

/// `bundle_endpoint { address port refresh_hint profile "..." {} }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleEndpointConfig {
    pub address: IpAddr,
    pub port: u16,
    /// `spiffe_refresh_hint` of the served bundle (SPIRE's default: 5 minutes).
    pub refresh_hint: Duration,
    pub profile: EndpointProfile,
}

/// How the bundle endpoint authenticates itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointProfile {
    /// The server's own X509-SVID (`spiffe://<td>/spire/server`).
    HttpsSpiffe,
    /// A Web PKI certificate from files (`serving_cert_file`), re-read when they change.
    HttpsWeb {
        cert_file_path: PathBuf,
        key_file_path: PathBuf,
        file_sync_interval: Duration,
    },
}

/// Command-line overrides (spire-server's flag names).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub trust_domain: Option<String>,
    pub data_dir: Option<String>,
    pub socket_path: Option<String>,
    pub bind_address: Option<String>,
    pub server_port: Option<String>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
}

pub const DEFAULT_SOCKET_PATH: &str = "/tmp/sigil-server/private/api.sock";
pub const DEFAULT_CONFIG_PATH: &str = "conf/server/server.conf";

// Raw values read from HCL before defaults/validation.
#[derive(Debug, Default)]
struct Raw {
    trust_domain: Option<String>,
    data_dir: Option<String>,
    bind_address: Option<String>,
    bind_port: Option<String>,
    socket_path: Option<String>,
    ca_ttl: Option<String>,
    x509_ttl: Option<String>,
    jwt_ttl: Option<String>,
    agent_ttl: Option<String>,
    ca_subject: Option<CaSubject>,
    ca_key_type: Option<String>,
    jwt_issuer: Option<String>,
    log_level: Option<String>,
    log_format: Option<String>,
    datastore: Option<sigil_config::Block>,
    key_manager: Option<RawKm>,
    health: Option<HealthChecks>,
    k8s_psat: Option<sigil_k8s_psat::ServerConfig>,
    k8sbundle: Option<sigil_k8sbundle::Config>,
    federation: FederationConfig,
    upstream_authority: Option<crate::ca::Upstream>,
    telemetry: sigil_telemetry::Config,
    bundle_publisher: Option<sigil_k8sbundle::publisher::PublisherConfig>,
}

#[derive(Debug)]
enum RawKm {
    Disk(Option<String>),
    Memory,
}

// === impl ServerConfig ===

impl ServerConfig {
    /// Loads `path` (if given, or the default path if it exists) and applies `overrides`.
    pub fn load(path: Option<&str>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => Some(
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: PathBuf::from(p),
                    source,
                })?,
            ),
            None => std::fs::read_to_string(DEFAULT_CONFIG_PATH).ok(),
        };
        let raw = match text {
            Some(t) => parse_hcl(&t)
                .map_err(|e| e.in_file(Path::new(path.unwrap_or(DEFAULT_CONFIG_PATH))))?,
            None => Raw::default(),
        };
        Self::from_raw(raw, overrides)
    }

    /// Parses HCL text and applies overrides (exposed for tests).
    pub fn from_hcl(text: &str, overrides: &Overrides) -> Result<Self, ConfigError> {
        Self::from_raw(parse_hcl(text)?, overrides)
    }

    fn from_raw(raw: Raw, o: &Overrides) -> Result<Self, ConfigError> {
        let td_str = o
            .trust_domain
            .clone()
            .or(raw.trust_domain)
            .ok_or(ConfigError::Missing("trust_domain"))?;
        let trust_domain =
            TrustDomain::from_id_or_name(&td_str).map_err(|e| invalid("trust_domain", e))?;
        let data_dir = PathBuf::from(
            o.data_dir
                .clone()
                .or(raw.data_dir)
                .ok_or(ConfigError::Missing("data_dir"))?,
        );
        let bind_address = o
            .bind_address
            .clone()
            .or(raw.bind_address)
            .unwrap_or_else(|| "0.0.0.0".into())
            .parse()
            .map_err(|e| invalid("bind_address", e))?;
        let bind_port = o
            .server_port
            .clone()
            .or(raw.bind_port)
            .unwrap_or_else(|| "8081".into())
            .parse()
            .map_err(|e| invalid("bind_port", e))?;
        let socket_path = PathBuf::from(
            o.socket_path
                .clone()
                .or(raw.socket_path)
                .unwrap_or_else(|| DEFAULT_SOCKET_PATH.into()),
        );
        let dur = |key: &str, v: Option<String>, default: u64| -> Result<Duration, ConfigError> {
            match v {
                None => Ok(Duration::from_secs(default)),
                Some(s) => {
                    let d = sigil_config::parse_duration(key, &s)?;
                    if d.is_zero() {
                        return Err(invalid(key, "must be greater than zero"));
                    }
                    Ok(d)
                }
            }
        };
        let ca_ttl = dur("ca_ttl", raw.ca_ttl, 24 * 3600)?;
        let default_x509_svid_ttl = dur("default_x509_svid_ttl", raw.x509_ttl, 3600)?;
        let default_jwt_svid_ttl = dur("default_jwt_svid_ttl", raw.jwt_ttl, 300)?;
        let agent_ttl = match raw.agent_ttl {
            Some(_) => dur("agent_ttl", raw.agent_ttl, 3600)?,
            None => default_x509_svid_ttl,
        };
        if default_x509_svid_ttl >= ca_ttl {
            return Err(invalid(
                "default_x509_svid_ttl",
                format!(
                    "must be shorter than ca_ttl ({}s), or every SVID would be cut short by the CA",
                    ca_ttl.as_secs()
                ),
            ));
        }
        let ca_key_type = match raw.ca_key_type {
            Some(s) => s.parse().map_err(|e: String| invalid("ca_key_type", e))?,
            None => KeyType::EcP256,
        };
        let log_format = o
            .log_format
            .clone()
            .or(raw.log_format)
            .unwrap_or_default()
            .parse::<LogFormat>()
            .map_err(|e| invalid("log_format", e))?;
        let log_level = o
            .log_level
            .clone()
            .or(raw.log_level)
            .unwrap_or_else(|| "info".into())
            .parse::<sigil_config::LogLevel>()
            .map_err(|e| invalid("log_level", e))?
            .as_filter()
            .to_string();
        let datastore = match raw.datastore {
            Some(data) => crate::datastore::Config::from_plugin_data(data, &data_dir)?,
            None => crate::datastore::Config::sqlite(data_dir.join("datastore.sqlite3")),
        };
        let key_manager = match raw.key_manager {
            None | Some(RawKm::Disk(None)) => KeyManager::Disk {
                keys_path: data_dir.join("keys.json"),
            },
            Some(RawKm::Disk(Some(p))) => KeyManager::Disk {
                keys_path: PathBuf::from(p),
            },
            Some(RawKm::Memory) => KeyManager::Memory,
        };
        Ok(Self {
            trust_domain,
            data_dir,
            bind_address,
            bind_port,
            socket_path,
            ca_ttl,
            default_x509_svid_ttl,
            default_jwt_svid_ttl,
            agent_ttl,
            ca_subject: raw.ca_subject.unwrap_or_default(),
            ca_key_type,
            jwt_issuer: raw.jwt_issuer.filter(|s| !s.is_empty()),
            log_level,
            log_format,
            datastore,
            key_manager,
            health_checks: raw.health,
            k8s_psat: raw.k8s_psat,
            k8sbundle: raw.k8sbundle,
            federation: raw.federation,
            upstream_authority: raw.upstream_authority,
            telemetry: raw.telemetry,
            bundle_publisher: raw.bundle_publisher,
        })
    }
}

// === HCL walking ===

/// The walk itself (types, unknown keys, blocks, plugins) is `sigil_config`'s, shared with the
/// agent; this only says which keys the server has and what they mean.
fn parse_hcl(text: &str) -> Result<Raw, ConfigError> {
    let mut root = sigil_config::parse(text)?;
    let mut raw = Raw::default();
    if let Some(server) = root.block("server", "server block")? {
        parse_server_block(server, &mut raw)?;
    }
    if let Some(plugins) = root.block("plugins", "plugins block")? {
        for plugin in sigil_config::plugins(plugins)? {
            parse_plugin(plugin, &mut raw)?;
        }
    }
    if let Some(block) = HealthChecksBlock::take(&mut root)? {
        raw.health = parse_health(block)?;
    }
    if let Some(block) = root.block("telemetry", "telemetry block")? {
        raw.telemetry = sigil_telemetry::Config::from_block(block)?;
    }
    // Anything else: refused rather than silently dropped.
    root.finish()?;
    Ok(raw)
}

fn parse_server_block(mut block: Block, raw: &mut Raw) -> Result<(), ConfigError> {
    raw.trust_domain = block.string("trust_domain")?;
    raw.data_dir = block.string("data_dir")?;
    raw.bind_address = block.string("bind_address")?;
    raw.bind_port = block.string("bind_port")?;
    raw.socket_path = block.string("socket_path")?;
    raw.ca_ttl = block.string("ca_ttl")?;
    // `default_svid_ttl` is SPIRE's older name for the X509-SVID TTL; the newer name wins.
    let old_name = block.string("default_svid_ttl")?;
    raw.x509_ttl = block.string("default_x509_svid_ttl")?.or(old_name);
    raw.jwt_ttl = block.string("default_jwt_svid_ttl")?;
    raw.agent_ttl = block.string("agent_ttl")?;
    raw.ca_key_type = block.string("ca_key_type")?;
    raw.jwt_issuer = block.string("jwt_issuer")?;
    raw.log_level = block.string("log_level")?;
    raw.log_format = block.string("log_format")?;
    if let Some(b) = block.block("federation", "federation block")? {
        raw.federation = parse_federation(b)?;
    }
    if let Some(mut b) = block.block("ca_subject", "ca_subject block")? {
        let mut subject = CaSubject::default();
        if let Some(v) = b.strings("country")? {
            subject.country = v;
        }
        if let Some(v) = b.strings("organization")? {
            subject.organization = v;
        }
        if let Some(v) = b.string("common_name")? {
            subject.common_name = v;
        }
        b.finish()?;
        raw.ca_subject = Some(subject);
    }
    block.finish()
}

/// SPIRE's `federation` block.
fn parse_federation(mut block: Block) -> Result<FederationConfig, ConfigError> {
    let mut out = FederationConfig::default();
    if let Some(mut ep) = block.block("bundle_endpoint", "bundle_endpoint block")? {
        let address = ep
            .string("address")?
            .unwrap_or_else(|| "0.0.0.0".into())
            .parse()
            .map_err(|e| invalid("bundle_endpoint address", e))?;
        let port = match ep.integer("port")? {
            None => 443,
            Some(p) => u16::try_from(p).map_err(|e| invalid("bundle_endpoint port", e))?,
        };
        let refresh_hint = match ep.duration("refresh_hint")? {
            None => Duration::from_secs(300),
            Some(d) if d.is_zero() => {
                return Err(invalid("refresh_hint", "must be greater than zero"));
            }
            Some(d) => d,
        };
        if ep.block("acme", "bundle_endpoint acme block")?.is_some() {
            return Err(acme_refused());
        }
        let mut profiles = ep.labelled("profile", "bundle_endpoint profile")?;
        let profile = match profiles.len() {
            0 => EndpointProfile::HttpsSpiffe,
            1 => {
                let (name, mut body) = profiles.remove(0);
                match name.as_str() {
                    "https_spiffe" => {
                        body.finish()?;
                        EndpointProfile::HttpsSpiffe
                    }
                    "https_web" => {
                        if body.block("acme", "https_web acme block")?.is_some() {
                            return Err(acme_refused());
                        }
                        let Some(mut files) =
                            body.block("serving_cert_file", "serving_cert_file block")?
                        else {
                            return Err(invalid(
                                "profile \"https_web\"",
                                "serving_cert_file is required (ACME is not supported)",
                            ));
                        };
                        let cert = files
                            .string("cert_file_path")?
                            .ok_or(ConfigError::Missing("cert_file_path"))?;
                        let key = files
                            .string("key_file_path")?
                            .ok_or(ConfigError::Missing("key_file_path"))?;
                        let sync = files
                            .duration("file_sync_interval")?
                            .unwrap_or(Duration::from_secs(60));
                        files.finish()?;
                        body.finish()?;
                        EndpointProfile::HttpsWeb {
                            cert_file_path: cert.into(),
                            key_file_path: key.into(),
                            file_sync_interval: sync,
                        }
                    }
                    other => {
                        return Err(invalid(
                            "bundle_endpoint profile",
                            format!("unknown profile {other:?} (https_spiffe or https_web)"),
                        ));
                    }
                }
            }
            _ => {
                return Err(invalid(
                    "bundle_endpoint profile",
                    "only one profile may be set",
                ));
            }
        };
        ep.finish()?;
        out.bundle_endpoint = Some(BundleEndpointConfig {
            address,
            port,
            refresh_hint,
            profile,
        });
    }
    for (td, mut body) in block.labelled("federates_with", "federates_with")? {
        let trust_domain = TrustDomain::from_id_or_name(&td)
            .map_err(|e| invalid(&format!("federates_with {td:?}"), e))?;
        let url = body
            .string("bundle_endpoint_url")?
            .ok_or(ConfigError::Missing("bundle_endpoint_url"))?;
        let url = sigil_federation::EndpointUrl::parse(&url)
            .map_err(|e| invalid("bundle_endpoint_url", e))?;
        let mut profiles = body.labelled("bundle_endpoint_profile", "bundle_endpoint_profile")?;
        if profiles.len() != 1 {
            return Err(invalid(
                &format!("federates_with {td:?}"),
                "exactly one bundle_endpoint_profile (\"https_spiffe\" or \"https_web\") is required",
            ));
        }
        let (name, mut p) = profiles.remove(0);
        let profile = match name.as_str() {
            "https_spiffe" => {
                let id = p
                    .string("endpoint_spiffe_id")?
                    .ok_or(ConfigError::Missing("endpoint_spiffe_id"))?;
                let endpoint_spiffe_id =
                    id.parse().map_err(|e| invalid("endpoint_spiffe_id", e))?;
                sigil_federation::Profile::HttpsSpiffe { endpoint_spiffe_id }
            }
            "https_web" => sigil_federation::Profile::HttpsWeb,
            other => {
                return Err(invalid(
                    "bundle_endpoint_profile",
                    format!("unknown profile {other:?} (https_spiffe or https_web)"),
                ));
            }
        };
        p.finish()?;
        body.finish()?;
        out.federates_with.push(sigil_federation::Relationship {
            trust_domain,
            url,
            profile,
        });
    }
    block.finish()?;
    Ok(out)
}

fn acme_refused() -> ConfigError {
    invalid(
        "acme",
        "ACME is not supported by Sigil (it cannot reach an ACME CA from here): use profile \"https_web\" { serving_cert_file { cert_file_path key_file_path } } or profile \"https_spiffe\"",
    )
}

fn parse_plugin(mut plugin: Plugin, raw: &mut Raw) -> Result<(), ConfigError> {
    match (plugin.kind.as_str(), plugin.name.as_str()) {
        ("DataStore", "sql") => {
            // Read once the data directory is known (the default SQLite file is in it).
            raw.datastore = Some(plugin.data);
            return Ok(());
        }
        ("DataStore", _) => return Err(plugin.unsupported(Some("sql"))),
        ("KeyManager", "disk") => {
            raw.key_manager = Some(RawKm::Disk(plugin.data.string("keys_path")?));
        }
        ("KeyManager", "memory") => raw.key_manager = Some(RawKm::Memory),
        ("KeyManager", _) => return Err(plugin.unsupported(Some("disk, memory"))),
        ("NodeAttestor", "join_token") => {}
        ("NodeAttestor", "k8s_psat") => {
            // The plugin reads its own data (SPIRE's keys, strictly: unknown ones are named).
            let psat = sigil_k8s_psat::ServerConfig::from_plugin_data(plugin.data).map_err(
                |e| match e {
                    sigil_k8s_psat::ConfigureError::Config(e) => e,
                    other => invalid("NodeAttestor \"k8s_psat\"", other),
                },
            )?;
            raw.k8s_psat = Some(psat);
            return Ok(());
        }
        ("NodeAttestor", _) => return Err(plugin.unsupported(Some("join_token, k8s_psat"))),
        ("Notifier", "k8sbundle") => {
            raw.k8sbundle = Some(sigil_k8sbundle::Config::from_plugin_data(plugin.data)?);
            return Ok(());
        }
        ("Notifier", _) => return Err(plugin.unsupported(Some("k8sbundle"))),
        ("BundlePublisher", "k8s_configmap") => {
            raw.bundle_publisher =
                Some(sigil_k8sbundle::publisher::PublisherConfig::from_plugin_data(plugin.data)?);
            return Ok(());
        }
        ("BundlePublisher", _) => return Err(plugin.unsupported(Some("k8s_configmap"))),
        ("UpstreamAuthority", "disk") => {
            let key = |name: &str, v: Option<String>| {
                v.filter(|p| !p.is_empty())
                    .map(PathBuf::from)
                    .ok_or_else(|| {
                        invalid(&format!("UpstreamAuthority \"disk\" {name}"), "is required")
                    })
            };
            let cert = plugin.data.string("cert_file_path")?;
            let key_path = plugin.data.string("key_file_path")?;
            raw.upstream_authority = Some(crate::ca::Upstream::Disk(crate::ca::DiskUpstream {
                cert_file_path: key("cert_file_path", cert)?,
                key_file_path: key("key_file_path", key_path)?,
                bundle_file_path: plugin
                    .data
                    .string("bundle_file_path")?
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from),
            }));
        }
        // Named as SPIRE names it, so a SPIRE config works; `sigil` is an alias.
        ("UpstreamAuthority", name @ ("spire" | "sigil")) => {
            let what = format!("UpstreamAuthority \"{name}\"");
            let address = plugin
                .data
                .string("server_address")?
                .filter(|a| !a.is_empty())
                .ok_or_else(|| invalid(&format!("{what} server_address"), "is required"))?;
            let port = plugin
                .data
                .integer("server_port")?
                .ok_or_else(|| invalid(&format!("{what} server_port"), "is required"))?;
            let port = u16::try_from(port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| invalid(&format!("{what} server_port"), "must be 1-65535"))?;
            // SPIRE's key is `workload_api_socket`; seed 000 writes `workload_api_socket_path`.
            let socket = match (
                plugin.data.string("workload_api_socket")?,
                plugin.data.string("workload_api_socket_path")?,
            ) {
                (Some(a), Some(b)) if a != b => {
                    return Err(invalid(
                        &format!("{what} workload_api_socket"),
                        "and workload_api_socket_path name different sockets",
                    ));
                }
                (Some(s), _) | (None, Some(s)) if !s.is_empty() => s,
                _ => {
                    return Err(invalid(
                        &format!("{what} workload_api_socket"),
                        "is required",
                    ));
                }
            };
            // SPIRE's default scheme prefix is accepted as written.
            let socket = socket
                .strip_prefix("unix://")
                .unwrap_or(&socket)
                .to_string();
            raw.upstream_authority = Some(crate::ca::Upstream::Spire(crate::ca::SpireUpstream {
                server_address: address,
                server_port: port,
                workload_api_socket: PathBuf::from(socket),
            }));
        }
        ("UpstreamAuthority", _) => return Err(plugin.unsupported(Some("disk, spire"))),
        _ => {
            return Err(plugin.unsupported(Some(
                "DataStore \"sql\", KeyManager \"disk\"/\"memory\", NodeAttestor \"join_token\"/\"k8s_psat\", Notifier \"k8sbundle\", BundlePublisher \"k8s_configmap\", UpstreamAuthority \"disk\"/\"spire\"",
            )));
        }
    }
    plugin.data.finish()
}

/// The server's reading of `health_checks`: the one both binaries share (`sigil-config`), so
/// the same block gets the same verdict from either.
fn parse_health(block: HealthChecksBlock) -> Result<Option<HealthChecks>, ConfigError> {
    Ok(block.listener()?.map(|l| HealthChecks {
        bind_address: l.bind_address,
        bind_port: l.bind_port.0,
        live_path: l.live_path,
        ready_path: l.ready_path,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPIRE_CONF: &str = r#"
server {
    bind_address = "0.0.0.0"
    bind_port = "8081"
    socket_path = "/tmp/spire-server/private/api.sock"
    trust_domain = "cluster.local"
    data_dir = "/run/spire/data"
    log_level = "INFO"
    jwt_issuer = "https://oidc.enterprise.example.com"
    default_svid_ttl = "1h"
    ca_ttl = "48h"
    ca_subject = {
        country = ["US"],
        organization = ["Example Corp"],
        common_name = "SPIRE Server CA for Istio",
    }
}

plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = "/run/spire/data/datastore.sqlite3"
        }
    }
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "disk" {
        plugin_data {
            keys_path = "/run/spire/data/keys.json"
        }
    }
    UpstreamAuthority "disk" {
        plugin_data {
            cert_file_path = "/run/spire/ca/ca.crt"
            key_file_path = "/run/spire/ca/ca.key"
        }
    }
}

health_checks {
    listener_enabled = true
    bind_address = "0.0.0.0"
    bind_port = "8080"
    live_path = "/live"
    ready_path = "/ready"
}
"#;

    #[test]
    fn spire_config_parses() {
        let c = ServerConfig::from_hcl(SPIRE_CONF, &Overrides::default()).unwrap();
        assert_eq!(c.trust_domain.as_str(), "cluster.local");
        assert_eq!(c.bind_port, 8081);
        assert_eq!(c.default_x509_svid_ttl, Duration::from_secs(3600));
        assert_eq!(c.ca_ttl, Duration::from_secs(48 * 3600));
        assert_eq!(c.ca_subject.organization, ["Example Corp"]);
        assert_eq!(c.ca_subject.common_name, "SPIRE Server CA for Istio");
        assert_eq!(
            c.jwt_issuer.as_deref(),
            Some("https://oidc.enterprise.example.com")
        );
        assert_eq!(
            c.key_manager,
            KeyManager::Disk {
                keys_path: "/run/spire/data/keys.json".into()
            }
        );
        assert_eq!(c.health_checks.unwrap().bind_port, 8080);
        assert_eq!(c.log_level, "info");
        // Seed 002's UpstreamAuthority "disk", without bundle_file_path.
        assert_eq!(
            c.upstream_authority,
            Some(crate::ca::Upstream::Disk(crate::ca::DiskUpstream {
                cert_file_path: "/run/spire/ca/ca.crt".into(),
                key_file_path: "/run/spire/ca/ca.key".into(),
                bundle_file_path: None,
            }))
        );
    }

    #[test]
    fn upstream_authority_errors_are_named() {
        let conf = |data: &str| {
            format!(
                "server {{\n trust_domain = \"a\"\n data_dir = \"/x\"\n}}\nplugins {{\n UpstreamAuthority \"disk\" {{\n plugin_data {{\n {data}\n }}\n }}\n}}"
            )
        };
        for (data, want) in [
            ("key_file_path = \"/k\"", "cert_file_path"),
            ("cert_file_path = \"/c\"", "key_file_path"),
            (
                "cert_file_path = \"/c\"\n key_file_path = \"/k\"\n bogus = 1",
                "bogus",
            ),
        ] {
            let err = ServerConfig::from_hcl(&conf(data), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{data}: {err}");
        }
        let err = ServerConfig::from_hcl(
            "server {\n trust_domain = \"a\"\n data_dir = \"/x\"\n}\nplugins {\n UpstreamAuthority \"awssecret\" {\n plugin_data {\n }\n }\n}",
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("unsupported UpstreamAuthority plugin \"awssecret\""),
            "{err}"
        );
    }

    #[test]
    fn upstream_authority_spire_as_seed_000_writes_it() {
        // Seed 000's intermediate server, verbatim plugin block.
        let conf = r#"
server {
    trust_domain = "example.org"
    data_dir = "/x"
}
plugins {
UpstreamAuthority "spire" {
plugin_data {
server_address = "root-spire-server.spire-root.svc"
server_port = 8081
workload_api_socket_path = "/tmp/spire-agent/public/api.sock"
}
}
}
"#;
        let c = ServerConfig::from_hcl(conf, &Overrides::default()).unwrap();
        assert_eq!(
            c.upstream_authority,
            Some(crate::ca::Upstream::Spire(crate::ca::SpireUpstream {
                server_address: "root-spire-server.spire-root.svc".into(),
                server_port: 8081,
                workload_api_socket: "/tmp/spire-agent/public/api.sock".into(),
            }))
        );
        // SPIRE's own key, the `sigil` alias, and the unix:// prefix.
        let c = ServerConfig::from_hcl(
            &conf.replace("\"spire\"", "\"sigil\"").replace(
                "workload_api_socket_path = \"",
                "workload_api_socket = \"unix://",
            ),
            &Overrides::default(),
        )
        .unwrap();
        assert!(matches!(
            c.upstream_authority,
            Some(crate::ca::Upstream::Spire(ref s)) if s.workload_api_socket == std::path::Path::new("/tmp/spire-agent/public/api.sock")
        ));
        let err = ServerConfig::from_hcl(
            &conf.replace("server_port = 8081", "server_port = 0"),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("server_port"), "{err}");
    }

    #[test]
    fn overrides_win() {
        let o = Overrides {
            trust_domain: Some("example.org".into()),
            server_port: Some("9000".into()),
            ..Default::default()
        };
        let c = ServerConfig::from_hcl(SPIRE_CONF, &o).unwrap();
        assert_eq!(c.trust_domain.as_str(), "example.org");
        assert_eq!(c.bind_port, 9000);
    }

    #[test]
    fn flags_alone() {
        let o = Overrides {
            trust_domain: Some("example.org".into()),
            data_dir: Some("/tmp/x".into()),
            ..Default::default()
        };
        let c = ServerConfig::from_raw(Raw::default(), &o).unwrap();
        assert!(
            matches!(&c.datastore, crate::datastore::Config::Sqlite { path, .. } if path == &PathBuf::from("/tmp/x/datastore.sqlite3"))
        );
        assert_eq!(c.default_jwt_svid_ttl, Duration::from_secs(300));
        assert_eq!(c.ca_ttl, Duration::from_secs(86400));
    }

    /// SPIRE's federation block (its docs' example), HCL and the Helm chart's JSON form.
    #[test]
    fn federation_block_as_spire_writes_it() {
        let hcl = r#"server {
  trust_domain = "domain1.test"
  data_dir = "/x"
  federation {
    bundle_endpoint {
      address = "0.0.0.0"
      port = 8443
      refresh_hint = "10m"
      profile "https_web" {
        serving_cert_file {
          cert_file_path = "/certs/cert.pem"
          key_file_path = "/certs/key.pem"
          file_sync_interval = "30s"
        }
      }
    }
    federates_with "domain2.test" {
      bundle_endpoint_url = "https://domain2.test:8443"
      bundle_endpoint_profile "https_spiffe" {
        endpoint_spiffe_id = "spiffe://domain2.test/spire/server"
      }
    }
    federates_with "domain3.test" {
      bundle_endpoint_url = "https://domain3.test/bundle"
      bundle_endpoint_profile "https_web" {}
    }
  }
}"#;
        let c = ServerConfig::from_hcl(hcl, &Overrides::default()).unwrap();
        let ep = c.federation.bundle_endpoint.as_ref().unwrap();
        assert_eq!(ep.port, 8443);
        assert_eq!(ep.refresh_hint, Duration::from_secs(600));
        assert_eq!(
            ep.profile,
            EndpointProfile::HttpsWeb {
                cert_file_path: "/certs/cert.pem".into(),
                key_file_path: "/certs/key.pem".into(),
                file_sync_interval: Duration::from_secs(30),
            }
        );
        let rels = &c.federation.federates_with;
        assert_eq!(rels.len(), 2);
        assert_eq!(rels[0].trust_domain.as_str(), "domain2.test");
        assert_eq!(
            rels[0].profile,
            sigil_federation::Profile::HttpsSpiffe {
                endpoint_spiffe_id: "spiffe://domain2.test/spire/server".parse().unwrap()
            }
        );
        assert_eq!(rels[1].profile, sigil_federation::Profile::HttpsWeb);
        assert_eq!(rels[1].url.path_and_query(), "/bundle");

        // Seed 000's cluster A config, verbatim (its indentation lost, which HCL ignores).
        let seed = "server {\ntrust_domain = \"cluster-a.example.com\"\nfederation {\nbundle_endpoint {\naddress = \"0.0.0.0\"\nport = 8443\n}\nfederates_with \"cluster-b.example.com\" {\nbundle_endpoint_url = \"https://spire-server.cluster-b.svc:8443\"\nbundle_endpoint_profile \"https_spiffe\" {\nendpoint_spiffe_id = \"spiffe://cluster-b.example.com/spire/server\"\n}\n}\n}\n}";
        let o = Overrides {
            data_dir: Some("/x".into()),
            ..Default::default()
        };
        let c = ServerConfig::from_hcl(seed, &o).unwrap();
        assert_eq!(c.federation.bundle_endpoint.as_ref().unwrap().port, 8443);
        assert_eq!(
            c.federation.federates_with[0].url.as_str(),
            "https://spire-server.cluster-b.svc:8443"
        );

        // Defaults: https_spiffe, port 443, a 5 minute hint.
        let c = ServerConfig::from_hcl(
            "server {\n trust_domain = \"a\"\n data_dir = \"/x\"\n federation {\n bundle_endpoint {}\n }\n}",
            &Overrides::default(),
        )
        .unwrap();
        let ep = c.federation.bundle_endpoint.unwrap();
        assert_eq!((ep.port, ep.refresh_hint.as_secs()), (443, 300));
        assert_eq!(ep.profile, EndpointProfile::HttpsSpiffe);

        // SPIRE's JSON form (blocks as arrays of objects).
        let json = r#"{"server": [{"trust_domain": "a", "data_dir": "/x", "federation": [{
            "bundle_endpoint": [{"address": "127.0.0.1", "port": 8443}],
            "federates_with": [{"b.test": [{"bundle_endpoint_url": "https://b:8443",
                "bundle_endpoint_profile": [{"https_spiffe": [{"endpoint_spiffe_id": "spiffe://b.test/spire/server"}]}]}]}]
        }]}]}"#;
        let c = ServerConfig::from_hcl(json, &Overrides::default()).unwrap();
        assert_eq!(
            c.federation.federates_with[0].trust_domain.as_str(),
            "b.test"
        );
    }

    #[test]
    fn unsupported_things_are_named() {
        let cases = [
            (
                "server {\n trust_domain = \"a\"\n data_dir = \"/x\"\n federation {\n bundle_endpoint {\n acme {\n domain_name = \"x\"\n }\n }\n }\n}",
                "ACME is not supported by Sigil",
            ),
            (
                "server {\n trust_domain = \"a\"\n data_dir = \"/x\"\n federation {\n bundle_endpoint {\n profile \"https_web\" {\n acme {\n }\n }\n }\n }\n}",
                "ACME is not supported by Sigil",
            ),
            (
                "server {\n trust_domain = \"a\"\n data_dir = \"/x\"\n federation {\n federates_with \"b\" {\n bundle_endpoint_url = \"http://b\"\n bundle_endpoint_profile \"https_web\" {}\n }\n }\n}",
                "scheme must be https",
            ),
            (
                "server {\n trust_domain = \"a\"\n data_dir = \"/x\"\n federation {\n federates_with \"b\" {\n bundle_endpoint_url = \"https://b\"\n bundle_endpoint_profile \"https_spiffe\" {}\n }\n }\n}",
                "endpoint_spiffe_id",
            ),
            (
                "server {\n trust_domain = \"a\"\n data_dir = \"/x\"\n federation {\n federates_with \"b\" {\n bundle_endpoint_url = \"https://b\"\n bundle_endpoint_profile \"https_spoofy\" {}\n }\n }\n}",
                "unknown profile \"https_spoofy\"",
            ),
            (
                "server {\n trust_domain = \"a\"\n data_dir = \"/x\"\n federation {\n bundle_endpoint {\n port = 8443\n spiffe_id = \"x\"\n }\n }\n}",
                "unsupported key \"spiffe_id\" in bundle_endpoint block",
            ),
            (
                "server {\n trust_domain = \"a\"\n data_dir = \"/x\"\n}\nplugins {\n NodeAttestor \"aws_iid\" {\n plugin_data {\n }\n }\n}",
                "unsupported NodeAttestor plugin \"aws_iid\"",
            ),
            (
                "server {\n trust_domain = \"a\"\n data_dir = \"/x\"\n}\nplugins {\n KeyManager \"aws_kms\" {\n plugin_data {\n }\n }\n}",
                "unsupported KeyManager plugin \"aws_kms\"",
            ),
            (
                "server {\n trust_domain = \"a\"\n data_dir = \"/x\"\n}\nplugins {\n DataStore \"sql\" {\n plugin_data {\n database_type = \"mysql\"\n }\n }\n}",
                "\"mysql\" is not supported",
            ),
            (
                "server {\n trust_domain = \"Bad TD\"\n data_dir = \"/x\"\n}",
                "invalid value for trust_domain",
            ),
            (
                "server {\n data_dir = \"/x\"\n}",
                "trust_domain must be configured",
            ),
            (
                "server {\n trust_domain = \"a\"\n data_dir = \"/x\"\n ca_ttl = \"1x\"\n}",
                "invalid value for ca_ttl",
            ),
            (
                "server {\n trust_domain = \"a\"\n data_dir = \"/x\"\n ca_key_type = \"rsa-2048\"\n}",
                "unsupported key type",
            ),
            ("server { ", "parsing config file"),
        ];
        for (text, want) in cases {
            let err = ServerConfig::from_hcl(text, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text:?}: got {err:?}, want {want:?}");
        }
    }

    const PSAT_CONF: &str = r#"
server {
    trust_domain = "example.org"
    data_dir = "/x"
}
plugins {
    NodeAttestor "join_token" {
        plugin_data {}
    }
    NodeAttestor "k8s_psat" {
        plugin_data {
            clusters = {
                "demo" = {
                    service_account_allow_list = ["spire:spire-agent"]
                    kube_config_file = "/etc/kube/config"
                    allowed_node_label_keys = ["zone"]
                    allowed_pod_label_keys = []
                    use_pod_uid_for_agent_id = false
                }
                "prod" = {
                    service_account_allow_list = ["spire:spire-agent", "spire:other"]
                    audience = ["sigil"]
                }
            }
        }
    }
}
"#;

    #[test]
    fn k8s_psat_alongside_join_token() {
        let c = ServerConfig::from_hcl(PSAT_CONF, &Overrides::default()).unwrap();
        let psat = c.k8s_psat.unwrap();
        let demo = &psat.clusters["demo"];
        assert_eq!(demo.service_account_allow_list, ["spire:spire-agent"]);
        assert_eq!(demo.effective_audience(), ["spire-server"]);
        assert_eq!(demo.kube_config_file, "/etc/kube/config");
        assert_eq!(demo.allowed_node_label_keys, ["zone"]);
        assert_eq!(psat.clusters["prod"].effective_audience(), ["sigil"]);
        assert!(
            ServerConfig::from_hcl(SPIRE_CONF, &Overrides::default())
                .unwrap()
                .k8s_psat
                .is_none()
        );
    }

    #[test]
    fn k8s_psat_errors_are_named() {
        let with = |cluster: &str| {
            format!(
                "server {{\n trust_domain = \"a\"\n data_dir = \"/x\"\n}}\nplugins {{\n NodeAttestor \"k8s_psat\" {{\n plugin_data {{\n clusters = {{\n \"demo\" = {{\n {cluster}\n }}\n }}\n }}\n }}\n}}"
            )
        };
        let err = |text: String| {
            ServerConfig::from_hcl(&text, &Overrides::default())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(with(
                "service_account_allow_list = [\"a:b\"]\n audiences = [\"x\"]"
            )),
            r#"unsupported key "audiences" in k8s_psat cluster "demo""#
        );
        assert_eq!(
            err(with("")),
            r#"invalid value for NodeAttestor "k8s_psat": cluster "demo" configuration must have at least one service account allowed"#
        );
        assert_eq!(
            err(with(
                "service_account_allow_list = [\"a:b\"]\n use_pod_uid_for_agent_id = \"maybe\""
            )),
            "invalid value for use_pod_uid_for_agent_id: expected true or false"
        );
    }
}
