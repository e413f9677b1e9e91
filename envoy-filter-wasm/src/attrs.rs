//! Envoy attributes for the engine, fetched from the host only when a policy asks for them.

use crate::abi;
use sigil_authz::RequestAttributes;

/// Envoy's property paths (proxy-wasm attribute names), serialized (segments joined by NUL).
const MTLS: &str = "connection\0mtls";
const URI_SAN_PEER: &str = "connection\0uri_san_peer_certificate";
const DESTINATION_PORT: &str = "destination\0port";
const SNI: &str = "connection\0requested_server_name";

pub use abi::HostError;

fn property(path: &str) -> Result<Option<Vec<u8>>, HostError> {
    abi::get_property(path)
}

fn text(b: Vec<u8>) -> String {
    String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The peer as the connection reports it: (`connection.mtls`, first URI SAN).
///
/// A URI SAN of the peer certificate implies a TLS connection on which the peer presented a
/// certificate (what `connection.mtls` says), so `connection.mtls` is only read when there is
/// no URI SAN (to report why the peer is unauthenticated): one host call per request.
pub fn peer() -> Result<(bool, Option<String>), HostError> {
    match property(URI_SAN_PEER)?.map(text) {
        Some(san) if !san.is_empty() => Ok((true, Some(san))),
        _ => {
            // Envoy serializes a bool property as one byte.
            let mtls = property(MTLS)?.is_some_and(|b| b.first().is_some_and(|&v| v != 0));
            Ok((mtls, None))
        }
    }
}

/// Lazily fetched request attributes. `http` is false in the TCP filter (no header map).
#[derive(Debug, Default)]
pub struct EnvoyAttributes {
    http: bool,
    method: Option<Option<String>>,
    path: Option<Option<String>>,
    host: Option<Option<String>>,
    headers: Vec<(String, Option<String>)>,
    port: Option<Option<u32>>,
    sni: Option<Option<String>>,
    /// Set when a host call failed: the decision must then be deny.
    pub failed: bool,
}

impl EnvoyAttributes {
    pub fn http() -> Self {
        Self {
            http: true,
            ..Self::default()
        }
    }

    pub fn tcp() -> Self {
        Self::default()
    }

    fn header_value(&mut self, name: &str) -> Option<String> {
        if !self.http {
            return None;
        }
        match abi::get_request_header(name) {
            Ok(v) => v.map(text),
            Err(_) => {
                self.failed = true;
                None
            }
        }
    }

    fn prop_text(&mut self, path: &str) -> Option<String> {
        match property(path) {
            Ok(v) => v.map(text),
            Err(_) => {
                self.failed = true;
                None
            }
        }
    }
}

impl RequestAttributes for EnvoyAttributes {
    fn method(&mut self) -> Option<&str> {
        if self.method.is_none() {
            self.method = Some(self.header_value(":method"));
        }
        self.method.as_ref().and_then(|v| v.as_deref())
    }

    fn path(&mut self) -> Option<&str> {
        if self.path.is_none() {
            self.path = Some(self.header_value(":path"));
        }
        self.path.as_ref().and_then(|v| v.as_deref())
    }

    fn host(&mut self) -> Option<&str> {
        if self.host.is_none() {
            self.host = Some(self.header_value(":authority"));
        }
        self.host.as_ref().and_then(|v| v.as_deref())
    }

    fn header(&mut self, name: &str) -> Option<&str> {
        let i = match self.headers.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                let v = self.header_value(name);
                self.headers.push((name.to_owned(), v));
                self.headers.len() - 1
            }
        };
        self.headers[i].1.as_deref()
    }

    fn destination_port(&mut self) -> Option<u32> {
        if self.port.is_none() {
            let v = match property(DESTINATION_PORT) {
                // Envoy serializes integer properties as 8 little-endian bytes.
                Ok(Some(b)) => <[u8; 8]>::try_from(b.as_slice())
                    .ok()
                    .and_then(|a| u32::try_from(u64::from_le_bytes(a)).ok()),
                Ok(None) => None,
                Err(_) => {
                    self.failed = true;
                    None
                }
            };
            self.port = Some(v);
        }
        self.port.flatten()
    }

    fn sni(&mut self) -> Option<&str> {
        if self.sni.is_none() {
            self.sni = Some(self.prop_text(SNI));
        }
        self.sni.as_ref().and_then(|v| v.as_deref())
    }
}
