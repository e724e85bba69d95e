//! The OpenAI fake driven through `async-openai`, the client the gateway uses, so that a
//! passing test shows the fake's answers are ones that client accepts. Raw `reqwest` checks
//! cover what `async-openai` hides (headers, exact wire bytes, bodies it would not send).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use async_openai::{
    Client,
    config::OpenAIConfig,
    error::OpenAIError,
    types::chat::{
        ChatCompletionMessageToolCall, ChatCompletionMessageToolCalls,
        ChatCompletionRequestAssistantMessageArgs, ChatCompletionRequestMessage,
        ChatCompletionRequestSystemMessage, ChatCompletionRequestToolMessageArgs,
        ChatCompletionRequestUserMessage, ChatCompletionResponseStream,
        ChatCompletionStreamOptions, ChatCompletionTool, ChatCompletionTools,
        CreateChatCompletionRequest, CreateChatCompletionRequestArgs, CreateChatCompletionResponse,
        CreateChatCompletionStreamResponse, FinishReason, FunctionCall, FunctionObjectArgs, Role,
    },
};
use futures_util::StreamExt;
use moltbot_fakes::openai::{FakeOpenAi, FakeOpenAiConfig, Reply, ToolCall};
use serde_json::{Value, json};

const KEY: &str = "sk-test-0123456789abcdef";
const MODEL: &str = "fake-pi";

async fn start(config: FakeOpenAiConfig) -> FakeOpenAi {
    FakeOpenAi::start(config).await.expect("fake starts")
}

async fn start_default() -> FakeOpenAi {
    start(FakeOpenAiConfig::default()).await
}

fn client_with_key(fake: &FakeOpenAi, key: &str) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(fake.base_url())
            .with_api_key(key),
    )
}

fn client(fake: &FakeOpenAi) -> Client<OpenAIConfig> {
    client_with_key(fake, KEY)
}

fn user(text: &str) -> ChatCompletionRequestMessage {
    ChatCompletionRequestUserMessage::from(text).into()
}

fn request(messages: Vec<ChatCompletionRequestMessage>) -> CreateChatCompletionRequestArgs {
    let mut args = CreateChatCompletionRequestArgs::default();
    args.model(MODEL).messages(messages);
    args
}

fn ask(text: &str) -> CreateChatCompletionRequest {
    request(vec![user(text)]).build().expect("request builds")
}

/// With async-openai's `byot` feature, which the workspace enables for the gateway,
/// `create_stream` sends the request as it is: a streamed one must say so itself.
fn ask_streamed(text: &str) -> CreateChatCompletionRequest {
    request(vec![user(text)])
        .stream(true)
        .build()
        .expect("request builds")
}

fn remember_tool() -> ChatCompletionTools {
    ChatCompletionTools::Function(ChatCompletionTool {
        function: FunctionObjectArgs::default()
            .name("remember_fact")
            .description("Store a fact about the user")
            .parameters(json!({
                "type": "object",
                "properties": {"fact": {"type": "string"}},
                "required": ["fact"],
            }))
            .build()
            .expect("tool builds"),
    })
}

async fn collect(stream: ChatCompletionResponseStream) -> Vec<CreateChatCompletionStreamResponse> {
    stream
        .map(|chunk| chunk.expect("chunk parses"))
        .collect()
        .await
}

fn content(response: &CreateChatCompletionResponse) -> Option<&str> {
    response.choices[0].message.content.as_deref()
}

/// The function calls of a non-streamed answer.
fn function_calls(response: &CreateChatCompletionResponse) -> Vec<ChatCompletionMessageToolCall> {
    response.choices[0]
        .message
        .tool_calls
        .iter()
        .flatten()
        .map(|call| match call {
            ChatCompletionMessageToolCalls::Function(call) => call.clone(),
            other => panic!("expected a function call, got {other:?}"),
        })
        .collect()
}

