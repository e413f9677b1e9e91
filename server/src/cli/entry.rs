//! `sigil-server entry create|show|update|delete|count`: registration entries from flags or
//! `-data` JSON, batch results, and how entries are printed.

use std::io::Read;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use sigil_flags::{FlagSet, Parsed};
use sigil_proto::admin as pb;
use sigil_proto::types;

use super::{Out, connect, socket_flag};

/// The flags of the `entry` verbs; `None` if `cmd` is not one.
pub(super) fn flags(cmd: &str) -> Option<FlagSet> {
    let entry_fields = |fs: FlagSet| {
        fs.value("spiffeID", "The SPIFFE ID that this record represents")
            .value("parentID", "The SPIFFE ID of this record's parent")
            .multi("selector", "A colon-delimited type:value selector. Can be used more than once")
            .multi("dns", "A DNS name that will be included in SVIDs for this entry. Can be used more than once")
            .value("x509SVIDTTL", "The lifetime, in seconds, for x509-SVIDs issued based on this registration entry")
            .value("jwtSVIDTTL", "The lifetime, in seconds, for JWT-SVIDs issued based on this registration entry")
            .multi("federatesWith", "SPIFFE ID of a trust domain to federate with. Can be used more than once")
            .bool("admin", "If set, the SPIFFE ID in this entry will be granted access to the Server APIs")
            .bool("downstream", "A boolean value that, when set, indicates that the entry describes a downstream SPIRE server")
            .value("hint", "The entry hint, used to disambiguate entries with the same SPIFFE ID")
            .bool("storeSVID", "A boolean value that, when set, indicates that the resulting issued SVID from this entry must be stored through an SVIDStore plugin")
            .value("entryID", "A custom ID for this registration entry (optional)")
            .value("data", "Path to a file containing registration JSON (optional). If set to '-', read the JSON from stdin.")
    };
    Some(match cmd {
        "entry create" => socket_flag(entry_fields(FlagSet::new()).bool(
            "node",
            "If set, this entry will be applied to matching nodes rather than workloads",
        )),
        "entry update" => socket_flag(entry_fields(FlagSet::new())),
        "entry show" => socket_flag(FlagSet::new())
            .value("entryID", "The Entry ID of the records to show")
            .value("spiffeID", "The SPIFFE ID of the records to show")
            .value("parentID", "The Parent ID of the records to show")
            .multi(
                "selector",
                "A colon-delimited type:value selector. Can be used more than once",
            )
            .value(
                "matchSelectorsOn",
                "The match mode used when filtering by selectors (exact, subset, superset, any)",
            )
            .multi(
                "federatesWith",
                "SPIFFE ID of a trust domain an entry is federate with",
            )
            .value("hint", "The Hint of the records to show"),
        "entry delete" => socket_flag(FlagSet::new())
            .value(
                "entryID",
                "The Registration Entry ID of the record to delete",
            )
            .value(
                "file",
                "Path to a file containing a JSON structure for batch deletion",
            ),
        "entry count" => socket_flag(FlagSet::new()),
        _ => return None,
    })
}

pub(super) async fn entry_count(socket: &str, out: Out) -> Result<i32> {
    let n = connect(socket)
        .await?
        .count_entries(pb::CountEntriesRequest {})
        .await?
        .into_inner()
        .count;
    out.print(json!({"count": n}), || match n {
        1 => "1 registration entry".to_string(),
        n => format!("{n} registration entries"),
    });
    Ok(0)
}

fn selector_protos(values: &[String]) -> Result<Vec<types::Selector>> {
    values
        .iter()
        .map(|s| {
            let sel: sigil_spiffe::Selector = s
                .parse()
                .map_err(|e| anyhow!("invalid -selector {s:?}: {e} (expected type:value)"))?;
            Ok(types::Selector {
                r#type: sel.kind,
                value: sel.value,
            })
        })
        .collect()
}

fn ttl_flag(p: &Parsed, name: &str) -> Result<i32> {
    let v = p.parse_opt::<i32>(name)?.unwrap_or(0);
    if v < 0 {
        bail!("invalid -{name} {v}: must not be negative");
    }
    Ok(v)
}

