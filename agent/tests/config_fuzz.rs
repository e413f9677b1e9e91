//! Fuzz-ish property tests of the agent's configuration parser: whatever the file says, the
//! answer is a configuration or an error, never a panic.

use proptest::prelude::*;
use sigil_agent::Config;

/// An HCL string literal (JSON escaping is a subset of HCL's).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// Values, good and bad, for any key.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop_oneof![
            Just("example.org"),
            Just("spiffe://example.org"),
            Just("127.0.0.1"),
            Just("[::1]"),
            Just("sigil-server.sigil.svc"),
            Just("8081"),
            Just("70000"),
            Just("-1"),
            Just(""),
            Just("/tmp/sigil-fuzz"),
            Just("unix:///tmp/sigil-fuzz/agent.sock"),
            Just("tp_btf"),
            Just("pidfd"),
            Just("procfs"),
            Just("debug"),
            Just("json"),
            Just("99999999999999999999999"),
            Just("default"),
            Just("ROOTCA"),
        ]
        .prop_map(quoted),
        1 => any::<String>().prop_map(|s| quoted(&s)),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<bool>().prop_map(|b| b.to_string()),
        1 => prop::collection::vec("[a-zA-Z. ]{0,6}", 0..3)
            .prop_map(|v| format!("[{}]", v.iter().map(|s| quoted(s)).collect::<Vec<_>>().join(", "))),
        1 => Just("{ x = 1 }".to_owned()),
    ]
}

fn body(pairs: impl Strategy<Value = (&'static str, String)>) -> impl Strategy<Value = String> {
    prop::collection::vec(pairs, 0..4).prop_map(|kv| {
        kv.into_iter()
            .map(|(k, v)| format!("  {k} = {v}\n"))
            .collect()
    })
}

/// What every generated `agent` block starts with: what a configuration needs, so that the
/// keys after it (which may override it) decide whether it is accepted.
const BASE: &str = "  trust_domain = \"example.org\"\n  server_address = \"127.0.0.1\"\n";

/// A configuration file shaped like spire-agent's, with arbitrary values in places.
fn config_like() -> impl Strategy<Value = String> {
    let agent_key = prop_oneof![
        Just("data_dir"),
        Just("server_address"),
        Just("server_port"),
        Just("socket_path"),
        Just("trust_domain"),
        Just("trust_bundle_path"),
        Just("join_token"),
        Just("log_level"),
        Just("log_format"),
        Just("insecure_bootstrap"),
        Just("unknown_key"),
    ];
    let sds_key = prop_oneof![
        Just("default_svid_name"),
        Just("default_bundle_name"),
        Just("default_all_bundles_name"),
        Just("disable_spiffe_cert_validation"),
        Just("other"),
    ];
    let agent = (
        body((agent_key, value())),
        prop::option::of(body((sds_key, value()))),
    )
        .prop_map(|(kv, sds)| match sds {
            Some(s) => format!("agent {{\n{BASE}{kv}  sds {{\n{s}  }}\n}}\n"),
            None => format!("agent {{\n{BASE}{kv}}}\n"),
        });
    let plugin = (
        prop_oneof![
            Just("NodeAttestor"),
            Just("KeyManager"),
            Just("WorkloadAttestor"),
            Just("X")
        ],
        prop_oneof![
            Just("join_token"),
            Just("disk"),
            Just("memory"),
            Just("unix"),
            Just("k8s")
        ],
        body((
            prop_oneof![
                Just("directory"),
                Just("discover_workload_path"),
                Just("workload_size_limit"),
                Just("attestation_tier"),
                Just("other"),
            ],
            value(),
        )),
    )
        .prop_map(|(kind, name, data)| {
            format!("  {kind} \"{name}\" {{\n    plugin_data {{\n{data}    }}\n  }}\n")
        });
    let plugins =
        prop::collection::vec(plugin, 0..3).prop_map(|p| format!("plugins {{\n{}}}\n", p.concat()));
    let health = body((
        prop_oneof![
            Just("listener_enabled"),
            Just("bind_address"),
            Just("bind_port"),
            Just("live_path"),
            Just("ready_path"),
        ],
        value(),
    ))
    .prop_map(|kv| format!("health_checks {{\n{kv}}}\n"));
    (agent, prop::option::of(plugins), prop::option::of(health))
        .prop_map(|(a, p, h)| format!("{a}{}{}", p.unwrap_or_default(), h.unwrap_or_default()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn any_text_is_configured_or_refused(text in any::<String>()) {
        let _ = Config::from_hcl(&text);
    }

    #[test]
    fn config_like_text_is_configured_or_refused(text in config_like()) {
        let _ = Config::from_hcl(&text);
    }
}

/// The generator must reach configurations that are accepted, or the property above would
/// only ever exercise the early errors.
#[test]
fn generated_configurations_are_sometimes_accepted() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = config_like();
    let accepted = (0..2000)
        .filter(|_| {
            // Invariant: these strategies never reject a value, so new_tree cannot fail.
            let text = strategy.new_tree(&mut runner).unwrap().current();
            Config::from_hcl(&text).is_ok()
        })
        .count();
    assert!(accepted >= 5, "only {accepted}/2000 accepted");
}