fn api_error(error: OpenAIError) -> async_openai::error::ApiErrorResponse {
    match error {
        OpenAIError::ApiError(error) => error,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Polls `condition` for up to 5 s.
async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A raw POST to the fake's chat completions endpoint.
async fn raw_post(fake: &FakeOpenAi, key: Option<&str>, body: &str) -> reqwest::Response {
    let mut post = reqwest::Client::new()
        .post(format!("{}/chat/completions", fake.base_url()))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(key) = key {
        post = post.bearer_auth(key);
    }
    post.send().await.expect("request is answered")
}

async fn error_of(response: reqwest::Response) -> Value {
    let body: Value = response.json().await.expect("error body is JSON");
    body["error"].clone()
}

#[tokio::test]
async fn completion_carries_scripted_text_and_usage() {
    let fake = start_default().await;
    fake.enqueue(Reply::Text("Hello from the fake".to_owned()));

    let messages = vec![
        ChatCompletionRequestSystemMessage::from("You are Pi.").into(),
        user("Hello there"),
    ];
    let response = client(&fake)
        .chat()
        .create(request(messages).build().unwrap())
        .await
        .expect("completion parses");

    assert!(response.id.starts_with("chatcmpl-"), "{}", response.id);
    assert_eq!(response.object, "chat.completion");
    assert_eq!(response.model, MODEL);
    assert!(response.created > 1_700_000_000);
    assert_eq!(response.choices.len(), 1);
    assert_eq!(response.choices[0].message.role, Role::Assistant);
    assert_eq!(content(&response), Some("Hello from the fake"));
    assert_eq!(response.choices[0].message.tool_calls, None);
    assert_eq!(response.choices[0].finish_reason, Some(FinishReason::Stop));
    // 22 prompt characters -> 6, plus 3 for each of the 2 messages; 19 characters -> 5.
    let usage = response.usage.expect("usage present");
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens
        ),
        (12, 5, 17)
    );
}

#[tokio::test]
async fn streamed_text_reassembles_and_ends_with_usage() {
    let fake = start_default().await;
    let text = "The quick brown fox jumps over the lazy dog.\nThen it naps.";
    fake.enqueue(Reply::Text(text.to_owned()));

    let mut args = request(vec![user("Tell me a story")]);
    args.stream_options(ChatCompletionStreamOptions {
        include_usage: Some(true),
        include_obfuscation: None,
    });
    args.stream(true);
    let stream = client(&fake)
        .chat()
        .create_stream(args.build().unwrap())
        .await
        .expect("stream opens");
    let chunks = collect(stream).await;

    let (usage_chunk, choice_chunks) = chunks.split_last().expect("chunks arrived");
    assert!(choice_chunks.iter().all(|c| c.id == chunks[0].id));
    assert!(chunks[0].id.starts_with("chatcmpl-"));
    assert!(
        chunks
            .iter()
            .all(|c| c.object == "chat.completion.chunk" && c.model == MODEL)
    );
    assert_eq!(
        choice_chunks[0].choices[0].delta.role,
        Some(Role::Assistant)
    );

    let pieces: Vec<&str> = choice_chunks
        .iter()
        .filter_map(|c| c.choices[0].delta.content.as_deref())
        .filter(|piece| !piece.is_empty())
        .collect();
    assert!(pieces.len() > 2, "text split into pieces: {pieces:?}");
    assert_eq!(pieces.concat(), text);

    let (last, before) = choice_chunks.split_last().unwrap();
    assert!(before.iter().all(|c| c.choices[0].finish_reason.is_none()));
    assert_eq!(last.choices[0].finish_reason, Some(FinishReason::Stop));
    assert!(choice_chunks.iter().all(|c| c.usage.is_none()));

    assert!(usage_chunk.choices.is_empty());
    let usage = usage_chunk.usage.clone().expect("usage on the last chunk");
    // "Tell me a story": 15 characters -> 4, plus 3; 58 characters -> 15.
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (7, 15));
    assert_eq!(usage.total_tokens, 22);
}

