//! A pod's registration entry from a ClusterSPIFFEID, as spire-controller-manager renders it
//! (`pkg/spireentry/entries.go`, `renderPodEntry`): the parent ID from the parent template with
//! only the node known, then the SPIFFE ID, DNS names and workload selectors with the pod too;
//! selectors start with `k8s:pod-uid:<uid>`; DNS names are the rendered templates, then the
//! names of the services targeting the pod, without duplicates.
//!
//! Templates are Go `text/template` ([`sigil_gotemplate`]), executed over the Kubernetes objects
//! seen as Go sees them: struct fields under Go's names (`.PodMeta.Namespace`,
//! `.PodSpec.ServiceAccountName`, `.NodeMeta.UID`), labels and annotations as maps.

use std::time::Duration;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use sigil_gotemplate::{DataModel, Template};
use sigil_spiffe::{SpiffeId, TrustDomain};

use crate::crd::{ClusterSPIFFEIDSpec, ClusterStaticEntrySpec};

/// spire-controller-manager's default `parentIDTemplate`: the agent IDs of `k8s_psat`.
pub const DEFAULT_PARENT_ID_TEMPLATE: &str =
    "spiffe://{{ .TrustDomain }}/spire/agent/k8s_psat/{{ .ClusterName }}/{{ .NodeMeta.UID }}";

/// What every pod entry is rendered with (the controller's configuration).
#[derive(Clone, Debug)]
pub struct RenderContext {
    pub trust_domain: TrustDomain,
    pub cluster_name: String,
    pub cluster_domain: String,
    pub parent_id_template: Template,
}

/// A ClusterSPIFFEID's templates, parsed once.
#[derive(Clone, Debug)]
pub struct ParsedSpec {
    pub spiffe_id: Template,
    pub dns_names: Vec<Template>,
    pub workload_selectors: Vec<Template>,
    pub x509_svid_ttl: Duration,
    pub jwt_svid_ttl: Duration,
    pub federates_with: Vec<TrustDomain>,
    pub admin: bool,
    pub downstream: bool,
    pub hint: String,
}

/// One rendered registration entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderedEntry {
    pub spiffe_id: SpiffeId,
    pub parent_id: SpiffeId,
    /// `(type, value)`, `k8s:pod-uid:<uid>` first.
    pub selectors: Vec<(String, String)>,
    pub dns_names: Vec<String>,
    pub x509_svid_ttl: Duration,
    pub jwt_svid_ttl: Duration,
    pub federates_with: Vec<TrustDomain>,
    pub admin: bool,
    pub downstream: bool,
    pub hint: String,
    /// ClusterStaticEntry's `storeSVID` (pod entries never).
    pub store_svid: bool,
}

/// A service that targets the pod (from its EndpointSlices), for `autoPopulateDNSNames`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRef {
    pub name: String,
    pub namespace: String,
}

