//! `sigil-controller` (issue 12) with real processes: a fake API server on loopback holding the
//! `spire.spiffe.io` CRDs that `sigil-controller crds` prints, a real `sigil-server`, and the
//! controller binary between them with a spire-controller-manager config file. The resources
//! are the seeds' manifests, unchanged.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use sigil_e2e::controller::{apply_crds, start_controller};
use sigil_e2e::harness::{Proc, Server, TestDir, wait_until};
use sigil_fake_kube::FakeKube;

use crate::TD;

const NODE: &str = "node-1";
const CLUSTER: &str = "demo";

/// The API server, the server and the directory; controllers are started per test.
struct World {
    server: Server,
    kube: FakeKube,
    _rt: tokio::runtime::Runtime,
    kubeconfig: PathBuf,
    node_uid: String,
    dir: TestDir,
}

fn seeds_dir() -> PathBuf {
    sigil_e2e::harness::workspace_root().join("sigil-controller/testdata/seeds")
}

/// The YAML documents of a seed file, as JSON.
fn seed(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(seeds_dir().join(name)).expect("seed file");
    serde_saphyr::from_multiple::<Value>(&text)
        .expect("seed YAML")
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

impl World {
    fn start(name: &str) -> Self {
        let dir = TestDir::new(name);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime for the fake API server");
        // HTTPS with its own CA, as a cluster's (kubectl sends no token over plain HTTP).
        let kube = rt.block_on(FakeKube::start_tls()).expect("fake API server");
        // The CRDs as the controller prints them, applied as a user would.
        apply_crds(&kube);
        let node =
            kube.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}));
        let node_uid = node["metadata"]["uid"]
            .as_str()
            .expect("node uid")
            .to_string();
        for ns in ["istio-system", "apps"] {
            kube.apply(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"name": ns}}}));
        }
        let kubeconfig = dir.path().join("kubeconfig");
        kube.write_kubeconfig(&kubeconfig).expect("kubeconfig");
        let server = Server::start(&dir.path().join("srv"), TD);
        Self {
            server,
            kube,
            _rt: rt,
            kubeconfig,
            node_uid,
            dir,
        }
    }

    /// Starts a controller with spire-controller-manager's config file; `extra` are more YAML
    /// lines at the top level.
    fn controller(&self, name: &str, extra: &str) -> Proc {
        start_controller(
            self.dir.path(),
            name,
            &self.kubeconfig,
            &self.server.socket,
            TD,
            CLUSTER,
            extra,
        )
    }

    fn pod(&self, ns: &str, name: &str, sa: &str, labels: Value) -> Value {
        self.kube.apply(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": NODE, "serviceAccountName": sa,
                     "containers": [{"name": "app", "image": "app:1"}]},
        }))
    }

    fn parent(&self) -> String {
        format!(
            "spiffe://{TD}/spire/agent/k8s_psat/{CLUSTER}/{}",
            self.node_uid
        )
    }

    /// Every entry on the server.
    fn entries(&self) -> Vec<Value> {
        self.server
            .cli(&["entry", "show", "-output", "json"])
            .ok()
            .json()["entries"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn entry_for(&self, pod_uid: &str) -> Option<Value> {
        self.entries().into_iter().find(|e| {
            e["selectors"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["type"] == "k8s" && s["value"] == format!("pod-uid:{pod_uid}"))
        })
    }

    fn wait_entry(&self, pod_uid: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        wait_until(what, Duration::from_secs(15), || {
            self.entry_for(pod_uid).filter(|e| ok(e))
        })
    }

    fn wait_no_entry(&self, pod_uid: &str, what: &str) {
        wait_until(what, Duration::from_secs(15), || {
            self.entry_for(pod_uid).is_none().then_some(())
        });
    }

    /// The note of an Event with `reason` about ClusterSPIFFEID `name`, if one was recorded.
    fn event(&self, name: &str, reason: &str) -> Option<String> {
        let out = sigil_e2e::harness::run(
            {
                // kubectl reads them back: they are real `events.k8s.io/v1` Events.
                let kubectl = std::env::var_os("SIGIL_KUBECTL")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| sigil_e2e::harness::target_dir().join("tools/kubectl"));
                let mut c = std::process::Command::new(kubectl);
                c.env("KUBECACHEDIR", self.dir.path().join("kube-cache"))
                    .arg("--kubeconfig")
                    .arg(&self.kubeconfig)
                    .args(["get", "events.events.k8s.io", "-A", "-o", "json"]);
                c
            },
            Duration::from_secs(20),
        );
        if !out.success() {
            eprintln!("kubectl get events: STDERR={}", out.stderr);
            return None;
        }
        out.json()["items"].as_array()?.iter().find_map(|e| {
            (e["regarding"]["name"] == name && e["reason"] == reason)
                .then(|| e["note"].as_str().unwrap_or_default().to_string())
        })
    }

    fn stats(&self, csid: &str) -> Value {
        self.kube
            .get("ClusterSPIFFEID", None, csid)
            .map(|o| o["status"]["stats"].clone())
            .unwrap_or(Value::Null)
    }

    fn wait_stats(&self, csid: &str, want: Value) {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let s = self.stats(csid);
            if want
                .as_object()
                .expect("an object")
                .iter()
                .all(|(k, v)| &s[k] == v)
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "status of {csid}: want {want}, have {s}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A plain HTTP GET on loopback: (status code, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The address a controller logged for `what` ("serving health probes", "serving metrics").
fn logged_address(ctl: &Proc, what: &str) -> String {
    wait_until(what, Duration::from_secs(10), || {
        ctl.log().lines().find_map(|l| {
            l.contains(what)
                .then(|| l.split("address=").nth(1))
                .flatten()
                .map(|a| a.split_whitespace().next().unwrap_or_default().to_string())
        })
    })
}

fn uid(obj: &Value) -> String {
    obj["metadata"]["uid"].as_str().expect("uid").to_string()
}

fn selectors(e: &Value) -> Vec<String> {
    let mut v: Vec<String> = e["selectors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            format!(
                "{}:{}",
                s["type"].as_str().unwrap_or_default(),
                s["value"].as_str().unwrap_or_default()
            )
        })
        .collect();
    v.sort();
    v
}

