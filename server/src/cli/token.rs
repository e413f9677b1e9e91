//! `sigil-server token generate`: join tokens for node attestation.

use anyhow::{Result, anyhow, bail};
use serde_json::json;
use sigil_flags::{FlagSet, Parsed};
use sigil_proto::admin as pb;

use super::{Out, connect, socket_flag};

/// The flags of the `token` verbs; `None` if `cmd` is not one.
pub(super) fn flags(cmd: &str) -> Option<FlagSet> {
    Some(match cmd {
        "token generate" => socket_flag(FlagSet::new())
            .value(
                "spiffeID",
                "Additional SPIFFE ID to assign the token owner (optional)",
            )
            .value("ttl", "Token TTL in seconds (default 600)"),
        _ => return None,
    })
}

pub(super) async fn token_generate(socket: &str, p: &Parsed, out: Out) -> Result<i32> {
    let ttl = p.parse_opt::<i32>("ttl")?.unwrap_or(600);
    if ttl <= 0 {
        bail!("invalid -ttl {ttl}: must be a positive number of seconds");
    }
    let spiffe_id = p.get("spiffeID").unwrap_or_default().to_string();
    if !spiffe_id.is_empty() {
        spiffe_id
            .parse::<sigil_spiffe::SpiffeId>()
            .map_err(|e| anyhow!("invalid -spiffeID {spiffe_id:?}: {e}"))?;
    }
    let t = connect(socket)
        .await?
        .create_join_token(pb::CreateJoinTokenRequest { ttl, spiffe_id })
        .await?
        .into_inner();
    out.print(
        json!({"value": t.value, "expires_at": t.expires_at}),
        || format!("Token: {}", t.value),
    );
    Ok(0)
}
