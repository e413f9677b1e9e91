//! Entry sync at scale: many agents (real node attestation and mTLS, simulated as tasks of this
//! process), each with its entries, then single-entry writes. Measures how long a write takes
//! to reach its agent, what reaches the agents it does not concern (must be nothing), and how
//! many writes per second commit while every stream is open. Then, end to end, how long a new
//! entry takes to become an SVID on a real agent's Workload API.

use crate::{Stack, TRUST_DOMAIN};
use anyhow::{Context, Result, bail};
use futures::StreamExt;
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use sigil_proto::admin as apb;
use sigil_proto::agent as pb;
use sigil_proto::agent::node_client::NodeClient;
use sigil_proto::types;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What the fan-out measured.
#[derive(Debug)]
pub struct Fanout {
    pub agents: usize,
    pub entries: usize,
    pub creates: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Messages and bytes that reached agents a write did not concern.
    pub stray_messages: u64,
    pub stray_bytes: u64,
    /// Single-entry creates committed per second, 16 in flight, all streams open.
    pub writes_per_s: f64,
}

/// One message seen by a simulated agent after its initial set.
struct Seen {
    agent: usize,
    ids: Vec<String>,
    bytes: usize,
    at: Instant,
}

pub(crate) fn csr(key: &KeyPair) -> Result<Vec<u8>> {
    Ok(CertificateParams::default()
        .serialize_request(key)?
        .der()
        .to_vec())
}

