//! The Telegram fake, driven over HTTP with reqwest the way a connector drives the real Bot API.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use moltbot_fakes::telegram::{
    ChatSpec, Failure, FakeTelegram, FakeTelegramConfig, RateLimits, SentMessage, UserSpec,
    WebhookState,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const TOKEN: &str = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11";
const BOT_ID: i64 = 123_456;
const ALICE_ID: i64 = 42;
const NOT_MODIFIED: &str = "Bad Request: message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message";
const CONFLICT_OTHER_POLL: &str = "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running";
const CONFLICT_WEBHOOK_ACTIVE: &str = "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first";

async fn start(config: FakeTelegramConfig) -> FakeTelegram {
    let fake = FakeTelegram::start(config).await.expect("fake starts");
    let bot = fake.add_bot(TOKEN, "fake_bot");
    assert_eq!(bot.id, BOT_ID);
    fake
}

async fn fake() -> FakeTelegram {
    start(FakeTelegramConfig::default()).await
}

fn alice() -> UserSpec {
    UserSpec {
        id: ALICE_ID,
        first_name: "Alice".to_owned(),
        last_name: Some("Liddell".to_owned()),
        username: Some("alice".to_owned()),
    }
}

fn alice_chat() -> ChatSpec {
    ChatSpec::private(ALICE_ID)
}

fn method_url(fake: &FakeTelegram, token: &str, method: &str) -> String {
    format!("{}/bot{token}/{method}", fake.base_url())
}

async fn read(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json().await.expect("a JSON answer");
    (status, body)
}

/// Calls a method with a JSON body.
async fn call(fake: &FakeTelegram, method: &str, params: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(method_url(fake, TOKEN, method))
        .json(&params)
        .send()
        .await
        .expect("the fake answers");
    read(response).await
}

/// Calls a method that must succeed; returns its result.
async fn ok(fake: &FakeTelegram, method: &str, params: Value) -> Value {
    let (status, body) = call(fake, method, params).await;
    assert_eq!(status, 200, "{method} answered {body}");
    assert_eq!(body["ok"], true);
    body["result"].clone()
}

/// Calls a method that must fail; checks the error envelope and returns its description.
async fn refused(fake: &FakeTelegram, method: &str, params: Value, status: u16) -> String {
    let (answered, body) = call(fake, method, params).await;
    assert_eq!(answered, status, "{method} answered {body}");
    assert_error_body(&body, status)
}

fn assert_error_body(body: &Value, status: u16) -> String {
    assert_eq!(body["ok"], false, "{body}");
    assert_eq!(body["error_code"], status, "{body}");
    body["description"]
        .as_str()
        .expect("a description")
        .to_owned()
}

/// Telegram omits absent fields; it never sends null.
fn assert_no_nulls(value: &Value) {
    match value {
        Value::Null => panic!("null in a Bot API object"),
        Value::Array(items) => items.iter().for_each(assert_no_nulls),
        Value::Object(fields) => fields.values().for_each(assert_no_nulls),
        _ => {}
    }
}

fn texts(sent: &[SentMessage]) -> Vec<&str> {
    sent.iter().map(|message| message.text.as_str()).collect()
}

fn update_ids(updates: &Value) -> Vec<i64> {
    updates
        .as_array()
        .expect("an array of updates")
        .iter()
        .map(|update| update["update_id"].as_i64().expect("an update_id"))
        .collect()
}

fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

#[tokio::test]
async fn get_me_describes_the_bot_and_bad_tokens_and_methods_are_refused() {
    let fake = fake().await;
    let me = ok(&fake, "getMe", json!({})).await;
    assert_eq!(
        me,
        json!({
            "id": BOT_ID,
            "is_bot": true,
            "first_name": "fake_bot",
            "username": "fake_bot",
            "can_join_groups": true,
            "can_read_all_group_messages": false,
            "supports_inline_queries": false,
            "can_connect_to_business": false,
            "has_main_web_app": false,
        })
    );

    // Method names are case-insensitive, and GET works as well as POST.
    let response = reqwest::get(method_url(&fake, TOKEN, "GETME"))
        .await
        .unwrap();
    let (status, body) = read(response).await;
    assert_eq!((status, &body["result"]), (200, &me));

    let response = reqwest::get(method_url(&fake, "999:unknown", "getMe"))
        .await
        .unwrap();
    let (status, body) = read(response).await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!({"ok": false, "error_code": 401, "description": "Unauthorized"})
    );

    let (status, body) = call(&fake, "sendPigeon", json!({})).await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        json!({"ok": false, "error_code": 404, "description": "Not Found"})
    );

    let calls: Vec<(String, u16)> = fake
        .calls(TOKEN)
        .into_iter()
        .map(|call| (call.method, call.status))
        .collect();
    let expected = [("getMe", 200), ("getMe", 200), ("sendPigeon", 404)];
    assert_eq!(
        calls,
        expected.map(|(method, status)| (method.to_owned(), status))
    );
}

#[tokio::test]
async fn get_updates_returns_messages_until_an_offset_confirms_them() {
    let fake = fake().await;
    let sent = fake.user_sends(TOKEN, &alice_chat(), &alice(), "hello");
    fake.user_sends(TOKEN, &alice_chat(), &alice(), "second");

    let updates = ok(&fake, "getUpdates", json!({})).await;
    assert_eq!(update_ids(&updates), [1000, 1001]);
    let message = &updates[0]["message"];
    assert_eq!(message, &sent);
    assert_no_nulls(&updates);
    assert_eq!(message["message_id"], 1);
    assert_eq!(
        message["from"],
        json!({"id": ALICE_ID, "is_bot": false, "first_name": "Alice", "last_name": "Liddell", "username": "alice"})
    );
    assert_eq!(
        message["chat"],
        json!({"id": ALICE_ID, "type": "private", "first_name": "Alice", "last_name": "Liddell", "username": "alice"})
    );
    assert_eq!(message["text"], "hello");
    let date = message["date"].as_i64().expect("a date");
    assert!((unix_now() - date).abs() <= 5, "date {date} is not now");
    assert!(message.get("edit_date").is_none());
    assert_eq!(updates[1]["message"]["message_id"], 2);

    // Reading does not confirm.
    let again = ok(&fake, "getUpdates", json!({})).await;
    assert_eq!(update_ids(&again), [1000, 1001]);

    let rest = ok(&fake, "getUpdates", json!({"offset": 1001})).await;
    assert_eq!(update_ids(&rest), [1001]);
    assert_eq!(fake.pending_updates(TOKEN), 1);
    // A confirmed update is gone for good, even for an older offset.
    let old_offset = ok(&fake, "getUpdates", json!({"offset": 1000})).await;
    assert_eq!(update_ids(&old_offset), [1001]);

    let none = ok(&fake, "getUpdates", json!({"offset": 1002})).await;
    assert_eq!(none, json!([]));
    assert_eq!(fake.pending_updates(TOKEN), 0);

    for text in ["a", "b", "c"] {
        fake.user_sends(TOKEN, &alice_chat(), &alice(), text);
    }
    let limited = ok(&fake, "getUpdates", json!({"limit": 2})).await;
    assert_eq!(update_ids(&limited), [1002, 1003]);
    // Numbers are read leniently, as Telegram does: "abc" is 0, which clamps to a limit of 1.
    let lenient = ok(&fake, "getUpdates", json!({"limit": "abc"})).await;
    assert_eq!(update_ids(&lenient), [1002]);
    // A negative offset keeps only that many of the latest updates.
    let last = ok(&fake, "getUpdates", json!({"offset": -1})).await;
    assert_eq!(update_ids(&last), [1004]);
    assert_eq!(fake.pending_updates(TOKEN), 1);
}

