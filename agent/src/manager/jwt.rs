//! JWT-SVIDs: minted by the server on demand, cached per (entry, audience set) until half-life.
//!
//! The cache is bounded (`jwt_svid_cache_max_size`, 1000 by default as in SPIRE) and evicts the
//! least recently used token: a workload chooses its audiences freely, so without a bound it
//! could grow the agent's memory without limit.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sigil_proto::agent::SignJwtSvidRequest;
use sigil_proto::agent::node_client::NodeClient;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::svid::now_unix;

/// Cached tokens at most, unless configured otherwise (SPIRE's `jwt_svid_cache_max_size`).
pub const DEFAULT_CACHE_SIZE: usize = 1000;
const SIGN_TIMEOUT: Duration = Duration::from_secs(10);

/// Mints and caches JWT-SVIDs.
#[derive(Clone, Debug)]
pub struct JwtSigner {
    client: watch::Receiver<Option<NodeClient<Channel>>>,
    cache: Arc<Mutex<Lru>>,
}

/// The token cache: a map plus a use order, evicting the least recently used entry beyond
/// `capacity`. O(log n) per operation.
#[derive(Debug)]
struct Lru {
    capacity: usize,
    tick: u64,
    map: HashMap<Key, (Cached, u64)>,
    order: BTreeMap<u64, Key>,
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
    /// The `kid` that signed it: a taint of that key drops the token.
    kid: String,
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

// === impl Lru ===

impl Lru {
    fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            tick: 0,
            map: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// The cached value, marking it most recently used.
    fn get(&mut self, key: &Key) -> Option<&Cached> {
        let tick = self.next_tick();
        let (_, used) = self.map.get_mut(key)?;
        self.order.remove(used);
        *used = tick;
        self.order.insert(tick, key.clone());
        self.map.get(key).map(|(c, _)| c)
    }

    fn insert(&mut self, key: Key, value: Cached) {
        let tick = self.next_tick();
        if let Some((_, used)) = self.map.insert(key.clone(), (value, tick)) {
            self.order.remove(&used);
        }
        self.order.insert(tick, key);
        while self.map.len() > self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.map.remove(&oldest);
        }
    }

    fn retain(&mut self, keep: impl Fn(&Key, &Cached) -> bool) {
        let order = &mut self.order;
        self.map.retain(|k, (c, used)| {
            let kept = keep(k, c);
            if !kept {
                order.remove(used);
            }
            kept
        });
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

// === impl JwtSigner ===

impl JwtSigner {
    /// A signer caching at most `cache_size` tokens (0 means [`DEFAULT_CACHE_SIZE`], as SPIRE
    /// reads an unset size).
    pub fn new(client: watch::Receiver<Option<NodeClient<Channel>>>, cache_size: usize) -> Self {
        let capacity = match cache_size {
            0 => DEFAULT_CACHE_SIZE,
            n => n,
        };
        Self {
            client,
            cache: Arc::new(Mutex::new(Lru::new(capacity))),
        }
    }

    /// Tokens cached now.
    pub fn cached(&self) -> usize {
        self.lock().len()
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
        let parsed = sigil_spiffe::jwt::parse_unverified(&resp.token).ok();
        let issued_at = parsed
            .as_ref()
            .and_then(|t| t.claims.get("iat").and_then(serde_json::Value::as_i64))
            .unwrap_or(now);
        let kid = parsed
            .as_ref()
            .and_then(|t| t.header.get("kid").and_then(serde_json::Value::as_str))
            .unwrap_or_default()
            .to_string();
        let expires_at = resp.expires_at;
        let refresh_at = issued_at + (expires_at - issued_at).max(0) / 2;
        let mut cache = self.lock();
        // Expired tokens go first; the bound then evicts the least recently used.
        if cache.len() >= cache.capacity {
            cache.retain(|_, c| c.expires_at > now);
        }
        cache.insert(
            key,
            Cached {
                token: resp.token.clone(),
                kid,
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

    /// Drops tokens signed with a tainted key: the next request mints one with the active key.
    pub fn drop_signed_by(&self, tainted: &std::collections::BTreeSet<String>) {
        if !tainted.is_empty() {
            self.lock().retain(|_, c| !tainted.contains(&c.kid));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        // Single-operation critical sections cannot leave the map inconsistent, so a poisoned
        // lock is still usable.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(aud: &str) -> Key {
        Key {
            entry_id: "e".into(),
            spiffe_id: "spiffe://td/w".into(),
            audience: vec![aud.into()],
        }
    }

    fn token(t: &str) -> Cached {
        Cached {
            token: t.into(),
            kid: format!("kid-{t}"),
            refresh_at: 10,
            expires_at: 20,
        }
    }

    #[test]
    fn the_cache_is_bounded_and_evicts_the_least_recently_used() {
        let mut lru = Lru::new(3);
        for aud in ["a", "b", "c"] {
            lru.insert(key(aud), token(aud));
        }
        // Using "a" makes "b" the least recently used.
        assert_eq!(lru.get(&key("a")).map(|c| c.token.as_str()), Some("a"));
        lru.insert(key("d"), token("d"));
        assert_eq!(lru.len(), 3);
        assert!(lru.get(&key("b")).is_none());
        for aud in ["a", "c", "d"] {
            assert!(lru.get(&key(aud)).is_some(), "{aud}");
        }
        // Replacing a key does not grow the cache or leave a stale order entry behind.
        lru.insert(key("a"), token("a2"));
        assert_eq!(lru.len(), 3);
        assert_eq!(lru.order.len(), 3);
        assert_eq!(lru.get(&key("a")).map(|c| c.token.as_str()), Some("a2"));

        // A workload asking for thousands of audiences cannot grow it past the bound.
        let mut lru = Lru::new(DEFAULT_CACHE_SIZE);
        for i in 0..10 * DEFAULT_CACHE_SIZE {
            lru.insert(key(&i.to_string()), token("t"));
        }
        assert_eq!(lru.len(), DEFAULT_CACHE_SIZE);
        assert_eq!(lru.order.len(), DEFAULT_CACHE_SIZE);
        // The newest survive.
        assert!(
            lru.get(&key(&(10 * DEFAULT_CACHE_SIZE - 1).to_string()))
                .is_some()
        );
        assert!(lru.get(&key("0")).is_none());
    }

    #[test]
    fn retain_keeps_order_consistent() {
        let mut lru = Lru::new(10);
        for aud in ["a", "b", "c"] {
            lru.insert(key(aud), token(aud));
        }
        lru.retain(|k, _| k.audience[0] != "b");
        assert_eq!(lru.len(), 2);
        assert_eq!(lru.order.len(), 2);
    }

    #[tokio::test]
    async fn tokens_signed_by_a_tainted_key_are_dropped() {
        let (_tx, rx) = watch::channel(None);
        let signer = JwtSigner::new(rx, 10);
        for aud in ["a", "b", "c"] {
            signer.lock().insert(key(aud), token(aud));
        }
        signer.drop_signed_by(&["kid-b".to_string()].into());
        let mut lru = signer.lock();
        assert_eq!(lru.len(), 2);
        assert!(lru.get(&key("b")).is_none());
        assert!(lru.get(&key("a")).is_some());
    }

    #[tokio::test]
    async fn size_zero_means_the_default() {
        let (_tx, rx) = watch::channel(None);
        let signer = JwtSigner::new(rx.clone(), 0);
        assert_eq!(signer.lock().capacity, DEFAULT_CACHE_SIZE);
        assert_eq!(JwtSigner::new(rx, 7).lock().capacity, 7);
    }
}
