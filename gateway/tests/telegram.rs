//! A gateway process with one Telegram connection, against the fake Bot API and the fake
//! OpenAI-compatible model from `moltbot-fakes`: Pi answering, policies, webhooks,
//! delivery retries and reconciliation, drafts, budgets, and crashes mid-burst.

mod common;

use std::time::{Duration, Instant};

use common::stream::{bearer_header, connect, next_frame};
use common::{Gateway, TOKEN, write_config};
use moltbot_fakes::openai::{FakeOpenAi, FakeOpenAiConfig, Reply, ToolCall};
use moltbot_fakes::telegram::{ChatSpec, Failure, FakeTelegram, FakeTelegramConfig, UserSpec};
use moltbot_protocol::event::ConnectionState;
use moltbot_protocol::inbox::{Direction, RunState, ServerFrame};
use serde_json::{Value, json};
use tempfile::TempDir;

const BOT: &str = "123456:TEST-token_abc";

struct Setup {
    dir: TempDir,
    telegram: FakeTelegram,
    model: FakeOpenAi,
}

impl Setup {
    async fn new(model_delay: Duration) -> Setup {
        let telegram = FakeTelegram::start(FakeTelegramConfig::default())
            .await
            .unwrap();
        telegram.add_bot(BOT, "pi_test_bot");
        let model = FakeOpenAi::start(FakeOpenAiConfig {
            delay: model_delay,
            ..Default::default()
        })
        .await
        .unwrap();
        Setup {
            dir: tempfile::tempdir().unwrap(),
            telegram,
            model,
        }
    }

    /// A gateway config: one Telegram connection (`connection` YAML is appended to it) and
    /// the agent (`agent` YAML is appended to its section).
    fn config(&self, connection: &str, agent: &str) -> std::path::PathBuf {
        self.config_timed(Timeouts::default(), connection, agent)
    }

    /// [`Setup::config`] with other Bot API timeouts.
    fn config_timed(
        &self,
        timeouts: Timeouts,
        connection: &str,
        agent: &str,
    ) -> std::path::PathBuf {
        let Timeouts { poll, request } = timeouts;
        let yaml = format!(
            "connections:\n  - type: telegram\n    name: tg\n    token: \"{BOT}\"\n    api_base: {}\n    poll_timeout: {poll}\n    request_timeout: {request}\n{connection}\
             agent:\n  default_mode: autopilot\n  model:\n    base_url: {}\n    model: fake-pi\n    timeout: 5s\n    max_retries: 0\n{agent}",
            self.telegram.base_url(),
            self.model.base_url(),
        );
        write_config(self.dir.path(), &yaml)
    }
}

/// The connection's `poll_timeout` and `request_timeout`.
struct Timeouts {
    poll: &'static str,
    request: &'static str,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            poll: "1s",
            request: "500ms",
        }
    }
}

fn ann() -> UserSpec {
    UserSpec::new(42, "Ann")
}

async fn start(config: &std::path::Path) -> Gateway {
    let config = config.to_path_buf();
    tokio::task::spawn_blocking(move || Gateway::start(&config).0)
        .await
        .unwrap()
}

async fn metrics(gateway: &Gateway) -> String {
    let response = reqwest::get(gateway.url("/metrics")).await.unwrap();
    response.text().await.unwrap()
}

