//! Both command lines: the happy paths of the admin and agent CLIs, and malformed input (which
//! must give a clear message on stderr and a non-zero exit).

use crate::{Env, TD, now, pem_certs};
use sigil_e2e::harness::{CliOutput, TestDir, run, sigil_bin, wait_for_svid};
use std::process::Command;
use std::time::Duration;

/// Runs a binary with `args`; malformed invocations must fail fast, so 20s is plenty.
fn cmd(bin: &str, args: &[&str]) -> CliOutput {
    let mut c = Command::new(sigil_bin(bin));
    c.args(args);
    run(c, Duration::from_secs(20))
}

/// Asserts a non-zero exit with a message on stderr that mentions every one of `needles`.
#[track_caller]
fn assert_rejected(out: CliOutput, needles: &[&str]) {
    let out = out.fails();
    let err = out.stderr.to_lowercase();
    assert!(!err.trim().is_empty(), "no message on stderr: {out}");
    for n in needles {
        assert!(
            err.contains(&n.to_lowercase()),
            "stderr does not mention {n:?}: {out}"
        );
    }
}

#[test]
fn server_cli_manages_entries_tokens_bundles_and_agents() {
    let env = Env::start("server-cli");
    let s = &env.server;
    let id = s.id("/cli/one");

    // entry create (human output like spire-server's)
    let out = s
        .cli(&[
            "entry",
            "create",
            "-parentID",
            &env.node_id,
            "-spiffeID",
            &id,
            "-selector",
            "unix:uid:1234",
            "-dns",
            "one.example",
        ])
        .ok();
    assert!(out.stdout.contains("Entry ID"), "{out}");
    assert!(
        out.stdout.contains(&format!("SPIFFE ID        : {id}")),
        "{out}"
    );
    assert!(
        out.stdout.contains("Selector         : unix:uid:1234"),
        "{out}"
    );
    let entry_id = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Entry ID         : "))
        .expect("entry ID line")
        .trim()
        .to_string();

    // entry show, human and JSON
    let out = s.cli(&["entry", "show", "-spiffeID", &id]).ok();
    assert!(out.stdout.contains("Found 1 entry"), "{out}");
    assert!(out.stdout.contains(&entry_id), "{out}");
    let v = s
        .cli(&["entry", "show", "-entryID", &entry_id, "-output", "json"])
        .ok()
        .json();
    let e = &v["entries"][0];
    assert_eq!(e["spiffe_id"].as_str(), Some(id.as_str()));
    assert_eq!(e["parent_id"].as_str(), Some(env.node_id.as_str()));
    assert_eq!(e["selectors"][0]["type"].as_str(), Some("unix"));
    assert_eq!(e["selectors"][0]["value"].as_str(), Some("uid:1234"));
    assert_eq!(e["dns_names"][0].as_str(), Some("one.example"));

    // entry update
    let out = s
        .cli(&[
            "entry",
            "update",
            "-entryID",
            &entry_id,
            "-parentID",
            &env.node_id,
            "-spiffeID",
            &id,
            "-selector",
            "unix:uid:5678",
            "-x509SVIDTTL",
            "120",
        ])
        .ok();
    assert!(out.stdout.contains("unix:uid:5678"), "{out}");
    let v = s
        .cli(&["entry", "show", "-entryID", &entry_id, "-output", "json"])
        .ok()
        .json();
    assert_eq!(
        v["entries"][0]["selectors"][0]["value"].as_str(),
        Some("uid:5678")
    );
    assert_eq!(v["entries"][0]["x509_svid_ttl"].as_i64(), Some(120));

    // entry count: the join-token alias entry plus ours
    let out = s.cli(&["entry", "count"]).ok();
    assert!(out.stdout.contains("2 registration entries"), "{out}");
    assert_eq!(
        s.cli(&["entry", "count", "-output", "json"]).ok().json()["count"].as_u64(),
        Some(2)
    );

    // entry delete
    s.cli(&["entry", "delete", "-entryID", &entry_id]).ok();
    assert_eq!(
        s.cli(&["entry", "count", "-output", "json"]).ok().json()["count"].as_u64(),
        Some(1)
    );
    s.cli(&["entry", "show", "-entryID", &entry_id]).fails();

    // token generate
    let out = s.cli(&["token", "generate", "-ttl", "60"]).ok();
    assert!(
        out.stdout.starts_with("Token: ") && out.stdout.trim().len() > "Token: ".len(),
        "{out}"
    );

    // bundle show / set / list / delete
    let pem = s.cli(&["bundle", "show"]).ok().stdout;
    assert!(
        !pem_certs(&pem).is_empty(),
        "bundle show printed no certificates: {pem}"
    );
    let spiffe_fmt = s.cli(&["bundle", "show", "-format", "spiffe"]).ok().json();
    assert!(
        spiffe_fmt["keys"].as_array().is_some_and(|k| !k.is_empty()),
        "{spiffe_fmt}"
    );
    let fed = env.dir.path().join("federated.pem");
    std::fs::write(&fed, &pem).expect("writing a federated bundle");
    s.cli(&[
        "bundle",
        "set",
        "-id",
        "spiffe://federated.test",
        "-path",
        fed.to_str().expect("utf-8"),
    ])
    .ok();
    let out = s.cli(&["bundle", "list"]).ok();
    assert!(out.stdout.contains("spiffe://federated.test"), "{out}");
    let out = s
        .cli(&["bundle", "list", "-id", "spiffe://federated.test"])
        .ok();
    assert_eq!(pem_certs(&out.stdout), pem_certs(&pem), "{out}");
    s.cli(&["bundle", "delete", "-id", "spiffe://federated.test"])
        .ok();
    let out = s.cli(&["bundle", "list"]).ok();
    assert!(!out.stdout.contains("federated.test"), "{out}");

    // agent list / show / ban / evict
    let out = s.cli(&["agent", "list"]).ok();
    assert!(out.stdout.contains("Found 1 attested agent"), "{out}");
    let v = s.cli(&["agent", "list", "-output", "json"]).ok().json();
    let agent_id = v["agents"][0]["id"].as_str().expect("agent id").to_string();
    assert!(
        agent_id.starts_with(&format!("spiffe://{TD}/spire/agent/join_token/")),
        "{agent_id}"
    );
    let out = s.cli(&["agent", "show", "-spiffeID", &agent_id]).ok();
    assert!(
        out.stdout.contains(&agent_id) && out.stdout.contains("join_token"),
        "{out}"
    );
    s.cli(&["agent", "ban", "-spiffeID", &agent_id]).ok();
    let v = s
        .cli(&["agent", "show", "-spiffeID", &agent_id, "-output", "json"])
        .ok()
        .json();
    assert_eq!(v["banned"].as_bool(), Some(true), "{v}");
    s.cli(&["agent", "evict", "-spiffeID", &agent_id]).ok();
    let out = s.cli(&["agent", "list"]).ok();
    assert!(out.stdout.contains("No attested agents found"), "{out}");

    // healthcheck
    let out = s.cli(&["healthcheck"]).ok();
    assert!(out.stdout.contains("healthy"), "{out}");
}

