//! The agent's view of the world, as immutable snapshots.
//!
//! The manager owns the mutable state and publishes an `Arc<Snapshot>` on a `watch` channel after
//! every change. Workload API streams hold a receiver each: readers never lock, never see a
//! half-applied update, and a slow reader only ever skips to the newest snapshot.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use sigil_spiffe::{Bundle, SpiffeId, TrustDomain};

use crate::keys::PrivateKeyDer;
use crate::selectors::{self, Selector, SelectorSet};

/// A registration entry as the agent uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub spiffe_id: SpiffeId,
    pub parent_id: String,
    pub selectors: Vec<Selector>,
    pub x509_svid_ttl: i32,
    pub jwt_svid_ttl: i32,
    pub dns_names: Vec<String>,
    pub federates_with: Vec<TrustDomain>,
    pub hint: String,
    pub created_at: i64,
    pub revision: i64,
}

/// A workload X509-SVID held for an entry.
#[derive(Clone)]
pub struct WorkloadSvid {
    pub spiffe_id: SpiffeId,
    /// DER, leaf first.
    pub chain: Vec<Vec<u8>>,
    pub key: PrivateKeyDer,
    pub not_before: i64,
    pub not_after: i64,
    /// When to replace it (Unix milliseconds): half-life with jitter.
    pub rotate_at_ms: i64,
}

/// A trust bundle with the encodings the Workload API hands out, computed once per change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleRecord {
    pub bundle: Bundle,
    /// Concatenated DER of the X.509 authorities.
    pub x509_der: Vec<u8>,
    /// JWKS of the JWT authorities.
    pub jwks: Vec<u8>,
}

/// An entry and, once signed, its SVID.
#[derive(Clone, Debug)]
pub struct Identity {
    pub entry: Arc<Entry>,
    pub svid: Option<Arc<WorkloadSvid>>,
}

/// Everything the Workload API serves, at one instant.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub trust_domain: TrustDomain,
    /// Whether a full entry set has been received from the server at least once. Before that,
    /// "no matching entry" means "don't know yet" rather than "no identity".
    pub synced: bool,
    pub bundle: Option<Arc<BundleRecord>>,
    pub federated: BTreeMap<TrustDomain, Arc<BundleRecord>>,
    /// Ordered oldest entry first (then by id), so the first SVID a workload gets — the one most
    /// clients use by default — is stable across updates.
    pub identities: Vec<Identity>,
    /// Each entry's position in `identities`, filed under one of its selectors (its first).
    /// A caller can only match entries filed under one of its own selectors, since an entry
    /// needs all of its selectors: matching looks at those candidates only, not at every entry.
    index: HashMap<Selector, Vec<usize>>,
}

// === impl Entry ===

impl Entry {
    pub fn from_proto(e: &sigil_proto::types::Entry) -> Result<Self, String> {
        let spiffe_id = e
            .spiffe_id
            .parse()
            .map_err(|err| format!("entry {}: invalid SPIFFE ID {:?}: {err}", e.id, e.spiffe_id))?;
        let mut federates_with = Vec::with_capacity(e.federates_with.len());
        for td in &e.federates_with {
            federates_with.push(TrustDomain::from_id_or_name(td).map_err(|err| {
                format!(
                    "entry {}: invalid federated trust domain {td:?}: {err}",
                    e.id
                )
            })?);
        }
        let mut selectors: Vec<Selector> = e.selectors.iter().map(selectors::from_proto).collect();
        selectors.sort();
        Ok(Self {
            id: e.id.clone(),
            spiffe_id,
            parent_id: e.parent_id.clone(),
            selectors,
            x509_svid_ttl: e.x509_svid_ttl,
            jwt_svid_ttl: e.jwt_svid_ttl,
            dns_names: e.dns_names.clone(),
            federates_with,
            hint: e.hint.clone(),
            created_at: e.created_at,
            revision: e.revision,
        })
    }

    /// Whether an SVID issued for `self` is still right for `new`: same identity, TTL and DNS
    /// names. Selector or federation changes do not need a new certificate.
    pub fn svid_still_valid_for(&self, new: &Entry) -> bool {
        self.spiffe_id == new.spiffe_id
            && self.x509_svid_ttl == new.x509_svid_ttl
            && self.dns_names == new.dns_names
    }
}

// === impl WorkloadSvid ===

impl WorkloadSvid {
    /// The Workload API's `x509_svid`: the chain as concatenated DER.
    pub fn chain_der(&self) -> Vec<u8> {
        self.chain.concat()
    }
}

impl fmt::Debug for WorkloadSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("not_after", &self.not_after)
            .field("rotate_at_ms", &self.rotate_at_ms)
            .field("key", &self.key)
            .finish()
    }
}

// === impl BundleRecord ===

