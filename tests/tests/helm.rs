//! The Helm charts (`deploy/helm/sigil`, `deploy/helm/sigil-crds`), rendered by a real helm 4
//! with the values SPIRE guides install SPIRE with (seed 001's values file verbatim, seed 000's
//! `--set` flags), then checked:
//!
//! - the config files the chart writes are what the binaries accept: fed to the same loaders
//!   `sigil-server`, `sigil-agent` and `sigil-controller` use (`ServerConfig::from_hcl`,
//!   `Config::from_hcl` after `-expandEnv`'s expansion, `ControllerManagerConfig::load`);
//! - trust domain, cluster name, sockets, the token projection, probes, security contexts and
//!   RBAC are what the guides and the binaries expect;
//! - every object validates against the Kubernetes 1.33 to 1.37 schemas (kubernetes-validate,
//!   strict), the chart's ClusterSPIFFEIDs against the CRD;
//! - the CRDs in both charts are `sigil-controller crds` (`cargo xtask crds` regenerates them).
//!
//! helm comes from `SIGIL_HELM` (which `cargo xtask test` sets) or `target/tools/helm`
//! (`cargo xtask setup` installs it); without it these tests fail, saying so.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use sigil_e2e::harness::{self, CliOutput, target_dir, workspace_root};

const RELEASE: &str = "spire";
const NAMESPACE: &str = "spire-server";
/// Seed 000: `helm install spire spire/spire --namespace spire-system --set ...`.
const SEED_000_FLAGS: [&str; 6] = [
    "--set",
    "global.trustDomain=cluster.local",
    "--set",
    "spire-controller-manager.enabled=true",
    "--set",
    "spiffe-csi-driver.enabled=true",
];
/// The Kubernetes versions every rendered object is validated against.
const KUBERNETES_VERSIONS: [&str; 5] = ["1.33.0", "1.34.0", "1.35.0", "1.36.0", "1.37.0"];

// === helm ===

fn helm_path() -> PathBuf {
    let path = std::env::var_os("SIGIL_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("tools/helm"));
    assert!(
        path.is_file(),
        "helm not found at {}: run `cargo xtask setup` (it installs helm 4 into target/tools/), \
         or point SIGIL_HELM at a helm 4 binary",
        path.display()
    );
    path
}

fn helm(args: &[&str]) -> CliOutput {
    let mut cmd = Command::new(helm_path());
    cmd.args(args)
        .current_dir(workspace_root())
        // No user config or cache: the charts are local.
        .env("HELM_CONFIG_HOME", target_dir().join("helm-test/config"))
        .env("HELM_CACHE_HOME", target_dir().join("helm-test/cache"))
        .env("HELM_DATA_HOME", target_dir().join("helm-test/data"));
    harness::run(cmd, Duration::from_secs(120))
}

fn chart(name: &str) -> String {
    workspace_root()
        .join("deploy/helm")
        .join(name)
        .display()
        .to_string()
}

fn seed_001_values() -> String {
    format!("{}/ci/seed-001-values.yaml", chart("sigil"))
}

/// The objects of a rendered chart.
struct Rendered {
    yaml: String,
    docs: Vec<Value>,
}

impl Rendered {
    fn parse(yaml: String) -> Self {
        let docs: Vec<Value> = serde_saphyr::from_multiple::<Value>(&yaml)
            .unwrap_or_else(|e| panic!("helm's output is not YAML ({e}):\n{yaml}"))
            .into_iter()
            .filter(|d| !d.is_null())
            .collect();
        Self { yaml, docs }
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    #[track_caller]
    fn get(&self, kind: &str, name: &str) -> &Value {
        self.docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} among {:?}", self.names()))
    }

    fn has(&self, kind: &str, name: &str) -> bool {
        self.docs
            .iter()
            .any(|d| d["kind"] == kind && d["metadata"]["name"] == name)
    }

    fn names(&self) -> BTreeSet<String> {
        self.docs
            .iter()
            .map(|d| {
                format!(
                    "{}/{}",
                    d["kind"].as_str().unwrap_or("?"),
                    d["metadata"]["name"].as_str().unwrap_or("?")
                )
            })
            .collect()
    }

    #[track_caller]
    fn file(&self, config_map: &str, key: &str) -> String {
        self.get("ConfigMap", config_map)["data"][key]
            .as_str()
            .unwrap_or_else(|| panic!("ConfigMap {config_map} has no {key}"))
            .to_string()
    }

    /// The server's, agent's and controller's config files, parsed by their loaders.
    fn configs(&self) -> Configs {
        let server_text = self.file("spire-server", "server.conf");
        let server = sigil_server::config::ServerConfig::from_hcl(
            &server_text,
            &sigil_server::config::Overrides::default(),
        )
        .unwrap_or_else(|e| {
            panic!("sigil-server refuses the chart's server.conf: {e}\n{server_text}")
        });
        // The DaemonSet runs the agent with -expandEnv and MY_NODE_NAME from the downward API.
        let agent_text = self.file("spire-agent", "agent.conf");
        let expanded = sigil_config::expand_env_with(&agent_text, |name| {
            (name == "MY_NODE_NAME").then(|| "node-1".to_string())
        });
        let agent = sigil_agent::Config::from_hcl(&expanded).unwrap_or_else(|e| {
            panic!("sigil-agent refuses the chart's agent.conf: {e}\n{agent_text}")
        });
        let controller_text =
            self.file("spire-controller-manager", "controller-manager-config.yaml");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("controller-manager-config.yaml");
        std::fs::write(&path, &controller_text).expect("write the controller config");
        let controller = sigil_controller::config::ControllerManagerConfig::load(&path, false)
            .unwrap_or_else(|e| {
                panic!("sigil-controller refuses the chart's config: {e}\n{controller_text}")
            });
        assert!(
            controller.not_used.is_empty(),
            "keys sigil-controller does not use: {:?}\n{controller_text}",
            controller.not_used
        );
        Configs {
            server,
            agent,
            agent_json: serde_json::from_str(&agent_text).expect("agent.conf is JSON"),
            controller: controller.config,
        }
    }
}

struct Configs {
    server: sigil_server::config::ServerConfig,
    agent: sigil_agent::Config,
    agent_json: Value,
    controller: sigil_controller::config::ControllerManagerConfig,
}

/// `helm template` of the sigil chart (CRDs included), release `spire`.
fn render(namespace: &str, args: &[&str]) -> Rendered {
    let chart = chart("sigil");
    let mut all = vec![
        "template",
        RELEASE,
        chart.as_str(),
        "--namespace",
        namespace,
        "--include-crds",
    ];
    all.extend_from_slice(args);
    Rendered::parse(helm(&all).ok().stdout)
}

/// `helm template` that must fail; its error output.
#[track_caller]
fn render_fails(args: &[&str]) -> String {
    let chart = chart("sigil");
    let mut all = vec![
        "template",
        RELEASE,
        chart.as_str(),
        "--namespace",
        NAMESPACE,
    ];
    all.extend_from_slice(args);
    let out = helm(&all).fails();
    out.stderr
}

fn container<'a>(pod_spec: &'a Value, name: &str) -> &'a Value {
    pod_spec["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name} in {pod_spec:#}"))
}

