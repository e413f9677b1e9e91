//! The server's admin API as the controller uses it: every entry listed once (the controller
//! then keeps its own copy, so an event never costs a `ListEntries`: SCM#301), and batched
//! creates, updates and deletes, whose per-entry results keep that copy true.
//!
//! The socket is `spireServerSocketPath`, as for spire-controller-manager: the controller runs
//! next to the server and shares its admin socket directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sigil_proto::admin::admin_client::AdminClient;
use sigil_proto::admin::{
    BatchCreateEntryRequest, BatchDeleteEntryRequest, BatchUpdateEntryRequest, EntryResult,
    ListEntriesRequest,
};
use sigil_proto::types as pb;
use tonic::transport::Channel;

use crate::diff::CurrentEntry;
use crate::render::RenderedEntry;

/// Entries per admin API call: large enough that a full reconcile of 10,000 pods is a few
/// dozen calls, small enough to stay far below the server's message size limit.
pub const BATCH: usize = 500;

/// Why an admin API call failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin API at {path}: {status}")]
    Call {
        path: String,
        #[source]
        status: tonic::Status,
    },
    #[error("admin API at {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// A client of the server's admin API on its Unix socket.
#[derive(Clone, Debug)]
pub struct AdminApi {
    client: AdminClient<Channel>,
    path: String,
}

/// The outcome of one write: the entry as the server stored it, or its error.
pub type WriteResult = Result<pb::Entry, tonic::Status>;

// === impl AdminApi ===

impl AdminApi {
    /// A client of the socket at `path`. Connects lazily (and again after a server restart),
    /// so the controller may start before the server.
    pub fn new(path: &Path) -> Result<Self, AdminError> {
        let socket: PathBuf = path.to_path_buf();
        let display = path.display().to_string();
        let channel = tonic::transport::Endpoint::try_from("http://[::1]:1")
            .map_err(|source| AdminError::Connect {
                path: display.clone(),
                source,
            })?
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector_lazy(tower::service_fn(move |_: tonic::transport::Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }));
        Ok(Self {
            client: AdminClient::new(channel).max_decoding_message_size(64 << 20),
            path: display,
        })
    }

    fn err(&self, status: tonic::Status) -> AdminError {
        AdminError::Call {
            path: self.path.clone(),
            status,
        }
    }

    /// Every entry on the server, page by page; and how many calls (pages) it took.
    pub async fn list_entries(&self) -> Result<(Vec<pb::Entry>, usize), AdminError> {
        let mut client = self.client.clone();
        let mut out = Vec::new();
        let mut calls = 0;
        let mut page_token = String::new();
        loop {
            let page = client
                .list_entries(ListEntriesRequest {
                    page_size: 2000,
                    page_token: page_token.clone(),
                    ..Default::default()
                })
                .await
                .map_err(|s| self.err(s))?
                .into_inner();
            calls += 1;
            out.extend(page.entries);
            if page.next_page_token.is_empty() {
                return Ok((out, calls));
            }
            page_token = page.next_page_token;
        }
    }

    /// Creates entries in batches; one result per entry, in order. A batch the server did
    /// not answer fails all of its entries with that status.
    pub async fn create(&self, entries: Vec<pb::Entry>) -> Vec<WriteResult> {
        let mut client = self.client.clone();
        let mut out = Vec::with_capacity(entries.len());
        for chunk in entries.chunks(BATCH) {
            let res = client
                .batch_create_entry(BatchCreateEntryRequest {
                    entries: chunk.to_vec(),
                })
                .await;
            collect(&mut out, chunk.len(), res.map(|r| r.into_inner().results));
        }
        out
    }

    /// Updates entries (by id) in batches; one result per entry, in order.
    pub async fn update(&self, entries: Vec<pb::Entry>) -> Vec<WriteResult> {
        let mut client = self.client.clone();
        let mut out = Vec::with_capacity(entries.len());
        for chunk in entries.chunks(BATCH) {
            let res = client
                .batch_update_entry(BatchUpdateEntryRequest {
                    entries: chunk.to_vec(),
                })
                .await;
            collect(&mut out, chunk.len(), res.map(|r| r.into_inner().results));
        }
        out
    }

    /// Deletes entries by id in batches; one result per id, in order (`Ok` carries no entry).
    pub async fn delete(&self, ids: Vec<String>) -> Vec<Result<(), tonic::Status>> {
        let mut client = self.client.clone();
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH) {
            let res = client
                .batch_delete_entry(BatchDeleteEntryRequest {
                    ids: chunk.to_vec(),
                })
                .await;
            let mut results = Vec::new();
            collect(
                &mut results,
                chunk.len(),
                res.map(|r| r.into_inner().results),
            );
            out.extend(results.into_iter().map(|r| match r {
                Ok(_) => Ok(()),
                // Already gone is what a delete wants.
                Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
                Err(s) => Err(s),
            }));
        }
        out
    }
}