/// `-node` (entry create only): a node-alias entry, parented to the server
/// (`spiffe://<td>/spire/server`, in the trust domain of `-spiffeID`), that every agent whose
/// node selectors include all of the entry's holds. As spire-server, `-node` wins over a
/// `-parentID` and refuses `-federatesWith`.
fn node_alias_flags(p: &Parsed) -> Result<Option<String>> {
    if !p.flag("node") {
        return Ok(None);
    }
    if p.all("selector").is_empty() {
        bail!("at least one selector is required");
    }
    if !p.all("federatesWith").is_empty() {
        bail!("node entries can not federate");
    }
    let spiffe_id = p
        .get("spiffeID")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| anyhow!("a SPIFFE ID is required"))?;
    let id = spiffe_id
        .parse::<sigil_spiffe::SpiffeId>()
        .map_err(|e| anyhow!("invalid -spiffeID {spiffe_id:?}: {e}"))?;
    let server = sigil_spiffe::SpiffeId::from_path(&id.trust_domain(), "/spire/server")
        .map_err(|e| anyhow!("invalid -spiffeID {spiffe_id:?}: {e}"))?;
    Ok(Some(server.to_string()))
}

fn entry_from_flags(p: &Parsed, need_id: bool) -> Result<types::Entry> {
    let id = p.get("entryID").unwrap_or_default().to_string();
    if need_id && id.is_empty() {
        bail!("flag -entryID is required");
    }
    let node_parent = if need_id { None } else { node_alias_flags(p)? };
    let spiffe_id = p.required("spiffeID")?.to_string();
    let parent_id = match node_parent {
        Some(server) => server,
        None if !need_id && p.get("parentID").is_none_or(str::is_empty) => {
            bail!("a parent ID is required if the node flag is not set")
        }
        None => p.required("parentID")?.to_string(),
    };
    // Check IDs here too, so the user gets the reason without a round trip.
    spiffe_id
        .parse::<sigil_spiffe::SpiffeId>()
        .map_err(|e| anyhow!("invalid -spiffeID {spiffe_id:?}: {e}"))?;
    parent_id
        .parse::<sigil_spiffe::SpiffeId>()
        .map_err(|e| anyhow!("invalid -parentID {parent_id:?}: {e}"))?;
    if p.all("selector").is_empty() {
        bail!("at least one selector is required (-selector type:value)");
    }
    Ok(types::Entry {
        id,
        spiffe_id,
        parent_id,
        selectors: selector_protos(p.all("selector"))?,
        x509_svid_ttl: ttl_flag(p, "x509SVIDTTL")?,
        jwt_svid_ttl: ttl_flag(p, "jwtSVIDTTL")?,
        dns_names: p.all("dns").to_vec(),
        federates_with: p.all("federatesWith").to_vec(),
        admin: p.flag("admin"),
        downstream: p.flag("downstream"),
        hint: p.get("hint").unwrap_or_default().to_string(),
        store_svid: p.flag("storeSVID"),
        ..Default::default()
    })
}

/// Reads the `-data` JSON: `{"entries": [...]}` in SPIRE's format. IDs may be strings or
/// `{"trust_domain": .., "path": ..}` objects (both forms appear in SPIRE's docs).
fn entries_from_data(path: &str) -> Result<Vec<types::Entry>> {
    let text = if path == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading stdin")?;
        s
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?
    };
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {path} as JSON"))?;
    let list = v
        .get("entries")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("{path}: expected an object with an \"entries\" array"))?;
    list.iter()
        .enumerate()
        .map(|(i, e)| entry_from_json(e).with_context(|| format!("{path}: entries[{i}]")))
        .collect()
}

fn id_from_json(v: Option<&Value>, field: &str) -> Result<String> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Object(o)) => {
            let td = o
                .get("trust_domain")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let path = o.get("path").and_then(Value::as_str).unwrap_or_default();
            Ok(format!("spiffe://{td}{path}"))
        }
        Some(_) => bail!("{field} must be a string"),
        None => bail!("{field} is required"),
    }
}

