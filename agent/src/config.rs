//! The agent's configuration: SPIRE's HCL agent config plus `spire-agent run`'s flags.
//!
//! Users paste their spire-agent configs, so the file format and flag names are SPIRE's. What
//! Sigil does not implement is rejected at start-up with the offending key or plugin named: a
//! silently ignored `NodeAttestor "k8s_psat"` would leave a node that never attests, which is far
//! harder to debug than a refusal to start.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde_json::{Map, Value};
use sigil_spiffe::{SpiffeId, TrustDomain};

/// Where the Workload API socket goes when neither the config nor `-socketPath` says.
pub const DEFAULT_SOCKET_PATH: &str = "/tmp/sigil-agent/public/api.sock";
/// The config file `run` reads when `-config` is not given (only if it exists).
pub const DEFAULT_CONFIG_PATH: &str = "conf/agent/agent.conf";
/// SPIRE's default server port.
pub const DEFAULT_SERVER_PORT: u16 = 8081;

/// A configuration error; the message is what the operator sees.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("unsupported key {key:?} in {block}")]
    UnsupportedKey { key: String, block: String },
    #[error("unsupported {kind} plugin {name:?}")]
    UnsupportedPlugin { kind: String, name: String },
    #[error("unsupported plugin type {0:?} in plugins block")]
    UnsupportedPluginType(String),
    #[error("more than one {0} plugin configured")]
    DuplicatePlugin(String),
    #[error("invalid value for {key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error("{0} must be configured")]
    Missing(&'static str),
    #[error("{0}")]
    Flag(#[from] sigil_flags::FlagError),
}

/// The server's host name or IP address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerHost(String);

/// A TCP port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Port(pub u16);

/// A join token. Single-use, but still a credential until used: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken(String);

/// tracing level names as SPIRE spells them (`DEBUG`, `INFO`, `WARN`, `ERROR`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the agent keeps its own private key (SPIRE's `KeyManager`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyManager {
    /// Agent SVID, key and bundle persisted under `directory`, so a restart re-uses the SVID
    /// rather than re-attesting (join tokens are single-use).
    Disk { directory: PathBuf },
    /// Nothing persisted: every start re-attests.
    Memory,
}

/// The `unix` workload attestor's options.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct UnixAttestorConfig {
    /// Adds `unix:path` and `unix:sha256` selectors.
    pub discover_workload_path: bool,
    /// Binaries larger than this are not hashed (0 = no limit).
    pub workload_size_limit: u64,
    /// Where caller facts come from (`attestation_tier`, or `-attestationTier`): `auto` picks
    /// the best tier the kernel and the agent's privileges allow.
    pub attestation_tier: crate::attestation::TierRequest,
}

/// The `health_checks` block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    pub bind_address: String,
    pub bind_port: Port,
    pub live_path: String,
    pub ready_path: String,
}

/// The validated agent configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub server_address: ServerHost,
    pub server_port: Port,
    pub socket_path: PathBuf,
    pub trust_domain: TrustDomain,
    pub trust_bundle_path: Option<PathBuf>,
    pub insecure_bootstrap: bool,
    pub join_token: Option<JoinToken>,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    pub key_manager: KeyManager,
    pub unix_attestor: Option<UnixAttestorConfig>,
    pub health: Option<HealthConfig>,
    /// The `sds` block (resource names, SPIFFE validator switch).
    pub sds: crate::sds::SdsConfig,
    /// `jwt_svid_cache_max_size`: JWT-SVIDs cached at most (least recently used evicted).
    pub jwt_svid_cache_max_size: usize,
}

/// The values the file and the flags can set, before defaults and validation.
#[derive(Debug, Default)]
struct Raw {
    data_dir: Option<String>,
    server_address: Option<String>,
    server_port: Option<String>,
    socket_path: Option<String>,
    trust_domain: Option<String>,
    trust_bundle_path: Option<String>,
    insecure_bootstrap: Option<bool>,
    join_token: Option<String>,
    log_level: Option<String>,
    log_format: Option<String>,
    key_manager: Option<(String, Map<String, Value>)>,
    node_attestor: Option<(String, Map<String, Value>)>,
    workload_attestors: Vec<(String, Map<String, Value>)>,
    health: Option<Map<String, Value>>,
    sds: Option<Map<String, Value>>,
    attestation_tier: Option<String>,
    jwt_svid_cache_max_size: Option<String>,
}

