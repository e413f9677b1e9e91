//! Kernel-recorded workload attestation (issue 4): the attestation tiers on this machine's real
//! kernel. Needs root (BPF, cgroups, other uids); CI runs as root.
//!
//! - The whole attestation suite (facts, kubepods cgroups, and the PID-reuse, exec-after-connect
//!   and fd-passing attack loops, 1000 attempts each) once per tier this kernel offers, through
//!   `sigil-attest-selftest`.
//! - Real agents forced onto each available tier serve workloads in kubepods-like cgroup v2
//!   directories (systemd and cgroupfs drivers) the SVIDs of their pod and container.
//! - Through real agents on each tier, 1000 times: a connection handed over `SCM_RIGHTS` by a
//!   workload that then exits (half the time with its pid immediately reused by another
//!   workload) gets no identity, refused by attestation.
//! - An agent without BPF privileges falls back, says why, and still serves.

use crate::TD;
use sigil_e2e::cgroups::{Cgroups, fetch_in_cgroup, wait_for_ids_in};
use sigil_e2e::harness::{Agent, Server, TestDir, run, sigil_bin, wait_until};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const POD_A: &str = "5b0c2f3e-1d4a-4e6b-9c8d-7a6f5e4d3c2b";
const POD_B: &str = "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b";
const CID_A: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const CID_B: &str = "2222222222222222222222222222222222222222222222222222222222222222";

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "the eBPF attestation tests load BPF programs and create cgroups: they must run as root \
         (CI does)"
    );
}

/// (major, minor) of the running kernel.
fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The tiers this kernel must offer to a root agent: tp_btf from 6.10, pidfd from 6.13.
fn expected_tiers() -> Vec<&'static str> {
    let v = kernel_version();
    let mut tiers = Vec::new();
    if v >= (6, 10) {
        tiers.push("tp_btf");
    }
    if v >= (6, 13) {
        tiers.push("pidfd");
    }
    tiers.push("procfs");
    tiers
}

#[test]
fn attestation_suite_and_attack_loops_on_every_available_tier() {
    require_root();
    let out = run(
        {
            let mut c = Command::new(sigil_bin("sigil-attest-selftest"));
            c.args(["-tiers", "lsm,fentry,tp_btf,pidfd,procfs"]).args([
                "-attempts",
                "1000",
                "-skipUnavailable",
            ]);
            c
        },
        Duration::from_secs(1200),
    );
    println!("{}", out.stdout);
    assert!(out.success(), "self-test failed: {out}");
    for tier in expected_tiers() {
        assert!(
            out.stdout.contains(&format!("tier {tier}: passed")),
            "tier {tier} did not run on this kernel: {out}"
        );
    }
    // On this sandbox kernel trampolines are refused: say so rather than silently pass.
    for tier in ["lsm", "fentry"] {
        assert!(
            out.stdout.contains(&format!("tier {tier}: passed"))
                || out.stdout.contains(&format!("tier {tier}: unavailable")),
            "tier {tier}: neither ran nor was reported unavailable: {out}"
        );
    }
    for attack in [
        "pid reuse: 1000 attempts",
        "exec after connect: 1000 attempts",
        "fd passing (sender exits): 1000 attempts",
    ] {
        let runs = out.stdout.matches(attack).count();
        assert!(
            runs >= expected_tiers().len(),
            "{attack}: ran {runs} times: {out}"
        );
    }
}

fn start_agent(dir: &TestDir, server: &Server, name: &str, extra: &[&str]) -> (Agent, String) {
    let node = server.id(&format!("/node/{name}"));
    let token = server.token(Some(&node));
    let mut agent = Agent::spawn(dir.path(), name, server, &token, extra);
    agent.wait_ready();
    wait_for_tier(|| {
        agent.proc().assert_running();
        agent.log()
    });
    (agent, node)
}

/// The tier is chosen after the socket is bound (the eBPF tiers filter on its inode): wait for
/// the agent to log it. Returns the log.
fn wait_for_tier(mut log: impl FnMut() -> String) -> String {
    wait_until(
        "the agent to log its workload attestation tier",
        Duration::from_secs(30),
        || Some(log()).filter(|l| l.contains("workload attestation tier:")),
    )
}

