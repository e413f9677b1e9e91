//! `sigil-agent api ...`: the Workload API verbs `api fetch x509`, `api fetch jwt`,
//! `api fetch jwt bundle`, `api validate jwt` and `api watch`, and how their answers are
//! printed and written.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sigil_flags::FlagSet;
use sigil_proto::workload::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, X509svidRequest, X509svidResponse,
};

use crate::config::DEFAULT_SOCKET_PATH;
use crate::svid;

use super::{
    CliError, Client, Output, api_flags, go_duration, go_time, output_flag, output_of, parse,
    rpc_error, runtime, timeout_of, with_timeout,
};

// === api fetch x509 ===

pub(super) fn fetch_x509_cmd(args: &[&str]) -> Result<(), CliError> {
    let set = output_flag(api_flags())
        .value("write", "Write SVID data to the specified path (optional)")
        .bool("silent", "Suppress stdout");
    let p = parse(&set, args, "api fetch x509")?;
    let output = output_of(&p)?;
    let timeout = timeout_of(&p)?;
    let socket = p
        .get("socketPath")
        .unwrap_or(DEFAULT_SOCKET_PATH)
        .to_string();
    runtime()?.block_on(async {
        let start = Instant::now();
        let resp = with_timeout(timeout, async {
            let mut c = Client::connect(&socket, timeout).await?;
            let mut stream = c
                .inner
                .fetch_x509svid(Client::request(X509svidRequest {}, None))
                .await
                .map_err(|s| rpc_error(&s))?
                .into_inner();
            stream
                .message()
                .await
                .map_err(|s| rpc_error(&s))?
                .ok_or_else(|| CliError::Failed("the Workload API closed the stream".into()))
        })
        .await?;
        let elapsed = start.elapsed();
        let svids = parse_x509_response(&resp)?;
        if !p.flag("silent") {
            match output {
                Output::Pretty => print!("{}", format_x509(&svids, elapsed)),
                Output::Json => println!("{}", x509_json(&resp)),
            }
        }
        if let Some(dir) = p.get("write") {
            write_x509(Path::new(dir), &svids, p.flag("silent"))?;
        }
        Ok(())
    })
}

/// One SVID of a response, parsed for printing and writing.
struct ParsedSvid {
    spiffe_id: String,
    hint: String,
    chain: Vec<Vec<u8>>,
    key: Vec<u8>,
    bundle: Vec<Vec<u8>>,
    /// Trust domain ID → certificates.
    federated: BTreeMap<String, Vec<Vec<u8>>>,
}

fn parse_x509_response(resp: &X509svidResponse) -> Result<Vec<ParsedSvid>, CliError> {
    let bad = |what: &str, e: svid::SvidError| {
        CliError::Failed(format!("invalid {what} in response: {e}"))
    };
    let mut federated = BTreeMap::new();
    for (td, der) in &resp.federated_bundles {
        federated.insert(
            td.clone(),
            svid::split_der_certs(der).map_err(|e| bad("federated bundle", e))?,
        );
    }
    resp.svids
        .iter()
        .map(|s| {
            Ok(ParsedSvid {
                spiffe_id: s.spiffe_id.clone(),
                hint: s.hint.clone(),
                chain: svid::split_der_certs(&s.x509_svid).map_err(|e| bad("SVID", e))?,
                key: s.x509_svid_key.clone(),
                bundle: svid::split_der_certs(&s.bundle).map_err(|e| bad("bundle", e))?,
                federated: federated.clone(),
            })
        })
        .collect()
}

fn format_x509(svids: &[ParsedSvid], elapsed: Duration) -> String {
    let mut out = format!(
        "Received {} svid after {}\n\n",
        svids.len(),
        go_duration(elapsed)
    );
    for s in svids {
        out.push_str(&format_svid(s));
    }
    out
}

