//! Reading a TokenReview's verdict, and SPIRE's agent ID and selector value formats
//! (`pkg/common/plugin/k8s/utils.go`).

use k8s_openapi::api::authentication::v1::TokenReviewStatus;
use sigil_spiffe::{IdError, SpiffeId, TrustDomain};

const POD_NAME_KEY: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_KEY: &str = "authentication.kubernetes.io/pod-uid";

/// What is missing from (or wrong in) a TokenReview status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    #[error("empty username")]
    EmptyUsername,
    #[error("unexpected username format: {0}")]
    UsernameFormat(String),
    #[error("missing namespace")]
    MissingNamespace,
    #[error("missing service account name")]
    MissingServiceAccount,
    #[error("missing pod name")]
    MissingPodName,
    #[error("expected 1 name but got: {0}")]
    PodNameCount(usize),
    #[error("pod name is empty")]
    EmptyPodName,
    #[error("missing pod UID")]
    MissingPodUid,
    #[error("expected 1 UID but got: {0}")]
    PodUidCount(usize),
    #[error("pod UID is empty")]
    EmptyPodUid,
}

/// The namespace and service account of a `system:serviceaccount:<ns>:<sa>` username.
pub fn names_from_token_status(
    status: &TokenReviewStatus,
) -> Result<(String, String), StatusError> {
    let username = status
        .user
        .as_ref()
        .and_then(|u| u.username.as_deref())
        .unwrap_or_default();
    if username.is_empty() {
        return Err(StatusError::EmptyUsername);
    }
    // As SPIRE: exactly four colon-separated parts, the last two being the names (the first
    // two are not compared: the API server only ever says `system:serviceaccount`).
    let names: Vec<&str> = username.split(':').collect();
    let [_, _, namespace, service_account] = names[..] else {
        return Err(StatusError::UsernameFormat(username.to_string()));
    };
    if namespace.is_empty() {
        return Err(StatusError::MissingNamespace);
    }
    if service_account.is_empty() {
        return Err(StatusError::MissingServiceAccount);
    }
    Ok((namespace.to_string(), service_account.to_string()))
}

/// The name of the pod the token is bound to (the review's `user.extra`).
pub fn pod_name_from_token_status(status: &TokenReviewStatus) -> Result<String, StatusError> {
    match extra(status, POD_NAME_KEY) {
        None => Err(StatusError::MissingPodName),
        Some([name]) if name.is_empty() => Err(StatusError::EmptyPodName),
        Some([name]) => Ok(name.clone()),
        Some(names) => Err(StatusError::PodNameCount(names.len())),
    }
}

/// The UID of the pod the token is bound to (the review's `user.extra`).
pub fn pod_uid_from_token_status(status: &TokenReviewStatus) -> Result<String, StatusError> {
    match extra(status, POD_UID_KEY) {
        None => Err(StatusError::MissingPodUid),
        Some([uid]) if uid.is_empty() => Err(StatusError::EmptyPodUid),
        Some([uid]) => Ok(uid.clone()),
        Some(uids) => Err(StatusError::PodUidCount(uids.len())),
    }
}

fn extra<'a>(status: &'a TokenReviewStatus, key: &str) -> Option<&'a [String]> {
    status
        .user
        .as_ref()?
        .extra
        .as_ref()?
        .get(key)
        .map(Vec::as_slice)
}

/// `spiffe://<td>/spire/agent/<plugin>/<cluster>/<suffix>` (SPIRE's `AgentID`; the suffix is a
/// node UID, or `pod/<pod uid>`). Names that would not make a valid SPIFFE ID path (empty,
/// `.`, characters outside the SPIFFE set) are refused rather than escaped.
pub fn agent_id(
    plugin: &str,
    td: &TrustDomain,
    cluster: &str,
    suffix: &str,
) -> Result<SpiffeId, IdError> {
    SpiffeId::from_path(td, &format!("/spire/agent/{plugin}/{cluster}/{suffix}"))
}

/// `kind:value1:value2...` (SPIRE's `MakeSelectorValue`).
pub fn selector_value(kind: &str, values: &[&str]) -> String {
    format!("{kind}:{}", values.join(":"))
}
