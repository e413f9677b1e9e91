//! The other servers of the trust domain. Servers sharing one datastore (PostgreSQL) each keep
//! their own CA key, as in SPIRE: each publishes its authorities (roots, JWT keys, what it
//! tainted) to the datastore, and every server's bundle is the union. A server publishes before
//! it serves and whenever its authorities change; a prepared authority is published half a CA
//! lifetime before it signs, so every agent, whichever server it syncs with, trusts it first.

use crate::ca::Ca;
use crate::datastore::{DataStore, StoreError};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How often the authorities are compared and published even without a signal.
const REPUBLISH_CHECK: Duration = Duration::from_secs(30);

/// This server's stable name among its peers: `<data_dir>/server_id`, created on first start.
pub fn server_id(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join("server_id");
    let create = || {
        let id = uuid::Uuid::new_v4().to_string();
        sigil_fs::write_atomic(&path, id.as_bytes(), 0o600)?;
        Ok(id)
    };
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Ok(_) => create(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(),
        Err(e) => Err(e),
    }
}

/// Publishes this server's authorities and takes the others'. Returns whether the bundle
/// changed.
pub async fn sync(
    ds: &DataStore,
    ca: &Ca,
    server: &str,
    publish: bool,
) -> Result<bool, StoreError> {
    if publish {
        ds.publish_server_bundle(server, &ca.own_bundle()).await?;
    }
    let (bundles, sequence) = ds.server_bundles(server, ca.trust_domain()).await?;
    Ok(ca.set_peers(bundles, sequence))
}

/// Keeps publishing and following until the process ends.
pub async fn run(ds: DataStore, ca: Arc<Ca>, server: String, mut published: u64) {
    let mut peers = ds.subscribe_peers();
    let mut changes = ds.subscribe();
    let mut failing = false;
    loop {
        // Every write wakes `changes`; only a change of this server's own authorities (or
        // another server's, or the periodic check) costs a round trip.
        tokio::select! {
            r = peers.changed() => if r.is_err() { return },
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                if ca.sequence() == published {
                    continue;
                }
            }
            _ = tokio::time::sleep(REPUBLISH_CHECK) => {}
        }
        let local = ca.sequence();
        match sync(&ds, &ca, &server, local != published).await {
            Ok(changed) => {
                published = local;
                if failing {
                    failing = false;
                    tracing::info!("publishing this server's authorities again");
                }
                if changed {
                    ds.bundle_changed();
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "publishing this server's authorities failed; retrying");
                }
                failing = true;
            }
        }
    }
}
