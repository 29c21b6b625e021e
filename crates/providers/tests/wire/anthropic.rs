use deputy_providers::{
    ChatRequest, ErrorKind, FinishReason, Message, StreamEvent, ToolCall, Usage,
};
use futures::StreamExt as _;
use serde_json::json;
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{
    KEY, first_then, provider, raw_server_parts, request_body, sse, sse_response, stream_error,
    streaming_head, weather_tool,
};

fn tool_use_answer() -> serde_json::Value {
    json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "x"},
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 40, "output_tokens": 9, "cache_creation_input_tokens": 1800, "cache_read_input_tokens": 200}
    })
}

#[tokio::test]
async fn sends_messages_with_system_apart_and_tool_results_leading_a_user_turn() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .and(header("x-api-key", KEY))
        .and(header("anthropic-version", "2023-06-01"))
        .and(body_partial_json(json!({
            "model": "test-model",
            "max_tokens": 4096,
            "system": "Be brief.",
            "temperature": 0.25,
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "cold", "is_error": false},
                    {"type": "text", "text": "And tomorrow?"}]}
            ]
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(tool_use_answer()))
        .expect(1)
        .mount(&server)
        .await;
    let provider = provider("anthropic", &format!("{}/v1", server.uri()), |_| {});
    let call = ToolCall::new("toolu_1", "get_weather", json!({"city": "Oslo"}));
    let request = ChatRequest::new(vec![
        Message::system("Be brief."),
        Message::user("Weather?"),
        Message::Assistant {
            content: "Checking.".into(),
            tool_calls: vec![call.clone()],
            signature: None,
        },
        Message::tool_result(&call, "cold", false),
        Message::user("And tomorrow?"),
    ])
    .tools(vec![weather_tool()])
    .temperature(0.25);
    let answer = provider.chat(&request).await.unwrap();
    assert_eq!(answer.text, "Let me check.");
    assert_eq!(answer.finish, FinishReason::ToolCalls);
    assert_eq!(
        answer.tool_calls,
        vec![ToolCall::new(
            "toolu_1",
            "get_weather",
            json!({"city": "Paris"})
        )]
    );
    assert_eq!(
        answer.usage,
        Usage {
            input_tokens: 40,
            output_tokens: 9,
            cache_read_tokens: 200,
            cache_write_tokens: 1800,
            requests: 1,
        }
    );
}

#[tokio::test]
async fn no_sampling_parameters_under_the_2026_api_version() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("anthropic-version", "2026-10-21"))
        .respond_with(ResponseTemplate::new(200).set_body_json(tool_use_answer()))
        .expect(1)
        .mount(&server)
        .await;
    let provider = provider("anthropic", &server.uri(), |raw| {
        raw.anthropic_version = Some("2026-10-21".into());
        raw.max_output_tokens = Some(100);
    });
    provider
        .chat(&ChatRequest::new(vec![Message::user("hi")]).temperature(0.7))
        .await
        .unwrap();
    let body = request_body(&server, 0).await;
    assert!(body.get("temperature").is_none(), "{body}");
    assert_eq!(body["max_tokens"], 100);
}

#[tokio::test]
async fn every_stop_reason_is_normalized() {
    for (reason, expected) in [
        ("end_turn", FinishReason::Stop),
        ("stop_sequence", FinishReason::Stop),
        ("max_tokens", FinishReason::Length),
        ("model_context_window_exceeded", FinishReason::Length),
        ("tool_use", FinishReason::ToolCalls),
        ("refusal", FinishReason::Refusal),
        ("pause_turn", FinishReason::Other("pause_turn".into())),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "model": "claude-test", "content": [{"type": "text", "text": "x"}],
                "stop_reason": reason, "usage": {"input_tokens": 1, "output_tokens": 1}
            })))
            .mount(&server)
            .await;
        let answer = provider("anthropic", &server.uri(), |_| {})
            .chat(&ChatRequest::new(vec![Message::user("hi")]))
            .await
            .unwrap();
        assert_eq!(answer.finish, expected, "{reason}");
    }
}

fn tool_use_stream() -> Vec<(Option<&'static str>, String)> {
    vec![
        (Some("message_start"), json!({"type": "message_start", "message": {"id": "m", "model": "claude-test", "content": [], "usage": {"input_tokens": 40, "output_tokens": 1, "cache_read_input_tokens": 200, "cache_creation_input_tokens": 0}}}).to_string()),
        (Some("ping"), json!({"type": "ping"}).to_string()),
        (Some("content_block_start"), json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}).to_string()),
        (Some("content_block_delta"), json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me "}}).to_string()),
        (Some("content_block_delta"), json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "check."}}).to_string()),
        (Some("content_block_stop"), json!({"type": "content_block_stop", "index": 0}).to_string()),
        (Some("content_block_start"), json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}}).to_string()),
        (Some("content_block_delta"), json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Pa"}}).to_string()),
        (Some("content_block_delta"), json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "ris\"}"}}).to_string()),
        (Some("content_block_stop"), json!({"type": "content_block_stop", "index": 1}).to_string()),
        (Some("message_delta"), json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}).to_string()),
        (Some("message_stop"), json!({"type": "message_stop"}).to_string()),
    ]
}

