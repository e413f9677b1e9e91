//! JWT-SVIDs: minted by the server on demand, cached per (entry, audience set) until half-life.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sigil_proto::agent::SignJwtSvidRequest;
use sigil_proto::agent::node_client::NodeClient;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::svid::now_unix;

/// Beyond this many cached tokens, expired ones are swept on insert.
const SWEEP_THRESHOLD: usize = 4096;
const SIGN_TIMEOUT: Duration = Duration::from_secs(10);

/// Mints and caches JWT-SVIDs.
#[derive(Clone, Debug)]
pub struct JwtSigner {
    client: watch::Receiver<Option<NodeClient<Channel>>>,
    cache: Arc<Mutex<HashMap<Key, Cached>>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    entry_id: String,
    /// Part of the key so that an entry re-pointed at another SPIFFE ID never serves a token
    /// minted for the old one.
    spiffe_id: String,
    /// Sorted and deduplicated: `[a, b]` and `[b, a]` are the same request.
    audience: Vec<String>,
}

#[derive(Clone)]
struct Cached {
    token: String,
    refresh_at: i64,
    expires_at: i64,
}

/// Tokens are bearer credentials: never printed.
impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached")
            .field("token", &"[redacted]")
            .field("refresh_at", &self.refresh_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl JwtSigner {
    pub fn new(client: watch::Receiver<Option<NodeClient<Channel>>>) -> Self {
        Self {
            client,
            cache: Default::default(),
        }
    }

    /// A token for `entry_id` (whose SVID has `spiffe_id`) and `audience`.
    pub async fn sign(
        &self,
        entry_id: &str,
        spiffe_id: &str,
        audience: &[String],
    ) -> Result<String, tonic::Status> {
        let mut audience = audience.to_vec();
        audience.sort();
        audience.dedup();
        let key = Key {
            entry_id: entry_id.to_string(),
            spiffe_id: spiffe_id.to_string(),
            audience,
        };
        let now = now_unix();
        if let Some(c) = self.lock().get(&key)
            && now < c.refresh_at
        {
            return Ok(c.token.clone());
        }

        let mut client =
            self.client.borrow().clone().ok_or_else(|| {
                tonic::Status::unavailable("agent is not connected to the server")
            })?;
        let req = SignJwtSvidRequest {
            entry_id: key.entry_id.clone(),
            audience: key.audience.clone(),
        };
        let resp = tokio::time::timeout(SIGN_TIMEOUT, client.sign_jwt_svid(req))
            .await
            .map_err(|_| tonic::Status::unavailable("timed out minting a JWT-SVID"))?
            .map_err(|s| match s.code() {
                tonic::Code::PermissionDenied | tonic::Code::InvalidArgument => s,
                _ => tonic::Status::unavailable(format!(
                    "could not mint a JWT-SVID: {}",
                    s.message()
                )),
            })?
            .into_inner();

        // Half-life from the token's own iat when present (the server's clock), else from now.
        let issued_at = sigil_spiffe::jwt::parse_unverified(&resp.token)
            .ok()
            .and_then(|t| t.claims.get("iat").and_then(serde_json::Value::as_i64))
            .unwrap_or(now);
        let expires_at = resp.expires_at;
        let refresh_at = issued_at + (expires_at - issued_at).max(0) / 2;
        let mut cache = self.lock();
        if cache.len() >= SWEEP_THRESHOLD {
            cache.retain(|_, c| c.expires_at > now);
        }
        cache.insert(
            key,
            Cached {
                token: resp.token.clone(),
                refresh_at,
                expires_at,
            },
        );
        Ok(resp.token)
    }

    /// Drops tokens of entries that no longer exist.
    pub fn retain_entries(&self, exists: impl Fn(&str) -> bool) {
        self.lock().retain(|k, _| exists(&k.entry_id));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Cached>> {
        // Single-operation critical sections cannot leave the map inconsistent, so a poisoned
        // lock is still usable.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}
