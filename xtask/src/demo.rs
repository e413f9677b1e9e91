//! `cargo xtask demo`: a server, an agent and two workloads on this machine, step by step.
//!
//! Workloads are the `sigil-demo-peer` binary (tests/src/bin) running as uid 1001 ("frontend")
//! and uid 1002 ("backend"); the agent tells them apart by `unix:uid` selectors. Each gets its
//! X509-SVID from the agent's Workload API, then backend serves SPIFFE mTLS (rustls) allowing
//! only frontend's SPIFFE ID: frontend is accepted, a client presenting backend's own SVID is
//! rejected. Then two real Envoys, running as the same two uids, take those identities from the
//! agent over SDS (Istio's `default` / `ROOTCA`) and do mTLS with each other, and an Envoy with an
//! identity not on the backend's allow-list is refused.

use crate::setup::is_root;
use crate::{build_binaries, cargo, run, setup, target_dir};
use anyhow::{Context, Result, anyhow, bail};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TD: &str = "demo.sigil";
const FRONTEND_UID: u32 = 1001;
const BACKEND_UID: u32 = 1002;
const TIMEOUT: Duration = Duration::from_secs(30);

/// Processes and the temp dir; everything is cleaned up on drop, except the dir's logs after a
/// failure.
struct Demo {
    dir: PathBuf,
    bin: PathBuf,
    children: Vec<(String, Child)>,
    ok: bool,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.ok {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("\nThe demo failed; logs are in {}:", self.dir.display());
            for log in ["server.log", "agent.log"] {
                let text = std::fs::read_to_string(self.dir.join(log)).unwrap_or_default();
                eprintln!("--- last lines of {log} ---");
                let lines: Vec<&str> = text.lines().collect();
                for l in &lines[lines.len().saturating_sub(25)..] {
                    eprintln!("{l}");
                }
            }
        }
    }
}

fn step(n: u32, text: &str) {
    println!("\n==> [{n}/9] {text}");
}

fn indent(text: &str) {
    for l in text.lines() {
        println!("    {l}");
    }
}

