//! What the vectors do not cover: the TokenReview's own error, an API server that ignored the
//! audiences, label selectors in order, the API server's default audience, and the payload
//! sent by Sigil's agent.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use serde_json::{Value, json};
use sigil_k8s_psat::{AttestError, AttestationData, Attestor, Code, KubeSource};

/// An API server answering with `review_status`, one pod `spire/agent-x` (UID `pod-1`) on node
/// `n1` (UID `node-1`); records the audiences each TokenReview asked for.
fn api_server(review_status: Value, asked: Arc<Mutex<Vec<Value>>>) -> kube::Client {
    let svc = tower::service_fn(move |req: Request<kube::client::Body>| {
        let (review_status, asked) = (review_status.clone(), asked.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let answer = match parts.uri.path() {
                "/apis/authentication.k8s.io/v1/tokenreviews" => {
                    let mut review: Value = serde_json::from_slice(&body).unwrap();
                    asked.lock().unwrap().push(
                        review["spec"]
                            .get("audiences")
                            .cloned()
                            .unwrap_or(Value::Null),
                    );
                    review["status"] = review_status;
                    review
                }
                "/api/v1/namespaces/spire/pods/agent-x" => json!({
                    "metadata": {"name": "agent-x", "namespace": "spire", "uid": "pod-1",
                                 "labels": {"app": "spire-agent", "z": "1", "a": "2"}},
                    "spec": {"nodeName": "n1"},
                    "status": {"hostIP": "10.0.0.7"}
                }),
                "/api/v1/nodes/n1" => json!({
                    "metadata": {"name": "n1", "uid": "node-1",
                                 "labels": {"zone": "z1", "arch": "amd64", "other": "x"}}
                }),
                other => panic!("unexpected call {other}"),
            };
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(answer.to_string()))))
        }
    });
    kube::Client::new(svc, "default")
}

fn authenticated(audiences: &[&str]) -> Value {
    json!({
        "authenticated": true,
        "user": {
            "username": "system:serviceaccount:spire:spire-agent",
            "extra": {
                "authentication.kubernetes.io/pod-name": ["agent-x"],
                "authentication.kubernetes.io/pod-uid": ["pod-1"]
            }
        },
        "audiences": audiences
    })
}

fn attestor(extra: &str, status: Value, asked: &Arc<Mutex<Vec<Value>>>) -> Attestor {
    let hcl = format!(
        "clusters = {{\n \"demo\" = {{\n service_account_allow_list = [\"spire:spire-agent\"]\n {extra}\n }}\n}}"
    );
    let mut a = Attestor::configure_hcl(Some("example.org".parse().unwrap()), &hcl).unwrap();
    a.set_kube_source(
        "demo",
        KubeSource::Client(api_server(status, asked.clone())),
    );
    a
}

fn payload() -> Vec<u8> {
    AttestationData {
        cluster: "demo".into(),
        token: "header.claims.signature".into(),
    }
    .to_json()
}

#[tokio::test]
async fn labels_in_key_order_after_the_fixed_selectors() {
    let asked = Arc::default();
    let a = attestor(
        r#"allowed_node_label_keys = ["zone", "arch"]
           allowed_pod_label_keys = ["z", "app"]"#,
        authenticated(&["spire-server"]),
        &asked,
    );
    let got = a.attest(&payload()).await.unwrap();
    assert_eq!(
        got.agent_id.as_str(),
        "spiffe://example.org/spire/agent/k8s_psat/demo/node-1"
    );
    let selectors: Vec<String> = got.selectors.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        selectors,
        [
            "k8s_psat:cluster:demo",
            "k8s_psat:agent_ns:spire",
            "k8s_psat:agent_sa:spire-agent",
            "k8s_psat:agent_pod_name:agent-x",
            "k8s_psat:agent_pod_uid:pod-1",
            "k8s_psat:agent_node_ip:10.0.0.7",
            "k8s_psat:agent_node_name:n1",
            "k8s_psat:agent_node_uid:node-1",
            "k8s_psat:agent_node_label:arch:amd64",
            "k8s_psat:agent_node_label:zone:z1",
            "k8s_psat:agent_pod_label:app:spire-agent",
            "k8s_psat:agent_pod_label:z:1",
        ]
    );
    assert_eq!(*asked.lock().unwrap(), [json!(["spire-server"])]);
}

#[tokio::test]
async fn empty_audience_asks_for_the_api_servers_own() {
    let asked = Arc::default();
    let a = attestor(
        r#"audience = []"#,
        authenticated(&["https://kubernetes"]),
        &asked,
    );
    a.attest(&payload()).await.unwrap();
    assert_eq!(*asked.lock().unwrap(), [Value::Null], "no audiences sent");
}

#[tokio::test]
async fn review_error_and_ignored_audience_are_refused() {
    let asked = Arc::default();
    let mut status = authenticated(&["spire-server"]);
    status["error"] = json!("token has expired");
    let err = attestor("", status, &asked)
        .attest(&payload())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert_eq!(
        err.to_string(),
        "nodeattestor(k8s_psat): unable to validate token with TokenReview API for cluster \
         \"demo\": token review API response contains an error: token has expired"
    );

    let err = attestor("", authenticated(&["other"]), &asked)
        .attest(&payload())
        .await
        .unwrap_err();
    assert!(matches!(err, AttestError::TokenReview { .. }), "{err}");
    assert!(
        err.to_string().ends_with(
            r#"token review API did not validate audience: wanted one of ["spire-server"] but got ["other"]"#
        ),
        "{err}"
    );
}

#[tokio::test]
async fn kubeconfig_that_cannot_be_read_fails_the_token_review() {
    let a = Attestor::configure_hcl(
        Some("example.org".parse().unwrap()),
        r#"clusters = { "demo" = { service_account_allow_list = ["a:b"], kube_config_file = "/nonexistent/kubeconfig" } }"#,
    )
    .unwrap();
    let err = a.attest(&payload()).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "nodeattestor(k8s_psat): unable to validate token with TokenReview API for cluster \"demo\": unable to get clientset: unable to create client config:"
        ),
        "{msg}"
    );
    assert!(!msg.contains("header.claims"), "the token leaked: {msg}");
}

#[tokio::test]
async fn empty_payload_is_refused_before_anything() {
    let err = Attestor::unconfigured().attest(b"").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.to_string(), "payload cannot be empty");
}
