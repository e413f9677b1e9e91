//! SPIRE's `oidc-discovery-provider.conf`: the same keys, defaults, checks (in SPIRE's order)
//! and messages, read strictly with `sigil-config` (a key nobody reads is an error, where
//! SPIRE's decoder would silently ignore it).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sigil_config::{Block, LogFormat, LogLevel};

use crate::url::AbsUrl;

/// SPIRE's default for every `poll_interval`.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(10);
/// SPIRE's default `file_sync_interval` of `serving_cert_file`.
pub const DEFAULT_FILE_SYNC_INTERVAL: Duration = Duration::from_secs(60);
/// SPIRE's default `addr` of `serving_cert_file`.
const DEFAULT_ADDR: &str = ":443";
const DEFAULT_HEALTH_PORT: u16 = 8008;

/// Why a configuration cannot be used. The message is what the operator sees.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading or parsing the file, an unknown key, a value of the wrong type.
    #[error(transparent)]
    File(#[from] sigil_config::ConfigError),
    /// One of SPIRE's semantic checks, with SPIRE's message.
    #[error("{0}")]
    Invalid(String),
    /// Something SPIRE supports that Sigil does not.
    #[error("{0}")]
    Unsupported(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// The whole configuration, with SPIRE's defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    pub log_path: Option<PathBuf>,
    pub log_requests: bool,
    /// Deduplicated, in the order written.
    pub domains: Vec<String>,
    pub set_key_use: bool,
    pub allow_insecure_scheme: bool,
    pub listen: Listen,
    pub source: Source,
    pub health_checks: Option<HealthChecks>,
    pub jwt_issuer: Option<AbsUrl>,
    pub jwks_uri: Option<AbsUrl>,
    /// As written (`""` when unset: the handler treats it as `/`).
    pub server_path_prefix: String,
}

/// Where HTTP(S) is served.
#[derive(Clone, Debug, PartialEq)]
pub enum Listen {
    /// `insecure_addr`: plain HTTP on TCP.
    Insecure(String),
    /// `listen_socket_path`: plain HTTP on a Unix socket.
    Socket(PathBuf),
    /// `serving_cert_file`: HTTPS with a certificate and key read from files.
    ServingCertFile(ServingCertFile),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServingCertFile {
    pub cert_file_path: PathBuf,
    pub key_file_path: PathBuf,
    /// `addr` as written (`:443` by default), checked to be `host:port`.
    pub addr: String,
    pub file_sync_interval: Duration,
}

/// Where the JWT authorities come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// `server_api`: the server's admin socket (`address = "unix:///path"`), `GetBundle`.
    ServerApi {
        socket: PathBuf,
        poll_interval: Duration,
    },
    /// `workload_api`: an agent's Workload API socket, `FetchJWTBundles`.
    WorkloadApi {
        socket_path: PathBuf,
        trust_domain: String,
        poll_interval: Duration,
    },
    /// `file`: a SPIFFE bundle document on disk.
    File {
        path: PathBuf,
        poll_interval: Duration,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthChecks {
    pub bind_port: u16,
    pub live_path: String,
    pub ready_path: String,
}

// === impl Source ===

impl Source {
    pub fn poll_interval(&self) -> Duration {
        match self {
            Source::ServerApi { poll_interval, .. }
            | Source::WorkloadApi { poll_interval, .. }
            | Source::File { poll_interval, .. } => *poll_interval,
        }
    }
}

// === impl Config ===

impl Config {
    /// Reads the file at `path`, with `${VAR}` expanded first when `expand_env` (`-expandEnv`).
    pub fn load(path: &std::path::Path, expand_env: bool) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| sigil_config::ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        let text = if expand_env {
            sigil_config::expand_env(&text)
        } else {
            text
        };
        Self::parse(&text).map_err(|e| match e {
            ConfigError::File(f) => ConfigError::File(f.in_file(path)),
            other => other,
        })
    }

    /// SPIRE's `ParseConfig`: decode, then its checks in its order.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let mut root = sigil_config::parse(text)?;

        let log_format = root
            .string("log_format")?
            .unwrap_or_default()
            .parse()
            .map_err(|e| sigil_config::ConfigError::invalid("log_format", e))?;
        let log_level = match root.string("log_level")? {
            Some(l) if !l.is_empty() => l
                .parse()
                .map_err(|e| sigil_config::ConfigError::invalid("log_level", e))?,
            _ => LogLevel::Info,
        };
        let log_path = root
            .string("log_path")?
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        let log_requests = root.bool("log_requests")?.unwrap_or(false);
        let domains = root.strings("domains")?.unwrap_or_default();
        let set_key_use = root.bool("set_key_use")?.unwrap_or(false);
        let allow_insecure_scheme = root.bool("allow_insecure_scheme")?.unwrap_or(false);
        let insecure_addr = root.string("insecure_addr")?.unwrap_or_default();
        let listen_socket_path = root.string("listen_socket_path")?.unwrap_or_default();
        let acme = root.block("acme", "acme block")?;
        let serving = root.block("serving_cert_file", "serving_cert_file block")?;
        let server_api = root.block("server_api", "server_api block")?;
        let workload_api = root.block("workload_api", "workload_api block")?;
        let file = root.block("file", "file block")?;
        let health = root.block("health_checks", "health_checks block")?;
        if let Some(mut experimental) = root.block("experimental", "experimental block")? {
            named_pipe(&mut experimental, "listen_named_pipe_name")?;
            experimental.finish()?;
        }
        let jwt_issuer = root.string("jwt_issuer")?.unwrap_or_default();
        let jwks_uri = root.string("jwks_uri")?.unwrap_or_default();
        let server_path_prefix = root.string("server_path_prefix")?.unwrap_or_default();
        root.finish()?;

        if domains.is_empty() {
            return Err(invalid("at least one domain must be configured"));
        }
        let mut deduped: Vec<String> = Vec::with_capacity(domains.len());
        for d in domains {
            if !deduped.contains(&d) {
                deduped.push(d);
            }
        }

        if let Some(mut acme) = acme {
            // SPIRE's checks first, so a config SPIRE refuses gets SPIRE's message.
            let _directory_url = acme.string("directory_url")?;
            let email = acme.string("email")?.unwrap_or_default();
            let tos_accepted = acme.bool("tos_accepted")?.unwrap_or(false);
            let _cache_dir = acme.string("cache_dir")?;
            acme.finish()?;
            if !insecure_addr.is_empty() {
                return Err(invalid(
                    "insecure_addr and the acme section are mutually exclusive",
                ));
            }
            if !tos_accepted {
                return Err(invalid(
                    "tos_accepted must be set to true in the acme configuration section",
                ));
            }
            if email.is_empty() {
                return Err(invalid(
                    "email must be configured in the acme configuration section",
                ));
            }
            // Certificates from an ACME CA need the provider to reach it from here and the CA
            // to reach the provider: Sigil does not implement the protocol.
            return Err(ConfigError::Unsupported(
                "the acme section is not supported by Sigil: obtain a certificate separately and \
                 use serving_cert_file (re-read when the files change), or serve plain HTTP \
                 behind a TLS-terminating proxy with listen_socket_path or insecure_addr"
                    .into(),
            ));
        }

        let serving = serving.map(read_serving_cert_file).transpose()?;

        let mut sources = Vec::new();
        if let Some(mut b) = server_api {
            let address = b.string("address")?.unwrap_or_default();
            let poll_interval = poll_interval(&mut b, "server_api")?;
            if let Some(mut experimental) =
                b.block("experimental", "server_api experimental block")?
            {
                named_pipe(&mut experimental, "named_pipe_name")?;
                experimental.finish()?;
            }
            b.finish()?;
            sources.push(SourceDraft::ServerApi {
                address,
                poll_interval,
            });
        }
        if let Some(mut b) = workload_api {
            let socket_path = b.string("socket_path")?.unwrap_or_default();
            let trust_domain = b.string("trust_domain")?.unwrap_or_default();
            let raw_poll = b.string("poll_interval")?;
            if let Some(mut experimental) =
                b.block("experimental", "workload_api experimental block")?
            {
                named_pipe(&mut experimental, "named_pipe_name")?;
                experimental.finish()?;
            }
            b.finish()?;
            if trust_domain.is_empty() {
                return Err(invalid(
                    "trust_domain must be configured in the workload_api configuration section",
                ));
            }
            let poll_interval = parse_poll(raw_poll, "workload_api")?;
            sources.push(SourceDraft::WorkloadApi {
                socket_path,
                trust_domain,
                poll_interval,
            });
        }
        if let Some(mut b) = file {
            let path = b.string("path")?.unwrap_or_default();
            let poll_interval = poll_interval(&mut b, "file")?;
            b.finish()?;
            sources.push(SourceDraft::File {
                path,
                poll_interval,
            });
        }

        let health_checks = health.map(read_health_checks).transpose()?;

        // SPIRE's validateOS (Unix): which listener, then the sources' addresses.
        let listen = match (
            serving,
            insecure_addr.is_empty(),
            listen_socket_path.is_empty(),
        ) {
            (None, true, true) => {
                return Err(invalid(
                    "either acme, serving_cert_file, insecure_addr or listen_socket_path must be configured",
                ));
            }
            (Some(_), false, _) => {
                return Err(invalid(
                    "serving_cert_file and insecure_addr are mutually exclusive",
                ));
            }
            (Some(_), _, false) => {
                return Err(invalid(
                    "serving_cert_file and listen_socket_path are mutually exclusive",
                ));
            }
            (None, false, false) => {
                return Err(invalid(
                    "insecure_addr and listen_socket_path are mutually exclusive",
                ));
            }
            (Some(s), true, true) => Listen::ServingCertFile(s),
            (None, false, true) => Listen::Insecure(insecure_addr),
            (None, true, false) => Listen::Socket(PathBuf::from(listen_socket_path)),
        };
        for s in &sources {
            match s {
                SourceDraft::ServerApi { address, .. } => {
                    if address.is_empty() {
                        return Err(invalid(
                            "address must be configured in the server_api configuration section",
                        ));
                    }
                    if !address.starts_with("unix:") {
                        return Err(invalid(
                            "address must use the unix name system in the server_api configuration section",
                        ));
                    }
                }
                SourceDraft::WorkloadApi { socket_path, .. } if socket_path.is_empty() => {
                    return Err(invalid(
                        "socket_path must be configured in the workload_api configuration section",
                    ));
                }
                _ => {}
            }
        }

        let source = match sources.len() {
            0 => {
                return Err(invalid(
                    "exactly one of the server_api, workload_api, or file sections must be configured",
                ));
            }
            1 => sources.remove(0).finish()?,
            _ => {
                return Err(invalid(
                    "the server_api, workload_api, and file sections are mutually exclusive",
                ));
            }
        };

        let jwt_issuer = if jwt_issuer.is_empty() {
            None
        } else {
            let u = AbsUrl::parse(&jwt_issuer)
                .map_err(|e| invalid(format!("the jwt_issuer url could not be parsed: {e}")))?;
            if u.scheme.is_empty() {
                return Err(invalid("the jwt_issuer url must contain a scheme"));
            }
            if u.host.is_empty() {
                return Err(invalid("the jwt_issuer url must contain a host"));
            }
            Some(u)
        };
        let jwks_uri = if jwks_uri.is_empty() {
            None
        } else {
            let u = AbsUrl::parse(&jwks_uri)
                .ok()
                .filter(|u| !u.scheme.is_empty() && !u.host.is_empty())
                .ok_or_else(|| {
                    invalid(
                        "the jwks_uri setting could not be parsed: it must be an absolute URL \
                         with a scheme and a host",
                    )
                })?;
            Some(u)
        };

        Ok(Config {
            log_level,
            log_format,
            log_path,
            log_requests,
            domains: deduped,
            set_key_use,
            allow_insecure_scheme,
            listen,
            source,
            health_checks,
            jwt_issuer,
            jwks_uri,
            server_path_prefix,
        })
    }
}

/// A source as read, before the checks that SPIRE runs after all of them are read.
enum SourceDraft {
    ServerApi {
        address: String,
        poll_interval: Duration,
    },
    WorkloadApi {
        socket_path: String,
        trust_domain: String,
        poll_interval: Duration,
    },
    File {
        path: String,
        poll_interval: Duration,
    },
}

// === impl SourceDraft ===

impl SourceDraft {
    fn finish(self) -> Result<Source, ConfigError> {
        Ok(match self {
            SourceDraft::ServerApi {
                address,
                poll_interval,
            } => Source::ServerApi {
                socket: unix_target_path(&address)?,
                poll_interval,
            },
            SourceDraft::WorkloadApi {
                socket_path,
                trust_domain,
                poll_interval,
            } => Source::WorkloadApi {
                socket_path: absolute(PathBuf::from(socket_path)),
                trust_domain,
                poll_interval,
            },
            SourceDraft::File {
                path,
                poll_interval,
            } => Source::File {
                path: PathBuf::from(path),
                poll_interval,
            },
        })
    }
}

/// The socket path of a gRPC `unix:` target: `unix:///abs/path`, `unix:/abs/path` or
/// `unix:relative/path` (gRPC's naming document).
fn unix_target_path(address: &str) -> Result<PathBuf, ConfigError> {
    let rest = address.strip_prefix("unix:").unwrap_or(address);
    let path = match rest.strip_prefix("//") {
        // `unix://authority/path` is not a form gRPC accepts: only an empty authority.
        Some(p) if p.starts_with('/') => p,
        Some(_) => {
            return Err(invalid(format!(
                "address {address:?} in the server_api configuration section: use unix:///absolute/path or unix:path"
            )));
        }
        None => rest,
    };
    if path.is_empty() {
        return Err(invalid(
            "address must be configured in the server_api configuration section",
        ));
    }
    Ok(PathBuf::from(path))
}

/// SPIRE makes the Workload API socket path absolute against the working directory.
fn absolute(p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        return p;
    }
    std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p)
}