// === impl Config ===

impl Config {
    /// The flags `sigil-agent run` accepts (those of `spire-agent run`).
    pub fn flag_set() -> sigil_flags::FlagSet {
        sigil_flags::FlagSet::new()
            .value(
                "config",
                "Path to an agent config file (default conf/agent/agent.conf)",
            )
            .value(
                "dataDir",
                "A directory the agent can use for its runtime data",
            )
            .value(
                "joinToken",
                "An optional token which has been generated by the server",
            )
            .value("serverAddress", "IP address or DNS name of the server")
            .value("serverPort", "Port number of the server")
            .value("socketPath", "Path to bind the Workload API socket to")
            .value("trustDomain", "The trust domain that this agent belongs to")
            .value("trustBundle", "Path to the server CA bundle (PEM)")
            .bool(
                "insecureBootstrap",
                "If true, the agent bootstraps without verifying the server's identity",
            )
            .value("logLevel", "DEBUG, INFO, WARN or ERROR")
            .value("logFormat", "json or text")
            .bool(
                "expandEnv",
                "Expand environment variables in the config file",
            )
            .value(
                "attestationTier",
                "Workload attestation tier: auto, lsm, fentry, tp_btf, pidfd or procfs (overrides \
                 the unix attestor's attestation_tier)",
            )
    }

    /// Builds the configuration for `run` from its parsed flags: the config file (the `-config`
    /// path, or `conf/agent/agent.conf` if that exists), then the flags on top.
    pub fn from_flags(flags: &sigil_flags::Parsed) -> Result<Self, ConfigError> {
        flags.no_args()?;
        let path = match flags.get("config") {
            Some(p) => Some(PathBuf::from(p)),
            None => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.exists()),
        };
        let mut raw = match &path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                let text = if flags.flag("expandEnv") {
                    expand_env(&text)
                } else {
                    text
                };
                Raw::from_hcl(&text).map_err(|e| match e {
                    ConfigError::Parse { message, .. } => ConfigError::Parse {
                        path: path.clone(),
                        message,
                    },
                    other => other,
                })?
            }
            None => Raw::default(),
        };
        raw.apply_flags(flags);
        raw.validate()
    }

    /// Parses HCL config text alone (no flags).
    pub fn from_hcl(text: &str) -> Result<Self, ConfigError> {
        Raw::from_hcl(text)?.validate()
    }

    /// The agent's own SPIFFE ID prefix check and the server's expected ID.
    pub fn server_id(&self) -> SpiffeId {
        server_id(&self.trust_domain)
    }
}

/// `spiffe://<td>/spire/server`, the ID the server's TLS certificate must carry.
pub fn server_id(td: &TrustDomain) -> SpiffeId {
    // Invariant: "/spire/server" is a valid path, so this cannot fail; fall back to the trust
    // domain ID rather than panic (which would then fail every verification, safely).
    SpiffeId::from_path(td, "/spire/server").unwrap_or_else(|_| td.id())
}

// === impl Raw ===