/// An agent API channel to `port`, verifying the server's SVID, presenting `client` if given.
pub(crate) async fn channel(
    port: u16,
    roots: &[Vec<u8>],
    client: Option<(Vec<u8>, &KeyPair)>,
) -> Result<NodeClient<tonic::transport::Channel>> {
    let verifier = sigil_tls::SvidVerifier::new(
        sigil_tls::Roots::fixed(roots.to_vec()),
        sigil_tls::Authorizer::Id(format!("spiffe://{TRUST_DOMAIN}/spire/server").parse()?),
    );
    let b = rustls::ClientConfig::builder_with_provider(sigil_tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut cfg = match client {
        Some((cert, key)) => b.with_client_auth_cert(
            vec![CertificateDer::from(cert)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )?,
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let ch = tonic::transport::Endpoint::try_from("http://127.0.0.1")?
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                tcp.set_nodelay(true)?;
                let name = ServerName::try_from("sigil-server").map_err(std::io::Error::other)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await?;
    Ok(NodeClient::new(ch).max_decoding_message_size(64 << 20))
}

pub(crate) fn entry(spiffe: String, parent: &str, uid: usize) -> types::Entry {
    types::Entry {
        spiffe_id: spiffe,
        parent_id: parent.into(),
        selectors: vec![types::Selector {
            r#type: "unix".into(),
            value: format!("uid:{uid}"),
        }],
        ..Default::default()
    }
}

/// A small deterministic generator: the bench picks "random" agents reproducibly.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

pub async fn fanout(
    bin_dir: &Path,
    agents: usize,
    per_agent: usize,
    creates: usize,
) -> Result<Fanout> {
    let server_bin = bin_dir.join("sigil-server");
    let dir = tempfile::tempdir()?;
    let admin_path = dir.path().join("admin.sock");
    let admin_s = admin_path.to_string_lossy().to_string();
    let (_server, port) = crate::start_server(&server_bin, dir.path(), &admin_path).await?;
    let mut admin = sigil_server::cli::connect(&admin_s).await?;
    let roots = admin
        .get_bundle(apb::GetBundleRequest {})
        .await?
        .into_inner()
        .x509_authorities;

    // Node attestation, for real: a join token each, a key, a CSR, AttestAgent over TLS.
    eprintln!("  attesting {agents} agents");
    let mut tokens = Vec::with_capacity(agents);
    for _ in 0..agents {
        tokens.push(
            admin
                .create_join_token(apb::CreateJoinTokenRequest {
                    ttl: 3600,
                    spiffe_id: String::new(),
                })
                .await?
                .into_inner()
                .value,
        );
    }
    let attested: Vec<(String, Vec<u8>, KeyPair)> = futures::stream::iter(tokens)
        .map(|token| {
            let roots = roots.clone();
            async move {
                let key = KeyPair::generate()?;
                let resp = channel(port, &roots, None)
                    .await?
                    .attest_agent(pb::AttestAgentRequest {
                        join_token: token,
                        csr: csr(&key)?,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                let svid = resp.svid.context("no SVID")?;
                anyhow::Ok((svid.spiffe_id, svid.cert_chain[0].clone(), key))
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;

    eprintln!("  creating {per_agent} entries per agent");
    let all: Vec<types::Entry> = attested
        .iter()
        .enumerate()
        .flat_map(|(a, (id, ..))| {
            (0..per_agent).map(move |i| entry(format!("spiffe://{TRUST_DOMAIN}/a{a}/w{i}"), id, i))
        })
        .collect();
    for batch in all.chunks(1000) {
        let r = admin
            .batch_create_entry(apb::BatchCreateEntryRequest {
                entries: batch.to_vec(),
            })
            .await?
            .into_inner();
        if r.results
            .iter()
            .any(|r| r.status.as_ref().is_some_and(|s| s.code != 0))
        {
            bail!("creating the initial entries failed");
        }
    }

    // Every agent opens its stream and reads its full set; then reports what else it gets.
    eprintln!("  opening {agents} sync streams (mTLS)");
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<Seen>();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<(usize, usize)>();
    let mut clients = Vec::with_capacity(agents);
    for (a, (_, cert, key)) in attested.iter().enumerate() {
        let mut client = channel(port, &roots, Some((cert.clone(), key))).await?;
        let mut stream = client
            .sync_entries(pb::SyncEntriesRequest {})
            .await?
            .into_inner();
        clients.push(client);
        let (seen_tx, ready_tx) = (seen_tx.clone(), ready_tx.clone());
        tokio::spawn(async move {
            let mut initial = 0;
            loop {
                let Ok(Some(m)) = stream.message().await else {
                    return;
                };
                initial += m.entries.len();
                if m.last {
                    let _ = ready_tx.send((a, initial));
                    break;
                }
            }
            while let Ok(Some(m)) = stream.message().await {
                let bytes = prost::Message::encoded_len(&m);
                let ids = m.entries.iter().map(|e| e.id.clone()).collect();
                let _ = seen_tx.send(Seen {
                    agent: a,
                    ids,
                    bytes,
                    at: Instant::now(),
                });
            }
        });
    }
    for _ in 0..agents {
        let (a, n) = tokio::time::timeout(Duration::from_secs(120), ready_rx.recv())
            .await
            .context("initial sync timed out")?
            .context("a stream ended")?;
        if n != per_agent {
            bail!("agent {a} got {n} entries, expected {per_agent}");
        }
    }

    let mut rng = Lcg(42);
    let mut owner: HashMap<String, usize> = HashMap::new();
    let (mut stray_messages, mut stray_bytes) = (0u64, 0u64);
    let mut account = |s: &Seen, owner: &HashMap<String, usize>| {
        if s.ids.is_empty() || s.ids.iter().any(|id| owner.get(id) != Some(&s.agent)) {
            stray_messages += 1;
            stray_bytes += s.bytes as u64;
        }
    };

    // Single-entry creates, one at a time: from the call to delivery on the owning stream.
    eprintln!("  {creates} single-entry creates");
    let mut lat = Vec::with_capacity(creates);
    for n in 0..creates {
        let a = rng.below(agents);
        let t0 = Instant::now();
        let r = admin
            .batch_create_entry(apb::BatchCreateEntryRequest {
                entries: vec![entry(
                    format!("spiffe://{TRUST_DOMAIN}/a{a}/new{n}"),
                    &attested[a].0,
                    100_000 + n,
                )],
            })
            .await?
            .into_inner();
        let id = r.results[0].id.clone();
        owner.insert(id.clone(), a);
        loop {
            let s = tokio::time::timeout(Duration::from_secs(10), seen_rx.recv())
                .await
                .context("a create never reached its agent")?
                .context("streams ended")?;
            account(&s, &owner);
            if s.agent == a && s.ids.contains(&id) {
                lat.push(s.at.duration_since(t0).as_secs_f64() * 1e3);
                break;
            }
        }
    }

    // Writes per second with every stream open: 16 creates in flight.
    let burst = 1000;
    let picks: Vec<usize> = (0..burst).map(|_| rng.below(agents)).collect();
    let t0 = Instant::now();
    let results: Vec<(usize, String)> = futures::stream::iter(picks.into_iter().enumerate())
        .map(|(n, a)| {
            let mut admin = admin.clone();
            let parent = attested[a].0.clone();
            async move {
                let r = admin
                    .batch_create_entry(apb::BatchCreateEntryRequest {
                        entries: vec![entry(
                            format!("spiffe://{TRUST_DOMAIN}/a{a}/burst{n}"),
                            &parent,
                            200_000 + n,
                        )],
                    })
                    .await?
                    .into_inner();
                anyhow::Ok((a, r.results[0].id.clone()))
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let writes_per_s = burst as f64 / t0.elapsed().as_secs_f64();
    let mut outstanding: std::collections::HashSet<String> =
        results.iter().map(|(_, id)| id.clone()).collect();
    for (a, id) in results {
        owner.insert(id, a);
    }
    // Every burst entry reaches its agent (none lost), and nothing else moves.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !outstanding.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let s = tokio::time::timeout(left, seen_rx.recv())
            .await
            .context("burst entries never all arrived")?
            .context("streams ended")?;
        account(&s, &owner);
        for id in &s.ids {
            if owner.get(id) == Some(&s.agent) {
                outstanding.remove(id);
            }
        }
    }
    // Anything late to unconcerned agents.
    while let Ok(Some(s)) = tokio::time::timeout(Duration::from_millis(500), seen_rx.recv()).await {
        account(&s, &owner);
    }
    drop(clients);

    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    Ok(Fanout {
        agents,
        entries: agents * per_agent,
        creates,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        stray_messages,
        stray_bytes,
        writes_per_s,
    })
}

/// From `entry create` to the new SVID on a real agent's Workload API stream: p50, p99 (ms).
pub async fn entry_to_svid(bin_dir: &Path, runs: usize) -> Result<(f64, f64)> {
    let stack = Stack::start(bin_dir, &[]).await?;
    let mut admin = sigil_server::cli::connect(&stack.admin.to_string_lossy()).await?;
    let mut client = crate::client(&stack.api).await?;
    let mut req = tonic::Request::new(sigil_proto::workload::X509svidRequest {});
    req.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    let mut stream = client.fetch_x509svid(req).await?.into_inner();
    stream.message().await?.context("no first response")?;
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let mut lat = Vec::with_capacity(runs);
    for n in 0..runs {
        let id = format!("spiffe://{TRUST_DOMAIN}/e2e/{n}");
        let t0 = Instant::now();
        admin
            .batch_create_entry(apb::BatchCreateEntryRequest {
                entries: vec![types::Entry {
                    spiffe_id: id.clone(),
                    parent_id: stack.node.clone(),
                    selectors: vec![types::Selector {
                        r#type: "unix".into(),
                        value: format!("uid:{uid}"),
                    }],
                    ..Default::default()
                }],
            })
            .await?;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .context("the new SVID never reached the Workload API")??
                .context("the Workload API stream ended")?;
            if m.svids.iter().any(|s| s.spiffe_id == id) {
                lat.push(t0.elapsed().as_secs_f64() * 1e3);
                break;
            }
        }
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    Ok((pct(0.5), pct(0.99)))
}
