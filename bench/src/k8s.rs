//! Kubernetes workload attestation (issue 11):
//!
//! - pod appears on the API server → its process is served its SVID (the entry already
//!   registered), over 50 pods: the watch pushes the pod, the waiting call is answered;
//! - attestation cost per connection with the `k8s` attestor (500 pods in its store) next to
//!   `unix` only;
//! - agent RSS with 500 pods of its node in the store, next to an agent with none.
//!
//! Pods stand in as kubelet-named cgroup v2 directories; the bench process moves itself into a
//! pod's cgroup before connecting (the kernel records the cgroup at connect), so it must run as
//! root. The API server is `sigil-fake-kube` on loopback.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sigil_fake_kube::FakeKube;
use sigil_k8s::{K8sAttestor, K8sAttestorConfig, PodInfo, PodStore, StoreEvent};
use sigil_workload_attestation::{
    Attestation, Attestors, PeerInfo, TierRequest, UnixAttestor, UnixAttestorConfig,
    WorkloadAttestor,
};

use crate::{
    Proc, Rows, TRUST_DOMAIN, client, fetch_once, run_cli, start_server, verdict, wait_for,
};

pub(crate) const NODE: &str = "bench-node-1";

/// The `k8s` rows.
pub async fn rows(
    bin_dir: &Path,
    quick: bool,
    rows: &mut Rows,
    json_out: &mut serde_json::Map<String, Value>,
) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        rows.push((
            "k8s attestation".into(),
            "not run".into(),
            "needs root (pods are cgroups)".into(),
        ));
        return Ok(());
    }
    let cgroups = CgroupRoot::new()?;

    eprintln!("== k8s: pod appears → its process is served");
    let (p50, p99, n) = pod_to_svid(bin_dir, &cgroups, if quick { 20 } else { 50 }).await?;
    rows.push((
        format!("k8s: pod created → its process served its SVID ({n} pods)"),
        format!("p50 {p50:.1} ms, p99 {p99:.1} ms"),
        format!("target p99 ≤ 100 ms {}", verdict(p99 <= 100.0)),
    ));
    json_out.insert(
        "k8s_pod_to_svid".into(),
        json!({"p50_ms": p50, "p99_ms": p99, "pods": n}),
    );

    eprintln!("== k8s: attestation cost per connection");
    let (unix_us, k8s_us) = attestation_cost(&cgroups, if quick { 1000 } else { 5000 }).await?;
    let added = k8s_us - unix_us;
    rows.push((
        "k8s: attestation per connection, unix + k8s vs unix only (500 pods)".into(),
        format!("{k8s_us:.1} µs vs {unix_us:.1} µs (+{added:.1} µs)"),
        format!("target ≤ +10 µs {}", verdict(added <= 10.0)),
    ));
    json_out.insert(
        "k8s_attestation_cost".into(),
        json!({"unix_us": unix_us, "unix_k8s_us": k8s_us, "added_us": added}),
    );

    eprintln!("== k8s: agent RSS with 500 pods");
    let (none_kib, full_kib) = agent_rss(bin_dir, 500).await?;
    let added_mib = (full_kib as f64 - none_kib as f64) / 1024.0;
    rows.push((
        "k8s: agent RSS, 500 pods on the node vs none".into(),
        format!(
            "{:.1} MiB vs {:.1} MiB (+{added_mib:.1} MiB)",
            full_kib as f64 / 1024.0,
            none_kib as f64 / 1024.0
        ),
        format!("target ≤ +15 MiB {}", verdict(added_mib <= 15.0)),
    ));
    json_out.insert(
        "k8s_agent_rss".into(),
        json!({"none_kib": none_kib, "pods_500_kib": full_kib, "added_mib": added_mib}),
    );
    Ok(())
}

