//! A real PostgreSQL server for tests: Debian's `initdb` and `pg_ctl` (installed by `cargo
//! xtask setup`) in a temp dir, listening on a loopback port and a Unix socket in that dir,
//! with TLS on (a throwaway CA) and password authentication over TCP. PostgreSQL refuses to
//! run as root, so as root the server runs as `nobody`.
//!
//! Tests fail, not skip, when PostgreSQL is missing: CI always has it.
//!
//! This crate is test support only (a dev-dependency of the server and the e2e tests, and the
//! bench's database): every `expect`/`panic!` here is how it reports a broken test environment
//! to the test that called it, with the step and the tool's output in the message.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The role and password every test database uses.
pub const USER: &str = "spire";
pub const PASSWORD: &str = "sigil-test-password";

/// A running PostgreSQL; stopped (immediately) on drop.
#[derive(Debug)]
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// The CA that signed the server's certificate (PEM), for `sslmode=verify-full`.
    pub ca_pem: PathBuf,
}

/// The directory holding `initdb`/`pg_ctl`: `SIGIL_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
pub fn bin_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("SIGIL_PG_BIN") {
        return PathBuf::from(p);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): run `cargo xtask setup`"
        ),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `nobody`'s uid/gid on Debian.
const NOBODY: u32 = 65534;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("picking a free port")
}

// === impl PgServer ===

impl PgServer {
    /// Creates a cluster and starts it.
    pub fn start() -> Self {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("sigil-pg")
            .tempdir_in("/tmp")
            .expect("creating the PostgreSQL dir");
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).expect("writing the password file");
        // TLS: a CA and a server certificate for localhost / 127.0.0.1.
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sigil-pgtest CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA cert");
        let key = rcgen::KeyPair::generate().expect("server key");
        let params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("server params");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let cert = params.signed_by(&key, &issuer).expect("server cert");
        let ca_pem = dir.path().join("ca.pem");
        std::fs::write(&ca_pem, ca.pem()).expect("writing the CA");
        if is_root() {
            std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).expect("chown");
            std::os::unix::fs::chown(&pwfile, Some(NOBODY), Some(NOBODY)).expect("chown");
        }
        let server = Self {
            bin,
            port: free_port(),
            ca_pem,
            dir,
        };
        server.check(
            "initdb",
            server
                .command("initdb")
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    USER,
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ])
                .arg(format!("--pwfile={}", pwfile.display()))
                .args(["--no-sync", "-E", "UTF8", "--locale=C"])
                .output(),
        );
        let crt = data.join("server.crt");
        let key_path = data.join("server.key");
        std::fs::write(&crt, cert.pem()).expect("writing server.crt");
        std::fs::write(&key_path, key.serialize_pem()).expect("writing server.key");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        if is_root() {
            for p in [&crt, &key_path] {
                std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).expect("chown");
            }
        }
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("opening postgresql.conf");
        use std::io::Write;
        writeln!(
            conf,
            "\nssl = on\nfsync = off\nmax_connections = 300\nshared_buffers = 32MB\n"
        )
        .expect("writing postgresql.conf");
        server.pg_start();
        server
    }

    fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(self.bin.join(tool));
        c.env_remove("PGHOST").env_remove("PGPORT");
        if is_root() {
            c.uid(NOBODY).gid(NOBODY);
        }
        c
    }

    fn check(&self, what: &str, out: std::io::Result<Output>) {
        let out = out.unwrap_or_else(|e| panic!("running {what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pg.log")).unwrap_or_default()
    }

    fn pg_start(&self) {
        self.check(
            "pg_ctl start",
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.dir.path().join("pg.log"))
                .args(["-w", "-t", "60", "-o"])
                .arg(format!(
                    "-p {} -k {} -c listen_addresses=127.0.0.1",
                    self.port,
                    self.dir.path().display()
                ))
                .arg("start")
                .output(),
        );
    }

    /// Stops the server (`fast`: clients are disconnected).
    pub fn stop(&self) {
        self.check(
            "pg_ctl stop",
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-w", "-m", "fast", "stop"])
                .output(),
        );
    }

    /// Starts it again after [`PgServer::stop`].
    pub fn start_again(&self) {
        self.pg_start();
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates a database (owned by [`USER`]).
    pub fn create_database(&self, name: &str) {
        self.check(
            "createdb",
            self.command("createdb")
                .args(["-h"])
                .arg(self.dir.path())
                .args(["-p", &self.port.to_string(), "-U", USER, name])
                .output(),
        );
    }

    /// A libpq connection string for `dbname` over TCP with TLS required (seed 002's shape).
    pub fn connection_string(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} dbname={dbname} user={USER} password={PASSWORD} sslmode=require",
            self.port
        )
    }

    /// Runs SQL through `psql` (over the Unix socket); its stdout.
    pub fn psql(&self, dbname: &str, sql: &str) -> String {
        let out = self
            .command("psql")
            .args(["-h"])
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", USER, "-d", dbname])
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("running psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Waits until the server accepts connections (after a start).
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = self
                .command("pg_isready")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL not ready: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The directory for this server's files (to put more test files beside it).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-m", "immediate", "stop"])
            .output();
    }
}
