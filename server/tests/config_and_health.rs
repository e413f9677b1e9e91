//! `sigil-server run -config` with a SPIRE-shaped server.conf: `/live` and `/ready` on the
//! health-check listener, the admin socket's mode, and clear start-up errors for what Sigil does
//! not support.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, out))
}

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn spire_config_health_endpoints_and_private_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (agent_port, health_port) = (free_port(), free_port());
    let socket = dir.path().join("private/api.sock");
    let conf = dir.path().join("server.conf");
    std::fs::write(
        &conf,
        format!(
            r#"server {{
    bind_address = "127.0.0.1"
    bind_port = "{agent_port}"
    socket_path = "{socket}"
    trust_domain = "example.org"
    data_dir = "{data}"
    log_level = "WARN"
    default_x509_svid_ttl = "1h"
    ca_ttl = "24h"
    ca_subject = {{
        country = ["US"],
        organization = ["Example Corp"],
        common_name = "Sigil CA",
    }}
}}

plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = "{data}/datastore.sqlite3"
        }}
    }}
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "disk" {{
        plugin_data {{
            keys_path = "{data}/keys.json"
        }}
    }}
}}

health_checks {{
    listener_enabled = true
    bind_address = "127.0.0.1"
    bind_port = "{health_port}"
    live_path = "/live"
    ready_path = "/ready"
}}
"#,
            socket = socket.display(),
            data = dir.path().join("data").display(),
        ),
    )
    .unwrap();
    let _server = Kill(
        Command::new(env!("CARGO_BIN_EXE_sigil-server"))
            .arg("run")
            .arg("-config")
            .arg(&conf)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, _) = loop {
        if let Some(r) = get(health_port, "/ready") {
            break r;
        }
        assert!(Instant::now() < deadline, "health listener never came up");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status, 200);
    assert_eq!(get(health_port, "/live").unwrap().0, 200);
    assert_eq!(get(health_port, "/nope").unwrap().0, 404);

    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "admin socket must be 0600");
    let keys = std::fs::metadata(dir.path().join("data/keys.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(keys & 0o777, 0o600, "key file must be 0600");

    // The CA subject from the config is in the bundle's root.
    let out = Command::new(env!("CARGO_BIN_EXE_sigil-server"))
        .args(["bundle", "show", "-socketPath"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(out.status.success());
    let der = sigil_spiffe::x509::parse_pem_certs(&out.stdout).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der[0]).unwrap();
    let subject = cert.subject().to_string();
    assert!(
        subject.contains("Example Corp") && subject.contains("Sigil CA"),
        "{subject}"
    );
}

#[test]
fn unsupported_configuration_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("server.conf");
    std::fs::write(
        &conf,
        "server {\n trust_domain = \"example.org\"\n data_dir = \"/tmp/x\"\n}\nplugins {\n NodeAttestor \"aws_iid\" {\n plugin_data {\n }\n }\n}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sigil-server"))
        .arg("run")
        .arg("-config")
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unsupported NodeAttestor plugin \"aws_iid\""),
        "{err}"
    );

    // No config file and no trust domain: says what is missing.
    let out = Command::new(env!("CARGO_BIN_EXE_sigil-server"))
        .args(["run", "-dataDir"])
        .arg(dir.path())
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("trust_domain must be configured"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
