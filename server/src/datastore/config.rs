//! `DataStore "sql"`'s settings, with SPIRE's `plugin_data` keys: `database_type`
//! (`sqlite3`, the default, or `postgres`), `connection_string` (a file path for SQLite; a libpq
//! keyword/value string or a `postgres://` URL for PostgreSQL), `max_open_conns`,
//! `max_idle_conns`, `conn_max_lifetime`, `disable_migration`, `log_sql`.

use sigil_config::{Block, ConfigError};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use std::path::PathBuf;
use std::time::Duration;

/// Where the datastore is and how to talk to it.
#[derive(Clone)]
pub enum Config {
    /// One file; one server.
    Sqlite { path: PathBuf, log_sql: bool },
    /// A shared PostgreSQL database; any number of servers.
    Postgres {
        options: Box<PgConnectOptions>,
        pool: PoolSettings,
        /// `disable_migration`: the schema is managed elsewhere; refuse to start if it is not
        /// this version's.
        disable_migration: bool,
    },
}

/// Connection-pool limits (SPIRE's names; Go's `database/sql` meanings where sqlx has them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolSettings {
    /// `max_open_conns`: connections at most (default 100, as SPIRE).
    pub max_open_conns: Option<u32>,
    /// `max_idle_conns`: connections kept open while idle. sqlx cannot cap idle connections
    /// separately, so 0 closes idle ones after a minute and any other value keeps them.
    pub max_idle_conns: Option<u32>,
    /// `conn_max_lifetime`: a connection is replaced after this long (default: never).
    pub conn_max_lifetime: Option<Duration>,
}

/// The key naming `DataStore "sql"` in errors.
const WHAT: &str = "DataStore \"sql\"";

fn invalid(key: &str, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key: format!("{WHAT} {key}"),
        reason: reason.to_string(),
    }
}

// === impl Config ===

impl Config {
    /// Reads `plugin_data`. An SQLite database without `connection_string` is
    /// `<data_dir>/datastore.sqlite3`.
    pub fn from_plugin_data(
        mut data: Block,
        data_dir: &std::path::Path,
    ) -> Result<Self, ConfigError> {
        let kind = data.string("database_type")?;
        let conn = data.string("connection_string")?;
        let max_open_conns = data.integer("max_open_conns")?;
        let max_idle_conns = data.integer("max_idle_conns")?;
        let conn_max_lifetime = data.duration("conn_max_lifetime")?;
        let disable_migration = data.bool("disable_migration")?.unwrap_or(false);
        let log_sql = data.bool("log_sql")?.unwrap_or(false);
        if data.string("ro_connection_string")?.is_some() {
            return Err(invalid(
                "ro_connection_string",
                "read-only replicas are not supported: every server reads the primary",
            ));
        }
        data.finish()?;
        let count = |key: &str, v: Option<i64>| -> Result<Option<u32>, ConfigError> {
            v.map(|n| u32::try_from(n).map_err(|_| invalid(key, format!("{n} is not a count"))))
                .transpose()
        };
        match kind.as_deref().unwrap_or("sqlite3") {
            "sqlite3" | "sqlite" => Ok(Self::Sqlite {
                path: conn
                    .filter(|c| !c.is_empty())
                    .map(PathBuf::from)
                    .unwrap_or_else(|| data_dir.join("datastore.sqlite3")),
                log_sql,
            }),
            "postgres" | "postgresql" => {
                let conn = conn.filter(|c| !c.trim().is_empty()).ok_or_else(|| {
                    invalid(
                        "connection_string",
                        "required for database_type \"postgres\"",
                    )
                })?;
                let mut options =
                    parse_connection_string(&conn).map_err(|e| invalid("connection_string", e))?;
                if log_sql {
                    use sqlx::ConnectOptions;
                    options = options.log_statements(tracing::log::LevelFilter::Info);
                }
                let max_open_conns = count("max_open_conns", max_open_conns)?;
                if max_open_conns == Some(0) {
                    return Err(invalid("max_open_conns", "must be at least 1"));
                }
                Ok(Self::Postgres {
                    options: Box::new(options),
                    pool: PoolSettings {
                        max_open_conns,
                        max_idle_conns: count("max_idle_conns", max_idle_conns)?,
                        conn_max_lifetime,
                    },
                    disable_migration,
                })
            }
            "mysql" => Err(invalid(
                "database_type",
                "\"mysql\" is not supported (Sigil supports \"sqlite3\" and \"postgres\")",
            )),
            other => Err(invalid(
                "database_type",
                format!("{other:?} is not supported (Sigil supports \"sqlite3\" and \"postgres\")"),
            )),
        }
    }

