//! Server configuration: SPIRE's `server.conf` HCL format (the parts Sigil implements) plus
//! spire-server's command-line overrides. Anything Sigil does not implement is a start-up error
//! naming it: silently ignoring a key a SPIRE user relied on would be worse than refusing.

use serde_json::{Map, Value};
use sigil_spiffe::TrustDomain;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A configuration problem, reported at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing config file: {0}")]
    Hcl(String),
    #[error("unsupported key {key:?} in {block} block")]
    UnsupportedKey { block: String, key: String },
    #[error("unsupported {kind} plugin {name:?} (Sigil supports: {supported})")]
    UnsupportedPlugin {
        kind: String,
        name: String,
        supported: &'static str,
    },
    #[error("invalid value for {key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error("{0} must be configured")]
    Missing(&'static str),
}

fn invalid(key: &str, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

/// Where the CA and JWT signing keys live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyManager {
    /// Keys in a JSON file (0600), so a restart keeps the same CA and bundle.
    Disk { keys_path: PathBuf },
    /// Keys only in memory (tests): a restart makes a new CA.
    Memory,
}

/// The CA key algorithm (`ca_key_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    EcP256,
    EcP384,
}

impl std::str::FromStr for KeyType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ec-p256" => Ok(Self::EcP256),
            "ec-p384" => Ok(Self::EcP384),
            other => Err(format!(
                "unsupported key type {other:?} (supported: ec-p256, ec-p384)"
            )),
        }
    }
}

/// The CA certificate subject (`ca_subject`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaSubject {
    pub country: Vec<String>,
    pub organization: Vec<String>,
    pub common_name: String,
}

impl Default for CaSubject {
    fn default() -> Self {
        // SPIRE's default subject.
        Self {
            country: vec!["US".into()],
            organization: vec!["SPIFFE".into()],
            common_name: String::new(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "text" | "" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?} (text or json)")),
        }
    }
}

/// The `/live` and `/ready` listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChecks {
    pub bind_address: IpAddr,
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
    pub datastore_path: PathBuf,
    pub key_manager: KeyManager,
    pub health_checks: Option<HealthChecks>,
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
    datastore_path: Option<String>,
    key_manager: Option<RawKm>,
    health: Option<HealthChecks>,
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
                    path: p.to_string(),
                    source,
                })?,
            ),
            None => std::fs::read_to_string(DEFAULT_CONFIG_PATH).ok(),
        };
        let raw = match text {
            Some(t) => parse_hcl(&t)?,
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
                    let secs = sigil_flags::parse_duration_secs(&s).map_err(|e| invalid(key, e))?;
                    if secs == 0 {
                        return Err(invalid(key, "must be greater than zero"));
                    }
                    Ok(Duration::from_secs(secs))
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
            .parse()
            .map_err(|e: String| invalid("log_format", e))?;
        let log_level = o
            .log_level
            .clone()
            .or(raw.log_level)
            .unwrap_or_else(|| "info".into())
            .to_ascii_lowercase();
        if !["trace", "debug", "info", "warn", "error"].contains(&log_level.as_str()) {
            return Err(invalid("log_level", format!("unknown level {log_level:?}")));
        }
        let datastore_path = raw
            .datastore_path
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir.join("datastore.sqlite3"));
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
            datastore_path,
            key_manager,
            health_checks: raw.health,
        })
    }
}

// === HCL walking ===

/// hcl-rs turns `Kind "label" { ... }` into `{"Kind": {"label": {...}}}` and repeated blocks into
/// arrays; these helpers flatten both shapes.
fn objects(v: &Value) -> Vec<&Map<String, Value>> {
    match v {
        Value::Object(m) => vec![m],
        Value::Array(a) => a.iter().flat_map(objects).collect(),
        _ => vec![],
    }
}

fn scalar(key: &str, v: &Value) -> Result<String, ConfigError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(invalid(key, "expected a string, number or boolean")),
    }
}

fn string_list(key: &str, v: &Value) -> Result<Vec<String>, ConfigError> {
    match v {
        Value::Array(a) => a.iter().map(|x| scalar(key, x)).collect(),
        other => Ok(vec![scalar(key, other)?]),
    }
}