impl BundleRecord {
    pub fn from_proto(b: &sigil_proto::types::Bundle) -> Result<Self, String> {
        let td = TrustDomain::from_id_or_name(&b.trust_domain)
            .map_err(|e| format!("bundle with invalid trust domain {:?}: {e}", b.trust_domain))?;
        let mut bundle = Bundle::new(td);
        bundle.x509_authorities = b.x509_authorities.clone();
        bundle.jwt_authorities = b
            .jwt_authorities
            .iter()
            .map(|k| sigil_spiffe::JwtAuthority {
                key_id: k.key_id.clone(),
                public_key_der: k.public_key.clone(),
                expires_at: k.expires_at,
            })
            .collect();
        bundle.refresh_hint = (b.refresh_hint != 0).then_some(b.refresh_hint);
        bundle.sequence_number = (b.sequence_number != 0).then_some(b.sequence_number);
        bundle.tainted_x509_authorities = b.tainted_x509_authorities.iter().cloned().collect();
        bundle.tainted_jwt_authorities = b.tainted_jwt_authorities.iter().cloned().collect();
        Ok(Self {
            x509_der: bundle.x509_authorities_concat_der(),
            jwks: bundle.to_jwks_json().into_bytes(),
            bundle,
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.bundle.trust_domain
    }
}

// === impl Snapshot ===

impl Snapshot {
    /// The state before anything is known.
    pub fn empty(trust_domain: TrustDomain) -> Self {
        Self::new(trust_domain, false, None, BTreeMap::new(), Vec::new())
    }

    /// A snapshot of `identities`, which should be in serving order (oldest entry first).
    pub fn new(
        trust_domain: TrustDomain,
        synced: bool,
        bundle: Option<Arc<BundleRecord>>,
        federated: BTreeMap<TrustDomain, Arc<BundleRecord>>,
        identities: Vec<Identity>,
    ) -> Self {
        let mut index: HashMap<Selector, Vec<usize>> = HashMap::new();
        for (pos, identity) in identities.iter().enumerate() {
            if let Some(first) = identity.entry.selectors.first() {
                index.entry(first.clone()).or_default().push(pos);
            }
        }
        Self {
            trust_domain,
            synced,
            bundle,
            federated,
            identities,
            index,
        }
    }

    /// The identities whose entries match the caller's selectors (signed or not), in serving
    /// order.
    pub fn matching<'a>(
        &'a self,
        caller: &'a SelectorSet,
    ) -> impl Iterator<Item = &'a Identity> + 'a {
        let mut candidates: Vec<usize> = caller
            .iter()
            .filter_map(|s| self.index.get(s))
            .flatten()
            .copied()
            .collect();
        candidates.sort_unstable();
        candidates
            .into_iter()
            .filter_map(|pos| self.identities.get(pos))
            .filter(move |i| caller.matches(&i.entry.selectors))
    }

    /// The federated bundles the given identities' entries federate with (those the agent has).
    pub fn federated_for<'a>(
        &'a self,
        identities: impl IntoIterator<Item = &'a Identity>,
    ) -> BTreeMap<&'a TrustDomain, &'a Arc<BundleRecord>> {
        let mut out = BTreeMap::new();
        for identity in identities {
            for td in &identity.entry.federates_with {
                if *td == self.trust_domain {
                    continue;
                }
                if let Some((k, v)) = self.federated.get_key_value(td) {
                    out.insert(k, v);
                }
            }
        }
        out
    }

    /// The bundle for a trust domain (own or federated).
    pub fn bundle_for(&self, td: &TrustDomain) -> Option<&Arc<BundleRecord>> {
        if *td == self.trust_domain {
            self.bundle.as_ref()
        } else {
            self.federated.get(td)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, spiffe: &str, sels: &[&str], fed: &[&str]) -> sigil_proto::types::Entry {
        sigil_proto::types::Entry {
            id: id.into(),
            spiffe_id: spiffe.into(),
            parent_id: "spiffe://td/spire/agent/join_token/x".into(),
            selectors: sels
                .iter()
                .map(|s| {
                    let (t, v) = s.split_once(':').unwrap();
                    sigil_proto::types::Selector {
                        r#type: t.into(),
                        value: v.into(),
                    }
                })
                .collect(),
            federates_with: fed.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn matching_and_federation() {
        let td: TrustDomain = "td".parse().unwrap();
        let mut identities = Vec::new();
        for (i, e) in [
            entry("a", "spiffe://td/a", &["unix:uid:1"], &["spiffe://other"]),
            entry("b", "spiffe://td/b", &["unix:uid:1", "unix:gid:2"], &[]),
            entry("c", "spiffe://td/c", &["unix:uid:2"], &["third"]),
        ]
        .iter()
        .enumerate()
        {
            let mut e = Entry::from_proto(e).unwrap();
            e.created_at = i as i64;
            identities.push(Identity {
                entry: Arc::new(e),
                svid: None,
            });
        }
        let mut snap = Snapshot::new(td.clone(), true, None, BTreeMap::new(), identities);
        let other = BundleRecord::from_proto(&sigil_proto::types::Bundle {
            trust_domain: "other".into(),
            ..Default::default()
        })
        .unwrap();
        snap.federated
            .insert("other".parse().unwrap(), Arc::new(other));

        let caller: SelectorSet = ["unix:uid:1".parse().unwrap()].into_iter().collect();
        let ids: Vec<_> = snap
            .matching(&caller)
            .map(|i| i.entry.id.as_str())
            .collect();
        assert_eq!(ids, ["a"]);
        let fed = snap.federated_for(snap.matching(&caller));
        assert_eq!(
            fed.keys().map(|t| t.as_str()).collect::<Vec<_>>(),
            ["other"]
        );

        let caller: SelectorSet = ["unix:uid:1".parse().unwrap(), "unix:gid:2".parse().unwrap()]
            .into_iter()
            .collect();
        let ids: Vec<_> = snap
            .matching(&caller)
            .map(|i| i.entry.id.as_str())
            .collect();
        assert_eq!(ids, ["a", "b"]);

        // "third" is federated with but the agent has no bundle for it: left out.
        let caller: SelectorSet = ["unix:uid:2".parse().unwrap()].into_iter().collect();
        assert!(snap.federated_for(snap.matching(&caller)).is_empty());
    }

    #[test]
    fn svid_reuse_rules() {
        let a = Entry::from_proto(&entry("a", "spiffe://td/a", &["unix:uid:1"], &[])).unwrap();
        let mut b = a.clone();
        b.selectors.push("unix:gid:1".parse().unwrap());
        assert!(a.svid_still_valid_for(&b));
        b.spiffe_id = "spiffe://td/other".parse().unwrap();
        assert!(!a.svid_still_valid_for(&b));
    }
}
