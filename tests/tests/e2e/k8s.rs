//! Kubernetes workload attestation (issue 11) with real processes: a fake API server on
//! loopback (`sigil-fake-kube`: real list/watch wire protocol), pods standing in as kubelet-named
//! cgroup v2 directories, processes inside them calling the agent's socket, and a real agent
//! attested with `k8s_psat` (its DaemonSet pod's projected token) running
//! `WorkloadAttestor "k8s"`.
//!
//! The seeds' flow: pods `sleep` and `httpbin` in namespace `default` with their service
//! accounts, entries `k8s:ns:default` + `k8s:sa:<sa>` parented to the agent's k8s_psat ID,
//! each pod's process gets
//! `spiffe://<td>/ns/default/sa/<sa>` over the Workload API, and a real Envoy in the pod over
//! SDS. Then what must not happen: a process asking before its pod exists (served once it
//! appears), an unknown pod, a pod on another node, a container id claimed by two pods, a
//! deleted pod (its open stream ends), and the API server going down and coming back.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sigil_e2e::cgroups::{Cgroups, fetch_in_cgroup, in_cgroup, wait_for_ids_in};
use sigil_e2e::envoy::{Envoy, bootstrap, free_port, mtls_server_listener};
use sigil_e2e::harness::{Agent, Server, TestDir, wait_until};
use sigil_fake_kube::FakeKube;

use crate::TD;

const NODE: &str = "node-1";
const POD_WAIT: &str = "3s";

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "pods stand in as cgroups: this test must run as root (CI does)"
    );
}

/// A 64-hex container id from a short tag.
fn cid(tag: &str) -> String {
    format!("{tag:0>64}")
}

fn pod(name: &str, uid: &str, sa: &str, node: &str, container_id: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": uid, "labels": {"app": name}},
        "spec": {
            "nodeName": node,
            "serviceAccountName": sa,
            "containers": [{"name": name, "image": format!("docker.io/library/{name}:1")}],
        },
        "status": {
            "phase": "Running",
            "containerStatuses": [{
                "name": name,
                "image": format!("docker.io/library/{name}:1"),
                "imageID": format!("docker.io/library/{name}@sha256:{}", "ab".repeat(32)),
                "containerID": format!("containerd://{container_id}"),
                "ready": true,
                "restartCount": 0,
                "started": true,
                "state": {"running": {"startedAt": "2026-12-06T00:00:00Z"}},
            }],
        },
    })
}

struct Cluster {
    // Field order is drop order: processes die before the API server and the directory.
    agent: Agent,
    server: Server,
    kube: FakeKube,
    rt: tokio::runtime::Runtime,
    node_id: String,
    peer: PathBuf,
    cgroups: Cgroups,
    dir: TestDir,
}

