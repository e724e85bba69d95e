//! Configuration: substitution, overrides, errors that name the key, and SIGHUP reload.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Gateway, TOKEN, write_config};
use moltbot_gateway::config::{Config, ConfigError, LogFormat, Synchronous};

const MINIMAL: &str = "tenant:\n  id: acme\ndata_dir: /tmp/x\nauth:\n  inbox_token: ${TOKEN}\n";

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load(yaml: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_yaml(yaml, Path::new("test.yaml"), &env(pairs))
}

fn error_text(yaml: &str, pairs: &[(&str, &str)]) -> String {
    load(yaml, pairs)
        .expect_err("config should be refused")
        .to_string()
}

#[test]
fn defaults_fill_everything_but_the_essentials() {
    let config = load(MINIMAL, &[("TOKEN", "0123456789abcdef")]).unwrap();
    assert_eq!(config.tenant.id, "acme");
    assert_eq!(config.auth.inbox_token.expose(), "0123456789abcdef");
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.limits.max_body_bytes, 1 << 20);
    assert_eq!(config.limits.shutdown_grace, Duration::from_secs(10));
    assert_eq!(config.store.synchronous, Synchronous::Full);
    assert!(config.channels.webchat.enabled);
    assert_eq!(config.log.format, LogFormat::Auto);
    assert!(
        !format!("{config:?}").contains("0123456789abcdef"),
        "Debug never shows the token"
    );
}

#[test]
fn substitution_defaults_escapes_and_typed_values() {
    let yaml = "tenant:\n  id: ${TENANT:-fallback}\ndata_dir: ${HOME_DIR}/data\nauth:\n  inbox_token: \"${TOKEN}\"\n\
                limits:\n  max_body_bytes: ${MAX}\n  shutdown_grace: 1m 30s\nlog:\n  level: \"$$literal\"\n";
    let config = Config::from_yaml(
        &yaml.replace("$$literal", "info"),
        Path::new("t.yaml"),
        &env(&[
            ("TOKEN", "abc: #not-yaml-{x}"),
            ("HOME_DIR", "/srv"),
            ("MAX", "4096"),
        ]),
    );
    // A secret with YAML syntax in it stays one string (substitution is on values, not text)…
    let error = config
        .expect_err("but ':' '#' '{' are not token characters")
        .to_string();
    assert!(error.starts_with("auth.inbox_token:"), "{error}");
    let config = load(
        yaml,
        &[
            ("TOKEN", "0123456789abcdef"),
            ("HOME_DIR", "/srv"),
            ("MAX", "4096"),
        ],
    );
    let error = config
        .expect_err("$$literal is not a log filter")
        .to_string();
    assert!(error.starts_with("log.level:"), "{error}");
    let config = load(
        &yaml.replace("$$literal", "debug"),
        &[
            ("TOKEN", "0123456789abcdef"),
            ("HOME_DIR", "/srv"),
            ("MAX", "4096"),
        ],
    )
    .unwrap();
    assert_eq!(config.tenant.id, "fallback");
    assert_eq!(config.data_dir, Path::new("/srv/data"));
    assert_eq!(
        config.limits.max_body_bytes, 4096,
        "a substituted number is a number"
    );
    assert_eq!(config.limits.shutdown_grace, Duration::from_secs(90));
    let escaped = load(
        &format!("{MINIMAL}tenant:\n  id: a\n  display_name: costs $$5\n").replacen(
            "tenant:\n  id: acme\n",
            "",
            1,
        ),
        &[("TOKEN", "0123456789abcdef")],
    )
    .unwrap();
    assert_eq!(escaped.tenant.display_name.as_deref(), Some("costs $5"));
}

#[test]
fn environment_overrides_any_key() {
    let config = load(
        MINIMAL,
        &[
            ("TOKEN", "0123456789abcdef"),
            ("MOLTBOT_GATEWAY__LISTEN", "0.0.0.0:9999"),
            ("MOLTBOT_GATEWAY__LIMITS__MAX_BODY_BYTES", "2048"),
            ("MOLTBOT_GATEWAY__CHANNELS__WEBCHAT__ENABLED", "false"),
            ("MOLTBOT_GATEWAY__AUTH__INBOX_TOKEN", "overridden-token-123"),
            ("MOLTBOT_GATEWAY__STORE__SYNCHRONOUS", "normal"),
        ],
    )
    .unwrap();
    assert_eq!(config.listen.to_string(), "0.0.0.0:9999");
    assert_eq!(config.limits.max_body_bytes, 2048);
    assert!(!config.channels.webchat.enabled);
    assert_eq!(config.auth.inbox_token.expose(), "overridden-token-123");
    assert_eq!(config.store.synchronous, Synchronous::Normal);
    // An all-digit token stays a string.
    let config = load(
        MINIMAL,
        &[
            ("TOKEN", "x"),
            ("MOLTBOT_GATEWAY__AUTH__INBOX_TOKEN", "12345678901234567890"),
        ],
    )
    .unwrap();
    assert_eq!(config.auth.inbox_token.expose(), "12345678901234567890");
}