/// A realistic pod of `NODE` (labels, annotations, two containers and an init container,
/// managed fields): what the agent receives and strips.
pub(crate) fn pod(i: usize, node: &str) -> Value {
    let uid = pod_uid(i);
    let container = |name: &str, id: &str| {
        json!({
            "name": name,
            "image": format!("registry.example.com/team/{name}:1.2.{i}"),
            "imageID": format!("registry.example.com/team/{name}@sha256:{}", "cd".repeat(32)),
            "containerID": format!("containerd://{id}"),
            "ready": true, "restartCount": 0, "started": true,
            "state": {"running": {"startedAt": "2026-12-06T00:00:00Z"}},
            "lastState": {},
        })
    };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("bench-{i}"),
            "namespace": "bench",
            "uid": uid,
            "labels": {"app": "bench", "pod-template-hash": "6658cb9566", "version": "v1",
                       "security.istio.io/tlsMode": "istio", "service.istio.io/canonical-name": "bench"},
            "annotations": {"kubectl.kubernetes.io/default-container": "app",
                            "sidecar.istio.io/status": "{\"initContainers\":[\"istio-init\"],\"containers\":[\"istio-proxy\"],\"volumes\":[\"workload-socket\",\"credential-socket\",\"workload-certs\",\"istio-envoy\",\"istio-data\",\"istio-podinfo\",\"istio-token\",\"istiod-ca-cert\"]}"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "bench-6658cb9566",
                                 "uid": "349d135e-3781-43e3-bc25-c900aedf1d0c", "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                               "time": "2026-12-06T00:00:00Z", "fieldsType": "FieldsV1",
                               "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}}}],
        },
        "spec": {
            "nodeName": node,
            "serviceAccountName": "bench",
            "containers": [
                {"name": "app", "image": format!("registry.example.com/team/app:1.2.{i}"),
                 "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                 "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}},
                {"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.28.0",
                 "args": ["proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local"]},
            ],
            "initContainers": [{"name": "istio-init", "image": "docker.io/istio/proxyv2:1.28.0"}],
        },
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.1",
            "containerStatuses": [container("app", &container_id(i, 1)), container("istio-proxy", &container_id(i, 2))],
            "initContainerStatuses": [container("istio-init", &container_id(i, 3))],
        },
    })
}

pub(crate) fn pod_uid(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

fn container_id(i: usize, n: usize) -> String {
    format!("{n:x}{i:063x}")
}

/// The cgroup2 tree the bench makes pods in, and where the bench process came from.
pub(crate) struct CgroupRoot {
    mount: PathBuf,
    root: PathBuf,
    home: PathBuf,
}

impl CgroupRoot {
    pub(crate) fn new() -> Result<Self> {
        let mount = sigil_workload_attestation::mount_point()
            .context("no cgroup2 mount")?
            .to_path_buf();
        let home = sigil_workload_attestation::proc_path(std::process::id() as i32)?;
        let root = mount.join(format!("sigil-bench-k8s-{}", std::process::id()));
        std::fs::create_dir_all(&root)?;
        Ok(Self {
            home: mount.join(home.trim_start_matches('/')),
            mount,
            root,
        })
    }

    /// The systemd-driver cgroup of pod `i`'s first container.
    pub(crate) fn pod_dir(&self, i: usize) -> Result<PathBuf> {
        let d = self.root.join(format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{}.scope",
            pod_uid(i).replace('-', "_"),
            container_id(i, 1)
        ));
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }

    /// Moves this whole process into `dir`.
    pub(crate) fn enter(&self, dir: &Path) -> Result<()> {
        std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("moving the bench into {}", dir.display()))
    }

    pub(crate) fn leave(&self) -> Result<()> {
        self.enter(&self.home.clone())
    }
}

impl Drop for CgroupRoot {
    fn drop(&mut self) {
        let _ = self.leave();
        fn rm(d: &Path) {
            if let Ok(entries) = std::fs::read_dir(d) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        rm(&e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(d);
        }
        rm(&self.root);
        let _ = &self.mount;
    }
}

/// A server and an agent with `WorkloadAttestor "k8s"` watching `kube`, with one entry for
/// `k8s:ns:bench` + `k8s:sa:bench` (unless a controller makes the entries).
pub(crate) struct Stack {
    _agent: Proc,
    _server: Proc,
    pub(crate) api: PathBuf,
    pub(crate) admin: PathBuf,
    agent_pid: u32,
    pub(crate) dir: tempfile::TempDir,
}

/// The agent's ID (the alias of its join token): what entries are parented to.
pub(crate) fn node_id() -> String {
    format!("spiffe://{TRUST_DOMAIN}/bench-k8s-node")
}

impl Stack {
    async fn start(bin_dir: &Path, kube: &FakeKube) -> Result<Self> {
        Self::start_with(bin_dir, kube, true).await
    }