    /// The SQLite database at `path`, with default settings.
    pub fn sqlite(path: impl Into<PathBuf>) -> Self {
        Self::Sqlite {
            path: path.into(),
            log_sql: false,
        }
    }

    /// What to name in an error about this datastore (no secrets).
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite { path, .. } => path.display().to_string(),
            Self::Postgres { options, .. } => format!(
                "postgres database {:?} on {}:{}",
                options.get_database().unwrap_or("(default)"),
                options.get_host(),
                options.get_port()
            ),
        }
    }
}

/// The password stays out of logs and `Debug` output.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite { path, log_sql } => f
                .debug_struct("Sqlite")
                .field("path", path)
                .field("log_sql", log_sql)
                .finish(),
            Self::Postgres {
                options,
                pool,
                disable_migration,
            } => f
                .debug_struct("Postgres")
                .field("host", &options.get_host())
                .field("port", &options.get_port())
                .field("database", &options.get_database())
                .field("user", &options.get_username())
                .field("ssl_mode", &options.get_ssl_mode())
                .field("pool", pool)
                .field("disable_migration", disable_migration)
                .finish_non_exhaustive(),
        }
    }
}

/// A malformed `connection_string`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsnError {
    #[error("expected \"keyword = value\" at byte {0}")]
    Syntax(usize),
    #[error("unterminated quoted value")]
    Unterminated,
    #[error("unknown keyword {0:?}")]
    UnknownKey(String),
    #[error("{key}: {value:?} is not valid ({reason})")]
    Value {
        key: String,
        value: String,
        reason: &'static str,
    },
    #[error("URL: {0}")]
    Url(String),
}

/// Parses a libpq connection string: `host=db.example port=5432 dbname=spire user=spire
/// password='it''s' sslmode=verify-full sslrootcert=/ca.pem` (keyword/value pairs, values
/// optionally single-quoted with `\'` and `\\` escapes), or a `postgres://` /
/// `postgresql://` URL. Unset keywords come from the `PG*` environment variables, as in libpq;
/// unknown keywords are refused, as libpq refuses them.
pub fn parse_connection_string(s: &str) -> Result<PgConnectOptions, DsnError> {
    let trimmed = s.trim();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        return trimmed
            .parse::<PgConnectOptions>()
            .map_err(|e| DsnError::Url(e.to_string()));
    }
    let mut o = PgConnectOptions::new();
    for (key, value) in keyword_pairs(s)? {
        let bad = |reason| DsnError::Value {
            key: key.clone(),
            value: value.clone(),
            reason,
        };
        o = match key.as_str() {
            // A directory is a Unix socket's (libpq: a host starting with a slash).
            "host" | "hostaddr" if value.starts_with('/') => o.socket(&value),
            "host" | "hostaddr" => o.host(&value),
            "port" => o.port(value.parse().map_err(|_| bad("not a port number"))?),
            "dbname" => o.database(&value),
            "user" => o.username(&value),
            "password" => o.password(&value),
            "sslmode" => o.ssl_mode(match value.as_str() {
                "disable" => PgSslMode::Disable,
                "allow" => PgSslMode::Allow,
                "prefer" => PgSslMode::Prefer,
                "require" => PgSslMode::Require,
                "verify-ca" => PgSslMode::VerifyCa,
                "verify-full" => PgSslMode::VerifyFull,
                _ => {
                    return Err(bad(
                        "one of disable, allow, prefer, require, verify-ca, verify-full",
                    ));
                }
            }),
            "sslrootcert" => o.ssl_root_cert(&value),
            "sslcert" => o.ssl_client_cert(&value),
            "sslkey" => o.ssl_client_key(&value),
            "application_name" => o.application_name(&value),
            // Server settings, as libpq passes them: `-c name=value` (or `-cname=value`).
            "options" => {
                let mut settings = Vec::new();
                let mut words = value.split_whitespace();
                while let Some(w) = words.next() {
                    let setting = match w.strip_prefix("-c") {
                        Some("") => words.next().unwrap_or(""),
                        Some(rest) => rest,
                        None => "",
                    };
                    let Some((k, v)) = setting.split_once('=') else {
                        return Err(bad("expected -c name=value"));
                    };
                    settings.push((k.to_string(), v.to_string()));
                }
                o.options(settings)
            }
            // Accepted for compatibility; the pool's acquire timeout bounds connecting.
            "connect_timeout" => {
                value
                    .parse::<u64>()
                    .map_err(|_| bad("not a number of seconds"))?;
                o
            }
            _ => return Err(DsnError::UnknownKey(key)),
        };
    }
    Ok(o)
}

