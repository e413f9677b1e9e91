//! The endpoints of every resource, of the core group and of named groups (CRDs' included)
//! alike: list (pages from a consistent snapshot), watch, get, create, update, patch (merge,
//! JSON, server-side apply), delete, and `/status`.

use crate::auth;
use crate::catalog;
use crate::patch;
use crate::reply::{Body, Call, Reply, json_response, method_not_allowed, not_served, ok};
use crate::resources::{self, Resource};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{Key, Store};
use crate::watch::{self, WatchRequest};
use crate::{ApiError, Shared};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Response, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// `/api/v1/...` (`group` empty) or `/apis/{group}/{version}/...`:
/// `{resource}[/{name}[/{sub}]]`, optionally under `namespaces/{ns}/`.
pub fn serve(
    shared: &Arc<Shared>,
    call: &Call,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Reply {
    let find = |plural: &str| shared.store().catalog.find(group, version, plural);
    let namespaced_path =
        rest.len() >= 3 && rest[0] == "namespaces" && find(rest[2]).is_some_and(|r| r.namespaced);
    let (ns, rest) = if namespaced_path {
        (Some(rest[1]), &rest[2..])
    } else {
        (None, rest)
    };
    let Some(res) = rest.first().and_then(|p| find(p)) else {
        return Err(not_served());
    };
    if res.namespaced && ns.is_none() && rest.len() > 1 {
        return Err(not_served());
    }
    let m = &call.method;
    match rest {
        [_] if *m == Method::GET => {
            if call.flag("watch") {
                watch(shared, call, res, ns)
            } else {
                ok(list(&shared.store(), call, res, ns)?)
            }
        }
        [_] if *m == Method::POST && (ns.is_some() || !res.namespaced) => {
            create(shared, call, res, ns)
        }
        [_, name] if *m == Method::GET => ok(res.present(existing(shared, res, ns, name)?)),
        [_, name] if *m == Method::PUT => update(shared, call, res, ns, name, false),
        [_, name] if *m == Method::PATCH => patch(shared, call, res, ns, name, false),
        [_, name] if *m == Method::DELETE => delete(shared, call, res, ns, name),
        [_, name, "status"] if res.has_status && *m == Method::GET => {
            ok(res.present(existing(shared, res, ns, name)?))
        }
        [_, name, "status"] if res.has_status && *m == Method::PUT => {
            update(shared, call, res, ns, name, true)
        }
        [_, name, "status"] if res.has_status && *m == Method::PATCH => {
            patch(shared, call, res, ns, name, true)
        }
        ["serviceaccounts", name, "token"] if res.group.is_empty() && *m == Method::POST => {
            auth::token_request(shared, call, ns, name)
        }
        [_] | [_, _] | [_, _, "status"] => Err(method_not_allowed()),
        _ => Err(not_served()),
    }
}

// --- list and watch ---

/// The opaque `continue` token: the snapshot version and the last key returned.
fn encode_continue(rv: u64, key: &Key) -> String {
    B64.encode(
        json!({"v": "meta.k8s.io/v1", "rv": rv, "start": [key.namespace, key.name]}).to_string(),
    )
}

fn decode_continue(token: &str) -> Result<(u64, (String, String)), ApiError> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token}"));
    let v: Value = B64
        .decode(token)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(bad)?;
    let rv = v["rv"].as_u64().ok_or_else(bad)?;
    let ns = v["start"][0].as_str().ok_or_else(bad)?.to_string();
    let name = v["start"][1].as_str().ok_or_else(bad)?.to_string();
    Ok((rv, (ns, name)))
}

fn selectors(call: &Call, res: &Resource) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(call.param("labelSelector").unwrap_or_default())?;
    let fields = FieldSelector::parse(
        call.param("fieldSelector").unwrap_or_default(),
        &res.field_labels(),
    )?;
    Ok((labels, fields))
}

fn parse_rv(v: &str) -> Result<u64, ApiError> {
    v.parse().map_err(|_| {
        let mut e = ApiError::new(
            400,
            "BadRequest",
            format!("resourceVersion: Invalid value: \"{v}\": strconv.ParseUint: parsing \"{v}\": invalid syntax"),
        );
        e.details = Some(json!({}));
        e
    })
}

