//! `sigil-server agent list|show|evict|ban`: attested agents, and how they are printed.

use anyhow::{Result, anyhow};
use serde_json::{Value, json};
use sigil_flags::{FlagSet, Parsed};
use sigil_proto::admin as pb;

use super::{Out, connect, socket_flag};

/// The flags of the `agent` verbs; `None` if `cmd` is not one.
pub(super) fn flags(cmd: &str) -> Option<FlagSet> {
    Some(match cmd {
        "agent list" => socket_flag(FlagSet::new()),
        "agent show" | "agent evict" | "agent ban" => {
            socket_flag(FlagSet::new()).value("spiffeID", "The SPIFFE ID of the agent")
        }
        _ => return None,
    })
}

pub(super) async fn agent_list(socket: &str, out: Out) -> Result<i32> {
    let agents = connect(socket)
        .await?
        .list_agents(pb::ListAgentsRequest {})
        .await?
        .into_inner()
        .agents;
    if out.json {
        println!(
            "{}",
            json!({"agents": agents.iter().map(agent_json).collect::<Vec<_>>()})
        );
    } else if agents.is_empty() {
        println!("No attested agents found");
    } else {
        println!(
            "Found {} attested agent{}:\n",
            agents.len(),
            if agents.len() == 1 { "" } else { "s" }
        );
        for a in &agents {
            println!("{}", agent_text(a));
        }
    }
    Ok(0)
}

pub(super) async fn agent_show(socket: &str, p: &Parsed, out: Out) -> Result<i32> {
    let id = agent_id_flag(p)?;
    let a = connect(socket)
        .await?
        .get_agent(pb::GetAgentRequest { spiffe_id: id })
        .await?
        .into_inner();
    out.print(agent_json(&a), || {
        // As spire-server: the agent's lines, a blank line, then its selectors.
        let mut text = format!(
            "Found an attested agent given its SPIFFE ID\n\n{}",
            agent_text(&a)
        );
        for s in &a.selectors {
            text.push_str(&format!("\nSelectors         : {}:{}", s.r#type, s.value));
        }
        text
    });
    Ok(0)
}

pub(super) async fn agent_evict(socket: &str, p: &Parsed, out: Out) -> Result<i32> {
    let id = agent_id_flag(p)?;
    connect(socket)
        .await?
        .evict_agent(pb::AgentIdRequest { spiffe_id: id })
        .await?;
    out.print(json!({}), || "Agent evicted successfully".into());
    Ok(0)
}

pub(super) async fn agent_ban(socket: &str, p: &Parsed, out: Out) -> Result<i32> {
    let id = agent_id_flag(p)?;
    connect(socket)
        .await?
        .ban_agent(pb::AgentIdRequest { spiffe_id: id })
        .await?;
    out.print(json!({}), || "Agent banned successfully".into());
    Ok(0)
}

fn agent_id_flag(p: &Parsed) -> Result<String> {
    let id = p.required("spiffeID")?;
    id.parse::<sigil_spiffe::SpiffeId>()
        .map_err(|e| anyhow!("invalid -spiffeID {id:?}: {e}"))?;
    Ok(id.to_string())
}

/// Go's default formatting of a `time.Time` in UTC (`2018-01-10 19:37:24 +0000 UTC`), as
/// spire-server prints expiration times; a time `time` cannot represent prints as seconds.
fn fmt_time(unix: i64) -> String {
    const GO_UTC: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second] +0000 UTC"
    );
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(GO_UTC).ok())
        .unwrap_or_else(|| unix.to_string())
}

fn agent_json(a: &pb::Agent) -> Value {
    json!({
        "id": a.spiffe_id,
        "attestation_type": a.attestation_type,
        "x509svid_serial_number": a.x509_svid_serial_number,
        "x509svid_expires_at": a.x509_svid_expires_at,
        "selectors": a.selectors.iter().map(|s| json!({"type": s.r#type, "value": s.value})).collect::<Vec<_>>(),
        "banned": a.banned,
        "can_reattest": a.can_reattest,
    })
}

/// spire-server's lines for one agent: a banned agent shows `Banned` where the others show
/// their serial number.
fn agent_text(a: &pb::Agent) -> String {
    let mut s = format!(
        "SPIFFE ID         : {}\nAttestation type  : {}\nExpiration time   : {}\n",
        a.spiffe_id,
        a.attestation_type,
        fmt_time(a.x509_svid_expires_at),
    );
    if a.banned {
        s.push_str("Banned            : true\n");
    } else {
        s.push_str(&format!(
            "Serial number     : {}\n",
            a.x509_svid_serial_number
        ));
    }
    s.push_str(&format!("Can re-attest     : {}\n", a.can_reattest));
    s
}
