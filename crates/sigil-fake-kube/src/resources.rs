//! The resources this server knows: the built-in table (the core group and a few named
//! groups), and the fixed documents (`/version`) built around them. The discovery documents,
//! which also list the resources CRDs define, are in `discovery`.

use serde_json::{Value, json};

/// One served resource at one group version. Built-in ones are constants; a CRD's are made
/// from its spec (see `catalog`), one per served version.
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    /// `""` for the core group (`/api/v1`).
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Has a `status` subresource: writes to the main resource keep the stored status, writes
    /// to `/status` change nothing else.
    pub has_status: bool,
    /// Field labels `fieldSelector` accepts, beyond `metadata.name` (and `metadata.namespace`
    /// for namespaced resources).
    pub fields: &'static [&'static str],
    /// Defined by a CustomResourceDefinition: a create drops `status` when there is a status
    /// subresource, as the custom resource strategy does.
    pub custom: bool,
}

/// A built-in resource of the core group, with defaults for the rest.
const fn core(
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> Resource {
    Resource {
        group: "",
        version: "v1",
        plural,
        singular,
        kind,
        namespaced,
        short_names: &[],
        has_status: false,
        fields: &[],
        custom: false,
    }
}

pub const PODS: Resource = Resource {
    short_names: &["po"],
    has_status: true,
    fields: &[
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ],
    ..core("pods", "pod", "Pod", true)
};

/// The group of CustomResourceDefinitions.
pub const APIEXTENSIONS: &str = "apiextensions.k8s.io";

pub const CRDS: Resource = Resource {
    group: APIEXTENSIONS,
    short_names: &["crd", "crds"],
    has_status: true,
    ..core(
        "customresourcedefinitions",
        "customresourcedefinition",
        "CustomResourceDefinition",
        false,
    )
};

/// The built-in resources, core group first, in discovery order.
pub const RESOURCES: &[Resource] = &[
    Resource {
        short_names: &["ns"],
        has_status: true,
        fields: &["status.phase"],
        ..core("namespaces", "namespace", "Namespace", false)
    },
    Resource {
        short_names: &["no"],
        has_status: true,
        fields: &["spec.unschedulable"],
        ..core("nodes", "node", "Node", false)
    },
    PODS,
    Resource {
        short_names: &["cm"],
        ..core("configmaps", "configmap", "ConfigMap", true)
    },
    Resource {
        short_names: &["sa"],
        ..core("serviceaccounts", "serviceaccount", "ServiceAccount", true)
    },
    // What a controller of pods needs beyond the core group: the Services that target a pod
    // (by the `kubernetes.io/service-name` label) and leader election.
    Resource {
        group: "discovery.k8s.io",
        ..core("endpointslices", "endpointslice", "EndpointSlice", true)
    },
    Resource {
        group: "coordination.k8s.io",
        ..core("leases", "lease", "Lease", true)
    },
    // Where controllers report what they could not do (kube-runtime's `Recorder`).
    Resource {
        group: "events.k8s.io",
        short_names: &["ev"],
        ..core("events", "event", "Event", true)
    },
    CRDS,
];

/// The audience (and issuer) of the tokens this API server issues by default, as a cluster
/// with `--service-account-issuer=https://kubernetes.default.svc.cluster.local` has.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The version `/version` reports, the one of the kubectl the tests run.
pub const MINOR: &str = "37";

/// A built-in resource of the core group, by plural.
pub fn by_plural(plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group.is_empty() && r.plural == plural)
}

// === impl Resource ===

impl Resource {
    pub fn field_labels(&self) -> Vec<&'static str> {
        let mut f = vec!["metadata.name"];
        if self.namespaced {
            f.push("metadata.namespace");
        }
        f.extend_from_slice(self.fields);
        f
    }

    /// `v1`, or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// How errors name the resource: `pods`, `leases.coordination.k8s.io`.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether `kind` names this resource: its kind (any case) or its plural.
    pub fn is_named(&self, kind: &str) -> bool {
        self.kind.eq_ignore_ascii_case(kind) || self.plural == kind
    }

    /// `obj` as this version serves it. Objects are stored once for all the versions of a
    /// resource; with no conversion webhook (strategy `None`) a version differs only in
    /// `apiVersion`.
    pub fn present(&self, mut obj: Value) -> Value {
        let v = self.api_version();
        if obj["apiVersion"] != v.as_str() {
            obj["apiVersion"] = json!(v);
        }
        obj
    }
}

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": MINOR,
        "gitVersion": format!("v1.{MINOR}.0-sigil-fake"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.25.0",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}
