//! The HTTP side: the accept loop (which owns every connection, so stopping it drops them
//! all), authentication, routing, and the handlers for discovery, CRUD, list, watch,
//! TokenRequest and TokenReview.

use crate::resources::{self, Resource};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{Key, Store};
use crate::watch::{self, WatchRequest};
use crate::{ApiError, RequestRecord, Shared, proto, tokens};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// A response body: a whole JSON document, or a watch stream's events as they come.
#[derive(Debug)]
pub enum Body {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

type Reply = Result<Response<Body>, ApiError>;

/// Accepts connections until the task is aborted; the connections live in this task's
/// `JoinSet`, so aborting it closes them too (watch streams included), which is what
/// `FakeKube::stop` needs to look like an API server going down.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, tls: Option<TlsAcceptor>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let (shared, tls) = (shared.clone(), tls.clone());
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(shared.clone(), req));
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(tcp).await {
                                let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let raw_query = parts.uri.query().unwrap_or_default().to_string();
    shared
        .requests
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(RequestRecord {
            method: parts.method.to_string(),
            path: path.clone(),
            query: raw_query.clone(),
            at: Instant::now(),
        });
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let bearer = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let user = bearer.and_then(|t| user_of(&shared, t));
    let call = Call {
        user: user.clone().unwrap_or(Value::Null),
        method: parts.method,
        path,
        query: parse_query(&raw_query),
        content_type: parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        body,
    };
    let public = matches!(
        call.path.as_str(),
        "/version"
            | "/healthz"
            | "/livez"
            | "/readyz"
            | "/.well-known/openid-configuration"
            | "/openid/v1/jwks"
    );
    let reply = if public || user.is_some() {
        route(&shared, &call)
    } else {
        Err(ApiError::new(401, "Unauthorized", "Unauthorized"))
    };
    Ok(reply.unwrap_or_else(|e| {
        json_response(
            StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &e.to_status(),
        )
    }))
}

/// Who `token` is: the admin, or the service account of a token this server issued for its
/// own audience that is still valid.
fn user_of(shared: &Shared, token: &str) -> Option<Value> {
    if token == shared.admin_token {
        return Some(json!({
            "username": "kubernetes-admin",
            "groups": ["kubeadm:cluster-admins", "system:authenticated"],
        }));
    }
    tokens::authenticate(&shared.store(), &shared.signer, token, &[])
        .ok()
        .map(|a| a.user)
}

/// A request, read whole.
struct Call {
    /// The authenticated caller (`userInfo`), null when anonymous.
    user: Value,
    method: Method,
    path: String,
    query: HashMap<String, String>,
    content_type: String,
    body: Bytes,
}

// === impl Call ===

impl Call {
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.param(name), Some("true" | "1"))
    }

    fn json(&self) -> Result<Value, ApiError> {
        if self.content_type.starts_with(proto::CONTENT_TYPE) {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: application/json",
            ));
        }
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| ApiError::bad_request("the body of the request is not a JSON object"))
    }

    fn dry_run(&self) -> bool {
        self.param("dryRun").is_some()
    }
}

fn route(shared: &Arc<Shared>, call: &Call) -> Reply {
    let segs: Vec<&str> = call.path.split('/').filter(|s| !s.is_empty()).collect();
    let get = call.method == Method::GET;
    match segs.as_slice() {
        ["version"] if get => ok(resources::version()),
        ["healthz" | "livez" | "readyz"] if get => Ok(text_response("ok")),
        ["api"] if get => ok(resources::api_versions(&shared.address)),
        ["api", "v1"] if get => ok(resources::core_v1()),
        ["apis"] if get => ok(resources::api_groups()),
        ["apis", "authentication.k8s.io"] if get => ok(resources::authentication_api_group()),
        ["apis", "authentication.k8s.io", "v1"] if get => ok(resources::authentication_v1()),
        ["apis", "authentication.k8s.io", "v1", "tokenreviews"] if call.method == Method::POST => {
            token_review(shared, call)
        }
        ["apis", "authentication.k8s.io", "v1", "selfsubjectreviews"]
            if call.method == Method::POST =>
        {
            Ok(json_response(
                StatusCode::CREATED,
                &json!({
                    "kind": "SelfSubjectReview",
                    "apiVersion": "authentication.k8s.io/v1",
                    "metadata": {"creationTimestamp": null},
                    "status": {"userInfo": call.user},
                }),
            ))
        }
        [".well-known", "openid-configuration"] if get => ok(json!({
            "issuer": resources::ISSUER,
            "jwks_uri": format!("https://{}/openid/v1/jwks", shared.address),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })),
        ["openid", "v1", "jwks"] if get => ok(shared.signer.jwks()),
        ["openapi", "v3"] if get => ok(resources::openapi_v3_root()),
        ["openapi", "v3", "api", "v1"] if get => ok(resources::openapi_v3_core()),
        ["openapi", "v3", "apis", "authentication.k8s.io", "v1"] if get => {
            ok(resources::openapi_v3_authentication())
        }
        ["api", "v1", rest @ ..] => core(shared, call, rest),
        _ => Err(not_served()),
    }
}