#[tokio::test]
async fn stream_wire_format_matches_openai() {
    let fake = start_default().await;
    fake.enqueue(Reply::Text("one two three four".to_owned()));

    let body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let response = raw_post(&fake, None, &body.to_string()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();

    assert!(text.ends_with("\n\ndata: [DONE]\n\n"), "{text}");
    let frames: Vec<Value> = text
        .split("\n\n")
        .filter(|frame| !frame.is_empty() && *frame != "data: [DONE]")
        .map(|frame| {
            let data = frame.strip_prefix("data: ").expect("frame is a data line");
            serde_json::from_str(data).expect("frame data is JSON")
        })
        .collect();
    let (usage_chunk, choice_chunks) = frames.split_last().unwrap();
    assert_eq!(
        choice_chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    for chunk in choice_chunks {
        // Present and null: include_usage asks for the field on every chunk.
        assert_eq!(chunk.get("usage"), Some(&Value::Null), "{chunk}");
        assert_eq!(chunk["system_fingerprint"], "fp_fake");
    }
    let (last, before) = choice_chunks.split_last().unwrap();
    for chunk in before {
        assert_eq!(chunk["choices"][0].get("finish_reason"), Some(&Value::Null));
    }
    assert_eq!(last["choices"][0]["delta"], json!({}));
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 5);
}

#[tokio::test]
async fn streamed_tool_call_arguments_reassemble() {
    let fake = start_default().await;
    let arguments = json!({"fact": "the user's cat is called Tom", "importance": 3});
    fake.enqueue(Reply::ToolCalls(vec![ToolCall {
        name: "remember_fact".to_owned(),
        arguments: arguments.clone(),
    }]));

    let mut args = request(vec![user("remember my cat")]);
    args.tools(vec![remember_tool()]);
    args.stream(true);
    let stream = client(&fake)
        .chat()
        .create_stream(args.build().unwrap())
        .await
        .expect("stream opens");
    let chunks = collect(stream).await;

    // Accumulate deltas by index, as a streaming caller must.
    let mut calls: BTreeMap<u32, (String, String, String)> = BTreeMap::new();
    let mut argument_fragments = 0;
    for chunk in &chunks {
        assert!(chunk.usage.is_none(), "no usage without include_usage");
        for delta in chunk.choices[0].delta.tool_calls.iter().flatten() {
            let call = calls.entry(delta.index).or_default();
            if let Some(id) = &delta.id {
                call.0.push_str(id);
            }
            if let Some(function) = &delta.function {
                if let Some(name) = &function.name {
                    call.1.push_str(name);
                }
                if let Some(piece) = function.arguments.as_deref().filter(|p| !p.is_empty()) {
                    argument_fragments += 1;
                    call.2.push_str(piece);
                }
            }
        }
    }
    assert_eq!(calls.len(), 1);
    let (id, name, joined) = &calls[&0];
    assert!(id.starts_with("call_"), "{id}");
    assert_eq!(name, "remember_fact");
    assert!(argument_fragments > 1, "arguments split over chunks");
    assert_eq!(serde_json::from_str::<Value>(joined).unwrap(), arguments);

    let last = chunks.last().unwrap();
    assert_eq!(last.choices[0].finish_reason, Some(FinishReason::ToolCalls));
    assert!(
        chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c.choices[0].finish_reason.is_none())
    );
}

#[tokio::test]
async fn completion_with_tool_calls() {
    let fake = start_default().await;
    fake.enqueue(Reply::ToolCalls(vec![
        ToolCall {
            name: "remember_fact".to_owned(),
            arguments: json!({"fact": "likes tea"}),
        },
        ToolCall {
            name: "lookup".to_owned(),
            arguments: json!({"query": "tea", "limit": 2}),
        },
    ]));

    let response = client(&fake)
        .chat()
        .create(ask("what do I like?"))
        .await
        .expect("completion parses");

    assert_eq!(content(&response), None);
    assert_eq!(
        response.choices[0].finish_reason,
        Some(FinishReason::ToolCalls)
    );
    let calls = function_calls(&response);
    assert_eq!(calls.len(), 2);
    assert!(calls.iter().all(|c| c.id.starts_with("call_")));
    assert_ne!(calls[0].id, calls[1].id);
    assert_eq!(calls[0].function.name, "remember_fact");
    assert_eq!(
        serde_json::from_str::<Value>(&calls[1].function.arguments).unwrap(),
        json!({"query": "tea", "limit": 2})
    );
}