/// Why a spec or a pod's entry could not be rendered (upstream's wording).
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("failed to parse {field} template: {source}")]
    Parse {
        field: &'static str,
        #[source]
        source: sigil_gotemplate::ParseError,
    },
    #[error("invalid {field}: {reason}")]
    Spec { field: &'static str, reason: String },
    #[error("failed to render {what}: failed to execute template: {source}")]
    Execute {
        what: &'static str,
        #[source]
        source: sigil_gotemplate::ExecError,
    },
    #[error("failed to render {what}: invalid SPIFFE ID: {reason}")]
    InvalidId { what: &'static str, reason: String },
    /// A ClusterStaticEntry's value (upstream's wording).
    #[error("{0}")]
    Static(String),
    #[error("failed to render workload selector: invalid workload selector {rendered:?}: {reason}")]
    Selector {
        rendered: String,
        reason: &'static str,
    },
}

// === impl ParsedSpec ===

impl ParsedSpec {
    /// Parses a ClusterSPIFFEID's templates and values once, so a spec error is reported on the
    /// resource, not once per pod.
    pub fn parse(spec: &ClusterSPIFFEIDSpec) -> Result<Self, RenderError> {
        let parse = |field: &'static str, text: &str| {
            Template::parse(field, text).map_err(|source| RenderError::Parse { field, source })
        };
        let all = |field: &'static str, list: &Option<Vec<String>>| {
            list.iter()
                .flatten()
                .map(|t| parse(field, t))
                .collect::<Result<Vec<_>, _>>()
        };
        let ttl = |field: &'static str, d: &Option<crate::duration::Duration>| {
            let nanos = d.as_ref().map(|d| d.as_nanos()).unwrap_or(0);
            u64::try_from(nanos)
                .map(Duration::from_nanos)
                .map_err(|_| RenderError::Spec {
                    field,
                    reason: "must not be negative".into(),
                })
        };
        Ok(Self {
            spiffe_id: parse("spiffeIDTemplate", &spec.spiffe_id_template)?,
            dns_names: all("dnsNameTemplates", &spec.dns_name_templates)?,
            workload_selectors: all(
                "workloadSelectorTemplates",
                &spec.workload_selector_templates,
            )?,
            x509_svid_ttl: ttl("ttl", &spec.ttl)?,
            jwt_svid_ttl: ttl("jwtTtl", &spec.jwt_ttl)?,
            federates_with: spec
                .federates_with
                .iter()
                .flatten()
                .map(|td| {
                    td.parse()
                        .map_err(|e: sigil_spiffe::IdError| RenderError::Spec {
                            field: "federatesWith",
                            reason: format!("{td:?}: {e}"),
                        })
                })
                .collect::<Result<_, _>>()?,
            admin: spec.admin.unwrap_or(false),
            downstream: spec.downstream.unwrap_or(false),
            hint: spec.hint.clone().unwrap_or_default(),
        })
    }
}

/// Renders the entry of `pod` (on `node`) for a parsed ClusterSPIFFEID. `services` are the
/// services targeting the pod (empty unless `autoPopulateDNSNames`). Objects are the
/// Kubernetes JSON of the Pod and Node.
pub fn render_pod_entry(
    ctx: &RenderContext,
    spec: &ParsedSpec,
    pod: &Value,
    node: &Value,
    services: &[ServiceRef],
) -> Result<RenderedEntry, RenderError> {
    let model = DataModel::kubernetes();
    // The parent ID sees only the node: PodMeta and PodSpec are still nil then, as upstream.
    let mut data = json!({
        "TrustDomain": ctx.trust_domain.as_str(),
        "ClusterName": ctx.cluster_name,
        "ClusterDomain": ctx.cluster_domain,
        "PodMeta": Value::Null,
        "PodSpec": Value::Null,
        "NodeMeta": object_meta(&node["metadata"]),
        "NodeSpec": go_struct(&node["spec"], NODE_SPEC_ZERO),
    });
    let render = |what: &'static str, t: &Template, data: &Value| {
        t.execute_with(data, &model)
            .map_err(|source| RenderError::Execute { what, source })
    };
    let parent_id = spiffe_id(
        "parent ID",
        &render("parent ID", &ctx.parent_id_template, &data)?,
        &ctx.trust_domain,
    )?;
    data["PodMeta"] = object_meta(&pod["metadata"]);
    data["PodSpec"] = go_struct(&pod["spec"], POD_SPEC_ZERO);
    let id = spiffe_id(
        "SPIFFE ID",
        &render("SPIFFE ID", &spec.spiffe_id, &data)?,
        &ctx.trust_domain,
    )?;

    let mut dns_names: Vec<String> = Vec::new();
    let mut push = |name: String| {
        if !dns_names.contains(&name) {
            dns_names.push(name);
        }
    };
    for t in &spec.dns_names {
        push(render("DNS name", t, &data)?);
    }
    let mut from_services = Vec::new();
    for s in services {
        from_services.extend([
            s.name.clone(),
            format!("{}.{}", s.name, s.namespace),
            format!("{}.{}.svc", s.name, s.namespace),
        ]);
        if !ctx.cluster_domain.is_empty() {
            from_services.push(format!(
                "{}.{}.svc.{}",
                s.name, s.namespace, ctx.cluster_domain
            ));
        }
    }
    from_services.sort();
    for n in from_services {
        push(n);
    }

    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let mut selectors = vec![("k8s".to_string(), format!("pod-uid:{uid}"))];
    for t in &spec.workload_selectors {
        let rendered = render("workload selector", t, &data)?;
        selectors.push(parse_selector(&rendered)?);
    }
    Ok(RenderedEntry {
        spiffe_id: id,
        parent_id,
        selectors,
        dns_names,
        x509_svid_ttl: spec.x509_svid_ttl,
        jwt_svid_ttl: spec.jwt_svid_ttl,
        federates_with: spec.federates_with.clone(),
        admin: spec.admin,
        downstream: spec.downstream,
        hint: spec.hint.clone(),
        store_svid: false,
    })
}

