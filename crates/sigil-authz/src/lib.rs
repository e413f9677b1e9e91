//! Istio `AuthorizationPolicy` semantics over SPIFFE peer identities: the policy engine of
//! Sigil's Envoy filter (`envoy-filter-wasm/`).
//!
//! Pure Rust, no I/O, no proxy-wasm: the filter gathers the connection's peer certificate URI
//! SAN and the request's attributes from Envoy and asks [`Engine::authorize`] for a decision.
//!
//! # Configuration
//!
//! ```json
//! {
//!   "trustDomain": "example.org",
//!   "trustDomainAliases": ["old.example.org"],
//!   "policies": [
//!     {"name": "httpbin", "namespace": "foo",
//!      "spec": {"action": "ALLOW",
//!               "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}}],
//!                          "to": [{"operation": {"methods": ["GET"]}}]}]}}
//!   ]
//! }
//! ```
//!
//! `spec` is the `spec` of a `security.istio.io/v1` AuthorizationPolicy, field for field
//! (`kubectl get authorizationpolicy X -o json | jq .spec`). Semantics are Istio's (see
//! [`Engine::authorize`]); what the filter cannot enforce (`requestPrincipals`, `ipBlocks`,
//! `CUSTOM`, JWT conditions, ...) is rejected by [`Engine::from_json`] with an error naming
//! the field, never ignored.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use sigil_authz::{Engine, Protocol, Connection, StaticRequest};
//! let engine = Engine::from_json(br#"{"policies": [{"name": "p", "namespace": "ns",
//!     "spec": {"rules": [{"from": [{"source": {"principals": ["cluster.local/ns/a/sa/b"]}}]}]}}]}"#,
//!     Protocol::Http)?;
//! let conn = Connection { mtls: true, uri_san: Some("spiffe://cluster.local/ns/a/sa/b") };
//! assert!(engine.authorize(&conn, &mut StaticRequest::get("/")).verdict.allowed);
//! let other = Connection { mtls: true, uri_san: Some("spiffe://cluster.local/ns/a/sa/c") };
//! assert!(!engine.authorize(&other, &mut StaticRequest::get("/")).verdict.allowed);
//! # Ok(())
//! # }
//! ```

mod config;
mod engine;
mod matcher;
mod peer;

pub use config::{Config, ConfigError};
pub use engine::{
    Action, Connection, DecidedBy, Engine, Evaluation, PolicyInfo, Protocol, RequestAttributes,
    StaticRequest, Verdict,
};
pub use peer::{PeerError, SpiffeId};
