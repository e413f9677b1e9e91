//! Root contexts (one per plugin using this VM): configuration, refused when invalid, and the
//! shared state of the filter.

use crate::abi::{self, LogLevel};
use crate::stats::Stats;
use sigil_authz::{DecidedBy, Engine, Evaluation, Protocol};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// `root_id` of the HTTP filter (`envoy.filters.http.wasm`).
pub const ROOT_ID_HTTP: &str = "sigil_authz_http";
/// `root_id` of the network filter (`envoy.filters.network.wasm`).
pub const ROOT_ID_TCP: &str = "sigil_authz_tcp";

/// Which filter a root serves, from its Envoy `root_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Http,
    Tcp,
}

impl Kind {
    /// The kind for an Envoy `root_id`; anything else is a configuration error.
    pub fn from_root_id(root_id: &str) -> Option<Self> {
        match root_id {
            ROOT_ID_HTTP => Some(Self::Http),
            ROOT_ID_TCP => Some(Self::Tcp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Tcp => "tcp",
        }
    }

    fn protocol(self) -> Protocol {
        match self {
            Self::Http => Protocol::Http,
            Self::Tcp => Protocol::Tcp,
        }
    }
}

/// Logs through Envoy (`wasm` logger).
macro_rules! log {
    ($level:ident, $($arg:tt)*) => {
        $crate::abi::log($crate::abi::LogLevel::$level, &format!($($arg)*))
    };
}
pub(crate) use log;

/// A configured plugin: what its requests share.
#[derive(Debug)]
pub struct Configured {
    pub engine: Engine,
    pub kind: Kind,
    pub stats: Stats,
}

impl Configured {
    /// The response header value naming what decided.
    pub fn decided_by(&self, by: DecidedBy) -> String {
        match by {
            DecidedBy::Policy(i) => self
                .engine
                .policies()
                .get(i)
                .map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
            DecidedBy::NoAllowPolicyMatched => "default-deny".to_owned(),
            DecidedBy::NoPolicies => "no-policy".to_owned(),
            DecidedBy::Unauthenticated(_) => "unauthenticated".to_owned(),
        }
    }

