//! The real binary under load, killed hard (SIGKILL) or asked to stop (SIGTERM): nothing it
//! acknowledged may be lost, nothing may be stored twice, and a retry of an acknowledged
//! message must be answered as a duplicate. And when its disk fails a sync, it confirms
//! nothing more and exits.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::Gateway;
use common::load::{self, LoadReport, LoadSpec, Progress, Stored};

const CLIENTS: usize = 16;
const SESSIONS: u64 = 64;
const MESSAGES: u64 = 50_000;
const LOAD_TIME_LIMIT: Duration = Duration::from_secs(30);
const LIST_TIME_LIMIT: Duration = Duration::from_secs(30);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs the load, and signals the gateway from beside it once `acks` answers were 2xx.
/// Returns the report and when the signal went out.
fn load_then_signal(
    rt: &tokio::runtime::Runtime,
    gateway: &Gateway,
    acks: u64,
    signal: i32,
) -> (LoadReport, Instant) {
    let spec = LoadSpec::range(gateway.url(""), 0..MESSAGES, CLIENTS, SESSIONS)
        .time_limit(LOAD_TIME_LIMIT);
    let progress = Progress::new();
    rt.block_on(async {
        let signaller = async {
            let reached = progress.wait_for_acks(acks, LOAD_TIME_LIMIT).await;
            assert!(
                reached,
                "only {} acks before the load ended: {:?}",
                progress.acked(),
                progress
            );
            gateway.signal(signal);
            Instant::now()
        };
        let (report, signalled) = tokio::join!(load::run(&spec, progress.clone()), signaller);
        (report, signalled)
    })
}

/// Checks the listing of a restarted gateway against what the load was told; returns the
/// numbers stored.
fn check_stored(report: &LoadReport, stored: &Stored) -> BTreeSet<u64> {
    let duplicated = stored.duplicated();
    assert!(
        duplicated.is_empty(),
        "stored more than once: {:?}",
        &duplicated[..duplicated.len().min(20)]
    );
    assert_eq!(
        stored.without_provider_id, 0,
        "messages without a provider id"
    );
    let numbers = stored.numbers();
    let acked = report.acked_numbers();
    let missing: Vec<u64> = acked.difference(&numbers).copied().collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged messages were lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    // Beyond the acknowledged ones, only requests that never got an answer may be stored.
    let unanswered = report.unanswered_numbers();
    let phantom: Vec<u64> = numbers
        .iter()
        .filter(|n| !acked.contains(n) && !unanswered.contains(n))
        .copied()
        .collect();
    assert!(
        phantom.is_empty(),
        "stored but never acknowledged nor in flight: {phantom:?}"
    );
    numbers
}

