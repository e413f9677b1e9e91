//! `sigil-server localauthority x509|jwt show|prepare|activate|taint|revoke` and
//! `sigil-server upstreamauthority taint|revoke`: spire-server's authority management, with its
//! flags, output lines and `-output json` shapes.

use anyhow::{Result, anyhow, bail};
use serde_json::{Map, Value, json};
use sigil_flags::{FlagSet, Parsed};
use sigil_proto::admin as pb;

use super::{Out, connect, socket_flag};

/// The flags of the authority verbs; `None` if `cmd` is not one.
pub(super) fn flags(cmd: &str) -> Option<FlagSet> {
    let words: Vec<&str> = cmd.split(' ').collect();
    Some(match words.as_slice() {
        ["localauthority", "x509" | "jwt", "show" | "prepare"] => socket_flag(FlagSet::new()),
        ["localauthority", "x509" | "jwt", "activate" | "taint" | "revoke"] => {
            socket_flag(FlagSet::new()).value("authorityID", "The authority ID of the authority")
        }
        ["upstreamauthority", "taint" | "revoke"] => socket_flag(FlagSet::new()).value(
            "subjectKeyID",
            "The X.509 Subject Key Identifier (or SKID) of the authority's CA certificate of the upstream X.509 authority",
        ),
        _ => return None,
    })
}

/// A gRPC failure as spire-server prints it: `<context>: rpc error: code = X desc = Y`.
fn rpc_error(context: &str, s: tonic::Status) -> anyhow::Error {
    anyhow!(
        "{context}: rpc error: code = {:?} desc = {}",
        s.code(),
        s.message()
    )
}

fn state_json(s: &pb::AuthorityState) -> Value {
    // protojson: empty fields are omitted, int64 is a string.
    let mut m = Map::new();
    if !s.authority_id.is_empty() {
        m.insert("authority_id".into(), json!(s.authority_id));
    }
    if s.expires_at != 0 {
        m.insert("expires_at".into(), json!(s.expires_at.to_string()));
    }
    if !s.upstream_authority_subject_key_id.is_empty() {
        m.insert(
            "upstream_authority_subject_key_id".into(),
            json!(s.upstream_authority_subject_key_id),
        );
    }
    Value::Object(m)
}

/// Go's `time.Unix(t, 0).UTC()` as `%s` prints it.
fn go_time(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .map(|d| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02} +0000 UTC",
                d.year(),
                d.month() as u8,
                d.day(),
                d.hour(),
                d.minute(),
                d.second()
            )
        })
        .unwrap_or_else(|_| t.to_string())
}

fn state_text(s: &pb::AuthorityState, x509: bool) -> String {
    let mut t = format!(
        "  Authority ID: {}\n  Expires at: {}\n",
        s.authority_id,
        go_time(s.expires_at)
    );
    if x509 {
        if s.upstream_authority_subject_key_id.is_empty() {
            t.push_str("  Upstream authority ID: No upstream authority\n");
        } else {
            t.push_str(&format!(
                "  Upstream authority Subject Key ID: {}\n",
                s.upstream_authority_subject_key_id
            ));
        }
    }
    t
}

pub(super) async fn run(socket: &str, cmd: &str, p: &Parsed, out: Out) -> Result<i32> {
    let words: Vec<&str> = cmd.split(' ').collect();
    match words.as_slice() {
        ["localauthority", kind, "show"] => show(socket, kind, out).await,
        ["localauthority", kind, verb] => local(socket, kind, verb, p, out).await,
        ["upstreamauthority", verb] => upstream(socket, verb, p, out).await,
        _ => bail!("unknown command {cmd:?}"),
    }
}

fn kind_of(kind: &str) -> (pb::AuthorityKind, &'static str) {
    if kind == "x509" {
        (pb::AuthorityKind::X509, "X.509")
    } else {
        (pb::AuthorityKind::Jwt, "JWT")
    }
}

