//! Tools users give their agents.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use deputy_providers::ToolSpec;
use deputy_registry::TaskId;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// A tool an agent may call.
///
/// The loop runs the calls of one model turn concurrently, hands an error
/// back to the model as a failed tool result (it never ends the task), and
/// cuts output longer than the runtime's `max_tool_output_chars`.
///
/// ```
/// use async_trait::async_trait;
/// use deputy_agent::{Tool, ToolContext, ToolError};
/// use serde_json::{Value, json};
///
/// #[derive(Debug)]
/// struct WordCount;
///
/// #[async_trait]
/// impl Tool for WordCount {
///     fn name(&self) -> &str {
///         "word_count"
///     }
///     fn description(&self) -> &str {
///         "Counts the words of a text."
///     }
///     fn parameters(&self) -> Value {
///         json!({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]})
///     }
///     async fn execute(&self, arguments: Value, _context: &ToolContext) -> Result<String, ToolError> {
///         let text = arguments["text"]
///             .as_str()
///             .ok_or_else(|| ToolError::invalid_arguments("`text` must be a string"))?;
///         Ok(text.split_whitespace().count().to_string())
///     }
/// }
/// ```
#[async_trait]
pub trait Tool: fmt::Debug + Send + Sync {
    /// The name the model calls it by: unique within the agent.
    fn name(&self) -> &str;

    /// What it does, for the model.
    fn description(&self) -> &str;

    /// A JSON schema of its arguments.
    fn parameters(&self) -> Value;

    /// Runs one call.
    ///
    /// # Cancel safety
    /// The future is dropped when the task is cancelled; a tool that starts
    /// work which outlives its future (a process, a remote job) should stop
    /// it when `context.cancellation()` fires.
    ///
    /// # Errors
    /// Anything the model should read as a failed call.
    async fn execute(&self, arguments: Value, context: &ToolContext) -> Result<String, ToolError>;
}

/// What a tool call knows about where it runs.
#[derive(Debug, Clone)]
pub struct ToolContext {
    pub(crate) task_id: TaskId,
    pub(crate) agent: Arc<str>,
    pub(crate) call_id: String,
    pub(crate) cancellation: CancellationToken,
}

impl ToolContext {
    /// The task whose agent made the call.
    pub fn task_id(&self) -> TaskId {
        self.task_id
    }

    /// The agent that made the call.
    pub fn agent(&self) -> &str {
        &self.agent
    }

    /// The model's id for this call.
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// Fires when the task is cancelled, directly or through an ancestor.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancellation
    }
}

/// A failed tool call, as the model will read it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ToolError {
    message: String,
}

impl ToolError {
    /// A failure described by `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The model's arguments were wrong: says what and how to fix it.
    pub fn invalid_arguments(message: impl fmt::Display) -> Self {
        Self::new(format!("invalid arguments: {message}"))
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

pub(crate) fn spec_of(tool: &dyn Tool) -> ToolSpec {
    ToolSpec {
        name: tool.name().to_owned(),
        description: tool.description().to_owned(),
        parameters: tool.parameters(),
    }
}
