//! `sigil-bench`: the numbers behind Sigil's speed targets, run by `cargo xtask bench`.
//!
//! 1. X509-SVID signing throughput of the server's CA next to the raw ECDSA P-256 signing rate of
//!    the same machine, measured in the same run with the same thread count.
//! 2. FetchX509SVID latency (p50/p99) for a cached identity through a real agent process
//!    (attested by a real server process) at 1, 10 and 100 concurrent clients.
//!
//! 3. SDS push fan-out: time from an SVID rotation until the new certificate has been received on
//!    every one of 1000 open SDS streams.
//!
//! 4. Workload attestation: per-connection cost of each tier (eBPF map lookup, pidfd, procfs)
//!    next to a bare Unix socket round trip, and FetchX509SVID latency with each tier.
//!
//! 5. Authorization inside Envoy: requests/s and p99 with wrk through an mTLS listener with no
//!    filter, Envoy's RBAC filter and Sigil's Wasm filter, the same 50-rule policy.
//!
//! 6. Kubernetes: pod → SVID through the k8s attestor (`--only-k8s`) and through
//!    sigil-controller, and the controller at 10,000 pods (`--only-controller`).
//!
//! 7. Federation: a root rotation in one trust domain until a workload of the other holds the
//!    new root (`--only-federation`).
//!
//! 8. Authority management: `localauthority x509 taint` until all 1000 cached SVIDs of an agent
//!    are re-signed, on an open stream (`--only-authority`).
//!
//! 9. Load (`--only-load`): 1000 open streams plus 5000 unary calls/s against one agent, the
//!    agent's RSS with 10,000 entries, a server with 100,000 entries (RSS, start-up).
//!
//! 10. High availability (`--only-ha`): two servers on one PostgreSQL, an entry created on one
//!     until an agent synced to the other serves the SVID; 100 agents reconnecting at once.
//!
//! Results are printed as a table and written to `target/bench/results.md` and `.json`.

mod attestation;
mod authority;
mod authz;
mod controller;
mod federation;
mod ha;
mod k8s;
mod latency;
mod load;
mod sds;
mod sync;

