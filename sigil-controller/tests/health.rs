//! The probe and metrics listeners over real HTTP: readiness switching, liveness, 404s, the
//! metrics text (and its format), Go-style bind addresses.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sigil_controller::config::ManagerOptions;
use sigil_controller::health::{
    BindAddress, Metrics, ProbePaths, RECONCILE_DURATION_BUCKETS, serve_health, serve_metrics,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// `GET path` with `Connection: close`: the status code, headers (lower-case names) and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, HashMap<String, String>, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    (status, headers, body.to_string())
}

#[tokio::test]
async fn readiness_follows_the_flag_and_liveness_is_always_ok() {
    let (ready_tx, ready) = watch::channel(false);
    let server = serve_health("127.0.0.1:0", ProbePaths::default(), ready)
        .await
        .unwrap()
        .expect("served");
    let addr = server.local_addr();

    let (status, headers, body) = get(addr, "/readyz").await;
    assert_eq!(status, 500);
    assert_eq!(
        body,
        "[-]readyz failed: reason withheld\nhealthz check failed\n"
    );
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(get(addr, "/readyz/readyz").await.0, 500);
    let (status, _, body) = get(addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok"));

    ready_tx.send(true).unwrap();
    let (status, _, body) = get(addr, "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert_eq!(get(addr, "/readyz/").await.0, 200);
    assert_eq!(get(addr, "/readyz/readyz").await.0, 200);
    let (_, _, body) = get(addr, "/readyz?verbose").await;
    assert_eq!(body, "[+]readyz ok\nhealthz check passed\n");

    ready_tx.send(false).unwrap();
    assert_eq!(get(addr, "/readyz").await.0, 500, "not ready again");

    // Unknown paths and checks, and metrics, which have their own listener.
    for path in [
        "/",
        "/metrics",
        "/readyzz",
        "/readyz/other",
        "/healthz/readyz",
        "/livez",
    ] {
        let (status, _, body) = get(addr, path).await;
        assert_eq!(
            (status, body.as_str()),
            (404, "404 page not found\n"),
            "{path}"
        );
    }

    drop(server);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "stopped when dropped"
    );
}

#[tokio::test]
async fn endpoint_names_from_the_config() {
    let opts = ManagerOptions {
        readiness_endpoint_name: "/ready".into(),
        liveness_endpoint_name: "live".into(),
        ..ManagerOptions::default()
    };
    let paths = ProbePaths::from_options(&opts);
    assert_eq!(
        paths,
        ProbePaths {
            readiness: "/ready".into(),
            liveness: "/live".into()
        }
    );
    let (_tx, ready) = watch::channel(true);
    let server = serve_health("127.0.0.1:0", paths, ready)
        .await
        .unwrap()
        .unwrap();
    let addr = server.local_addr();
    assert_eq!(get(addr, "/ready").await.0, 200);
    assert_eq!(get(addr, "/live").await.0, 200);
    assert_eq!(get(addr, "/live/healthz").await.0, 200);
    assert_eq!(get(addr, "/readyz").await.0, 404);
}

#[tokio::test]
async fn disabled_and_every_interface() {
    let (_tx, ready) = watch::channel(true);
    for off in ["", "0"] {
        let served = serve_health(off, ProbePaths::default(), ready.clone()).await;
        assert!(served.unwrap().is_none(), "{off:?} disables the probes");
    }
    let metrics = Arc::new(Metrics::default());
    assert!(serve_metrics("0", metrics.clone()).await.unwrap().is_none());

    // `:port` listens everywhere, loopback included.
    let server = serve_health(":0", ProbePaths::default(), ready)
        .await
        .unwrap()
        .unwrap();
    assert!(server.local_addr().ip().is_unspecified());
    let port = server.local_addr().port();
    assert_eq!(
        get(SocketAddr::from(([127, 0, 0, 1], port)), "/healthz")
            .await
            .0,
        200
    );

    let err = serve_metrics("localhost", metrics).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "address localhost: missing port in address"
    );
}

#[test]
fn go_bind_addresses() {
    let addr = |host: &str, port| {
        Some(BindAddress {
            host: host.into(),
            port,
        })
    };
    let parse = |s: &str| BindAddress::parse(s).map_err(|e| e.to_string());
    assert_eq!(parse(":8080"), Ok(addr("", 8080)));
    assert_eq!(parse("127.0.0.1:8080"), Ok(addr("127.0.0.1", 8080)));
    assert_eq!(parse("[::1]:80"), Ok(addr("::1", 80)));
    assert_eq!(parse("[::]:8083"), Ok(addr("::", 8083)));
    assert_eq!(parse("localhost:9090"), Ok(addr("localhost", 9090)));
    assert_eq!(parse("127.0.0.1:"), Ok(addr("127.0.0.1", 0)));
    assert_eq!(parse("0"), Ok(None));
    assert_eq!(parse(""), Ok(None));
    assert_eq!(
        parse("8080").unwrap_err(),
        "address 8080: missing port in address"
    );
    assert_eq!(
        parse("::1:80").unwrap_err(),
        "address ::1:80: too many colons in address"
    );
    assert_eq!(
        parse("[::1]").unwrap_err(),
        "address [::1]: missing port in address"
    );
    assert_eq!(
        parse("[::1:80").unwrap_err(),
        "address [::1:80: missing ']' in address"
    );
    assert_eq!(parse(":http").unwrap_err(), "address :http: invalid port");
    assert_eq!(parse(":65536").unwrap_err(), "address :65536: invalid port");
}

