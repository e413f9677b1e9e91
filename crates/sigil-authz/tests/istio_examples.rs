//! Table tests: the examples of Istio's AuthorizationPolicy reference and security tasks
//! (as JSON specs), each with requests and the decision Istio documents for them.

use serde_json::{Value, json};
use sigil_authz::{ConfigError, Connection, DecidedBy, Engine, PeerError, Protocol, StaticRequest};

const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const TEST_NS: &str = "spiffe://cluster.local/ns/test/sa/anything";
const FOO_NS: &str = "spiffe://cluster.local/ns/foo/sa/app";
const OTHER: &str = "spiffe://cluster.local/ns/bar/sa/other";

fn engine_with(config: Value, protocol: Protocol) -> Engine {
    Engine::from_json(config.to_string().as_bytes(), protocol)
        .unwrap_or_else(|e| panic!("config rejected: {e}\n{config:#}"))
}

fn policies(specs: &[(&str, Value)]) -> Value {
    json!({"policies": specs.iter().map(|(name, spec)| json!({
        "name": name, "namespace": "foo", "spec": spec
    })).collect::<Vec<_>>()})
}

fn peer(id: &str) -> Connection<'_> {
    Connection {
        mtls: true,
        uri_san: Some(id),
    }
}

/// One case: a peer, a request, the expected decision.
struct Case {
    peer: &'static str,
    req: StaticRequest,
    allowed: bool,
}

fn case(peer: &'static str, req: StaticRequest, allowed: bool) -> Case {
    Case { peer, req, allowed }
}

fn check(name: &str, config: Value, cases: Vec<Case>) {
    let e = engine_with(config, Protocol::Http);
    for (i, mut c) in cases.into_iter().enumerate() {
        let ev = e.authorize(&peer(c.peer), &mut c.req);
        assert_eq!(
            ev.verdict.allowed, c.allowed,
            "{name} case {i}: peer {} {:?} {:?} -> {:?}",
            c.peer, c.req.method, c.req.path, ev.verdict
        );
    }
}

