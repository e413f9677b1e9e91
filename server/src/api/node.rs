//! The agent API (`sigil.agent.v1.Node`), served over TLS.
//!
//! `AttestAgent` takes a join token or a `k8s_psat` payload; every other call requires the
//! caller's verified agent SVID and an agent record that is neither evicted nor banned. Agents
//! may only obtain SVIDs for the entries they are authorized for (parented to them, directly or
//! through node aliases).

use super::{Shared, entry_status};
use crate::datastore::{AgentRecord, Attestation};
use crate::tls::PeerIdentity;
use sigil_proto::agent as pb;
use sigil_proto::agent::node_server::Node;
use sigil_proto::types;
use sigil_spiffe::{Selector, SpiffeId};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Entries per `SyncEntriesResponse` chunk: keeps every message far below gRPC's 4 MiB default
/// limit (an entry is a few hundred bytes), so any number of entries syncs.
pub const SYNC_CHUNK: usize = 2000;
/// CSRs accepted in one `SignX509Svids` call.
pub const MAX_CSRS_PER_CALL: usize = 1000;

/// The Node service.
#[derive(Debug, Clone)]
pub struct NodeApi {
    pub shared: Shared,
    /// `NodeAttestor "k8s_psat"`, if configured.
    pub psat: Option<Arc<sigil_k8s_psat::Attestor>>,
}

/// What a node attestor says about the agent.
struct AttestedNode {
    id: SpiffeId,
    attestation_type: &'static str,
    selectors: Vec<Selector>,
    can_reattest: bool,
}

pub(crate) fn bundle_to_proto(b: &sigil_spiffe::bundle::Bundle) -> types::Bundle {
    types::Bundle {
        trust_domain: b.trust_domain.as_str().to_string(),
        x509_authorities: b.x509_authorities.clone(),
        jwt_authorities: b
            .jwt_authorities
            .iter()
            .map(|k| types::JwtKey {
                key_id: k.key_id.clone(),
                public_key: k.public_key_der.clone(),
                expires_at: k.expires_at,
            })
            .collect(),
        refresh_hint: b.refresh_hint.unwrap_or(0),
        sequence_number: b.sequence_number.unwrap_or(0),
        tainted_x509_authorities: b.tainted_x509_authorities.iter().cloned().collect(),
        tainted_jwt_authorities: b.tainted_jwt_authorities.iter().cloned().collect(),
    }
}

// === impl NodeApi ===

impl NodeApi {
    /// The service with the node attestors the configuration names (join tokens always).
    pub fn new(shared: Shared) -> Result<Self, sigil_k8s_psat::ConfigureError> {
        let psat = shared
            .cfg
            .k8s_psat
            .clone()
            .map(|c| sigil_k8s_psat::Attestor::configure(Some(shared.cfg.trust_domain.clone()), c))
            .transpose()?
            .map(Arc::new);
        Ok(Self { shared, psat })
    }

    /// Join-token attestation: the token is consumed (single use) and names the agent.
    async fn attest_join_token(&self, token: &str) -> Result<AttestedNode, Status> {
        let token = token.trim();
        if token.is_empty() {
            return Err(Status::invalid_argument("join_token is required"));
        }
        let id = SpiffeId::from_path(
            self.shared.ca.trust_domain(),
            &format!("/spire/agent/join_token/{token}"),
        )
        .map_err(|e| Status::invalid_argument(format!("invalid join token: {e}")))?;
        let valid = self
            .shared
            .ds
            .consume_join_token(token, crate::now_unix())
            .await
            .map_err(|e| super::internal("consuming the join token", &e))?;
        if !valid {
            tracing::warn!(agent = %id, "attestation refused: join token unknown, expired or already used");
            return Err(Status::permission_denied(
                "failed to attest: join token does not exist or has already been used",
            ));
        }
        Ok(AttestedNode {
            id,
            attestation_type: "join_token",
            selectors: Vec::new(),
            can_reattest: false,
        })
    }