#[test]
fn kubepods_workloads_get_their_pod_svids_on_every_tier() {
    require_root();
    let dir = TestDir::new("kubepods");
    let server = Server::start(dir.path(), TD);
    let peer = dir.install_bin(Path::new(env!("CARGO_BIN_EXE_sigil-demo-peer")));
    let cgroups = Cgroups::new("kubepods");
    // kubelet's systemd driver with containerd, and its cgroupfs driver with CRI-O naming.
    let in_a = cgroups.dir(&format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{CID_A}.scope",
        POD_A.replace('-', "_")
    ));
    let in_b = cgroups.dir(&format!("kubepods/besteffort/pod{POD_B}/crio-{CID_B}"));
    let outside = cgroups.dir("system.slice/not-a-pod.service");

    for tier in expected_tiers() {
        let (mut agent, node) = start_agent(
            &dir,
            &server,
            &format!("agent-{tier}"),
            &["-attestationTier", tier],
        );
        let log = agent.log();
        assert!(
            log.contains(&format!("workload attestation tier: {tier}")),
            "agent does not report tier {tier}:\n{log}"
        );
        let health = agent.cli(&["healthcheck"]).ok();
        assert!(
            health
                .stdout
                .contains(&format!("Workload attestation tier: {tier}")),
            "healthcheck does not show the tier: {health}"
        );
        let id_a = server.id(&format!("/{tier}/pod-a"));
        let id_b = server.id(&format!("/{tier}/pod-b"));
        let pod_a = format!("k8s:pod-uid:{POD_A}");
        let ctr_a = format!("k8s:container-id:{CID_A}");
        let pod_b = format!("k8s:pod-uid:{POD_B}");
        let ctr_b = format!("k8s:container-id:{CID_B}");
        server.create_entry(&node, &id_a, &[&pod_a, &ctr_a], &[]);
        server.create_entry(&node, &id_b, &[&pod_b, &ctr_b], &[]);

        wait_for_ids_in(&peer, &agent.socket, &in_a, std::slice::from_ref(&id_a));
        wait_for_ids_in(&peer, &agent.socket, &in_b, std::slice::from_ref(&id_b));
        match fetch_in_cgroup(&peer, &agent.socket, &outside) {
            Ok(ids) => panic!("tier {tier}: a workload outside the pods got {ids:?}"),
            Err(out) => assert!(out.stderr.contains("PermissionDenied"), "{out}"),
        }
        agent.proc().terminate();
    }
}

#[test]
fn agent_without_bpf_privileges_falls_back_and_serves() {
    require_root();
    let dir = TestDir::new("nobpf");
    let server = Server::start(dir.path(), TD);
    let node = server.id("/node/nobpf");
    let token = server.token(Some(&node));
    // Drop the BPF capabilities from the bounding set: root's exec then gets every capability
    // but these.
    let adir = dir.path().join("agent");
    let public = adir.join("public");
    std::fs::create_dir_all(&public).expect("agent dir");
    let bundle = adir.join("bundle.pem");
    std::fs::write(&bundle, server.bundle_pem()).expect("bundle");
    let socket = public.join("api.sock");
    let mut cmd = Command::new(sigil_bin("sigil-agent"));
    cmd.arg("run")
        .arg("-dataDir")
        .arg(adir.join("data"))
        .args(["-joinToken", &token])
        .args(["-serverAddress", "127.0.0.1"])
        .args(["-serverPort", &server.port().to_string()])
        .arg("-socketPath")
        .arg(&socket)
        .args(["-trustDomain", TD])
        .arg("-trustBundle")
        .arg(&bundle)
        .env("NO_COLOR", "1");
    // SAFETY: prctl only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            for cap in [21, 38, 39] {
                // CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF
                if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut agent =
        sigil_e2e::harness::Proc::spawn("sigil-agent (no BPF)", cmd, adir.join("agent.log"));
    wait_until(
        "the unprivileged agent's socket",
        Duration::from_secs(30),
        || {
            agent.assert_running();
            std::os::unix::net::UnixStream::connect(&socket).ok()
        },
    );
    let log = wait_for_tier(|| {
        agent.assert_running();
        agent.log()
    });
    assert!(log.contains("no BPF privileges"), "no reason given:\n{log}");
    let fallback = if kernel_version() >= (6, 13) {
        "pidfd"
    } else {
        "procfs"
    };
    assert!(
        log.contains(&format!("workload attestation tier: {fallback}")),
        "expected the {fallback} tier:\n{log}"
    );
    let id = server.id("/nobpf/me");
    server.create_entry(&node, &id, &[&crate::Env::my_uid()], &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(sigil_e2e::harness::wait_for_svid(&socket, &id));
}

/// Receives one fd over `via` (SCM_RIGHTS).
fn recv_fd(via: &std::os::fd::OwnedFd) -> std::os::fd::OwnedFd {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: all-zero is a valid msghdr; the buffers it points to outlive recvmsg.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg points at live buffers.
    let n = unsafe { libc::recvmsg(via.as_raw_fd(), &mut msg, 0) };
    assert!(n > 0, "recvmsg: {}", std::io::Error::last_os_error());
    // SAFETY: the kernel filled the control buffer; the header is checked before use.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        assert!(
            !cmsg.is_null() && (*cmsg).cmsg_type == libc::SCM_RIGHTS,
            "no fd received"
        );
        OwnedFd::from_raw_fd(std::ptr::read_unaligned(
            libc::CMSG_DATA(cmsg).cast::<RawFd>(),
        ))
    }
}

