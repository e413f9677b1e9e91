//! The shared walk: what both binaries accept and refuse, whatever the keys mean to them.

use sigil_config::{Block, ConfigError, HealthChecksBlock, Plugin, parse, plugins};

fn root(text: &str) -> Block {
    parse(text).unwrap()
}

#[test]
fn scalars_are_read_quoted_or_not() {
    let mut b = root(
        "port = \"8081\"\nother = 8081\nflag = \"TRUE\"\nttl = \"1h30m\"\nlist = [\"a\", 1]\n",
    );
    assert_eq!(b.string("port").unwrap().as_deref(), Some("8081"));
    assert_eq!(b.integer("other").unwrap(), Some(8081));
    assert_eq!(b.bool("flag").unwrap(), Some(true));
    assert_eq!(
        b.duration("ttl").unwrap(),
        Some(std::time::Duration::from_secs(5400))
    );
    assert_eq!(
        b.strings("list").unwrap(),
        Some(vec!["a".into(), "1".into()])
    );
    assert_eq!(b.string("absent").unwrap(), None);
    b.finish().unwrap();
}

#[test]
fn wrong_types_name_the_key_and_what_was_expected() {
    let mut b = root("listener_enabled = \"treu\"\n");
    assert_eq!(
        b.bool("listener_enabled").unwrap_err().to_string(),
        "invalid value for listener_enabled: expected true or false"
    );
    let mut b = root("server = \"x\"\n");
    assert_eq!(
        b.block("server", "server block").unwrap_err().to_string(),
        "invalid value for server: expected a block"
    );
    let mut b = root("server = [\"x\"]\n");
    assert!(matches!(
        b.block("server", "server block"),
        Err(ConfigError::Type { .. })
    ));
    let mut b = root("data_dir { x = 1 }\n");
    assert_eq!(
        b.string("data_dir").unwrap_err().to_string(),
        "invalid value for data_dir: expected a string, number or boolean"
    );
    let mut b = root("ttl = \"1x\"\n");
    assert!(
        b.duration("ttl")
            .unwrap_err()
            .to_string()
            .starts_with("invalid value for ttl")
    );
    let mut b = root("n = \"many\"\n");
    assert!(
        b.integer("n")
            .unwrap_err()
            .to_string()
            .starts_with("invalid value for n")
    );
}

#[test]
fn unread_keys_are_named_with_their_block() {
    let mut b = root("agent {\n a = 1\n bogus = 2\n}\n");
    let mut agent = b.block("agent", "agent block").unwrap().unwrap();
    assert_eq!(agent.string("a").unwrap().as_deref(), Some("1"));
    assert_eq!(
        agent.finish().unwrap_err().to_string(),
        r#"unsupported key "bogus" in agent block"#
    );
    b.finish().unwrap();
    assert_eq!(
        root("telemetry {}\n").finish().unwrap_err().to_string(),
        r#"unsupported key "telemetry" in config file"#
    );
}

#[test]
fn repeated_blocks_merge_later_wins() {
    let mut b = root("agent {\n a = 1\n}\nagent {\n a = 2\n b = 3\n}\n");
    let mut agent = b.block("agent", "agent block").unwrap().unwrap();
    assert_eq!(agent.string("a").unwrap().as_deref(), Some("2"));
    assert_eq!(agent.string("b").unwrap().as_deref(), Some("3"));
}

#[test]
fn json_form_is_the_same_document() {
    let hcl = root(
        "agent {\n trust_domain = \"td\"\n}\nplugins {\n KeyManager \"memory\" {\n plugin_data {}\n }\n}\n",
    );
    let json = root(
        r#"{"agent": {"trust_domain": "td"}, "plugins": {"KeyManager": [{"memory": {"plugin_data": {}}}]}}"#,
    );
    let walk = |mut b: Block| {
        let mut agent = b.block("agent", "agent block").unwrap().unwrap();
        let td = agent.string("trust_domain").unwrap();
        let p = plugins(b.block("plugins", "plugins block").unwrap().unwrap()).unwrap();
        (td, p)
    };
    assert_eq!(walk(hcl), walk(json));
}

