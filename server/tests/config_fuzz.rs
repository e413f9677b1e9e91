//! Fuzz-ish property tests of the server's configuration parser: whatever the file says, the
//! answer is a configuration or an error, never a panic.

#[path = "../../tests/fuzz_support/hcl.rs"]
mod hcl;

use proptest::prelude::*;
use sigil_server::config::{Overrides, ServerConfig};

/// Values that matter to the server's keys, good and bad.
const VALUES: &[&str] = &[
    "example.org",
    "spiffe://example.org",
    "/tmp/sigil-fuzz",
    "1h",
    "0s",
    "999999999999999999999999999999999999999999h9999999999999999999999999999999999999h",
    "0.0.0.0",
    "::1",
    "8081",
    "70000",
    "-1",
    "",
    "sqlite3",
    "postgres",
    "ec-p256",
    "rsa-2048",
    "json",
    "debug",
];

const SERVER_KEYS: &[&str] = &[
    "trust_domain",
    "data_dir",
    "bind_address",
    "bind_port",
    "socket_path",
    "ca_ttl",
    "default_x509_svid_ttl",
    "default_jwt_svid_ttl",
    "agent_ttl",
    "ca_key_type",
    "jwt_issuer",
    "log_level",
    "log_format",
    "unknown_key",
];

/// What every generated `server` block starts with: what a configuration needs, so that
/// the keys after it (which may override it) decide whether it is accepted.
const BASE: &str = "  trust_domain = \"example.org\"\n  data_dir = \"/tmp/sigil-fuzz\"\n";

/// A configuration file shaped like spire-server's, with arbitrary values in places.
fn config_like() -> impl Strategy<Value = String> {
    let value = || hcl::value(VALUES);
    let subject_keys: &[&str] = &["country", "organization", "common_name"];
    let server = (
        hcl::body((prop::sample::select(SERVER_KEYS), value())),
        prop::option::of(hcl::body((prop::sample::select(subject_keys), value()))),
    )
        .prop_map(|(kv, subject)| match subject {
            Some(s) => format!("server {{\n{BASE}{kv}  ca_subject {{\n{s}  }}\n}}\n"),
            None => format!("server {{\n{BASE}{kv}}}\n"),
        });
    let plugins = hcl::plugins(
        &["DataStore", "KeyManager", "NodeAttestor", "X"],
        &["sql", "disk", "memory", "join_token", "y"],
        &["database_type", "connection_string", "keys_path", "other"],
        value(),
    );
    (
        server,
        prop::option::of(plugins),
        prop::option::of(hcl::health_checks(value())),
    )
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

#[test]
fn generated_configurations_are_sometimes_accepted() {
    let n = hcl::accepted(config_like(), 2000, |text| {
        ServerConfig::from_hcl(text, &Overrides::default()).is_ok()
    });
    assert!(n >= 5, "only {n}/2000 accepted");
}

/// libpq connection strings: any text parses or is refused, never a panic; and keyword/value
/// pairs written the way libpq quotes them come back exactly.
mod connection_string {
    use proptest::prelude::*;
    use sigil_server::datastore::parse_connection_string;

    /// libpq's quoting: single quotes around the value, `\` before `'` and `\`.
    fn quote(v: &str) -> String {
        let mut s = String::from("'");
        for c in v.chars() {
            if c == '\'' || c == '\\' {
                s.push('\\');
            }
            s.push(c);
        }
        s.push('\'');
        s
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        #[test]
        fn any_text_parses_or_is_refused(text in any::<String>()) {
            let _ = parse_connection_string(&text);
        }

        #[test]
        fn keyword_like_text_parses_or_is_refused(
            text in r"((host|port|dbname|user|password|sslmode|options|bogus) ?= ?('[^']{0,8}'?|[a-z0-9/=\\ -]{0,8}) ?){0,6}"
        ) {
            let _ = parse_connection_string(&text);
        }

        #[test]
        fn quoted_values_round_trip(
            host in "[a-z][a-z0-9.-]{0,20}",
            db in any::<String>().prop_filter("no NUL", |s| !s.contains('\0')),
            user in any::<String>().prop_filter("no NUL", |s| !s.contains('\0')),
            port in 1u16..,
        ) {
            let s = format!("host={host} port = {port} dbname={} user = {}", quote(&db), quote(&user));
            let o = parse_connection_string(&s).map_err(|e| TestCaseError::fail(format!("{s}: {e}")))?;
            prop_assert_eq!(o.get_host(), host.as_str());
            prop_assert_eq!(o.get_port(), port);
            prop_assert_eq!(o.get_database(), Some(db.as_str()));
            prop_assert_eq!(o.get_username(), user.as_str());
        }
    }
}