/// One SVID as `spire-agent api fetch x509` prints it.
fn format_svid(s: &ParsedSvid) -> String {
    let mut out = format!("SPIFFE ID:\t\t{}\n", s.spiffe_id);
    if !s.hint.is_empty() {
        out.push_str(&format!("Hint:\t\t\t{}\n", s.hint));
    }
    let window = |der: &[u8]| svid::validity(der).ok();
    if let Some((nb, na)) = s.chain.first().and_then(|c| window(c)) {
        out.push_str(&format!("SVID Valid After:\t{}\n", go_time(nb)));
        out.push_str(&format!("SVID Valid Until:\t{}\n", go_time(na)));
    }
    for (i, cert) in s.chain.iter().skip(1).enumerate() {
        if let Some((nb, na)) = window(cert) {
            out.push_str(&format!(
                "Intermediate #{} Valid After:\t{}\n",
                i + 1,
                go_time(nb)
            ));
            out.push_str(&format!(
                "Intermediate #{} Valid Until:\t{}\n",
                i + 1,
                go_time(na)
            ));
        }
    }
    for (i, cert) in s.bundle.iter().enumerate() {
        if let Some((nb, na)) = window(cert) {
            out.push_str(&format!("CA #{} Valid After:\t{}\n", i + 1, go_time(nb)));
            out.push_str(&format!("CA #{} Valid Until:\t{}\n", i + 1, go_time(na)));
        }
    }
    for (td, certs) in &s.federated {
        for (i, cert) in certs.iter().enumerate() {
            if let Some((nb, na)) = window(cert) {
                out.push_str(&format!(
                    "[{td}] CA #{} Valid After:\t{}\n",
                    i + 1,
                    go_time(nb)
                ));
                out.push_str(&format!(
                    "[{td}] CA #{} Valid Until:\t{}\n",
                    i + 1,
                    go_time(na)
                ));
            }
        }
    }
    out.push('\n');
    out
}

fn x509_json(resp: &X509svidResponse) -> serde_json::Value {
    let svids: Vec<_> = resp
        .svids
        .iter()
        .map(|s| {
            serde_json::json!({
                "spiffe_id": s.spiffe_id,
                "hint": s.hint,
                "x509_svid": B64.encode(&s.x509_svid),
                "x509_svid_key": B64.encode(&s.x509_svid_key),
                "bundle": B64.encode(&s.bundle),
            })
        })
        .collect();
    let federated: BTreeMap<_, _> = resp
        .federated_bundles
        .iter()
        .map(|(k, v)| (k.clone(), B64.encode(v)))
        .collect();
    serde_json::json!({ "svids": svids, "federated_bundles": federated })
}

/// `-write DIR`: svid.N.pem, svid.N.key (0600), bundle.N.pem, federated_bundle.N.M.pem.
fn write_x509(dir: &Path, svids: &[ParsedSvid], silent: bool) -> Result<(), CliError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::Failed(format!("creating {}: {e}", dir.display())))?;
    let write = |path: &Path, data: &[u8], mode: u32| {
        crate::node::storage::write_atomic(path, data, mode)
            .map_err(|e| CliError::Failed(format!("writing {e}")))
    };
    let say = |msg: String| {
        if !silent {
            println!("{msg}");
        }
    };
    for (i, s) in svids.iter().enumerate() {
        let svid_path = dir.join(format!("svid.{i}.pem"));
        let key_path = dir.join(format!("svid.{i}.key"));
        let bundle_path = dir.join(format!("bundle.{i}.pem"));
        say(format!(
            "Writing SVID #{i} to file {}.",
            svid_path.display()
        ));
        write(&svid_path, svid::certs_to_pem(&s.chain).as_bytes(), 0o644)?;
        say(format!("Writing key #{i} to file {}.", key_path.display()));
        let key_pem = crate::keys::PrivateKeyDer::new(s.key.clone()).to_pem();
        write(&key_path, key_pem.as_bytes(), 0o600)?;
        say(format!(
            "Writing bundle #{i} to file {}.",
            bundle_path.display()
        ));
        write(
            &bundle_path,
            svid::certs_to_pem(&s.bundle).as_bytes(),
            0o644,
        )?;
        for (j, (td, certs)) in s.federated.iter().enumerate() {
            let path = dir.join(format!("federated_bundle.{i}.{j}.pem"));
            say(format!(
                "Writing federated bundle #{j} for trust domain {td} to file {}.",
                path.display()
            ));
            write(&path, svid::certs_to_pem(certs).as_bytes(), 0o644)?;
        }
    }
    Ok(())
}

// === api fetch jwt ===