#[tokio::test]
async fn wrong_or_missing_key_is_rejected_without_taking_a_reply() {
    let fake = start(FakeOpenAiConfig {
        api_key: Some(KEY.to_owned()),
        ..FakeOpenAiConfig::default()
    })
    .await;
    fake.enqueue(Reply::Text("kept for the right key".to_owned()));
    let wrong = "sk-wrong-key-987654321";

    let error = client_with_key(&fake, wrong)
        .chat()
        .create(ask("hi"))
        .await
        .expect_err("wrong key fails");
    let error = api_error(error);
    assert_eq!(error.status_code, 401);
    assert_eq!(error.api_error.code.as_deref(), Some("invalid_api_key"));
    assert_eq!(
        error.api_error.r#type.as_deref(),
        Some("invalid_request_error")
    );
    assert!(
        error
            .api_error
            .message
            .starts_with("Incorrect API key provided: sk-***4321."),
        "{}",
        error.api_error.message
    );
    assert!(!error.api_error.message.contains(wrong));

    let missing = raw_post(&fake, None, &json!({"model": MODEL}).to_string()).await;
    assert_eq!(missing.status(), 401);
    assert_eq!(error_of(missing).await["code"], "invalid_api_key");

    let response = client(&fake).chat().create(ask("hi")).await.unwrap();
    assert_eq!(content(&response), Some("kept for the right key"));
    assert_eq!(
        fake.request_count(),
        3,
        "rejected requests are recorded too"
    );
}

#[tokio::test]
async fn model_list_requires_the_key() {
    let fake = start(FakeOpenAiConfig {
        api_key: Some(KEY.to_owned()),
        models: vec!["fake-pi".to_owned(), "fake-pi-mini".to_owned()],
        ..FakeOpenAiConfig::default()
    })
    .await;
    let url = format!("{}/models", fake.base_url());
    let http = reqwest::Client::new();

    let denied = http.get(&url).send().await.unwrap();
    assert_eq!(denied.status(), 401);

    let list: Value = http
        .get(&url)
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["fake-pi", "fake-pi-mini"]);
    assert_eq!(list["data"][0]["object"], "model");
    assert_eq!(list["data"][0]["owned_by"], "moltbot-fakes");
    assert_eq!(
        fake.request_count(),
        0,
        "only chat completions are recorded"
    );
}

#[tokio::test]
async fn rate_limit_carries_retry_after() {
    let fake = start_default().await;
    fake.enqueue(Reply::Error {
        status: 429,
        code: "rate_limit_exceeded".to_owned(),
        message: "Rate limit reached for fake-pi".to_owned(),
        retry_after: Some(7),
    });

    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]});
    let response = raw_post(&fake, None, &body.to_string()).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    let error = error_of(response).await;
    assert_eq!(
        error,
        json!({
            "message": "Rate limit reached for fake-pi",
            "type": "requests",
            "param": null,
            "code": "rate_limit_exceeded",
        })
    );
}

#[tokio::test]
async fn async_openai_retries_a_rate_limit_on_its_own() {
    let fake = start_default().await;
    fake.enqueue(Reply::Error {
        status: 429,
        code: "rate_limit_exceeded".to_owned(),
        message: "slow down".to_owned(),
        retry_after: Some(0),
    });
    fake.enqueue(Reply::Text("after the retry".to_owned()));

    let response = client(&fake).chat().create(ask("hi")).await.unwrap();

    assert_eq!(content(&response), Some("after the retry"));
    assert_eq!(fake.request_count(), 2);
}

