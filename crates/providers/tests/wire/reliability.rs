//! Retries, timeouts, error kinds, the request cap and key hygiene, shown
//! on the OpenAI backend (they live in the shared transport).

use std::time::{Duration, Instant};

use deputy_providers::{ChatRequest, ErrorKind, Message};
use futures::StreamExt as _;
use serde_json::json;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{
    KEY, chunked_head_and_chunk, data_events, first_then, provider, raw_server, sse_response,
    stream_error, streaming_head,
};

fn ok_body() -> serde_json::Value {
    json!({"model": "m", "choices": [{"index": 0, "finish_reason": "stop", "message": {"content": "fine"}}],
           "usage": {"prompt_tokens": 3, "completion_tokens": 1}})
}

fn hi() -> ChatRequest {
    ChatRequest::new(vec![Message::user("hi")])
}

/// Answers the first request with `first`, then with a good answer.
async fn failing_then_ok(server: &MockServer, first: ResponseTemplate) {
    first_then(
        server,
        first,
        ResponseTemplate::new(200).set_body_json(ok_body()),
    )
    .await;
}

fn rate_limited() -> ResponseTemplate {
    ResponseTemplate::new(429).set_body_json(json!({
        "error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}
    }))
}

#[tokio::test]
async fn a_429_with_retry_after_is_retried_after_the_asked_wait() {
    let server = MockServer::start().await;
    failing_then_ok(
        &server,
        rate_limited().insert_header("retry-after-ms", "300"),
    )
    .await;
    let provider = provider("openai", &server.uri(), |_| {});
    let started = Instant::now();
    let answer = provider.chat(&hi()).await.unwrap();
    assert_eq!(answer.text, "fine");
    assert_eq!(answer.usage.requests, 2);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn retry_after_in_seconds_is_honoured() {
    let server = MockServer::start().await;
    failing_then_ok(&server, rate_limited().insert_header("retry-after", "1")).await;
    let provider = provider("openai", &server.uri(), |_| {});
    let started = Instant::now();
    provider.chat(&hi()).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn insufficient_quota_is_never_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).set_body_json(json!({
            "error": {"message": "You exceeded your current quota.", "type": "insufficient_quota", "code": "insufficient_quota"}
        })))
        .expect(1)
        .mount(&server)
        .await;
    let provider = provider("openai", &server.uri(), |_| {});
    let error = provider.chat(&hi()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::QuotaExhausted);
    assert_eq!(error.status(), Some(429));
    assert_eq!(error.attempts(), 1);
}

#[tokio::test]
async fn server_errors_are_retried_twice_then_reported() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(500)
                .set_body_json(json!({"error": {"message": "boom", "type": "server_error"}})),
        )
        .expect(3)
        .mount(&server)
        .await;
    let provider = provider("openai", &server.uri(), |_| {});
    let error = provider.chat(&hi()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Server);
    assert_eq!(error.attempts(), 3);
    assert_eq!(
        error.to_string(),
        "provider `test`: server (http 500) after 3 attempts: boom"
    );
}

#[tokio::test]
async fn x_should_retry_false_stops_retries_and_true_allows_them() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).insert_header("x-should-retry", "false"))
        .expect(1)
        .mount(&server)
        .await;
    let error = provider("openai", &server.uri(), |_| {})
        .chat(&hi())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Overloaded);
    assert_eq!(error.message(), "http 503 with an empty body");

    let server = MockServer::start().await;
    failing_then_ok(
        &server,
        ResponseTemplate::new(400).insert_header("x-should-retry", "true"),
    )
    .await;
    let answer = provider("openai", &server.uri(), |_| {})
        .chat(&hi())
        .await
        .unwrap();
    assert_eq!(answer.usage.requests, 2);
}

#[tokio::test]
async fn a_wait_longer_than_max_retry_wait_fails_at_once() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(rate_limited().insert_header("retry-after", "3600"))
        .expect(1)
        .mount(&server)
        .await;
    let started = Instant::now();
    let error = provider("openai", &server.uri(), |_| {})
        .chat(&hi())
        .await
        .unwrap_err();
    // Far below the hour it would have waited, with room for a busy machine.
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(error.kind(), ErrorKind::RateLimited);
    assert_eq!(error.retry_after(), Some(Duration::from_secs(3600)));
    assert!(
        error
            .message()
            .contains("asked to wait 3600 s, more than max_retry_wait = 60 s"),
        "{error}"
    );
}

#[tokio::test]
async fn statuses_map_to_kinds() {
    let cases = [
        (
            401,
            json!({"error": {"message": "bad key"}}),
            ErrorKind::Auth,
        ),
        (
            403,
            json!({"error": {"message": "no access"}}),
            ErrorKind::Auth,
        ),
        (
            400,
            json!({"error": {"message": "bad", "code": "invalid_value"}}),
            ErrorKind::BadRequest,
        ),
        (
            400,
            json!({"error": {"message": "This model's maximum context length is 8192 tokens", "code": "context_length_exceeded"}}),
            ErrorKind::ContextLength,
        ),
        (
            404,
            json!({"error": "model not found"}),
            ErrorKind::BadRequest,
        ),
    ];
    for (status, body, kind) in cases {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(status).set_body_json(body))
            .expect(1)
            .mount(&server)
            .await;
        let error = provider("openai", &server.uri(), |_| {})
            .chat(&hi())
            .await
            .unwrap_err();
        assert_eq!(
            (error.kind(), error.status()),
            (kind, Some(status)),
            "{error}"
        );
    }
}

