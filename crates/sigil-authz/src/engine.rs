//! Compiled policies and their evaluation, with Istio's semantics.

mod recent;

use self::recent::Recent;
use crate::matcher::{Glob, PrincipalMatch, ServiceAccountMatch, StrMatch};
use crate::peer::{PeerError, SpiffeId};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

/// Which Envoy filter the engine serves. Istio compiles the same policy differently for TCP:
/// HTTP-only fields (methods, paths, hosts, request headers) make an ALLOW rule never match
/// and are ignored in DENY and AUDIT rules (a wider deny).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Tcp,
}

/// A policy's `action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    Audit,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "ALLOW",
            Self::Deny => "DENY",
            Self::Audit => "AUDIT",
        }
    }
}

/// Name and behaviour of one configured policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInfo {
    pub name: String,
    pub namespace: String,
    pub action: Action,
    /// Istio's `istio.io/dry-run` annotation: evaluated and reported, never enforced.
    pub dry_run: bool,
}

impl fmt::Display for PolicyInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What the connection says about the peer (Envoy's `connection.mtls` and
/// `connection.uri_san_peer_certificate`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Connection<'a> {
    pub mtls: bool,
    pub uri_san: Option<&'a str>,
}

/// Request attributes, fetched lazily: the engine asks only for what its policies use.
/// For the TCP filter every HTTP accessor returns `None` (they are never called: TCP policies
/// are compiled without HTTP matchers).
pub trait RequestAttributes {
    /// `:method`.
    fn method(&mut self) -> Option<&str>;
    /// `:path`, query string included (the engine strips it, as Envoy's `url_path` matcher does).
    fn path(&mut self) -> Option<&str>;
    /// `:authority`.
    fn host(&mut self) -> Option<&str>;
    /// A request header by lowercase name.
    fn header(&mut self, name: &str) -> Option<&str>;
    /// The local (destination) port of the connection.
    fn destination_port(&mut self) -> Option<u32>;
    /// The TLS SNI the peer asked for.
    fn sni(&mut self) -> Option<&str>;
}

/// Request attributes held in memory (tests, benchmarks, the doc examples).
#[derive(Debug, Clone, Default)]
pub struct StaticRequest {
    pub method: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    /// Lowercase names.
    pub headers: Vec<(String, String)>,
    pub destination_port: Option<u32>,
    pub sni: Option<String>,
}

impl StaticRequest {
    /// A `GET` of `path` (host `example.com`, port 8080).
    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: Some(method.to_owned()),
            path: Some(path.to_owned()),
            host: Some("example.com".to_owned()),
            headers: Vec::new(),
            destination_port: Some(8080),
            sni: None,
        }
    }

    /// A plain TCP connection to `port`.
    pub fn tcp(port: u32) -> Self {
        Self {
            destination_port: Some(port),
            ..Self::default()
        }
    }

    pub fn host(mut self, host: &str) -> Self {
        self.host = Some(host.to_owned());
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    pub fn port(mut self, port: u32) -> Self {
        self.destination_port = Some(port);
        self
    }
}

impl RequestAttributes for StaticRequest {
    fn method(&mut self) -> Option<&str> {
        self.method.as_deref()
    }
    fn path(&mut self) -> Option<&str> {
        self.path.as_deref()
    }
    fn host(&mut self) -> Option<&str> {
        self.host.as_deref()
    }
    fn header(&mut self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    fn destination_port(&mut self) -> Option<u32> {
        self.destination_port
    }
    fn sni(&mut self) -> Option<&str> {
        self.sni.as_deref()
    }
}

/// Who made a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecidedBy {
    /// The policy at this index of [`Engine::policies`] matched.
    Policy(usize),
    /// ALLOW policies exist and none matched.
    NoAllowPolicyMatched,
    /// No policy applies: allowed.
    NoPolicies,
    /// No valid peer identity: denied whatever the policies say.
    Unauthenticated(PeerError),
}

/// An allow/deny decision and its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub decided_by: DecidedBy,
}

