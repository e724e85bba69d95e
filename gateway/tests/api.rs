//! The inbox API against the real binary: idempotent ingest and send, pagination, search,
//! read/pin, the stream, auth and bad input.

mod common;

use std::time::Duration;

use common::stream::{Socket, bearer_header, connect, next_frame};
use common::{Gateway, TOKEN, webchat_body, write_config};
use futures_util::SinkExt;
use moltbot_protocol::inbox::{
    ApiError, ConversationView, DeliveryStatus, Direction, ErrorCode, Ingested, MessageView, Page,
    ReactionView, SearchHit, ServerFrame,
};
use reqwest::{Client, Method, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

struct Api {
    gateway: Gateway,
    http: Client,
    _dir: tempfile::TempDir,
}

impl Api {
    fn start() -> Self {
        Self::start_with("")
    }

    fn start_with(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (gateway, _) = Gateway::start(&write_config(dir.path(), extra));
        Api {
            gateway,
            http: Client::new(),
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        self.gateway.url(path)
    }

    async fn get(&self, path: &str) -> Response {
        self.http
            .get(self.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> T {
        let response = self.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.json().await.unwrap()
    }

    async fn post_json(&self, path: &str, body: &serde_json::Value) -> Response {
        self.http
            .post(self.url(path))
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> Response {
        self.http
            .post(self.url(path))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn webchat(&self, session: &str, client_id: &str, text: &str) -> (StatusCode, Ingested) {
        let body = json!({"client_message_id": client_id, "session": session, "sender": {"id": "ada", "display_name": "Ada"}, "text": text});
        let response = self.post_json("/v1/webchat/messages", &body).await;
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    async fn send(&self, conversation: impl std::fmt::Display, txn: &str, text: &str) -> Response {
        self.http
            .put(self.url(&format!("/v1/conversations/{conversation}/send/{txn}")))
            .bearer_auth(TOKEN)
            .json(&json!({ "text": text }))
            .send()
            .await
            .unwrap()
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Response {
        let mut request = self.http.request(method, self.url(path)).bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

async fn expect_error(response: Response, status: StatusCode, code: ErrorCode) -> ApiError {
    assert_eq!(response.status(), status);
    let body: ApiError = response.json().await.expect("error bodies are JSON");
    assert_eq!(body.error, code, "{}", body.message);
    assert!(!body.message.is_empty());
    body
}

#[tokio::test]
async fn ingest_is_idempotent_on_the_dedupe_key() {
    let api = Api::start();
    let (status, first) = api.webchat("s1", "m1", "hello").await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(!first.duplicate);
    let (status, again) = api.webchat("s1", "m1", "hello").await;
    assert_eq!(status, StatusCode::OK);
    assert!(again.duplicate);
    assert_eq!(again.message_id, first.message_id);
    assert_eq!(
        again.event_id, first.event_id,
        "the stored event is the first one"
    );
    // The same client id in another session is another message.
    let (status, other) = api.webchat("s2", "m1", "hello").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_ne!(other.message_id, first.message_id);

    let page: Page<MessageView> = api
        .get_json(&format!(
            "/v1/conversations/{}/messages",
            first.conversation_id.unwrap()
        ))
        .await;
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].text.as_deref(), Some("hello"));
    assert_eq!(page.items[0].direction, Direction::Inbound);
    assert_eq!(
        page.items[0]
            .sender
            .as_ref()
            .unwrap()
            .display_name
            .as_deref(),
        Some("Ada")
    );
    assert_eq!(api.metric("gateway_events_deduplicated_total").await, 1.0);
}

#[tokio::test]
async fn canonical_events_are_ingested_once_and_applied() {
    let api = Api::start();
    let event = |id: &str, kind: &str, data: serde_json::Value| {
        json!({"schema_version": 1, "id": id, "occurred_at": "2026-11-21T10:00:00Z",
               "source": {"channel": "telegram", "connection": "tg"}, "type": kind, "data": data})
    };
    let received = event(
        "01JD0000000000000000000001",
        "message.received",
        json!({
        "conversation": {"provider_id": "chat-9", "kind": "group", "title": "Family"},
        "provider_message_id": "77", "sender": {"provider_id": "u1"}, "text": "dinner at eight",
        "attachments": [{"kind": "image", "mime_type": "image/png", "size_bytes": 10}],
        "sent_at": "2026-11-21T10:00:00Z"}),
    );
    let response = api.post_json("/v1/events", &received).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let ingested: Ingested = response.json().await.unwrap();
    // A redelivery with a new event id is the same provider message.
    let mut redelivered = received.clone();
    redelivered["id"] = json!("01JD0000000000000000000002");
    let response = api.post_json("/v1/events", &redelivered).await;
    assert_eq!(response.status(), StatusCode::OK);
    let again: Ingested = response.json().await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message_id, ingested.message_id);

    let edit = event(
        "01JD0000000000000000000003",
        "message.edited",
        json!({
        "conversation": "chat-9", "provider_message_id": "77", "text": "dinner at nine", "edited_at": "2026-11-21T10:01:00Z"}),
    );
    assert_eq!(
        api.post_json("/v1/events", &edit).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        api.post_json("/v1/events", &edit).await.status(),
        StatusCode::OK
    );

    let message: MessageView = api
        .get_json(&format!("/v1/messages/{}", ingested.message_id.unwrap()))
        .await;
    assert_eq!(message.text.as_deref(), Some("dinner at nine"));
    assert!(message.edited_at.is_some());
    assert_eq!(message.attachments.len(), 1);
    assert_eq!(
        message.attachments[0].mime_type.as_deref(),
        Some("image/png")
    );
    let conversation: ConversationView = api
        .get_json(&format!(
            "/v1/conversations/{}",
            ingested.conversation_id.unwrap()
        ))
        .await;
    assert_eq!(conversation.title.as_deref(), Some("Family"));
    assert_eq!(conversation.unread_count, 1);

    let deletion = event(
        "01JD0000000000000000000004",
        "message.deleted",
        json!({"conversation": "chat-9", "provider_message_id": "77"}),
    );
    assert_eq!(
        api.post_json("/v1/events", &deletion).await.status(),
        StatusCode::CREATED
    );
    let message: MessageView = api
        .get_json(&format!("/v1/messages/{}", ingested.message_id.unwrap()))
        .await;
    assert!(message.deleted);
    assert_eq!(message.text, None, "a deletion removes the text");
    let hits: Page<SearchHit> = api.get_json("/v1/search?q=dinner").await;
    assert!(hits.items.is_empty(), "deleted text is gone from search");
    let conversation: ConversationView = api
        .get_json(&format!(
            "/v1/conversations/{}",
            ingested.conversation_id.unwrap()
        ))
        .await;
    assert_eq!(conversation.unread_count, 0);

    // Agent events come from the gateway itself, never from outside.
    let agent = event(
        "01JD0000000000000000000005",
        "agent.requested",
        json!({
        "conversation_id": "01JD0000000000000000000006", "trigger_message_id": "01JD0000000000000000000007"}),
    );
    expect_error(
        api.post_json("/v1/events", &agent).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::InvalidRequest,
    )
    .await;
}

/// Writes that reach the store together are committed together; one that fails must fail
/// alone, and the search index must still hold every message committed beside it.
#[tokio::test]
async fn a_failing_write_fails_alone_among_concurrent_ones() {
    let api = Api::start();
    let api = &api;
    let missing = "01JD0000000000000000000009";
    let (good, bad) = futures_util::future::join(
        futures_util::future::join_all((0..40).map(|i| async move {
            api.webchat(&format!("s{i}"), &format!("c{i}"), &format!("zebra {i}"))
                .await
        })),
        futures_util::future::join_all(
            (0..40).map(|i| async move { api.send(missing, &format!("t{i}"), "to nowhere").await }),
        ),
    )
    .await;
    for (status, ingested) in &good {
        assert_eq!(*status, StatusCode::CREATED);
        assert!(!ingested.duplicate);
    }
    for response in bad {
        expect_error(response, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    }
    let hits: Page<SearchHit> = api.get_json("/v1/search?q=zebra&limit=100").await;
    assert_eq!(hits.items.len(), 40, "every stored message is searchable");
    let conversations: Page<ConversationView> = api.get_json("/v1/conversations?limit=100").await;
    assert_eq!(conversations.items.len(), 40);
    assert!(conversations.items.iter().all(|c| c.unread_count == 1));
    // Every group with a failing write is run again with a savepoint per write.
    assert!(api.metric("gateway_store_group_reruns").await >= 1.0);
}

#[tokio::test]
async fn send_is_idempotent_on_the_txn_id_and_delivers_web_chat() {
    let api = Api::start();
    let (_, ingested) = api.webchat("s1", "m1", "hi pi").await;
    let conversation = ingested.conversation_id.unwrap();
    let first: MessageView = api
        .send(conversation, "txn-1", "hello back")
        .await
        .json()
        .await
        .unwrap();
    let second = api.send(conversation, "txn-1", "hello back").await;
    assert_eq!(second.status(), StatusCode::OK);
    let second: MessageView = second.json().await.unwrap();
    assert_eq!(first.id, second.id, "same txn id, same message");
    assert_eq!(first.direction, Direction::Outbound);
    assert_eq!(first.txn_id.as_deref(), Some("txn-1"));
    let other: MessageView = api
        .send(conversation, "txn-2", "and again")
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(other.id, first.id);

    // The outbox delivers web-chat replies; wait for the status to move (bounded).
    let mut status = DeliveryStatus::Pending;
    for _ in 0..200 {
        let message: MessageView = api.get_json(&format!("/v1/messages/{}", first.id)).await;
        status = message.status;
        if status == DeliveryStatus::Sent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status, DeliveryStatus::Sent);
    let page: Page<MessageView> = api
        .get_json(&format!("/v1/conversations/{conversation}/messages"))
        .await;
    assert_eq!(
        page.items.len(),
        3,
        "one inbound, two outbound: the retried send stored nothing"
    );

    expect_error(
        api.send("01JD0000000000000000000000", "t", "x").await,
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
    )
    .await;
    expect_error(
        api.send(conversation, "t3", "   ").await,
        StatusCode::BAD_REQUEST,
        ErrorCode::InvalidRequest,
    )
    .await;
}

#[tokio::test]
async fn conversations_and_messages_paginate_without_gaps_or_repeats() {
    let api = Api::start();
    // 7 sessions; session 3 gets 25 messages.
    for n in 0..7 {
        api.webchat(&format!("s{n}"), "first", "opening").await;
    }
    let mut conversation = None;
    for n in 0..25 {
        let (_, ingested) = api
            .webchat("s3", &format!("c{n}"), &format!("message {n}"))
            .await;
        conversation = ingested.conversation_id;
    }
    let conversation = conversation.unwrap();

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let query = cursor
            .as_ref()
            .map(|c| format!("&cursor={c}"))
            .unwrap_or_default();
        let page: Page<ConversationView> = api
            .get_json(&format!("/v1/conversations?limit=3{query}"))
            .await;
        assert!(page.items.len() <= 3);
        seen.extend(page.items.into_iter().map(|c| c.id));
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), 7);
    assert_eq!(
        seen[0], conversation,
        "the most recently active conversation comes first"
    );
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 7);

    let mut texts = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let query = cursor
            .as_ref()
            .map(|c| format!("&cursor={c}"))
            .unwrap_or_default();
        let page: Page<MessageView> = api
            .get_json(&format!(
                "/v1/conversations/{conversation}/messages?limit=10{query}"
            ))
            .await;
        texts.extend(page.items.into_iter().map(|m| m.text.unwrap()));
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    let expected: Vec<String> = std::iter::once("opening".to_string())
        .chain((0..25).map(|n| format!("message {n}")))
        .rev()
        .collect();
    assert_eq!(texts, expected, "newest first, every message exactly once");

    // Pinning moves a conversation to the top; the channel and unread filters apply.
    let last = *seen.last().unwrap();
    let pin = api
        .http
        .put(api.url(&format!("/v1/conversations/{last}/pin")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(pin.status(), StatusCode::NO_CONTENT);
    let page: Page<ConversationView> = api.get_json("/v1/conversations?limit=1").await;
    assert_eq!(page.items[0].id, last);
    assert!(page.items[0].pinned);
    let pinned: Page<ConversationView> = api.get_json("/v1/conversations?pinned=true").await;
    assert_eq!(pinned.items.len(), 1);
    let telegram: Page<ConversationView> = api.get_json("/v1/conversations?channel=telegram").await;
    assert!(telegram.items.is_empty());

    expect_error(
        api.get("/v1/conversations?cursor=bm9wZQ").await,
        StatusCode::BAD_REQUEST,
        ErrorCode::InvalidRequest,
    )
    .await;
    expect_error(
        api.get("/v1/conversations?limit=0").await,
        StatusCode::BAD_REQUEST,
        ErrorCode::InvalidRequest,
    )
    .await;
    expect_error(
        api.get("/v1/conversations?limit=abc").await,
        StatusCode::BAD_REQUEST,
        ErrorCode::InvalidRequest,
    )
    .await;
}

#[tokio::test]
async fn unread_counts_follow_mark_read() {
    let api = Api::start();
    let mut ids = Vec::new();
    for n in 0..4 {
        let (_, ingested) = api.webchat("s1", &format!("m{n}"), "ping").await;
        ids.push(ingested.message_id.unwrap());
    }
    let conversation = api
        .webchat("s1", "m0", "ping")
        .await
        .1
        .conversation_id
        .unwrap();
    let view: ConversationView = api
        .get_json(&format!("/v1/conversations/{conversation}"))
        .await;
    assert_eq!(view.unread_count, 4);
    let unread: Page<ConversationView> = api.get_json("/v1/conversations?unread=true").await;
    assert_eq!(unread.items.len(), 1);

    let read = api
        .post_json(
            &format!("/v1/conversations/{conversation}/read"),
            &json!({"up_to": ids[1]}),
        )
        .await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(
        read.json::<ConversationView>().await.unwrap().unread_count,
        2
    );
    // An older marker arriving late does not make messages unread again.
    let late = api
        .post_json(
            &format!("/v1/conversations/{conversation}/read"),
            &json!({"up_to": ids[0]}),
        )
        .await;
    assert_eq!(
        late.json::<ConversationView>().await.unwrap().unread_count,
        2
    );
    let all = api
        .http
        .post(api.url(&format!("/v1/conversations/{conversation}/read")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        all.json::<ConversationView>().await.unwrap().unread_count,
        0
    );
    let unread: Page<ConversationView> = api.get_json("/v1/conversations?unread=true").await;
    assert!(unread.items.is_empty());

    let foreign = api
        .webchat("s2", "x", "elsewhere")
        .await
        .1
        .message_id
        .unwrap();
    expect_error(
        api.post_json(
            &format!("/v1/conversations/{conversation}/read"),
            &json!({"up_to": foreign}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        ErrorCode::InvalidRequest,
    )
    .await;
}

#[tokio::test]
async fn search_finds_words_prefixes_and_treats_syntax_as_text() {
    let api = Api::start();
    api.webchat("s1", "a", "Let's meet at the café tomorrow")
        .await;
    api.webchat("s1", "b", "the cafe was closed").await;
    api.webchat("s2", "c", "tomorrow never comes").await;
    let hits: Page<SearchHit> = api.get_json("/v1/search?q=cafe").await;
    assert_eq!(hits.items.len(), 2, "diacritics fold: café matches cafe");
    assert!(hits.items.iter().all(|h| h.snippet.contains('[')));
    let hits: Page<SearchHit> = api.get_json("/v1/search?q=tomor").await;
    assert_eq!(hits.items.len(), 2, "the last word is a prefix");
    let hits: Page<SearchHit> = api.get_json("/v1/search?q=meet%20tomorrow").await;
    assert_eq!(hits.items.len(), 1, "all words must match");
    let hits: Page<SearchHit> = api.get_json("/v1/search?q=%22NEAR(%20*").await;
    assert!(
        hits.items.is_empty(),
        "syntax characters are plain words, not errors"
    );
    let page: Page<SearchHit> = api.get_json("/v1/search?q=the&limit=1").await;
    assert_eq!(page.items.len(), 1);
    let rest: Page<SearchHit> = api
        .get_json(&format!(
            "/v1/search?q=the&limit=1&cursor={}",
            page.next_cursor.unwrap()
        ))
        .await;
    assert_eq!(rest.items.len(), 1);
    assert_ne!(rest.items[0].message.id, page.items[0].message.id);
    assert!(rest.next_cursor.is_none());
    expect_error(
        api.get("/v1/search?q=%20").await,
        StatusCode::BAD_REQUEST,
        ErrorCode::InvalidRequest,
    )
    .await;
}

#[tokio::test]
async fn every_inbox_route_requires_the_token() {
    let api = Api::start();
    let routes = [
        ("GET", "/v1/conversations"),
        ("GET", "/v1/conversations/01JD0000000000000000000000"),
        (
            "GET",
            "/v1/conversations/01JD0000000000000000000000/messages",
        ),
        ("PUT", "/v1/conversations/01JD0000000000000000000000/pin"),
        ("POST", "/v1/conversations/01JD0000000000000000000000/read"),
        (
            "POST",
            "/v1/conversations/01JD0000000000000000000000/backfill",
        ),
        ("PUT", "/v1/conversations/01JD0000000000000000000000/send/t"),
        ("GET", "/v1/messages/01JD0000000000000000000000"),
        ("GET", "/v1/search?q=x"),
        ("POST", "/v1/events"),
        ("POST", "/v1/webchat/messages"),
        ("GET", "/v1/stream"),
    ];
    for (method, path) in routes {
        for auth in [
            None,
            Some("Bearer wrong-token-wrong-token"),
            Some("Basic dGVzdA=="),
            Some(TOKEN),
        ] {
            let mut request = api.http.request(method.parse().unwrap(), api.url(path));
            if let Some(value) = auth {
                request = request.header("authorization", value);
            }
            let response = request.send().await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {auth:?}"
            );
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            let body: ApiError = response.json().await.unwrap();
            assert_eq!(body.error, ErrorCode::Unauthorized);
        }
    }
    // Health and metrics stay open for probes and scrapers.
    assert_eq!(
        api.http
            .get(api.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        api.http
            .get(api.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert!(
        api.metric("gateway_rejected_requests_total{code=\"unauthorized\"}")
            .await
            >= 48.0
    );
    assert!(
        !api.gateway.log_text().contains(TOKEN),
        "the token never appears in a log line"
    );
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let api = Api::start_with("limits:\n  max_body_bytes: 2048\n");
    let valid_event = json!({"schema_version": 1, "id": "01JD0000000000000000000001", "occurred_at": "2026-11-21T10:00:00Z",
        "source": {"channel": "webchat", "connection": "webchat"}, "type": "message.received",
        "data": {"conversation": {"provider_id": "s"}, "sender": {"provider_id": "p"}, "text": "ok", "sent_at": "2026-11-21T10:00:00Z"}});
    let mut unknown = valid_event.clone();
    unknown["type"] = json!("message.teleported");
    let mut future = valid_event.clone();
    future["schema_version"] = json!(7);
    let mut empty_sender = valid_event.clone();
    empty_sender["data"]["sender"]["provider_id"] = json!("");

    let cases: Vec<(&str, Vec<u8>, StatusCode, ErrorCode)> = vec![
        (
            "/v1/events",
            b"{not json".to_vec(),
            StatusCode::BAD_REQUEST,
            ErrorCode::BadJson,
        ),
        (
            "/v1/events",
            b"{\"text\":\"\xff\xfe\"}".to_vec(),
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidUtf8,
        ),
        (
            "/v1/events",
            unknown.to_string().into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::UnknownEventType,
        ),
        (
            "/v1/events",
            future.to_string().into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::UnsupportedSchemaVersion,
        ),
        (
            "/v1/events",
            empty_sender.to_string().into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidRequest,
        ),
        (
            "/v1/events",
            vec![b' '; 4096],
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
        ),
        (
            "/v1/webchat/messages",
            b"[]".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidRequest,
        ),
        (
            "/v1/webchat/messages",
            b"{\"session\":\"s\"}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidRequest,
        ),
        (
            "/v1/webchat/messages",
            webchat_body(1, 1)
                .replace("load message number 1", "")
                .into_bytes(),
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
        ),
        (
            "/v1/webchat/messages",
            format!("{} trailing", webchat_body(1, 1)).into_bytes(),
            StatusCode::BAD_REQUEST,
            ErrorCode::BadJson,
        ),
        (
            "/v1/webchat/messages",
            webchat_body(1, 1)
                .replace("s0", &"s".repeat(300))
                .into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidRequest,
        ),
    ];
    for (path, body, status, code) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).to_string();
        let response = api.post_raw(path, body).await;
        assert_eq!(response.status(), status, "{path} {shown}");
        let error: ApiError = response.json().await.unwrap();
        assert_eq!(error.error, code, "{path} {shown}: {}", error.message);
    }
    // A body over the limit without a Content-Length (chunked) is refused while reading.
    let chunks =
        futures_util::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024])));
    // On its own client: the server answers before reading the rest and closes that
    // connection, which a shared pool could otherwise hand to the next request.
    let response = Client::new()
        .post(api.url("/v1/events"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    expect_error(
        response,
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::PayloadTooLarge,
    )
    .await;
    // Wrong media type, unknown route, wrong method, malformed ids.
    let form = api
        .http
        .post(api.url("/v1/webchat/messages"))
        .bearer_auth(TOKEN)
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .unwrap();
    expect_error(
        form,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::UnsupportedMediaType,
    )
    .await;
    expect_error(
        api.get("/v1/nothing-here").await,
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
    )
    .await;
    let wrong_method = api
        .http
        .delete(api.url("/v1/search"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    expect_error(
        wrong_method,
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
    )
    .await;
    expect_error(
        api.get("/v1/conversations/not-a-ulid").await,
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
    )
    .await;
    expect_error(
        api.get("/v1/conversations?bogus=1").await,
        StatusCode::BAD_REQUEST,
        ErrorCode::InvalidRequest,
    )
    .await;

    let conversations: Page<ConversationView> = api.get_json("/v1/conversations").await;
    assert!(
        conversations.items.is_empty(),
        "nothing was stored by any refused request"
    );
    assert!(api.metric("gateway_rejected_requests_total").await >= 17.0);
    assert_eq!(api.metric("gateway_messages_ingested_total").await, 0.0);
    // And the gateway still works.
    assert_eq!(
        api.post_json("/v1/events", &valid_event).await.status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn stream_delivers_committed_changes_to_subscribers() {
    let api = Api::start();
    let (_, first) = api.webchat("s1", "m0", "hello").await;
    let watched = first.conversation_id.unwrap();

    // A browser cannot set headers: it sends the token as a subprotocol.
    let mut one = connect(
        api.gateway.addr,
        &format!("?conversation_id={watched}"),
        |r| {
            r.headers_mut().insert(
                "sec-websocket-protocol",
                format!("moltbot.v1, bearer.{TOKEN}").parse().unwrap(),
            );
        },
    )
    .await;
    let mut tenant = connect(api.gateway.addr, "", bearer_header).await;
    let ServerFrame::Subscriptions(subs) = next_frame(&mut one).await else {
        panic!("subscriptions first")
    };
    assert_eq!(subs.conversations, vec![watched]);
    assert!(!subs.tenant);
    let ServerFrame::Subscriptions(subs) = next_frame(&mut tenant).await else {
        panic!("subscriptions")
    };
    assert!(
        subs.tenant,
        "without a conversation_id the stream follows the whole tenant"
    );
    assert!(subs.conversations.is_empty());

    // A message elsewhere reaches the tenant stream only; then one in the watched conversation reaches both.
    let (_, elsewhere) = api.webchat("s2", "m1", "elsewhere").await;
    let (_, here) = api.webchat("s1", "m2", "here").await;
    let mut tenant_messages = Vec::new();
    while tenant_messages.len() < 2 {
        if let ServerFrame::MessageCreated(m) = next_frame(&mut tenant).await {
            tenant_messages.push(m.id);
        }
    }
    assert_eq!(
        tenant_messages,
        vec![elsewhere.message_id.unwrap(), here.message_id.unwrap()]
    );
    let created = loop {
        match next_frame(&mut one).await {
            ServerFrame::MessageCreated(m) => break m,
            ServerFrame::ConversationUpdated(c) => assert_eq!(c.id, watched),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(
        created.id,
        here.message_id.unwrap(),
        "the other conversation's message was filtered out"
    );
    assert_eq!(created.text.as_deref(), Some("here"));

    // A duplicate publishes nothing; a send publishes the new message, then its delivery.
    api.webchat("s1", "m2", "here").await;
    let sent: MessageView = api.send(watched, "t1", "reply").await.json().await.unwrap();
    let mut saw_created = false;
    loop {
        match next_frame(&mut one).await {
            ServerFrame::MessageCreated(m) => {
                assert_eq!(m.id, sent.id, "the duplicate was not published");
                saw_created = true;
            }
            ServerFrame::MessageUpdated(m) if m.status == DeliveryStatus::Sent => {
                assert_eq!(m.id, sent.id);
                break;
            }
            _ => {}
        }
    }
    assert!(saw_created);

    // A bad frame gets an error frame; the stream stays open.
    one.send(Message::Text("{\"op\":\"dance\"}".into()))
        .await
        .unwrap();
    assert!(
        matches!(next_frame(&mut one).await, ServerFrame::Error(e) if e.error == ErrorCode::BadJson)
    );
    one.send(Message::Text(
        format!(r#"{{"op":"unsubscribe","conversation_id":"{watched}"}}"#).into(),
    ))
    .await
    .unwrap();
    let ServerFrame::Subscriptions(subs) = next_frame(&mut one).await else {
        panic!("subscriptions")
    };
    assert!(subs.conversations.is_empty());
    assert_eq!(api.metric("gateway_streams_open").await, 2.0);
}

#[tokio::test]
async fn stream_refuses_unknown_conversations_and_plain_http() {
    let api = Api::start();
    let response = api
        .get("/v1/stream?conversation_id=01JD0000000000000000000000")
        .await;
    // Not an upgrade request at all: refused before looking further.
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let mut request = format!(
        "ws://{}/v1/stream?conversation_id=01JD0000000000000000000000",
        api.gateway.addr
    )
    .into_client_request()
    .unwrap();
    bearer_header(&mut request);
    match tokio_tungstenite::connect_async(request).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 404),
        other => panic!("expected a 404, got {:?}", other.map(|(_, r)| r.status())),
    }
}

/// The next `message.updated` frame of message `id` that satisfies `done`.
async fn updated_until(
    socket: &mut Socket,
    id: moltbot_protocol::ids::MessageId,
    done: impl Fn(&MessageView) -> bool,
) -> MessageView {
    loop {
        if let ServerFrame::MessageUpdated(m) = next_frame(socket).await
            && m.id == id
            && done(&m)
        {
            return m;
        }
    }
}

fn reaction(emoji: &str, count: u32, mine: bool) -> ReactionView {
    ReactionView {
        emoji: emoji.to_string(),
        count,
        mine,
    }
}

#[tokio::test]
async fn messages_sent_here_can_be_edited_deleted_and_reacted_to() {
    let api = Api::start();
    let mut stream = connect(api.gateway.addr, "", bearer_header).await;
    let (_, asked) = api.webchat("s1", "m1", "what time is it").await;
    let conversation = asked.conversation_id.unwrap();
    let inbound = asked.message_id.unwrap();
    let reply: MessageView = api
        .send(conversation, "t1", "noon")
        .await
        .json()
        .await
        .unwrap();
    updated_until(&mut stream, reply.id, |m| m.status == DeliveryStatus::Sent).await;
    let path = format!("/v1/messages/{}", reply.id);
    let edit = |text: &str| Some(json!({ "text": text }));

    // An edit is published, and repeating it changes nothing.
    let edited: MessageView = api
        .call(Method::PATCH, &path, edit("half past twelve"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(edited.text.as_deref(), Some("half past twelve"));
    let edited_at = edited.edited_at.expect("an edit time");
    let seen = updated_until(&mut stream, reply.id, |m| m.edited_at.is_some()).await;
    assert_eq!(seen.text.as_deref(), Some("half past twelve"));
    let again = api
        .call(Method::PATCH, &path, edit("half past twelve"))
        .await;
    assert_eq!(again.status(), StatusCode::OK);
    let again: MessageView = again.json().await.unwrap();
    assert_eq!(again.edited_at, Some(edited_at), "a repeat is no new edit");
    let hits: Page<SearchHit> = api.get_json("/v1/search?q=twelve").await;
    assert_eq!(hits.items.len(), 1, "search finds the new text");

    // The gateway's reactions: each emoji once, a repeat changes nothing.
    let thumbs = format!("{path}/reactions/%F0%9F%91%8D");
    let heart = format!("{path}/reactions/%E2%9D%A4");
    for url in [&thumbs, &thumbs, &heart] {
        let response = api.call(Method::PUT, url, None).await;
        assert_eq!(response.status(), StatusCode::OK, "PUT {url}");
    }
    let message: MessageView = api.get_json(&path).await;
    assert_eq!(
        message.reactions,
        [reaction("👍", 1, true), reaction("❤", 1, true)]
    );
    for _ in 0..2 {
        let response = api.call(Method::DELETE, &thumbs, None).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let message: MessageView = api.get_json(&path).await;
    assert_eq!(message.reactions, [reaction("❤", 1, true)]);

    // A person's reactions arrive as canonical events and take effect once; an older event
    // arriving late does not undo a newer one.
    let reacted = |id: &str, kind: &str, at: &str| {
        json!({"schema_version": 1, "id": id, "occurred_at": at,
               "source": {"channel": "webchat", "connection": "webchat"}, "type": kind,
               "data": {"conversation": "s1", "provider_message_id": "m1",
                        "sender": {"provider_id": "ada"}, "emoji": "🔥"}})
    };
    let added = reacted(
        "01JD0000000000000000000011",
        "reaction.added",
        "2026-11-21T10:00:05Z",
    );
    let stale = reacted(
        "01JD0000000000000000000012",
        "reaction.removed",
        "2026-11-21T10:00:01Z",
    );
    for (event, status) in [
        (&added, StatusCode::CREATED),
        (&added, StatusCode::OK),
        (&stale, StatusCode::CREATED),
    ] {
        assert_eq!(api.post_json("/v1/events", event).await.status(), status);
    }
    let inbound_path = format!("/v1/messages/{inbound}");
    let message: MessageView = api.get_json(&inbound_path).await;
    assert_eq!(message.reactions, [reaction("🔥", 1, false)]);
    let removed = reacted(
        "01JD0000000000000000000013",
        "reaction.removed",
        "2026-11-21T10:00:09Z",
    );
    api.post_json("/v1/events", &removed).await;
    let message: MessageView = api.get_json(&inbound_path).await;
    assert!(message.reactions.is_empty());

    // A deletion marks the message at once; its text goes once the channel confirmed.
    let deleted: MessageView = api
        .call(Method::DELETE, &path, None)
        .await
        .json()
        .await
        .unwrap();
    assert!(deleted.deleted);
    let gone = updated_until(&mut stream, reply.id, |m| m.deleted && m.text.is_none()).await;
    assert_eq!(gone.status, DeliveryStatus::Sent);
    assert_eq!(
        api.call(Method::DELETE, &path, None).await.status(),
        StatusCode::OK
    );
    let hits: Page<SearchHit> = api.get_json("/v1/search?q=twelve").await;
    assert!(hits.items.is_empty(), "deleted text is gone from search");
}

/// Web chat has no history but the store's: a backfill there is refused as not supported,
/// after the request itself was checked; nothing changes.
#[tokio::test]
async fn a_backfill_is_checked_and_refused_where_the_channel_keeps_no_history() {
    let api = Api::start();
    let (_, asked) = api.webchat("s1", "m1", "hello").await;
    let path = format!(
        "/v1/conversations/{}/backfill",
        asked.conversation_id.unwrap()
    );
    let cases = [
        (Some(json!({"limit": 0})), StatusCode::BAD_REQUEST),
        (Some(json!({"limit": 1_001})), StatusCode::BAD_REQUEST),
        (
            Some(json!({"from": "sideways"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (Some(json!({"limt": 5})), StatusCode::UNPROCESSABLE_ENTITY),
    ];
    for (body, status) in cases {
        let response = api.call(Method::POST, &path, body).await;
        expect_error(response, status, ErrorCode::InvalidRequest).await;
    }
    for body in [None, Some(json!({"from": "earlier", "limit": 10}))] {
        let response = api.call(Method::POST, &path, body).await;
        let error = expect_error(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::NotSupported,
        )
        .await;
        assert_eq!(
            error.message,
            "webchat connection webchat cannot read a chat's history"
        );
    }
    let unknown = "/v1/conversations/01JD0000000000000000000000/backfill";
    let response = api.call(Method::POST, unknown, None).await;
    expect_error(response, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    let messages: Page<MessageView> = api
        .get_json(&format!(
            "/v1/conversations/{}/messages",
            asked.conversation_id.unwrap()
        ))
        .await;
    assert_eq!(messages.items.len(), 1);
}

#[tokio::test]
async fn message_changes_refuse_bad_input_and_change_nothing() {
    let api = Api::start();
    let (_, asked) = api.webchat("s1", "m1", "hello").await;
    let conversation = asked.conversation_id.unwrap();
    let inbound = format!("/v1/messages/{}", asked.message_id.unwrap());
    let reply: MessageView = api
        .send(conversation, "t1", "hi")
        .await
        .json()
        .await
        .unwrap();
    let own = format!("/v1/messages/{}", reply.id);
    let text = Some(json!({"text": "changed"}));
    let cases = [
        // Someone else's message.
        (
            Method::PATCH,
            inbound.clone(),
            text.clone(),
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
        ),
        (
            Method::DELETE,
            inbound.clone(),
            None,
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
        ),
        // No such message.
        (
            Method::PATCH,
            "/v1/messages/01JD0000000000000000000000".into(),
            text.clone(),
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
        ),
        (
            Method::PUT,
            "/v1/messages/01JD0000000000000000000000/reactions/x".into(),
            None,
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
        ),
        (
            Method::PATCH,
            "/v1/messages/nope".into(),
            text.clone(),
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
        ),
        // Bad bodies and emoji.
        (
            Method::PATCH,
            own.clone(),
            Some(json!({"text": "  "})),
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
        ),
        (
            Method::PATCH,
            own.clone(),
            Some(json!({"txt": "x"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidRequest,
        ),
        (
            Method::PUT,
            format!("{own}/reactions/a%20b"),
            None,
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
        ),
        (
            Method::PUT,
            format!("{own}/reactions/{}", "x".repeat(65)),
            None,
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
        ),
    ];
    for (method, path, body, status, code) in cases {
        let response = api.call(method.clone(), &path, body).await;
        assert_eq!(response.status(), status, "{method} {path}");
        let error: ApiError = response.json().await.unwrap();
        assert_eq!(error.error, code, "{method} {path}: {}", error.message);
    }
    let message: MessageView = api.get_json(&inbound).await;
    assert_eq!(message.text.as_deref(), Some("hello"));
    assert!(!message.deleted && message.reactions.is_empty());
    let message: MessageView = api.get_json(&own).await;
    assert_eq!(message.text.as_deref(), Some("hi"));
    assert!(message.edited_at.is_none() && message.reactions.is_empty());

    // A deleted message takes no edit and no reaction.
    api.call(Method::DELETE, &own, None).await;
    expect_error(
        api.call(Method::PATCH, &own, text.clone()).await,
        StatusCode::CONFLICT,
        ErrorCode::Conflict,
    )
    .await;
    expect_error(
        api.call(Method::PUT, &format!("{own}/reactions/x"), None)
            .await,
        StatusCode::CONFLICT,
        ErrorCode::Conflict,
    )
    .await;

    // A conversation whose connection is not configured here cannot be changed.
    let event = json!({"schema_version": 1, "id": "01JD0000000000000000000021", "occurred_at": "2026-11-21T10:00:00Z",
        "source": {"channel": "telegram", "connection": "gone"}, "type": "message.received",
        "data": {"conversation": {"provider_id": "5"}, "provider_message_id": "1",
                 "sender": {"provider_id": "u1"}, "text": "hi", "sent_at": "2026-11-21T10:00:00Z"}});
    let ingested: Ingested = api
        .post_json("/v1/events", &event)
        .await
        .json()
        .await
        .unwrap();
    let elsewhere = format!("/v1/messages/{}", ingested.message_id.unwrap());
    expect_error(
        api.call(Method::PUT, &format!("{elsewhere}/reactions/x"), None)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::NotSupported,
    )
    .await;
}
