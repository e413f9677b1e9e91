//! Telemetry as SPIRE configures it: `telemetry { Prometheus { host port } }` (seed 002 writes
//! `bind_address`/`bind_port`: accepted as aliases), and the registry behind it.
//!
//! The registry is deliberately small: counters, gauges and histograms keyed by a metric name
//! and a sorted label set, rendered in the Prometheus text format. Updates take one short
//! mutex; scrapes render a snapshot. Values computed from state (a CA's expiry, a
//! relationship's last success) are set by a *collector* run at each scrape, so they are never
//! stale.

pub mod grpc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use sigil_config::{Block, ConfigError};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

/// `telemetry { ... }`: what Sigil serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub prometheus: Option<Prometheus>,
}

/// `Prometheus { host port }`: metrics over HTTP on `host:port` (SPIRE: `localhost` unless set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prometheus {
    pub host: String,
    pub port: u16,
}

// === impl Config ===

impl Config {
    /// Reads the `telemetry` block. The sinks Sigil does not have (`DogStatsd`, `Statsd`, `M3`)
    /// are refused by name rather than silently dropped; `InMem` (a deprecated no-op in SPIRE)
    /// and the label and prefix filters are accepted and ignored with a warning.
    pub fn from_block(mut block: Block) -> Result<Self, ConfigError> {
        let prometheus = match block.block("Prometheus", "telemetry Prometheus block")? {
            Some(mut p) => {
                let host = match (p.string("host")?, p.string("bind_address")?) {
                    (Some(h), _) | (None, Some(h)) if !h.is_empty() => h,
                    _ => "localhost".to_string(),
                };
                let port = match (p.integer("port")?, p.integer("bind_port")?) {
                    (Some(n), _) | (None, Some(n)) => n,
                    (None, None) => {
                        return Err(ConfigError::invalid(
                            "telemetry Prometheus port",
                            "is required",
                        ));
                    }
                };
                let port = u16::try_from(port).map_err(|_| {
                    ConfigError::invalid("telemetry Prometheus port", "must be 0-65535")
                })?;
                if p.block("tls", "telemetry Prometheus tls block")?.is_some() {
                    return Err(ConfigError::invalid(
                        "telemetry Prometheus tls",
                        "is not supported by Sigil (serve metrics on a private address)",
                    ));
                }
                p.finish()?;
                Some(Prometheus { host, port })
            }
            None => None,
        };
        for sink in ["DogStatsd", "Statsd", "M3"] {
            if block.block(sink, "telemetry sink")?.is_some() {
                return Err(ConfigError::invalid(
                    &format!("telemetry {sink}"),
                    "is not supported by Sigil (supported: Prometheus)",
                ));
            }
        }
        let _ = block.block("InMem", "telemetry InMem block")?;
        for ignored in [
            "MetricPrefix",
            "EnableTrustDomainLabel",
            "EnableHostnameLabel",
            "AllowedPrefixes",
            "BlockedPrefixes",
            "AllowedLabels",
            "BlockedLabels",
        ] {
            if block.strings(ignored)?.is_some() {
                tracing::warn!(key = ignored, "telemetry key ignored by Sigil");
            }
        }
        block.finish()?;
        Ok(Self { prometheus })
    }
}

/// Histogram bounds (seconds): RPCs and datastore calls, 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];

type Labels = Vec<(String, String)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug)]
struct Family {
    help: &'static str,
    kind: Kind,
    values: BTreeMap<Labels, Value>,
}

#[derive(Debug, Clone)]
enum Value {
    Scalar(f64),
    Histogram {
        /// Per bucket (not cumulative), then above the last bound.
        counts: [u64; LATENCY_BUCKETS.len() + 1],
        sum: f64,
    },
}

/// A function that sets state-derived gauges just before a scrape.
pub type Collector = Box<dyn Fn(&Registry) + Send + Sync>;

