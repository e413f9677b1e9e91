//! A real kubectl (1.37, installed by `cargo xtask setup` into `target/tools/`) against the
//! fake API server: discovery, lists with selectors and chunks, create and delete, a watch,
//! and `create token` whose token then passes a TokenReview.
//!
//! The server runs with TLS: kubectl does not send a bearer token over plain HTTP.

use serde_json::{Value, json};
use sigil_fake_kube::FakeKube;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The kubectl binary: `SIGIL_KUBECTL` (which `cargo xtask test` sets), else where
/// `cargo xtask setup` installs it. Missing, the test fails under CI and is skipped
/// elsewhere.
fn kubectl_bin() -> Option<PathBuf> {
    let path = std::env::var_os("SIGIL_KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(|t| workspace.join(t))
                .unwrap_or_else(|| workspace.join("target"));
            target.join("tools/kubectl")
        });
    // As with Envoy: a missing peer is a failure, never a silent skip.
    assert!(
        path.exists(),
        "kubectl not found at {} (run `cargo xtask setup`, which installs it there)",
        path.display()
    );
    Some(path)
}

/// A fake API server and a kubectl configured for it (own kubeconfig and cache).
struct Kubectl {
    kube: FakeKube,
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl Kubectl {
    async fn start() -> Option<Self> {
        let bin = kubectl_bin()?;
        let kube = FakeKube::start_tls().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        kube.write_kubeconfig(&dir.path().join("kubeconfig"))
            .unwrap();
        Some(Kubectl { kube, bin, dir })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--kubeconfig")
            .arg(self.dir.path().join("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .stdin(Stdio::null());
        c
    }

    async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.command(args);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    }

    /// stdout of a kubectl run that must succeed.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// stderr of a kubectl run that must fail.
    async fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(!out.status.success(), "kubectl {args:?} succeeded");
        String::from_utf8(out.stderr).unwrap()
    }
}

fn pod(ns: &str, name: &str, node: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}})
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

