//! The `sigil-oidc` binary over HTTPS (`serving_cert_file`) with a `file` key source and
//! `health_checks`: the certificate and the bundle are re-read when their files change.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls_pki_types::{CertificateDer, ServerName};

const X: &str = "ngLYQnlfF6GsojUwqtcEE3WgTNG2RUlsGhK73RNEl5k";
const Y: &str = "tKbiDSUSsQ3F1P7wteeHNXIcU-cx6CgSbroeQrQHTLM";

/// Kills the provider when the test ends, and shows its log if the test failed.
struct Provider {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "sigil-oidc log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn bundle(kids: &[&str]) -> String {
    let keys: Vec<String> = kids
        .iter()
        .map(|k| {
            format!(
                r#"{{"use":"jwt-svid","kty":"EC","kid":"{k}","crv":"P-256","x":"{X}","y":"{Y}"}}"#
            )
        })
        .collect();
    format!(r#"{{"keys":[{}],"spiffe_sequence":1}}"#, keys.join(","))
}

/// Writes a file the way an operator's tooling would replace it: a new file renamed over
/// the old one (a new modification time).
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Ca {
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let der = p.self_signed(&key).unwrap().der().clone();
    Ca {
        der,
        issuer: Issuer::new(p, key),
    }
}

/// A `localhost` serving certificate and its key, as PEM, and the certificate's DER.
fn leaf(ca: &Ca) -> (String, String, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

/// One HTTPS GET: the status line and headers, the body, and the certificate presented.
fn https_get(ca: &Ca, port: u16, path: &str) -> (String, String, Vec<u8>) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    // The server may close without close_notify after `Connection: close`.
    let _ = tls.read_to_end(&mut raw);
    let presented = conn.peer_certificates().unwrap()[0].to_vec();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string(), presented)
}

fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

fn kids(body: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn https_with_reloaded_certificate_and_bundle_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca();
    let (cert1, key1, der1) = leaf(&ca);
    let (cert_path, key_path, bundle_path) = (
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        dir.path().join("bundle.json"),
    );
    std::fs::write(&cert_path, &cert1).unwrap();
    std::fs::write(&key_path, &key1).unwrap();
    std::fs::write(&bundle_path, bundle(&["k1"])).unwrap();
    let (port, health_port) = (free_port(), free_port());
    let config = dir.path().join("oidc.conf");
    std::fs::write(
        &config,
        format!(
            r#"
domains = ["localhost"]
serving_cert_file {{
    cert_file_path = "{}"
    key_file_path = "{}"
    file_sync_interval = "1s"
    addr = "127.0.0.1:{port}"
}}
file {{
    path = "{}"
    poll_interval = "1s"
}}
health_checks {{
    bind_port = {health_port}
}}
"#,
            cert_path.display(),
            key_path.display(),
            bundle_path.display()
        ),
    )
    .unwrap();
    let log = dir.path().join("oidc.log");
    let child = Command::new(env!("CARGO_BIN_EXE_sigil-oidc"))
        .arg("-config")
        .arg(&config)
        .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let _provider = Provider { child, log };

    wait_for("/ready", || {
        (http_status(health_port, "/ready")? == 200).then_some(())
    });
    assert_eq!(http_status(health_port, "/live"), Some(200));
    assert_eq!(http_status(health_port, "/other"), Some(404));

    // HTTPS: the document names https and the Host; the certificate is the file's.
    wait_for("the HTTPS listener", || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let (head, body, presented) = https_get(&ca, port, "/.well-known/openid-configuration");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(presented, der1);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["issuer"], format!("https://localhost:{port}"));
    assert_eq!(doc["jwks_uri"], format!("https://localhost:{port}/keys"));

    let (head, body, _) = https_get(&ca, port, "/keys");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(kids(&body), ["k1"]);

    // A new key in the bundle file is served within poll_interval.
    replace(&bundle_path, &bundle(&["k1", "k2"]));
    wait_for("the second key", || {
        let (_, body, _) = https_get(&ca, port, "/keys");
        (kids(&body) == ["k1", "k2"]).then_some(())
    });

    // A renewed certificate is served within file_sync_interval.
    let (cert2, key2, der2) = leaf(&ca);
    replace(&key_path, &key2);
    replace(&cert_path, &cert2);
    wait_for("the renewed certificate", || {
        let (_, _, presented) = https_get(&ca, port, "/keys");
        (presented == der2).then_some(())
    });
}
