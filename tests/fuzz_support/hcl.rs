//! Spire-style HCL configuration text built from proptest strategies, shared by the server's
//! and the agent's configuration fuzz tests (each includes this file by path: they are in
//! different crates, and this is too small for a crate of its own).

use proptest::prelude::*;

/// An HCL string literal (JSON escaping is a subset of HCL's).
pub fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// Values, good and bad, for any key: mostly `specific` (the values that matter to the parser
/// under test), then arbitrary strings, numbers, booleans, lists and a block.
pub fn value(specific: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(specific).prop_map(quoted),
        1 => any::<String>().prop_map(|s| quoted(&s)),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<bool>().prop_map(|b| b.to_string()),
        1 => prop::collection::vec("[a-zA-Z. ]{0,6}", 0..3)
            .prop_map(|v| format!("[{}]", v.iter().map(|s| quoted(s)).collect::<Vec<_>>().join(", "))),
        1 => Just("{ x = 1 }".to_owned()),
    ]
}

/// Up to three `key = value` lines.
pub fn body(pairs: impl Strategy<Value = (&'static str, String)>) -> impl Strategy<Value = String> {
    prop::collection::vec(pairs, 0..4).prop_map(|kv| {
        kv.into_iter()
            .map(|(k, v)| format!("  {k} = {v}\n"))
            .collect()
    })
}

/// A `plugins` block of up to two `Kind "name" { plugin_data { ... } }` entries.
pub fn plugins(
    kinds: &'static [&'static str],
    names: &'static [&'static str],
    keys: &'static [&'static str],
    values: impl Strategy<Value = String> + 'static,
) -> impl Strategy<Value = String> {
    let plugin = (
        prop::sample::select(kinds),
        prop::sample::select(names),
        body((prop::sample::select(keys), values)),
    )
        .prop_map(|(kind, name, data)| {
            format!("  {kind} \"{name}\" {{\n    plugin_data {{\n{data}    }}\n  }}\n")
        });
    prop::collection::vec(plugin, 0..3).prop_map(|p| format!("plugins {{\n{}}}\n", p.concat()))
}

/// A `health_checks` block.
pub fn health_checks(
    values: impl Strategy<Value = String> + 'static,
) -> impl Strategy<Value = String> {
    const KEYS: &[&str] = &[
        "listener_enabled",
        "bind_address",
        "bind_port",
        "live_path",
        "ready_path",
    ];
    body((prop::sample::select(KEYS), values)).prop_map(|kv| format!("health_checks {{\n{kv}}}\n"))
}

/// How many of the first `n` texts the deterministic runner draws from `strategy` are
/// accepted: the generators must reach accepted configurations, or the properties would only
/// ever exercise the early errors.
pub fn accepted(
    strategy: impl Strategy<Value = String>,
    n: usize,
    accept: impl Fn(&str) -> bool,
) -> usize {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    (0..n)
        .filter(|_| {
            // Invariant: these strategies never reject a value, so new_tree cannot fail.
            let text = strategy.new_tree(&mut runner).unwrap().current();
            accept(&text)
        })
        .count()
}
