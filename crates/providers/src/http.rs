//! What every HTTP backend shares: the client, timeouts, the request cap,
//! retries, and the stream driver. A backend only says how to write a
//! request and read an answer ([`WireFormat`]).

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::{ErrorKind, ProviderError};
use crate::framing::{Framer, Framing};
use crate::message::{ChatRequest, ChatResponse};
use crate::provider::{Provider, ProviderKind};
use crate::retry::{self, RetryDecision, RetryPolicy};
use crate::secret::ApiKey;
use crate::stream::{ChatStream, StreamDecoder, StreamEvent, excerpt};

/// Default time to open a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default longest silence between two chunks of a stream.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default longest time for one whole request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// Timeouts for one provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Opening a connection.
    pub connect: Duration,
    /// Silence between two chunks of a stream.
    pub idle: Duration,
    /// One whole request, answer included (a stream: to its last chunk).
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: DEFAULT_CONNECT_TIMEOUT,
            idle: DEFAULT_IDLE_TIMEOUT,
            request: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// A request ready to send.
#[derive(Debug)]
pub(crate) struct PreparedRequest {
    pub(crate) url: String,
    pub(crate) body: Value,
}

/// How a backend reads a failed response's body.
#[derive(Debug)]
pub(crate) struct Classified {
    pub(crate) kind: ErrorKind,
    pub(crate) message: String,
    /// A wait given in the body (Gemini's `RetryInfo`).
    pub(crate) retry_after: Option<Duration>,
}

impl Classified {
    /// A failure of `kind`; a bad request whose message says the prompt is
    /// too long becomes `context_length`.
    pub(crate) fn new(kind: ErrorKind, message: String) -> Self {
        let kind = if kind == ErrorKind::BadRequest && mentions_context_length(&message) {
            ErrorKind::ContextLength
        } else {
            kind
        };
        Self {
            kind,
            message,
            retry_after: None,
        }
    }
}

/// A configured extra header, its value marked sensitive (such headers
/// often carry credentials).
///
/// # Errors
/// A sentence naming the header when the name or value cannot be sent.
pub(crate) fn parse_header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        format!("headers: `{name}` is not a valid HTTP header name; use letters, digits and dashes")
    })?;
    let mut value = HeaderValue::from_str(value).map_err(|_| {
        format!("headers: the value of `{name}` is not a valid header value; remove control characters and non-ASCII text")
    })?;
    value.set_sensitive(true);
    Ok((header, value))
}

/// The body as the message of an error, or a note that there was none.
pub(crate) fn body_or_status(status: StatusCode, body: &str) -> String {
    if body.trim().is_empty() {
        format!("http {} with an empty body", status.as_u16())
    } else {
        excerpt(body.trim())
    }
}

/// Headers that carry `key`, if there is one, in header `name` after
/// `prefix` (marked sensitive).
pub(crate) fn key_headers(
    key: Option<&ApiKey>,
    name: HeaderName,
    prefix: &str,
) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    if let Some(key) = key {
        let mut value = HeaderValue::from_str(&format!("{prefix}{}", key.expose()))
            .map_err(|_| {
                "the API key (from api_key, or the variable api_key_env names) holds characters an HTTP header cannot carry, such as a line break or another control character; set it to the key alone".to_owned()
            })?;
        // Sensitive values are never printed, by Debug or otherwise.
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    Ok(headers)
}

/// Headers that carry `key`, if there is one, as `Authorization: Bearer`
/// (marked sensitive).
pub(crate) fn bearer_headers(key: Option<&ApiKey>) -> Result<HeaderMap, String> {
    key_headers(key, reqwest::header::AUTHORIZATION, "Bearer ")
}

