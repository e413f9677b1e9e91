//! The Workload API endpoint: a Unix socket and the gRPC service. Every call is attested with
//! `sigil_workload_attestation` ([`api::WorkloadApi::authenticate`] is the entry point).

pub mod api;
mod authority;
pub mod peer;

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sigil_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use sigil_workload_attestation::Tier;
use tokio::net::UnixListener;
use tokio_stream::wrappers::ReceiverStream;

pub use self::api::WorkloadApi;

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("preparing the Workload API socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Workload API server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Binds the Workload API socket: creates the parent directory, replaces a stale socket left by
/// a previous run, and opens the socket to everyone (mode 0777, like SPIRE's public socket) —
/// access control is attestation, not file permissions.
pub fn bind(path: &Path) -> Result<UnixListener, WorkloadError> {
    let err = |source| WorkloadError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path).map_err(err)?,
        Ok(_) => {
            return Err(err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "path exists and is not a socket",
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).map_err(err)?;
    Ok(listener)
}

/// Where the socket is bound before it is published: same directory (so the rename keeps the
/// inode the attestation programs watch), a name no client looks for.
pub fn staging_path(path: &Path) -> std::path::PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.starting"))
}

/// Moves the socket bound at `staging` to `path`, replacing a stale socket. Until then no client
/// can reach it: a connection accepted before the kernel's attestation records are in place
/// could not be attested.
pub fn publish(staging: &Path, path: &Path) -> Result<(), WorkloadError> {
    let err = |source| WorkloadError::Socket {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            let _ = std::fs::remove_file(staging);
            return Err(err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "path exists and is not a socket",
            )));
        }
        _ => {}
    }
    std::fs::rename(staging, path).map_err(err)
}

/// Serves the Workload API and Envoy SDS (one gRPC server, both services, one socket) on
/// `listener` until `shutdown` completes.
pub async fn serve(
    listener: UnixListener,
    api: WorkloadApi,
    sds: crate::sds::SdsApi,
    metrics: std::sync::Arc<sigil_telemetry::Registry>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkloadError> {
    use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;
    let tier = api.attestors().attestation().tier();
    let incoming = ReceiverStream::new(peer::accept_loop(listener));
    tonic::transport::Server::builder()
        .layer(sigil_telemetry::grpc::GrpcMetricsLayer::new(
            metrics,
            "sigil_agent_grpc_calls_total",
            "sigil_agent_grpc_call_duration_seconds",
            &["SpiffeWorkloadAPI", "SecretDiscoveryService"],
        ))
        .layer(tower::util::MapResponseLayer::new(
            move |resp: tonic::codegen::http::Response<tonic::body::Body>| {
                tag_attestation_tier(tier, resp)
            },
        ))
        .add_service(SpiffeWorkloadApiServer::new(api))
        .add_service(SecretDiscoveryServiceServer::new(sds))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Response header naming the agent's workload attestation tier (`sigil-agent healthcheck`
/// prints it).
pub const TIER_HEADER: &str = "sigil-attestation-tier";

fn tag_attestation_tier<B>(
    tier: Tier,
    mut resp: tonic::codegen::http::Response<B>,
) -> tonic::codegen::http::Response<B> {
    resp.headers_mut().insert(
        TIER_HEADER,
        tonic::codegen::http::HeaderValue::from_static(tier.name()),
    );
    resp
}
