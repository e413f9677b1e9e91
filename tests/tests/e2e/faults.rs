//! Faults: a server killed (SIGKILL) in the middle of a write storm loses nothing it
//! acknowledged and half-applies nothing; files it cannot use (corrupt keys, a datastore from
//! a newer version, a full disk) stop it with an error naming the file, and are left as they
//! were.

use crate::TD;
use sigil_e2e::harness::{CliOutput, Server, TestDir, run, sigil_bin};
use sigil_proto::admin as apb;
use sigil_proto::types;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WRITES: usize = 1000;

fn entry(i: usize) -> types::Entry {
    types::Entry {
        spiffe_id: format!("spiffe://{TD}/storm/{i}"),
        parent_id: format!("spiffe://{TD}/node"),
        selectors: vec![
            types::Selector {
                r#type: "unix".into(),
                value: format!("uid:{i}"),
            },
            types::Selector {
                r#type: "unix".into(),
                value: format!("gid:{i}"),
            },
        ],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_concurrent_writes_loses_nothing_acknowledged() {
    let dir = TestDir::new("faults-sigkill");
    let server = Server::start(dir.path(), TD);
    storm_kill_restart(server).await;
}

/// The same on PostgreSQL: what the server acknowledged was committed there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_concurrent_writes_on_postgres_loses_nothing_acknowledged() {
    let dir = TestDir::new("faults-sigkill-pg");
    let pg = sigil_pgtest::PgServer::start();
    pg.create_database("spire");
    let server = Server::start_with_config_file(dir.path(), TD, &crate::ha::postgres_config(&pg));
    storm_kill_restart(server).await;
}

/// Writes [`WRITES`] entries concurrently, SIGKILLs the server while they are in flight,
/// restarts it and checks every acknowledged write is there, whole.
async fn storm_kill_restart(mut server: Server) {
    let socket = server.socket.to_string_lossy().to_string();
    let admin = sigil_server::cli::connect(&socket)
        .await
        .expect("admin socket");
    let acked: Arc<Mutex<Vec<usize>>> = Arc::default();
    let mut tasks = Vec::new();
    for i in 0..WRITES {
        let (mut admin, acked) = (admin.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let resp = admin
                .batch_create_entry(apb::BatchCreateEntryRequest {
                    entries: vec![entry(i)],
                })
                .await;
            if let Ok(r) = resp
                && r.into_inner()
                    .results
                    .first()
                    .and_then(|r| r.status.as_ref())
                    .is_some_and(|s| s.code == 0)
            {
                acked.lock().unwrap().push(i);
            }
        }));
    }
    // Kill it while writes are in flight.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < WRITES / 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "writes never got going"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.proc().kill();
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() < WRITES,
        "every write finished before the kill: the test proved nothing"
    );

    server.restart();
    let listed = server
        .cli(&["entry", "show", "-output", "json"])
        .ok()
        .json();
    let entries = listed["entries"].as_array().expect("entries");
    let stored: std::collections::BTreeMap<String, Vec<String>> = entries
        .iter()
        .map(|e| {
            let mut sel: Vec<String> = e["selectors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    format!(
                        "{}:{}",
                        s["type"].as_str().unwrap(),
                        s["value"].as_str().unwrap()
                    )
                })
                .collect();
            sel.sort();
            (e["spiffe_id"].as_str().unwrap().to_string(), sel)
        })
        .collect();
    let lost: Vec<usize> = acked
        .iter()
        .copied()
        .filter(|i| !stored.contains_key(&entry(*i).spiffe_id))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    // Nothing half-applied: every stored entry has exactly the selectors it was written with.
    for (id, sel) in &stored {
        let i: usize = id.rsplit('/').next().unwrap().parse().unwrap();
        assert_eq!(
            sel,
            &[format!("unix:gid:{i}"), format!("unix:uid:{i}")],
            "{id}"
        );
    }
    eprintln!(
        "{} acknowledged before the kill, {} stored after the restart",
        acked.len(),
        stored.len()
    );
}

/// `sigil-server run` on `data_dir` (which must fail); the output.
fn start_fails(dir: &Path, data_dir: &Path) -> CliOutput {
    let mut cmd = Command::new(sigil_bin("sigil-server"));
    cmd.arg("run")
        .args(["-trustDomain", TD])
        .arg("-dataDir")
        .arg(data_dir)
        .arg("-socketPath")
        .arg(dir.join("admin/api.sock"))
        .args(["-bindAddress", "127.0.0.1", "-serverPort", "0"])
        .env("NO_COLOR", "1");
    run(cmd, Duration::from_secs(30)).fails()
}

#[test]
fn unusable_files_stop_the_server_naming_them_and_stay_untouched() {
    let dir = TestDir::new("faults-files");
    let mut server = Server::start(dir.path(), TD);
    server.stop();
    let data = server.data_dir.clone();

    // Corrupt keys.json.
    let keys = data.join("keys.json");
    let good = std::fs::read(&keys).unwrap();
    std::fs::write(&keys, b"{\"x509\": not json").unwrap();
    let out = start_fails(dir.path(), &data);
    assert!(out.stderr.contains(&keys.display().to_string()), "{out}");
    assert!(out.stderr.contains("corrupt"), "{out}");
    assert_eq!(std::fs::read(&keys).unwrap(), b"{\"x509\": not json");
    std::fs::write(&keys, &good).unwrap();

    // A datastore a newer version wrote (a migration this one does not know).
    let db = data.join("datastore.sqlite3");
    let py = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3; c = sqlite3.connect({:?}); c.execute(\"insert into _sqlx_migrations (version, description, installed_on, success, checksum, execution_time) values (9999, 'from the future', CURRENT_TIMESTAMP, 1, x'00', 0)\"); c.commit()",
            db.display().to_string()
        ))
        .output()
        .expect("python3");
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let before = std::fs::read(&db).unwrap();
    let out = start_fails(dir.path(), &data);
    assert!(out.stderr.contains(&db.display().to_string()), "{out}");
    assert!(out.stderr.contains("9999"), "{out}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "the datastore was changed"
    );
}

/// A full disk at start-up: the error names the file that could not be written.
#[test]
fn a_full_disk_stops_the_server_naming_the_file() {
    let dir = TestDir::new("faults-full-disk");
    let mnt = dir.sub("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    assert!(mounted, "mounting a small tmpfs (this test runs as root)");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    // Fill it.
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=4k", "count=64"])
        .arg(format!("of={}", mnt.join("filler").display()))
        .output();
    let data = mnt.join("data");
    std::fs::create_dir_all(&data).unwrap_or(());
    let out = start_fails(dir.path(), &data);
    let err = out.stderr.clone();
    assert!(
        err.contains(&data.display().to_string()),
        "the error names no file under the data dir: {out}"
    );
    assert!(
        err.contains("No space left on device") || err.contains("full"),
        "{out}"
    );
}
