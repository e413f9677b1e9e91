//! `sigil-oidc`: SPIRE's OIDC Discovery Provider (`oidc-discovery-provider -config FILE
//! [-expandEnv]`) for Sigil. It publishes the trust domain's JWT authorities as an OpenID
//! Connect discovery document and a JWKS, so relying parties that only know an issuer URL
//! (cloud IAM federation, Vault, PyJWT's `PyJWKClient`) can verify JWT-SVIDs.
//!
//! Same config file, endpoints, JSON and headers as SPIRE's: see `docs/oidc.md`. The keys come
//! from the server's admin socket, an agent's Workload API or a bundle file, polled every
//! `poll_interval`; HTTP is served on TCP, a Unix socket, or HTTPS with certificate files.

pub mod config;
pub mod domain;
pub mod handler;
pub mod health;
pub mod httpdate;
pub mod keys;
pub mod source;
pub mod url;

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

use crate::config::{Config, Listen};
use crate::domain::DomainPolicy;
use crate::handler::Handler;
use crate::keys::KeyStore;

/// How long a client may take to send its request headers (SPIRE: `ReadHeaderTimeout`).
const READ_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to finish a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the provider could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Domain(#[from] domain::DomainError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("serving certificate: {0}")]
    Cert(#[from] sigil_federation::endpoint::FileCertError),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls_error::Error),
    #[error("setting up logging: {0}")]
    Logging(String),
}

/// rustls' error type, through tokio-rustls (the workspace's path to rustls).
mod rustls_error {
    pub use tokio_rustls::rustls::Error;
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Io { what, source }
}

/// `sigil-oidc [-config FILE] [-expandEnv]`: returns the exit code.
pub fn main(args: Vec<String>) -> i32 {
    let flags = sigil_flags::FlagSet::new()
        .value(
            "config",
            "configuration file (default \"oidc-discovery-provider.conf\")",
        )
        .bool("expandEnv", "expand environment variables in config file")
        .bool("version", "print version");
    let parsed = match flags.parse(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}\nUsage of sigil-oidc:\n{}", flags.usage());
            return 2;
        }
    };
    if parsed.flag("version") {
        println!("{}", env!("CARGO_PKG_VERSION"));
        return 0;
    }
    if !parsed.args.is_empty() {
        eprintln!(
            "Error: unexpected arguments: {:?}\nUsage of sigil-oidc:\n{}",
            parsed.args,
            flags.usage()
        );
        return 1;
    }
    let path = parsed
        .get("config")
        .unwrap_or("oidc-discovery-provider.conf")
        .to_string();
    let config = match Config::load(Path::new(&path), parsed.flag("expandEnv")) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("starting the runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            tracing::error!(error = %e, "exiting");
            1
        }
    }
}

fn init_logging(config: &Config) -> Result<(), RunError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // sigil_federation: the serving certificate's reloads (FileCert).
        let level = config.log_level;
        tracing_subscriber::EnvFilter::new(format!(
            "warn,sigil_oidc={level},sigil_federation={level}"
        ))
    });
    let writer = match &config.log_path {
        Some(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(io(format!("opening log_path {}", p.display())))?;
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::sync::Mutex::new(f))
        }
        None => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
    };
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(config.log_path.is_none() && std::io::stderr().is_terminal())
        .with_writer(writer);
    match config.log_format {
        sigil_config::LogFormat::Text => builder.try_init(),
        sigil_config::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_target(false)
            .try_init(),
    }
    .map_err(|e| RunError::Logging(e.to_string()))
}