/// Windows named pipes: the keys are SPIRE's, so they are read, but Sigil is Unix-only.
fn named_pipe(block: &mut Block, key: &str) -> Result<(), ConfigError> {
    match block.string(key)? {
        Some(name) if !name.is_empty() => Err(ConfigError::Unsupported(format!(
            "{key} is not supported: named pipes are Windows-only and Sigil runs on Unix"
        ))),
        _ => Ok(()),
    }
}

fn poll_interval(block: &mut Block, section: &str) -> Result<Duration, ConfigError> {
    let raw = block.string("poll_interval")?;
    parse_poll(raw, section)
}

fn parse_poll(raw: Option<String>, section: &str) -> Result<Duration, ConfigError> {
    parse_duration_field(raw, DEFAULT_POLL_INTERVAL).map_err(|e| {
        invalid(format!(
            "invalid poll_interval in the {section} configuration section: {e}"
        ))
    })
}

/// SPIRE's `parseDurationField`: unset, empty, zero or negative is the default.
fn parse_duration_field(raw: Option<String>, default: Duration) -> Result<Duration, String> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(default);
    };
    if raw.trim_start().starts_with('-') {
        // A negative Go duration parses, then falls back to the default.
        return sigil_flags::parse_duration(raw.trim_start().trim_start_matches('-'))
            .map(|_| default);
    }
    let d = sigil_flags::parse_duration(&raw)?;
    Ok(if d.is_zero() { default } else { d })
}

