//! Selectors, the entry-matching rule, and how attestation outcomes reach callers (Workload
//! API and SDS alike).

use std::collections::HashSet;

pub use sigil_spiffe::Selector;
use sigil_workload_attestation::AttestError;
use tonic::Status;

/// What a stream's caller is told when its workload is gone (its pod deleted).
pub const WORKLOAD_ENDED: &str = "the workload is gone (its pod was deleted): no identity issued";

/// The gRPC status of a failed attestation: a refusal (contradictory facts) is
/// `PermissionDenied`, anything else `Unavailable` (the caller may retry).
pub fn attest_status(e: AttestError) -> Status {
    match e {
        AttestError::Refused(_) => Status::permission_denied(e.to_string()),
        _ => Status::unavailable(e.to_string()),
    }
}

/// The selectors a caller was attested with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SelectorSet(HashSet<Selector>);

/// A selector from the wire. Entries come from the server, which validated them; the type is
/// taken as is (a malformed one can only fail to match).
pub fn from_proto(s: &sigil_proto::types::Selector) -> Selector {
    Selector {
        kind: s.r#type.clone(),
        value: s.value.clone(),
    }
}

// === impl SelectorSet ===

impl SelectorSet {
    pub fn contains(&self, s: &Selector) -> bool {
        self.0.contains(s)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Selector> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether an entry with `entry_selectors` applies to this caller: every one of the entry's
    /// selectors must be among the caller's. An entry without selectors matches nobody (it would
    /// otherwise match everyone).
    pub fn matches(&self, entry_selectors: &[Selector]) -> bool {
        !entry_selectors.is_empty() && entry_selectors.iter().all(|s| self.0.contains(s))
    }
}

impl FromIterator<Selector> for SelectorSet {
    fn from_iter<T: IntoIterator<Item = Selector>>(iter: T) -> Self {
        Self(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sels(list: &[&str]) -> Vec<Selector> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn parse_and_display() {
        let s: Selector = "unix:uid:1000".parse().unwrap();
        assert_eq!(s.kind, "unix");
        assert_eq!(s.value, "uid:1000");
        assert_eq!(s.to_string(), "unix:uid:1000");
        assert!("unix".parse::<Selector>().is_err());
    }

    #[test]
    fn all_entry_selectors_must_match() {
        let caller: SelectorSet = sels(&["unix:uid:1000", "unix:gid:1000", "unix:user:alice"])
            .into_iter()
            .collect();
        assert!(caller.matches(&sels(&["unix:uid:1000"])));
        assert!(caller.matches(&sels(&["unix:uid:1000", "unix:user:alice"])));
        assert!(!caller.matches(&sels(&["unix:uid:1000", "unix:user:bob"])));
        assert!(!caller.matches(&sels(&["unix:uid:0"])));
        assert!(!caller.matches(&sels(&["k8s:ns:default"])));
        // Type and value both count: "unix:uid:1000" is not "k8s:uid:1000".
        assert!(!caller.matches(&sels(&["k8s:uid:1000"])));
        assert!(!caller.matches(&[]));
    }
}
