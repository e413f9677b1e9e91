//! The CustomResourceDefinitions, generated from the types in [`crate::crd`] by kube's derive
//! and then brought to what controller-gen writes for upstream ([`conform`]), so that the
//! installed CRDs, `kubectl explain` and server-side apply behave as under
//! spire-controller-manager.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::CustomResourceExt;
use serde_json::{Map, Value, json};

use crate::crd::{ClusterFederatedTrustDomain, ClusterSPIFFEID, ClusterStaticEntry};

/// A CRD could not be generated or printed. Generation is deterministic, so this is a bug in
/// the types or in [`conform`], never something a user can cause.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("CRD {name}: {what}")]
    Shape { name: String, what: &'static str },
    #[error("CRD {name}: schema does not round-trip as JSONSchemaProps: {source}")]
    Schema {
        name: String,
        source: serde_json::Error,
    },
    #[error("encoding the CRDs as {format}: {message}")]
    Encode {
        format: &'static str,
        message: String,
    },
}

/// The CRDs, in upstream's file order (alphabetical by plural).
pub fn crds() -> Result<Vec<CustomResourceDefinition>, CrdError> {
    [
        ClusterFederatedTrustDomain::crd(),
        ClusterSPIFFEID::crd(),
        ClusterStaticEntry::crd(),
    ]
    .into_iter()
    .map(conform)
    .collect()
}

/// The CRDs as YAML documents, each starting with `---` like upstream's files.
pub fn to_yaml(crds: &[CustomResourceDefinition]) -> Result<String, CrdError> {
    let mut out = String::new();
    for crd in crds {
        let doc = serde_saphyr::to_string(crd).map_err(|e| CrdError::Encode {
            format: "YAML",
            message: e.to_string(),
        })?;
        out.push_str("---\n");
        out.push_str(&doc);
        if !doc.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// The CRDs as one JSON `v1` `List`, which `kubectl apply -f` takes like the YAML stream.
pub fn to_json(crds: &[CustomResourceDefinition]) -> Result<String, CrdError> {
    let list = json!({ "apiVersion": "v1", "kind": "List", "items": crds });
    serde_json::to_string_pretty(&list).map_err(|e| CrdError::Encode {
        format: "JSON",
        message: e.to_string(),
    })
}

/// Upstream's descriptions of the root fields that kube's derive leaves out of the schema.
const API_VERSION_DESCRIPTION: &str = "APIVersion defines the versioned schema of this representation of an object.
Servers should convert recognized schemas to the latest internal value, and
may reject unrecognized values.
More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources";
const KIND_DESCRIPTION: &str = "Kind is a string value representing the REST resource this object represents.
Servers may infer this from the endpoint the client submits requests to.
Cannot be updated.
In CamelCase.
More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";

/// Brings kube's derived CRD to controller-gen's conventions:
/// - `listKind` is spelled out (the API server would default it the same).
/// - The root schema gets `apiVersion`, `kind` and `metadata`, and requires `metadata` and
///   `spec`, as upstream's; kube's derive omits them (the API server checks them anyway) and adds
///   a `title` upstream does not have.
/// - No `nullable`: schemars marks every `Option` nullable, controller-gen marks none. With it,
///   the API server would store an explicit `null`; without it, it drops the null on write, as
///   under upstream. The types read an absent field and a null one the same.
/// - Int-or-string fields list their two types in `anyOf`: kube's structural rewrite empties the
///   branches, which the API server does not need (`x-kubernetes-int-or-string` says it) but
///   `kubectl explain` and JSON-schema validators do; controller-gen writes them.
pub fn conform(mut crd: CustomResourceDefinition) -> Result<CustomResourceDefinition, CrdError> {
    let name = crd.metadata.name.clone().unwrap_or_default();
    let shape = |what| CrdError::Shape {
        name: name.clone(),
        what,
    };
    crd.spec.names.list_kind = Some(format!("{}List", crd.spec.names.kind));
    for version in &mut crd.spec.versions {
        let props = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .ok_or_else(|| shape("version without openAPIV3Schema"))?;
        let mut schema = serde_json::to_value(&*props).map_err(|source| CrdError::Schema {
            name: name.clone(),
            source,
        })?;
        let root = schema
            .as_object_mut()
            .ok_or_else(|| shape("openAPIV3Schema is not an object"))?;
        root.remove("title");
        let properties = root
            .entry("properties")
            .or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
            .ok_or_else(|| shape("openAPIV3Schema.properties is not an object"))?;
        properties.insert(
            "apiVersion".into(),
            json!({ "description": API_VERSION_DESCRIPTION, "type": "string" }),
        );
        properties.insert(
            "kind".into(),
            json!({ "description": KIND_DESCRIPTION, "type": "string" }),
        );
        properties.insert("metadata".into(), json!({ "type": "object" }));
        root.insert("required".into(), json!(["metadata", "spec"]));
        walk(&mut schema);
        *props = serde_json::from_value::<JSONSchemaProps>(schema).map_err(|source| {
            CrdError::Schema {
                name: name.clone(),
                source,
            }
        })?;
    }
    Ok(crd)
}

/// The per-node part of [`conform`], applied to every schema node. It follows the keywords
/// that hold schemas, so a property that happened to be named `nullable` would survive.
fn walk(node: &mut Value) {
    let Value::Object(map) = node else { return };
    map.remove("nullable");
    if map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        map.insert(
            "anyOf".into(),
            json!([{ "type": "integer" }, { "type": "string" }]),
        );
    }
    if let Some(Value::Object(properties)) = map.get_mut("properties") {
        properties.values_mut().for_each(walk);
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(child) = map.get_mut(key) {
            walk(child);
        }
    }
    for key in ["anyOf", "allOf", "oneOf"] {
        if let Some(Value::Array(children)) = map.get_mut(key) {
            children.iter_mut().for_each(walk);
        }
    }
}
