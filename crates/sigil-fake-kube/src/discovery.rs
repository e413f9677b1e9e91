//! Discovery (`/api`, `/api/v1`, `/apis`, `/apis/{group}[/{version}]`) and the `/openapi/v3`
//! documents kubectl reads, built from the catalog, so kubectl's and kube-rs's discovery see
//! exactly what the routes serve, CRDs' resources included.

use crate::catalog::Catalog;
use crate::resources::{MINOR, Resource};
use serde_json::{Map, Value, json};

const RW_VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// The group served by handlers of its own (reviews), not by the resource table.
const AUTHENTICATION: &str = "authentication.k8s.io";

pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]
    })
}

/// The entries of an APIResourceList for `resources`.
fn resource_entries(resources: &[&Resource]) -> Vec<Value> {
    let mut list = Vec::new();
    for r in resources {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": RW_VERBS,
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        list.push(entry);
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
    list
}

/// `/api/v1`.
pub fn core_v1(catalog: &Catalog) -> Value {
    let mut list = resource_entries(&catalog.group_version("", "v1"));
    list.push(json!({
        "name": "serviceaccounts/token",
        "singularName": "",
        "namespaced": true,
        "group": AUTHENTICATION,
        "version": "v1",
        "kind": "TokenRequest",
        "verbs": ["create"],
    }));
    json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": list})
}

/// The groups, each with its versions: the authentication group, then the catalog's.
fn groups(catalog: &Catalog) -> Vec<(&'static str, Vec<&'static str>)> {
    let mut groups = vec![(AUTHENTICATION, vec!["v1"])];
    groups.extend(catalog.groups());
    groups
}

fn group_entry(name: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({"name": name, "versions": vs, "preferredVersion": vs.first()})
}

/// `/apis`.
pub fn api_groups(catalog: &Catalog) -> Value {
    let list: Vec<Value> = groups(catalog)
        .iter()
        .map(|(g, vs)| group_entry(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": list})
}

/// `/apis/{group}`, if the group is served.
pub fn api_group(catalog: &Catalog, group: &str) -> Option<Value> {
    let (name, versions) = groups(catalog).into_iter().find(|(g, _)| *g == group)?;
    let mut g = group_entry(name, &versions);
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Some(g)
}

/// `/apis/{group}/{version}`, if served.
pub fn group_version(catalog: &Catalog, group: &str, version: &str) -> Option<Value> {
    let resources = if (group, version) == (AUTHENTICATION, "v1") {
        vec![
            json!({"name": "selfsubjectreviews", "singularName": "selfsubjectreview", "namespaced": false, "kind": "SelfSubjectReview", "verbs": ["create"]}),
            json!({"name": "tokenreviews", "singularName": "tokenreview", "namespaced": false, "kind": "TokenReview", "verbs": ["create"]}),
        ]
    } else {
        let rs = catalog.group_version(group, version);
        if rs.is_empty() {
            return None;
        }
        resource_entries(&rs)
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{group}/{version}"),
        "resources": resources,
    }))
}

/// `/openapi/v3`: where each group version's document is. kubectl reads it before `create`
/// and `apply` to learn whether the server validates fields itself.
pub fn openapi_v3_root(catalog: &Catalog) -> Value {
    let mut paths = Map::new();
    let mut add = |gv: String, group: &str, version: &str| {
        let hash = hash(&openapi_v3(catalog, group, version).to_string());
        paths.insert(
            gv.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash={hash}")}),
        );
    };
    add("api/v1".into(), "", "v1");
    for (g, vs) in groups(catalog) {
        for v in vs {
            add(format!("apis/{g}/{v}"), g, v);
        }
    }
    json!({ "paths": paths })
}

/// Changes when a document does (a CRD added a kind), so clients that cache documents by it
/// refetch. FNV-1a.
fn hash(doc: &str) -> String {
    let h = doc.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{h:016X}")
}

/// `/openapi/v3/api/v1` or `/openapi/v3/apis/{group}/{version}`: no schemas, only what
/// kubectl's field-validation check looks for, a PATCH operation per kind that takes
/// `fieldValidation` (so kubectl leaves validation to the server instead of validating
/// against schemas this document does not have). TokenReview has no PATCH on a real server;
/// the one here only tells kubectl to let the server validate, so `kubectl create -f` of a
/// TokenReview works.
pub fn openapi_v3(catalog: &Catalog, group: &str, version: &str) -> Value {
    let mut kinds: Vec<(String, &str)> = catalog
        .group_version(group, version)
        .into_iter()
        .map(|r| {
            let prefix = if group.is_empty() {
                format!("/api/{version}")
            } else {
                format!("/apis/{group}/{version}")
            };
            let path = if r.namespaced {
                format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
            } else {
                format!("{prefix}/{}/{{name}}", r.plural)
            };
            (path, r.kind)
        })
        .collect();
    if (group, version) == (AUTHENTICATION, "v1") {
        kinds.push((
            format!("/apis/{AUTHENTICATION}/v1/tokenreviews"),
            "TokenReview",
        ));
    }
    let mut paths = Map::new();
    for (path, kind) in kinds {
        paths.insert(path, json!({"patch": {
            "operationId": format!("patch{kind}"),
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": kind},
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_groups_are_discovered() {
        let c = Catalog::default();
        let names: Vec<String> = api_groups(&c)["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "authentication.k8s.io",
                "discovery.k8s.io",
                "coordination.k8s.io",
                "events.k8s.io",
                "apiextensions.k8s.io"
            ]
        );
        let leases = group_version(&c, "coordination.k8s.io", "v1").unwrap();
        assert_eq!(leases["resources"][0]["kind"], "Lease");
        assert!(group_version(&c, "coordination.k8s.io", "v2").is_none());
        assert!(api_group(&c, "nope.io").is_none());
        let root = openapi_v3_root(&c);
        assert!(root["paths"]["apis/discovery.k8s.io/v1"]["serverRelativeURL"].is_string());
    }
}
