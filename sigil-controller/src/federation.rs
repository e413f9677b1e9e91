//! ClusterFederatedTrustDomains → the server's federation relationships, with
//! spire-controller-manager's rules: the bundle endpoint URL is `https` with a host and no user
//! info, `endpointSPIFFEID` is required for (and only allowed with) `https_spiffe`, the
//! bundle is optional, and of two resources naming one trust domain the oldest wins.
//!
//! Seed 000's profile types `HTTPSSPIFFEAuthentication` and `HTTPSWebAuthentication` are
//! accepted as `https_spiffe` and `https_web`, with a warning that names the canonical value.
//!
//! As with entries, the controller only changes the relationships it created (recorded as
//! `managed_by`): one made with `federation create` or in the server's configuration is left
//! alone, and reported on the resource that would have replaced it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use sigil_proto::admin as pb;

use crate::crd::{ClusterFederatedTrustDomainSpec, PROFILE_ALIASES};

/// A relationship a resource declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// The resource's name.
    pub by: String,
    pub trust_domain: String,
    pub url: String,
    /// `https_spiffe` or `https_web`.
    pub profile: String,
    pub endpoint_spiffe_id: String,
    /// The bootstrap bundle (SPIFFE bundle JSON), parsed.
    pub bundle: Option<sigil_spiffe::Bundle>,
}

/// A message for a resource: why it is not applied (`warning: false`), or a warning about
/// how it is written (applied anyway).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub name: String,
    pub message: String,
    pub applied: bool,
}

/// The relationships the resources of this class declare, by trust domain, and the notes.
pub fn declared(
    objects: &[Arc<Value>],
    serves: impl Fn(&str) -> bool,
) -> (BTreeMap<String, Desired>, Vec<Note>) {
    let mut notes = Vec::new();
    let mut candidates: Vec<(String, String, Desired)> = Vec::new();
    for obj in objects {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let class = obj["spec"]["className"].as_str().unwrap_or_default();
        if !serves(class) {
            continue;
        }
        let spec: ClusterFederatedTrustDomainSpec =
            match serde_json::from_value(obj["spec"].clone()) {
                Ok(s) => s,
                Err(e) => {
                    notes.push(refused(&name, format!("invalid spec: {e}")));
                    continue;
                }
            };
        match parse(&name, &spec, &mut notes) {
            Ok(d) => {
                let created = obj["metadata"]["creationTimestamp"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let uid = obj["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                candidates.push((created, uid, d));
            }
            Err(message) => notes.push(refused(&name, message)),
        }
    }
    // Oldest first (then by uid): the first of a trust domain wins.
    candidates.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let mut out: BTreeMap<String, Desired> = BTreeMap::new();
    for (_, _, d) in candidates {
        match out.get(&d.trust_domain) {
            Some(winner) => notes.push(refused(
                &d.by,
                format!(
                    "trust domain {:?} is already federated by ClusterFederatedTrustDomain {:?} (the oldest wins)",
                    d.trust_domain, winner.by
                ),
            )),
            None => {
                out.insert(d.trust_domain.clone(), d);
            }
        }
    }
    (out, notes)
}

fn refused(name: &str, message: String) -> Note {
    Note {
        name: name.to_string(),
        message,
        applied: false,
    }
}

/// spire-controller-manager's `ParseClusterFederatedTrustDomainSpec`.
fn parse(
    name: &str,
    spec: &ClusterFederatedTrustDomainSpec,
    notes: &mut Vec<Note>,
) -> Result<Desired, String> {
    let td = sigil_spiffe::TrustDomain::from_id_or_name(&spec.trust_domain)
        .map_err(|e| format!("invalid trustDomain value: {e}"))?;
    sigil_federation::EndpointUrl::parse(&spec.bundle_endpoint_url)
        .map_err(|e| format!("invalid bundleEndpointURL value: {e}"))?;
    let mut profile = spec.bundle_endpoint_profile.r#type.clone();
    if let Some((alias, canonical)) = PROFILE_ALIASES.iter().find(|(a, _)| *a == profile) {
        notes.push(Note {
            name: name.to_string(),
            message: format!(
                "bundleEndpointProfile.type {alias:?} is accepted as {canonical:?}; write {canonical:?}"
            ),
            applied: true,
        });
        profile = canonical.to_string();
    }
    let endpoint = spec
        .bundle_endpoint_profile
        .endpoint_spiffe_id
        .clone()
        .unwrap_or_default();
    let bundle_td = match profile.as_str() {
        "https_spiffe" => {
            if endpoint.is_empty() {
                return Err(
                    "invalid endpointSPIFFEID value: must be set for the https_spiffe profile"
                        .into(),
                );
            }
            let id: sigil_spiffe::SpiffeId = endpoint
                .parse()
                .map_err(|e| format!("invalid endpointSPIFFEID value: {e}"))?;
            id.trust_domain()
        }
        "https_web" => {
            if !endpoint.is_empty() {
                return Err(
                    "invalid endpointSPIFFEID value: is not applicable for the https_web profile"
                        .into(),
                );
            }
            td.clone()
        }
        other => {
            return Err(format!(
                "unsupported bundle endpoint profile type: {other:?}"
            ));
        }
    };
    let bundle = match spec.trust_domain_bundle.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            sigil_spiffe::Bundle::from_spiffe_json(bundle_td, text.as_bytes())
                .map_err(|e| format!("invalid trustDomainBundle: {e}"))?,
        ),
    };
    Ok(Desired {
        by: name.to_string(),
        trust_domain: td.as_str().to_string(),
        url: spec.bundle_endpoint_url.clone(),
        profile,
        endpoint_spiffe_id: endpoint,
        bundle,
    })
}