fn parse_hcl(text: &str) -> Result<Raw, ConfigError> {
    let root: Value = hcl::from_str(text).map_err(|e| ConfigError::Hcl(e.to_string()))?;
    let root = root
        .as_object()
        .ok_or_else(|| ConfigError::Hcl("top level must be a body".into()))?;
    let mut raw = Raw::default();
    for (key, value) in root {
        match key.as_str() {
            "server" => {
                for block in objects(value) {
                    parse_server_block(block, &mut raw)?;
                }
            }
            "plugins" => {
                for block in objects(value) {
                    parse_plugins(block, &mut raw)?;
                }
            }
            "health_checks" => {
                for block in objects(value) {
                    raw.health = parse_health(block)?;
                }
            }
            // Telemetry is accepted but Sigil exposes no telemetry sinks yet: refuse rather than
            // silently drop the user's metrics configuration.
            other => {
                return Err(ConfigError::UnsupportedKey {
                    block: "top-level".into(),
                    key: other.into(),
                });
            }
        }
    }
    Ok(raw)
}

fn parse_server_block(block: &Map<String, Value>, raw: &mut Raw) -> Result<(), ConfigError> {
    for (key, v) in block {
        match key.as_str() {
            "trust_domain" => raw.trust_domain = Some(scalar(key, v)?),
            "data_dir" => raw.data_dir = Some(scalar(key, v)?),
            "bind_address" => raw.bind_address = Some(scalar(key, v)?),
            "bind_port" => raw.bind_port = Some(scalar(key, v)?),
            "socket_path" => raw.socket_path = Some(scalar(key, v)?),
            "ca_ttl" => raw.ca_ttl = Some(scalar(key, v)?),
            // `default_svid_ttl` is SPIRE's older name for the X509-SVID TTL.
            "default_x509_svid_ttl" | "default_svid_ttl" => raw.x509_ttl = Some(scalar(key, v)?),
            "default_jwt_svid_ttl" => raw.jwt_ttl = Some(scalar(key, v)?),
            "agent_ttl" => raw.agent_ttl = Some(scalar(key, v)?),
            "ca_key_type" => raw.ca_key_type = Some(scalar(key, v)?),
            "jwt_issuer" => raw.jwt_issuer = Some(scalar(key, v)?),
            "log_level" => raw.log_level = Some(scalar(key, v)?),
            "log_format" => raw.log_format = Some(scalar(key, v)?),
            "ca_subject" => {
                let mut subject = CaSubject::default();
                for m in objects(v) {
                    for (k, sv) in m {
                        match k.as_str() {
                            "country" => subject.country = string_list(k, sv)?,
                            "organization" => subject.organization = string_list(k, sv)?,
                            "common_name" => subject.common_name = scalar(k, sv)?,
                            other => {
                                return Err(ConfigError::UnsupportedKey {
                                    block: "ca_subject".into(),
                                    key: other.into(),
                                });
                            }
                        }
                    }
                }
                raw.ca_subject = Some(subject);
            }
            other => {
                return Err(ConfigError::UnsupportedKey {
                    block: "server".into(),
                    key: other.into(),
                });
            }
        }
    }
    Ok(())
}

fn plugin_data(plugin: &Map<String, Value>, kind: &str) -> Result<Map<String, Value>, ConfigError> {
    let mut out = Map::new();
    for (k, v) in plugin {
        match k.as_str() {
            "plugin_data" => {
                for m in objects(v) {
                    out.extend(m.clone());
                }
            }
            "enabled" => {}
            other => {
                return Err(ConfigError::UnsupportedKey {
                    block: kind.into(),
                    key: other.into(),
                });
            }
        }
    }
    Ok(out)
}

