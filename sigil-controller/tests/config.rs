//! spire-controller-manager's own config-loader cases (`testdata/scm-config.json`): the file
//! over an initial config, the manager options derived from it, env expansion, the errors;
//! then the cluster domain from a CNAME and the ignore-namespace expressions.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use sigil_controller::config::{
    ConfigError, ControllerManagerConfig, NamespaceCache, cluster_domain_from_cname,
};

fn vectors() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/scm-config.json");
    serde_json::from_str(&std::fs::read_to_string(&p).expect("testdata")).expect("json")
}

/// The case's `initial_config` (upstream pre-populates the struct before loading).
fn initial(case: &Value) -> ControllerManagerConfig {
    let i = &case["initial_config"];
    let mut c = ControllerManagerConfig {
        ignore_namespaces: Vec::new(),
        gc_interval: Duration::ZERO,
        log_level: String::new(),
        log_encoding: String::new(),
        ..Default::default()
    };
    if let Some(ns) = i["ignoreNamespaces"].as_array() {
        c.ignore_namespaces = ns.iter().map(|n| n.as_str().unwrap().to_string()).collect();
    }
    if let Some(ns) = i["gcInterval_ns"].as_u64() {
        c.gc_interval = Duration::from_nanos(ns);
    }
    if let Some(w) = i["validatingWebhookConfigurationName"].as_str() {
        c.validating_webhook_configuration_name = w.into();
    }
    c
}