pub(super) fn fetch_jwt_cmd(args: &[&str]) -> Result<(), CliError> {
    let set = output_flag(api_flags())
        .value("audience", "comma separated list of audience values")
        .value("spiffeID", "SPIFFE ID subject (optional)");
    let p = parse(&set, args, "api fetch jwt")?;
    let output = output_of(&p)?;
    let timeout = timeout_of(&p)?;
    let audience: Vec<String> = p
        .get("audience")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect();
    if audience.is_empty() {
        return Err(CliError::Failed("audience must be specified".into()));
    }
    let socket = p
        .get("socketPath")
        .unwrap_or(DEFAULT_SOCKET_PATH)
        .to_string();
    let spiffe_id = p.get("spiffeID").unwrap_or("").to_string();
    if !spiffe_id.is_empty() {
        spiffe_id.parse::<sigil_spiffe::SpiffeId>().map_err(|e| {
            CliError::Failed(format!("invalid SPIFFE ID {spiffe_id:?} (-spiffeID): {e}"))
        })?;
    }
    runtime()?.block_on(async {
        let (svids, bundles) = with_timeout(timeout, async {
            let mut c = Client::connect(&socket, timeout).await?;
            let svids = c
                .inner
                .fetch_jwtsvid(Client::request(
                    JwtsvidRequest {
                        audience,
                        spiffe_id,
                    },
                    Some(timeout),
                ))
                .await
                .map_err(|s| rpc_error(&s))?
                .into_inner();
            let bundles = first_jwt_bundles(&mut c).await?;
            Ok((svids, bundles))
        })
        .await?;
        match output {
            Output::Pretty => {
                for s in &svids.svids {
                    println!("token({}):\n\t{}", s.spiffe_id, s.svid);
                    if !s.hint.is_empty() {
                        println!("hint({}):\n\t{}", s.spiffe_id, s.hint);
                    }
                }
                for (td, jwks) in &bundles {
                    println!("bundle({td}):\n\t{}", String::from_utf8_lossy(jwks));
                }
            }
            Output::Json => {
                let svids: Vec<_> = svids
                    .svids
                    .iter()
                    .map(|s| serde_json::json!({"spiffe_id": s.spiffe_id, "svid": s.svid, "hint": s.hint}))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!([{ "svids": svids }, { "bundles": jwks_json(&bundles) }])
                );
            }
        }
        Ok(())
    })
}

async fn first_jwt_bundles(c: &mut Client) -> Result<BTreeMap<String, Vec<u8>>, CliError> {
    let mut stream = c
        .inner
        .fetch_jwt_bundles(Client::request(JwtBundlesRequest {}, None))
        .await
        .map_err(|s| rpc_error(&s))?
        .into_inner();
    let resp = stream
        .message()
        .await
        .map_err(|s| rpc_error(&s))?
        .ok_or_else(|| CliError::Failed("the Workload API closed the stream".into()))?;
    Ok(resp.bundles.into_iter().collect())
}

fn jwks_json(bundles: &BTreeMap<String, Vec<u8>>) -> serde_json::Value {
    serde_json::Value::Object(
        bundles
            .iter()
            .map(|(td, jwks)| {
                let v = serde_json::from_slice(jwks).unwrap_or_else(|_| {
                    serde_json::Value::String(String::from_utf8_lossy(jwks).into())
                });
                (td.clone(), v)
            })
            .collect(),
    )
}

pub(super) fn fetch_jwt_bundle_cmd(args: &[&str]) -> Result<(), CliError> {
    let set = output_flag(api_flags());
    let p = parse(&set, args, "api fetch jwt bundle")?;
    let output = output_of(&p)?;
    let timeout = timeout_of(&p)?;
    let socket = p
        .get("socketPath")
        .unwrap_or(DEFAULT_SOCKET_PATH)
        .to_string();
    runtime()?.block_on(async {
        let bundles = with_timeout(timeout, async {
            let mut c = Client::connect(&socket, timeout).await?;
            first_jwt_bundles(&mut c).await
        })
        .await?;
        match output {
            Output::Pretty => {
                for (td, jwks) in &bundles {
                    println!("bundle({td}):\n\t{}", String::from_utf8_lossy(jwks));
                }
            }
            Output::Json => println!("{}", serde_json::json!({ "bundles": jwks_json(&bundles) })),
        }
        Ok(())
    })
}

