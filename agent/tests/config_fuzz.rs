//! Fuzz-ish property tests of the agent's configuration parser: whatever the file says, the
//! answer is a configuration or an error, never a panic.

#[path = "../../tests/fuzz_support/hcl.rs"]
mod hcl;

use proptest::prelude::*;
use sigil_agent::Config;

/// Values that matter to the agent's keys, good and bad.
const VALUES: &[&str] = &[
    "example.org",
    "spiffe://example.org",
    "127.0.0.1",
    "[::1]",
    "sigil-server.sigil.svc",
    "8081",
    "70000",
    "-1",
    "",
    "/tmp/sigil-fuzz",
    "unix:///tmp/sigil-fuzz/agent.sock",
    "tp_btf",
    "pidfd",
    "procfs",
    "debug",
    "json",
    "99999999999999999999999",
    "default",
    "ROOTCA",
];

const AGENT_KEYS: &[&str] = &[
    "data_dir",
    "server_address",
    "server_port",
    "socket_path",
    "trust_domain",
    "trust_bundle_path",
    "join_token",
    "log_level",
    "log_format",
    "insecure_bootstrap",
    "unknown_key",
];

const SDS_KEYS: &[&str] = &[
    "default_svid_name",
    "default_bundle_name",
    "default_all_bundles_name",
    "disable_spiffe_cert_validation",
    "other",
];

/// What every generated `agent` block starts with: what a configuration needs, so that the
/// keys after it (which may override it) decide whether it is accepted.
const BASE: &str = "  trust_domain = \"example.org\"\n  server_address = \"127.0.0.1\"\n";

/// A configuration file shaped like spire-agent's, with arbitrary values in places.
fn config_like() -> impl Strategy<Value = String> {
    let value = || hcl::value(VALUES);
    let agent = (
        hcl::body((prop::sample::select(AGENT_KEYS), value())),
        prop::option::of(hcl::body((prop::sample::select(SDS_KEYS), value()))),
    )
        .prop_map(|(kv, sds)| match sds {
            Some(s) => format!("agent {{\n{BASE}{kv}  sds {{\n{s}  }}\n}}\n"),
            None => format!("agent {{\n{BASE}{kv}}}\n"),
        });
    let plugins = hcl::plugins(
        &["NodeAttestor", "KeyManager", "WorkloadAttestor", "X"],
        &["join_token", "disk", "memory", "unix", "k8s"],
        &[
            "directory",
            "discover_workload_path",
            "workload_size_limit",
            "attestation_tier",
            "other",
        ],
        value(),
    );
    (
        agent,
        prop::option::of(plugins),
        prop::option::of(hcl::health_checks(value())),
    )
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

#[test]
fn generated_configurations_are_sometimes_accepted() {
    let n = hcl::accepted(config_like(), 2000, |text| Config::from_hcl(text).is_ok());
    assert!(n >= 5, "only {n}/2000 accepted");
}