fn strings(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect();
    out.sort();
    out
}

#[test]
fn seeds_cluster_spiffeids_register_pods_as_they_come_and_go() {
    let w = World::start("ctl-seeds");
    // An entry made by hand is never the controller's to touch.
    let manual = w.server.create_entry(
        &w.parent(),
        &w.server.id("/manual"),
        &["k8s:ns:apps", "k8s:sa:manual"],
        &[],
    );
    let mut ctl = w.controller("ctl", "");
    let sleep = w.pod(
        "apps",
        "sleep",
        "sleep",
        json!({"security.istio.io/tlsMode": "istio", "app": "sleep"}),
    );
    let no_app = w.pod(
        "apps",
        "nolabel",
        "nolabel",
        json!({"security.istio.io/tlsMode": "istio"}),
    );
    let system = w.pod(
        "kube-system",
        "coredns",
        "coredns",
        json!({"security.istio.io/tlsMode": "istio", "app": "dns"}),
    );
    let gateway = w.pod(
        "istio-system",
        "istio-ingressgateway-1",
        "istio-ingressgateway-service-account",
        json!({"app": "istio-proxy", "istio": "ingressgateway"}),
    );
    for doc in seed("002-istio-workload-registration.yaml") {
        w.kube.apply(doc);
    }

    // Seed 002's sidecar template: selectors, DNS names, the integer `ttl: 3600`.
    let e = w.wait_entry(&uid(&sleep), "the sleep pod's entry", |_| true);
    assert_eq!(e["spiffe_id"], format!("spiffe://{TD}/ns/apps/sa/sleep"));
    assert_eq!(e["parent_id"], w.parent());
    assert_eq!(e["x509_svid_ttl"], 3600);
    assert_eq!(
        selectors(&e),
        [
            "k8s:ns:apps".to_string(),
            "k8s:pod-label:app:sleep".to_string(),
            format!("k8s:pod-uid:{}", uid(&sleep)),
            "k8s:sa:sleep".to_string(),
        ]
    );
    // Both DNS templates render the same name for this pod: once.
    assert_eq!(strings(&e["dns_names"]), ["sleep.apps.svc.cluster.local"]);
    // The gateway template: `{{ .PodMeta.Labels.app }}` and `matchNames`.
    let g = w.wait_entry(&uid(&gateway), "the gateway's entry", |_| true);
    assert_eq!(
        g["spiffe_id"],
        format!("spiffe://{TD}/ns/istio-system/gateway/istio-proxy")
    );
    // kube-system is ignored. A pod without the `app` label renders `<no value>` in the DNS
    // name: the server refuses the entry, so the pod has none (upstream counts it as an
    // entry failure, and so does Sigil), and the reason is an Event on the resource.
    assert!(w.entry_for(&uid(&system)).is_none());
    w.wait_stats(
        "istio-sidecars",
        json!({"namespacesSelected": 6, "namespacesIgnored": 2, "podsSelected": 2,
               "podEntryRenderFailures": 0, "entriesToSet": 2, "entriesMasked": 0, "entryFailures": 1}),
    );
    assert!(w.entry_for(&uid(&no_app)).is_none());
    w.wait_stats(
        "istio-gateways",
        json!({"namespacesSelected": 1, "podsSelected": 1, "entriesToSet": 1}),
    );
    if w.event("istio-sidecars", "EntryFailed").is_none() {
        std::thread::sleep(Duration::from_secs(3));
        assert!(
            w.event("istio-sidecars", "EntryFailed").is_some(),
            "no EntryFailed event; controller log:\n{}",
            ctl.log()
        );
    }
    // In a SPIFFE ID, `<no value>` is a render failure: counted, reported, never an entry.
    w.kube.apply(
        json!({"apiVersion": "spire.spiffe.io/v1alpha1", "kind": "ClusterSPIFFEID",
        "metadata": {"name": "by-app"},
        "spec": {"spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/app/{{ .PodMeta.Labels.app }}",
                 "podSelector": {"matchLabels": {"render-test": "yes"}}}}),
    );
    let unlabelled = w.pod("apps", "unlabelled", "x", json!({"render-test": "yes"}));
    w.wait_stats(
        "by-app",
        json!({"podsSelected": 1, "podEntryRenderFailures": 1, "entriesToSet": 0}),
    );
    let note = wait_until("a RenderFailed event", Duration::from_secs(15), || {
        w.event("by-app", "RenderFailed")
    });
    assert!(note.contains("unlabelled"), "{note}");
    assert!(w.entry_for(&uid(&unlabelled)).is_none());

    // controller-runtime's probes and the metrics an operator alerts on.
    let health = logged_address(&ctl, "serving health probes");
    assert_eq!(http_get(&health, "/readyz"), (200, "ok".to_string()));
    assert_eq!(http_get(&health, "/healthz").0, 200);
    let metrics = logged_address(&ctl, "serving metrics");
    let (code, text) = http_get(&metrics, "/metrics");
    assert_eq!(code, 200);
    let sample = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    assert!(
        sample("sigil_controller_entries_created_total") >= 2.0,
        "{text}"
    );
    assert!(
        sample("sigil_controller_reconcile_passes_total") >= 1.0,
        "{text}"
    );
    assert!(
        sample("sigil_controller_entry_failures_total") >= 1.0,
        "{text}"
    );
    assert_eq!(sample("sigil_controller_leader"), 1.0);

    // Relabelled: the entry follows (same pod, new selector and DNS name).
    let mut relabelled = w.kube.get("Pod", Some("apps"), "sleep").expect("pod");
    relabelled["metadata"]["labels"]["app"] = json!("sleepy");
    w.kube.apply(relabelled);
    let e2 = w.wait_entry(&uid(&sleep), "the relabelled entry", |e| {
        selectors(e).contains(&"k8s:pod-label:app:sleepy".to_string())
    });
    assert!(strings(&e2["dns_names"]).contains(&"sleepy.apps.svc.cluster.local".to_string()));

    // A pod that stops matching loses its entry; a deleted pod too.
    w.kube.delete("Pod", Some("apps"), "sleep");
    w.wait_no_entry(&uid(&sleep), "the deleted pod's entry to go");
    w.kube.delete("ClusterSPIFFEID", None, "istio-gateways");
    w.wait_no_entry(
        &uid(&gateway),
        "the gateway entry to go with its ClusterSPIFFEID",
    );

    // The hand-made entry is still there, untouched.
    let still = w.entries().into_iter().find(|e| e["id"] == manual.as_str());
    assert!(
        still.is_some(),
        "the manual entry was deleted: {}",
        ctl.log()
    );
    ctl.assert_running();
}

