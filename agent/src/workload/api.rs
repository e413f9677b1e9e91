//! The SPIFFE Workload API (`SpiffeWorkloadAPI`), with the semantics SPIFFE clients expect:
//! the `workload.spiffe.io: true` header on every call, attestation on every call, streams that
//! send the current state at once and again after every change.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use futures::future::BoxFuture;
use sigil_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use sigil_proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svid, X509svidRequest, X509svidResponse,
};
use sigil_spiffe::SpiffeId;
use sigil_workload_attestation::{Attestors, PeerInfo, WorkloadChange};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::manager::ManagerHandle;
use crate::manager::cache::{Identity, Snapshot};
use crate::selectors::{SelectorSet, WORKLOAD_ENDED, attest_status};

/// The metadata key every Workload API call must carry (with value `true`), so that a browser or
/// other confused deputy tricked into talking to the socket cannot use it.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// How long a call waits for the agent to have SVIDs for a caller it has entries for (just
/// started, entry just created) before answering with what it has.
pub const IDENTITY_WAIT: Duration = Duration::from_secs(3);

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A stream's caller: its selectors, and what ends the stream or makes it attest again.
struct Session {
    attestors: Attestors,
    peer: PeerInfo,
    selectors: SelectorSet,
    change: BoxFuture<'static, WorkloadChange>,
}

// === impl Session ===

impl Session {
    /// Acts on an attestor's `change`: a workload that is gone gets `PermissionDenied`; one
    /// whose facts changed is attested again (new selectors, new watch).
    async fn renew(&mut self, change: WorkloadChange) -> Result<(), Status> {
        if change == WorkloadChange::Ended {
            tracing::info!(
                pid = self.peer.pid,
                "caller's pod was deleted; ending its stream"
            );
            return Err(Status::permission_denied(WORKLOAD_ENDED));
        }
        let attested = self
            .attestors
            .attest_session(&self.peer)
            .await
            .map_err(attest_status)?;
        tracing::debug!(
            pid = self.peer.pid,
            "caller's workload changed; attested again"
        );
        self.selectors = attested.selectors.into_iter().collect();
        self.change = attested.change;
        Ok(())
    }
}

/// The Workload API service.
#[derive(Clone, Debug)]
pub struct WorkloadApi {
    handle: ManagerHandle,
    attestors: Attestors,
    identity_wait: Duration,
    metrics: Arc<sigil_telemetry::Registry>,
}

// === impl WorkloadApi ===

impl WorkloadApi {
    pub fn new(handle: ManagerHandle, attestors: Attestors) -> Self {
        Self {
            handle,
            attestors,
            identity_wait: IDENTITY_WAIT,
            metrics: Arc::default(),
        }
    }

    /// Records attestation latency in `metrics` (the agent's registry).
    pub fn with_metrics(mut self, metrics: Arc<sigil_telemetry::Registry>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The attestors every call goes through (and the tier they run on).
    pub fn attestors(&self) -> &Attestors {
        &self.attestors
    }

    /// Overrides [`IDENTITY_WAIT`].
    pub fn with_identity_wait(mut self, wait: Duration) -> Self {
        self.identity_wait = wait;
        self
    }

    /// Checks the security header and attests the caller: the per-call attestation entry point
    /// of the Workload API.
    async fn authenticate<T>(&self, req: &Request<T>) -> Result<SelectorSet, Status> {
        Ok(self.authenticate_session(req).await?.selectors)
    }

    /// [`authenticate`](Self::authenticate) for a stream: also what ends it (the caller's pod
    /// deleted) or makes it attest again (the pod's facts changed).
    async fn authenticate_session<T>(&self, req: &Request<T>) -> Result<Session, Status> {
        check_header(req)?;
        let peer = req
            .extensions()
            .get::<PeerInfo>()
            .ok_or_else(|| Status::unavailable("could not identify the caller"))?;
        let started = std::time::Instant::now();
        let attested = self.attestors.attest_session(peer).await;
        let tier = self.attestors.attestation().tier().name();
        self.metrics.observe(
            "sigil_agent_workload_attestation_duration_seconds",
            "Time to attest a Workload API caller (kernel facts and workload attestors), by tier and outcome.",
            &[
                ("tier", tier),
                ("result", if attested.is_ok() { "ok" } else { "error" }),
            ],
            started.elapsed().as_secs_f64(),
        );
        let attested = attested.map_err(attest_status)?;
        tracing::debug!(
            pid = peer.pid,
            uid = peer.uid,
            selectors = attested.selectors.len(),
            "attested workload"
        );
        Ok(Session {
            attestors: self.attestors.clone(),
            peer: peer.clone(),
            selectors: attested.selectors.into_iter().collect(),
            change: attested.change,
        })
    }

    /// The newest snapshot once `ready` holds for it, or whatever is there after the wait; with
    /// a receiver that has seen exactly that snapshot, so a stream built from it misses no
    /// later change.
    async fn wait_for(
        &self,
        ready: impl Fn(&Snapshot) -> bool,
    ) -> (Arc<Snapshot>, watch::Receiver<Arc<Snapshot>>) {
        let mut rx = self.handle.snapshot.clone();
        let deadline = tokio::time::Instant::now() + self.identity_wait;
        loop {
            let snap = rx.borrow_and_update().clone();
            if ready(&snap) {
                return (snap, rx);
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return (snap, rx); },
                _ = tokio::time::sleep_until(deadline) => return (snap, rx),
            }
        }
    }