impl AdminApi {
    /// Every federation relationship in effect on the server.
    pub async fn list_federation(
        &self,
    ) -> Result<Vec<sigil_proto::admin::FederationRelationship>, AdminError> {
        let mut client = self.client.clone();
        Ok(client
            .list_federation_relationships(
                sigil_proto::admin::ListFederationRelationshipsRequest {},
            )
            .await
            .map_err(|s| self.err(s))?
            .into_inner()
            .relationships)
    }

    /// Creates, updates or deletes federation relationships; the failures, by trust domain.
    pub async fn write_federation(
        &self,
        create: Vec<sigil_proto::admin::FederationRelationship>,
        update: Vec<sigil_proto::admin::FederationRelationship>,
        delete: Vec<String>,
    ) -> Vec<(String, String)> {
        use sigil_proto::admin::{
            BatchDeleteFederationRelationshipRequest, BatchFederationRelationshipRequest,
        };
        let mut client = self.client.clone();
        let mut failures = Vec::new();
        let mut collect = |res: Result<
            tonic::Response<sigil_proto::admin::BatchFederationRelationshipResponse>,
            tonic::Status,
        >,
                           tds: Vec<String>| {
            match res {
                Ok(r) => {
                    for r in r.into_inner().results {
                        if let Some(s) = r.status.filter(|s| s.code != 0) {
                            failures.push((r.trust_domain, s.message));
                        }
                    }
                }
                Err(s) => failures.extend(tds.into_iter().map(|td| (td, s.message().to_string()))),
            }
        };
        if !delete.is_empty() {
            let tds = delete.clone();
            let res = client
                .batch_delete_federation_relationship(BatchDeleteFederationRelationshipRequest {
                    trust_domains: delete,
                })
                .await;
            collect(res, tds);
        }
        if !create.is_empty() {
            let tds = create.iter().map(|r| r.trust_domain.clone()).collect();
            let res = client
                .batch_create_federation_relationship(BatchFederationRelationshipRequest {
                    relationships: create,
                })
                .await;
            collect(res, tds);
        }
        if !update.is_empty() {
            let tds = update.iter().map(|r| r.trust_domain.clone()).collect();
            let res = client
                .batch_update_federation_relationship(BatchFederationRelationshipRequest {
                    relationships: update,
                })
                .await;
            collect(res, tds);
        }
        failures
    }
}

/// Per-entry results of one batch call into `out` (`n` of them whatever happened).
fn collect(out: &mut Vec<WriteResult>, n: usize, res: Result<Vec<EntryResult>, tonic::Status>) {
    match res {
        Ok(results) => {
            let mut results = results.into_iter();
            for _ in 0..n {
                out.push(match results.next() {
                    Some(r) => match r.status {
                        Some(s) if s.code != 0 => {
                            Err(tonic::Status::new(tonic::Code::from(s.code), s.message))
                        }
                        _ => Ok(r.entry.unwrap_or_default()),
                    },
                    None => Err(tonic::Status::internal(
                        "the server sent fewer results than entries",
                    )),
                });
            }
        }
        Err(status) => out.extend((0..n).map(|_| Err(status.clone()))),
    }
}

/// The wire form of a rendered entry (`id` empty: the server picks one), recorded as
/// `managed_by`'s.
pub fn to_proto(id: Option<&str>, e: &RenderedEntry, managed_by: &str) -> pb::Entry {
    pb::Entry {
        id: id.unwrap_or_default().to_string(),
        spiffe_id: e.spiffe_id.to_string(),
        parent_id: e.parent_id.to_string(),
        selectors: e
            .selectors
            .iter()
            .map(|(t, v)| pb::Selector {
                r#type: t.clone(),
                value: v.clone(),
            })
            .collect(),
        x509_svid_ttl: secs(e.x509_svid_ttl),
        jwt_svid_ttl: secs(e.jwt_svid_ttl),
        dns_names: e.dns_names.clone(),
        federates_with: e
            .federates_with
            .iter()
            .map(|t| t.as_str().to_string())
            .collect(),
        admin: e.admin,
        downstream: e.downstream,
        hint: e.hint.clone(),
        store_svid: e.store_svid,
        managed_by: managed_by.to_string(),
        ..Default::default()
    }
}

/// TTLs are whole seconds on the wire; one too large for it is clamped (a year is 3e7).
fn secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

/// The diff's view of a stored entry (federated trust domains by name, as rendered).
pub fn to_current(e: &pb::Entry) -> CurrentEntry {
    CurrentEntry {
        id: e.id.clone(),
        spiffe_id: e.spiffe_id.clone(),
        parent_id: e.parent_id.clone(),
        selectors: e
            .selectors
            .iter()
            .map(|s| (s.r#type.clone(), s.value.clone()))
            .collect(),
        x509_svid_ttl: Duration::from_secs(e.x509_svid_ttl.max(0) as u64),
        jwt_svid_ttl: Duration::from_secs(e.jwt_svid_ttl.max(0) as u64),
        federates_with: e
            .federates_with
            .iter()
            .map(|t| t.strip_prefix("spiffe://").unwrap_or(t).to_string())
            .collect(),
        admin: e.admin,
        downstream: e.downstream,
        dns_names: e.dns_names.clone(),
        hint: e.hint.clone(),
        store_svid: e.store_svid,
    }
}