use anyhow::{Context, Result, bail};
use sigil_proto::workload::X509svidRequest;
use sigil_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const TRUST_DOMAIN: &str = "bench.example.org";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let bin_dir = args
        .iter()
        .position(|a| a == "--bin-dir")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .unwrap_or_default()
        });
    let out_dir = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bench"));
    let secs = if quick { 1.0 } else { 3.0 };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);

    let mut rows: Rows = Vec::new();
    let mut json = serde_json::Map::new();
    for (flag, rows_of) in [
        ("--only-sync", sync_rows as RowsFn),
        ("--only-fetch", fetch_rows as RowsFn),
        ("--only-k8s", k8s_rows as RowsFn),
        ("--only-controller", controller_rows as RowsFn),
        ("--only-federation", federation_rows as RowsFn),
        ("--only-authority", authority_rows as RowsFn),
        ("--only-load", load_rows as RowsFn),
        ("--only-ha", ha_rows as RowsFn),
    ] {
        if args.iter().any(|a| a == flag) {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rows_of(&rt, &bin_dir, quick, &mut rows, &mut json)?;
            return write_results(&rows, json, &out_dir);
        }
    }

    eprintln!("== signing throughput ({threads} threads, {secs} s each)");
    let raw = raw_ecdsa_rate(threads, secs)?;
    let ca = ca_sign_rate(threads, secs, false)?;
    let ca_csr = ca_sign_rate(threads, secs, true)?;
    let ratio = ca / raw;
    rows.push((
        "raw ECDSA P-256 signatures (ring)".into(),
        format!("{raw:.0}/s"),
        "".into(),
    ));
    rows.push((
        "CA X509-SVID signing".into(),
        format!("{ca:.0}/s"),
        format!(
            "{:.0}% of raw (target ≥ 70%) {}",
            ratio * 100.0,
            verdict(ratio >= 0.70)
        ),
    ));
    rows.push((
        "CA X509-SVID signing incl. CSR parse + verify".into(),
        format!("{ca_csr:.0}/s"),
        format!(
            "{:.0}% of raw (informational: CSR verification is an ECDSA verify)",
            ca_csr / raw * 100.0
        ),
    ));
    json.insert("raw_ecdsa_p256_per_s".into(), raw.into());
    json.insert("ca_sign_per_s".into(), ca.into());
    json.insert("ca_sign_with_csr_per_s".into(), ca_csr.into());
    json.insert("ca_sign_ratio".into(), ratio.into());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    fetch_rows(&rt, &bin_dir, quick, &mut rows, &mut json)?;

    eprintln!("== SDS push fan-out");
    let n = 1000;
    let (all_ms, p50_ms) = rt.block_on(sds::fanout(n))?;
    rows.push((
        format!("SDS rotation pushed to {n} open streams"),
        format!("all received in {all_ms:.1} ms (p50 stream {p50_ms:.1} ms)"),
        format!("target ≤ 200 ms {}", verdict(all_ms <= 200.0)),
    ));
    json.insert(
        "sds_fanout_1000".into(),
        serde_json::json!({"all_ms": all_ms, "p50_ms": p50_ms}),
    );

    sync_rows(&rt, &bin_dir, quick, &mut rows, &mut json)?;

    k8s_rows(&rt, &bin_dir, quick, &mut rows, &mut json)?;
    controller_rows(&rt, &bin_dir, quick, &mut rows, &mut json)?;
    federation_rows(&rt, &bin_dir, quick, &mut rows, &mut json)?;
    authority_rows(&rt, &bin_dir, quick, &mut rows, &mut json)?;
    load_rows(&rt, &bin_dir, quick, &mut rows, &mut json)?;
    ha_rows(&rt, &bin_dir, quick, &mut rows, &mut json)?;

    eprintln!("== workload attestation tiers: per-connection cost, FetchX509SVID latency");
    let (costs, unavailable) = attestation::per_connection(if quick { 1000 } else { 5000 })?;
    for c in &costs {
        let added = c.attested_us - c.bare_us;
        rows.push((
            format!("attestation per connection, tier {}", c.tier),
            format!(
                "{:.1} µs (bare UDS round trip {:.1} µs, +{added:.1} µs)",
                c.attested_us, c.bare_us
            ),
            if c.tier.is_ebpf() {
                format!("target ≤ +20 µs {}", verdict(added <= 20.0))
            } else {
                String::new()
            },
        ));
        json.insert(
            format!("attestation_{}", c.tier),
            serde_json::json!({"attested_us": c.attested_us, "bare_us": c.bare_us, "added_us": added}),
        );
        let (lat, _) = rt.block_on(fetch_latency(
            &bin_dir,
            if quick { 200 } else { 1000 },
            &["-attestationTier", c.tier.name()],
            None,
        ))?;
        if let Some((_, p50, p99, n)) = lat.iter().find(|l| l.0 == 1) {
            rows.push((
                format!("FetchX509SVID, 1 client, tier {} ({n} calls)", c.tier),
                format!("p50 {p50:.0} µs, p99 {p99:.0} µs"),
                String::new(),
            ));
            json.insert(
                format!("fetch_x509svid_tier_{}", c.tier),
                serde_json::json!({"p50_us": p50, "p99_us": p99, "calls": n}),
            );
        }
    }
    for (tier, reason) in &unavailable {
        rows.push((
            format!("attestation per connection, tier {tier}"),
            "unavailable here".into(),
            reason.clone(),
        ));
    }

    eprintln!(
        "== authorization inside Envoy (wrk): no filter, Envoy RBAC, a do-nothing Wasm module, Sigil's Wasm filter"
    );
    authz::report(&bin_dir, quick, &mut rows, &mut json)?;

    write_results(&rows, json, &out_dir)
}
type Rows = Vec<(String, String, String)>;
type RowsFn = fn(
    &tokio::runtime::Runtime,
    &Path,
    bool,
    &mut Rows,
    &mut serde_json::Map<String, serde_json::Value>,
) -> Result<()>;