/// FetchX509SVID over an already connected socket: the SPIFFE IDs, or the error.
async fn fetch_over(stream: std::os::unix::net::UnixStream) -> Result<Vec<String>, String> {
    use sigil_proto::workload::X509svidRequest;
    use sigil_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
    stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(stream)));
    let channel = tonic::transport::Endpoint::try_from("http://localhost")
        .map_err(|e| e.to_string())?
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let taken = slot.lock().map(|mut s| s.take()).ok().flatten();
            async move {
                let s = taken.ok_or_else(|| std::io::Error::other("connection already used"))?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::from_std(s)?,
                ))
            }
        }))
        .await
        .map_err(|e| e.to_string())?;
    let mut client = SpiffeWorkloadApiClient::new(channel);
    let call = async {
        let mut stream = client
            .fetch_x509svid(sigil_e2e::workload::request(X509svidRequest {}))
            .await?
            .into_inner();
        stream.message().await
    };
    match tokio::time::timeout(Duration::from_secs(10), call).await {
        Err(_) => Err("timed out".into()),
        Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
        Ok(Ok(None)) => Err("stream ended".into()),
        Ok(Ok(Some(m))) => Ok(m.svids.into_iter().map(|s| s.spiffe_id).collect()),
    }
}

/// Through a real agent on each available tier, 1000 times: a workload (uid 1001, which has an
/// identity) connects and hands the connection to the test process over SCM_RIGHTS, then exits;
/// every other attempt its pid is immediately given to a process of uid 4242 (which has an
/// identity too). Whoever then asks over that connection must get neither identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passed_connections_and_reused_pids_get_no_identity_through_the_agent() {
    require_root();
    let dir = TestDir::new("attacks");
    let server = Server::start(dir.path(), TD);
    let selftest = dir.install_bin(&sigil_bin("sigil-attest-selftest"));
    let peer = dir.install_bin(Path::new(env!("CARGO_BIN_EXE_sigil-demo-peer")));
    for tier in expected_tiers() {
        let (agent, node) = start_agent(
            &dir,
            &server,
            &format!("agent-{tier}"),
            &["-attestationTier", tier],
        );
        let victim = server.id(&format!("/{tier}/uid-1001"));
        let reuser = server.id(&format!("/{tier}/uid-4242"));
        server.create_entry(&node, &victim, &["unix:uid:1001"], &[]);
        server.create_entry(&node, &reuser, &["unix:uid:4242"], &[]);
        // Positive control: both really have identities (the entries reached the agent).
        wait_until(
            "uids 1001 and 4242 to get their identities",
            Duration::from_secs(30),
            || {
                let has = |uid: u32, want: &str| {
                    let mut c = Command::new(&peer);
                    c.arg("fetch")
                        .arg("-socketPath")
                        .arg(&agent.socket)
                        .uid(uid)
                        .gid(uid)
                        .current_dir("/");
                    let out = run(c, Duration::from_secs(20));
                    out.success() && out.stdout.lines().any(|l| l == want)
                };
                (has(1001, &victim) && has(4242, &reuser)).then_some(())
            },
        );
        let mut refused = 0;
        let mut reasons = std::collections::BTreeSet::new();
        for i in 0..1000 {
            let (mine, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
            let theirs: std::os::fd::OwnedFd = theirs.into();
            let raw = std::os::fd::AsRawFd::as_raw_fd(&theirs);
            let mut a = Command::new(&selftest);
            a.args(["child", "connect-send"])
                .arg(&agent.socket)
                .uid(1001)
                .gid(1001)
                .stdin(std::process::Stdio::null());
            // SAFETY: dup2 between fork and exec on an fd the parent keeps open until spawn.
            unsafe {
                a.pre_exec(move || {
                    if libc::dup2(raw, 3) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let mut a = a.spawn().expect("spawning the connecting workload");
            drop(theirs);
            let mine: std::os::fd::OwnedFd = mine.into();
            let conn = recv_fd(&mine);
            let a_pid = a.id();
            let _ = a.wait();
            let mut b = None;
            if i % 2 == 0 {
                let _ = std::fs::write("/proc/sys/kernel/ns_last_pid", (a_pid - 1).to_string());
                let mut c = Command::new(&selftest);
                c.args(["child", "wait"])
                    .uid(4242)
                    .gid(4242)
                    .stdin(std::process::Stdio::piped());
                b = Some(c.spawn().expect("spawning the pid reuser"));
            }
            let result = fetch_over(std::os::unix::net::UnixStream::from(conn)).await;
            if let Some(mut b) = b {
                let _ = b.kill();
                let _ = b.wait();
            }
            match result {
                Ok(ids) => {
                    panic!("tier {tier}, attempt {i}: a passed connection got identities {ids:?}")
                }
                Err(e) => {
                    refused += 1;
                    reasons.insert(e);
                }
            }
        }
        assert_eq!(refused, 1000);
        println!("tier {tier}: 1000 passed connections refused, 0 wrong identities: {reasons:?}");
        // Refused by attestation, not by accident (a broken connection would also fail).
        assert!(
            reasons.iter().all(|r| r.contains("attestation failed")),
            "tier {tier}: unexpected failures: {reasons:?}"
        );
    }
}
