//! `sigil-server healthcheck`: asks the server for its bundle over the admin socket.

use sigil_flags::FlagSet;
use sigil_proto::admin as pb;

use super::{connect, socket_flag};

/// The flags of `healthcheck`.
pub(super) fn flags() -> FlagSet {
    socket_flag(FlagSet::new())
        .bool("shallow", "Perform a less stringent health check")
        .bool("verbose", "Print verbose information")
}

/// Runs the check against the admin socket at `socket`; returns the exit code.
pub(super) async fn healthcheck(socket: &str) -> i32 {
    match connect(socket).await {
        Ok(mut c) => match c.get_bundle(pb::GetBundleRequest {}).await {
            Ok(_) => {
                println!("Server is healthy.");
                0
            }
            Err(e) => {
                eprintln!("Server is unhealthy: {}", e.message());
                1
            }
        },
        Err(e) => {
            eprintln!("Server is unhealthy: unable to determine health: {e:#}");
            1
        }
    }
}