/// The wire format of one backend.
pub(crate) trait WireFormat: fmt::Debug + Send + Sync + 'static {
    fn kind(&self) -> ProviderKind;

    /// The headers every call carries, the key's included. Built once,
    /// when the provider is made, so a key or setting a header cannot carry
    /// is refused then rather than at the first call.
    fn fixed_headers(&self, key: Option<&ApiKey>) -> Result<HeaderMap, String>;

    /// URL and body for one call.
    fn request(
        &self,
        request: &ChatRequest,
        model: &str,
        stream: bool,
    ) -> Result<PreparedRequest, String>;

    /// Reads a non-streamed answer.
    fn parse(&self, provider: &str, body: Value) -> Result<ChatResponse, ProviderError>;

    /// Reads a failed response.
    fn classify(&self, status: StatusCode, body: &str) -> Classified;

    fn framing(&self) -> Framing;

    fn decoder(&self, provider: &str, model: &str) -> Box<dyn StreamDecoder>;
}

/// The HTTP side of one provider: client, timeouts, retries, request cap.
#[derive(Debug)]
pub(crate) struct Transport {
    pub(crate) name: Arc<str>,
    client: reqwest::Client,
    /// Sent as a header of `headers`, made once with the provider; kept to
    /// redact from error bodies that echo it.
    key: Option<ApiKey>,
    /// Sent with every call: the configured extra headers, then the wire
    /// format's own (the key's included), which win over extra ones of the
    /// same name.
    headers: HeaderMap,
    retry: RetryPolicy,
    timeouts: Timeouts,
    /// `max_concurrent_requests`: calls queue here instead of storming the
    /// backend.
    limiter: Option<Arc<Semaphore>>,
}

/// Settings for a [`Transport`].
#[derive(Debug, Clone, Default)]
pub(crate) struct TransportSettings {
    pub(crate) key: Option<ApiKey>,
    pub(crate) extra_headers: Vec<(String, String)>,
    pub(crate) retry: RetryPolicy,
    pub(crate) timeouts: Timeouts,
    pub(crate) max_concurrent_requests: Option<usize>,
}

impl Transport {
    pub(crate) fn new(name: &str, settings: TransportSettings) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(settings.timeouts.connect)
            .user_agent(concat!("deputy/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| format!("cannot build the HTTP client: {error}"))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &settings.extra_headers {
            let (name, value) = parse_header(name, value)?;
            headers.insert(name, value);
        }
        Ok(Self {
            name: Arc::from(name),
            client,
            key: settings.key,
            headers,
            retry: settings.retry,
            timeouts: settings.timeouts,
            limiter: settings
                .max_concurrent_requests
                .map(|max| Arc::new(Semaphore::new(max))),
        })
    }

    fn error(&self, kind: ErrorKind, message: impl Into<String>) -> ProviderError {
        ProviderError::new(kind, self.name.clone(), message)
    }

