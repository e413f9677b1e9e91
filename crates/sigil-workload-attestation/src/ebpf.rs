//! Loading `agent-ebpf` and reading what it recorded.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::programs::{BtfTracePoint, FEntry, Lsm};
use aya::{Ebpf, EbpfLoader};
use sigil_ebpf_common::{Config, ConnRecord};

use super::Tier;
use super::btf::Btf;

/// The object `cargo xtask build-ebpf` built, if it existed when the agent was compiled.
#[cfg(sigil_ebpf)]
static OBJECT: Option<&[u8]> = Some(aya::include_bytes_aligned!(concat!(
    env!("OUT_DIR"),
    "/sigil-agent-ebpf.bpf.o"
)));
#[cfg(not(sigil_ebpf))]
static OBJECT: Option<&[u8]> = None;

const CONNS_MAP: &str = "SIGIL_CONNS";
const CONFIG_GLOBAL: &str = "SIGIL_CONFIG";
const PROG_LSM: &str = "sigil_lsm_unix_stream_connect";
const PROG_FENTRY: &str = "sigil_fentry_unix_stream_connect";
const PROG_TP_BTF: &str = "sigil_tp_sk_data_ready";
const PROG_LSM_SENDMSG: &str = "sigil_lsm_socket_sendmsg";
const PROG_FENTRY_SENDMSG: &str = "sigil_fentry_socket_sendmsg";

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// `ConnRecord` as aya reads it from a map.
#[repr(transparent)]
#[derive(Clone, Copy, Debug)]
struct PodRecord(ConnRecord);
// SAFETY: repr(C) integers only, no padding (asserted in sigil-ebpf-common): every bit pattern is
// a valid value.
unsafe impl aya::Pod for PodRecord {}

#[repr(transparent)]
#[derive(Clone, Copy, Debug)]
struct PodConfig(Config);
// SAFETY: as for PodRecord.
unsafe impl aya::Pod for PodConfig {}

/// Attached programs and the record map. Dropping it detaches everything.
pub(crate) struct Recorder {
    conns: BpfHashMap<MapData, u64, PodRecord>,
    /// Owns the programs and their links; never used after loading, hence the Mutex only to make
    /// the type Sync.
    _ebpf: Mutex<Ebpf>,
    /// Whether the tp_btf writer tracker runs next to a connect hook.
    pub writer_tracking: bool,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("writer_tracking", &self.writer_tracking)
            .finish_non_exhaustive()
    }
}

// === impl Recorder ===

impl Recorder {
    /// Loads the program with its configuration for the socket at `socket` and attaches the
    /// hook of `tier`; with a connect hook, also the tp_btf writer tracker when the kernel has
    /// it. Errors are the reason the tier is unavailable, for the log.
    pub fn load(tier: Tier, socket: &Path, btf: &Btf) -> Result<Self, String> {
        let object = OBJECT.ok_or(
            "this sigil-agent was built without the eBPF object (build it with `cargo xtask \
             build-ebpf` before building the agent)",
        )?;
        let meta =
            std::fs::metadata(socket).map_err(|e| format!("stat {}: {e}", socket.display()))?;
        let config = Config {
            socket_ino: meta.ino(),
            socket_dev: kernel_dev(meta.dev()),
            _reserved: 0,
            offsets: btf.offsets().map_err(|e| e.to_string())?,
        };
        let pod_config = PodConfig(config);
        let mut ebpf = EbpfLoader::new()
            .override_global(CONFIG_GLOBAL, &pod_config, true)
            .load(object)
            .map_err(|e| format!("loading the eBPF object: {}", crate::error_chain(&e)))?;
        let kernel_btf = aya::Btf::from_sys_fs().map_err(|e| format!("reading kernel BTF: {e}"))?;
        attach(&mut ebpf, tier, &kernel_btf)?;
        // Writer tracking for the connect hooks (fd passed on or inherited): the sendmsg hook of
        // the same kind, which runs before the data is queued, else the tracepoint.
        let writer_tracking = match tier {
            Tier::Lsm | Tier::Fentry => {
                attach_sendmsg(&mut ebpf, tier, &kernel_btf).is_ok()
                    || attach(&mut ebpf, Tier::TpBtf, &kernel_btf).is_ok()
            }
            _ => false,
        };
        let map = ebpf
            .take_map(CONNS_MAP)
            .ok_or("the eBPF object has no connection map")?;
        let conns = BpfHashMap::try_from(map).map_err(|e| format!("connection map: {e}"))?;
        Ok(Self {
            conns,
            _ebpf: Mutex::new(ebpf),
            writer_tracking,
        })
    }