    /// k8s_psat attestation: the cluster's API server vouches for the token (see
    /// `sigil_k8s_psat`). Refusals carry SPIRE's code and reason; the token is never logged.
    async fn attest_psat(&self, payload: &[u8]) -> Result<AttestedNode, Status> {
        let psat = self.psat.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "error getting node attestor: could not find node attestor type \"k8s_psat\"",
            )
        })?;
        let attested = psat.attest(payload).await.map_err(|e| {
            tracing::warn!(attestor = sigil_k8s_psat::PLUGIN_NAME, reason = %e, "attestation refused");
            let code = match e.code() {
                sigil_k8s_psat::Code::InvalidArgument => tonic::Code::InvalidArgument,
                sigil_k8s_psat::Code::PermissionDenied => tonic::Code::PermissionDenied,
                sigil_k8s_psat::Code::Internal => tonic::Code::Internal,
                sigil_k8s_psat::Code::FailedPrecondition => tonic::Code::FailedPrecondition,
            };
            Status::new(code, e.to_string())
        })?;
        Ok(AttestedNode {
            id: attested.agent_id,
            attestation_type: sigil_k8s_psat::PLUGIN_NAME,
            selectors: attested.selectors,
            can_reattest: attested.can_reattest,
        })
    }
    /// The caller's agent ID, checked against the agent records: the agent must be attested,
    /// not banned, and present the agent SVID it was last issued. A renewed SVID becomes the
    /// only one accepted the first time the agent presents it; until then the previous one
    /// keeps working, so a renewal whose answer was lost does not lock the agent out (SPIRE's
    /// rule).
    async fn authenticate<T>(&self, req: &Request<T>) -> Result<AgentRecord, Status> {
        let peer = req
            .extensions()
            .get::<PeerIdentity>()
            .ok_or_else(|| Status::unauthenticated("no TLS peer information"))?;
        let id = peer
            .spiffe_id
            .clone()
            .ok_or_else(|| Status::unauthenticated("an agent SVID is required for this call"))?;
        let mut rec = self
            .shared
            .ds
            .get_agent(&id)
            .await
            .map_err(|e| super::internal("reading the agent record", &e))?
            .ok_or_else(|| {
                Status::permission_denied(format!("agent {id} is not attested (evicted?)"))
            })?;
        if rec.banned {
            return Err(Status::permission_denied(format!("agent {id} is banned")));
        }
        let presented = peer.serial_hex.as_deref().unwrap_or_default();
        if same_serial(presented, &rec.serial) {
            return Ok(rec);
        }
        if same_serial(presented, &rec.new_serial) {
            self.shared
                .ds
                .activate_agent_serial(&id, &rec.new_serial)
                .await
                .map_err(|e| super::internal("activating the renewed agent SVID", &e))?;
            rec.serial = std::mem::take(&mut rec.new_serial);
            return Ok(rec);
        }
        tracing::warn!(agent = %id, serial = presented, "agent presented an SVID that is no longer current");
        Err(Status::permission_denied(format!(
            "agent {id}: SVID does not match expected serial number"
        )))
    }

    /// Checks the CSR and signs an agent SVID, on the blocking pool: signing is CPU work that
    /// would otherwise stall the async workers serving every other agent.
    async fn sign_agent_svid(
        &self,
        id: &SpiffeId,
        pk: rcgen::SubjectPublicKeyInfo,
    ) -> Result<crate::ca::SignedSvid, Status> {
        let (ca, id, ttl) = (
            self.shared.ca.clone(),
            id.clone(),
            self.shared.cfg.agent_ttl,
        );
        let signed = blocking("signing the agent SVID", move || {
            ca.sign_x509_svid(&pk, &id, &[], ttl, crate::now_unix())
                .map_err(|e| super::internal("signing the agent SVID", &e))
        })
        .await?;
        self.shared.metrics.inc(
            crate::metrics::SVIDS_SIGNED,
            crate::metrics::SVIDS_SIGNED_HELP,
            &[("type", "agent")],
        );
        Ok(signed)
    }
}

/// The own bundle and the federated ones, as sent on sync streams.
async fn current_bundles(shared: &Shared) -> (types::Bundle, Vec<types::Bundle>) {
    let bundle = bundle_to_proto(&shared.ca.bundle());
    let federated = match shared.ds.list_federated_bundles().await {
        Ok(b) => b.iter().map(bundle_to_proto).collect(),
        Err(e) => {
            tracing::error!(error = %e, "listing federated bundles");
            Vec::new()
        }
    };
    (bundle, federated)
}

