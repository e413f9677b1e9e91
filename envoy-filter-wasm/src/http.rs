//! The HTTP filter: decides on the request headers (the only HTTP callback exported).

use crate::abi::{self, ACTION_CONTINUE, ACTION_PAUSE};
use crate::attrs::{self, EnvoyAttributes};
use crate::root::{Kind, STATE, log};
use crate::{DENY_BODY, POLICY_HEADER};
use sigil_authz::{Connection, RequestAttributes};

fn deny(policy: &str) -> u32 {
    if let Err(e) = abi::send_local_response(
        403,
        &[(POLICY_HEADER, policy), ("content-type", "text/plain")],
        DENY_BODY,
    ) {
        log!(Error, "sigil-authz: sending the 403 failed: {e:?}");
    }
    ACTION_PAUSE
}

/// ABI export: request headers arrived.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_request_headers(
    _context_id: u32,
    _headers: usize,
    _end_of_stream: u32,
) -> u32 {
    let Some(cfg) = STATE.with_borrow(|s| s.configured(Kind::Http)) else {
        log!(
            Error,
            "sigil-authz: request on an unconfigured HTTP filter: denied"
        );
        return deny("unconfigured");
    };
    let Ok((mtls, san)) = attrs::peer() else {
        log!(
            Error,
            "sigil-authz: cannot read the connection's peer: denied"
        );
        return deny("internal-error");
    };
    let conn = Connection {
        mtls,
        uri_san: san.as_deref(),
    };
    let mut req = EnvoyAttributes::http();
    let ev = cfg.engine.authorize(&conn, &mut req);
    if req.failed {
        log!(
            Error,
            "sigil-authz: reading request attributes failed: denied"
        );
        return deny("internal-error");
    }
    cfg.report(&ev, san.as_deref(), &|| {
        let mut r = EnvoyAttributes::http();
        let method = r.method().unwrap_or("-").to_owned();
        format!("{method} {}", r.path().unwrap_or("-"))
    });
    if ev.verdict.allowed {
        ACTION_CONTINUE
    } else {
        deny(&cfg.decided_by(ev.verdict.decided_by))
    }
}
