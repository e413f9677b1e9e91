//! The network (L4) filter for plain TCP: decides once per connection, on its first data.
//!
//! Envoy calls network filters before the TLS handshake is over, so the peer certificate is
//! not known when the connection opens; like Envoy's RBAC network filter, the decision is taken
//! when the first bytes arrive from the peer (or from upstream, once the handshake is done).
//! A denied connection is closed before any of its data is forwarded.

use crate::abi::{self, ACTION_CONTINUE, ACTION_PAUSE};
use crate::attrs::{self, EnvoyAttributes};
use crate::root::{Kind, STATE, log};
use sigil_authz::Connection;

/// A connection's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Denied,
}

/// Decides the current connection; `None` if `require_peer` and the handshake has not produced
/// a peer yet.
fn decide(require_peer: bool) -> Option<Decision> {
    let Some(cfg) = STATE.with_borrow(|s| s.configured(Kind::Tcp)) else {
        log!(
            Error,
            "sigil-authz: connection on an unconfigured TCP filter: closed"
        );
        return Some(Decision::Denied);
    };
    let Ok((mtls, san)) = attrs::peer() else {
        log!(
            Error,
            "sigil-authz: cannot read the connection's peer: closed"
        );
        return Some(Decision::Denied);
    };
    if require_peer && san.is_none() {
        return None;
    }
    let conn = Connection {
        mtls,
        uri_san: san.as_deref(),
    };
    let mut req = EnvoyAttributes::tcp();
    let ev = cfg.engine.authorize(&conn, &mut req);
    cfg.report(&ev, san.as_deref(), &|| "connection".to_owned());
    Some(if ev.verdict.allowed && !req.failed {
        Decision::Allowed
    } else {
        Decision::Denied
    })
}

fn on_data(context_id: u32, from_upstream: bool) -> u32 {
    let known = STATE.with_borrow(|s| s.tcp.get(&context_id).copied());
    let decision = match known {
        Some(d) => d,
        None => match decide(from_upstream) {
            Some(d) => {
                STATE.with_borrow_mut(|s| s.tcp.insert(context_id, d));
                d
            }
            // Upstream data before the handshake is done: it cannot reach the peer before it
            // is; the decision comes with the peer's first bytes.
            None => return ACTION_CONTINUE,
        },
    };
    match decision {
        Decision::Allowed => ACTION_CONTINUE,
        Decision::Denied => {
            abi::close_connection();
            ACTION_PAUSE
        }
    }
}

/// ABI export: bytes from the peer.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_downstream_data(
    context_id: u32,
    _size: usize,
    _end_of_stream: u32,
) -> u32 {
    on_data(context_id, false)
}

/// ABI export: bytes from upstream.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_upstream_data(
    context_id: u32,
    _size: usize,
    _end_of_stream: u32,
) -> u32 {
    on_data(context_id, true)
}

/// ABI export: the peer's side closed: forget the connection.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_downstream_connection_close(context_id: u32, _peer_type: u32) {
    STATE.with_borrow_mut(|s| s.tcp.remove(&context_id));
}
