//! `-logFormat json` (and `log_format = "json"`): one JSON object per line, the event's fields
//! at the top level, the same field names in every binary.

use sigil_e2e::harness::{TestDir, sigil_bin};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs `cmd` for `secs`, then kills it; its stderr lines.
fn lines_of(mut cmd: Command, secs: u64) -> Vec<String> {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_secs(secs));
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_string)
        .collect()
}

#[track_caller]
fn all_json(what: &str, lines: &[String]) {
    assert!(!lines.is_empty(), "{what} logged nothing");
    for l in lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {l}"));
        for key in ["timestamp", "level", "message"] {
            assert!(v[key].is_string(), "{what}: no {key} in {l}");
        }
        assert!(v.get("fields").is_none(), "{what}: nested fields in {l}");
    }
}

#[test]
fn every_binary_logs_one_json_object_per_line() {
    let dir = TestDir::new("json-logs");
    let mut server = Command::new(sigil_bin("sigil-server"));
    server
        .args(["run", "-trustDomain", "json.test", "-serverPort", "0"])
        .args(["-bindAddress", "127.0.0.1", "-logFormat", "json"])
        .arg("-dataDir")
        .arg(dir.sub("server"))
        .arg("-socketPath")
        .arg(dir.path().join("admin/api.sock"));
    let lines = lines_of(server, 2);
    all_json("sigil-server", &lines);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"message\":\"server listening\""))
    );

    let mut agent = Command::new(sigil_bin("sigil-agent"));
    agent
        .args([
            "run",
            "-trustDomain",
            "json.test",
            "-serverAddress",
            "127.0.0.1",
        ])
        .args(["-serverPort", "1", "-joinToken", "x", "-insecureBootstrap"])
        .args(["-logFormat", "json"])
        .arg("-dataDir")
        .arg(dir.sub("agent"))
        .arg("-socketPath")
        .arg(dir.path().join("agent-public/api.sock"));
    all_json("sigil-agent", &lines_of(agent, 1));

    let conf = dir.path().join("oidc.conf");
    std::fs::write(
        &conf,
        format!(
            "log_format = \"json\"\ndomains = [\"localhost\"]\ninsecure_addr = \"127.0.0.1:0\"\nallow_insecure_scheme = true\nserver_api {{\n  address = \"unix://{}\"\n  poll_interval = \"1s\"\n}}\n",
            dir.path().join("nowhere.sock").display()
        ),
    )
    .unwrap();
    let mut oidc = Command::new(sigil_bin("sigil-oidc"));
    oidc.arg("-config").arg(&conf);
    all_json("sigil-oidc", &lines_of(oidc, 2));
}
