//! The conversation vocabulary every backend translates to and from.

use std::fmt;

use deputy_registry::Usage;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Message {
    /// Instructions for the model.
    System {
        /// The instructions.
        content: String,
    },
    /// What the user (or the orchestrating agent) says.
    User {
        /// The text.
        content: String,
    },
    /// A model turn: text, tool calls, or both.
    Assistant {
        /// The text (may be empty when the turn only calls tools).
        content: String,
        /// The tools the model asked to run, in its order.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
        /// An opaque signature the provider attached to the text, to be
        /// sent back unchanged (Gemini's thought signature).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
    },
    /// The result of one tool call.
    Tool {
        /// The id of the call this answers.
        call_id: String,
        /// The tool's name.
        name: String,
        /// What the tool returned, or what went wrong.
        content: String,
        /// Whether `content` describes a failure.
        #[serde(default)]
        is_error: bool,
    },
}

impl Message {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::System {
            content: content.into(),
        }
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::User {
            content: content.into(),
        }
    }

    /// An assistant message with text only.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::Assistant {
            content: content.into(),
            tool_calls: Vec::new(),
            signature: None,
        }
    }

    /// The answer to `call`.
    pub fn tool_result(call: &ToolCall, content: impl Into<String>, is_error: bool) -> Self {
        Self::Tool {
            call_id: call.id.clone(),
            name: call.name.clone(),
            content: content.into(),
            is_error,
        }
    }
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// The name the model calls it by.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// A JSON schema for its arguments.
    pub parameters: Value,
}

/// A tool call the model made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id, which its result must quote. Backends that send none
    /// get a stable one made from the call's position in the turn.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments, parsed, or the raw text if the model's JSON was bad.
    pub arguments: ToolArguments,
    /// An opaque signature to send back with the call (Gemini).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl ToolCall {
    /// A call with well-formed arguments.
    pub fn new(id: impl Into<String>, name: impl Into<String>, arguments: Value) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            arguments: ToolArguments::Json(arguments),
            signature: None,
        }
    }
}

/// A tool call's arguments. Models sometimes write broken JSON; that is a
/// value the agent loop hands back to the model as a tool error, not a
/// transport failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolArguments {
    /// Arguments that parsed as JSON.
    Json(Value),
    /// Arguments that did not.
    Malformed {
        /// What the model sent.
        raw: String,
        /// Why it did not parse.
        error: String,
    },
}

impl ToolArguments {
    /// Parses arguments sent as a JSON string (OpenAI, Anthropic streams).
    /// An empty string means no arguments: `{}`.
    pub fn parse(raw: &str) -> Self {
        if raw.trim().is_empty() {
            return Self::Json(Value::Object(serde_json::Map::new()));
        }
        match serde_json::from_str(raw) {
            Ok(value) => Self::Json(value),
            Err(error) => Self::Malformed {
                raw: raw.to_owned(),
                error: error.to_string(),
            },
        }
    }

    /// The parsed arguments, or a sentence saying why there are none.
    ///
    /// # Errors
    /// When the model's JSON did not parse.
    pub fn json(&self) -> Result<&Value, String> {
        match self {
            Self::Json(value) => Ok(value),
            Self::Malformed { raw, error } => {
                Err(format!("the arguments are not valid JSON ({error}): {raw}"))
            }
        }
    }

    /// The arguments as a JSON string, as OpenAI-style backends echo them.
    pub(crate) fn to_json_string(&self) -> String {
        match self {
            Self::Json(value) => value.to_string(),
            Self::Malformed { raw, .. } => raw.clone(),
        }
    }

    /// The arguments as a JSON object, for backends that echo objects; bad
    /// arguments become `{}` (the tool result already says what was wrong).
    pub(crate) fn to_object(&self) -> Value {
        match self {
            Self::Json(value) if value.is_object() => value.clone(),
            _ => Value::Object(serde_json::Map::new()),
        }
    }
}

/// Per-call options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatOptions {
    /// The model; `None` uses the provider's default.
    #[serde(default)]
    pub model: Option<String>,
    /// A cap on output tokens.
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    /// Sampling temperature, sent only to backends (and API versions) that
    /// accept one.
    #[serde(default)]
    pub temperature: Option<f32>,
}

