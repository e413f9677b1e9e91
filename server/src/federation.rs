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
            self.ds
                .set_federated_bundle(&bundle)
                .await
                .map_err(|e| format!("storing the bundle: {e}"))
        })
    }
}

/// Starts the bundle endpoint (if configured) and the refresh of every configured
/// relationship. Returns the refresher (for the admin API) and the endpoint's address.
pub async fn start(
    cfg: &FederationConfig,
    ca: Arc<Ca>,
    identity: Arc<ServerIdentity>,
    ds: DataStore,
) -> Result<(Refresher, Option<std::net::SocketAddr>)> {
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
        tokio::spawn(serve(listener, acceptor(cert), document));
        tracing::info!(address = ?endpoint_addr, profile = ?ep.profile, "serving the bundle endpoint");
    }
    let refresher = Refresher::new(Arc::new(DsStore { ds, ca }));
    for rel in &cfg.federates_with {
        tracing::info!(trust_domain = rel.trust_domain.as_str(), url = %rel.url, profile = rel.profile.name(), "federating");
        refresher.set(rel.clone());
    }
    Ok((refresher, endpoint_addr))
}
