//! The plugin configuration (JSON) and its compilation into matchers.
//!
//! Policy specs are Istio's `security.istio.io/v1` AuthorizationPolicy `spec`, field for field.
//! Every field of that API is known here: the ones the filter enforces are compiled, the others
//! (`requestPrincipals`, `ipBlocks`, `CUSTOM`, JWT and IP conditions, path templates) are
//! rejected with an error naming them. Unknown fields are rejected too.

use crate::engine::{Action, Check, Engine, Matcher, Policy, PolicyInfo, Protocol, Rule};
use crate::matcher::{Glob, PrincipalMatch, SPIFFE, ServiceAccountMatch, StrMatch};
use serde::Deserialize;
use serde_json::Value;

/// Istio's default trust domain, which in a policy also stands for the local trust domain.
pub const CLUSTER_LOCAL: &str = "cluster.local";

/// A configuration the filter refuses.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not JSON, or not the expected shape (serde's message names unknown fields).
    #[error("invalid configuration: {0}")]
    Json(#[from] serde_json::Error),
    /// A field of Istio's API that the filter cannot enforce.
    #[error("{at}: `{field}` is not supported by the Sigil filter ({why}); remove it")]
    Unsupported {
        at: String,
        field: String,
        why: &'static str,
    },
    /// A value the API does not allow.
    #[error("{at}: {msg}")]
    Invalid { at: String, msg: String },
}

fn unsupported(at: &str, field: &str, why: &'static str) -> ConfigError {
    ConfigError::Unsupported {
        at: at.to_owned(),
        field: field.to_owned(),
        why,
    }
}

fn invalid(at: &str, msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        at: at.to_owned(),
        msg: msg.into(),
    }
}

/// The plugin configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    #[serde(default)]
    pub policies: Vec<PolicyEntry>,
    /// The local trust domain (Istio's `meshConfig.trustDomain`); default `cluster.local`.
    #[serde(default)]
    pub trust_domain: Option<String>,
    /// Istio's `meshConfig.trustDomainAliases`.
    #[serde(default)]
    pub trust_domain_aliases: Vec<String>,
    /// Envoy's `root_id` for this plugin: when set, the filter checks it is loaded under it.
    #[serde(default)]
    pub root_id: Option<String>,
}

/// One policy: `metadata.name`, `metadata.namespace`, and the spec.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyEntry {
    pub name: String,
    pub namespace: String,
    /// Istio's `istio.io/dry-run: "true"` annotation.
    #[serde(default)]
    pub dry_run: bool,
    pub spec: Spec,
}

