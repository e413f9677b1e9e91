//! The attestation tiers, best first, and how one is asked for (`attestation_tier`).

use std::fmt;
use std::str::FromStr;

/// An attestation tier, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    Lsm,
    Fentry,
    TpBtf,
    Pidfd,
    Procfs,
}

/// `attestation_tier`: a tier, or the best available one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TierRequest {
    #[default]
    Auto,
    Force(Tier),
}

/// The forced tier cannot run here.
#[derive(Debug, thiserror::Error)]
#[error("attestation tier {tier} is not available: {reason}")]
pub struct TierUnavailable {
    pub tier: Tier,
    pub reason: String,
}

/// Prometheus text for the tier in use (`None`: not chosen yet): one series per tier, 1 for the
/// active one.
pub fn tier_metric(active: Option<Tier>) -> String {
    let mut out = String::from(
        "# HELP sigil_agent_workload_attestation_tier Workload attestation tier in use (1 = active).\n\
         # TYPE sigil_agent_workload_attestation_tier gauge\n",
    );
    for t in Tier::ALL {
        let v = u8::from(active == Some(t));
        out.push_str(&format!(
            "sigil_agent_workload_attestation_tier{{tier=\"{t}\"}} {v}\n"
        ));
    }
    out
}

// === impl Tier ===

impl Tier {
    pub const ALL: [Tier; 5] = [
        Tier::Lsm,
        Tier::Fentry,
        Tier::TpBtf,
        Tier::Pidfd,
        Tier::Procfs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tier::Lsm => "lsm",
            Tier::Fentry => "fentry",
            Tier::TpBtf => "tp_btf",
            Tier::Pidfd => "pidfd",
            Tier::Procfs => "procfs",
        }
    }

    pub fn is_ebpf(self) -> bool {
        matches!(self, Tier::Lsm | Tier::Fentry | Tier::TpBtf)
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Tier {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Tier::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown attestation tier {s:?} (auto, lsm, fentry, tp_btf, pidfd or procfs)"
                )
            })
    }
}

impl FromStr for TierRequest {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" | "" => Ok(TierRequest::Auto),
            other => other.parse().map(TierRequest::Force),
        }
    }
}

impl fmt::Display for TierRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TierRequest::Auto => f.write_str("auto"),
            TierRequest::Force(t) => t.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_names_round_trip() {
        for t in Tier::ALL {
            assert_eq!(t.name().parse::<Tier>().unwrap(), t);
            assert_eq!(
                t.name().parse::<TierRequest>().unwrap(),
                TierRequest::Force(t)
            );
        }
        assert_eq!("auto".parse::<TierRequest>().unwrap(), TierRequest::Auto);
        assert!("kprobe".parse::<TierRequest>().is_err());
    }
}