/// The writes that make the server's relationships what `desired` says: (create, update,
/// delete), and notes about relationships someone else owns.
pub fn changes(
    desired: &BTreeMap<String, Desired>,
    current: &[pb::FederationRelationship],
    managed_by: &str,
) -> (Vec<Desired>, Vec<Desired>, Vec<String>, Vec<Note>) {
    let (mut create, mut update, mut delete, mut notes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (td, d) in desired {
        match current.iter().find(|c| &c.trust_domain == td) {
            None => create.push(d.clone()),
            Some(c) if c.managed_by != managed_by || c.source == "config" => notes.push(refused(
                &d.by,
                format!(
                    "the server already has a federation relationship with {td:?} that this controller did not create ({}): left as it is",
                    if c.source == "config" { "from its configuration" } else { "made through its API" }
                ),
            )),
            Some(c) => {
                if c.bundle_endpoint_url != d.url
                    || c.bundle_endpoint_profile != d.profile
                    || c.endpoint_spiffe_id != d.endpoint_spiffe_id
                {
                    update.push(d.clone());
                }
            }
        }
    }
    for c in current {
        if c.managed_by == managed_by
            && c.source != "config"
            && !desired.contains_key(&c.trust_domain)
        {
            delete.push(c.trust_domain.clone());
        }
    }
    (create, update, delete, notes)
}

/// The wire form of a declared relationship.
pub fn to_proto(d: &Desired, managed_by: &str, with_bundle: bool) -> pb::FederationRelationship {
    pb::FederationRelationship {
        trust_domain: d.trust_domain.clone(),
        bundle_endpoint_url: d.url.clone(),
        bundle_endpoint_profile: d.profile.clone(),
        endpoint_spiffe_id: d.endpoint_spiffe_id.clone(),
        trust_domain_bundle: if with_bundle {
            d.bundle.as_ref().map(bundle_proto)
        } else {
            None
        },
        managed_by: managed_by.to_string(),
        ..Default::default()
    }
}

fn bundle_proto(b: &sigil_spiffe::Bundle) -> sigil_proto::types::Bundle {
    sigil_proto::types::Bundle {
        trust_domain: b.trust_domain.as_str().to_string(),
        x509_authorities: b.x509_authorities.clone(),
        jwt_authorities: b
            .jwt_authorities
            .iter()
            .map(|a| sigil_proto::types::JwtKey {
                key_id: a.key_id.clone(),
                public_key: a.public_key_der.clone(),
                expires_at: a.expires_at,
            })
            .collect(),
        refresh_hint: b.refresh_hint.unwrap_or(0),
        sequence_number: b.sequence_number.unwrap_or(0),
        ..Default::default()
    }
}
