//! Shared helpers: providers built through the public config path, SSE
//! bodies, and a raw TCP server for streams that stall or break.

use std::sync::Arc;
use std::time::Duration;

use deputy_providers::{
    ChatRequest, Provider, ProviderConfig, ProviderError, RawProviderConfig, ToolSpec,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use wiremock::ResponseTemplate;

/// The key every test provider uses; no test output may contain it.
pub(crate) const KEY: &str = "sk-test-secret-key-0123456789";

/// A provider of `kind` at `base_url`, with its key read from a fake
/// environment and quick retries.
pub(crate) fn provider(
    kind: &str,
    base_url: &str,
    tweak: impl FnOnce(&mut RawProviderConfig),
) -> Arc<dyn Provider> {
    let mut raw = RawProviderConfig {
        kind: Some(kind.to_owned()),
        base_url: Some(base_url.to_owned()),
        api_key_env: (kind != "ollama").then(|| "TEST_PROVIDER_KEY".to_owned()),
        model: Some("test-model".to_owned()),
        initial_backoff_ms: Some(10),
        max_backoff_ms: Some(40),
        ..RawProviderConfig::default()
    };
    tweak(&mut raw);
    ProviderConfig::from_raw("test", raw)
        .unwrap()
        .build(|name| (name == "TEST_PROVIDER_KEY").then(|| KEY.to_owned()))
        .unwrap()
}

/// An SSE body from `(event name, data)` pairs.
pub(crate) fn sse(events: &[(Option<&str>, String)]) -> String {
    let mut body = String::new();
    for (event, data) in events {
        if let Some(event) = event {
            body.push_str(&format!("event: {event}\n"));
        }
        body.push_str(&format!("data: {data}\n\n"));
    }
    body
}

/// Unnamed SSE events from JSON values, then `[DONE]` if asked.
pub(crate) fn data_events(chunks: &[Value], done: bool) -> String {
    let mut events: Vec<(Option<&str>, String)> = chunks
        .iter()
        .map(|chunk| (None, chunk.to_string()))
        .collect();
    if done {
        events.push((None, "[DONE]".to_owned()));
    }
    sse(&events)
}

pub(crate) fn sse_response(body: String) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(body, "text/event-stream")
}

/// The JSON body of the `index`-th request the server received.
pub(crate) async fn request_body(server: &wiremock::MockServer, index: usize) -> Value {
    let requests = server.received_requests().await.unwrap();
    serde_json::from_slice(&requests[index].body).unwrap()
}

/// A one-connection HTTP server that sends `head_and_body`, then either
/// stalls for `stall` or closes the connection. Returns its base URL.
pub(crate) async fn raw_server(head_and_body: String, stall: Option<Duration>) -> String {
    raw_server_parts(vec![head_and_body], stall).await
}

/// Like [`raw_server`], sending `parts` 100 ms apart, so the client reads
/// them as separate chunks.
pub(crate) async fn raw_server_parts(parts: Vec<String>, stall: Option<Duration>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        // Read the request head and body (small in these tests).
        let mut buffer = vec![0_u8; 64 * 1024];
        let _ = tokio::time::timeout(Duration::from_millis(200), socket.read(&mut buffer)).await;
        for (index, part) in parts.iter().enumerate() {
            if index > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = socket.write_all(part.as_bytes()).await;
            let _ = socket.flush().await;
        }
        if let Some(stall) = stall {
            tokio::time::sleep(stall).await;
        }
        // Dropping the socket closes the connection mid-body.
    });
    format!("http://{address}")
}

/// An HTTP/1.1 response head for a chunk-less streamed body that never
/// says how long it is.
pub(crate) fn streaming_head(content_type: &str) -> String {
    format!("HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\nconnection: close\r\n\r\n")
}

/// A response head for a chunked body, and one chunk; a server that sends
/// these and closes has cut its stream mid-way.
pub(crate) fn chunked_head_and_chunk(content_type: &str, data: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{data}\r\n",
        data.len()
    )
}

/// The tool every backend test offers.
pub(crate) fn weather_tool() -> ToolSpec {
    ToolSpec {
        name: "get_weather".into(),
        description: "Weather for a city".into(),
        parameters: serde_json::json!({"type": "object", "properties": {"city": {"type": "string"}}}),
    }
}

/// Streams `request` and reads the whole stream, expecting it to fail.
pub(crate) async fn stream_error(provider: &dyn Provider, request: &ChatRequest) -> ProviderError {
    provider
        .chat_stream(request)
        .await
        .unwrap()
        .collect_response("test")
        .await
        .unwrap_err()
}

/// Answers the first request with `first` and every later one with `then`.
pub(crate) async fn first_then(
    server: &wiremock::MockServer,
    first: ResponseTemplate,
    then: ResponseTemplate,
) {
    use wiremock::Mock;
    use wiremock::matchers::method;
    Mock::given(method("POST"))
        .respond_with(first)
        .up_to_n_times(1)
        .with_priority(1)
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .respond_with(then)
        .with_priority(2)
        .mount(server)
        .await;
}
