//! The HTTP listeners controller-runtime gives spire-controller-manager, so probes and
//! scrapers configured for it keep working: the health probes (`health.healthProbeBindAddress`,
//! off unless set) and Prometheus metrics (`metrics.bindAddress`, `:8080` unless set, `"0"`
//! for none).
//!
//! The probes answer as controller-runtime's `healthz` handler does, with upstream's checks
//! (`healthz` for liveness, `readyz` for readiness): `/healthz` and `/readyz` give `ok`, or
//! 500 and `[-]readyz failed: reason withheld`; `?verbose` lists the checks; `/readyz/readyz`
//! asks for the one check. Liveness always passes while the process runs; readiness follows
//! the caller's flag (upstream's is a ping: Sigil's is ready once the caches synced and the
//! first pass finished). Anything else is Go's `404 page not found`.
//!
//! [`Metrics`] is plain atomics rendered in the text exposition format 0.0.4; upstream's
//! `cluster_static_entry_failures` gauge keeps its name.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::config::ManagerOptions;

/// controller-runtime's defaults.
pub const DEFAULT_READINESS_ENDPOINT: &str = "/readyz";
pub const DEFAULT_LIVENESS_ENDPOINT: &str = "/healthz";
pub const DEFAULT_METRICS_BIND_ADDRESS: &str = ":8080";
pub const METRICS_PATH: &str = "/metrics";
/// Upper bounds of the reconcile duration buckets, in seconds (a pass over many pods can
/// take long, hence the tail past Prometheus' default 10 s).
pub const RECONCILE_DURATION_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// The names of upstream's checks (`AddHealthzCheck("healthz")`, `AddReadyzCheck("readyz")`).
const LIVENESS_CHECK: &str = "healthz";
const READINESS_CHECK: &str = "readyz";
const TEXT: &str = "text/plain; charset=utf-8";
const METRICS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A Go listen address (`host:port`); an empty host means every interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindAddress {
    pub host: String,
    pub port: u16,
}

/// Where the probes are served (paths, with their leading `/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePaths {
    pub readiness: String,
    pub liveness: String,
}

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// Go's `net.SplitHostPort` wording.
    #[error("address {address}: {reason}")]
    Address {
        address: String,
        reason: &'static str,
    },
    #[error("listen tcp {address}: {source}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
}

/// A running listener; dropping it stops it, open connections included.
#[derive(Debug)]
#[must_use = "dropping the server stops it"]
pub struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

/// The controller's metrics, shared (`Arc`) between the reconcile loop and the listener.
#[derive(Debug, Default)]
pub struct Metrics {
    pub reconcile_passes: Counter,
    pub entries_created: Counter,
    pub entries_updated: Counter,
    pub entries_deleted: Counter,
    pub entry_failures: Counter,
    pub render_failures: Counter,
    /// Admin API calls: list pages (resyncs) and write batches (the cost of an event:
    /// O(its changes), not O(pods)).
    pub admin_calls: Counter,
    pub reconcile_duration: Histogram,
    /// 1 while this replica leads (or leader election is off).
    pub leader: Gauge,
    pub declared_entries: Gauge,
    /// Upstream's: ClusterStaticEntries that failed to render in the last pass.
    pub static_entry_failures: Gauge,
}

/// A monotonic count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

/// Durations in [`RECONCILE_DURATION_BUCKETS`]. Each bucket is counted on its own (the
/// cumulative counts are summed when rendered), so a scrape always sees `+Inf` equal to
/// `_count`; `_sum` may be one observation behind them.
#[derive(Debug, Default)]
pub struct Histogram {
    /// One per bucket, then the observations above the last bound.
    counts: [AtomicU64; RECONCILE_DURATION_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

// === impl BindAddress ===

impl BindAddress {
    /// Parses a Go listen address: `:8080` (every interface), `127.0.0.1:8080`,
    /// `[::1]:8080`, `localhost:8080`; an empty port is any free port. `""` and `"0"` mean
    /// disabled (`None`), as in controller-runtime.
    pub fn parse(address: &str) -> Result<Option<Self>, HealthError> {
        if address.is_empty() || address == "0" {
            return Ok(None);
        }
        let bad = |reason| HealthError::Address {
            address: address.to_string(),
            reason,
        };
        let (host, port) = if let Some(rest) = address.strip_prefix('[') {
            let (host, rest) = rest
                .split_once(']')
                .ok_or_else(|| bad("missing ']' in address"))?;
            let port = rest
                .strip_prefix(':')
                .ok_or_else(|| bad("missing port in address"))?;
            (host, port)
        } else {
            let (host, port) = address
                .rsplit_once(':')
                .ok_or_else(|| bad("missing port in address"))?;
            if host.contains(':') {
                return Err(bad("too many colons in address"));
            }
            (host, port)
        };
        if host.contains(['[', ']']) || port.contains(['[', ']']) {
            return Err(bad("unexpected '[' or ']' in address"));
        }
        let port = match port {
            "" => 0,
            p => p.parse().map_err(|_| bad("invalid port"))?,
        };
        Ok(Some(BindAddress {
            host: host.to_string(),
            port,
        }))
    }

    /// Listens. Every interface is `[::]` (which takes IPv4 too, as Go's listener does),
    /// else `0.0.0.0` where IPv6 is off.
    pub async fn bind(&self) -> std::io::Result<TcpListener> {
        if self.host.is_empty() {
            let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, self.port));
            match TcpListener::bind(v6).await {
                Ok(l) => Ok(l),
                Err(_) => {
                    TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, self.port))).await
                }
            }
        } else {
            TcpListener::bind((self.host.as_str(), self.port)).await
        }
    }
}

