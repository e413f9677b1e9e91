//! Keeping federated bundles fresh: one task per relationship fetches its bundle, checks it,
//! stores it, and waits: a quarter of the bundle's refresh hint (never less than 15 s), 5
//! minutes without a hint, 15 s after a failure; a relationship created or changed, or asked
//! to ([`Refresher::refresh`]), is fetched at once.
//!
//! A fetched bundle replaces the stored one only if it parses strictly, belongs to the
//! relationship's trust domain and its `spiffe_sequence` is not older than the stored one's;
//! otherwise the stored bundle stays. An empty `keys` array is a revocation and is stored.
//!
//! Failures are visible, not only logged: [`Refresher::list`] gives each relationship's last
//! success, last error and next attempt (what `federation show` prints), and the log says
//! when a relationship starts or stops failing, not on every try.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sigil_spiffe::{Bundle, TrustDomain};
use tokio::sync::Notify;

use crate::{Profile, Relationship, fetch};

/// The fewest seconds between two fetches of one relationship.
pub const MIN_INTERVAL: Duration = Duration::from_secs(15);
/// Between fetches when the bundle has no refresh hint.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
/// After a failed fetch.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(15);
/// How long one fetch may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Where federated bundles are kept (the server's datastore).
pub trait BundleStore: Send + Sync + 'static {
    fn get<'a>(
        &'a self,
        td: &'a TrustDomain,
    ) -> Pin<Box<dyn Future<Output = Option<Bundle>> + Send + 'a>>;
    fn put(&self, bundle: Bundle) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// What `federation show` tells about a relationship.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub last_success: Option<SystemTime>,
    /// When and why the last fetch failed (cleared by a success).
    pub last_error: Option<(SystemTime, String)>,
    pub next_attempt: Option<SystemTime>,
    /// The sequence number of the bundle last stored from this endpoint.
    pub sequence: Option<u64>,
}

/// The refresh loops of every relationship.
#[derive(Clone)]
pub struct Refresher {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn BundleStore>,
    relationships: Mutex<BTreeMap<TrustDomain, Entry>>,
}

struct Entry {
    rel: Relationship,
    status: Arc<Mutex<Status>>,
    trigger: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

// === impl Refresher ===

impl std::fmt::Debug for Refresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refresher")
            .field("relationships", &self.list().len())
            .finish_non_exhaustive()
    }
}

impl Refresher {
    pub fn new(store: Arc<dyn BundleStore>) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                relationships: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<TrustDomain, Entry>> {
        self.inner
            .relationships
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Adds or changes a relationship and fetches its bundle at once. An unchanged one is
    /// left alone (its schedule and status kept).
    pub fn set(&self, rel: Relationship) {
        let mut rels = self.lock();
        if rels.get(&rel.trust_domain).is_some_and(|e| e.rel == rel) {
            return;
        }
        if let Some(old) = rels.remove(&rel.trust_domain) {
            old.task.abort();
        }
        let status = Arc::new(Mutex::new(Status::default()));
        let trigger = Arc::new(Notify::new());
        let task = tokio::spawn(run(
            rel.clone(),
            self.inner.store.clone(),
            status.clone(),
            trigger.clone(),
        ));
        rels.insert(
            rel.trust_domain.clone(),
            Entry {
                rel,
                status,
                trigger,
                task,
            },
        );
    }

    /// Stops refreshing `td` (its stored bundle stays). Whether there was such a relationship.
    pub fn remove(&self, td: &TrustDomain) -> bool {
        match self.lock().remove(td) {
            Some(e) => {
                e.task.abort();
                true
            }
            None => false,
        }
    }

    /// Fetches `td`'s bundle now. Whether there is such a relationship.
    pub fn refresh(&self, td: &TrustDomain) -> bool {
        match self.lock().get(td) {
            Some(e) => {
                e.trigger.notify_one();
                true
            }
            None => false,
        }
    }

    /// Every relationship and its status, by trust domain.
    pub fn list(&self) -> Vec<(Relationship, Status)> {
        self.lock()
            .values()
            .map(|e| {
                (
                    e.rel.clone(),
                    e.status.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                )
            })
            .collect()
    }

    pub fn get(&self, td: &TrustDomain) -> Option<(Relationship, Status)> {
        self.lock().get(td).map(|e| {
            (
                e.rel.clone(),
                e.status.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            )
        })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for e in self
            .relationships
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            e.task.abort();
        }
    }
}

/// The wait after a successful fetch of a bundle with this refresh hint (seconds).
pub fn interval_for(hint: Option<i64>) -> Duration {
    match hint {
        Some(secs) if secs > 0 => (Duration::from_secs(secs as u64) / 4).max(MIN_INTERVAL),
        _ => DEFAULT_INTERVAL,
    }
}

async fn run(
    rel: Relationship,
    store: Arc<dyn BundleStore>,
    status: Arc<Mutex<Status>>,
    trigger: Arc<Notify>,
) {
    let td = rel.trust_domain.as_str().to_string();
    let mut failing: Option<String> = None;
    loop {
        let result = attempt(&rel, store.as_ref()).await;
        let now = SystemTime::now();
        let wait = match &result {
            Ok(bundle) => interval_for(bundle.refresh_hint),
            Err(_) => RETRY_INTERVAL,
        };
        {
            let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
            match &result {
                Ok(bundle) => {
                    s.last_success = Some(now);
                    s.last_error = None;
                    s.sequence = bundle.sequence_number;
                }
                Err(e) => s.last_error = Some((now, e.clone())),
            }
            s.next_attempt = Some(now + wait);
        }
        // One line per change of state, not per try (spire#5097).
        match (&result, &failing) {
            (Ok(b), Some(_)) => {
                tracing::info!(trust_domain = %td, sequence = ?b.sequence_number, "federated bundle refresh recovered");
                failing = None;
            }
            (Ok(b), None) => {
                tracing::debug!(trust_domain = %td, sequence = ?b.sequence_number, "federated bundle refreshed");
            }
            (Err(e), prev) if prev.as_deref() != Some(e.as_str()) => {
                tracing::warn!(trust_domain = %td, error = %e, next_attempt_in = ?wait, "federated bundle refresh failing");
                failing = Some(e.clone());
            }
            (Err(_), _) => {}
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = trigger.notified() => {}
        }
    }
}

/// One fetch, checked and stored; the bundle stored, or why nothing was.
async fn attempt(rel: &Relationship, store: &dyn BundleStore) -> Result<Bundle, String> {
    let roots = match &rel.profile {
        Profile::HttpsSpiffe { endpoint_spiffe_id } => store
            .get(&endpoint_spiffe_id.trust_domain())
            .await
            .map(|b| b.x509_authorities)
            .unwrap_or_default(),
        Profile::HttpsWeb => Vec::new(),
    };
    let fetched = fetch::fetch(rel, roots, FETCH_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(stored) = store.get(&rel.trust_domain).await
        && let (Some(new), Some(old)) = (fetched.sequence_number, stored.sequence_number)
        && new < old
    {
        return Err(format!(
            "the endpoint served sequence {new}, older than the stored {old}: kept the stored bundle"
        ));
    }
    store.put(fetched.clone()).await?;
    Ok(fetched)
}
