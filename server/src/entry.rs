//! Registration entries: the typed form every API boundary parses into. An `Entry` that exists is
//! valid; the proto form is only for the wire.

use sigil_proto::types as pb;
use sigil_spiffe::{Selector, SpiffeId, TrustDomain};

/// Why an entry was refused. Each message names the offending field, as the issue requires and
/// as SPIRE's API does.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntryError {
    #[error("invalid spiffe_id {value:?}: {reason}")]
    SpiffeId { value: String, reason: String },
    #[error("invalid parent_id {value:?}: {reason}")]
    ParentId { value: String, reason: String },
    #[error("invalid spiffe_id {0:?}: must belong to the server's trust domain {1:?}")]
    ForeignTrustDomain(String, String),
    #[error("invalid selectors: at least one selector is required")]
    NoSelectors,
    #[error("invalid selector {value:?}: {reason}")]
    Selector { value: String, reason: String },
    #[error("invalid x509_svid_ttl {0}: must not be negative")]
    X509Ttl(i32),
    #[error("invalid jwt_svid_ttl {0}: must not be negative")]
    JwtTtl(i32),
    #[error("invalid dns_names entry {0:?}: not a valid DNS name")]
    DnsName(String),
    #[error("invalid federates_with entry {value:?}: {reason}")]
    FederatesWith { value: String, reason: String },
    #[error("invalid hint: longer than 1024 bytes")]
    Hint,
    #[error("invalid id {0:?}: entry ids are 1-255 characters of [A-Za-z0-9._-]")]
    Id(String),
    #[error("invalid managed_by {0:?}: at most 255 printable ASCII characters")]
    ManagedBy(String),
}

/// A validated registration entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub spiffe_id: SpiffeId,
    pub parent_id: SpiffeId,
    /// Sorted and de-duplicated.
    pub selectors: Vec<Selector>,
    /// Seconds; 0 means the server default.
    pub x509_svid_ttl: u32,
    pub jwt_svid_ttl: u32,
    pub dns_names: Vec<String>,
    pub federates_with: Vec<TrustDomain>,
    pub admin: bool,
    pub downstream: bool,
    pub hint: String,
    pub created_at: i64,
    pub revision: i64,
    pub store_svid: bool,
    /// Who created the entry (empty: an operator). Set at creation, kept by updates.
    pub managed_by: String,
}

