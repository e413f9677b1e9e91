//! Which secrets a caller gets for which resource names: pure functions over a [`Snapshot`], so
//! the naming rules (Istio's `default`/`ROOTCA`, SPIFFE IDs, trust-domain IDs, `ALL`) are unit
//! tested without a socket.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::{
    DataSource, Node, TypedExtensionConfig, data_source, node::UserAgentVersionType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, TlsCertificate, secret,
    spiffe_cert_validator_config,
};
use envoy_types::pb::google::protobuf::{Any, value::Kind};
use prost::Message;
use sigil_spiffe::TrustDomain;
use tonic::Status;

use crate::manager::cache::{BundleRecord, Identity, Snapshot};
use crate::selectors::SelectorSet;

/// The xDS type URL of SDS resources.
pub const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const SPIFFE_VALIDATOR_NAME: &str = "envoy.tls.cert_validator.spiffe";
const SPIFFE_VALIDATOR_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig";

/// The `sds` block of the agent config (SPIRE's names and defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SdsConfig {
    /// Resource name of the caller's default (first) SVID.
    pub default_svid_name: String,
    /// Resource name of the caller's trust bundle.
    pub default_bundle_name: String,
    /// Resource name of all bundles.
    pub default_all_bundles_name: String,
    /// Always send plain `trusted_ca` validation contexts.
    pub disable_spiffe_cert_validation: bool,
}

impl Default for SdsConfig {
    fn default() -> Self {
        Self {
            default_svid_name: "default".into(),
            default_bundle_name: "ROOTCA".into(),
            default_all_bundles_name: "ALL".into(),
            disable_spiffe_cert_validation: false,
        }
    }
}

/// How validation contexts are expressed for one Envoy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validation {
    /// `envoy.tls.cert_validator.spiffe`: one trust domain per bundle, so a certificate from
    /// trust domain A is only ever checked against A's roots.
    Spiffe,
    /// Plain `trusted_ca` (Envoy ≤ 1.17, or SPIFFE validation disabled).
    TrustedCa,
}

/// Picks the validation style for the Envoy described by `node`: the SPIFFE validator when the
/// Envoy is newer than 1.17 (or does not say), unless disabled in the agent config or by the
/// Envoy's node metadata (`disable_spiffe_cert_validation: true`).
pub fn validation_for(node: Option<&Node>, cfg: &SdsConfig) -> Validation {
    if cfg.disable_spiffe_cert_validation {
        return Validation::TrustedCa;
    }
    let Some(node) = node else {
        return Validation::Spiffe;
    };
    let disabled_by_node = node
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get("disable_spiffe_cert_validation"))
        .and_then(|v| v.kind.as_ref())
        .is_some_and(|k| match k {
            Kind::BoolValue(b) => *b,
            Kind::StringValue(s) => s.eq_ignore_ascii_case("true"),
            _ => false,
        });
    if disabled_by_node {
        return Validation::TrustedCa;
    }
    match &node.user_agent_version_type {
        Some(UserAgentVersionType::UserAgentBuildVersion(b)) => match &b.version {
            Some(v) if (v.major_number, v.minor_number) <= (1, 17) => Validation::TrustedCa,
            _ => Validation::Spiffe,
        },
        _ => Validation::Spiffe,
    }
}

fn inline(bytes: Vec<u8>) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes)),
        ..Default::default()
    })
}

fn pem_of(bundle: &BundleRecord) -> Vec<u8> {
    sigil_spiffe::x509::certs_to_pem(&bundle.bundle.x509_authorities).into_bytes()
}

fn tls_certificate(name: &str, identity: &Identity) -> Option<Secret> {
    let svid = identity.svid.as_ref()?;
    let chain = sigil_spiffe::x509::certs_to_pem(&svid.chain);
    // PKCS#8 PEM, inline; never logged (Secret's Debug is only used in tests).
    let key = sigil_spiffe::x509::pkcs8_key_to_pem(svid.key.as_bytes());
    Some(Secret {
        name: name.to_string(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(chain.into_bytes()),
            private_key: inline(key.into_bytes()),
            ..Default::default()
        })),
    })
}