/// The Kubernetes attestation rows (`--only-k8s` runs just these).
fn k8s_rows(
    rt: &tokio::runtime::Runtime,
    bin_dir: &Path,
    quick: bool,
    rows: &mut Rows,
    json: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    rt.block_on(k8s::rows(bin_dir, quick, rows, json))
}

/// The sigil-controller rows (`--only-controller` runs just these).
fn controller_rows(
    rt: &tokio::runtime::Runtime,
    bin_dir: &Path,
    quick: bool,
    rows: &mut Rows,
    json: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    rt.block_on(controller::rows(bin_dir, quick, rows, json))
}

/// The federation rows (`--only-federation` runs just these).
fn federation_rows(
    rt: &tokio::runtime::Runtime,
    bin_dir: &Path,
    quick: bool,
    rows: &mut Rows,
    json: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    rt.block_on(federation::rows(bin_dir, quick, rows, json))
}

/// The authority-management rows (`--only-authority` runs just these).
fn authority_rows(
    rt: &tokio::runtime::Runtime,
    bin_dir: &Path,
    quick: bool,
    rows: &mut Rows,
    json: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    rt.block_on(authority::rows(bin_dir, quick, rows, json))
}

/// The high-availability rows (`--only-ha` runs just these).
fn ha_rows(
    rt: &tokio::runtime::Runtime,
    bin_dir: &Path,
    quick: bool,
    rows: &mut Rows,
    json: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    rt.block_on(ha::rows(bin_dir, quick, rows, json))
}

/// The load rows (`--only-load` runs just these).
fn load_rows(
    rt: &tokio::runtime::Runtime,
    bin_dir: &Path,
    quick: bool,
    rows: &mut Rows,
    json: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    rt.block_on(load::rows(bin_dir, quick, rows, json))
}

/// The FetchX509SVID latency rows (`--only-fetch` runs just these).
fn fetch_rows(
    rt: &tokio::runtime::Runtime,
    bin_dir: &Path,
    quick: bool,
    rows: &mut Rows,
    json: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    eprintln!("== FetchX509SVID latency through a real server + agent");
    // Open loop: every client fetches every 100 ms (100 clients: 1000 requests/s); latency
    // from when each request was due. Closed loop: back to back, i.e. saturation.
    let open = (
        Duration::from_millis(100),
        Duration::from_secs(if quick { 2 } else { 10 }),
    );
    let (lat, open_lat) = rt.block_on(fetch_latency(
        bin_dir,
        if quick { 300 } else { 2000 },
        &[],
        Some(open),
    ))?;
    for (clients, p50, p99, n) in &open_lat {
        let ok = *clients != 100 || *p99 <= 1000.0;
        rows.push((
            format!("FetchX509SVID, {clients} concurrent clients, each every 100 ms ({n} calls)"),
            format!("p50 {p50:.0} µs, p99 {p99:.0} µs"),
            if *clients == 100 {
                format!("target p99 ≤ 1000 µs {}", verdict(ok))
            } else {
                String::new()
            },
        ));
        json.insert(
            format!("fetch_x509svid_{clients}_clients_open_loop"),
            serde_json::json!({"p50_us": p50, "p99_us": p99, "calls": n}),
        );
    }
    for (clients, p50, p99, n) in &lat {
        rows.push((
            format!("FetchX509SVID, {clients} clients back to back (saturation, {n} calls)"),
            format!("p50 {p50:.0} µs, p99 {p99:.0} µs"),
            String::new(),
        ));
        json.insert(
            format!("fetch_x509svid_{clients}_clients_closed_loop"),
            serde_json::json!({"p50_us": p50, "p99_us": p99, "calls": n}),
        );
    }

    Ok(())
}