    /// Waits for a request slot, if requests are capped.
    async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        // The semaphore is never closed, so acquiring cannot fail.
        self.limiter.clone()?.acquire_owned().await.ok()
    }

    /// One attempt: sends, and returns the response if it succeeded. On
    /// failure, the error and the server's `x-should-retry`.
    async fn send_once(
        &self,
        wire: &dyn WireFormat,
        request: &PreparedRequest,
        deadline: Instant,
    ) -> Result<reqwest::Response, (ProviderError, Option<bool>)> {
        let mut builder = self
            .client
            .post(&request.url)
            .headers(self.headers.clone())
            .json(&request.body);
        let remaining = deadline.saturating_duration_since(Instant::now());
        builder = builder.timeout(remaining);
        tracing::debug!(provider = %self.name, url = %request.url, "sending a provider request");
        let response = match builder.send().await {
            Ok(response) => response,
            Err(error) => return Err((self.transport_error(&error), None)),
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let headers = response.headers().clone();
        let body = tokio::time::timeout_at(deadline, response.text())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        Err((
            self.status_error(wire, status, &headers, &body),
            retry::should_retry(&headers),
        ))
    }

    fn status_error(
        &self,
        wire: &dyn WireFormat,
        status: StatusCode,
        headers: &HeaderMap,
        body: &str,
    ) -> ProviderError {
        let classified = wire.classify(status, body);
        let message = match &self.key {
            Some(key) => key.redact(&classified.message),
            None => classified.message,
        };
        self.error(classified.kind, message)
            .with_status(status.as_u16())
            .with_retry_after(retry::retry_after(headers).or(classified.retry_after))
    }

    fn transport_error(&self, error: &reqwest::Error) -> ProviderError {
        let kind = if error.is_timeout() {
            ErrorKind::Timeout
        } else {
            ErrorKind::Network
        };
        let what = if error.is_connect() {
            "cannot connect"
        } else if error.is_timeout() {
            "no answer in time"
        } else {
            "the request failed"
        };
        self.error(kind, format!("{what}: {}", error_chain(error)))
    }

    /// Sends with retries until a successful response arrives.
    async fn open(
        &self,
        wire: &dyn WireFormat,
        request: &PreparedRequest,
        attempt: &mut u32,
        deadline: Instant,
    ) -> Result<reqwest::Response, ProviderError> {
        loop {
            *attempt += 1;
            let (error, should_retry) = match self.send_once(wire, request, deadline).await {
                Ok(response) => return Ok(response),
                Err(failure) => failure,
            };
            self.pause_or_give_up(*attempt, error, should_retry, deadline)
                .await?;
        }
    }

    /// After a failed attempt: sleeps before the next one, or returns the
    /// error to give up with.
    async fn pause_or_give_up(
        &self,
        attempt: u32,
        error: ProviderError,
        should_retry: Option<bool>,
        deadline: Instant,
    ) -> Result<(), ProviderError> {
        match self.retry.decide(attempt, error, should_retry) {
            RetryDecision::GiveUp(error) => Err(error),
            RetryDecision::RetryAfter(wait) => {
                if Instant::now() + wait >= deadline {
                    return Err(self
                        .error(
                            ErrorKind::Timeout,
                            format!(
                                "the request timeout ({} s) would pass before the next retry",
                                self.timeouts.request.as_secs_f64()
                            ),
                        )
                        .with_attempts(attempt));
                }
                tracing::warn!(
                    provider = %self.name,
                    attempt,
                    wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    "provider call failed; retrying"
                );
                tokio::time::sleep(wait).await;
                Ok(())
            }
        }
    }

    /// A non-streamed call, with retries.
    pub(crate) async fn call(
        &self,
        wire: &dyn WireFormat,
        request: &PreparedRequest,
        model: &str,
    ) -> Result<ChatResponse, ProviderError> {
        let _permit = self.permit().await;
        let deadline = Instant::now() + self.timeouts.request;
        let mut attempt = 0;
        loop {
            let response = self.open(wire, request, &mut attempt, deadline).await?;
            let body = match tokio::time::timeout_at(deadline, response.bytes()).await {
                Ok(Ok(body)) => body,
                Ok(Err(error)) => {
                    let error = self.error(
                        ErrorKind::Network,
                        format!("the answer broke off: {}", error_chain(&error)),
                    );
                    self.pause_or_give_up(attempt, error, None, deadline)
                        .await?;
                    continue;
                }
                Err(_elapsed) => {
                    let error = self.error(
                        ErrorKind::Timeout,
                        format!(
                            "no complete answer within the request timeout ({} s)",
                            self.timeouts.request.as_secs_f64()
                        ),
                    );
                    return Err(error.with_attempts(attempt));
                }
            };
            let json: Value = serde_json::from_slice(&body).map_err(|error| {
                self.error(
                    ErrorKind::MalformedResponse,
                    format!(
                        "the answer is not valid JSON ({error}): {}",
                        excerpt(&String::from_utf8_lossy(&body))
                    ),
                )
                .with_attempts(attempt)
            })?;
            let mut answer = wire
                .parse(&self.name, json)
                .map_err(|error| error.with_attempts(attempt))?;
            answer.usage.requests = u64::from(attempt);
            if answer.model.is_empty() {
                // Not every server names the model that answered.
                model.clone_into(&mut answer.model);
            }
            return Ok(answer);
        }
    }

    /// A streamed call: retries until the response starts, then streams.
    pub(crate) async fn stream(
        self: &Arc<Self>,
        wire: Arc<dyn WireFormat>,
        request: PreparedRequest,
        model: &str,
    ) -> Result<ChatStream, ProviderError> {
        let permit = self.permit().await;
        let deadline = Instant::now() + self.timeouts.request;
        let mut attempt = 0;
        let response = self.open(&*wire, &request, &mut attempt, deadline).await?;
        let decoder = wire.decoder(&self.name, model);
        let framer = Framer::new(wire.framing());
        let driver = StreamDriver {
            transport: self.clone(),
            wire,
            request,
            model: model.to_owned(),
            body: Some(Box::pin(response.bytes_stream())),
            framer,
            decoder,
            pending: VecDeque::new(),
            passed_on: false,
            attempt,
            deadline,
            done: false,
            _permit: permit,
        };
        Ok(ChatStream::new(futures::stream::unfold(
            driver,
            |mut driver| async move { driver.next().await.map(|item| (item, driver)) },
        )))
    }
}

