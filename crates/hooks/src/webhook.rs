//! Webhooks: the event JSON POSTed to a URL.
//!
//! * Each request has a time limit (default 10 s). Connect errors, time-outs,
//!   408, 429 and 5xx answers are retried (default 3 retries) with
//!   exponential backoff from 0.5 s to 8 s; other answers are final.
//! * With a secret, every request carries
//!   `X-Deputy-Signature-256: sha256=<hex HMAC-SHA256 of the body>` (the
//!   scheme GitHub uses for its webhooks), so the receiver can check it came
//!   from this host. The secret comes from an environment variable and never
//!   appears in logs, errors or `Debug` output; neither does the URL's query.
//! * Stop events, and start events of a non-blocking webhook, go through a
//!   bounded queue and are delivered off the task's path by a few workers:
//!   a task never waits for a webhook. A full queue drops the event with a
//!   warning and counts it ([`Webhook::dropped`], and
//!   `deputy_hook_failures_total` when metrics are attached).
//! * A start webhook with `blocking` is called in line and may deny with the
//!   same JSON a command hook prints (`{"decision":"deny","reason":...}`); a
//!   webhook that cannot be reached does not block the task.
//! * Every request also carries `X-Deputy-Event: SubagentStart|SubagentStop`
//!   and `X-Deputy-Delivery: <id>`, the same id on every retry of one event,
//!   so a receiver can drop a duplicate (a request that timed out may have
//!   been processed). Redirects are not followed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deputy_registry::{
    HookError, HookEventName, StartDecision, SubagentStartEvent, SubagentStartHook,
    SubagentStopEvent, SubagentStopHook, backoff_delay,
};
use hmac::{Hmac, KeyInit as _, Mac as _};
use regex::Regex;
use reqwest::StatusCode;
use sha2::Sha256;
use tokio::sync::{Notify, Semaphore, mpsc};

use crate::error::HookConfigError;
use crate::metrics::Metrics;
use crate::payload::{EventPayload, new_session_id};
use crate::price::PriceTable;
use crate::reply::parse_reply;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-deputy-signature-256";
/// The event-name header.
pub const EVENT_HEADER: &str = "x-deputy-event";
/// A delivery id, the same on every retry of one event, so a receiver can
/// drop duplicates (a retried request may have been processed already).
pub const DELIVERY_HEADER: &str = "x-deputy-delivery";

/// Default time limit of one request.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Default retries after the first attempt.
pub const DEFAULT_WEBHOOK_RETRIES: u32 = 3;
/// Default capacity of the delivery queue.
pub const DEFAULT_WEBHOOK_QUEUE: usize = 1024;
/// Default number of deliveries in flight at once.
pub const DEFAULT_WEBHOOK_CONCURRENCY: usize = 4;

/// The HMAC key; kept out of `Debug`.
#[derive(Clone)]
struct Signer(Arc<[u8]>);

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<redacted>)")
    }
}

impl Signer {
    fn sign(&self, body: &[u8]) -> String {
        // HMAC accepts keys of any length, so this never fails.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            return String::new();
        };
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }
}

/// The signature header's value for `body` under `secret`, for receivers
/// (and tests) that check it.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    Signer(secret.into()).sign(body)
}

/// Builds a [`Webhook`].
pub struct WebhookBuilder {
    url: String,
    name: Option<String>,
    timeout: Duration,
    retries: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    secret: Option<Signer>,
    secret_problem: Option<String>,
    blocking: bool,
    queue: usize,
    concurrency: usize,
    matcher: Option<String>,
    session_id: Option<String>,
    prices: Option<PriceTable>,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for WebhookBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookBuilder")
            .field("url", &redact_url_text(&self.url))
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("signed", &self.secret.is_some())
            .field("blocking", &self.blocking)
            .field("queue", &self.queue)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl WebhookBuilder {
    /// The name used in logs and failure counts (default `webhook:<host>`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The time limit of one request.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Retries after the first attempt.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The first backoff and the longest one.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    /// Signs every body with this secret.
    pub fn secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.secret = Some(Signer(secret.into().into()));
        self
    }