impl Raw {
    /// HCL, or JSON (SPIRE accepts both; a document starting with `{` is JSON, which HCL's
    /// parser would reject).
    fn from_hcl(text: &str) -> Result<Self, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse {
            path: PathBuf::new(),
            message,
        };
        let root: Value = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| parse_error(e.to_string()))?
        } else {
            hcl::from_str(text).map_err(|e| parse_error(e.to_string()))?
        };
        let mut raw = Raw::default();
        let root = as_object(&root, "config file")?;
        for (key, value) in root {
            match key.as_str() {
                "agent" => {
                    for block in blocks(value, "agent block")? {
                        raw.agent_block(block)?;
                    }
                }
                "plugins" => {
                    for block in blocks(value, "plugins block")? {
                        raw.plugins_block(block)?;
                    }
                }
                "health_checks" => {
                    let mut merged = raw.health.take().unwrap_or_default();
                    for block in blocks(value, "health_checks block")? {
                        merged.extend(block.clone());
                    }
                    raw.health = Some(merged);
                }
                other => {
                    return Err(ConfigError::UnsupportedKey {
                        key: other.to_string(),
                        block: "config file".into(),
                    });
                }
            }
        }
        Ok(raw)
    }

    fn agent_block(&mut self, block: &Map<String, Value>) -> Result<(), ConfigError> {
        for (key, value) in block {
            let slot = match key.as_str() {
                "data_dir" => &mut self.data_dir,
                "server_address" => &mut self.server_address,
                "server_port" => &mut self.server_port,
                "socket_path" => &mut self.socket_path,
                "trust_domain" => &mut self.trust_domain,
                "trust_bundle_path" => &mut self.trust_bundle_path,
                "join_token" => &mut self.join_token,
                "log_level" => &mut self.log_level,
                "log_format" => &mut self.log_format,
                "jwt_svid_cache_max_size" => &mut self.jwt_svid_cache_max_size,
                "insecure_bootstrap" => {
                    self.insecure_bootstrap = Some(as_bool(value, "insecure_bootstrap")?);
                    continue;
                }
                "sds" => {
                    let mut merged = self.sds.take().unwrap_or_default();
                    for block in blocks(value, "sds block")? {
                        merged.extend(block.clone());
                    }
                    self.sds = Some(merged);
                    continue;
                }
                other => {
                    return Err(ConfigError::UnsupportedKey {
                        key: other.to_string(),
                        block: "agent block".into(),
                    });
                }
            };
            *slot = Some(as_scalar_string(value, key)?);
        }
        Ok(())
    }

    fn plugins_block(&mut self, block: &Map<String, Value>) -> Result<(), ConfigError> {
        for (kind, plugins) in block {
            for plugin_map in blocks(plugins, kind)? {
                for (name, body) in plugin_map {
                    let data = plugin_data(kind, name, body)?;
                    match kind.as_str() {
                        "NodeAttestor" => {
                            if name != "join_token" {
                                return Err(unsupported_plugin(kind, name));
                            }
                            reject_unknown(&data, &[], "NodeAttestor \"join_token\" plugin_data")?;
                            if self.node_attestor.replace((name.clone(), data)).is_some() {
                                return Err(ConfigError::DuplicatePlugin(kind.clone()));
                            }
                        }
                        "KeyManager" => {
                            match name.as_str() {
                                "disk" => reject_unknown(
                                    &data,
                                    &["directory"],
                                    "KeyManager \"disk\" plugin_data",
                                )?,
                                "memory" => {
                                    reject_unknown(&data, &[], "KeyManager \"memory\" plugin_data")?
                                }
                                _ => return Err(unsupported_plugin(kind, name)),
                            }
                            if self.key_manager.replace((name.clone(), data)).is_some() {
                                return Err(ConfigError::DuplicatePlugin(kind.clone()));
                            }
                        }
                        "WorkloadAttestor" => {
                            if name != "unix" {
                                return Err(unsupported_plugin(kind, name));
                            }
                            reject_unknown(
                                &data,
                                &[
                                    "discover_workload_path",
                                    "workload_size_limit",
                                    "attestation_tier",
                                ],
                                "WorkloadAttestor \"unix\" plugin_data",
                            )?;
                            if self.workload_attestors.iter().any(|(n, _)| n == name) {
                                return Err(ConfigError::DuplicatePlugin(format!(
                                    "WorkloadAttestor \"{name}\""
                                )));
                            }
                            self.workload_attestors.push((name.clone(), data));
                        }
                        other => return Err(ConfigError::UnsupportedPluginType(other.to_string())),
                    }
                }
            }
        }
        Ok(())
    }

    /// Flags win over the file, as with spire-agent.
    fn apply_flags(&mut self, flags: &sigil_flags::Parsed) {
        let pairs: [(&str, &mut Option<String>); 9] = [
            ("dataDir", &mut self.data_dir),
            ("joinToken", &mut self.join_token),
            ("serverAddress", &mut self.server_address),
            ("serverPort", &mut self.server_port),
            ("socketPath", &mut self.socket_path),
            ("trustDomain", &mut self.trust_domain),
            ("trustBundle", &mut self.trust_bundle_path),
            ("logLevel", &mut self.log_level),
            ("logFormat", &mut self.log_format),
        ];
        for (flag, slot) in pairs {
            if let Some(v) = flags.get(flag) {
                *slot = Some(v.to_string());
            }
        }
        if flags.is_set("insecureBootstrap") {
            self.insecure_bootstrap = Some(flags.flag("insecureBootstrap"));
        }
        if let Some(v) = flags.get("attestationTier") {
            self.attestation_tier = Some(v.to_string());
        }
    }

    fn validate(self) -> Result<Config, ConfigError> {
        let trust_domain: TrustDomain = self
            .trust_domain
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or(ConfigError::Missing("trust_domain"))?
            .parse()
            .map_err(|e: sigil_spiffe::IdError| invalid("trust_domain", e))?;
        let server_address: ServerHost = self
            .server_address
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or(ConfigError::Missing("server_address"))?
            .parse()
            .map_err(|e: String| invalid("server_address", e))?;
        let server_port = match self.server_port.as_deref() {
            None => Port(DEFAULT_SERVER_PORT),
            Some(p) => p.parse().map_err(|e: String| invalid("server_port", e))?,
        };
        let data_dir = PathBuf::from(self.data_dir.as_deref().unwrap_or("."));
        let socket_path = PathBuf::from(
            self.socket_path
                .as_deref()
                .map(|s| s.strip_prefix("unix://").unwrap_or(s))
                .unwrap_or(DEFAULT_SOCKET_PATH),
        );
        let insecure_bootstrap = self.insecure_bootstrap.unwrap_or(false);
        let trust_bundle_path = self
            .trust_bundle_path
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        if insecure_bootstrap && trust_bundle_path.is_some() {
            return Err(invalid(
                "insecure_bootstrap",
                "trust_bundle_path and insecure_bootstrap are mutually exclusive",
            ));
        }
        let join_token = self.join_token.filter(|s| !s.is_empty()).map(JoinToken);
        let log_level = match self.log_level.as_deref() {
            None => LogLevel::Info,
            Some(s) => s.parse().map_err(|e: String| invalid("log_level", e))?,
        };
        let log_format = match self.log_format.as_deref() {
            None => LogFormat::Text,
            Some(s) => s.parse().map_err(|e: String| invalid("log_format", e))?,
        };
        // As SPIRE: unset or 0 means the default, negative is an error.
        let jwt_svid_cache_max_size = match self.jwt_svid_cache_max_size.as_deref() {
            None => crate::manager::jwt::DEFAULT_CACHE_SIZE,
            Some(s) => match s.trim().parse::<i64>() {
                Ok(0) => crate::manager::jwt::DEFAULT_CACHE_SIZE,
                Ok(n) if n > 0 => usize::try_from(n)
                    .map_err(|_| invalid("jwt_svid_cache_max_size", format!("{n} is too large")))?,
                Ok(_) => {
                    return Err(invalid(
                        "jwt_svid_cache_max_size",
                        "jwt_svid_cache_max_size should not be negative",
                    ));
                }
                Err(_) => {
                    return Err(invalid(
                        "jwt_svid_cache_max_size",
                        format!("{s:?} is not an integer"),
                    ));
                }
            },
        };

        // No KeyManager block (e.g. flags only): persist on disk, like a typical SPIRE setup, so
        // a restart does not burn another join token.
        let key_manager = match self.key_manager {
            Some((name, _)) if name == "memory" => KeyManager::Memory,
            Some((_, data)) => KeyManager::Disk {
                directory: match data.get("directory") {
                    Some(v) => PathBuf::from(as_scalar_string(v, "directory")?),
                    None => data_dir.clone(),
                },
            },
            None => KeyManager::Disk {
                directory: data_dir.clone(),
            },
        };

        // No WorkloadAttestor block: the unix attestor with its defaults (an agent that can
        // attest nobody would be useless).
        let unix_attestor = if self.workload_attestors.is_empty() {
            Some(UnixAttestorConfig::default())
        } else {
            let mut unix = None;
            for (name, data) in &self.workload_attestors {
                if name == "unix" {
                    let mut cfg = UnixAttestorConfig::default();
                    if let Some(v) = data.get("discover_workload_path") {
                        cfg.discover_workload_path = as_bool(v, "discover_workload_path")?;
                    }
                    if let Some(v) = data.get("workload_size_limit") {
                        let s = as_scalar_string(v, "workload_size_limit")?;
                        // SPIRE takes a signed number where negative disables hashing; treat
                        // that as "no limit" rather than refusing the config.
                        cfg.workload_size_limit = s
                            .parse::<i64>()
                            .map_err(|e| invalid("workload_size_limit", e))?
                            .max(0) as u64;
                    }
                    if let Some(v) = data.get("attestation_tier") {
                        let s = as_scalar_string(v, "attestation_tier")?;
                        cfg.attestation_tier = s
                            .parse()
                            .map_err(|e: String| invalid("attestation_tier", e))?;
                    }
                    unix = Some(cfg);
                }
            }
            unix
        };
        let mut unix_attestor = unix_attestor;
        if let (Some(tier), Some(unix)) = (&self.attestation_tier, unix_attestor.as_mut()) {
            unix.attestation_tier = tier
                .parse()
                .map_err(|e: String| invalid("attestationTier", e))?;
        }

        let health = match self.health {
            None => None,
            Some(block) => HealthConfig::from_block(&block)?,
        };
        let sds = match &self.sds {
            None => crate::sds::SdsConfig::default(),
            Some(block) => sds_config(block)?,
        };

        Ok(Config {
            data_dir,
            server_address,
            server_port,
            socket_path,
            trust_domain,
            trust_bundle_path,
            insecure_bootstrap,
            join_token,
            log_level,
            log_format,
            key_manager,
            unix_attestor,
            health,
            sds,
            jwt_svid_cache_max_size,
        })
    }
}