/// The result of [`Engine::authorize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// The enforced decision.
    pub verdict: Verdict,
    /// The decision of the dry-run policies alone (Istio's shadow engine), if there are any.
    pub dry_run: Option<Verdict>,
    /// Indices of the AUDIT policies that matched (they never change the decision).
    pub audited: Vec<usize>,
}

// === compiled policies ===

#[derive(Debug, Clone)]
pub(crate) enum Matcher {
    Principal(PrincipalMatch),
    Namespace(Glob),
    ServiceAccount(ServiceAccountMatch),
    /// `methods`: Envoy header matcher on `:method` (`*` is presence).
    Method(Option<StrMatch>),
    Path(StrMatch),
    /// Case-insensitive; `None` is presence (`*`).
    Host(Option<StrMatch>),
    Port(u32),
    /// `request.headers[name]`; `None` is presence (`*`).
    Header(String, Option<StrMatch>),
    Sni(StrMatch),
}

impl Matcher {
    /// Whether the matcher reads the request (anything but the peer's identity).
    fn reads_request(&self) -> bool {
        match self {
            Self::Principal(_) | Self::Namespace(_) | Self::ServiceAccount(_) => false,
            Self::Method(_)
            | Self::Path(_)
            | Self::Host(_)
            | Self::Port(_)
            | Self::Header(..)
            | Self::Sni(_) => true,
        }
    }

    fn matches(&self, peer: &SpiffeId<'_>, req: &mut dyn RequestAttributes) -> bool {
        match self {
            Self::Principal(m) => m.matches(peer.as_str()),
            Self::Namespace(g) => g.matches(peer.as_str()),
            Self::ServiceAccount(m) => m.matches(peer.as_str()),
            Self::Method(m) => req
                .method()
                .is_some_and(|v| m.as_ref().is_none_or(|m| m.matches(v, false))),
            Self::Path(m) => req.path().is_some_and(|p| m.matches(url_path(p), false)),
            Self::Host(m) => req
                .host()
                .is_some_and(|v| m.as_ref().is_none_or(|m| m.matches(v, true))),
            Self::Port(p) => req.destination_port() == Some(*p),
            Self::Header(name, m) => req
                .header(name)
                .is_some_and(|v| m.as_ref().is_none_or(|m| m.matches(v, false))),
            Self::Sni(m) => req.sni().is_some_and(|v| m.matches(v, false)),
        }
    }
}

/// The path without query string or fragment (Envoy's `url_path` matcher).
fn url_path(p: &str) -> &str {
    p.find(['?', '#']).map_or(p, |i| &p[..i])
}

/// One field of a source, operation or condition: `values` (any) and `notValues` (none).
#[derive(Debug, Clone, Default)]
pub(crate) struct Check {
    pub values: Vec<Matcher>,
    pub not_values: Vec<Matcher>,
}

impl Check {
    fn reads_request(&self) -> bool {
        self.values
            .iter()
            .chain(&self.not_values)
            .any(Matcher::reads_request)
    }

    fn matches(&self, peer: &SpiffeId<'_>, req: &mut dyn RequestAttributes) -> bool {
        (self.values.is_empty() || self.values.iter().any(|m| m.matches(peer, req)))
            && !self.not_values.iter().any(|m| m.matches(peer, req))
    }
}

fn all(checks: &[Check], peer: &SpiffeId<'_>, req: &mut dyn RequestAttributes) -> bool {
    checks.iter().all(|c| c.matches(peer, req))
}

/// A rule: any `from` (each an AND of checks), any `to`, every `when`. An empty list
/// matches anything.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rule {
    pub from: Vec<Vec<Check>>,
    pub to: Vec<Vec<Check>>,
    pub when: Vec<Check>,
}

impl Rule {
    fn reads_request(&self) -> bool {
        self.from
            .iter()
            .chain(&self.to)
            .flatten()
            .chain(&self.when)
            .any(Check::reads_request)
    }