#[test]
fn reference_allow_example_without_jwt_condition() {
    // The reference's first example, minus its `request.auth.claims` condition.
    let spec = json!({
        "action": "ALLOW",
        "rules": [{
            "from": [
                {"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}},
                {"source": {"namespaces": ["test"]}}
            ],
            "to": [
                {"operation": {"methods": ["GET"], "paths": ["/info*"]}},
                {"operation": {"methods": ["POST"], "paths": ["/data"]}}
            ]
        }]
    });
    check(
        "httpbin",
        policies(&[("httpbin", spec)]),
        vec![
            case(SLEEP, StaticRequest::get("/info"), true),
            case(SLEEP, StaticRequest::get("/info/x?y=1"), true),
            case(TEST_NS, StaticRequest::new("POST", "/data"), true),
            case(TEST_NS, StaticRequest::new("POST", "/data?x"), true),
            case(SLEEP, StaticRequest::new("POST", "/info"), false),
            case(SLEEP, StaticRequest::get("/data"), false),
            case(OTHER, StaticRequest::get("/info"), false),
        ],
    );
}

#[test]
fn reference_example_with_jwt_condition_is_rejected() {
    let spec = json!({
        "rules": [{
            "from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}}],
            "when": [{"key": "request.auth.claims[iss]", "values": ["https://accounts.google.com"]}]
        }]
    });
    let err = Engine::from_json(
        policies(&[("httpbin", spec)]).to_string().as_bytes(),
        Protocol::Http,
    )
    .unwrap_err();
    assert!(matches!(err, ConfigError::Unsupported { .. }), "{err}");
    assert!(
        err.to_string().contains("request.auth.claims[iss]"),
        "{err}"
    );
}

#[test]
fn reference_deny_not_namespaces() {
    check(
        "deny",
        policies(&[(
            "httpbin",
            json!({"action": "DENY", "rules": [{"from": [{"source": {"notNamespaces": ["foo"]}}]}]}),
        )]),
        vec![
            case(FOO_NS, StaticRequest::get("/"), true),
            case(SLEEP, StaticRequest::get("/"), false),
        ],
    );
}

#[test]
fn reference_deny_admin_path_from_other_namespaces() {
    check(
        "deny-admin",
        policies(&[(
            "httpbin",
            json!({"action": "DENY", "rules": [{
                "from": [{"source": {"notNamespaces": ["foo"]}}],
                "to": [{"operation": {"paths": ["/admin"]}}]
            }]}),
        )]),
        vec![
            case(SLEEP, StaticRequest::get("/admin"), false),
            case(SLEEP, StaticRequest::get("/admin?debug=1"), false),
            case(SLEEP, StaticRequest::get("/public"), true),
            case(FOO_NS, StaticRequest::get("/admin"), true),
        ],
    );
}

#[test]
fn reference_allow_nothing_deny_all_allow_all() {
    // `spec: {}`: an ALLOW policy without rules allows nothing.
    check(
        "allow-nothing",
        policies(&[("allow-nothing", json!({}))]),
        vec![
            case(SLEEP, StaticRequest::get("/"), false),
            case(FOO_NS, StaticRequest::new("POST", "/x"), false),
        ],
    );
    check(
        "deny-all",
        policies(&[("deny-all", json!({"action": "DENY", "rules": [{}]}))]),
        vec![case(SLEEP, StaticRequest::get("/"), false)],
    );
    check(
        "allow-all",
        policies(&[("allow-all", json!({"action": "ALLOW", "rules": [{}]}))]),
        vec![case(SLEEP, StaticRequest::get("/"), true)],
    );
    // A DENY policy without rules never matches.
    check(
        "deny-without-rules",
        policies(&[("deny-none", json!({"action": "DENY"}))]),
        vec![case(SLEEP, StaticRequest::get("/"), true)],
    );
    // With no policy at all, everything authenticated is allowed.
    check(
        "none",
        json!({}),
        vec![case(SLEEP, StaticRequest::get("/"), true)],
    );
}

#[test]
fn deny_wins_over_allow() {
    // The "allow-all + deny" layering of Istio's task: the DENY is evaluated first.
    let cfg = policies(&[
        ("allow-all", json!({"rules": [{}]})),
        (
            "deny-delete",
            json!({"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["DELETE"]}}]}]}),
        ),
    ]);
    let e = engine_with(cfg, Protocol::Http);
    let ev = e.authorize(&peer(SLEEP), &mut StaticRequest::new("DELETE", "/x"));
    assert!(!ev.verdict.allowed);
    assert_eq!(ev.verdict.decided_by, DecidedBy::Policy(1));
    let ev = e.authorize(&peer(SLEEP), &mut StaticRequest::get("/x"));
    assert_eq!(ev.verdict.decided_by, DecidedBy::Policy(0));
}

#[test]
fn principal_patterns() {
    // Istio's integration test data: exact, prefix and suffix principals.
    check(
        "principals",
        policies(&[(
            "p",
            json!({"rules": [{"from": [{"source": {"principals": [
                "cluster.local/ns/default/sa/bookinfo-product*",
                "*/ns/test/sa/anything",
                "spiffe://cluster.local/ns/foo/sa/app"
            ]}}]}]}),
        )]),
        vec![
            case(
                "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
                StaticRequest::get("/"),
                true,
            ),
            case(TEST_NS, StaticRequest::get("/"), true),
            case(
                "spiffe://other.domain/ns/test/sa/anything",
                StaticRequest::get("/"),
                true,
            ),
            case(FOO_NS, StaticRequest::get("/"), true),
            case(SLEEP, StaticRequest::get("/"), false),
        ],
    );
    check(
        "any-principal",
        policies(&[(
            "p",
            json!({"rules": [{"from": [{"source": {"principals": ["*"]}}]}]}),
        )]),
        vec![case(OTHER, StaticRequest::get("/"), true)],
    );
    check(
        "not-principals",
        policies(&[(
            "p",
            json!({"rules": [{"from": [{"source": {"notPrincipals": ["cluster.local/ns/default/sa/sleep"]}}]}]}),
        )]),
        vec![
            case(SLEEP, StaticRequest::get("/"), false),
            case(OTHER, StaticRequest::get("/"), true),
        ],
    );
}

#[test]
fn namespaces_and_service_accounts() {
    check(
        "namespaces",
        policies(&[(
            "p",
            json!({"rules": [{"from": [{"source": {"namespaces": ["te*", "*oo"]}}]}]}),
        )]),
        vec![
            case(TEST_NS, StaticRequest::get("/"), true),
            case(FOO_NS, StaticRequest::get("/"), true),
            case(OTHER, StaticRequest::get("/"), false),
            // No `/ns/<x>/` segment: no namespace.
            case(
                "spiffe://cluster.local/workload/foo",
                StaticRequest::get("/"),
                false,
            ),
        ],
    );
    check(
        "service-accounts",
        policies(&[(
            "p",
            json!({"rules": [{"from": [{"source": {"serviceAccounts": ["app", "default/sleep"]}}]}]}),
        )]),
        vec![
            // `app` is in the policy's namespace (foo).
            case(FOO_NS, StaticRequest::get("/"), true),
            case(SLEEP, StaticRequest::get("/"), true),
            case(OTHER, StaticRequest::get("/"), false),
        ],
    );
}

#[test]
fn operations() {
    check(
        "hosts-ports-methods",
        policies(&[(
            "p",
            json!({"rules": [{"to": [{"operation": {
                "hosts": ["*.example.com", "exact.test"],
                "notPaths": ["/private*"],
                "ports": ["8080"],
                "notMethods": ["DELETE"]
            }}]}]}),
        )]),
        vec![
            case(SLEEP, StaticRequest::get("/").host("www.EXAMPLE.com"), true),
            case(SLEEP, StaticRequest::get("/").host("exact.test"), true),
            case(SLEEP, StaticRequest::get("/").host("other.test"), false),
            case(
                SLEEP,
                StaticRequest::get("/").host("www.example.com").port(9090),
                false,
            ),
            case(
                SLEEP,
                StaticRequest::get("/private/x").host("a.example.com"),
                false,
            ),
            case(
                SLEEP,
                StaticRequest::new("DELETE", "/").host("a.example.com"),
                false,
            ),
        ],
    );
    check(
        "suffix-path",
        policies(&[(
            "p",
            json!({"rules": [{"to": [{"operation": {"paths": ["*.html"], "methods": ["*"]}}]}]}),
        )]),
        vec![
            case(SLEEP, StaticRequest::get("/a/b.html"), true),
            case(SLEEP, StaticRequest::get("/a/b.html?x=1"), true),
            case(SLEEP, StaticRequest::get("/a/b.json"), false),
        ],
    );
}

#[test]
fn conditions() {
    check(
        "when",
        policies(&[(
            "p",
            json!({"rules": [{
                "from": [{"source": {"principals": ["*"]}}],
                "when": [
                    {"key": "request.headers[User-Agent]", "values": ["Mozilla/*"]},
                    {"key": "request.headers[x-debug]", "notValues": ["*"]},
                    {"key": "source.namespace", "values": ["default", "test"]},
                    {"key": "source.principal", "notValues": ["cluster.local/ns/test/sa/anything"]},
                    {"key": "destination.port", "values": ["8080"]}
                ]
            }]}),
        )]),
        vec![
            case(
                SLEEP,
                StaticRequest::get("/").header("user-agent", "Mozilla/5.0"),
                true,
            ),
            case(
                SLEEP,
                StaticRequest::get("/").header("user-agent", "curl/8"),
                false,
            ),
            case(SLEEP, StaticRequest::get("/"), false),
            case(
                SLEEP,
                StaticRequest::get("/")
                    .header("user-agent", "Mozilla/5.0")
                    .header("x-debug", ""),
                false,
            ),
            case(
                TEST_NS,
                StaticRequest::get("/").header("user-agent", "Mozilla/5.0"),
                false,
            ),
            case(
                FOO_NS,
                StaticRequest::get("/").header("user-agent", "Mozilla/5.0"),
                false,
            ),
            case(
                SLEEP,
                StaticRequest::get("/")
                    .header("user-agent", "Mozilla/5.0")
                    .port(1),
                false,
            ),
        ],
    );
}

#[test]
fn trust_domain_aliases() {
    // Istio's trust-domain migration task: trustDomain new-td, alias old-td; a policy written
    // for old-td (or cluster.local) admits both.
    let cfg = json!({
        "trustDomain": "new-td",
        "trustDomainAliases": ["old-td"],
        "policies": [{"name": "p", "namespace": "foo", "spec": {"rules": [{"from": [{"source": {
            "principals": ["old-td/ns/default/sa/sleep", "cluster.local/ns/foo/sa/app"]
        }}]}]}}]
    });
    check(
        "aliases",
        cfg,
        vec![
            case(
                "spiffe://new-td/ns/default/sa/sleep",
                StaticRequest::get("/"),
                true,
            ),
            case(
                "spiffe://old-td/ns/default/sa/sleep",
                StaticRequest::get("/"),
                true,
            ),
            case(
                "spiffe://new-td/ns/foo/sa/app",
                StaticRequest::get("/"),
                true,
            ),
            case(
                "spiffe://old-td/ns/foo/sa/app",
                StaticRequest::get("/"),
                true,
            ),
            case(
                "spiffe://other-td/ns/default/sa/sleep",
                StaticRequest::get("/"),
                false,
            ),
        ],
    );
    // Without aliases, cluster.local in a policy stands for the local trust domain.
    check(
        "local-td",
        json!({"trustDomain": "example.org", "policies": [{"name": "p", "namespace": "foo",
            "spec": {"rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}}]}]}}]}),
        vec![
            case(
                "spiffe://example.org/ns/default/sa/sleep",
                StaticRequest::get("/"),
                true,
            ),
            case(SLEEP, StaticRequest::get("/"), false),
        ],
    );
}

#[test]
fn unauthenticated_peers_are_denied() {
    let e = engine_with(json!({}), Protocol::Http);
    for (conn, why) in [
        (
            Connection {
                mtls: false,
                uri_san: Some(SLEEP),
            },
            PeerError::NotMtls,
        ),
        (
            Connection {
                mtls: true,
                uri_san: None,
            },
            PeerError::NoUriSan,
        ),
        (
            Connection {
                mtls: true,
                uri_san: Some(""),
            },
            PeerError::NoUriSan,
        ),
    ] {
        let v = e.authorize(&conn, &mut StaticRequest::get("/")).verdict;
        assert!(!v.allowed);
        assert_eq!(v.decided_by, DecidedBy::Unauthenticated(why));
    }
    let v = e
        .authorize(&peer("https://example.org/x"), &mut StaticRequest::get("/"))
        .verdict;
    assert!(matches!(
        v.decided_by,
        DecidedBy::Unauthenticated(PeerError::InvalidSpiffeId(_))
    ));
}

#[test]
fn audit_and_dry_run_never_enforce() {
    let cfg = json!({"policies": [
        {"name": "audit", "namespace": "foo", "spec": {"action": "AUDIT",
            "rules": [{"to": [{"operation": {"paths": ["/user/profile/*"]}}]}]}},
        {"name": "dry-deny", "namespace": "foo", "dryRun": true, "spec": {"action": "DENY", "rules": [{}]}}
    ]});
    let e = engine_with(cfg, Protocol::Http);
    let ev = e.authorize(&peer(SLEEP), &mut StaticRequest::get("/user/profile/me"));
    assert!(ev.verdict.allowed);
    assert_eq!(ev.audited, vec![0]);
    let dry = ev.dry_run.expect("dry-run verdict");
    assert!(!dry.allowed);
    assert_eq!(dry.decided_by, DecidedBy::Policy(1));
    let ev = e.authorize(&peer(SLEEP), &mut StaticRequest::get("/other"));
    assert!(ev.audited.is_empty());
}

#[test]
fn tcp_filter_treats_http_fields_as_istio() {
    let cfg = policies(&[
        (
            "allow-get",
            json!({"rules": [
                {"from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}}],
                 "to": [{"operation": {"methods": ["GET"]}}]},
                {"from": [{"source": {"namespaces": ["test"]}}], "to": [{"operation": {"ports": ["9000"]}}]}
            ]}),
        ),
        (
            "deny-admin",
            json!({"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["bar"]}}],
                "to": [{"operation": {"paths": ["/admin"]}}]}]}),
        ),
    ]);
    let e = engine_with(cfg, Protocol::Tcp);
    assert!(e.warnings().len() >= 2, "{:?}", e.warnings());
    let tcp = |id: &'static str, port| {
        e.authorize(&peer(id), &mut StaticRequest::tcp(port))
            .verdict
            .allowed
    };
    // The ALLOW rule with `methods` never matches on TCP.
    assert!(!tcp(SLEEP, 9000));
    assert!(tcp(TEST_NS, 9000));
    assert!(!tcp(TEST_NS, 9001));
    // The DENY rule's `paths` is ignored: every connection from `bar` is denied.
    let cfg = policies(&[(
        "deny-admin",
        json!({"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["bar"]}}],
            "to": [{"operation": {"paths": ["/admin"]}}]}]}),
    )]);
    let e = engine_with(cfg, Protocol::Tcp);
    assert!(
        !e.authorize(&peer(OTHER), &mut StaticRequest::tcp(1))
            .verdict
            .allowed
    );
    assert!(
        e.authorize(&peer(SLEEP), &mut StaticRequest::tcp(1))
            .verdict
            .allowed
    );
}

#[test]
fn unsupported_and_invalid_fields_are_rejected_by_name() {
    let reject = |spec: Value, needle: &str| {
        let cfg = policies(&[("p", spec)]);
        match Engine::from_json(cfg.to_string().as_bytes(), Protocol::Http) {
            Ok(_) => panic!("accepted: {cfg}"),
            Err(e) => assert!(e.to_string().contains(needle), "{needle:?} not in: {e}"),
        }
    };
    reject(
        json!({"rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}),
        "requestPrincipals",
    );
    reject(
        json!({"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/8"]}}]}]}),
        "ipBlocks",
    );
    reject(
        json!({"rules": [{"from": [{"source": {"notRemoteIpBlocks": ["1.2.3.4"]}}]}]}),
        "notRemoteIpBlocks",
    );
    reject(
        json!({"action": "CUSTOM", "provider": {"name": "x"}}),
        "provider",
    );
    reject(json!({"action": "CUSTOM"}), "CUSTOM");
    reject(json!({"action": "REJECT"}), "REJECT");
    reject(
        json!({"rules": [{"when": [{"key": "source.ip", "values": ["1.2.3.4"]}]}]}),
        "source.ip",
    );
    reject(
        json!({"rules": [{"when": [{"key": "request.auth.principal", "values": ["a"]}]}]}),
        "request.auth.principal",
    );
    reject(
        json!({"rules": [{"when": [{"key": "no.such.key", "values": ["a"]}]}]}),
        "no.such.key",
    );
    reject(
        json!({"rules": [{"when": [{"key": "source.principal"}]}]}),
        "values",
    );
    reject(
        json!({"rules": [{"to": [{"operation": {"paths": ["/foo/{*}/bar"]}}]}]}),
        "paths",
    );
    reject(
        json!({"rules": [{"to": [{"operation": {"ports": ["http"]}}]}]}),
        "ports",
    );
    reject(json!({"rules": [{"from": [{"source": {}}]}]}), "source");
    reject(json!({"rules": [{"to": [{}]}]}), "operation");
    reject(
        json!({"rules": [{"from": [{"source": {"principals": [""]}}]}]}),
        "principals",
    );
    // Not an Istio field at all: serde names it.
    reject(
        json!({"rules": [{"from": [{"source": {"principal": ["x"]}}]}]}),
        "principal",
    );
    reject(json!({"rulez": []}), "rulez");
}