    pub(crate) async fn start_with(bin_dir: &Path, kube: &FakeKube, entry: bool) -> Result<Self> {
        let server_bin = bin_dir.join("sigil-server");
        let agent_bin = bin_dir.join("sigil-agent");
        let dir = tempfile::tempdir()?;
        let admin = dir.path().join("admin.sock");
        let api = dir.path().join("agent.sock");
        let admin_s = admin.to_string_lossy().to_string();
        let (server, port) = start_server(&server_bin, dir.path(), &admin).await?;
        let node = node_id();
        let token = run_cli(
            &server_bin,
            &[
                "token",
                "generate",
                "-socketPath",
                &admin_s,
                "-spiffeID",
                &node,
            ],
        )?
        .trim()
        .trim_start_matches("Token: ")
        .to_string();
        if entry {
            run_cli(
                &server_bin,
                &[
                    "entry",
                    "create",
                    "-socketPath",
                    &admin_s,
                    "-parentID",
                    &node,
                    "-spiffeID",
                    &format!("spiffe://{TRUST_DOMAIN}/ns/bench/sa/bench"),
                    "-selector",
                    "k8s:ns:bench",
                    "-selector",
                    "k8s:sa:bench",
                ],
            )?;
        }
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(
            &bundle,
            run_cli(&server_bin, &["bundle", "show", "-socketPath", &admin_s])?,
        )?;
        let kubeconfig = dir.path().join("kubeconfig");
        kube.write_kubeconfig(&kubeconfig)?;
        let config = dir.path().join("agent.conf");
        std::fs::write(
            &config,
            format!(
                "plugins {{\n WorkloadAttestor \"k8s\" {{\n plugin_data {{\n node_name = \"{NODE}\"\n kube_config_file = \"{}\"\n }}\n }}\n}}\n",
                kubeconfig.display()
            ),
        )?;
        let child = Command::new(&agent_bin)
            .args([
                "run",
                "-trustDomain",
                TRUST_DOMAIN,
                "-serverAddress",
                "127.0.0.1",
            ])
            .args([
                "-serverPort",
                &port.to_string(),
                "-joinToken",
                &token,
                "-logLevel",
                "warn",
            ])
            .arg("-config")
            .arg(&config)
            .arg("-dataDir")
            .arg(dir.path().join("agent"))
            .arg("-socketPath")
            .arg(&api)
            .arg("-trustBundle")
            .arg(&bundle)
            .stdout(Stdio::null())
            .spawn()?;
        let agent_pid = child.id();
        let agent = Proc(child);
        wait_for("agent socket", || api.exists()).await?;
        Ok(Self {
            _agent: agent,
            _server: server,
            api,
            admin,
            agent_pid,
            dir,
        })
    }
}

/// p50, p99 (ms) from a pod's creation on the API server to its (already waiting) process
/// receiving its SVID.
async fn pod_to_svid(
    bin_dir: &Path,
    cgroups: &CgroupRoot,
    pods: usize,
) -> Result<(f64, f64, usize)> {
    let kube = FakeKube::start().await?;
    kube.apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "bench", "namespace": "bench"}}));
    let stack = Stack::start(bin_dir, &kube).await?;
    // Warm-up pod: the entry's SVID gets signed and cached, so the rest measures the watch.
    let mut lat = Vec::new();
    let mut retries = 0;
    for i in 0..=pods {
        // The process stays in the pod's cgroup until it is served: depending on the tier, the
        // agent reads the cgroup at connect, at the first write or at attestation.
        cgroups.enter(&cgroups.pod_dir(i)?)?;
        let served = async {
            let api = stack.api.clone();
            let call = tokio::spawn(async move {
                // A call the agent could not attest (Unavailable) is retried on a new
                // connection, as SPIFFE clients do; retries are counted and reported.
                let mut retries = 0;
                loop {
                    let mut c = client(&api).await?;
                    match fetch_once(&mut c).await {
                        Ok(()) => return anyhow::Ok((Instant::now(), retries)),
                        Err(e) if retries < 3 && format!("{e}").contains("unavailable") => {
                            eprintln!("  retrying after: {e}");
                            retries += 1;
                        }
                        Err(e) => return Err(e),
                    }
                }
            });
            // The call is parked in the agent, waiting for its pod.
            tokio::time::sleep(Duration::from_millis(if i == 0 { 300 } else { 50 })).await;
            let created = Instant::now();
            kube.apply(pod(i, NODE));
            let served = tokio::time::timeout(Duration::from_secs(30), call)
                .await
                .context("a pod's process was never served")???;
            anyhow::Ok((served.0.duration_since(created), served.1))
        }
        .await;
        cgroups.leave()?;
        let (served, retried) = served?;
        retries += retried;
        if i > 0 {
            lat.push(served.as_secs_f64() * 1e3);
        }
    }
    drop(stack);
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    if retries > 0 {
        eprintln!("  {retries} calls retried (Unavailable)");
    }
    Ok((pct(0.5), pct(0.99), lat.len()))
}