type BodyStream = std::pin::Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Reads a streamed body, decodes it, and retries a failed stream as long
/// as nothing of it has been passed on.
struct StreamDriver {
    transport: Arc<Transport>,
    wire: Arc<dyn WireFormat>,
    request: PreparedRequest,
    model: String,
    body: Option<BodyStream>,
    framer: Framer,
    decoder: Box<dyn StreamDecoder>,
    /// Decoded events not yet passed on.
    pending: VecDeque<StreamEvent>,
    /// Whether any event has been passed on: from then on, no retry.
    passed_on: bool,
    attempt: u32,
    deadline: Instant,
    done: bool,
    _permit: Option<OwnedSemaphorePermit>,
}

impl StreamDriver {
    async fn next(&mut self) -> Option<Result<StreamEvent, ProviderError>> {
        loop {
            if let Some(mut event) = self.pending.pop_front() {
                self.passed_on = true;
                if let StreamEvent::Finished { usage, .. } = &mut event {
                    usage.requests = u64::from(self.attempt);
                }
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            let failure = match self.body.as_mut() {
                None => match self
                    .transport
                    .open(&*self.wire, &self.request, &mut self.attempt, self.deadline)
                    .await
                {
                    Ok(response) => {
                        self.body = Some(Box::pin(response.bytes_stream()));
                        self.framer = Framer::new(self.wire.framing());
                        self.decoder = self.wire.decoder(&self.transport.name, &self.model);
                        continue;
                    }
                    Err(error) => {
                        self.done = true;
                        return Some(Err(error));
                    }
                },
                Some(body) => {
                    let idle_deadline =
                        (Instant::now() + self.transport.timeouts.idle).min(self.deadline);
                    match tokio::time::timeout_at(idle_deadline, body.next()).await {
                        Ok(Some(Ok(chunk))) => self.decode(&chunk),
                        Ok(None) => self.end(),
                        Ok(Some(Err(error))) => Err(self.transport.error(
                            ErrorKind::Network,
                            format!("the stream broke off: {}", error_chain(&error)),
                        )),
                        Err(_elapsed) if idle_deadline >= self.deadline => {
                            Err(self.transport.error(
                                ErrorKind::Timeout,
                                format!(
                                    "the stream ran past the request timeout ({} s)",
                                    self.transport.timeouts.request.as_secs_f64()
                                ),
                            ))
                        }
                        Err(_elapsed) => Err(self.transport.error(
                            ErrorKind::Timeout,
                            format!(
                                "the stream sent nothing for {} s (the idle timeout)",
                                self.transport.timeouts.idle.as_secs_f64()
                            ),
                        )),
                    }
                }
            };
            let Err(error) = failure else {
                continue;
            };
            if self.passed_on {
                self.done = true;
                return Some(Err(error.with_attempts(self.attempt)));
            }
            // Nothing has reached the caller yet: the stream may start over,
            // and one that was cut short is worth starting over too.
            let should_retry = (error.kind() == ErrorKind::TruncatedStream).then_some(true);
            self.body = None;
            self.pending.clear();
            if let Err(error) = self
                .transport
                .pause_or_give_up(self.attempt, error, should_retry, self.deadline)
                .await
            {
                self.done = true;
                return Some(Err(error));
            }
        }
    }

    fn decode(&mut self, chunk: &[u8]) -> Result<(), ProviderError> {
        let mut events = Vec::new();
        for frame in self.framer.push(chunk) {
            self.decoder.frame(frame, &mut events)?;
        }
        self.pending.extend(events);
        Ok(())
    }

    fn end(&mut self) -> Result<(), ProviderError> {
        let mut events = Vec::new();
        for frame in self.framer.finish() {
            self.decoder.frame(frame, &mut events)?;
        }
        self.decoder.finish(&mut events)?;
        self.pending.extend(events);
        self.done = true;
        Ok(())
    }
}

/// An error with its causes, joined: reqwest's own message alone often
/// says only "error sending request".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A provider on top of a transport and a wire format.
pub(crate) struct HttpProvider {
    transport: Arc<Transport>,
    wire: Arc<dyn WireFormat>,
    default_model: String,
}

impl fmt::Debug for HttpProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpProvider")
            .field("name", &self.transport.name)
            .field("kind", &self.wire.kind())
            .field("default_model", &self.default_model)
            .field("transport", &self.transport)
            .finish()
    }
}