    fn matches(&self, peer: &SpiffeId<'_>, req: &mut dyn RequestAttributes) -> bool {
        (self.from.is_empty() || self.from.iter().any(|f| all(f, peer, req)))
            && (self.to.is_empty() || self.to.iter().any(|t| all(t, peer, req)))
            && all(&self.when, peer, req)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub info: PolicyInfo,
    /// No rules: never matches (an ALLOW policy without rules allows nothing).
    pub rules: Vec<Rule>,
    index: RuleIndex,
}

/// Which rules can match a peer: a rule whose every `from` entry requires one of a set of
/// exact principals can only match a peer with one of those IDs, so it is found by the peer's
/// ID instead of being tried; the others are always tried. Only candidates are filtered: each
/// rule is still matched in full.
#[derive(Debug, Clone, Default)]
struct RuleIndex {
    by_principal: HashMap<String, Vec<usize>>,
    unindexed: Vec<usize>,
}

impl RuleIndex {
    /// The exact principals one of which a `from` entry requires, if it has such a check.
    fn required_principals(checks: &[Check]) -> Option<Vec<&str>> {
        checks.iter().find_map(|c| {
            (!c.values.is_empty())
                .then(|| {
                    c.values
                        .iter()
                        .map(|m| match m {
                            Matcher::Principal(PrincipalMatch::Exact(e)) => Some(e.as_str()),
                            _ => None,
                        })
                        .collect::<Option<Vec<&str>>>()
                })
                .flatten()
        })
    }

    fn new(rules: &[Rule]) -> Self {
        let mut index = Self::default();
        for (i, r) in rules.iter().enumerate() {
            let keys: Option<Vec<Vec<&str>>> = if r.from.is_empty() {
                None
            } else {
                r.from
                    .iter()
                    .map(|f| Self::required_principals(f))
                    .collect()
            };
            match keys {
                Some(keys) => {
                    for k in keys.into_iter().flatten() {
                        let list = index.by_principal.entry(k.to_owned()).or_default();
                        if !list.contains(&i) {
                            list.push(i);
                        }
                    }
                }
                None => index.unindexed.push(i),
            }
        }
        index
    }
}

impl Policy {
    pub(crate) fn new(info: PolicyInfo, rules: Vec<Rule>) -> Self {
        let index = RuleIndex::new(&rules);
        Self { info, rules, index }
    }

    fn matches(&self, peer: &SpiffeId<'_>, req: &mut dyn RequestAttributes) -> bool {
        // Indexing: the index holds positions in `self.rules`, built from it and never changed.
        let mut try_rule = |i: &usize| self.rules[*i].matches(peer, req);
        self.index.unindexed.iter().any(&mut try_rule)
            || self
                .index
                .by_principal
                .get(peer.as_str())
                .is_some_and(|c| c.iter().any(&mut try_rule))
    }

    /// Every rule in order, no index (the reference the index is tested against).
    #[cfg(test)]
    fn matches_linear(&self, peer: &SpiffeId<'_>, req: &mut dyn RequestAttributes) -> bool {
        self.rules.iter().any(|r| r.matches(peer, req))
    }
}

/// The compiled configuration of one filter instance. It remembers recent decisions
/// (module `recent`) behind a `RefCell`, so it is not `Sync`: each Envoy worker's Wasm VM
/// (single-threaded) compiles its own.
#[derive(Debug, Clone)]
pub struct Engine {
    pub(crate) policies: Vec<Policy>,
    pub(crate) infos: Vec<PolicyInfo>,
    deny: Vec<usize>,
    allow: Vec<usize>,
    audit: Vec<usize>,
    dry_deny: Vec<usize>,
    dry_allow: Vec<usize>,
    pub(crate) warnings: Vec<String>,
    pub(crate) root_id: Option<String>,
    /// No policy reads the request: a decision depends on the peer alone.
    peer_only: bool,
    /// The last decisions, when `peer_only` (see [`recent`]).
    recent: RefCell<Recent>,
}

impl Engine {
    /// An engine for compiled `policies` (the configuration module's job: see
    /// [`Engine::from_json`]), so that the engine knows nothing of the configuration format.
    pub(crate) fn new(
        policies: Vec<Policy>,
        warnings: Vec<String>,
        root_id: Option<String>,
    ) -> Self {
        let infos: Vec<PolicyInfo> = policies.iter().map(|p| p.info.clone()).collect();
        let pick = |action: Action, dry: bool| -> Vec<usize> {
            infos
                .iter()
                .enumerate()
                .filter(|(_, i)| i.action == action && i.dry_run == dry)
                .map(|(n, _)| n)
                .collect()
        };
        let peer_only = !policies
            .iter()
            .flat_map(|p| &p.rules)
            .any(Rule::reads_request);
        Self {
            peer_only,
            recent: RefCell::default(),
            deny: pick(Action::Deny, false),
            allow: pick(Action::Allow, false),
            // Istio has no dry-run AUDIT: an AUDIT policy only ever reports.
            audit: infos
                .iter()
                .enumerate()
                .filter(|(_, i)| i.action == Action::Audit)
                .map(|(n, _)| n)
                .collect(),
            dry_deny: pick(Action::Deny, true),
            dry_allow: pick(Action::Allow, true),
            policies,
            infos,
            warnings,
            root_id,
        }
    }