/// `AuthorizationPolicy.spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    /// Where the policy applies: decided by where the filter is loaded, not evaluated.
    pub selector: Option<Value>,
    pub target_ref: Option<Value>,
    pub target_refs: Option<Value>,
    pub action: Option<String>,
    pub provider: Option<Value>,
    pub rules: Option<Vec<RuleSpec>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleSpec {
    pub from: Option<Vec<From>>,
    pub to: Option<Vec<To>>,
    pub when: Option<Vec<Condition>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct From {
    pub source: Option<Source>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    pub principals: Option<Vec<String>>,
    pub not_principals: Option<Vec<String>>,
    pub namespaces: Option<Vec<String>>,
    pub not_namespaces: Option<Vec<String>>,
    pub service_accounts: Option<Vec<String>>,
    pub not_service_accounts: Option<Vec<String>>,
    pub request_principals: Option<Vec<String>>,
    pub not_request_principals: Option<Vec<String>>,
    pub ip_blocks: Option<Vec<String>>,
    pub not_ip_blocks: Option<Vec<String>>,
    pub remote_ip_blocks: Option<Vec<String>>,
    pub not_remote_ip_blocks: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct To {
    pub operation: Option<Operation>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    pub hosts: Option<Vec<String>>,
    pub not_hosts: Option<Vec<String>>,
    pub ports: Option<Vec<String>>,
    pub not_ports: Option<Vec<String>>,
    pub methods: Option<Vec<String>>,
    pub not_methods: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    pub not_paths: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    pub key: String,
    pub values: Option<Vec<String>>,
    pub not_values: Option<Vec<String>>,
}

/// Parses the JSON configuration (shape only; [`compile`] checks the values).
pub fn parse(json: &[u8]) -> Result<Config, ConfigError> {
    Ok(serde_json::from_slice(json)?)
}

/// Trust domain and aliases: Istio's `trustdomain.Bundle`.
struct TrustDomains(Vec<String>);

impl TrustDomains {
    /// Istio's `ReplaceTrustDomainAliases` for one Istio-style principal (`td/ns/x/sa/y`): a
    /// principal whose trust domain is the local one, an alias or `cluster.local` stands for
    /// the same identity in every one of them. Others (and `*` trust domains) stay as they are.
    fn expand(&self, principal: &str) -> Vec<String> {
        let parts: Vec<&str> = principal.split('/').collect();
        if parts.len() != 5 || parts[0] == "*" {
            return vec![principal.to_owned()];
        }
        let td = parts[0];
        if !(td == CLUSTER_LOCAL || self.0.iter().any(|t| td_match(td, t))) {
            return vec![principal.to_owned()];
        }
        let mut out: Vec<String> = Vec::new();
        for t in &self.0 {
            let p = if suffix_match(t, td) {
                principal.to_owned()
            } else {
                format!("{t}/{}", parts[1..].join("/"))
            };
            if !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }
}

/// Istio's trustdomain `stringMatch` for one list element: either side may be a pattern.
fn td_match(a: &str, s: &str) -> bool {
    a == s
        || s == "*"
        || prefix_match(a, s)
        || prefix_match(s, a)
        || suffix_match(a, s)
        || suffix_match(s, a)
}

fn prefix_match(a: &str, pattern: &str) -> bool {
    pattern.strip_suffix('*').is_some_and(|p| a.starts_with(p))
}

fn suffix_match(a: &str, pattern: &str) -> bool {
    pattern.strip_prefix('*').is_some_and(|p| a.ends_with(p))
}

/// Compilation context: where we are (for messages), the protocol, the trust domains.
struct Ctx<'a> {
    protocol: Protocol,
    tds: &'a TrustDomains,
    namespace: &'a str,
    warnings: Vec<String>,
}

/// A compiled field that the TCP filter cannot see.
const HTTP_ONLY: bool = true;

/// The result of compiling one field: its check, and whether it is HTTP-only.
struct Field {
    check: Check,
    http_only: bool,
}

fn values(v: &Option<Vec<String>>) -> &[String] {
    v.as_deref().unwrap_or(&[])
}

fn non_empty_values(at: &str, name: &str, v: &Option<Vec<String>>) -> Result<(), ConfigError> {
    if values(v).iter().any(|s| s.is_empty()) {
        return Err(invalid(at, format!("`{name}` has an empty value")));
    }
    Ok(())
}

/// Compiles `values`/`notValues` with `f`; `None` when neither is set.
fn field(
    at: &str,
    names: (&str, &str),
    vals: &Option<Vec<String>>,
    nots: &Option<Vec<String>>,
    http_only: bool,
    mut f: impl FnMut(&str, &str) -> Result<Vec<Matcher>, ConfigError>,
) -> Result<Option<Field>, ConfigError> {
    non_empty_values(at, names.0, vals)?;
    non_empty_values(at, names.1, nots)?;
    if values(vals).is_empty() && values(nots).is_empty() {
        return Ok(None);
    }
    let mut check = Check::default();
    for v in values(vals) {
        check.values.extend(f(names.0, v)?);
    }
    for v in values(nots) {
        check.not_values.extend(f(names.1, v)?);
    }
    Ok(Some(Field { check, http_only }))
}

fn principal_matchers(ctx: &Ctx<'_>, v: &str) -> Vec<Matcher> {
    let istio_style = v.strip_prefix(SPIFFE).unwrap_or(v);
    ctx.tds
        .expand(istio_style)
        .iter()
        .map(|p| Matcher::Principal(PrincipalMatch::new(p)))
        .collect()
}

fn port(at: &str, name: &str, v: &str) -> Result<Matcher, ConfigError> {
    match v.parse::<u32>() {
        Ok(p) if p <= 65535 => Ok(Matcher::Port(p)),
        _ => Err(invalid(at, format!("`{name}`: {v:?} is not a port number"))),
    }
}

fn path(at: &str, name: &str, v: &str) -> Result<Matcher, ConfigError> {
    if v.contains('{') {
        return Err(unsupported(
            at,
            name,
            "path templates ({*}, {**}) are not supported",
        ));
    }
    Ok(Matcher::Path(StrMatch::new(v)))
}

fn presence_or(v: &str) -> Option<StrMatch> {
    (v != "*").then(|| StrMatch::new(v))
}

fn compile_source(ctx: &Ctx<'_>, at: &str, s: &Source) -> Result<Vec<Field>, ConfigError> {
    let unsupported_fields: [(&str, &Option<Vec<String>>, &'static str); 6] = [
        (
            "requestPrincipals",
            &s.request_principals,
            "JWT request principals need Envoy's jwt_authn filter",
        ),
        (
            "notRequestPrincipals",
            &s.not_request_principals,
            "JWT request principals need Envoy's jwt_authn filter",
        ),
        (
            "ipBlocks",
            &s.ip_blocks,
            "Sigil authorizes by SPIFFE identity, not by IP",
        ),
        (
            "notIpBlocks",
            &s.not_ip_blocks,
            "Sigil authorizes by SPIFFE identity, not by IP",
        ),
        (
            "remoteIpBlocks",
            &s.remote_ip_blocks,
            "Sigil authorizes by SPIFFE identity, not by IP",
        ),
        (
            "notRemoteIpBlocks",
            &s.not_remote_ip_blocks,
            "Sigil authorizes by SPIFFE identity, not by IP",
        ),
    ];
    for (name, v, why) in unsupported_fields {
        if v.is_some() {
            return Err(unsupported(at, name, why));
        }
    }
    let mut out = Vec::new();
    let fields = [
        field(
            at,
            ("principals", "notPrincipals"),
            &s.principals,
            &s.not_principals,
            false,
            |_, v| Ok(principal_matchers(ctx, v)),
        )?,
        field(
            at,
            ("namespaces", "notNamespaces"),
            &s.namespaces,
            &s.not_namespaces,
            false,
            |_, v| Ok(vec![Matcher::Namespace(Glob::namespace(v))]),
        )?,
        field(
            at,
            ("serviceAccounts", "notServiceAccounts"),
            &s.service_accounts,
            &s.not_service_accounts,
            false,
            |name, v| {
                let (ns, sa) = v.split_once('/').unwrap_or((ctx.namespace, v));
                if ns.is_empty() || sa.is_empty() || sa.contains('/') || v.contains('*') {
                    return Err(invalid(
                        at,
                        format!("`{name}`: {v:?} is not `<name>` or `<namespace>/<name>`"),
                    ));
                }
                Ok(vec![Matcher::ServiceAccount(ServiceAccountMatch::new(
                    ns, sa,
                ))])
            },
        )?,
    ];
    out.extend(fields.into_iter().flatten());
    if out.is_empty() {
        return Err(invalid(at, "`source` must not be empty"));
    }
    Ok(out)
}

fn compile_operation(at: &str, o: &Operation) -> Result<Vec<Field>, ConfigError> {
    let fields = [
        field(
            at,
            ("hosts", "notHosts"),
            &o.hosts,
            &o.not_hosts,
            HTTP_ONLY,
            |_, v| Ok(vec![Matcher::Host(presence_or(v))]),
        )?,
        field(
            at,
            ("ports", "notPorts"),
            &o.ports,
            &o.not_ports,
            false,
            |name, v| Ok(vec![port(at, name, v)?]),
        )?,
        field(
            at,
            ("methods", "notMethods"),
            &o.methods,
            &o.not_methods,
            HTTP_ONLY,
            |_, v| Ok(vec![Matcher::Method(presence_or(v))]),
        )?,
        field(
            at,
            ("paths", "notPaths"),
            &o.paths,
            &o.not_paths,
            HTTP_ONLY,
            |name, v| Ok(vec![path(at, name, v)?]),
        )?,
    ];
    let out: Vec<Field> = fields.into_iter().flatten().collect();
    if out.is_empty() {
        return Err(invalid(at, "`operation` must not be empty"));
    }
    Ok(out)
}

fn compile_condition(ctx: &Ctx<'_>, at: &str, c: &Condition) -> Result<Field, ConfigError> {
    let key = c.key.as_str();
    let names = ("values", "notValues");
    let f = if let Some(h) = key.strip_prefix("request.headers") {
        let name = h
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid(at, format!("bad key {key:?}: want request.headers[NAME]")))?
            .to_ascii_lowercase();
        field(at, names, &c.values, &c.not_values, HTTP_ONLY, |_, v| {
            Ok(vec![Matcher::Header(name.clone(), presence_or(v))])
        })?
    } else {
        match key {
            "source.principal" => field(at, names, &c.values, &c.not_values, false, |_, v| {
                Ok(principal_matchers(ctx, v))
            })?,
            "source.namespace" => field(at, names, &c.values, &c.not_values, false, |_, v| {
                Ok(vec![Matcher::Namespace(Glob::namespace(v))])
            })?,
            "destination.port" => field(at, names, &c.values, &c.not_values, false, |n, v| {
                Ok(vec![port(at, n, v)?])
            })?,
            "connection.sni" => field(at, names, &c.values, &c.not_values, false, |_, v| {
                Ok(vec![Matcher::Sni(StrMatch::new(v))])
            })?,
            "source.ip" | "remote.ip" | "destination.ip" => {
                return Err(unsupported(
                    at,
                    key,
                    "Sigil authorizes by SPIFFE identity, not by IP",
                ));
            }
            k if k.starts_with("request.auth.") => {
                return Err(unsupported(
                    at,
                    key,
                    "JWT conditions need Envoy's jwt_authn filter",
                ));
            }
            k if k.starts_with("experimental.") => {
                return Err(unsupported(
                    at,
                    key,
                    "Envoy metadata is not readable by the filter",
                ));
            }
            _ => return Err(invalid(at, format!("unknown condition key {key:?}"))),
        }
    };
    f.ok_or_else(|| invalid(at, "a condition needs `values` or `notValues`"))
}

/// Istio's TCP treatment of one group of fields (a source, an operation, or the conditions):
/// in an ALLOW policy a group with HTTP-only fields never matches (`None`); otherwise the
/// HTTP-only fields are dropped.
fn for_protocol(
    ctx: &mut Ctx<'_>,
    at: &str,
    action: Action,
    fields: Vec<Field>,
) -> Option<Vec<Check>> {
    if ctx.protocol == Protocol::Http {
        return Some(fields.into_iter().map(|f| f.check).collect());
    }
    if !fields.iter().any(|f| f.http_only) {
        return Some(fields.into_iter().map(|f| f.check).collect());
    }
    if action == Action::Allow {
        ctx.warnings.push(format!(
            "{at}: HTTP-only fields in an ALLOW rule of a TCP filter: the rule never matches"
        ));
        return None;
    }
    ctx.warnings.push(format!(
        "{at}: HTTP-only fields ignored by the TCP filter (the {} rule applies more widely)",
        action.as_str()
    ));
    Some(
        fields
            .into_iter()
            .filter(|f| !f.http_only)
            .map(|f| f.check)
            .collect(),
    )
}

fn compile_rule(
    ctx: &mut Ctx<'_>,
    at: &str,
    action: Action,
    r: &RuleSpec,
) -> Result<Option<Rule>, ConfigError> {
    let mut rule = Rule::default();
    for (i, f) in r.from.iter().flatten().enumerate() {
        let at = format!("{at}.from[{i}]");
        let src = f
            .source
            .as_ref()
            .ok_or_else(|| invalid(&at, "`source` must be set"))?;
        let fields = compile_source(ctx, &format!("{at}.source"), src)?;
        // Sources have no HTTP-only fields.
        rule.from
            .push(fields.into_iter().map(|f| f.check).collect());
    }
    let mut to_dropped = false;
    for (i, t) in r.to.iter().flatten().enumerate() {
        let at = format!("{at}.to[{i}]");
        let op = t
            .operation
            .as_ref()
            .ok_or_else(|| invalid(&at, "`operation` must be set"))?;
        let fields = compile_operation(&format!("{at}.operation"), op)?;
        match for_protocol(ctx, &at, action, fields) {
            Some(checks) => rule.to.push(checks),
            None => to_dropped = true,
        }
    }
    let mut when = Vec::new();
    for (i, c) in r.when.iter().flatten().enumerate() {
        when.push(compile_condition(ctx, &format!("{at}.when[{i}]"), c)?);
    }
    let when = for_protocol(ctx, &format!("{at}.when"), action, when);
    // In an ALLOW rule for TCP, an HTTP-only `to` or `when` makes the whole rule never match
    // (Istio drops the rule).
    match when {
        Some(w) if !to_dropped => rule.when = w,
        _ => return Ok(None),
    }
    Ok(Some(rule))
}

// === impl Engine ===

/// Building an engine from configuration lives here, with the compiler, so that the engine
/// does not depend on the configuration format (nor the format on the engine's constructor).
impl Engine {
    /// Parses and compiles a plugin configuration. Any field Sigil cannot enforce is an error.
    pub fn from_json(json: &[u8], protocol: Protocol) -> Result<Self, ConfigError> {
        let cfg: Config = parse(json)?;
        Self::compile(&cfg, protocol)
    }

    /// Compiles a parsed configuration.
    pub fn compile(cfg: &Config, protocol: Protocol) -> Result<Self, ConfigError> {
        let (policies, warnings) = compile(cfg, protocol)?;
        Ok(Self::new(policies, warnings, cfg.root_id.clone()))
    }
}

/// Compiles every policy; also returns warnings for the operator.
pub(crate) fn compile(
    cfg: &Config,
    protocol: Protocol,
) -> Result<(Vec<Policy>, Vec<String>), ConfigError> {
    let td = cfg.trust_domain.as_deref().unwrap_or(CLUSTER_LOCAL);
    for t in std::iter::once(td).chain(cfg.trust_domain_aliases.iter().map(String::as_str)) {
        if t.is_empty() || t.contains('/') {
            return Err(invalid(
                "trustDomain/trustDomainAliases",
                format!("{t:?} is not a trust domain"),
            ));
        }
    }
    let tds = TrustDomains(
        std::iter::once(td.to_owned())
            .chain(cfg.trust_domain_aliases.iter().cloned())
            .collect(),
    );
    let mut policies = Vec::with_capacity(cfg.policies.len());
    let mut warnings = Vec::new();
    for (i, p) in cfg.policies.iter().enumerate() {
        let at = format!("policies[{i}] ({}/{})", p.namespace, p.name);
        if p.name.is_empty() || p.namespace.is_empty() {
            return Err(invalid(&at, "`name` and `namespace` must not be empty"));
        }
        if policies
            .iter()
            .any(|q: &Policy| q.info.name == p.name && q.info.namespace == p.namespace)
        {
            return Err(invalid(&at, "duplicate policy name"));
        }
        let spec = &p.spec;
        if spec.provider.is_some() {
            return Err(unsupported(
                &format!("{at}: spec"),
                "provider",
                "CUSTOM actions need an external authorizer",
            ));
        }
        let action = match spec.action.as_deref() {
            None | Some("ALLOW") => Action::Allow,
            Some("DENY") => Action::Deny,
            Some("AUDIT") => Action::Audit,
            Some("CUSTOM") => {
                return Err(unsupported(
                    &format!("{at}: spec.action"),
                    "CUSTOM",
                    "CUSTOM actions need an external authorizer",
                ));
            }
            Some(other) => {
                return Err(invalid(
                    &format!("{at}: spec.action"),
                    format!("unknown action {other:?} (ALLOW, DENY or AUDIT)"),
                ));
            }
        };
        if p.dry_run && action == Action::Audit {
            return Err(invalid(
                &at,
                "`dryRun` applies to ALLOW and DENY policies only",
            ));
        }
        let mut ctx = Ctx {
            protocol,
            tds: &tds,
            namespace: &p.namespace,
            warnings: Vec::new(),
        };
        if spec.selector.is_some() || spec.target_ref.is_some() || spec.target_refs.is_some() {
            ctx.warnings.push(format!(
                "{at}: selector/targetRef(s) are not evaluated: the policy applies to every \
                 request this filter sees"
            ));
        }
        let mut rules = Vec::new();
        for (j, r) in spec.rules.iter().flatten().enumerate() {
            if let Some(rule) =
                compile_rule(&mut ctx, &format!("{at}: spec.rules[{j}]"), action, r)?
            {
                rules.push(rule);
            }
        }
        warnings.append(&mut ctx.warnings);
        policies.push(Policy::new(
            PolicyInfo {
                name: p.name.clone(),
                namespace: p.namespace.clone(),
                action,
                dry_run: p.dry_run,
            },
            rules,
        ));
    }
    Ok((policies, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_domain_aliases_as_istio() {
        let tds = TrustDomains(vec!["td2".into(), "td1".into()]);
        assert_eq!(
            tds.expand("td1/ns/foo/sa/bar"),
            ["td2/ns/foo/sa/bar", "td1/ns/foo/sa/bar"]
        );
        assert_eq!(
            tds.expand("cluster.local/ns/foo/sa/bar"),
            ["td2/ns/foo/sa/bar", "td1/ns/foo/sa/bar"]
        );
        // Not this mesh's trust domain, wildcard trust domain, not td/ns/x/sa/y: unchanged.
        assert_eq!(tds.expand("other/ns/foo/sa/bar"), ["other/ns/foo/sa/bar"]);
        assert_eq!(tds.expand("*/ns/foo/sa/bar"), ["*/ns/foo/sa/bar"]);
        assert_eq!(tds.expand("td1/ns/foo/*"), ["td1/ns/foo/*"]);
        // A suffix-wildcard trust domain stays for the domains it covers.
        assert_eq!(
            tds.expand("*td1/ns/foo/sa/bar"),
            ["td2/ns/foo/sa/bar", "*td1/ns/foo/sa/bar"]
        );
    }
}