#[test]
fn fallback_masking_class_parent_template_prefix_and_static_entries() {
    let w = World::start("ctl-rules");
    let mut ctl = w.controller(
        "ctl",
        "className: mesh\nwatchClassless: false\nentryIDPrefix: ctl\nparentIDTemplate: \"spiffe://{{ .TrustDomain }}/node/{{ .NodeMeta.Name }}\"",
    );
    let a = w.pod("apps", "a", "sa-a", json!({"tier": "web"}));
    let b = w.pod("apps", "b", "sa-b", json!({}));
    let csid = |name: &str, spec: Value| {
        w.kube.apply(
            json!({"apiVersion": "spire.spiffe.io/v1alpha1", "kind": "ClusterSPIFFEID",
            "metadata": {"name": name}, "spec": spec}),
        );
    };
    // Oldest wins: `web-old` is created first; `web-new` declares the same entry and is masked.
    csid(
        "web-old",
        json!({"className": "mesh",
        "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/web", "podSelector": {"matchLabels": {"tier": "web"}}}),
    );
    std::thread::sleep(Duration::from_millis(1100)); // creationTimestamp has 1 s resolution
    csid(
        "web-new",
        json!({"className": "mesh",
        "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/web", "podSelector": {"matchLabels": {"tier": "web"}}}),
    );
    // Fallback: only pods nothing else matched.
    csid(
        "fallback",
        json!({"className": "mesh", "fallback": true,
        "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/fallback/{{ .PodSpec.ServiceAccountName }}"}),
    );
    // Another class, and a classless one: neither is this controller's.
    csid(
        "other-class",
        json!({"className": "other", "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/other"}),
    );
    csid(
        "classless",
        json!({"spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/classless"}),
    );
    // A static entry of this class.
    w.kube.apply(json!({"apiVersion": "spire.spiffe.io/v1alpha1", "kind": "ClusterStaticEntry",
        "metadata": {"name": "db"}, "spec": {"className": "mesh",
            "spiffeID": format!("spiffe://{TD}/db"), "parentID": format!("spiffe://{TD}/node/{NODE}"),
            "selectors": ["unix:uid:999"], "x509SVIDTTL": "2h"}}));

    let ea = w.wait_entry(&uid(&a), "pod a's entry", |_| true);
    assert_eq!(ea["spiffe_id"], format!("spiffe://{TD}/web"));
    assert_eq!(ea["parent_id"], format!("spiffe://{TD}/node/{NODE}"));
    assert!(ea["id"].as_str().unwrap().starts_with("ctl."), "{ea}");
    let eb = w.wait_entry(&uid(&b), "pod b's fallback entry", |_| true);
    assert_eq!(eb["spiffe_id"], format!("spiffe://{TD}/fallback/sa-b"));
    w.wait_stats("web-old", json!({"entriesToSet": 1, "entriesMasked": 0}));
    w.wait_stats("web-new", json!({"entriesToSet": 0, "entriesMasked": 1}));
    w.wait_stats("fallback", json!({"podsSelected": 2, "entriesToSet": 1}));
    let db = wait_until("the static entry", Duration::from_secs(15), || {
        w.entries()
            .into_iter()
            .find(|e| e["spiffe_id"] == format!("spiffe://{TD}/db"))
    });
    assert_eq!(db["x509_svid_ttl"], 7200);
    wait_until("the static entry's status", Duration::from_secs(15), || {
        let s = &w.kube.get("ClusterStaticEntry", None, "db")?["status"];
        (s["rendered"] == true && s["set"] == true && s["masked"] == false).then_some(())
    });
    assert!(
        w.entries()
            .iter()
            .all(|e| e["spiffe_id"] != format!("spiffe://{TD}/other")
                && e["spiffe_id"] != format!("spiffe://{TD}/classless")),
        "another class's ClusterSPIFFEIDs were rendered"
    );
    assert!(
        w.stats("other-class").is_null(),
        "another class's status was written"
    );

    // An entry without the prefix is not the controller's, even if nothing declares it.
    let foreign = w.server.create_entry(
        &format!("spiffe://{TD}/node/{NODE}"),
        &w.server.id("/foreign"),
        &["unix:uid:5"],
        &[],
    );
    // Deleting the older resource hands the entry to the newer one: same entry, kept.
    w.kube.delete("ClusterSPIFFEID", None, "web-old");
    w.wait_stats("web-new", json!({"entriesToSet": 1, "entriesMasked": 0}));
    let ea2 = w.wait_entry(&uid(&a), "pod a's entry after web-old went", |_| true);
    assert_eq!(ea2["spiffe_id"], format!("spiffe://{TD}/web"));
    assert!(w.entries().iter().any(|e| e["id"] == foreign.as_str()));
    ctl.assert_running();
}