fn parse_plugins(block: &Map<String, Value>, raw: &mut Raw) -> Result<(), ConfigError> {
    for (kind, by_name) in block {
        for named in objects(by_name) {
            for (name, plugin) in named {
                let plugin = plugin.as_object().cloned().unwrap_or_default();
                let data = plugin_data(&plugin, &format!("{kind} \"{name}\""))?;
                let unsupported = |supported| ConfigError::UnsupportedPlugin {
                    kind: kind.clone(),
                    name: name.clone(),
                    supported,
                };
                let bad_key = |k: &str| ConfigError::UnsupportedKey {
                    block: format!("{kind} \"{name}\" plugin_data"),
                    key: k.into(),
                };
                match (kind.as_str(), name.as_str()) {
                    ("DataStore", "sql") => {
                        for (k, v) in &data {
                            match k.as_str() {
                                "database_type" => {
                                    let t = scalar(k, v)?;
                                    if t != "sqlite3" {
                                        return Err(invalid(
                                            "DataStore \"sql\" database_type",
                                            format!(
                                                "{t:?} is not supported (Sigil supports sqlite3)"
                                            ),
                                        ));
                                    }
                                }
                                "connection_string" => raw.datastore_path = Some(scalar(k, v)?),
                                other => return Err(bad_key(other)),
                            }
                        }
                    }
                    ("DataStore", _) => return Err(unsupported("sql")),
                    ("KeyManager", "disk") => {
                        let mut path = None;
                        for (k, v) in &data {
                            match k.as_str() {
                                "keys_path" => path = Some(scalar(k, v)?),
                                other => return Err(bad_key(other)),
                            }
                        }
                        raw.key_manager = Some(RawKm::Disk(path));
                    }
                    ("KeyManager", "memory") => {
                        if let Some(k) = data.keys().next() {
                            return Err(bad_key(k));
                        }
                        raw.key_manager = Some(RawKm::Memory);
                    }
                    ("KeyManager", _) => return Err(unsupported("disk, memory")),
                    ("NodeAttestor", "join_token") => {
                        if let Some(k) = data.keys().next() {
                            return Err(bad_key(k));
                        }
                    }
                    ("NodeAttestor", _) => return Err(unsupported("join_token")),
                    _ => {
                        return Err(unsupported(
                            "DataStore \"sql\", KeyManager \"disk\"/\"memory\", NodeAttestor \"join_token\"",
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

fn parse_health(block: &Map<String, Value>) -> Result<Option<HealthChecks>, ConfigError> {
    let mut enabled = false;
    let mut h = HealthChecks {
        bind_address: IpAddr::from([0, 0, 0, 0]),
        bind_port: 80,
        live_path: "/live".into(),
        ready_path: "/ready".into(),
    };
    for (k, v) in block {
        let s = scalar(k, v)?;
        match k.as_str() {
            "listener_enabled" => enabled = s == "true",
            "bind_address" => h.bind_address = s.parse().map_err(|e| invalid(k, e))?,
            "bind_port" => h.bind_port = s.parse().map_err(|e| invalid(k, e))?,
            "live_path" => h.live_path = s,
            "ready_path" => h.ready_path = s,
            other => {
                return Err(ConfigError::UnsupportedKey {
                    block: "health_checks".into(),
                    key: other.into(),
                });
            }
        }
    }
    Ok(enabled.then_some(h))
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
        assert_eq!(c.datastore_path, PathBuf::from("/tmp/x/datastore.sqlite3"));
        assert_eq!(c.default_jwt_svid_ttl, Duration::from_secs(300));
        assert_eq!(c.ca_ttl, Duration::from_secs(86400));
    }

    #[test]
    fn unsupported_things_are_named() {
        let cases = [
            (
                "server {\n trust_domain = \"a\"\n data_dir = \"/x\"\n federation {\n }\n}",
                "unsupported key \"federation\" in server block",
            ),
            (
                "server {\n trust_domain = \"a\"\n data_dir = \"/x\"\n}\nplugins {\n NodeAttestor \"k8s_psat\" {\n plugin_data {\n }\n }\n}",
                "unsupported NodeAttestor plugin \"k8s_psat\"",
            ),
            (
                "server {\n trust_domain = \"a\"\n data_dir = \"/x\"\n}\nplugins {\n KeyManager \"aws_kms\" {\n plugin_data {\n }\n }\n}",
                "unsupported KeyManager plugin \"aws_kms\"",
            ),
            (
                "server {\n trust_domain = \"a\"\n data_dir = \"/x\"\n}\nplugins {\n DataStore \"sql\" {\n plugin_data {\n database_type = \"postgres\"\n }\n }\n}",
                "\"postgres\" is not supported",
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
}