async fn show(socket: &str, kind: &str, out: Out) -> Result<i32> {
    let (k, what) = kind_of(kind);
    let r = connect(socket)
        .await?
        .get_authority_state(pb::GetAuthorityStateRequest { kind: k as i32 })
        .await
        .map_err(|s| {
            if kind == "x509" {
                rpc_error("could not get X.509 authorities", s)
            } else {
                // spire-server's jwt show returns the bare error.
                anyhow!("rpc error: code = {:?} desc = {}", s.code(), s.message())
            }
        })?
        .into_inner();
    let x509 = kind == "x509";
    let mut v = Map::new();
    for (name, s) in [
        ("active", &r.active),
        ("prepared", &r.prepared),
        ("old", &r.old),
    ] {
        if let Some(s) = s {
            v.insert(name.into(), state_json(s));
        }
    }
    out.print(Value::Object(v), || {
        let mut t = String::new();
        for (i, (label, s)) in [
            ("Active", &r.active),
            ("Prepared", &r.prepared),
            ("Old", &r.old),
        ]
        .into_iter()
        .enumerate()
        {
            if i > 0 {
                t.push('\n');
            }
            t.push_str(&format!("{label} {what} authority:\n"));
            match s {
                Some(s) => t.push_str(&state_text(s, x509)),
                None => t.push_str(&format!(
                    "  No {} {what} authority found\n",
                    label.to_lowercase()
                )),
            }
        }
        t.trim_end_matches('\n').to_string()
    });
    Ok(0)
}

async fn local(socket: &str, kind: &str, verb: &str, p: &Parsed, out: Out) -> Result<i32> {
    let (k, what) = kind_of(kind);
    let (action, past, field) = match verb {
        "prepare" => (
            pb::AuthorityAction::Prepare,
            "Prepared",
            "prepared_authority",
        ),
        "activate" => (
            pb::AuthorityAction::Activate,
            "Activated",
            "activated_authority",
        ),
        "taint" => (pb::AuthorityAction::Taint, "Tainted", "tainted_authority"),
        "revoke" => (pb::AuthorityAction::Revoke, "Revoked", "revoked_authority"),
        other => bail!("unknown command \"localauthority {kind} {other}\""),
    };
    let id = p.get("authorityID").unwrap_or_default().to_string();
    if action != pb::AuthorityAction::Prepare && id.is_empty() {
        bail!("an authority ID is required");
    }
    let s = connect(socket)
        .await
        .map_err(|e| anyhow!("could not {verb} {what} authority: {e:#}"))?
        .change_authority(pb::ChangeAuthorityRequest {
            kind: k as i32,
            action: action as i32,
            authority_id: id,
        })
        .await
        .map_err(|s| rpc_error(&format!("could not {verb} {what} authority"), s))?
        .into_inner();
    out.print(json!({ field: state_json(&s) }), || {
        format!(
            "{past} {what} authority:\n{}",
            state_text(&s, kind == "x509")
        )
        .trim_end_matches('\n')
        .to_string()
    });
    Ok(0)
}

async fn upstream(socket: &str, verb: &str, p: &Parsed, out: Out) -> Result<i32> {
    let action = match verb {
        "taint" => pb::AuthorityAction::Taint,
        "revoke" => pb::AuthorityAction::Revoke,
        other => bail!("unknown command \"upstreamauthority {other}\""),
    };
    let ski = p.get("subjectKeyID").unwrap_or_default().to_string();
    if ski.is_empty() {
        bail!("the Subject Key ID of the X.509 upstream authority is required");
    }
    let s = connect(socket)
        .await
        .map_err(|e| anyhow!("could not {verb} X.509 upstream authority: {e:#}"))?
        .change_authority(pb::ChangeAuthorityRequest {
            kind: pb::AuthorityKind::UpstreamX509 as i32,
            action: action as i32,
            authority_id: ski,
        })
        .await
        .map_err(|s| rpc_error(&format!("could not {verb} X.509 upstream authority"), s))?
        .into_inner();
    let ski = s.upstream_authority_subject_key_id;
    let past = if verb == "taint" {
        "Tainted"
    } else {
        "Revoked"
    };
    out.print(json!({ "upstream_authority_subject_key_id": ski }), || {
        format!("{past} X.509 upstream authority:\n  Subject Key ID: {ski}")
    });
    Ok(0)
}