/// A list: the matching objects of the snapshot at the first page's version, in key order,
/// `limit` at a time.
fn list(store: &Store, call: &Call, res: &Resource, ns: Option<&str>) -> Result<Value, ApiError> {
    let (labels, fields) = selectors(call, res)?;
    let limit: usize = match call.param("limit") {
        Some(l) => l
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid limit: {l}")))?,
        None => 0,
    };
    let cont = call.param("continue").map(decode_continue).transpose()?;
    if cont.is_some() && call.param("resourceVersion").is_some_and(|v| v != "0") {
        return Err(ApiError::bad_request(
            "specifying resource version is not allowed when using continue",
        ));
    }
    let snapshot = match (
        &cont,
        call.param("resourceVersionMatch"),
        call.param("resourceVersion"),
    ) {
        (Some((rv, _)), _, _) => *rv,
        (None, Some("Exact"), Some(v)) => parse_rv(v)?,
        (None, _, Some(v)) if v != "0" => parse_rv(v).map(|_| store.rv())?,
        _ => store.rv(),
    };
    let state = store.state_at(snapshot).map_err(|floor| {
        if cont.is_some() {
            ApiError::new(
                410,
                "Expired",
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
            )
        } else {
            ApiError::new(410, "Expired", format!("too old resource version: {snapshot} ({floor})"))
        }
    })?;
    let after = cont.map(|(_, a)| a);
    let (mut items, mut remaining, mut last) = (Vec::new(), 0u64, None);
    for (key, obj) in Store::objects(&state, res, ns) {
        if after
            .as_ref()
            .is_some_and(|(a_ns, a_name)| (&key.namespace, &key.name) <= (a_ns, a_name))
        {
            continue;
        }
        if !(labels.matches(obj) && fields.matches(obj)) {
            continue;
        }
        if limit > 0 && items.len() == limit {
            remaining += 1;
            continue;
        }
        items.push(res.present(obj.clone()));
        last = Some(key.clone());
    }
    let mut meta = json!({"resourceVersion": snapshot.to_string()});
    if remaining > 0
        && let Some(last) = &last
    {
        meta["continue"] = json!(encode_continue(snapshot, last));
        // The real server counts the rest only when it need not filter it.
        if labels.is_empty() && fields.is_empty() {
            meta["remainingItemCount"] = json!(remaining);
        }
    }
    Ok(
        json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(), "metadata": meta, "items": items}),
    )
}

fn watch(shared: &Arc<Shared>, call: &Call, res: &'static Resource, ns: Option<&str>) -> Reply {
    let (labels, fields) = selectors(call, res)?;
    let resource_version = match call.param("resourceVersion") {
        None | Some("0") => None,
        Some(v) => Some(parse_rv(v)?),
    };
    let timeout = match call.param("timeoutSeconds") {
        Some(t) => Some(Duration::from_secs(t.parse().map_err(|_| {
            ApiError::bad_request(format!("invalid timeoutSeconds: {t}"))
        })?)),
        None => None,
    };
    let req = WatchRequest {
        res,
        namespace: ns.map(str::to_string),
        labels,
        fields,
        resource_version,
        send_initial_events: call.flag("sendInitialEvents"),
        bookmarks: call.flag("allowWatchBookmarks"),
        timeout,
    };
    let rx = watch::start(shared.clone(), req);
    let mut resp = Response::new(Body::Stream(rx));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

// --- writes ---

/// Checks the object's `apiVersion`, `kind`, name and namespace against the URL, as the API
/// server does before anything else.
fn check_identity(
    res: &Resource,
    ns: Option<&str>,
    obj: &mut Value,
    url_name: Option<&str>,
) -> Result<(), ApiError> {
    let want = res.api_version();
    if let Some(v) = obj.get("apiVersion").and_then(Value::as_str)
        && v != want
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({v}) does not match the expected API version ({want})"
        )));
    }
    if let Some(kind) = obj.get("kind").and_then(Value::as_str)
        && kind != res.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind of the provided object ({kind}) does not match the kind of the request ({})",
            res.kind
        )));
    }
    if let Some(name) = url_name {
        match obj.pointer("/metadata/name").and_then(Value::as_str) {
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            _ => obj["metadata"]["name"] = json!(name),
        }
    }
    if let Some(ns) = ns {
        match obj.pointer("/metadata/namespace").and_then(Value::as_str) {
            Some(n) if !n.is_empty() && n != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => obj["metadata"]["namespace"] = json!(ns),
        }
    }
    Ok(())
}