impl HttpProvider {
    /// # Errors
    /// A sentence saying why the wire format's headers cannot be built (a
    /// key a header cannot carry, say).
    pub(crate) fn new(
        mut transport: Transport,
        wire: Arc<dyn WireFormat>,
        default_model: String,
    ) -> Result<Self, String> {
        let fixed = wire.fixed_headers(transport.key.as_ref())?;
        // Replaces extra headers of the same names.
        transport.headers.extend(fixed);
        Ok(Self {
            transport: Arc::new(transport),
            wire,
            default_model,
        })
    }

    fn prepare(
        &self,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<(PreparedRequest, String), ProviderError> {
        let model = request
            .options
            .model
            .clone()
            .unwrap_or_else(|| self.default_model.clone());
        if model.trim().is_empty() {
            return Err(self.transport.error(
                ErrorKind::BadRequest,
                "no model: set `model` on the provider or the agent",
            ));
        }
        let prepared = self
            .wire
            .request(request, &model, stream)
            .map_err(|message| self.transport.error(ErrorKind::BadRequest, message))?;
        Ok((prepared, model))
    }
}

#[async_trait]
impl Provider for HttpProvider {
    fn name(&self) -> &str {
        &self.transport.name
    }

    fn kind(&self) -> ProviderKind {
        self.wire.kind()
    }

    fn default_model(&self) -> &str {
        &self.default_model
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let (prepared, model) = self.prepare(request, false)?;
        self.transport.call(&*self.wire, &prepared, &model).await
    }

    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream, ProviderError> {
        let (prepared, model) = self.prepare(request, true)?;
        self.transport
            .stream(self.wire.clone(), prepared, &model)
            .await
    }
}

/// The kind most HTTP statuses mean, before a backend reads the body.
pub(crate) fn kind_for_status(status: StatusCode) -> ErrorKind {
    match status.as_u16() {
        401 | 403 => ErrorKind::Auth,
        402 => ErrorKind::QuotaExhausted,
        408 | 504 => ErrorKind::Timeout,
        429 => ErrorKind::RateLimited,
        503 | 529 => ErrorKind::Overloaded,
        409 | 500..=599 => ErrorKind::Server,
        _ => ErrorKind::BadRequest,
    }
}

/// Whether an error message says the prompt is too long for the model.
pub(crate) fn mentions_context_length(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    [
        "context length",
        "context_length",
        "context window",
        "maximum context",
        "prompt is too long",
        "too many tokens",
        "input token count",
    ]
    .iter()
    .any(|needle| message.contains(needle))
}
