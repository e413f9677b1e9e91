//! SPIRE's k8s_psat conformance vectors (`testdata/psat.json`): every attest, configure and
//! token-status case, against a mock API server that answers the TokenReview, pod and node
//! calls from the case.

use std::convert::Infallible;
use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use k8s_openapi::api::authentication::v1::TokenReviewStatus;
use serde_json::{Value, json};
use sigil_k8s_psat::{Attestor, KubeSource};
use sigil_spiffe::TrustDomain;

fn vectors() -> Value {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "testdata", "psat.json"]
        .iter()
        .collect();
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn status(code: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": message, "reason": code.canonical_reason(), "code": code.as_u16(),
    });
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn ok(body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// The API server of one case, as upstream's fakes behave: the TokenReview answers the case's
/// status if the requested audiences are the status's (and fails otherwise, or when there is
/// no status); pods and nodes are served by name.
async fn answer(case: Value, req: Request<kube::client::Body>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let path = parts.uri.path().to_string();
    let api = &case["api_server"];
    if path == "/apis/authentication.k8s.io/v1/tokenreviews" {
        assert_eq!(parts.method, "POST");
        let review: Value = serde_json::from_slice(&body).unwrap();
        let review_status = &case["token_review"];
        if review_status.is_null() {
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "no status for this token",
            );
        }
        assert_eq!(
            review["spec"]["token"], "<JWT>",
            "the token is passed on as sent"
        );
        if review["spec"]["audiences"] != review_status["audiences"] {
            return status(StatusCode::BAD_REQUEST, "audience mismatch");
        }
        let mut review = review;
        review["status"] = review_status.clone();
        return ok(review);
    }
    if let Some(rest) = path.strip_prefix("/api/v1/namespaces/") {
        let (ns, name) = rest.split_once("/pods/").unwrap();
        let pod = api["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["metadata"]["namespace"] == ns && p["metadata"]["name"] == name);
        return match pod {
            Some(p) => ok(p.clone()),
            None => status(StatusCode::NOT_FOUND, &format!("pods {name:?} not found")),
        };
    }
    if let Some(name) = path.strip_prefix("/api/v1/nodes/") {
        let node = api["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["metadata"]["name"] == name);
        return match node {
            Some(n) => ok(n.clone()),
            None => status(StatusCode::NOT_FOUND, &format!("nodes {name:?} not found")),
        };
    }
    panic!("unexpected API call {} {path}", parts.method);
}

fn mock_client(case: &Value) -> kube::Client {
    let case = case.clone();
    let svc = tower::service_fn(move |req: Request<kube::client::Body>| {
        let case = case.clone();
        async move { Ok::<_, Infallible>(answer(case, req).await) }
    });
    kube::Client::new(svc, "default")
}

fn td(v: &Value) -> TrustDomain {
    v["trust_domain"].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn attest_cases() {
    let v = vectors();
    let cases = v["attest_cases"].as_array().unwrap();
    assert_eq!(cases.len(), 19);
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let mut attestor = if case["plugin_configured"].as_bool().unwrap() {
            let hcl = v["plugin_config_hcl"].as_str().unwrap();
            let mut a = Attestor::configure_hcl(Some(td(&v)), hcl).unwrap();
            assert_eq!(a.clusters(), ["BAR", "FOO", "POD"]);
            for cluster in ["BAR", "FOO", "POD"] {
                assert!(a.set_kube_source(cluster, KubeSource::Client(mock_client(case))));
            }
            a
        } else {
            Attestor::unconfigured()
        };
        assert!(!attestor.set_kube_source("NOPE", KubeSource::InCluster));
        let payload = case["payload"].as_str().unwrap().as_bytes();
        let got = attestor.attest(payload).await;
        let expect = &case["expect"];
        match (&expect["error"], got) {
            (Value::Null, Ok(a)) => {
                let selectors: Vec<String> = a.selectors.iter().map(|s| s.to_string()).collect();
                let want: Vec<String> =
                    serde_json::from_value(expect["selectors"].clone()).unwrap();
                if a.agent_id.as_str() != expect["agent_id"] || selectors != want || !a.can_reattest
                {
                    failures.push(format!("{name}: got {} {selectors:?}", a.agent_id));
                }
            }
            (Value::Null, Err(e)) => failures.push(format!("{name}: unexpected error {e}")),
            (want, Ok(a)) => failures.push(format!("{name}: want {want}, got {}", a.agent_id)),
            (want, Err(e)) => {
                let code = format!("{:?}", e.code());
                let msg = e.to_string();
                let contains = want["message_contains"].as_str().unwrap();
                if code != want["grpc_code"] || !msg.contains(contains) {
                    failures.push(format!("{name}: got {code} {msg:?}, want {want}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn configure_cases() {
    let v = vectors();
    let cases = v["configure_cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let td = case["core_config"]["trust_domain"]
            .as_str()
            .map(|s| s.parse::<TrustDomain>().unwrap());
        let got = Attestor::configure_hcl(td, case["hcl"].as_str().unwrap());
        match (&case["expect"]["error"], got) {
            (Value::Null, Ok(_)) => {}
            (Value::Null, Err(e)) => panic!("{name}: unexpected error {e}"),
            (want, Ok(_)) => panic!("{name}: configured, want {want}"),
            (want, Err(e)) => {
                let msg = e.to_string();
                assert_eq!(want["grpc_code"], "InvalidArgument", "{name}");
                if let Some(exact) = want["message_exact"].as_str() {
                    assert_eq!(msg, exact, "{name}");
                } else {
                    let contains = want["message_contains"].as_str().unwrap();
                    assert!(msg.contains(contains), "{name}: {msg:?} lacks {contains:?}");
                }
            }
        }
    }
}

#[test]
fn token_status_helper_cases() {
    let v = vectors();
    let cases = v["token_status_helper_cases"].as_array().unwrap();
    assert_eq!(cases.len(), 15);
    for case in cases {
        let function = case["function"].as_str().unwrap();
        let input = &case["input"];
        let expect = &case["expect"];
        let status = || serde_json::from_value::<TokenReviewStatus>(input.clone()).unwrap();
        let got: Result<Value, String> = match function {
            "GetNamesFromTokenStatus" => sigil_k8s_psat::names_from_token_status(&status())
                .map(|(ns, sa)| json!({"namespace": ns, "service_account": sa}))
                .map_err(|e| e.to_string()),
            "GetPodNameFromTokenStatus" => sigil_k8s_psat::pod_name_from_token_status(&status())
                .map(|n| json!({"pod_name": n}))
                .map_err(|e| e.to_string()),
            "GetPodUIDFromTokenStatus" => sigil_k8s_psat::pod_uid_from_token_status(&status())
                .map(|u| json!({"pod_uid": u}))
                .map_err(|e| e.to_string()),
            "AgentID" => sigil_k8s_psat::agent_id(
                input["plugin"].as_str().unwrap(),
                &input["trust_domain"].as_str().unwrap().parse().unwrap(),
                input["cluster"].as_str().unwrap(),
                input["suffix"].as_str().unwrap(),
            )
            .map(|id| json!({"agent_id": id.to_string()}))
            .map_err(|e| e.to_string()),
            "MakeSelectorValue" => {
                let values: Vec<&str> = input["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap())
                    .collect();
                Ok(json!({"value": sigil_k8s_psat::selector_value(
                    input["kind"].as_str().unwrap(),
                    &values
                )}))
            }
            other => panic!("unknown function {other}"),
        };
        match (expect.get("error_contains"), got) {
            (Some(want), Err(e)) => {
                assert!(
                    e.contains(want.as_str().unwrap()),
                    "{function} {input}: {e:?}"
                )
            }
            (None, Ok(v)) => assert_eq!(&v, expect, "{function} {input}"),
            (want, got) => panic!("{function} {input}: want {want:?}, got {got:?}"),
        }
    }
}