// === impl ProbePaths ===

impl ProbePaths {
    /// From the configured endpoint names: empty is the default, and a name without its
    /// leading `/` (`readyz`) gets one.
    pub fn new(readiness: &str, liveness: &str) -> Self {
        let path = |name: &str, default: &str| match name {
            "" => default.to_string(),
            n if n.starts_with('/') => n.to_string(),
            n => format!("/{n}"),
        };
        ProbePaths {
            readiness: path(readiness, DEFAULT_READINESS_ENDPOINT),
            liveness: path(liveness, DEFAULT_LIVENESS_ENDPOINT),
        }
    }

    pub fn from_options(opts: &ManagerOptions) -> Self {
        Self::new(&opts.readiness_endpoint_name, &opts.liveness_endpoint_name)
    }

    /// The answer to a request for `uri`.
    fn respond(&self, ready: bool, uri: &Uri) -> Response<Full<Bytes>> {
        let path = uri.path();
        let (rest, check, healthy) = if let Some(rest) = under(path, &self.liveness) {
            (rest, LIVENESS_CHECK, true)
        } else if let Some(rest) = under(path, &self.readiness) {
            (rest, READINESS_CHECK, ready)
        } else {
            return not_found();
        };
        let verbose = uri
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.split('=').next() == Some("verbose")));
        match rest {
            // All checks (upstream has one per endpoint).
            "" | "/" => match (healthy, verbose) {
                (true, false) => text(StatusCode::OK, TEXT, "ok".into()),
                (true, true) => text(
                    StatusCode::OK,
                    TEXT,
                    format!("[+]{check} ok\nhealthz check passed\n"),
                ),
                (false, _) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    format!("[-]{check} failed: reason withheld\nhealthz check failed\n"),
                ),
            },
            r if r.strip_prefix('/') == Some(check) => match healthy {
                true => text(StatusCode::OK, TEXT, "ok".into()),
                false => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    "internal server error: not ready\n".into(),
                ),
            },
            _ => not_found(),
        }
    }
}

impl Default for ProbePaths {
    fn default() -> Self {
        Self::new("", "")
    }
}

/// What follows `endpoint` in `path` (`""` or `/...`), if `path` is under it.
fn under<'a>(path: &'a str, endpoint: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(endpoint)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

// === impl Server ===

