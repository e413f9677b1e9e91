//! spire-controller-manager's custom resources, `spire.spiffe.io/v1alpha1`, as Rust types:
//! `ClusterSPIFFEID`, `ClusterStaticEntry` and `ClusterFederatedTrustDomain`. Field names, JSON names, required fields and
//! descriptions are upstream's (api/v1alpha1/*_types.go at the commit named in
//! testdata/README.md), so the CRDs printed by `sigil-controller crds` are a drop-in for
//! upstream's and `kubectl explain` reads the same.
//!
//! Three deliberate differences, all for seed manifests whose meaning is plain but which
//! upstream's schema refuses (tests/schema.rs asserts they are the only ones):
//! - ClusterFederatedTrustDomain's `bundleEndpointProfile.type` also takes seed 000's
//!   `HTTPSSPIFFEAuthentication` and `HTTPSWebAuthentication`, aliases of `https_spiffe` and
//!   `https_web` (the controller warns, naming the canonical value);
//! - the TTLs (`ttl`, `jwtTtl`, `x509SVIDTTL`, `jwtSVIDTTL`) are int-or-string, an integer
//!   being seconds ([`Duration`]);
//! - `namespaceSelector` also takes `matchNames`, a list of namespace names (seed 002 writes
//!   it; upstream has no such field, so `kubectl apply` refuses it there under its default
//!   strict field validation, and a client that skips validation gets it pruned, silently
//!   widening the selector to every namespace).
//!
//! Optional fields are `Option`s, not defaults, so a manifest read and written back is the
//! same manifest (an explicit `admin: false` or `dnsNameTemplates: []` stays).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

pub use crate::duration::Duration;

/// ClusterSPIFFEIDSpec defines the desired state of ClusterSPIFFEID
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "spire.spiffe.io",
    version = "v1alpha1",
    kind = "ClusterSPIFFEID",
    plural = "clusterspiffeids",
    singular = "clusterspiffeid",
    status = "ClusterSPIFFEIDStatus",
    doc = "ClusterSPIFFEID is the Schema for the clusterspiffeids API",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSPIFFEIDSpec {
    /// SPIFFEID is the SPIFFE ID template. The node and pod spec are made
    /// available to the template under .NodeSpec, .PodSpec respectively.
    #[serde(rename = "spiffeIDTemplate")]
    pub spiffe_id_template: String,

    /// TTL indicates an upper-bound time-to-live for X509 SVIDs minted for this
    /// ClusterSPIFFEID. If unset, a default will be chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,

    /// JWTTTL indicates an upper-bound time-to-live for JWT SVIDs minted for this
    /// ClusterSPIFFEID.
    #[serde(default, rename = "jwtTtl", skip_serializing_if = "Option::is_none")]
    pub jwt_ttl: Option<Duration>,

    /// DNSNameTemplate represents templates for extra DNS names that are
    /// applicable to SVIDs minted for this ClusterSPIFFEID.
    /// The node and pod spec are made available to the template under
    /// .NodeSpec, .PodSpec respectively.
    #[serde(
        default,
        rename = "dnsNameTemplates",
        skip_serializing_if = "Option::is_none"
    )]
    pub dns_name_templates: Option<Vec<String>>,

    /// WorkloadSelectorTemplates are templates to produce arbitrary workload
    /// selectors that apply to a given workload before it will receive this
    /// SPIFFE ID. The rendered value is interpreted by SPIRE and are of the
    /// form type:value, where the value may, and often does, contain
    /// semicolons, .e.g., k8s:container-image:docker/hello-world
    /// The node and pod spec are made available to the template under
    /// .NodeSpec, .PodSpec respectively.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector_templates: Option<Vec<String>>,

    /// NamespaceSelector selects the namespaces that are targeted by this
    /// CRD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<NamespaceSelector>,

    /// PodSelector selects the pods that are targeted by this
    /// CRD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,

    /// FederatesWith is a list of trust domain names that workloads that
    /// obtain this SPIFFE ID will federate with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federates_with: Option<Vec<String>>,

    /// Admin indicates whether or not the SVID can be used to access the SPIRE
    /// administrative APIs. Extra care should be taken to only apply this
    /// SPIFFE ID to admin workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<bool>,

    /// Downstream indicates that the entry describes a downstream SPIRE server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downstream: Option<bool>,

    /// AutoPopulateDNSNames indicates whether or not to auto populate service DNS names.
    #[serde(
        default,
        rename = "autoPopulateDNSNames",
        skip_serializing_if = "Option::is_none"
    )]
    pub auto_populate_dns_names: Option<bool>,

    /// Apply this ID only if there are no other matching non fallback ClusterSPIFFEIDs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<bool>,

    /// Set which Controller Class will act on this object
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,

    /// Set the entry hint
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// ClusterSPIFFEIDStatus defines the observed state of ClusterSPIFFEID
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ClusterSPIFFEIDStatus {
    /// Stats produced by the last entry reconciliation run
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<ClusterSPIFFEIDStats>,
}

