//! Telegram and Pi figures of the real `moltbot-gateway` binary (release build) against the
//! fake Bot API and the fake model from `moltbot-fakes`, both in this process:
//!
//! ```text
//! cargo bench -p moltbot-gateway --bench telegram
//! ```
//!
//! - **replies**: `BENCH_USERS` (100) people write DMs to Pi, with a model that answers at
//!   once, for `BENCH_SECS` (10) s after a 2 s warm-up, in two shapes:
//!   - *flat out*: each person writes again as soon as Pi answered. Replies per second is
//!     the gateway's capacity; the latency is mostly the queue of the 99 others.
//!   - *at the goal rate*: each person writes every `users / BENCH_RATE` s (BENCH_RATE
//!     1,000 replies/s in all, spread evenly), or as soon as answered when later than that.
//!     The replies per second say whether the gateway keeps up with 1,000 a second, and
//!     the latency is its overhead at that load (goals ≥ 1,000 replies/s, p99 ≤ 50 ms).
//!     `BENCH_ONLY_RATE=1` runs this shape alone; `BENCH_RATE=600` shows the overhead
//!     below saturation.
//!
//!   Latency is the time from the update being available to the bot's `sendMessage`
//!   arriving, p50 / p99 / max: all of it is gateway overhead, since the model takes no
//!   time. Telegram's own limits (1 msg/s per chat, 30/s overall) and the daily token
//!   budget are lifted in this config, to measure the gateway, not Telegram or the budget.
//!   The fakes run in the bench process and share the 2 cores with the gateway; their CPU
//!   is printed beside the gateway's, and then how busy the whole machine was over the
//!   window, with the share the hypervisor gave to other machines (`steal` in
//!   `/proc/stat`): in the slow spells steal was 1–3% in most runs and up to 11% in single
//!   50 ms windows. Last come the store's commits and syncs over the window, from the
//!   gateway's `/metrics` (how many, their mean time, and the histogram bucket 99% of the
//!   syncs fell within), which tell a slow disk from a slow CPU: in three runs of one hour,
//!   p99 38 and 45 ms came with 7,500–9,100 commits of 0.48–0.59 ms and syncs of 1.1–1.2 ms
//!   (99% within 6.4 ms), p99 96 ms with 5,400 commits of 0.83 ms and syncs of 1.6 ms (99%
//!   within 12.8 ms), at the same CPU per reply. With migrations 0007 and 0008 the p99 at
//!   1,000/s was 17–40 ms in 20 of 22 runs of a quiet hour (the other two: single stalls of
//!   150–270 ms), 28.6–50.0 ms in 13 of 15 runs of an earlier spell (fakes 0.34–0.39
//!   cores), 50–77 ms in 7 of 10 of a slower hour and 56–128 ms in all 7 of the slowest. In
//!   the quiet hour no commit took longer than 12.8 ms and no sync longer than 25.6 ms
//!   (`/metrics` histograms).
//!
//!   Where the time goes: the poll cycle (a poll moves its offset only once the updates it
//!   brought are durable); the commit of the update with its queued run, from which the
//!   run starts without waiting for that commit's sync; the run's start, read on the
//!   writer's connection; the model call; then the run's outcome with the reply and its
//!   outbox row (the first send attempt recorded with them), a commit plus a sync of the
//!   WAL, which also covers the update (the syncer overlaps the fsync with the writer's
//!   next group). The send is handed to the sender with that durable write, so nothing is
//!   read back before `sendMessage`. That is p50 6–9 ms / p99 10–23 ms (once 64 ms, in a
//!   host stall) at 300/s and p50 9–16 ms / p99 16–41 ms at 600/s, by how busy the host
//!   is. Starting runs at the commit rather than the sync (while nobody watches the inbox
//!   live) took about 2 ms off p50 and p99 at 600/s (four interleaved pairs); at 1,000/s
//!   the host's noise hid it (better p50 in 7 of 11 pairs). At 1,000/s the gateway needs
//!   1.04–1.2 cores and the fakes 0.28–0.44, so queueing sets the tail, and it depends on
//!   what else the host runs: the same binary gives p99 26–48 ms in a quiet spell and
//!   52–197 ms when every operation costs 10–15% more CPU (the gateway's and the fakes'
//!   CPU per reply rise together). Most of the gateway's CPU is per commit, per
//!   wake-up and per request rather than per reply: CPU per reply falls from 2.8–3.2 ms at
//!   300/s to 1.1 ms at 1,000/s and 0.7–1.0 ms flat out as groups grow: at 300–600/s the
//!   syncer and the checkpointer each run about 1,000 times a second (groups of 1–2
//!   writes), at 1,000/s about 290 times (groups of 8). A reply writes about 10 WAL pages,
//!   most of them leaves of per-conversation indexes (messages by conversation and by
//!   provider id, runs, the outbox) and of the dedupe key; 1 or 2 KiB pages instead of
//!   4 KiB changed nothing. In a profile at 1,000/s the writer's thread is 36% of the gateway's CPU (a third of it
//!   `COMMIT`, mostly the WAL's `pwrite`s), the agent's runs 20% (serialising the model
//!   request, the conversation's last 200 messages, alone 7%), the checkpointer 16%, the
//!   runtime's scheduling 7%, HTTP connections 6%, the sender 4.5%, the syncer 4%.
//!   Checkpointing after every sync stays: spacing checkpoints out by 10–20 ms saved 5% of
//!   the CPU here but doubled the ingest bench's p99 (24 → 42–51 ms), because the writer's
//!   own checkpoint, inside a commit, then finds more to copy: commit and sync p99 went
//!   from 13 to 26 ms. For the same reason the writer's threshold stays at 4,000 frames:
//!   at 1,000 frames commit p99 was 51 ms, at 16,000 no better than 4,000; a `RESTART`
//!   checkpoint from the checkpointer instead held the writer up to 1.1 s while readers
//!   finished. Writing the CHECK constraints' value lists as chains of `=` (migration
//!   0007: an `IN` list of more than two values built a temporary b-tree per insert) and
//!   bumping the conversation from the writer rather than a trigger (0008: the trigger cost
//!   a statement journal per message insert) took about 2–3% off the CPU per reply (lower
//!   in 10 of 12 interleaved pairs). The record of a delivery's end (its last part sent, or
//!   a change made), which is on nobody's path, waits up to 5 ms to share the next group's
//!   commit: 15–35% fewer commits in most runs and CPU per reply lower in 6 of 7 interleaved
//!   pairs (by 1–7%), the p99 within the noise (better in 4 of 7). With it and the partial
//!   `outbox_due` (migration 0009) the p99 was 25–44 ms in 9 of 10 runs of a quiet hour
//!   (the tenth 53 ms) and lower than before both in 3 of 3 pairs. Running the checkpointer
//!   at nice 10 took about a third off the p99 at 1,000/s (9 of 11 pairs) but is not done:
//!   flat out it then fell behind and the WAL grew from 21 to 41 MiB in 8 s, where it stays
//!   at 20 MiB; bounded (past 4,000 frames the writer waits for the checkpoint lock and
//!   copies the rest) it stayed at 17 MiB, but in a later hour it was worse than normal
//!   priority in 5 of 5 pairs. Waiting 0.5–2 ms
//!   for more writes before a small group commits cut the CPU at 300/s by 15–37% (0.98 →
//!   0.62 cores at 2 ms) for 5–11 ms more p50, and at 1,000/s saved 3.5% but raised p50
//!   and p99: not done either, though a per-tenant setting for quiet pods could use it.
//!   Thin LTO with one codegen unit (the release profile) took about 3% off the CPU per
//!   reply in runs with equal sync times. mimalloc lowered the p99 in 8 of 8 pairs, but
//!   its arenas take transparent huge pages, which took the idle RSS from 14 to 29 MiB;
//!   without them it was better in 7 of 14 pairs, so the system allocator stays.
//! - **slow model**: the same people write once each to a 2 s model with
//!   `agent.max_concurrent_runs` = `BENCH_LIMIT` (32); the highest number of model calls
//!   in flight must equal the limit, and the burst takes about ⌈users / limit⌉ × 2 s.
//!
//! SIGKILL and SIGTERM mid-burst (30 DMs, 2 s model, restart: 30/30 answered once) are the
//! tests `sigkill_mid_burst_…` and `sigterm_mid_burst_…` in `tests/telegram.rs`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::load::sum_metric;
use common::{Gateway, cpu_time, write_config};
use moltbot_fakes::openai::{FakeOpenAi, FakeOpenAiConfig};
use moltbot_fakes::telegram::{ChatSpec, FakeTelegram, FakeTelegramConfig, UserSpec};
use tokio::sync::Notify;

