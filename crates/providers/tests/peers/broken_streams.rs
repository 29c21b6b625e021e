//! Streams that break: cut short, dropped, or with a chunk that is not
//! JSON. None of them may come out as a successful answer.

use deputy_providers::{ErrorKind, FinishReason, StreamEvent};
use serde_json::json;

use crate::round_trips::aimock_fixtures;
use crate::support::{Aimock, Llmock, Mode, ask, drain, text_of};

/// Streams `question` with `fault` queued on llmock and reads it to its
/// end. Checks that the stream started, passed on some text, never
/// finished, and ended in an error, which it returns.
async fn broken_after_text(
    llmock: &Llmock,
    kind: &str,
    fault: &str,
    after_chunks: u32,
    question: &str,
) -> deputy_providers::ProviderError {
    let provider = llmock.provider(kind, |_| {});
    llmock
        .scenario(json!([{"type": "stream_fault", "kind": fault, "after_chunks": after_chunks}]))
        .await;
    let stream = provider
        .chat_stream(&ask(question))
        .await
        .unwrap_or_else(|error| panic!("the stream should start: {error}"));
    let (events, error) = drain(stream).await;
    assert!(
        !text_of(&events).is_empty(),
        "{kind} {fault}@{after_chunks}: no text came before the fault, so this test does not test a stream broken mid-way: {events:#?} {error:?}"
    );
    assert!(
        !events
            .iter()
            .any(|event| matches!(event, StreamEvent::Finished { .. })),
        "{kind} {fault}@{after_chunks}: a broken stream finished: {events:#?}"
    );
    let error = error.unwrap_or_else(|| {
        panic!("{kind} {fault}@{after_chunks}: the stream ended without an error: {events:#?}")
    });
    assert_eq!(error.attempts(), 1, "{error}");
    error
}

/// A stream truncated after some text is an error from the stream itself
/// (not a quiet end that `collect_response` papers over). Asked again,
/// as an agent would after that error, the same request gets the whole
/// answer, and llmock sees a truncated stream that was not accepted.
async fn truncated_stream_is_an_error(kind: &str, after_chunks: u32, model: &str) {
    let llmock = Llmock::start().await;
    let question = format!("{kind}: a story, cut short");
    let error = broken_after_text(&llmock, kind, "truncate", after_chunks, &question).await;
    assert_eq!(error.kind(), ErrorKind::TruncatedStream, "{error}");
    assert!(
        !error.message().contains("without its final event"),
        "the backend's decoder should see the truncation, not only collect_response: {error}"
    );
    let requests = llmock.requests().await;
    assert_eq!(
        requests[0]["fault"],
        format!("stream:truncate@{after_chunks}")
    );

    let provider = llmock.provider(kind, |_| {});
    let answer = Mode::Streamed
        .call(&*provider, &ask(&question))
        .await
        .unwrap_or_else(|error| panic!("asked again: {error}"));
    assert_eq!(answer.text, format!("Mock response from {model}."));
    let verdict = llmock.verdict().await;
    verdict.assert_passed();
    verdict.assert_calls(1, 2);
}

#[tokio::test]
async fn openai_truncated_stream_is_a_truncated_stream_error() {
    // Events: role, "Mock ", "response ", then the end of the body.
    truncated_stream_is_an_error("openai", 3, "gpt-4o-mini").await;
}

#[tokio::test]
async fn anthropic_truncated_stream_is_a_truncated_stream_error() {
    // message_start, content_block_start, ping, two text deltas, then the
    // end: no content_block_stop, message_delta or message_stop.
    truncated_stream_is_an_error("anthropic", 5, "claude-3-5-haiku-latest").await;
}

#[tokio::test]
async fn gemini_truncated_stream_is_a_truncated_stream_error() {
    // Two text chunks, none with a finishReason.
    truncated_stream_is_an_error("gemini", 2, "gemini-2.0-flash").await;
}

/// A stream cut before any event reached the caller is started over, as
/// `Provider::chat_stream` promises: the caller gets the whole answer.
async fn stream_cut_before_any_event_is_started_over(kind: &str, fault: &str, after_chunks: u32) {
    let llmock = Llmock::start().await;
    let provider = llmock.provider(kind, |_| {});
    llmock
        .scenario(json!([{"type": "stream_fault", "kind": fault, "after_chunks": after_chunks}]))
        .await;
    let stream = provider
        .chat_stream(&ask(&format!("{kind}: {fault} before the text")))
        .await
        .unwrap_or_else(|error| panic!("the stream should start: {error}"));
    let (events, error) = drain(stream).await;
    let faults: Vec<_> = llmock
        .requests()
        .await
        .iter()
        .map(|request| request["fault"].clone())
        .collect();
    assert!(
        error.is_none(),
        "{kind}: a stream that hit {fault}@{after_chunks} before any event reached the caller \
         was not started over; it failed with {error:?} (llmock saw faults {faults:?})"
    );
    let Some(StreamEvent::Finished { finish, usage, .. }) = events.last() else {
        panic!("{events:#?}");
    };
    assert_eq!(*finish, FinishReason::Stop);
    assert_eq!(usage.requests, 2, "{events:#?}");
    assert!(
        text_of(&events).starts_with("Mock response from"),
        "{events:#?}"
    );
    let verdict = llmock.verdict().await;
    verdict.assert_clean();
    verdict.assert_calls(1, 2);
}

