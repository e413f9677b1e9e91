//! The resources this server knows, and the discovery documents built from them, so that
//! kubectl's and kube-rs's discovery see exactly what the routes serve.

use serde_json::{Value, json};

/// One served resource of the core group (`/api/v1`).
#[derive(Debug)]
pub struct Resource {
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
}

pub const PODS: Resource = Resource {
    plural: "pods",
    singular: "pod",
    kind: "Pod",
    namespaced: true,
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
};

pub const RESOURCES: &[Resource] = &[
    Resource {
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
        has_status: true,
        fields: &["status.phase"],
    },
    Resource {
        plural: "nodes",
        singular: "node",
        kind: "Node",
        namespaced: false,
        short_names: &["no"],
        has_status: true,
        fields: &["spec.unschedulable"],
    },
    PODS,
    Resource {
        plural: "serviceaccounts",
        singular: "serviceaccount",
        kind: "ServiceAccount",
        namespaced: true,
        short_names: &["sa"],
        has_status: false,
        fields: &[],
    },
];

/// The audience (and issuer) of the tokens this API server issues by default, as a cluster
/// with `--service-account-issuer=https://kubernetes.default.svc.cluster.local` has.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The version `/version` reports, the one of the kubectl the tests run.
pub const MINOR: &str = "37";

pub fn by_plural(plural: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.plural == plural)
}

pub fn by_kind(kind: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.kind.eq_ignore_ascii_case(kind) || r.plural == kind)
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
}

const RW_VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

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

pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]
    })
}

pub fn core_v1() -> Value {
    let mut list = Vec::new();
    for r in RESOURCES {
        list.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": RW_VERBS,
            "shortNames": r.short_names,
        }));
        if r.has_status {
            list.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    list.push(json!({
        "name": "serviceaccounts/token",
        "singularName": "",
        "namespaced": true,
        "group": "authentication.k8s.io",
        "version": "v1",
        "kind": "TokenRequest",
        "verbs": ["create"],
    }));
    json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": list})
}

fn authentication_group() -> Value {
    let v = json!({"groupVersion": "authentication.k8s.io/v1", "version": "v1"});
    json!({"name": "authentication.k8s.io", "versions": [v.clone()], "preferredVersion": v})
}

pub fn api_groups() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [authentication_group()]})
}

pub fn authentication_api_group() -> Value {
    let mut g = authentication_group();
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    g
}

pub fn authentication_v1() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "authentication.k8s.io/v1",
        "resources": [
            {"name": "selfsubjectreviews", "singularName": "selfsubjectreview", "namespaced": false, "kind": "SelfSubjectReview", "verbs": ["create"]},
            {"name": "tokenreviews", "singularName": "tokenreview", "namespaced": false, "kind": "TokenReview", "verbs": ["create"]}
        ]
    })
}

/// `/openapi/v3`: where each group version's document is. kubectl reads it before `create`
/// and `apply` to learn whether the server validates fields itself.
pub fn openapi_v3_root() -> Value {
    json!({"paths": {
        "api/v1": {"serverRelativeURL": format!("/openapi/v3/api/v1?hash={OPENAPI_HASH}")},
        "apis/authentication.k8s.io/v1": {
            "serverRelativeURL": format!("/openapi/v3/apis/authentication.k8s.io/v1?hash={OPENAPI_HASH}")
        },
    }})
}

/// Changes when the documents do, so clients that cache by it refetch.
const OPENAPI_HASH: &str = "SIGILFAKE1";

/// `/openapi/v3/api/v1`: no schemas, only what kubectl's field-validation check looks for, a
/// PATCH operation per kind that takes `fieldValidation` (so kubectl leaves validation to the
/// server instead of validating against schemas this document does not have).
pub fn openapi_v3_core() -> Value {
    let kinds = RESOURCES.iter().map(|r| {
        let path = if r.namespaced {
            format!("/api/v1/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("/api/v1/{}/{{name}}", r.plural)
        };
        (path, "", r.kind)
    });
    openapi_v3(kinds.collect())
}

/// `/openapi/v3/apis/authentication.k8s.io/v1`. TokenReview has no PATCH on a real server;
/// the one here only tells kubectl to let the server validate, so `kubectl create -f` of a
/// TokenReview works.
pub fn openapi_v3_authentication() -> Value {
    openapi_v3(vec![(
        "/apis/authentication.k8s.io/v1/tokenreviews".to_string(),
        "authentication.k8s.io",
        "TokenReview",
    )])
}

fn openapi_v3(kinds: Vec<(String, &str, &str)>) -> Value {
    let mut paths = serde_json::Map::new();
    for (path, group, kind) in kinds {
        paths.insert(path, json!({"patch": {
            "operationId": format!("patch{kind}"),
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": {"group": group, "version": "v1", "kind": kind},
            "parameters": [
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            ],
            "responses": {"200": {"description": "OK"}},
        }}));
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{MINOR}.0")},
        "paths": paths,
        "components": {"schemas": {}},
    })
}