#[tokio::test]
async fn insufficient_quota_reaches_the_caller() {
    let fake = start_default().await;
    fake.enqueue(Reply::Error {
        status: 429,
        code: "insufficient_quota".to_owned(),
        message: "You exceeded your current quota".to_owned(),
        retry_after: None,
    });

    let error = api_error(client(&fake).chat().create(ask("hi")).await.unwrap_err());

    assert_eq!(error.status_code, 429);
    assert_eq!(error.api_error.code.as_deref(), Some("insufficient_quota"));
    assert_eq!(fake.request_count(), 1, "not retried");
}

#[tokio::test]
async fn scripted_error_on_a_stream_is_plain_json() {
    let fake = start_default().await;
    fake.enqueue(Reply::Error {
        status: 400,
        code: "context_length_exceeded".to_owned(),
        message: "This model's maximum context length is 8 tokens.".to_owned(),
        retry_after: None,
    });

    let result = client(&fake).chat().create_stream(ask_streamed("hi")).await;

    let error = api_error(result.err().expect("stream request fails"));
    assert_eq!(error.status_code, 400);
    assert_eq!(
        error.api_error.code.as_deref(),
        Some("context_length_exceeded")
    );
}

#[tokio::test]
async fn unknown_model_is_not_found() {
    let fake = start_default().await;
    let mut args = request(vec![user("hi")]);
    args.model("gpt-imaginary");

    let error = api_error(
        client(&fake)
            .chat()
            .create(args.build().unwrap())
            .await
            .unwrap_err(),
    );

    assert_eq!(error.status_code, 404);
    assert_eq!(error.api_error.code.as_deref(), Some("model_not_found"));
    assert!(error.api_error.message.contains("`gpt-imaginary`"));
}