/// ClusterSPIFFEIDStats contain entry reconciliation statistics.
///
/// Go `int`s: plain `type: integer` like controller-gen writes, hence the `schema_with`
/// (schemars would add `format: int64`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSPIFFEIDStats {
    /// How many namespaces were selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "integer")]
    pub namespaces_selected: Option<i64>,

    /// How many (selected) namespaces were ignored (based on configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "integer")]
    pub namespaces_ignored: Option<i64>,

    /// How many pods were selected out of the namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "integer")]
    pub pods_selected: Option<i64>,

    /// How many failures were encountered rendering an entry selected pods.
    /// This could be due to either a bad template in the ClusterSPIFFEID or
    /// Pod metadata that when applied to the template did not produce valid
    /// entry values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "integer")]
    pub pod_entry_render_failures: Option<i64>,

    /// How many entries were masked by entries for other ClusterSPIFFEIDs.
    /// This happens when one or more ClusterSPIFFEIDs produce an entry for
    /// the same pod with the same set of workload selectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "integer")]
    pub entries_masked: Option<i64>,

    /// How many entries are to be set for this ClusterSPIFFEID. In nominal
    /// conditions, this should reflect the number of pods selected, but not
    /// always if there were problems encountered rendering an entry for the pod
    /// (RenderFailures) or entries are masked (EntriesMasked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "integer")]
    pub entries_to_set: Option<i64>,

    /// How many entries were unable to be set due to failures to create or
    /// update the entries via the SPIRE Server API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "integer")]
    pub entry_failures: Option<i64>,
}

/// ClusterStaticEntrySpec defines the desired state of ClusterStaticEntry
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "spire.spiffe.io",
    version = "v1alpha1",
    kind = "ClusterStaticEntry",
    plural = "clusterstaticentries",
    singular = "clusterstaticentry",
    status = "ClusterStaticEntryStatus",
    doc = "ClusterStaticEntry is the Schema for the clusterstaticentries API",
    derive = "PartialEq"
)]
pub struct ClusterStaticEntrySpec {
    #[serde(rename = "spiffeID")]
    pub spiffe_id: String,

    #[serde(rename = "parentID")]
    pub parent_id: String,

    pub selectors: Vec<String>,

    #[serde(
        default,
        rename = "federatesWith",
        skip_serializing_if = "Option::is_none"
    )]
    pub federates_with: Option<Vec<String>>,

    #[serde(
        default,
        rename = "x509SVIDTTL",
        skip_serializing_if = "Option::is_none"
    )]
    pub x509_svid_ttl: Option<Duration>,

    #[serde(
        default,
        rename = "jwtSVIDTTL",
        skip_serializing_if = "Option::is_none"
    )]
    pub jwt_svid_ttl: Option<Duration>,

    #[serde(default, rename = "dnsNames", skip_serializing_if = "Option::is_none")]
    pub dns_names: Option<Vec<String>>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<bool>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downstream: Option<bool>,

    #[serde(default, rename = "storeSVID", skip_serializing_if = "Option::is_none")]
    pub store_svid: Option<bool>,

    /// Set which Controller Class will act on this object
    #[serde(default, rename = "className", skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
}

/// ClusterStaticEntryStatus defines the observed state of ClusterStaticEntry
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ClusterStaticEntryStatus {
    /// If the static entry rendered properly.
    pub rendered: bool,

    /// If the static entry was masked by another entry.
    pub masked: bool,

    /// If the static entry was successfully created/updated.
    pub set: bool,
}

/// ClusterFederatedTrustDomainSpec defines the desired state of ClusterFederatedTrustDomain
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "spire.spiffe.io",
    version = "v1alpha1",
    kind = "ClusterFederatedTrustDomain",
    plural = "clusterfederatedtrustdomains",
    singular = "clusterfederatedtrustdomain",
    status = "ClusterFederatedTrustDomainStatus",
    doc = "ClusterFederatedTrustDomain is the Schema for the clusterfederatedtrustdomains API",
    printcolumn = r#"{"jsonPath": ".spec.trustDomain", "name": "Trust Domain", "type": "string"}"#,
    printcolumn = r#"{"jsonPath": ".spec.bundleEndpointURL", "name": "Endpoint URL", "type": "string"}"#,
    derive = "PartialEq"
)]
pub struct ClusterFederatedTrustDomainSpec {
    /// TrustDomain is the name of the trust domain to federate with (e.g. example.org)
    #[serde(rename = "trustDomain")]
    #[schemars(regex(pattern = "[a-z0-9._-]{1,255}"))]
    pub trust_domain: String,

    /// BundleEndpointURL is the URL of the bundle endpoint. It must be an
    /// HTTPS URL and cannot contain userinfo (i.e. username/password).
    #[serde(rename = "bundleEndpointURL")]
    pub bundle_endpoint_url: String,

    /// BundleEndpointProfile is the profile for the bundle endpoint.
    #[serde(rename = "bundleEndpointProfile")]
    pub bundle_endpoint_profile: BundleEndpointProfile,

