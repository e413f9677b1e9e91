//! The server's side of federation (`server { federation { ... } }`): it serves its own bundle
//! on the bundle endpoint and keeps the bundles of the trust domains it federates with fresh,
//! stored in the datastore (which pushes them to agents). The protocol work is
//! `sigil-federation`'s; this wires it to the CA, the server's SVID and the datastore.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::{Context, Result};
use sigil_federation::endpoint::{BundleDocument, FileCert, acceptor, serve};
use sigil_federation::refresh::{BundleStore, Refresher};
use sigil_spiffe::{Bundle, TrustDomain};

use crate::ca::Ca;
use crate::config::{EndpointProfile, FederationConfig};
use crate::datastore::DataStore;
use crate::tls::ServerIdentity;

/// Federated bundles as the refresher sees them: the datastore's, and the server's own bundle
/// for its own trust domain (an endpoint ID in it is verified against the CA).
struct DsStore {
    ds: DataStore,
    ca: Arc<Ca>,
}

impl BundleStore for DsStore {
    fn get<'a>(
        &'a self,
        td: &'a TrustDomain,
    ) -> Pin<Box<dyn Future<Output = Option<Bundle>> + Send + 'a>> {
        Box::pin(async move {
            if td == self.ca.trust_domain() {
                return Some(self.ca.bundle());
            }
            self.ds
                .list_federated_bundles()
                .await
                .ok()?
                .into_iter()
                .find(|b| &b.trust_domain == td)
        })
    }

    fn put(&self, bundle: Bundle) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            // An unchanged bundle is not written: every write is pushed to every agent.
            if self.get(&bundle.trust_domain).await.as_ref() == Some(&bundle) {
                return Ok(());
            }
            self.ds
                .set_federated_bundle(&bundle)
                .await
                .map_err(|e| format!("storing the bundle: {e}"))
        })
    }
}

/// Where a relationship comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The server's `federates_with`: wins over a stored one for the same trust domain.
    Config,
    /// The admin API (`federation create`, sigil-controller).
    Api,
}

/// Why a relationship change was refused.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("federation relationship with trust domain {0:?} already exists")]
    AlreadyExists(String),
    #[error("federation relationship with trust domain {0:?} does not exist")]
    NotFound(String),
    #[error("trust domain {0:?} is the server's own trust domain")]
    OwnTrustDomain(String),
    #[error("{0}")]
    Store(#[from] crate::datastore::StoreError),
}

/// The relationships in effect (configured ones win over stored ones) and their refresh.
#[derive(Clone)]
pub struct Federation {
    refresher: Refresher,
    configured: Arc<Vec<sigil_federation::Relationship>>,
    ds: DataStore,
    own: TrustDomain,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation")
            .field("configured", &self.configured.len())
            .finish_non_exhaustive()
    }
}

// === impl Federation ===

impl Federation {
    /// No relationships (tests).
    pub fn empty(ds: DataStore, ca: Arc<Ca>) -> Self {
        Self {
            refresher: Refresher::new(Arc::new(DsStore {
                ds: ds.clone(),
                ca: ca.clone(),
            })),
            configured: Arc::new(Vec::new()),
            own: ca.trust_domain().clone(),
            ds,
        }
    }

    fn is_configured(&self, td: &TrustDomain) -> bool {
        self.configured.iter().any(|r| &r.trust_domain == td)
    }

    pub fn refresher(&self) -> &Refresher {
        &self.refresher
    }

    /// Every relationship in effect, with its status, source and `managed_by`.
    pub async fn list(
        &self,
    ) -> Result<
        Vec<(
            sigil_federation::Relationship,
            sigil_federation::refresh::Status,
            Source,
            String,
        )>,
        FederationError,
    > {
        let stored = self.ds.list_federation_relationships().await?;
        let mut out = Vec::new();
        for (rel, status) in self.refresher.list() {
            let (source, managed_by) = if self.is_configured(&rel.trust_domain) {
                (Source::Config, String::new())
            } else {
                let m = stored
                    .iter()
                    .find(|(r, _)| r.trust_domain == rel.trust_domain)
                    .map(|(_, m)| m.clone())
                    .unwrap_or_default();
                (Source::Api, m)
            };
            out.push((rel, status, source, managed_by));
        }
        Ok(out)
    }

    /// Stores a new relationship (with its bootstrap bundle) and starts refreshing it, unless
    /// the configuration has one for that trust domain (which stays in effect).
    pub async fn create(
        &self,
        rel: sigil_federation::Relationship,
        managed_by: &str,
        bootstrap: Option<Bundle>,
    ) -> Result<(), FederationError> {
        if rel.trust_domain == self.own {
            return Err(FederationError::OwnTrustDomain(
                rel.trust_domain.as_str().to_string(),
            ));
        }
        self.ds
            .put_federation_relationship(&rel, managed_by, true)
            .await
            .map_err(|e| match e {
                crate::datastore::StoreError::AlreadyExists => {
                    FederationError::AlreadyExists(rel.trust_domain.as_str().to_string())
                }
                e => e.into(),
            })?;
        if let Some(b) = bootstrap {
            self.ds.set_federated_bundle(&b).await?;
        }
        if !self.is_configured(&rel.trust_domain) {
            self.refresher.set(rel);
        }
        Ok(())
    }