// === impl HealthConfig ===

impl HealthConfig {
    /// `None` when the listener is disabled (the default, as in SPIRE).
    fn from_block(block: &Map<String, Value>) -> Result<Option<Self>, ConfigError> {
        reject_unknown(
            block,
            &[
                "listener_enabled",
                "bind_address",
                "bind_port",
                "live_path",
                "ready_path",
            ],
            "health_checks block",
        )?;
        let enabled = match block.get("listener_enabled") {
            Some(v) => as_bool(v, "listener_enabled")?,
            None => false,
        };
        if !enabled {
            return Ok(None);
        }
        let get = |key: &str, default: &str| -> Result<String, ConfigError> {
            match block.get(key) {
                Some(v) => as_scalar_string(v, key),
                None => Ok(default.to_string()),
            }
        };
        let path = |key: &str, default: &str| -> Result<String, ConfigError> {
            let p = get(key, default)?;
            if p.starts_with('/') {
                Ok(p)
            } else {
                Err(invalid(key, "must start with /"))
            }
        };
        Ok(Some(HealthConfig {
            bind_address: get("bind_address", "localhost")?,
            bind_port: get("bind_port", "80")?
                .parse()
                .map_err(|e: String| invalid("bind_port", e))?,
            live_path: path("live_path", "/live")?,
            ready_path: path("ready_path", "/ready")?,
        }))
    }
}

