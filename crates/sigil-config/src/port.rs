//! TCP ports (`server_port`, `bind_port`, `-serverPort`).

use std::fmt;
use std::str::FromStr;

/// A TCP port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Port(pub u16);

// === impl Port ===

impl FromStr for Port {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("{s:?} is not a port number (1-65535)")),
            Ok(p) => Ok(Port(p)),
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