#[test]
fn every_event_counts_and_services_name_their_pods() {
    let w = World::start("ctl-events");
    // gcInterval is 30 s: whatever arrives within seconds came from events, not the resync.
    let mut ctl = w.controller("ctl", "");
    w.kube.apply(json!({"apiVersion": "spire.spiffe.io/v1alpha1", "kind": "ClusterSPIFFEID",
        "metadata": {"name": "svc"},
        "spec": {"spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/pod/{{ .PodMeta.Name }}",
                 "autoPopulateDNSNames": true,
                 "namespaceSelector": {"matchNames": ["apps"]}}}));
    // A burst: 60 pods as fast as the API takes them, while passes run.
    let pods: Vec<Value> = (0..60)
        .map(|i| {
            w.pod(
                "apps",
                &format!("burst-{i}"),
                "burst",
                json!({"app": "burst"}),
            )
        })
        .collect();
    let started = std::time::Instant::now();
    wait_until(
        "every pod of the burst registered",
        Duration::from_secs(15),
        || {
            let entries = w.entries();
            pods.iter()
                .all(|p| {
                    let want = format!("pod-uid:{}", uid(p));
                    entries.iter().any(|e| {
                        e["selectors"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|s| s["value"] == want)
                    })
                })
                .then_some(())
        },
    );
    assert!(started.elapsed() < Duration::from_secs(15));

    // An EndpointSlice of service `web` targeting two of them: their entries get its names.
    let slice_pods = [&pods[0], &pods[1]];
    w.kube.apply(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abc12", "namespace": "apps",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": slice_pods.iter().enumerate().map(|(i, p)| json!({
            "addresses": [format!("10.1.0.{i}")],
            "conditions": {"ready": i == 0},
            "targetRef": {"kind": "Pod", "namespace": "apps", "name": p["metadata"]["name"], "uid": uid(p)},
        })).collect::<Vec<_>>(),
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }));
    let want = [
        "web",
        "web.apps",
        "web.apps.svc",
        "web.apps.svc.cluster.local",
    ];
    for p in slice_pods {
        // Ready or not, as upstream counts an Endpoints' not-ready addresses too.
        let e = w.wait_entry(&uid(p), "service DNS names", |e| {
            strings(&e["dns_names"]).len() == want.len()
        });
        assert_eq!(strings(&e["dns_names"]), want);
    }
    let other = w.entry_for(&uid(&pods[2])).expect("pod 2's entry");
    assert!(strings(&other["dns_names"]).is_empty(), "{other}");

    w.kube.delete("EndpointSlice", Some("apps"), "web-abc12");
    w.wait_entry(&uid(&pods[0]), "the service names to go", |e| {
        strings(&e["dns_names"]).is_empty()
    });
    ctl.assert_running();
}

