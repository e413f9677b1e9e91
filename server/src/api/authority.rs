//! Authority management on the admin API: SPIRE's LocalAuthority service
//! (`localauthority x509|jwt show|prepare|activate|taint|revoke`,
//! `upstreamauthority taint|revoke`). The rules live in the CA (`crate::ca`); this maps them to
//! gRPC and tells agents at once, since a taint must reach them within seconds.

use super::Shared;
use crate::ca::{AuthorityInfo, AuthorityKind, CaError, RefusalCode};
use sigil_proto::admin as pb;
use tonic::Status;

fn info_proto(i: AuthorityInfo) -> pb::AuthorityState {
    pb::AuthorityState {
        authority_id: i.authority_id,
        expires_at: i.expires_at,
        upstream_authority_subject_key_id: i.upstream_authority_subject_key_id,
    }
}

fn status(e: CaError) -> Status {
    match e {
        CaError::Refused { code, message } => match code {
            RefusalCode::InvalidArgument => Status::invalid_argument(message),
            RefusalCode::FailedPrecondition => Status::failed_precondition(message),
            RefusalCode::NotFound => Status::not_found(message),
            RefusalCode::Internal => Status::internal(message),
        },
        other => {
            let (code, message) = super::internal_status("changing the authorities", &other);
            Status::new(code, message)
        }
    }
}

fn kind(k: i32) -> Result<(AuthorityKind, bool), Status> {
    match pb::AuthorityKind::try_from(k) {
        Ok(pb::AuthorityKind::X509) => Ok((AuthorityKind::X509, false)),
        Ok(pb::AuthorityKind::Jwt) => Ok((AuthorityKind::Jwt, false)),
        Ok(pb::AuthorityKind::UpstreamX509) => Ok((AuthorityKind::X509, true)),
        _ => Err(Status::invalid_argument("unknown authority kind")),
    }
}

/// `GetX509AuthorityState` / `GetJWTAuthorityState`.
pub(super) fn get_state(
    shared: &Shared,
    req: pb::GetAuthorityStateRequest,
) -> Result<pb::AuthorityStateResponse, Status> {
    let (kind, upstream) = kind(req.kind)?;
    if upstream {
        return Err(Status::invalid_argument(
            "the upstream authority has no state of its own: see the X.509 authorities",
        ));
    }
    let s = shared.ca.authority_states(kind);
    Ok(pb::AuthorityStateResponse {
        active: s.active.map(info_proto),
        prepared: s.prepared.map(info_proto),
        old: s.old.map(info_proto),
    })
}

/// Prepare, activate, taint or revoke; the bundle's new version goes to every agent at once.
pub(super) async fn change(
    shared: &Shared,
    req: pb::ChangeAuthorityRequest,
) -> Result<pb::AuthorityState, Status> {
    let (kind, upstream) = kind(req.kind)?;
    let action = pb::AuthorityAction::try_from(req.action)
        .map_err(|_| Status::invalid_argument("unknown authority action"))?;
    let ca = shared.ca.clone();
    let id = req.authority_id;
    // Preparing generates a key and every change fsyncs the keys file: blocking work.
    let done = tokio::task::spawn_blocking(move || {
        let now = crate::now_unix();
        let upstream_info = |ski: String| AuthorityInfo {
            upstream_authority_subject_key_id: ski,
            ..Default::default()
        };
        match (action, upstream) {
            (pb::AuthorityAction::Prepare, false) => ca.prepare(kind, now),
            (pb::AuthorityAction::Activate, false) => ca.activate(kind, &id),
            (pb::AuthorityAction::Taint, false) => ca.taint(kind, &id),
            (pb::AuthorityAction::Revoke, false) => ca.revoke(kind, &id),
            (pb::AuthorityAction::Taint, true) => ca.taint_upstream(&id).map(upstream_info),
            (pb::AuthorityAction::Revoke, true) => ca.revoke_upstream(&id).map(upstream_info),
            _ => Err(CaError::Refused {
                code: RefusalCode::InvalidArgument,
                message: "unsupported authority action".into(),
            }),
        }
    })
    .await
    .map_err(|e| Status::internal(format!("authority task failed: {e}")))?
    .map_err(status)?;
    tracing::info!(
        kind = ?kind,
        upstream,
        action = ?action,
        authority_id = %done.authority_id,
        upstream_authority_subject_key_id = %done.upstream_authority_subject_key_id,
        "authority changed"
    );
    shared.ds.bundle_changed();
    Ok(info_proto(done))
}
