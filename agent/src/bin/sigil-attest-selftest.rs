//! `sigil-attest-selftest [-tiers t1,t2] [-expectAuto tier] [-attempts N] [-skipUnavailable]`
//!
//! Checks workload attestation against the running kernel, per tier, the way the agent does it
//! (same library code, real processes, a real socket):
//!
//! - facts: a child connecting from a non-main thread is attested with its pid, uid, cgroup id
//!   and (eBPF tiers) executable;
//! - kubepods: children in cgroup v2 directories named like kubelet's (systemd and cgroupfs
//!   drivers) get the pod UID and container id;
//! - attacks, `-attempts` times each: the caller exits and its pid is given to another process
//!   (`ns_last_pid`), the caller execs another binary after connecting, the caller hands the
//!   connected fd to another process over `SCM_RIGHTS` and exits (or, where writers are tracked,
//!   stays). No attempt may yield the other process's or the old binary's identity.
//!
//! Needs root. Exits non-zero on any failure. `cargo xtask vm-test` runs it inside Debian's
//! kernels; the e2e tests run it on the host.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sigil_workload_attestation::{
    AttestError, Attestation, Attestors, Caller, PeerInfo, Tier, TierRequest, UnixAttestor,
    UnixAttestorConfig, mount_point, proc_path,
};

const POD_UID: &str = "0c6f3a51-7d2e-4b89-a1f4-3e5d9c7b2a60";
const CID_A: &str = "aa11bb22cc33dd44ee55ff6600778899aabbccddeeff00112233445566778899";
const CID_B: &str = "bb11bb22cc33dd44ee55ff6600778899aabbccddeeff00112233445566778899";
/// The uid of the processes that try to get someone else's identity.
const ATTACKER_UID: u32 = 4242;

