//! Fuzz-ish property tests of the untrusted inputs of the engine: the plugin configuration
//! (JSON pasted by users, from `kubectl get authorizationpolicy -o json`) and the request
//! attributes and peer URI SAN (sent by clients). Neither may panic: inside Envoy a panic is a
//! trapped VM, and every request on that worker is then refused. A configuration is either
//! compiled or refused with an error; a request always gets a verdict.

use proptest::prelude::*;
use serde_json::{Value, json};
use sigil_authz::{Connection, Engine, Protocol, StaticRequest};

/// Arbitrary JSON values, shallow, with the strings that matter to policies.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|n| json!(n)),
        prop_oneof![
            Just("*".to_owned()),
            Just("ALLOW".to_owned()),
            Just("DENY".to_owned()),
            Just("AUDIT".to_owned()),
            Just("CUSTOM".to_owned()),
            Just("spiffe://".to_owned()),
            Just("cluster.local/ns/a/sa/b".to_owned()),
            Just("request.headers[x]".to_owned()),
            Just("source.principal".to_owned()),
            Just("destination.port".to_owned()),
            "[a-z*/.:\\[\\]%-]{0,16}",
            any::<String>(),
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((field_name(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// The field names of the configuration and of an AuthorizationPolicy spec, and some others.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("policies"),
        Just("trustDomain"),
        Just("trustDomainAliases"),
        Just("rootId"),
        Just("name"),
        Just("namespace"),
        Just("dryRun"),
        Just("spec"),
        Just("action"),
        Just("rules"),
        Just("from"),
        Just("to"),
        Just("when"),
        Just("source"),
        Just("operation"),
        Just("principals"),
        Just("notPrincipals"),
        Just("namespaces"),
        Just("notNamespaces"),
        Just("methods"),
        Just("paths"),
        Just("notPaths"),
        Just("hosts"),
        Just("ports"),
        Just("notPorts"),
        Just("key"),
        Just("values"),
        Just("notValues"),
        Just("selector"),
        Just("requestPrincipals"),
        Just("ipBlocks"),
        Just("x"),
    ]
    .prop_map(str::to_owned)
}

/// Mostly what a field can hold, sometimes anything.
fn or_any(valid: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Value> {
    prop_oneof![15 => valid, 1 => json_value()].boxed()
}

/// Principal, namespace, host, path and header patterns, good and bad.
fn pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just("*".to_owned()),
        3 => "[a-z.]{1,8}/ns/[a-z]{1,4}/sa/[a-z]{1,4}",
        3 => "spiffe://[a-z.]{1,8}/ns/[a-z]{1,4}/sa/[a-z*]{1,4}",
        3 => "\\*?[a-z/.]{0,8}\\*?",
        1 => any::<String>(),
    ]
}

fn strings() -> impl Strategy<Value = Value> {
    prop::collection::vec(pattern(), 0..3).prop_map(|v| json!(v))
}

fn source() -> impl Strategy<Value = Value> {
    or_any(
        prop::collection::vec(
            (
                prop_oneof![
                    Just("principals"),
                    Just("notPrincipals"),
                    Just("namespaces"),
                    Just("notNamespaces"),
                ],
                strings(),
            ),
            0..3,
        )
        .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
    )
}

fn operation() -> impl Strategy<Value = Value> {
    let ports = prop::collection::vec(
        prop_oneof![(0u32..70000).prop_map(|n| n.to_string()), pattern()],
        0..3,
    )
    .prop_map(|v| json!(v));
    or_any(
        (strings(), strings(), strings(), prop::option::of(ports)).prop_map(
            |(methods, paths, hosts, ports)| {
                let mut op = json!({"methods": methods, "paths": paths, "notHosts": hosts});
                if let Some(p) = ports {
                    op["ports"] = p;
                }
                op
            },
        ),
    )
}

fn condition() -> impl Strategy<Value = Value> {
    or_any(
        (
            prop_oneof![
                Just("request.headers[x-id]".to_owned()),
                Just("source.principal".to_owned()),
                Just("source.namespace".to_owned()),
                Just("destination.port".to_owned()),
                "[a-z.\\[\\]]{0,20}",
            ],
            strings(),
            any::<bool>(),
        )
            .prop_map(|(key, values, not)| {
                if not {
                    json!({"key": key, "notValues": values})
                } else {
                    json!({"key": key, "values": values})
                }
            }),
    )
}

fn rule() -> impl Strategy<Value = Value> {
    or_any(
        (
            prop::collection::vec(source(), 0..2),
            prop::collection::vec(operation(), 0..2),
            prop::collection::vec(condition(), 0..2),
        )
            .prop_map(|(from, to, when)| {
                json!({
                    "from": from.into_iter().map(|s| json!({"source": s})).collect::<Vec<_>>(),
                    "to": to.into_iter().map(|o| json!({"operation": o})).collect::<Vec<_>>(),
                    "when": when,
                })
            }),
    )
}

/// A configuration shaped like the real thing, with arbitrary values in places.
fn config_like() -> impl Strategy<Value = Value> {
    let action =
        or_any(prop_oneof![Just("ALLOW"), Just("DENY"), Just("AUDIT")].prop_map(|a| json!(a)));
    let policy = (
        action,
        prop::collection::vec(rule(), 0..3),
        prop::bool::weighted(0.2),
        "[a-z]{1,3}",
    )
        .prop_map(|(action, rules, dry_run, name)| {
            json!({"name": name, "namespace": "ns", "dryRun": dry_run,
                   "spec": {"action": action, "rules": rules}})
        });
    (
        prop::collection::vec(policy, 0..4),
        or_any(prop::collection::vec("[a-z.]{1,8}", 0..2).prop_map(|v| json!(v))),
    )
        .prop_map(|(policies, aliases)| {
            json!({"trustDomain": "td.example", "trustDomainAliases": aliases,
                   "policies": policies})
        })
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![Just(Protocol::Http), Just(Protocol::Tcp)]
}

fn request() -> impl Strategy<Value = StaticRequest> {
    (
        prop::option::of(any::<String>()),
        prop::option::of(prop_oneof![any::<String>(), "/[a-z/*?#%.]{0,16}"]),
        prop::option::of(any::<String>()),
        prop::collection::vec(("[a-z-]{1,6}", any::<String>()), 0..3),
        prop::option::of(any::<u32>()),
    )
        .prop_map(|(method, path, host, headers, port)| StaticRequest {
            method,
            path,
            host,
            headers,
            destination_port: port,
            sni: None,
        })
}

fn san() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        any::<String>(),
        "spiffe://[a-z.]{0,10}(/[a-z.%]{0,6}){0,4}",
        Just("spiffe://td.example/ns/ns/sa/x".to_owned()),
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_are_compiled_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..256),
                                         p in protocol()) {
        let _ = Engine::from_json(&bytes, p);
    }

    #[test]
    fn any_json_is_compiled_or_refused(v in json_value(), p in protocol()) {
        let _ = Engine::from_json(v.to_string().as_bytes(), p);
    }

    /// Whatever compiles decides every request, and a peer without a valid SPIFFE ID is
    /// always denied.
    #[test]
    fn compiled_configurations_decide_every_request(
        cfg in config_like(),
        p in protocol(),
        reqs in prop::collection::vec((san(), any::<bool>(), request()), 1..4),
    ) {
        let Ok(engine) = Engine::from_json(cfg.to_string().as_bytes(), p) else {
            return Ok(());
        };
        for (san, mtls, mut req) in reqs {
            let conn = Connection { mtls, uri_san: san.as_deref() };
            let ev = engine.authorize(&conn, &mut req);
            if !mtls || san.as_deref().is_none_or(certainly_not_a_spiffe_id) {
                prop_assert!(!ev.verdict.allowed, "unauthenticated peer {san:?} allowed");
            }
        }
    }
}

