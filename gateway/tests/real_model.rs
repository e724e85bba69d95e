//! Pi against a real model instead of the fake: llama-cpp-python's OpenAI-compatible server
//! with Gemma 3 270M. That is a base model without tool calls, so this proves the wire
//! format only: the streamed chunks as a real server writes them, the stream's end, and
//! what a run records from a server that reports no usage in its stream.
//!
//! Needs `MOLTBOT_LLAMA_PYTHON`, a Python with `llama-cpp-python[server]`, and
//! `MOLTBOT_LLAMA_MODEL`, the GGUF file; `bash .ci/real-model` installs both (once, under
//! `/var/tmp`) and runs this. Ignored by the plain test command.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::stream::{bearer_header, connect, next_frame, next_frame_within};
use common::{Gateway, Ready, TOKEN, free_addr, write_config};
use moltbot_fakes::telegram::{ChatSpec, FakeTelegram, FakeTelegramConfig, UserSpec};
use moltbot_protocol::inbox::{Direction, RunState, ServerFrame};
use serde_json::Value;

const BOT: &str = "123456:SMOKE-token_abc";
/// The name the server gives the model.
const MODEL: &str = "gemma-3-270m";

/// llama-cpp-python's server on a free port, stopped when dropped.
struct LlamaServer {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl LlamaServer {
    fn start(python: &str, model: &str, dir: &Path) -> LlamaServer {
        let addr = free_addr();
        let log = dir.join("llama.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(python)
            .args([
                "-m",
                "llama_cpp.server",
                "--model",
                model,
                "--model_alias",
                MODEL,
            ])
            .args(["--chat_format", "gemma", "--n_ctx", "4096", "--seed", "7"])
            .args([
                "--host",
                &addr.ip().to_string(),
                "--port",
                &addr.port().to_string(),
            ])
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("start llama_cpp.server");
        let mut server = LlamaServer { child, addr, log };
        let ready = Ready {
            path: "/v1/models",
            within: Duration::from_secs(120),
            every: Duration::from_millis(100),
        };
        ready.wait(&mut server.child, addr, &server.log);
        server
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: `bash .ci/real-model` installs the model server and sets it")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs llama-cpp-python and the Gemma GGUF: bash .ci/real-model"]
async fn pi_answers_on_telegram_through_a_real_openai_compatible_server() {
    let (python, model) = (
        required_env("MOLTBOT_LLAMA_PYTHON"),
        required_env("MOLTBOT_LLAMA_MODEL"),
    );
    let dir = tempfile::tempdir().unwrap();
    let server = {
        let dir = dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || LlamaServer::start(&python, &model, &dir))
            .await
            .unwrap()
    };
    let telegram = FakeTelegram::start(FakeTelegramConfig::default())
        .await
        .unwrap();
    telegram.add_bot(BOT, "pi_smoke_bot");
    let yaml = format!(
        "connections:\n  - type: telegram\n    name: tg\n    token: \"{BOT}\"\n    api_base: {}\n    poll_timeout: 1s\n    dm_policy: open\n\
         agent:\n  default_mode: autopilot\n  max_reply_tokens: 48\n  model:\n    base_url: http://{}/v1\n    model: {MODEL}\n    timeout: 60s\n    max_retries: 0\n    token_limit_field: max_tokens\n",
        telegram.base_url(),
        server.addr,
    );
    let config = write_config(dir.path(), &yaml);
    let gateway = tokio::task::spawn_blocking(move || Gateway::start(&config).0)
        .await
        .unwrap();
    let mut stream = connect(gateway.addr, "", bearer_header).await;
    let subscribed = next_frame(&mut stream).await;
    assert!(matches!(subscribed, ServerFrame::Subscriptions(_)));

    let ann = UserSpec::new(42, "Ann");
    telegram.user_sends(BOT, &ChatSpec::private(42), &ann, "Hello! Who are you?");
    let mut deltas = Vec::new();
    let (run, reply) = loop {
        match next_frame_within(&mut stream, Duration::from_secs(60)).await {
            ServerFrame::AgentDelta(delta) => deltas.push(delta.text),
            ServerFrame::AgentRun(run) if run.state == RunState::Failed => panic!(
                "the run failed: {run:?}\n{}\n{}",
                gateway.log_text(),
                server.log_text()
            ),
            ServerFrame::MessageCreated(m) if m.direction == Direction::Outbound => {
                break (runs(&gateway).await, m);
            }
            _ => {}
        }
    };
    let text = reply.text.expect("the reply has text");
    assert!(deltas.len() > 1, "streamed in pieces: {deltas:?}");
    assert_eq!(
        deltas.concat().trim(),
        text,
        "the pieces add up to the reply"
    );

    let sent = telegram
        .wait_for_sent(BOT, 1, Duration::from_secs(10))
        .await;
    assert_eq!(sent.len(), 1, "{}", gateway.log_text());
    assert_eq!(sent[0].text, text);
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["model"], MODEL, "{run}");
    // The server sends no usage in its stream: the run records the gateway's estimate.
    for tokens in ["prompt_tokens", "completion_tokens"] {
        assert!(run[tokens].as_u64().unwrap() > 0, "{tokens}: {run}");
    }
}

/// The newest run, as the inbox API shows it.
async fn runs(gateway: &Gateway) -> Value {
    let response = reqwest::Client::new()
        .get(gateway.url("/v1/agent/runs"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    body["items"][0].clone()
}