async fn get(gateway: &Gateway, path: &str) -> Value {
    let response = reqwest::Client::new()
        .get(gateway.url(path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "GET {path}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

async fn post(gateway: &Gateway, path: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(gateway.url(path))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls `probe` until it answers Some, for at most 10 s.
async fn eventually<T>(
    what: &str,
    gateway: &Gateway,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}\n{}",
            gateway.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn runs(gateway: &Gateway) -> Vec<Value> {
    get(gateway, "/v1/agent/runs").await["items"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pi_answers_a_direct_message_and_the_run_is_recorded() {
    let setup = Setup::new(Duration::ZERO).await;
    let config = setup.config("    dm_policy: open\n", "");
    let gateway = start(&config).await;
    setup
        .model
        .enqueue(Reply::Text("Hello Ann, Pi here.".into()));
    setup
        .telegram
        .user_sends(BOT, &ChatSpec::private(42), &ann(), "hi Pi");
    let sent = setup
        .telegram
        .wait_for_sent(BOT, 1, Duration::from_secs(10))
        .await;
    assert_eq!(sent.len(), 1, "{}", gateway.log_text());
    assert_eq!(sent[0].chat_id, 42);
    assert_eq!(sent[0].text, "Hello Ann, Pi here.");
    // The model saw the person's words.
    let request = &setup.model.requests()[0];
    assert!(request.to_string().contains("hi Pi"), "{request}");

    let run = eventually("a succeeded run", &gateway, async || {
        runs(&gateway)
            .await
            .into_iter()
            .find(|r| r["state"] == "succeeded" && r["reply_message_id"].is_string())
    })
    .await;
    assert!(run["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(run["completion_tokens"].as_u64().unwrap() > 0);
    assert_eq!(run["reply_text"], "Hello Ann, Pi here.");
    // The reply is a message of the conversation, marked sent with Telegram's id.
    let reply = eventually("the reply marked sent", &gateway, async || {
        let message = get(
            &gateway,
            &format!("/v1/messages/{}", run["reply_message_id"].as_str().unwrap()),
        )
        .await;
        (message["status"] == "sent").then_some(message)
    })
    .await;
    assert_eq!(reply["provider_message_id"], sent[0].message_id.to_string());
    // An answer that comes at once needs no typing indicator.
    assert!(
        !(setup.telegram.calls(BOT).iter()).any(|call| call.method == "sendChatAction"),
        "typing shown for an instant answer"
    );

    let status = get(&gateway, "/status").await;
    let tg = &status["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "tg")
        .cloned()
        .unwrap();
    assert_eq!(tg["state"], "connected", "{status}");
    assert_eq!(status["agent"]["enabled"], true);
    assert!(status["agent"]["tokens_today"].as_u64().unwrap() > 0);
}

/// Someone watching the inbox sees Ann's message, then Pi's run start and its reply grow
/// piece by piece while the model streams it, then the reply; Telegram gets it once, whole.
/// The newlines the model put around its answer (small models end with one) are streamed
/// as they came but neither stored nor sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inbox_watchers_see_the_reply_stream_in_and_telegram_gets_it_whole() {
    let setup = Setup::new(Duration::ZERO).await;
    let gateway = start(&setup.config("    dm_policy: open\n", "")).await;
    let mut stream = connect(gateway.addr, "", bearer_header).await;
    let subscribed = next_frame(&mut stream).await;
    assert!(matches!(subscribed, ServerFrame::Subscriptions(_)));
    let answer = "It is noon in Lisbon, and a quarter past one in Madrid.";
    let streamed = format!("\n{answer}\n\n");
    setup.model.enqueue(Reply::Text(streamed.clone()));
    (setup.telegram).user_sends(BOT, &ChatSpec::private(42), &ann(), "what time is it?");

    let (mut asked, mut states, mut deltas) = (false, Vec::new(), Vec::new());
    let reply = loop {
        match next_frame(&mut stream).await {
            ServerFrame::MessageCreated(m) if m.direction == Direction::Inbound => asked = true,
            ServerFrame::AgentRun(run) => {
                assert!(asked, "the run before the message it answers");
                states.push(run.state);
            }
            ServerFrame::AgentDelta(delta) => {
                assert_eq!(states.last(), Some(&RunState::Running), "{states:?}");
                deltas.push(delta.text);
            }
            ServerFrame::MessageCreated(m) if m.direction == Direction::Outbound => break m,
            _ => {}
        }
    };
    assert_eq!(states[..2], [RunState::Queued, RunState::Running]);
    assert!(deltas.len() > 1, "streamed in pieces: {deltas:?}");
    assert_eq!(deltas.concat(), streamed);
    assert_eq!(reply.text.as_deref(), Some(answer));

    let sent = setup
        .telegram
        .wait_for_sent(BOT, 1, Duration::from_secs(10))
        .await;
    assert_eq!(sent.len(), 1, "{}", gateway.log_text());
    assert_eq!(sent[0].text, answer);
}

/// A config whose context budget holds only a few of [`porto_message`]s.
fn small_budget_config(setup: &Setup) -> std::path::PathBuf {
    setup.config(
        "    dm_policy: open\n",
        "  system_prompt: You are Pi.\n  context_tokens: 256\n  max_reply_tokens: 16\n",
    )
}

fn porto_message(n: usize) -> String {
    format!("Message {n}: day {n} of the Porto trip, trains and museums.")
}

fn system_text(request: &Value) -> Option<&str> {
    request["messages"][0]["content"].as_str()
}

fn is_summary_request(request: &Value) -> bool {
    system_text(request).is_some_and(|s| s.contains("running summary of a conversation"))
}

/// Checks that a summary request starts from no summary and folds message 1.
fn assert_folds_from_scratch(request: &Value) {
    let folded = request["messages"][1]["content"].as_str().unwrap();
    assert!(folded.starts_with("There is no summary yet."), "{folded}");
    assert!(folded.contains("Message 1:"), "{folded}");
}

/// Once the conversation outgrows the context budget, its oldest messages are folded into a
/// rolling summary by a model call of its own (no tools), and the reply's prompt carries
/// that summary in their place. The fake model's default answer to the summary request
/// echoes it ("Pi here. You said: There is no summary yet. …"), which is how the summary is
/// recognised in the next prompt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_past_the_budget_is_folded_into_a_rolling_summary() {
    let setup = Setup::new(Duration::ZERO).await;
    let gateway = start(&small_budget_config(&setup)).await;
    let mut written = 0;
    let summary_request = loop {
        written += 1;
        assert!(written <= 12, "no summary after {written} messages");
        let text = porto_message(written);
        (setup.telegram).user_sends(BOT, &ChatSpec::private(42), &ann(), &text);
        let sent = (setup.telegram)
            .wait_for_sent(BOT, written, Duration::from_secs(10))
            .await;
        assert_eq!(sent.len(), written, "{}", gateway.log_text());
        if let Some(at) = setup.model.requests().iter().position(is_summary_request) {
            break at;
        }
    };
    assert!(written > 2, "the budget held only {written} messages");
    let requests = setup.model.requests();
    let summary = &requests[summary_request];
    assert!(
        summary["tools"].as_array().is_none_or(Vec::is_empty),
        "{summary}"
    );
    assert_folds_from_scratch(summary);

    // The same run's reply: the summary in the system message, the folded messages gone
    // from the history, the newest one there.
    let reply = &requests[summary_request + 1];
    let summarised = "Pi here. You said: There is no summary yet.";
    assert!(system_text(reply).unwrap().contains(summarised), "{reply}");
    let history = reply["messages"].as_array().unwrap()[1..].to_vec();
    let history = Value::Array(history).to_string();
    assert!(!history.contains("Message 1:"), "{history}");
    assert!(
        history.contains(&format!("Message {written}:")),
        "{history}"
    );
}

/// A summary request answered with nothing but tool calls (none were offered) fails the run
/// visibly, and nothing is folded: the next run asks for the summary again from scratch.
/// Every run gets a `search_messages` call first, so the ordinary runs answer after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_summary_answered_with_tool_calls_fails_the_run_and_folds_nothing() {
    let setup = Setup::new(Duration::ZERO).await;
    let gateway = start(&small_budget_config(&setup)).await;
    let summary_requests = || {
        let requests = setup.model.requests();
        requests
            .into_iter()
            .filter(is_summary_request)
            .collect::<Vec<_>>()
    };
    let mut written = 0;
    loop {
        written += 1;
        assert!(written <= 12, "no summary after {written} messages");
        setup.model.enqueue(Reply::ToolCalls(vec![ToolCall {
            name: "search_messages".into(),
            arguments: json!({"query": "Porto"}),
        }]));
        let text = porto_message(written);
        (setup.telegram).user_sends(BOT, &ChatSpec::private(42), &ann(), &text);
        let folding = eventually("an answer or a summary request", &gateway, async || {
            if !summary_requests().is_empty() {
                return Some(true);
            }
            (setup.telegram.sent(BOT).len() == written).then_some(false)
        })
        .await;
        if folding {
            break;
        }
    }
    let failed = eventually("the run failed", &gateway, async || {
        (runs(&gateway).await.into_iter()).find(|r| r["state"] == "failed")
    })
    .await;
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("summary request"),
        "{failed}"
    );
    assert_eq!(setup.telegram.sent(BOT).len(), written - 1, "no answer");

    let text = porto_message(written + 1);
    (setup.telegram).user_sends(BOT, &ChatSpec::private(42), &ann(), &text);
    let sent = (setup.telegram)
        .wait_for_sent(BOT, written, Duration::from_secs(10))
        .await;
    assert_eq!(sent.len(), written, "{}", gateway.log_text());
    let asked = summary_requests();
    assert_eq!(asked.len(), 2, "asked again");
    assert_folds_from_scratch(&asked[1]);
}

/// The connection's health, on `/status` and to inbox watchers: a token Telegram refuses
/// needs the person; once Telegram takes it the bot is connected at once, not after a long
/// poll (30 s here); a failing poll degrades it until a poll succeeds again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connection_health_follows_telegram_on_status_and_the_stream() {
    const LATER_BOT: &str = "654321:NOT-yet_valid";
    let setup = Setup::new(Duration::ZERO).await;
    let config = setup.config_timed(
        Timeouts {
            poll: "30s",
            ..Timeouts::default()
        },
        "    dm_policy: disabled\n",
        "",
    );
    let yaml = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, yaml.replace(BOT, LATER_BOT)).unwrap();
    let gateway = start(&config).await;
    let tg_status = async || {
        let status = get(&gateway, "/status").await;
        let connections = status["connections"].as_array().unwrap().clone();
        connections.into_iter().find(|c| c["name"] == "tg").unwrap()
    };
    let refused = eventually("the token refused", &gateway, async || {
        let tg = tg_status().await;
        (tg["state"] == "action_required").then_some(tg)
    })
    .await;
    assert!(
        refused["reason"].as_str().unwrap().contains("BotFather"),
        "{refused}"
    );

    let mut stream = connect(gateway.addr, "", bearer_header).await;
    let subscribed = next_frame(&mut stream).await;
    assert!(matches!(subscribed, ServerFrame::Subscriptions(_)));
    let next_state = async |stream: &mut _| loop {
        if let ServerFrame::ConnectionState(c) = next_frame(stream).await
            && c.name == "tg"
        {
            return c;
        }
    };
    // Telegram takes the token now; the connector's next try (within its backoff) succeeds.
    setup.telegram.add_bot(LATER_BOT, "pi_later_bot");
    let connected = next_state(&mut stream).await;
    assert_eq!(
        (connected.state, connected.reason),
        (ConnectionState::Connected, None)
    );
    assert_eq!(tg_status().await["state"], "connected");

    // A message ends the long poll in flight; the poll after it fails.
    setup
        .telegram
        .fail_next(LATER_BOT, "getUpdates", Failure::ServerError);
    let chat = ChatSpec::private(42);
    setup.telegram.user_sends(LATER_BOT, &chat, &ann(), "one");
    let degraded = next_state(&mut stream).await;
    assert_eq!(degraded.state, ConnectionState::Degraded);
    assert!(degraded.reason.unwrap().contains("502"));
    setup.telegram.user_sends(LATER_BOT, &chat, &ann(), "two");
    let recovered = next_state(&mut stream).await;
    assert_eq!(recovered.state, ConnectionState::Connected);
    assert_eq!(tg_status().await["state"], "connected");
}

/// In a group the bot takes part in, Pi answers only what mentions it, quoting it; the rest
/// is kept in the inbox. A group that is not allowed is ignored whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_groups_pi_answers_mentions_only_and_strangers_groups_are_ignored() {
    let setup = Setup::new(Duration::ZERO).await;
    let config = setup.config(
        "    dm_policy: open\n    group_policy: allowlist\n    allow_groups: [\"-100200\"]\n",
        "",
    );
    let gateway = start(&config).await;
    let family = ChatSpec::supergroup(-100200, "Family");
    let strangers = ChatSpec::supergroup(-100999, "Strangers");
    let bob = UserSpec::new(43, "Bob");
    setup
        .telegram
        .user_sends(BOT, &family, &ann(), "good morning all");
    setup
        .telegram
        .user_sends(BOT, &strangers, &bob, "@pi_test_bot hi");
    setup.model.enqueue(Reply::Text("It is noon.".into()));
    let asked = setup
        .telegram
        .user_sends(BOT, &family, &ann(), "@pi_test_bot what time is it?");

    let sent = setup
        .telegram
        .wait_for_sent(BOT, 1, Duration::from_secs(10))
        .await;
    assert_eq!(sent.len(), 1, "{}", gateway.log_text());
    assert_eq!(
        (sent[0].chat_id, sent[0].text.as_str()),
        (-100200, "It is noon.")
    );
    assert_eq!(sent[0].reply_to_message_id, asked["message_id"].as_i64());
    assert_eq!(setup.model.request_count(), 1, "only the mention ran Pi");

    let list = get(&gateway, "/v1/conversations?channel=telegram").await;
    let conversations = list["items"].as_array().unwrap();
    assert_eq!(conversations.len(), 1, "{list}");
    assert_eq!(conversations[0]["kind"], "group");
    let id = conversations[0]["id"].as_str().unwrap();
    let page = get(&gateway, &format!("/v1/conversations/{id}/messages")).await;
    let texts: Vec<&str> = (page["items"].as_array().unwrap().iter())
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        [
            "It is noon.",
            "@pi_test_bot what time is it?",
            "good morning all"
        ],
        "newest first"
    );
    let ignored = r#"gateway_channel_updates_total{connection="tg",outcome="ignored"} 1"#;
    assert!(metrics(&gateway).await.contains(ignored));
}

/// Each run reads only the messages since the previous one; an edit in between must still
/// reach the next prompt, and nothing of the conversation may go missing from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_prompt_holds_the_whole_history_as_it_is_now() {
    let setup = Setup::new(Duration::ZERO).await;
    let gateway = start(&setup.config("    dm_policy: open\n", "")).await;
    let chat = ChatSpec::private(42);
    let say = async |text: &str, replies: usize| {
        let sent = setup.telegram.user_sends(BOT, &chat, &ann(), text);
        setup
            .telegram
            .wait_for_sent(BOT, replies, Duration::from_secs(10))
            .await;
        sent["message_id"].as_i64().unwrap()
    };
    let first = say("I live in Lisbon", 1).await;
    say("I have a cat", 2).await;
    setup
        .telegram
        .user_edits(BOT, &chat, &ann(), first, "I live in Porto");
    eventually("the edit stored", &gateway, async || {
        let hits = get(&gateway, "/v1/search?q=porto").await;
        (!hits["items"].as_array().unwrap().is_empty()).then_some(())
    })
    .await;
    say("Where do I live?", 3).await;

    let requests = setup.model.requests();
    assert_eq!(requests.len(), 3, "{}", gateway.log_text());
    let prompt = requests[2]["messages"].to_string();
    for part in [
        "I live in Porto",
        "You said: I live in Lisbon",
        "I have a cat",
        "You said: I have a cat",
        "Where do I live?",
    ] {
        assert!(prompt.contains(part), "{part:?} missing from {prompt}");
    }
    assert!(
        !prompt.contains("\"I live in Lisbon"),
        "the edited message is in the prompt as it was: {prompt}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_malformed_update_is_skipped_and_polling_moves_on() {
    let setup = Setup::new(Duration::ZERO).await;
    let config = setup.config("    dm_policy: open\n", "");
    let gateway = start(&config).await;
    setup.telegram.push_raw_update(
        BOT,
        json!({"message": {"message_id": "not a number", "chat": 5}}),
    );
    setup.model.enqueue(Reply::Text("still here".into()));
    setup
        .telegram
        .user_sends(BOT, &ChatSpec::private(42), &ann(), "after the bad one");
    let sent = setup
        .telegram
        .wait_for_sent(BOT, 1, Duration::from_secs(10))
        .await;
    assert_eq!(sent.len(), 1, "{}", gateway.log_text());
    assert_eq!(sent[0].text, "still here");
    assert_eq!(
        setup.telegram.pending_updates(BOT),
        0,
        "both updates confirmed"
    );
    let metrics = metrics(&gateway).await;
    assert!(
        metrics.contains(r#"gateway_channel_updates_total{connection="tg",outcome="rejected"} 1"#),
        "{metrics}"
    );
    // Only the good message is in the inbox.
    let conversations = get(&gateway, "/v1/conversations").await;
    let tg: Vec<&Value> = conversations["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["channel"] == "telegram")
        .collect();
    assert_eq!(tg.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_webhooks_are_refused_and_redeliveries_change_nothing() {
    let setup = Setup::new(Duration::ZERO).await;
    let secret = "hook-secret_123";
    let config = setup.config(
        &format!("    mode: webhook\n    dm_policy: open\n    webhook:\n      public_url: http://127.0.0.1:9\n      secret: {secret}\n"),
        "",
    );
    let yaml = std::fs::read_to_string(&config)
        .unwrap()
        .replace("default_mode: autopilot", "default_mode: \"off\"");
    std::fs::write(&config, yaml).unwrap();
    let gateway = start(&config).await;
    eventually("the webhook registered", &gateway, async || {
        setup
            .telegram
            .webhook(BOT)
            .filter(|w| w.url.ends_with("/hooks/tg"))
    })
    .await;
    let update = json!({
        "update_id": 777,
        "message": {"message_id": 1, "date": 1_790_000_000, "text": "via webhook",
                    "chat": {"id": 42, "type": "private", "first_name": "Ann"},
                    "from": {"id": 42, "is_bot": false, "first_name": "Ann"}}
    });
    let client = reqwest::Client::new();
    let deliver = async |secret: Option<&str>| {
        let mut request = client.post(gateway.url("/hooks/tg")).json(&update);
        if let Some(secret) = secret {
            request = request.header("X-Telegram-Bot-Api-Secret-Token", secret);
        }
        request.send().await.unwrap().status().as_u16()
    };
    assert_eq!(deliver(None).await, 401);
    assert_eq!(deliver(Some("wrong-secret")).await, 401);
    let conversations = get(&gateway, "/v1/conversations?channel=telegram").await;
    assert!(
        conversations["items"].as_array().unwrap().is_empty(),
        "a forged update stored nothing"
    );
    assert_eq!(deliver(Some(secret)).await, 200);
    assert_eq!(
        deliver(Some(secret)).await,
        200,
        "a redelivery is acknowledged"
    );
    let conversations = get(&gateway, "/v1/conversations?channel=telegram").await;
    let items = conversations["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    let messages = get(
        &gateway,
        &format!(
            "/v1/conversations/{}/messages",
            items[0]["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(
        messages["items"].as_array().unwrap().len(),
        1,
        "stored once"
    );
    let bad = client
        .post(gateway.url("/hooks/tg"))
        .header("X-Telegram-Bot-Api-Secret-Token", secret)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_sender_gets_a_pairing_code_and_is_let_in_once_approved() {
    let setup = Setup::new(Duration::ZERO).await;
    let config = setup.config("    dm_policy: pairing\n    max_pending_pairings: 1\n", "");
    let gateway = start(&config).await;
    for text in ["hello?", "anyone?"] {
        (setup.telegram).user_sends(BOT, &ChatSpec::private(42), &ann(), text);
    }
    let sent = setup
        .telegram
        .wait_for_sent(BOT, 1, Duration::from_secs(10))
        .await;
    assert_eq!(sent.len(), 1, "{}", gateway.log_text());
    let requests = get(&gateway, "/v1/pairing").await;
    let request = &requests.as_array().unwrap()[0];
    let code = request["code"].as_str().unwrap().to_string();
    assert!(sent[0].text.contains(&code), "{}", sent[0].text);
    assert_eq!(request["state"], "pending");
    assert_eq!(request["display_name"], "Ann");
    assert_eq!(
        setup.model.request_count(),
        0,
        "an unpaired sender never reaches Pi"
    );
    assert!(
        get(&gateway, "/v1/conversations?channel=telegram").await["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // The one pending place is taken: a second stranger is ignored, and gets no code. Ann
    // got one code for her two messages.
    let bob = UserSpec::new(43, "Bob");
    (setup.telegram).user_sends(BOT, &ChatSpec::private(43), &bob, "me too?");
    eventually("the second stranger ignored", &gateway, async || {
        let full = r#"gateway_channel_updates_total{connection="tg",outcome="pairing_full"} 1"#;
        metrics(&gateway).await.contains(full).then_some(())
    })
    .await;
    assert_eq!(setup.telegram.sent(BOT).len(), 1);

    let (status, _) = post(&gateway, "/v1/pairing/NOSUCHCODE/approve", json!({})).await;
    assert_eq!(status, 404);
    let (status, approved) = post(
        &gateway,
        &format!("/v1/pairing/{}/approve", code.to_lowercase()),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(approved["state"], "approved");
    setup.model.enqueue(Reply::Text("Welcome!".into()));
    setup
        .telegram
        .user_sends(BOT, &ChatSpec::private(42), &ann(), "it's me");
    let sent = setup
        .telegram
        .wait_for_sent(BOT, 2, Duration::from_secs(10))
        .await;
    assert_eq!(sent.len(), 2, "{}", gateway.log_text());
    assert_eq!(sent[1].text, "Welcome!");
}

/// A pairing code keeps the bot's limits like every send: after a 429 on it, the sender's
/// next message brings the code again, once `retry_after` is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pairing_code_waits_out_a_429_like_every_send() {
    let setup = Setup::new(Duration::ZERO).await;
    let config = setup.config("    dm_policy: pairing\n", "");
    let gateway = start(&config).await;
    let retry_after = Duration::from_secs(2);
    setup.telegram.fail_next(
        BOT,
        "sendMessage",
        Failure::TooManyRequests {
            retry_after: retry_after.as_secs() as u32,
        },
    );
    let limited = Instant::now();
    let private = ChatSpec::private(42);
    setup.telegram.user_sends(BOT, &private, &ann(), "hello?");
    eventually("the code's send refused", &gateway, async || {
        (gateway.log_text())
            .contains("cannot send a pairing code")
            .then_some(())
    })
    .await;
    setup.telegram.user_sends(BOT, &private, &ann(), "hello??");
    let sent = setup
        .telegram
        .wait_for_sent(BOT, 1, Duration::from_secs(10))
        .await;
    assert_eq!(sent.len(), 1, "{}", gateway.log_text());
    assert!(
        limited.elapsed() >= retry_after,
        "sent {:?} after the 429, within its retry_after",
        limited.elapsed()
    );
    let requests = get(&gateway, "/v1/pairing").await;
    let code = requests[0]["code"].as_str().unwrap();
    assert!(sent[0].text.contains(code), "{}", sent[0].text);
}

/// A pairing code whose send hangs holds up no one: polling goes on, and a known sender
/// who writes while the code is on its way is answered. The code's send may wait up to
/// `request_timeout` (a minute here), far beyond the 10 s this waits for the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_pairing_code_holds_up_no_one() {
    let setup = Setup::new(Duration::ZERO).await;
    let config = setup.config_timed(
        Timeouts {
            request: "60s",
            ..Timeouts::default()
        },
        "    dm_policy: pairing\n    allow_from: [\"42\"]\n",
        "",
    );
    let gateway = start(&config).await;
    let hang = Failure::Stall {
        after_apply: false,
        duration: Duration::from_secs(60),
    };
    setup.telegram.fail_next(BOT, "sendMessage", hang);
    let bob = UserSpec::new(43, "Bob");
    (setup.telegram).user_sends(BOT, &ChatSpec::private(43), &bob, "hello?");
    let code = eventually("the code's send to hang", &gateway, async || {
        let calls = setup.telegram.calls(BOT);
        calls.into_iter().find(|call| call.method == "sendMessage")
    })
    .await;
    assert_eq!(code.params["chat_id"], 43);

    setup.model.enqueue(Reply::Text("Hi Ann".into()));
    (setup.telegram).user_sends(BOT, &ChatSpec::private(42), &ann(), "hi");
    let sent = setup
        .telegram
        .wait_for_sent(BOT, 1, Duration::from_secs(10))
        .await;
    assert_eq!(sent.len(), 1, "{}", gateway.log_text());
    assert_eq!((sent[0].chat_id, sent[0].text.as_str()), (42, "Hi Ann"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_replies_are_split_and_rate_limits_are_obeyed() {
    let setup = Setup::new(Duration::ZERO).await;
    let config = setup.config(
        "    dm_policy: open\n",
        "  context_tokens: 8000\n  max_reply_tokens: 4000\n",
    );
    let gateway = start(&config).await;
    let long = "word ".repeat(1200).trim_end().to_string();
    setup.model.enqueue(Reply::Text(long.clone()));
    setup.telegram.fail_next(
        BOT,
        "sendMessage",
        Failure::TooManyRequests { retry_after: 1 },
    );
    setup
        .telegram
        .user_sends(BOT, &ChatSpec::private(42), &ann(), "tell me a lot");
    // Retry after 1 s, the second part 1 s later (1 message/s per chat): well before the
    // sender's 5 s safety pass, so the retry is not merely found by it.
    let sent = setup
        .telegram
        .wait_for_sent(BOT, 2, Duration::from_millis(4500))
        .await;
    assert_eq!(sent.len(), 2, "{}", gateway.log_text());
    assert!(sent.iter().all(|m| m.text.encode_utf16().count() <= 4096));
    assert_eq!(
        format!("{} {}", sent[0].text, sent[1].text),
        long,
        "nothing lost at the break"
    );
    // A call is recorded just after its effect shows, so wait for the third record.
    let sends = eventually("three sendMessage calls recorded", &gateway, async || {
        let sends: Vec<_> = (setup.telegram.calls(BOT).into_iter())
            .filter(|c| c.method == "sendMessage")
            .collect();
        (sends.len() >= 3).then_some(sends)
    })
    .await;
    let statuses: Vec<u16> = sends.iter().map(|c| c.status).collect();
    assert_eq!(statuses, [429, 200, 200], "one 429, then two parts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_send_that_timed_out_after_arriving_is_reconciled_not_sent_twice() {
    let setup = Setup::new(Duration::ZERO).await;
    let config = setup.config("    dm_policy: open\n", "");
    let gateway = start(&config).await;
    reply_arrives_unanswered(&setup, Duration::from_secs(3));
    reconciled_once(&setup, &gateway).await;
}

/// The reply reached Telegram, then the gateway was killed before it heard so. The send was
/// handed to the sender with its attempt recorded as the reply was written, so no attempt
/// hint was stored: the restart finds where the chat's ids stood from the stored messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reply_that_arrived_just_before_a_kill_is_not_sent_again() {
    let setup = Setup::new(Duration::ZERO).await;
    let config = setup.config("    dm_policy: open\n", "");
    let mut gateway = start(&config).await;
    reply_arrives_unanswered(&setup, Duration::from_secs(30));
    let arrived = setup
        .telegram
        .wait_for_sent(BOT, 1, Duration::from_secs(10))
        .await;
    assert_eq!(arrived.len(), 1);
    gateway.signal(libc::SIGKILL);
    gateway.wait(Duration::from_secs(5));
    let restarted = start(&config).await;
    reconciled_once(&setup, &restarted).await;
    // Anything sent twice would show by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        setup.telegram.sent(BOT).len(),
        1,
        "{}",
        restarted.log_text()
    );
}

/// After a restart, an update redelivered because its offset was lost brings an id from
/// before Pi's reply. A message the tenant then sends from the inbox is refused once, then
/// reaches Telegram but its answer stalls: the probe must start past Pi's reply, which it
/// would otherwise edit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redelivered_update_does_not_send_a_probe_back_over_earlier_replies() {
    let setup = Setup::new(Duration::ZERO).await;
    let config = setup.config("    dm_policy: open\n", "");
    let mut gateway = start(&config).await;
    setup.model.enqueue(Reply::Text("It is noon.".into()));
    let asked = (setup.telegram).user_sends(BOT, &ChatSpec::private(42), &ann(), "what time?");
    let pi_said = setup
        .telegram
        .wait_for_sent(BOT, 1, Duration::from_secs(10))
        .await;
    assert_eq!(pi_said.len(), 1, "{}", gateway.log_text());
    let conversation = eventually("the conversation", &gateway, async || {
        let list = get(&gateway, "/v1/conversations?channel=telegram").await;
        list["items"][0]["id"].as_str().map(str::to_string)
    })
    .await;
    gateway.signal(libc::SIGTERM);
    gateway.wait(Duration::from_secs(10));

    let restarted = start(&config).await;
    // The fake confirms updates by offset, so the lost offset is played by queueing Ann's
    // message again under a new update id.
    setup
        .telegram
        .push_raw_update(BOT, json!({ "message": asked }));
    eventually("the update redelivered", &restarted, async || {
        let duplicate = r#"gateway_channel_updates_total{connection="tg",outcome="duplicate"} 1"#;
        metrics(&restarted).await.contains(duplicate).then_some(())
    })
    .await;

    // The first attempt, handed over with the message, starts from the stored ids; a retry
    // starts from what the connection saw.
    let refused = Failure::TooManyRequests { retry_after: 1 };
    setup.telegram.fail_next(BOT, "sendMessage", refused);
    let unanswered = Failure::Stall {
        after_apply: true,
        duration: Duration::from_secs(3),
    };
    setup.telegram.fail_next(BOT, "sendMessage", unanswered);
    let (status, _) = request(
        &restarted,
        reqwest::Method::PUT,
        &format!("/v1/conversations/{conversation}/send/inbox"),
        Some(json!({"text": "From the inbox"})),
    )
    .await;
    assert_eq!(status, 200);
    let sent = eventually("the inbox message marked sent", &restarted, async || {
        let page = get(
            &restarted,
            &format!("/v1/conversations/{conversation}/messages"),
        )
        .await;
        let items = page["items"].as_array().unwrap().clone();
        let ours = items.into_iter().find(|m| m["text"] == "From the inbox")?;
        (ours["status"] == "sent").then_some(ours)
    })
    .await;
    let at_telegram = setup.telegram.sent(BOT);
    assert_eq!(at_telegram.len(), 2, "delivered once: {at_telegram:?}");
    assert_eq!(
        sent["provider_message_id"],
        at_telegram[1].message_id.to_string()
    );
    assert!(
        at_telegram.iter().all(|m| !m.edited),
        "the probe edited a reply: {at_telegram:?}\n{}",
        restarted.log_text()
    );
}

/// Ann writes; Pi's reply reaches Telegram, whose answer to `sendMessage` then stalls for
/// `stall`: the ambiguous timeout.
fn reply_arrives_unanswered(setup: &Setup, stall: Duration) {
    setup.model.enqueue(Reply::Text("only once please".into()));
    setup.telegram.fail_next(
        BOT,
        "sendMessage",
        Failure::Stall {
            after_apply: true,
            duration: stall,
        },
    );
    setup
        .telegram
        .user_sends(BOT, &ChatSpec::private(42), &ann(), "hi");
}

/// Waits for the one reply to be marked sent after an ambiguous attempt, and checks that
/// it was found by probing, not sent again, and that probing changed nothing.
async fn reconciled_once(setup: &Setup, gateway: &Gateway) {
    let message = eventually("the reply marked sent", gateway, async || {
        let run = runs(gateway)
            .await
            .into_iter()
            .find(|r| r["reply_message_id"].is_string())?;
        let message = get(
            gateway,
            &format!("/v1/messages/{}", run["reply_message_id"].as_str().unwrap()),
        )
        .await;
        (message["status"] == "sent").then_some(message)
    })
    .await;
    let sent = setup.telegram.sent(BOT);
    assert_eq!(sent.len(), 1, "delivered exactly once: {sent:?}");
    assert_eq!(
        message["provider_message_id"],
        sent[0].message_id.to_string()
    );
    let probes: Vec<_> = setup
        .telegram
        .calls(BOT)
        .into_iter()
        .filter(|c| c.method == "editMessageText")
        .collect();
    assert!(!probes.is_empty(), "the ambiguous send was probed");
    assert!(sent.iter().all(|m| !m.edited), "probing changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drafts_wait_for_approval_and_model_failures_are_visible() {
    let setup = Setup::new(Duration::ZERO).await;
    let config = setup.config("    dm_policy: open\n", "").to_path_buf();
    let yaml = std::fs::read_to_string(&config)
        .unwrap()
        .replace("default_mode: autopilot", "default_mode: draft");
    std::fs::write(&config, yaml).unwrap();
    let gateway = start(&config).await;
    setup.model.enqueue(Reply::Text("a careful draft".into()));
    setup
        .telegram
        .user_sends(BOT, &ChatSpec::private(42), &ann(), "can we meet?");
    let draft = eventually("a draft", &gateway, async || {
        runs(&gateway)
            .await
            .into_iter()
            .find(|r| r["state"] == "awaiting_approval")
    })
    .await;
    assert_eq!(draft["reply_text"], "a careful draft");
    assert!(setup.telegram.sent(BOT).is_empty(), "a draft is not sent");
    let id = draft["id"].as_str().unwrap();
    let (status, approved) = post(
        &gateway,
        &format!("/v1/agent/runs/{id}/approve"),
        json!({"text": "Yes, at 5."}),
    )
    .await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["state"], "succeeded");
    let sent = setup
        .telegram
        .wait_for_sent(BOT, 1, Duration::from_secs(10))
        .await;
    assert_eq!(sent[0].text, "Yes, at 5.");
    let (status, again) = post(&gateway, &format!("/v1/agent/runs/{id}/approve"), json!({})).await;
    assert_eq!(status, 409, "{again}");

    // A model that refuses the request: the run fails visibly, ingestion goes on.
    setup.model.enqueue(Reply::Error {
        status: 401,
        code: "invalid_api_key".into(),
        message: "Incorrect API key provided".into(),
        retry_after: None,
    });
    setup
        .telegram
        .user_sends(BOT, &ChatSpec::private(42), &ann(), "are you there?");
    let failed = eventually("a failed run", &gateway, async || {
        runs(&gateway)
            .await
            .into_iter()
            .find(|r| r["state"] == "failed")
    })
    .await;
    assert!(
        failed["error"].as_str().unwrap().contains("API key"),
        "{failed}"
    );
    let conversation = failed["conversation_id"].as_str().unwrap();
    let messages = get(
        &gateway,
        &format!("/v1/conversations/{conversation}/messages"),
    )
    .await;
    assert!(
        messages["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["text"] == "are you there?")
    );
    assert_eq!(
        setup.telegram.sent(BOT).len(),
        1,
        "nothing sent for the failed run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exhausted_daily_budget_gets_one_polite_reply() {
    let setup = Setup::new(Duration::ZERO).await;
    let config = setup.config(
        "    dm_policy: open\n",
        "  tokens_per_day: 1\n  budget_exhausted_reply: Out of juice for today.\n",
    );
    let gateway = start(&config).await;
    setup.model.enqueue(Reply::Text("first answer".into()));
    for (n, text) in ["one", "two", "three"].into_iter().enumerate() {
        setup
            .telegram
            .user_sends(BOT, &ChatSpec::private(42), &ann(), text);
        let expected = n.min(1) + 1;
        eventually("the run to finish", &gateway, async || {
            let done = runs(&gateway)
                .await
                .iter()
                .filter(|r| r["state"] != "queued")
                .count();
            (done == n + 1).then_some(())
        })
        .await;
        let sent = setup
            .telegram
            .wait_for_sent(BOT, expected, Duration::from_secs(5))
            .await;
        assert_eq!(sent.len(), expected, "after message {text}: {sent:?}");
    }
    let sent = setup.telegram.sent(BOT);
    assert_eq!(sent[0].text, "first answer");
    assert_eq!(sent[1].text, "Out of juice for today.");
    assert_eq!(
        setup.model.request_count(),
        1,
        "no model call once the budget is spent"
    );
    let states: Vec<Value> = runs(&gateway)
        .await
        .iter()
        .map(|r| r["state"].clone())
        .collect();
    assert_eq!(
        states.iter().filter(|s| **s == "budget_exhausted").count(),
        2
    );
}

/// Thirty people write at once to a 2 s model; the gateway is stopped (`signal`) while the
/// answers are being written, then started again: everyone gets exactly one real answer.
async fn burst_survives(signal: i32) {
    const PEOPLE: i64 = 30;
    let setup = Setup::new(Duration::from_secs(2)).await;
    let config = setup.config("    dm_policy: open\n", "  max_concurrent_runs: 64\n");
    let mut gateway = start(&config).await;
    for person in 1..=PEOPLE {
        setup.telegram.user_sends(
            BOT,
            &ChatSpec::private(person),
            &UserSpec::new(person, "Person"),
            &format!("question {person}"),
        );
    }
    eventually("every run at the model", &gateway, async || {
        (setup.model.in_flight() as i64 >= PEOPLE / 2).then_some(())
    })
    .await;
    gateway.signal(signal);
    gateway.wait(Duration::from_secs(15));
    let restarted = start(&config).await;
    let sent = setup
        .telegram
        .wait_for_sent(BOT, PEOPLE as usize, Duration::from_secs(20))
        .await;
    // Anything sent twice would show up by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = if sent.len() == PEOPLE as usize {
        setup.telegram.sent(BOT)
    } else {
        sent
    };
    assert_eq!(sent.len(), PEOPLE as usize, "{}", restarted.log_text());
    // The 2 s model is slow enough for the chat to see Pi typing.
    let typing: Vec<i64> = (setup.telegram.calls(BOT).into_iter())
        .filter(|call| call.method == "sendChatAction" && call.status == 200)
        .filter_map(|call| match &call.params["chat_id"] {
            Value::String(id) => id.parse().ok(),
            id => id.as_i64(),
        })
        .collect();
    for person in 1..=PEOPLE {
        assert!(typing.contains(&person), "person {person} saw no typing");
        let to: Vec<_> = sent.iter().filter(|m| m.chat_id == person).collect();
        assert_eq!(to.len(), 1, "person {person} got {to:?}");
        assert!(
            to[0].text.contains(&format!("question {person}")),
            "a real answer: {}",
            to[0].text
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_burst_then_restart_answers_everyone_once() {
    burst_survives(libc::SIGKILL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_burst_then_restart_answers_everyone_once() {
    burst_survives(libc::SIGTERM).await;
}

/// A run during which the gateway keeps stopping is started again after each restart.
/// If SIGKILL stops it (as a run that crashes the gateway would), it fails visibly after
/// three restarts instead of taking the gateway down forever; clean stops (SIGTERM, as in
/// a deploy) do not count. Either way the conversation goes on as usual.
async fn stopped_four_times_during_a_run(signal: i32) {
    let setup = Setup::new(Duration::from_secs(30)).await;
    let config = setup.config("    dm_policy: open\n", "");
    let chat = ChatSpec::private(42);
    setup
        .telegram
        .user_sends(BOT, &chat, &ann(), "what time is it");
    let mut gateway = start(&config).await;
    // The start that queued it, then three restarts.
    for calls in 1..=4 {
        eventually("the run at the model", &gateway, async || {
            (setup.model.request_count() >= calls).then_some(())
        })
        .await;
        gateway.signal(signal);
        gateway.wait(Duration::from_secs(15));
        gateway = start(&config).await;
    }
    setup.model.set_delay(Duration::ZERO);
    setup.model.enqueue(Reply::Text("It is noon.".into()));
    if signal == libc::SIGKILL {
        let run = eventually("the run failed", &gateway, async || {
            let runs = get(&gateway, "/v1/agent/runs").await;
            let run = runs["items"].as_array()?.first()?.clone();
            (run["state"] == "failed").then_some(run)
        })
        .await;
        assert_eq!(
            run["error"],
            "Pi gave up: the gateway restarted 3 times in a row without finishing this"
        );
        assert_eq!(setup.model.request_count(), 4, "not started a fifth time");
        setup.telegram.user_sends(BOT, &chat, &ann(), "hello?");
    }
    let sent = setup
        .telegram
        .wait_for_sent(BOT, 1, Duration::from_secs(10))
        .await;
    assert_eq!(sent.len(), 1, "{}", gateway.log_text());
    assert_eq!(sent[0].text, "It is noon.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_the_gateway_crashes_during_fails_after_three_restarts() {
    stopped_four_times_during_a_run(libc::SIGKILL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_through_clean_restarts_is_answered_at_the_end() {
    stopped_four_times_during_a_run(libc::SIGTERM).await;
}

async fn request(
    gateway: &Gateway,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, gateway.url(path))
        .bearer_auth(TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Ann asks, Pi answers; answers Ann's message id at Telegram and the gateway's ids of her
/// message and of Pi's reply, once the reply is marked sent.
async fn ann_asks_and_pi_answers(setup: &Setup, gateway: &Gateway) -> (i64, String, String) {
    setup.model.enqueue(Reply::Text("It is noon.".into()));
    let asked = setup
        .telegram
        .user_sends(BOT, &ChatSpec::private(42), &ann(), "what time is it");
    let asked = asked["message_id"].as_i64().unwrap();
    let conversation = eventually("the conversation", gateway, async || {
        let list = get(gateway, "/v1/conversations?channel=telegram").await;
        list["items"][0]["id"].as_str().map(str::to_string)
    })
    .await;
    let messages = format!("/v1/conversations/{conversation}/messages");
    eventually("the reply marked sent", gateway, async || {
        let page = get(gateway, &messages).await;
        let items = page["items"].as_array().unwrap().clone();
        let reply = items
            .iter()
            .find(|m| m["direction"] == "outbound" && m["status"] == "sent")?;
        let question = items.iter().find(|m| m["direction"] == "inbound")?;
        Some((
            asked,
            question["id"].as_str().unwrap().to_string(),
            reply["id"].as_str().unwrap().to_string(),
        ))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edits_deletions_and_reactions_reach_telegram_and_come_back() {
    use reqwest::Method;
    let setup = Setup::new(Duration::ZERO).await;
    let gateway = start(&setup.config("    dm_policy: open\n", "")).await;
    let (asked, question, reply) = ann_asks_and_pi_answers(&setup, &gateway).await;
    let reply_path = format!("/v1/messages/{reply}");
    let tg = &setup.telegram;
    let pi_said = tg.sent(BOT)[0].clone();

    let (status, _) = request(
        &gateway,
        Method::PATCH,
        &reply_path,
        Some(json!({"text": "It is half past twelve."})),
    )
    .await;
    assert_eq!(status, 200);
    eventually("the edit at Telegram", &gateway, async || {
        let now = &tg.sent(BOT)[0];
        (now.edited && now.text == "It is half past twelve.").then_some(())
    })
    .await;
    // An edit is one Telegram message: over 4,096 UTF-16 units it is refused, not split.
    let long = "😀".repeat(2049);
    let (status, error) = request(
        &gateway,
        Method::PATCH,
        &reply_path,
        Some(json!({ "text": long })),
    )
    .await;
    assert_eq!(
        (status, error["error"].as_str()),
        (422, Some("text_too_long")),
        "{error}"
    );
    assert_eq!(
        get(&gateway, &reply_path).await["text"],
        "It is half past twelve."
    );

    // The bot's reaction: Telegram takes one per message.
    let on_question = format!("/v1/messages/{question}/reactions");
    let (status, view) = request(&gateway, Method::PUT, &format!("{on_question}/👍"), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        view["reactions"],
        json!([{"emoji": "👍", "count": 1, "mine": true}])
    );
    eventually("the reaction at Telegram", &gateway, async || {
        (tg.bot_reactions(BOT, 42, asked) == ["👍"]).then_some(())
    })
    .await;
    let (status, error) = request(&gateway, Method::PUT, &format!("{on_question}/🔥"), None).await;
    assert_eq!(
        (status, error["error"].as_str()),
        (409, Some("conflict")),
        "{error}"
    );
    request(&gateway, Method::DELETE, &format!("{on_question}/👍"), None).await;
    eventually("the reaction taken back", &gateway, async || {
        tg.bot_reactions(BOT, 42, asked).is_empty().then_some(())
    })
    .await;
    // Telegram refuses an emoji outside its list: the reaction is undone in the inbox.
    let (status, _) = request(&gateway, Method::PUT, &format!("{on_question}/🦖"), None).await;
    assert_eq!(status, 200);
    eventually("the refused reaction undone", &gateway, async || {
        let view = get(&gateway, &format!("/v1/messages/{question}")).await;
        view.get("reactions").is_none().then_some(())
    })
    .await;
    let refused = tg
        .calls(BOT)
        .into_iter()
        .filter(|c| c.method == "setMessageReaction" && c.status == 400)
        .count();
    assert_eq!(refused, 1, "a refusal is not retried");

    // Ann's reactions on Pi's reply show in the inbox; a change takes one back, adds one.
    for emoji in ["🔥", "👍"] {
        let chat = ChatSpec::private(42);
        tg.user_reacts(BOT, &chat, &ann(), pi_said.message_id, &[emoji]);
        eventually("Ann's reaction in the inbox", &gateway, async || {
            let view = get(&gateway, &reply_path).await;
            (view["reactions"] == json!([{"emoji": emoji, "count": 1}])).then_some(())
        })
        .await;
    }

    let (status, _) = request(&gateway, Method::DELETE, &reply_path, None).await;
    assert_eq!(status, 200);
    eventually("the deletion at Telegram", &gateway, async || {
        tg.sent(BOT)[0].deleted.then_some(())
    })
    .await;
    let view = eventually("the text gone", &gateway, async || {
        let view = get(&gateway, &reply_path).await;
        view.get("text").is_none().then_some(view)
    })
    .await;
    assert_eq!(view["deleted"], true);
    let (status, error) = request(
        &gateway,
        Method::PATCH,
        &reply_path,
        Some(json!({"text": "back?"})),
    )
    .await;
    assert_eq!(
        (status, error["error"].as_str()),
        (409, Some("conflict")),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edit_queued_before_a_kill_is_delivered_once_after_restart() {
    let setup = Setup::new(Duration::ZERO).await;
    let config = setup.config("    dm_policy: open\n", "");
    let mut gateway = start(&config).await;
    let (_, _, reply) = ann_asks_and_pi_answers(&setup, &gateway).await;
    let tg = &setup.telegram;
    let edits = |status: u16| {
        tg.calls(BOT)
            .into_iter()
            .filter(|c| c.method == "editMessageText" && c.status == status)
            .count()
    };
    // The first attempt fails, so the edit waits in the outbox for its retry.
    tg.fail_next(BOT, "editMessageText", Failure::ServerError);
    let (status, _) = request(
        &gateway,
        reqwest::Method::PATCH,
        &format!("/v1/messages/{reply}"),
        Some(json!({"text": "It is one o'clock."})),
    )
    .await;
    assert_eq!(status, 200);
    eventually("the failed attempt", &gateway, async || {
        (edits(502) == 1).then_some(())
    })
    .await;
    gateway.signal(libc::SIGKILL);
    gateway.wait(Duration::from_secs(5));
    assert_eq!(edits(200), 0, "the retry had not happened before the kill");

    let restarted = start(&config).await;
    eventually("the edit after the restart", &restarted, async || {
        (tg.sent(BOT)[0].text == "It is one o'clock.").then_some(())
    })
    .await;
    // Anything delivered twice would show by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(edits(200), 1, "{}", restarted.log_text());
    assert_eq!(
        get(&restarted, &format!("/v1/messages/{reply}")).await["text"],
        "It is one o'clock."
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attachments_stream_from_telegram_and_never_show_the_token() {
    let setup = Setup::new(Duration::ZERO).await;
    let gateway = start(&setup.config("    dm_policy: open\n", "")).await;
    let tg = &setup.telegram;
    let chat = ChatSpec::private(42);
    let pdf: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    tg.user_sends_document(
        BOT,
        &chat,
        &ann(),
        "report.pdf",
        "application/pdf",
        pdf.clone(),
    );
    tg.user_sends_photo(BOT, &chat, &ann(), Some("look"), vec![7; 1000]);
    let huge = tg.user_sends_document(
        BOT,
        &chat,
        &ann(),
        "huge.bin",
        "application/octet-stream",
        vec![0; 20 * 1024 * 1024 + 1],
    );
    let with_files = eventually("three messages with files", &gateway, async || {
        let list = get(&gateway, "/v1/conversations?channel=telegram").await;
        let id = list["items"][0]["id"].as_str()?.to_string();
        let page = get(&gateway, &format!("/v1/conversations/{id}/messages")).await;
        let mut ids: Vec<String> = page["items"]
            .as_array()?
            .iter()
            .filter(|m| m["attachments"].is_array())
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect();
        ids.reverse();
        (ids.len() == 3).then_some(ids)
    })
    .await;
    let client = reqwest::Client::new();
    let fetch = async |path: &str| {
        client
            .get(gateway.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
    };
    let attachment =
        |n: usize, index: usize| format!("/v1/messages/{}/attachments/{index}", with_files[n]);

    let document = fetch(&attachment(0, 0)).await;
    assert_eq!(document.status(), 200);
    assert_eq!(document.headers()["content-type"], "application/pdf");
    assert_eq!(document.headers()["content-disposition"], "attachment");
    assert_eq!(document.bytes().await.unwrap(), pdf);
    let photo = fetch(&attachment(1, 0)).await;
    assert_eq!(photo.headers()["content-type"], "image/jpeg");
    assert_eq!(photo.bytes().await.unwrap(), vec![7; 1000]);

    let expect = async |path: &str, status: u16, code: &str| {
        let response = fetch(path).await;
        assert_eq!(response.status().as_u16(), status, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], code, "{path}: {body}");
        body["message"].as_str().unwrap().to_string()
    };
    expect(&attachment(0, 1), 404, "not_found").await;
    // Over Telegram's 20 MB download limit: refused by its size, before asking Telegram.
    let get_files = || {
        (tg.calls(BOT).iter())
            .filter(|c| c.method == "getFile")
            .count()
    };
    let asked = get_files();
    let message = expect(&attachment(2, 0), 413, "media_too_large").await;
    assert!(message.contains("20971520"), "{message}");
    assert_eq!(get_files(), asked, "Telegram was not asked");
    // The same file without a size in its metadata: Telegram's getFile refuses it.
    let event = json!({"schema_version": 1, "id": "01JD0000000000000000000031", "occurred_at": "2026-11-21T10:00:00Z",
        "source": {"channel": "telegram", "connection": "tg"}, "type": "message.received",
        "data": {"conversation": {"provider_id": "42"}, "provider_message_id": "9001", "sender": {"provider_id": "42"},
                 "attachments": [{"kind": "file", "provider_file_id": huge["document"]["file_id"]}],
                 "sent_at": "2026-11-21T10:00:00Z"}});
    let (_, ingested) = post(&gateway, "/v1/events", event).await;
    let sizeless = format!(
        "/v1/messages/{}/attachments/0",
        ingested["message_id"].as_str().unwrap()
    );
    expect(&sizeless, 413, "media_too_large").await;
    // Telegram in trouble: a clear 502 that names no URL.
    tg.fail_next(BOT, "getFile", Failure::ServerError);
    let message = expect(&attachment(0, 0), 502, "provider_unavailable").await;
    assert!(
        !message.contains("TEST-token_abc") && !message.contains("/file/bot"),
        "{message}"
    );

    // Web chat has no files to fetch.
    let event = json!({"schema_version": 1, "id": "01JD0000000000000000000032", "occurred_at": "2026-11-21T10:00:00Z",
        "source": {"channel": "webchat", "connection": "webchat"}, "type": "message.received",
        "data": {"conversation": {"provider_id": "s1"}, "provider_message_id": "m1", "sender": {"provider_id": "ada"},
                 "attachments": [{"kind": "file", "provider_file_id": "f1"}], "sent_at": "2026-11-21T10:00:00Z"}});
    let (_, ingested) = post(&gateway, "/v1/events", event).await;
    let webchat = format!(
        "/v1/messages/{}/attachments/0",
        ingested["message_id"].as_str().unwrap()
    );
    expect(&webchat, 422, "not_supported").await;

    let log = gateway.log_text();
    assert!(!log.contains("TEST-token_abc"), "the token is in the log");
    assert!(!log.contains("/file/bot"), "a file URL is in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reply_deleted_before_it_went_out_is_never_sent() {
    let setup = Setup::new(Duration::ZERO).await;
    let gateway = start(&setup.config("    dm_policy: open\n", "")).await;
    let tg = &setup.telegram;
    // The reply's first attempt fails, so it waits in the outbox for its retry.
    tg.fail_next(BOT, "sendMessage", Failure::ServerError);
    setup
        .model
        .enqueue(Reply::Text("You will never read this.".into()));
    tg.user_sends(BOT, &ChatSpec::private(42), &ann(), "hello");
    let (conversation, reply) = eventually("the reply waiting", &gateway, async || {
        let list = get(&gateway, "/v1/conversations?channel=telegram").await;
        let conversation = list["items"][0]["id"].as_str()?.to_string();
        let page = get(
            &gateway,
            &format!("/v1/conversations/{conversation}/messages"),
        )
        .await;
        let reply =
            (page["items"].as_array()?.iter()).find(|m| m["direction"] == "outbound")?["id"]
                .as_str()?
                .to_string();
        let failed = tg
            .calls(BOT)
            .iter()
            .any(|c| c.method == "sendMessage" && c.status == 502);
        failed.then_some((conversation, reply))
    })
    .await;
    let (status, view) = request(
        &gateway,
        reqwest::Method::DELETE,
        &format!("/v1/messages/{reply}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        (view["deleted"].as_bool(), view.get("text")),
        (Some(true), None)
    );
    assert_eq!(view["status"], "failed", "it will not be sent");

    // Messages of a conversation go out in order: the next one arriving means the deleted
    // one was settled.
    let path = format!("/v1/conversations/{conversation}/send/after");
    let (status, _) = request(
        &gateway,
        reqwest::Method::PUT,
        &path,
        Some(json!({"text": "after"})),
    )
    .await;
    assert_eq!(status, 200);
    let sent = tg.wait_for_sent(BOT, 1, Duration::from_secs(10)).await;
    assert_eq!(sent.len(), 1, "{}", gateway.log_text());
    assert_eq!(sent[0].text, "after");
    assert!(
        !tg.calls(BOT).iter().any(|c| c.method == "deleteMessage"),
        "nothing to delete at Telegram"
    );
}

/// A message queued behind one that waits for its retry goes out right after it, not at
/// the sender's next 5 s safety pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_queued_behind_a_retry_follows_it_at_once() {
    let setup = Setup::new(Duration::ZERO).await;
    let gateway = start(&setup.config("    dm_policy: open\n", "")).await;
    let tg = &setup.telegram;
    setup.model.enqueue(Reply::Text("first".into()));
    tg.user_sends(BOT, &ChatSpec::private(42), &ann(), "hello");
    assert_eq!(
        tg.wait_for_sent(BOT, 1, Duration::from_secs(10))
            .await
            .len(),
        1
    );
    let list = get(&gateway, "/v1/conversations?channel=telegram").await;
    let conversation = list["items"][0]["id"].as_str().unwrap().to_string();
    let send = async |txn: &str, text: &str| {
        let path = format!("/v1/conversations/{conversation}/send/{txn}");
        let (status, view) = request(
            &gateway,
            reqwest::Method::PUT,
            &path,
            Some(json!({ "text": text })),
        )
        .await;
        assert_eq!(status, 200, "{view}");
    };
    tg.fail_next(BOT, "sendMessage", Failure::ServerError);
    send("second", "second").await;
    eventually("the failed attempt", &gateway, async || {
        (tg.calls(BOT).iter())
            .any(|c| c.method == "sendMessage" && c.status == 502)
            .then_some(())
    })
    .await;
    send("third", "third").await;
    // The retry comes within 1 s, the next message 1 s after it (1 message/s per chat).
    let sent = tg.wait_for_sent(BOT, 3, Duration::from_secs(4)).await;
    let texts: Vec<_> = sent.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(
        texts,
        ["first", "second", "third"],
        "{}",
        gateway.log_text()
    );
}
