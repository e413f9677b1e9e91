//! The HTTP side: the accept loop (which owns every connection, so stopping it drops them
//! all), authentication, routing, and the handlers for TokenRequest and TokenReview. The
//! resources' endpoints are in `rest`, discovery documents in `discovery`.

use crate::{ApiError, RequestRecord, Shared, discovery, proto, resources, rest, tokens};
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
use std::time::Instant;
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

pub(crate) type Reply = Result<Response<Body>, ApiError>;

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
pub(crate) struct Call {
    /// The authenticated caller (`userInfo`), null when anonymous.
    pub user: Value,
    pub method: Method,
    pub path: String,
    pub query: HashMap<String, String>,
    pub content_type: String,
    pub body: Bytes,
}

// === impl Call ===

impl Call {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn flag(&self, name: &str) -> bool {
        matches!(self.param(name), Some("true" | "1"))
    }

    pub fn json(&self) -> Result<Value, ApiError> {
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

    pub fn dry_run(&self) -> bool {
        self.param("dryRun").is_some()
    }
}

fn route(shared: &Arc<Shared>, call: &Call) -> Reply {
    let segs: Vec<&str> = call.path.split('/').filter(|s| !s.is_empty()).collect();
    let get = call.method == Method::GET;
    match segs.as_slice() {
        ["version"] if get => ok(resources::version()),
        ["healthz" | "livez" | "readyz"] if get => Ok(text_response("ok")),
        ["api"] if get => ok(discovery::api_versions(&shared.address)),
        ["api", "v1"] if get => ok(discovery::core_v1(&shared.store().catalog)),
        ["apis"] if get => ok(discovery::api_groups(&shared.store().catalog)),
        ["apis", group] if get => discovery::api_group(&shared.store().catalog, group)
            .map_or_else(|| Err(not_served()), ok),
        ["apis", group, version] if get => {
            discovery::group_version(&shared.store().catalog, group, version)
                .map_or_else(|| Err(not_served()), ok)
        }
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
        ["openapi", "v3"] if get => ok(discovery::openapi_v3_root(&shared.store().catalog)),
        ["openapi", "v3", "api", "v1"] if get => {
            ok(discovery::openapi_v3(&shared.store().catalog, "", "v1"))
        }
        ["openapi", "v3", "apis", group, version] if get => ok(discovery::openapi_v3(
            &shared.store().catalog,
            group,
            version,
        )),
        ["api", "v1", rest @ ..] => rest::serve(shared, call, "", "v1", rest),
        ["apis", group, version, rest @ ..] => rest::serve(shared, call, group, version, rest),
        _ => Err(not_served()),
    }
}

pub(crate) fn not_served() -> ApiError {
    let mut e = ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    );
    e.details = Some(json!({}));
    e
}

pub(crate) fn method_not_allowed() -> ApiError {
    ApiError::new(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
    )
}

// --- tokens ---

pub(crate) fn token_request(
    shared: &Arc<Shared>,
    call: &Call,
    ns: Option<&str>,
    name: &str,
) -> Reply {
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

pub(crate) fn ok(v: Value) -> Reply {
    Ok(json_response(StatusCode::OK, &v))
}

pub(crate) fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
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
}