fn create(shared: &Arc<Shared>, call: &Call, res: &'static Resource, ns: Option<&str>) -> Reply {
    create_object(shared, call, res, ns, call.json()?)
}

/// Creates `obj`, sent to the collection (POST) or applied to a missing name (server-side
/// apply).
fn create_object(
    shared: &Arc<Shared>,
    call: &Call,
    res: &'static Resource,
    ns: Option<&str>,
    mut obj: Value,
) -> Reply {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    check_identity(res, ns, &mut obj, None)?;
    let name = match obj.pointer("/metadata/name").and_then(Value::as_str) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => match obj
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
        {
            Some(prefix) if !prefix.is_empty() => format!("{prefix}{}", random_suffix()),
            _ => {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!(
                        "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                        res.kind
                    ),
                ));
            }
        },
    };
    obj["metadata"]["name"] = json!(name);
    if let Some(meta) = obj["metadata"].as_object_mut() {
        // Set by the server only.
        for k in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
        ] {
            meta.remove(k);
        }
    }
    if res.custom
        && res.has_status
        && let Some(m) = obj.as_object_mut()
    {
        // A custom resource's status is written through `/status` only.
        m.remove("status");
    }
    if res.group.is_empty() && res.plural == "pods" {
        // A new pod's status is the server's: Pending until a kubelet says otherwise.
        obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
        if obj.pointer("/spec/serviceAccountName").is_none() {
            obj["spec"]["serviceAccountName"] = json!("default");
        }
    }
    let store_key = Key::of(res, &obj);
    {
        let store = shared.store();
        if let Some(ns) = ns {
            let nsres = resources::by_plural("namespaces").expect("a resource of the table");
            if store.get(&Key::new(nsres, None, ns)).is_none() {
                return Err(ApiError::not_found("namespaces", ns));
            }
        }
        if store.get(&store_key).is_some() {
            let mut e = ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", res.qualified()),
            );
            e.details = Some(json!({"name": name, "group": res.group, "kind": res.plural}));
            return Err(e);
        }
    }
    validate(res, &obj)?;
    let stored = if call.dry_run() {
        obj
    } else {
        shared.write(res, obj)
    };
    Ok(json_response(StatusCode::CREATED, &stored))
}

/// A 409 if `obj` names a resourceVersion other than the stored one (optimistic
/// concurrency), as PUT and PATCH do.
fn check_version(res: &Resource, name: &str, obj: &Value, old: &Value) -> Result<(), ApiError> {
    match obj
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
    {
        Some(rv)
            if !rv.is_empty()
                && Some(rv)
                    != old
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str) =>
        {
            let mut e = ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    res.qualified()
                ),
            );
            e.details = Some(json!({"name": name, "group": res.group, "kind": res.plural}));
            Err(e)
        }
        _ => Ok(()),
    }
}