fn selectors(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn spire_controller_manager_loader_cases() {
    let v = vectors();
    let cases = v["controller_manager_config_loader_cases"]["cases"]
        .as_array()
        .expect("cases");
    let dir = tempfile::tempdir().expect("tempdir");
    for (n, case) in cases.iter().enumerate() {
        let name = case["name"].as_str().unwrap();
        let path = match case["file_yaml"].as_str() {
            Some(text) => {
                let p = dir.path().join(format!("config-{n}.yaml"));
                std::fs::write(&p, text).unwrap();
                p
            }
            None => PathBuf::from(case["path"].as_str().unwrap()),
        };
        let env: BTreeMap<String, String> = case["env"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let expand = case["expand_env"].as_bool().unwrap_or(false);
        let loaded = initial(case).load_into(&path, expand, |k| env.get(k).cloned());
        let expect = &case["expect"];
        if let Some(msg) = expect["error_exact"].as_str() {
            let err = loaded.expect_err(name);
            assert_eq!(err.to_string(), msg, "{name}");
            continue;
        }
        let loaded = loaded.unwrap_or_else(|e| panic!("{name}: {e}"));
        let c = &loaded.config;
        if let Some(want) = expect["config_exact"].as_object() {
            assert_eq!(c.cluster_name, want["clusterName"], "{name}");
            assert_eq!(c.trust_domain, want["trustDomain"], "{name}");
            let ns: Vec<Value> = c
                .ignore_namespaces
                .iter()
                .map(|s| s.as_str().into())
                .collect();
            assert_eq!(
                Value::from(ns),
                want["ignoreNamespaces"],
                "{name}: replaced, not merged"
            );
            assert_eq!(
                c.validating_webhook_configuration_name, want["validatingWebhookConfigurationName"],
                "{name}"
            );
            assert_eq!(
                c.gc_interval.as_nanos() as u64,
                want["gcInterval_ns"].as_u64().unwrap(),
                "{name}: kept from the initial config"
            );
            let le = c.leader_election.as_ref().expect("leaderElection");
            assert_eq!(
                le.leader_elect,
                want["leaderElection"]["leaderElect"].as_bool()
            );
            assert_eq!(le.resource_name, want["leaderElection"]["resourceName"]);
            assert_eq!(
                le.resource_namespace,
                want["leaderElection"]["resourceNamespace"]
            );
            assert_eq!(c.metrics_bind_address, want["metrics"]["bindAddress"]);
            assert_eq!(
                c.health.health_probe_bind_address,
                want["health"]["healthProbeBindAddress"]
            );
            // Every other field is the zero value (whole-struct equality upstream).
            assert_eq!(c.cluster_domain, "", "{name}");
            assert!(c.class_name.is_empty() && c.parent_id_template.is_empty());
            assert!(c.reconcile.is_none() && c.cache_namespaces.is_empty());
        }
        if let Some(want) = expect["manager_options"].as_object() {
            let o = &loaded.options;
            assert_eq!(o.leader_election_namespace, want["leaderElectionNamespace"]);
            assert_eq!(o.leader_election_id, want["leaderElectionID"]);
            assert_eq!(o.metrics_bind_address, want["metrics.bindAddress"]);
            assert!(o.leader_election);
        }
        if let Some(want) = expect["config_fields"].as_object() {
            assert_eq!(c.trust_domain, want["trustDomain"], "{name}");
        }
        if let Some(want) = expect.get("default_namespaces") {
            let got = loaded.options.default_namespaces.as_ref();
            match want.as_object() {
                None => assert!(got.is_none(), "{name}: {got:?}"),
                Some(want) => {
                    let want: BTreeMap<String, NamespaceCache> = want
                        .iter()
                        .map(|(ns, c)| {
                            (
                                ns.clone(),
                                NamespaceCache {
                                    label_selectors: selectors(&c["labelSelector"]),
                                    field_selectors: selectors(&c["fieldSelector"]),
                                },
                            )
                        })
                        .collect();
                    assert_eq!(got, Some(&want), "{name}");
                }
            }
        }
    }
}

#[test]
fn defaults_unsupported_keys_and_bad_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |text: &str| {
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, text).unwrap();
        p
    };
    let head = "apiVersion: spire.spiffe.io/v1alpha1\nkind: ControllerManagerConfig\n";
    // Upstream's defaults fill what the file leaves out.
    let l = ControllerManagerConfig::load(&write(&format!("{head}trustDomain: td\n")), false)
        .expect("minimal file");
    assert_eq!(l.config.gc_interval, Duration::from_secs(10));
    assert_eq!(l.config.spire_server_socket_path, "/spire-server/api.sock");
    assert_eq!(
        l.config.ignore_namespaces,
        ["kube-system", "kube-public", "spire-system"]
    );
    let r = l.config.reconcile();
    assert!(r.cluster_spiffeids && r.cluster_static_entries && r.cluster_federated_trust_domains);
    assert!(l.not_used.is_empty());
    // Every key of the file is read; the ones Sigil has no use for are reported, not fatal.
    let l = ControllerManagerConfig::load(
        &write(&format!(
            "{head}gcInterval: 30s\nclassName: cls\nwatchClassless: true\nentryIDPrefix: pfx\nparentIDTemplate: \"spiffe://x/{{{{ .NodeMeta.UID }}}}\"\nreconcile:\n  clusterSPIFFEIDs: true\nwebhook:\n  port: 9443\ngrpc: {{}}\nsyncPeriod: 1h\ntypoKey: 1\n"
        )),
        false,
    )
    .expect("a full file");
    assert_eq!(l.config.gc_interval, Duration::from_secs(30));
    assert_eq!(
        (l.config.class_name.as_str(), l.config.watch_classless),
        ("cls", true)
    );
    assert_eq!(l.config.entry_id_prefix, "pfx");
    assert_eq!(
        l.config.parent_id_template,
        "spiffe://x/{{ .NodeMeta.UID }}"
    );
    let r = l.config.reconcile();
    assert!(r.cluster_spiffeids && !r.cluster_static_entries);
    assert_eq!(l.not_used, ["grpc", "syncPeriod", "typoKey", "webhook"]);
    // Upstream's integer nanoseconds work too.
    let l =
        ControllerManagerConfig::load(&write(&format!("{head}gcInterval: 5000000000\n")), false)
            .unwrap();
    assert_eq!(l.config.gc_interval, Duration::from_secs(5));
    // Wrong kind, wrong types, a bad regular expression: clear errors.
    let err = ControllerManagerConfig::load(&write("apiVersion: v1\nkind: ConfigMap\n"), false)
        .unwrap_err();
    assert!(matches!(err, ConfigError::Decode(_)), "{err}");
    let err = ControllerManagerConfig::load(&write(&format!("{head}gcInterval: soon\n")), false)
        .unwrap_err();
    assert!(err.to_string().contains("gcInterval"), "{err}");
    let err =
        ControllerManagerConfig::load(&write(&format!("{head}ignoreNamespaces: kube\n")), false)
            .unwrap_err();
    assert!(err.to_string().contains("ignoreNamespaces"), "{err}");
    let l = ControllerManagerConfig::load(
        &write(&format!("{head}ignoreNamespaces:\n  - \"(unclosed\"\n")),
        false,
    )
    .unwrap();
    let err = l.config.ignore_namespaces().unwrap_err();
    assert!(
        err.to_string()
            .starts_with("unable to compile ignore namespaces regex"),
        "{err}"
    );
}

#[test]
fn cluster_domain_and_ignored_namespaces() {
    let v = vectors();
    for case in v["cluster_domain_cname_cases"]["cases"].as_array().unwrap() {
        let got = cluster_domain_from_cname(case["cname"].as_str().unwrap());
        match case["expect"]["cluster_domain"].as_str() {
            Some(d) => assert_eq!(got.as_deref(), Ok(d), "{}", case["name"]),
            None => assert_eq!(
                got.unwrap_err(),
                case["expect"]["error_exact"].as_str().unwrap(),
                "{}",
                case["name"]
            ),
        }
    }
    let ign = &v["ignore_namespace_cases"];
    let config = ControllerManagerConfig {
        ignore_namespaces: ign["ignore_patterns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect(),
        ..Default::default()
    };
    let compiled = config.ignore_namespaces().unwrap();
    for case in ign["cases"].as_array().unwrap() {
        let ns = case["namespace"].as_str().unwrap();
        assert_eq!(
            compiled.is_ignored(ns),
            case["expect_ignored"].as_bool().unwrap(),
            "{ns}"
        );
    }
}
