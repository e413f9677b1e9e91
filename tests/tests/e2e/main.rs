//! End-to-end tests: real `sigil-server` and `sigil-agent` processes, real sockets, each test in
//! its own temp dir on ports the kernel picks, checked with independent SPIFFE clients (the Rust
//! `spiffe` crate and py-spiffe) and with raw gRPC.
//!
//! The binaries must be built first: `cargo xtask test` does it (`cargo build -p sigil-server
//! -p sigil-agent -p sigil-oidc`).

mod authority;
mod cli;
mod controller;
mod ebpf;
mod envoy_sds;
mod faults;
mod federation;
mod ha;
mod images;
mod k8s;
mod k8s_psat;
mod kind;
mod lifecycle;
mod logging;
mod nested;
mod notifier;
mod oidc;
mod python;
mod rust_client;
mod telemetry;
mod uids;
mod wasm_filter;

use sigil_e2e::harness::{Agent, Server, TestDir};

pub const TD: &str = "e2e.sigil.test";

/// A server and one agent attested with a join token whose alias is `node_id`: entries for
/// workloads on that agent use `node_id` as their parent.
#[derive(Debug)]
pub struct Env {
    // Field order is drop order: processes die before their directory goes.
    pub agent: Agent,
    pub server: Server,
    pub node_id: String,
    pub dir: TestDir,
}

impl Env {
    pub fn start(name: &str) -> Self {
        let dir = TestDir::new(name);
        let server = Server::start(dir.path(), TD);
        let node_id = server.id("/node");
        let token = server.token(Some(&node_id));
        let agent = Agent::start(dir.path(), "agent", &server, &token);
        Self {
            agent,
            server,
            node_id,
            dir,
        }
    }

    /// Registers `spiffe://TD<path>` for the given selectors on this env's agent.
    pub fn register(&self, path: &str, selectors: &[&str], extra: &[&str]) -> String {
        let id = self.server.id(path);
        self.server
            .create_entry(&self.node_id, &id, selectors, extra);
        id
    }

    /// Selector matching the test process itself.
    pub fn my_uid() -> String {
        // SAFETY: getuid has no preconditions.
        format!("unix:uid:{}", unsafe { libc::getuid() })
    }
}

/// The DER certificates of a PEM text.
pub fn pem_certs(pem: &str) -> Vec<Vec<u8>> {
    sigil_spiffe::x509::parse_pem_certs(pem.as_bytes()).expect("PEM certificates")
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}