#[test]
fn selector_is_accepted_with_a_warning() {
    let e = engine_with(
        policies(&[(
            "p",
            json!({"selector": {"matchLabels": {"app": "httpbin"}}, "rules": [{}]}),
        )]),
        Protocol::Http,
    );
    assert!(e.warnings()[0].contains("selector"), "{:?}", e.warnings());
}

#[test]
fn kubectl_json_pastes_unchanged() {
    // `kubectl get authorizationpolicy -o json | jq .spec` output, as is.
    let spec: Value = serde_json::from_str(
        r#"{
          "action": "ALLOW",
          "rules": [
            {"from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}}],
             "to": [{"operation": {"methods": ["GET", "HEAD"], "paths": ["/status/*"], "ports": ["8000"]}}],
             "when": [{"key": "request.headers[version]", "values": ["v1", "v2"]}]}
          ],
          "selector": {"matchLabels": {"app": "httpbin", "version": "v1"}}
        }"#,
    )
    .unwrap();
    check(
        "kubectl",
        policies(&[("httpbin", spec)]),
        vec![
            case(
                SLEEP,
                StaticRequest::new("HEAD", "/status/200")
                    .port(8000)
                    .header("version", "v2"),
                true,
            ),
            case(
                SLEEP,
                StaticRequest::new("HEAD", "/status/200")
                    .port(8000)
                    .header("version", "v3"),
                false,
            ),
        ],
    );
}

#[test]
fn example_policies_of_the_guide_compile() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../envoy-filter-wasm/examples/policies.json"
    );
    let json = std::fs::read(path).expect("envoy-filter-wasm/examples/policies.json");
    let e = Engine::from_json(&json, Protocol::Http).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(e.policies().len(), 4);
    // sleep may GET /status/200; the sandbox namespaces are denied; the alias is honoured.
    let sleep = "spiffe://old.example.org/ns/default/sa/sleep";
    assert!(
        e.authorize(&peer(sleep), &mut StaticRequest::get("/status/200"))
            .verdict
            .allowed
    );
    assert!(
        !e.authorize(
            &peer("spiffe://example.org/ns/sandbox-1/sa/x"),
            &mut StaticRequest::get("/status/200")
        )
        .verdict
        .allowed
    );
}