#[test]
fn every_error_names_its_key() {
    let token = [("TOKEN", "0123456789abcdef")];
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            MINIMAL.into(),
            vec![],
            "auth.inbox_token: environment variable TOKEN is not set",
        ),
        (
            MINIMAL.replace("${TOKEN}", "${TOKEN"),
            vec![],
            "auth.inbox_token: unterminated",
        ),
        (
            MINIMAL.into(),
            vec![("TOKEN", "short")],
            "auth.inbox_token: must be at least 16",
        ),
        (
            MINIMAL.replace("acme", "Not_A_Label"),
            token.to_vec(),
            "tenant.id: must be a DNS label",
        ),
        (
            format!("{MINIMAL}listen: nowhere\n"),
            token.to_vec(),
            "listen: invalid socket address",
        ),
        (
            format!("{MINIMAL}limits:\n  max_body_bytes: lots\n"),
            token.to_vec(),
            "limits.max_body_bytes: invalid digit",
        ),
        (
            format!("{MINIMAL}limits:\n  max_body_bytes: 10\n"),
            token.to_vec(),
            "limits.max_body_bytes: must be between",
        ),
        (
            format!("{MINIMAL}limits:\n  shutdown_grace: soon\n"),
            token.to_vec(),
            "limits.shutdown_grace:",
        ),
        (
            format!("{MINIMAL}limits:\n  max_bodybytes: 10\n"),
            token.to_vec(),
            "limits.max_bodybytes: unknown field",
        ),
        (
            format!("{MINIMAL}store:\n  synchronous: sometimes\n"),
            token.to_vec(),
            "store.synchronous:",
        ),
        (
            format!("{MINIMAL}channels:\n  webchat:\n    enabled: maybe\n"),
            token.to_vec(),
            "channels.webchat.enabled:",
        ),
        (
            MINIMAL.replace("data_dir: /tmp/x\n", ""),
            token.to_vec(),
            "missing field `data_dir`",
        ),
        (
            "- a\n- b\n".into(),
            vec![],
            "(root): the config must be a mapping",
        ),
        (
            MINIMAL.into(),
            vec![
                ("TOKEN", "0123456789abcdef"),
                ("MOLTBOT_GATEWAY__LIMITS__NOPE", "1"),
            ],
            "limits.nope: unknown field",
        ),
    ];
    for (yaml, env, expected) in cases {
        let text = error_text(&yaml, &env);
        assert!(text.contains(expected), "expected {expected:?} in {text:?}");
        assert!(
            !text.contains("0123456789abcdef"),
            "errors never echo the token: {text}"
        );
    }
    let yaml_error = error_text("tenant: [unclosed\n", &[]);
    assert!(yaml_error.contains("not valid YAML"), "{yaml_error}");
}

#[test]
fn the_binary_refuses_a_bad_config_with_the_key_and_a_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "limits:\n  max_body_bytes: tiny\n");
    let output = Command::new(common::binary())
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("limits.max_body_bytes"), "{stderr}");
    assert!(!dir.path().join("data").exists(), "nothing was created");

    let good = write_config(dir.path(), "");
    let output = Command::new(common::binary())
        .arg("--config")
        .arg(&good)
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_sample_config_is_valid() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/dev.yaml");
    let output = Command::new(common::binary())
        .arg("--config")
        .arg(&sample)
        .arg("--check")
        .env_remove("MOLTBOT_INBOX_TOKEN")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn status_with(gateway: &Gateway, token: &str) -> u16 {
    let mut stream = std::net::TcpStream::connect(gateway.addr).unwrap();
    use std::io::{Read, Write};
    write!(stream, "GET /v1/conversations HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sighup_reloads_the_token_keeps_connections_and_refuses_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let (gateway, _) = Gateway::start(&config);

    // A keep-alive connection opened before the reload must survive it.
    let mut kept = std::net::TcpStream::connect(gateway.addr).unwrap();
    use std::io::{BufRead, BufReader, Read, Write};
    let health = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    let read_status = |stream: &mut std::net::TcpStream| {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let mut length = 0;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            if header == "\r\n" {
                break;
            }
            if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        line
    };
    kept.write_all(health).unwrap();
    assert!(read_status(&mut kept).contains("200"));

    let rotated = "rotated-inbox-token-987654321";
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(TOKEN, rotated);
    std::fs::write(
        &config,
        text.replace("listen: 127.0.0.1:0", "listen: 127.0.0.1:1"),
    )
    .unwrap();
    gateway.signal(libc::SIGHUP);
    eventually("the new token", || status_with(&gateway, rotated) == 200);
    assert_eq!(
        status_with(&gateway, TOKEN),
        401,
        "the old token stops working"
    );
    kept.write_all(health).unwrap();
    assert!(
        read_status(&mut kept).contains("200"),
        "the open connection survived the reload"
    );
    eventually("the restart-only warning", || {
        gateway.log_text().contains("only change at restart")
    });

    std::fs::write(&config, "tenant: [broken\n").unwrap();
    gateway.signal(libc::SIGHUP);
    eventually("the refusal", || {
        gateway.log_text().contains("configuration reload refused")
    });
    assert_eq!(
        status_with(&gateway, rotated),
        200,
        "a bad file changes nothing"
    );
    assert!(
        !gateway.log_text().contains(rotated) && !gateway.log_text().contains(TOKEN),
        "no token in the log"
    );
}