#[tokio::test]
async fn kubectl_get_with_selectors_and_chunks() {
    let Some(k) = Kubectl::start().await else {
        return;
    };
    k.kube.apply(pod("default", "p1", "n1", "x"));
    k.kube.apply(pod("default", "p2", "n2", "x"));
    k.kube.apply(pod("default", "p3", "n1", "y"));
    k.kube.apply(pod("other", "p4", "n1", "x"));
    k.kube
        .apply(json!({"kind": "Node", "metadata": {"name": "n1"}}));

    let all: Value =
        serde_json::from_str(&k.ok(&["get", "pods", "-A", "-o", "json"]).await).unwrap();
    let names: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["p1", "p2", "p3", "p4"]);

    let on_n1 = k
        .ok(&[
            "get",
            "pods",
            "--field-selector",
            "spec.nodeName=n1",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(lines(&on_n1), ["pod/p1", "pod/p3"]);
    let app_x = k.ok(&["get", "pods", "-l", "app=x", "-o", "name"]).await;
    assert_eq!(lines(&app_x), ["pod/p1", "pod/p2"]);
    let both = k
        .ok(&[
            "get",
            "po",
            "-A",
            "-l",
            "app in (x)",
            "--field-selector",
            "spec.nodeName!=n2",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(lines(&both), ["pod/p1", "pod/p4"]);

    k.kube.clear_requests();
    let chunked = k
        .ok(&["get", "pods", "-A", "--chunk-size=1", "-o", "name"])
        .await;
    assert_eq!(lines(&chunked), ["pod/p1", "pod/p2", "pod/p3", "pod/p4"]);
    let pages: Vec<_> = k
        .kube
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/v1/pods")
        .collect();
    assert_eq!(pages.len(), 4, "one request per chunk");
    assert!(
        pages
            .iter()
            .all(|r| r.param("limit").as_deref() == Some("1"))
    );
    assert!(pages[1..].iter().all(|r| r.param("continue").is_some()));

    assert_eq!(
        lines(&k.ok(&["get", "no", "-o", "name"]).await),
        ["node/n1"]
    );
    let ns = k.ok(&["get", "namespaces", "-o", "name"]).await;
    assert!(lines(&ns).contains(&"namespace/kube-system"), "{ns}");
    assert_eq!(
        lines(&k.ok(&["get", "sa", "-o", "name"]).await),
        ["serviceaccount/default"]
    );

    let err = k
        .fails(&["get", "pods", "--field-selector", "spec.bogus=x"])
        .await;
    assert!(
        err.contains("field label not supported: spec.bogus"),
        "{err}"
    );
}

#[tokio::test]
async fn kubectl_create_and_delete() {
    let Some(k) = Kubectl::start().await else {
        return;
    };
    let file = k.dir.path().join("pod.json");
    let mut p = pod("default", "x", "n1", "x");
    p["metadata"].as_object_mut().unwrap().remove("namespace");
    std::fs::write(&file, p.to_string()).unwrap();
    let file = file.to_str().unwrap();

    assert_eq!(k.ok(&["create", "-f", file]).await.trim(), "pod/x created");
    let stored = k.kube.get("Pod", Some("default"), "x").unwrap();
    assert_eq!(stored["status"]["phase"], "Pending");
    let err = k.fails(&["create", "-f", file]).await;
    assert!(err.contains(r#"pods "x" already exists"#), "{err}");

    k.ok(&["delete", "pod", "x"]).await;
    assert!(k.kube.get("Pod", Some("default"), "x").is_none());
    let err = k.fails(&["get", "pod", "x"]).await;
    assert!(err.contains(r#"pods "x" not found"#), "{err}");
}

#[tokio::test]
async fn kubectl_watch() {
    let Some(k) = Kubectl::start().await else {
        return;
    };
    k.kube.apply(pod("default", "p1", "n1", "x"));
    let mut child = k
        .command(&["get", "pods", "-w", "--output-watch-events", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for v in serde_json::Deserializer::from_reader(stdout).into_iter::<Value>() {
            if v.ok().is_none_or(|v| tx.send(v).is_err()) {
                break;
            }
        }
    });
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap()
            .unwrap()
    };
    let first = next().await;
    assert_eq!(
        (
            first["type"].as_str(),
            first["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("p1"))
    );
    // Once kubectl watches, a new pod shows up.
    let watching = async {
        while !k.kube.requests().iter().any(|r| r.is_watch()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), watching)
        .await
        .unwrap();
    k.kube.apply(pod("default", "p2", "n1", "x"));
    let second = next().await;
    assert_eq!(
        (
            second["type"].as_str(),
            second["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("p2"))
    );
    k.kube.delete("Pod", Some("default"), "p1");
    let third = next().await;
    assert_eq!(
        (
            third["type"].as_str(),
            third["object"]["metadata"]["name"].as_str()
        ),
        (Some("DELETED"), Some("p1"))
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn kubectl_create_token_passes_token_review() {
    let Some(k) = Kubectl::start().await else {
        return;
    };
    k.kube.apply(
        json!({"kind": "ServiceAccount", "metadata": {"name": "agent", "namespace": "default"}}),
    );
    let token = k
        .ok(&[
            "create",
            "token",
            "agent",
            "--audience",
            "a",
            "--duration",
            "20m",
        ])
        .await;
    let token = token.trim();

    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": token, "audiences": ["a"]}});
    let file = k.dir.path().join("review.json");
    std::fs::write(&file, review.to_string()).unwrap();
    let out: Value = serde_json::from_str(
        &k.ok(&["create", "-f", file.to_str().unwrap(), "-o", "json"])
            .await,
    )
    .unwrap();
    assert_eq!(out["status"]["authenticated"], true, "{out}");
    assert_eq!(
        out["status"]["user"]["username"],
        "system:serviceaccount:default:agent"
    );

    let bad = k.kube.review_token(token, &["b"]);
    assert_eq!(bad["authenticated"], false);
    let err = k.fails(&["create", "token", "nope"]).await;
    assert!(err.contains(r#"serviceaccounts "nope" not found"#), "{err}");
}

/// The upstream ClusterSPIFFEID CRD (spire-controller-manager's, unmodified).
fn crd_file() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/spire.spiffe.io_clusterspiffeids.yaml")
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn kubectl_apply_crd_and_custom_resources() {
    let Some(k) = Kubectl::start().await else {
        return;
    };
    assert_eq!(
        k.ok(&["apply", "-f", &crd_file()]).await.trim(),
        "customresourcedefinition.apiextensions.k8s.io/clusterspiffeids.spire.spiffe.io created"
    );
    let crd = k
        .kube
        .get(
            "CustomResourceDefinition",
            None,
            "clusterspiffeids.spire.spiffe.io",
        )
        .unwrap();
    assert!(
        crd["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string()
    );

    let file = k.dir.path().join("id.yaml");
    let manifest = |class: &str| {
        format!(
            "apiVersion: spire.spiffe.io/v1alpha1\n\
             kind: ClusterSPIFFEID\n\
             metadata:\n  name: default\n\
             spec:\n  spiffeIDTemplate: \"spiffe://{{{{ .TrustDomain }}}}/ns/{{{{ .PodMeta.Namespace }}}}\"\n  \
             className: {class}\n  podSelector:\n    matchLabels:\n      app: web\n"
        )
    };
    std::fs::write(&file, manifest("a")).unwrap();
    let file = file.to_str().unwrap();
    assert_eq!(
        k.ok(&["apply", "-f", file]).await.trim(),
        "clusterspiffeid.spire.spiffe.io/default created"
    );
    let list: Value =
        serde_json::from_str(&k.ok(&["get", "clusterspiffeids", "-o", "json"]).await).unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["apiVersion"], "spire.spiffe.io/v1alpha1");
    assert_eq!(
        items[0]["spec"]["spiffeIDTemplate"],
        "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}"
    );
    assert_eq!(items[0]["spec"]["podSelector"]["matchLabels"]["app"], "web");

    // Applied again, changed: kubectl patches it (a merge patch, for a kind it does not know).
    std::fs::write(file, manifest("b")).unwrap();
    assert_eq!(
        k.ok(&["apply", "-f", file]).await.trim(),
        "clusterspiffeid.spire.spiffe.io/default configured"
    );
    let stored = k.kube.get("ClusterSPIFFEID", None, "default").unwrap();
    assert_eq!(stored["spec"]["className"], "b");
    // Server-side apply, and a JSON patch.
    std::fs::write(file, manifest("c")).unwrap();
    let out = k.ok(&["apply", "--server-side", "-f", file]).await;
    assert_eq!(
        out.trim(),
        "clusterspiffeid.spire.spiffe.io/default serverside-applied"
    );
    assert!(
        k.kube
            .requests()
            .iter()
            .any(|r| r.method == "PATCH" && r.param("fieldManager").as_deref() == Some("kubectl"))
    );
    let stored = k.kube.get("ClusterSPIFFEID", None, "default").unwrap();
    assert_eq!(stored["spec"]["className"], "c");
    k.ok(&[
        "patch",
        "clusterspiffeid",
        "default",
        "--type=json",
        "-p",
        r#"[{"op": "replace", "path": "/spec/className", "value": "d"}]"#,
    ])
    .await;
    let stored = k.kube.get("ClusterSPIFFEID", None, "default").unwrap();
    assert_eq!(stored["spec"]["className"], "d");

    assert_eq!(
        k.ok(&["delete", "clusterspiffeid", "default"]).await.trim(),
        r#"clusterspiffeid.spire.spiffe.io "default" deleted"#
    );
    assert!(k.kube.get("ClusterSPIFFEID", None, "default").is_none());
    k.ok(&["apply", "-f", file]).await;
    // Deleting the CRD takes its objects and its resource with it.
    k.ok(&["delete", "-f", &crd_file()]).await;
    // kubectl's discovery cache still knows the resource (as it would against a real
    // server), so it asks, and is told it is gone.
    let err = k.fails(&["get", "clusterspiffeids"]).await;
    assert!(
        err.contains("the server could not find the requested resource"),
        "{err}"
    );
    assert!(
        k.kube
            .get(
                "CustomResourceDefinition",
                None,
                "clusterspiffeids.spire.spiffe.io"
            )
            .is_none()
    );
}

#[tokio::test]
async fn kubectl_endpoint_slices_by_service() {
    let Some(k) = Kubectl::start().await else {
        return;
    };
    for (name, service) in [("web-abc", "web"), ("web-def", "web"), ("db-xyz", "db")] {
        k.kube.apply(
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "default",
                "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"]}]}),
        );
    }
    let web = k
        .ok(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(
        lines(&web),
        [
            "endpointslice.discovery.k8s.io/web-abc",
            "endpointslice.discovery.k8s.io/web-def"
        ]
    );
    k.ok(&["delete", "endpointslice", "web-abc"]).await;
    assert!(
        k.kube
            .get("EndpointSlice", Some("default"), "web-abc")
            .is_none()
    );
    let left = k.ok(&["get", "endpointslices", "-o", "name"]).await;
    assert_eq!(
        lines(&left),
        [
            "endpointslice.discovery.k8s.io/db-xyz",
            "endpointslice.discovery.k8s.io/web-def"
        ]
    );
}
