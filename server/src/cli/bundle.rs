//! `sigil-server bundle show|list|set|delete`: the trust bundle and federated bundles, in PEM
//! or SPIFFE format.

use std::io::Read;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use sigil_flags::{FlagSet, Parsed};
use sigil_proto::admin as pb;
use sigil_proto::types;

use super::{Out, connect, socket_flag};

/// The flags of the `bundle` verbs; `None` if `cmd` is not one.
pub(super) fn flags(cmd: &str) -> Option<FlagSet> {
    Some(match cmd {
        "bundle show" => socket_flag(FlagSet::new())
            .value("format", "The format to show the bundle (pem, spiffe)"),
        "bundle list" => socket_flag(FlagSet::new())
            .value("id", "The trust domain SPIFFE ID of the bundle to show")
            .value(
                "format",
                "The format to list federated bundles (pem, spiffe)",
            ),
        "bundle set" => socket_flag(FlagSet::new())
            .value("id", "SPIFFE ID of the trust domain")
            .value("path", "Path to the bundle data (default: stdin)")
            .value("format", "The format of the bundle data (pem, spiffe)"),
        "bundle delete" => socket_flag(FlagSet::new())
            .value("id", "SPIFFE ID of the trust domain")
            .value(
                "mode",
                "Deletion mode: restrict (only restrict is supported)",
            ),
        _ => return None,
    })
}

pub(super) async fn bundle_show(socket: &str, p: &Parsed, out: Out) -> Result<i32> {
    let format = bundle_format(p)?;
    let b = connect(socket)
        .await?
        .get_bundle(pb::GetBundleRequest {})
        .await?
        .into_inner();
    if out.json {
        // spire-server prints its API's Bundle message, where tainted authorities are marked.
        println!("{:#}", bundle_api_json(&b));
        return Ok(0);
    }
    let b = bundle_from_proto(&b)?;
    print_bundle(&b, format, out);
    Ok(0)
}

/// A bundle as spire-server's `-output json` prints it (protojson of `spire.api.types.Bundle`:
/// DER as base64, 64-bit integers as strings, every authority with its `tainted` mark).
fn bundle_api_json(b: &types::Bundle) -> Value {
    use sigil_spiffe::x509::key_ids;
    let x509: Vec<Value> = b
        .x509_authorities
        .iter()
        .map(|der| {
            let ski = key_ids(der).ok().and_then(|(ski, _)| ski);
            let tainted = ski.is_some_and(|s| b.tainted_x509_authorities.contains(&s));
            json!({"asn1": super::b64(der), "tainted": tainted})
        })
        .collect();
    let jwt: Vec<Value> = b
        .jwt_authorities
        .iter()
        .map(|k| {
            json!({
                "public_key": super::b64(&k.public_key),
                "key_id": k.key_id,
                "expires_at": k.expires_at.to_string(),
                "tainted": b.tainted_jwt_authorities.contains(&k.key_id),
            })
        })
        .collect();
    json!({
        "trust_domain": b.trust_domain,
        "x509_authorities": x509,
        "jwt_authorities": jwt,
        "wit_authorities": [],
        "refresh_hint": b.refresh_hint.to_string(),
        "sequence_number": b.sequence_number.to_string(),
    })
}

pub(super) async fn bundle_list(socket: &str, p: &Parsed, out: Out) -> Result<i32> {
    let format = bundle_format(p)?;
    let want = p
        .get("id")
        .map(sigil_spiffe::TrustDomain::from_id_or_name)
        .transpose()
        .map_err(|e| anyhow!("invalid -id: {e}"))?;
    let list = connect(socket)
        .await?
        .list_federated_bundles(pb::ListFederatedBundlesRequest {})
        .await?
        .into_inner()
        .bundles;
    let bundles: Vec<_> = list
        .iter()
        .map(bundle_from_proto)
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .filter(|b| want.as_ref().is_none_or(|w| w == &b.trust_domain))
        .collect();
    if want.is_some() && bundles.is_empty() {
        bail!(
            "no federated bundle for {}",
            p.get("id").unwrap_or_default()
        );
    }
    if out.json {
        let v: Vec<Value> = list
            .iter()
            .filter(|b| {
                want.as_ref().is_none_or(|w| {
                    sigil_spiffe::TrustDomain::from_id_or_name(&b.trust_domain)
                        .is_ok_and(|td| &td == w)
                })
            })
            .map(bundle_api_json)
            .collect();
        if want.is_some() && v.len() == 1 {
            println!("{:#}", v[0]);
        } else {
            println!("{:#}", json!({"bundles": v, "next_page_token": ""}));
        }
    } else {
        for b in &bundles {
            if want.is_none() {
                println!("****************************************");
                println!("* {}", b.trust_domain.id());
                println!("****************************************");
            }
            print_bundle(b, format, Out { json: false });
        }
    }
    Ok(0)
}