#[test]
fn kill_9_during_ingest_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(dir.path(), "");
    let rt = runtime();

    let (mut gateway, _) = Gateway::start(&config);
    let (report, _) = load_then_signal(&rt, &gateway, 3000, libc::SIGKILL);
    let status = gateway.wait(Duration::from_secs(10));
    assert!(
        !status.success(),
        "SIGKILL should end the process abnormally, got {status}"
    );
    println!("before kill: {}", report.summary());
    assert!(
        report.refusals.is_empty(),
        "refused before the kill: {:?}",
        &report.refusals[..report.refusals.len().min(10)]
    );
    assert_eq!(
        report.inconsistent(),
        0,
        "2xx answers whose status and duplicate flag disagree"
    );
    assert_eq!(
        report.created(),
        report.acks.len(),
        "a fresh store answered duplicate"
    );
    assert!(
        report.failures.len() <= CLIENTS,
        "each client stops after one failure"
    );
    drop(gateway);

    let (gateway, _) = Gateway::start(&config);
    let base = gateway.url("");
    let stored = rt.block_on(load::stored_messages(&base, LIST_TIME_LIMIT));
    let numbers = check_stored(&report, &stored);
    let acked = report.acked_numbers();
    println!(
        "acked before kill: {}, unanswered at kill: {}, stored after restart: {} in {} conversations \
         (in-flight stored: {}), missing: 0, duplicated: 0",
        acked.len(),
        report.failures.len(),
        numbers.len(),
        stored.conversations,
        numbers.len() - acked.len(),
    );

    // Retrying every acknowledged message stores nothing new.
    let retry = LoadSpec::list(
        base.clone(),
        acked.iter().copied().collect(),
        CLIENTS,
        SESSIONS,
    )
    .time_limit(LOAD_TIME_LIMIT);
    let again = rt.block_on(load::run_to_end(&retry));
    println!("retry: {}", again.summary());
    assert_eq!(
        again.errors(),
        0,
        "retry failures: {:?} {:?}",
        again.refusals,
        again.failures
    );
    assert_eq!(
        again.duplicates(),
        acked.len(),
        "every retry must be 200 duplicate"
    );
    let ingested = rt.block_on(load::metric(&base, "gateway_messages_ingested_total"));
    assert_eq!(ingested, 0.0, "the retries stored new messages");
    let deduplicated = rt.block_on(load::metric(&base, "gateway_events_deduplicated_total"));
    assert_eq!(deduplicated, acked.len() as f64);
    let after = rt.block_on(load::stored_messages(&base, LIST_TIME_LIMIT));
    assert_eq!(
        after.provider_ids.len(),
        stored.provider_ids.len(),
        "the retries changed what is stored"
    );
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(dir.path(), "");
    let rt = runtime();

    let (mut gateway, _) = Gateway::start(&config);
    let (report, signalled) = load_then_signal(&rt, &gateway, 2000, libc::SIGTERM);
    let status = gateway.wait(Duration::from_secs(15));
    let stopped_after = signalled.elapsed();
    println!("load: {}", report.summary());
    assert!(
        status.success(),
        "exit status after SIGTERM: {status}\n{}",
        gateway.log_text()
    );
    assert_eq!(status.code(), Some(0));
    let log = gateway.log_text();
    assert!(
        log.contains("gateway stopped cleanly"),
        "no clean stop in the log:\n{log}"
    );

    // An answer after the signal is a 2xx (and stored, checked below) or 503 shutting_down.
    let wrong: Vec<_> = report
        .refusals
        .iter()
        .filter(|r| !(r.status == 503 && r.code.as_deref() == Some("shutting_down")))
        .collect();
    assert!(
        wrong.is_empty(),
        "answers other than 2xx or 503 shutting_down: {wrong:?}"
    );
    let refused_before = report.refusals.iter().filter(|r| r.at < signalled).count();
    assert_eq!(refused_before, 0, "refusals before the signal");
    assert_eq!(
        report.inconsistent(),
        0,
        "2xx answers whose status and duplicate flag disagree"
    );
    let acked_after = report.acks.iter().filter(|a| a.at > signalled).count();
    let failed_connect = report.failures.iter().filter(|f| f.connect).count();
    println!(
        "after SIGTERM: {acked_after} acked, {} refused with 503, {} unanswered ({failed_connect} connection refused); \
         exited 0 {:.0} ms after the signal",
        report.refusals.len(),
        report.failures.len(),
        stopped_after.as_secs_f64() * 1000.0,
    );
    drop(gateway);

    let (gateway, _) = Gateway::start(&config);
    let stored = rt.block_on(load::stored_messages(&gateway.url(""), LIST_TIME_LIMIT));
    let numbers = check_stored(&report, &stored);
    println!(
        "acked: {}, stored after restart: {} in {} conversations, missing: 0, duplicated: 0",
        report.acks.len(),
        numbers.len(),
        stored.conversations
    );
}

