//! Who is calling the Workload API, and what selectors that caller has.
//!
//! Two steps, both here so that the agent (and the Kubernetes attestor to come) only deal with
//! the result:
//!
//! 1. The *attestation tier* ([`Attestation`], chosen once at start-up by probing: `lsm`,
//!    `fentry`, `tp_btf`, `pidfd`, `procfs`) establishes the [`Caller`] of an accepted
//!    connection ([`PeerInfo`], captured at accept): pid, credentials, cgroup, pod. The eBPF
//!    tiers load the program `cargo xtask build-ebpf` builds, embedded by this crate's build
//!    script; BTF is probed for the kernel's structure offsets.
//! 2. *Workload attestors* ([`WorkloadAttestor`]: [`UnixAttestor`], [`PodAttestor`]) turn the
//!    caller into selectors; [`Attestors`] runs them all and re-checks that the caller is still
//!    the process that connected.
//!
//! Everything else (the BPF loader, BTF parsing, pidfd ioctls, cgroup path parsing) is private.

mod attestation;
mod attestor;
mod btf;
mod cgroup;
mod ebpf;
mod error;
mod peer;
mod pidfd;
mod tier;

pub use self::attestation::{Attestation, Caller};
pub use self::attestor::{
    Attested, Attestors, PodAttestor, UnixAttestor, UnixAttestorConfig, WorkloadAttestor,
    WorkloadChange, group_name, user_name,
};
pub use self::cgroup::{Cgroup, PodRef, mount_point, proc_path};
pub use self::error::AttestError;
pub use self::peer::{PeerGone, PeerInfo, PidFd, PidfdSource, proc_start_time};
pub use self::tier::{Tier, TierRequest, TierUnavailable, tier_metric};

/// An error with its whole source chain, `outer: inner: innermost` (aya's top-level messages
/// say little on their own).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let msg = s.to_string();
        if !out.ends_with(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        source = s.source();
    }
    out
}