/// The entry-sync rows (`--only-sync` runs just these).
fn sync_rows(
    rt: &tokio::runtime::Runtime,
    bin_dir: &Path,
    quick: bool,
    rows: &mut Rows,
    json: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    eprintln!("== entry sync: 1000 agents (real attestation, mTLS), 10 entries each");
    let (agents, creates) = if quick { (200, 50) } else { (1000, 200) };
    let f = rt.block_on(sync::fanout(bin_dir, agents, 10, creates))?;
    rows.push((
        format!(
            "entry sync: {} single-entry creates over {} agents ({} entries), commit to delivery on the owning agent's stream",
            f.creates, f.agents, f.entries
        ),
        format!("p50 {:.1} ms, p99 {:.1} ms", f.p50_ms, f.p99_ms),
        format!("target p99 ≤ 50 ms {}", verdict(f.p99_ms <= 50.0)),
    ));
    rows.push((
        "entry sync: messages / bytes delivered to agents a write does not concern".into(),
        format!("{} messages, {} bytes", f.stray_messages, f.stray_bytes),
        format!("target 0 {}", verdict(f.stray_messages == 0)),
    ));
    rows.push((
        format!(
            "entry sync: single-entry creates committed with {} streams open (16 in flight)",
            f.agents
        ),
        format!("{:.0} writes/s", f.writes_per_s),
        String::new(),
    ));
    json.insert(
        "entry_sync".into(),
        serde_json::json!({
            "agents": f.agents, "entries": f.entries, "creates": f.creates,
            "p50_ms": f.p50_ms, "p99_ms": f.p99_ms,
            "stray_messages": f.stray_messages, "stray_bytes": f.stray_bytes,
            "writes_per_s": f.writes_per_s,
        }),
    );
    let (p50, p99) = rt.block_on(sync::entry_to_svid(bin_dir, 20))?;
    rows.push((
        "new entry → its SVID on a real agent's Workload API stream (20 runs)".into(),
        format!("p50 {p50:.1} ms, p99 {p99:.1} ms"),
        format!("target p99 ≤ 100 ms {}", verdict(p99 <= 100.0)),
    ));
    json.insert(
        "entry_to_workload_svid".into(),
        serde_json::json!({"p50_ms": p50, "p99_ms": p99, "runs": 20}),
    );

    Ok(())
}

/// Prints the table and writes it (and the JSON) to `out_dir`.
fn write_results(
    rows: &Rows,
    json: serde_json::Map<String, serde_json::Value>,
    out_dir: &Path,
) -> Result<()> {
    let mut table = String::from("| benchmark | result | target |\n|---|---|---|\n");
    for (a, b, c) in rows {
        table.push_str(&format!("| {a} | {b} | {c} |\n"));
    }
    println!("\n{table}");
    std::fs::create_dir_all(out_dir)?;
    std::fs::write(out_dir.join("results.md"), &table)?;
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&serde_json::Value::Object(json))?,
    )?;
    eprintln!("written to {}", out_dir.join("results.md").display());
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "✅" } else { "❌" }
}

/// Runs `f` on `threads` threads for `secs` seconds; returns operations per second.
fn rate(threads: usize, secs: f64, f: impl Fn(usize) + Send + Sync) -> f64 {
    let stop = AtomicBool::new(false);
    let ops = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (stop, ops, f) = (&stop, &ops, &f);
            s.spawn(move || {
                let mut i = t * 1_000_000;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    f(i);
                    i += 1;
                    n += 1;
                }
                ops.fetch_add(n, Ordering::Relaxed);
            });
        }
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
    });
    ops.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn raw_ecdsa_rate(threads: usize, secs: f64) -> Result<f64> {
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| anyhow::anyhow!("keygen"))?;
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| anyhow::anyhow!("key"))?;
    // About the size of an X509-SVID's TBSCertificate.
    let msg = vec![0x5au8; 400];
    Ok(rate(threads, secs, |_| {
        let _ = key.sign(&rng, &msg);
    }))
}

