//! gRPC services: the agent API (`node`, TLS) and the admin API (`admin`, Unix socket).

pub mod admin;
mod authority;
pub mod node;

use crate::ca::Ca;
use crate::config::ServerConfig;
use crate::datastore::DataStore;
use std::sync::Arc;

/// State every service shares.
#[derive(Debug, Clone)]
pub struct Shared {
    pub cfg: Arc<ServerConfig>,
    pub ca: Arc<Ca>,
    pub ds: DataStore,
    /// The federation relationships in effect and their refresh (`federation ...`).
    pub federation: crate::federation::Federation,
    /// Counters the APIs update (`telemetry`; see docs/metrics.md).
    pub metrics: Arc<sigil_telemetry::Registry>,
}

/// A per-item status in batch responses.
pub(crate) fn entry_status(code: tonic::Code, message: String) -> sigil_proto::types::Status {
    sigil_proto::types::Status {
        code: code as i32,
        message,
    }
}

/// An internal failure (datastore, I/O, signing): the caller gets a generic message carrying an
/// error id, the server log gets the detail under the same id. Database and file-system error
/// text describes the server's internals (paths, SQL, schema) and is nobody else's business.
///
/// A datastore that is out of reach (PostgreSQL restarting, connection lost) is not an internal
/// error but `Unavailable`: the request was not applied and may be retried.
pub(crate) fn internal<E: std::fmt::Display + 'static>(context: &str, err: &E) -> tonic::Status {
    let (code, message) = internal_status(context, err);
    tonic::Status::new(code, message)
}

/// [`internal`] as a (code, message) pair, for per-item statuses in batch responses.
pub(crate) fn internal_status<E: std::fmt::Display + 'static>(
    context: &str,
    err: &E,
) -> (tonic::Code, String) {
    let any: &dyn std::any::Any = err;
    if any
        .downcast_ref::<crate::datastore::StoreError>()
        .is_some_and(|e| e.is_unavailable())
    {
        tracing::warn!(error = %err, "{context}: datastore unavailable");
        return (
            tonic::Code::Unavailable,
            format!("datastore unavailable while {context}; retry later"),
        );
    }
    let id = error_id();
    tracing::error!(error_id = %id, error = %err, "{context}");
    (
        tonic::Code::Internal,
        format!("internal error while {context} (error id {id}; details in the server log)"),
    )
}

