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
        "federation refresh" | "federation delete" => {
            socket_flag(FlagSet::new()).value("id", "SPIFFE ID of the trust domain")
        }
        "federation create" | "federation update" => socket_flag(FlagSet::new())
            .value("data", "Path to a file containing federation relationships in JSON format (optional). If set to '-', read the JSON from stdin.")
            .value("trustDomain", "Name of the trust domain to federate with (e.g., example.org)")
            .value("bundleEndpointURL", "URL of the SPIFFE bundle endpoint that provides the trust bundle (must use the HTTPS protocol)")
            .value("bundleEndpointProfile", "Endpoint profile type (either \"https_web\" or \"https_spiffe\")")
            .value("endpointSpiffeID", "SPIFFE ID of the SPIFFE bundle endpoint server. Only used for 'spiffe' profile.")
            .value("trustDomainBundlePath", "Path to the trust domain bundle data (optional).")
            .value("trustDomainBundleFormat", "The format of the bundle data (optional). Either \"pem\" or \"spiffe\"."),
        _ => return None,
    })
}

/// One relationship from flags or a `-data` item (SPIRE's `federationRelationshipConfig`).
fn relationship(
    td: &str,
    url: &str,
    profile: &str,
    endpoint_id: &str,
    bundle: Option<(Vec<u8>, &str)>,
) -> Result<pb::FederationRelationship> {
    if td.is_empty() {
        bail!("trust domain is required");
    }
    if url.is_empty() {
        bail!("bundle endpoint URL is required");
    }
    let mut bundle_td = td.trim_start_matches("spiffe://").to_string();
    match profile {
        "https_web" => {}
        "https_spiffe" => {
            if endpoint_id.is_empty() {
                bail!("endpoint SPIFFE ID is required if 'https_spiffe' endpoint profile is set");
            }
            let id: sigil_spiffe::SpiffeId = endpoint_id
                .parse()
                .map_err(|e| anyhow::anyhow!("cannot parse bundle endpoint SPIFFE ID: {e}"))?;
            bundle_td = id.trust_domain().as_str().to_string();
        }
        other => bail!("unknown bundle endpoint profile type: {other:?}"),
    }
    let trust_domain_bundle = match bundle {
        None => None,
        Some((data, format)) => {
            let td = sigil_spiffe::TrustDomain::from_id_or_name(&bundle_td)
                .map_err(|e| anyhow::anyhow!("invalid trust domain {bundle_td:?}: {e}"))?;
            let b = match format {
                "pem" | "" => sigil_spiffe::bundle::Bundle::from_pem(td, &data)
                    .map_err(|e| anyhow::anyhow!("cannot parse bundle file: {e}"))?,
                "spiffe" => sigil_spiffe::bundle::Bundle::from_spiffe_json(td, &data)
                    .map_err(|e| anyhow::anyhow!("cannot parse bundle file: {e}"))?,
                other => bail!("bundle format {other:?} is unsupported"),
            };
            Some(crate::api::node::bundle_to_proto(&b))
        }
    };
    Ok(pb::FederationRelationship {
        trust_domain: td.to_string(),
        bundle_endpoint_url: url.to_string(),
        bundle_endpoint_profile: profile.to_string(),
        endpoint_spiffe_id: endpoint_id.to_string(),
        trust_domain_bundle,
        ..Default::default()
    })
}

/// The relationships of `create`/`update`: from flags, or from `-data` (and then no other).
fn relationships(p: &Parsed) -> Result<Vec<pb::FederationRelationship>> {
    let flag = |n: &str| p.get(n).unwrap_or_default().to_string();
    let format = p.get("trustDomainBundleFormat").unwrap_or("pem");
    if let Some(path) = p.get("data") {
        let others = [
            "trustDomain",
            "bundleEndpointURL",
            "bundleEndpointProfile",
            "endpointSpiffeID",
            "trustDomainBundlePath",
        ];
        if others.iter().any(|o| p.get(o).is_some()) {
            bail!("cannot use other flags to specify relationship fields when 'data' flag is set");
        }
        let text = if path == "-" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
            s
        } else {
            std::fs::read_to_string(path)?
        };
        let doc: Value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("failed to parse JSON: {e}"))?;
        let mut out = Vec::new();
        for (i, item) in doc["federationRelationships"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let s = |k: &str| item[k].as_str().unwrap_or_default();
            let fmt = item["trustDomainBundleFormat"].as_str().unwrap_or("pem");
            let bundle = match &item["trustDomainBundle"] {
                Value::Null => None,
                Value::String(pem) if fmt == "pem" => Some((pem.as_bytes().to_vec(), fmt)),
                other => Some((other.to_string().into_bytes(), fmt)),
            };
            out.push(
                relationship(
                    s("trustDomain"),
                    s("bundleEndpointURL"),
                    s("bundleEndpointProfile"),
                    s("endpointSPIFFEID"),
                    bundle,
                )
                .map_err(|e| anyhow::anyhow!("could not parse item {i}: {e}"))?,
            );
        }
        return Ok(out);
    }
    let bundle = match p.get("trustDomainBundlePath") {
        Some(path) => Some((
            std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read bundle file: {e}"))?,
            format,
        )),
        None => None,
    };
    Ok(vec![relationship(
        &flag("trustDomain"),
        &flag("bundleEndpointURL"),
        &flag("bundleEndpointProfile"),
        &flag("endpointSpiffeID"),
        bundle,
    )?])
}