/// A chat call: the conversation so far, the tools on offer, the options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The conversation, oldest first.
    pub messages: Vec<Message>,
    /// Tools the model may call.
    #[serde(default)]
    pub tools: Vec<ToolSpec>,
    /// Model and sampling options.
    #[serde(default)]
    pub options: ChatOptions,
}

impl ChatRequest {
    /// A request for `messages` with no tools and default options.
    pub fn new(messages: Vec<Message>) -> Self {
        Self {
            messages,
            ..Self::default()
        }
    }

    /// Offers `tools` to the model.
    #[must_use]
    pub fn tools(mut self, tools: Vec<ToolSpec>) -> Self {
        self.tools = tools;
        self
    }

    /// Uses `model` instead of the provider's default.
    #[must_use]
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.options.model = Some(model.into());
        self
    }

    /// Caps the output tokens.
    #[must_use]
    pub fn max_output_tokens(mut self, max: u32) -> Self {
        self.options.max_output_tokens = Some(max);
        self
    }

    /// Sets the sampling temperature.
    #[must_use]
    pub fn temperature(mut self, temperature: f32) -> Self {
        self.options.temperature = Some(temperature);
        self
    }

    /// Every system message, joined by blank lines, for backends that take
    /// the instructions apart from the conversation.
    pub(crate) fn system_text(&self) -> Option<String> {
        let parts: Vec<&str> = self
            .messages
            .iter()
            .filter_map(|message| match message {
                Message::System { content } => Some(content.as_str()),
                _ => None,
            })
            .collect();
        (!parts.is_empty()).then(|| parts.join("\n\n"))
    }

    /// How many assistant turns the conversation has had.
    pub(crate) fn assistant_turns(&self) -> usize {
        self.messages
            .iter()
            .filter(|message| matches!(message, Message::Assistant { .. }))
            .count()
    }

    /// The text of the last user message, if any.
    pub fn last_user_text(&self) -> Option<&str> {
        self.messages
            .iter()
            .rev()
            .find_map(|message| match message {
                Message::User { content } => Some(content.as_str()),
                _ => None,
            })
    }
}

/// Why the model stopped, the same words for every backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A complete answer.
    Stop,
    /// The model wants tools run.
    ToolCalls,
    /// Cut off by the output-token cap or the context window.
    Length,
    /// Withheld by the provider's content filter.
    ContentFilter,
    /// The model declined.
    Refusal,
    /// Anything else, in the provider's own word (e.g. `pause_turn`).
    Other(String),
}

impl FinishReason {
    /// The reason as one snake_case word.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Stop => "stop",
            Self::ToolCalls => "tool_calls",
            Self::Length => "length",
            Self::ContentFilter => "content_filter",
            Self::Refusal => "refusal",
            Self::Other(other) => other,
        }
    }
}

impl fmt::Display for FinishReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A model's complete answer to one chat call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The text (empty when the model only called tools).
    pub text: String,
    /// Tool calls, in the model's order.
    pub tool_calls: Vec<ToolCall>,
    /// Why it stopped.
    pub finish: FinishReason,
    /// Tokens spent, with `requests` counting every attempt.
    pub usage: Usage,
    /// The model that answered, as the provider names it.
    pub model: String,
    /// An opaque signature on the text, to send back (Gemini).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl ChatResponse {
    /// The assistant message to append to the conversation, keeping what
    /// the provider needs to see again (ids, signatures).
    pub fn to_message(&self) -> Message {
        Message::Assistant {
            content: self.text.clone(),
            tool_calls: self.tool_calls.clone(),
            signature: self.signature.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse_or_say_why_not() {
        assert_eq!(
            ToolArguments::parse(r#"{"city":"Paris"}"#).json(),
            Ok(&serde_json::json!({"city": "Paris"}))
        );
        assert_eq!(
            ToolArguments::parse("  ").json(),
            Ok(&serde_json::json!({}))
        );
        let broken = ToolArguments::parse(r#"{"city": "Par"#);
        let error = broken.json().unwrap_err();
        assert!(
            error.starts_with("the arguments are not valid JSON"),
            "{error}"
        );
        assert!(error.ends_with(r#"{"city": "Par"#), "{error}");
        assert_eq!(broken.to_json_string(), r#"{"city": "Par"#);
        assert_eq!(broken.to_object(), serde_json::json!({}));
    }
}
