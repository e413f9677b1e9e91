//! The admin API (`sigil.admin.v1.Admin`) on the server's Unix socket. The socket is mode 0600,
//! and callers must also run as the server's own uid or root: defence in depth in case the
//! socket's directory is shared.

use super::node::bundle_to_proto;
use super::{Shared, entry_status};
use crate::datastore::StoreError;
use crate::entry::Entry;
use sigil_proto::admin as pb;
use sigil_proto::admin::admin_server::Admin;
use sigil_proto::types;
use sigil_spiffe::bundle::{Bundle, JwtAuthority};
use sigil_spiffe::{Selector, SpiffeId, TrustDomain};
use std::collections::BTreeSet;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Code, Request, Response, Status};

/// Default join token lifetime (SPIRE's default: 600 s).
pub const DEFAULT_TOKEN_TTL: i32 = 600;
const MAX_PAGE: usize = 1000;
const MAX_BATCH: usize = 10_000;

/// The Admin service.
#[derive(Debug, Clone)]
pub struct AdminApi {
    pub shared: Shared,
}

fn store_status(e: &StoreError) -> (Code, String) {
    match e {
        StoreError::NotFound(_) => (Code::NotFound, e.to_string()),
        StoreError::AlreadyExists => (Code::AlreadyExists, e.to_string()),
        _ => super::internal_status("writing to the datastore", e),
    }
}

fn authorize<T>(req: &Request<T>) -> Result<(), Status> {
    let Some(cred) = req
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|c| c.peer_cred)
    else {
        return Err(Status::permission_denied("caller credentials unavailable"));
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if cred.uid() != me && cred.uid() != 0 {
        return Err(Status::permission_denied(format!(
            "uid {} may not use the admin API",
            cred.uid()
        )));
    }
    Ok(())
}

fn parse_td(s: &str) -> Result<TrustDomain, Status> {
    TrustDomain::from_id_or_name(s)
        .map_err(|e| Status::invalid_argument(format!("invalid trust_domain {s:?}: {e}")))
}

fn bundle_from_proto(b: &types::Bundle) -> Result<Bundle, Status> {
    let td = parse_td(&b.trust_domain)?;
    let mut out = Bundle::new(td);
    for (i, der) in b.x509_authorities.iter().enumerate() {
        x509_parser::parse_x509_certificate(der).map_err(|e| {
            Status::invalid_argument(format!("x509_authorities[{i}]: not a certificate: {e}"))
        })?;
        out.x509_authorities.push(der.clone());
    }
    for (i, k) in b.jwt_authorities.iter().enumerate() {
        if k.key_id.is_empty() {
            return Err(Status::invalid_argument(format!(
                "jwt_authorities[{i}]: key_id is required"
            )));
        }
        out.jwt_authorities.push(JwtAuthority {
            key_id: k.key_id.clone(),
            public_key_der: k.public_key.clone(),
            expires_at: k.expires_at,
        });
    }
    out.refresh_hint = (b.refresh_hint != 0).then_some(b.refresh_hint);
    out.sequence_number = (b.sequence_number != 0).then_some(b.sequence_number);
    Ok(out)
}

fn matches_selectors(entry: &Entry, want: &BTreeSet<Selector>, mode: &str) -> bool {
    let have: BTreeSet<&Selector> = entry.selectors.iter().collect();
    let want: BTreeSet<&Selector> = want.iter().collect();
    match mode {
        "subset" => have.is_subset(&want),
        "superset" => have.is_superset(&want),
        "any" => !have.is_disjoint(&want),
        _ => have == want,
    }
}

/// One batch call: per-entry results in request order, and the entries that passed parsing
/// (with their positions) on their way to the datastore.
struct Batch<'a> {
    entries: &'a [types::Entry],
    results: Vec<Option<pb::EntryResult>>,
    valid: Vec<Entry>,
    positions: Vec<usize>,
}

impl<'a> Batch<'a> {
    fn new(entries: &'a [types::Entry]) -> Self {
        Self {
            entries,
            results: vec![None; entries.len()],
            valid: Vec::new(),
            positions: Vec::new(),
        }
    }