/// Sends one snapshot (`delta = false`) or delta in chunks of [`SYNC_CHUNK`] entries: the
/// bundles (if any) and the deletions ride on the first chunk, `last` on the last. False if
/// the agent went away.
async fn send_chunks(
    tx: &tokio::sync::mpsc::Sender<Result<pb::SyncEntriesResponse, Status>>,
    number: u64,
    delta: bool,
    entries: Vec<std::sync::Arc<crate::entry::Entry>>,
    deletes: Vec<String>,
    bundles: Option<(types::Bundle, Vec<types::Bundle>)>,
) -> bool {
    let mut chunks: Vec<Vec<types::Entry>> = entries
        .chunks(SYNC_CHUNK)
        .map(|c| c.iter().map(|e| e.to_proto()).collect())
        .collect();
    if chunks.is_empty() {
        chunks.push(Vec::new());
    }
    let n = chunks.len();
    let mut first = Some((bundles, deletes));
    for (i, chunk) in chunks.into_iter().enumerate() {
        let (bundles, deleted_entry_ids) = first.take().unwrap_or_default();
        let (bundle, federated_bundles) = match bundles {
            Some((b, f)) => (Some(b), f),
            None => (None, Vec::new()),
        };
        let msg = pb::SyncEntriesResponse {
            entries: chunk,
            bundle,
            federated_bundles,
            last: i + 1 == n,
            snapshot: number,
            delta,
            deleted_entry_ids,
        };
        if tx.send(Ok(msg)).await.is_err() {
            return false;
        }
    }
    true
}

/// Runs CPU-bound work (signing, CSR verification) on the blocking pool.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| super::internal(what, &e))?
}

/// Parses and verifies a CSR (its signature proves possession of the key) off the async workers.
async fn csr_public_key(csr: Vec<u8>) -> Result<rcgen::SubjectPublicKeyInfo, Status> {
    blocking("verifying the CSR", move || {
        crate::ca::Ca::csr_public_key(&csr).map_err(|e| Status::invalid_argument(e.to_string()))
    })
    .await
}

/// Whether two hex serial numbers are the same number (leading zeros and case aside); an empty
/// serial matches nothing.
fn same_serial(a: &str, b: &str) -> bool {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    !a.is_empty() && a.eq_ignore_ascii_case(b)
}

fn svid_proto(id: &SpiffeId, s: &crate::ca::SignedSvid) -> types::X509Svid {
    types::X509Svid {
        spiffe_id: id.to_string(),
        cert_chain: s.chain.clone(),
        expires_at: s.expires_at,
    }
}