fn not_served() -> ApiError {
    let mut e = ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    );
    e.details = Some(json!({}));
    e
}

fn method_not_allowed() -> ApiError {
    ApiError::new(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
    )
}

/// `/api/v1/...`: `{resource}[/{name}[/{sub}]]`, optionally under `namespaces/{ns}/`.
fn core(shared: &Arc<Shared>, call: &Call, rest: &[&str]) -> Reply {
    let namespaced_path = rest.len() >= 3
        && rest[0] == "namespaces"
        && resources::by_plural(rest[2]).is_some_and(|r| r.namespaced);
    let (ns, rest) = if namespaced_path {
        (Some(rest[1]), &rest[2..])
    } else {
        (None, rest)
    };
    let Some(res) = rest.first().and_then(|p| resources::by_plural(p)) else {
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
        [_, name] if *m == Method::GET => {
            let store = shared.store();
            let obj = store
                .get(&Key::new(res, ns, name))
                .ok_or_else(|| ApiError::not_found(res.plural, name))?;
            ok(obj.clone())
        }
        [_, name] if *m == Method::PUT => update(shared, call, res, ns, name, false),
        [_, name] if *m == Method::PATCH => patch(shared, call, res, ns, name, false),
        [_, name] if *m == Method::DELETE => delete(shared, call, res, ns, name),
        [_, name, "status"] if res.has_status && *m == Method::GET => {
            let store = shared.store();
            let obj = store
                .get(&Key::new(res, ns, name))
                .ok_or_else(|| ApiError::not_found(res.plural, name))?;
            ok(obj.clone())
        }
        [_, name, "status"] if res.has_status && *m == Method::PUT => {
            update(shared, call, res, ns, name, true)
        }
        [_, name, "status"] if res.has_status && *m == Method::PATCH => {
            patch(shared, call, res, ns, name, true)
        }
        ["serviceaccounts", name, "token"] if *m == Method::POST => {
            token_request(shared, call, ns, name)
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
        items.push(obj.clone());
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
        json!({"kind": format!("{}List", res.kind), "apiVersion": "v1", "metadata": meta, "items": items}),
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

/// Checks the object's `kind`, name and namespace against the URL, as the API server does
/// before anything else.
fn check_identity(
    res: &Resource,
    ns: Option<&str>,
    obj: &mut Value,
    url_name: Option<&str>,
) -> Result<(), ApiError> {
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
    let mut obj = call.json()?;
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
    if res.plural == "pods" {
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
                format!("{} \"{name}\" already exists", res.plural),
            );
            e.details = Some(json!({"name": name, "kind": res.plural}));
            return Err(e);
        }
    }
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
                    res.plural
                ),
            );
            e.details = Some(json!({"name": name, "kind": res.plural}));
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
        .ok_or_else(|| ApiError::not_found(res.plural, name))
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
    let media = call
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    if !matches!(
        media,
        "application/merge-patch+json" | "application/strategic-merge-patch+json"
    ) {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json (this fake server does not implement {media})"
            ),
        ));
    }
    let patch = call.json()?;
    let old = existing(shared, res, ns, name)?;
    check_version(res, name, &patch, &old)?;
    // Strategic merge patch differs from a merge patch only on lists with merge keys; the
    // fields tests patch (labels, annotations, status) are maps, where both agree.
    let mut new = old.clone();
    merge_patch(&mut new, &patch);
    check_identity(res, ns, &mut new, Some(name))?;
    replace(shared, call, res, old, new, status)
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Some(t) = target.as_object_mut() else {
        return;
    }; // made an object above
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
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
                    res.plural,
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
        return ok(old);
    }
    let last = shared
        .remove(&Key::new(res, ns, name))
        .ok_or_else(|| ApiError::not_found(res.plural, name))?;
    ok(last)
}