    /// TrustDomainBundle is the contents of the bundle for the referenced trust
    /// domain. This field is optional when the resource is created.
    #[serde(
        default,
        rename = "trustDomainBundle",
        skip_serializing_if = "Option::is_none"
    )]
    pub trust_domain_bundle: Option<String>,

    /// Set which Controller Class will act on this object
    #[serde(default, rename = "className", skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
}

/// BundleEndpointProfile is the profile for the bundle endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct BundleEndpointProfile {
    /// Type is the type of the bundle endpoint profile.
    #[serde(rename = "type")]
    #[schemars(schema_with = "profile_type")]
    pub r#type: String,

    /// EndpointSPIFFEID is the SPIFFE ID of the bundle endpoint. It is
    /// required for the "https_spiffe" profile.
    #[serde(
        default,
        rename = "endpointSPIFFEID",
        skip_serializing_if = "Option::is_none"
    )]
    pub endpoint_spiffe_id: Option<String>,
}

/// The profile types upstream's enum allows, and the two spellings seed 000 uses
/// (`HTTPSSPIFFEAuthentication`, `HTTPSWebAuthentication`) whose meaning is plain: accepted as
/// aliases, reported with a warning naming the canonical value.
pub const PROFILE_ALIASES: [(&str, &str); 2] = [
    ("HTTPSSPIFFEAuthentication", "https_spiffe"),
    ("HTTPSWebAuthentication", "https_web"),
];

fn profile_type(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "enum": ["https_spiffe", "https_web", "HTTPSSPIFFEAuthentication", "HTTPSWebAuthentication"]
    })
}

/// ClusterFederatedTrustDomainStatus defines the observed state of ClusterFederatedTrustDomain
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ClusterFederatedTrustDomainStatus {}

/// A label selector with the schema controller-gen writes for `metav1.LabelSelector`: the
/// `atomic` markers make server-side apply replace a selector (or its expression list) whole
/// rather than merge two owners' selectors into one nobody wrote. k8s-openapi's own schema lacks
/// them, hence this type; [`LabelSelector::to_k8s`] converts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-map-type" = "atomic"))]
pub struct LabelSelector {
    /// matchExpressions is a list of label selector requirements. The requirements are ANDed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub match_expressions: Option<Vec<LabelSelectorRequirement>>,

    /// matchLabels is a map of {key,value} pairs. A single {key,value} in the matchLabels
    /// map is equivalent to an element of matchExpressions, whose key field is "key", the
    /// operator is "In", and the values array contains only "value". The requirements are ANDed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
}

/// `namespaceSelector`: a [`LabelSelector`] plus Sigil's `matchNames` (see the module
/// documentation for why it exists).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-map-type" = "atomic"))]
pub struct NamespaceSelector {
    /// matchExpressions is a list of label selector requirements. The requirements are ANDed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub match_expressions: Option<Vec<LabelSelectorRequirement>>,

    /// matchLabels is a map of {key,value} pairs. A single {key,value} in the matchLabels
    /// map is equivalent to an element of matchExpressions, whose key field is "key", the
    /// operator is "In", and the values array contains only "value". The requirements are ANDed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,

    /// Sigil extension, not in spire-controller-manager: the names of the namespaces to
    /// select. ANDed with matchLabels and matchExpressions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub match_names: Option<Vec<String>>,
}

/// A label selector requirement is a selector that contains values, a key, and an operator that
/// relates the key and values.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct LabelSelectorRequirement {
    /// key is the label key that the selector applies to.
    pub key: String,

    /// operator represents a key's relationship to a set of values.
    /// Valid operators are In, NotIn, Exists and DoesNotExist.
    pub operator: String,

    /// values is an array of string values. If the operator is In or NotIn,
    /// the values array must be non-empty. If the operator is Exists or DoesNotExist,
    /// the values array must be empty. This array is replaced during a strategic
    /// merge patch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub values: Option<Vec<String>>,
}

impl LabelSelector {
    /// The same selector as k8s-openapi's type, for kube's list/watch parameters.
    pub fn to_k8s(&self) -> metav1::LabelSelector {
        metav1::LabelSelector {
            match_expressions: self
                .match_expressions
                .as_ref()
                .map(|v| v.iter().map(LabelSelectorRequirement::to_k8s).collect()),
            match_labels: self.match_labels.clone(),
        }
    }
}

impl NamespaceSelector {
    /// The label part of the selector (without `matchNames`, which a label selector cannot
    /// express).
    pub fn labels_to_k8s(&self) -> metav1::LabelSelector {
        LabelSelector {
            match_expressions: self.match_expressions.clone(),
            match_labels: self.match_labels.clone(),
        }
        .to_k8s()
    }
}

impl LabelSelectorRequirement {
    fn to_k8s(&self) -> metav1::LabelSelectorRequirement {
        metav1::LabelSelectorRequirement {
            key: self.key.clone(),
            operator: self.operator.clone(),
            values: self.values.clone(),
        }
    }
}

/// `type: integer` without a `format`, as controller-gen writes a Go `int`.
fn integer(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "integer" })
}