    /// Signs every body with the secret in environment variable `name`;
    /// [`build`](Self::build) fails if it is unset or empty.
    pub fn secret_env(mut self, name: &str) -> Self {
        match std::env::var(name) {
            Ok(value) if !value.is_empty() => self = self.secret(value.into_bytes()),
            _ => {
                self.secret_problem = Some(format!(
                    "secret_env: environment variable {name} is unset or empty; export the \
                     webhook secret in it or remove secret_env"
                ));
            }
        }
        self
    }

    /// Calls a start webhook in line, letting it deny (start events only).
    pub fn blocking(mut self, blocking: bool) -> Self {
        self.blocking = blocking;
        self
    }

    /// Capacity of the delivery queue.
    pub fn queue(mut self, capacity: usize) -> Self {
        self.queue = capacity;
        self
    }

    /// Deliveries in flight at once.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Only events of agents whose name matches this regex.
    pub fn matcher(mut self, pattern: impl Into<String>) -> Self {
        self.matcher = Some(pattern.into());
        self
    }

    /// The `session_id` put into every event.
    pub fn session_id(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }

    /// The prices that fill a stop event's `cost_usd`.
    pub fn prices(mut self, prices: PriceTable) -> Self {
        self.prices = Some(prices);
        self
    }

    /// Counts failed and dropped deliveries in these metrics.
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Checks the settings and starts the delivery workers.
    ///
    /// # Errors
    /// The URL is not http(s), the matcher is not a regex, the secret
    /// variable is missing, or a count is zero; every problem is listed.
    ///
    /// # Panics
    /// Outside a Tokio runtime (the workers are spawned here).
    pub fn build(self) -> Result<Webhook, HookConfigError> {
        let mut problems = Vec::new();
        let url = match reqwest::Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Some(url),
            Ok(url) => {
                problems.push(format!(
                    "url: scheme {:?} is not supported; use http:// or https://",
                    url.scheme()
                ));
                None
            }
            Err(error) => {
                problems.push(format!(
                    "url: {:?} is not a URL ({error}); write it like https://example.com/hook",
                    redact_url_text(&self.url)
                ));
                None
            }
        };
        let matcher = match self.matcher.as_deref().map(Regex::new).transpose() {
            Ok(matcher) => matcher,
            Err(error) => {
                problems.push(format!("matcher: invalid regex: {error}"));
                None
            }
        };
        problems.extend(self.secret_problem);
        if self.queue == 0 {
            problems.push("queue: must be at least 1, got 0".to_owned());
        }
        if self.concurrency == 0 {
            problems.push("concurrency: must be at least 1, got 0".to_owned());
        }
        if self.timeout.is_zero() {
            problems.push("timeout_ms: must be at least 1, got 0".to_owned());
        }
        let client = reqwest::Client::builder()
            .timeout(self.timeout)
            // A redirect would turn the POST into a bodiless GET that looks
            // delivered; a moved receiver is a configuration error instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| problems.push(format!("cannot build the HTTP client: {error}")))
            .ok();
        let (Some(url), Some(client), true) = (url, client, problems.is_empty()) else {
            return Err(HookConfigError::new(problems));
        };
        let shown_url = display_url(&url);
        let inner = Arc::new(Inner {
            name: self
                .name
                .unwrap_or_else(|| format!("webhook:{}", url.host_str().unwrap_or("?"))),
            url,
            shown_url,
            client,
            retries: self.retries,
            timeout: self.timeout,
            initial_backoff: self.initial_backoff,
            max_backoff: self.max_backoff,
            signer: self.secret,
            metrics: self.metrics,
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            idle: Notify::new(),
        });
        let (queue, jobs) = mpsc::channel(self.queue);
        tokio::spawn(deliver_queued(Arc::clone(&inner), jobs, self.concurrency));
        Ok(Webhook {
            inner,
            queue,
            blocking: self.blocking,
            matcher,
            session_id: self.session_id.unwrap_or_else(new_session_id),
            prices: self.prices.unwrap_or_else(PriceTable::builtin),
        })
    }
}

