//! Webhooks against a local server: retries, giving up, signatures, the
//! queue, and blocking start webhooks.

use std::sync::Arc;
use std::time::Duration;

use deputy_hooks::{
    DELIVERY_HEADER, EVENT_HEADER, Metrics, SIGNATURE_HEADER, SubagentStartHook as _,
    SubagentStopHook as _, Webhook, WebhookBuilder, signature,
};
use deputy_registry::StartDecision;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{hook_task, start_event, stop_event, usage};

fn fast(server: &MockServer) -> WebhookBuilder {
    Webhook::builder(format!("{}/events?token=s3cret", server.uri()))
        .backoff(Duration::from_millis(5), Duration::from_millis(20))
        .timeout(Duration::from_secs(5))
}

async fn stop(webhook: &Webhook) {
    webhook
        .on_subagent_stop(&stop_event(
            hook_task("researcher", "openai", "gpt-4o"),
            usage(10, 5),
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_500_is_retried_until_it_goes_through() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/events"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .with_priority(2)
        .mount(&server)
        .await;
    let webhook = fast(&server).retries(3).build().unwrap();
    stop(&webhook).await;
    assert_eq!(webhook.flush(Duration::from_secs(10)).await, 0);
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 3);
    assert_eq!((webhook.delivered(), webhook.failed()), (1, 0));
    // Every retry carries the same delivery id, so the receiver can dedupe.
    let ids: Vec<_> = requests
        .iter()
        .map(|request| request.headers.get(DELIVERY_HEADER).unwrap().clone())
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    // A second event gets a new id.
    stop(&webhook).await;
    webhook.flush(Duration::from_secs(10)).await;
    let requests = server.received_requests().await.unwrap();
    assert_ne!(requests[3].headers.get(DELIVERY_HEADER).unwrap(), &ids[0]);
}

#[tokio::test]
async fn it_gives_up_after_its_retries_and_counts_the_failure() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let metrics = Arc::new(Metrics::new());
    let webhook = fast(&server)
        .retries(2)
        .name("billing-hook")
        .metrics(metrics.clone())
        .build()
        .unwrap();
    stop(&webhook).await;
    webhook.flush(Duration::from_secs(10)).await;
    assert_eq!(server.received_requests().await.unwrap().len(), 3);
    assert_eq!((webhook.delivered(), webhook.failed()), (0, 1));
    let text = metrics.render();
    assert!(
        text.contains(r#"deputy_hook_failures_total{hook="billing-hook",event="SubagentStop"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_client_error_is_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    let webhook = fast(&server).retries(3).build().unwrap();
    stop(&webhook).await;
    webhook.flush(Duration::from_secs(10)).await;
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
    assert_eq!(webhook.failed(), 1);
}

#[tokio::test]
async fn a_refused_connection_is_retried_then_given_up() {
    // Bind and drop a listener to get a port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let webhook = Webhook::builder(format!("http://127.0.0.1:{port}/events"))
        .backoff(Duration::from_millis(5), Duration::from_millis(20))
        .retries(2)
        .build()
        .unwrap();
    stop(&webhook).await;
    assert_eq!(webhook.flush(Duration::from_secs(10)).await, 0);
    assert_eq!(webhook.failed(), 1);
}

#[tokio::test]
async fn the_body_is_signed_with_the_secret() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    let webhook = fast(&server).secret("whsec-test").build().unwrap();
    stop(&webhook).await;
    webhook.flush(Duration::from_secs(10)).await;
    let requests = server.received_requests().await.unwrap();
    let request = &requests[0];
    let sent = request
        .headers
        .get(SIGNATURE_HEADER)
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(sent, signature(b"whsec-test", &request.body));
    assert_ne!(sent, signature(b"another secret", &request.body));
    assert_eq!(request.headers.get(EVENT_HEADER).unwrap(), "SubagentStop");
    let event: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(event["hook_event_name"], "SubagentStop");
    assert_eq!(event["agent_type"], "researcher");
    assert_eq!(request.url.query(), Some("token=s3cret"));
}

#[tokio::test]
async fn a_stop_hook_never_waits_for_a_slow_receiver() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
        .mount(&server)
        .await;
    let webhook = fast(&server).build().unwrap();
    stop(&webhook).await;
    // The hook has returned while the delivery is still in flight.
    assert_eq!(webhook.delivered(), 0);
    assert_eq!(webhook.flush(Duration::ZERO).await, 1);
    assert_eq!(webhook.flush(Duration::from_secs(20)).await, 0);
    assert_eq!(webhook.delivered(), 1);
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_instead_of_blocking() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(2)))
        .mount(&server)
        .await;
    let metrics = Arc::new(Metrics::new());
    let webhook = fast(&server)
        .queue(1)
        .concurrency(1)
        .name("slow")
        .metrics(metrics.clone())
        .build()
        .unwrap();
    for _ in 0..6 {
        stop(&webhook).await;
    }
    // At most one in flight, one taken by the worker and waiting for a
    // delivery slot, and one in the queue: the rest were dropped at once.
    assert!(webhook.dropped() >= 3, "dropped {}", webhook.dropped());
    let text = metrics.render();
    assert!(
        text.contains(r#"deputy_hook_failures_total{hook="slow",event="SubagentStop"}"#),
        "{text}"
    );
    webhook.flush(Duration::from_secs(20)).await;
    assert_eq!(webhook.delivered() + webhook.dropped(), 6);
}

