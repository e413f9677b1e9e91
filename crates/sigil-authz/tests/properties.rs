//! Property tests of the decision rules, over random policy sets and requests.

use proptest::prelude::*;
use serde_json::{Value, json};
use sigil_authz::{Connection, DecidedBy, Engine, Protocol, StaticRequest};

const NAMESPACES: &[&str] = &["default", "foo", "bar"];
const ACCOUNTS: &[&str] = &["sleep", "app", "web"];
const METHODS: &[&str] = &["GET", "POST", "DELETE"];
const PATHS: &[&str] = &["/", "/admin", "/info/x", "/data"];

fn principal() -> impl Strategy<Value = String> {
    (
        prop::sample::select(NAMESPACES),
        prop::sample::select(ACCOUNTS),
    )
        .prop_map(|(ns, sa)| format!("cluster.local/ns/{ns}/sa/{sa}"))
}

/// A principal pattern: exact, prefix, suffix or any.
fn principal_pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        principal(),
        prop::sample::select(NAMESPACES).prop_map(|ns| format!("cluster.local/ns/{ns}/*")),
        prop::sample::select(ACCOUNTS).prop_map(|sa| format!("*/sa/{sa}")),
        Just("*".to_owned()),
    ]
}

fn source() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::collection::vec(principal_pattern(), 1..3).prop_map(|p| json!({"principals": p})),
        prop::collection::vec(principal_pattern(), 1..3).prop_map(|p| json!({"notPrincipals": p})),
        prop::collection::vec(prop::sample::select(NAMESPACES), 1..3)
            .prop_map(|n| json!({"namespaces": n})),
        prop::collection::vec(prop::sample::select(NAMESPACES), 1..3)
            .prop_map(|n| json!({"notNamespaces": n})),
    ]
}

fn operation() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::collection::vec(prop::sample::select(METHODS), 1..3)
            .prop_map(|m| json!({"methods": m})),
        prop::collection::vec(prop::sample::select(PATHS), 1..3).prop_map(|p| json!({"paths": p})),
        prop::collection::vec(prop::sample::select(PATHS), 1..3)
            .prop_map(|p| json!({"notPaths": p})),
    ]
}

fn rule() -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop::collection::vec(source(), 1..3)),
        prop::option::of(prop::collection::vec(operation(), 1..3)),
    )
        .prop_map(|(from, to)| {
            let mut r = serde_json::Map::new();
            if let Some(f) = from {
                r.insert(
                    "from".into(),
                    f.into_iter().map(|s| json!({"source": s})).collect(),
                );
            }
            if let Some(t) = to {
                r.insert(
                    "to".into(),
                    t.into_iter().map(|o| json!({"operation": o})).collect(),
                );
            }
            Value::Object(r)
        })
}

fn spec(action: &'static str) -> impl Strategy<Value = Value> {
    prop::collection::vec(rule(), 0..4)
        .prop_map(move |rules| json!({"action": action, "rules": rules}))
}

fn entry(name: String, spec: Value, dry_run: bool) -> Value {
    json!({"name": name, "namespace": "ns", "dryRun": dry_run, "spec": spec})
}

fn engine(policies: &[Value]) -> Engine {
    Engine::from_json(
        json!({ "policies": policies }).to_string().as_bytes(),
        Protocol::Http,
    )
    .expect("generated configs are valid")
}

fn request() -> impl Strategy<Value = (String, StaticRequest)> {
    (
        principal(),
        prop::sample::select(METHODS),
        prop::sample::select(PATHS),
    )
        .prop_map(|(p, m, path)| (format!("spiffe://{p}"), StaticRequest::new(m, path)))
}

fn allowed(e: &Engine, peer: &str, req: &StaticRequest) -> bool {
    let conn = Connection {
        mtls: true,
        uri_san: Some(peer),
    };
    e.authorize(&conn, &mut req.clone()).verdict.allowed
}

