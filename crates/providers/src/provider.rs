//! The trait every backend implements.

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::ProviderError;
use crate::message::{ChatRequest, ChatResponse};
use crate::stream::ChatStream;

/// An LLM backend. Object safe: agents hold an `Arc<dyn Provider>`.
///
/// Retries, timeouts and the per-provider request cap happen inside; an
/// error that comes out is final for this call.
#[async_trait]
pub trait Provider: fmt::Debug + Send + Sync {
    /// The configured name (the `<name>` of `[providers.<name>]`).
    fn name(&self) -> &str;

    /// Which backend this is.
    fn kind(&self) -> ProviderKind;

    /// The model used when a request names none.
    fn default_model(&self) -> &str;

    /// One chat call: the whole answer at once.
    ///
    /// # Cancel safety
    /// Dropping the future abandons the call (and its connection); nothing
    /// else is affected.
    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, ProviderError>;

    /// One chat call, streamed. The call is retried until its response
    /// starts; a stream that fails before any event reaches the caller is
    /// started over, and never after.
    ///
    /// # Cancel safety
    /// Dropping the future, or the stream, abandons the call.
    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream, ProviderError>;
}

/// The backends deputy speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// OpenAI Chat Completions and every server that speaks it.
    Openai,
    /// Anthropic Messages.
    Anthropic,
    /// Google Gemini `generateContent`.
    Gemini,
    /// Ollama's native `/api/chat`.
    Ollama,
    /// Offline replies from a script (no network).
    Scripted,
}

impl ProviderKind {
    /// Every kind, in the order docs list them.
    pub const ALL: [Self; 5] = [
        Self::Openai,
        Self::Anthropic,
        Self::Gemini,
        Self::Ollama,
        Self::Scripted,
    ];

    /// The kind as config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
            Self::Ollama => "ollama",
            Self::Scripted => "scripted",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A provider kind that deputy does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown provider kind `{0}`; use one of openai, anthropic, gemini, ollama, scripted")]
pub struct UnknownProviderKind(pub String);

impl FromStr for ProviderKind {
    type Err = UnknownProviderKind;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| UnknownProviderKind(text.to_owned()))
    }
}
