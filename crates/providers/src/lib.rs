//! Provider backends for deputy agents: OpenAI-compatible, Anthropic,
//! Gemini, Ollama, and the offline `scripted` backend.
//!
//! Each agent names its own provider. Every backend sits behind one
//! object-safe [`Provider`] trait, reports token usage in the registry's
//! [`Usage`] type (so hooks can bill it exactly), and handles rate limits,
//! overloads, timeouts and broken streams itself: one [`RetryPolicy`] for
//! every HTTP backend, connect / idle / total [`Timeouts`], and a cap on
//! requests in flight per provider. Keys live in [`ApiKey`], which never
//! shows itself in `Debug` output, logs or errors.
//!
//! ```
//! use deputy_providers::{ChatRequest, Message, ProviderConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The offline backend: no key, no network.
//! let provider = ProviderConfig::scripted("offline").build(|_| None)?;
//! let request = ChatRequest::new(vec![Message::user("Summarize the design")]);
//! let answer = provider.chat(&request).await?;
//! assert!(answer.text.starts_with("[offline"));
//! # Ok(())
//! # }
//! ```

mod anthropic;
mod config;
mod error;
mod framing;
mod gemini;
mod http;
mod message;
mod ollama;
mod openai;
mod provider;
mod retry;
mod scripted;
mod secret;
mod stream;

pub use config::{KeySource, ProviderConfig, ProviderConfigError, RawProviderConfig};
pub use deputy_registry::Usage;
pub use error::{ErrorKind, ProviderError};
pub use http::Timeouts;
pub use message::{
    ChatOptions, ChatRequest, ChatResponse, FinishReason, Message, ToolArguments, ToolCall,
    ToolSpec,
};
pub use openai::MaxTokensField;
pub use provider::{Provider, ProviderKind, UnknownProviderKind};
pub use retry::RetryPolicy;
pub use scripted::{
    GET_TASK_RESULT_TOOL, LAST_TURN_HEADER, OFFLINE_MARK, SPAWN_AGENT_TOOL, Script, ScriptToolCall,
    ScriptTurn, ScriptUsage, ScriptedProvider, TASK_RESULTS_HEADER, topics,
};
pub use secret::ApiKey;
pub use stream::{ChatStream, StreamEvent};

/// Default values of the HTTP settings.
pub mod defaults {
    pub use crate::anthropic::{
        DEFAULT_BASE_URL as ANTHROPIC_BASE_URL, DEFAULT_MAX_TOKENS as ANTHROPIC_MAX_TOKENS,
        DEFAULT_VERSION as ANTHROPIC_VERSION, NO_SAMPLING_SINCE as ANTHROPIC_NO_SAMPLING_SINCE,
    };
    pub use crate::gemini::DEFAULT_BASE_URL as GEMINI_BASE_URL;
    pub use crate::http::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_REQUEST_TIMEOUT};
    pub use crate::ollama::DEFAULT_BASE_URL as OLLAMA_BASE_URL;
    pub use crate::openai::DEFAULT_BASE_URL as OPENAI_BASE_URL;
    pub use crate::retry::{
        DEFAULT_INITIAL_BACKOFF, DEFAULT_MAX_BACKOFF, DEFAULT_MAX_RETRIES, DEFAULT_MAX_RETRY_WAIT,
    };
}