    /// Waits until every identity of the caller has its X509-SVID.
    async fn wait_for_svids(
        &self,
        selectors: &SelectorSet,
    ) -> (Arc<Snapshot>, watch::Receiver<Arc<Snapshot>>) {
        self.wait_for(|s| {
            s.synced && s.bundle.is_some() && s.matching(selectors).all(|i| i.svid.is_some())
        })
        .await
    }

    /// Streams `first`, then `build(snapshot)` after every change `snapshots` has not seen,
    /// until the client goes away or the caller loses its identities. Unchanged responses are
    /// not re-sent.
    fn stream<T, F>(
        first: T,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        session: Session,
        build: F,
    ) -> ResponseStream<T>
    where
        T: Clone + PartialEq + Send + 'static,
        F: Fn(&Snapshot, &SelectorSet) -> Result<Option<T>, Status> + Send + 'static,
    {
        // No task or channel per stream: the first response is ready at once (one less
        // hand-off on every fetch), and dropping the stream when the client goes away ends it.
        struct State<T, F> {
            pending: Option<T>,
            last: Option<T>,
            snapshots: watch::Receiver<Arc<Snapshot>>,
            session: Session,
            build: F,
            done: bool,
        }
        let state = State {
            pending: Some(first),
            last: None,
            snapshots,
            session,
            build,
            done: false,
        };
        Box::pin(futures::stream::unfold(state, |mut st| async move {
            if st.done {
                return None;
            }
            if let Some(first) = st.pending.take() {
                st.last = Some(first.clone());
                return Some((Ok(first), st));
            }
            loop {
                tokio::select! {
                    biased;
                    change = &mut st.session.change => {
                        if let Err(status) = st.session.renew(change).await {
                            st.done = true;
                            return Some((Err(status), st));
                        }
                    }
                    r = st.snapshots.changed() => if r.is_err() { return None },
                }
                let snap = st.snapshots.borrow_and_update().clone();
                match (st.build)(&snap, &st.session.selectors) {
                    Ok(Some(resp)) if st.last.as_ref() != Some(&resp) => {
                        st.last = Some(resp.clone());
                        return Some((Ok(resp), st));
                    }
                    Ok(_) => {}
                    Err(status) => {
                        st.done = true;
                        return Some((Err(status), st));
                    }
                }
            }
        }))
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = ResponseStream<X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = ResponseStream<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let session = self.authenticate_session(&req).await?;
        let (snap, rx) = self.wait_for_svids(&session.selectors).await;
        let first = x509_svid_response(&snap, &session.selectors)?.ok_or_else(|| {
            Status::unavailable("X509-SVIDs for this workload are not yet available")
        })?;
        Ok(Response::new(Self::stream(
            first,
            rx,
            session,
            x509_svid_response,
        )))
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let session = self.authenticate_session(&req).await?;
        let (snap, rx) = self.wait_for(|s| s.synced && s.bundle.is_some()).await;
        let first = x509_bundles_response(&snap, &session.selectors)?;
        Ok(Response::new(Self::stream(first, rx, session, |s, sel| {
            x509_bundles_response(s, sel).map(Some)
        })))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        check_header(&req)?;
        if req.get_ref().audience.iter().all(String::is_empty) {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let wanted: Option<SpiffeId> = match req.get_ref().spiffe_id.as_str() {
            "" => None,
            s => Some(s.parse().map_err(|e| {
                Status::invalid_argument(format!("invalid requested SPIFFE ID {s:?}: {e}"))
            })?),
        };
        let selectors = self.authenticate(&req).await?;
        let (snap, _) = self.wait_for(|s| s.synced).await;
        let identities = identities_or_deny(&snap, &selectors)?;
        let audience: Vec<String> = req
            .get_ref()
            .audience
            .iter()
            .filter(|a| !a.is_empty())
            .cloned()
            .collect();
        let mut svids = Vec::new();
        for identity in dedup_hints(
            identities
                .into_iter()
                .filter(|i| wanted.as_ref().is_none_or(|w| *w == i.entry.spiffe_id)),
        ) {
            let token = self
                .handle
                .jwt
                .sign(
                    &identity.entry.id,
                    identity.entry.spiffe_id.as_str(),
                    &audience,
                )
                .await?;
            svids.push(Jwtsvid {
                spiffe_id: identity.entry.spiffe_id.to_string(),
                svid: token,
                hint: identity.entry.hint.clone(),
            });
        }
        if svids.is_empty() {
            return Err(Status::permission_denied("no identity issued"));
        }
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        req: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let session = self.authenticate_session(&req).await?;
        let (snap, rx) = self.wait_for(|s| s.synced && s.bundle.is_some()).await;
        let first = jwt_bundles_response(&snap, &session.selectors)?;
        Ok(Response::new(Self::stream(first, rx, session, |s, sel| {
            jwt_bundles_response(s, sel).map(Some)
        })))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        check_header(&req)?;
        if req.get_ref().audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if req.get_ref().svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let selectors = self.authenticate(&req).await?;
        let (snap, _) = self.wait_for(|s| s.synced && s.bundle.is_some()).await;
        // Trusted keys: our own trust domain's, plus those of the trust domains the caller's
        // entries federate with (as in SPIRE).
        let federated = snap.federated_for(snap.matching(&selectors));
        let own = snap.bundle.clone();
        let ValidateJwtsvidRequest { audience, svid } = req.into_inner();
        let validated =
            sigil_spiffe::jwt::validate(&svid, &audience, crate::svid::now_unix(), |td| {
                if *td == snap.trust_domain {
                    own.as_ref().map(|b| b.bundle.clone())
                } else {
                    federated.get(td).map(|b| b.bundle.clone())
                }
            })
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: validated.spiffe_id.to_string(),
            claims: Some(claims_to_struct(validated.claims)),
        }))
    }
}

