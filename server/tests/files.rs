//! What the server puts on disk and where it listens: a `sigil-server` process.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

/// A group- or world-writable directory for the admin socket is refused at start-up with a
/// message naming it, and left as it was.
#[test]
fn writable_admin_socket_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sockets = dir.path().join("shared");
    std::fs::create_dir(&sockets).unwrap();
    std::fs::set_permissions(&sockets, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sigil-server"))
        .args(["run", "-trustDomain", "example.org", "-serverPort", "0"])
        .arg("-bindAddress")
        .arg("127.0.0.1")
        .arg("-dataDir")
        .arg(dir.path().join("data"))
        .arg("-socketPath")
        .arg(sockets.join("api.sock"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started with a world-writable admin socket directory");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&sockets.display().to_string()) && text.contains("writable"),
        "{text}"
    );
    assert!(!sockets.join("api.sock").exists());
    let mode = std::fs::metadata(&sockets).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o777, "an existing directory is never chmod-ed");
}
