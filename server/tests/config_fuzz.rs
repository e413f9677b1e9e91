//! Fuzz-ish property tests of the server's configuration parser: whatever the file says, the
//! answer is a configuration or an error, never a panic.

use proptest::prelude::*;
use sigil_server::config::{Overrides, ServerConfig};

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
            Just("/tmp/sigil-fuzz"),
            Just("1h"),
            Just("0s"),
            Just("999999999999999999999999999999999999999999h9999999999999999999999999999999999999h"),
            Just("0.0.0.0"),
            Just("::1"),
            Just("8081"),
            Just("70000"),
            Just("-1"),
            Just(""),
            Just("sqlite3"),
            Just("postgres"),
            Just("ec-p256"),
            Just("rsa-2048"),
            Just("json"),
            Just("debug"),
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

fn key() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("trust_domain"),
        Just("data_dir"),
        Just("bind_address"),
        Just("bind_port"),
        Just("socket_path"),
        Just("ca_ttl"),
        Just("default_x509_svid_ttl"),
        Just("default_jwt_svid_ttl"),
        Just("agent_ttl"),
        Just("ca_key_type"),
        Just("jwt_issuer"),
        Just("log_level"),
        Just("log_format"),
        Just("unknown_key"),
    ]
}

/// What every generated `server` block starts with: what a configuration needs, so that
/// the keys after it (which may override it) decide whether it is accepted.
const BASE: &str = "  trust_domain = \"example.org\"\n  data_dir = \"/tmp/sigil-fuzz\"\n";

fn body(pairs: impl Strategy<Value = (&'static str, String)>) -> impl Strategy<Value = String> {
    prop::collection::vec(pairs, 0..4).prop_map(|kv| {
        kv.into_iter()
            .map(|(k, v)| format!("  {k} = {v}\n"))
            .collect()
    })
}

/// A configuration file shaped like spire-server's, with arbitrary values in places.
fn config_like() -> impl Strategy<Value = String> {
    let server = (
        body((key(), value())),
        prop::option::of(body((
            prop_oneof![Just("country"), Just("organization"), Just("common_name")],
            value(),
        ))),
    )
        .prop_map(|(kv, subject)| match subject {
            Some(s) => format!("server {{\n{BASE}{kv}  ca_subject {{\n{s}  }}\n}}\n"),
            None => format!("server {{\n{BASE}{kv}}}\n"),
        });
    let plugin = (
        prop_oneof![
            Just("DataStore"),
            Just("KeyManager"),
            Just("NodeAttestor"),
            Just("X")
        ],
        prop_oneof![
            Just("sql"),
            Just("disk"),
            Just("memory"),
            Just("join_token"),
            Just("y")
        ],
        body((
            prop_oneof![
                Just("database_type"),
                Just("connection_string"),
                Just("keys_path"),
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
    (server, prop::option::of(plugins), prop::option::of(health))
        .prop_map(|(s, p, h)| format!("{s}{}{}", p.unwrap_or_default(), h.unwrap_or_default()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn any_text_is_configured_or_refused(text in any::<String>()) {
        let _ = ServerConfig::from_hcl(&text, &Overrides::default());
    }

    #[test]
    fn config_like_text_is_configured_or_refused(text in config_like()) {
        let _ = ServerConfig::from_hcl(&text, &Overrides::default());
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
            ServerConfig::from_hcl(&text, &Overrides::default()).is_ok()
        })
        .count();
    assert!(accepted >= 5, "only {accepted}/2000 accepted");
}