const BOT: &str = "123456:BENCH-token";

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(
    dir: &std::path::Path,
    telegram: &FakeTelegram,
    model: &FakeOpenAi,
    limit: u64,
) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            "connections:\n  - type: telegram\n    name: tg\n    token: \"{BOT}\"\n    api_base: {}\n    poll_timeout: 1s\n    dm_policy: open\n    rate_limit:\n      per_chat_per_second: 100000\n      global_per_second: 100000\n\
             store:\n  read_connections: 16\nagent:\n  default_mode: autopilot\n  tokens_per_day: 1000000000000\n  max_concurrent_runs: {limit}\n  model:\n    base_url: {}\n    model: fake-pi\n    max_retries: 0\n",
            telegram.base_url(),
            model.base_url()
        ),
    )
}

async fn start(config: std::path::PathBuf) -> Gateway {
    tokio::task::spawn_blocking(move || Gateway::start(&config).0)
        .await
        .unwrap()
}

/// The machine's CPU time so far from `/proc/stat`, in clock ticks: all of it, the idle
/// part (idle and I/O wait) and the part the hypervisor gave to other machines (steal).
fn host_cpu() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = (stat.lines().next().unwrap_or_default().split_whitespace())
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    let at = |i: usize| ticks.get(i).copied().unwrap_or(0);
    (ticks.iter().sum(), at(3) + at(4), at(7))
}