fn mkdir(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
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

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {TIMEOUT:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Demo {
    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    fn cmd(&self, bin: &str) -> Command {
        let mut c = Command::new(self.bin.join(bin));
        c.current_dir(&self.dir).env("NO_COLOR", "1");
        c
    }

    /// Starts a long-running process logging to `<dir>/<log>`.
    fn spawn(&mut self, name: &str, mut cmd: Command, log: &str) -> Result<()> {
        let f = std::fs::File::create(self.path(log))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    fn check_alive(&mut self) -> Result<()> {
        for (name, c) in &mut self.children {
            if let Some(s) = c.try_wait()? {
                bail!("{name} exited unexpectedly ({s})");
            }
        }
        Ok(())
    }

    fn admin(&self, args: &[&str]) -> Result<Output> {
        let out = self
            .cmd("sigil-server")
            .args(args)
            .arg("-socketPath")
            .arg(self.path("server/admin/api.sock"))
            .output()?;
        Ok(out)
    }

    fn admin_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.admin(args)?;
        if !out.status.success() {
            bail!(
                "sigil-server {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The demo peer (copied into the demo dir, so any uid can run it) as `uid`.
    fn peer(&self, uid: u32) -> Command {
        let mut c = Command::new(self.path("bin/sigil-demo-peer"));
        c.uid(uid).gid(uid).current_dir("/");
        c
    }
}

pub fn demo() -> Result<()> {
    if !is_root() {
        bail!(
            "the demo runs its workloads as uids {FRONTEND_UID} and {BACKEND_UID}, which needs root: \
             run it as root (e.g. sudo -E cargo xtask demo)"
        );
    }
    setup::setup()?;

    step(
        1,
        "Building sigil-server, sigil-agent and the demo workload (sigil-demo-peer)",
    );
    build_binaries(&[])?;
    run(cargo().args([
        "build",
        "-p",
        "sigil-e2e",
        "--bin",
        "sigil-demo-peer",
        "--bin",
        "sigil-demo-envoy",
    ]))?;

    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("sigil-demo-{}-{nanos}", std::process::id()));
    let mut d = Demo {
        dir,
        bin: target_dir().join("debug"),
        children: Vec::new(),
        ok: false,
    };
    for sub in ["", "server", "agent", "agent/public", "bin"] {
        mkdir(&d.path(sub))?;
    }
    let peer_bin = d.path("bin/sigil-demo-peer");
    std::fs::copy(d.bin.join("sigil-demo-peer"), &peer_bin).context("copying sigil-demo-peer")?;
    std::fs::set_permissions(&peer_bin, std::fs::Permissions::from_mode(0o755))?;

    step(
        2,
        &format!("Starting sigil-server for trust domain {TD} (SQLite datastore in a temp dir)"),
    );
    let mut server = d.cmd("sigil-server");
    server
        .args(["run", "-trustDomain", TD, "-dataDir"])
        .arg(d.path("server/data"))
        .arg("-socketPath")
        .arg(d.path("server/admin/api.sock"))
        .args([
            "-bindAddress",
            "127.0.0.1",
            "-serverPort",
            "0",
            "-logLevel",
            "INFO",
        ]);
    d.spawn("sigil-server", server, "server.log")?;
    let agent_api = wait_for("the server to start listening", || {
        d.check_alive()?;
        let log = strip_ansi(&std::fs::read_to_string(d.path("server.log")).unwrap_or_default());
        Ok(log
            .lines()
            .filter(|l| l.contains("server listening"))
            .find_map(|l| {
                let rest = &l[l.find("agent_api")? + "agent_api".len()..];
                let rest = rest.trim_start_matches(['=', '"', ':', ' ']);
                let addr: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                    .collect();
                addr.parse::<std::net::SocketAddr>().ok()
            }))
    })?;
    wait_for("`sigil-server healthcheck`", || {
        Ok(d.admin(&["healthcheck"])?.status.success().then_some(()))
    })?;
    println!(
        "    agent API (TLS) on {agent_api}; admin API on {}",
        d.path("server/admin/api.sock").display()
    );
    println!("    data dir: {}", d.path("server/data").display());

    step(
        3,
        "Generating a join token and starting sigil-agent with it",
    );
    let node = format!("spiffe://{TD}/node");
    let out = d.admin_ok(&["token", "generate", "-spiffeID", &node])?;
    let token = out
        .lines()
        .find_map(|l| l.strip_prefix("Token: "))
        .ok_or_else(|| anyhow!("no token in {out:?}"))?
        .trim()
        .to_string();
    println!("    $ sigil-server token generate -spiffeID {node}");
    indent(&out);
    std::fs::write(
        d.path("agent/bootstrap.pem"),
        d.admin_ok(&["bundle", "show"])?,
    )?;
    let socket = d.path("agent/public/api.sock");
    let mut agent = d.cmd("sigil-agent");
    agent
        .args(["run", "-dataDir"])
        .arg(d.path("agent/data"))
        .args(["-joinToken", &token, "-serverAddress", "127.0.0.1"])
        .args(["-serverPort", &agent_api.port().to_string()])
        .arg("-socketPath")
        .arg(&socket)
        .args(["-trustDomain", TD, "-trustBundle"])
        .arg(d.path("agent/bootstrap.pem"));
    d.spawn("sigil-agent", agent, "agent.log")?;
    wait_for("the agent's Workload API socket", || {
        d.check_alive()?;
        Ok(std::os::unix::net::UnixStream::connect(&socket)
            .ok()
            .map(|_| ()))
    })?;
    println!("    Workload API on {}", socket.display());
    let agents = d.admin_ok(&["agent", "list"])?;
    indent(&agents);

    step(4, "Registering two workloads by uid");
    let frontend = format!("spiffe://{TD}/frontend");
    let backend = format!("spiffe://{TD}/backend");
    for (id, uid) in [(&frontend, FRONTEND_UID), (&backend, BACKEND_UID)] {
        let sel = format!("unix:uid:{uid}");
        println!("    $ sigil-server entry create -parentID {node} -spiffeID {id} -selector {sel}");
        indent(&d.admin_ok(&[
            "entry",
            "create",
            "-parentID",
            &node,
            "-spiffeID",
            id,
            "-selector",
            &sel,
        ])?);
    }

    step(
        5,
        "Each workload fetches its X509-SVID from the Workload API, as its own uid",
    );
    for (id, uid) in [(&frontend, FRONTEND_UID), (&backend, BACKEND_UID)] {
        let got = wait_for(&format!("uid {uid}'s SVID"), || {
            let out = d
                .peer(uid)
                .arg("fetch")
                .arg("-socketPath")
                .arg(&socket)
                .output()?;
            let ids = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Ok((out.status.success() && ids == *id).then_some(ids))
        })?;
        println!("    uid {uid} -> {got}");
    }
    let mut fetch = Command::new(d.bin.join("sigil-agent"));
    fetch
        .args(["api", "fetch", "x509", "-socketPath"])
        .arg(&socket)
        .uid(FRONTEND_UID)
        .gid(FRONTEND_UID);
    let out = fetch
        .current_dir("/")
        .output()
        .context("sigil-agent api fetch x509")?;
    println!("    $ sigil-agent api fetch x509   (as uid {FRONTEND_UID})");
    indent(&String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!(
            "sigil-agent api fetch x509 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    step(
        6,
        &format!("backend (uid {BACKEND_UID}) serves mTLS and authorizes only {frontend}"),
    );
    let mut serve = d.peer(BACKEND_UID);
    serve
        .args([
            "serve",
            "-listen",
            "127.0.0.1:0",
            "-allow",
            &frontend,
            "-count",
            "2",
            "-socketPath",
        ])
        .arg(&socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = serve.spawn().context("starting the serving peer")?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    d.children.push(("backend peer".into(), child));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |rx: &mpsc::Receiver<String>| {
        rx.recv_timeout(TIMEOUT)
            .map_err(|_| anyhow!("the backend peer went quiet"))
    };
    let first = next(&rx)?;
    println!("    [backend]  {first}");
    let addr = first
        .strip_prefix("listening on ")
        .and_then(|r| r.split_whitespace().next())
        .ok_or_else(|| anyhow!("unexpected output from the backend peer: {first:?}"))?
        .to_string();

    let connect = |uid: u32, message: &str| -> Result<Output> {
        Ok(d.peer(uid)
            .args([
                "connect",
                "-addr",
                &addr,
                "-allow",
                &backend,
                "-message",
                message,
                "-socketPath",
            ])
            .arg(&socket)
            .output()?)
    };

    step(
        7,
        &format!("frontend (uid {FRONTEND_UID}) connects: its SPIFFE ID is on the allow-list"),
    );
    let out = connect(FRONTEND_UID, "hello from frontend")?;
    indent(&format!(
        "[frontend] {}",
        String::from_utf8_lossy(&out.stdout).trim()
    ));
    let line = next(&rx)?;
    println!("    [backend]  {line}");
    if !out.status.success() || !line.starts_with(&format!("accepted {frontend}")) {
        bail!("frontend should have been accepted");
    }

    step(
        8,
        &format!(
            "a client presenting backend's own SVID ({backend}) connects: not on the allow-list"
        ),
    );
    let out = connect(BACKEND_UID, "let me in")?;
    indent(&format!(
        "[client]   {}",
        String::from_utf8_lossy(&out.stdout).trim()
    ));
    let line = next(&rx)?;
    println!("    [backend]  {line}");
    if out.status.success() || !line.starts_with("rejected:") {
        bail!("the client with backend's SVID should have been rejected");
    }

    step(
        9,
        "Two Envoys as the same uids take their SVIDs over SDS from the agent's socket and do mTLS",
    );
    let mut envoys = Command::new(d.bin.join("sigil-demo-envoy"));
    envoys
        .arg("-socketPath")
        .arg(&socket)
        .arg("-dir")
        .arg(d.path("envoy"))
        .args(["-frontend", &frontend, "-backend", &backend])
        .args(["-frontendUid", &FRONTEND_UID.to_string()])
        .args(["-backendUid", &BACKEND_UID.to_string()]);
    run(&mut envoys).context("the Envoy mTLS demo failed")?;

    println!(
        "\nDemo complete: both workloads got SVIDs by uid; mTLS accepted {frontend} and rejected {backend}, \
         with rustls and with two Envoys fed by SDS."
    );
    d.ok = true;
    Ok(())
}