type SyncStream = Pin<Box<dyn Stream<Item = Result<pb::SyncEntriesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Node for NodeApi {
    async fn attest_agent(
        &self,
        req: Request<pb::AttestAgentRequest>,
    ) -> Result<Response<pb::AttestAgentResponse>, Status> {
        let req = req.into_inner();
        // Verify the CSR before anything else, so a malformed request neither burns a join
        // token nor costs the API server a TokenReview.
        let pk = csr_public_key(req.csr.clone()).await?;
        let node = match req.attestation_type.as_str() {
            "" | "join_token" => self.attest_join_token(&req.join_token).await?,
            sigil_k8s_psat::PLUGIN_NAME => self.attest_psat(&req.payload).await?,
            other => {
                return Err(Status::failed_precondition(format!(
                    "error getting node attestor: could not find node attestor type {other:?}"
                )));
            }
        };
        let id = node.id;
        if crate::datastore::is_node_alias_parent(&id) {
            return Err(Status::internal(
                "agent ID cannot collide with the server ID",
            ));
        }
        // Checked before signing, as SPIRE does; `record_attestation` checks again atomically.
        let banned = || {
            tracing::warn!(agent = %id, "attestation refused: agent is banned");
            Status::permission_denied("failed to attest: agent is banned")
        };
        let existing = self
            .shared
            .ds
            .get_agent(&id)
            .await
            .map_err(|e| super::internal("reading the agent record", &e))?;
        if existing.as_ref().is_some_and(|a| a.banned) {
            return Err(banned());
        }
        let svid = self.sign_agent_svid(&id, pk).await?;
        let now = crate::now_unix();
        let recorded = self
            .shared
            .ds
            .record_attestation(&AgentRecord {
                spiffe_id: id.clone(),
                attestation_type: node.attestation_type.into(),
                serial: svid.serial_hex.clone(),
                new_serial: String::new(),
                expires_at: svid.expires_at,
                banned: false,
                created_at: now,
                last_seen: now,
                selectors: node.selectors,
                can_reattest: node.can_reattest,
            })
            .await
            .map_err(|e| super::internal("recording the agent", &e))?;
        if recorded == Attestation::Banned {
            return Err(banned());
        }
        if existing.is_some() {
            tracing::info!(agent = %id, attestor = node.attestation_type, "agent re-attested");
        } else {
            tracing::info!(agent = %id, attestor = node.attestation_type, "agent attested");
        }
        Ok(Response::new(pb::AttestAgentResponse {
            svid: Some(svid_proto(&id, &svid)),
            bundle: Some(bundle_to_proto(&self.shared.ca.bundle())),
        }))
    }

    async fn renew_agent(
        &self,
        req: Request<pb::RenewAgentRequest>,
    ) -> Result<Response<pb::RenewAgentResponse>, Status> {
        let rec = self.authenticate(&req).await?;
        // SPIRE's rule: an agent that can attest again renews that way, with fresh evidence,
        // so its selectors stay current.
        if rec.can_reattest {
            return Err(Status::permission_denied(
                "agent must reattest instead of renew",
            ));
        }
        let id = rec.spiffe_id.clone();
        let pk = csr_public_key(req.into_inner().csr).await?;
        let svid = self.sign_agent_svid(&id, pk).await?;
        // The new serial is pending until the agent presents it (see `authenticate`).
        self.shared
            .ds
            .upsert_agent(&AgentRecord {
                new_serial: svid.serial_hex.clone(),
                last_seen: crate::now_unix(),
                ..rec
            })
            .await
            .map_err(|e| super::internal("recording the renewed agent SVID", &e))?;
        Ok(Response::new(pb::RenewAgentResponse {
            svid: Some(svid_proto(&id, &svid)),
        }))
    }

    type SyncEntriesStream = SyncStream;

    async fn sync_entries(
        &self,
        req: Request<pb::SyncEntriesRequest>,
    ) -> Result<Response<SyncStream>, Status> {
        let agent = self.authenticate(&req).await?.spiffe_id;
        let shared = self.shared.clone();
        // Registered before anything is read, so no write can fall between the full set sent
        // first and the deltas after it.
        let (sub, entries) = shared.ds.subscribe_sync(&agent);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::SyncEntriesResponse, Status>>(4);
        tokio::spawn(async move {
            // Evicted or banned between the authentication and the registration: the hub
            // could not have told this stream.
            match shared.ds.get_agent(&agent).await {
                Ok(Some(r)) if !r.banned => {}
                _ => {
                    let _ = tx
                        .send(Err(Status::permission_denied(format!(
                            "agent {agent} is no longer attested"
                        ))))
                        .await;
                    return;
                }
            }
            let mut number = 1u64;
            let bundles = Some(current_bundles(&shared).await);
            if !send_chunks(&tx, number, false, entries, Vec::new(), bundles).await {
                return;
            }
            loop {
                // Waits for the next committed change concerning this agent; changes that
                // arrive meanwhile merge into one delta.
                tokio::select! {
                    _ = sub.changed() => {}
                    _ = tx.closed() => return,
                }
                let pending = sub.take();
                if let Some(why) = pending.closed {
                    let _ = tx.send(Err(Status::permission_denied(why))).await;
                    return;
                }
                if pending.is_empty() {
                    continue;
                }
                number += 1;
                let bundles = if pending.bundle {
                    Some(current_bundles(&shared).await)
                } else {
                    None
                };
                let mut upserts: Vec<_> = pending.upserts.into_values().collect();
                upserts.sort_by(|a, b| a.id.cmp(&b.id));
                let mut deletes: Vec<String> = pending.deletes.into_iter().collect();
                deletes.sort();
                if !send_chunks(&tx, number, true, upserts, deletes, bundles).await {
                    return;
                }
                if let Some(since) = pending.since {
                    shared.metrics.observe(
                        "sigil_server_entry_sync_lag_seconds",
                        "From a committed change (entry, alias or bundle) to its delta handed to the agent's sync stream.",
                        &[],
                        since.elapsed().as_secs_f64(),
                    );
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn sign_x509_svids(
        &self,
        req: Request<pb::SignX509SvidsRequest>,
    ) -> Result<Response<pb::SignX509SvidsResponse>, Status> {
        let agent = self.authenticate(&req).await?.spiffe_id;
        let params = req.into_inner().params;
        if params.len() > MAX_CSRS_PER_CALL {
            return Err(Status::invalid_argument(format!(
                "too many CSRs in one call: {} (max {MAX_CSRS_PER_CALL})",
                params.len()
            )));
        }
        let authorized: HashMap<String, _> = self
            .shared
            .ds
            .authorized_entries(&agent)
            .into_iter()
            .map(|e| (e.id.clone(), e))
            .collect();
        let shared = self.shared.clone();
        // Signing is CPU work: keep it off the async workers.
        let results = tokio::task::spawn_blocking(move || {
            let now = crate::now_unix();
            params
                .into_iter()
                .map(|p| {
                    let Some(entry) = authorized.get(&p.entry_id) else {
                        return pb::SvidResult {
                            entry_id: p.entry_id.clone(),
                            status: Some(entry_status(
                                tonic::Code::PermissionDenied,
                                format!("entry {:?} is not authorized for this agent", p.entry_id),
                            )),
                            svid: None,
                        };
                    };
                    let ttl = match entry.x509_svid_ttl {
                        0 => shared.cfg.default_x509_svid_ttl,
                        s => Duration::from_secs(s as u64),
                    };
                    let signed = crate::ca::Ca::csr_public_key(&p.csr)
                        .map_err(|e| (tonic::Code::InvalidArgument, e.to_string()))
                        .and_then(|pk| {
                            shared
                                .ca
                                .sign_x509_svid(&pk, &entry.spiffe_id, &entry.dns_names, ttl, now)
                                .map_err(|e| super::internal_status("signing an X509-SVID", &e))
                        });
                    match signed {
                        Ok(s) => pb::SvidResult {
                            entry_id: p.entry_id,
                            status: Some(entry_status(tonic::Code::Ok, "OK".into())),
                            svid: Some(svid_proto(&entry.spiffe_id, &s)),
                        },
                        Err((code, msg)) => pb::SvidResult {
                            entry_id: p.entry_id,
                            status: Some(entry_status(code, msg)),
                            svid: None,
                        },
                    }
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| super::internal("running the signing task", &e))?;
        let ok = results
            .iter()
            .filter(|r| r.status.as_ref().is_some_and(|s| s.code == 0))
            .count();
        let m = &self.shared.metrics;
        use crate::metrics::*;
        m.add(
            SVIDS_SIGNED,
            SVIDS_SIGNED_HELP,
            &[("type", "x509")],
            ok as f64,
        );
        if results.len() > ok {
            m.add(
                SIGN_FAILURES,
                SIGN_FAILURES_HELP,
                &[("type", "x509")],
                (results.len() - ok) as f64,
            );
        }
        Ok(Response::new(pb::SignX509SvidsResponse { results }))
    }

    async fn sign_jwt_svid(
        &self,
        req: Request<pb::SignJwtSvidRequest>,
    ) -> Result<Response<pb::SignJwtSvidResponse>, Status> {
        let agent = self.authenticate(&req).await?.spiffe_id;
        let req = req.into_inner();
        if req.audience.is_empty() || req.audience.iter().any(|a| a.is_empty()) {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let entry = self
            .shared
            .ds
            .authorized_entries(&agent)
            .into_iter()
            .find(|e| e.id == req.entry_id)
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "entry {:?} is not authorized for this agent",
                    req.entry_id
                ))
            })?;
        let ttl = match entry.jwt_svid_ttl {
            0 => self.shared.cfg.default_jwt_svid_ttl,
            s => Duration::from_secs(s as u64),
        };
        let ca = self.shared.ca.clone();
        let (token, expires_at) = blocking("signing a JWT-SVID", move || {
            ca.sign_jwt_svid(&entry.spiffe_id, &req.audience, ttl, crate::now_unix())
                .map_err(|e| super::internal("signing a JWT-SVID", &e))
        })
        .await?;
        self.shared.metrics.inc(
            crate::metrics::SVIDS_SIGNED,
            crate::metrics::SVIDS_SIGNED_HELP,
            &[("type", "jwt")],
        );
        Ok(Response::new(pb::SignJwtSvidResponse { token, expires_at }))
    }

    async fn new_downstream_x509ca(
        &self,
        req: Request<pb::NewDownstreamX509caRequest>,
    ) -> Result<Response<pb::NewDownstreamX509caResponse>, Status> {
        let caller = self.authenticate_downstream(&req)?;
        let req = req.into_inner();
        let ttl = Duration::from_secs(u64::try_from(req.preferred_ttl).unwrap_or(0));
        let ca = self.shared.ca.clone();
        let signed = blocking("signing a downstream CA", move || {
            let pk = crate::ca::Ca::csr_public_key(&req.csr)
                .map_err(|e| Status::invalid_argument(format!("invalid CSR: {e}")))?;
            ca.sign_downstream_ca(&pk, ttl, crate::now_unix())
                .map_err(|e| super::internal("signing a downstream CA", &e))
        })
        .await?;
        tracing::info!(downstream = %caller, "signed a downstream X.509 CA");
        self.shared.metrics.inc(
            crate::metrics::SVIDS_SIGNED,
            crate::metrics::SVIDS_SIGNED_HELP,
            &[("type", "downstream_ca")],
        );
        Ok(Response::new(pb::NewDownstreamX509caResponse {
            ca_cert_chain: signed.chain,
            x509_authorities: signed.roots,
        }))
    }

    async fn get_downstream_bundle(
        &self,
        req: Request<pb::GetDownstreamBundleRequest>,
    ) -> Result<Response<types::Bundle>, Status> {
        self.downstream_bundle(&req).await.map(Response::new)
    }

    async fn publish_jwt_authority(
        &self,
        req: Request<pb::PublishJwtAuthorityRequest>,
    ) -> Result<Response<pb::PublishJwtAuthorityResponse>, Status> {
        let caller = self.authenticate_downstream(&req)?;
        let key = req
            .into_inner()
            .jwt_authority
            .ok_or_else(|| Status::invalid_argument("missing JWT authority"))?;
        let key = sigil_spiffe::bundle::JwtAuthority {
            key_id: key.key_id,
            public_key_der: key.public_key,
            expires_at: key.expires_at,
        };
        // The same checks as a bundle's JWT authority: a key ID and a usable public key.
        let mut check = sigil_spiffe::bundle::Bundle::new(self.shared.ca.trust_domain().clone());
        check
            .add_jwt_authority(key.clone())
            .map_err(|e| Status::invalid_argument(format!("invalid JWT authority: {e}")))?;
        let ca = self.shared.ca.clone();
        let kid = key.key_id.clone();
        let changed = blocking("publishing a JWT authority", move || {
            ca.publish_jwt_authority(key).map_err(|e| match e {
                crate::ca::CaError::Refused { message, .. } => Status::resource_exhausted(message),
                other => super::internal("publishing a JWT authority", &other),
            })
        })
        .await?;
        if changed {
            tracing::info!(downstream = %caller, %kid, "downstream JWT authority published");
            self.shared.ds.bundle_changed();
        }
        let b = self.shared.ca.bundle();
        Ok(Response::new(pb::PublishJwtAuthorityResponse {
            jwt_authorities: bundle_to_proto(&b).jwt_authorities,
        }))
    }
}

impl NodeApi {
    async fn downstream_bundle<T>(&self, req: &Request<T>) -> Result<types::Bundle, Status> {
        self.authenticate_downstream(req)?;
        Ok(bundle_to_proto(&self.shared.ca.bundle()))
    }

    /// The caller of a downstream-server call: its X509-SVID (verified by TLS) must name an
    /// entry marked `downstream` (SPIRE's rule and message).
    fn authenticate_downstream<T>(&self, req: &Request<T>) -> Result<SpiffeId, Status> {
        let id = req
            .extensions()
            .get::<PeerIdentity>()
            .and_then(|p| p.spiffe_id.clone())
            .ok_or_else(|| Status::unauthenticated("an X509-SVID is required for this call"))?;
        let downstream = self
            .shared
            .ds
            .list_entries()
            .iter()
            .any(|e| e.downstream && e.spiffe_id == id);
        if !downstream {
            tracing::warn!(caller = %id, "downstream CA refused: no downstream entry");
            return Err(Status::permission_denied(
                "caller is not a downstream workload",
            ));
        }
        Ok(id)
    }
}