    /// The configured policies, in configuration order ([`DecidedBy::Policy`] indexes this).
    pub fn policies(&self) -> &[PolicyInfo] {
        &self.infos
    }

    /// Things the configuration does that an operator should know about (e.g. an HTTP-only
    /// rule in a TCP filter), one sentence each.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The configuration's `rootId`, if it has one.
    pub fn root_id(&self) -> Option<&str> {
        self.root_id.as_deref()
    }

    /// Whether no policy reads anything of the request, so that a decision depends on the
    /// peer alone (and [`Engine::authorize`] remembers it).
    pub fn is_peer_only(&self) -> bool {
        self.peer_only
    }

    /// Decides a request, as Istio does: a peer without a valid SPIFFE ID is denied; then a
    /// matching DENY policy denies; then, if there are ALLOW policies, one of them must match;
    /// with no ALLOW policy the request is allowed. AUDIT policies and dry-run policies are
    /// evaluated and reported alongside, never enforced.
    ///
    /// When no policy reads the request, the last few peers' decisions are remembered and
    /// answered again without evaluating (module `recent`); the answer is the same as
    /// [`Engine::evaluate`]'s.
    pub fn authorize(&self, conn: &Connection<'_>, req: &mut dyn RequestAttributes) -> Evaluation {
        let (true, true, Some(san)) = (self.peer_only, conn.mtls, conn.uri_san) else {
            return self.evaluate(conn, req);
        };
        // The engine is not shared between threads (RefCell: not Sync) and nothing below
        // re-enters it, so the borrows never overlap; were one refused all the same, the
        // request would simply be evaluated (a panic would abort the Wasm VM).
        if let Ok(recent) = self.recent.try_borrow()
            && let Some(ev) = recent.get(san)
        {
            return ev.clone();
        }
        let ev = self.evaluate(conn, req);
        if let Ok(mut recent) = self.recent.try_borrow_mut() {
            recent.remember(san, &ev);
        }
        ev
    }

    /// Decides a request by evaluating every policy (what [`Engine::authorize`] does when it
    /// does not remember the peer).
    pub fn evaluate(&self, conn: &Connection<'_>, req: &mut dyn RequestAttributes) -> Evaluation {
        let peer = match peer_of(conn) {
            Ok(p) => p,
            Err(e) => {
                let v = Verdict {
                    allowed: false,
                    decided_by: DecidedBy::Unauthenticated(e),
                };
                return Evaluation {
                    verdict: v,
                    dry_run: (!self.dry_deny.is_empty() || !self.dry_allow.is_empty()).then_some(v),
                    audited: Vec::new(),
                };
            }
        };
        let verdict = self.decide(&self.deny, &self.allow, &peer, req);
        let dry_run = (!self.dry_deny.is_empty() || !self.dry_allow.is_empty())
            .then(|| self.decide(&self.dry_deny, &self.dry_allow, &peer, req));
        // `audit` holds positions in `self.policies` (see `decide`).
        let audited = self
            .audit
            .iter()
            .copied()
            .filter(|&i| self.policies[i].matches(&peer, req))
            .collect();
        Evaluation {
            verdict,
            dry_run,
            audited,
        }
    }

