//! Decision counters, exported as Envoy stats (Envoy prefixes them with `wasmcustom.`).
//! Requests count into memory of the Wasm VM (one per Envoy worker, single-threaded); the
//! root context adds them to Envoy's counters on a timer ([`FLUSH_PERIOD_MS`]), so the request
//! path makes no host call for stats.
//!
//!
//! - `sigil_authz.<http|tcp>.allowed`, `.denied`, `.unauthenticated` (denied: no valid peer
//!   SPIFFE ID), `.default_deny` (denied: no ALLOW policy matched),
//!   `.dry_run_allowed`, `.dry_run_denied` (the dry-run policies' would-be decisions);
//! - `sigil_authz.<http|tcp>.policy.<namespace>.<name>.<allow|deny|audit|dry_run_allow|dry_run_deny>`:
//!   requests each policy decided (or audited).

use crate::abi;
use sigil_authz::{Action, DecidedBy, Evaluation, PolicyInfo};
use std::cell::Cell;

/// How often counts reach Envoy's stats.
pub const FLUSH_PERIOD_MS: u32 = 250;

/// A counter: Envoy's metric id and the count not yet added to it.
#[derive(Debug)]
struct Counter {
    id: u32,
    pending: Cell<u64>,
}

impl Counter {
    fn bump(&self) {
        self.pending.set(self.pending.get() + 1);
    }

    fn flush(&self) {
        let n = self.pending.take();
        if n > 0 {
            // A failed increment loses these counts; it must not affect requests.
            let _ = abi::increment_metric(self.id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// Host refused to define a metric.
#[derive(Debug)]
pub struct MetricError(pub String);

#[derive(Debug)]
pub struct Stats {
    allowed: Counter,
    denied: Counter,
    unauthenticated: Counter,
    default_deny: Counter,
    dry_run_allowed: Counter,
    dry_run_denied: Counter,
    /// One counter per policy, named after its role (see the module docs).
    per_policy: Vec<Counter>,
}

/// Envoy stat name segments: keep `[A-Za-z0-9_-]`, replace the rest (dots included) with `_`.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub fn policy_metric_suffix(p: &PolicyInfo) -> &'static str {
    match (p.action, p.dry_run) {
        (Action::Allow, false) => "allow",
        (Action::Deny, false) => "deny",
        (Action::Audit, _) => "audit",
        (Action::Allow, true) => "dry_run_allow",
        (Action::Deny, true) => "dry_run_deny",
    }
}

fn counter(name: String) -> Result<Counter, MetricError> {
    let id = abi::define_counter(&name).map_err(|s| MetricError(format!("{name}: {s:?}")))?;
    Ok(Counter {
        id,
        pending: Cell::new(0),
    })
}

impl Stats {
    pub fn define(kind: &str, policies: &[PolicyInfo]) -> Result<Self, MetricError> {
        let p = format!("sigil_authz.{kind}");
        let mut per_policy = Vec::with_capacity(policies.len());
        for info in policies {
            per_policy.push(counter(format!(
                "{p}.policy.{}.{}.{}",
                sanitize(&info.namespace),
                sanitize(&info.name),
                policy_metric_suffix(info)
            ))?);
        }
        Ok(Self {
            allowed: counter(format!("{p}.allowed"))?,
            denied: counter(format!("{p}.denied"))?,
            unauthenticated: counter(format!("{p}.unauthenticated"))?,
            default_deny: counter(format!("{p}.default_deny"))?,
            dry_run_allowed: counter(format!("{p}.dry_run_allowed"))?,
            dry_run_denied: counter(format!("{p}.dry_run_denied"))?,
            per_policy,
        })
    }

    fn bump_policy(&self, i: usize) {
        if let Some(c) = self.per_policy.get(i) {
            c.bump();
        }
    }

    /// Adds the pending counts to Envoy's counters.
    pub fn flush(&self) {
        for c in [
            &self.allowed,
            &self.denied,
            &self.unauthenticated,
            &self.default_deny,
            &self.dry_run_allowed,
            &self.dry_run_denied,
        ]
        .into_iter()
        .chain(&self.per_policy)
        {
            c.flush();
        }
    }

    pub fn record(&self, ev: &Evaluation) {
        if ev.verdict.allowed {
            self.allowed.bump();
        } else {
            self.denied.bump();
        }
        match ev.verdict.decided_by {
            DecidedBy::Policy(i) => self.bump_policy(i),
            DecidedBy::NoAllowPolicyMatched => self.default_deny.bump(),
            DecidedBy::Unauthenticated(_) => self.unauthenticated.bump(),
            DecidedBy::NoPolicies => {}
        }
        if let Some(dry) = ev.dry_run {
            if dry.allowed {
                self.dry_run_allowed.bump();
            } else {
                self.dry_run_denied.bump();
            }
            if let DecidedBy::Policy(i) = dry.decided_by {
                self.bump_policy(i);
            }
        }
        for &i in &ev.audited {
            self.bump_policy(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_names_are_sanitized() {
        assert_eq!(sanitize("my.policy/x"), "my_policy_x");
        assert_eq!(sanitize("ok-name_1"), "ok-name_1");
    }
}
