//! Real processes in temp dirs: a `sigil-server` and its agents, each in its own directory, on
//! ports the kernel picks. Everything started here is killed when its guard drops, and a failing
//! test prints the logs of the processes it started.

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a process gets to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one CLI invocation may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

// === locations ===

/// Where cargo put this profile's binaries (`target/debug`): derived from the running
/// executable (a test in `target/debug/deps/`, or a binary in `target/debug/`), or
/// `SIGIL_BIN_DIR`.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SIGIL_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("exe has a parent").to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("deps has a parent").to_path_buf()
    } else {
        dir
    }
}

/// The cargo target directory (`target/`).
pub fn target_dir() -> PathBuf {
    bin_dir()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(bin_dir)
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A binary of the workspace, which must already be built (`cargo xtask test` builds
/// `sigil-server` and `sigil-agent` before running the tests).
pub fn sigil_bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} not found: build it first with `cargo build -p sigil-server -p sigil-agent -p sigil-oidc` \
         (`cargo xtask test` does this)",
        p.display()
    );
    p
}

// === temp dirs ===

/// A temp dir for one test, world-traversable (0755) so workloads running as other uids can
/// reach the agent socket and the binaries copied into it. Removed on drop.
#[derive(Debug)]
pub struct TestDir {
    tmp: tempfile::TempDir,
}

impl TestDir {
    pub fn new(name: &str) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("sigil-{name}-"))
            .tempdir()
            .expect("creating a temp dir");
        chmod(tmp.path(), 0o755);
        Self { tmp }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Creates (0755) and returns a subdirectory.
    pub fn sub(&self, name: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::create_dir_all(&p).expect("creating a test subdirectory");
        chmod(&p, 0o755);
        p
    }

    /// Copies a binary into the dir (0755), so processes of any uid can run it whatever the
    /// permissions of the checkout.
    pub fn install_bin(&self, src: &Path) -> PathBuf {
        let dst = self
            .sub("bin")
            .join(src.file_name().expect("binary has a name"));
        std::fs::copy(src, &dst).expect("copying a binary into the test dir");
        chmod(&dst, 0o755);
        dst
    }
}

pub fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

// === polling ===

/// Polls `f` every 100ms until it returns `Some`, or panics after `timeout` naming `what`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

// === one-shot commands ===

/// The result of a CLI invocation.
#[derive(Debug)]
pub struct CliOutput {
    pub cmdline: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics (showing the output) unless the command exited 0.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert!(self.success(), "command failed: {self}");
        self
    }

    /// Panics unless the command exited non-zero; returns stderr.
    #[track_caller]
    pub fn fails(self) -> Self {
        assert!(
            !self.success() && self.status.code().is_some(),
            "command should have exited non-zero: {self}"
        );
        self
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self}"))
    }
}