/// A ClusterStaticEntry's entry (upstream's `renderStaticEntry`): its values parsed, nothing
/// templated.
pub fn render_static_entry(spec: &ClusterStaticEntrySpec) -> Result<RenderedEntry, RenderError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| RenderError::Static(format!("{what}: {e}"));
    let id = |what: &str, s: &str| {
        s.parse::<SpiffeId>()
            .map_err(|e| bad(&format!("failed to parse {what}"), &e))
    };
    let ttl = |d: &Option<crate::duration::Duration>| {
        u64::try_from(d.as_ref().map(|d| d.as_nanos()).unwrap_or(0))
            .map(Duration::from_nanos)
            .map_err(|_| bad("invalid TTL", &"must not be negative"))
    };
    Ok(RenderedEntry {
        spiffe_id: id("SPIFFEID", &spec.spiffe_id)?,
        parent_id: id("ParentID", &spec.parent_id)?,
        selectors: spec
            .selectors
            .iter()
            .map(|s| {
                parse_selector(s).map_err(|e| match e {
                    RenderError::Selector { reason, .. } => {
                        bad("failed to parse Selectors", &reason)
                    }
                    other => other,
                })
            })
            .collect::<Result<_, _>>()?,
        dns_names: spec.dns_names.clone().unwrap_or_default(),
        x509_svid_ttl: ttl(&spec.x509_svid_ttl)?,
        jwt_svid_ttl: ttl(&spec.jwt_svid_ttl)?,
        federates_with: spec
            .federates_with
            .iter()
            .flatten()
            .map(|td| {
                td.parse::<TrustDomain>()
                    .map_err(|e| bad("invalid federatesWith value", &e))
            })
            .collect::<Result<_, _>>()?,
        admin: spec.admin.unwrap_or(false),
        downstream: spec.downstream.unwrap_or(false),
        hint: spec.hint.clone().unwrap_or_default(),
        store_svid: spec.store_svid.unwrap_or(false),
    })
}