    /// Replaces a stored relationship; a changed one is fetched at once.
    pub async fn update(
        &self,
        rel: sigil_federation::Relationship,
        bootstrap: Option<Bundle>,
    ) -> Result<(), FederationError> {
        self.ds
            .put_federation_relationship(&rel, "", false)
            .await
            .map_err(|e| match e {
                crate::datastore::StoreError::NotFound(_) => {
                    FederationError::NotFound(rel.trust_domain.as_str().to_string())
                }
                e => e.into(),
            })?;
        if let Some(b) = bootstrap {
            self.ds.set_federated_bundle(&b).await?;
        }
        if !self.is_configured(&rel.trust_domain) {
            self.refresher.set(rel);
        }
        Ok(())
    }

    /// Brings the refreshed relationships in line with the stored ones (after another server
    /// changed them); configured ones stay as they are.
    pub async fn reload_stored(&self) -> Result<(), FederationError> {
        let stored = self.ds.list_federation_relationships().await?;
        for (rel, _) in self.refresher.list() {
            let td = &rel.trust_domain;
            if !self.is_configured(td) && !stored.iter().any(|(r, _)| &r.trust_domain == td) {
                self.refresher.remove(td);
            }
        }
        for (rel, _) in stored {
            if !self.is_configured(&rel.trust_domain) {
                self.refresher.set(rel);
            }
        }
        Ok(())
    }

    /// Deletes a stored relationship (its bundle stays, as in SPIRE).
    pub async fn delete(&self, td: &TrustDomain) -> Result<(), FederationError> {
        if !self.ds.delete_federation_relationship(td).await? {
            return Err(FederationError::NotFound(td.as_str().to_string()));
        }
        if !self.is_configured(td) {
            self.refresher.remove(td);
        }
        Ok(())
    }
}

/// Starts the bundle endpoint (if configured) and the refresh of every relationship, configured
/// or stored. Returns the relationships' manager (for the admin API) and the endpoint's address.
pub async fn start(
    cfg: &FederationConfig,
    ca: Arc<Ca>,
    identity: Arc<ServerIdentity>,
    ds: DataStore,
) -> Result<(Federation, Option<std::net::SocketAddr>)> {
    let mut endpoint_addr = None;
    if let Some(ep) = &cfg.bundle_endpoint {
        let cert: Arc<dyn rustls::server::ResolvesServerCert> = match &ep.profile {
            EndpointProfile::HttpsSpiffe => crate::tls::resolver(identity),
            EndpointProfile::HttpsWeb {
                cert_file_path,
                key_file_path,
                file_sync_interval,
            } => {
                let files = FileCert::load(cert_file_path.clone(), key_file_path.clone())
                    .context("bundle endpoint serving_cert_file")?;
                tokio::spawn(files.clone().watch(*file_sync_interval));
                files
            }
        };
        let listener = tokio::net::TcpListener::bind((ep.address, ep.port))
            .await
            .with_context(|| format!("binding the bundle endpoint {}:{}", ep.address, ep.port))?;
        endpoint_addr = Some(listener.local_addr()?);
        let hint = ep.refresh_hint.as_secs() as i64;
        let ca2 = ca.clone();
        let document: BundleDocument = Arc::new(move || {
            let mut b = ca2.bundle();
            b.refresh_hint = Some(hint);
            b.to_spiffe_json()
        });
        let acceptor = acceptor(cert).context("bundle endpoint TLS configuration")?;
        tokio::spawn(serve(listener, acceptor, document));
        tracing::info!(address = ?endpoint_addr, profile = ?ep.profile, "serving the bundle endpoint");
    }
    let own = ca.trust_domain().clone();
    let refresher = Refresher::new(Arc::new(DsStore { ds: ds.clone(), ca }));
    for rel in &cfg.federates_with {
        tracing::info!(trust_domain = rel.trust_domain.as_str(), url = %rel.url, profile = rel.profile.name(), "federating (config)");
        refresher.set(rel.clone());
    }
    let stored = ds
        .list_federation_relationships()
        .await
        .context("reading federation relationships")?;
    for (rel, _) in stored {
        if cfg
            .federates_with
            .iter()
            .any(|c| c.trust_domain == rel.trust_domain)
        {
            tracing::info!(
                trust_domain = rel.trust_domain.as_str(),
                "stored federation relationship overridden by the configuration"
            );
            continue;
        }
        refresher.set(rel);
    }
    let federation = Federation {
        refresher,
        configured: Arc::new(cfg.federates_with.clone()),
        ds,
        own,
    };
    // Relationships another server sharing the datastore created, changed or deleted.
    let (f, mut changed) = (federation.clone(), federation.ds.subscribe_relationships());
    tokio::spawn(async move {
        while changed.changed().await.is_ok() {
            if let Err(e) = f.reload_stored().await {
                tracing::warn!(error = %e, "reloading federation relationships");
            }
        }
    });
    Ok((federation, endpoint_addr))
}
