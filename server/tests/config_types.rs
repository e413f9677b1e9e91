//! A value of the wrong type in server.conf is refused with the key named, never read as
//! something else: the same verdict as the agent's (both walk the file with `sigil_config`).

use sigil_server::config::{Overrides, ServerConfig};

const BASE: &str = "server {\n trust_domain = \"example.org\"\n data_dir = \"/tmp/sigil\"\n}\n";

fn refused(text: &str) -> String {
    match ServerConfig::from_hcl(text, &Overrides::default()) {
        Ok(c) => panic!("{text:?} was accepted: {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn accepted(text: &str) {
    if let Err(e) = ServerConfig::from_hcl(text, &Overrides::default()) {
        panic!("{text:?} was refused: {e}");
    }
}

#[test]
fn a_misspelt_boolean_is_not_false() {
    let err = refused(&format!(
        "{BASE}health_checks {{\n listener_enabled = \"treu\"\n}}\n"
    ));
    assert_eq!(
        err,
        "invalid value for listener_enabled: expected true or false"
    );
}

#[test]
fn a_value_where_a_block_belongs_is_not_an_empty_block() {
    let cases = [
        ("server = \"x\"\n".to_string(), "server"),
        (format!("{BASE}plugins = \"x\"\n"), "plugins"),
        (format!("{BASE}health_checks = true\n"), "health_checks"),
        (
            format!("{BASE}plugins {{\n KeyManager = [\"disk\"]\n}}\n"),
            "KeyManager",
        ),
        (
            format!("{BASE}plugins {{\n KeyManager \"disk\" {{\n plugin_data = \"x\"\n }}\n}}\n"),
            "plugin_data",
        ),
        (
            "server {\n trust_domain = \"example.org\"\n data_dir = \"/x\"\n ca_subject = \"CN=x\"\n}\n"
                .to_string(),
            "ca_subject",
        ),
    ];
    for (text, key) in cases {
        assert_eq!(
            refused(&text),
            format!("invalid value for {key}: expected a block"),
            "{text:?}"
        );
    }
}

/// `health_checks` is read and checked one way for both binaries: a bad value is refused even
/// in a disabled block, and a host name is a valid address (SPIRE's default is `localhost`).
#[test]
fn health_checks_get_the_same_verdict_as_the_other_binary() {
    for bad in [
        "bind_port = \"http\"",
        "live_path = \"live\"",
        "bind_address = \"\"",
    ] {
        let err = refused(&format!(
            "{BASE}health_checks {{\n listener_enabled = false\n {bad}\n}}\n"
        ));
        assert!(err.contains("invalid value for"), "{bad}: {err}");
    }
    accepted(&format!(
        "{BASE}health_checks {{\n listener_enabled = true\n bind_address = \"localhost\"\n bind_port = \"8080\"\n}}\n"
    ));
}