fn entry_from_json(e: &Value) -> Result<types::Entry> {
    let str_list = |k: &str| -> Result<Vec<String>> {
        match e.get(k) {
            None | Some(Value::Null) => Ok(vec![]),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(String::from)
                        .ok_or_else(|| anyhow!("{k} must hold strings"))
                })
                .collect(),
            Some(_) => bail!("{k} must be an array"),
        }
    };
    let int = |k: &str| -> Result<i32> {
        match e.get(k) {
            None | Some(Value::Null) => Ok(0),
            Some(v) => v
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(|| anyhow!("{k} must be an integer")),
        }
    };
    let selectors = e
        .get("selectors")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("selectors is required"))?
        .iter()
        .map(|s| {
            Ok(types::Selector {
                r#type: s
                    .get("type")
                    .and_then(Value::as_str)
                    .ok_or_else(|| anyhow!("selector type is required"))?
                    .into(),
                value: s
                    .get("value")
                    .and_then(Value::as_str)
                    .ok_or_else(|| anyhow!("selector value is required"))?
                    .into(),
            })
        })
        .collect::<Result<_>>()?;
    Ok(types::Entry {
        id: e
            .get("id")
            .or_else(|| e.get("entry_id"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .into(),
        spiffe_id: id_from_json(e.get("spiffe_id"), "spiffe_id")?,
        parent_id: id_from_json(e.get("parent_id"), "parent_id")?,
        selectors,
        x509_svid_ttl: int("x509_svid_ttl").or_else(|_| int("ttl"))?,
        jwt_svid_ttl: int("jwt_svid_ttl")?,
        dns_names: str_list("dns_names")?,
        federates_with: str_list("federates_with")?,
        admin: e.get("admin").and_then(Value::as_bool).unwrap_or(false),
        downstream: e
            .get("downstream")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        hint: e
            .get("hint")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .into(),
        store_svid: e
            .get("store_svid")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        ..Default::default()
    })
}

fn ttl_text(v: i32) -> String {
    if v == 0 {
        "default".into()
    } else {
        v.to_string()
    }
}

fn entry_text(e: &types::Entry) -> String {
    let mut s = format!(
        "Entry ID         : {}\nSPIFFE ID        : {}\nParent ID        : {}\nRevision         : {}\nX509-SVID TTL    : {}\nJWT-SVID TTL     : {}\n",
        e.id,
        e.spiffe_id,
        e.parent_id,
        e.revision,
        ttl_text(e.x509_svid_ttl),
        ttl_text(e.jwt_svid_ttl)
    );
    for sel in &e.selectors {
        s.push_str(&format!(
            "Selector         : {}:{}\n",
            sel.r#type, sel.value
        ));
    }
    for f in &e.federates_with {
        s.push_str(&format!("FederatesWith    : {f}\n"));
    }
    for d in &e.dns_names {
        s.push_str(&format!("DNS name         : {d}\n"));
    }
    if e.admin {
        s.push_str("Admin            : true\n");
    }
    if e.downstream {
        s.push_str("Downstream       : true\n");
    }
    if !e.hint.is_empty() {
        s.push_str(&format!("Hint             : {}\n", e.hint));
    }
    if e.store_svid {
        s.push_str("StoreSvid        : true\n");
    }
    s
}

fn entry_json(e: &types::Entry) -> Value {
    json!({
        "id": e.id,
        "spiffe_id": e.spiffe_id,
        "parent_id": e.parent_id,
        "selectors": e.selectors.iter().map(|s| json!({"type": s.r#type, "value": s.value})).collect::<Vec<_>>(),
        "x509_svid_ttl": e.x509_svid_ttl,
        "jwt_svid_ttl": e.jwt_svid_ttl,
        "federates_with": e.federates_with,
        "dns_names": e.dns_names,
        "admin": e.admin,
        "downstream": e.downstream,
        "hint": e.hint,
        "store_svid": e.store_svid,
        "created_at": e.created_at,
        "revision_number": e.revision,
    })
}

fn status_ok(s: &Option<types::Status>) -> bool {
    s.as_ref().is_none_or(|s| s.code == 0)
}

fn report_batch(results: &[pb::EntryResult], out: Out, verb: &str) -> i32 {
    if out.json {
        let v: Vec<Value> = results
            .iter()
            .map(|r| {
                json!({
                    "status": {"code": r.status.as_ref().map(|s| s.code).unwrap_or(0), "message": r.status.as_ref().map(|s| s.message.clone()).unwrap_or_default()},
                    "entry": r.entry.as_ref().map(entry_json),
                    "id": r.id,
                })
            })
            .collect();
        println!("{}", json!({"results": v}));
    }
    let mut failed = false;
    for r in results {
        if status_ok(&r.status) {
            if !out.json {
                if let Some(e) = &r.entry {
                    println!("{}", entry_text(e));
                } else {
                    println!("Deleted entry with ID: {}\n", r.id);
                }
            }
        } else {
            failed = true;
            let s = r.status.clone().unwrap_or_default();
            let code = tonic::Code::from_i32(s.code);
            eprintln!(
                "FAILED to {verb} the following entry (code: {code:?}, msg: {:?}):",
                s.message
            );
            match &r.entry {
                Some(e) => eprintln!("{}", entry_text(e)),
                None => eprintln!("Entry ID         : {}\n", r.id),
            }
        }
    }
    i32::from(failed)
}

pub(super) async fn entry_create(socket: &str, p: &Parsed, out: Out) -> Result<i32> {
    let entries = match p.get("data") {
        Some(path) => entries_from_data(path)?,
        None => vec![entry_from_flags(p, false)?],
    };
    let res = connect(socket)
        .await?
        .batch_create_entry(pb::BatchCreateEntryRequest { entries })
        .await?
        .into_inner();
    Ok(report_batch(&res.results, out, "create"))
}

pub(super) async fn entry_update(socket: &str, p: &Parsed, out: Out) -> Result<i32> {
    let entries = match p.get("data") {
        Some(path) => entries_from_data(path)?,
        None => vec![entry_from_flags(p, true)?],
    };
    let res = connect(socket)
        .await?
        .batch_update_entry(pb::BatchUpdateEntryRequest { entries })
        .await?
        .into_inner();
    Ok(report_batch(&res.results, out, "update"))
}

pub(super) async fn entry_delete(socket: &str, p: &Parsed, out: Out) -> Result<i32> {
    let ids = match (p.get("entryID"), p.get("file")) {
        (Some(id), None) => vec![id.to_string()],
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
            let v: Value =
                serde_json::from_str(&text).with_context(|| format!("parsing {file}"))?;
            v.get("ids")
                .and_then(Value::as_array)
                .ok_or_else(|| anyhow!("{file}: expected {{\"ids\": [...]}}"))?
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(String::from)
                        .ok_or_else(|| anyhow!("{file}: ids must be strings"))
                })
                .collect::<Result<_>>()?
        }
        (Some(_), Some(_)) => bail!("use either -entryID or -file, not both"),
        (None, None) => bail!("an entry ID is required (-entryID)"),
    };
    let res = connect(socket)
        .await?
        .batch_delete_entry(pb::BatchDeleteEntryRequest { ids })
        .await?
        .into_inner();
    Ok(report_batch(&res.results, out, "delete"))
}

pub(super) async fn entry_show(socket: &str, p: &Parsed, out: Out) -> Result<i32> {
    let by_selectors = selector_protos(p.all("selector"))?;
    let mut c = connect(socket).await?;
    let entries = if let Some(id) = p.get("entryID") {
        vec![
            c.get_entry(pb::GetEntryRequest { id: id.into() })
                .await?
                .into_inner(),
        ]
    } else {
        let mut all = Vec::new();
        let mut page_token = String::new();
        loop {
            let r = c
                .list_entries(pb::ListEntriesRequest {
                    by_spiffe_id: p.get("spiffeID").unwrap_or_default().into(),
                    by_parent_id: p.get("parentID").unwrap_or_default().into(),
                    by_selectors: by_selectors.clone(),
                    selector_match: p.get("matchSelectorsOn").unwrap_or("superset").into(),
                    page_size: 1000,
                    page_token,
                    by_hint: p.get("hint").unwrap_or_default().into(),
                })
                .await?
                .into_inner();
            all.extend(r.entries);
            if r.next_page_token.is_empty() {
                break;
            }
            page_token = r.next_page_token;
        }
        let fw = p.all("federatesWith");
        if !fw.is_empty() {
            all.retain(|e| fw.iter().all(|f| e.federates_with.contains(f)));
        }
        all
    };
    if out.json {
        println!(
            "{}",
            json!({"entries": entries.iter().map(entry_json).collect::<Vec<_>>()})
        );
    } else {
        match entries.len() {
            0 => println!("Found 0 entries"),
            1 => println!("Found 1 entry"),
            n => println!("Found {n} entries"),
        }
        for e in &entries {
            println!("{}", entry_text(e));
        }
    }
    Ok(0)
}