#[test]
fn server_cli_rejects_malformed_input() {
    let env = Env::start("server-cli-bad");
    let s = &env.server;
    let node = env.node_id.as_str();
    let good_id = s.id("/cli/bad");
    let count = || s.cli(&["entry", "count", "-output", "json"]).ok().json()["count"].as_u64();
    let before = count();

    // bad SPIFFE IDs
    assert_rejected(
        s.cli(&[
            "entry",
            "create",
            "-parentID",
            node,
            "-spiffeID",
            "not-a-spiffe-id",
            "-selector",
            "unix:uid:1",
        ]),
        &["not-a-spiffe-id"],
    );
    assert_rejected(
        s.cli(&[
            "entry",
            "create",
            "-parentID",
            "spiffe://UPPER.case/x",
            "-spiffeID",
            &good_id,
            "-selector",
            "unix:uid:1",
        ]),
        &["parentID"],
    );
    assert_rejected(
        s.cli(&["token", "generate", "-spiffeID", "http://nope/x"]),
        &["http://nope/x"],
    );
    // bad selector
    assert_rejected(
        s.cli(&[
            "entry",
            "create",
            "-parentID",
            node,
            "-spiffeID",
            &good_id,
            "-selector",
            "unixuid1",
        ]),
        &["unixuid1"],
    );
    // bad number
    assert_rejected(
        s.cli(&[
            "entry",
            "create",
            "-parentID",
            node,
            "-spiffeID",
            &good_id,
            "-selector",
            "unix:uid:1",
            "-x509SVIDTTL",
            "ten",
        ]),
        &["x509SVIDTTL"],
    );
    // unknown flag
    assert_rejected(
        s.cli(&["entry", "create", "-bogusFlag", "x"]),
        &["bogusFlag"],
    );
    // missing required flag
    assert_rejected(
        s.cli(&[
            "entry",
            "create",
            "-spiffeID",
            &good_id,
            "-selector",
            "unix:uid:1",
        ]),
        &["a parent ID is required if the node flag is not set"],
    );
    assert_rejected(s.cli(&["agent", "show"]), &["spiffeID"]);
    // unknown verb / command
    assert_rejected(s.cli(&["entry", "frobnicate"]), &["frobnicate"]);
    assert_rejected(cmd("sigil-server", &["frobnicate"]), &["frobnicate"]);
    // bad -output
    assert_rejected(s.cli(&["entry", "count", "-output", "yaml"]), &["yaml"]);

    assert_eq!(count(), before, "a rejected command created something");

    // `run` with bad configuration exits at once
    let dir = TestDir::new("server-run-bad");
    let data = dir.sub("data");
    let sock = dir.path().join("admin.sock");
    let data = data.to_str().expect("utf-8");
    let sock = sock.to_str().expect("utf-8");
    assert_rejected(
        cmd(
            "sigil-server",
            &[
                "run",
                "-trustDomain",
                "Not A Domain!",
                "-dataDir",
                data,
                "-socketPath",
                sock,
                "-serverPort",
                "0",
            ],
        ),
        &["trust"],
    );
    assert_rejected(
        cmd(
            "sigil-server",
            &[
                "run",
                "-trustDomain",
                TD,
                "-dataDir",
                data,
                "-socketPath",
                sock,
                "-serverPort",
                "notaport",
            ],
        ),
        &["port"],
    );
    assert_rejected(cmd("sigil-server", &["run", "-bogusFlag"]), &["bogusFlag"]);
    assert_rejected(
        cmd(
            "sigil-server",
            &[
                "run",
                "-config",
                "/nonexistent/server.conf",
                "-socketPath",
                sock,
            ],
        ),
        &["/nonexistent/server.conf"],
    );
    let conf = dir.path().join("server.conf");
    std::fs::write(
        &conf,
        "server {\n  trust_domain = \"e2e.test\"\n  data_dir = \"/tmp\"\n  no_such_key = 1\n}\n",
    )
    .expect("config");
    assert_rejected(
        cmd(
            "sigil-server",
            &[
                "run",
                "-config",
                conf.to_str().expect("utf-8"),
                "-socketPath",
                sock,
            ],
        ),
        &["no_such_key"],
    );
}

