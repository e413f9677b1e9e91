//! What the integration tests that run a real `sigil-server` process share: starting it (from
//! flags or a config file) and waiting until it serves, and reaching its agent API over mTLS
//! and its admin socket.
//!
//! Cargo builds this module into each test that declares `mod common;`, and each uses only
//! part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use sigil_proto::admin as apb;
use sigil_proto::admin::admin_client::AdminClient;
use sigil_proto::agent::node_client::NodeClient;
use tonic::transport::Channel;

pub const TD: &str = "example.org";

/// A running server, killed (and reaped) on drop; its directory goes with it.
pub struct Server {
    child: Child,
    _dir: tempfile::TempDir,
    /// The admin API's Unix socket.
    pub admin: PathBuf,
    /// The agent API's port, on 127.0.0.1.
    pub port: u16,
    /// The X.509 authorities of the trust bundle once the server served.
    pub roots: Vec<Vec<u8>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a server about to start keeps its state and listens, chosen before it starts so that
/// a config file can name them.
pub struct Layout {
    /// A fresh directory that lives as long as the server (for the kubeconfig and such).
    pub dir: PathBuf,
    pub data_dir: PathBuf,
    pub admin: PathBuf,
    /// Free on 127.0.0.1 when chosen.
    pub port: u16,
}

/// How to run the server.
pub enum Launch {
    /// `run` with these flags; the layout's (`-bindAddress 127.0.0.1 -serverPort -dataDir
    /// -socketPath`) are added.
    Flags(Vec<String>),
    /// `run -config <file>`, the file holding this text, which must use the layout (bind
    /// address 127.0.0.1, its port, data dir and socket).
    Config(String),
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a server as `launch` says, given where it is to live, and waits until its admin
/// API hands out the bundle (then its CA is ready and the agent API is listening).
pub async fn start_with(launch: impl FnOnce(&Layout) -> Launch) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout {
        dir: dir.path().to_path_buf(),
        data_dir: dir.path().join("data"),
        admin: dir.path().join("admin.sock"),
        port: free_port(),
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sigil-server"));
    cmd.arg("run");
    match launch(&layout) {
        Launch::Flags(flags) => {
            cmd.args(flags)
                .args(["-bindAddress", "127.0.0.1", "-serverPort"])
                .arg(layout.port.to_string())
                .arg("-dataDir")
                .arg(&layout.data_dir)
                .arg("-socketPath")
                .arg(&layout.admin);
        }
        Launch::Config(text) => {
            let conf = layout.dir.join("server.conf");
            std::fs::write(&conf, text).unwrap();
            cmd.arg("-config").arg(conf);
        }
    }
    let child = cmd.stdout(Stdio::null()).spawn().unwrap();
    let mut server = Server {
        child,
        _dir: dir,
        admin: layout.admin,
        port: layout.port,
        roots: Vec::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    server.roots = loop {
        if let Ok(mut c) = server.try_admin_client().await
            && let Ok(b) = c.get_bundle(apb::GetBundleRequest {}).await
        {
            break b.into_inner().x509_authorities;
        }
        // Panicking drops `server`, which kills the process.
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    server
}

impl Server {
    /// A client of the admin API.
    pub async fn admin_client(&self) -> AdminClient<Channel> {
        self.try_admin_client().await.unwrap()
    }

    async fn try_admin_client(&self) -> anyhow::Result<AdminClient<Channel>> {
        sigil_server::cli::connect(self.admin.to_str().unwrap()).await
    }
}

/// A client of the agent API, on a new connection (so the server sees `client_cert` anew),
/// presenting `client_cert` (an agent SVID and its key) if given.
pub async fn node_client(
    s: &Server,
    client_cert: Option<(Vec<u8>, &KeyPair)>,
) -> NodeClient<Channel> {
    // The server's SVID, verified properly: chain to the bundle and the server's SPIFFE ID.
    let verifier = sigil_tls::SvidVerifier::new(
        sigil_tls::Roots::fixed(s.roots.clone()),
        sigil_tls::Authorizer::Id(format!("spiffe://{TD}/spire/server").parse().unwrap()),
    );
    let b = rustls::ClientConfig::builder_with_provider(sigil_tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut cfg = match client_cert {
        Some((cert, key)) => b
            .with_client_auth_cert(
                vec![CertificateDer::from(cert)],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let port = s.port;
    let ch = tonic::transport::Endpoint::try_from("http://127.0.0.1")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                let tls = connector
                    .connect(ServerName::try_from("sigil-server").unwrap(), tcp)
                    .await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .unwrap();
    // Above tonic's 4 MiB default, as node_api's sync tests have always read. sigil-agent keeps
    // the default, which the server's SYNC_CHUNK keeps every message far below.
    NodeClient::new(ch).max_decoding_message_size(64 << 20)
}

/// A CSR (DER) for `key`, subject left to the server.
pub fn csr(key: &KeyPair) -> Vec<u8> {
    CertificateParams::default()
        .serialize_request(key)
        .unwrap()
        .der()
        .to_vec()
}