/// The key that makes two entries "the same" for masking and reconciling: SPIFFE ID, parent ID
/// and the selector set, in any order (upstream's `makeEntryKey`: hex SHA-256).
pub fn entry_key(spiffe_id: &str, parent_id: &str, selectors: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = selectors.iter().collect();
    sorted.sort();
    let mut h = Sha256::new();
    // Lengths delimit the fields, so no two different tuples hash the same bytes.
    for part in [spiffe_id, parent_id]
        .into_iter()
        .chain(sorted.iter().flat_map(|(t, v)| [t.as_str(), v.as_str()]))
    {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// `type:value` (upstream's `parseSelector`).
pub fn parse_selector(s: &str) -> Result<(String, String), RenderError> {
    let bad = |reason| RenderError::Selector {
        rendered: s.to_string(),
        reason,
    };
    let (t, v) = s
        .split_once(':')
        .ok_or_else(|| bad("expected at least one colon separate the type from the value"))?;
    if t.is_empty() {
        return Err(bad("type cannot be empty"));
    }
    if v.is_empty() {
        return Err(bad("value cannot be empty"));
    }
    Ok((t.to_string(), v.to_string()))
}

fn spiffe_id(
    what: &'static str,
    rendered: &str,
    td: &TrustDomain,
) -> Result<SpiffeId, RenderError> {
    let invalid = |reason: String| RenderError::InvalidId { what, reason };
    let id: SpiffeId = rendered
        .parse()
        .map_err(|e: sigil_spiffe::IdError| invalid(format!("{rendered:?}: {e}")))?;
    if !id.is_member_of(td) {
        return Err(invalid(format!(
            "expected trust domain {:?} but got {:?}",
            td.as_str(),
            id.trust_domain().as_str()
        )));
    }
    Ok(id)
}

/// Zero values of the Go struct fields templates commonly name, so that an unset field reads
/// as Go's zero value rather than as a misspelt field.
const POD_SPEC_ZERO: &[(&str, &str)] = &[
    ("ServiceAccountName", ""),
    ("DeprecatedServiceAccount", ""),
    ("NodeName", ""),
    ("Hostname", ""),
    ("Subdomain", ""),
    ("SchedulerName", ""),
    ("PriorityClassName", ""),
    ("RestartPolicy", ""),
    ("DNSPolicy", ""),
    ("RuntimeClassName", ""),
];
const NODE_SPEC_ZERO: &[(&str, &str)] = &[("PodCIDR", ""), ("ProviderID", "")];

/// An ObjectMeta as Go's struct.
fn object_meta(meta: &Value) -> Value {
    let mut out = go_struct(
        meta,
        &[
            ("Name", ""),
            ("GenerateName", ""),
            ("Namespace", ""),
            ("UID", ""),
            ("ResourceVersion", ""),
        ],
    );
    for (field, zero) in [
        ("Generation", json!(0)),
        ("Labels", Value::Null),
        ("Annotations", Value::Null),
    ] {
        if let Some(m) = out.as_object_mut() {
            m.entry(field).or_insert(zero);
        }
    }
    out
}

/// A Kubernetes JSON object as the Go struct it came from: keys under Go's field names
/// (recursively), string fields missing from the JSON as `""`. Maps (`labels`,
/// `annotations`, `nodeSelector`) keep their keys.
fn go_struct(obj: &Value, string_zero: &[(&str, &str)]) -> Value {
    let mut m = Map::new();
    for (k, v) in string_zero {
        m.insert((*k).to_string(), Value::String((*v).to_string()));
    }
    if let Some(o) = obj.as_object() {
        for (k, v) in o {
            m.insert(go_name(k), go_value(k, v));
        }
    }
    Value::Object(m)
}

fn go_value(json_name: &str, v: &Value) -> Value {
    match v {
        _ if MAP_FIELDS.contains(&json_name) => v.clone(),
        Value::Object(_) => go_struct(v, &[]),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| match i {
                    Value::Object(_) => go_struct(i, &[]),
                    other => other.clone(),
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// JSON fields that are Go maps, whose keys are data, not field names.
const MAP_FIELDS: &[&str] = &[
    "labels",
    "annotations",
    "nodeSelector",
    "matchLabels",
    "capacity",
    "allocatable",
    "limits",
    "requests",
    "data",
];

/// Go's field name for a Kubernetes JSON field name: the first letter upper-cased, with the
/// initialisms Go spells in capitals.
fn go_name(json_name: &str) -> String {
    match json_name {
        "uid" => "UID".into(),
        "podIP" => "PodIP".into(),
        "podIPs" => "PodIPs".into(),
        "hostIP" => "HostIP".into(),
        "hostIPs" => "HostIPs".into(),
        "podCIDR" => "PodCIDR".into(),
        "podCIDRs" => "PodCIDRs".into(),
        "providerID" => "ProviderID".into(),
        "hostIPC" => "HostIPC".into(),
        "hostPID" => "HostPID".into(),
        "dnsPolicy" => "DNSPolicy".into(),
        "dnsConfig" => "DNSConfig".into(),
        "serviceAccount" => "DeprecatedServiceAccount".into(),
        other => {
            let mut cs = other.chars();
            cs.next()
                .map(|c| c.to_ascii_uppercase().to_string() + cs.as_str())
                .unwrap_or_default()
        }
    }
}
