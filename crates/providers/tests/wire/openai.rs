use deputy_providers::{
    ChatRequest, ErrorKind, FinishReason, Message, StreamEvent, ToolArguments, Usage,
};
use futures::StreamExt as _;
use serde_json::json;
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{
    KEY, data_events, provider, request_body, sse_response, stream_error, weather_tool,
};

fn tool_call_answer() -> serde_json::Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-test-2026",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": null,
            "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Par"}}
            ]}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
                  "prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 10}}
    })
}

#[tokio::test]
async fn sends_the_chat_completions_shape_with_a_bearer_key() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(body_partial_json(json!({
            "model": "test-model",
            "max_completion_tokens": 64,
            "temperature": 0.5,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "cold"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city"}}]
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "model": "gpt-test-2026",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Cold in Oslo."}}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 5}
        })))
        .expect(1)
        .mount(&server)
        .await;
    let provider = provider("openai", &format!("{}/v1", server.uri()), |raw| {
        raw.max_tokens_field = Some(deputy_providers::MaxTokensField::MaxCompletionTokens);
    });
    let call = deputy_providers::ToolCall::new("call_1", "get_weather", json!({"city": "Oslo"}));
    let request = ChatRequest::new(vec![
        Message::system("Be brief."),
        Message::user("Weather?"),
        Message::Assistant {
            content: String::new(),
            tool_calls: vec![call.clone()],
            signature: None,
        },
        Message::tool_result(&call, "cold", false),
    ])
    .tools(vec![weather_tool()])
    .max_output_tokens(64)
    .temperature(0.5);
    let answer = provider.chat(&request).await.unwrap();
    assert_eq!(answer.text, "Cold in Oslo.");
    assert_eq!(answer.finish, FinishReason::Stop);
    assert_eq!(answer.model, "gpt-test-2026");
    assert_eq!(
        answer.usage,
        Usage {
            input_tokens: 30,
            output_tokens: 5,
            requests: 1,
            ..Usage::default()
        }
    );
}

#[tokio::test]
async fn parses_tool_calls_cache_usage_and_keeps_bad_arguments_as_a_value() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(tool_call_answer()))
        .mount(&server)
        .await;
    let provider = provider("openai", &server.uri(), |_| {});
    let answer = provider
        .chat(
            &ChatRequest::new(vec![Message::user("Weather in Paris?")]).tools(vec![weather_tool()]),
        )
        .await
        .unwrap();
    assert_eq!(answer.finish, FinishReason::ToolCalls);
    assert_eq!(answer.tool_calls.len(), 2);
    assert_eq!(answer.tool_calls[0].id, "call_a");
    assert_eq!(
        answer.tool_calls[0].arguments.json(),
        Ok(&json!({"city": "Paris"}))
    );
    assert!(matches!(
        &answer.tool_calls[1].arguments,
        ToolArguments::Malformed { raw, .. } if raw == "{\"city\": \"Par"
    ));
    // Cached prompt tokens are counted apart from the rest of the input.
    assert_eq!(
        answer.usage,
        Usage {
            input_tokens: 30,
            output_tokens: 20,
            cache_read_tokens: 60,
            cache_write_tokens: 10,
            requests: 1,
        }
    );
}

