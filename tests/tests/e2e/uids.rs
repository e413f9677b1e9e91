//! Workload attestation with the `unix` attestor: workloads running as other users (the tests run
//! as root and drop to other uids/gids) get the SVIDs their selectors say, and SPIFFE mTLS
//! between two of them authorizes by SPIFFE ID.

use crate::{Env, TD};
use sha2::Digest;
use sigil_e2e::harness::{Agent, CliOutput, Server, TestDir, run, wait_for_svid, wait_until};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// These tests switch uids, which needs root (CI and the dev machines run as root). Elsewhere
/// they fail loudly rather than pass without testing anything.
fn require_root() {
    assert!(
        is_root(),
        "this test runs workloads as other uids and must run as root"
    );
}

/// Runs `peer fetch` as `uid:gid` with supplementary `groups`: the SPIFFE IDs it got, or the
/// error it printed.
fn fetch_as_with(
    peer: &Path,
    socket: &Path,
    uid: u32,
    gid: u32,
    groups: &[u32],
) -> Result<Vec<String>, CliOutput> {
    let mut c = Command::new(peer);
    c.arg("fetch")
        .arg("-socketPath")
        .arg(socket)
        .current_dir("/");
    let groups: Vec<libc::gid_t> = groups.to_vec();
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls on data captured beforehand (no allocation).
    unsafe {
        c.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = run(c, Duration::from_secs(20));
    if out.success() {
        let mut ids: Vec<String> = out.stdout.lines().map(str::to_string).collect();
        ids.sort();
        Ok(ids)
    } else {
        Err(out)
    }
}

fn fetch_as(peer: &Path, socket: &Path, uid: u32, gid: u32) -> Result<Vec<String>, CliOutput> {
    fetch_as_with(peer, socket, uid, gid, &[])
}

/// Polls until the workload running as `uid:gid` gets exactly `want`.
fn wait_for_ids(peer: &Path, socket: &Path, uid: u32, gid: u32, want: &[&str]) {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let last = match fetch_as(peer, socket, uid, gid) {
            Ok(ids) if ids == want => return,
            Ok(ids) => format!("got {ids:?}"),
            Err(out) => out.to_string(),
        };
        assert!(
            std::time::Instant::now() < deadline,
            "uid {uid} gid {gid} ({}): expected {want:?} within 30s; last: {last}",
            peer.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[track_caller]
fn assert_denied(peer: &Path, socket: &Path, uid: u32, gid: u32) {
    match fetch_as(peer, socket, uid, gid) {
        Ok(ids) => panic!("uid {uid} should get nothing, got {ids:?}"),
        Err(out) => assert!(out.stderr.contains("PermissionDenied"), "uid {uid}: {out}"),
    }
}

#[test]
fn workloads_running_as_different_uids_get_their_own_svids() {
    require_root();
    let env = Env::start("uids");
    let peer = env
        .dir
        .install_bin(Path::new(env!("CARGO_BIN_EXE_sigil-demo-peer")));
    let sock = &env.agent.socket;

    let w1001 = env.register("/uid/1001", &["unix:uid:1001"], &[]);
    let w1002 = env.register("/uid/1002", &["unix:uid:1002"], &[]);
    // Needs both selectors: only uid 1001 running with gid 2001 qualifies.
    let w1001_g = env.register(
        "/uid/1001-gid-2001",
        &["unix:uid:1001", "unix:gid:2001"],
        &[],
    );

    wait_for_ids(&peer, sock, 1001, 1001, &[&w1001]);
    wait_for_ids(&peer, sock, 1002, 1002, &[&w1002]);
    wait_for_ids(&peer, sock, 1001, 2001, &[&w1001, &w1001_g]);
    assert_denied(&peer, sock, 1003, 1003);
    // gid 2001 alone does not qualify uid 1002 for the uid-1001-and-gid-2001 entry.
    wait_for_ids(&peer, sock, 1002, 2001, &[&w1002]);

    // Supplementary groups: only a caller that has group 3001 gets this one.
    let supp = env.register(
        "/gid/supplementary-3001",
        &["unix:supplementary_gid:3001"],
        &[],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match fetch_as_with(&peer, sock, 1006, 1006, &[3001]) {
            Ok(ids) if ids == [supp.clone()] => break,
            other => assert!(
                std::time::Instant::now() < deadline,
                "uid 1006 with supplementary group 3001: expected [{supp}], last: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_denied(&peer, sock, 1006, 1006);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_group_names_select_the_caller() {
    require_root();
    let env = Env::start("names");
    let by_name = env.register("/names/root", &["unix:user:root", "unix:group:root"], &[]);
    wait_for_svid(&env.agent.socket, &by_name).await;
    let wrong = env.register(
        "/names/nobody-group",
        &["unix:user:root", "unix:group:nogroup-sigil-e2e"],
        &[],
    );
    // A fetch after the first entry arrived sees the full set; the second must never match.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ids: Vec<String> = sigil_e2e::workload::fetch_x509(&env.agent.socket)
        .await
        .expect("fetch")
        .into_iter()
        .map(|s| s.spiffe_id)
        .collect();
    assert!(ids.contains(&by_name), "{ids:?}");
    assert!(
        !ids.contains(&wrong),
        "matched a group the caller is not in: {ids:?}"
    );
}

#[test]
fn path_and_sha256_selectors_identify_the_binary() {
    require_root();
    let dir = TestDir::new("path-sha");
    let server = Server::start(dir.path(), TD);
    let node = server.id("/node");
    let token = server.token(Some(&node));
    let conf = dir.path().join("agent.conf");
    std::fs::write(
        &conf,
        format!(
            "agent {{\n  trust_domain = \"{TD}\"\n  server_address = \"127.0.0.1\"\n}}\n\
             plugins {{\n  WorkloadAttestor \"unix\" {{\n    plugin_data {{\n      discover_workload_path = true\n    }}\n  }}\n}}\n"
        ),
    )
    .expect("agent config");
    let mut agent = Agent::spawn(
        dir.path(),
        "agent",
        &server,
        &token,
        &["-config", conf.to_str().expect("utf-8")],
    );
    agent.wait_ready();

    let peer = dir.install_bin(Path::new(env!("CARGO_BIN_EXE_sigil-demo-peer")));
    let other_dir = dir.sub("other");
    let copy = other_dir.join("renamed-peer");
    std::fs::copy(&peer, &copy).expect("copying the peer");
    sigil_e2e::harness::chmod(&copy, 0o755);
    let hash = hex(&sha2::Sha256::digest(
        std::fs::read(&peer).expect("reading the peer"),
    ));

    let by_path = server.id("/bin/by-path");
    let by_hash = server.id("/bin/by-sha256");
    server.create_entry(
        &node,
        &by_path,
        &[&format!("unix:path:{}", peer.display())],
        &[],
    );
    server.create_entry(&node, &by_hash, &[&format!("unix:sha256:{hash}")], &[]);

    // The original binary matches both; a copy elsewhere (same bytes) only the hash.
    wait_for_ids(&peer, &agent.socket, 1005, 1005, &[&by_path, &by_hash]);
    wait_for_ids(&copy, &agent.socket, 1005, 1005, &[&by_hash]);
    drop(agent);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The demo's exchange: uid 1002 serves and authorizes only uid 1001's SPIFFE ID; uid 1001 gets
/// in, a client presenting uid 1002's (valid, but not allowed) SVID is rejected.
#[test]
fn mtls_between_uids_authorizes_by_spiffe_id() {
    require_root();
    let env = Env::start("mtls");
    let peer = env
        .dir
        .install_bin(Path::new(env!("CARGO_BIN_EXE_sigil-demo-peer")));
    let sock = &env.agent.socket;
    let client_id = env.register("/demo/client", &["unix:uid:1001"], &[]);
    let server_id = env.register("/demo/server", &["unix:uid:1002"], &[]);
    wait_for_ids(&peer, sock, 1001, 1001, &[&client_id]);
    wait_for_ids(&peer, sock, 1002, 1002, &[&server_id]);

    let serve_log = env.dir.path().join("serve.log");
    let mut serve_cmd = Command::new(&peer);
    serve_cmd
        .args([
            "serve",
            "-listen",
            "127.0.0.1:0",
            "-allow",
            &client_id,
            "-count",
            "2",
            "-socketPath",
        ])
        .arg(sock)
        .uid(1002)
        .gid(1002)
        .current_dir("/");
    let mut serve = sigil_e2e::harness::Proc::spawn("demo peer (serve)", serve_cmd, serve_log);
    let addr = wait_until(
        "the serving peer's address",
        Duration::from_secs(20),
        || {
            serve.assert_running();
            serve.log().lines().find_map(|l| {
                l.strip_prefix("listening on ")
                    .and_then(|r| r.split_whitespace().next())
                    .map(str::to_string)
            })
        },
    );
    assert!(serve.log().contains(&server_id), "{}", serve.log());

    let connect = |uid: u32| {
        let mut c = Command::new(&peer);
        c.args([
            "connect",
            "-addr",
            &addr,
            "-allow",
            &server_id,
            "-message",
            &format!("hi from {uid}"),
            "-socketPath",
        ])
        .arg(sock)
        .uid(uid)
        .gid(uid)
        .current_dir("/")
        .stdin(Stdio::null());
        run(c, Duration::from_secs(30))
    };
    let ok = connect(1001);
    assert!(ok.success(), "authorized client was refused: {ok}");
    assert!(
        ok.stdout.contains(&format!("connected to {server_id}")),
        "{ok}"
    );
    let denied = connect(1002);
    assert!(!denied.success(), "unauthorized client got in: {denied}");
    assert!(denied.stdout.contains("refused"), "{denied}");

    let status = serve
        .wait_exit(Duration::from_secs(20))
        .expect("serve exits after two connections");
    assert!(status.success());
    let log = serve.log();
    assert!(
        log.contains(&format!("accepted {client_id}: \"hi from 1001\"")),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.starts_with("rejected:")
            && l.contains(&server_id)
            && l.contains("not authorized")),
        "{log}"
    );
}