/// POSTs events to a URL (see the module docs).
///
/// ```no_run
/// # async fn example() {
/// use std::sync::Arc;
/// use deputy_hooks::Webhook;
/// use deputy_registry::HookStack;
///
/// let webhook = Arc::new(
///     Webhook::builder("https://billing.example.com/deputy")
///         .secret_env("DEPUTY_WEBHOOK_SECRET")
///         .build()
///         .unwrap(),
/// );
/// let hooks = HookStack::new().with_stop(webhook.clone());
/// // ... at shutdown, give queued events a moment to go out:
/// webhook.flush(std::time::Duration::from_secs(5)).await;
/// # drop(hooks);
/// # }
/// ```
#[derive(Debug)]
pub struct Webhook {
    inner: Arc<Inner>,
    queue: mpsc::Sender<Job>,
    blocking: bool,
    matcher: Option<Regex>,
    session_id: String,
    prices: PriceTable,
}

struct Inner {
    name: String,
    url: reqwest::Url,
    shown_url: String,
    client: reqwest::Client,
    retries: u32,
    timeout: Duration,
    initial_backoff: Duration,
    max_backoff: Duration,
    signer: Option<Signer>,
    metrics: Option<Arc<Metrics>>,
    dropped: AtomicU64,
    failed: AtomicU64,
    delivered: AtomicU64,
    /// Jobs queued or in flight.
    pending: AtomicUsize,
    idle: Notify,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The full URL may carry a token in its query: show it without.
        f.debug_struct("Webhook")
            .field("name", &self.name)
            .field("url", &self.shown_url)
            .field("retries", &self.retries)
            .field("timeout", &self.timeout)
            .field("signed", &self.signer.is_some())
            .field("pending", &self.pending.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// One queued delivery.
#[derive(Debug)]
struct Job {
    event: HookEventName,
    delivery: String,
    body: Vec<u8>,
}

impl Webhook {
    /// A builder for a webhook to `url` with the defaults above.
    pub fn builder(url: impl Into<String>) -> WebhookBuilder {
        WebhookBuilder {
            url: url.into(),
            name: None,
            timeout: DEFAULT_WEBHOOK_TIMEOUT,
            retries: DEFAULT_WEBHOOK_RETRIES,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            secret: None,
            secret_problem: None,
            blocking: false,
            queue: DEFAULT_WEBHOOK_QUEUE,
            concurrency: DEFAULT_WEBHOOK_CONCURRENCY,
            matcher: None,
            session_id: None,
            prices: None,
            metrics: None,
        }
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Queued events that were not delivered after every retry.
    pub fn failed(&self) -> u64 {
        self.inner.failed.load(Ordering::Relaxed)
    }

    /// Queued events delivered.
    pub fn delivered(&self) -> u64 {
        self.inner.delivered.load(Ordering::Relaxed)
    }

    /// Waits until every queued event has been delivered or given up on, or
    /// `within` has passed; returns how many were still pending.
    ///
    /// Cancel safety: cancel safe; it only watches.
    pub async fn flush(&self, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let idle = self.inner.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            let pending = self.inner.pending.load(Ordering::Acquire);
            if pending == 0 {
                return 0;
            }
            tokio::select! {
                () = idle => {}
                () = tokio::time::sleep_until(deadline) => {
                    return self.inner.pending.load(Ordering::Acquire);
                }
            }
        }
    }

    fn matches(&self, agent: &str) -> bool {
        self.matcher
            .as_ref()
            .is_none_or(|matcher| matcher.is_match(agent))
    }

    /// Queues an event; drops it, counted, when the queue is full.
    fn enqueue(&self, event: HookEventName, body: Vec<u8>) {
        self.inner.pending.fetch_add(1, Ordering::AcqRel);
        let job = Job {
            event,
            delivery: new_session_id(),
            body,
        };
        let Err(error) = self.queue.try_send(job) else {
            return;
        };
        self.inner.finish_job();
        let dropped = self.inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let why = match error {
            mpsc::error::TrySendError::Full(_) => {
                "webhook queue is full: event dropped (raise `queue` or speed up the receiver)"
            }
            mpsc::error::TrySendError::Closed(_) => {
                "webhook delivery has stopped (its runtime ended): event dropped"
            }
        };
        tracing::warn!(
            hook = %self.inner.name,
            url = %self.inner.shown_url,
            event = event.as_str(),
            dropped,
            "{why}"
        );
        if let Some(metrics) = &self.inner.metrics {
            metrics.record_hook_failure(&self.inner.name, event);
        }
    }
}

impl Inner {
    /// Posts `body`, retrying as the module docs say; returns the answer's
    /// body on success.
    async fn post(
        &self,
        event: HookEventName,
        delivery: &str,
        body: &[u8],
    ) -> Result<String, String> {
        let attempts = self.retries.saturating_add(1);
        let mut last_problem = String::new();
        for attempt in 1..=attempts {
            let mut request = self
                .client
                .post(self.url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(EVENT_HEADER, event.as_str())
                .header(DELIVERY_HEADER, delivery)
                .body(body.to_vec());
            if let Some(signer) = &self.signer {
                request = request.header(SIGNATURE_HEADER, signer.sign(body));
            }
            let retryable = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    return Ok(response.text().await.unwrap_or_default());
                }
                Ok(response) => {
                    let status = response.status();
                    // Only these say where the receiver went; 300 and 304
                    // are not moves.
                    let moved = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
                    last_problem = if moved {
                        self.moved(status, response.headers())
                    } else {
                        format!("{} answered {status}", self.shown_url)
                    };
                    status.is_server_error()
                        || status == StatusCode::TOO_MANY_REQUESTS
                        || status == StatusCode::REQUEST_TIMEOUT
                }
                Err(error) => {
                    // The URL may carry a token in its query: keep it out.
                    let error = error.without_url();
                    last_problem = format!("{}: {error}", self.shown_url);
                    error.is_connect() || error.is_timeout() || error.is_request()
                }
            };
            if !retryable {
                return Err(last_problem);
            }
            if attempt < attempts {
                tokio::time::sleep(backoff_delay(
                    self.initial_backoff,
                    self.max_backoff,
                    attempt,
                ))
                .await;
            }
        }
        Err(format!("gave up after {attempts} attempts: {last_problem}"))
    }

    /// Why a redirect answer failed, and where the receiver moved to (its
    /// `Location`, redacted like the configured URL: it may carry a token).
    fn moved(&self, status: StatusCode, headers: &reqwest::header::HeaderMap) -> String {
        let location = headers
            .get(reqwest::header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .map(|location| match self.url.join(location) {
                Ok(moved) => display_url(&moved),
                Err(_) => redact_url_text(location),
            });
        match location {
            Some(moved) => format!(
                "{} answered {status}, moved to {moved}; redirects are not followed: \
                 set url to the address it moved to",
                self.shown_url
            ),
            None => format!(
                "{} answered {status} without a location; redirects are not followed: \
                 set url to the receiver's current address",
                self.shown_url
            ),
        }
    }

    fn finish_job(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// Delivers queued jobs, `concurrency` at a time, until the webhook is
/// dropped and its queue drained.
async fn deliver_queued(inner: Arc<Inner>, mut jobs: mpsc::Receiver<Job>, concurrency: usize) {
    let slots = Arc::new(Semaphore::new(concurrency));
    while let Some(job) = jobs.recv().await {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let inner = Arc::clone(&inner);
        tokio::spawn(async move {
            match inner.post(job.event, &job.delivery, &job.body).await {
                Ok(_) => {
                    inner.delivered.fetch_add(1, Ordering::Relaxed);
                }
                Err(problem) => {
                    inner.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        hook = %inner.name,
                        event = job.event.as_str(),
                        %problem,
                        "webhook delivery failed"
                    );
                    if let Some(metrics) = &inner.metrics {
                        metrics.record_hook_failure(&inner.name, job.event);
                    }
                }
            }
            drop(slot);
            inner.finish_job();
        });
    }
}

/// `scheme://host[:port]/first-segment/…`: enough to tell receivers apart,
/// without user info, query or the rest of the path, where services such
/// as Slack put their tokens.
pub(crate) fn display_url(url: &reqwest::Url) -> String {
    let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    let mut segments = url
        .path_segments()
        .into_iter()
        .flatten()
        .filter(|segment| !segment.is_empty());
    if let Some(first) = segments.next() {
        shown.push('/');
        shown.push_str(first);
        if segments.next().is_some() {
            shown.push_str("/…");
        }
    }
    shown
}

/// A URL given as text, shown like [`display_url`]; text that is not a
/// URL keeps only its scheme and host, without user info.
pub(crate) fn redact_url_text(text: &str) -> String {
    if let Ok(url) = reqwest::Url::parse(text) {
        return display_url(&url);
    }
    let text = text.split(['?', '#']).next().unwrap_or("");
    let (scheme, rest) = text.split_once("://").unwrap_or(("", text));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let prefix = if scheme.is_empty() {
        String::new()
    } else {
        format!("{scheme}://")
    };
    let tail = if path.is_empty() { "" } else { "/…" };
    format!("{prefix}{host}{tail}")
}

#[async_trait]
impl SubagentStartHook for Webhook {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn timeout(&self) -> Duration {
        // Every attempt, every backoff, and a margin.
        let attempts = self.inner.retries.saturating_add(1);
        self.inner
            .timeout
            .saturating_mul(attempts)
            .saturating_add(self.inner.max_backoff.saturating_mul(self.inner.retries))
            .saturating_add(Duration::from_secs(5))
    }

    async fn on_subagent_start(
        &self,
        event: &SubagentStartEvent,
    ) -> Result<StartDecision, HookError> {
        if !self.matches(&event.task.agent) {
            return Ok(StartDecision::Allow);
        }
        let body = EventPayload::start(event, &self.session_id).to_json();
        if !self.blocking {
            self.enqueue(HookEventName::SubagentStart, body);
            return Ok(StartDecision::Allow);
        }
        let answer = self
            .inner
            .post(HookEventName::SubagentStart, &new_session_id(), &body)
            .await
            .map_err(HookError::msg)?;
        parse_reply(&answer, &self.inner.name)
            .map_err(|error| HookError::msg(format!("{}: {error}", self.inner.shown_url)))
    }
}

#[async_trait]
impl SubagentStopHook for Webhook {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn on_subagent_stop(&self, event: &SubagentStopEvent) -> Result<(), HookError> {
        if self.matches(&event.task.agent) {
            let body = EventPayload::stop(event, &self.session_id, &self.prices).to_json();
            self.enqueue(HookEventName::SubagentStop, body);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_secrets() {
        let url =
            reqwest::Url::parse("https://user:pw@hooks.example.com:8443/in?token=abc").unwrap();
        assert_eq!(display_url(&url), "https://hooks.example.com:8443/in");
        let slack =
            reqwest::Url::parse("https://hooks.slack.com/services/T0/B0/XXXXSECRET").unwrap();
        assert_eq!(display_url(&slack), "https://hooks.slack.com/services/…");
        assert_eq!(redact_url_text("ht!tp://me:pw@x/y?token=1"), "ht!tp://x/…");
        assert_eq!(
            redact_url_text("https://me:pw@host/a/b?t=1"),
            "https://host/a/…"
        );
    }

    #[test]
    fn signatures_are_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        let signed = signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            signed,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            format!("{:?}", Signer(b"top secret".as_slice().into())),
            "Signer(<redacted>)"
        );
    }
}