// --- tokens ---

fn token_request(shared: &Arc<Shared>, call: &Call, ns: Option<&str>, name: &str) -> Reply {
    let ns = ns.ok_or_else(not_served)?;
    let body = if call.content_type.starts_with(proto::CONTENT_TYPE) {
        proto::token_request(&call.body)
            .ok_or_else(|| ApiError::bad_request("cannot decode the TokenRequest"))?
    } else {
        call.json()?
    };
    let spec = &body["spec"];
    let audiences: Vec<String> = spec["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let ttl = spec["expirationSeconds"].as_u64().unwrap_or(3600);
    if ttl < 600 {
        return Err(ApiError::new(
            422,
            "Invalid",
            format!(
                "TokenRequest.authentication.k8s.io \"{name}\" is invalid: spec.expirationSeconds: Invalid value: {ttl}: may not specify a duration less than 10 minutes"
            ),
        ));
    }
    if ttl > 1 << 32 {
        return Err(ApiError::new(
            422,
            "Invalid",
            format!(
                "TokenRequest.authentication.k8s.io \"{name}\" is invalid: spec.expirationSeconds: Invalid value: {ttl}: may not specify a duration larger than 2^32 seconds"
            ),
        ));
    }
    let bound = spec
        .get("boundObjectRef")
        .filter(|b| b.is_object())
        .map(|b| tokens::BoundRef {
            kind: b["kind"].as_str().unwrap_or_default().to_string(),
            name: b["name"].as_str().unwrap_or_default().to_string(),
            uid: b["uid"]
                .as_str()
                .filter(|u| !u.is_empty())
                .map(str::to_string),
        });
    let tspec = tokens::TokenSpec {
        namespace: ns.to_string(),
        service_account: name.to_string(),
        audiences: audiences.clone(),
        ttl_secs: ttl,
        bound,
    };
    let (token, exp) = tokens::issue(&shared.store(), &shared.signer, &tspec)?;
    let auds = if audiences.is_empty() {
        vec![resources::ISSUER.to_string()]
    } else {
        audiences
    };
    let mut out_spec = spec.clone();
    out_spec["audiences"] = json!(auds);
    out_spec["expirationSeconds"] = json!(ttl);
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": crate::now_rfc3339()},
            "spec": out_spec,
            "status": {"token": token, "expirationTimestamp": crate::rfc3339(exp)},
        }),
    ))
}

fn token_review(shared: &Arc<Shared>, call: &Call) -> Reply {
    let body = call.json()?;
    let token = body
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let audiences: Vec<String> = body
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let status = tokens::review_status(&shared.store(), &shared.signer, token, &audiences);
    let mut review = body.clone();
    review["kind"] = json!("TokenReview");
    review["apiVersion"] = json!("authentication.k8s.io/v1");
    if !review.get("metadata").is_some_and(Value::is_object) {
        review["metadata"] = json!({});
    }
    review["metadata"]["creationTimestamp"] = Value::Null;
    review["status"] = status;
    Ok(json_response(StatusCode::CREATED, &review))
}

// --- helpers ---

fn random_suffix() -> String {
    // The API server's alphabet for generateName: no vowels, no confusable digits.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

fn ok(v: Value) -> Reply {
    Ok(json_response(StatusCode::OK, &v))
}

fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
    let mut resp = Response::new(Body::Full(Some(Bytes::from(v.to_string()))));
    *resp.status_mut() = code;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn text_response(s: &'static str) -> Response<Body> {
    let mut resp = Response::new(Body::Full(Some(Bytes::from_static(s.as_bytes()))));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The query string's parameters, percent-decoded (`+` is a space, as Go and kube-rs encode).
pub fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 2;
            }
            (c, _, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// === impl Body ===

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Stream(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::PODS;

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
    fn query_decoding() {
        let q = parse_query(
            "labelSelector=app+in+%28a%2Cb%29&watch=1&x=%zz&fieldSelector=spec.nodeName%3Dn1",
        );
        assert_eq!(q["labelSelector"], "app in (a,b)");
        assert_eq!(q["fieldSelector"], "spec.nodeName=n1");
        assert_eq!(q["watch"], "1");
        assert_eq!(q["x"], "%zz");
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

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge_patch(&mut t, &json!({"a": {"b": null, "d": 3}, "l": [3]}));
        assert_eq!(t, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
    }
}
