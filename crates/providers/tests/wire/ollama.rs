use deputy_providers::{ChatRequest, ErrorKind, FinishReason, Message, Usage};
use serde_json::json;
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{provider, request_body, stream_error, weather_tool};

fn ndjson(lines: &[serde_json::Value]) -> String {
    lines.iter().map(|line| format!("{line}\n")).collect()
}

fn tool_call_lines() -> Vec<serde_json::Value> {
    vec![
        json!({"model": "llama-test", "message": {"role": "assistant", "content": "Check"}, "done": false}),
        json!({"model": "llama-test", "message": {"role": "assistant", "content": "ing."}, "done": false}),
        json!({"model": "llama-test", "message": {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]}, "done": false}),
        json!({"model": "llama-test", "message": {"role": "assistant", "content": ""}, "done": true,
               "done_reason": "stop", "prompt_eval_count": 26, "eval_count": 12}),
    ]
}

#[tokio::test]
async fn tool_calls_without_ids_get_stable_ones_streamed_or_not() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/chat"))
        .and(body_partial_json(
            json!({"stream": false, "options": {"num_predict": 30}}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "model": "llama-test",
            "message": {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
            "done": true, "done_reason": "stop", "prompt_eval_count": 26, "eval_count": 12
        })))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/chat"))
        .and(body_partial_json(json!({"stream": true})))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(ndjson(&tool_call_lines()), "application/x-ndjson"),
        )
        .mount(&server)
        .await;
    let provider = provider("ollama", &server.uri(), |_| {});
    let request = ChatRequest::new(vec![Message::user("Weather?")])
        .tools(vec![weather_tool()])
        .max_output_tokens(30);
    let plain = provider.chat(&request).await.unwrap();
    assert_eq!(plain.finish, FinishReason::ToolCalls);
    let ids: Vec<&str> = plain
        .tool_calls
        .iter()
        .map(|call| call.id.as_str())
        .collect();
    assert_eq!(ids, ["ollama-call-0", "ollama-call-1"]);
    assert_eq!(
        plain.usage,
        Usage {
            input_tokens: 26,
            output_tokens: 12,
            requests: 1,
            ..Usage::default()
        }
    );
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
async fn tool_results_go_back_as_tool_messages_with_the_tool_name() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "model": "llama-test", "message": {"role": "assistant", "content": "Sunny."},
            "done": true, "done_reason": "stop"
        })))
        .mount(&server)
        .await;
    let provider = provider("ollama", &server.uri(), |_| {});
    let call =
        deputy_providers::ToolCall::new("ollama-call-0", "get_weather", json!({"city": "Paris"}));
    let request = ChatRequest::new(vec![
        Message::user("Weather?"),
        Message::Assistant {
            content: String::new(),
            tool_calls: vec![call.clone()],
            signature: None,
        },
        Message::tool_result(&call, "21C", false),
    ]);
    provider.chat(&request).await.unwrap();
    let body = request_body(&server, 0).await;
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "content": "21C", "tool_name": "get_weather"}
        ])
    );
}

#[tokio::test]
async fn a_stream_without_its_done_line_is_truncated_and_error_lines_are_errors() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(ndjson(&tool_call_lines()[..2]), "application/json"),
        )
        .mount(&server)
        .await;
    let error = stream_error(
        &*provider("ollama", &server.uri(), |_| {}),
        &ChatRequest::new(vec![Message::user("hi")]),
    )
    .await;
    assert_eq!(error.kind(), ErrorKind::TruncatedStream);

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(404)
                .set_body_json(json!({"error": "model \"nope\" not found, try pulling it first"})),
        )
        .mount(&server)
        .await;
    let error = provider("ollama", &server.uri(), |_| {})
        .chat(&ChatRequest::new(vec![Message::user("hi")]))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::BadRequest);
    assert_eq!(
        error.message(),
        "model \"nope\" not found, try pulling it first"
    );
}
