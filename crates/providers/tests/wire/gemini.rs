use std::time::{Duration, Instant};

use deputy_providers::{ChatRequest, ErrorKind, FinishReason, Message, Usage};
use serde_json::json;
use wiremock::matchers::{body_partial_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{
    KEY, data_events, first_then, provider, request_body, sse_response, stream_error, weather_tool,
};

fn function_call_answer() -> serde_json::Value {
    json!({
        "candidates": [{"content": {"role": "model", "parts": [
            {"text": "Checking."},
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "sig-1"}
        ]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 31, "candidatesTokenCount": 8, "thoughtsTokenCount": 56,
                          "cachedContentTokenCount": 11, "totalTokenCount": 95},
        "modelVersion": "gemini-test-001"
    })
}

#[tokio::test]
async fn a_function_call_is_reported_as_tool_calls_although_gemini_says_stop() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1beta/models/test-model:generateContent"))
        .and(header("x-goog-api-key", KEY))
        .and(body_partial_json(json!({
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "contents": [{"role": "user", "parts": [{"text": "Weather?"}]}],
            "tools": [{"functionDeclarations": [{"name": "get_weather"}]}],
            "generationConfig": {"maxOutputTokens": 50}
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(function_call_answer()))
        .expect(1)
        .mount(&server)
        .await;
    let provider = provider("gemini", &format!("{}/v1beta", server.uri()), |_| {});
    let request = ChatRequest::new(vec![
        Message::system("Be brief."),
        Message::user("Weather?"),
    ])
    .tools(vec![weather_tool()])
    .max_output_tokens(50);
    let answer = provider.chat(&request).await.unwrap();
    assert_eq!(answer.finish, FinishReason::ToolCalls);
    assert_eq!(answer.text, "Checking.");
    assert_eq!(answer.model, "gemini-test-001");
    let call = &answer.tool_calls[0];
    assert_eq!(call.name, "get_weather");
    assert_eq!(call.arguments.json(), Ok(&json!({"city": "Paris"})));
    assert_eq!(call.signature.as_deref(), Some("sig-1"));
    // Thinking is billed as output; the cached prompt part is counted apart.
    assert_eq!(
        answer.usage,
        Usage {
            input_tokens: 20,
            output_tokens: 64,
            cache_read_tokens: 11,
            cache_write_tokens: 0,
            requests: 1,
        }
    );
}

#[tokio::test]
async fn the_next_turn_echoes_the_model_turn_with_its_signature() {
    let server = MockServer::start().await;
    first_then(&server, ResponseTemplate::new(200).set_body_json(function_call_answer()), ResponseTemplate::new(200).set_body_json(json!({
            "candidates": [{"content": {"role": "model", "parts": [{"text": "Sunny."}]}, "finishReason": "STOP"}]
        }))).await;
    let provider = provider("gemini", &server.uri(), |_| {});
    let mut request = ChatRequest::new(vec![Message::user("Weather?")]).tools(vec![weather_tool()]);
    let first = provider.chat(&request).await.unwrap();
    request.messages.push(first.to_message());
    request
        .messages
        .push(Message::tool_result(&first.tool_calls[0], "21C", false));
    let second = provider.chat(&request).await.unwrap();
    assert_eq!(
        (second.text.as_str(), second.finish),
        ("Sunny.", FinishReason::Stop)
    );
    let body = request_body(&server, 1).await;
    assert_eq!(
        body["contents"],
        json!([
            {"role": "user", "parts": [{"text": "Weather?"}]},
            {"role": "model", "parts": [
                {"text": "Checking."},
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "sig-1"}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"result": "21C"}}}]}
        ])
    );
}

#[tokio::test]
async fn a_stream_agrees_with_the_plain_answer_and_needs_a_finish_reason() {
    let server = MockServer::start().await;
    let chunks = [
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Check"}]}}]}),
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "ing."}]}}]}),
        json!({"candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "sig-1"}]},
            "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 31, "candidatesTokenCount": 8, "thoughtsTokenCount": 56, "cachedContentTokenCount": 11},
            "modelVersion": "gemini-test-001"}),
    ];
    Mock::given(method("POST"))
        .and(path("/models/test-model:streamGenerateContent"))
        .and(query_param("alt", "sse"))
        .respond_with(sse_response(data_events(&chunks, false)))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/models/test-model:generateContent"))
        .respond_with(ResponseTemplate::new(200).set_body_json(function_call_answer()))
        .mount(&server)
        .await;
    let provider = provider("gemini", &server.uri(), |_| {});
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

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(sse_response(data_events(&chunks[..2], false)))
        .mount(&server)
        .await;
    let error = stream_error(
        &*crate::support::provider("gemini", &server.uri(), |_| {}),
        &request,
    )
    .await;
    assert_eq!(error.kind(), ErrorKind::TruncatedStream);
}

#[tokio::test]
async fn the_retry_delay_in_the_error_body_is_honoured() {
    let server = MockServer::start().await;
    first_then(&server, ResponseTemplate::new(429).set_body_json(json!({"error": {
            "code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.4s"}]}})), ResponseTemplate::new(200).set_body_json(function_call_answer())).await;
    let started = Instant::now();
    let answer = provider("gemini", &server.uri(), |_| {})
        .chat(&ChatRequest::new(vec![Message::user("hi")]))
        .await
        .unwrap();
    assert_eq!(answer.usage.requests, 2);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_spent_daily_quota_is_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).set_body_json(json!({"error": {
            "code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                    {"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "20s"}]}})))
        .expect(1)
        .mount(&server)
        .await;
    let error = provider("gemini", &server.uri(), |_| {})
        .chat(&ChatRequest::new(vec![Message::user("hi")]))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::QuotaExhausted);
    assert_eq!(error.retry_after(), Some(Duration::from_secs(20)));
}

#[tokio::test]
async fn safety_and_max_tokens_finish_reasons_are_normalized() {
    for (reason, expected) in [
        ("MAX_TOKENS", FinishReason::Length),
        ("SAFETY", FinishReason::ContentFilter),
        (
            "MALFORMED_FUNCTION_CALL",
            FinishReason::Other("malformed_function_call".into()),
        ),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "candidates": [{"content": {"role": "model", "parts": [{"text": "x"}]}, "finishReason": reason}]
            })))
            .mount(&server)
            .await;
        let answer = provider("gemini", &server.uri(), |_| {})
            .chat(&ChatRequest::new(vec![Message::user("hi")]))
            .await
            .unwrap();
        assert_eq!(answer.finish, expected);
    }
}
