//! The root context: configuration (refused when invalid), and the per-stream contexts.

use crate::http::AuthzHttp;
use crate::stats::Stats;
use crate::tcp::AuthzTcp;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::ContextType;
use sigil_authz::{DecidedBy, Engine, Evaluation, Protocol};
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

/// A configured filter: what every stream context shares.
#[derive(Debug)]
pub struct Configured {
    pub engine: Engine,
    pub kind: Kind,
    pub stats: Stats,
}

impl Configured {
    /// The response header value naming what decided `ev`.
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

    /// Counts the decision, and logs denials, AUDIT matches and dry-run results.
    pub fn report(&self, ev: &Evaluation, peer: Option<&str>, what: &dyn Fn() -> String) {
        self.stats.record(ev);
        let peer = peer.unwrap_or("-");
        if !ev.verdict.allowed {
            let why = match ev.verdict.decided_by {
                DecidedBy::Unauthenticated(e) => e.to_string(),
                by => format!("policy {}", self.decided_by(by)),
            };
            log::debug!("sigil-authz: deny {} from {peer}: {why}", what());
        }
        for &i in &ev.audited {
            if let Some(p) = self.engine.policies().get(i) {
                log::info!(
                    "sigil-authz: AUDIT policy {p} matched {} from {peer} (decision: {})",
                    what(),
                    if ev.verdict.allowed { "allow" } else { "deny" }
                );
            }
        }
        if let Some(dry) = ev.dry_run {
            log::info!(
                "sigil-authz: dry-run: would {} {} from {peer} ({}); enforced: {}",
                if dry.allowed { "allow" } else { "deny" },
                what(),
                self.decided_by(dry.decided_by),
                if ev.verdict.allowed { "allow" } else { "deny" }
            );
        }
    }
}

#[derive(Debug, Default)]
pub struct AuthzRoot {
    configured: Option<Rc<Configured>>,
}

fn root_id() -> String {
    match hostcalls::get_property(vec!["plugin_root_id"]) {
        Ok(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
        _ => String::new(),
    }
}

impl AuthzRoot {
    fn configure(&self) -> Result<Configured, String> {
        let envoy_root_id = root_id();
        let kind = Kind::from_root_id(&envoy_root_id).ok_or_else(|| {
            format!(
                "root_id {envoy_root_id:?} is not {ROOT_ID_HTTP:?} (envoy.filters.http.wasm) or \
                 {ROOT_ID_TCP:?} (envoy.filters.network.wasm)"
            )
        })?;
        let json = self
            .get_plugin_configuration()
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
            log::warn!("sigil-authz: {w}");
        }
        Ok(Configured {
            engine,
            kind,
            stats,
        })
    }
}

impl Context for AuthzRoot {}

impl RootContext for AuthzRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        match self.configure() {
            Ok(c) => {
                log::info!(
                    "sigil-authz: {} filter configured with {} policies",
                    c.kind.as_str(),
                    c.engine.policies().len()
                );
                self.configured = Some(Rc::new(c));
                self.set_tick_period(crate::stats::FLUSH_PERIOD);
                true
            }
            Err(e) => {
                // Refuse to start: never allow-all by accident.
                log::error!("sigil-authz: invalid configuration, refusing to start: {e}");
                self.configured = None;
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(c) = &self.configured {
            c.stats.flush();
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(AuthzHttp::new(self.configured.clone())))
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(AuthzTcp::new(self.configured.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        // Unconfigured (Envoy does not create streams then): HTTP, whose contexts deny.
        match self.configured.as_ref().map(|c| c.kind) {
            Some(Kind::Tcp) => Some(ContextType::StreamContext),
            _ => Some(ContextType::HttpContext),
        }
    }
}