fn ca_sign_rate(threads: usize, secs: f64, with_csr: bool) -> Result<f64> {
    use sigil_server::ca::{Ca, CaConfig};
    use sigil_server::config::{CaSubject, KeyManager, KeyType};
    let ca = Ca::load_or_create(CaConfig {
        trust_domain: TRUST_DOMAIN.parse()?,
        ca_ttl: Duration::from_secs(86400),
        subject: CaSubject::default(),
        key_type: KeyType::EcP256,
        key_manager: KeyManager::Memory,
        jwt_issuer: None,
        upstream: None,
    })?;
    let keys: Vec<rcgen::KeyPair> = (0..64)
        .map(|_| rcgen::KeyPair::generate())
        .collect::<Result<_, _>>()?;
    let csrs: Vec<Vec<u8>> = keys
        .iter()
        .map(|k| {
            rcgen::CertificateParams::default()
                .serialize_request(k)
                .map(|c| c.der().to_vec())
        })
        .collect::<Result<_, _>>()?;
    let id: sigil_spiffe::SpiffeId = format!("spiffe://{TRUST_DOMAIN}/workload").parse()?;
    let now = sigil_server::now_unix();
    // Check once that signing works, so the loop below measures real signatures.
    ca.sign_x509_svid(&keys[0], &id, &[], Duration::from_secs(3600), now)?;
    Ok(rate(threads, secs, |i| {
        let r = if with_csr {
            Ca::csr_public_key(&csrs[i % csrs.len()])
                .and_then(|pk| ca.sign_x509_svid(&pk, &id, &[], Duration::from_secs(3600), now))
        } else {
            ca.sign_x509_svid(
                &keys[i % keys.len()],
                &id,
                &[],
                Duration::from_secs(3600),
                now,
            )
        };
        std::hint::black_box(r.ok());
    }))
}

/// Starts `sigil-server` (data under `dir/server`, admin socket `admin`) on a free port and
/// waits until its admin API answers.
pub(crate) async fn start_server(
    server_bin: &Path,
    dir: &Path,
    admin: &Path,
) -> Result<(Proc, u16)> {
    let port = free_port()?;
    let server = Proc(
        Command::new(server_bin)
            .args([
                "run",
                "-trustDomain",
                TRUST_DOMAIN,
                "-bindAddress",
                "127.0.0.1",
            ])
            .args(["-serverPort", &port.to_string(), "-logLevel", "warn"])
            .arg("-dataDir")
            .arg(dir.join("server"))
            .arg("-socketPath")
            .arg(admin)
            .stdout(Stdio::null())
            .spawn()?,
    );
    let admin_s = admin.to_string_lossy().to_string();
    wait_for("server admin socket", || {
        run_cli(server_bin, &["healthcheck", "-socketPath", &admin_s]).is_ok()
    })
    .await?;
    Ok((server, port))
}

/// Kills the child on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn run_cli(bin: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} {:?} failed: {}",
            bin.display(),
            args,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn client(socket: &Path) -> Result<SpiffeWorkloadApiClient<tonic::transport::Channel>> {
    let path = socket.to_path_buf();
    let ch = tonic::transport::Endpoint::try_from("http://[::1]:1")?
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await?;
    Ok(SpiffeWorkloadApiClient::new(ch))
}

async fn fetch_once(c: &mut SpiffeWorkloadApiClient<tonic::transport::Channel>) -> Result<()> {
    let mut req = tonic::Request::new(X509svidRequest {});
    req.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    let mut stream = c.fetch_x509svid(req).await?.into_inner();
    let msg = stream
        .message()
        .await?
        .context("stream ended without an SVID")?;
    if msg.svids.is_empty() {
        bail!("no SVID in response");
    }
    Ok(())
}

/// Closed-loop latency per client count and, with `open = Some((interval, duration))`,
/// open-loop latency too (see `latency`).
type Levels = Vec<(usize, f64, f64, usize)>;

/// A real server and agent, the agent attested under `spiffe://<td>/bench-node` and serving an
/// entry for this process's uid.
pub(crate) struct Stack {
    _dir: tempfile::TempDir,
    pub admin: PathBuf,
    pub api: PathBuf,
    pub node: String,
    // Dropped in declaration order: the agent goes before its server.
    _agent: Proc,
    _server: Proc,
}