#[test]
fn plugins_are_walked() {
    let mut b = root(
        "plugins {\n NodeAttestor \"join_token\" {\n plugin_data {}\n }\n KeyManager \"disk\" {\n plugin_data = {\n directory = \"/x\"\n }\n }\n WorkloadAttestor \"unix\" {}\n WorkloadAttestor \"k8s\" {\n enabled = false\n plugin_data {\n a = 1\n }\n }\n}\n",
    );
    let list = plugins(b.block("plugins", "plugins block").unwrap().unwrap()).unwrap();
    let names: Vec<(&str, &str)> = list
        .iter()
        .map(|p| (p.kind.as_str(), p.name.as_str()))
        .collect();
    // By kind (the document's keys), then as written.
    assert_eq!(
        names,
        [
            ("KeyManager", "disk"),
            ("NodeAttestor", "join_token"),
            ("WorkloadAttestor", "unix"),
        ]
    );
    let mut disk: Plugin = list[0].clone();
    assert_eq!(
        disk.data.string("directory").unwrap().as_deref(),
        Some("/x")
    );
    disk.data.finish().unwrap();
    assert!(list[2].data.is_empty());
    assert_eq!(
        list[2]
            .data
            .clone()
            .finish()
            .map(|()| list[2].data.what().to_string())
            .unwrap(),
        "WorkloadAttestor \"unix\" plugin_data"
    );
}

#[test]
fn plugin_bodies_are_strict() {
    let walk = |text: &str| {
        let mut b = root(text);
        plugins(b.block("plugins", "plugins block").unwrap().unwrap())
    };
    assert_eq!(
        walk("plugins {\n NodeAttestor \"join_token\" {\n plugin_cmd = \"/bin/x\"\n }\n}\n")
            .unwrap_err()
            .to_string(),
        r#"unsupported key "plugin_cmd" in NodeAttestor "join_token" plugin"#
    );
    assert_eq!(
        walk("plugins {\n NodeAttestor \"join_token\" {\n enabled = \"yes\"\n }\n}\n")
            .unwrap_err()
            .to_string(),
        "invalid value for enabled: expected true or false"
    );
    assert_eq!(
        walk("plugins {\n NodeAttestor \"join_token\" {\n plugin_data = \"x\"\n }\n}\n")
            .unwrap_err()
            .to_string(),
        "invalid value for plugin_data: expected a block"
    );
    assert_eq!(
        walk("plugins {\n NodeAttestor = \"join_token\"\n}\n")
            .unwrap_err()
            .to_string(),
        "invalid value for NodeAttestor: expected a block"
    );
}

#[test]
fn health_checks_block() {
    let mut b = root(
        "health_checks {\n listener_enabled = true\n bind_port = 8080\n live_path = \"/l\"\n}\n",
    );
    let h = HealthChecksBlock::take(&mut b).unwrap().unwrap();
    assert!(h.listener_enabled);
    assert_eq!(h.bind_port.as_deref(), Some("8080"));
    assert_eq!(h.live_path.as_deref(), Some("/l"));
    assert_eq!(h.ready_path, None);
    b.finish().unwrap();

    let mut b = root("health_checks {\n listener_enabled = \"treu\"\n}\n");
    assert_eq!(
        HealthChecksBlock::take(&mut b).unwrap_err().to_string(),
        "invalid value for listener_enabled: expected true or false"
    );
    let mut b = root("health_checks {\n listen = true\n}\n");
    assert_eq!(
        HealthChecksBlock::take(&mut b).unwrap_err().to_string(),
        r#"unsupported key "listen" in health_checks block"#
    );
    let mut b = root("health_checks = 1\n");
    assert_eq!(
        HealthChecksBlock::take(&mut b).unwrap_err().to_string(),
        "invalid value for health_checks: expected a block"
    );
}

#[test]
fn parse_errors() {
    assert!(
        parse("server { ")
            .unwrap_err()
            .to_string()
            .starts_with("parsing config file: ")
    );
    let err = parse("{ not json")
        .unwrap_err()
        .in_file(std::path::Path::new("/x.conf"));
    assert!(
        err.to_string().starts_with("parsing config file /x.conf: "),
        "{err}"
    );
    assert!(parse("[1]").is_err());
}

#[test]
fn log_levels_and_formats() {
    use sigil_config::{LogFormat, LogLevel};
    assert_eq!("INFO".parse::<LogLevel>().unwrap(), LogLevel::Info);
    assert_eq!("warning".parse::<LogLevel>().unwrap(), LogLevel::Warn);
    assert!("loud".parse::<LogLevel>().is_err());
    assert_eq!("JSON".parse::<LogFormat>().unwrap(), LogFormat::Json);
    assert_eq!("".parse::<LogFormat>().unwrap(), LogFormat::Text);
    assert!("xml".parse::<LogFormat>().is_err());
}