fn check_header<T>(req: &Request<T>) -> Result<(), Status> {
    match req.metadata().get(SECURITY_HEADER) {
        Some(v) if v.as_bytes() == b"true" => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

/// The caller's identities, or the status SPIFFE clients expect when there are none.
fn identities_or_deny<'a>(
    snap: &'a Snapshot,
    selectors: &'a SelectorSet,
) -> Result<Vec<&'a Identity>, Status> {
    let identities: Vec<&Identity> = snap.matching(selectors).collect();
    if identities.is_empty() {
        return Err(if snap.synced {
            Status::permission_denied("no identity issued")
        } else {
            Status::unavailable("agent has not synchronized with the server yet")
        });
    }
    Ok(identities)
}

/// Of several identities with the same (non-empty) hint, only the first is served, so that a
/// client selecting by hint gets one answer (SPIRE does the same).
fn dedup_hints<'a>(identities: impl IntoIterator<Item = &'a Identity>) -> Vec<&'a Identity> {
    let mut seen = HashSet::new();
    identities
        .into_iter()
        .filter(|i| i.entry.hint.is_empty() || seen.insert(i.entry.hint.as_str()))
        .collect()
}

fn td_key(td: &sigil_spiffe::TrustDomain) -> String {
    td.id_string()
}

/// `Ok(None)`: the caller has identities but none has an SVID yet (nothing to send).
fn x509_svid_response(
    snap: &Snapshot,
    selectors: &SelectorSet,
) -> Result<Option<X509svidResponse>, Status> {
    let identities = identities_or_deny(snap, selectors)?;
    let Some(bundle) = &snap.bundle else {
        return Ok(None);
    };
    let svids: Vec<X509svid> = dedup_hints(identities.iter().copied().filter(|i| i.svid.is_some()))
        .into_iter()
        .filter_map(|i| {
            let svid = i.svid.as_ref()?;
            Some(X509svid {
                spiffe_id: svid.spiffe_id.to_string(),
                x509_svid: svid.chain_der(),
                x509_svid_key: svid.key.as_bytes().to_vec(),
                bundle: bundle.x509_der.clone(),
                hint: i.entry.hint.clone(),
            })
        })
        .collect();
    if svids.is_empty() {
        return Ok(None);
    }
    let federated_bundles = snap
        .federated_for(identities.iter().copied())
        .into_iter()
        .map(|(td, b)| (td_key(td), b.x509_der.clone()))
        .collect();
    Ok(Some(X509svidResponse {
        svids,
        crl: Vec::new(),
        federated_bundles,
    }))
}

