//! A tower layer counting gRPC calls by method and status code, with their latency: one
//! place for every service of a server (the agent's Workload API and SDS share one socket).
//!
//! The code is the `grpc-status` of the response headers (a call refused before any message:
//! a trailers-only response) or `OK` (the call was accepted; a stream's later end is not a
//! call outcome). The latency is until the response headers: a unary call's whole time, a
//! stream's time to its first answer.

use crate::Registry;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// Wraps a service; `prefix` names the metrics (`<prefix>_calls_total`,
/// `<prefix>_call_duration_seconds`).
#[derive(Clone, Debug)]
pub struct GrpcMetricsLayer {
    registry: Arc<Registry>,
    calls: &'static str,
    duration: &'static str,
    /// The services whose methods get their own label (`SpiffeWorkloadAPI`, ...): anything
    /// else, and methods the server does not have, count as `other`, so a caller cannot grow
    /// the registry by inventing paths.
    services: &'static [&'static str],
}

impl GrpcMetricsLayer {
    /// `calls`: a counter name (`..._calls_total`); `duration`: a histogram name; `services`:
    /// the services served (without their package).
    pub fn new(
        registry: Arc<Registry>,
        calls: &'static str,
        duration: &'static str,
        services: &'static [&'static str],
    ) -> Self {
        Self {
            registry,
            calls,
            duration,
            services,
        }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`GrpcMetricsLayer`] makes.
#[derive(Clone, Debug)]
pub struct GrpcMetrics<S> {
    inner: S,
    layer: GrpcMetricsLayer,
}

/// gRPC status codes by number, as Go's `codes.Code` prints them.
pub fn code_name(code: &str) -> &'static str {
    match code {
        "0" => "OK",
        "1" => "Canceled",
        "2" => "Unknown",
        "3" => "InvalidArgument",
        "4" => "DeadlineExceeded",
        "5" => "NotFound",
        "6" => "AlreadyExists",
        "7" => "PermissionDenied",
        "8" => "ResourceExhausted",
        "9" => "FailedPrecondition",
        "10" => "Aborted",
        "11" => "OutOfRange",
        "12" => "Unimplemented",
        "13" => "Internal",
        "14" => "Unavailable",
        "15" => "DataLoss",
        "16" => "Unauthenticated",
        _ => "Unknown",
    }
}

/// `/package.Service/Method` → `Service/Method` (the package adds nothing to a dashboard).
fn method_of(path: &str) -> String {
    let path = path.trim_start_matches('/');
    match path.split_once('/') {
        Some((service, method)) => {
            let service = service.rsplit('.').next().unwrap_or(service);
            format!("{service}/{method}")
        }
        None => "unknown".to_string(),
    }
}

impl<S, B, RB> tower::Service<hyper::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<hyper::Request<B>, Response = hyper::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: hyper::Request<B>) -> Self::Future {
        let mut method = method_of(req.uri().path());
        if !self
            .layer
            .services
            .iter()
            .any(|s| method.split('/').next() == Some(*s))
        {
            method = "other".to_string();
        }
        let layer = self.layer.clone();
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await;
            let code = match &resp {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map(code_name)
                    .unwrap_or("OK"),
                Err(_) => "Unavailable",
            };
            // A method the service does not have: not a label of its own.
            let method = if code == "Unimplemented" {
                "other".to_string()
            } else {
                method
            };
            let l = [("method", method.as_str()), ("code", code)];
            layer
                .registry
                .inc(layer.calls, "gRPC calls by method and status code.", &l);
            layer.registry.observe(
                layer.duration,
                "gRPC call latency until the response headers (unary: the whole call; streams: the first answer), by method.",
                &[("method", method.as_str())],
                started.elapsed().as_secs_f64(),
            );
            resp
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paths a caller makes up do not become labels.
    #[tokio::test]
    async fn unknown_services_and_methods_count_as_other() {
        use tower::{Layer, Service, ServiceExt};
        let registry = Registry::new();
        let layer = GrpcMetricsLayer::new(registry.clone(), "c_total", "d_seconds", &["Known"]);
        let inner = tower::service_fn(|req: hyper::Request<()>| async move {
            let mut resp = hyper::Response::new(());
            if req.uri().path().ends_with("/Missing") {
                resp.headers_mut()
                    .insert("grpc-status", hyper::header::HeaderValue::from_static("12"));
            }
            Ok::<_, std::convert::Infallible>(resp)
        });
        let mut svc = layer.layer(inner);
        for path in [
            "/pkg.Known/Call",
            "/pkg.Known/Missing",
            "/Invented/x1",
            "/Invented/x2",
        ] {
            let req = hyper::Request::builder().uri(path).body(()).unwrap();
            svc.ready().await.unwrap().call(req).await.unwrap();
        }
        assert_eq!(
            registry.value("c_total", &[("code", "OK"), ("method", "Known/Call")]),
            Some(1.0)
        );
        assert_eq!(
            registry.value("c_total", &[("code", "Unimplemented"), ("method", "other")]),
            Some(1.0)
        );
        assert_eq!(
            registry.value("c_total", &[("code", "OK"), ("method", "other")]),
            Some(2.0)
        );
    }

    #[test]
    fn methods_lose_their_package() {
        assert_eq!(
            method_of("/SpiffeWorkloadAPI/FetchX509SVID"),
            "SpiffeWorkloadAPI/FetchX509SVID"
        );
        assert_eq!(
            method_of("/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets"),
            "SecretDiscoveryService/StreamSecrets"
        );
        assert_eq!(code_name("7"), "PermissionDenied");
    }
}