fn validation_context(
    name: &str,
    bundles: &[(&TrustDomain, &BundleRecord)],
    validation: Validation,
) -> Secret {
    let ctx = match validation {
        Validation::Spiffe => {
            let cfg = SpiffeCertValidatorConfig {
                trust_domains: bundles
                    .iter()
                    .map(|(td, b)| spiffe_cert_validator_config::TrustDomain {
                        name: td.as_str().to_string(),
                        trust_bundle: inline(pem_of(b)),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            CertificateValidationContext {
                custom_validator_config: Some(TypedExtensionConfig {
                    name: SPIFFE_VALIDATOR_NAME.into(),
                    typed_config: Some(Any {
                        type_url: SPIFFE_VALIDATOR_TYPE_URL.into(),
                        value: cfg.encode_to_vec(),
                    }),
                }),
                ..Default::default()
            }
        }
        Validation::TrustedCa => CertificateValidationContext {
            trusted_ca: inline(bundles.iter().flat_map(|(_, b)| pem_of(b)).collect()),
            ..Default::default()
        },
    };
    Secret {
        name: name.to_string(),
        r#type: Some(secret::Type::ValidationContext(ctx)),
    }
}

/// The caller's identities, or the status when it has none.
pub fn identities<'a>(
    snap: &'a Snapshot,
    selectors: &'a SelectorSet,
) -> Result<Vec<&'a Identity>, Status> {
    let ids: Vec<&Identity> = snap.matching(selectors).collect();
    if ids.is_empty() {
        return Err(if snap.synced {
            Status::permission_denied("no identity issued")
        } else {
            Status::unavailable("agent has not synchronized with the server yet")
        });
    }
    Ok(ids)
}

/// Whether every identity of the caller has its SVID (what a stream waits for at start).
pub fn ready(snap: &Snapshot, selectors: &SelectorSet) -> bool {
    snap.synced && snap.bundle.is_some() && snap.matching(selectors).all(|i| i.svid.is_some())
}

/// Every secret the caller may have, keyed by resource name: its SVIDs by SPIFFE ID, the first as
/// `default` too; its own bundle as `ROOTCA` (with the SPIFFE validator, plus the federated
/// bundles its entries federate with — Istio only asks for `ROOTCA`) and by trust-domain ID;
/// each federated bundle by trust-domain ID; all of them as `ALL`.
pub fn available(
    snap: &Snapshot,
    selectors: &SelectorSet,
    cfg: &SdsConfig,
    validation: Validation,
) -> Result<BTreeMap<String, Secret>, Status> {
    let ids = identities(snap, selectors)?;
    let mut out = BTreeMap::new();
    for (i, identity) in ids.iter().enumerate() {
        let id = identity.entry.spiffe_id.to_string();
        if let Some(s) = tls_certificate(&id, identity) {
            out.entry(id).or_insert(s);
        }
        if i == 0
            && let Some(s) = tls_certificate(&cfg.default_svid_name, identity)
        {
            out.insert(cfg.default_svid_name.clone(), s);
        }
    }
    let federated = snap.federated_for(ids.iter().copied());
    if let Some(own) = &snap.bundle {
        let own_entry = (&snap.trust_domain, own.as_ref());
        out.insert(
            snap.trust_domain.id_string(),
            validation_context(&snap.trust_domain.id_string(), &[own_entry], validation),
        );
        let mut all = vec![own_entry];
        all.extend(federated.iter().map(|(td, b)| (*td, b.as_ref())));
        let rootca: &[(&TrustDomain, &BundleRecord)] = match validation {
            Validation::Spiffe => &all,
            // Without per-trust-domain roots, mixing in foreign CAs would let them vouch for
            // our own trust domain's IDs: ROOTCA stays our own bundle.
            Validation::TrustedCa => &all[..1],
        };
        out.insert(
            cfg.default_bundle_name.clone(),
            validation_context(&cfg.default_bundle_name, rootca, validation),
        );
        out.insert(
            cfg.default_all_bundles_name.clone(),
            validation_context(&cfg.default_all_bundles_name, &all, validation),
        );
    }
    for (td, b) in &federated {
        let name = td.id_string();
        out.insert(
            name.clone(),
            validation_context(&name, &[(*td, b.as_ref())], validation),
        );
    }
    Ok(out)
}

/// The secrets for `names` (all of them when `names` is empty), in request order; unknown names
/// are an `InvalidArgument` naming them.
pub fn select(
    available: &BTreeMap<String, Secret>,
    names: &[String],
) -> Result<Vec<Secret>, Status> {
    let wanted: Vec<&String> = names.iter().filter(|n| !n.is_empty()).collect();
    if wanted.is_empty() {
        return Ok(available.values().cloned().collect());
    }
    let unknown: BTreeSet<&str> = wanted
        .iter()
        .filter(|n| !available.contains_key(n.as_str()))
        .map(|n| n.as_str())
        .collect();
    if !unknown.is_empty() {
        return Err(Status::invalid_argument(format!(
            "workload is not authorized for the requested identities {unknown:?}"
        )));
    }
    let mut seen = BTreeSet::new();
    Ok(wanted
        .into_iter()
        .filter(|n| seen.insert(n.as_str()))
        .filter_map(|n| available.get(n.as_str()).cloned())
        .collect())
}

/// Wraps a secret for a discovery response.
pub fn to_any(secret: &Secret) -> Any {
    Any {
        type_url: SECRET_TYPE_URL.into(),
        value: secret.encode_to_vec(),
    }
}
