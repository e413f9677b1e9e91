//! `sigil-server federation list|show|refresh`: spire-server's lines, plus what SPIRE only
//! logs (spire#5097): when the bundle was last fetched, the last error, the next attempt.

use anyhow::{Result, bail};
use serde_json::{Value, json};
use sigil_flags::{FlagSet, Parsed};
use sigil_proto::admin as pb;

use super::{Out, connect, socket_flag};

/// The flags of the `federation` verbs; `None` if `cmd` is not one.
pub(super) fn flags(cmd: &str) -> Option<FlagSet> {
    Some(match cmd {
        "federation list" => socket_flag(FlagSet::new()),
        "federation show" => socket_flag(FlagSet::new()).value(
            "trustDomain",
            "The trust domain name of the federation relationship to show",
        ),
        "federation refresh" => {
            socket_flag(FlagSet::new()).value("id", "SPIFFE ID of the trust domain")
        }
        _ => return None,
    })
}

async fn list(socket: &str) -> Result<Vec<pb::FederationRelationship>> {
    Ok(connect(socket)
        .await?
        .list_federation_relationships(pb::ListFederationRelationshipsRequest {})
        .await?
        .into_inner()
        .relationships)
}

pub(super) async fn federation_list(socket: &str, out: Out) -> Result<i32> {
    let rels = list(socket).await?;
    out.print(
        json!({"federation_relationships": rels.iter().map(relationship_json).collect::<Vec<_>>()}),
        || {
            let mut s = format!(
                "Found {} federation relationship{}\n",
                rels.len(),
                if rels.len() == 1 { "" } else { "s" }
            );
            for r in &rels {
                s.push('\n');
                s.push_str(&relationship_text(r));
            }
            s.trim_end().to_string()
        },
    );
    Ok(0)
}

pub(super) async fn federation_show(socket: &str, p: &Parsed, out: Out) -> Result<i32> {
    let Some(td) = p.get("trustDomain").filter(|t| !t.is_empty()) else {
        bail!("a trust domain name is required");
    };
    let want = td.trim_start_matches("spiffe://").to_ascii_lowercase();
    let rels = list(socket).await?;
    let Some(r) = rels.iter().find(|r| r.trust_domain == want) else {
        bail!(
            "error showing federation relationship: rpc error: code = NotFound desc = federation relationship does not exist"
        );
    };
    out.print(relationship_json(r), || {
        format!(
            "Found a federation relationship with trust domain {td}:\n\n{}",
            relationship_text(r).trim_end()
        )
    });
    Ok(0)
}

pub(super) async fn federation_refresh(socket: &str, p: &Parsed, out: Out) -> Result<i32> {
    let Some(id) = p.get("id").filter(|t| !t.is_empty()) else {
        bail!("id is required");
    };
    let res = connect(socket)
        .await?
        .refresh_bundle(pb::RefreshBundleRequest {
            trust_domain: id.to_string(),
        })
        .await;
    match res {
        Ok(_) => {
            out.print(json!({"code": 0, "message": "OK"}), || {
                "Bundle refreshed".to_string()
            });
            Ok(0)
        }
        Err(s) if s.code() == tonic::Code::NotFound => {
            bail!("there is no federation relationship with trust domain {id:?}")
        }
        Err(s) => bail!("failed to refresh bundle: {}", s.message()),
    }
}

fn time_text(unix: i64) -> String {
    if unix == 0 {
        return "never".into();
    }
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

fn relationship_text(r: &pb::FederationRelationship) -> String {
    let mut s = format!(
        "Trust domain              : {}\nBundle endpoint URL       : {}\nBundle endpoint profile   : {}\n",
        r.trust_domain, r.bundle_endpoint_url, r.bundle_endpoint_profile
    );
    if r.bundle_endpoint_profile == "https_spiffe" {
        s.push_str(&format!(
            "Endpoint SPIFFE ID        : {}\n",
            r.endpoint_spiffe_id
        ));
    }
    // What SPIRE does not show: how the refresh is going.
    s.push_str(&format!(
        "Last refresh              : {}\n",
        time_text(r.last_success)
    ));
    if !r.last_error.is_empty() {
        s.push_str(&format!(
            "Last error                : {} ({})\n",
            r.last_error,
            time_text(r.last_error_at)
        ));
    }
    s.push_str(&format!(
        "Next refresh              : {}\n",
        time_text(r.next_attempt)
    ));
    if r.bundle_sequence != 0 {
        s.push_str(&format!(
            "Bundle sequence           : {}\n",
            r.bundle_sequence
        ));
    }
    s
}

fn relationship_json(r: &pb::FederationRelationship) -> Value {
    let mut v = json!({
        "trust_domain": r.trust_domain,
        "bundle_endpoint_url": r.bundle_endpoint_url,
        "last_success": r.last_success,
        "last_error": r.last_error,
        "last_error_at": r.last_error_at,
        "next_attempt": r.next_attempt,
        "bundle_sequence": r.bundle_sequence,
        "source": r.source,
    });
    // SPIRE's JSON: the profile as a oneof member.
    if r.bundle_endpoint_profile == "https_spiffe" {
        v["https_spiffe"] = json!({"endpoint_spiffe_id": r.endpoint_spiffe_id});
    } else {
        v["https_web"] = json!({});
    }
    v
}
