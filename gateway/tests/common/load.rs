//! An async load generator for `POST /v1/webchat/messages`, and readers of what the
//! gateway stored, shared by the crash tests and the bench.
//!
//! [`run`] posts a list of message numbers (bodies from [`webchat_body`]) from `clients`
//! concurrent tasks over keep-alive connections; each task takes the next number from a
//! shared counter, so every number is posted at most once. A task stops after its first
//! transport failure (the server went away) or a 503 (it is draining); every loop is
//! bounded by the list's length and by the spec's time limit. [`Progress`] is live while
//! the load runs, so another task can act once enough acks have arrived.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{TOKEN, webchat_body};

/// What to post, where, and how hard.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub base_url: String,
    /// The message numbers to post, in the order they are handed out.
    pub numbers: Arc<[u64]>,
    pub clients: usize,
    /// Message `n` goes to session `s{n % sessions}`.
    pub sessions: u64,
    /// No request is started after this much time.
    pub time_limit: Duration,
    /// One request (connect, send, read the answer) fails after this long.
    pub request_timeout: Duration,
}

impl LoadSpec {
    pub fn range(
        base_url: impl Into<String>,
        numbers: Range<u64>,
        clients: usize,
        sessions: u64,
    ) -> Self {
        Self::list(base_url, numbers.collect(), clients, sessions)
    }

    pub fn list(
        base_url: impl Into<String>,
        numbers: Vec<u64>,
        clients: usize,
        sessions: u64,
    ) -> Self {
        assert!(
            clients > 0 && sessions > 0,
            "clients and sessions must be positive"
        );
        Self {
            base_url: base_url.into().trim_end_matches('/').to_string(),
            numbers: numbers.into(),
            clients,
            sessions,
            time_limit: Duration::from_secs(120),
            request_timeout: Duration::from_secs(10),
        }
    }

    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = limit;
        self
    }
}

/// Counters that move while a load runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// 2xx answers so far.
    pub acked: AtomicU64,
    /// Answers of any status so far.
    pub answered: AtomicU64,
    /// Requests that got no answer (connection refused, reset, timeout).
    pub failed: AtomicU64,
    /// Set to make every task stop issuing requests.
    pub stop: AtomicBool,
    /// Set by [`run`] once every task has ended.
    pub finished: AtomicBool,
}

impl Progress {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
    }

    /// Waits until at least `acks` requests were acknowledged: true when they were, false
    /// when the load ended first or `timeout` passed.
    pub async fn wait_for_acks(&self, acks: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.acked() >= acks {
                return true;
            }
            if self.is_finished() || Instant::now() >= deadline {
                return self.acked() >= acks;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// A 2xx answer.
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    pub n: u64,
    pub status: u16,
    /// The `duplicate` field of the answer.
    pub duplicate: bool,
    pub latency: Duration,
    /// When the answer had been read.
    pub at: Instant,
}

impl Ack {
    /// 201 with `duplicate: false`: stored by this request.
    pub fn is_created(&self) -> bool {
        self.status == 201 && !self.duplicate
    }

    /// 200 with `duplicate: true`: stored before.
    pub fn is_duplicate(&self) -> bool {
        self.status == 200 && self.duplicate
    }
}

/// A non-2xx answer.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub n: u64,
    pub status: u16,
    /// The `error` code of the body, when it had one.
    pub code: Option<String>,
    pub at: Instant,
}

/// A request that got no answer; whether the server stored it is unknown.
#[derive(Clone, Debug)]
pub struct TransportFailure {
    pub n: u64,
    pub connect: bool,
    pub error: String,
    pub at: Instant,
}

#[derive(Debug)]
pub struct LoadReport {
    pub acks: Vec<Ack>,
    pub refusals: Vec<Refusal>,
    pub failures: Vec<TransportFailure>,
    /// Numbers no task took (the load stopped before them).
    pub not_sent: usize,
    pub started: Instant,
    pub elapsed: Duration,
    /// Latency of every answered request, sorted.
    pub latencies: Vec<Duration>,
}

impl LoadReport {
    pub fn acked_numbers(&self) -> BTreeSet<u64> {
        self.acks.iter().map(|a| a.n).collect()
    }

    /// Numbers whose request got no answer: they may or may not be stored.
    pub fn unanswered_numbers(&self) -> BTreeSet<u64> {
        self.failures.iter().map(|f| f.n).collect()
    }

    pub fn created(&self) -> usize {
        self.acks.iter().filter(|a| a.is_created()).count()
    }

    pub fn duplicates(&self) -> usize {
        self.acks.iter().filter(|a| a.is_duplicate()).count()
    }

    /// 2xx answers whose status and `duplicate` field disagree.
    pub fn inconsistent(&self) -> usize {
        self.acks
            .iter()
            .filter(|a| !a.is_created() && !a.is_duplicate())
            .count()
    }

    /// Refusals plus transport failures.
    pub fn errors(&self) -> usize {
        self.refusals.len() + self.failures.len()
    }

