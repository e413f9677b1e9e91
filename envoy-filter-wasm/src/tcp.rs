//! The network (L4) filter for plain TCP: decides once per connection, on its first data.
//!
//! Envoy calls `on_new_connection` before the TLS handshake is over, so the peer certificate
//! is not known yet; like Envoy's RBAC network filter, the decision is taken when the first
//! bytes arrive from the downstream peer (or from upstream, once the handshake is done).
//! A denied connection is closed before any of its data is forwarded.

use crate::attrs::{self, EnvoyAttributes};
use crate::root::Configured;
use proxy_wasm::traits::{Context, StreamContext};
use proxy_wasm::types::{Action, PeerType};
use sigil_authz::Connection;
use std::rc::Rc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Undecided,
    Allowed,
    Denied,
}

#[derive(Debug)]
pub struct AuthzTcp {
    configured: Option<Rc<Configured>>,
    state: State,
}

impl AuthzTcp {
    pub fn new(configured: Option<Rc<Configured>>) -> Self {
        Self {
            configured,
            state: State::Undecided,
        }
    }

    /// Decides now; `require_peer`: only if the handshake has produced a peer (upstream data
    /// may come first).
    fn decide(&mut self, require_peer: bool) {
        let Some(cfg) = self.configured.clone() else {
            log::error!("sigil-authz: connection on an unconfigured filter: closed");
            self.state = State::Denied;
            return;
        };
        let Ok((mtls, san)) = attrs::peer() else {
            log::error!("sigil-authz: cannot read the connection's peer: closed");
            self.state = State::Denied;
            return;
        };
        if require_peer && san.is_none() {
            return;
        }
        let conn = Connection {
            mtls,
            uri_san: san.as_deref(),
        };
        let mut req = EnvoyAttributes::tcp();
        let ev = cfg.engine.authorize(&conn, &mut req);
        let allowed = ev.verdict.allowed && !req.failed;
        if !(ev.verdict.allowed && ev.audited.is_empty() && ev.dry_run.is_none()) {
            cfg.report(&ev, san.as_deref(), &|| "connection".to_owned());
        } else {
            cfg.stats.record(&ev);
        }
        self.state = if allowed {
            State::Allowed
        } else {
            State::Denied
        };
    }

    fn act(&self) -> Action {
        match self.state {
            State::Allowed => Action::Continue,
            State::Undecided => Action::Pause,
            State::Denied => {
                self.close_downstream();
                self.close_upstream();
                Action::Pause
            }
        }
    }
}

impl Context for AuthzTcp {}

impl StreamContext for AuthzTcp {
    fn on_downstream_data(&mut self, _size: usize, _end_of_stream: bool) -> Action {
        if self.state == State::Undecided {
            self.decide(false);
        }
        self.act()
    }

    fn on_upstream_data(&mut self, _size: usize, _end_of_stream: bool) -> Action {
        if self.state == State::Undecided {
            self.decide(true);
            if self.state == State::Undecided {
                // Handshake not finished: data cannot reach the peer before it is; the
                // decision comes with the peer's first bytes.
                return Action::Continue;
            }
        }
        self.act()
    }

    fn on_downstream_close(&mut self, _peer_type: PeerType) {}
}
