//! The server's metrics (served by `telemetry { Prometheus {} }`; names in docs/metrics.md).
//! Counters are updated where things happen (`api::node`); the state gauges here are set at
//! each scrape from the CA, the datastore and the federation refresher, so they are never stale.

use crate::ca::{AuthorityKind, Ca};
use crate::datastore::DataStore;
use crate::federation::Federation;
use sigil_telemetry::Registry;
use std::sync::Arc;
use std::time::SystemTime;

pub const SVIDS_SIGNED: &str = "sigil_server_svids_signed_total";
pub const SVIDS_SIGNED_HELP: &str =
    "SVIDs signed, by type (x509: workload X509-SVIDs, jwt, agent: agent SVIDs, downstream_ca).";
pub const SIGN_FAILURES: &str = "sigil_server_svid_sign_failures_total";
pub const SIGN_FAILURES_HELP: &str = "SVID signing requests refused or failed, by type.";

fn unix(t: Option<SystemTime>) -> f64 {
    t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Installs the scrape-time collector.
pub fn register(metrics: &Registry, ca: Arc<Ca>, ds: DataStore, federation: Federation) {
    metrics.collect_with(Box::new(move |r| {
        for (kind, label) in [(AuthorityKind::X509, "x509"), (AuthorityKind::Jwt, "jwt")] {
            if let Some(a) = ca.authority_states(kind).active {
                r.set(
                    "sigil_server_ca_expiry_timestamp_seconds",
                    "When the active authority expires (Unix seconds), by kind.",
                    &[("kind", label)],
                    a.expires_at as f64,
                );
            }
        }
        r.set(
            "sigil_server_bundle_sequence",
            "The trust bundle's spiffe_sequence (bumped on every change).",
            &[],
            ca.sequence() as f64,
        );
        r.set(
            "sigil_server_registration_entries",
            "Registration entries in the datastore.",
            &[],
            ds.count_entries() as f64,
        );
        for name in [
            "sigil_server_federation_relationship_up",
            "sigil_server_federation_last_success_timestamp_seconds",
            "sigil_server_federation_last_error_timestamp_seconds",
            "sigil_server_federation_next_attempt_timestamp_seconds",
            "sigil_server_federation_bundle_sequence",
        ] {
            r.clear(name);
        }
        for (rel, status) in federation.refresher().list() {
            let td = rel.trust_domain.as_str().to_string();
            let l = [("trust_domain", td.as_str())];
            r.set(
                "sigil_server_federation_relationship_up",
                "1 if the last bundle refresh from this trust domain succeeded, 0 if it failed or none was tried yet.",
                &l,
                if status.last_success.is_some() && status.last_error.is_none() {
                    1.0
                } else {
                    0.0
                },
            );
            r.set(
                "sigil_server_federation_last_success_timestamp_seconds",
                "When the bundle was last fetched and accepted (Unix seconds; 0: never).",
                &l,
                unix(status.last_success),
            );
            r.set(
                "sigil_server_federation_last_error_timestamp_seconds",
                "When the last refresh failed, while it is the latest outcome (Unix seconds; 0: none).",
                &l,
                unix(status.last_error.as_ref().map(|(t, _)| *t)),
            );
            r.set(
                "sigil_server_federation_next_attempt_timestamp_seconds",
                "When the next refresh is due (Unix seconds).",
                &l,
                unix(status.next_attempt),
            );
            r.set(
                "sigil_server_federation_bundle_sequence",
                "spiffe_sequence of the bundle last stored from this trust domain (0: none).",
                &l,
                status.sequence.unwrap_or(0) as f64,
            );
        }
    }));
}