    /// Acknowledged messages per second.
    pub fn throughput(&self) -> f64 {
        self.acks.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `p`-th percentile (0..=100) of answered requests' latency.
    pub fn percentile(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }

    pub fn max_latency(&self) -> Duration {
        self.latencies.last().copied().unwrap_or_default()
    }

    pub fn summary(&self) -> String {
        format!(
            "{} acked ({} created, {} duplicate, {} inconsistent), {} refused, {} unanswered, {} not sent in {:.2} s \
             ({:.0} msg/s); latency p50 {} p99 {} max {}",
            self.acks.len(),
            self.created(),
            self.duplicates(),
            self.inconsistent(),
            self.refusals.len(),
            self.failures.len(),
            self.not_sent,
            self.elapsed.as_secs_f64(),
            self.throughput(),
            ms(self.percentile(50.0)),
            ms(self.percentile(99.0)),
            ms(self.max_latency()),
        )
    }
}

/// Nearest-rank percentile of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `1.23 ms`.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

pub fn client(pool: usize, request_timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(pool)
        .connect_timeout(Duration::from_secs(2))
        .timeout(request_timeout)
        .tcp_nodelay(true)
        .build()
        .expect("build the HTTP client")
}

#[derive(Default)]
struct TaskLog {
    acks: Vec<Ack>,
    refusals: Vec<Refusal>,
    failures: Vec<TransportFailure>,
}

/// Posts every number of `spec` (or until stopped) and reports what each request got.
pub async fn run(spec: &LoadSpec, progress: Arc<Progress>) -> LoadReport {
    let client = client(spec.clients, spec.request_timeout);
    let url: Arc<str> = format!("{}/v1/webchat/messages", spec.base_url).into();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + spec.time_limit;
    let tasks: Vec<_> = (0..spec.clients)
        .map(|_| {
            let (client, url, next, progress) =
                (client.clone(), url.clone(), next.clone(), progress.clone());
            let (numbers, sessions) = (spec.numbers.clone(), spec.sessions);
            tokio::spawn(post_loop(
                client, url, numbers, sessions, next, progress, deadline,
            ))
        })
        .collect();
    let mut log = TaskLog::default();
    for task in tasks {
        let part = task.await.expect("a load task panicked");
        log.acks.extend(part.acks);
        log.refusals.extend(part.refusals);
        log.failures.extend(part.failures);
    }
    let elapsed = started.elapsed();
    progress.finished.store(true, Ordering::SeqCst);
    let mut latencies: Vec<Duration> = log.acks.iter().map(|a| a.latency).collect();
    latencies.sort_unstable();
    LoadReport {
        not_sent: spec
            .numbers
            .len()
            .saturating_sub(next.load(Ordering::SeqCst)),
        acks: log.acks,
        refusals: log.refusals,
        failures: log.failures,
        started,
        elapsed,
        latencies,
    }
}

/// Posts with a fresh [`Progress`].
pub async fn run_to_end(spec: &LoadSpec) -> LoadReport {
    run(spec, Progress::new()).await
}

async fn post_loop(
    client: reqwest::Client,
    url: Arc<str>,
    numbers: Arc<[u64]>,
    sessions: u64,
    next: Arc<AtomicUsize>,
    progress: Arc<Progress>,
    deadline: Instant,
) -> TaskLog {
    let mut log = TaskLog::default();
    // At most one iteration per number.
    for _ in 0..numbers.len() {
        if progress.stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
            break;
        }
        let i = next.fetch_add(1, Ordering::SeqCst);
        let Some(&n) = numbers.get(i) else { break };
        let sent = Instant::now();
        let answer = client
            .post(&*url)
            .bearer_auth(TOKEN)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(webchat_body(n, sessions))
            .send()
            .await;
        let answer = match answer {
            Ok(response) => {
                let status = response.status().as_u16();
                response.bytes().await.map(|body| (status, body))
            }
            Err(e) => Err(e),
        };
        let at = Instant::now();
        match answer {
            Ok((status, body)) => {
                progress.answered.fetch_add(1, Ordering::SeqCst);
                let json: Option<Value> = serde_json::from_slice(&body).ok();
                if (200..300).contains(&status) {
                    let duplicate = json
                        .as_ref()
                        .and_then(|j| j["duplicate"].as_bool())
                        .unwrap_or(false);
                    log.acks.push(Ack {
                        n,
                        status,
                        duplicate,
                        latency: at - sent,
                        at,
                    });
                    progress.acked.fetch_add(1, Ordering::SeqCst);
                } else {
                    let code = json
                        .as_ref()
                        .and_then(|j| j["error"].as_str())
                        .map(str::to_string);
                    log.refusals.push(Refusal {
                        n,
                        status,
                        code,
                        at,
                    });
                    if status == 503 {
                        // Draining: further requests would only be refused too.
                        break;
                    }
                }
            }
            Err(e) => {
                progress.failed.fetch_add(1, Ordering::SeqCst);
                log.failures.push(TransportFailure {
                    n,
                    connect: e.is_connect(),
                    error: error_chain(&e),
                    at,
                });
                // The server is gone or going: stop rather than hammer a closed port.
                break;
            }
        }
    }
    log
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Every message the gateway lists, read page by page.
#[derive(Debug, Default)]
pub struct Stored {
    pub conversations: usize,
    /// The `provider_message_id` of every listed message (web chat: the client's `m{n}`).
    pub provider_ids: Vec<String>,
    /// Listed messages without a provider message id.
    pub without_provider_id: usize,
}

impl Stored {
    /// How often each message number is stored.
    pub fn counts(&self) -> BTreeMap<u64, usize> {
        let mut counts = BTreeMap::new();
        for id in &self.provider_ids {
            let n = number_of(id)
                .unwrap_or_else(|| panic!("stored provider_message_id {id:?} is not m<number>"));
            *counts.entry(n).or_insert(0) += 1;
        }
        counts
    }