#[tokio::test]
async fn openai_stream_dropped_before_any_event_is_started_over() {
    // Only the role chunk (no text) goes out before the connection drops.
    stream_cut_before_any_event_is_started_over("openai", "disconnect", 1).await;
}

#[tokio::test]
async fn anthropic_stream_dropped_before_any_event_is_started_over() {
    // message_start, content_block_start (empty text), ping.
    stream_cut_before_any_event_is_started_over("anthropic", "disconnect", 3).await;
}

#[tokio::test]
async fn openai_stream_truncated_before_any_event_is_started_over() {
    stream_cut_before_any_event_is_started_over("openai", "truncate", 1).await;
}

#[tokio::test]
async fn anthropic_stream_truncated_before_any_event_is_started_over() {
    stream_cut_before_any_event_is_started_over("anthropic", "truncate", 3).await;
}

/// A connection dropped mid-stream, after text reached the caller, is an
/// error: never an answer, and never silently started over (the caller
/// has already seen part of it).
async fn dropped_mid_stream_is_an_error(kind: &str, after_chunks: u32) {
    let llmock = Llmock::start().await;
    let error = broken_after_text(
        &llmock,
        kind,
        "disconnect",
        after_chunks,
        &format!("{kind}: a story, dropped"),
    )
    .await;
    assert!(
        matches!(
            error.kind(),
            ErrorKind::Network | ErrorKind::TruncatedStream
        ),
        "{error}"
    );
    assert_eq!(llmock.requests().await.len(), 1);

    llmock
        .scenario(
            json!([{"type": "stream_fault", "kind": "disconnect", "after_chunks": after_chunks}]),
        )
        .await;
    let provider = llmock.provider(kind, |_| {});
    let error = Mode::Streamed
        .call(&*provider, &ask(&format!("{kind}: another story, dropped")))
        .await
        .expect_err("collect_response must not turn a dropped stream into an answer");
    assert!(
        matches!(
            error.kind(),
            ErrorKind::Network | ErrorKind::TruncatedStream
        ),
        "{error}"
    );
    let verdict = llmock.verdict().await;
    verdict.assert_passed();
}

#[tokio::test]
async fn openai_stream_dropped_mid_way_is_an_error() {
    dropped_mid_stream_is_an_error("openai", 3).await;
}

#[tokio::test]
async fn anthropic_stream_dropped_mid_way_is_an_error() {
    dropped_mid_stream_is_an_error("anthropic", 5).await;
}

#[tokio::test]
async fn gemini_stream_dropped_mid_way_is_an_error() {
    dropped_mid_stream_is_an_error("gemini", 2).await;
}

/// A chunk whose JSON is cut in half is a malformed response, even though
/// the stream goes on to end normally.
async fn malformed_chunk_is_an_error(kind: &str, after_chunks: u32) {
    let llmock = Llmock::start().await;
    let error = broken_after_text(
        &llmock,
        kind,
        "malformed",
        after_chunks,
        &format!("{kind}: a story with a broken chunk"),
    )
    .await;
    assert_eq!(error.kind(), ErrorKind::MalformedResponse, "{error}");
    assert!(error.message().contains("not valid JSON"), "{error}");
    let requests = llmock.requests().await;
    assert_eq!(
        requests[0]["fault"],
        format!("stream:malformed@{after_chunks}")
    );
    // llmock cannot see that the chunk was rejected: it warns, no more.
    llmock.verdict().await.assert_passed();
}

#[tokio::test]
async fn openai_malformed_stream_chunk_is_a_malformed_response() {
    malformed_chunk_is_an_error("openai", 2).await;
}

#[tokio::test]
async fn anthropic_malformed_stream_chunk_is_a_malformed_response() {
    malformed_chunk_is_an_error("anthropic", 4).await;
}

#[tokio::test]
async fn gemini_malformed_stream_chunk_is_a_malformed_response() {
    malformed_chunk_is_an_error("gemini", 1).await;
}

/// aimock's chaos `malformed` answers 200 with `{malformed json: ...`.
async fn malformed_body_is_an_error(kind: &str, modes: &[Mode]) {
    let aimock = Aimock::start(&aimock_fixtures()).await;
    let provider = aimock.provider(kind, |_| {});
    for mode in modes {
        let error = mode
            .call(&*provider, &ask(&format!("{mode:?}: malformed, please")))
            .await
            .expect_err("a body that is not JSON");
        assert_eq!(
            error.kind(),
            ErrorKind::MalformedResponse,
            "{mode:?}: {error}"
        );
        assert!(
            error.message().contains("malformed json"),
            "{mode:?}: {error}"
        );
        assert_eq!(error.attempts(), 1, "{mode:?}: not retried: {error}");
    }
}

#[tokio::test]
async fn openai_malformed_body_is_a_malformed_response() {
    malformed_body_is_an_error("openai", &[Mode::Plain]).await;
}

#[tokio::test]
async fn ollama_malformed_body_and_stream_line_are_a_malformed_response() {
    malformed_body_is_an_error("ollama", &Mode::BOTH).await;
}