fn named(specs: Vec<Value>, prefix: &str) -> Vec<Value> {
    specs
        .into_iter()
        .enumerate()
        .map(|(i, s)| entry(format!("{prefix}{i}"), s, false))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A DENY policy that matches denies, whatever ALLOW policies exist and in whatever order.
    #[test]
    fn matching_deny_always_denies(
        allows in prop::collection::vec(spec("ALLOW"), 0..5),
        (peer, req) in request(),
        deny_first in any::<bool>(),
    ) {
        let principal = peer.trim_start_matches("spiffe://").to_owned();
        let deny = entry("deny".into(), json!({"action": "DENY", "rules": [
            {"from": [{"source": {"principals": [principal]}}]}
        ]}), false);
        let mut policies = named(allows, "allow");
        if deny_first { policies.insert(0, deny) } else { policies.push(deny) }
        let e = engine(&policies);
        let conn = Connection { mtls: true, uri_san: Some(&peer) };
        let v = e.authorize(&conn, &mut req.clone()).verdict;
        prop_assert!(!v.allowed);
        let DecidedBy::Policy(i) = v.decided_by else { panic!("{v:?}") };
        prop_assert_eq!(&e.policies()[i].name, "deny");
    }

    /// Allowed iff no DENY matches and (no ALLOW exists or one matches): the decision is a
    /// function of the per-policy matches, independent of policy order.
    #[test]
    fn decision_is_order_independent(
        allows in prop::collection::vec(spec("ALLOW"), 0..4),
        denies in prop::collection::vec(spec("DENY"), 0..3),
        (peer, req) in request(),
        seed in any::<u64>(),
    ) {
        let mut policies = named(allows, "allow");
        policies.extend(named(denies, "deny"));
        let before = allowed(&engine(&policies), &peer, &req);
        // A deterministic shuffle.
        let n = policies.len();
        if n > 1 {
            for i in 0..n {
                let j = ((seed.rotate_left(i as u32) as usize) ^ i) % n;
                policies.swap(i, j);
            }
        }
        prop_assert_eq!(before, allowed(&engine(&policies), &peer, &req));
    }

    /// AUDIT and dry-run policies never change the enforced decision.
    #[test]
    fn audit_and_dry_run_do_not_enforce(
        allows in prop::collection::vec(spec("ALLOW"), 0..3),
        extra in prop::collection::vec((spec("DENY"), spec("ALLOW"), spec("AUDIT")), 1..3),
        (peer, req) in request(),
    ) {
        let base = named(allows, "allow");
        let mut with = base.clone();
        for (i, (d, a, au)) in extra.into_iter().enumerate() {
            with.push(entry(format!("dry-deny{i}"), d, true));
            with.push(entry(format!("dry-allow{i}"), a, true));
            with.push(entry(format!("audit{i}"), au, false));
        }
        prop_assert_eq!(allowed(&engine(&base), &peer, &req), allowed(&engine(&with), &peer, &req));
    }

    /// `notPrincipals: [p]` admits exactly the peers `principals: [p]` does not.
    #[test]
    fn not_principals_is_the_complement(p in principal_pattern(), (peer, req) in request()) {
        let pos = engine(&[entry("p".into(), json!({"rules": [{"from": [{"source": {"principals": [p.clone()]}}]}]}), false)]);
        let neg = engine(&[entry("p".into(), json!({"rules": [{"from": [{"source": {"notPrincipals": [p]}}]}]}), false)]);
        prop_assert_ne!(allowed(&pos, &peer, &req), allowed(&neg, &peer, &req));
    }

    /// Whatever the policies, a peer without a valid SPIFFE ID is denied.
    #[test]
    fn unauthenticated_is_always_denied(
        allows in prop::collection::vec(spec("ALLOW"), 0..3),
        san in prop::option::of("[a-z:/.]{0,20}"),
        mtls in any::<bool>(),
    ) {
        let e = engine(&named(allows, "allow"));
        let valid = mtls && san.as_deref().is_some_and(|s| sigil_authz::SpiffeId::parse(s).is_ok());
        prop_assume!(!valid);
        let conn = Connection { mtls, uri_san: san.as_deref() };
        let v = e.authorize(&conn, &mut StaticRequest::get("/")).verdict;
        prop_assert!(!v.allowed);
        prop_assert!(matches!(v.decided_by, DecidedBy::Unauthenticated(_)));
    }

    /// With no policies, every authenticated request is allowed.
    #[test]
    fn no_policy_allows((peer, req) in request()) {
        prop_assert!(allowed(&engine(&[]), &peer, &req));
    }
}