fn volume<'a>(pod_spec: &'a Value, name: &str) -> &'a Value {
    pod_spec["volumes"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no volume {name} in {pod_spec:#}"))
}

/// Where `container` mounts `volume`.
fn mount_paths(container: &Value, volume: &str) -> Vec<String> {
    container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["name"] == volume)
        .filter_map(|m| m["mountPath"].as_str().map(str::to_string))
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

// === the tests ===

#[test]
fn helm_is_version_4_and_both_charts_lint() {
    let version = helm(&["version", "--short"]).ok();
    assert!(
        version.stdout.trim_start().starts_with("v4."),
        "the charts are tested with helm 4: {version}"
    );
    helm(&["lint", "--strict", &chart("sigil")]).ok();
    helm(&[
        "lint",
        "--strict",
        &chart("sigil"),
        "--values",
        &seed_001_values(),
    ])
    .ok();
    let mut flags = vec!["lint", "--strict"];
    let sigil = chart("sigil");
    flags.push(&sigil);
    flags.extend_from_slice(&SEED_000_FLAGS);
    helm(&flags).ok();
    helm(&["lint", "--strict", &chart("sigil-crds")]).ok();
}

/// Seed 001 (`helm install spire spiffe/spire -n spire-server -f spire-values-foo-cluster.yaml`).
#[test]
fn seed_001_values_file_verbatim() {
    let r = render(NAMESPACE, &["--values", &seed_001_values()]);
    let c = r.configs();

    // The trust domain and the cluster name reach the server, the agents and the controller.
    assert_eq!(c.server.trust_domain.as_str(), "foo.com");
    assert_eq!(c.agent.trust_domain.as_str(), "foo.com");
    assert_eq!(c.controller.trust_domain, "foo.com");
    let psat = c.server.k8s_psat.as_ref().expect("k8s_psat on the server");
    assert_eq!(
        psat.clusters.keys().collect::<Vec<_>>(),
        ["foo-eks-cluster"]
    );
    let cluster = &psat.clusters["foo-eks-cluster"];
    assert_eq!(
        cluster.service_account_allow_list,
        ["spire-server:spire-agent"]
    );
    assert_eq!(cluster.effective_audience(), ["spire-server"]);
    assert_eq!(
        c.agent.k8s_psat.as_ref().expect("k8s_psat").cluster,
        "foo-eks-cluster"
    );
    assert_eq!(c.controller.cluster_name, "foo-eks-cluster");
    // Seed 001's troubleshooting step reads it with jq this way.
    assert_eq!(
        c.agent_json["plugins"]["NodeAttestor"][0]["k8s_psat"]["plugin_data"]["cluster"],
        "foo-eks-cluster"
    );
    // spire-server.caTTL: 720h.
    assert_eq!(c.server.ca_ttl, Duration::from_secs(720 * 3600));
    // watchClassless: true, and the class SPIRE's chart would name (seed 001 says so).
    assert!(c.controller.watch_classless);
    assert_eq!(c.controller.class_name, "spire-server-spire");
    assert_eq!(c.controller.entry_id_prefix, "foo-eks-cluster");
    assert_eq!(
        c.controller.parent_id_template,
        "spiffe://{{ .TrustDomain }}/spire/agent/k8s_psat/{{ .ClusterName }}/{{ .NodeMeta.UID }}"
    );
    // The admin socket the controller dials is the server's, on the volume they share.
    assert_eq!(
        Path::new(&c.controller.spire_server_socket_path),
        c.server.socket_path
    );
    assert_eq!(
        c.server.socket_path,
        Path::new("/tmp/spire-server/private/api.sock")
    );
    // Agents reach the server through its Service.
    assert_eq!(c.agent.server_address.as_str(), "spire-server.spire-server");
    assert_eq!(c.agent.server_port.0, 443);
    let svc = r.get("Service", "spire-server");
    assert_eq!(svc["spec"]["ports"][0]["port"], 443);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "grpc");
    assert_eq!(svc["spec"]["ports"][1]["targetPort"], "healthz");
    // The bundle source: the spire-bundle ConfigMap the server's k8sbundle notifier keeps,
    // mounted for the agent; never trust on first contact.
    assert!(!c.agent.insecure_bootstrap);
    assert_eq!(
        c.agent.trust_bundle_path.as_deref(),
        Some(Path::new("/run/spire/bundle/bundle.crt"))
    );
    let k8sbundle = c.server.k8sbundle.as_ref().expect("Notifier \"k8sbundle\"");
    assert_eq!(k8sbundle.config_map, "spire-bundle");
    assert_eq!(k8sbundle.config_map_key, "bundle.crt");
    assert_eq!(k8sbundle.namespace, "spire-server");
    r.get("ConfigMap", "spire-bundle");
    // The k8s attestor, node name from the downward API; no kubelet polling.
    let k8s = c
        .agent
        .k8s_attestor
        .as_ref()
        .expect("k8s workload attestor");
    assert_eq!(k8s.node_name, "node-1");
    assert!(k8s.not_needed.is_empty(), "{:?}", k8s.not_needed);
    assert!(c.agent.unix_attestor.is_none());

    check_server_pod(&r, &c);
    check_agent_pod(&r, &c);
    check_csi_driver(&r);
    check_rbac(&r, false);
    check_default_cluster_spiffeid(&r, "spire-server-spire", NAMESPACE);

    // spiffe-oidc-discovery-provider.enabled: false renders nothing for it (nor does true).
    assert!(
        r.names().iter().all(|n| !n.contains("oidc")),
        "{:?}",
        r.names()
    );
}