type Res<T> = Result<T, String>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("child") => child(&args[1..]),
        _ => match run(&args) {
            Ok(()) => 0,
            Err(e) => {
                println!("FAILED: {e}");
                1
            }
        },
    };
    std::process::exit(code);
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn run(args: &[String]) -> Res<()> {
    let tiers: Vec<Tier> = flag(args, "-tiers")
        .unwrap_or("lsm,fentry,tp_btf,pidfd,procfs")
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let attempts: usize = flag(args, "-attempts")
        .unwrap_or("100")
        .parse()
        .map_err(|e| format!("-attempts: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let dir = tempdir()?;
    if let Some(expected) = flag(args, "-expectAuto") {
        let expected: Tier = expected.parse()?;
        let (_listener, path) = rt.block_on(async { bind(&dir, "auto") })?;
        let auto = Attestation::start(TierRequest::Auto, &path).map_err(|e| e.to_string())?;
        for (t, reason) in auto.skipped() {
            println!("auto: skipped {t}: {reason}");
        }
        println!("auto: picked {}", auto.tier());
        if auto.tier() != expected {
            return Err(format!("auto picked {}, expected {expected}", auto.tier()));
        }
    }
    let skip_unavailable = args.iter().any(|a| a == "-skipUnavailable");
    let mut failed = Vec::new();
    for tier in tiers {
        let start = Instant::now();
        if skip_unavailable {
            let (_l, path) = rt.block_on(async { bind(&dir, "probe") })?;
            if let Err(e) = Attestation::start(TierRequest::Force(tier), &path) {
                println!("tier {tier}: unavailable: {}", e.reason);
                continue;
            }
        }
        match rt.block_on(suite(tier, attempts, &dir)) {
            Ok(()) => println!(
                "tier {tier}: passed ({:.1}s)",
                start.elapsed().as_secs_f64()
            ),
            Err(e) => {
                println!("tier {tier}: FAILED: {e}");
                failed.push(tier.name());
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("tiers failed: {}", failed.join(", ")))
    }
}

fn tempdir() -> Res<PathBuf> {
    let dir = std::env::temp_dir().join(format!("sigil-selftest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    Ok(dir)
}

fn bind(dir: &Path, name: &str) -> Res<(tokio::net::UnixListener, PathBuf)> {
    let path = dir.join(format!("{name}.sock"));
    let _ = std::fs::remove_file(&path);
    let l = tokio::net::UnixListener::bind(&path).map_err(|e| e.to_string())?;
    Ok((l, path))
}

/// One tier's checks.
struct Suite {
    tier: Tier,
    listener: tokio::net::UnixListener,
    path: PathBuf,
    attestors: Attestors,
    exe: PathBuf,
}

async fn suite(tier: Tier, attempts: usize, dir: &Path) -> Res<()> {
    let (listener, path) = bind(dir, tier.name())?;
    let attestation =
        Attestation::start(TierRequest::Force(tier), &path).map_err(|e| e.to_string())?;
    let writer_tracking = attestation.writer_tracking();
    let unix = UnixAttestor::new(UnixAttestorConfig {
        discover_workload_path: true,
        ..Default::default()
    });
    let attestors = Attestors::with_attestation(vec![Arc::new(unix)], Arc::new(attestation));
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let s = Suite {
        tier,
        listener,
        path,
        attestors,
        exe,
    };
    s.facts().await?;
    println!("  {tier}: facts ok");
    if tier.is_ebpf() {
        s.other_sockets_ignored(dir).await?;
        println!("  {tier}: connections to other sockets are not recorded");
    }
    s.kubepods().await?;
    println!("  {tier}: kubepods cgroups ok");
    let reused = s.pid_reuse(attempts).await?;
    println!(
        "  {tier}: pid reuse: {attempts} attempts ({reused} with the pid really reused), 0 wrong identities"
    );
    s.exec_after_connect(attempts).await?;
    println!("  {tier}: exec after connect: {attempts} attempts, 0 wrong identities");
    s.fd_passing(attempts, false).await?;
    println!("  {tier}: fd passing (sender exits): {attempts} attempts, 0 wrong identities");
    if writer_tracking {
        s.fd_passing(attempts, true).await?;
        println!("  {tier}: fd passing (sender alive): {attempts} attempts, 0 wrong identities");
    }
    Ok(())
}

// === impl Suite ===

impl Suite {
    fn child(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.arg("child").args(args).stdin(Stdio::piped());
        c
    }

    /// Accepts one connection and captures it as the agent's accept loop does.
    async fn accept(&self) -> Res<(tokio::net::UnixStream, PeerInfo)> {
        let (io, _) = tokio::time::timeout(Duration::from_secs(10), self.listener.accept())
            .await
            .map_err(|_| "no connection within 10s".to_string())?
            .map_err(|e| e.to_string())?;
        let info = PeerInfo::from_socket(&io).map_err(|e| e.to_string())?;
        Ok((io, info))
    }

    /// Reads the byte the caller writes first: attestation happens once a request arrived.
    async fn read_byte(io: &mut tokio::net::UnixStream) -> Res<()> {
        use tokio::io::AsyncReadExt;
        let mut b = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(10), io.read_exact(&mut b))
            .await
            .map_err(|_| "no request byte within 10s".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The full attestation: caller facts, unix selectors, re-verification.
    async fn attest(&self, peer: &PeerInfo) -> Result<(Caller, Vec<String>), AttestError> {
        let caller = self.attestors.caller(peer).await?;
        let selectors = self.attestors.attest(peer).await?;
        Ok((caller, selectors.iter().map(|s| s.to_string()).collect()))
    }

    async fn facts(&self) -> Res<()> {
        let mut child = self
            .child(&["connect", &self.path.display().to_string(), "-"])
            .spawn()
            .map_err(|e| e.to_string())?;
        let (mut io, peer) = self.accept().await?;
        Self::read_byte(&mut io).await?;
        let result = self.attest(&peer).await;
        finish(&mut child);
        let (caller, selectors) = result.map_err(|e| format!("attesting a live child: {e}"))?;
        let pid = child.id() as i32;
        check(
            caller.pid == pid,
            format!("pid {} != child {pid}", caller.pid),
        )?;
        check(caller.tier == self.tier, "wrong tier in caller".into())?;
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        check(caller.uid == uid, format!("uid {} != {uid}", caller.uid))?;
        let own_cgroup = proc_path(std::process::id() as i32).ok();
        if let (Some(cg), Some(own)) = (&caller.cgroup, &own_cgroup) {
            check(
                cg.path.as_deref() == Some(own.as_str()),
                format!("cgroup {:?} != {own}", cg.path),
            )?;
        }
        let path_sel = format!("unix:path:{}", self.exe.display());
        check(
            selectors.contains(&path_sel),
            format!("no {path_sel} in {selectors:?}"),
        )?;
        if self.tier.is_ebpf() {
            let rec = caller.record.ok_or("no kernel record")?;
            let meta = std::fs::metadata(&self.exe).map_err(|e| e.to_string())?;
            check(
                rec.exe_ino == meta.ino(),
                format!("exe inode {} != {}", rec.exe_ino, meta.ino()),
            )?;
            check(
                rec.tid != rec.tgid,
                "the child connected from a thread: tid must differ from tgid".into(),
            )?;
            let mnt = std::fs::metadata(format!("/proc/{pid}/ns/mnt")).ok();
            let own_mnt = std::fs::metadata("/proc/self/ns/mnt").map_err(|e| e.to_string())?;
            check(
                u64::from(rec.mnt_ns) == mnt.map_or(own_mnt.ino(), |m| m.ino()),
                format!("mnt ns {} != {}", rec.mnt_ns, own_mnt.ino()),
            )?;
            let own_pidns = std::fs::metadata("/proc/self/ns/pid").map_err(|e| e.to_string())?;
            check(
                u64::from(rec.pid_ns) == own_pidns.ino(),
                format!("pid ns {} != {}", rec.pid_ns, own_pidns.ino()),
            )?;
        }
        Ok(())
    }

    /// The kernel filters on the agent's socket: a connection to another socket, in the same
    /// directory and from the same process, leaves no record.
    async fn other_sockets_ignored(&self, dir: &Path) -> Res<()> {
        use tokio::io::AsyncWriteExt;
        let (other, path) = bind(dir, &format!("other-{}", self.tier))?;
        let mut client = tokio::net::UnixStream::connect(&path)
            .await
            .map_err(|e| e.to_string())?;
        client.write_all(b"x").await.map_err(|e| e.to_string())?;
        let (mut io, _) = other.accept().await.map_err(|e| e.to_string())?;
        let peer = PeerInfo::from_socket(&io).map_err(|e| e.to_string())?;
        Self::read_byte(&mut io).await?;
        let cookie = peer.cookie.ok_or("no SO_COOKIE")?;
        match self.attestors.attestation().recorded(cookie) {
            None => Ok(()),
            Some(r) => Err(format!(
                "a connection to another socket was recorded: {r:?}"
            )),
        }
    }

    async fn kubepods(&self) -> Res<()> {
        let Some(mount) = mount_point() else {
            return Err("no cgroup2 mount".into());
        };
        let base = if mount.join("unified").is_dir() && !mount.ends_with("unified") {
            mount.join("unified")
        } else {
            mount.to_path_buf()
        };
        let root = base.join(format!(
            "sigil-selftest-{}-{}",
            std::process::id(),
            self.tier
        ));
        let systemd = root.join(format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{CID_A}.scope",
            POD_UID.replace('-', "_")
        ));
        let cgroupfs = root.join(format!("kubepods/besteffort/pod{POD_UID}/{CID_B}"));
        let result = async {
            for (dir, cid) in [(&systemd, CID_A), (&cgroupfs, CID_B)] {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
                let mut child = self
                    .child(&[
                        "connect",
                        &self.path.display().to_string(),
                        &dir.display().to_string(),
                    ])
                    .spawn()
                    .map_err(|e| e.to_string())?;
                let (mut io, peer) = self.accept().await?;
                Self::read_byte(&mut io).await?;
                let result = self.attest(&peer).await;
                finish(&mut child);
                let (caller, _) = result.map_err(|e| format!("attesting a pod child: {e}"))?;
                let pod = caller
                    .pod
                    .ok_or_else(|| format!("no pod for cgroup {:?}", caller.cgroup))?;
                check(pod.pod_uid == POD_UID, format!("pod uid {}", pod.pod_uid))?;
                check(
                    pod.container_id.as_deref() == Some(cid),
                    format!("container id {:?}", pod.container_id),
                )?;
                check(
                    caller.cgroup.as_ref().map(|c| c.id)
                        == std::fs::metadata(dir).ok().map(|m| m.ino()),
                    "cgroup id is not the pod cgroup's".into(),
                )?;
            }
            Ok(())
        }
        .await;
        remove_tree(&root);
        result
    }

    /// The caller connects, writes and exits; its pid goes to a process of another uid.
    async fn pid_reuse(&self, attempts: usize) -> Res<usize> {
        let mut reused = 0;
        for i in 0..attempts {
            let mut a = self
                .child(&["connect-exit", &self.path.display().to_string()])
                .spawn()
                .map_err(|e| e.to_string())?;
            let a_pid = a.id() as i32;
            // Half the time the agent captures the connection before the caller exits.
            let early = if i % 2 == 0 {
                Some(self.accept().await?)
            } else {
                None
            };
            let _ = a.wait();
            let mut b = spawn_with_pid(&self.exe, a_pid)?;
            if b.id() as i32 == a_pid {
                reused += 1;
            }
            let (mut io, peer) = match early {
                Some(x) => x,
                None => self.accept().await?,
            };
            Self::read_byte(&mut io).await?;
            let result = self.attest(&peer).await;
            finish(&mut b);
            if let Ok((caller, selectors)) = result {
                return Err(format!(
                    "attempt {i}: a caller that exited was attested (pid {}, uid {}, {selectors:?})",
                    caller.pid, caller.uid
                ));
            }
        }
        Ok(reused)
    }

    /// The caller connects, writes, then execs another program.
    async fn exec_after_connect(&self, attempts: usize) -> Res<()> {
        let (prog, args) = sleeper();
        for i in 0..attempts {
            let mut a = self
                .child(&["connect-exec", &self.path.display().to_string(), &prog])
                .args(&args)
                .spawn()
                .map_err(|e| e.to_string())?;
            let (mut io, peer) = self.accept().await?;
            Self::read_byte(&mut io).await?;
            // Wait for the exec to have happened.
            let pid = a.id();
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::fs::read_link(format!("/proc/{pid}/exe"))
                .ok()
                .as_deref()
                == Some(&self.exe)
            {
                if Instant::now() > deadline {
                    finish(&mut a);
                    return Err(format!("attempt {i}: child did not exec"));
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            let result = self.attest(&peer).await;
            finish(&mut a);
            match result {
                Err(_) => {}
                Ok((caller, selectors)) => {
                    let old = format!("unix:path:{}", self.exe.display());
                    if self.tier.is_ebpf() || selectors.contains(&old) {
                        return Err(format!(
                            "attempt {i}: caller that exec'd was attested as before (pid {}, {selectors:?})",
                            caller.pid
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The caller connects and passes the fd to a process of another uid, which writes on it.
    async fn fd_passing(&self, attempts: usize, sender_stays: bool) -> Res<()> {
        for i in 0..attempts {
            let (s1, s2) = socketpair()?;
            let mut b = self.child(&["recv-write"]);
            with_fd3(&mut b, &s2);
            as_uid(&mut b, ATTACKER_UID);
            let mut b = b.spawn().map_err(|e| e.to_string())?;
            let mode = if sender_stays {
                "connect-send-stay"
            } else {
                "connect-send"
            };
            let mut a = self.child(&[mode, &self.path.display().to_string()]);
            with_fd3(&mut a, &s1);
            let mut a = a.spawn().map_err(|e| e.to_string())?;
            drop((s1, s2));
            let (mut io, peer) = self.accept().await?;
            if !sender_stays {
                let _ = a.wait();
            }
            Self::read_byte(&mut io).await?;
            let result = self.attest(&peer).await;
            finish(&mut a);
            finish(&mut b);
            if let Ok((caller, selectors)) = result {
                return Err(format!(
                    "attempt {i}: the receiver of a passed fd was attested (pid {}, uid {}, {selectors:?})",
                    caller.pid, caller.uid
                ));
            }
        }
        Ok(())
    }
}

fn check(ok: bool, msg: String) -> Res<()> {
    if ok { Ok(()) } else { Err(msg) }
}

/// Ends a helper child: closes its stdin (which it waits on), then kills and reaps it.
fn finish(child: &mut Child) {
    drop(child.stdin.take());
    let _ = child.kill();
    let _ = child.wait();
}

fn remove_tree(dir: &Path) {
    // Children first: cgroup directories can only be removed when empty of children.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// A program other than this one that blocks for a while.
fn sleeper() -> (String, Vec<String>) {
    for p in ["/bin/sleep", "/usr/bin/sleep"] {
        if Path::new(p).exists()
            && std::fs::canonicalize(p)
                .ok()
                .is_some_and(|c| !c.ends_with("busybox"))
        {
            return (p.into(), vec!["30".into()]);
        }
    }
    ("/bin/busybox".into(), vec!["sleep".into(), "30".into()])
}

/// Spawns a blocking child of [`ATTACKER_UID`], asking the kernel to give it `pid` (the next pid
/// after `ns_last_pid`). Other processes forking at the same moment can take it first.
fn spawn_with_pid(exe: &Path, pid: i32) -> Res<Child> {
    let _ = std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string());
    let mut c = Command::new(exe);
    c.args(["child", "wait"]).stdin(Stdio::piped());
    as_uid(&mut c, ATTACKER_UID);
    c.spawn().map_err(|e| e.to_string())
}

fn as_uid(c: &mut Command, uid: u32) {
    c.uid(uid).gid(uid);
}

fn socketpair() -> Res<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds on success.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: fresh fds owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Makes `fd` the child's fd 3.
fn with_fd3(c: &mut Command, fd: &OwnedFd) {
    let raw = fd.as_raw_fd();
    // SAFETY: dup2 is async-signal-safe; `raw` stays open in the parent until after spawn.
    unsafe {
        c.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

// === children ===

fn child(args: &[String]) -> i32 {
    match child_main(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("child {args:?}: {e}");
            1
        }
    }
}

fn wait_stdin() {
    let mut b = [0u8; 1];
    let _ = std::io::stdin().read(&mut b);
}

fn child_main(args: &[String]) -> Res<()> {
    let arg = |i: usize| args.get(i).map(String::as_str).ok_or("missing argument");
    let connect = |path: &str| {
        std::os::unix::net::UnixStream::connect(path).map_err(|e| format!("connect: {e}"))
    };
    match arg(0)? {
        // Connect from a second thread (so that tid != tgid), optionally from a cgroup, write,
        // and stay until told.
        "connect" => {
            let (path, cg) = (arg(1)?.to_string(), arg(2)?.to_string());
            if cg != "-" {
                std::fs::write(Path::new(&cg).join("cgroup.procs"), "0")
                    .map_err(|e| format!("joining {cg}: {e}"))?;
            }
            let stream = std::thread::spawn(move || -> Res<_> {
                let mut s = connect(&path)?;
                s.write_all(b"x").map_err(|e| e.to_string())?;
                Ok(s)
            })
            .join()
            .map_err(|_| "connect thread panicked")??;
            wait_stdin();
            drop(stream);
            Ok(())
        }
        "connect-exit" => {
            let mut s = connect(arg(1)?)?;
            s.write_all(b"x").map_err(|e| e.to_string())?;
            // Exit without closing: the fd dies with the process (its connection stays
            // queued in the agent's accept backlog).
            std::mem::forget(s);
            std::process::exit(0);
        }
        "connect-exec" => {
            let mut s = connect(arg(1)?)?;
            s.write_all(b"x").map_err(|e| e.to_string())?;
            // Keep the connection across exec (no CLOEXEC), as a program that execs would.
            clear_cloexec(s.as_raw_fd());
            std::mem::forget(s);
            let err = Command::new(arg(2)?).args(&args[3..]).exec();
            Err(format!("exec: {err}"))
        }
        mode @ ("connect-send" | "connect-send-stay") => {
            let s = connect(arg(1)?)?;
            send_fd(3, s.as_raw_fd())?;
            if mode == "connect-send-stay" {
                wait_stdin();
            }
            Ok(())
        }
        "recv-write" => {
            let fd = recv_fd(3)?;
            let mut s = std::os::unix::net::UnixStream::from(fd);
            s.write_all(b"x").map_err(|e| e.to_string())?;
            wait_stdin();
            Ok(())
        }
        "wait" => {
            wait_stdin();
            Ok(())
        }
        other => Err(format!("unknown child mode {other}")),
    }
}

fn clear_cloexec(fd: RawFd) {
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
    }
}

/// Sends `fd` over the Unix socket `via` (SCM_RIGHTS).
fn send_fd(via: RawFd, fd: RawFd) -> Res<()> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: all-zero is a valid msghdr; the pointers set below outlive the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer has room for one header with one fd (CMSG_SPACE above).
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
    }
    // SAFETY: msg is fully initialised.
    if unsafe { libc::sendmsg(via, &msg, 0) } < 0 {
        return Err(format!("sendmsg: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn recv_fd(via: RawFd) -> Res<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: as in send_fd.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg points at live buffers.
    if unsafe { libc::recvmsg(via, &mut msg, 0) } <= 0 {
        return Err(format!("recvmsg: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the kernel filled the control buffer; we check the header before reading.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return Err("no fd received".into());
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
        Ok(OwnedFd::from_raw_fd(fd))
    }
}
