//! Figures of the real `moltbot-gateway` binary (release build), each against its goal:
//!
//! ```text
//! cargo bench -p moltbot-gateway --bench gateway
//! ```
//!
//! - **start → /readyz 200**: the binary is spawned on a fresh data directory
//!   `BENCH_STARTS` (10) times; min / median / max time from spawn to the first 200 of
//!   `/readyz` (goal ≤ 100 ms).
//! - **idle RSS**: resident memory of a gateway with web chat on, `BENCH_IDLE_SECS` (10) s
//!   after it became ready and got no request (goal ≤ 20 MiB).
//! - **ingest**: `BENCH_MESSAGES` (100,000) distinct web-chat messages posted by
//!   `BENCH_CLIENTS` (50) concurrent keep-alive clients over `BENCH_SESSIONS` (1,000)
//!   sessions; acknowledged messages per second, and p50 / p99 / max latency of a request
//!   (goal ≥ 10,000 msg/s, p99 ≤ 10 ms). Then the RSS after the ingest.
//! - **re-ingest**: the same messages again; every answer must be 200 `duplicate` and the
//!   stored count (`gateway_messages_ingested_total`, and the paged listing) must not move.
//! - **kill -9**: the ingest again on a fresh data directory, SIGKILL once
//!   `BENCH_KILL_AFTER` (30% of the messages) were acknowledged, restart, page through
//!   everything stored: acked before the kill, stored after the restart, missing (must be
//!   0) and duplicated (must be 0).
//!
//! Performance goals that are missed are reported as `GOAL MISSED`; the process exits
//! non-zero only when a correctness check (lost, duplicated or re-stored messages) fails.
//! The load generator runs in this process, so on a small machine it takes CPU from the
//! gateway it measures.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::Gateway;
use common::load::{self, LoadSpec, Progress, ms};

struct Settings {
    starts: usize,
    idle: Duration,
    messages: u64,
    clients: usize,
    sessions: u64,
    kill_after: u64,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Self {
        let messages = env_or("BENCH_MESSAGES", 100_000u64).max(1);
        Self {
            starts: env_or("BENCH_STARTS", 10usize).max(1),
            idle: Duration::from_secs(env_or("BENCH_IDLE_SECS", 10u64)),
            messages,
            clients: env_or("BENCH_CLIENTS", 50usize).max(1),
            sessions: env_or("BENCH_SESSIONS", 1_000u64).max(1),
            kill_after: env_or("BENCH_KILL_AFTER", (messages * 3 / 10).max(1)),
        }
    }
}

/// `ok` or `GOAL MISSED`.
fn goal(met: bool) -> &'static str {
    if met { "ok" } else { "GOAL MISSED" }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB ({kib} KiB)", kib as f64 / 1024.0)
}

/// User plus system CPU time of the gateway process so far, from /proc.
fn cpu_seconds(gateway: &Gateway) -> f64 {
    let stat =
        std::fs::read_to_string(format!("/proc/{}/stat", gateway.child.id())).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
    });
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / per_second.max(1.0)
}

/// Group commits of the store, from /metrics.
async fn store_figures(base: &str) -> String {
    let commits = load::metric(base, "gateway_store_group_size_count").await;
    let writes = load::metric(base, "gateway_store_group_size_sum").await;
    let seconds = load::metric(base, "gateway_store_commit_duration_seconds_sum").await;
    format!(
        "store: {commits:.0} group commits, {:.1} writes per group, {:.2} ms per commit",
        writes / commits.max(1.0),
        1000.0 * seconds / commits.max(1.0)
    )
}

const LOAD_LIMIT: Duration = Duration::from_secs(600);
const LIST_LIMIT: Duration = Duration::from_secs(300);