#[test]
fn only_the_leader_writes_and_a_standby_takes_over() {
    let w = World::start("ctl-leader");
    let le = "leaderElection:\n  leaderElect: true\n  resourceName: sigil-controller-test\n  resourceNamespace: default\n  leaseDuration: 2s\n  renewDeadline: 1500ms\n  retryPeriod: 200ms";
    let mut first = w.controller("ctl-1", le);
    let p1 = w.pod("apps", "one", "one", json!({}));
    w.kube.apply(json!({"apiVersion": "spire.spiffe.io/v1alpha1", "kind": "ClusterSPIFFEID",
        "metadata": {"name": "all"}, "spec": {"spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/sa/{{ .PodSpec.ServiceAccountName }}"}}));
    w.wait_entry(&uid(&p1), "the first leader's entry", |_| true);
    let mut second = w.controller("ctl-2", le);
    let lease = wait_until("the lease", Duration::from_secs(10), || {
        w.kube
            .get("Lease", Some("default"), "sigil-controller-test")
    });
    let holder = lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!holder.is_empty(), "{lease}");
    // The leader dies without releasing the lease; the standby takes over once it expires.
    first.kill();
    let p2 = w.pod("apps", "two", "two", json!({}));
    w.wait_entry(&uid(&p2), "the new leader's entry", |_| true);
    let lease = w
        .kube
        .get("Lease", Some("default"), "sigil-controller-test")
        .expect("lease");
    assert_ne!(
        lease["spec"]["holderIdentity"].as_str().unwrap_or_default(),
        holder
    );
    second.assert_running();
}
