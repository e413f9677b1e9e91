//! `/live` and `/ready` over plain HTTP, for orchestrator probes (SPIRE's `health_checks`), and
//! `/metrics` (Prometheus text) with the workload attestation tier in use.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sigil_workload_attestation::{Tier, tier_metric};
use tokio::net::TcpListener;

use sigil_config::Port;

/// The `health_checks` block, as the agent reads it (the agent's `config` module parses it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    pub bind_address: String,
    pub bind_port: Port,
    pub live_path: String,
    pub ready_path: String,
}

/// Readiness: `Ok` (with details for the body, such as the server connection) when the agent
/// can serve identities, else the reason it cannot.
pub type ReadyCheck =
    Arc<dyn Fn() -> Result<serde_json::Map<String, serde_json::Value>, String> + Send + Sync>;

/// The workload attestation tier in use, once chosen (the attestation's state, which starts
/// after the health listener).
pub type TierCheck = Arc<dyn Fn() -> Option<Tier> + Send + Sync>;

/// Binds the health listener.
pub async fn bind(cfg: &HealthConfig) -> std::io::Result<TcpListener> {
    TcpListener::bind((cfg.bind_address.as_str(), cfg.bind_port.0)).await
}

/// Serves probes until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    cfg: HealthConfig,
    ready: ReadyCheck,
    tier: TierCheck,
    shutdown: impl Future<Output = ()>,
) {
    let cfg = Arc::new(cfg);
    tokio::pin!(shutdown);
    loop {
        let (io, _) = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(%error, "accepting a health check connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let cfg = cfg.clone();
        let ready = ready.clone();
        let tier = tier.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let resp = respond(&cfg, &ready, tier(), req.uri().path());
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), svc)
                .await;
        });
    }
}

fn respond(
    cfg: &HealthConfig,
    ready: &ReadyCheck,
    tier: Option<Tier>,
    path: &str,
) -> Response<Full<Bytes>> {
    if path == "/metrics" {
        let mut resp = Response::new(Full::new(Bytes::from(tier_metric(tier))));
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        return resp;
    }
    let tier = tier.map(Tier::name);
    let (status, body) = if path == cfg.live_path {
        (StatusCode::OK, serde_json::json!({ "live": true }))
    } else if path == cfg.ready_path {
        match ready() {
            Ok(mut details) => {
                details.insert("ready".into(), true.into());
                details.insert("attestation_tier".into(), tier.into());
                (StatusCode::OK, serde_json::Value::Object(details))
            }
            Err(reason) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({ "ready": false, "reason": reason }),
            ),
        }
    } else {
        (
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": "not found" }),
        )
    };
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let cfg = HealthConfig {
            bind_address: "127.0.0.1".into(),
            bind_port: Port(1),
            live_path: "/live".into(),
            ready_path: "/ready".into(),
        };
        let not_ready: ReadyCheck = Arc::new(|| Err("no agent SVID yet".into()));
        let ready: ReadyCheck = Arc::new(|| Ok(Default::default()));
        assert_eq!(
            respond(&cfg, &not_ready, None, "/live").status(),
            StatusCode::OK
        );
        assert_eq!(
            respond(&cfg, &not_ready, None, "/ready").status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            respond(&cfg, &ready, None, "/ready").status(),
            StatusCode::OK
        );
        assert_eq!(
            respond(&cfg, &ready, None, "/x").status(),
            StatusCode::NOT_FOUND
        );
    }
}