fn valid_dns_name(s: &str) -> bool {
    // RFC 1123 labels; a leading "*." wildcard is allowed as in SPIRE.
    let s = s.strip_prefix("*.").unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

pub(crate) fn valid_entry_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

// === impl Entry ===

impl Entry {
    /// Parses a wire entry. `td` is the server's trust domain: entries may only name identities
    /// in it. An empty `id` is left empty for the caller to assign.
    pub fn from_proto(p: &pb::Entry, td: &TrustDomain) -> Result<Self, EntryError> {
        let spiffe_id: SpiffeId =
            p.spiffe_id
                .parse()
                .map_err(|e: sigil_spiffe::IdError| EntryError::SpiffeId {
                    value: p.spiffe_id.clone(),
                    reason: e.to_string(),
                })?;
        if !spiffe_id.is_member_of(td) {
            return Err(EntryError::ForeignTrustDomain(
                p.spiffe_id.clone(),
                td.as_str().to_string(),
            ));
        }
        let parent_id: SpiffeId =
            p.parent_id
                .parse()
                .map_err(|e: sigil_spiffe::IdError| EntryError::ParentId {
                    value: p.parent_id.clone(),
                    reason: e.to_string(),
                })?;
        if p.selectors.is_empty() {
            return Err(EntryError::NoSelectors);
        }
        let mut selectors = p
            .selectors
            .iter()
            .map(|s| {
                let text = format!("{}:{}", s.r#type, s.value);
                text.parse::<Selector>().map_err(|e| EntryError::Selector {
                    value: text.clone(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        selectors.sort();
        selectors.dedup();
        let x509_svid_ttl =
            u32::try_from(p.x509_svid_ttl).map_err(|_| EntryError::X509Ttl(p.x509_svid_ttl))?;
        let jwt_svid_ttl =
            u32::try_from(p.jwt_svid_ttl).map_err(|_| EntryError::JwtTtl(p.jwt_svid_ttl))?;
        for d in &p.dns_names {
            if !valid_dns_name(d) {
                return Err(EntryError::DnsName(d.clone()));
            }
        }
        let mut federates_with = p
            .federates_with
            .iter()
            .map(|f| {
                TrustDomain::from_id_or_name(f).map_err(|e| EntryError::FederatesWith {
                    value: f.clone(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        federates_with.sort();
        federates_with.dedup();
        if p.hint.len() > 1024 {
            return Err(EntryError::Hint);
        }
        if !p.id.is_empty() && !valid_entry_id(&p.id) {
            return Err(EntryError::Id(p.id.clone()));
        }
        if p.managed_by.len() > 255 || !p.managed_by.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(EntryError::ManagedBy(p.managed_by.clone()));
        }
        Ok(Self {
            id: p.id.clone(),
            spiffe_id,
            parent_id,
            selectors,
            x509_svid_ttl,
            jwt_svid_ttl,
            dns_names: p.dns_names.clone(),
            federates_with,
            admin: p.admin,
            downstream: p.downstream,
            hint: p.hint.clone(),
            created_at: p.created_at,
            revision: p.revision,
            store_svid: p.store_svid,
            managed_by: p.managed_by.clone(),
        })
    }

    pub fn to_proto(&self) -> pb::Entry {
        pb::Entry {
            id: self.id.clone(),
            spiffe_id: self.spiffe_id.to_string(),
            parent_id: self.parent_id.to_string(),
            selectors: self
                .selectors
                .iter()
                .map(|s| pb::Selector {
                    r#type: s.kind.clone(),
                    value: s.value.clone(),
                })
                .collect(),
            x509_svid_ttl: self.x509_svid_ttl as i32,
            jwt_svid_ttl: self.jwt_svid_ttl as i32,
            dns_names: self.dns_names.clone(),
            federates_with: self
                .federates_with
                .iter()
                .map(|t| t.id().to_string())
                .collect(),
            admin: self.admin,
            downstream: self.downstream,
            hint: self.hint.clone(),
            created_at: self.created_at,
            revision: self.revision,
            store_svid: self.store_svid,
            managed_by: self.managed_by.clone(),
        }
    }

    /// Selectors as stored: a sorted JSON array of `type:value` strings (also the uniqueness
    /// key of "similar" entries).
    pub fn selectors_key(&self) -> String {
        let v: Vec<String> = self.selectors.iter().map(|s| s.to_string()).collect();
        serde_json::to_string(&v).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        "example.org".parse().unwrap()
    }

    fn good() -> pb::Entry {
        pb::Entry {
            spiffe_id: "spiffe://example.org/web".into(),
            parent_id: "spiffe://example.org/spire/agent/join_token/abc".into(),
            selectors: vec![pb::Selector {
                r#type: "unix".into(),
                value: "uid:1000".into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn valid_entry_round_trips() {
        let mut p = good();
        p.dns_names = vec!["web.example.org".into()];
        p.federates_with = vec!["spiffe://other.org".into()];
        let e = Entry::from_proto(&p, &td()).unwrap();
        assert_eq!(e.selectors[0].to_string(), "unix:uid:1000");
        let back = e.to_proto();
        assert_eq!(back.spiffe_id, p.spiffe_id);
        assert_eq!(back.federates_with, ["spiffe://other.org"]);
    }

    #[test]
    fn invalid_fields_are_named() {
        type Mutate = fn(&mut pb::Entry);
        let cases: &[(Mutate, &str)] = &[
            (
                |p| p.spiffe_id = "spiffe://example.org/a/../b".into(),
                "invalid spiffe_id",
            ),
            (
                |p| p.spiffe_id = "spiffe://other.org/a".into(),
                "server's trust domain",
            ),
            (|p| p.parent_id = "http://x".into(), "invalid parent_id"),
            (|p| p.selectors.clear(), "at least one selector"),
            (
                |p| {
                    p.selectors = vec![pb::Selector {
                        r#type: "".into(),
                        value: "x".into(),
                    }]
                },
                "invalid selector",
            ),
            (|p| p.x509_svid_ttl = -1, "invalid x509_svid_ttl"),
            (|p| p.jwt_svid_ttl = -5, "invalid jwt_svid_ttl"),
            (
                |p| p.dns_names = vec!["bad name".into()],
                "invalid dns_names",
            ),
            (
                |p| p.federates_with = vec!["Not Valid".into()],
                "invalid federates_with",
            ),
            (|p| p.id = "bad id!".into(), "invalid id"),
        ];
        for (mutate, want) in cases {
            let mut p = good();
            mutate(&mut p);
            let err = Entry::from_proto(&p, &td()).unwrap_err().to_string();
            assert!(err.contains(want), "got {err:?}, want {want:?}");
        }
    }
}
