//! The HTTP filter: decides on the request headers.

use crate::attrs::{self, EnvoyAttributes};
use crate::root::Configured;
use crate::{DENY_BODY, POLICY_HEADER};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use sigil_authz::{Connection, RequestAttributes};
use std::rc::Rc;

#[derive(Debug)]
pub struct AuthzHttp {
    /// `None` only if Envoy creates a stream for a root that refused its configuration.
    configured: Option<Rc<Configured>>,
}

impl AuthzHttp {
    pub fn new(configured: Option<Rc<Configured>>) -> Self {
        Self { configured }
    }

    fn deny(&self, policy: &str) -> Action {
        self.send_http_response(
            403,
            vec![(POLICY_HEADER, policy), ("content-type", "text/plain")],
            Some(DENY_BODY),
        );
        Action::Pause
    }
}

impl Context for AuthzHttp {}

impl HttpContext for AuthzHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(cfg) = self.configured.clone() else {
            log::error!("sigil-authz: request on an unconfigured filter: denied");
            return self.deny("unconfigured");
        };
        let Ok((mtls, san)) = attrs::peer() else {
            log::error!("sigil-authz: cannot read the connection's peer: denied");
            return self.deny("internal-error");
        };
        let conn = Connection {
            mtls,
            uri_san: san.as_deref(),
        };
        let mut req = EnvoyAttributes::http();
        let ev = cfg.engine.authorize(&conn, &mut req);
        if req.failed {
            log::error!("sigil-authz: reading request attributes failed: denied");
            return self.deny("internal-error");
        }
        let quiet = ev.verdict.allowed && ev.audited.is_empty() && ev.dry_run.is_none();
        if quiet {
            // The hot path: count and go.
            cfg.stats.record(&ev);
            return Action::Continue;
        }
        let what = || {
            let mut r = EnvoyAttributes::http();
            let method = r.method().unwrap_or("-").to_owned();
            format!("{method} {}", r.path().unwrap_or("-"))
        };
        cfg.report(&ev, san.as_deref(), &what);
        if ev.verdict.allowed {
            Action::Continue
        } else {
            self.deny(&cfg.decided_by(ev.verdict.decided_by))
        }
    }
}
