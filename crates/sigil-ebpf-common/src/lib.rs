//! Types shared by the eBPF program (`agent-ebpf`) and the agent that loads it.
//!
//! Everything here crosses the kernel/user boundary byte for byte, so every type is `#[repr(C)]`
//! with fields ordered so that there is no padding (checked below): padding bytes would be
//! uninitialised on one side and compared or hashed on the other.
#![no_std]

/// Which hook recorded a connection ([`ConnRecord::hook`]).
pub const HOOK_LSM: u32 = 1;
/// fentry on `security_unix_stream_connect`.
pub const HOOK_FENTRY: u32 = 2;
/// tp_btf `sock/sk_data_ready`: the first process that wrote on the connection.
pub const HOOK_TP_BTF: u32 = 3;

/// [`ConnRecord::foreign_writer`]: a process other than the recorded one wrote on the
/// connection (its fd was passed on or inherited).
pub const FOREIGN_WRITER: u32 = 1;

/// Capacity of the cookie-keyed record map. LRU: the oldest connections' records go first; the
/// agent looks a record up within moments of the connection, so only a flood of connections can
/// evict one early, and then attestation fails closed.
pub const MAX_CONNECTIONS: u32 = 16384;

/// What the kernel knew about the process that connected to (or, for tp_btf, first wrote on) a
/// connection of the agent's Workload API socket. Keyed by the socket cookie of the server-side
/// socket (`SO_COOKIE` of the accepted fd).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnRecord {
    /// Thread group id (the "pid" userspace sees) in the initial pid namespace.
    pub tgid: u32,
    /// The thread that made the call.
    pub tid: u32,
    /// Real uid and gid, as `bpf_get_current_uid_gid` reports them.
    pub uid: u32,
    pub gid: u32,
    /// cgroup v2 id (the inode number of the cgroup's directory).
    pub cgroup_id: u64,
    /// `start_boottime` of the thread group leader, in ns: with `tgid` it names one process
    /// for the life of the machine (`/proc/<pid>/stat` field 22 is this in clock ticks).
    pub start_time_ns: u64,
    /// Inode of the executable (`task->mm->exe_file`), 0 if unreachable (kernel threads).
    pub exe_ino: u64,
    /// Kernel `dev_t` (major << 20 | minor) of the executable's filesystem.
    pub exe_dev: u32,
    /// Inode numbers of the pid and mount namespaces (`/proc/<pid>/ns/{pid,mnt}`).
    pub pid_ns: u32,
    pub mnt_ns: u32,
    /// `HOOK_*`.
    pub hook: u32,
    /// `FOREIGN_WRITER` once another process wrote on the connection; never cleared.
    pub foreign_writer: u32,
    pub _reserved: u32,
}

/// Kernel structure offsets (bytes), read by the agent from the running kernel's BTF: Rust eBPF
/// has no CO-RE field relocations, so the loader patches them in ([`Config::offsets`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    pub sock_family: u32,
    pub unix_sock_path_dentry: u32,
    pub dentry_inode: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub sb_dev: u32,
    pub task_group_leader: u32,
    pub task_start_boottime: u32,
    pub task_mm: u32,
    pub mm_exe_file: u32,
    pub file_inode: u32,
    pub task_nsproxy: u32,
    pub nsproxy_mnt_ns: u32,
    pub mnt_ns_inum: u32,
    pub task_thread_pid: u32,
    pub pid_level: u32,
    pub pid_numbers: u32,
    pub upid_size: u32,
    pub upid_ns: u32,
    pub pid_ns_inum: u32,
    /// `struct socket` -> `sk`, and the cookie cached in `sock_common` (set once the cookie was
    /// asked for, which the connect hooks do for the client end).
    pub socket_sk: u32,
    pub sock_cookie: u32,
}

/// The program's configuration, a read-only global (`SIGIL_CONFIG`) set by the loader. Zero
/// (the default) makes every hook a no-op, so a program loaded without it records nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Inode and kernel `dev_t` of the agent's socket file: connections to any other socket are
    /// ignored in the kernel.
    pub socket_ino: u64,
    pub socket_dev: u32,
    pub _reserved: u32,
    pub offsets: Offsets,
}

// === impl Config ===

impl Config {
    /// All zero: records nothing (a `const`, for the eBPF program's global initialiser).
    pub const EMPTY: Config = Config {
        socket_ino: 0,
        socket_dev: 0,
        _reserved: 0,
        offsets: Offsets {
            sock_family: 0,
            unix_sock_path_dentry: 0,
            dentry_inode: 0,
            inode_ino: 0,
            inode_sb: 0,
            sb_dev: 0,
            task_group_leader: 0,
            task_start_boottime: 0,
            task_mm: 0,
            mm_exe_file: 0,
            file_inode: 0,
            task_nsproxy: 0,
            nsproxy_mnt_ns: 0,
            mnt_ns_inum: 0,
            task_thread_pid: 0,
            pid_level: 0,
            pid_numbers: 0,
            upid_size: 0,
            upid_ns: 0,
            pid_ns_inum: 0,
            socket_sk: 0,
            sock_cookie: 0,
        },
    };
}

// No padding anywhere: the sizes are the sums of the fields.
const _: () = assert!(core::mem::size_of::<ConnRecord>() == 4 * 4 + 8 * 3 + 4 * 6);
const _: () = assert!(core::mem::size_of::<Offsets>() == 4 * 22);
const _: () = assert!(core::mem::size_of::<Config>() == 8 + 4 + 4 + 4 * 22);
