//! Decision counters, exported as Envoy stats (Envoy prefixes them with `wasmcustom.`):
//!
//! - `sigil_authz.<http|tcp>.allowed`, `.denied`, `.unauthenticated` (denied: no valid peer
//!   SPIFFE ID), `.default_deny` (denied: no ALLOW policy matched),
//!   `.dry_run_allowed`, `.dry_run_denied` (the dry-run policies' would-be decisions);
//! - `sigil_authz.<http|tcp>.policy.<namespace>.<name>.<allow|deny|audit|dry_run_allow|dry_run_deny>`:
//!   requests each policy decided (or audited).

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use sigil_authz::{Action, DecidedBy, Evaluation, PolicyInfo};

/// Host refused to define a metric.
#[derive(Debug)]
pub struct MetricError(pub String);

#[derive(Debug)]
pub struct Stats {
    allowed: u32,
    denied: u32,
    unauthenticated: u32,
    default_deny: u32,
    dry_run_allowed: u32,
    dry_run_denied: u32,
    /// One counter per policy, named after its role (see the module docs).
    per_policy: Vec<u32>,
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

fn counter(name: String) -> Result<u32, MetricError> {
    hostcalls::define_metric(MetricType::Counter, &name)
        .map_err(|s| MetricError(format!("{name}: {s:?}")))
}

fn bump(id: u32) {
    // A failed increment loses one count; it must not change the decision.
    let _ = hostcalls::increment_metric(id, 1);
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
        if let Some(&id) = self.per_policy.get(i) {
            bump(id);
        }
    }

    pub fn record(&self, ev: &Evaluation) {
        bump(if ev.verdict.allowed {
            self.allowed
        } else {
            self.denied
        });
        match ev.verdict.decided_by {
            DecidedBy::Policy(i) => self.bump_policy(i),
            DecidedBy::NoAllowPolicyMatched => bump(self.default_deny),
            DecidedBy::Unauthenticated(_) => bump(self.unauthenticated),
            DecidedBy::NoPolicies => {}
        }
        if let Some(dry) = ev.dry_run {
            bump(if dry.allowed {
                self.dry_run_allowed
            } else {
                self.dry_run_denied
            });
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
