//! Sigil's proxy-wasm authorization filter: Istio `AuthorizationPolicy` semantics on the
//! peer's SPIFFE ID, enforced inside Envoy, as an HTTP filter (`root_id: sigil_authz_http`,
//! in `envoy.filters.http.wasm`) or a network filter for plain TCP (`root_id:
//! sigil_authz_tcp`, in `envoy.filters.network.wasm`).
//!
//! The decisions are made by the pure engine [`sigil_authz::Engine`]; this crate is the glue:
//! it reads the plugin configuration, the connection's `connection.uri_san_peer_certificate`
//! (and `connection.mtls`), the request headers, answers 403 `RBAC: access denied` (or closes
//! the TCP connection) on deny, logs AUDIT and dry-run results, and counts decisions in Envoy
//! stats. It speaks the proxy-wasm ABI directly ([`abi`]) and exports only the callbacks it
//! uses, so that an HTTP request costs Envoy one call into the VM. See `docs/envoy-filter.md`.

pub mod abi;
mod attrs;
mod http;
mod root;
mod stats;
mod tcp;

pub use root::{Kind, ROOT_ID_HTTP, ROOT_ID_TCP};

/// The response header naming what denied a request.
pub const POLICY_HEADER: &str = "x-sigil-authz-policy";
/// Envoy's RBAC filter's deny body, so clients cannot tell the two apart.
pub const DENY_BODY: &[u8] = b"RBAC: access denied";