/// Splits `key = value key2='quoted value'` into pairs.
fn keyword_pairs(s: &str) -> Result<Vec<(String, String)>, DsnError> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= b.len() {
            return Ok(out);
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        if i == start {
            return Err(DsnError::Syntax(i));
        }
        let key = s[start..i].to_string();
        skip_ws(&mut i);
        if i >= b.len() || b[i] != b'=' {
            return Err(DsnError::Syntax(i));
        }
        i += 1;
        skip_ws(&mut i);
        let mut value = Vec::new();
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err(DsnError::Unterminated),
                    Some(b'\\') => {
                        let Some(&c) = b.get(i + 1) else {
                            return Err(DsnError::Unterminated);
                        };
                        value.push(c);
                        i += 2;
                    }
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                value.push(b[i]);
                i += 1;
            }
        }
        // The input is UTF-8 and only ASCII bytes (quotes, backslashes) were removed.
        out.push((key, String::from_utf8_lossy(&value).into_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_002_connection_string() {
        let o = parse_connection_string(
            "host=postgres.spire.svc port=5433 dbname=spire user=spire password='s3 cr\\'et' sslmode=require",
        )
        .unwrap();
        assert_eq!(o.get_host(), "postgres.spire.svc");
        assert_eq!(o.get_port(), 5433);
        assert_eq!(o.get_database(), Some("spire"));
        assert_eq!(o.get_username(), "spire");
        assert!(matches!(o.get_ssl_mode(), PgSslMode::Require));
    }

    #[test]
    fn urls_and_sockets() {
        let o = parse_connection_string("postgres://u:p@db:6000/spire?sslmode=disable").unwrap();
        assert_eq!((o.get_host(), o.get_port()), ("db", 6000));
        let o = parse_connection_string("host=/run/postgresql dbname = spire").unwrap();
        assert_eq!(
            o.get_socket().map(|p| p.to_str().unwrap()),
            Some("/run/postgresql")
        );
    }

    #[test]
    fn bad_strings_are_refused_with_the_reason() {
        for (s, want) in [
            ("host=a sslmode=sometimes", "sslmode"),
            ("host=a colour=blue", "unknown keyword \"colour\""),
            ("host", "expected"),
            ("password='open", "unterminated"),
            ("port=http", "port"),
            ("=x", "expected"),
        ] {
            let e = parse_connection_string(s).unwrap_err().to_string();
            assert!(e.contains(want), "{s}: {e}");
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let c = Config::Postgres {
            options: Box::new(parse_connection_string("host=h password=hunter2").unwrap()),
            pool: PoolSettings::default(),
            disable_migration: false,
        };
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2"), "{d}");
        assert!(d.contains("\"h\""), "{d}");
    }

    #[test]
    fn plugin_data_keys() {
        let block = |text: &str| {
            let mut b = sigil_config::parse(text).unwrap();
            b.block("plugin_data", "plugin_data").unwrap().unwrap()
        };
        let c = Config::from_plugin_data(
            block(
                "plugin_data {\n database_type = \"postgres\"\n connection_string = \"host=db dbname=spire\"\n max_open_conns = 7\n max_idle_conns = 2\n conn_max_lifetime = \"1h\"\n}",
            ),
            std::path::Path::new("/d"),
        )
        .unwrap();
        let Config::Postgres { pool, .. } = c else {
            panic!("not postgres")
        };
        assert_eq!(pool.max_open_conns, Some(7));
        assert_eq!(pool.conn_max_lifetime, Some(Duration::from_secs(3600)));
        let c = Config::from_plugin_data(block("plugin_data {\n}"), std::path::Path::new("/d"))
            .unwrap();
        assert!(
            matches!(c, Config::Sqlite { ref path, .. } if path == std::path::Path::new("/d/datastore.sqlite3"))
        );
        for (text, want) in [
            ("plugin_data {\n database_type = \"mysql\"\n}", "mysql"),
            (
                "plugin_data {\n database_type = \"postgres\"\n}",
                "connection_string",
            ),
            (
                "plugin_data {\n database_type = \"postgres\"\n connection_string = \"host=a bogus=1\"\n}",
                "bogus",
            ),
            ("plugin_data {\n frobnicate = 1\n}", "frobnicate"),
        ] {
            let e = Config::from_plugin_data(block(text), std::path::Path::new("/d"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
