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
        format!(
            "Found an attested agent given its SPIFFE ID\n\n{}",
            agent_text(&a)
        )
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

fn fmt_time(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

fn agent_json(a: &pb::Agent) -> Value {
    json!({
        "id": a.spiffe_id,
        "attestation_type": a.attestation_type,
        "x509svid_serial_number": a.x509_svid_serial_number,
        "x509svid_expires_at": a.x509_svid_expires_at,
        "banned": a.banned,
        "can_reattest": false,
    })
}

fn agent_text(a: &pb::Agent) -> String {
    format!(
        "SPIFFE ID         : {}\nAttestation type  : {}\nExpiration time   : {}\nSerial number     : {}\nCan re-attest     : false\nBanned            : {}\n",
        a.spiffe_id,
        a.attestation_type,
        fmt_time(a.x509_svid_expires_at),
        a.x509_svid_serial_number,
        a.banned
    )
}
