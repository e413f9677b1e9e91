//! The authentication endpoints: TokenRequest (a service account's token) and TokenReview.

use std::sync::Arc;

use hyper::StatusCode;
use serde_json::{Value, json};

use crate::reply::{Call, Reply, json_response, not_served};
use crate::{ApiError, Shared, proto, resources, tokens};

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

pub(crate) fn token_review(shared: &Arc<Shared>, call: &Call) -> Reply {
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
