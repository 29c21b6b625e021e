//! Rate limits, overloads and server errors: retried as the server asks
//! (or with a growing backoff), given up on when told to, never retried
//! when retrying cannot help. Each test ends with llmock's verdict.

use std::time::Duration;

use deputy_providers::{ErrorKind, FinishReason};
use serde_json::json;
use tokio::time::Instant;

use crate::support::{Llmock, Mode, ask};

/// The gaps, in seconds, between the end of each request llmock saw and
/// the start of the next.
async fn gaps(llmock: &Llmock) -> Vec<f64> {
    let requests = llmock.requests().await;
    requests
        .windows(2)
        .map(|pair| pair[1]["started_at"].as_f64().unwrap() - pair[0]["ended_at"].as_f64().unwrap())
        .collect()
}

/// One 429 asking for `retry_after` seconds, then success; both modes.
async fn waits_out_a_rate_limit(kind: &str, model: &str) {
    let llmock = Llmock::start().await;
    let provider = llmock.provider(kind, |_| {});
    for mode in Mode::BOTH {
        llmock
            .scenario(json!([{"type": "fail", "status": 429, "retry_after": 1, "times": 1}]))
            .await;
        let started = Instant::now();
        let answer = mode
            .call(&*provider, &ask(&format!("{kind} {mode:?} after a 429")))
            .await
            .unwrap_or_else(|error| panic!("{mode:?}: {error}"));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(1),
            "{mode:?}: retried after {took:?}"
        );
        assert_eq!(answer.usage.requests, 2, "{mode:?}: {answer:#?}");
        assert_eq!(
            answer.text,
            format!("Mock response from {model}."),
            "{mode:?}"
        );
        assert_eq!(answer.finish, FinishReason::Stop, "{mode:?}");
        assert!(llmock.pending().await.is_empty());
    }
    let requests = llmock.requests().await;
    let statuses: Vec<_> = requests
        .iter()
        .map(|request| request["status"].clone())
        .collect();
    assert_eq!(statuses, [json!(429), json!(200), json!(429), json!(200)]);
    for gap in [gaps(&llmock).await[0], gaps(&llmock).await[2]] {
        assert!(gap >= 0.95, "retried {gap} s after the 429");
    }
    let verdict = llmock.verdict().await;
    verdict.assert_clean();
    verdict.assert_calls(2, 4);
}

#[tokio::test]
async fn openai_waits_out_retry_after_on_429_then_succeeds() {
    waits_out_a_rate_limit("openai", "gpt-4o-mini").await;
}

#[tokio::test]
async fn anthropic_waits_out_retry_after_on_429_then_succeeds() {
    waits_out_a_rate_limit("anthropic", "claude-3-5-haiku-latest").await;
}

#[tokio::test]
async fn gemini_waits_out_retry_after_on_429_then_succeeds() {
    waits_out_a_rate_limit("gemini", "gemini-2.0-flash").await;
}

#[tokio::test]
async fn anthropic_overload_529_is_retried_then_succeeds() {
    let llmock = Llmock::start().await;
    let provider = llmock.provider("anthropic", |_| {});
    for mode in Mode::BOTH {
        llmock
            .scenario(json!([{"type": "fail", "status": 529, "retry_after": 0.3, "times": 1}]))
            .await;
        let started = Instant::now();
        let answer = mode
            .call(&*provider, &ask(&format!("{mode:?} through an overload")))
            .await
            .unwrap_or_else(|error| panic!("{mode:?}: {error}"));
        // The asked wait was honoured. (That retry-after-ms wins over the
        // rounded-up retry-after is a unit test of the retry module: an
        // upper bound on wall time here would flake on a busy machine.)
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300),
            "{mode:?}: took {took:?}"
        );
        assert_eq!(answer.usage.requests, 2, "{mode:?}: {answer:#?}");
        assert_eq!(answer.finish, FinishReason::Stop, "{mode:?}");
    }
    let verdict = llmock.verdict().await;
    verdict.assert_clean();
    verdict.assert_calls(2, 4);
}