/// Stores `new` over `old`: a write to the main resource keeps the stored status, a write to
/// `/status` keeps everything but the status.
fn replace(
    shared: &Arc<Shared>,
    call: &Call,
    res: &'static Resource,
    old: Value,
    mut new: Value,
    status: bool,
) -> Reply {
    let mut merged = if status {
        let mut o = old.clone();
        o["status"] = new.get("status").cloned().unwrap_or(Value::Null);
        o
    } else {
        if res.has_status {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        new
    };
    // Identity and server-set fields stay the stored ones.
    for k in ["uid", "creationTimestamp"] {
        merged["metadata"][k] = old["metadata"][k].clone();
    }
    validate(res, &merged)?;
    let stored = if call.dry_run() {
        merged
    } else {
        shared.write(res, merged)
    };
    ok(stored)
}

fn existing(
    shared: &Shared,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
) -> Result<Value, ApiError> {
    shared
        .store()
        .get(&Key::new(res, ns, name))
        .cloned()
        .ok_or_else(|| ApiError::not_found(&res.qualified(), name))
}

fn update(
    shared: &Arc<Shared>,
    call: &Call,
    res: &'static Resource,
    ns: Option<&str>,
    name: &str,
    status: bool,
) -> Reply {
    let mut obj = call.json()?;
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    check_identity(res, ns, &mut obj, Some(name))?;
    let old = existing(shared, res, ns, name)?;
    check_version(res, name, &obj, &old)?;
    replace(shared, call, res, old, obj, status)
}

fn patch(
    shared: &Arc<Shared>,
    call: &Call,
    res: &'static Resource,
    ns: Option<&str>,
    name: &str,
    status: bool,
) -> Reply {
    let kind = patch::Kind::of(&call.content_type)?;
    let body = patch::body(kind, &call.body)?;
    let stored = shared.store().get(&Key::new(res, ns, name)).cloned();
    let Some(old) = stored else {
        if kind == patch::Kind::Apply && !status {
            // Server-side apply creates what is missing.
            check_apply(res, call, &body)?;
            let mut obj = body;
            check_identity(res, ns, &mut obj, Some(name))?;
            return create_object(shared, call, res, ns, obj);
        }
        return Err(ApiError::not_found(&res.qualified(), name));
    };
    check_version(res, name, &body, &old)?;
    let mut new = res.present(old.clone());
    match kind {
        // Strategic merge patch differs from a merge patch only on lists with merge keys; the
        // fields tests patch (labels, annotations, status) are maps, where both agree.
        patch::Kind::Merge => patch::merge(&mut new, &body),
        patch::Kind::Json => patch::json_patch(&mut new, &body)?,
        patch::Kind::Apply => {
            check_apply(res, call, &body)?;
            patch::apply(&mut new, &body);
        }
    }
    check_identity(res, ns, &mut new, Some(name))?;
    replace(shared, call, res, old, new, status)
}

/// What server-side apply requires beyond a patch: a field manager, and the object's
/// `apiVersion` and `kind`.
fn check_apply(res: &Resource, call: &Call, body: &Value) -> Result<(), ApiError> {
    if call.param("fieldManager").is_none() {
        return Err(ApiError::bad_request(
            "PATCH /apply requires fieldManager to be set",
        ));
    }
    if body.get("apiVersion").is_none() || body.get("kind").is_none() {
        return Err(ApiError::bad_request(format!(
            "apiVersion and kind must be set in an apply patch (want {}, {})",
            res.api_version(),
            res.kind
        )));
    }
    Ok(())
}

/// What the server checks of an object's content before storing it: only that a CRD
/// defines something it can serve (objects are not validated against schemas).
fn validate(res: &Resource, obj: &Value) -> Result<(), ApiError> {
    if catalog::is_crd(res) {
        catalog::resources_of(obj).map_err(|why| {
            let name = obj["metadata"]["name"].as_str().unwrap_or_default();
            ApiError::new(
                422,
                "Invalid",
                format!(
                    "CustomResourceDefinition.apiextensions.k8s.io \"{name}\" is invalid: {why}"
                ),
            )
        })?;
    }
    Ok(())
}

fn delete(
    shared: &Arc<Shared>,
    call: &Call,
    res: &'static Resource,
    ns: Option<&str>,
    name: &str,
) -> Reply {
    let old = existing(shared, res, ns, name)?;
    // DeleteOptions may carry preconditions.
    if let Ok(opts) = serde_json::from_slice::<Value>(&call.body) {
        let pre = &opts["preconditions"];
        let conflict = |what: &str, want: &Value, have: &Value| {
            ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: {what} in precondition: {}, {what} in object meta: {}",
                    res.qualified(),
                    want.as_str().unwrap_or_default(),
                    have.as_str().unwrap_or_default()
                ),
            )
        };
        if pre["uid"].is_string() && pre["uid"] != old["metadata"]["uid"] {
            return Err(conflict("UID", &pre["uid"], &old["metadata"]["uid"]));
        }
        if pre["resourceVersion"].is_string()
            && pre["resourceVersion"] != old["metadata"]["resourceVersion"]
        {
            return Err(conflict(
                "ResourceVersion",
                &pre["resourceVersion"],
                &old["metadata"]["resourceVersion"],
            ));
        }
    }
    if call.dry_run() {
        return ok(res.present(old));
    }
    let last = shared
        .remove(&Key::new(res, ns, name))
        .ok_or_else(|| ApiError::not_found(&res.qualified(), name))?;
    ok(res.present(last))
}

