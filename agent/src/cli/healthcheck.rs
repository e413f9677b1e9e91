//! `sigil-agent healthcheck`: connects to the Workload API and, unless `-shallow`, calls
//! `FetchX509Bundles`, printing the attestation tier the agent names.

use sigil_proto::workload::X509BundlesRequest;

use crate::config::DEFAULT_SOCKET_PATH;

use super::{CliError, Client, api_flags, parse, runtime, timeout_of};

// === healthcheck ===

pub(super) fn healthcheck_cmd(args: &[&str]) -> Result<(), CliError> {
    let set = api_flags()
        .bool("shallow", "Perform a less stringent health check")
        .bool("verbose", "Print verbose information");
    let p = parse(&set, args, "healthcheck")?;
    let timeout = timeout_of(&p)?;
    let socket = p
        .get("socketPath")
        .unwrap_or(DEFAULT_SOCKET_PATH)
        .to_string();
    let verbose = p.flag("verbose");
    let shallow = p.flag("shallow");
    let result = runtime()?.block_on(async {
        if verbose {
            println!("Checking agent health...");
        }
        let mut c = Client::connect(&socket, timeout)
            .await
            .map_err(|e| e.to_string())?;
        if shallow {
            return Ok(None);
        }
        if verbose {
            println!(
                "Connected to {}; calling FetchX509Bundles",
                c.socket.display()
            );
        }
        // The agent names its workload attestation tier in a response header.
        let tier = |md: &tonic::metadata::MetadataMap| {
            md.get(crate::workload::TIER_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let call = async {
            let response = c
                .inner
                .fetch_x509_bundles(Client::request(X509BundlesRequest {}, None))
                .await?;
            let t = tier(response.metadata());
            let mut stream = response.into_inner();
            stream.message().await.map(|_| t)
        };
        match tokio::time::timeout(timeout, call).await {
            Err(_) => Err("timed out waiting for the Workload API".to_string()),
            Ok(Ok(t)) => Ok(t),
            // The agent answered; it just has nothing for this caller.
            Ok(Err(s)) if matches!(s.code(), tonic::Code::PermissionDenied) => {
                Ok(tier(s.metadata()))
            }
            Ok(Err(s)) => Err(format!(
                "Workload API returned {:?}: {}",
                s.code(),
                s.message()
            )),
        }
    });
    match result {
        Ok(tier) => {
            println!("Agent is healthy.");
            if let Some(tier) = tier {
                println!("Workload attestation tier: {tier}");
            }
            Ok(())
        }
        Err(reason) => Err(CliError::Raw(format!("Agent is unhealthy: {reason}"))),
    }
}