#[tokio::test]
async fn a_long_poll_returns_as_soon_as_a_message_arrives() {
    let fake = fake().await;
    let poller = fake.clone();
    let started = Instant::now();
    let poll = tokio::spawn(async move { ok(&poller, "getUpdates", json!({"timeout": 10})).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    fake.user_sends(TOKEN, &alice_chat(), &alice(), "wake up");
    let updates = poll.await.unwrap();
    let waited = started.elapsed();
    assert_eq!(updates[0]["message"]["text"], "wake up");
    assert!(
        waited >= Duration::from_millis(250),
        "answered before the message: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "waited for the timeout: {waited:?}"
    );

    // With nothing arriving it waits out its timeout and answers an empty list.
    let started = Instant::now();
    let updates = ok(&fake, "getUpdates", json!({"offset": 1001, "timeout": 1})).await;
    assert_eq!(updates, json!([]));
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn a_second_long_poll_terminates_the_first_with_409() {
    let fake = fake().await;
    let first = {
        let fake = fake.clone();
        tokio::spawn(async move { call(&fake, "getUpdates", json!({"timeout": 10})).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = {
        let fake = fake.clone();
        tokio::spawn(async move { call(&fake, "getUpdates", json!({"timeout": 1})).await })
    };
    // The earlier call is answered at once, while the newer one keeps waiting.
    let (status, body) = tokio::time::timeout(Duration::from_millis(800), first)
        .await
        .expect("the first poll was terminated")
        .unwrap();
    assert_eq!(status, 409);
    assert_eq!(assert_error_body(&body, 409), CONFLICT_OTHER_POLL);
    let (status, body) = second.await.unwrap();
    assert_eq!((status, &body["result"]), (200, &json!([])));

    // A call that does not wait (timeout 0) leaves a waiting one alone, as on the real server.
    let waiting = {
        let fake = fake.clone();
        tokio::spawn(async move { call(&fake, "getUpdates", json!({"timeout": 1})).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ok(&fake, "getUpdates", json!({})).await, json!([]));
    let (status, _) = waiting.await.unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn get_updates_conflicts_with_a_webhook() {
    let fake = fake().await;
    let waiting = {
        let fake = fake.clone();
        tokio::spawn(async move { call(&fake, "getUpdates", json!({"timeout": 10})).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = call(
        &fake,
        "setWebhook",
        json!({"url": "http://127.0.0.1:9/hook"}),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"ok": true, "result": true, "description": "Webhook was set"})
        )
    );
    let (status, body) = waiting.await.unwrap();
    assert_eq!(status, 409);
    assert_eq!(
        assert_error_body(&body, 409),
        "Conflict: terminated by setWebhook request"
    );

    let description = refused(&fake, "getUpdates", json!({}), 409).await;
    assert_eq!(description, CONFLICT_WEBHOOK_ACTIVE);

    let (_, body) = call(&fake, "deleteWebhook", json!({})).await;
    assert_eq!(body["description"], "Webhook was deleted");
    assert_eq!(fake.webhook(TOKEN), None);
    assert_eq!(ok(&fake, "getUpdates", json!({})).await, json!([]));
    let (_, body) = call(&fake, "deleteWebhook", json!({})).await;
    assert_eq!(body["description"], "Webhook is already deleted");
}

/// A webhook endpoint that fails its first `failures` requests with 500.
struct Receiver {
    url: String,
    /// Each request's secret header and body, as they arrive.
    requests: mpsc::UnboundedReceiver<(Option<String>, Value)>,
}

#[derive(Clone)]
struct ReceiverState {
    requests: mpsc::UnboundedSender<(Option<String>, Value)>,
    failures_left: Arc<AtomicUsize>,
}

async fn receive(
    State(state): State<ReceiverState>,
    headers: HeaderMap,
    Json(update): Json<Value>,
) -> StatusCode {
    let secret = headers
        .get("x-telegram-bot-api-secret-token")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    state.requests.send((secret, update)).unwrap();
    let fail = state
        .failures_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
            left.checked_sub(1)
        })
        .is_ok();
    if fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

async fn webhook_receiver(failures: usize) -> Receiver {
    let (sender, requests) = mpsc::unbounded_channel();
    let state = ReceiverState {
        requests: sender,
        failures_left: Arc::new(AtomicUsize::new(failures)),
    };
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver { url, requests }
}

async fn next_request(receiver: &mut Receiver) -> (Option<String>, Value) {
    tokio::time::timeout(Duration::from_secs(5), receiver.requests.recv())
        .await
        .expect("a delivery within 5 s")
        .expect("the receiver runs")
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_webhook_gets_updates_with_the_secret_in_order_and_retried_after_a_500() {
    let fake = fake().await;
    let mut receiver = webhook_receiver(1).await;
    fake.user_sends(TOKEN, &alice_chat(), &alice(), "one");
    fake.user_sends(TOKEN, &alice_chat(), &alice(), "two");

    let secret = "s3cret_-TOKEN";
    let params = json!({"url": receiver.url, "secret_token": secret, "max_connections": 5});
    assert_eq!(ok(&fake, "setWebhook", params).await, true);

    let mut deliveries = Vec::new();
    for _ in 0..3 {
        let (header, update) = next_request(&mut receiver).await;
        assert_eq!(header.as_deref(), Some(secret));
        deliveries.push((
            update["update_id"].clone(),
            update["message"]["text"].clone(),
        ));
    }
    // "one" failed with 500 and was retried; "two", from the same chat, waited for it.
    assert_eq!(
        deliveries,
        [
            (json!(1000), json!("one")),
            (json!(1000), json!("one")),
            (json!(1001), json!("two"))
        ]
    );
    wait_until("both updates are confirmed", || {
        fake.pending_updates(TOKEN) == 0
    })
    .await;
    let last_error = "Wrong response from the webhook: 500 Internal Server Error";
    assert_eq!(
        fake.webhook(TOKEN),
        Some(WebhookState {
            url: receiver.url.clone(),
            secret_token: Some(secret.to_owned()),
            pending: 0,
            last_error_message: Some(last_error.to_owned()),
            deliveries: 3,
        })
    );
    let info = ok(&fake, "getWebhookInfo", json!({})).await;
    assert_eq!(info["url"], receiver.url);
    assert_eq!(info["has_custom_certificate"], false);
    assert_eq!(info["pending_update_count"], 0);
    assert_eq!(info["last_error_message"], last_error);
    assert!(info["last_error_date"].is_i64());
    assert_eq!(info["max_connections"], 5);

    // Later messages go straight out.
    fake.user_sends(TOKEN, &alice_chat(), &alice(), "three");
    let (_, update) = next_request(&mut receiver).await;
    assert_eq!(update["message"]["text"], "three");
}

#[tokio::test]
async fn set_webhook_checks_its_parameters_and_pace() {
    let fake = fake().await;
    let description = refused(
        &fake,
        "setWebhook",
        json!({"url": "http://127.0.0.1:9/hook", "secret_token": "not allowed!"}),
        400,
    )
    .await;
    assert_eq!(
        description,
        "Bad Request: secret token contains unallowed characters"
    );
    let long_secret = "a".repeat(257);
    let description = refused(
        &fake,
        "setWebhook",
        json!({"url": "http://127.0.0.1:9/hook", "secret_token": long_secret}),
        400,
    )
    .await;
    assert_eq!(description, "Bad Request: secret token is too long");
    let description = refused(&fake, "setWebhook", json!({"url": "not a url"}), 400).await;
    assert_eq!(description, "Bad Request: invalid webhook URL specified");
    assert_eq!(fake.webhook(TOKEN), None);

    let hook = json!({"url": "http://127.0.0.1:9/hook"});
    assert_eq!(ok(&fake, "setWebhook", hook.clone()).await, true);
    let info = ok(&fake, "getWebhookInfo", json!({})).await;
    assert_eq!(info["max_connections"], 40);
    // Telegram allows one setWebhook per second.
    let (status, body) = call(&fake, "setWebhook", hook.clone()).await;
    assert_eq!(status, 429);
    assert_eq!(body["parameters"]["retry_after"], 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, body) = call(&fake, "setWebhook", hook).await;
    assert_eq!(body["description"], "Webhook is already set");

    // Dropping pending updates on the way out.
    fake.user_sends(TOKEN, &alice_chat(), &alice(), "never delivered");
    assert_eq!(fake.pending_updates(TOKEN), 1);
    ok(
        &fake,
        "deleteWebhook",
        json!({"drop_pending_updates": true}),
    )
    .await;
    assert_eq!(fake.pending_updates(TOKEN), 0);
    let info = ok(&fake, "getWebhookInfo", json!({})).await;
    assert_eq!(
        info,
        json!({"url": "", "has_custom_certificate": false, "pending_update_count": 0})
    );
}

#[tokio::test]
async fn send_message_shares_the_chats_id_sequence_with_the_user() {
    let fake = fake().await;
    let first = fake.user_sends(TOKEN, &alice_chat(), &alice(), "hi bot");
    assert_eq!(first["message_id"], 1);

    let reply = ok(
        &fake,
        "sendMessage",
        json!({"chat_id": ALICE_ID, "text": "hi there"}),
    )
    .await;
    assert_no_nulls(&reply);
    assert_eq!(reply["message_id"], 2);
    assert_eq!(
        reply["from"],
        json!({"id": BOT_ID, "is_bot": true, "first_name": "fake_bot", "username": "fake_bot"})
    );
    assert_eq!(reply["chat"], first["chat"]);
    assert_eq!(reply["text"], "hi there");
    assert!(reply.get("reply_to_message").is_none());

    let third = fake.user_sends(TOKEN, &alice_chat(), &alice(), "how are you?");
    assert_eq!(third["message_id"], 3);

    // chat_id may be a numeric string; reply_parameters names the message answered.
    let params = json!({"chat_id": "42", "text": "fine", "reply_parameters": {"message_id": 3}});
    let answer = ok(&fake, "sendMessage", params).await;
    assert_eq!(answer["message_id"], 4);
    assert_eq!(answer["reply_to_message"]["message_id"], 3);
    assert_eq!(answer["reply_to_message"]["text"], "how are you?");

    let sent = fake.sent(TOKEN);
    assert_eq!(texts(&sent), ["hi there", "fine"]);
    assert_eq!(
        (
            sent[0].chat_id,
            sent[0].message_id,
            sent[0].reply_to_message_id,
            sent[0].edited
        ),
        (ALICE_ID, 2, None, false)
    );
    assert_eq!(
        (sent[1].message_id, sent[1].reply_to_message_id),
        (4, Some(3))
    );
    assert!((unix_now() - sent[0].date).abs() <= 5);
    assert_eq!(fake.sent_to(TOKEN, ALICE_ID), sent);
    assert_eq!(fake.sent_to(TOKEN, 7), []);
    // The bot's own messages are not updates.
    assert_eq!(fake.pending_updates(TOKEN), 2);
}

#[tokio::test]
async fn send_message_refuses_like_telegram() {
    let fake = fake().await;
    fake.user_sends(TOKEN, &alice_chat(), &alice(), "hi");
    let cases = [
        (
            json!({"chat_id": 777, "text": "hi"}),
            "Bad Request: chat not found",
        ),
        (
            json!({"chat_id": "@nobody", "text": "hi"}),
            "Bad Request: chat not found",
        ),
        (json!({"text": "hi"}), "Bad Request: chat_id is empty"),
        (
            json!({"chat_id": ALICE_ID}),
            "Bad Request: message text is empty",
        ),
        (
            json!({"chat_id": ALICE_ID, "text": " \n "}),
            "Bad Request: message text is empty",
        ),
        (
            json!({"chat_id": ALICE_ID, "text": "hi", "reply_parameters": {"message_id": 99}}),
            "Bad Request: message to be replied not found",
        ),
        (
            json!({"chat_id": ALICE_ID, "text": "hi", "reply_to_message_id": 99}),
            "Bad Request: message to be replied not found",
        ),
        (
            json!({"chat_id": ALICE_ID, "text": "hi", "reply_parameters": "{not json"}),
            "Bad Request: can't parse reply parameters JSON object",
        ),
    ];
    for (params, expected) in cases {
        let description = refused(&fake, "sendMessage", params.clone(), 400).await;
        assert_eq!(description, expected, "for {params}");
    }
    assert_eq!(fake.sent(TOKEN), []);

    let params = json!({
        "chat_id": ALICE_ID,
        "text": "  anyway  ",
        "reply_parameters": {"message_id": 99, "allow_sending_without_reply": true},
    });
    let sent = ok(&fake, "sendMessage", params).await;
    assert!(sent.get("reply_to_message").is_none());
    // Telegram trims surrounding whitespace.
    assert_eq!(sent["text"], "anyway");
}

#[tokio::test]
async fn message_length_is_counted_in_utf16_code_units() {
    let fake = fake().await;
    fake.user_sends(TOKEN, &alice_chat(), &alice(), "hi");
    let send = |text: String| {
        let fake = fake.clone();
        async move {
            call(
                &fake,
                "sendMessage",
                json!({"chat_id": ALICE_ID, "text": text}),
            )
            .await
        }
    };
    // '😀' is two UTF-16 code units: 2048 of them are exactly the 4096 allowed.
    assert_eq!(send("😀".repeat(2048)).await.0, 200);
    for too_long in ["😀".repeat(2049), "😀".repeat(4096), "a".repeat(4097)] {
        let (status, body) = send(too_long).await;
        assert_eq!(status, 400);
        assert_eq!(
            assert_error_body(&body, 400),
            "Bad Request: message is too long"
        );
    }
    assert_eq!(send("a".repeat(4096)).await.0, 200);
    assert_eq!(fake.sent(TOKEN).len(), 2);
}

#[tokio::test]
async fn edit_message_text_answers_like_telegram() {
    let fake = fake().await;
    fake.user_sends(TOKEN, &alice_chat(), &alice(), "question");
    ok(
        &fake,
        "sendMessage",
        json!({"chat_id": ALICE_ID, "text": "draft"}),
    )
    .await;

    let edit = |message_id: Value, text: &str| json!({"chat_id": ALICE_ID, "message_id": message_id, "text": text});
    let edited = ok(&fake, "editMessageText", edit(json!(2), "final")).await;
    assert_eq!(edited["message_id"], 2);
    assert_eq!(edited["text"], "final");
    assert!(edited["edit_date"].is_i64());
    let sent = fake.sent(TOKEN);
    assert_eq!((sent[0].text.as_str(), sent[0].edited), ("final", true));

    // Probing with the current text is how a connector recognizes its own message.
    let cases = [
        (edit(json!(2), "final"), NOT_MODIFIED.to_owned()),
        (
            edit(json!(99), "final"),
            "Bad Request: message to edit not found".to_owned(),
        ),
        (
            edit(json!(1), "hijacked"),
            "Bad Request: message can't be edited".to_owned(),
        ),
        (
            json!({"chat_id": ALICE_ID, "text": "final"}),
            "Bad Request: message identifier is not specified".to_owned(),
        ),
        (
            edit(json!(2), ""),
            "Bad Request: message text is empty".to_owned(),
        ),
        (
            edit(json!(2), &"a".repeat(4097)),
            "Bad Request: MESSAGE_TOO_LONG".to_owned(),
        ),
        (
            json!({"chat_id": 777, "message_id": 2, "text": "x"}),
            "Bad Request: chat not found".to_owned(),
        ),
    ];
    for (params, expected) in cases {
        let description = refused(&fake, "editMessageText", params.clone(), 400).await;
        assert_eq!(description, expected, "for {params}");
    }
    assert_eq!(texts(&fake.sent(TOKEN)), ["final"]);
    let statuses: Vec<u16> = fake.calls(TOKEN).iter().map(|call| call.status).collect();
    assert_eq!(statuses, [200, 200, 400, 400, 400, 400, 400, 400, 400]);
}

#[tokio::test]
async fn user_edits_and_replies_produce_the_right_updates() {
    let fake = fake().await;
    fake.user_sends(TOKEN, &alice_chat(), &alice(), "tpyo");
    let edited = fake.user_edits(TOKEN, &alice_chat(), &alice(), 1, "typo");
    assert_eq!(edited["text"], "typo");
    let reply = fake.user_replies(TOKEN, &alice_chat(), &alice(), 1, "see above");
    assert_eq!(reply["message_id"], 2);

    let updates = ok(&fake, "getUpdates", json!({})).await;
    assert_eq!(update_ids(&updates), [1000, 1001, 1002]);
    assert_eq!(updates[0]["message"]["text"], "tpyo");
    let edit = &updates[1]["edited_message"];
    assert_eq!(edit, &edited);
    assert_eq!(
        (&edit["message_id"], &edit["text"]),
        (&json!(1), &json!("typo"))
    );
    assert!(edit["edit_date"].is_i64());
    assert!(updates[1].get("message").is_none());
    let replied = &updates[2]["message"]["reply_to_message"];
    assert_eq!(
        (&replied["message_id"], &replied["text"]),
        (&json!(1), &json!("typo"))
    );
    assert!(replied.get("reply_to_message").is_none());
}

#[tokio::test]
async fn group_and_channel_messages_have_telegrams_shapes() {
    let fake = fake().await;
    let group = ChatSpec::supergroup(-100_200, "Tea party");
    let message = fake.user_sends(TOKEN, &group, &alice(), "hello all");
    assert_eq!(
        message["chat"],
        json!({"id": -100_200, "type": "supergroup", "title": "Tea party"})
    );
    assert_eq!(message["from"]["id"], ALICE_ID);

    let channel = ChatSpec::channel(-100_300, "News");
    let post = fake.user_sends(TOKEN, &channel, &alice(), "breaking");
    let channel_chat = json!({"id": -100_300, "type": "channel", "title": "News"});
    assert_eq!(post["chat"], channel_chat);
    assert_eq!(post["sender_chat"], channel_chat);
    assert!(post.get("from").is_none());

    let updates = ok(&fake, "getUpdates", json!({})).await;
    assert_eq!(updates[0]["message"], message);
    assert_eq!(updates[1]["channel_post"], post);
    // Each chat numbers its messages from 1, and the bot can answer in the group.
    let answer = ok(
        &fake,
        "sendMessage",
        json!({"chat_id": -100_200, "text": "hi"}),
    )
    .await;
    assert_eq!(answer["message_id"], 2);
}

#[tokio::test]
async fn allowed_updates_filters_new_updates() {
    let fake = fake().await;
    let only_edits = json!({"allowed_updates": ["edited_message"]});
    assert_eq!(ok(&fake, "getUpdates", only_edits).await, json!([]));
    fake.user_sends(TOKEN, &alice_chat(), &alice(), "not wanted");
    assert_eq!(fake.pending_updates(TOKEN), 0);
    fake.user_edits(TOKEN, &alice_chat(), &alice(), 1, "wanted");
    let updates = ok(&fake, "getUpdates", json!({})).await;
    assert_eq!(updates[0]["edited_message"]["text"], "wanted");

    // An empty list restores the default subscription.
    ok(
        &fake,
        "getUpdates",
        json!({"offset": 1001, "allowed_updates": []}),
    )
    .await;
    fake.user_sends(TOKEN, &alice_chat(), &alice(), "wanted again");
    let updates = ok(&fake, "getUpdates", json!({})).await;
    assert_eq!(updates[0]["message"]["text"], "wanted again");
}

#[tokio::test]
async fn get_file_serves_photo_and_document_bytes() {
    let fake = fake().await;
    let http = reqwest::Client::new();
    let photo_bytes: Vec<u8> = (0..=255).collect();
    let message = fake.user_sends_photo(
        TOKEN,
        &alice_chat(),
        &alice(),
        Some("look"),
        photo_bytes.clone(),
    );
    assert_no_nulls(&message);
    assert_eq!(message["caption"], "look");
    assert!(message.get("text").is_none());
    let sizes = message["photo"].as_array().expect("photo sizes");
    assert_eq!(sizes.len(), 2);
    assert!(sizes[0]["width"].as_u64() < sizes[1]["width"].as_u64());
    assert_ne!(sizes[0]["file_id"], sizes[1]["file_id"]);
    let largest = &sizes[1];
    assert_eq!(largest["file_size"], 256);

    let file = ok(&fake, "getFile", json!({"file_id": largest["file_id"]})).await;
    assert_eq!(file["file_id"], largest["file_id"]);
    assert_eq!(file["file_unique_id"], largest["file_unique_id"]);
    assert_eq!(file["file_size"], 256);
    let path = file["file_path"].as_str().expect("a file_path");
    assert!(path.starts_with("photos/"), "{path}");
    let url = format!("{}/file/bot{TOKEN}/{path}", fake.base_url());
    let download = http.get(&url).send().await.unwrap();
    assert_eq!(download.status(), 200);
    assert_eq!(download.bytes().await.unwrap(), photo_bytes);

    let pdf = b"%PDF-1.7 fake".to_vec();
    let message = fake.user_sends_document(
        TOKEN,
        &alice_chat(),
        &alice(),
        "report.pdf",
        "application/pdf",
        pdf.clone(),
    );
    let document = &message["document"];
    assert_eq!(document["file_name"], "report.pdf");
    assert_eq!(document["mime_type"], "application/pdf");
    assert_eq!(document["file_size"], pdf.len());
    let file = ok(&fake, "getFile", json!({"file_id": document["file_id"]})).await;
    let path = file["file_path"].as_str().unwrap();
    assert!(
        path.starts_with("documents/") && path.ends_with(".pdf"),
        "{path}"
    );
    let download = http
        .get(format!("{}/file/bot{TOKEN}/{path}", fake.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(download.headers()["content-type"], "application/pdf");
    assert_eq!(download.bytes().await.unwrap(), pdf);

    let description = refused(&fake, "getFile", json!({"file_id": "nope"}), 400).await;
    assert_eq!(description, "Bad Request: invalid file_id");
    for url in [
        format!("{}/file/bot{TOKEN}/documents/missing.pdf", fake.base_url()),
        format!("{}/file/bot999:other/{path}", fake.base_url()),
    ] {
        let (status, body) = read(http.get(&url).send().await.unwrap()).await;
        assert_eq!(status, 404);
        assert_eq!(assert_error_body(&body, 404), "Not Found");
    }

    let huge = vec![0u8; 20 * 1024 * 1024 + 1];
    let message = fake.user_sends_document(
        TOKEN,
        &alice_chat(),
        &alice(),
        "huge.bin",
        "application/octet-stream",
        huge,
    );
    let params = json!({"file_id": message["document"]["file_id"]});
    let description = refused(&fake, "getFile", params, 400).await;
    assert_eq!(description, "Bad Request: file is too big");
}

#[tokio::test]
async fn rate_limits_answer_429_and_store_nothing() {
    let limits = RateLimits {
        per_chat_per_sec: 1,
        per_chat_burst: 1,
        global_per_sec: 100,
        global_burst: 100,
    };
    let fake = start(FakeTelegramConfig {
        rate_limits: Some(limits),
        ..FakeTelegramConfig::default()
    })
    .await;
    let bob = UserSpec::new(43, "Bob");
    fake.user_sends(TOKEN, &alice_chat(), &alice(), "hi");
    fake.user_sends(TOKEN, &ChatSpec::private(43), &bob, "hi");

    ok(
        &fake,
        "sendMessage",
        json!({"chat_id": ALICE_ID, "text": "one"}),
    )
    .await;
    let (status, body) = call(
        &fake,
        "sendMessage",
        json!({"chat_id": ALICE_ID, "text": "two"}),
    )
    .await;
    assert_eq!(status, 429);
    assert_eq!(
        body,
        json!({
            "ok": false,
            "error_code": 429,
            "description": "Too Many Requests: retry after 1",
            "parameters": {"retry_after": 1},
        })
    );
    // Edits draw on the same bucket.
    let edit = json!({"chat_id": ALICE_ID, "message_id": 2, "text": "uno"});
    let description = refused(&fake, "editMessageText", edit.clone(), 429).await;
    assert_eq!(description, "Too Many Requests: retry after 1");
    // Another chat has its own bucket.
    ok(
        &fake,
        "sendMessage",
        json!({"chat_id": 43, "text": "to bob"}),
    )
    .await;
    assert_eq!(texts(&fake.sent(TOKEN)), ["one", "to bob"]);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    ok(&fake, "editMessageText", edit).await;
    assert_eq!(texts(&fake.sent(TOKEN)), ["uno", "to bob"]);
}

#[tokio::test]
async fn the_global_rate_limit_spans_chats() {
    let limits = RateLimits {
        per_chat_per_sec: 100,
        per_chat_burst: 100,
        global_per_sec: 1,
        global_burst: 2,
    };
    let fake = start(FakeTelegramConfig {
        rate_limits: Some(limits),
        first_update_id: 1,
    })
    .await;
    for id in [1, 2, 3] {
        fake.user_sends(
            TOKEN,
            &ChatSpec::private(id),
            &UserSpec::new(id, "User"),
            "hi",
        );
    }
    ok(&fake, "sendMessage", json!({"chat_id": 1, "text": "a"})).await;
    ok(&fake, "sendMessage", json!({"chat_id": 2, "text": "b"})).await;
    let (status, body) = call(&fake, "sendMessage", json!({"chat_id": 3, "text": "c"})).await;
    assert_eq!(
        (status, &body["parameters"]["retry_after"]),
        (429, &json!(1))
    );
    assert_eq!(fake.sent(TOKEN).len(), 2);
    let updates = ok(&fake, "getUpdates", json!({})).await;
    assert_eq!(update_ids(&updates), [1, 2, 3]);
}

#[tokio::test]
async fn a_stalled_send_that_applied_is_sent_although_the_client_timed_out() {
    let fake = fake().await;
    fake.user_sends(TOKEN, &alice_chat(), &alice(), "hi");
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let send = |client: &reqwest::Client, text: &str| {
        client
            .post(method_url(&fake, TOKEN, "sendMessage"))
            .json(&json!({"chat_id": ALICE_ID, "text": text}))
            .send()
    };

    let stall = |after_apply| Failure::Stall {
        after_apply,
        duration: Duration::from_secs(2),
    };
    fake.fail_next(TOKEN, "sendMessage", stall(true));
    let error = send(&impatient, "maybe sent")
        .await
        .expect_err("the client times out");
    assert!(error.is_timeout(), "{error}");
    // The ambiguous case: the client saw a timeout, yet the message went out.
    let sent = fake.sent(TOKEN);
    assert_eq!(texts(&sent), ["maybe sent"]);
    assert_eq!(sent[0].message_id, 2);
    let last_call = fake.calls(TOKEN).pop().unwrap();
    assert_eq!(
        (last_call.method.as_str(), last_call.status),
        ("sendMessage", 200)
    );

    fake.fail_next(TOKEN, "sendMessage", stall(false));
    let error = send(&impatient, "lost")
        .await
        .expect_err("the client times out");
    assert!(error.is_timeout(), "{error}");
    assert_eq!(texts(&fake.sent(TOKEN)), ["maybe sent"]);

    // A client that outwaits a stall that did nothing gets 502.
    fake.fail_next(
        TOKEN,
        "sendMessage",
        Failure::Stall {
            after_apply: false,
            duration: Duration::from_millis(300),
        },
    );
    let started = Instant::now();
    let (status, _) = read(send(&reqwest::Client::new(), "lost too").await.unwrap()).await;
    assert_eq!(status, 502);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let next = ok(
        &fake,
        "sendMessage",
        json!({"chat_id": ALICE_ID, "text": "next"}),
    )
    .await;
    assert_eq!(next["message_id"], 3);
    assert_eq!(texts(&fake.sent(TOKEN)), ["maybe sent", "next"]);
}

#[tokio::test]
async fn injected_failures_are_used_in_order_one_per_call() {
    let fake = fake().await;
    fake.user_sends(TOKEN, &alice_chat(), &alice(), "hi");
    let blocked = "Forbidden: bot was blocked by the user";
    let unparsable =
        "Bad Request: can't parse entities: Unsupported start tag \"x\" at byte offset 0";
    for failure in [
        Failure::TooManyRequests { retry_after: 7 },
        Failure::ServerError,
        Failure::Forbidden(blocked.to_owned()),
        Failure::BadRequest(unparsable.to_owned()),
    ] {
        fake.fail_next(TOKEN, "sendMessage", failure);
    }
    let params = json!({"chat_id": ALICE_ID, "text": "hello"});
    let (status, body) = call(&fake, "sendMessage", params.clone()).await;
    assert_eq!(status, 429);
    assert_eq!(body["description"], "Too Many Requests: retry after 7");
    assert_eq!(body["parameters"], json!({"retry_after": 7}));
    let (status, body) = call(&fake, "sendMessage", params.clone()).await;
    assert_eq!(
        (status, body),
        (
            502,
            json!({"ok": false, "error_code": 502, "description": "Bad Gateway"})
        )
    );
    assert_eq!(
        refused(&fake, "sendMessage", params.clone(), 403).await,
        blocked
    );
    assert_eq!(
        refused(&fake, "sendMessage", params.clone(), 400).await,
        unparsable
    );
    assert_eq!(fake.sent(TOKEN), []);
    ok(&fake, "sendMessage", params).await;
    assert_eq!(texts(&fake.sent(TOKEN)), ["hello"]);

    // Method names match case-insensitively, and other methods are unaffected.
    fake.fail_next(TOKEN, "GETME", Failure::ServerError);
    ok(&fake, "getUpdates", json!({})).await;
    assert_eq!(call(&fake, "getMe", json!({})).await.0, 502);
    assert_eq!(call(&fake, "getMe", json!({})).await.0, 200);
}

#[tokio::test]
async fn form_and_query_parameters_work_like_json() {
    let fake = fake().await;
    let http = reqwest::Client::new();
    fake.user_sends(TOKEN, &alice_chat(), &alice(), "hi");

    let form = [
        ("chat_id", "42"),
        ("text", "from a form"),
        ("reply_parameters", r#"{"message_id":1}"#),
    ];
    let response = http
        .post(method_url(&fake, TOKEN, "sendMessage"))
        .form(&form)
        .send()
        .await
        .unwrap();
    let (status, body) = read(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["text"], "from a form");
    assert_eq!(body["result"]["reply_to_message"]["message_id"], 1);

    let response = http
        .get(method_url(&fake, TOKEN, "sendMessage"))
        .query(&[("chat_id", "42"), ("text", "from a query & more")])
        .send()
        .await
        .unwrap();
    let (status, body) = read(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["text"], "from a query & more");
    assert_eq!(
        texts(&fake.sent(TOKEN)),
        ["from a form", "from a query & more"]
    );

    ok(
        &fake,
        "sendMessage",
        json!({"chat_id": ALICE_ID, "text": "json"}),
    )
    .await;
    let received: Vec<Value> = fake
        .calls(TOKEN)
        .into_iter()
        .map(|call| call.params)
        .collect();
    assert_eq!(
        received,
        [
            json!({"chat_id": "42", "text": "from a form", "reply_parameters": r#"{"message_id":1}"#}),
            json!({"chat_id": "42", "text": "from a query & more"}),
            json!({"chat_id": ALICE_ID, "text": "json"}),
        ]
    );

    let raw = |content_type: &'static str, body: &'static str| {
        http.post(method_url(&fake, TOKEN, "sendMessage"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let cases = [
        (
            "application/json",
            "{\"chat_id\": 42,",
            "Bad Request: can't parse JSON object",
        ),
        (
            "application/json",
            "[42]",
            "Bad Request: JSON object expected",
        ),
        (
            "multipart/form-data; boundary=x",
            "--x--",
            "Bad Request: multipart/form-data is not supported by this fake",
        ),
    ];
    for (content_type, body, expected) in cases {
        let (status, answer) = read(raw(content_type, body).await.unwrap()).await;
        assert_eq!(status, 400);
        assert_eq!(assert_error_body(&answer, 400), expected);
    }
}

#[tokio::test]
async fn raw_updates_and_id_jumps_reach_the_client_as_pushed() {
    let fake = fake().await;
    let callback = json!({"callback_query": {"id": "77", "data": "yes"}});
    assert_eq!(fake.push_raw_update(TOKEN, callback), 1000);
    assert_eq!(fake.push_raw_update(TOKEN, json!("not an update")), 1001);
    assert_eq!(
        fake.push_raw_update(TOKEN, json!({"update_id": 5000, "message": 3})),
        5000
    );
    let updates = ok(&fake, "getUpdates", json!({})).await;
    assert_eq!(
        updates,
        json!([
            {"update_id": 1000, "callback_query": {"id": "77", "data": "yes"}},
            "not an update",
            {"update_id": 5000, "message": 3},
        ])
    );
    // Ids continue after an explicit one.
    fake.user_sends(TOKEN, &alice_chat(), &alice(), "after");
    let updates = ok(&fake, "getUpdates", json!({"offset": 5000})).await;
    assert_eq!(update_ids(&updates), [5000, 5001]);

    // After a jump down, the client's offset lies far beyond the queue: the real server then
    // answers from the oldest pending update rather than confirming anything.
    ok(&fake, "getUpdates", json!({"offset": 5002})).await;
    fake.jump_update_ids(TOKEN, 10);
    fake.user_sends(TOKEN, &alice_chat(), &alice(), "after the jump");
    let updates = ok(&fake, "getUpdates", json!({"offset": 5002})).await;
    assert_eq!(update_ids(&updates), [10]);
    assert_eq!(updates[0]["message"]["text"], "after the jump");
    ok(&fake, "getUpdates", json!({"offset": 11})).await;
    assert_eq!(fake.pending_updates(TOKEN), 0);
}

#[tokio::test]
async fn send_chat_action_checks_the_action_and_chat() {
    let fake = fake().await;
    fake.user_sends(TOKEN, &alice_chat(), &alice(), "hi");
    let typing = json!({"chat_id": ALICE_ID, "action": "typing"});
    assert_eq!(ok(&fake, "sendChatAction", typing).await, true);
    let description = refused(
        &fake,
        "sendChatAction",
        json!({"chat_id": ALICE_ID, "action": "dancing"}),
        400,
    )
    .await;
    assert_eq!(
        description,
        "Bad Request: wrong parameter action in request"
    );
    let description = refused(
        &fake,
        "sendChatAction",
        json!({"chat_id": 777, "action": "typing"}),
        400,
    )
    .await;
    assert_eq!(description, "Bad Request: chat not found");
    assert_eq!(fake.sent(TOKEN), []);
}

#[tokio::test]
async fn wait_for_sent_returns_early_or_at_the_timeout() {
    let fake = fake().await;
    fake.user_sends(TOKEN, &alice_chat(), &alice(), "hi");
    let sender = fake.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        ok(
            &sender,
            "sendMessage",
            json!({"chat_id": ALICE_ID, "text": "late"}),
        )
        .await;
    });
    let started = Instant::now();
    let sent = fake.wait_for_sent(TOKEN, 1, Duration::from_secs(5)).await;
    assert_eq!(texts(&sent), ["late"]);
    assert!(started.elapsed() < Duration::from_secs(4));

    let started = Instant::now();
    let sent = fake
        .wait_for_sent(TOKEN, 2, Duration::from_millis(300))
        .await;
    assert_eq!(texts(&sent), ["late"]);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
#[should_panic(expected = "Bob can't edit message 1 in chat -5: NotEditable")]
async fn a_person_cannot_edit_someone_elses_message() {
    let fake = fake().await;
    let group = ChatSpec::group(-5, "Friends");
    fake.user_sends(TOKEN, &group, &alice(), "mine");
    fake.user_edits(TOKEN, &group, &UserSpec::new(43, "Bob"), 1, "yours");
}

#[tokio::test]
async fn delete_message_answers_like_telegram() {
    let fake = fake().await;
    fake.user_sends(TOKEN, &alice_chat(), &alice(), "question");
    let send = json!({"chat_id": ALICE_ID, "text": "answer"});
    ok(&fake, "sendMessage", send.clone()).await;
    ok(&fake, "sendMessage", send).await;
    let delete = |message_id: i64| json!({"chat_id": ALICE_ID, "message_id": message_id});

    assert_eq!(ok(&fake, "deleteMessage", delete(2)).await, true);
    let sent = fake.sent(TOKEN);
    assert_eq!(
        sent.iter().map(|m| m.deleted).collect::<Vec<_>>(),
        [true, false]
    );
    // A deleted message is gone for every method.
    let edit = json!({"chat_id": ALICE_ID, "message_id": 2, "text": "x"});
    let description = refused(&fake, "editMessageText", edit, 400).await;
    assert_eq!(description, "Bad Request: message to edit not found");

    // The bot's own message may be deleted for 48 hours; the person's, in a private chat.
    fake.backdate_message(TOKEN, ALICE_ID, 3, 48 * 3600);
    let cases = [
        (delete(2), "Bad Request: message to delete not found"),
        (delete(99), "Bad Request: message to delete not found"),
        (
            delete(3),
            "Bad Request: message can't be deleted for everyone",
        ),
        (
            json!({"chat_id": ALICE_ID}),
            "Bad Request: message identifier is not specified",
        ),
        (
            json!({"chat_id": 777, "message_id": 1}),
            "Bad Request: chat not found",
        ),
    ];
    for (params, expected) in cases {
        let description = refused(&fake, "deleteMessage", params.clone(), 400).await;
        assert_eq!(description, expected, "for {params}");
    }
    assert_eq!(ok(&fake, "deleteMessage", delete(1)).await, true);

    // In a group the bot is no administrator: someone else's message stays.
    let group = ChatSpec::group(-5, "Friends");
    fake.user_sends(TOKEN, &group, &alice(), "mine");
    let params = json!({"chat_id": -5, "message_id": 1});
    let description = refused(&fake, "deleteMessage", params, 400).await;
    assert_eq!(description, "Bad Request: message can't be deleted");
}

#[tokio::test]
async fn set_message_reaction_takes_one_listed_emoji() {
    let fake = fake().await;
    fake.user_sends(TOKEN, &alice_chat(), &alice(), "hello");
    let react =
        |reaction: Value| json!({"chat_id": ALICE_ID, "message_id": 1, "reaction": reaction});

    let thumbs = json!([{"type": "emoji", "emoji": "👍"}]);
    assert_eq!(ok(&fake, "setMessageReaction", react(thumbs)).await, true);
    assert_eq!(fake.bot_reactions(TOKEN, ALICE_ID, 1), ["👍"]);
    // A newer call replaces the bot's reaction; an empty list takes it back.
    let heart_fire = json!([{"type": "emoji", "emoji": "❤\u{200d}🔥"}]);
    ok(&fake, "setMessageReaction", react(heart_fire)).await;
    assert_eq!(fake.bot_reactions(TOKEN, ALICE_ID, 1), ["❤\u{200d}🔥"]);

    let cases = [
        (
            react(json!([{"type": "emoji", "emoji": "🦖"}])),
            "Bad Request: REACTION_INVALID",
        ),
        (
            react(json!([{"type": "custom_emoji", "custom_emoji_id": "5"}])),
            "Bad Request: REACTION_INVALID",
        ),
        (
            react(json!([{"type": "emoji", "emoji": "👍"}, {"type": "emoji", "emoji": "🔥"}])),
            "Bad Request: REACTIONS_TOO_MANY",
        ),
        (
            json!({"chat_id": ALICE_ID, "message_id": 9, "reaction": []}),
            "Bad Request: message to react not found",
        ),
    ];
    for (params, expected) in cases {
        let description = refused(&fake, "setMessageReaction", params.clone(), 400).await;
        assert_eq!(description, expected, "for {params}");
    }
    // Refusals changed nothing.
    assert_eq!(fake.bot_reactions(TOKEN, ALICE_ID, 1), ["❤\u{200d}🔥"]);
    ok(&fake, "setMessageReaction", react(json!([]))).await;
    assert!(fake.bot_reactions(TOKEN, ALICE_ID, 1).is_empty());
    // The bot's own reactions never come back as updates.
    assert_eq!(fake.pending_updates(TOKEN), 1);
}

#[tokio::test]
async fn reactions_arrive_only_for_bots_that_ask_for_them() {
    let fake = fake().await;
    fake.user_sends(TOKEN, &alice_chat(), &alice(), "hello");
    ok(
        &fake,
        "sendMessage",
        json!({"chat_id": ALICE_ID, "text": "hi"}),
    )
    .await;
    // The default subscription leaves reactions out.
    fake.user_reacts(TOKEN, &alice_chat(), &alice(), 2, &["👍"]);
    let updates = ok(&fake, "getUpdates", json!({})).await;
    assert_eq!(update_ids(&updates), [1000]);

    let subscribe = json!({"offset": 1001, "allowed_updates": ["message", "message_reaction"]});
    ok(&fake, "getUpdates", subscribe).await;
    fake.user_reacts(TOKEN, &alice_chat(), &alice(), 2, &["🔥"]);
    // Setting the same reactions again changes nothing and sends nothing.
    fake.user_reacts(TOKEN, &alice_chat(), &alice(), 2, &["🔥"]);
    fake.user_reacts(TOKEN, &alice_chat(), &alice(), 2, &[]);
    let updates = ok(&fake, "getUpdates", json!({})).await;
    assert_no_nulls(&updates);
    let reactions: Vec<&Value> = updates
        .as_array()
        .unwrap()
        .iter()
        .map(|u| &u["message_reaction"])
        .collect();
    assert_eq!(reactions.len(), 2, "{updates}");
    assert_eq!(reactions[0]["chat"]["id"], ALICE_ID);
    assert_eq!(reactions[0]["message_id"], 2);
    assert_eq!(reactions[0]["user"]["id"], ALICE_ID);
    assert!(reactions[0]["date"].as_i64().unwrap() >= unix_now() - 5);
    assert_eq!(
        reactions[0]["old_reaction"],
        json!([{"type": "emoji", "emoji": "👍"}])
    );
    assert_eq!(
        reactions[0]["new_reaction"],
        json!([{"type": "emoji", "emoji": "🔥"}])
    );
    assert_eq!(reactions[1]["old_reaction"], reactions[0]["new_reaction"]);
    assert_eq!(reactions[1]["new_reaction"], json!([]));
}