pub(super) async fn bundle_set(socket: &str, p: &Parsed, out: Out) -> Result<i32> {
    let id = p.required("id")?;
    let td = sigil_spiffe::TrustDomain::from_id_or_name(id)
        .map_err(|e| anyhow!("invalid -id {id:?}: {e}"))?;
    let data = match p.get("path") {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {path}"))?,
        None => {
            let mut v = Vec::new();
            std::io::stdin()
                .read_to_end(&mut v)
                .context("reading stdin")?;
            v
        }
    };
    let b = match bundle_format(p)? {
        BundleFormat::Pem => sigil_spiffe::bundle::Bundle::from_pem(td, &data)
            .map_err(|e| anyhow!("invalid PEM bundle: {e}"))?,
        BundleFormat::Spiffe => sigil_spiffe::bundle::Bundle::from_spiffe_json(td, &data)
            .map_err(|e| anyhow!("invalid SPIFFE bundle: {e}"))?,
    };
    connect(socket)
        .await?
        .set_federated_bundle(pb::SetFederatedBundleRequest {
            bundle: Some(crate::api::node::bundle_to_proto(&b)),
        })
        .await?;
    out.print(json!({"trust_domain": b.trust_domain.as_str()}), || {
        "bundle set.".into()
    });
    Ok(0)
}

pub(super) async fn bundle_delete(socket: &str, p: &Parsed, out: Out) -> Result<i32> {
    let id = p.required("id")?;
    if let Some(mode) = p.get("mode")
        && mode != "restrict"
    {
        bail!("unsupported -mode {mode:?}: only restrict is supported");
    }
    connect(socket)
        .await?
        .delete_federated_bundle(pb::DeleteFederatedBundleRequest {
            trust_domain: id.to_string(),
        })
        .await?;
    out.print(json!({}), || "bundle deleted.".into());
    Ok(0)
}

#[derive(Debug, Clone, Copy)]
enum BundleFormat {
    Pem,
    Spiffe,
}

fn bundle_format(p: &Parsed) -> Result<BundleFormat> {
    match p.get("format").unwrap_or("pem") {
        "pem" => Ok(BundleFormat::Pem),
        "spiffe" => Ok(BundleFormat::Spiffe),
        other => bail!("invalid -format {other:?}: use pem or spiffe"),
    }
}

fn bundle_from_proto(b: &types::Bundle) -> Result<sigil_spiffe::bundle::Bundle> {
    let td = sigil_spiffe::TrustDomain::from_id_or_name(&b.trust_domain)?;
    let mut out = sigil_spiffe::bundle::Bundle::new(td);
    out.x509_authorities = b.x509_authorities.clone();
    out.jwt_authorities = b
        .jwt_authorities
        .iter()
        .map(|k| sigil_spiffe::bundle::JwtAuthority {
            key_id: k.key_id.clone(),
            public_key_der: k.public_key.clone(),
            expires_at: k.expires_at,
        })
        .collect();
    out.refresh_hint = (b.refresh_hint != 0).then_some(b.refresh_hint);
    out.sequence_number = (b.sequence_number != 0).then_some(b.sequence_number);
    Ok(out)
}

fn print_bundle(b: &sigil_spiffe::bundle::Bundle, format: BundleFormat, out: Out) {
    match (out.json, format) {
        (_, BundleFormat::Spiffe) | (true, _) => println!("{}", b.to_spiffe_json()),
        (false, BundleFormat::Pem) => print!("{}", b.to_pem()),
    }
}