// === impl ServerHost ===

impl FromStr for ServerHost {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty address".into());
        }
        if s.contains("://") || s.contains('/') {
            return Err(format!("{s:?} is not a host name or IP address"));
        }
        // A bracketed IPv6 literal is accepted and unbracketed.
        let host = s
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(s);
        if host.parse::<IpAddr>().is_err()
            && rustls_pki_types::DnsName::try_from(host.to_string()).is_err()
        {
            return Err(format!("{s:?} is not a host name or IP address"));
        }
        Ok(Self(host.to_string()))
    }
}

impl ServerHost {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServerHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// === impl Port ===

impl FromStr for Port {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("{s:?} is not a port number (1-65535)")),
            Ok(p) => Ok(Port(p)),
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

// === impl JoinToken ===

impl JoinToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinToken([redacted])")
    }
}

// === impl LogLevel ===

impl FromStr for LogLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "trace" => Ok(Self::Trace),
            "debug" => Ok(Self::Debug),
            "info" => Ok(Self::Info),
            "warn" | "warning" => Ok(Self::Warn),
            "error" => Ok(Self::Error),
            _ => Err(format!(
                "unknown log level {s:?} (DEBUG, INFO, WARN or ERROR)"
            )),
        }
    }
}

impl LogLevel {
    pub fn as_filter(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

// === impl LogFormat ===

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" | "" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(format!("unknown log format {s:?} (json or text)")),
        }
    }
}

// === helpers ===

/// A block given once is an object; given several times (or written in SPIRE's JSON config
/// form) it is an array of objects.
fn blocks<'a>(v: &'a Value, what: &str) -> Result<Vec<&'a Map<String, Value>>, ConfigError> {
    match v {
        Value::Object(m) => Ok(vec![m]),
        Value::Array(items) => items.iter().map(|i| as_object(i, what)).collect(),
        _ => Err(ConfigError::Parse {
            path: PathBuf::new(),
            message: format!("{what} must be a block"),
        }),
    }
}

fn as_object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, ConfigError> {
    v.as_object().ok_or_else(|| ConfigError::Parse {
        path: PathBuf::new(),
        message: format!("{what} must be a block"),
    })
}

