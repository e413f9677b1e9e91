//! What the server serves: the built-in resources and those its CustomResourceDefinitions
//! define. It lives in the store, under the store's lock, so a CRD and the resources it
//! serves appear and disappear together with the write that changes them.

use crate::resources::{APIEXTENSIONS, RESOURCES, Resource};
use serde_json::{Value, json};
use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub struct Catalog {
    /// The resources of each CRD, by the CRD's name (`plural.group`), one per served version.
    crds: BTreeMap<String, Vec<&'static Resource>>,
}

// === impl Catalog ===

impl Catalog {
    /// Every served resource, built-in ones first.
    pub fn all(&self) -> impl Iterator<Item = &'static Resource> + '_ {
        RESOURCES
            .iter()
            .chain(self.crds.values().flatten().copied())
    }

    /// The resource at `/api/v1/{plural}` (group `""`) or `/apis/{group}/{version}/{plural}`.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
        self.all()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// The resource of objects of `kind` (or plural), of `api_version` when given; without
    /// one, the first of that kind (core group first).
    pub fn by_kind(&self, api_version: Option<&str>, kind: &str) -> Option<&'static Resource> {
        self.all().find(|r| {
            r.is_named(kind) && api_version.is_none_or(|v| v.is_empty() || r.api_version() == v)
        })
    }

    /// The named groups, each with its versions, in the order discovery lists them (built-in
    /// groups first, then CRD groups by name).
    pub fn groups(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        let mut groups: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
        for r in self.all().filter(|r| !r.group.is_empty()) {
            match groups.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, versions)) if !versions.contains(&r.version) => versions.push(r.version),
                Some(_) => {}
                None => groups.push((r.group, vec![r.version])),
            }
        }
        groups
    }

    /// The resources of a group version.
    pub fn group_version(&self, group: &str, version: &str) -> Vec<&'static Resource> {
        self.all()
            .filter(|r| r.group == group && r.version == version)
            .collect()
    }

    /// Starts (or keeps) serving what a stored, valid CRD defines. A CRD written again
    /// unchanged keeps its resources, so rewriting one does not leak more.
    pub fn serve(&mut self, crd: &Value) {
        let Ok(defined) = resources_of(crd) else {
            return; // checked before the write; a fixture's invalid CRD serves nothing
        };
        let name = crd["metadata"]["name"].as_str().unwrap_or_default();
        if let Some(old) = self.crds.get(name)
            && old.len() == defined.len()
            && old.iter().zip(&defined).all(|(a, b)| **a == *b)
        {
            return;
        }
        // Resources are `&'static` everywhere (watches, keys, routes hold them); a CRD's are
        // leaked, a few hundred bytes per CRD write that changes them, which a test server
        // can afford.
        let leaked = defined
            .into_iter()
            .map(|r| &*Box::leak(Box::new(r)))
            .collect();
        self.crds.insert(name.to_string(), leaked);
    }

    /// Stops serving what the CRD `name` defined; returns its resources.
    pub fn unserve(&mut self, name: &str) -> Vec<&'static Resource> {
        self.crds.remove(name).unwrap_or_default()
    }
}

fn leak(s: &str) -> &'static str {
    s.to_string().leak()
}

