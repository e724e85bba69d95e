//! The fakes as standalone servers, to try a gateway locally without any account:
//!
//! ```text
//! moltbot-fakes openai --listen 127.0.0.1:8091
//! moltbot-fakes telegram --listen 127.0.0.1:8090 --token 123456:LOCAL-demo
//! ```
//!
//! The Telegram fake reads lines on stdin and sends each as a message from a person to the
//! bot, and prints what the bot sends back.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use moltbot_fakes::openai::{FakeOpenAi, FakeOpenAiConfig};
use moltbot_fakes::telegram::{ChatSpec, FakeTelegram, FakeTelegramConfig, UserSpec};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Parser)]
#[command(version, about = "Local fakes of Telegram and OpenAI-compatible APIs")]
struct Args {
    #[command(subcommand)]
    fake: Fake,
}

#[derive(Subcommand)]
enum Fake {
    /// A Telegram Bot API with one bot; stdin lines become a person's messages.
    Telegram {
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
        /// The bot's token, as the gateway's config gives it.
        #[arg(long, env = "MOLTBOT_TELEGRAM_TOKEN")]
        token: String,
        #[arg(long, default_value = "pi_local_bot")]
        username: String,
        /// The person's Telegram user id (also their private chat's id).
        #[arg(long, default_value_t = 1001)]
        user_id: i64,
    },
    /// An OpenAI-compatible chat completions API that echoes.
    Openai {
        #[arg(long, default_value = "127.0.0.1:8091")]
        listen: SocketAddr,
        /// Required of clients when given.
        #[arg(long, env = "OPENAI_API_KEY")]
        api_key: Option<String>,
        #[arg(long, default_value = "fake-pi")]
        model: String,
        /// Delay before each answer, in milliseconds.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    match Args::parse().fake {
        Fake::Telegram {
            listen,
            token,
            username,
            user_id,
        } => {
            let fake = FakeTelegram::start_on(listen, FakeTelegramConfig::default())
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            fake.add_bot(&token, &username);
            eprintln!(
                "fake Telegram Bot API at {}; type a message and press enter",
                fake.base_url()
            );
            let printer = fake.clone();
            let printed_token = token.clone();
            tokio::spawn(async move {
                let mut shown = 0;
                loop {
                    let sent = printer.sent(&printed_token);
                    for message in sent.iter().skip(shown) {
                        println!("@{username}: {}", message.text);
                    }
                    shown = sent.len();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            let person = UserSpec::new(user_id, "You");
            let mut lines = BufReader::new(tokio::io::stdin()).lines();
            while let Some(line) = lines.next_line().await? {
                if !line.trim().is_empty() {
                    fake.user_sends(&token, &ChatSpec::private(user_id), &person, &line);
                }
            }
            // Stdin closed (a pipe ended): keep serving until interrupted.
            tokio::signal::ctrl_c().await?;
        }
        Fake::Openai {
            listen,
            api_key,
            model,
            delay_ms,
        } => {
            let fake = FakeOpenAi::start_on(
                listen,
                FakeOpenAiConfig {
                    api_key,
                    models: vec![model],
                    delay: Duration::from_millis(delay_ms),
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
            eprintln!("fake OpenAI-compatible API at {}", fake.base_url());
            tokio::signal::ctrl_c().await?;
        }
    }
    Ok(())
}