    pub fn numbers(&self) -> BTreeSet<u64> {
        self.counts().into_keys().collect()
    }

    /// Provider ids listed more than once, with their count.
    pub fn duplicated(&self) -> Vec<(String, usize)> {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for id in &self.provider_ids {
            *counts.entry(id).or_insert(0) += 1;
        }
        counts
            .into_iter()
            .filter(|&(_, c)| c > 1)
            .map(|(id, c)| (id.to_string(), c))
            .collect()
    }
}

/// `m123` → 123.
pub fn number_of(provider_id: &str) -> Option<u64> {
    provider_id.strip_prefix('m')?.parse().ok()
}

/// Most pages one listing reads before giving up.
const MAX_PAGES: usize = 1_000_000;

/// Pages through every conversation and every message of each (200 a page) and returns
/// what is stored. Panics on any error answer or when `time_limit` runs out.
pub async fn stored_messages(base_url: &str, time_limit: Duration) -> Stored {
    let client = client(4, Duration::from_secs(30));
    let deadline = Instant::now() + time_limit;
    let base_url = base_url.trim_end_matches('/');
    let mut conversation_ids = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0.. {
        assert!(
            page < MAX_PAGES,
            "more than {MAX_PAGES} pages of conversations"
        );
        let json = get_page(
            &client,
            &format!("{base_url}/v1/conversations"),
            cursor.as_deref(),
            deadline,
        )
        .await;
        for conversation in items(&json) {
            let id = conversation["id"]
                .as_str()
                .expect("conversation id")
                .to_string();
            conversation_ids.push(id);
        }
        cursor = json["next_cursor"].as_str().map(str::to_string);
        if cursor.is_none() {
            break;
        }
    }
    let unique: BTreeSet<&String> = conversation_ids.iter().collect();
    assert_eq!(
        unique.len(),
        conversation_ids.len(),
        "a conversation is listed twice"
    );

    let mut stored = Stored {
        conversations: conversation_ids.len(),
        ..Stored::default()
    };
    for id in &conversation_ids {
        let url = format!("{base_url}/v1/conversations/{id}/messages");
        let mut cursor: Option<String> = None;
        for page in 0.. {
            assert!(
                page < MAX_PAGES,
                "more than {MAX_PAGES} pages of messages in {id}"
            );
            let json = get_page(&client, &url, cursor.as_deref(), deadline).await;
            for message in items(&json) {
                match message["provider_message_id"].as_str() {
                    Some(p) => stored.provider_ids.push(p.to_string()),
                    None => stored.without_provider_id += 1,
                }
            }
            cursor = json["next_cursor"].as_str().map(str::to_string);
            if cursor.is_none() {
                break;
            }
        }
    }
    stored
}

fn items(page: &Value) -> &[Value] {
    page["items"]
        .as_array()
        .map(Vec::as_slice)
        .expect("a page has items")
}

async fn get_page(
    client: &reqwest::Client,
    url: &str,
    cursor: Option<&str>,
    deadline: Instant,
) -> Value {
    assert!(
        Instant::now() < deadline,
        "listing what is stored took too long (at {url})"
    );
    let mut query = vec![("limit", "200")];
    if let Some(cursor) = cursor {
        query.push(("cursor", cursor));
    }
    let response = client
        .get(url)
        .bearer_auth(TOKEN)
        .query(&query)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {}", error_chain(&e)));
    let status = response.status();
    let body = response
        .text()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {}", error_chain(&e)));
    assert!(status.is_success(), "GET {url} answered {status}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {body}"))
}

/// The sum of every series of metric `name` (e.g. `gateway_messages_ingested_total`) on
/// `/metrics`; 0 when it has no series yet.
pub async fn metric(base_url: &str, name: &str) -> f64 {
    let url = format!("{}/metrics", base_url.trim_end_matches('/'));
    let response = client(1, Duration::from_secs(10))
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {}", error_chain(&e)));
    assert!(
        response.status().is_success(),
        "GET {url} answered {}",
        response.status()
    );
    let text = response.text().await.expect("read /metrics");
    sum_metric(&text, name)
}

/// Sums the samples of `name` in Prometheus / OpenMetrics text.
pub fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = if rest.starts_with('{') {
                rest.rsplit_once('}')?.1
            } else if rest.starts_with(' ') {
                rest
            } else {
                return None;
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}