    /// `deny` and `allow` hold positions in `self.policies` (built from it in `compile`,
    /// never changed), so indexing cannot fail.
    fn decide(
        &self,
        deny: &[usize],
        allow: &[usize],
        peer: &SpiffeId<'_>,
        req: &mut dyn RequestAttributes,
    ) -> Verdict {
        if let Some(&i) = deny.iter().find(|&&i| self.policies[i].matches(peer, req)) {
            return Verdict {
                allowed: false,
                decided_by: DecidedBy::Policy(i),
            };
        }
        if allow.is_empty() {
            return Verdict {
                allowed: true,
                decided_by: DecidedBy::NoPolicies,
            };
        }
        match allow.iter().find(|&&i| self.policies[i].matches(peer, req)) {
            Some(&i) => Verdict {
                allowed: true,
                decided_by: DecidedBy::Policy(i),
            },
            None => Verdict {
                allowed: false,
                decided_by: DecidedBy::NoAllowPolicyMatched,
            },
        }
    }
}

fn peer_of<'a>(conn: &Connection<'a>) -> Result<SpiffeId<'a>, PeerError> {
    if !conn.mtls {
        return Err(PeerError::NotMtls);
    }
    let uri = conn
        .uri_san
        .filter(|s| !s.is_empty())
        .ok_or(PeerError::NoUriSan)?;
    SpiffeId::parse(uri)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn pattern() -> impl Strategy<Value = String> {
        prop_oneof![
            (0..4u8).prop_map(|i| format!("td/ns/a/sa/s{i}")),
            (0..4u8).prop_map(|i| format!("spiffe://td/ns/a/sa/s{i}")),
            Just("td/ns/a/*".to_owned()),
            Just("*/sa/s1".to_owned()),
        ]
    }

    fn source() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            prop::collection::vec(pattern(), 1..3).prop_map(|p| json!({"principals": p})),
            prop::collection::vec(pattern(), 1..3)
                .prop_map(|p| json!({"principals": p, "notPrincipals": ["td/ns/a/sa/s3"]})),
            prop::collection::vec(pattern(), 1..3).prop_map(|p| json!({"notPrincipals": p})),
            Just(json!({"namespaces": ["a"]})),
        ]
    }

    fn rule() -> impl Strategy<Value = serde_json::Value> {
        prop::option::of(prop::collection::vec(source(), 1..3)).prop_map(|from| match from {
            Some(f) => {
                json!({"from": f.into_iter().map(|s| json!({"source": s})).collect::<Vec<_>>()})
            }
            None => json!({}),
        })
    }

    fn compile(policies: serde_json::Value, protocol: Protocol) -> Engine {
        let cfg = json!({"trustDomain": "td", "policies": policies});
        Engine::from_json(cfg.to_string().as_bytes(), protocol).unwrap()
    }

    fn policy(action: &str, rule: serde_json::Value) -> serde_json::Value {
        json!({"name": "p", "namespace": "n", "spec": {"action": action, "rules": [rule]}})
    }

    /// Only policies on the peer alone make the engine remember decisions; anything read from
    /// the request, in any policy (AUDIT and dry-run included), turns it off.
    #[test]
    fn peer_only_is_exactly_the_policies_on_the_peer() {
        let from = json!({"source": {"principals": ["td/ns/a/sa/s1"], "notNamespaces": ["b"]}});
        let peer_only = [
            json!([]),
            json!([policy("ALLOW", json!({"from": [from]}))]),
            json!([policy(
                "DENY",
                json!({"from": [from],
                "when": [{"key": "source.principal", "values": ["td/ns/a/*"]},
                         {"key": "source.namespace", "notValues": ["c"]}]})
            )]),
        ];
        for p in peer_only {
            assert!(compile(p.clone(), Protocol::Http).is_peer_only(), "{p}");
        }
        let reads_request = [
            json!({"to": [{"operation": {"paths": ["/x"]}}]}),
            json!({"to": [{"operation": {"notMethods": ["GET"]}}]}),
            json!({"to": [{"operation": {"hosts": ["a.example"]}}]}),
            json!({"to": [{"operation": {"ports": ["8080"]}}]}),
            json!({"from": [from], "when": [{"key": "request.headers[x-a]", "values": ["1"]}]}),
        ];
        for rule in reads_request {
            for action in ["ALLOW", "DENY", "AUDIT"] {
                let e = compile(json!([policy(action, rule.clone())]), Protocol::Http);
                assert!(!e.is_peer_only(), "{action} {rule}");
            }
            let mut dry = policy("ALLOW", rule.clone());
            dry["dryRun"] = json!(true);
            let e = compile(
                json!([dry, {"name": "q", "namespace": "n", "spec": {"rules": [{"from": [from]}]}}]),
                Protocol::Http,
            );
            assert!(!e.is_peer_only(), "dry-run {rule}");
        }
    }

    /// With a policy that reads the request, the same peer gets a decision per request.
    #[test]
    fn decisions_that_read_the_request_are_not_remembered() {
        let e = compile(
            json!([policy(
                "ALLOW",
                json!({
                    "from": [{"source": {"principals": ["td/ns/a/sa/s1"]}}],
                    "to": [{"operation": {"paths": ["/ok"]}}]
                })
            )]),
            Protocol::Http,
        );
        let conn = Connection {
            mtls: true,
            uri_san: Some("spiffe://td/ns/a/sa/s1"),
        };
        for (path, allowed) in [("/ok", true), ("/no", false), ("/ok", true), ("/no", false)] {
            let ev = e.authorize(&conn, &mut StaticRequest::get(path));
            assert_eq!(ev.verdict.allowed, allowed, "{path}");
        }
    }

    /// A remembered peer is answered without evaluating: its request is not even read.
    #[test]
    fn remembered_peers_are_answered_from_memory() {
        struct Unreadable;
        impl RequestAttributes for Unreadable {
            fn method(&mut self) -> Option<&str> {
                unreachable!("a remembered decision reads no request")
            }
            fn path(&mut self) -> Option<&str> {
                unreachable!()
            }
            fn host(&mut self) -> Option<&str> {
                unreachable!()
            }
            fn header(&mut self, _: &str) -> Option<&str> {
                unreachable!()
            }
            fn destination_port(&mut self) -> Option<u32> {
                unreachable!()
            }
            fn sni(&mut self) -> Option<&str> {
                unreachable!()
            }
        }
        let e = compile(
            json!([policy(
                "ALLOW",
                json!({"from": [{"source": {"principals": ["td/ns/a/sa/s1"]}}]})
            )]),
            Protocol::Http,
        );
        assert!(e.is_peer_only());
        let s1 = Connection {
            mtls: true,
            uri_san: Some("spiffe://td/ns/a/sa/s1"),
        };
        let first = e.authorize(&s1, &mut StaticRequest::get("/"));
        assert!(first.verdict.allowed);
        assert!(e.recent.borrow().get("spiffe://td/ns/a/sa/s1").is_some());
        assert_eq!(e.authorize(&s1, &mut Unreadable), first);
        // Not a peer the engine has seen: evaluated (and denied).
        let s2 = Connection {
            mtls: true,
            uri_san: Some("spiffe://td/ns/a/sa/s2"),
        };
        assert!(
            !e.authorize(&s2, &mut StaticRequest::get("/"))
                .verdict
                .allowed
        );
        // Not mutual TLS: never answered from memory, whatever the URI SAN.
        let plain = Connection {
            mtls: false,
            uri_san: s1.uri_san,
        };
        assert!(
            !e.authorize(&plain, &mut StaticRequest::get("/"))
                .verdict
                .allowed
        );
    }

    proptest! {
        /// The principal index never changes whether a policy matches.
        #[test]
        fn index_matches_like_linear(rules in prop::collection::vec(rule(), 0..8), peer in 0..5u8) {
            let cfg = json!({"trustDomain": "td", "policies": [
                {"name": "p", "namespace": "n", "spec": {"rules": rules}}]});
            let e = Engine::from_json(cfg.to_string().as_bytes(), Protocol::Http).unwrap();
            let uri = format!("spiffe://td/ns/a/sa/s{peer}");
            let id = SpiffeId::parse(&uri).unwrap();
            let p = &e.policies[0];
            let mut req = StaticRequest::get("/");
            prop_assert_eq!(p.matches(&id, &mut req), p.matches_linear(&id, &mut req));
        }
    }
}
