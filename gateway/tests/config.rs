//! The gateway binary and its config file: refusals at start, `--check`, SIGHUP reload.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Gateway, TOKEN, write_config};

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