    /// Counts the decision; logs denials, AUDIT matches and dry-run results.
    pub fn report(&self, ev: &Evaluation, peer: Option<&str>, what: &dyn Fn() -> String) {
        self.stats.record(ev);
        if ev.verdict.allowed && ev.audited.is_empty() && ev.dry_run.is_none() {
            return;
        }
        let peer = peer.unwrap_or("-");
        let enforced = if ev.verdict.allowed { "allow" } else { "deny" };
        if !ev.verdict.allowed {
            let why = match ev.verdict.decided_by {
                DecidedBy::Unauthenticated(e) => e.to_string(),
                by => format!("policy {}", self.decided_by(by)),
            };
            log!(Debug, "sigil-authz: deny {} from {peer}: {why}", what());
        }
        for &i in &ev.audited {
            if let Some(p) = self.engine.policies().get(i) {
                log!(
                    Info,
                    "sigil-authz: AUDIT policy {p} matched {} from {peer} (decision: {enforced})",
                    what()
                );
            }
        }
        if let Some(dry) = ev.dry_run {
            log!(
                Info,
                "sigil-authz: dry-run: would {} {} from {peer} ({}); enforced: {enforced}",
                if dry.allowed { "allow" } else { "deny" },
                what(),
                self.decided_by(dry.decided_by)
            );
        }
    }
}

/// One plugin's root context.
#[derive(Debug)]
struct Root {
    context_id: u32,
    /// Envoy's plugin name: tells plugins sharing this VM apart.
    plugin_name: String,
    configured: Rc<Configured>,
}

/// Everything the VM holds (one VM per Envoy worker thread: no concurrency).
#[derive(Debug, Default)]
pub struct State {
    roots: Vec<Root>,
    /// Per TCP connection: whether it has been decided (and how).
    pub tcp: HashMap<u32, crate::tcp::Decision>,
}

thread_local! {
    pub static STATE: RefCell<State> = RefCell::new(State::default());
}

fn property_text(name: &str) -> String {
    match abi::get_property(name) {
        Ok(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
        _ => String::new(),
    }
}

impl State {
    /// The configuration for a stream of `kind`: the only such root, or the one named by the
    /// stream's `plugin_name` when several plugins share this VM.
    pub fn configured(&self, kind: Kind) -> Option<Rc<Configured>> {
        let mut of_kind = self.roots.iter().filter(|r| r.configured.kind == kind);
        let first = of_kind.next()?;
        if of_kind.next().is_none() {
            return Some(first.configured.clone());
        }
        let name = property_text("plugin_name");
        self.roots
            .iter()
            .find(|r| r.configured.kind == kind && r.plugin_name == name)
            .map(|r| r.configured.clone())
    }

    fn configure(&self, context_id: u32, size: usize) -> Result<Root, String> {
        let envoy_root_id = property_text("plugin_root_id");
        let plugin_name = property_text("plugin_name");
        let kind = Kind::from_root_id(&envoy_root_id).ok_or_else(|| {
            format!(
                "root_id {envoy_root_id:?} is not {ROOT_ID_HTTP:?} (envoy.filters.http.wasm) or \
                 {ROOT_ID_TCP:?} (envoy.filters.network.wasm)"
            )
        })?;
        let json = abi::plugin_configuration(size)
            .map_err(|e| format!("reading the plugin configuration: {e:?}"))?
            .filter(|j| !j.is_empty())
            .ok_or("no plugin configuration (want {\"policies\": [...]})")?;
        let engine = Engine::from_json(&json, kind.protocol()).map_err(|e| e.to_string())?;
        if let Some(id) = engine.root_id()
            && id != envoy_root_id
        {
            return Err(format!(
                "configuration rootId {id:?} does not match Envoy's root_id {envoy_root_id:?}"
            ));
        }
        let stats = Stats::define(kind.as_str(), engine.policies())
            .map_err(|e| format!("defining stats: {}", e.0))?;
        for w in engine.warnings() {
            log!(Warn, "sigil-authz: {w}");
        }
        Ok(Root {
            context_id,
            plugin_name,
            configured: Rc::new(Configured {
                engine,
                kind,
                stats,
            }),
        })
    }
}

/// ABI export: the VM started.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_vm_start(_root_context_id: u32, _vm_configuration_size: usize) -> u32 {
    1
}

/// ABI export: a plugin (root context) is (re)configured. Returning 0 makes Envoy refuse the
/// plugin: an invalid configuration never runs.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_configure(
    root_context_id: u32,
    plugin_configuration_size: usize,
) -> u32 {
    STATE.with_borrow_mut(|state| {
        state.roots.retain(|r| r.context_id != root_context_id);
        match state.configure(root_context_id, plugin_configuration_size) {
            Ok(root) => {
                // A root with the same kind and plugin name is the previous version of this
                // plugin (a listener update creates a new root while the old one drains): the
                // new configuration replaces it. (Two different plugins with one name in one
                // VM would share the newest configuration: plugin names must be unique.)
                let before = state.roots.len();
                state.roots.retain(|r| {
                    let replaced = r.configured.kind == root.configured.kind
                        && r.plugin_name == root.plugin_name;
                    if replaced {
                        r.configured.stats.flush();
                    }
                    !replaced
                });
                if state.roots.len() != before {
                    log!(
                        Info,
                        "sigil-authz: plugin {:?} reconfigured: the new configuration replaces \
                         the previous one",
                        root.plugin_name
                    );
                }
                log!(
                    Info,
                    "sigil-authz: {} filter configured with {} policies",
                    root.configured.kind.as_str(),
                    root.configured.engine.policies().len()
                );
                state.roots.push(root);
                abi::set_tick_period_ms(crate::stats::FLUSH_PERIOD_MS);
                1
            }
            Err(e) => {
                abi::log(
                    LogLevel::Error,
                    &format!("sigil-authz: invalid configuration, refusing to start: {e}"),
                );
                0
            }
        }
    })
}

/// ABI export: the root's timer: counts go to Envoy's stats.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_tick(root_context_id: u32) {
    STATE.with_borrow(|state| {
        if let Some(r) = state.roots.iter().find(|r| r.context_id == root_context_id) {
            r.configured.stats.flush();
        }
    });
}