#[tokio::test]
async fn a_blocking_start_webhook_may_deny() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"decision": "deny", "reason": "no seats left"})),
        )
        .mount(&server)
        .await;
    let webhook = fast(&server).blocking(true).build().unwrap();
    assert_eq!(
        webhook
            .on_subagent_start(&start_event("researcher"))
            .await
            .unwrap(),
        StartDecision::Deny {
            reason: "no seats left".into()
        }
    );
    let request = &server.received_requests().await.unwrap()[0];
    assert_eq!(request.headers.get(EVENT_HEADER).unwrap(), "SubagentStart");
}

#[tokio::test]
async fn an_unreachable_blocking_webhook_fails_open_without_leaking_the_url_query() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(502))
        .mount(&server)
        .await;
    let webhook = fast(&server).blocking(true).retries(1).build().unwrap();
    let error = webhook
        .on_subagent_start(&start_event("researcher"))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("gave up after 2 attempts"), "{error}");
    assert!(error.contains("502"), "{error}");
    assert!(!error.contains("s3cret"), "{error}");
    let debug = format!("{webhook:?}");
    assert!(!debug.contains("s3cret"), "{debug}");
}

#[tokio::test]
async fn a_non_blocking_start_webhook_is_queued_and_allows() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string("{\"decision\":\"deny\"}"))
        .mount(&server)
        .await;
    let webhook = fast(&server).build().unwrap();
    assert_eq!(
        webhook
            .on_subagent_start(&start_event("researcher"))
            .await
            .unwrap(),
        StartDecision::Allow
    );
    webhook.flush(Duration::from_secs(10)).await;
    assert_eq!(webhook.delivered(), 1);
}

#[test]
fn bad_settings_are_all_listed() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let error = Webhook::builder("ftp://example.com/x")
        .queue(0)
        .matcher("(")
        .secret_env("DEPUTY_TEST_SURELY_UNSET_SECRET")
        .build()
        .unwrap_err();
    let problems = error.problems().join("\n");
    assert!(
        problems.contains("scheme \"ftp\" is not supported"),
        "{problems}"
    );
    assert!(problems.contains("queue: must be at least 1"), "{problems}");
    assert!(problems.contains("matcher: invalid regex"), "{problems}");
    assert!(
        problems.contains("DEPUTY_TEST_SURELY_UNSET_SECRET is unset"),
        "{problems}"
    );
}

#[tokio::test]
async fn a_redirect_is_not_followed_or_counted_as_delivered() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", "/elsewhere"))
        .mount(&server)
        .await;
    let webhook = fast(&server).build().unwrap();
    stop(&webhook).await;
    webhook.flush(Duration::from_secs(10)).await;
    assert_eq!((webhook.delivered(), webhook.failed()), (0, 1));
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_redirect_says_where_the_receiver_moved_without_its_secrets() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(301).insert_header(
            "location",
            "https://me:pw@moved.invalid/in/T0/XXXXSECRET?token=leak",
        ))
        .mount(&server)
        .await;
    let webhook = fast(&server).blocking(true).build().unwrap();
    let error = webhook
        .on_subagent_start(&start_event("researcher"))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("301"), "{error}");
    assert!(error.contains("redirects are not followed"), "{error}");
    assert!(
        error.contains("set url to the address it moved to"),
        "{error}"
    );
    assert!(error.contains("https://moved.invalid/in/…"), "{error}");
    for secret in ["s3cret", "leak", "XXXXSECRET", "pw"] {
        assert!(!error.contains(secret), "{secret} in {error}");
    }
    // Not retried: asking again would get the same answer.
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_3xx_that_is_not_a_move_is_reported_as_the_answer_it_is() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(304))
        .mount(&server)
        .await;
    let webhook = fast(&server).blocking(true).build().unwrap();
    let error = webhook
        .on_subagent_start(&start_event("researcher"))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("answered 304"), "{error}");
    assert!(!error.contains("redirect"), "{error}");
}