impl Server {
    /// The address bound (the port chosen, for `:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves the probes on `address` (Go syntax; `""` or `"0"`: not served, `None`), readiness
/// from `ready`.
pub async fn serve_health(
    address: &str,
    paths: ProbePaths,
    ready: watch::Receiver<bool>,
) -> Result<Option<Server>, HealthError> {
    serve(address, move |uri| paths.respond(*ready.borrow(), uri)).await
}

/// Serves [`METRICS_PATH`] on `address` (Go syntax; `""`: [`DEFAULT_METRICS_BIND_ADDRESS`],
/// `"0"`: not served, `None`).
pub async fn serve_metrics(
    address: &str,
    metrics: Arc<Metrics>,
) -> Result<Option<Server>, HealthError> {
    let address = match address {
        "" => DEFAULT_METRICS_BIND_ADDRESS,
        a => a,
    };
    serve(address, move |uri| match uri.path() {
        METRICS_PATH => text(StatusCode::OK, METRICS_TEXT, metrics.render()),
        _ => not_found(),
    })
    .await
}

async fn serve(
    address: &str,
    respond: impl Fn(&Uri) -> Response<Full<Bytes>> + Send + Sync + 'static,
) -> Result<Option<Server>, HealthError> {
    let Some(bind) = BindAddress::parse(address)? else {
        return Ok(None);
    };
    let listen_err = |source| HealthError::Listen {
        address: address.to_string(),
        source,
    };
    let listener = bind.bind().await.map_err(listen_err)?;
    let addr = listener.local_addr().map_err(listen_err)?;
    let task = tokio::spawn(accept(listener, Arc::new(respond)));
    Ok(Some(Server { addr, task }))
}

/// Accepts until aborted; the connections live in a `JoinSet` so they end with it.
async fn accept<F>(listener: TcpListener, respond: Arc<F>)
where
    F: Fn(&Uri) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let io = match listener.accept().await {
            Ok((io, _)) => io,
            Err(error) => {
                // Out of file descriptors, most likely: wait instead of spinning.
                tracing::warn!(%error, "accepting a probe or metrics connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let respond = respond.clone();
        connections.spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let resp = respond(req.uri());
                async move { Ok::<_, Infallible>(resp) }
            });
            // A client that goes away mid-request is not worth a log line.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    headers.insert(
        hyper::header::X_CONTENT_TYPE_OPTIONS,
        hyper::header::HeaderValue::from_static("nosniff"),
    );
    resp
}

/// Go's `http.NotFound`.
fn not_found() -> Response<Full<Bytes>> {
    text(StatusCode::NOT_FOUND, TEXT, "404 page not found\n".into())
}

// === impl Metrics ===

impl Metrics {
    /// The text exposition format (0.0.4): `# HELP` and `# TYPE`, then the samples.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = [
            (
                "sigil_controller_reconcile_passes_total",
                "Reconcile passes completed.",
                &self.reconcile_passes,
            ),
            (
                "sigil_controller_entries_created_total",
                "Registration entries created on the SPIRE server.",
                &self.entries_created,
            ),
            (
                "sigil_controller_entries_updated_total",
                "Registration entries updated on the SPIRE server.",
                &self.entries_updated,
            ),
            (
                "sigil_controller_entries_deleted_total",
                "Registration entries deleted from the SPIRE server.",
                &self.entries_deleted,
            ),
            (
                "sigil_controller_entry_failures_total",
                "Registration entry creations, updates and deletions that failed.",
                &self.entry_failures,
            ),
            (
                "sigil_controller_render_failures_total",
                "Entries that could not be rendered from a ClusterSPIFFEID or ClusterStaticEntry.",
                &self.render_failures,
            ),
            (
                "sigil_controller_admin_calls_total",
                "Admin API calls (entry list pages and write batches).",
                &self.admin_calls,
            ),
        ];
        for (name, help, c) in counters {
            family(&mut out, name, help, "counter");
            let _ = writeln!(out, "{name} {}", c.get());
        }
        let name = "sigil_controller_reconcile_duration_seconds";
        family(
            &mut out,
            name,
            "How long a reconcile pass took.",
            "histogram",
        );
        let h = &self.reconcile_duration;
        let mut cumulative = 0;
        for (bound, count) in RECONCILE_DURATION_BUCKETS.iter().zip(&h.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += h.counts[RECONCILE_DURATION_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", h.sum().as_secs_f64());
        let _ = writeln!(out, "{name}_count {cumulative}");
        let gauges = [
            (
                "sigil_controller_leader",
                "1 while this replica is the leader (or leader election is off), else 0.",
                &self.leader,
            ),
            (
                "sigil_controller_declared_entries",
                "Registration entries the last reconcile pass declared.",
                &self.declared_entries,
            ),
            // Upstream's name and help text.
            (
                "cluster_static_entry_failures",
                "Number of cluster static entry render failures",
                &self.static_entry_failures,
            ),
        ];
        for (name, help, g) in gauges {
            family(&mut out, name, help, "gauge");
            let _ = writeln!(out, "{name} {}", g.get());
        }
        out
    }
}

/// The `# HELP` and `# TYPE` lines (the help texts here need no escaping).
fn family(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

// === impl Counter ===

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

// === impl Gauge ===

impl Gauge {
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

// === impl Histogram ===

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let bucket = RECONCILE_DURATION_BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(RECONCILE_DURATION_BUCKETS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// How many durations were observed.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Their sum.
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed))
    }
}