impl Cluster {
    /// `tls`: the API server on HTTPS with its own CA (as in a cluster), else plain HTTP.
    fn start(name: &str, tls: bool) -> Self {
        require_root();
        let dir = TestDir::new(name);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime for the fake API server");
        let kube = rt
            .block_on(async {
                if tls {
                    FakeKube::start_tls().await
                } else {
                    FakeKube::start().await
                }
            })
            .expect("fake API server");
        for sa in ["sleep", "httpbin", "late"] {
            kube.apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": sa, "namespace": "default"}}));
        }
        // The agent's own pod (a DaemonSet's), whose projected token attests the node.
        kube.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "spire"}}));
        kube.apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "spire-agent", "namespace": "spire"}}));
        let node =
            kube.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}));
        let node_uid = node["metadata"]["uid"]
            .as_str()
            .expect("node uid")
            .to_string();
        kube.apply(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "spire-agent-1", "namespace": "spire"},
            "spec": {"nodeName": NODE, "serviceAccountName": "spire-agent"},
            "status": {"hostIP": "10.0.0.1"}}));
        let kubeconfig = dir.path().join("kubeconfig");
        kube.write_kubeconfig(&kubeconfig).expect("kubeconfig");
        let token_path = dir.path().join("agent-token");
        let token = kube
            .issue_token(
                "spire",
                "spire-agent",
                &["spire-server"],
                Some("spire-agent-1"),
                Duration::from_secs(3600),
            )
            .expect("a projected token for the agent");
        std::fs::write(&token_path, token).expect("token file");

        // The seeds' setup: k8s_psat node attestation, the k8s workload attestor.
        let server = Server::start_with_config_file(
            dir.path(),
            TD,
            &format!(
                "plugins {{\n  NodeAttestor \"k8s_psat\" {{\n    plugin_data {{\n      clusters = {{\n        \"demo\" = {{\n          service_account_allow_list = [\"spire:spire-agent\"]\n          kube_config_file = \"{}\"\n        }}\n      }}\n    }}\n  }}\n}}\n",
                kubeconfig.display()
            ),
        );
        let agent = Agent::start_with_config(
            dir.path(),
            &format!("agent-{name}"),
            &server,
            &format!(
                "plugins {{\n  NodeAttestor \"k8s_psat\" {{\n    plugin_data {{\n      cluster = \"demo\"\n      token_path = \"{}\"\n    }}\n  }}\n  WorkloadAttestor \"k8s\" {{\n    plugin_data {{\n      node_name = \"{NODE}\"\n      kube_config_file = \"{}\"\n      pod_wait_timeout = \"{POD_WAIT}\"\n      skip_kubelet_verification = true\n    }}\n  }}\n}}\n",
                token_path.display(),
                kubeconfig.display()
            ),
        );
        // Entries are parented to the agent's k8s_psat ID, as the seeds register them.
        let node_id = format!("spiffe://{TD}/spire/agent/k8s_psat/demo/{node_uid}");
        let peer = dir.install_bin(Path::new(env!("CARGO_BIN_EXE_sigil-demo-peer")));
        for sa in ["sleep", "httpbin", "late"] {
            server.create_entry(
                &node_id,
                &sa_id(&server, sa),
                &["k8s:ns:default", &format!("k8s:sa:{sa}")],
                &[],
            );
        }
        Self {
            agent,
            server,
            kube,
            rt,
            node_id,
            peer,
            cgroups: Cgroups::new(name),
            dir,
        }
    }

    fn fetch(&self, cgroup: &Path) -> Result<Vec<String>, sigil_e2e::harness::CliOutput> {
        fetch_in_cgroup(&self.peer, &self.agent.socket, cgroup)
    }

    fn wait_for(&self, cgroup: &Path, want: &str) {
        wait_for_ids_in(&self.peer, &self.agent.socket, cgroup, &[want.to_string()]);
    }
}