// === api validate jwt ===

pub(super) fn validate_jwt_cmd(args: &[&str]) -> Result<(), CliError> {
    let set = output_flag(api_flags())
        .value("audience", "expected audience value")
        .value("svid", "JWT SVID");
    let p = parse(&set, args, "api validate jwt")?;
    let output = output_of(&p)?;
    let timeout = timeout_of(&p)?;
    let audience = p.get("audience").unwrap_or("").to_string();
    if audience.is_empty() {
        return Err(CliError::Failed("audience must be specified".into()));
    }
    let token = p.get("svid").unwrap_or("").to_string();
    if token.is_empty() {
        return Err(CliError::Failed("svid must be specified".into()));
    }
    let socket = p
        .get("socketPath")
        .unwrap_or(DEFAULT_SOCKET_PATH)
        .to_string();
    runtime()?.block_on(async {
        let resp = with_timeout(timeout, async {
            let mut c = Client::connect(&socket, timeout).await?;
            c.inner
                .validate_jwtsvid(Client::request(
                    ValidateJwtsvidRequest {
                        audience,
                        svid: token,
                    },
                    Some(timeout),
                ))
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| match s.code() {
                    tonic::Code::InvalidArgument => {
                        CliError::Raw(format!("SVID is not valid: {}", s.message()))
                    }
                    _ => rpc_error(&s),
                })
        })
        .await?;
        let claims = resp
            .claims
            .map(struct_to_json)
            .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
        match output {
            Output::Pretty => {
                println!("SVID is valid.");
                println!("SPIFFE ID : {}", resp.spiffe_id);
                println!("Claims    : {claims}");
            }
            Output::Json => println!(
                "{}",
                serde_json::json!({ "spiffe_id": resp.spiffe_id, "claims": claims })
            ),
        }
        Ok(())
    })
}

/// A protobuf `Struct` as JSON; whole numbers print without a fraction, as Go's protojson does.
fn struct_to_json(s: prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .into_iter()
            .map(|(k, v)| (k, value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => b.into(),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => (n as i64).into(),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Some(Kind::StringValue(s)) => s.into(),
        Some(Kind::ListValue(l)) => l.values.into_iter().map(value_to_json).collect(),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

// === api watch ===

pub(super) fn watch_cmd(args: &[&str]) -> Result<(), CliError> {
    let set = FlagSet::new().value(
        "socketPath",
        "Path to the Workload API socket (default /tmp/sigil-agent/public/api.sock)",
    );
    let p = parse(&set, args, "api watch")?;
    let socket = p
        .get("socketPath")
        .unwrap_or(DEFAULT_SOCKET_PATH)
        .to_string();
    runtime()?.block_on(async {
        let watch = async {
            loop {
                match watch_once(&socket).await {
                    Ok(()) => eprintln!("Workload API stream closed; reconnecting"),
                    Err(e) => eprintln!("Error: {e}; retrying"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        tokio::select! {
            _ = watch => Ok(()),
            _ = crate::shutdown_signal() => Ok(()),
        }
    })
}

async fn watch_once(socket: &str) -> Result<(), CliError> {
    let mut c = Client::connect(socket, Duration::from_secs(5)).await?;
    let mut start = Instant::now();
    let mut stream = c
        .inner
        .fetch_x509svid(Client::request(X509svidRequest {}, None))
        .await
        .map_err(|s| rpc_error(&s))?
        .into_inner();
    while let Some(resp) = stream.message().await.map_err(|s| rpc_error(&s))? {
        let svids = parse_x509_response(&resp)?;
        print!("{}", format_x509(&svids, start.elapsed()));
        let _ = std::io::stdout().flush();
        start = Instant::now();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_json_round_trip() {
        let claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"aud":["a"],"exp":1700000000,"sub":"spiffe://td/x","f":1.5}"#)
                .unwrap();
        let json = struct_to_json(crate::workload::api::claims_to_struct(claims));
        assert_eq!(
            json.to_string(),
            r#"{"aud":["a"],"exp":1700000000,"f":1.5,"sub":"spiffe://td/x"}"#
        );
    }
}