/// Median µs per connection: attestation with `unix` only, and with `unix` + `k8s` (a store of
/// 500 pods, the caller's among them). The caller is this process, in pod 0's cgroup.
async fn attestation_cost(cgroups: &CgroupRoot, n: usize) -> Result<(f64, f64)> {
    let store = Arc::new(PodStore::new());
    store.apply_pods(StoreEvent::InitStart);
    for i in 0..500 {
        let p: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod(i, NODE))?;
        store.apply_pods(StoreEvent::InitApply(
            PodInfo::from_pod(&p).context("a pod with a uid")?,
        ));
    }
    store.apply_pods(StoreEvent::InitDone);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("k8s.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    let attestation = Arc::new(Attestation::start(TierRequest::Auto, &path)?);
    let unix: Arc<dyn WorkloadAttestor> =
        Arc::new(UnixAttestor::new(UnixAttestorConfig::default()));
    let k8s: Arc<dyn WorkloadAttestor> = Arc::new(K8sAttestor::with_store(
        store,
        K8sAttestorConfig {
            node_name: NODE.into(),
            kube_config_file: None,
            disable_container_selectors: false,
            enable_namespace_labels: false,
            pod_wait: Duration::from_secs(1),
            not_needed: Vec::new(),
        },
    ));
    let unix_only = Attestors::with_attestation(vec![unix.clone()], attestation.clone());
    let both = Attestors::with_attestation(vec![unix, k8s], attestation);
    cgroups.enter(&cgroups.pod_dir(0)?)?;
    let result = async {
        let round = |attestors: &Attestors| {
            let attestors = attestors.clone();
            let listener = &listener;
            let path = &path;
            async move {
                let start = Instant::now();
                // One byte each way, as in the tier rows: the tp_btf tier records the caller
                // at its first write.
                let mut client = std::os::unix::net::UnixStream::connect(path)?;
                client.write_all(b"x")?;
                let (mut server, _) = listener.accept()?;
                let peer = PeerInfo::from_fd(server.as_raw_fd())?;
                let mut b = [0u8; 1];
                server.read_exact(&mut b)?;
                let selectors = attestors
                    .attest(&peer)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                server.write_all(b"y")?;
                client.read_exact(&mut b)?;
                anyhow::Ok((start.elapsed().as_secs_f64() * 1e6, selectors.len()))
            }
        };
        // Warm up, and check the k8s attestor really joins the caller to its pod.
        for _ in 0..50 {
            round(&unix_only).await?;
        }
        let (_, with_k8s) = round(&both).await?;
        let (_, without) = round(&unix_only).await?;
        if with_k8s <= without {
            bail!("the k8s attestor found no pod for the bench process ({with_k8s} selectors)");
        }
        let (mut a, mut b) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..n {
            a.push(round(&unix_only).await?.0);
            b.push(round(&both).await?.0);
        }
        a.sort_by(f64::total_cmp);
        b.sort_by(f64::total_cmp);
        anyhow::Ok((a[a.len() / 2], b[b.len() / 2]))
    }
    .await;
    cgroups.leave()?;
    result
}

/// VmRSS (KiB) of an agent watching a node with no pods, and of one with `pods` pods (after
/// both have listed their node's pods and settled).
async fn agent_rss(bin_dir: &Path, pods: usize) -> Result<(u64, u64)> {
    let mut out = Vec::new();
    for n in [0, pods] {
        let kube = FakeKube::start().await?;
        for i in 0..n {
            kube.apply(pod(i, NODE));
        }
        let stack = Stack::start(bin_dir, &kube).await?;
        // Listed (one list request answered) and settled.
        wait_for("the agent's pod list", || {
            kube.requests()
                .iter()
                .any(|r| r.path.ends_with("/pods") && r.is_watch())
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        out.push(rss_kib(stack.agent_pid)?);
    }
    Ok((out[0], out[1]))
}

pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}