/// The lines a child prints, read on a thread (a missing line must fail the test, not hang it).
fn lines(out: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn next_line(rx: &std::sync::mpsc::Receiver<String>, what: &str) -> String {
    rx.recv_timeout(Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("no line for {what}: {e}"))
}

fn sa_id(server: &Server, sa: &str) -> String {
    server.id(&format!("/ns/default/sa/{sa}"))
}

/// `fetch` fails with PermissionDenied: the caller has no identity.
fn assert_denied(out: Result<Vec<String>, sigil_e2e::harness::CliOutput>, what: &str) -> String {
    match out {
        Ok(ids) => panic!("{what}: got {ids:?}"),
        Err(out) => {
            assert!(out.stderr.contains("PermissionDenied"), "{what}: {out}");
            out.stderr
        }
    }
}

#[test]
fn pods_get_their_service_account_identities_from_the_api_server() {
    let c = Cluster::start("k8s-flow", true);
    let sleep_uid = "5b0c2f3e-1d4a-4e6b-9c8d-7a6f5e4d3c2b";
    let httpbin_uid = "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b";
    let sleep_cg = c.cgroups.systemd_containerd(sleep_uid, &cid("a1"));
    let httpbin_cg = c.cgroups.cgroupfs_crio(httpbin_uid, &cid("b2"));
    c.kube
        .apply(pod("sleep", sleep_uid, "sleep", NODE, &cid("a1")));
    c.kube
        .apply(pod("httpbin", httpbin_uid, "httpbin", NODE, &cid("b2")));

    // Workload API: each pod's process gets its service account's identity.
    c.wait_for(&sleep_cg, &sa_id(&c.server, "sleep"));
    c.wait_for(&httpbin_cg, &sa_id(&c.server, "httpbin"));

    // SDS: a real Envoy inside httpbin's pod gets httpbin's certificate.
    let port = free_port();
    let envoy = Envoy::start_in_cgroup(
        c.dir.path(),
        "envoy-httpbin",
        0,
        &bootstrap(
            "sidecar~10.0.0.2~httpbin.default~default.svc.cluster.local",
            &c.agent.socket,
            vec![mtls_server_listener(
                port,
                &[&sa_id(&c.server, "sleep")],
                vec![],
            )],
            vec![],
        ),
        &httpbin_cg,
    )
    .expect("Envoy in httpbin's pod goes LIVE with its SDS secrets");
    let certs = envoy.admin("/certs").expect("envoy /certs");
    assert!(
        certs.body.contains(&sa_id(&c.server, "httpbin")),
        "Envoy's certificate is not httpbin's: {}",
        certs.body
    );
    drop(envoy);

    // A process asking before its pod exists is served once the pod appears.
    let late_uid = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9";
    let late_cg = c.cgroups.systemd_containerd(late_uid, &cid("c3"));
    let started = Instant::now();
    let early = {
        let (peer, socket, cg) = (c.peer.clone(), c.agent.socket.clone(), late_cg.clone());
        std::thread::spawn(move || fetch_in_cgroup(&peer, &socket, &cg))
    };
    std::thread::sleep(Duration::from_millis(700));
    c.kube
        .apply(pod("late", late_uid, "late", NODE, &cid("c3")));
    let got = early.join().expect("fetch thread");
    assert_eq!(
        got.expect("served once the pod appeared"),
        vec![sa_id(&c.server, "late")]
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "it waited for the watch, not a poll"
    );

    // An unknown pod: no k8s selectors (after the wait), so no identity.
    let ghost = c
        .cgroups
        .cgroupfs_crio("11111111-2222-4333-8444-555555555555", &cid("d4"));
    assert_denied(c.fetch(&ghost), "a process in an unknown pod");

    // A pod of another node is not this agent's: never its selectors.
    let other_uid = "66666666-7777-4888-9999-aaaaaaaaaaaa";
    c.kube
        .apply(pod("elsewhere", other_uid, "sleep", "node-2", &cid("e5")));
    let other = c.cgroups.systemd_containerd(other_uid, &cid("e5"));
    assert_denied(c.fetch(&other), "a process in another node's pod");

    // Two pods listing one container id: refused, with the reason.
    let dup_uid = "bbbbbbbb-cccc-4ddd-8eee-ffffffffffff";
    c.kube
        .apply(pod("impostor", dup_uid, "httpbin", NODE, &cid("a1")));
    let err = wait_until(
        "the duplicate to be refused",
        Duration::from_secs(10),
        || match c.fetch(&sleep_cg) {
            Err(out) if out.stderr.contains("two pods found with same container Id") => Some(out),
            _ => None,
        },
    );
    assert!(err.stderr.contains("PermissionDenied"), "{err}");
    c.kube.delete("Pod", Some("default"), "impostor");
    c.wait_for(&sleep_cg, &sa_id(&c.server, "sleep"));

    // Container selectors follow the status, on an open stream too: a pod whose container is
    // not listed yet (Istio's holdApplicationUntilProxyStarts: the status lags) first gets
    // what its pod selectors give, then, with no reconnect, what its container's give.
    let starting_uid = "cdcdcdcd-1212-4343-8565-787878787878";
    let starting_cg = c.cgroups.systemd_containerd(starting_uid, &cid("f6"));
    let app_id = c.server.id("/ns/default/sa/sleep/container/app");
    c.server.create_entry(
        &c.node_id,
        &app_id,
        &["k8s:sa:sleep", "k8s:container-name:starting"],
        &[],
    );
    let mut waiting = pod("starting", starting_uid, "sleep", NODE, &cid("f6"));
    let status = &mut waiting["status"]["containerStatuses"][0];
    status
        .as_object_mut()
        .expect("a status")
        .remove("containerID");
    status["state"] = json!({"waiting": {"reason": "ContainerCreating"}});
    status["started"] = json!(false);
    c.kube.apply(waiting);
    let mut cmd = Command::new(&c.peer);
    cmd.arg("watch")
        .arg("-socketPath")
        .arg(&c.agent.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    in_cgroup(&mut cmd, &starting_cg);
    let mut stream = cmd.spawn().expect("sigil-demo-peer watch");
    let updates = lines(stream.stdout.take().expect("stdout"));
    let first = next_line(&updates, "a first update");
    assert_eq!(first, format!("update: {}", sa_id(&c.server, "sleep")));
    c.kube
        .apply(pod("starting", starting_uid, "sleep", NODE, &cid("f6")));
    let next = next_line(&updates, "an update with the container's identity");
    let mut got: Vec<&str> = next.trim_start_matches("update: ").split(',').collect();
    got.sort();
    let sleep_id = sa_id(&c.server, "sleep");
    let mut want = vec![app_id.as_str(), sleep_id.as_str()];
    want.sort();
    assert_eq!(
        got, want,
        "the open stream did not pick up the container's identity"
    );
    let _ = stream.kill();
    let _ = stream.wait();

    // A deleted pod stops getting SVIDs: its open stream ends.
    let mut cmd = Command::new(&c.peer);
    cmd.arg("watch")
        .arg("-socketPath")
        .arg(&c.agent.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    in_cgroup(&mut cmd, &httpbin_cg);
    let mut watch = cmd.spawn().expect("sigil-demo-peer watch");
    let updates = lines(watch.stdout.take().expect("stdout"));
    let first = next_line(&updates, "a first update");
    assert_eq!(first, format!("update: {}", sa_id(&c.server, "httpbin")));
    c.kube.delete("Pod", Some("default"), "httpbin");
    let status = wait_until("the stream to end", Duration::from_secs(10), || {
        watch.try_wait().ok().flatten()
    });
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut watch.stderr.take().expect("stderr"), &mut stderr).ok();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("PermissionDenied") && stderr.contains("pod was deleted"),
        "{stderr}"
    );
    assert_denied(c.fetch(&httpbin_cg), "a process of a deleted pod");
}

#[test]
fn api_server_outage_keeps_known_pods_and_catches_up() {
    let c = Cluster::start("k8s-outage", false);
    let a_uid = "12121212-3434-4565-8787-909090909090";
    let a_cg = c.cgroups.systemd_containerd(a_uid, &cid("f1"));
    c.kube.apply(pod("sleep", a_uid, "sleep", NODE, &cid("f1")));
    c.wait_for(&a_cg, &sa_id(&c.server, "sleep"));
    // An agent's start-up list is served from the API server's cache (resourceVersion=0), not
    // a quorum read: a DaemonSet restarting at once must not stampede etcd.
    assert!(
        c.kube.requests().iter().any(|r| !r.is_watch()
            && r.path.ends_with("/pods")
            && r.param("resourceVersion").as_deref() == Some("0")),
        "no resourceVersion=0 list: {:?}",
        c.kube.requests()
    );

    // Down: pods already known keep being attested.
    c.rt.block_on(c.kube.stop());
    for _ in 0..3 {
        assert_eq!(
            c.fetch(&a_cg).expect("served while the API server is down"),
            vec![sa_id(&c.server, "sleep")]
        );
    }
    // A pod created meanwhile, and the history compacted: the agent must relist (410 Gone).
    let b_uid = "34343434-5656-4787-8909-121212121212";
    let b_cg = c.cgroups.cgroupfs_crio(b_uid, &cid("f2"));
    c.kube
        .apply(pod("httpbin", b_uid, "httpbin", NODE, &cid("f2")));
    c.kube.compact();
    std::thread::sleep(Duration::from_secs(2));
    c.kube.clear_requests();
    c.rt.block_on(c.kube.restart()).expect("restart");

    // Back: the new pod is served; the old one never stopped being.
    c.wait_for(&b_cg, &sa_id(&c.server, "httpbin"));
    assert_eq!(
        c.fetch(&a_cg).expect("still served after the relist"),
        vec![sa_id(&c.server, "sleep")]
    );
    // Reconnecting took a handful of requests, not a stampede.
    let pod_requests = c
        .kube
        .requests()
        .iter()
        .filter(|r| r.path.contains("/pods"))
        .count();
    assert!(
        (1..=10).contains(&pod_requests),
        "{pod_requests} pod requests after the restart"
    );
    // The watch is a watch: it asks for this node's pods only.
    assert!(
        c.kube.requests().iter().any(|r| r.is_watch()
            && r.param("fieldSelector").as_deref() == Some(&format!("spec.nodeName={NODE}"))),
        "no watch with the node's field selector: {:?}",
        c.kube.requests()
    );
}

/// Issue 12 end to end: no entry is made by hand. A pod created on the API server is
/// registered by `sigil-controller` from seed 001's `default` ClusterSPIFFEID (entry parented
/// to the agent's k8s_psat ID by the default `parentIDTemplate`), and its process gets
/// `spiffe://<td>/ns/<ns>/sa/<sa>` from the agent: over the Workload API and in a real Envoy
/// over SDS.
#[test]
fn a_pod_registered_by_the_controller_gets_its_identity() {
    let c = Cluster::start("k8s-controller", false);
    sigil_e2e::controller::apply_crds(&c.kube);
    let mut ctl = sigil_e2e::controller::start_controller(
        c.dir.path(),
        "controller",
        &c.dir.path().join("kubeconfig"),
        &c.server.socket,
        TD,
        "demo",
        "",
    );
    let seed = sigil_e2e::harness::workspace_root()
        .join("sigil-controller/testdata/seeds/001-default.yaml");
    let text = std::fs::read_to_string(seed).expect("seed 001");
    let csid: Value = serde_saphyr::from_str(&text).expect("seed YAML");
    c.kube.apply(csid);
    c.kube
        .apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "web", "namespace": "default"}}));

    let uid = "7a7a7a7a-8b8b-4c9c-8d0d-1e1e1e1e1e1e";
    let cg = c.cgroups.systemd_containerd(uid, &cid("aa"));
    let mut p = pod("web", uid, "web", NODE, &cid("aa"));
    p["metadata"]["labels"]["spiffe.io/spire-managed-identity"] = json!("true");
    c.kube.apply(p);
    let want = sa_id(&c.server, "web");
    c.wait_for(&cg, &want);

    let port = free_port();
    let envoy = Envoy::start_in_cgroup(
        c.dir.path(),
        "envoy-web",
        0,
        &bootstrap(
            "sidecar~10.0.0.9~web.default~default.svc.cluster.local",
            &c.agent.socket,
            vec![mtls_server_listener(port, &[&want], vec![])],
            vec![],
        ),
        &cg,
    )
    .expect("Envoy in the pod goes LIVE with its SDS secrets");
    let certs = envoy.admin("/certs").expect("envoy /certs");
    assert!(
        certs.body.contains(&want),
        "Envoy's certificate: {}",
        certs.body
    );
    drop(envoy);

    // Deleted: the controller removes the entry, and the process has no identity any more.
    c.kube.delete("Pod", Some("default"), "web");
    wait_until("the pod's entry to go", Duration::from_secs(15), || {
        let out = c.server.cli(&["entry", "show", "-output", "json"]).ok();
        (!out.stdout.contains(uid)).then_some(())
    });
    ctl.assert_running();
}