pub(super) async fn federation_create(socket: &str, p: &Parsed, out: Out) -> Result<i32> {
    write(socket, p, out, true).await
}

pub(super) async fn federation_update(socket: &str, p: &Parsed, out: Out) -> Result<i32> {
    write(socket, p, out, false).await
}

async fn write(socket: &str, p: &Parsed, out: Out, create: bool) -> Result<i32> {
    let rels = relationships(p)?;
    let mut client = connect(socket).await?;
    let req = pb::BatchFederationRelationshipRequest {
        relationships: rels,
    };
    let results = if create {
        client.batch_create_federation_relationship(req).await
    } else {
        client.batch_update_federation_relationship(req).await
    }
    .map_err(|s| anyhow::anyhow!("request failed: {}", s.message()))?
    .into_inner()
    .results;
    let verb = if create { "create" } else { "update" };
    let failed = results
        .iter()
        .filter(|r| r.status.as_ref().is_some_and(|s| s.code != 0))
        .count();
    if out.json {
        let v: Vec<Value> = results
            .iter()
            .map(|r| {
                json!({
                    "status": {"code": r.status.as_ref().map_or(0, |s| s.code),
                               "message": r.status.as_ref().map(|s| s.message.clone()).unwrap_or_default()},
                    "federation_relationship": r.relationship.as_ref().map(relationship_json),
                })
            })
            .collect();
        println!("{}", json!({"results": v}));
    } else {
        for r in &results {
            let Some(rel) = &r.relationship else { continue };
            match &r.status {
                Some(s) if s.code != 0 => {
                    eprintln!(
                        "\nFailed to {verb} the following federation relationship (code: {}, msg: {:?}):\n{}",
                        super::code_name(s.code),
                        s.message,
                        spire_lines(rel).trim_end()
                    );
                }
                _ => println!("\n{}", spire_lines(rel).trim_end()),
            }
        }
    }
    if failed > 0 {
        bail!("failed to {verb} one or more federation relationships");
    }
    Ok(0)
}

pub(super) async fn federation_delete(socket: &str, p: &Parsed, out: Out) -> Result<i32> {
    let Some(id) = p.get("id").filter(|t| !t.is_empty()) else {
        bail!("id is required");
    };
    let results = connect(socket)
        .await?
        .batch_delete_federation_relationship(pb::BatchDeleteFederationRelationshipRequest {
            trust_domains: vec![id.to_string()],
        })
        .await
        .map_err(|s| anyhow::anyhow!("failed to delete federation relationship: {}", s.message()))?
        .into_inner()
        .results;
    let Some(r) = results.first() else {
        bail!("failed to delete federation relationship: no result");
    };
    match &r.status {
        Some(s) if s.code != 0 => bail!(
            "failed to delete federation relationship {:?}: {}",
            r.trust_domain,
            s.message
        ),
        _ => {
            out.print(
                json!({"results": [{"status": {"code": 0, "message": "OK"}, "trust_domain": r.trust_domain}]}),
                || "federation relationship deleted.".to_string(),
            );
            Ok(0)
        }
    }
}

/// spire-server's lines of a relationship.
fn spire_lines(r: &pb::FederationRelationship) -> String {
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
    s
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
    let mut s = spire_lines(r);
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
        "managed_by": r.managed_by,
    });
    // SPIRE's JSON: the profile as a oneof member.
    if r.bundle_endpoint_profile == "https_spiffe" {
        v["https_spiffe"] = json!({"endpoint_spiffe_id": r.endpoint_spiffe_id});
    } else {
        v["https_web"] = json!({});
    }
    v
}