impl Stack {
    pub(crate) async fn start(bin_dir: &Path, agent_args: &[&str]) -> Result<Self> {
        let server_bin = bin_dir.join("sigil-server");
        let agent_bin = bin_dir.join("sigil-agent");
        for b in [&server_bin, &agent_bin] {
            if !b.exists() {
                bail!(
                    "{} not found (build with `cargo build --release`)",
                    b.display()
                );
            }
        }
        let dir = tempfile::tempdir()?;
        let admin = dir.path().join("admin.sock");
        let api = dir.path().join("agent.sock");
        let admin_s = admin.to_string_lossy().to_string();
        let (_server, port) = start_server(&server_bin, dir.path(), &admin).await?;
        let port = port.to_string();
        let node = format!("spiffe://{TRUST_DOMAIN}/bench-node");
        let token = run_cli(
            &server_bin,
            &[
                "token",
                "generate",
                "-socketPath",
                &admin_s,
                "-spiffeID",
                &node,
            ],
        )?
        .trim()
        .trim_start_matches("Token: ")
        .to_string();
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        run_cli(
            &server_bin,
            &[
                "entry",
                "create",
                "-socketPath",
                &admin_s,
                "-parentID",
                &node,
                "-spiffeID",
                &format!("spiffe://{TRUST_DOMAIN}/bench-workload"),
                "-selector",
                &format!("unix:uid:{uid}"),
            ],
        )?;
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(
            &bundle,
            run_cli(&server_bin, &["bundle", "show", "-socketPath", &admin_s])?,
        )?;
        let _agent = Proc(
            Command::new(&agent_bin)
                .args([
                    "run",
                    "-trustDomain",
                    TRUST_DOMAIN,
                    "-serverAddress",
                    "127.0.0.1",
                    "-serverPort",
                    &port,
                    "-joinToken",
                    &token,
                    "-logLevel",
                    "warn",
                ])
                .arg("-dataDir")
                .arg(dir.path().join("agent"))
                .arg("-socketPath")
                .arg(&api)
                .arg("-trustBundle")
                .arg(&bundle)
                .args(agent_args)
                .stdout(Stdio::null())
                .spawn()?,
        );
        wait_for("agent socket", || api.exists()).await?;
        // Wait until the identity is cached.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut c) = client(&api).await
                && fetch_once(&mut c).await.is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("agent never served the bench identity");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self {
            _dir: dir,
            admin,
            api,
            node,
            _agent,
            _server,
        })
    }

    pub(crate) fn agent_pid(&self) -> u32 {
        self._agent.0.id()
    }
}

async fn fetch_latency(
    bin_dir: &Path,
    calls_per_level: usize,
    agent_args: &[&str],
    open: Option<(Duration, Duration)>,
) -> Result<(Levels, Levels)> {
    let stack = Stack::start(bin_dir, agent_args).await?;
    let api = stack.api.clone();

    let mut out = Vec::new();
    for clients in [1usize, 10, 100] {
        let per_client = (calls_per_level / clients).max(20);
        let mut conns = Vec::new();
        for _ in 0..clients {
            let mut c = client(&api).await?;
            fetch_once(&mut c).await?; // warm the connection
            conns.push(c);
        }
        let barrier = Arc::new(tokio::sync::Barrier::new(clients));
        let mut tasks = Vec::new();
        for mut c in conns {
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let mut lat = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    let t = Instant::now();
                    fetch_once(&mut c).await?;
                    lat.push(t.elapsed().as_secs_f64() * 1e6);
                }
                anyhow::Ok(lat)
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await??);
        }
        all.sort_by(f64::total_cmp);
        let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
        out.push((clients, pct(0.50), pct(0.99), all.len()));
        eprintln!(
            "  {clients:>3} clients back to back: p50 {:.0} µs p99 {:.0} µs",
            pct(0.5),
            pct(0.99)
        );
    }
    let mut open_out = Vec::new();
    if let Some((interval, duration)) = open {
        for clients in [1usize, 10, 100] {
            let (p50, p99, n) = latency::open_loop(&api, clients, interval, duration).await?;
            eprintln!("  {clients:>3} clients every {interval:?}: p50 {p50:.0} µs p99 {p99:.0} µs");
            open_out.push((clients, p50, p99, n));
        }
    }
    Ok((out, open_out))
}