fn x509_bundles_response(
    snap: &Snapshot,
    selectors: &SelectorSet,
) -> Result<X509BundlesResponse, Status> {
    let identities = identities_or_deny(snap, selectors)?;
    let mut bundles = HashMap::new();
    if let Some(own) = &snap.bundle {
        bundles.insert(td_key(&snap.trust_domain), own.x509_der.clone());
    }
    for (td, b) in snap.federated_for(identities) {
        bundles.insert(td_key(td), b.x509_der.clone());
    }
    Ok(X509BundlesResponse {
        crl: Vec::new(),
        bundles,
    })
}

fn jwt_bundles_response(
    snap: &Snapshot,
    selectors: &SelectorSet,
) -> Result<JwtBundlesResponse, Status> {
    let identities = identities_or_deny(snap, selectors)?;
    let mut bundles = HashMap::new();
    if let Some(own) = &snap.bundle {
        bundles.insert(td_key(&snap.trust_domain), own.jwks.clone());
    }
    for (td, b) in snap.federated_for(identities) {
        bundles.insert(td_key(td), b.jwks.clone());
    }
    Ok(JwtBundlesResponse { bundles })
}

/// JWT claims as a protobuf `Struct`, every claim included: numbers become number values,
/// `aud` stays a string or a list exactly as in the token.
pub fn claims_to_struct(claims: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: claims
            .into_iter()
            .map(|(k, v)| (k, json_to_value(v)))
            .collect(),
    }
}

fn json_to_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(prost_types::NullValue::NullValue as i32),
        J::Bool(b) => Kind::BoolValue(b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        J::String(s) => Kind::StringValue(s),
        J::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(json_to_value).collect(),
        }),
        J::Object(map) => Kind::StructValue(claims_to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::value::Kind;

    #[test]
    fn claims_conversion_keeps_everything() {
        let claims: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
            r#"{"sub":"spiffe://td/w","aud":["a","b"],"exp":1700000000,"iat":1699999000.5,
                "custom":{"nested":[true,null,"x"]}}"#,
        )
        .unwrap();
        let s = claims_to_struct(claims);
        assert_eq!(s.fields.len(), 5);
        assert_eq!(
            s.fields["sub"].kind,
            Some(Kind::StringValue("spiffe://td/w".into()))
        );
        assert_eq!(
            s.fields["exp"].kind,
            Some(Kind::NumberValue(1_700_000_000.0))
        );
        assert_eq!(
            s.fields["iat"].kind,
            Some(Kind::NumberValue(1_699_999_000.5))
        );
        let Some(Kind::ListValue(aud)) = &s.fields["aud"].kind else {
            panic!("aud should be a list");
        };
        assert_eq!(aud.values.len(), 2);
        let Some(Kind::StructValue(custom)) = &s.fields["custom"].kind else {
            panic!("custom should be a struct");
        };
        let Some(Kind::ListValue(nested)) = &custom.fields["nested"].kind else {
            panic!("nested should be a list");
        };
        assert_eq!(nested.values[0].kind, Some(Kind::BoolValue(true)));
        assert!(matches!(nested.values[1].kind, Some(Kind::NullValue(_))));

        // A single-string audience stays a string.
        let claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"aud":"a"}"#).unwrap();
        assert_eq!(
            claims_to_struct(claims).fields["aud"].kind,
            Some(Kind::StringValue("a".into()))
        );
    }

    #[test]
    fn header_check() {
        let req = Request::new(());
        assert_eq!(
            check_header(&req).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let mut req = Request::new(());
        req.metadata_mut()
            .insert(SECURITY_HEADER, "true".parse().unwrap());
        check_header(&req).unwrap();
        let mut req = Request::new(());
        req.metadata_mut()
            .insert(SECURITY_HEADER, "false".parse().unwrap());
        assert!(check_header(&req).is_err());
    }
}