#[tokio::test]
async fn anthropic_overload_529_without_retries_fails_as_overloaded() {
    let llmock = Llmock::start().await;
    let provider = llmock.provider("anthropic", |raw| raw.max_retries = Some(0));
    for mode in Mode::BOTH {
        llmock
            .scenario(json!([{"type": "fail", "status": 529, "retry_after": 0.3, "times": 1}]))
            .await;
        let error = mode
            .call(&*provider, &ask(&format!("{mode:?} into an overload")))
            .await
            .expect_err("max_retries = 0 gives up at the first 529");
        assert_eq!(error.kind(), ErrorKind::Overloaded, "{mode:?}: {error}");
        assert_eq!(error.status(), Some(529), "{mode:?}: {error}");
        assert_eq!(error.attempts(), 1, "{mode:?}: {error}");
        assert_eq!(
            error.retry_after(),
            Some(Duration::from_millis(300)),
            "{error}"
        );
        assert!(error.message().contains("overloaded"), "{error}");
    }
    assert_eq!(llmock.requests().await.len(), 2);
    let verdict = llmock.verdict().await;
    verdict.assert_passed();
    // Giving up is what was asked for; llmock only warns about it.
    assert_eq!(verdict.codes(), ["gave_up", "gave_up"], "{:#}", verdict.0);
}

#[tokio::test]
async fn gemini_unavailable_503_is_retried_then_succeeds() {
    let llmock = Llmock::start().await;
    let provider = llmock.provider("gemini", |_| {});
    for mode in Mode::BOTH {
        llmock
            .scenario(json!([{"type": "fail", "status": 503, "retry_after": 0.2, "times": 1}]))
            .await;
        let answer = mode
            .call(&*provider, &ask(&format!("{mode:?} through a 503")))
            .await
            .unwrap_or_else(|error| panic!("{mode:?}: {error}"));
        assert_eq!(answer.usage.requests, 2, "{mode:?}: {answer:#?}");
    }
    llmock.verdict().await.assert_clean();
}

#[tokio::test]
async fn server_errors_without_retry_after_are_retried_with_growing_backoff() {
    let llmock = Llmock::start().await;
    let provider = llmock.provider("openai", |_| {});
    llmock
        .scenario(json!([{"type": "fail", "status": 500, "times": 2}]))
        .await;
    let answer = provider
        .chat(&ask("through two 500s"))
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(answer.usage.requests, 3, "{answer:#?}");
    let gaps = gaps(&llmock).await;
    // 50 ms, then 100 ms, each less up to 25% jitter.
    assert!(
        gaps[0] >= 0.03 && gaps[1] >= 0.07 && gaps[1] > gaps[0],
        "{gaps:?}"
    );
    let verdict = llmock.verdict().await;
    verdict.assert_clean();
    verdict.assert_calls(1, 3);
}

#[tokio::test]
async fn persistent_server_errors_give_up_after_max_retries() {
    let llmock = Llmock::start().await;
    let provider = llmock.provider("openai", |raw| raw.max_retries = Some(2));
    llmock
        .scenario(json!([{"type": "fail", "status": 500, "times": null}]))
        .await;
    let error = provider
        .chat(&ask("into a broken server"))
        .await
        .expect_err("every attempt fails");
    assert_eq!(error.kind(), ErrorKind::Server, "{error}");
    assert_eq!(error.attempts(), 3, "{error}");
    assert_eq!(llmock.requests().await.len(), 3);
    llmock.verdict().await.assert_clean();
}

#[tokio::test]
async fn bad_request_is_not_retried() {
    let llmock = Llmock::start().await;
    let provider = llmock.provider("openai", |_| {});
    llmock
        .scenario(
            json!([{"type": "fail", "status": 400, "message": "bad thing", "code": "custom_code"}]),
        )
        .await;
    let error = provider
        .chat(&ask("a request the server refuses"))
        .await
        .expect_err("a 400");
    assert_eq!(error.kind(), ErrorKind::BadRequest, "{error}");
    assert_eq!(
        (error.status(), error.attempts()),
        (Some(400), 1),
        "{error}"
    );
    assert_eq!(error.message(), "bad thing");
    assert_eq!(llmock.requests().await.len(), 1);
    llmock.verdict().await.assert_clean();
}

#[tokio::test]
async fn a_wait_longer_than_max_retry_wait_fails_at_once() {
    let llmock = Llmock::start().await;
    let provider = llmock.provider("openai", |raw| raw.max_retry_wait_ms = Some(2_000));
    llmock
        .scenario(json!([{"type": "fail", "status": 429, "retry_after": 30}]))
        .await;
    let started = Instant::now();
    let error = provider
        .chat(&ask("rate limited for half a minute"))
        .await
        .expect_err("not worth waiting for");
    // Far below the 30 s it would have waited, with room for a busy machine.
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(error.kind(), ErrorKind::RateLimited, "{error}");
    assert_eq!(
        error.retry_after(),
        Some(Duration::from_secs(30)),
        "{error}"
    );
    assert_eq!(error.attempts(), 1, "{error}");
    assert!(error.message().contains("max_retry_wait"), "{error}");
    let verdict = llmock.verdict().await;
    verdict.assert_passed();
    assert_eq!(verdict.codes(), ["gave_up"], "{:#}", verdict.0);
}