/// Runs the provider until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<(), RunError> {
    init_logging(&config)?;
    if config.allow_insecure_scheme {
        tracing::warn!(
            "allow_insecure_scheme is enabled. JWKS keys will be served over HTTP. Only enable this when the network path to the provider is trusted end-to-end"
        );
    }
    let policy = DomainPolicy::allowlist(&config.domains)?;
    let store = KeyStore::new();
    let handler = Arc::new(Handler::new(&config, policy));

    let poller = tokio::spawn(source::poll(config.source.clone(), store.clone()));

    if let Some(hc) = config.health_checks.clone() {
        let listener = TcpListener::bind(("0.0.0.0", hc.bind_port))
            .await
            .map_err(io(format!(
                "health checks listener on port {}",
                hc.bind_port
            )))?;
        let checks = health::HealthChecks::new(&hc, config.source.poll_interval(), store.clone());
        tokio::spawn(health::serve(listener, checks));
    }

    let serving = serve(&config, handler, store);
    let result = tokio::select! {
        r = serving => r,
        () = shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
    };
    poller.abort();
    if let Listen::Socket(p) = &config.listen {
        let _ = std::fs::remove_file(p);
    }
    result
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process still dies on SIGTERM, just not gracefully.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn serve(
    config: &Config,
    handler: Arc<Handler>,
    store: Arc<KeyStore>,
) -> Result<(), RunError> {
    let log_requests = config.log_requests;
    if log_requests {
        tracing::info!("Logging all requests");
    }
    match &config.listen {
        Listen::Insecure(addr) => {
            let bind = config::resolve_bind(addr)
                .await
                .map_err(io(format!("insecure_addr {addr}")))?;
            let listener = TcpListener::bind(bind)
                .await
                .map_err(io(format!("listening on {addr}")))?;
            let local = listener.local_addr().map_err(io("local address"))?;
            tracing::warn!(address = %local, "Serving HTTP (insecure)");
            loop {
                let (conn, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                spawn_conn(
                    conn,
                    peer.to_string(),
                    false,
                    &handler,
                    &store,
                    log_requests,
                );
            }
        }
        Listen::Socket(path) => {
            // SPIRE removes a stale socket and opens the new one to everyone: the proxy in
            // front of it decides who reaches the provider.
            let _ = std::fs::remove_file(path);
            let listener =
                UnixListener::bind(path).map_err(io(format!("listening on {}", path.display())))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))
                .map_err(io(format!("chmod {}", path.display())))?;
            tracing::info!(network = "unix", address = %path.display(), "Serving HTTP");
            loop {
                let (conn, _) = match listener.accept().await {
                    Ok(c) => c,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                spawn_conn(conn, "@".into(), false, &handler, &store, log_requests);
            }
        }
        Listen::ServingCertFile(s) => {
            let cert = sigil_federation::endpoint::FileCert::load(
                s.cert_file_path.clone(),
                s.key_file_path.clone(),
            )?;
            tokio::spawn(cert.clone().watch(s.file_sync_interval));
            let acceptor = sigil_federation::endpoint::acceptor(cert)?;
            let bind = config::resolve_bind(&s.addr)
                .await
                .map_err(io(format!("addr {}", s.addr)))?;
            let listener = TcpListener::bind(bind).await.map_err(io(format!(
                "failed to create listener using certificate from disk on {}",
                s.addr
            )))?;
            let local = listener.local_addr().map_err(io("local address"))?;
            tracing::info!(cert_file_path = %s.cert_file_path.display(), address = %local, "Serving HTTPS using certificate loaded from disk");
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let (handler, store) = (handler.clone(), store.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            serve_conn(tls, peer.to_string(), true, handler, store, log_requests)
                                .await
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

fn spawn_conn<S>(
    conn: S,
    peer: String,
    tls: bool,
    handler: &Arc<Handler>,
    store: &Arc<KeyStore>,
    log_requests: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (handler, store) = (handler.clone(), store.clone());
    tokio::spawn(serve_conn(conn, peer, tls, handler, store, log_requests));
}

async fn serve_conn<S>(
    conn: S,
    peer: String,
    tls: bool,
    handler: Arc<Handler>,
    store: Arc<KeyStore>,
    log_requests: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        if log_requests {
            tracing::debug!(
                remote_addr = %peer,
                method = %req.method(),
                url = %req.uri(),
                user_agent = req.headers().get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or(""),
                "Incoming request"
            );
        }
        let resp = handler.handle(&req, tls, &store.snapshot());
        async move { Ok::<_, Infallible>(resp) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(READ_HEADER_TIMEOUT);
    if let Err(error) = builder.serve_connection(TokioIo::new(conn), service).await {
        tracing::debug!(%error, "connection ended");
    }
}