/// Seed 000 (`helm install spire spire/spire --namespace spire-system --set global.trustDomain=...
/// --set spire-controller-manager.enabled=true --set spiffe-csi-driver.enabled=true`).
#[test]
fn seed_000_set_flags() {
    let r = render("spire-system", &SEED_000_FLAGS);
    let c = r.configs();
    assert_eq!(c.server.trust_domain.as_str(), "cluster.local");
    assert_eq!(c.agent.trust_domain.as_str(), "cluster.local");
    assert_eq!(c.controller.trust_domain, "cluster.local");
    // No cluster name given: SPIRE's default, the same everywhere.
    let psat = c.server.k8s_psat.as_ref().expect("k8s_psat");
    assert!(psat.clusters.contains_key("example-cluster"));
    assert_eq!(
        psat.clusters["example-cluster"].service_account_allow_list,
        ["spire-system:spire-agent"]
    );
    assert_eq!(
        c.agent.k8s_psat.as_ref().unwrap().cluster,
        "example-cluster"
    );
    assert_eq!(c.controller.cluster_name, "example-cluster");
    assert!(!c.controller.watch_classless);
    assert_eq!(c.controller.class_name, "spire-system-spire");
    assert_eq!(c.agent.server_address.as_str(), "spire-server.spire-system");
    // The controller runs (the older charts' switch) and the CSI driver is there.
    let sts = r.get("StatefulSet", "spire-server");
    container(&sts["spec"]["template"]["spec"], "spire-controller-manager");
    check_csi_driver(&r);
    check_server_pod(&r, &c);
    check_agent_pod(&r, &c);
    check_rbac(&r, false);
    check_default_cluster_spiffeid(&r, "spire-system-spire", "spire-system");
    // The older spelling is only a fallback: global.spire.trustDomain wins.
    let mut flags = SEED_000_FLAGS.to_vec();
    flags.extend(["--set", "global.spire.trustDomain=example.com"]);
    let r = render("spire-system", &flags);
    assert_eq!(r.configs().server.trust_domain.as_str(), "example.com");
}