fn main() {
    let settings = Settings::from_env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut failures: Vec<String> = Vec::new();
    println!(
        "moltbot-gateway bench: {} messages, {} clients, {} sessions, {} CPUs",
        settings.messages,
        settings.clients,
        settings.sessions,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // Start → /readyz 200, each on a fresh data directory.
    let mut starts = Vec::with_capacity(settings.starts);
    for _ in 0..settings.starts {
        let dir = tempfile::tempdir().unwrap();
        let config = common::write_config(dir.path(), "");
        let (gateway, took) = Gateway::start(&config);
        starts.push(took);
        drop(gateway);
    }
    starts.sort_unstable();
    let median = starts[starts.len() / 2];
    println!(
        "start -> /readyz 200 ({} runs): min {}, median {}, max {}  [goal <= 100 ms: {}]",
        starts.len(),
        ms(starts[0]),
        ms(median),
        ms(*starts.last().unwrap()),
        goal(median <= Duration::from_millis(100))
    );

    // Idle RSS, then ingest and re-ingest on the same gateway.
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(dir.path(), "");
    let (gateway, _) = Gateway::start(&config);
    let base = gateway.url("");
    std::thread::sleep(settings.idle);
    let idle = gateway.rss_kib();
    println!(
        "idle RSS {} s after start (web chat on): {}  [goal <= 20 MiB: {}]",
        settings.idle.as_secs(),
        mib(idle),
        goal(idle <= 20 * 1024)
    );

    let spec = LoadSpec::range(
        base.clone(),
        0..settings.messages,
        settings.clients,
        settings.sessions,
    )
    .time_limit(LOAD_LIMIT);
    let cpu_before = cpu_seconds(&gateway);
    let first = rt.block_on(load::run_to_end(&spec));
    let cpu = cpu_seconds(&gateway) - cpu_before;
    let p99 = first.percentile(99.0);
    let rate = first.throughput();
    println!(
        "ingest {} new messages, {} clients, {} sessions: {:.0} msg/s in {:.2} s; latency p50 {}, p99 {}, max {}; \
         201 created {}, errors {}  [goal >= 10000 msg/s: {}; p99 <= 10 ms: {}]",
        settings.messages,
        settings.clients,
        settings.sessions,
        rate,
        first.elapsed.as_secs_f64(),
        ms(first.percentile(50.0)),
        ms(p99),
        ms(first.max_latency()),
        first.created(),
        first.errors(),
        goal(rate >= 10_000.0),
        goal(p99 <= Duration::from_millis(10))
    );
    if first.created() as u64 != settings.messages {
        failures.push(format!(
            "ingest: {} of {} created; {}",
            first.created(),
            settings.messages,
            first.summary()
        ));
    }
    println!(
        "  gateway CPU during the ingest: {:.2} s ({:.0}% of one core); {}",
        cpu,
        100.0 * cpu / first.elapsed.as_secs_f64(),
        rt.block_on(store_figures(&base))
    );
    let rss = gateway.rss_kib();
    println!("RSS after the ingest: {}", mib(rss));
    let ingested = rt.block_on(load::metric(&base, "gateway_messages_ingested_total"));

    let second = rt.block_on(load::run_to_end(&spec));
    let ingested_after = rt.block_on(load::metric(&base, "gateway_messages_ingested_total"));
    let deduplicated = rt.block_on(load::metric(&base, "gateway_events_deduplicated_total"));
    let stored = rt.block_on(load::stored_messages(&base, LIST_LIMIT));
    println!(
        "re-ingest the same {}: {:.0} msg/s; latency p50 {}, p99 {}, max {}; 200 duplicate {} of {}, errors {}; \
         stored before {} after {} (listed {}, {} duplicated), deduplicated {}",
        settings.messages,
        second.throughput(),
        ms(second.percentile(50.0)),
        ms(second.percentile(99.0)),
        ms(second.max_latency()),
        second.duplicates(),
        settings.messages,
        second.errors(),
        ingested,
        ingested_after,
        stored.provider_ids.len(),
        stored.duplicated().len(),
        deduplicated
    );
    if second.duplicates() as u64 != settings.messages {
        failures.push(format!(
            "re-ingest: {} of {} were 200 duplicate; {}",
            second.duplicates(),
            settings.messages,
            second.summary()
        ));
    }
    if ingested_after != ingested
        || stored.provider_ids.len() as u64 != settings.messages
        || !stored.duplicated().is_empty()
    {
        failures.push(format!(
            "re-ingest changed what is stored: ingested {ingested} -> {ingested_after}, listed {}",
            stored.provider_ids.len()
        ));
    }
    drop(gateway);

    // kill -9 during an ingest, restart, compare.
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(dir.path(), "");
    let (mut gateway, _) = Gateway::start(&config);
    let spec = LoadSpec::range(
        gateway.url(""),
        0..settings.messages,
        settings.clients,
        settings.sessions,
    )
    .time_limit(LOAD_LIMIT);
    let progress = Progress::new();
    let report = rt.block_on(async {
        let killer = async {
            progress
                .wait_for_acks(settings.kill_after, LOAD_LIMIT)
                .await;
            gateway.signal(libc::SIGKILL);
        };
        tokio::join!(load::run(&spec, progress.clone()), killer).0
    });
    gateway.wait(Duration::from_secs(10));
    drop(gateway);
    let (gateway, _) = Gateway::start(&config);
    let stored = rt.block_on(load::stored_messages(&gateway.url(""), LIST_LIMIT));
    let acked = report.acked_numbers();
    let numbers = stored.numbers();
    let missing = acked.difference(&numbers).count();
    let duplicated = stored.duplicated().len();
    let unanswered = report.unanswered_numbers();
    let phantom = numbers
        .iter()
        .filter(|n| !acked.contains(n) && !unanswered.contains(n))
        .count();
    println!(
        "kill -9 after {} acks ({} clients): acked before kill {}, stored after restart {}, missing {}, duplicated {}, \
         in flight at the kill {} (of them stored {}), stored but never sent {}",
        settings.kill_after,
        settings.clients,
        acked.len(),
        numbers.len(),
        missing,
        duplicated,
        unanswered.len(),
        numbers.iter().filter(|n| unanswered.contains(n)).count(),
        phantom
    );
    if missing != 0 || duplicated != 0 || phantom != 0 || stored.without_provider_id != 0 {
        failures.push(format!(
            "kill -9: missing {missing}, duplicated {duplicated}, phantom {phantom}"
        ));
    }
    drop(gateway);

    if failures.is_empty() {
        println!("all correctness checks passed");
    } else {
        for failure in &failures {
            eprintln!("FAILED: {failure}");
        }
        std::process::exit(1);
    }
}