fn read_serving_cert_file(mut b: Block) -> Result<ServingCertFile, ConfigError> {
    let cert = b.string("cert_file_path")?.unwrap_or_default();
    let key = b.string("key_file_path")?.unwrap_or_default();
    let addr = b.string("addr")?.unwrap_or_default();
    let sync = b.string("file_sync_interval")?;
    b.finish()?;
    if cert.is_empty() {
        return Err(invalid(
            "cert_file_path must be configured in the serving_cert_file configuration section",
        ));
    }
    if key.is_empty() {
        return Err(invalid(
            "key_file_path must be configured in the serving_cert_file configuration section",
        ));
    }
    let addr = if addr.is_empty() {
        DEFAULT_ADDR.to_string()
    } else {
        addr
    };
    check_tcp_addr(&addr).map_err(|e| {
        invalid(format!(
            "invalid addr in the serving_cert_file configuration section: {e}"
        ))
    })?;
    let file_sync_interval =
        parse_duration_field(sync, DEFAULT_FILE_SYNC_INTERVAL).map_err(|e| {
            invalid(format!(
                "invalid file_sync_interval in the serving_cert_file configuration section: {e}"
            ))
        })?;
    Ok(ServingCertFile {
        cert_file_path: PathBuf::from(cert),
        key_file_path: PathBuf::from(key),
        addr,
        file_sync_interval,
    })
}

