//! Connecting to the server's Node API.

use std::sync::Arc;
use std::time::Duration;

use sigil_proto::agent::RenewAgentRequest;
use sigil_proto::agent::node_client::NodeClient;
use sigil_spiffe::{SpiffeId, TrustDomain};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use super::AgentSvid;
use super::attestor::{EvidenceError, NodeAttestor};
use super::config::ServerHost;
use super::tls::{self, ServerTrust, TlsConnector};
use crate::keys::KeyPair;
use crate::svid;

/// Deadline for unary calls to the server. A server that accepted the connection but does not
/// answer would otherwise stall signing forever; past this the call fails and is retried.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// A unary request carrying [`RPC_TIMEOUT`] (enforced by tonic's client and sent to the server
/// as `grpc-timeout`).
pub fn unary<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(RPC_TIMEOUT);
    req
}

/// A failed call to the server.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("connecting to the server: {}", crate::error_chain(.0))]
    Connect(#[from] tonic::transport::Error),
    // Not a `source`: the message already carries everything the status has.
    #[error("server returned {:?}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    #[error("building the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("invalid response from the server: {0}")]
    InvalidResponse(String),
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    /// The node attestor's evidence (the projected token) could not be read.
    #[error(transparent)]
    Evidence(#[from] EvidenceError),
}

/// What the agent presents and trusts on its mTLS connections. Re-read on every (re)connect.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub svid: Arc<AgentSvid>,
    /// The own trust domain's X.509 authorities (DER), which the server's certificate must
    /// chain to.
    pub roots: Arc<Vec<Vec<u8>>>,
    /// Tainted X.509 authority IDs: an agent SVID chained to one is renewed at once.
    pub tainted: Arc<std::collections::BTreeSet<String>>,
}

/// The server's address and expected identity.
#[derive(Clone, Debug)]
pub struct ServerEndpoint {
    host: String,
    port: u16,
    trust_domain: TrustDomain,
    server_id: SpiffeId,
}

/// A successful node attestation.
#[derive(Debug)]
pub struct Attested {
    pub svid: AgentSvid,
    pub bundle: sigil_proto::types::Bundle,
}

// === impl NodeError ===

impl From<tonic::Status> for NodeError {
    fn from(s: tonic::Status) -> Self {
        Self::Status(s)
    }
}

impl NodeError {
    /// Whether retrying the same call later can help (server down, network trouble) as opposed
    /// to the server having said no.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect(_) => true,
            Self::Status(s) => matches!(
                s.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Aborted
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::Internal
                    | tonic::Code::Unknown
                    | tonic::Code::Cancelled
            ),
            Self::Tls(_) | Self::InvalidResponse(_) | Self::Key(_) | Self::Evidence(_) => false,
        }
    }

    /// Whether the server refuses this agent altogether (evicted, banned, unknown).
    pub fn is_agent_rejected(&self) -> bool {
        matches!(self, Self::Status(s) if matches!(
            s.code(),
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
        ))
    }
}

// === impl ServerEndpoint ===

impl ServerEndpoint {
    pub fn new(host: &ServerHost, port: u16, trust_domain: &TrustDomain) -> Self {
        Self {
            host: host.as_str().to_string(),
            port,
            trust_domain: trust_domain.clone(),
            server_id: super::server_id(trust_domain),
        }
    }

    pub fn server_id(&self) -> &SpiffeId {
        &self.server_id
    }

    /// `host:port`, for log lines.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// tonic endpoint settings. The `http://` scheme keeps tonic from attempting TLS itself; the
    /// connector does it. Keepalives detect a vanished server on an otherwise idle sync stream.
    fn endpoint(&self) -> Endpoint {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        // Invariant: host is a validated DNS name or IP and port a u16, so the URI is valid;
        // `from_static` on a fixed URI is the total fallback.
        Endpoint::from_shared(format!("http://{host}:{}", self.port))
            .unwrap_or_else(|_| Endpoint::from_static("http://127.0.0.1:8081"))
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(15))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
    }

    /// Node attestation: a fresh key, a CSR, the attestor's evidence, and AttestAgent over
    /// server-authenticated TLS.
    pub async fn attest(
        &self,
        attestor: &NodeAttestor,
        trust: ServerTrust,
    ) -> Result<Attested, NodeError> {
        let key = KeyPair::generate()?;
        let request = attestor.request(key.csr_der()?)?;
        let config = tls::client_config(trust, None)?;
        let connector = TlsConnector::new(&self.host, self.port, move || Ok(config.clone()));
        let channel = self.endpoint().connect_with_connector(connector).await?;
        let resp = NodeClient::new(channel)
            .attest_agent(unary(request))
            .await?
            .into_inner();
        let bundle = resp.bundle.ok_or_else(|| {
            NodeError::InvalidResponse("no bundle in AttestAgent response".into())
        })?;
        let svid = self.check_agent_svid(resp.svid, key, &bundle.x509_authorities)?;
        Ok(Attested { svid, bundle })
    }

    /// A lazily connecting mTLS channel presenting the current agent SVID. tonic reconnects on
    /// its own after failures, picking up whatever `creds` holds then.
    pub fn mtls_channel(&self, creds: watch::Receiver<Arc<Credentials>>) -> Channel {
        let server_id = self.server_id.clone();
        let connector = TlsConnector::new(&self.host, self.port, move || {
            let c = creds.borrow().clone();
            tls::client_config(
                ServerTrust::Bundle {
                    roots: c.roots.clone(),
                    server_id: server_id.clone(),
                },
                Some(&c.svid.identity()),
            )
        });
        self.endpoint().connect_with_connector_lazy(connector)
    }

    /// RenewAgent: a new key and SVID for the agent.
    pub async fn renew(
        &self,
        client: &mut NodeClient<Channel>,
        roots: &[Vec<u8>],
    ) -> Result<AgentSvid, NodeError> {
        let key = KeyPair::generate()?;
        let csr = key.csr_der()?;
        let resp = client
            .renew_agent(unary(RenewAgentRequest { csr }))
            .await?
            .into_inner();
        self.check_agent_svid(resp.svid, key, roots)
    }

    /// An agent SVID from the server must chain to the bundle and be in our trust domain;
    /// anything else would fail on first use, so fail here with a clear message.
    fn check_agent_svid(
        &self,
        svid: Option<sigil_proto::types::X509Svid>,
        key: KeyPair,
        roots: &[Vec<u8>],
    ) -> Result<AgentSvid, NodeError> {
        let svid = svid.ok_or_else(|| NodeError::InvalidResponse("no SVID in response".into()))?;
        let id = svid::verify_chain(&svid.cert_chain, roots, svid::now_unix())
            .map_err(|e| NodeError::InvalidResponse(format!("agent SVID: {e}")))?;
        if !id.is_member_of(&self.trust_domain) {
            return Err(NodeError::InvalidResponse(format!(
                "agent SVID {id} is not in trust domain {}",
                self.trust_domain
            )));
        }
        AgentSvid::new(svid.cert_chain, key.into_private_key())
            .map_err(|e| NodeError::InvalidResponse(format!("agent SVID: {e}")))
    }
}