impl std::fmt::Display for CliOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline, self.status, self.stdout, self.stderr
        )
    }
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion (stdin closed), killing it after `timeout`.
pub fn run(mut cmd: Command, timeout: Duration) -> CliOutput {
    let cmdline = describe(&cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning `{cmdline}`: {e}"));
    let pipe = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = pipe(child.stdout.take().map(|r| Box::new(r) as _));
    let err = pipe(child.stderr.take().map(|r| Box::new(r) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for a command") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{cmdline}` did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    CliOutput {
        cmdline,
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

// === long-running processes ===

/// A child process with its output in a log file. Killed on drop; if the test is failing, the
/// log's tail is printed.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("creating a log file");
        let file2 = file.try_clone().expect("cloning a log file handle");
        let cmdline = describe(&cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name} (`{cmdline}`): {e}"));
        Self {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Panics (with the log) if the process has exited.
    #[track_caller]
    pub fn assert_running(&mut self) {
        if let Some(s) = self.exited() {
            panic!(
                "{} exited unexpectedly ({s}); log:\n{}",
                self.name,
                self.log()
            );
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill(2) on the pid of our own (not yet reaped) child.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// SIGTERM, then SIGKILL if it is still running after 10s. Returns the exit status.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        if let Some(s) = self.exited() {
            return Some(s);
        }
        self.signal(libc::SIGTERM);
        if let Some(s) = self.wait_exit(Duration::from_secs(10)) {
            return Some(s);
        }
        eprintln!("{} ignored SIGTERM for 10s; killing it", self.name);
        self.kill()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let c = self.child.as_mut()?;
        let _ = c.kill();
        c.wait().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "===== last {} lines of {} ({}) =====",
                tail.len(),
                self.name,
                self.log.display()
            );
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// The first `ip:port` after `key` in `text` (works for both text and JSON tracing output).
fn find_addr(text: &str, key: &str) -> Option<SocketAddr> {
    text.match_indices(key).find_map(|(i, _)| {
        let rest = &text[i + key.len()..];
        let start = rest.find(|c: char| c.is_ascii_digit() || c == '[')?;
        let s: String = rest[start..]
            .chars()
            .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
            .collect();
        s.parse().ok()
    })
}

/// Strips ANSI colour escapes.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// === server ===

/// A running `sigil-server` with SQLite and keys under its own data dir.
#[derive(Debug)]
pub struct Server {
    proc: Proc,
    dir: PathBuf,
    starts: u32,
    config: Option<PathBuf>,
    pub trust_domain: String,
    pub socket: PathBuf,
    pub data_dir: PathBuf,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts a server under `dir/server` on a port the kernel picks.
    pub fn start(dir: &Path, trust_domain: &str) -> Self {
        Self::start_on(dir, trust_domain, 0, 1)
    }

    /// As [`Server::start`], with `server_block` (HCL keys such as `agent_ttl = "20s"`) in a
    /// `server {}` block of a config file; the usual flags still apply on top.
    pub fn start_with_config(dir: &Path, trust_domain: &str, server_block: &str) -> Self {
        let config = dir.join("server.conf");
        std::fs::create_dir_all(dir).expect("creating the test dir");
        std::fs::write(&config, format!("server {{\n{server_block}\n}}\n"))
            .expect("writing the server config");
        Self::start_on_with(dir, trust_domain, 0, 1, Some(&config), &[])
    }

    /// As [`Server::start_with_config_file`], with extra environment variables (e.g.
    /// `SSL_CERT_FILE`, the roots an `https_web` bundle endpoint is checked against).
    pub fn start_with_config_file_env(
        dir: &Path,
        trust_domain: &str,
        config: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let path = dir.join("server.conf");
        std::fs::create_dir_all(dir).expect("creating the test dir");
        std::fs::write(&path, config).expect("writing the server config");
        Self::start_on_with(dir, trust_domain, 0, 1, Some(&path), env)
    }

    /// As [`Server::start`], with `config` as the whole config file (a `server {}` block,
    /// `plugins {}`); the usual flags still apply on top.
    pub fn start_with_config_file(dir: &Path, trust_domain: &str, config: &str) -> Self {
        let path = dir.join("server.conf");
        std::fs::create_dir_all(dir).expect("creating the test dir");
        std::fs::write(&path, config).expect("writing the server config");
        Self::start_on_with(dir, trust_domain, 0, 1, Some(&path), &[])
    }

    fn start_on(dir: &Path, trust_domain: &str, port: u16, starts: u32) -> Self {
        Self::start_on_with(dir, trust_domain, port, starts, None, &[])
    }

    fn start_on_with(
        dir: &Path,
        trust_domain: &str,
        port: u16,
        starts: u32,
        config: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Self {
        let dir = dir.join("server");
        let data_dir = dir.join("data");
        let socket = dir.join("admin").join("api.sock");
        std::fs::create_dir_all(&dir).expect("creating the server dir");
        let mut cmd = Command::new(sigil_bin("sigil-server"));
        cmd.arg("run");
        if let Some(config) = config {
            cmd.arg("-config").arg(config);
        }
        cmd.args(["-trustDomain", trust_domain])
            .arg("-dataDir")
            .arg(&data_dir)
            .arg("-socketPath")
            .arg(&socket)
            .args(["-bindAddress", "127.0.0.1"])
            .args(["-serverPort", &port.to_string()])
            .args(["-logLevel", "DEBUG"])
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .current_dir(&dir);
        let log = dir.join(format!("server.{starts}.log"));
        let mut proc = Proc::spawn("sigil-server", cmd, log);
        let addr = wait_until(
            "the server to log its agent API address",
            READY_TIMEOUT,
            || {
                proc.assert_running();
                let log = strip_ansi(&proc.log());
                log.lines()
                    .filter(|l| l.contains("server listening"))
                    .find_map(|l| find_addr(l, "agent_api"))
            },
        );
        let server = Self {
            proc,
            dir,
            starts,
            config: config.map(Path::to_path_buf),
            trust_domain: trust_domain.to_string(),
            socket,
            data_dir,
            addr,
        };
        server.wait_healthy();
        server
    }

    /// Polls `sigil-server healthcheck` until it passes.
    pub fn wait_healthy(&self) {
        wait_until("`sigil-server healthcheck` to pass", READY_TIMEOUT, || {
            self.cli(&["healthcheck"]).success().then_some(())
        });
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// Stops the server (SIGTERM) and checks it exited cleanly.
    pub fn stop(&mut self) {
        let status = self.proc.terminate();
        assert!(
            status.is_some_and(|s| s.success()),
            "sigil-server did not exit cleanly on SIGTERM ({status:?}); log:\n{}",
            self.proc.log()
        );
    }

    /// Stops the server if it is running, then starts it again with the same data dir, admin
    /// socket and port.
    pub fn restart(&mut self) {
        if self.proc.exited().is_none() {
            self.stop();
        }
        let port = self.port();
        let td = self.trust_domain.clone();
        let parent = self
            .dir
            .parent()
            .expect("server dir has a parent")
            .to_path_buf();
        let config = self.config.clone();
        let new = Self::start_on_with(&parent, &td, port, self.starts + 1, config.as_deref(), &[]);
        *self = new;
    }

    /// Runs `sigil-server <args> -socketPath <admin socket>`.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        let mut cmd = Command::new(sigil_bin("sigil-server"));
        cmd.args(args).arg("-socketPath").arg(&self.socket);
        run(cmd, CLI_TIMEOUT)
    }

    pub fn id(&self, path: &str) -> String {
        format!("spiffe://{}{path}", self.trust_domain)
    }

    /// `token generate` (with `-spiffeID alias` if given); returns the token.
    pub fn token(&self, alias: Option<&str>) -> String {
        let mut args = vec!["token", "generate", "-output", "json"];
        if let Some(a) = alias {
            args.extend(["-spiffeID", a]);
        }
        let out = self.cli(&args).ok();
        out.json()["value"]
            .as_str()
            .unwrap_or_else(|| panic!("no token value in {out}"))
            .to_string()
    }

    /// `entry create`; returns the new entry's ID.
    pub fn create_entry(
        &self,
        parent: &str,
        spiffe_id: &str,
        selectors: &[&str],
        extra: &[&str],
    ) -> String {
        let mut args = vec![
            "entry",
            "create",
            "-output",
            "json",
            "-parentID",
            parent,
            "-spiffeID",
            spiffe_id,
        ];
        for s in selectors {
            args.extend(["-selector", s]);
        }
        args.extend(extra);
        let out = self.cli(&args).ok();
        let v = out.json();
        v["results"][0]["entry"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no entry id in {out}"))
            .to_string()
    }

    /// The trust bundle in PEM (`bundle show`).
    pub fn bundle_pem(&self) -> String {
        self.cli(&["bundle", "show"]).ok().stdout
    }
}

// === agent ===

/// A running `sigil-agent`.
#[derive(Debug)]
pub struct Agent {
    proc: Proc,
    pub name: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub data_dir: PathBuf,
}

impl Agent {
    /// Starts an agent under `dir/<name>` that attests with `token` and trusts the server's
    /// current bundle (`-trustBundle`), and waits until its Workload API socket accepts
    /// connections.
    pub fn start(dir: &Path, name: &str, server: &Server, token: &str) -> Self {
        let mut a = Self::spawn(dir, name, server, token, &[]);
        a.wait_ready();
        a
    }

    /// Starts an agent without waiting for it. `extra` is appended to the `run` flags.
    pub fn spawn(dir: &Path, name: &str, server: &Server, token: &str, extra: &[&str]) -> Self {
        let mut args = vec!["-joinToken", token];
        args.extend(extra);
        Self::spawn_with(dir, name, server, &args)
    }

    /// Starts an agent under `dir/<name>` that attests with `NodeAttestor "k8s_psat"` (cluster
    /// `cluster`, the projected token at `token_path`) and keeps its key in memory (so every
    /// start attests), and waits until its Workload API socket accepts connections.
    pub fn start_psat(
        dir: &Path,
        name: &str,
        server: &Server,
        cluster: &str,
        token_path: &Path,
    ) -> Self {
        let config = dir.join(format!("{name}.conf"));
        std::fs::create_dir_all(dir).expect("creating the test dir");
        std::fs::write(
            &config,
            format!(
                "plugins {{\n  NodeAttestor \"k8s_psat\" {{\n    plugin_data {{\n      cluster = \"{cluster}\"\n      token_path = \"{}\"\n    }}\n  }}\n  KeyManager \"memory\" {{\n    plugin_data {{}}\n  }}\n}}\n",
                token_path.display()
            ),
        )
        .expect("writing the agent config");
        let config = config.to_str().expect("utf-8 path");
        let mut a = Self::spawn_with(dir, name, server, &["-config", config]);
        a.wait_ready();
        a
    }

    /// Starts an agent with the config file `config` (written as `<name>.conf`; the usual
    /// `run` flags still give the server, socket and data dir) and waits for its socket.
    pub fn start_with_config(dir: &Path, name: &str, server: &Server, config: &str) -> Self {
        std::fs::create_dir_all(dir).expect("creating the test dir");
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, config).expect("writing the agent config");
        let path = path.to_str().expect("utf-8 path");
        let mut a = Self::spawn_with(dir, name, server, &["-config", path]);
        a.wait_ready();
        a
    }

    /// Starts an agent with `args` (how it attests, and more) after the usual `run` flags.
    fn spawn_with(dir: &Path, name: &str, server: &Server, args: &[&str]) -> Self {
        let adir = dir.join(name);
        let public = adir.join("public");
        let data_dir = adir.join("data");
        for d in [&adir, &public] {
            std::fs::create_dir_all(d).expect("creating the agent dir");
            chmod(d, 0o755);
        }
        let bundle = adir.join("bootstrap-bundle.pem");
        std::fs::write(&bundle, server.bundle_pem()).expect("writing the bootstrap bundle");
        let socket = public.join("api.sock");
        let mut cmd = Command::new(sigil_bin("sigil-agent"));
        cmd.arg("run")
            .arg("-dataDir")
            .arg(&data_dir)
            .args(["-serverAddress", "127.0.0.1"])
            .args(["-serverPort", &server.port().to_string()])
            .arg("-socketPath")
            .arg(&socket)
            .args(["-trustDomain", &server.trust_domain])
            .arg("-trustBundle")
            .arg(&bundle)
            .args(["-logLevel", "DEBUG"])
            .args(args)
            .env("NO_COLOR", "1")
            .current_dir(&adir);
        let proc = Proc::spawn(&format!("sigil-agent {name}"), cmd, adir.join("agent.log"));
        Self {
            proc,
            name: name.to_string(),
            dir: adir,
            socket,
            data_dir,
        }
    }

    /// Waits until the Workload API socket accepts connections.
    pub fn wait_ready(&mut self) {
        let socket = self.socket.clone();
        let name = self.name.clone();
        wait_until(
            &format!("agent {name}'s Workload API socket"),
            READY_TIMEOUT,
            || {
                self.proc.assert_running();
                std::os::unix::net::UnixStream::connect(&socket)
                    .ok()
                    .map(|_| ())
            },
        );
    }

    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// `unix:` endpoint address for SPIFFE clients.
    pub fn endpoint(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// Runs `sigil-agent <args> -socketPath <socket>`.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        let mut cmd = Command::new(sigil_bin("sigil-agent"));
        cmd.args(args).arg("-socketPath").arg(&self.socket);
        run(cmd, CLI_TIMEOUT)
    }
}

/// Polls the agent (as the calling process) until it serves an X509-SVID for `spiffe_id`.
pub async fn wait_for_svid(socket: &Path, spiffe_id: &str) -> crate::workload::Svid {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let last = match crate::workload::fetch_one(socket, Some(spiffe_id)).await {
            Ok(s) => return s,
            Err(e) => format!("{e:#}"),
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {READY_TIMEOUT:?} waiting for an X509-SVID for {spiffe_id}; last error: {last}"
        );
        tokio::time::sleep(POLL).await;
    }
}

// === python ===

/// The Python of a venv under the target dir with py-spiffe installed (tests/py/requirements.txt),
/// created on first use. `cargo xtask setup` creates the same venv; a file lock keeps concurrent
/// test processes from building it twice.
pub fn python() -> Result<PathBuf> {
    let venv = target_dir().join("e2e-venv");
    let reqs_path = workspace_root().join("tests/py/requirements.txt");
    let reqs = std::fs::read_to_string(&reqs_path)
        .with_context(|| format!("reading {}", reqs_path.display()))?;
    let marker = venv.join(".sigil-requirements");
    let py = venv.join("bin/python");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == reqs) && py.exists() {
        return Ok(py);
    }
    std::fs::create_dir_all(target_dir())?;
    let lock = std::fs::File::create(target_dir().join("e2e-venv.lock"))?;
    // SAFETY: flock on a file descriptor we own; released when `lock` is dropped.
    let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    if rc != 0 {
        bail!("locking the venv: {}", std::io::Error::last_os_error());
    }
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == reqs) && py.exists() {
        return Ok(py);
    }
    if !py.exists() {
        let out = run(
            {
                let mut c = Command::new("python3");
                c.args(["-m", "venv"]).arg(&venv);
                c
            },
            Duration::from_secs(300),
        );
        if !out.success() {
            return Err(anyhow!(
                "creating the venv failed (run `cargo xtask setup`): {out}"
            ));
        }
    }
    let out = run(
        {
            let mut c = Command::new(&py);
            c.args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-q",
                "-r",
            ])
            .arg(&reqs_path);
            c
        },
        Duration::from_secs(600),
    );
    if !out.success() {
        return Err(anyhow!("pip install failed: {out}"));
    }
    std::fs::write(&marker, reqs)?;
    Ok(py)
}

/// Runs `tests/py/<script>` with the venv's Python and `SPIFFE_ENDPOINT_SOCKET` set to the
/// agent's socket.
pub fn run_python(agent: &Agent, script: &str, args: &[&str]) -> CliOutput {
    let py = python().unwrap_or_else(|e| panic!("{e:#}"));
    let mut cmd = Command::new(py);
    cmd.arg(workspace_root().join("tests/py").join(script))
        .args(args)
        .env("SPIFFE_ENDPOINT_SOCKET", agent.endpoint())
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    run(cmd, CLI_TIMEOUT)
}
