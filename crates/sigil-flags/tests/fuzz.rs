//! Fuzz-ish property tests: the flag and duration parsers take operator input (command lines,
//! config files) and must answer every input with a value or an error, never a panic.

use proptest::prelude::*;
use sigil_flags::{FlagSet, parse_duration_secs};

/// Duration-shaped text: numbers (some far too long for any integer), dots and units.
fn duration_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[0-9]{1,45}",
        "[0-9]{0,3}\\.[0-9]{0,3}",
        Just(".".to_owned()),
        prop_oneof![
            Just("ms"),
            Just("s"),
            Just("m"),
            Just("h"),
            Just("d"),
            Just("x"),
            Just(" "),
        ]
        .prop_map(str::to_owned),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn durations_parse_or_fail(s in prop_oneof![any::<String>(), duration_like()]) {
        let _ = parse_duration_secs(&s);
    }

    /// Whole seconds, minutes and hours come back as what they say.
    #[test]
    fn durations_round_trip(n in 0u64..1 << 40) {
        prop_assert_eq!(parse_duration_secs(&n.to_string()), Ok(n));
        prop_assert_eq!(parse_duration_secs(&format!("{n}s")), Ok(n));
        prop_assert_eq!(parse_duration_secs(&format!("{n}m")), Ok(n * 60));
        prop_assert_eq!(parse_duration_secs(&format!("{n}h30m")), Ok(n * 3600 + 1800));
    }

    #[test]
    fn command_lines_parse_or_fail(args in prop::collection::vec(
        prop_oneof![
            any::<String>(),
            "-{1,2}(spiffeID|selector|admin|x)(=[a-z:0-9]{0,6})?",
            "[a-z:/0-9]{0,8}",
        ],
        0..8,
    )) {
        let set = FlagSet::new()
            .value("spiffeID", "id")
            .multi("selector", "selectors")
            .bool("admin", "admin");
        let _ = set.parse(args);
    }
}

/// Durations too large for the counter are refused (they once overflowed while summing).
#[test]
fn huge_durations_are_refused() {
    let nines = "9".repeat(45);
    assert!(parse_duration_secs(&format!("{nines}h{nines}h")).is_err());
    assert!(parse_duration_secs(&format!("{nines}d")).is_err());
}