#[tokio::test]
async fn invalid_requests_get_openai_errors() {
    let fake = start_default().await;

    let not_json = raw_post(&fake, None, "{not json").await;
    assert_eq!(not_json.status(), 400);
    assert_eq!(error_of(not_json).await["type"], "invalid_request_error");

    let no_model = raw_post(
        &fake,
        None,
        r#"{"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(no_model.status(), 400);
    let message = error_of(no_model).await["message"].clone();
    assert!(message.as_str().unwrap().contains("model"), "{message}");

    let no_messages = raw_post(&fake, None, r#"{"model":"fake-pi"}"#).await;
    assert_eq!(no_messages.status(), 400);

    let empty = raw_post(&fake, None, r#"{"model":"fake-pi","messages":[]}"#).await;
    assert_eq!(empty.status(), 400);

    let http = reqwest::Client::new();
    let unknown = http
        .post(format!("{}/nope", fake.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        error_of(unknown).await["message"],
        "Invalid URL (POST /v1/nope)"
    );
    let wrong_method = http
        .get(format!("{}/chat/completions", fake.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 404);
}

#[tokio::test]
async fn malformed_completion_fails_the_client() {
    let fake = start_default().await;
    fake.enqueue(Reply::Malformed);

    let error = client(&fake).chat().create(ask("hi")).await.unwrap_err();

    assert!(
        matches!(error, OpenAIError::JSONDeserialize(..)),
        "{error:?}"
    );
}

#[tokio::test]
async fn malformed_stream_fails_the_client() {
    let fake = start_default().await;
    fake.enqueue(Reply::Malformed);

    let stream = client(&fake)
        .chat()
        .create_stream(ask_streamed("hi"))
        .await
        .expect("stream opens: the 200 comes first");
    let items: Vec<_> = stream.collect().await;

    assert!(items[0].is_ok(), "the first chunk is valid");
    assert!(
        items
            .iter()
            .any(|item| matches!(item, Err(OpenAIError::JSONDeserialize(..)))),
        "{items:?}"
    );
}

#[tokio::test]
async fn hang_trips_the_client_timeout() {
    let fake = start_default().await;
    fake.enqueue(Reply::Hang);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let client = client(&fake).with_http_client(http);

    let error = client.chat().create(ask("hi")).await.unwrap_err();

    assert!(
        matches!(&error, OpenAIError::Reqwest(e) if e.is_timeout()),
        "{error:?}"
    );
    assert_eq!(fake.request_count(), 1, "timeouts are not retried");
    wait_until("the abandoned request is no longer in flight", || {
        fake.in_flight() == 0
    })
    .await;
}

#[tokio::test]
async fn hang_on_a_stream_never_opens_it() {
    let fake = start_default().await;
    fake.enqueue(Reply::Hang);
    let client = client(&fake);

    let opened = tokio::time::timeout(
        Duration::from_millis(300),
        client.chat().create_stream(ask_streamed("hi")),
    )
    .await;

    assert!(opened.is_err(), "the stream must not open");
    assert_eq!(fake.request_count(), 1, "the request did arrive");
}

#[tokio::test]
async fn delayed_reply_answers_with_the_inner_reply() {
    let fake = start_default().await;
    fake.enqueue(Reply::Delayed(
        Duration::from_millis(20),
        Box::new(Reply::Text("late".to_owned())),
    ));

    let response = client(&fake).chat().create(ask("hi")).await.unwrap();

    assert_eq!(content(&response), Some("late"));
}

#[tokio::test]
async fn concurrent_requests_under_a_delay_are_all_in_flight() {
    let fake = start_default().await;
    fake.set_delay(Duration::from_millis(300));
    let client = client(&fake);

    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.chat().create(ask(&format!("request {i}"))).await })
        })
        .collect();
    wait_until("all four are in flight", || fake.in_flight() == 4).await;
    for task in tasks {
        task.await.unwrap().expect("delayed answer parses");
    }

    assert_eq!(fake.in_flight(), 0);
    assert_eq!(fake.max_in_flight(), 4);
}

#[tokio::test]
async fn max_in_flight_shows_a_callers_concurrency_limit() {
    let fake = start(FakeOpenAiConfig {
        delay: Duration::from_millis(100),
        ..FakeOpenAiConfig::default()
    })
    .await;
    let client = client(&fake);
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(2));

    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let (client, limit) = (client.clone(), limit.clone());
            tokio::spawn(async move {
                let _permit = limit.acquire().await.unwrap();
                client.chat().create(ask("hi")).await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }

    assert_eq!(fake.request_count(), 6);
    assert_eq!(fake.max_in_flight(), 2);
}

#[tokio::test]
async fn stream_stays_in_flight_between_delayed_chunks() {
    let chunk_delay = Duration::from_millis(40);
    let fake = start(FakeOpenAiConfig {
        chunk_delay,
        ..FakeOpenAiConfig::default()
    })
    .await;
    fake.enqueue(Reply::Text("a b c d e f g h i".to_owned()));

    let started = Instant::now();
    let mut stream = client(&fake)
        .chat()
        .create_stream(ask_streamed("hi"))
        .await
        .unwrap();
    stream.next().await.unwrap().unwrap();
    assert_eq!(fake.in_flight(), 1, "the rest of the stream is pending");
    let rest = collect(stream).await;

    // 1 role chunk + 3 content chunks + 1 finish chunk: at least 4 gaps between them.
    assert_eq!(rest.len(), 4);
    assert!(started.elapsed() >= chunk_delay * 4);
    wait_until("the finished stream leaves flight", || {
        fake.in_flight() == 0
    })
    .await;
}

#[tokio::test]
async fn token_limit_cuts_the_text() {
    let fake = start_default().await;
    fake.enqueue(Reply::Text("one two three four five six".to_owned()));
    let mut args = request(vec![user("count")]);
    args.max_completion_tokens(2u32);

    let response = client(&fake)
        .chat()
        .create(args.build().unwrap())
        .await
        .unwrap();

    assert_eq!(content(&response), Some("one two "));
    assert_eq!(
        response.choices[0].finish_reason,
        Some(FinishReason::Length)
    );
    assert_eq!(response.usage.unwrap().completion_tokens, 2);
}

#[tokio::test]
async fn default_reply_echoes_the_last_user_message() {
    let fake = start_default().await;
    let client = client(&fake);

    let messages = vec![
        user("first"),
        ChatCompletionRequestAssistantMessageArgs::default()
            .content("ok")
            .build()
            .unwrap()
            .into(),
        user("hello there"),
    ];
    let response = client
        .chat()
        .create(request(messages).build().unwrap())
        .await
        .unwrap();
    assert_eq!(content(&response), Some("Pi here. You said: hello there"));
    assert_eq!(response.choices[0].finish_reason, Some(FinishReason::Stop));

    let long = "x".repeat(300);
    let response = client.chat().create(ask(&long)).await.unwrap();
    let echoed = content(&response).unwrap();
    assert_eq!(echoed, format!("Pi here. You said: {}…", "x".repeat(200)));

    let response = client
        .chat()
        .create(ask("remember: no tools offered"))
        .await
        .unwrap();
    assert_eq!(
        content(&response),
        Some("Pi here. You said: remember: no tools offered")
    );
}

#[tokio::test]
async fn default_reply_runs_a_remember_tool_loop() {
    let fake = start_default().await;
    let client = client(&fake);
    let mut history = vec![user("remember: my cat is called Tom")];

    let mut args = request(history.clone());
    args.tools(vec![remember_tool()]);
    let response = client.chat().create(args.build().unwrap()).await.unwrap();
    assert_eq!(
        response.choices[0].finish_reason,
        Some(FinishReason::ToolCalls)
    );
    let calls = function_calls(&response);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].function.name, "remember_fact");
    assert_eq!(
        serde_json::from_str::<Value>(&calls[0].function.arguments).unwrap(),
        json!({"fact": "my cat is called Tom"})
    );

    history.push(
        ChatCompletionRequestAssistantMessageArgs::default()
            .tool_calls(vec![ChatCompletionMessageToolCalls::Function(
                ChatCompletionMessageToolCall {
                    id: calls[0].id.clone(),
                    function: FunctionCall {
                        name: "remember_fact".to_owned(),
                        arguments: calls[0].function.arguments.clone(),
                    },
                },
            )])
            .build()
            .unwrap()
            .into(),
    );
    history.push(
        ChatCompletionRequestToolMessageArgs::default()
            .tool_call_id(calls[0].id.clone())
            .content("stored")
            .build()
            .unwrap()
            .into(),
    );
    let mut args = request(history);
    args.tools(vec![remember_tool()]);
    let response = client.chat().create(args.build().unwrap()).await.unwrap();

    assert_eq!(response.choices[0].finish_reason, Some(FinishReason::Stop));
    assert_eq!(
        content(&response),
        Some("Pi here. Noted the tool result: stored")
    );
}