    /// The record for the server-side socket with cookie `cookie`.
    pub fn lookup(&self, cookie: u64) -> Option<ConnRecord> {
        self.conns.get(&cookie, 0).ok().map(|r| r.0)
    }
}

fn attach_sendmsg(ebpf: &mut Ebpf, tier: Tier, btf: &aya::Btf) -> Result<(), String> {
    let fail = |e: &(dyn std::error::Error + 'static)| {
        let reason = crate::error_chain(e);
        tracing::debug!(tier = %tier, %reason, "sendmsg writer tracking unavailable");
        reason
    };
    match tier {
        Tier::Lsm => {
            let p: &mut Lsm = ebpf
                .program_mut(PROG_LSM_SENDMSG)
                .ok_or("no sendmsg program")?
                .try_into()
                .map_err(|e| fail(&e))?;
            p.load("socket_sendmsg", btf).map_err(|e| fail(&e))?;
            p.attach().map_err(|e| fail(&e))?;
        }
        Tier::Fentry => {
            let p: &mut FEntry = ebpf
                .program_mut(PROG_FENTRY_SENDMSG)
                .ok_or("no sendmsg program")?
                .try_into()
                .map_err(|e| fail(&e))?;
            p.load("security_socket_sendmsg", btf)
                .map_err(|e| fail(&e))?;
            p.attach().map_err(|e| fail(&e))?;
        }
        _ => return Err("no sendmsg hook for this tier".into()),
    }
    Ok(())
}

fn attach(ebpf: &mut Ebpf, tier: Tier, btf: &aya::Btf) -> Result<(), String> {
    let err = |what: &str, e: &(dyn std::error::Error + 'static)| {
        format!("{what} {}: {}", tier.name(), crate::error_chain(e))
    };
    let missing = |name: &str| format!("the eBPF object has no program {name}");
    match tier {
        Tier::Lsm => {
            let p: &mut Lsm = ebpf
                .program_mut(PROG_LSM)
                .ok_or_else(|| missing(PROG_LSM))?
                .try_into()
                .map_err(|e| err("program type", &e))?;
            p.load("unix_stream_connect", btf)
                .map_err(|e| err("loading", &e))?;
            p.attach().map_err(|e| err("attaching", &e))?;
        }
        Tier::Fentry => {
            let p: &mut FEntry = ebpf
                .program_mut(PROG_FENTRY)
                .ok_or_else(|| missing(PROG_FENTRY))?
                .try_into()
                .map_err(|e| err("program type", &e))?;
            p.load("security_unix_stream_connect", btf)
                .map_err(|e| err("loading", &e))?;
            p.attach().map_err(|e| err("attaching", &e))?;
        }
        Tier::TpBtf => {
            let p: &mut BtfTracePoint = ebpf
                .program_mut(PROG_TP_BTF)
                .ok_or_else(|| missing(PROG_TP_BTF))?
                .try_into()
                .map_err(|e| err("program type", &e))?;
            p.load("sk_data_ready", btf)
                .map_err(|e| err("loading", &e))?;
            p.attach().map_err(|e| err("attaching", &e))?;
        }
        Tier::Pidfd | Tier::Procfs => return Err(format!("{} is not an eBPF tier", tier.name())),
    }
    Ok(())
}

/// Whether the agent may load tracing and LSM programs: root's full capability set, or
/// CAP_BPF + CAP_PERFMON + CAP_SYS_ADMIN. `Err` says what is missing.
pub(crate) fn privileges() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("reading /proc/self/status: {e}"))?;
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or("no CapEff in /proc/self/status")?;
    let missing: Vec<&str> = [
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ]
    .into_iter()
    .filter(|(bit, _)| caps & (1 << bit) == 0)
    .map(|(_, name)| name)
    .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "no BPF privileges: missing {} (run as root or grant CAP_BPF, CAP_PERFMON and \
             CAP_SYS_ADMIN)",
            missing.join(", ")
        ))
    }
}

/// The kernel's `dev_t` encoding (major << 20 | minor) of a userspace `st_dev`.
pub(crate) fn kernel_dev(dev: u64) -> u32 {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    (major << 20) | (minor & 0xf_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_encoding() {
        assert_eq!(kernel_dev(libc::makedev(8, 1)), (8 << 20) | 1);
        assert_eq!(kernel_dev(libc::makedev(0, 27)), 27);
    }
}
