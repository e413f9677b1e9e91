//! Envoy with Sigil's Wasm authorization filter (`envoy-filter-wasm/`): listener builders for
//! the HTTP and TCP filters on an mTLS listener whose certificates come from the agent over SDS,
//! and TLS clients that present an X509-SVID (or none).

use crate::envoy::{HttpResponse, sds_secret};
use crate::workload::Svid;
use anyhow::{Context, Result, bail};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Envoy `root_id`s of the filter (see envoy-filter-wasm/src/root.rs).
pub const ROOT_ID_HTTP: &str = "sigil_authz_http";
pub const ROOT_ID_TCP: &str = "sigil_authz_tcp";
/// The response header naming the policy (or reason) that denied a request.
pub const POLICY_HEADER: &str = "x-sigil-authz-policy";

/// The filter built by `cargo xtask build-wasm` (`cargo xtask test` builds it first).
pub fn wasm_artifact() -> PathBuf {
    let p = crate::harness::target_dir().join("wasm/sigil_authz_filter.wasm");
    assert!(
        p.is_file(),
        "{} not found: build it with `cargo xtask build-wasm` (`cargo xtask test` does)",
        p.display()
    );
    p
}

/// Copies the filter into `dir` (readable by Envoys running as other uids).
pub fn install_wasm(dir: &Path) -> PathBuf {
    let dst = dir.join("sigil_authz_filter.wasm");
    std::fs::copy(wasm_artifact(), &dst).expect("copying the wasm filter");
    crate::harness::chmod(&dst, 0o644);
    dst
}

fn plugin_config(name: &str, root_id: &str, wasm: &Path, config: &Value) -> Value {
    json!({
        "name": name,
        "root_id": root_id,
        "vm_config": {
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": wasm}}
        },
        "configuration": {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": config.to_string()
        }
    })
}

/// `envoy.filters.http.wasm` running the filter with `config` (the plugin's JSON).
pub fn wasm_http_filter(wasm: &Path, config: &Value) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": plugin_config("sigil_authz", ROOT_ID_HTTP, wasm, config)
        }
    })
}

/// `envoy.filters.network.wasm` running the filter with `config`.
pub fn wasm_network_filter(wasm: &Path, config: &Value) -> Value {
    json!({
        "name": "envoy.filters.network.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
            "config": plugin_config("sigil_authz_tcp", ROOT_ID_TCP, wasm, config)
        }
    })
}

/// A server TLS context with the SVID (`default`) from SDS and no SAN matcher: authorization
/// is the filter's job. Client certificates are optional, so that clients without one reach
/// the filter (which must deny them); they are verified against `bundle_pem` (a file), because
/// the SPIFFE certificate validator that SDS `ROOTCA` comes with refuses clients without a
/// certificate during the handshake.
pub fn server_tls(bundle_pem: &Path) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": false,
            "common_tls_context": {
                "tls_certificate_sds_secret_configs": [sds_secret("default")],
                "validation_context": {"trusted_ca": {"filename": bundle_pem}}
            }
        }
    })
}

/// An HTTP listener on 127.0.0.1:`port` with `transport_socket`, `http_filters` (the router is
/// appended) and a direct 200 response.
pub fn http_listener(
    name: &str,
    port: u16,
    transport_socket: Value,
    http_filters: Vec<Value>,
) -> Value {
    let mut filters = http_filters;
    filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": name,
                    "route_config": {"virtual_hosts": [{
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"},
                                    "direct_response": {"status": 200, "body": {"inline_string": "hello\n"}}}]
                    }]},
                    "http_filters": filters
                }
            }],
            "transport_socket": transport_socket
        }]
    })
}

/// A TCP listener on 127.0.0.1:`port`: `network_filters`, then `tcp_proxy` to `cluster`.
pub fn tcp_listener(
    name: &str,
    port: u16,
    transport_socket: Value,
    network_filters: Vec<Value>,
    cluster: &str,
) -> Value {
    let mut filters = network_filters;
    filters.push(json!({
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": name,
            "cluster": cluster
        }
    }));
    json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": filters, "transport_socket": transport_socket}]
    })
}

/// A plaintext cluster to 127.0.0.1:`port`.
pub fn local_cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]
        }
    })
}

/// A TCP echo server on a free loopback port (a thread per connection; lives as long as the
/// test process).
pub fn echo_server() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the echo server");
    let port = l.local_addr().expect("echo server address").port();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = conn;
                let Ok(mut w) = r.try_clone() else { return };
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
    port
}

/// A TLS 1.3 client that checks the server's SVID against `bundle` and `server_id`, and
/// presents `client` if given.
pub fn client_config(
    client: Option<&Svid>,
    bundle: &[Vec<u8>],
    server_id: &str,
) -> Result<rustls::ClientConfig> {
    let verifier = Arc::new(crate::mtls::verifier(
        bundle.to_vec(),
        &[server_id.to_owned()],
    )?);
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .dangerous()
    .with_custom_certificate_verifier(verifier);
    Ok(match client {
        Some(svid) => {
            let chain = svid
                .chain
                .iter()
                .cloned()
                .map(CertificateDer::from)
                .collect();
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(svid.key.clone()));
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    })
}

fn connect(
    port: u16,
    cfg: rustls::ClientConfig,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let conn = rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from("sigil.test")?)?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// `GET path` over TLS with HTTP/1.1 and `Connection: close`.
pub fn https_get(port: u16, cfg: rustls::ClientConfig, path: &str) -> Result<HttpResponse> {
    let mut s = connect(port, cfg)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        Ok(_) => {}
        // Envoy closes without close_notify after `Connection: close`.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e).context("reading the response"),
    }
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .context("bad status line")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// Sends `msg` over TLS to a TCP listener and reads the same number of bytes back. An error
/// (or a short read) means the connection was closed on us.
pub fn tls_echo(port: u16, cfg: rustls::ClientConfig, msg: &[u8]) -> Result<Vec<u8>> {
    let mut s = connect(port, cfg)?;
    s.write_all(msg)?;
    s.flush()?;
    let mut got = vec![0; msg.len()];
    let mut n = 0;
    while n < got.len() {
        match s.read(&mut got[n..]) {
            Ok(0) => bail!("connection closed after {n} bytes"),
            Ok(k) => n += k,
            Err(e) => bail!("connection failed after {n} bytes: {e}"),
        }
    }
    Ok(got)
}