fn random_suffix() -> String {
    // The API server's alphabet for generateName: no vowels, no confusable digits.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::parse_query;
    use crate::resources::PODS;
    use bytes::Bytes;

    fn call(query: &str) -> Call {
        Call {
            user: Value::Null,
            method: Method::GET,
            path: "/api/v1/pods".into(),
            query: parse_query(query),
            content_type: String::new(),
            body: Bytes::new(),
        }
    }

    fn names(list: &Value) -> Vec<String> {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn pagination_is_a_consistent_snapshot() {
        let mut s = Store::default();
        for (ns, name, node) in [
            ("a", "p1", "n1"),
            ("a", "p2", "n2"),
            ("b", "p3", "n1"),
            ("b", "p4", "n1"),
        ] {
            s.put(
                &PODS,
                json!({"metadata": {"name": name, "namespace": ns}, "spec": {"nodeName": node}}),
            );
        }
        let first = list(&s, &call("limit=2"), &PODS, None).unwrap();
        assert_eq!(first["kind"], "PodList");
        assert_eq!(names(&first), ["p1", "p2"]);
        assert_eq!(first["metadata"]["remainingItemCount"], 2);
        assert_eq!(first["metadata"]["resourceVersion"], "4");
        let first_token = first["metadata"]["continue"].as_str().unwrap().to_string();
        let token = first_token.clone();
        // Writes after the first page do not show in the next ones.
        s.put(&PODS, json!({"metadata": {"name": "p5", "namespace": "b"}}));
        s.remove(&Key::new(&PODS, Some("b"), "p4"));
        let second = list(&s, &call(&format!("limit=2&continue={token}")), &PODS, None).unwrap();
        assert_eq!(names(&second), ["p3", "p4"]);
        assert_eq!(second["metadata"]["resourceVersion"], "4");
        assert!(second["metadata"].get("continue").is_none());
        assert_eq!(
            names(&list(&s, &call(""), &PODS, None).unwrap()),
            ["p1", "p2", "p3", "p5"]
        );

        // With a selector: pages of matching objects, no remainingItemCount.
        let sel = "fieldSelector=spec.nodeName%3Dn1&limit=1";
        let page = list(&s, &call(sel), &PODS, None).unwrap();
        assert_eq!(names(&page), ["p1"]);
        assert!(page["metadata"].get("remainingItemCount").is_none());
        let token = page["metadata"]["continue"].as_str().unwrap().to_string();
        let page = list(&s, &call(&format!("{sel}&continue={token}")), &PODS, None).unwrap();
        assert_eq!(names(&page), ["p3"]);
        assert!(
            page["metadata"].get("continue").is_none(),
            "p4 is gone and p5 has no node"
        );

        // Namespaced, and errors.
        assert_eq!(
            names(&list(&s, &call(""), &PODS, Some("a")).unwrap()),
            ["p1", "p2"]
        );
        assert_eq!(
            list(&s, &call("continue=garbage"), &PODS, None)
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            list(&s, &call("fieldSelector=spec.host%3Dx"), &PODS, None)
                .unwrap_err()
                .code,
            400
        );
        s.compact();
        let expired = list(
            &s,
            &call(&format!("limit=2&continue={first_token}")),
            &PODS,
            None,
        );
        assert_eq!(expired.unwrap_err().code, 410);
    }
}