/// The store's commits and syncs so far, from the gateway's `/metrics`: how many, their
/// total seconds, and the syncs' cumulative histogram buckets (upper bound, count).
struct StoreTimes {
    commits: (f64, f64),
    syncs: (f64, f64),
    sync_buckets: Vec<(f64, f64)>,
}

impl StoreTimes {
    async fn read(gateway: &Gateway) -> StoreTimes {
        let response = reqwest::get(gateway.url("/metrics")).await.unwrap();
        let text = response.text().await.unwrap();
        let pair = |name: &str| {
            let metric = |part: &str| sum_metric(&text, &format!("{name}_{part}"));
            (metric("count"), metric("sum"))
        };
        let sync_buckets = (text.lines())
            .filter_map(|line| {
                let rest = line.strip_prefix("gateway_store_sync_duration_seconds_bucket{le=\"")?;
                let (bound, count) = rest.split_once("\"} ")?;
                Some((
                    bound.parse().unwrap_or(f64::INFINITY),
                    count.trim().parse().ok()?,
                ))
            })
            .collect();
        StoreTimes {
            commits: pair("gateway_store_commit_duration_seconds"),
            syncs: pair("gateway_store_sync_duration_seconds"),
            sync_buckets,
        }
    }

    /// Commits and syncs since `before`: where a slow run's time went, the disk's syncs or
    /// the CPU's commits.
    fn since(&self, before: &StoreTimes) -> String {
        let delta = |now: (f64, f64), then: (f64, f64)| (now.0 - then.0, now.1 - then.1);
        let (commits, commit_secs) = delta(self.commits, before.commits);
        let (syncs, sync_secs) = delta(self.syncs, before.syncs);
        let p99 = (self.sync_buckets.iter().zip(&before.sync_buckets))
            .find(|((_, now), (_, then))| now - then >= 0.99 * syncs)
            .map_or(f64::INFINITY, |((bound, _), _)| *bound);
        format!(
            "store: {commits:.0} commits, {:.2} ms each; {syncs:.0} syncs, {:.2} ms each, 99% within {:.1} ms",
            1e3 * commit_secs / commits.max(1.0),
            1e3 * sync_secs / syncs.max(1.0),
            1e3 * p99,
        )
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// What the people are waiting for: per chat, when their message became available.
#[derive(Default)]
struct Waiting {
    since: HashMap<i64, Instant>,
    latencies: Vec<Duration>,
    replies: u64,
}

/// One run of the replies figure; with `period`, each person writes at most once per period.
async fn replies(users: i64, period: Option<Duration>, warmup: Duration, window: Duration) {
    let telegram = FakeTelegram::start(FakeTelegramConfig::default())
        .await
        .unwrap();
    telegram.add_bot(BOT, "pi_bench_bot");
    let model = FakeOpenAi::start(FakeOpenAiConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = start(config(dir.path(), &telegram, &model, 256)).await;
    let waiting = Arc::new(Mutex::new(Waiting::default()));
    let answered: Arc<Vec<Notify>> = Arc::new((0..=users).map(|_| Notify::new()).collect());
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let observer = {
        let (telegram, waiting, answered, measuring) = (
            telegram.clone(),
            waiting.clone(),
            answered.clone(),
            measuring.clone(),
        );
        tokio::spawn(async move {
            let mut seen = 0;
            loop {
                let new = telegram.sent_after(BOT, seen, Duration::from_secs(5)).await;
                let now = Instant::now();
                seen += new.len();
                let mut waiting = waiting.lock().unwrap();
                for message in new {
                    if let Some(since) = waiting.since.remove(&message.chat_id)
                        && measuring.load(std::sync::atomic::Ordering::Relaxed)
                    {
                        waiting.latencies.push(now - since);
                        waiting.replies += 1;
                    }
                    answered[message.chat_id as usize].notify_one();
                }
            }
        })
    };
    let people: Vec<_> = (1..=users)
        .map(|person| {
            let (telegram, waiting, answered) =
                (telegram.clone(), waiting.clone(), answered.clone());
            tokio::spawn(async move {
                let user = UserSpec::new(person, "Person");
                let chat = ChatSpec::private(person);
                // Spread evenly over the period, so the load is steady rather than in waves.
                let start = tokio::time::Instant::now()
                    + period.unwrap_or_default() * person as u32 / users as u32;
                for n in 0.. {
                    if let Some(period) = period {
                        tokio::time::sleep_until(start + period * n).await;
                    }
                    waiting.lock().unwrap().since.insert(person, Instant::now());
                    telegram.user_sends(BOT, &chat, &user, &format!("message {n}"));
                    answered[person as usize].notified().await;
                }
            })
        })
        .collect();
    tokio::time::sleep(warmup).await;
    {
        let mut w = waiting.lock().unwrap();
        w.latencies.clear();
        w.replies = 0;
    }
    measuring.store(true, std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let cpu_before = gateway.cpu_time();
    let bench_cpu_before = cpu_time(std::process::id());
    let host_before = host_cpu();
    let store_before = StoreTimes::read(&gateway).await;
    tokio::time::sleep(window).await;
    let store = StoreTimes::read(&gateway).await.since(&store_before);
    let elapsed = started.elapsed();
    let cpu = gateway.cpu_time() - cpu_before;
    let bench_cpu = cpu_time(std::process::id()) - bench_cpu_before;
    let host = host_cpu();
    let host_share = |part: u64| 100.0 * part as f64 / (host.0 - host_before.0).max(1) as f64;
    let (busy, steal) = (
        100.0 - host_share(host.1 - host_before.1),
        host_share(host.2 - host_before.2),
    );
    let (mut latencies, count) = {
        let w = waiting.lock().unwrap();
        (w.latencies.clone(), w.replies)
    };
    for person in people {
        person.abort();
    }
    observer.abort();
    // A reply that is not the model's (the budget notice, say) means the figure is not
    // the one this bench is about.
    let not_model = (telegram.sent(BOT).iter())
        .filter(|message| !message.text.starts_with("Pi here."))
        .count();
    assert_eq!(not_model, 0, "replies that are not the model's answer");
    latencies.sort();
    let rate = count as f64 / elapsed.as_secs_f64();
    let p99 = percentile(&latencies, 0.99);
    let latency = format!(
        "update → sendMessage: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    let cost = format!(
        "gateway CPU: {:.2} ms per reply, {:.2} cores; the fakes and the people beside it: {:.2} cores\n  \
         machine: {busy:.0}% busy, {steal:.1}% of it taken by the host (steal)\n  {store}",
        cpu.as_secs_f64() * 1e3 / count.max(1) as f64,
        cpu.as_secs_f64() / elapsed.as_secs_f64(),
        bench_cpu.as_secs_f64() / elapsed.as_secs_f64()
    );
    let verdict = |met: bool| if met { "" } else { "  GOAL MISSED" };
    match period {
        // Flat out, the figure is the rate; the latency is mostly queueing behind the others.
        None => println!(
            "replies, flat out: {users} users, instant model: {count} replies in {:.1} s = {rate:.0} replies/s (goal ≥ 1000){}\n  {latency}\n  {cost}",
            elapsed.as_secs_f64(),
            verdict(rate >= 1000.0),
        ),
        Some(period) => println!(
            "replies at {:.0}/s offered: {users} users, instant model: {rate:.0} replies/s\n  {latency} (goal p99 ≤ 50 ms){}\n  {cost}",
            users as f64 / period.as_secs_f64(),
            verdict(p99 <= Duration::from_millis(50)),
        ),
    }
    println!(
        "  gateway RSS after the run: {:.1} MiB",
        gateway.rss_kib() as f64 / 1024.0
    );
}

async fn slow_model(users: i64, limit: u64) {
    let telegram = FakeTelegram::start(FakeTelegramConfig::default())
        .await
        .unwrap();
    telegram.add_bot(BOT, "pi_bench_bot");
    let model = FakeOpenAi::start(FakeOpenAiConfig {
        delay: Duration::from_secs(2),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _gateway = start(config(dir.path(), &telegram, &model, limit)).await;
    let started = Instant::now();
    for person in 1..=users {
        telegram.user_sends(
            BOT,
            &ChatSpec::private(person),
            &UserSpec::new(person, "Person"),
            "hello",
        );
    }
    let sent = telegram
        .wait_for_sent(BOT, users as usize, Duration::from_secs(120))
        .await;
    let took = started.elapsed();
    let expected = (users as u64).div_ceil(limit) * 2;
    println!(
        "slow model: {users} users, 2 s model, limit {limit}: {} answered in {:.1} s (≈ {expected} s expected); most model calls at once: {}{}",
        sent.len(),
        took.as_secs_f64(),
        model.max_in_flight(),
        if model.max_in_flight() as u64 == limit.min(users as u64) {
            ""
        } else {
            "  GOAL MISSED"
        }
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let users = setting("BENCH_USERS", 100) as i64;
    let (warmup, window) = (
        Duration::from_secs(2),
        Duration::from_secs(setting("BENCH_SECS", 10)),
    );
    let only_rate = setting("BENCH_ONLY_RATE", 0) == 1;
    if !only_rate {
        replies(users, None, warmup, window).await;
    }
    let period = Duration::from_secs_f64(users as f64 / setting("BENCH_RATE", 1000) as f64);
    replies(users, Some(period), warmup, window).await;
    if !only_rate {
        slow_model(users, setting("BENCH_LIMIT", 32)).await;
    }
}