    fn refuse(&mut self, i: usize, code: Code, message: String) {
        let p = &self.entries[i];
        self.results[i] = Some(pb::EntryResult {
            status: Some(entry_status(code, message)),
            entry: Some(p.clone()),
            id: p.id.clone(),
        });
    }

    fn accept(&mut self, i: usize, e: Entry) {
        self.valid.push(e);
        self.positions.push(i);
    }

    /// Files the datastore's per-entry outcomes (in the order of `valid`) and builds the
    /// response.
    fn finish(mut self, stored: Vec<Result<Entry, StoreError>>) -> pb::BatchEntryResponse {
        for (pos, res) in std::mem::take(&mut self.positions).into_iter().zip(stored) {
            match res {
                Ok(e) => {
                    self.results[pos] = Some(pb::EntryResult {
                        status: Some(entry_status(Code::Ok, "OK".into())),
                        id: e.id.clone(),
                        entry: Some(e.to_proto()),
                    })
                }
                Err(err) => {
                    let (code, msg) = store_status(&err);
                    self.refuse(pos, code, msg);
                }
            }
        }
        pb::BatchEntryResponse {
            results: self.results.into_iter().flatten().collect(),
        }
    }
}

// === impl AdminApi ===

impl AdminApi {
    fn td(&self) -> &TrustDomain {
        self.shared.ca.trust_domain()
    }
}

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn batch_create_entry(
        &self,
        req: Request<pb::BatchCreateEntryRequest>,
    ) -> Result<Response<pb::BatchEntryResponse>, Status> {
        authorize(&req)?;
        let entries = req.into_inner().entries;
        if entries.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "batch too large: {} entries (max {MAX_BATCH})",
                entries.len()
            )));
        }
        // Parse everything first; only valid entries reach the datastore.
        let mut batch = Batch::new(&entries);
        for (i, p) in entries.iter().enumerate() {
            match Entry::from_proto(p, self.td()) {
                Ok(e) if !e.id.is_empty() && self.shared.ds.get_entry(&e.id).is_some() => {
                    batch.refuse(
                        i,
                        Code::AlreadyExists,
                        format!("entry id {:?} already exists", e.id),
                    );
                }
                Ok(e) => batch.accept(i, e),
                Err(err) => batch.refuse(i, Code::InvalidArgument, err.to_string()),
            }
        }
        let stored = self
            .shared
            .ds
            .create_entries(std::mem::take(&mut batch.valid))
            .await;
        Ok(Response::new(batch.finish(stored)))
    }

    async fn batch_update_entry(
        &self,
        req: Request<pb::BatchUpdateEntryRequest>,
    ) -> Result<Response<pb::BatchEntryResponse>, Status> {
        authorize(&req)?;
        let entries = req.into_inner().entries;
        let mut batch = Batch::new(&entries);
        for (i, p) in entries.iter().enumerate() {
            if p.id.is_empty() {
                batch.refuse(
                    i,
                    Code::InvalidArgument,
                    "invalid id: the entry id is required for an update".into(),
                );
                continue;
            }
            match Entry::from_proto(p, self.td()) {
                Ok(e) => batch.accept(i, e),
                Err(err) => batch.refuse(i, Code::InvalidArgument, err.to_string()),
            }
        }
        let stored = self
            .shared
            .ds
            .update_entries(std::mem::take(&mut batch.valid))
            .await;
        Ok(Response::new(batch.finish(stored)))
    }

    async fn batch_delete_entry(
        &self,
        req: Request<pb::BatchDeleteEntryRequest>,
    ) -> Result<Response<pb::BatchEntryResponse>, Status> {
        authorize(&req)?;
        let ids = req.into_inner().ids;
        let results = self
            .shared
            .ds
            .delete_entries(&ids)
            .await
            .into_iter()
            .zip(&ids)
            .map(|(r, id)| match r {
                Ok(e) => pb::EntryResult {
                    status: Some(entry_status(Code::Ok, "OK".into())),
                    entry: Some(e.to_proto()),
                    id: id.clone(),
                },
                Err(err) => {
                    let (code, msg) = store_status(&err);
                    pb::EntryResult {
                        status: Some(entry_status(code, msg)),
                        entry: None,
                        id: id.clone(),
                    }
                }
            })
            .collect();
        Ok(Response::new(pb::BatchEntryResponse { results }))
    }

    async fn get_entry(
        &self,
        req: Request<pb::GetEntryRequest>,
    ) -> Result<Response<types::Entry>, Status> {
        authorize(&req)?;
        let id = &req.get_ref().id;
        self.shared
            .ds
            .get_entry(id)
            .map(|e| Response::new(e.to_proto()))
            .ok_or_else(|| Status::not_found(format!("entry {id:?} not found")))
    }

    async fn list_entries(
        &self,
        req: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        authorize(&req)?;
        let r = req.into_inner();
        let by_spiffe: Option<SpiffeId> = (!r.by_spiffe_id.is_empty())
            .then(|| r.by_spiffe_id.parse())
            .transpose()
            .map_err(|e: sigil_spiffe::IdError| {
                Status::invalid_argument(format!("invalid by_spiffe_id: {e}"))
            })?;
        let by_parent: Option<SpiffeId> = (!r.by_parent_id.is_empty())
            .then(|| r.by_parent_id.parse())
            .transpose()
            .map_err(|e: sigil_spiffe::IdError| {
                Status::invalid_argument(format!("invalid by_parent_id: {e}"))
            })?;
        let selectors: BTreeSet<Selector> = r
            .by_selectors
            .iter()
            .map(|s| {
                format!("{}:{}", s.r#type, s.value)
                    .parse()
                    .map_err(|e| Status::invalid_argument(format!("invalid by_selectors: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let mode = r.selector_match.as_str();
        if !["", "exact", "subset", "superset", "any"].contains(&mode) {
            return Err(Status::invalid_argument(format!(
                "invalid selector_match {mode:?} (exact, subset, superset or any)"
            )));
        }
        let page_size = match r.page_size {
            n if n < 0 => return Err(Status::invalid_argument("page_size must not be negative")),
            0 => MAX_PAGE,
            n => (n as usize).min(MAX_PAGE),
        };
        let mut out = Vec::new();
        let mut next = String::new();
        for e in self.shared.ds.list_entries() {
            if !r.page_token.is_empty() && e.id.as_str() <= r.page_token.as_str() {
                continue;
            }
            if by_spiffe.as_ref().is_some_and(|s| s != &e.spiffe_id)
                || by_parent.as_ref().is_some_and(|p| p != &e.parent_id)
                || (!r.by_hint.is_empty() && r.by_hint != e.hint)
                || (!selectors.is_empty() && !matches_selectors(&e, &selectors, mode))
            {
                continue;
            }
            if out.len() == page_size {
                next = out
                    .last()
                    .map(|x: &types::Entry| x.id.clone())
                    .unwrap_or_default();
                break;
            }
            out.push(e.to_proto());
        }
        Ok(Response::new(pb::ListEntriesResponse {
            entries: out,
            next_page_token: next,
        }))
    }

    async fn count_entries(
        &self,
        req: Request<pb::CountEntriesRequest>,
    ) -> Result<Response<pb::CountEntriesResponse>, Status> {
        authorize(&req)?;
        Ok(Response::new(pb::CountEntriesResponse {
            count: self.shared.ds.count_entries() as i64,
        }))
    }

    async fn get_bundle(
        &self,
        req: Request<pb::GetBundleRequest>,
    ) -> Result<Response<types::Bundle>, Status> {
        authorize(&req)?;
        Ok(Response::new(bundle_to_proto(&self.shared.ca.bundle())))
    }

    async fn get_authority_state(
        &self,
        req: Request<pb::GetAuthorityStateRequest>,
    ) -> Result<Response<pb::AuthorityStateResponse>, Status> {
        authorize(&req)?;
        super::authority::get_state(&self.shared, req.into_inner()).map(Response::new)
    }

    async fn change_authority(
        &self,
        req: Request<pb::ChangeAuthorityRequest>,
    ) -> Result<Response<pb::AuthorityState>, Status> {
        authorize(&req)?;
        super::authority::change(&self.shared, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_logger(
        &self,
        req: Request<pb::GetLoggerRequest>,
    ) -> Result<Response<pb::Logger>, Status> {
        authorize(&req)?;
        let (current, launch) = crate::logger::get()
            .ok_or_else(|| Status::unavailable("logging is not configured by this process"))?;
        Ok(Response::new(logger_proto(current, launch)))
    }

    async fn set_log_level(
        &self,
        req: Request<pb::SetLogLevelRequest>,
    ) -> Result<Response<pb::Logger>, Status> {
        authorize(&req)?;
        let wanted = req.into_inner().new_level;
        let level = crate::logger::Level::parse(&wanted)
            .ok_or_else(|| Status::invalid_argument(format!("invalid log level {wanted:?}")))?;
        let (current, launch) = crate::logger::set(level).map_err(Status::failed_precondition)?;
        Ok(Response::new(logger_proto(current, launch)))
    }

    async fn reset_log_level(
        &self,
        req: Request<pb::ResetLogLevelRequest>,
    ) -> Result<Response<pb::Logger>, Status> {
        authorize(&req)?;
        let (current, launch) = crate::logger::reset().map_err(Status::failed_precondition)?;
        Ok(Response::new(logger_proto(current, launch)))
    }

    async fn list_federated_bundles(
        &self,
        req: Request<pb::ListFederatedBundlesRequest>,
    ) -> Result<Response<pb::ListFederatedBundlesResponse>, Status> {
        authorize(&req)?;
        let bundles = self
            .shared
            .ds
            .list_federated_bundles()
            .await
            .map_err(|e| super::internal("listing federated bundles", &e))?;
        Ok(Response::new(pb::ListFederatedBundlesResponse {
            bundles: bundles.iter().map(bundle_to_proto).collect(),
        }))
    }

    async fn set_federated_bundle(
        &self,
        req: Request<pb::SetFederatedBundleRequest>,
    ) -> Result<Response<types::Bundle>, Status> {
        authorize(&req)?;
        let b = req
            .into_inner()
            .bundle
            .ok_or_else(|| Status::invalid_argument("bundle is required"))?;
        let bundle = bundle_from_proto(&b)?;
        if &bundle.trust_domain == self.td() {
            return Err(Status::invalid_argument(format!(
                "trust_domain {:?} is the server's own trust domain, not a federated one",
                bundle.trust_domain.as_str()
            )));
        }
        if bundle.x509_authorities.is_empty() && bundle.jwt_authorities.is_empty() {
            return Err(Status::invalid_argument(
                "bundle has no X.509 or JWT authorities",
            ));
        }
        self.shared
            .ds
            .set_federated_bundle(&bundle)
            .await
            .map_err(|e| super::internal("storing the federated bundle", &e))?;
        Ok(Response::new(bundle_to_proto(&bundle)))
    }

    async fn delete_federated_bundle(
        &self,
        req: Request<pb::DeleteFederatedBundleRequest>,
    ) -> Result<Response<pb::DeleteFederatedBundleResponse>, Status> {
        authorize(&req)?;
        let td = parse_td(&req.get_ref().trust_domain)?;
        if !self
            .shared
            .ds
            .delete_federated_bundle(&td)
            .await
            .map_err(|e| super::internal("deleting the federated bundle", &e))?
        {
            return Err(Status::not_found(format!(
                "no federated bundle for trust domain {:?}",
                td.as_str()
            )));
        }
        Ok(Response::new(pb::DeleteFederatedBundleResponse {}))
    }

    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::JoinToken>, Status> {
        authorize(&req)?;
        let r = req.into_inner();
        let ttl = match r.ttl {
            n if n < 0 => return Err(Status::invalid_argument("ttl must not be negative")),
            0 => DEFAULT_TOKEN_TTL,
            n => n,
        };
        let alias: Option<SpiffeId> = (!r.spiffe_id.is_empty())
            .then(|| r.spiffe_id.parse())
            .transpose()
            .map_err(|e: sigil_spiffe::IdError| {
                Status::invalid_argument(format!("invalid spiffe_id: {e}"))
            })?;
        if let Some(a) = &alias
            && !a.is_member_of(self.td())
        {
            return Err(Status::invalid_argument(format!(
                "invalid spiffe_id {a}: must belong to trust domain {:?}",
                self.td().as_str()
            )));
        }
        let token = uuid::Uuid::new_v4().to_string();
        let expires_at = crate::now_unix() + ttl as i64;
        self.shared
            .ds
            .create_join_token(&token, expires_at)
            .await
            .map_err(|e| super::internal("storing the join token", &e))?;
        if let Some(alias) = alias {
            // As spire-server does: an entry mapping the alias onto this agent.
            let agent_id = format!("{}/spire/agent/join_token/{token}", self.td().id());
            let e = Entry::from_proto(
                &types::Entry {
                    spiffe_id: alias.to_string(),
                    parent_id: agent_id.clone(),
                    selectors: vec![types::Selector {
                        r#type: "spiffe_id".into(),
                        value: agent_id,
                    }],
                    ..Default::default()
                },
                self.td(),
            )
            .map_err(|e| super::internal("building the alias entry", &e))?;
            if let Some(Err(err)) = self.shared.ds.create_entries(vec![e]).await.pop() {
                return Err(super::internal("creating the alias entry", &err));
            }
        }
        Ok(Response::new(pb::JoinToken {
            value: token,
            expires_at,
        }))
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        authorize(&req)?;
        let agents = self
            .shared
            .ds
            .list_agents()
            .await
            .map_err(|e| super::internal("listing agents", &e))?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: agents.iter().map(agent_proto).collect(),
        }))
    }

    async fn get_agent(
        &self,
        req: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        authorize(&req)?;
        let id = parse_agent_id(&req.get_ref().spiffe_id)?;
        let a = self
            .shared
            .ds
            .get_agent(&id)
            .await
            .map_err(|e| super::internal("reading the agent record", &e))?
            .ok_or_else(|| Status::not_found(format!("agent {id} not found")))?;
        Ok(Response::new(agent_proto(&a)))
    }

    async fn evict_agent(
        &self,
        req: Request<pb::AgentIdRequest>,
    ) -> Result<Response<pb::AgentActionResponse>, Status> {
        authorize(&req)?;
        let id = parse_agent_id(&req.get_ref().spiffe_id)?;
        if !self
            .shared
            .ds
            .evict_agent(&id)
            .await
            .map_err(|e| super::internal("evicting the agent", &e))?
        {
            return Err(Status::not_found(format!("agent {id} not found")));
        }
        tracing::info!(agent = %id, "agent evicted");
        Ok(Response::new(pb::AgentActionResponse {}))
    }

    async fn ban_agent(
        &self,
        req: Request<pb::AgentIdRequest>,
    ) -> Result<Response<pb::AgentActionResponse>, Status> {
        authorize(&req)?;
        let id = parse_agent_id(&req.get_ref().spiffe_id)?;
        if !self
            .shared
            .ds
            .ban_agent(&id)
            .await
            .map_err(|e| super::internal("banning the agent", &e))?
        {
            return Err(Status::not_found(format!("agent {id} not found")));
        }
        tracing::info!(agent = %id, "agent banned");
        Ok(Response::new(pb::AgentActionResponse {}))
    }

    async fn list_federation_relationships(
        &self,
        req: Request<pb::ListFederationRelationshipsRequest>,
    ) -> Result<Response<pb::ListFederationRelationshipsResponse>, Status> {
        authorize(&req)?;
        let list = self
            .shared
            .federation
            .list()
            .await
            .map_err(|e| super::internal("listing federation relationships", &e))?;
        Ok(Response::new(pb::ListFederationRelationshipsResponse {
            relationships: list
                .iter()
                .map(|(rel, status, source, managed_by)| {
                    relationship_proto(rel, status, *source, managed_by)
                })
                .collect(),
        }))
    }

    async fn batch_create_federation_relationship(
        &self,
        req: Request<pb::BatchFederationRelationshipRequest>,
    ) -> Result<Response<pb::BatchFederationRelationshipResponse>, Status> {
        authorize(&req)?;
        self.write_relationships(req.into_inner(), true).await
    }

    async fn batch_update_federation_relationship(
        &self,
        req: Request<pb::BatchFederationRelationshipRequest>,
    ) -> Result<Response<pb::BatchFederationRelationshipResponse>, Status> {
        authorize(&req)?;
        self.write_relationships(req.into_inner(), false).await
    }

    async fn batch_delete_federation_relationship(
        &self,
        req: Request<pb::BatchDeleteFederationRelationshipRequest>,
    ) -> Result<Response<pb::BatchFederationRelationshipResponse>, Status> {
        authorize(&req)?;
        let mut results = Vec::new();
        for td in req.into_inner().trust_domains {
            let res = match TrustDomain::from_id_or_name(&td) {
                Ok(t) => self
                    .shared
                    .federation
                    .delete(&t)
                    .await
                    .map_err(federation_status),
                Err(e) => Err(Status::invalid_argument(format!(
                    "failed to parse trust domain: {e}"
                ))),
            };
            let status = match &res {
                Ok(()) => entry_status(Code::Ok, String::new()),
                Err(s) => entry_status(s.code(), s.message().to_string()),
            };
            results.push(pb::FederationRelationshipResult {
                status: Some(status),
                relationship: None,
                trust_domain: td,
            });
        }
        Ok(Response::new(pb::BatchFederationRelationshipResponse {
            results,
        }))
    }

    async fn refresh_bundle(
        &self,
        req: Request<pb::RefreshBundleRequest>,
    ) -> Result<Response<pb::RefreshBundleResponse>, Status> {
        authorize(&req)?;
        let td = &req.get_ref().trust_domain;
        if td.is_empty() {
            return Err(Status::invalid_argument("trust_domain is required"));
        }
        let td = TrustDomain::from_id_or_name(td)
            .map_err(|e| Status::invalid_argument(format!("invalid trust_domain: {e}")))?;
        if !self.shared.federation.refresher().refresh(&td) {
            return Err(Status::not_found(format!(
                "no relationship with trust domain {:?}",
                td.as_str()
            )));
        }
        Ok(Response::new(pb::RefreshBundleResponse {}))
    }
}

impl AdminApi {
    /// Creates (`create`) or updates each relationship; one result per relationship.
    async fn write_relationships(
        &self,
        req: pb::BatchFederationRelationshipRequest,
        create: bool,
    ) -> Result<Response<pb::BatchFederationRelationshipResponse>, Status> {
        let federation = &self.shared.federation;
        let mut results = Vec::new();
        for r in req.relationships {
            let res = match relationship_from_proto(&r) {
                Ok((rel, bundle)) if create => federation.create(rel, &r.managed_by, bundle).await,
                Ok((rel, bundle)) => federation.update(rel, bundle).await,
                Err(s) => {
                    results.push(federation_result(&r, Err(s)));
                    continue;
                }
            }
            .map_err(federation_status);
            results.push(federation_result(&r, res));
        }
        Ok(Response::new(pb::BatchFederationRelationshipResponse {
            results,
        }))
    }
}

fn logger_proto(current: crate::logger::Level, launch: crate::logger::Level) -> pb::Logger {
    pb::Logger {
        current_level: current.api_name().into(),
        launch_level: launch.api_name().into(),
    }
}

fn unix(t: Option<std::time::SystemTime>) -> i64 {
    t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64)
}

fn relationship_proto(
    rel: &sigil_federation::Relationship,
    status: &sigil_federation::refresh::Status,
    source: crate::federation::Source,
    managed_by: &str,
) -> pb::FederationRelationship {
    pb::FederationRelationship {
        trust_domain: rel.trust_domain.as_str().to_string(),
        bundle_endpoint_url: rel.url.as_str().to_string(),
        bundle_endpoint_profile: rel.profile.name().to_string(),
        endpoint_spiffe_id: match &rel.profile {
            sigil_federation::Profile::HttpsSpiffe { endpoint_spiffe_id } => {
                endpoint_spiffe_id.to_string()
            }
            sigil_federation::Profile::HttpsWeb => String::new(),
        },
        last_success: unix(status.last_success),
        last_error_at: unix(status.last_error.as_ref().map(|e| e.0)),
        last_error: status
            .last_error
            .as_ref()
            .map(|e| e.1.clone())
            .unwrap_or_default(),
        next_attempt: unix(status.next_attempt),
        bundle_sequence: status.sequence.unwrap_or(0),
        source: match source {
            crate::federation::Source::Config => "config",
            crate::federation::Source::Api => "api",
        }
        .into(),
        trust_domain_bundle: None,
        managed_by: managed_by.to_string(),
    }
}

/// A relationship from the wire, checked as SPIRE's trust domain API checks it, and its
/// bootstrap bundle (of the endpoint ID's trust domain for https_spiffe).
fn relationship_from_proto(
    r: &pb::FederationRelationship,
) -> Result<(sigil_federation::Relationship, Option<Bundle>), Status> {
    let trust_domain = TrustDomain::from_id_or_name(&r.trust_domain)
        .map_err(|e| Status::invalid_argument(format!("failed to parse trust domain: {e}")))?;
    let url = sigil_federation::EndpointUrl::parse(&r.bundle_endpoint_url).map_err(|e| {
        Status::invalid_argument(format!("failed to parse bundle endpoint URL: {e}"))
    })?;
    let profile = match r.bundle_endpoint_profile.as_str() {
        "https_web" => sigil_federation::Profile::HttpsWeb,
        "https_spiffe" => sigil_federation::Profile::HttpsSpiffe {
            endpoint_spiffe_id: r.endpoint_spiffe_id.parse().map_err(
                |e: sigil_spiffe::IdError| {
                    Status::invalid_argument(format!("failed to parse endpoint SPIFFE ID: {e}"))
                },
            )?,
        },
        other => {
            return Err(Status::invalid_argument(format!(
                "unknown bundle endpoint profile type: {other:?}"
            )));
        }
    };
    let bundle = r
        .trust_domain_bundle
        .as_ref()
        .map(bundle_from_proto)
        .transpose()?;
    Ok((
        sigil_federation::Relationship {
            trust_domain,
            url,
            profile,
        },
        bundle,
    ))
}

fn federation_status(e: crate::federation::FederationError) -> Status {
    use crate::federation::FederationError as E;
    match e {
        E::AlreadyExists(_) => Status::already_exists(e.to_string()),
        E::NotFound(_) => Status::not_found(e.to_string()),
        E::OwnTrustDomain(_) => Status::invalid_argument(e.to_string()),
        E::Store(s) => super::internal("storing the federation relationship", &s),
    }
}

fn federation_result(
    r: &pb::FederationRelationship,
    res: Result<(), Status>,
) -> pb::FederationRelationshipResult {
    let status = match &res {
        Ok(()) => entry_status(Code::Ok, String::new()),
        Err(s) => entry_status(s.code(), s.message().to_string()),
    };
    pb::FederationRelationshipResult {
        status: Some(status),
        relationship: Some(pb::FederationRelationship {
            trust_domain_bundle: None,
            ..r.clone()
        }),
        trust_domain: r.trust_domain.clone(),
    }
}

fn parse_agent_id(s: &str) -> Result<SpiffeId, Status> {
    if s.is_empty() {
        return Err(Status::invalid_argument("spiffe_id is required"));
    }
    s.parse().map_err(|e: sigil_spiffe::IdError| {
        Status::invalid_argument(format!("invalid spiffe_id: {e}"))
    })
}

fn agent_proto(a: &crate::datastore::AgentRecord) -> pb::Agent {
    pb::Agent {
        spiffe_id: a.spiffe_id.to_string(),
        attestation_type: a.attestation_type.clone(),
        x509_svid_serial_number: a.serial.clone(),
        x509_svid_expires_at: a.expires_at,
        banned: a.banned,
        created_at: a.created_at,
        last_seen: a.last_seen,
        selectors: a
            .selectors
            .iter()
            .map(|s| types::Selector {
                r#type: s.kind.clone(),
                value: s.value.clone(),
            })
            .collect(),
        can_reattest: a.can_reattest,
    }
}