/// The resources a CRD defines, one per served version, or why the API server would refuse
/// the CRD (a 422). Only what serving needs is checked: names, scope, versions; the schema
/// is not (objects are not validated against it).
pub fn resources_of(crd: &Value) -> Result<Vec<Resource>, String> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let names = &spec["names"];
    let plural = names["plural"].as_str().unwrap_or_default();
    let kind = names["kind"].as_str().unwrap_or_default();
    if group.is_empty() || !group.contains('.') {
        return Err(format!(
            "spec.group: Invalid value: \"{group}\": should be a domain with at least one dot"
        ));
    }
    if plural.is_empty() || kind.is_empty() {
        return Err("spec.names.plural and spec.names.kind: Required value".into());
    }
    let name = crd["metadata"]["name"].as_str().unwrap_or_default();
    if name != format!("{plural}.{group}") {
        return Err(format!(
            "metadata.name: Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"
        ));
    }
    let namespaced = match spec["scope"].as_str() {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        other => {
            return Err(format!(
                "spec.scope: Unsupported value: {}: supported values: \"Cluster\", \"Namespaced\"",
                json!(other)
            ));
        }
    };
    let versions = spec["versions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if versions.is_empty() {
        return Err(
            "spec.versions: Invalid value: must have exactly one version marked as storage version"
                .into(),
        );
    }
    let singular = names["singular"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_ascii_lowercase());
    let short_names: Vec<&'static str> = names["shortNames"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(leak).collect())
        .unwrap_or_default();
    let short_names: &'static [&'static str] = short_names.leak();
    let (group, plural, kind, singular) = (leak(group), leak(plural), leak(kind), leak(&singular));
    Ok(versions
        .iter()
        .filter(|v| v["served"].as_bool().unwrap_or(false))
        .filter_map(|v| v["name"].as_str())
        .map(|version| {
            let v = versions
                .iter()
                .find(|v| v["name"] == version)
                .unwrap_or(&Value::Null);
            // `selectableFields` (1.31+): JSON paths such as `.spec.color` that field
            // selectors may name.
            let fields: Vec<&'static str> = v["selectableFields"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|f| f["jsonPath"].as_str())
                        .map(|p| leak(p.trim_start_matches('.')))
                        .collect()
                })
                .unwrap_or_default();
            Resource {
                group,
                version: leak(version),
                plural,
                singular,
                kind,
                namespaced,
                short_names,
                has_status: v
                    .pointer("/subresources/status")
                    .is_some_and(Value::is_object),
                fields: fields.leak(),
                custom: true,
            }
        })
        .collect())
}

/// The `status` the API server's CRD controllers give a CRD it accepted.
pub fn crd_status(crd: &Value) -> Value {
    let now = crate::now_rfc3339();
    let condition = |kind: &str, reason: &str, message: &str| {
        json!({"type": kind, "status": "True", "lastTransitionTime": now,
            "reason": reason, "message": message})
    };
    let stored: Vec<&Value> = crd["spec"]["versions"]
        .as_array()
        .map(|vs| {
            vs.iter()
                .filter(|v| v["storage"] == true)
                .map(|v| &v["name"])
                .collect()
        })
        .unwrap_or_default();
    json!({
        "acceptedNames": crd["spec"]["names"],
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "storedVersions": stored,
    })
}

/// Whether `res` is CustomResourceDefinition itself.
pub fn is_crd(res: &Resource) -> bool {
    res.group == APIEXTENSIONS && res.plural == "customresourcedefinitions"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd(scope: &str, versions: Value) -> Value {
        json!({"metadata": {"name": "widgets.example.com"}, "spec": {
            "group": "example.com", "scope": scope,
            "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
            "versions": versions}})
    }

    #[test]
    fn a_crd_serves_each_served_version() {
        let mut c = Catalog::default();
        let v = json!([
            {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}},
            {"name": "v2", "served": true, "storage": false},
            {"name": "v0", "served": false, "storage": false},
        ]);
        c.serve(&crd("Namespaced", v.clone()));
        let v1 = c.find("example.com", "v1", "widgets").unwrap();
        assert!(v1.namespaced && v1.has_status && v1.custom);
        assert_eq!((v1.singular, v1.short_names), ("widget", &["wd"][..]));
        assert!(!c.find("example.com", "v2", "widgets").unwrap().has_status);
        assert!(c.find("example.com", "v0", "widgets").is_none());
        assert_eq!(
            c.by_kind(Some("example.com/v2"), "Widget").unwrap().version,
            "v2"
        );
        assert!(c.groups().contains(&("example.com", vec!["v1", "v2"])));
        // Rewritten unchanged: the same resources.
        c.serve(&crd("Namespaced", v));
        assert!(std::ptr::eq(
            v1,
            c.find("example.com", "v1", "widgets").unwrap()
        ));
        assert_eq!(c.unserve("widgets.example.com").len(), 2);
        assert!(c.by_kind(None, "Widget").is_none());
    }

    #[test]
    fn invalid_crds() {
        let v = json!([{"name": "v1", "served": true, "storage": true}]);
        assert!(resources_of(&crd("Everywhere", v.clone())).is_err());
        let mut bad = crd("Cluster", v);
        bad["metadata"]["name"] = json!("other.example.com");
        assert!(resources_of(&bad).is_err());
        assert!(resources_of(&crd("Cluster", json!([]))).is_err());
    }
}