/// The server's pod: server and controller sharing the admin socket, probes, non-root.
fn check_server_pod(r: &Rendered, c: &Configs) {
    let sts = r.get("StatefulSet", "spire-server");
    assert_eq!(sts["spec"]["replicas"], 1);
    let spec = &sts["spec"]["template"]["spec"];
    assert_eq!(spec["serviceAccountName"], "spire-server");
    // Pod labels SPIRE guides select on.
    assert_eq!(
        sts["spec"]["template"]["metadata"]["labels"]["app"],
        "spire-server"
    );
    let psc = &spec["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert_eq!(psc["runAsUser"], 65532);
    assert_eq!(psc["fsGroup"], 65532);
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");

    let server = container(spec, "spire-server");
    assert!(
        server["image"]
            .as_str()
            .unwrap()
            .starts_with("ghcr.io/sigil-id/sigil-server:"),
        "{server:#}"
    );
    assert_eq!(
        strings(&server["args"]),
        ["run", "-config", "/run/spire/config/server.conf"]
    );
    assert_eq!(mount_paths(server, "spire-config"), ["/run/spire/config"]);
    assert_eq!(mount_paths(server, "spire-data"), ["/run/spire/data"]);
    assert_eq!(c.server.data_dir, Path::new("/run/spire/data"));
    let controller = container(spec, "spire-controller-manager");
    assert!(
        controller["image"]
            .as_str()
            .unwrap()
            .starts_with("ghcr.io/sigil-id/sigil-controller:"),
        "{controller:#}"
    );
    // Both see the admin socket's directory (an emptyDir; the server makes private/ 0700).
    let shared = "/tmp/spire-server";
    assert!(c.server.socket_path.starts_with(shared));
    assert!(mount_paths(server, "spire-server-socket").contains(&shared.to_string()));
    assert_eq!(mount_paths(controller, "spire-server-socket"), [shared]);
    assert!(volume(spec, "spire-server-socket")["emptyDir"].is_object());
    // The controller's config file is the ConfigMap the test loaded.
    let args = strings(&controller["args"]);
    assert_eq!(args[0], "-config");
    let config_path = Path::new(&args[1]);
    assert_eq!(
        mount_paths(controller, "controller-manager-config"),
        [config_path.parent().unwrap().display().to_string()]
    );
    assert_eq!(
        volume(spec, "controller-manager-config")["configMap"]["name"],
        "spire-controller-manager"
    );
    assert_eq!(
        config_path.file_name().unwrap(),
        "controller-manager-config.yaml"
    );

    // Probes on the listeners the configs open.
    let health = c
        .server
        .health_checks
        .as_ref()
        .expect("server health_checks");
    assert_eq!(health.live_path, "/live");
    assert_eq!(health.ready_path, "/ready");
    assert_eq!(port(server, "healthz"), u64::from(health.bind_port));
    assert_eq!(server["livenessProbe"]["httpGet"]["path"], "/live");
    assert_eq!(server["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(server["livenessProbe"]["httpGet"]["port"], "healthz");
    assert_eq!(port(server, "grpc"), u64::from(c.server.bind_port));
    assert_eq!(controller["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(controller["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(
        c.controller.health.health_probe_bind_address,
        format!("0.0.0.0:{}", port(controller, "cm-healthz"))
    );
    for ctr in [server, controller] {
        let sc = &ctr["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{ctr:#}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{ctr:#}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{ctr:#}");
        assert!(sc["capabilities"]["add"].is_null(), "{ctr:#}");
    }
    // SQLite on a PersistentVolumeClaim.
    let claim = &sts["spec"]["volumeClaimTemplates"][0];
    assert_eq!(claim["metadata"]["name"], "spire-data");
    assert_eq!(claim["spec"]["accessModes"], json!(["ReadWriteOnce"]));
    match &c.server.datastore {
        sigil_server::datastore::Config::Sqlite { path, .. } => {
            assert!(path.starts_with(mount_paths(server, "spire-data")[0].as_str()))
        }
        other => panic!("the default datastore is not SQLite: {other:?}"),
    }
}

fn port(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no port {name} in {container:#}"))
}

/// The agent's pod: socket directory and names, token projection, node name, probes, the
/// capabilities of the eBPF tiers and nothing more.
fn check_agent_pod(r: &Rendered, c: &Configs) {
    let ds = r.get("DaemonSet", "spire-agent");
    assert_eq!(
        ds["spec"]["updateStrategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}})
    );
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostPID"], true);
    assert!(
        spec["hostNetwork"].is_null(),
        "no kubelet to reach: no host network"
    );
    assert_eq!(spec["serviceAccountName"], "spire-agent");
    let agent = container(spec, "spire-agent");
    assert!(
        agent["image"]
            .as_str()
            .unwrap()
            .starts_with("ghcr.io/sigil-id/sigil-agent:"),
        "{agent:#}"
    );
    assert_eq!(
        strings(&agent["args"]),
        [
            "run",
            "-config",
            "/run/spire/config/agent.conf",
            "-expandEnv"
        ]
    );
    assert_eq!(mount_paths(agent, "spire-config"), ["/run/spire/config"]);

    // The socket: served in the hostPath directory SPIRE's chart uses, which the CSI driver
    // mounts into pods; `socket` (Istio), `api.sock`, `spire-agent.sock` all name it.
    assert_eq!(
        c.agent.socket_path,
        Path::new("/tmp/spire-agent/public/spire-agent.sock")
    );
    assert_eq!(
        volume(spec, "spire-agent-socket-dir")["hostPath"],
        json!({"path": "/run/spire/agent-sockets", "type": "DirectoryOrCreate"})
    );
    let socket_mounts = mount_paths(agent, "spire-agent-socket-dir");
    assert!(socket_mounts.contains(&"/tmp/spire-agent/public".to_string()));
    assert!(socket_mounts.contains(&"/tmp/sigil-agent/public".to_string()));
    let init = &spec["initContainers"][0];
    assert_eq!(init["name"], "ensure-alternate-names");
    assert_eq!(
        mount_paths(init, "spire-agent-socket-dir"),
        ["/tmp/spire-agent/public"]
    );
    let script = init["args"][0].as_str().unwrap();
    for name in ["socket", "api.sock"] {
        assert!(
            script.contains(&format!("ln -s spire-agent.sock {name}")),
            "{script}"
        );
    }
    assert!(!script.contains("ln -s spire-agent.sock spire-agent.sock"));
    assert_eq!(
        init["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(init["securityContext"]["allowPrivilegeEscalation"], false);

    // k8s_psat: the projected token, audience spire-server, where the agent reads it.
    let token = &volume(spec, "spire-token")["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["audience"], "spire-server");
    let psat = c.agent.k8s_psat.as_ref().unwrap();
    assert_eq!(
        Path::new(&mount_paths(agent, "spire-token")[0]).join(token["path"].as_str().unwrap()),
        psat.token_path
    );
    // MY_NODE_NAME from the downward API (the k8s attestor's node).
    let env = agent["env"].as_array().unwrap();
    let node = env.iter().find(|e| e["name"] == "MY_NODE_NAME").unwrap();
    assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    // Probes on the health listener the config opens.
    let health = c.agent.health.as_ref().expect("agent health_checks");
    assert_eq!(port(agent, "healthz"), u64::from(health.bind_port.0));
    assert_eq!(agent["livenessProbe"]["httpGet"]["path"], health.live_path);
    assert_eq!(
        agent["readinessProbe"]["httpGet"]["path"],
        health.ready_path
    );
    assert_eq!(health.live_path, "/live");
    assert_eq!(health.ready_path, "/ready");
    // Root with CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN (the agent checks for the three before
    // loading its eBPF program) and CAP_SYS_PTRACE (/proc/<pid>/exe of other uids); no more.
    let sc = &agent["securityContext"];
    assert_eq!(sc["runAsUser"], 0);
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(
        sc["capabilities"]["add"],
        json!(["BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE"])
    );
    assert!(sc["appArmorProfile"].is_null());
    // The node's cgroup tree, read-only, so recorded cgroups resolve to pods.
    assert_eq!(mount_paths(agent, "host-cgroup"), ["/sys/fs/cgroup"]);
    assert_eq!(
        volume(spec, "host-cgroup")["hostPath"]["path"],
        "/sys/fs/cgroup"
    );
    assert!(
        agent["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["name"] == "host-cgroup")
            .all(|m| m["readOnly"] == true)
    );
    // The data directory (SVID, key, bundle) on the agent's volume.
    assert_eq!(c.agent.data_dir, Path::new("/var/lib/sigil"));
    assert_eq!(
        mount_paths(agent, "spire-agent-persistence"),
        ["/var/lib/sigil"]
    );
}

/// The upstream SPIFFE CSI driver, mounting the agent's socket directory into pods.
fn check_csi_driver(r: &Rendered) {
    let driver = r.get("CSIDriver", "csi.spiffe.io");
    assert_eq!(driver["spec"]["volumeLifecycleModes"], json!(["Ephemeral"]));
    assert_eq!(driver["spec"]["fsGroupPolicy"], "None");
    let ds = r.get("DaemonSet", "spire-spiffe-csi-driver");
    let spec = &ds["spec"]["template"]["spec"];
    let csi = container(spec, "spiffe-csi-driver");
    assert!(
        csi["image"]
            .as_str()
            .unwrap()
            .starts_with("ghcr.io/spiffe/spiffe-csi-driver:")
    );
    let args = strings(&csi["args"]);
    assert_eq!(
        args[..4],
        [
            "-workload-api-socket-dir",
            "/spire-agent-socket",
            "-plugin-name",
            "csi.spiffe.io"
        ]
    );
    assert_eq!(
        mount_paths(csi, "spire-agent-socket-dir"),
        ["/spire-agent-socket"]
    );
    // The same node directory the agent serves its socket in.
    assert_eq!(
        volume(spec, "spire-agent-socket-dir")["hostPath"]["path"],
        "/run/spire/agent-sockets"
    );
    container(spec, "node-driver-registrar");
}

/// Least privilege: exactly these rules.
fn check_rbac(r: &Rendered, namespace_labels: bool) {
    let rules = |kind: &str, name: &str| r.get(kind, name)["rules"].clone();
    let ns = r.get("ServiceAccount", "spire-server")["metadata"]["namespace"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        rules("ClusterRole", &format!("{ns}-spire-server")),
        json!([
            {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["get"]},
        ])
    );
    assert_eq!(
        rules("Role", "spire-server-bundle"),
        json!([{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["spire-bundle"], "verbs": ["get", "patch"]}])
    );
    let mut agent =
        vec![json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]})];
    if namespace_labels {
        agent.push(
            json!({"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}),
        );
    }
    assert_eq!(
        rules("ClusterRole", &format!("{ns}-spire-agent")),
        Value::Array(agent)
    );
    assert_eq!(
        rules("ClusterRole", &format!("{ns}-spire-controller-manager")),
        json!([
            {"apiGroups": [""], "resources": ["pods", "nodes", "namespaces"], "verbs": ["list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
            {"apiGroups": ["spire.spiffe.io"], "resources": ["clusterfederatedtrustdomains", "clusterspiffeids", "clusterstaticentries"], "verbs": ["list", "watch"]},
            {"apiGroups": ["spire.spiffe.io"], "resources": ["clusterspiffeids/status", "clusterstaticentries/status"], "verbs": ["patch"]},
        ])
    );
    assert_eq!(
        rules("Role", "spire-controller-manager-leader-election"),
        json!([{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}])
    );
    let events = r.get("Role", &format!("{ns}-spire-controller-manager-events"));
    assert_eq!(events["metadata"]["namespace"], "default");
    assert_eq!(
        events["rules"],
        json!([{"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}])
    );
    // Each binding names its role and the right service account.
    for binding in r
        .all("ClusterRoleBinding")
        .into_iter()
        .chain(r.all("RoleBinding"))
    {
        let role = binding["roleRef"]["name"].as_str().unwrap();
        assert!(
            r.has(binding["roleRef"]["kind"].as_str().unwrap(), role),
            "{binding:#}"
        );
        let subject = &binding["subjects"][0];
        let sa = if role.contains("spire-agent") {
            "spire-agent"
        } else {
            "spire-server"
        };
        assert_eq!(subject["name"], sa, "{binding:#}");
        assert_eq!(subject["namespace"], ns.as_str(), "{binding:#}");
    }
}

/// SPIRE's chart's default ClusterSPIFFEID, in the controller's class.
fn check_default_cluster_spiffeid(r: &Rendered, class: &str, namespace: &str) {
    let name = format!("{class}-default");
    let csid = r.get("ClusterSPIFFEID", &name);
    let typed: sigil_controller::crd::ClusterSPIFFEID =
        serde_json::from_value(csid.clone()).expect("the default ClusterSPIFFEID deserializes");
    assert_eq!(typed.spec.class_name.as_deref(), Some(class));
    assert_eq!(typed.spec.fallback, Some(true));
    assert_eq!(typed.spec.hint.as_deref(), Some("default"));
    assert_eq!(
        typed.spec.spiffe_id_template,
        "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}"
    );
    let expr = &csid["spec"]["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(expr["key"], "kubernetes.io/metadata.name");
    assert_eq!(expr["operator"], "NotIn");
    assert_eq!(
        strings(&expr["values"])
            .into_iter()
            .collect::<BTreeSet<_>>(),
        [namespace, "spire-server", "spire-system"]
            .into_iter()
            .map(str::to_string)
            .collect::<BTreeSet<_>>()
    );
    check_against_crd(r, csid);
}

/// A custom resource against its CRD's schema (the API server's structural check: known fields,
/// types, required), since kubernetes-validate knows no CRDs.
fn check_against_crd(r: &Rendered, object: &Value) {
    let kind = object["kind"].as_str().unwrap();
    let crd = r
        .all("CustomResourceDefinition")
        .into_iter()
        .find(|c| c["spec"]["names"]["kind"] == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind} (rendered with --include-crds)"));
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut object = object.clone();
    // metadata is the API server's, not the schema's.
    object.as_object_mut().unwrap().remove("metadata");
    let mut schema = schema.clone();
    schema["properties"]
        .as_object_mut()
        .unwrap()
        .remove("metadata");
    if let Some(required) = schema["required"].as_array_mut() {
        required.retain(|k| k != "metadata");
    }
    structural(&schema, &object, kind);
}

fn structural(schema: &Value, v: &Value, at: &str) {
    let ty = schema["type"].as_str().unwrap_or("");
    let ok = match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        _ => true,
    } || (schema["x-kubernetes-int-or-string"] == true && (v.is_string() || v.is_i64()));
    assert!(ok, "{at}: {v} is not a {ty}");
    if let Some(required) = schema["required"].as_array() {
        for key in required {
            assert!(
                v.get(key.as_str().unwrap()).is_some(),
                "{at}: {key} is required"
            );
        }
    }
    if let (Some(props), Some(obj)) = (schema["properties"].as_object(), v.as_object()) {
        for (key, value) in obj {
            let sub = props
                .get(key)
                .unwrap_or_else(|| panic!("{at}: {key} is not in the CRD's schema"));
            structural(sub, value, &format!("{at}.{key}"));
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, item) in arr.iter().enumerate() {
            structural(items, item, &format!("{at}[{i}]"));
        }
    }
}

#[test]
fn every_object_validates_against_kubernetes_1_33_to_1_37() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sigil_crds = chart("sigil-crds");
    let renders: Vec<(&str, Rendered)> = vec![
        (
            "seed 001",
            render(NAMESPACE, &["--values", &seed_001_values()]),
        ),
        ("seed 000", render("spire-system", &SEED_000_FLAGS)),
        ("every option", render(NAMESPACE, &EVERY_OPTION)),
        (
            "sigil-crds",
            Rendered::parse(helm(&["template", "spire-crds", &sigil_crds]).ok().stdout),
        ),
    ];
    let venv_python = harness::python().unwrap_or_else(|e| panic!("the e2e venv: {e}"));
    let validate = venv_python.with_file_name("kubernetes-validate");
    assert!(
        validate.is_file(),
        "{} missing: kubernetes-validate belongs in tests/py/requirements.txt",
        validate.display()
    );
    let mut files = Vec::new();
    for (what, rendered) in &renders {
        let file = dir.path().join(format!("{}.yaml", what.replace(' ', "-")));
        std::fs::write(&file, &rendered.yaml).unwrap();
        files.push(file);
        for csid in rendered.all("ClusterSPIFFEID") {
            check_against_crd(rendered, csid);
        }
    }
    for version in KUBERNETES_VERSIONS {
        let mut cmd = Command::new(&validate);
        cmd.args(["--kubernetes-version", version, "--strict", "--quiet"])
            .args(&files);
        let out = harness::run(cmd, Duration::from_secs(300));
        assert!(
            out.success(),
            "objects invalid for Kubernetes {version} ({}): {out}",
            renders
                .iter()
                .map(|(w, _)| *w)
                .collect::<Vec<_>>()
                .join(", ")
        );
        // Only the custom resources have no schema there; they are checked against the CRD.
        for line in out.stdout.lines().chain(out.stderr.lines()) {
            assert!(
                line.trim().is_empty()
                    || line
                        .contains("kind ClusterSPIFFEID with api version spire.spiffe.io/v1alpha1"),
                "Kubernetes {version}: {line}"
            );
        }
    }
}

/// Every switch away from its default, in one render.
const EVERY_OPTION: [&str; 36] = [
    "--set",
    "spire-agent.workloadAttestors.k8s.enableNamespaceLabels=true",
    "--set",
    "spire-agent.workloadAttestors.unix.enabled=true",
    "--set",
    "spire-agent.workloadAttestors.unix.discoverWorkloadPath=true",
    "--set",
    "spire-agent.attestation.lsm=true",
    "--set",
    "spire-agent.attestation.tier=fentry",
    "--set",
    "spire-agent.bundleConfigMap=spire-bundle",
    "--set",
    "spire-agent.persistence.type=hostPath",
    "--set",
    "spire-server.podDisruptionBudget.enabled=true",
    "--set",
    "spire-server.persistence.type=emptyDir",
    "--set",
    "spire-server.jwtIssuer=https://oidc.example.org",
    "--set",
    "spire-server.caSubject.organization=Example",
    "--set",
    "spire-server.nodeAttestor.k8sPSAT.allowedNodeLabelKeys={topology.kubernetes.io/zone}",
    "--set",
    "spire-server.controllerManager.addEntryIDPrefix=false",
    "--set-json",
    r#"spire-server.controllerManager.identities.clusterSPIFFEIDs.default.dnsNameTemplates=["{{ .PodMeta.Name }}.svc"]"#,
    "--set",
    "global.imagePullSecrets[0].name=regcred",
    "--set",
    "spiffe-oidc-discovery-provider.enabled=true",
    "--set",
    "spire-server.telemetry.prometheus.enabled=true",
    "--set",
    "spire-agent.telemetry.prometheus.enabled=true",
];

#[test]
fn values_switches() {
    // Every option: the configs still load, and each switch did what it says.
    let r = render(NAMESPACE, &EVERY_OPTION);
    let c = r.configs();
    check_rbac(&r, true);
    assert!(
        c.agent
            .k8s_attestor
            .as_ref()
            .unwrap()
            .enable_namespace_labels
    );
    assert!(
        c.agent
            .unix_attestor
            .as_ref()
            .unwrap()
            .discover_workload_path
    );
    assert_eq!(
        c.agent.trust_bundle_path.as_deref(),
        Some(Path::new("/run/spire/bundle/bundle.crt"))
    );
    assert!(!c.agent.insecure_bootstrap);
    assert_eq!(
        c.server.jwt_issuer.as_deref(),
        Some("https://oidc.example.org")
    );
    assert_eq!(c.server.ca_subject.organization, ["Example"]);
    assert_eq!(
        c.server.k8s_psat.as_ref().unwrap().clusters["example-cluster"].allowed_node_label_keys,
        ["topology.kubernetes.io/zone"]
    );
    assert_eq!(c.controller.entry_id_prefix, "");
    // Prometheus on SPIRE's port, in both configs and on both pods.
    let prom = Some(sigil_telemetry::Prometheus {
        host: "0.0.0.0".into(),
        port: 9988,
    });
    assert_eq!(c.server.telemetry.prometheus, prom);
    assert_eq!(c.agent.telemetry.prometheus, prom);
    let ds = r.get("DaemonSet", "spire-agent");
    assert_eq!(
        port(
            container(&ds["spec"]["template"]["spec"], "spire-agent"),
            "prom"
        ),
        9988
    );
    let spec = &ds["spec"]["template"]["spec"];
    let agent = container(spec, "spire-agent");
    assert_eq!(strings(&agent["args"])[4..], ["-attestationTier", "fentry"]);
    assert_eq!(
        volume(spec, "spire-bundle")["configMap"]["name"],
        "spire-bundle"
    );
    assert_eq!(mount_paths(agent, "spire-bundle"), ["/run/spire/bundle"]);
    assert_eq!(
        volume(spec, "spire-agent-persistence")["hostPath"]["path"],
        "/var/lib/sigil/agent"
    );
    // The lsm tier: the node's securityfs, read-only, and no AppArmor confinement.
    assert_eq!(
        mount_paths(agent, "host-securityfs"),
        ["/sys/kernel/security"]
    );
    assert_eq!(
        agent["securityContext"]["appArmorProfile"]["type"],
        "Unconfined"
    );
    let sts = r.get("StatefulSet", "spire-server");
    assert_eq!(
        port(
            container(&sts["spec"]["template"]["spec"], "spire-server"),
            "prom"
        ),
        9988
    );
    assert!(sts["spec"]["volumeClaimTemplates"].is_null());
    assert!(volume(&sts["spec"]["template"]["spec"], "spire-data")["emptyDir"].is_object());
    assert_eq!(
        sts["spec"]["template"]["spec"]["imagePullSecrets"],
        json!([{"name": "regcred"}])
    );
    r.get("PodDisruptionBudget", "spire-server");
    let csid = r.get("ClusterSPIFFEID", "spire-server-spire-default");
    assert_eq!(
        csid["spec"]["dnsNameTemplates"],
        json!(["{{ .PodMeta.Name }}.svc"])
    );

    // No eBPF: no capability at all, and no privilege escalation; the agent falls back to
    // pidfd/procfs.
    let r = render(NAMESPACE, &["--set", "spire-agent.attestation.ebpf=false"]);
    let agent = container(
        &r.get("DaemonSet", "spire-agent")["spec"]["template"]["spec"],
        "spire-agent",
    );
    assert!(
        agent["securityContext"]["capabilities"]["add"].is_null(),
        "{agent:#}"
    );
    assert_eq!(agent["securityContext"]["allowPrivilegeEscalation"], false);
    r.configs();
    // ... unless the unix attestor reads executables.
    let r = render(
        NAMESPACE,
        &[
            "--set",
            "spire-agent.attestation.ebpf=false",
            "--set",
            "spire-agent.workloadAttestors.unix.enabled=true",
            "--set",
            "spire-agent.workloadAttestors.unix.discoverWorkloadPath=true",
        ],
    );
    let agent = container(
        &r.get("DaemonSet", "spire-agent")["spec"]["template"]["spec"],
        "spire-agent",
    );
    assert_eq!(
        agent["securityContext"]["capabilities"]["add"],
        json!(["SYS_PTRACE"])
    );

    // The CSI driver is optional.
    let r = render(NAMESPACE, &["--set", "spiffe-csi-driver.enabled=false"]);
    assert!(r.all("CSIDriver").is_empty());
    assert!(!r.has("DaemonSet", "spire-spiffe-csi-driver"));

    // Either switch turns the controller off, with its config, RBAC and identities.
    for flag in [
        "spire-controller-manager.enabled=false",
        "spire-server.controllerManager.enabled=false",
    ] {
        let r = render(NAMESPACE, &["--set", flag]);
        let spec = &r.get("StatefulSet", "spire-server")["spec"]["template"]["spec"];
        assert_eq!(spec["containers"].as_array().unwrap().len(), 1, "{flag}");
        assert!(!r.has("ConfigMap", "spire-controller-manager"), "{flag}");
        assert!(r.all("ClusterSPIFFEID").is_empty(), "{flag}");
        assert!(
            !r.has("ClusterRole", "spire-server-spire-controller-manager"),
            "{flag}"
        );
    }

    // spiffe-oidc-discovery-provider.enabled=true is accepted and deploys nothing (yet).
    let with = render(
        NAMESPACE,
        &["--set", "spiffe-oidc-discovery-provider.enabled=true"],
    );
    let without = render(NAMESPACE, &[]);
    assert_eq!(with.names(), without.names());

    // Sigil's images: registry and tag for all, per-component overrides, the global registry.
    let r = render(
        NAMESPACE,
        &[
            "--set",
            "image.registry=registry.example.com",
            "--set",
            "image.tag=dev",
            "--set",
            "spire-agent.image.tag=agent-dev",
        ],
    );
    let image = |kind: &str, name: &str, ctr: &str| {
        container(&r.get(kind, name)["spec"]["template"]["spec"], ctr)["image"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        image("StatefulSet", "spire-server", "spire-server"),
        "registry.example.com/sigil-id/sigil-server:dev"
    );
    assert_eq!(
        image("StatefulSet", "spire-server", "spire-controller-manager"),
        "registry.example.com/sigil-id/sigil-controller:dev"
    );
    assert_eq!(
        image("DaemonSet", "spire-agent", "spire-agent"),
        "registry.example.com/sigil-id/sigil-agent:agent-dev"
    );
    assert_eq!(
        image("DaemonSet", "spire-spiffe-csi-driver", "spiffe-csi-driver"),
        "ghcr.io/spiffe/spiffe-csi-driver:0.2.7"
    );
    let r = render(
        NAMESPACE,
        &["--set", "global.spire.image.registry=mirror.local"],
    );
    let spec = &r.get("DaemonSet", "spire-spiffe-csi-driver")["spec"]["template"]["spec"];
    assert_eq!(
        container(spec, "spiffe-csi-driver")["image"],
        "mirror.local/spiffe/spiffe-csi-driver:0.2.7"
    );
    // The default tag is the chart's appVersion.
    let chart_yaml: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(workspace_root().join("deploy/helm/sigil/Chart.yaml")).unwrap(),
    )
    .unwrap();
    let r = render(NAMESPACE, &[]);
    let spec = &r.get("StatefulSet", "spire-server")["spec"]["template"]["spec"];
    assert_eq!(
        container(spec, "spire-server")["image"],
        format!(
            "ghcr.io/sigil-id/sigil-server:{}",
            chart_yaml["appVersion"].as_str().unwrap()
        )
    );
}

/// High availability as SPIRE's chart sets it up: several replicas on PostgreSQL, the
/// password from a Secret through `${DBPW}` and `-expandEnv`, each replica with its own volume
/// (its own CA key), TLS to the database with a mounted CA.
#[test]
fn postgres_and_several_replicas() {
    let r = render(
        NAMESPACE,
        &[
            "--set",
            "spire-server.replicaCount=3",
            "--set",
            "spire-server.dataStore.sql.databaseType=postgres",
            "--set",
            "spire-server.dataStore.sql.host=postgres-ha.data.svc.cluster.local",
            "--set",
            "spire-server.dataStore.sql.password=hunter2",
            "--set",
            "spire-server.dataStore.sql.options[0].sslmode=verify-full",
            "--set",
            "spire-server.dataStore.sql.rootCAPath=/run/db/ca.pem",
            "--set",
            "spire-server.dataStore.sql.maxOpenConns=20",
            "--set",
            "spire-server.dataStore.sql.connMaxLifetime=1h",
            "--set-json",
            r#"spire-server.extraVolumes=[{"name":"db-ca","secret":{"secretName":"db-ca"}}]"#,
            "--set-json",
            r#"spire-server.extraVolumeMounts=[{"name":"db-ca","mountPath":"/run/db","readOnly":true}]"#,
        ],
    );
    let sts = r.get("StatefulSet", "spire-server");
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "spire-data"
    );
    let spec = &sts["spec"]["template"]["spec"];
    let server = container(spec, "spire-server");
    assert!(
        server["args"]
            .as_array()
            .unwrap()
            .contains(&json!("-expandEnv")),
        "{server:#}"
    );
    let env = server["env"].as_array().expect("env");
    let dbpw = env.iter().find(|e| e["name"] == "DBPW").expect("DBPW");
    let secret_name = dbpw["valueFrom"]["secretKeyRef"]["name"].as_str().unwrap();
    let secret = r.get("Secret", secret_name);
    assert_eq!(secret["data"]["DBPW"], "aHVudGVyMg==");
    assert_eq!(mount_paths(server, "db-ca"), ["/run/db"]);
    // The config file, expanded as the server does it, parses to these settings.
    let text = r.file("spire-server", "server.conf");
    assert!(
        !text.contains("hunter2"),
        "the password is in the ConfigMap"
    );
    let expanded =
        sigil_config::expand_env_with(&text, |n| (n == "DBPW").then(|| "hunter2".into()));
    let cfg = sigil_server::config::ServerConfig::from_hcl(
        &expanded,
        &sigil_server::config::Overrides::default(),
    )
    .unwrap_or_else(|e| panic!("sigil-server refuses the HA server.conf: {e}\n{text}"));
    let sigil_server::datastore::Config::Postgres { options, pool, .. } = &cfg.datastore else {
        panic!("not postgres: {:?}", cfg.datastore)
    };
    assert_eq!(options.get_host(), "postgres-ha.data.svc.cluster.local");
    assert_eq!(options.get_port(), 5432);
    assert_eq!(options.get_database(), Some("spire"));
    assert_eq!(options.get_username(), "spire");
    assert!(matches!(
        options.get_ssl_mode(),
        sqlx::postgres::PgSslMode::VerifyFull
    ));
    assert_eq!(pool.max_open_conns, Some(20));
    assert_eq!(
        pool.conn_max_lifetime,
        Some(std::time::Duration::from_secs(3600))
    );

    // An existing Secret instead of a password.
    let r = render(
        NAMESPACE,
        &[
            "--set",
            "spire-server.replicaCount=2",
            "--set",
            "spire-server.dataStore.sql.databaseType=postgres",
            "--set",
            "spire-server.dataStore.sql.host=db",
            "--set",
            "spire-server.dataStore.sql.externalSecret.enabled=true",
            "--set",
            "spire-server.dataStore.sql.externalSecret.name=db-creds",
            "--set",
            "spire-server.dataStore.sql.externalSecret.key=pw",
        ],
    );
    assert!(
        r.all("Secret")
            .iter()
            .all(|s| s["metadata"]["name"] != "spire-server-datastore")
    );
    let sts = r.get("StatefulSet", "spire-server");
    let server = container(&sts["spec"]["template"]["spec"], "spire-server");
    let dbpw = server["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "DBPW")
        .unwrap();
    assert_eq!(
        dbpw["valueFrom"]["secretKeyRef"],
        json!({"name": "db-creds", "key": "pw"})
    );
}

#[test]
fn values_sigil_cannot_honour_are_refused() {
    for (flags, message) in [
        (vec!["spire-server.replicaCount=2"], "must be PostgreSQL"),
        (
            vec!["spire-server.dataStore.sql.databaseType=mysql"],
            "value must be one of 'sqlite3', 'postgres'",
        ),
        (
            vec!["spire-server.dataStore.sql.databaseType=postgres"],
            "dataStore.sql.host: required",
        ),
        (
            vec![
                "spire-server.dataStore.sql.databaseType=postgres",
                "spire-server.dataStore.sql.host=db",
                "spire-server.dataStore.sql.externalSecret.enabled=true",
            ],
            "externalSecret: name and key",
        ),
        (
            vec!["spire-agent.trustBundleURL=https://x"],
            "trustBundleURL",
        ),
        (vec!["spire-agent.nosuchkey=1"], "nosuchkey"),
        (vec!["tornjak-frontend.enabled=true"], "tornjak-frontend"),
        (
            vec![
                "spire-agent.attestation.ebpf=false",
                "spire-agent.attestation.tier=lsm",
            ],
            "attestation",
        ),
        (
            vec!["global.spire.strictMode=true"],
            "set global.spire.trustDomain",
        ),
    ] {
        let mut args = Vec::new();
        for f in &flags {
            args.extend(["--set", f]);
        }
        let err = render_fails(&args);
        assert!(err.contains(message), "{flags:?}: {err}");
    }
}

#[test]
fn notes_tell_how_to_check_a_workload_svid() {
    let chart = chart("sigil");
    let notes = |extra: &[&str]| {
        let mut args = vec![
            "install",
            RELEASE,
            chart.as_str(),
            "--namespace",
            NAMESPACE,
            "--dry-run=client",
        ];
        args.extend_from_slice(extra);
        let out = helm(&args).ok().stdout;
        out.split_once("NOTES:")
            .unwrap_or_else(|| panic!("no NOTES in:\n{out}"))
            .1
            .to_string()
    };
    let text = notes(&["--values", &seed_001_values()]);
    for want in [
        "trust domain: foo.com",
        "cluster name: foo-eks-cluster",
        "rollout status statefulset/spire-server",
        "rollout status daemonset/spire-agent",
        "sigil-server entry show -spiffeID spiffe://foo.com/ns/",
        "\"args\": [\"api\", \"fetch\", \"x509\", \"-socketPath\", \"/run/secrets/workload-spiffe-uds/socket\"",
        "\"csi\": {\"driver\": \"csi.spiffe.io\"",
        "configmap spire-bundle",
    ] {
        assert!(text.contains(want), "NOTES lack {want:?}:\n{text}");
    }
    assert!(!text.contains("OIDC"), "{text}");
    let text = notes(&[
        "--set",
        "spiffe-oidc-discovery-provider.enabled=true",
        "--set",
        "spiffe-csi-driver.enabled=false",
    ]);
    assert!(
        text.contains("OIDC discovery is not served by Sigil yet"),
        "{text}"
    );
    assert!(
        text.contains("\"hostPath\": {\"path\": \"/run/spire/agent-sockets\""),
        "{text}"
    );
}

/// The CRDs in both charts are `sigil-controller crds`, byte for byte; rendered, they are the
/// CRDs sigil-controller generates.
#[test]
fn chart_crds_are_sigil_controller_crds() {
    let crds = sigil_controller::crds::crds().expect("the CRDs");
    let yaml = sigil_controller::crds::to_yaml(&crds).expect("the CRDs as YAML");
    for file in [
        "deploy/helm/sigil/crds/spire.spiffe.io_crds.yaml",
        "deploy/helm/sigil-crds/files/crds.yaml",
    ] {
        let text = std::fs::read_to_string(workspace_root().join(file)).unwrap_or_default();
        assert!(
            text == yaml,
            "{file} is not `sigil-controller crds`'s output: regenerate it with `cargo xtask crds`"
        );
    }
    let expected: Vec<Value> = crds
        .iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect();
    // The sigil chart installs them from crds/ (helm install; `--include-crds` for template).
    let rendered = render(NAMESPACE, &[]);
    let ours: Vec<Value> = rendered
        .all("CustomResourceDefinition")
        .into_iter()
        .cloned()
        .collect();
    assert_eq!(ours, expected);
    // sigil-crds renders them as templates, with helm.sh/resource-policy: keep.
    let out = helm(&["template", "spire-crds", &chart("sigil-crds")]).ok();
    let mut theirs = Rendered::parse(out.stdout).docs;
    for crd in &mut theirs {
        let annotations = crd["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("annotations")
            .expect("annotations");
        assert_eq!(annotations, json!({"helm.sh/resource-policy": "keep"}));
    }
    assert_eq!(theirs, expected);
}