#[test]
fn a_stalled_request_cannot_hold_shutdown_past_the_grace() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(dir.path(), "limits:\n  shutdown_grace: 1s\n");
    let (mut gateway, _) = Gateway::start(&config);
    // A client that announces 100 bytes of body, sends 10 and then goes quiet.
    let mut stalled = std::net::TcpStream::connect(gateway.addr).unwrap();
    write!(
        stalled,
        "POST /v1/webchat/messages HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"session\"",
        common::TOKEN
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let signalled = Instant::now();
    gateway.signal(libc::SIGTERM);
    let status = gateway.wait(Duration::from_secs(8));
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        gateway.log_text()
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(4),
        "shutdown took {:?}",
        signalled.elapsed()
    );
    assert!(gateway.log_text().contains("gateway stopped cleanly"));
    drop(stalled);
}

/// A shared library that makes every `fdatasync` fail with EIO once `trigger` exists: the
/// store's syncs of the WAL (SQLite's own syncs use `fsync`). Built with the machine's C
/// compiler, which Rust needs as its linker anyway.
fn failing_fdatasync(dir: &std::path::Path) -> std::path::PathBuf {
    let source = dir.join("fail_fdatasync.c");
    std::fs::write(
        &source,
        r#"#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>
int fdatasync(int fd) {
    const char *trigger = getenv("MOLTBOT_TEST_FAIL_SYNC_AFTER");
    if (trigger && access(trigger, F_OK) == 0) { errno = EIO; return -1; }
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}
"#,
    )
    .unwrap();
    let library = dir.join("fail_fdatasync.so");
    let built = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source)
        .arg("-ldl")
        .status()
        .expect("a C compiler `cc` (Rust links with it)");
    assert!(built.success(), "cc failed: {built}");
    library
}

/// After the disk fails a sync, the gateway confirms nothing more: the write waiting for
/// that sync is answered 500, and the gateway exits non-zero so that the platform starts
/// it again from what is on disk. After the restart a retry of the unconfirmed message is
/// stored once.
#[test]
fn a_failed_disk_sync_stops_the_gateway_and_confirms_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(dir.path(), "");
    let trigger = dir.path().join("disk-fails-now");
    let shim = failing_fdatasync(dir.path());
    let (mut gateway, _) = Gateway::start_with_env(
        &config,
        &[
            ("LD_PRELOAD", shim.as_path()),
            ("MOLTBOT_TEST_FAIL_SYNC_AFTER", trigger.as_path()),
        ],
    );
    let rt = runtime();
    let post = |gateway: &Gateway, n: u64| rt.block_on(post_webchat(gateway, n));
    assert_eq!(post(&gateway, 1).0, 201, "{}", gateway.log_text());

    std::fs::write(&trigger, b"").unwrap();
    let (status, refused) = post(&gateway, 2);
    assert_eq!(status, 500, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("did not confirm"),
        "{refused}"
    );
    let exited = gateway.wait(Duration::from_secs(10));
    assert!(!exited.success(), "exit status {exited}");
    let log = gateway.log_text();
    assert!(
        log.contains("cannot make committed writes durable"),
        "{log}"
    );
    assert!(!log.contains("gateway stopped cleanly"), "{log}");
    drop(gateway);

    let (gateway, _) = Gateway::start(&config);
    // Stored before the failed sync or not: either way the retry is taken, once.
    assert!(
        [200, 201].contains(&post(&gateway, 2).0),
        "the retry is taken"
    );
    let stored = rt.block_on(load::stored_messages(&gateway.url(""), LIST_TIME_LIMIT));
    assert_eq!(
        stored.counts(),
        BTreeMap::from([(1, 1), (2, 1)]),
        "each once"
    );
}

/// Posts web-chat message `n` of one session; answers the status and the body.
async fn post_webchat(gateway: &Gateway, n: u64) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(gateway.url("/v1/webchat/messages"))
        .bearer_auth(common::TOKEN)
        .header("content-type", "application/json")
        .body(common::webchat_body(n, 1))
        .send()
        .await
        .expect("an answer");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}