/// Peers whose IDs have the same length and differ in one namespace or service account
/// letter: a memory that confused them would answer for the wrong peer.
const LOOKALIKE_PEERS: [&str; 4] = [
    "spiffe://td.example/ns/a/sa/x",
    "spiffe://td.example/ns/a/sa/y",
    "spiffe://td.example/ns/b/sa/x",
    "spiffe://td.example/ns/b/sa/y",
];

/// Policies on [`LOOKALIKE_PEERS`] only (sources, no operation or condition): every decision
/// is one a memory of peers may answer.
fn lookalike_policies() -> impl Strategy<Value = Value> {
    let ns = prop_oneof![Just("a"), Just("b")];
    let sa = prop_oneof![Just("x"), Just("y")];
    let principal = (ns.clone(), sa.clone(), 0..3u8).prop_map(|(n, s, form)| match form {
        0 => format!("td.example/ns/{n}/sa/{s}"),
        1 => format!("*/sa/{s}"),
        _ => format!("td.example/ns/{n}/*"),
    });
    let source = prop_oneof![
        prop::collection::vec(principal.clone(), 1..3).prop_map(|p| json!({"principals": p})),
        prop::collection::vec(principal, 1..3).prop_map(|p| json!({"notPrincipals": p})),
        ns.prop_map(|n| json!({"namespaces": [n]})),
    ];
    let rule = prop::collection::vec(source, 1..3).prop_map(|sources| {
        json!({"from": sources.into_iter().map(|s| json!({"source": s})).collect::<Vec<_>>()})
    });
    let policy = (
        prop_oneof![Just("ALLOW"), Just("DENY"), Just("AUDIT")],
        prop::collection::vec(rule, 1..3),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(action, rules, dry_run)| {
            let dry_run = dry_run && action != "AUDIT";
            json!({"namespace": "ns", "dryRun": dry_run,
                   "spec": {"action": action, "rules": rules}})
        });
    prop::collection::vec(policy, 1..4).prop_map(|mut policies| {
        for (i, p) in policies.iter_mut().enumerate() {
            p["name"] = json!(format!("p{i}"));
        }
        json!({"trustDomain": "td.example", "policies": policies})
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The same with peers a memory could confuse, on policies whose decisions it remembers.
    #[test]
    fn remembered_decisions_tell_lookalike_peers_apart(
        cfg in lookalike_policies(),
        reqs in prop::collection::vec(0..LOOKALIKE_PEERS.len(), 1..24),
    ) {
        let engine = Engine::from_json(cfg.to_string().as_bytes(), Protocol::Http)
            .map_err(|e| TestCaseError::fail(format!("{e}: {cfg}")))?;
        prop_assert!(engine.is_peer_only());
        for i in reqs {
            let conn = Connection { mtls: true, uri_san: Some(LOOKALIKE_PEERS[i]) };
            let req = StaticRequest::get("/");
            let remembered = engine.authorize(&conn, &mut req.clone());
            let evaluated = engine.evaluate(&conn, &mut req.clone());
            prop_assert_eq!(remembered, evaluated, "peer {}", LOOKALIKE_PEERS[i]);
        }
    }

    /// A remembered decision is the decision: over a run of requests from a few peers,
    /// `authorize` (which remembers peers when no policy reads the request) always answers
    /// what evaluating every policy answers.
    #[test]
    fn remembered_decisions_equal_evaluated_ones(
        cfg in config_like(),
        p in protocol(),
        peers in prop::collection::vec(san(), 1..4),
        reqs in prop::collection::vec((0..4usize, any::<bool>(), request()), 1..24),
    ) {
        let Ok(engine) = Engine::from_json(cfg.to_string().as_bytes(), p) else {
            return Ok(());
        };
        for (i, mtls, req) in reqs {
            let conn = Connection { mtls, uri_san: peers[i % peers.len()].as_deref() };
            let remembered = engine.authorize(&conn, &mut req.clone());
            let evaluated = engine.evaluate(&conn, &mut req.clone());
            prop_assert_eq!(remembered, evaluated, "peer {:?}", conn.uri_san);
        }
    }
}

/// Just enough of the SPIFFE ID grammar for the check above: true for what is certainly not a
/// SPIFFE ID (the engine has its own, complete parser).
fn certainly_not_a_spiffe_id(s: &str) -> bool {
    s.strip_prefix("spiffe://")
        .is_none_or(|rest| rest.split('/').next().is_none_or(str::is_empty))
}

/// The generator above must keep producing configurations that compile into policies, or the
/// decision property would only ever see refused configurations (and pass without testing).
#[test]
fn generated_configurations_often_compile() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = config_like();
    let with_policies = (0..1000)
        .filter(|_| {
            // Invariant: these strategies never reject a value, so new_tree cannot fail.
            let cfg = strategy.new_tree(&mut runner).unwrap().current();
            Engine::from_json(cfg.to_string().as_bytes(), Protocol::Http)
                .is_ok_and(|e| !e.policies().is_empty())
        })
        .count();
    assert!(
        with_policies >= 50,
        "only {with_policies}/1000 compiled with policies"
    );
}

/// And the remembering property needs configurations whose decisions depend on the peer
/// alone (the only ones whose decisions are remembered), as well as others.
#[test]
fn generated_configurations_are_often_peer_only() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = config_like();
    let (mut peer_only, mut reads_request) = (0, 0);
    for _ in 0..1000 {
        // Invariant: these strategies never reject a value, so new_tree cannot fail.
        let cfg = strategy.new_tree(&mut runner).unwrap().current();
        if let Ok(e) = Engine::from_json(cfg.to_string().as_bytes(), Protocol::Http)
            && !e.policies().is_empty()
        {
            if e.is_peer_only() {
                peer_only += 1;
            } else {
                reads_request += 1;
            }
        }
    }
    assert!(
        peer_only >= 20 && reads_request >= 20,
        "{peer_only} peer-only and {reads_request} request-reading configurations of 1000"
    );
}