#[tokio::test]
async fn metrics_are_served_in_the_text_format() {
    let metrics = Arc::new(Metrics::default());
    let server = serve_metrics("127.0.0.1:0", metrics.clone())
        .await
        .unwrap()
        .unwrap();
    let addr = server.local_addr();

    metrics.reconcile_passes.inc();
    metrics.reconcile_passes.inc();
    metrics.entries_created.add(3);
    metrics.entries_updated.inc();
    metrics.entries_deleted.add(2);
    metrics.entry_failures.inc();
    metrics.render_failures.add(4);
    metrics.leader.set(1);
    metrics.declared_entries.set(12);
    metrics.static_entry_failures.set(2);
    metrics.reconcile_duration.observe(Duration::from_millis(3));
    metrics
        .reconcile_duration
        .observe(Duration::from_millis(300));
    metrics.reconcile_duration.observe(Duration::from_secs(120));
    assert_eq!(metrics.reconcile_duration.count(), 3);

    let (status, headers, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let samples = parse_exposition(&body);
    let expected = [
        ("sigil_controller_reconcile_passes_total", 2.0),
        ("sigil_controller_entries_created_total", 3.0),
        ("sigil_controller_entries_updated_total", 1.0),
        ("sigil_controller_entries_deleted_total", 2.0),
        ("sigil_controller_entry_failures_total", 1.0),
        ("sigil_controller_render_failures_total", 4.0),
        ("sigil_controller_leader", 1.0),
        ("sigil_controller_declared_entries", 12.0),
        ("cluster_static_entry_failures", 2.0),
        ("sigil_controller_reconcile_duration_seconds_count", 3.0),
        (
            r#"sigil_controller_reconcile_duration_seconds_bucket{le="0.005"}"#,
            1.0,
        ),
        (
            r#"sigil_controller_reconcile_duration_seconds_bucket{le="0.25"}"#,
            1.0,
        ),
        (
            r#"sigil_controller_reconcile_duration_seconds_bucket{le="0.5"}"#,
            2.0,
        ),
        (
            r#"sigil_controller_reconcile_duration_seconds_bucket{le="60"}"#,
            2.0,
        ),
        (
            r#"sigil_controller_reconcile_duration_seconds_bucket{le="+Inf"}"#,
            3.0,
        ),
    ];
    for (name, value) in expected {
        assert_eq!(samples.get(name), Some(&value), "{name} in\n{body}");
    }
    let sum = samples["sigil_controller_reconcile_duration_seconds_sum"];
    assert!((sum - 120.303).abs() < 1e-9, "{sum}");
    assert!(body.contains(
        "# HELP cluster_static_entry_failures Number of cluster static entry render failures\n\
         # TYPE cluster_static_entry_failures gauge\n"
    ));
    let buckets = samples.keys().filter(|k| k.contains("_bucket{")).count();
    assert_eq!(buckets, RECONCILE_DURATION_BUCKETS.len() + 1);

    assert_eq!(get(addr, "/").await.0, 404);
    assert_eq!(get(addr, "/healthz").await.0, 404);
}

/// Parses the text exposition format strictly enough to catch mistakes: every sample's
/// family has `# HELP` then `# TYPE` before it, histogram samples are the family's
/// `_bucket`/`_sum`/`_count`, counters end in `_total`, bucket counts never decrease and the
/// last is `+Inf`; no family is declared twice. Returns each sample (name with labels) and
/// its value.
fn parse_exposition(text: &str) -> HashMap<String, f64> {
    let mut help = HashMap::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    let mut last_bucket: Option<(String, f64)> = None;
    assert!(text.ends_with('\n'));
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').unwrap();
            assert!(!doc.is_empty(), "{line}");
            assert!(
                help.insert(name.to_string(), ()).is_none(),
                "HELP twice: {line}"
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(help.contains_key(name), "TYPE before HELP: {line}");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(
                types.insert(name.into(), kind.into()).is_none(),
                "TYPE twice: {line}"
            );
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        let kind = types
            .get(family)
            .unwrap_or_else(|| panic!("no TYPE for {line}"));
        match kind.as_str() {
            "counter" => assert!(name.ends_with("_total"), "{line}"),
            "histogram" if name.ends_with("_bucket") => {
                let le = series
                    .split("le=\"")
                    .nth(1)
                    .unwrap()
                    .trim_end_matches("\"}");
                if let Some((f, previous)) = &last_bucket
                    && f == family
                {
                    assert!(value >= *previous, "buckets decrease: {line}");
                }
                last_bucket = (le != "+Inf").then(|| (family.to_string(), value));
            }
            "histogram" => assert_ne!(name, family, "a histogram's own name: {line}"),
            _ => {}
        }
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "twice: {line}"
        );
    }
    samples
}