fn read_health_checks(mut b: Block) -> Result<HealthChecks, ConfigError> {
    let port = b.integer("bind_port")?.unwrap_or(0);
    let live = b.string("live_path")?.unwrap_or_default();
    let ready = b.string("ready_path")?.unwrap_or_default();
    b.finish()?;
    // SPIRE: zero or negative is the default port.
    let bind_port = if port <= 0 {
        DEFAULT_HEALTH_PORT
    } else {
        u16::try_from(port)
            .map_err(|_| sigil_config::ConfigError::invalid("bind_port", "must be at most 65535"))?
    };
    let or = |v: String, d: &str| if v.is_empty() { d.to_string() } else { v };
    Ok(HealthChecks {
        bind_port,
        live_path: or(live, "/live"),
        ready_path: or(ready, "/ready"),
    })
}

/// `host:port` (host may be empty, a name, an IP, or a bracketed IPv6 address).
pub fn check_tcp_addr(addr: &str) -> Result<(), String> {
    let (host, port) = split_host_port(addr)?;
    if host.contains(char::is_whitespace) {
        return Err(format!("invalid host {host:?}"));
    }
    port.parse::<u16>()
        .map(|_| ())
        .map_err(|_| format!("address {addr}: invalid port {port:?}"))
}

/// Splits `host:port` as Go's `net.SplitHostPort`.
pub fn split_host_port(addr: &str) -> Result<(&str, &str), String> {
    if let Some(rest) = addr.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("address {addr}: missing ']' in address"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("address {addr}: missing port in address"))?;
        return Ok((host, port));
    }
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("address {addr}: missing port in address"))?;
    if host.contains(':') {
        return Err(format!("address {addr}: too many colons in address"));
    }
    Ok((host, port))
}

