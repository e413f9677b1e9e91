//! The HTTP side: the accept loop (which owns every connection, so stopping it drops them
//! all), authentication and routing. The resources' endpoints are in `rest`, TokenRequest and
//! TokenReview in `auth`, discovery documents in `discovery`, the shared request and response
//! types in `reply`.

use crate::reply::{Body, Call, Reply, json_response, not_served, ok, parse_query, text_response};
use crate::{ApiError, RequestRecord, Shared, auth, discovery, resources, rest, tokens};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::{Arc, PoisonError};
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

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
            auth::token_review(shared, call)
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