/// The `plugin_data` of one plugin; `plugin_data {}` and `plugin_data = {}` both work, and so
/// does leaving it out. Anything else in the plugin body (`plugin_cmd`, `enabled`, ...) is
/// rejected.
fn plugin_data(kind: &str, name: &str, body: &Value) -> Result<Map<String, Value>, ConfigError> {
    let mut data = Map::new();
    for body in blocks(body, &format!("{kind} \"{name}\""))? {
        for (key, value) in body {
            match key.as_str() {
                "plugin_data" => {
                    for b in blocks(value, "plugin_data")? {
                        data.extend(b.clone());
                    }
                }
                other => {
                    return Err(ConfigError::UnsupportedKey {
                        key: other.to_string(),
                        block: format!("{kind} \"{name}\" plugin"),
                    });
                }
            }
        }
    }
    Ok(data)
}

/// The `sds` block inside `agent` (SPIRE's keys and defaults).
fn sds_config(block: &Map<String, Value>) -> Result<crate::sds::SdsConfig, ConfigError> {
    reject_unknown(
        block,
        &[
            "default_svid_name",
            "default_bundle_name",
            "default_all_bundles_name",
            "disable_spiffe_cert_validation",
        ],
        "sds block",
    )?;
    let mut cfg = crate::sds::SdsConfig::default();
    let name = |key: &str, slot: &mut String| -> Result<(), ConfigError> {
        if let Some(v) = block.get(key) {
            let s = as_scalar_string(v, key)?;
            if s.is_empty() {
                return Err(invalid(key, "must not be empty"));
            }
            *slot = s;
        }
        Ok(())
    };
    name("default_svid_name", &mut cfg.default_svid_name)?;
    name("default_bundle_name", &mut cfg.default_bundle_name)?;
    name(
        "default_all_bundles_name",
        &mut cfg.default_all_bundles_name,
    )?;
    if let Some(v) = block.get("disable_spiffe_cert_validation") {
        cfg.disable_spiffe_cert_validation = as_bool(v, "disable_spiffe_cert_validation")?;
    }
    Ok(cfg)
}

fn reject_unknown(
    data: &Map<String, Value>,
    known: &[&str],
    block: &str,
) -> Result<(), ConfigError> {
    match data.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(ConfigError::UnsupportedKey {
            key: k.clone(),
            block: block.to_string(),
        }),
        None => Ok(()),
    }
}

fn unsupported_plugin(kind: &str, name: &str) -> ConfigError {
    ConfigError::UnsupportedPlugin {
        kind: kind.to_string(),
        name: name.to_string(),
    }
}

/// SPIRE configs quote numbers (`server_port = "8081"`) as often as not; take both.
fn as_scalar_string(v: &Value, key: &str) -> Result<String, ConfigError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(invalid(key, "expected a string or number")),
    }
}

fn as_bool(v: &Value, key: &str) -> Result<bool, ConfigError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(invalid(key, "expected true or false")),
    }
}

