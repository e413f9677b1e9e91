//! `/live` and `/ready` over plain HTTP on the health-check listener, as SPIRE serves them.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Reports readiness: `Ok(())` or the reason it is not ready.
pub type ReadyCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Serves health checks on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    live_path: String,
    ready_path: String,
    ready: ReadyCheck,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (live_path, ready_path, ready) = (live_path.clone(), ready_path.clone(), ready.clone());
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (live_path, ready_path, ready) =
                        (live_path.clone(), ready_path.clone(), ready.clone());
                    async move {
                        let path = req.uri().path();
                        let (status, body) = if path == live_path {
                            (StatusCode::OK, "{\"live\":true}".to_string())
                        } else if path == ready_path {
                            match ready().await {
                                Ok(()) => (StatusCode::OK, "{\"ready\":true}".to_string()),
                                Err(e) => (
                                    StatusCode::INTERNAL_SERVER_ERROR,
                                    serde_json::json!({"ready": false, "error": e}).to_string(),
                                ),
                            }
                        } else {
                            (
                                StatusCode::NOT_FOUND,
                                "{\"error\":\"not found\"}".to_string(),
                            )
                        };
                        let mut resp = Response::new(Full::new(Bytes::from(body)));
                        *resp.status_mut() = status;
                        resp.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, Infallible>(resp)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Binds the health listener.
pub async fn bind(
    addr: impl tokio::net::ToSocketAddrs,
) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