#[tokio::test]
async fn a_named_event_stream_agrees_with_the_plain_answer() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_partial_json(json!({"stream": true})))
        .respond_with(sse_response(sse(&tool_use_stream())))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "model": "claude-test",
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 40, "output_tokens": 9, "cache_read_input_tokens": 200, "cache_creation_input_tokens": 0}
        })))
        .mount(&server)
        .await;
    let provider = provider("anthropic", &server.uri(), |_| {});
    let request = ChatRequest::new(vec![Message::user("Weather?")]).tools(vec![weather_tool()]);
    let plain = provider.chat(&request).await.unwrap();
    let streamed = provider
        .chat_stream(&request)
        .await
        .unwrap()
        .collect_response("test")
        .await
        .unwrap();
    assert_eq!(plain, streamed);
    assert_eq!(streamed.usage.cache_read_tokens, 200);
}

#[tokio::test]
async fn an_error_event_after_200_is_retried_only_before_anything_was_passed_on() {
    let overloaded = sse(&[(
        Some("error"),
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
            .to_string(),
    )]);
    let server = MockServer::start().await;
    first_then(
        &server,
        sse_response(overloaded.clone()),
        sse_response(sse(&tool_use_stream())),
    )
    .await;
    let answer = provider("anthropic", &server.uri(), |_| {})
        .chat_stream(&ChatRequest::new(vec![Message::user("hi")]))
        .await
        .unwrap()
        .collect_response("test")
        .await
        .unwrap();
    assert_eq!(answer.usage.requests, 2);

    // Text first, then (in a later chunk) the error: the text has reached
    // the caller, so the stream is not started over.
    let parts = vec![
        format!(
            "{}{}",
            streaming_head("text/event-stream"),
            sse(&tool_use_stream()[..5])
        ),
        overloaded,
    ];
    let base = raw_server_parts(parts, None).await;
    let mut stream = provider("anthropic", &base, |_| {})
        .chat_stream(&ChatRequest::new(vec![Message::user("hi")]))
        .await
        .unwrap();
    let mut texts = Vec::new();
    let error = loop {
        match stream.next().await.unwrap() {
            Ok(StreamEvent::TextDelta { text }) => texts.push(text),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(error) => break error,
        }
    };
    assert_eq!(texts, ["Let me ", "check."]);
    assert_eq!(error.kind(), ErrorKind::Overloaded);
    assert_eq!(error.attempts(), 1);
    assert_eq!(error.message(), "overloaded_error: Overloaded");
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn a_stream_without_message_stop_is_truncated() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(sse_response(sse(&tool_use_stream()[..11])))
        .mount(&server)
        .await;
    let error = stream_error(
        &*provider("anthropic", &server.uri(), |_| {}),
        &ChatRequest::new(vec![Message::user("hi")]),
    )
    .await;
    assert_eq!(error.kind(), ErrorKind::TruncatedStream);
    assert!(error.message().contains("message_stop"), "{error}");
}

#[tokio::test]
async fn a_529_is_retried_and_error_types_map_to_kinds() {
    let server = MockServer::start().await;
    first_then(
        &server,
        ResponseTemplate::new(529).set_body_json(json!({
            "type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}
        })),
        ResponseTemplate::new(200).set_body_json(tool_use_answer()),
    )
    .await;
    let answer = provider("anthropic", &server.uri(), |_| {})
        .chat(&ChatRequest::new(vec![Message::user("hi")]))
        .await
        .unwrap();
    assert_eq!(answer.usage.requests, 2);

    for (status, kind_name, message, kind) in [
        (
            402,
            "billing_error",
            "Your credit balance is too low",
            ErrorKind::QuotaExhausted,
        ),
        (
            401,
            "authentication_error",
            "invalid x-api-key",
            ErrorKind::Auth,
        ),
        (
            400,
            "invalid_request_error",
            "prompt is too long: 210000 tokens > 200000 maximum",
            ErrorKind::ContextLength,
        ),
        (429, "rate_limit_error", "slow down", ErrorKind::RateLimited),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(status).set_body_json(json!({
                "type": "error", "error": {"type": kind_name, "message": message}
            })))
            .mount(&server)
            .await;
        let error = provider("anthropic", &server.uri(), |raw| raw.max_retries = Some(0))
            .chat(&ChatRequest::new(vec![Message::user("hi")]))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), kind, "{error}");
        assert_eq!(error.message(), format!("{kind_name}: {message}"));
    }
}
