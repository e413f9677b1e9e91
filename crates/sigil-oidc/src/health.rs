//! `health_checks {}`: SPIRE's probes on their own listener (`:bind_port`, 8008).
//!
//! Ready: a poll succeeded less than the threshold ago. Live: the same, or, before the first
//! success, the provider started less than the threshold ago (so a slow server does not get
//! the provider restarted in a loop). The threshold is SPIRE's: the poll interval, raised to
//! three minutes when five intervals are shorter than that.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::config;
use crate::handler::{Body, text_error};
use crate::keys::KeyStore;

const THRESHOLD_MULTIPLIER: u32 = 5;
const THRESHOLD_MIN: Duration = Duration::from_secs(180);

#[derive(Clone, Debug)]
pub struct HealthChecks {
    live_path: String,
    ready_path: String,
    threshold: Duration,
    started: Instant,
    store: Arc<KeyStore>,
}

/// SPIRE's `jwkThreshold` (which keeps the interval itself, not five of them, when five are
/// at least three minutes).
pub fn threshold(poll_interval: Duration) -> Duration {
    if poll_interval * THRESHOLD_MULTIPLIER < THRESHOLD_MIN {
        THRESHOLD_MIN
    } else {
        poll_interval
    }
}

// === impl HealthChecks ===

impl HealthChecks {
    pub fn new(cfg: &config::HealthChecks, poll_interval: Duration, store: Arc<KeyStore>) -> Self {
        Self {
            live_path: cfg.live_path.clone(),
            ready_path: cfg.ready_path.clone(),
            threshold: threshold(poll_interval),
            started: Instant::now(),
            store,
        }
    }

    pub fn handle<B>(&self, req: &Request<B>) -> Response<Body> {
        let path = req.uri().path();
        let ready = path == self.ready_path;
        if !ready && path != self.live_path {
            return text_error(StatusCode::NOT_FOUND, "404 page not found");
        }
        if req.method() != Method::GET {
            return text_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        }
        let last = self.store.snapshot().last_poll;
        let fresh = last.is_some_and(|t| t.elapsed() < self.threshold);
        let ok = match (ready, last) {
            (true, _) => fresh,
            (false, None) => self.started.elapsed() < self.threshold,
            (false, Some(_)) => fresh,
        };
        let mut resp = Response::new(Body::default());
        if !ok {
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        }
        resp
    }
}

/// Serves the probes on `listener` for as long as the task runs.
pub async fn serve(listener: TcpListener, checks: HealthChecks) {
    let checks = Arc::new(checks);
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let checks = checks.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = checks.handle(&req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(conn), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spire_threshold() {
        assert_eq!(threshold(Duration::from_secs(10)), THRESHOLD_MIN);
        assert_eq!(threshold(Duration::from_secs(36)), Duration::from_secs(36));
    }
}