#[tokio::test]
async fn requests_are_recorded_in_order() {
    let fake = start_default().await;
    let client = client(&fake);

    client.chat().create(ask("first")).await.unwrap();
    let stream = client
        .chat()
        .create_stream(ask_streamed("second"))
        .await
        .unwrap();
    collect(stream).await;
    raw_post(&fake, None, "{not json").await;

    let requests = fake.requests();
    assert_eq!(fake.request_count(), 3);
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[0]["model"], MODEL);
    assert_eq!(requests[0]["messages"][0]["content"], "first");
    assert_eq!(requests[0].get("stream"), None);
    assert_eq!(requests[1]["messages"][0]["content"], "second");
    assert_eq!(requests[1]["stream"], true);
    assert_eq!(requests[2], Value::String("{not json".to_owned()));
}

#[tokio::test]
async fn start_on_serves_at_the_given_address() {
    let fake = FakeOpenAi::start_on("127.0.0.1:0".parse().unwrap(), FakeOpenAiConfig::default())
        .await
        .unwrap();

    assert!(fake.base_url().starts_with("http://127.0.0.1:"));
    assert!(fake.base_url().ends_with("/v1"));
    let response = client(&fake).chat().create(ask("hi")).await.unwrap();
    assert_eq!(content(&response), Some("Pi here. You said: hi"));
}
