//! What can go wrong talking to a provider, as a kind the caller can act on.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The kind of a provider failure: what happened, so the caller knows
/// whether to wait, fix its request, fix its config or give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The key is missing, wrong or lacks permission (401, 403).
    Auth,
    /// Too many requests for now (429); `retry_after` says how long the
    /// server asked to wait, if it did.
    RateLimited,
    /// The account is out of credit or a daily quota is spent; waiting a
    /// few seconds will not help.
    QuotaExhausted,
    /// The request was refused as malformed (400, 404, 413, 422).
    BadRequest,
    /// The prompt does not fit the model's context window.
    ContextLength,
    /// The service is overloaded (529, 503).
    Overloaded,
    /// The service failed (5xx).
    Server,
    /// No answer within the connect, idle-read or total timeout.
    Timeout,
    /// The connection failed or broke.
    Network,
    /// The answer was not what the wire format promises.
    MalformedResponse,
    /// A stream ended without its closing event, so the answer and its
    /// usage may be incomplete.
    TruncatedStream,
}

impl ErrorKind {
    /// The kind as a snake_case word, as logs and tool results show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::RateLimited => "rate_limited",
            Self::QuotaExhausted => "quota_exhausted",
            Self::BadRequest => "bad_request",
            Self::ContextLength => "context_length",
            Self::Overloaded => "overloaded",
            Self::Server => "server",
            Self::Timeout => "timeout",
            Self::Network => "network",
            Self::MalformedResponse => "malformed_response",
            Self::TruncatedStream => "truncated_stream",
        }
    }

    /// Whether trying the same request again later may succeed.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::RateLimited | Self::Overloaded | Self::Server | Self::Timeout | Self::Network
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed provider call. Carries the provider's own message (with the
/// key, should a server echo it, already cut out) and never the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderError {
    kind: ErrorKind,
    provider: Arc<str>,
    message: String,
    status: Option<u16>,
    retry_after: Option<Duration>,
    attempts: u32,
}

impl ProviderError {
    /// A new error from `provider` (its configured name).
    pub fn new(kind: ErrorKind, provider: impl Into<Arc<str>>, message: impl Into<String>) -> Self {
        Self {
            kind,
            provider: provider.into(),
            message: message.into(),
            status: None,
            retry_after: None,
            attempts: 1,
        }
    }

    /// The same error with the HTTP status that came with it.
    #[must_use]
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// The same error with the wait the server asked for.
    #[must_use]
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }

    #[must_use]
    pub(crate) fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }

    #[must_use]
    pub(crate) fn with_message(mut self, message: String) -> Self {
        self.message = message;
        self
    }

    /// What happened.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The configured name of the provider that failed.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The provider's own words, or ours when it gave none.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The HTTP status, when the failure came with one.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// How long the server asked to wait before trying again.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Requests made before giving up (1 when nothing was retried).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "provider `{}`: {}", self.provider, self.kind)?;
        if let Some(status) = self.status {
            write!(f, " (http {status})")?;
        }
        if self.attempts > 1 {
            write!(f, " after {} attempts", self.attempts)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(wait) = self.retry_after {
            write!(f, " (the server asked to wait {} ms)", wait.as_millis())?;
        }
        Ok(())
    }
}

impl std::error::Error for ProviderError {}