fn streamed_tool_call_chunks() -> Vec<serde_json::Value> {
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| json!({"id": "c", "model": "gpt-test-2026", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": null});
    vec![
        chunk(json!({"role": "assistant", "content": ""}), json!(null)),
        chunk(json!({"content": "Let me "}), json!(null)),
        chunk(json!({"content": "check."}), json!(null)),
        chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
            json!(null),
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
            json!(null),
        ),
        chunk(
            json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}),
            json!(null),
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
            json!(null),
        ),
        chunk(json!({}), json!("tool_calls")),
        json!({"id": "c", "model": "gpt-test-2026", "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 7}}),
    ]
}

#[tokio::test]
async fn streams_text_as_it_comes_and_tool_calls_assembled_by_index() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_partial_json(
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        ))
        .respond_with(sse_response(data_events(
            &streamed_tool_call_chunks(),
            true,
        )))
        .expect(1)
        .mount(&server)
        .await;
    let provider = provider("openai", &server.uri(), |_| {});
    let request = ChatRequest::new(vec![Message::user("Weather?")]).tools(vec![weather_tool()]);
    let events: Vec<StreamEvent> = provider
        .chat_stream(&request)
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(
        events[..2],
        [
            StreamEvent::TextDelta {
                text: "Let me ".into()
            },
            StreamEvent::TextDelta {
                text: "check.".into()
            }
        ]
    );
    let StreamEvent::ToolCall { call } = &events[2] else {
        panic!("expected a tool call, got {:?}", events[2]);
    };
    assert_eq!(
        (call.id.as_str(), call.name.as_str()),
        ("call_a", "get_weather")
    );
    assert_eq!(call.arguments.json(), Ok(&json!({"city": "Paris"})));
    let StreamEvent::ToolCall { call } = &events[3] else {
        panic!("expected a tool call, got {:?}", events[3]);
    };
    assert_eq!(call.name, "get_time");
    assert_eq!(
        events[4],
        StreamEvent::Finished {
            finish: FinishReason::ToolCalls,
            usage: Usage {
                input_tokens: 12,
                output_tokens: 7,
                requests: 1,
                ..Usage::default()
            },
            model: "gpt-test-2026".into(),
            signature: None,
        }
    );
    assert_eq!(events.len(), 5);
}

#[tokio::test]
async fn a_stream_without_a_finish_reason_or_done_is_truncated() {
    for (chunks, done, why) in [
        (
            streamed_tool_call_chunks()[..5].to_vec(),
            false,
            "no finish_reason",
        ),
        (streamed_tool_call_chunks(), false, "[DONE]"),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(sse_response(data_events(&chunks, done)))
            .mount(&server)
            .await;
        let provider = provider("openai", &server.uri(), |_| {});
        let error = stream_error(
            &*provider,
            &ChatRequest::new(vec![Message::user("Weather?")]),
        )
        .await;
        assert_eq!(error.kind(), ErrorKind::TruncatedStream, "{error}");
        assert!(error.message().contains(why), "{error}");
    }
}

#[tokio::test]
async fn streamed_and_plain_answers_agree() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_partial_json(json!({"stream": true})))
        .respond_with(sse_response(data_events(
            &streamed_tool_call_chunks(),
            true,
        )))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "model": "gpt-test-2026",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Let me check.",
                "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7}
        })))
        .mount(&server)
        .await;
    let provider = provider("openai", &server.uri(), |_| {});
    let request = ChatRequest::new(vec![Message::user("Weather?")]);
    let plain = provider.chat(&request).await.unwrap();
    let streamed = provider
        .chat_stream(&request)
        .await
        .unwrap()
        .collect_response("test")
        .await
        .unwrap();
    assert_eq!(plain, streamed);
}

#[tokio::test]
async fn an_error_inside_a_stream_is_reported_with_its_kind() {
    let server = MockServer::start().await;
    let body = data_events(
        &[
            json!({"error": {"message": "Rate limit reached", "type": "rate_limit_error", "code": "rate_limit_exceeded"}}),
        ],
        false,
    );
    Mock::given(method("POST"))
        .respond_with(sse_response(body))
        .mount(&server)
        .await;
    let provider = provider("openai", &server.uri(), |raw| raw.max_retries = Some(0));
    let error = stream_error(&*provider, &ChatRequest::new(vec![Message::user("hi")])).await;
    assert_eq!(error.kind(), ErrorKind::RateLimited);
    assert_eq!(error.message(), "Rate limit reached");
}

#[tokio::test]
async fn the_max_tokens_field_is_max_tokens_by_default_and_nothing_unset_is_sent() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "choices": [{"index": 0, "finish_reason": "length", "message": {"content": "cut"}}]
        })))
        .mount(&server)
        .await;
    let provider = provider("openai", &server.uri(), |_| {});
    let answer = provider
        .chat(&ChatRequest::new(vec![Message::user("hi")]).max_output_tokens(5))
        .await
        .unwrap();
    assert_eq!(answer.finish, FinishReason::Length);
    let body = request_body(&server, 0).await;
    assert_eq!(body["max_tokens"], 5);
    assert!(body.get("max_completion_tokens").is_none());
    assert!(body.get("temperature").is_none());
    assert!(body.get("tools").is_none());
    assert!(body.get("stream").is_none());
}