/// A short random id tying a caller's error to its log line.
fn error_id() -> String {
    let mut s = uuid::Uuid::new_v4().simple().to_string();
    s.truncate(12);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::CaConfig;
    use crate::config::{KeyManager, Overrides};
    use crate::tls::PeerIdentity;
    use sigil_proto::agent::node_server::Node;
    use std::io::Write;
    use std::sync::Mutex;

    /// Log lines, captured.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A Node API over a fresh datastore and an in-memory CA.
    async fn node_api(dir: &std::path::Path) -> (node::NodeApi, DataStore) {
        let text = format!(
            "server {{\n trust_domain = \"example.org\"\n data_dir = \"{}\"\n}}\n",
            dir.display()
        );
        let cfg = crate::config::ServerConfig::from_hcl(&text, &Overrides::default()).unwrap();
        let ds = DataStore::open(&dir.join("ds.sqlite3")).await.unwrap();
        let ca = Ca::load_or_create(CaConfig {
            trust_domain: cfg.trust_domain.clone(),
            ca_ttl: cfg.ca_ttl,
            subject: cfg.ca_subject.clone(),
            key_type: cfg.ca_key_type,
            key_manager: KeyManager::Memory,
            jwt_issuer: None,
            upstream: None,
        })
        .unwrap();
        let ca = Arc::new(ca);
        let api = node::NodeApi {
            shared: Shared {
                cfg: Arc::new(cfg),
                ca: ca.clone(),
                ds: ds.clone(),
                federation: crate::federation::Federation::empty(ds.clone(), ca),
                metrics: sigil_telemetry::Registry::new(),
            },
            psat: None,
        };
        (api, ds)
    }

    fn csr() -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .der()
            .to_vec()
    }

    fn as_agent<T>(msg: T, chain: &[Vec<u8>]) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.extensions_mut().insert(PeerIdentity {
            spiffe_id: sigil_spiffe::x509::spiffe_id_of_cert(&chain[0]).ok(),
            serial_hex: sigil_spiffe::x509::serial_hex(&chain[0]).ok(),
            remote_addr: None,
        });
        req
    }

    /// Signing (agent SVIDs, workload X509- and JWT-SVIDs) runs on the blocking pool, never on
    /// the async worker that serves the call (here the test's own thread: a current-thread
    /// runtime), so one agent's CSRs do not stall every other agent's calls.
    #[tokio::test]
    async fn signing_runs_off_the_async_workers() {
        use sigil_proto::agent as pb;
        let dir = tempfile::tempdir().unwrap();
        let (api, ds) = node_api(dir.path()).await;
        ds.create_join_token("tok", crate::now_unix() + 600)
            .await
            .unwrap();
        let attested = api
            .attest_agent(tonic::Request::new(pb::AttestAgentRequest {
                join_token: "tok".into(),
                csr: csr(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        let chain = attested.svid.unwrap().cert_chain;
        let agent: sigil_spiffe::SpiffeId =
            sigil_spiffe::x509::spiffe_id_of_cert(&chain[0]).unwrap();
        let created = ds
            .create_entries(vec![crate::entry::Entry {
                id: String::new(),
                spiffe_id: "spiffe://example.org/w".parse().unwrap(),
                parent_id: agent,
                selectors: vec!["unix:uid:1".parse().unwrap()],
                x509_svid_ttl: 0,
                jwt_svid_ttl: 0,
                dns_names: vec![],
                federates_with: vec![],
                admin: false,
                downstream: false,
                hint: String::new(),
                created_at: 0,
                revision: 0,
                store_svid: false,
                managed_by: String::new(),
            }])
            .await;
        let entry_id = created[0].as_ref().unwrap().id.clone();
        let signed = api
            .sign_x509_svids(as_agent(
                pb::SignX509SvidsRequest {
                    params: vec![pb::SvidParams {
                        entry_id: entry_id.clone(),
                        csr: csr(),
                    }],
                },
                &chain,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(signed.results[0].status.as_ref().unwrap().code, 0);
        api.sign_jwt_svid(as_agent(
            pb::SignJwtSvidRequest {
                entry_id,
                audience: vec!["aud".into()],
            },
            &chain,
        ))
        .await
        .unwrap();
        api.renew_agent(as_agent(pb::RenewAgentRequest { csr: csr() }, &chain))
            .await
            .unwrap();

        let me = std::thread::current().id();
        let threads = api.shared.ca.probes.sign_threads.lock().unwrap().clone();
        assert_eq!(threads.len(), 4, "attest, X509, JWT, renew");
        assert!(
            threads.iter().all(|t| *t != me),
            "signing ran on the async worker: {threads:?}"
        );
    }

    /// A datastore failure reaches the caller as a generic message with an error id; the detail
    /// (sqlx's text) is only in the log, under the same id.
    #[tokio::test]
    async fn internal_errors_are_logged_not_returned() {
        let log = Captured::default();
        let writer = log.clone();
        let _guard = tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .finish(),
        );
        let dir = tempfile::tempdir().unwrap();
        let (api, ds) = node_api(dir.path()).await;
        let req = || {
            let mut req =
                tonic::Request::new(sigil_proto::agent::RenewAgentRequest { csr: vec![] });
            req.extensions_mut().insert(PeerIdentity {
                spiffe_id: Some("spiffe://example.org/spire/agent/x".parse().unwrap()),
                serial_hex: Some("1".into()),
                remote_addr: None,
            });
            req
        };
        // A row the server cannot read: an internal error.
        let raw = sqlx::SqlitePool::connect(&format!(
            "sqlite://{}",
            dir.path().join("ds.sqlite3").display()
        ))
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO agents (spiffe_id, attestation_type, serial, expires_at, created_at, \
             last_seen, selectors) VALUES ('spiffe://example.org/spire/agent/x', 'join_token', \
             '1', 0, 0, 0, 'not json')",
        )
        .execute(&raw)
        .await
        .unwrap();
        let status = api.renew_agent(req()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal);
        let internal = status.message().to_string();
        // The database out of reach: Unavailable (retry), again without internals.
        ds.close().await;
        let status = api.renew_agent(req()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(
            !status.message().contains("pool"),
            "internals leaked: {status:?}"
        );
        let status = tonic::Status::internal(internal);
        let msg = status.message();
        assert!(!msg.contains("selectors"), "internals leaked: {msg}");
        let id = msg
            .split("error id ")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .unwrap_or_else(|| panic!("no error id in {msg:?}"));
        assert_eq!(id.len(), 12, "{msg}");
        let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        let line = log
            .lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("error id {id} not logged: {log}"));
        assert!(
            line.contains("agent selectors"),
            "detail not logged: {line}"
        );
    }
}