/// The metrics of one process.
#[derive(Default)]
pub struct Registry {
    families: Mutex<BTreeMap<&'static str, Family>>,
    collectors: Mutex<Vec<Collector>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

fn labels(l: &[(&str, &str)]) -> Labels {
    let mut v: Labels = l
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn render_labels(l: &Labels, extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = l
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

// === impl Registry ===

impl Registry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn with(
        &self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        l: &[(&str, &str)],
        f: impl FnOnce(&mut Value),
    ) {
        // Poisoning would need a panic while updating a number.
        let mut fams = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let fam = fams.entry(name).or_insert_with(|| Family {
            help,
            kind,
            values: BTreeMap::new(),
        });
        let v = fam.values.entry(labels(l)).or_insert_with(|| match kind {
            Kind::Histogram => Value::Histogram {
                counts: [0; LATENCY_BUCKETS.len() + 1],
                sum: 0.0,
            },
            _ => Value::Scalar(0.0),
        });
        f(v);
    }

    /// Adds one to a counter.
    pub fn inc(&self, name: &'static str, help: &'static str, l: &[(&str, &str)]) {
        self.add(name, help, l, 1.0);
    }

    /// Adds `n` to a counter.
    pub fn add(&self, name: &'static str, help: &'static str, l: &[(&str, &str)], n: f64) {
        self.with(name, help, Kind::Counter, l, |v| {
            if let Value::Scalar(x) = v {
                *x += n;
            }
        });
    }

    /// Sets a gauge.
    pub fn set(&self, name: &'static str, help: &'static str, l: &[(&str, &str)], n: f64) {
        self.with(name, help, Kind::Gauge, l, |v| *v = Value::Scalar(n));
    }

    /// Drops every series of a gauge (a collector about to set the current ones: a relationship
    /// deleted since the last scrape must not linger).
    pub fn clear(&self, name: &'static str) {
        let mut fams = self.families.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = fams.get_mut(name) {
            f.values.clear();
        }
    }

    /// Records a duration (seconds) in a histogram.
    pub fn observe(&self, name: &'static str, help: &'static str, l: &[(&str, &str)], secs: f64) {
        self.with(name, help, Kind::Histogram, l, |v| {
            if let Value::Histogram { counts, sum } = v {
                let i = LATENCY_BUCKETS
                    .iter()
                    .position(|b| secs <= *b)
                    .unwrap_or(LATENCY_BUCKETS.len());
                counts[i] += 1;
                *sum += secs;
            }
        });
    }

    /// Runs `c` before every scrape.
    pub fn collect_with(&self, c: Collector) {
        self.collectors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(c);
    }

    /// The current value of a counter or gauge (tests, health).
    pub fn value(&self, name: &str, l: &[(&str, &str)]) -> Option<f64> {
        let fams = self.families.lock().unwrap_or_else(|p| p.into_inner());
        match fams.get(name)?.values.get(&labels(l))? {
            Value::Scalar(x) => Some(*x),
            Value::Histogram { counts, .. } => Some(counts.iter().sum::<u64>() as f64),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        for c in self
            .collectors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            c(self);
        }
        let fams = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for (name, fam) in fams.iter() {
            let kind = match fam.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            let _ = writeln!(out, "# HELP {name} {}", fam.help);
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (l, v) in &fam.values {
                match v {
                    Value::Scalar(x) => {
                        let _ = writeln!(out, "{name}{} {x}", render_labels(l, None));
                    }
                    Value::Histogram { counts, sum } => {
                        let mut cum = 0u64;
                        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
                            cum += counts[i];
                            let _ = writeln!(
                                out,
                                "{name}_bucket{} {cum}",
                                render_labels(l, Some(("le", b.to_string())))
                            );
                        }
                        cum += counts[LATENCY_BUCKETS.len()];
                        let _ = writeln!(
                            out,
                            "{name}_bucket{} {cum}",
                            render_labels(l, Some(("le", "+Inf".into())))
                        );
                        let _ = writeln!(out, "{name}_sum{} {sum}", render_labels(l, None));
                        let _ = writeln!(out, "{name}_count{} {cum}", render_labels(l, None));
                    }
                }
            }
        }
        out
    }
}

/// Binds `Prometheus { host port }`.
pub async fn bind(p: &Prometheus) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind((p.host.as_str(), p.port)).await
}

/// Serves the registry on every path (as SPIRE's Prometheus sink does) until dropped.
pub async fn serve(listener: tokio::net::TcpListener, registry: Arc<Registry>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(error) => {
                tracing::warn!(%error, "accepting a metrics connection");
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
                    let registry = registry.clone();
                    async move {
                        let mut resp = Response::new(Full::new(Bytes::from(registry.render())));
                        *resp.status_mut() = StatusCode::OK;
                        resp.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static(
                                "text/plain; version=0.0.4; charset=utf-8",
                            ),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn block(text: &str) -> Block {
        sigil_config::parse(text)
            .unwrap()
            .block("telemetry", "telemetry block")
            .unwrap()
            .unwrap()
    }

    #[test]
    fn spire_keys_and_seed_002_aliases() {
        let c = Config::from_block(block(
            "telemetry {\n Prometheus {\n host = \"0.0.0.0\"\n port = 9988\n }\n}",
        ))
        .unwrap();
        assert_eq!(
            c.prometheus,
            Some(Prometheus {
                host: "0.0.0.0".into(),
                port: 9988
            })
        );
        let c = Config::from_block(block(
            "telemetry {\n Prometheus {\n bind_address = \"0.0.0.0\"\n bind_port = \"9988\"\n }\n}",
        ))
        .unwrap();
        assert_eq!(c.prometheus.unwrap().port, 9988);
        // SPIRE's default host.
        let c = Config::from_block(block("telemetry {\n Prometheus {\n port = 1\n }\n}")).unwrap();
        assert_eq!(c.prometheus.unwrap().host, "localhost");
        for (text, want) in [
            ("telemetry {\n Prometheus {\n }\n}", "port"),
            ("telemetry {\n Prometheus {\n port = 99999\n }\n}", "port"),
            (
                "telemetry {\n Prometheus {\n port = 1\n colour = 2\n }\n}",
                "colour",
            ),
            (
                "telemetry {\n DogStatsd = [{\n address = \"x:1\"\n }]\n}",
                "DogStatsd",
            ),
        ] {
            let err = Config::from_block(block(text)).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn renders_prometheus_text() {
        let r = Registry::new();
        r.inc("x_total", "X.", &[("b", "2"), ("a", "1")]);
        r.inc("x_total", "X.", &[("a", "1"), ("b", "2")]);
        r.set("g", "G.", &[("td", "a\"b")], 3.5);
        r.observe("h_seconds", "H.", &[], 0.003);
        r.observe("h_seconds", "H.", &[], 20.0);
        let t = r.render();
        assert!(
            t.contains("# TYPE x_total counter\nx_total{a=\"1\",b=\"2\"} 2\n"),
            "{t}"
        );
        assert!(t.contains("g{td=\"a\\\"b\"} 3.5\n"), "{t}");
        assert!(t.contains("h_seconds_bucket{le=\"0.0025\"} 0\n"), "{t}");
        assert!(t.contains("h_seconds_bucket{le=\"0.005\"} 1\n"), "{t}");
        assert!(t.contains("h_seconds_bucket{le=\"+Inf\"} 2\n"), "{t}");
        assert!(t.contains("h_seconds_count 2\n"), "{t}");
        assert_eq!(r.value("x_total", &[("a", "1"), ("b", "2")]), Some(2.0));
    }
}