fn invalid(key: &str, reason: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

/// `$VAR` and `${VAR}` expansion (spire-agent's `-expandEnv`); unset variables expand to "".
fn expand_env(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        let name: String = if chars.peek() == Some(&'{') {
            chars.next();
            let mut name = String::new();
            for c in chars.by_ref() {
                if c == '}' {
                    break;
                }
                name.push(c);
            }
            name
        } else {
            let mut name = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    name.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            if name.is_empty() {
                out.push('$');
                continue;
            }
            name
        };
        out.push_str(&std::env::var(&name).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
agent {
    data_dir = "/var/lib/sigil"
    log_level = "DEBUG"
    log_format = "json"
    server_address = "sigil-server.example"
    server_port = "8443"
    socket_path = "/run/sigil/api.sock"
    trust_bundle_path = "/etc/sigil/bundle.pem"
    trust_domain = "example.org"
    join_token = "abc"
}

plugins {
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "disk" {
        plugin_data {
            directory = "/var/lib/sigil/keys"
        }
    }
    WorkloadAttestor "unix" {
        plugin_data {
            discover_workload_path = true
        }
    }
}

health_checks {
    listener_enabled = true
    bind_address = "127.0.0.1"
    bind_port = "8080"
    live_path = "/live"
    ready_path = "/ready"
}
"#;

    #[test]
    fn good_config() {
        let c = Config::from_hcl(GOOD).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/sigil"));
        assert_eq!(c.server_address.as_str(), "sigil-server.example");
        assert_eq!(c.server_port, Port(8443));
        assert_eq!(c.socket_path, PathBuf::from("/run/sigil/api.sock"));
        assert_eq!(c.trust_domain.as_str(), "example.org");
        assert_eq!(c.join_token, Some(JoinToken::new("abc")));
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(
            c.key_manager,
            KeyManager::Disk {
                directory: "/var/lib/sigil/keys".into()
            }
        );
        assert!(c.unix_attestor.clone().unwrap().discover_workload_path);
        let h = c.health.clone().unwrap();
        assert_eq!(h.bind_port, Port(8080));
        assert_eq!(h.ready_path, "/ready");
        assert_eq!(c.server_id().as_str(), "spiffe://example.org/spire/server");
        assert!(!format!("{:?}", c.join_token).contains("abc"));
    }

    #[test]
    fn defaults() {
        let c = Config::from_hcl(
            "agent {\n trust_domain = \"td\"\n server_address = \"127.0.0.1\"\n server_port = 9000\n}\n",
        )
        .unwrap();
        assert_eq!(c.server_port, Port(9000));
        assert_eq!(c.socket_path, PathBuf::from(DEFAULT_SOCKET_PATH));
        assert_eq!(
            c.key_manager,
            KeyManager::Disk {
                directory: ".".into()
            }
        );
        assert_eq!(c.unix_attestor, Some(UnixAttestorConfig::default()));
        assert!(c.health.is_none());
    }

    #[test]
    fn jwt_svid_cache_max_size() {
        let cfg = |v: &str| {
            Config::from_hcl(&format!(
                "agent {{\n trust_domain = \"td\"\n server_address = \"x\"\n{v}}}\n"
            ))
        };
        assert_eq!(cfg("").unwrap().jwt_svid_cache_max_size, 1000);
        assert_eq!(
            cfg("jwt_svid_cache_max_size = 0\n")
                .unwrap()
                .jwt_svid_cache_max_size,
            1000
        );
        assert_eq!(
            cfg("jwt_svid_cache_max_size = 25\n")
                .unwrap()
                .jwt_svid_cache_max_size,
            25
        );
        let err = cfg("jwt_svid_cache_max_size = -1\n").unwrap_err();
        assert!(err.to_string().contains("should not be negative"), "{err}");
        assert!(cfg("jwt_svid_cache_max_size = \"many\"\n").is_err());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_hcl(
            "agent {\n trust_domain = \"td\"\n server_address = \"x\"\n foo = 1\n}\n",
        )
        .unwrap_err();
        assert_eq!(err.to_string(), r#"unsupported key "foo" in agent block"#);

        let err = Config::from_hcl("telemetry {\n x = 1\n}\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"unsupported key "telemetry" in config file"#
        );

        let err = Config::from_hcl(
            "plugins {\n WorkloadAttestor \"unix\" {\n plugin_data {\n bogus = true\n }\n }\n}\n",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains(r#"unsupported key "bogus""#),
            "{err}"
        );
    }

    #[test]
    fn sds_block() {
        let c = Config::from_hcl(
            "agent {\n trust_domain = \"td\"\n server_address = \"x\"\n sds {\n default_svid_name = \"svid\"\n default_bundle_name = \"ca\"\n default_all_bundles_name = \"all\"\n disable_spiffe_cert_validation = true\n }\n}\n",
        )
        .unwrap();
        assert_eq!(
            c.sds,
            crate::sds::SdsConfig {
                default_svid_name: "svid".into(),
                default_bundle_name: "ca".into(),
                default_all_bundles_name: "all".into(),
                disable_spiffe_cert_validation: true,
            }
        );
        let c = Config::from_hcl("agent {\n trust_domain = \"td\"\n server_address = \"x\"\n}\n")
            .unwrap();
        assert_eq!(c.sds.default_svid_name, "default");
        assert_eq!(c.sds.default_bundle_name, "ROOTCA");
        let err = Config::from_hcl(
            "agent {\n trust_domain = \"td\"\n server_address = \"x\"\n sds {\n bogus = 1\n }\n}\n",
        )
        .unwrap_err();
        assert_eq!(err.to_string(), r#"unsupported key "bogus" in sds block"#);
    }

    #[test]
    fn attestation_tier() {
        use crate::attestation::{Tier, TierRequest};
        let base = "agent {\n trust_domain = \"td\"\n server_address = \"x\"\n}\n";
        let c = Config::from_hcl(base).unwrap();
        assert_eq!(c.unix_attestor.unwrap().attestation_tier, TierRequest::Auto);
        let c = Config::from_hcl(&format!(
            "{base}plugins {{\n WorkloadAttestor \"unix\" {{\n plugin_data {{\n attestation_tier = \"tp_btf\"\n }}\n }}\n}}\n"
        ))
        .unwrap();
        assert_eq!(
            c.unix_attestor.unwrap().attestation_tier,
            TierRequest::Force(Tier::TpBtf)
        );
        let err = Config::from_hcl(&format!(
            "{base}plugins {{\n WorkloadAttestor \"unix\" {{\n plugin_data {{\n attestation_tier = \"kprobe\"\n }}\n }}\n}}\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("attestation_tier"), "{err}");
    }

    #[test]
    fn unknown_plugin_is_named() {
        let err = Config::from_hcl(
            "plugins {\n NodeAttestor \"k8s_psat\" {\n plugin_data {\n cluster = \"c\"\n }\n }\n}\n",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"unsupported NodeAttestor plugin "k8s_psat""#
        );

        let err =
            Config::from_hcl("plugins {\n WorkloadAttestor \"docker\" {\n plugin_data {}\n }\n}\n")
                .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"unsupported WorkloadAttestor plugin "docker""#
        );

        let err =
            Config::from_hcl("plugins {\n Notifier \"x\" {\n plugin_data {}\n }\n}\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"unsupported plugin type "Notifier" in plugins block"#
        );
    }

    #[test]
    fn memory_key_manager_and_plugin_data_attribute() {
        let c = Config::from_hcl(
            "agent {\n trust_domain = \"td\"\n server_address = \"x\"\n}\nplugins {\n KeyManager \"memory\" {\n plugin_data = {}\n }\n}\n",
        )
        .unwrap();
        assert_eq!(c.key_manager, KeyManager::Memory);
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.conf");
        std::fs::write(&path, GOOD).unwrap();
        let flags = Config::flag_set()
            .parse([
                "-config",
                path.to_str().unwrap(),
                "-serverPort",
                "9999",
                "-joinToken",
                "xyz",
                "-socketPath",
                "/tmp/x.sock",
                "-logLevel",
                "warn",
            ])
            .unwrap();
        let c = Config::from_flags(&flags).unwrap();
        assert_eq!(c.server_port, Port(9999));
        assert_eq!(c.join_token, Some(JoinToken::new("xyz")));
        assert_eq!(c.socket_path, PathBuf::from("/tmp/x.sock"));
        assert_eq!(c.log_level, LogLevel::Warn);
        assert_eq!(c.server_address.as_str(), "sigil-server.example");
    }

    #[test]
    fn missing_and_invalid_values() {
        let err = Config::from_hcl("agent {\n server_address = \"x\"\n}\n").unwrap_err();
        assert_eq!(err.to_string(), "trust_domain must be configured");
        let err = Config::from_hcl(
            "agent {\n trust_domain = \"td\"\n server_address = \"x\"\n server_port = \"http\"\n}\n",
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("invalid value for server_port"),
            "{err}"
        );
        let err =
            Config::from_hcl("agent {\n trust_domain = \"Bad TD\"\n server_address = \"x\"\n}\n")
                .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid value for trust_domain"),
            "{err}"
        );
    }

    #[test]
    fn json_config() {
        let c = Config::from_hcl(
            r#"{"agent": {"trust_domain": "td", "server_address": "10.0.0.1", "server_port": 8443},
                "plugins": {"NodeAttestor": [{"join_token": {"plugin_data": {}}}],
                            "KeyManager": [{"memory": {"plugin_data": {}}}]}}"#,
        )
        .unwrap();
        assert_eq!(c.server_port, Port(8443));
        assert_eq!(c.key_manager, KeyManager::Memory);
        let err =
            Config::from_hcl(r#"{"plugins": {"NodeAttestor": [{"aws_iid": {}}]}}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"unsupported NodeAttestor plugin "aws_iid""#
        );
    }

    #[test]
    fn env_expansion() {
        let out = expand_env("a $SIGIL_TEST_UNSET_VAR b ${SIGIL_TEST_UNSET_VAR} $ c");
        assert_eq!(out, "a  b  $ c");
    }
}