/// The socket address to bind for `addr` (Go's `:port` is every interface).
pub async fn resolve_bind(addr: &str) -> std::io::Result<SocketAddr> {
    let (host, port) = split_host_port(addr)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    let port: u16 = port.parse().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("address {addr}: invalid port {port:?}"),
        )
    })?;
    tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no address for {addr}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn spire_readme_examples() {
        // "Server API and Serving Certificate".
        let c = Config::parse(
            r#"
log_level = "debug"
domains = ["mypublicdomain.test"]
serving_cert_file {
 cert_file_path = "/some/path/on/disk/to/cert.pem"
 key_file_path = "/some/path/on/disk/to/key.pem"
}
server_api {
    address = "unix:///tmp/spire-server/private/api.sock"
}
"#,
        )
        .unwrap();
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(c.domains, ["mypublicdomain.test"]);
        assert_eq!(
            c.listen,
            Listen::ServingCertFile(ServingCertFile {
                cert_file_path: "/some/path/on/disk/to/cert.pem".into(),
                key_file_path: "/some/path/on/disk/to/key.pem".into(),
                addr: ":443".into(),
                file_sync_interval: DEFAULT_FILE_SYNC_INTERVAL,
            })
        );
        assert_eq!(
            c.source,
            Source::ServerApi {
                socket: "/tmp/spire-server/private/api.sock".into(),
                poll_interval: DEFAULT_POLL_INTERVAL,
            }
        );
        assert_eq!(c.health_checks, None);
        assert_eq!(c.server_path_prefix, "");

        // "Workload API and Serving Certificate".
        let c = Config::parse(
            r#"
log_level = "debug"
domains = ["mypublicdomain.test"]
serving_cert_file {
 cert_file_path = "/some/path/on/disk/to/cert.pem"
 key_file_path = "/some/path/on/disk/to/key.pem"
}
workload_api {
    socket_path = "/tmp/spire-agent/public/api.sock"
    trust_domain = "domain.test"
}
"#,
        )
        .unwrap();
        assert_eq!(
            c.source,
            Source::WorkloadApi {
                socket_path: "/tmp/spire-agent/public/api.sock".into(),
                trust_domain: "domain.test".into(),
                poll_interval: DEFAULT_POLL_INTERVAL,
            }
        );

        // "Listening on a Unix Socket".
        let c = Config::parse(
            r#"
log_level = "debug"
domains = ["mypublicdomain.test"]
listen_socket_path = "/run/oidc-discovery-provider/server.sock"
workload_api {
    socket_path = "/tmp/spire-agent/private/api.sock"
    trust_domain = "domain.test"
}
"#,
        )
        .unwrap();
        assert_eq!(
            c.listen,
            Listen::Socket("/run/oidc-discovery-provider/server.sock".into())
        );

        // The ACME examples: SPIRE accepts them, Sigil says why it cannot.
        let e = err(r#"
log_level = "debug"
domains = ["mypublicdomain.test"]
acme {
    cache_dir = "/some/path/on/disk/to/cache/creds"
    email = "email@domain.test"
    tos_accepted = true
}
server_api {
    address = "unix:///tmp/spire-server/private/api.sock"
}
"#);
        assert!(
            e.starts_with("the acme section is not supported by Sigil"),
            "{e}"
        );
    }

    #[test]
    fn every_key_and_default() {
        let c = Config::parse(
            r#"
log_level = "WARN"
log_format = "json"
log_requests = true
domains = ["a.test", "b.test", "a.test"]
set_key_use = true
allow_insecure_scheme = true
insecure_addr = ":8080"
jwt_issuer = "https://issuer.test/td"
jwks_uri = "https://cdn.test/keys.json"
server_path_prefix = "/instance/1"
file {
    path = "/etc/bundle.json"
    poll_interval = "5m"
}
health_checks {
    bind_port = "9090"
    live_path = "/alive"
}
"#,
        )
        .unwrap();
        assert_eq!(c.log_level, LogLevel::Warn);
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(c.log_requests && c.set_key_use && c.allow_insecure_scheme);
        assert_eq!(c.domains, ["a.test", "b.test"]);
        assert_eq!(c.listen, Listen::Insecure(":8080".into()));
        assert_eq!(
            c.source,
            Source::File {
                path: "/etc/bundle.json".into(),
                poll_interval: Duration::from_secs(300)
            }
        );
        assert_eq!(
            c.health_checks,
            Some(HealthChecks {
                bind_port: 9090,
                live_path: "/alive".into(),
                ready_path: "/ready".into()
            })
        );
        assert_eq!(c.jwt_issuer.unwrap().host, "issuer.test");
        assert_eq!(c.jwks_uri.unwrap().raw, "https://cdn.test/keys.json");
        assert_eq!(c.server_path_prefix, "/instance/1");

        // health_checks {} alone enables SPIRE's defaults; a zero poll interval is the default.
        let c = Config::parse(
            "domains = [\"a\"]\ninsecure_addr = \":1\"\nserver_api {\n address = \"unix:/s.sock\"\n poll_interval = \"0s\"\n}\nhealth_checks {}\n",
        )
        .unwrap();
        assert_eq!(c.health_checks.unwrap().bind_port, 8008);
        assert_eq!(c.source.poll_interval(), DEFAULT_POLL_INTERVAL);
        assert_eq!(
            c.source,
            Source::ServerApi {
                socket: "/s.sock".into(),
                poll_interval: DEFAULT_POLL_INTERVAL
            }
        );
    }

    #[test]
    fn spire_errors() {
        let src = "server_api {\n address = \"unix:///s\"\n}\n";
        let l = "insecure_addr = \":8080\"\n";
        for (text, want) in [
            (
                format!("{l}{src}"),
                "at least one domain must be configured",
            ),
            (
                format!("domains = [\"d\"]\n{src}"),
                "either acme, serving_cert_file, insecure_addr or listen_socket_path must be configured",
            ),
            (
                format!("domains = [\"d\"]\n{l}"),
                "exactly one of the server_api, workload_api, or file sections must be configured",
            ),
            (
                format!("domains = [\"d\"]\n{l}{src}file {{\n path = \"/b\"\n}}\n"),
                "the server_api, workload_api, and file sections are mutually exclusive",
            ),
            (
                format!("domains = [\"d\"]\n{l}listen_socket_path = \"/s\"\n{src}"),
                "insecure_addr and listen_socket_path are mutually exclusive",
            ),
            (
                format!(
                    "domains = [\"d\"]\n{l}serving_cert_file {{\n cert_file_path = \"c\"\n key_file_path = \"k\"\n}}\n{src}"
                ),
                "serving_cert_file and insecure_addr are mutually exclusive",
            ),
            (
                format!(
                    "domains = [\"d\"]\nlisten_socket_path = \"/s\"\nserving_cert_file {{\n cert_file_path = \"c\"\n key_file_path = \"k\"\n}}\n{src}"
                ),
                "serving_cert_file and listen_socket_path are mutually exclusive",
            ),
            (
                format!(
                    "domains = [\"d\"]\nserving_cert_file {{\n key_file_path = \"k\"\n}}\n{src}"
                ),
                "cert_file_path must be configured in the serving_cert_file configuration section",
            ),
            (
                format!(
                    "domains = [\"d\"]\nserving_cert_file {{\n cert_file_path = \"c\"\n}}\n{src}"
                ),
                "key_file_path must be configured in the serving_cert_file configuration section",
            ),
            (
                format!("domains = [\"d\"]\n{l}server_api {{\n}}\n"),
                "address must be configured in the server_api configuration section",
            ),
            (
                format!("domains = [\"d\"]\n{l}server_api {{\n address = \"dns:///x\"\n}}\n"),
                "address must use the unix name system in the server_api configuration section",
            ),
            (
                format!("domains = [\"d\"]\n{l}workload_api {{\n socket_path = \"/s\"\n}}\n"),
                "trust_domain must be configured in the workload_api configuration section",
            ),
            (
                format!("domains = [\"d\"]\n{l}workload_api {{\n trust_domain = \"td\"\n}}\n"),
                "socket_path must be configured in the workload_api configuration section",
            ),
            (
                format!("domains = [\"d\"]\n{l}{src}jwt_issuer = \"issuer.test\"\n"),
                "the jwt_issuer url must contain a scheme",
            ),
            (
                format!("domains = [\"d\"]\n{l}{src}jwt_issuer = \"https:///path\"\n"),
                "the jwt_issuer url must contain a host",
            ),
            (
                format!(
                    "domains = [\"d\"]\n{l}acme {{\n email = \"e\"\n tos_accepted = true\n}}\n{src}"
                ),
                "insecure_addr and the acme section are mutually exclusive",
            ),
            (
                format!("domains = [\"d\"]\nacme {{\n email = \"e\"\n}}\n{src}"),
                "tos_accepted must be set to true in the acme configuration section",
            ),
            (
                format!("domains = [\"d\"]\nacme {{\n tos_accepted = true\n}}\n{src}"),
                "email must be configured in the acme configuration section",
            ),
        ] {
            assert_eq!(err(&text), want, "{text}");
        }
        // Problems SPIRE's decoder would not notice, named by Sigil's strict reader.
        let base = format!("domains = [\"d\"]\n{l}");
        assert!(err(&format!("{base}{src}domain = \"typo\"\n")).contains("\"domain\""));
        assert!(
            err(&format!(
                "{base}server_api {{\n address = \"unix:///s\"\n poll_intervall = \"1s\"\n}}\n"
            ))
            .contains("poll_intervall")
        );
        assert!(
            err(&format!(
                "{base}server_api {{\n address = \"unix:///s\"\n poll_interval = \"soon\"\n}}\n"
            ))
            .starts_with("invalid poll_interval in the server_api configuration section")
        );
        assert!(
            err(&format!("{base}{src}jwks_uri = \"/keys\"\n"))
                .starts_with("the jwks_uri setting could not be parsed")
        );
        assert!(
            err(&format!(
                "{base}{src}experimental {{\n listen_named_pipe_name = \"x\"\n}}\n"
            ))
            .contains("Windows-only")
        );
        assert!(err(&format!("domains = [\"d\"]\nserving_cert_file {{\n cert_file_path = \"c\"\n key_file_path = \"k\"\n addr = \"nope\"\n}}\n{src}")).starts_with("invalid addr in the serving_cert_file configuration section"));
        assert!(err("domains = [").starts_with("parsing config file"));
    }
}