#[tokio::test]
async fn a_malformed_body_is_a_malformed_response_and_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>gateway</html>"))
        .expect(1)
        .mount(&server)
        .await;
    let error = provider("openai", &server.uri(), |_| {})
        .chat(&hi())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::MalformedResponse);
    assert!(error.message().contains("<html>gateway</html>"), "{error}");
}

#[tokio::test]
async fn an_answer_slower_than_the_request_timeout_is_a_timeout() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(ok_body())
                .set_delay(Duration::from_secs(60)),
        )
        .mount(&server)
        .await;
    let provider = provider("openai", &server.uri(), |raw| {
        raw.request_timeout_ms = Some(300);
        raw.max_retries = Some(0);
    });
    let started = Instant::now();
    let error = provider.chat(&hi()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout, "{error}");
    // Well before the server's 60 s answer.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn nothing_listening_is_a_network_error_after_retries() {
    // Bind and drop, so the port is (very likely) closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let error = provider("openai", &format!("http://127.0.0.1:{port}"), |_| {})
        .chat(&hi())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Network, "{error}");
    assert_eq!(error.attempts(), 3);
    assert!(error.message().starts_with("cannot connect"), "{error}");
}

#[tokio::test]
async fn the_key_never_shows_in_errors_or_debug_output() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "error": {"message": format!("Incorrect API key provided: {KEY}."), "code": "invalid_api_key"}
        })))
        .mount(&server)
        .await;
    let provider = provider("openai", &server.uri(), |_| {});
    let error = provider.chat(&hi()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Auth);
    for text in [
        error.to_string(),
        format!("{error:?}"),
        format!("{provider:?}"),
    ] {
        assert!(!text.contains(KEY), "the key leaked: {text}");
    }
    assert!(error.message().contains("[redacted]"), "{error}");
}

#[tokio::test]
async fn max_concurrent_requests_queues_calls_to_one_backend() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(ok_body())
                .set_delay(Duration::from_millis(300)),
        )
        .mount(&server)
        .await;
    let capped = provider("openai", &server.uri(), |raw| {
        raw.max_concurrent_requests = Some(1);
    });
    let request = hi();
    let started = Instant::now();
    let (first, second) = tokio::join!(capped.chat(&request), capped.chat(&request));
    first.unwrap();
    second.unwrap();
    // Two 300 ms answers one after the other: the second call waited for
    // the first (uncapped, they would overlap and take about 300 ms).
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
}

fn good_stream() -> String {
    data_events(
        &[
            json!({"choices": [{"index": 0, "delta": {"content": "fine"}, "finish_reason": null}]}),
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        ],
        true,
    )
}

#[tokio::test]
async fn a_stream_that_fails_before_any_event_is_started_over() {
    let server = MockServer::start().await;
    let overloaded = data_events(
        &[json!({"error": {"message": "overloaded", "type": "overloaded_error"}})],
        false,
    );
    first_then(
        &server,
        sse_response(overloaded),
        sse_response(good_stream()),
    )
    .await;
    let answer = provider("openai", &server.uri(), |_| {})
        .chat_stream(&hi())
        .await
        .unwrap()
        .collect_response("test")
        .await
        .unwrap();
    assert_eq!(answer.text, "fine");
    assert_eq!(answer.usage.requests, 2);
}

#[tokio::test]
async fn a_stream_cut_after_events_were_passed_on_is_not_retried() {
    let first_chunk = data_events(
        &[
            json!({"choices": [{"index": 0, "delta": {"content": "half an ans"}, "finish_reason": null}]}),
        ],
        false,
    );
    let base = raw_server(
        chunked_head_and_chunk("text/event-stream", &first_chunk),
        None,
    )
    .await;
    let mut stream = provider("openai", &base, |_| {})
        .chat_stream(&hi())
        .await
        .unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(
        first,
        deputy_providers::StreamEvent::TextDelta {
            text: "half an ans".into()
        }
    );
    let error = stream.next().await.unwrap().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Network, "{error}");
    assert_eq!(error.attempts(), 1);
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn a_stream_silent_past_the_idle_timeout_fails() {
    let first_chunk = data_events(
        &[
            json!({"choices": [{"index": 0, "delta": {"content": "thinking"}, "finish_reason": null}]}),
        ],
        false,
    );
    let base = raw_server(
        format!("{}{first_chunk}", streaming_head("text/event-stream")),
        Some(Duration::from_secs(60)),
    )
    .await;
    let started = Instant::now();
    let error = stream_error(
        &*provider("openai", &base, |raw| raw.idle_timeout_ms = Some(300)),
        &hi(),
    )
    .await;
    assert_eq!(error.kind(), ErrorKind::Timeout, "{error}");
    assert!(error.message().contains("idle timeout"), "{error}");
    // Well before the server's 60 s stall ends.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}