/// Extracts the JWT from `api fetch jwt` output (the word that looks like a compact JWS).
fn find_jwt(text: &str) -> Option<String> {
    text.split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        })
        .find(|w| w.starts_with("eyJ") && w.matches('.').count() == 2)
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_cli_fetches_validates_and_watches() {
    let env = Env::start("agent-cli");
    let id = env.register("/cli/agent", &[&Env::my_uid()], &[]);
    wait_for_svid(&env.agent.socket, &id).await;
    let a = &env.agent;

    // healthcheck
    let out = a.cli(&["healthcheck"]).ok();
    assert!(out.stdout.to_lowercase().contains("healthy"), "{out}");

    // api fetch x509 (-write DIR: svid.0.pem, svid.0.key, bundle.0.pem, like spire-agent)
    let out = a.cli(&["api", "fetch", "x509"]).ok();
    assert!(out.stdout.contains(&id), "{out}");
    let write = env.dir.sub("written");
    let out = a
        .cli(&[
            "api",
            "fetch",
            "x509",
            "-write",
            write.to_str().expect("utf-8"),
        ])
        .ok();
    let read = |name: &str| {
        std::fs::read_to_string(write.join(name))
            .unwrap_or_else(|e| panic!("api fetch x509 -write did not write {name} ({e}): {out}"))
    };
    let chain = pem_certs(&read("svid.0.pem"));
    let bundle = pem_certs(&read("bundle.0.pem"));
    assert!(read("svid.0.key").contains("PRIVATE KEY"));
    let verified = sigil_spiffe::x509::verify_svid_chain(&chain, &bundle, now())
        .expect("written SVID verifies");
    assert_eq!(verified.to_string(), id);
    assert_eq!(bundle, pem_certs(&env.server.bundle_pem()));

    // api fetch jwt / api validate jwt
    let out = a.cli(&["api", "fetch", "jwt", "-audience", "cli-aud"]).ok();
    assert!(out.stdout.contains(&id), "{out}");
    let token = find_jwt(&out.stdout).unwrap_or_else(|| panic!("no JWT in the output: {out}"));
    let out = a
        .cli(&[
            "api",
            "fetch",
            "jwt",
            "-audience",
            "cli-aud",
            "-spiffeID",
            &id,
        ])
        .ok();
    assert!(find_jwt(&out.stdout).is_some(), "{out}");
    let out = a
        .cli(&[
            "api",
            "validate",
            "jwt",
            "-audience",
            "cli-aud",
            "-svid",
            &token,
        ])
        .ok();
    assert!(out.stdout.contains(&id), "{out}");
    a.cli(&[
        "api",
        "validate",
        "jwt",
        "-audience",
        "other-aud",
        "-svid",
        &token,
    ])
    .fails();

    // api watch prints the SVID and keeps running
    let mut c = Command::new(sigil_bin("sigil-agent"));
    c.args(["api", "watch", "-socketPath"]).arg(&a.socket);
    let mut watch = sigil_e2e::harness::Proc::spawn(
        "sigil-agent api watch",
        c,
        env.dir.path().join("watch.log"),
    );
    sigil_e2e::harness::wait_until(
        "`api watch` to print the SVID",
        Duration::from_secs(20),
        || {
            watch.assert_running();
            watch.log().contains(&id).then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    watch.assert_running();
}

#[test]
fn agent_cli_rejects_malformed_input() {
    let env = Env::start("agent-cli-bad");
    let a = &env.agent;

    // unknown command / verb
    assert_rejected(cmd("sigil-agent", &["frobnicate"]), &["frobnicate"]);
    assert_rejected(a.cli(&["api", "frobnicate"]), &["frobnicate"]);
    assert_rejected(a.cli(&["api", "fetch", "frobnicate"]), &["frobnicate"]);
    // unknown flag
    assert_rejected(
        a.cli(&["api", "fetch", "x509", "-bogusFlag"]),
        &["bogusFlag"],
    );
    assert_rejected(cmd("sigil-agent", &["run", "-bogusFlag"]), &["bogusFlag"]);
    // missing required flag
    assert_rejected(a.cli(&["api", "fetch", "jwt"]), &["audience"]);
    assert_rejected(
        a.cli(&["api", "validate", "jwt", "-audience", "a"]),
        &["svid"],
    );
    // bad SPIFFE ID
    assert_rejected(
        a.cli(&[
            "api",
            "fetch",
            "jwt",
            "-audience",
            "a",
            "-spiffeID",
            "not-a-spiffe-id",
        ]),
        &["spiffe id"],
    );

    // `run` with bad configuration exits at once
    let dir = TestDir::new("agent-run-bad");
    let data = dir.sub("data");
    let data = data.to_str().expect("utf-8");
    let sock = dir.path().join("api.sock");
    let sock = sock.to_str().expect("utf-8");
    let base = [
        "run",
        "-dataDir",
        data,
        "-socketPath",
        sock,
        "-joinToken",
        "x",
        "-insecureBootstrap",
    ];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        base.iter().copied().chain(extra.iter().copied()).collect()
    };
    assert_rejected(
        cmd(
            "sigil-agent",
            &with(&[
                "-serverAddress",
                "127.0.0.1",
                "-trustDomain",
                "Not A Domain!",
            ]),
        ),
        &["trust"],
    );
    assert_rejected(
        cmd("sigil-agent", &with(&["-trustDomain", TD])),
        &["server"],
    );
    assert_rejected(
        cmd(
            "sigil-agent",
            &with(&[
                "-trustDomain",
                TD,
                "-serverAddress",
                "127.0.0.1",
                "-serverPort",
                "notaport",
            ]),
        ),
        &["port"],
    );
    assert_rejected(
        cmd(
            "sigil-agent",
            &[
                "run",
                "-config",
                "/nonexistent/agent.conf",
                "-socketPath",
                sock,
            ],
        ),
        &["/nonexistent/agent.conf"],
    );
    let conf = dir.path().join("agent.conf");
    std::fs::write(
        &conf,
        "agent {\n  trust_domain = \"e2e.test\"\n  server_address = \"127.0.0.1\"\n  no_such_key = 1\n}\n",
    )
    .expect("config");
    assert_rejected(
        cmd(
            "sigil-agent",
            &[
                "run",
                "-config",
                conf.to_str().expect("utf-8"),
                "-socketPath",
                sock,
            ],
        ),
        &["no_such_key"],
    );
    // Nothing was left listening by the failed starts.
    assert!(
        !std::path::Path::new(sock).exists(),
        "a rejected `run` left a socket behind"
    );

    // healthcheck against a socket nobody serves
    assert_rejected(
        cmd("sigil-agent", &["healthcheck", "-socketPath", sock]),
        &[],
    );
}

/// `logger get|set|reset` change the running server's level, as spire-server's do.
#[test]
fn logger_changes_the_level_at_run_time() {
    let dir = TestDir::new("logger");
    let s = sigil_e2e::harness::Server::start(dir.path(), TD);
    let out = s.cli(&["logger", "get"]).ok();
    assert_eq!(out.stdout, "Logger Level : debug\nLaunch Level : debug\n\n");
    // A TCP connection closed before TLS: logged at debug level.
    let poke = || {
        drop(std::net::TcpStream::connect(("127.0.0.1", s.port())).expect("agent API port"));
        std::thread::sleep(Duration::from_millis(500));
        s.log().matches("TLS handshake failed").count()
    };
    let before = poke();
    assert!(before >= 1, "{}", s.log());
    let out = s.cli(&["logger", "set", "-level", "WARN"]).ok();
    assert_eq!(
        out.stdout,
        "Logger Level : warning\nLaunch Level : debug\n\n"
    );
    assert_eq!(poke(), before, "a debug line got through at warning level");
    let out = s.cli(&["logger", "reset", "-output", "json"]).ok();
    assert_eq!(
        out.json(),
        serde_json::json!({"current_level": "DEBUG", "launch_level": "DEBUG"})
    );
    assert!(poke() > before, "debug lines are back after the reset");
    assert_rejected(
        s.cli(&["logger", "set", "-level", "never"]),
        &["the value \"never\" is not a valid setting"],
    );
    assert_rejected(s.cli(&["logger", "set"]), &["a value (-level) must be set"]);
}
