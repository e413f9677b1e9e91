//! A workload for the demo and the e2e tests. It gets its X509-SVID from the agent's Workload
//! API (as whatever uid it runs as) and either prints it or runs SPIFFE mTLS with rustls,
//! verifying the peer's chain against the Workload API bundle and its SPIFFE ID against an
//! allow-list.
//!
//! ```text
//! sigil-demo-peer fetch   -socketPath S
//! sigil-demo-peer watch   -socketPath S
//! sigil-demo-peer serve   -socketPath S -listen 127.0.0.1:0 -allow ID [-allow ID] [-count N]
//! sigil-demo-peer connect -socketPath S -addr HOST:PORT -allow ID [-message TEXT]
//! ```
//!
//! `watch` keeps `FetchX509SVID` open and prints `update: ID[,ID...]` per message, until the
//! stream ends (exit 0) or fails (`Error: ...`, exit 2).
//! `serve` prints `listening on ADDR as ID` first, then one line per connection:
//! `accepted ID: "TEXT"` or `rejected: REASON`. `connect` exits 0 only if the exchange worked.

use anyhow::{Context, Result, anyhow, bail};
use sigil_e2e::{mtls, workload};
use sigil_flags::{FlagSet, Parsed};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USAGE: &str = "usage: sigil-demo-peer fetch|watch|serve|connect -socketPath PATH [flags]";
const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn flags(cmd: &str) -> Option<FlagSet> {
    let fs = FlagSet::new().value("socketPath", "Workload API socket");
    Some(match cmd {
        "fetch" | "watch" => fs,
        "serve" => fs
            .value("listen", "Address to listen on (port 0 picks one)")
            .multi("allow", "SPIFFE ID allowed to connect (repeatable)")
            .value("count", "Connections to handle before exiting (default 1)"),
        "connect" => fs
            .value("addr", "Address of the serving peer")
            .multi("allow", "SPIFFE ID the server must have (repeatable)")
            .value("message", "Text to send"),
        _ => return None,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(args: Vec<String>) -> Result<i32> {
    let Some((cmd, rest)) = args.split_first() else {
        bail!("{USAGE}");
    };
    let fs = flags(cmd).ok_or_else(|| anyhow!("unknown command {cmd:?}\n{USAGE}"))?;
    let p = fs.parse(rest.iter().cloned())?;
    p.no_args()?;
    let socket = PathBuf::from(p.required("socketPath")?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cmd.as_str() {
            "fetch" => fetch(socket).await,
            "watch" => watch(socket).await,
            "serve" => serve(socket, &p).await,
            "connect" => connect(socket, &p).await,
            _ => unreachable!("flags() knows the commands"),
        }
    })
}

async fn fetch(socket: PathBuf) -> Result<i32> {
    match workload::fetch_x509(&socket).await {
        Ok(svids) => {
            for s in svids {
                println!("{}", s.spiffe_id);
            }
            Ok(0)
        }
        Err(s) => {
            eprintln!("Error: FetchX509SVID: {:?}: {}", s.code(), s.message());
            Ok(2)
        }
    }
}

async fn watch(socket: PathBuf) -> Result<i32> {
    let fail = |s: tonic::Status| {
        eprintln!("Error: FetchX509SVID: {:?}: {}", s.code(), s.message());
        Ok(2)
    };
    let mut c = match workload::client(&socket).await {
        Ok(c) => c,
        Err(e) => return fail(tonic::Status::unavailable(format!("{e:#}"))),
    };
    let mut stream = match c
        .fetch_x509svid(workload::request(sigil_proto::workload::X509svidRequest {}))
        .await
    {
        Ok(s) => s.into_inner(),
        Err(s) => return fail(s),
    };
    loop {
        match stream.message().await {
            Ok(Some(msg)) => {
                let ids: Vec<String> = msg.svids.into_iter().map(|s| s.spiffe_id).collect();
                println!("update: {}", ids.join(","));
                std::io::stdout().flush()?;
            }
            Ok(None) => return Ok(0),
            Err(s) => return fail(s),
        }
    }
}

fn allowed(p: &Parsed) -> Result<Vec<String>> {
    let ids = p.all("allow").to_vec();
    if ids.is_empty() {
        bail!("at least one -allow SPIFFE ID is required");
    }
    for id in &ids {
        id.parse::<sigil_spiffe::SpiffeId>()
            .map_err(|e| anyhow!("invalid -allow {id:?}: {e}"))?;
    }
    Ok(ids)
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn serve(socket: PathBuf, p: &Parsed) -> Result<i32> {
    let allow = allowed(p)?;
    let count: usize = p.parse_opt("count")?.unwrap_or(1);
    let svid = workload::fetch_one(&socket, None).await?;
    let (cfg, verifier) = mtls::server_config(&svid, allow)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind(p.required("listen")?).await?;
    say(format!(
        "listening on {} as {}",
        listener.local_addr()?,
        svid.spiffe_id
    ));
    for _ in 0..count {
        let (tcp, _) = listener.accept().await?;
        let result = tokio::time::timeout(IO_TIMEOUT, async {
            let mut tls = acceptor.accept(tcp).await?;
            let peer = mtls::peer_id(tls.get_ref().1.peer_certificates())
                .ok_or_else(|| anyhow!("no client certificate"))?;
            let mut buf = vec![0u8; 4096];
            let n = tls.read(&mut buf).await?;
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            tls.write_all(format!("hello {peer}, this is {}", svid.spiffe_id).as_bytes())
                .await?;
            tls.shutdown().await?;
            Ok::<_, anyhow::Error>((peer, msg))
        })
        .await;
        match result {
            Ok(Ok((peer, msg))) => say(format!("accepted {peer}: {msg:?}")),
            Ok(Err(e)) => say(format!(
                "rejected: {}",
                verifier
                    .take_rejection()
                    .unwrap_or_else(|| format!("{e:#}"))
            )),
            Err(_) => say("rejected: handshake timed out".into()),
        }
    }
    Ok(0)
}

async fn connect(socket: PathBuf, p: &Parsed) -> Result<i32> {
    let allow = allowed(p)?;
    let addr = p.required("addr")?;
    let message = p.get("message").unwrap_or("ping").to_string();
    let svid = workload::fetch_one(&socket, None).await?;
    let (cfg, verifier) = mtls::client_config(&svid, allow)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let result = tokio::time::timeout(IO_TIMEOUT, async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        // SPIFFE authenticates by SPIFFE ID, not DNS name: the verifier ignores this name.
        let name = rustls::pki_types::ServerName::try_from("sigil-demo-peer")?;
        let mut tls = connector.connect(name, tcp).await?;
        let peer = mtls::peer_id(tls.get_ref().1.peer_certificates())
            .ok_or_else(|| anyhow!("no server certificate"))?;
        tls.write_all(message.as_bytes()).await?;
        let mut reply = String::new();
        tls.read_to_string(&mut reply).await?;
        if reply.is_empty() {
            bail!("the server closed the connection without answering");
        }
        Ok::<_, anyhow::Error>((peer, reply))
    })
    .await;
    match result {
        Ok(Ok((peer, reply))) => {
            say(format!(
                "{} connected to {peer}; reply: {reply:?}",
                svid.spiffe_id
            ));
            Ok(0)
        }
        Ok(Err(e)) => {
            let reason = verifier
                .take_rejection()
                .unwrap_or_else(|| format!("{e:#}"));
            say(format!("{} was refused: {reason}", svid.spiffe_id));
            Ok(3)
        }
        Err(_) => {
            say(format!("{}: timed out", svid.spiffe_id));
            Ok(3)
        }
    }
}
