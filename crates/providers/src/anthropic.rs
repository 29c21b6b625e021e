//! Anthropic Messages.
//!
//! Wire format: `../shared/research/providers.md` §2.3. API version
//! 2026-10-21 refuses `temperature`, `top_p` and `top_k` even at their
//! defaults, so under it (and later versions) no sampling parameter is sent.

use std::collections::BTreeMap;

use deputy_registry::Usage;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value, json};

use crate::error::{ErrorKind, ProviderError};
use crate::framing::{Frame, Framing};
use crate::http::{
    Classified, PreparedRequest, WireFormat, body_or_status, key_headers, kind_for_status,
};
use crate::message::{ChatRequest, ChatResponse, FinishReason, Message, ToolArguments, ToolCall};
use crate::provider::ProviderKind;
use crate::secret::ApiKey;
use crate::stream::{StreamDecoder, StreamEvent, excerpt, frame_json};

/// The default base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com/v1";
/// The default `anthropic-version`: the one every Anthropic-compatible
/// server knows.
pub const DEFAULT_VERSION: &str = "2023-06-01";
/// The first API version that refuses sampling parameters.
pub const NO_SAMPLING_SINCE: &str = "2026-10-21";
/// `max_tokens` is required by the Messages API; this is sent when neither
/// the request nor the provider config sets one.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

#[derive(Debug, Clone)]
pub(crate) struct AnthropicWire {
    pub(crate) base_url: String,
    pub(crate) version: String,
    pub(crate) default_max_tokens: u32,
}

impl AnthropicWire {
    /// Versions are dates (`YYYY-MM-DD`), so they compare as text.
    fn accepts_sampling(&self) -> bool {
        self.version.as_str() < NO_SAMPLING_SINCE
    }
}

impl WireFormat for AnthropicWire {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Anthropic
    }

    fn fixed_headers(&self, key: Option<&ApiKey>) -> Result<HeaderMap, String> {
        let mut headers = key_headers(key, HeaderName::from_static("x-api-key"), "")?;
        let version = HeaderValue::from_str(&self.version).map_err(|_| {
            format!(
                "anthropic_version `{}` is not a valid header value",
                self.version
            )
        })?;
        headers.insert(HeaderName::from_static("anthropic-version"), version);
        Ok(headers)
    }

    fn request(
        &self,
        request: &ChatRequest,
        model: &str,
        stream: bool,
    ) -> Result<PreparedRequest, String> {
        let mut body = Map::new();
        body.insert("model".into(), json!(model));
        body.insert(
            "max_tokens".into(),
            json!(
                request
                    .options
                    .max_output_tokens
                    .unwrap_or(self.default_max_tokens)
            ),
        );
        if let Some(system) = request.system_text() {
            body.insert("system".into(), json!(system));
        }
        body.insert("messages".into(), messages_json(&request.messages));
        if !request.tools.is_empty() {
            let tools = request
                .tools
                .iter()
                .map(|tool| {
                    json!({
                        "name": tool.name,
                        "description": tool.description,
                        "input_schema": tool.parameters,
                    })
                })
                .collect();
            body.insert("tools".into(), Value::Array(tools));
        }
        if let Some(temperature) = request.options.temperature
            && self.accepts_sampling()
        {
            body.insert("temperature".into(), json!(temperature));
        }
        if stream {
            body.insert("stream".into(), json!(true));
        }
        Ok(PreparedRequest {
            url: format!("{}/messages", self.base_url.trim_end_matches('/')),
            body: Value::Object(body),
        })
    }

    fn parse(&self, provider: &str, body: Value) -> Result<ChatResponse, ProviderError> {
        if body.get("type").and_then(Value::as_str) == Some("error") {
            let error = body.get("error").unwrap_or(&Value::Null);
            return Err(ProviderError::new(
                error_kind(error, ErrorKind::Server),
                provider,
                error_message(error),
            ));
        }
        let content = body
            .get("content")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                ProviderError::new(
                    ErrorKind::MalformedResponse,
                    provider,
                    format!("the answer has no content: {}", excerpt(&body.to_string())),
                )
            })?;
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        for block in content {
            match block.get("type").and_then(Value::as_str) {
                Some("text") => {
                    text.push_str(
                        block
                            .get("text")
                            .and_then(Value::as_str)
                            .unwrap_or_default(),
                    );
                }
                Some("tool_use") => tool_calls.push(ToolCall {
                    id: str_field(block, "id").to_owned(),
                    name: str_field(block, "name").to_owned(),
                    arguments: ToolArguments::Json(
                        block.get("input").cloned().unwrap_or(json!({})),
                    ),
                    signature: None,
                }),
                // Thinking and server-tool blocks are not part of the answer.
                _ => {}
            }
        }
        Ok(ChatResponse {
            text,
            tool_calls,
            finish: stop_reason(body.get("stop_reason").and_then(Value::as_str)),
            usage: body.get("usage").map(usage).unwrap_or_default(),
            model: str_field(&body, "model").to_owned(),
            signature: None,
        })
    }

    fn classify(&self, status: StatusCode, body: &str) -> Classified {
        let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let error = json.get("error").unwrap_or(&Value::Null);
        let message = if error.is_object() {
            error_message(error)
        } else {
            body_or_status(status, body)
        };
        Classified::new(error_kind(error, kind_for_status(status)), message)
    }

    fn framing(&self) -> Framing {
        Framing::Sse
    }

    fn decoder(&self, provider: &str, model: &str) -> Box<dyn StreamDecoder> {
        Box::new(AnthropicDecoder {
            provider: provider.to_owned(),
            model: model.to_owned(),
            blocks: BTreeMap::new(),
            stop_reason: None,
            usage: Usage {
                requests: 1,
                ..Usage::default()
            },
            stopped: false,
        })
    }
}

/// Anthropic takes only `user` and `assistant` turns, with tool results as
/// `tool_result` blocks at the start of a user turn; consecutive messages
/// of one role become one turn.
fn messages_json(messages: &[Message]) -> Value {
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut push = |role: &'static str, block: Value| match turns.last_mut() {
        Some((last_role, blocks)) if *last_role == role => blocks.push(block),
        _ => turns.push((role, vec![block])),
    };
    for message in messages {
        match message {
            Message::System { .. } => {}
            Message::User { content } => push("user", json!({"type": "text", "text": content})),
            Message::Assistant {
                content,
                tool_calls,
                ..
            } => {
                if !content.is_empty() {
                    push("assistant", json!({"type": "text", "text": content}));
                }
                for call in tool_calls {
                    push(
                        "assistant",
                        json!({
                            "type": "tool_use",
                            "id": call.id,
                            "name": call.name,
                            "input": call.arguments.to_object(),
                        }),
                    );
                }
            }
            Message::Tool {
                call_id,
                content,
                is_error,
                ..
            } => push(
                "user",
                json!({
                    "type": "tool_result",
                    "tool_use_id": call_id,
                    "content": content,
                    "is_error": is_error,
                }),
            ),
        }
    }
    Value::Array(
        turns
            .into_iter()
            .map(|(role, mut blocks)| {
                // Tool results must lead their user turn.
                blocks.sort_by_key(|block| block.get("type") != Some(&json!("tool_result")));
                json!({"role": role, "content": blocks})
            })
            .collect(),
    )
}

fn str_field<'a>(value: &'a Value, field: &str) -> &'a str {
    value.get(field).and_then(Value::as_str).unwrap_or_default()
}

/// Anthropic's `input_tokens` already leaves out cache reads and writes.
fn usage(usage: &Value) -> Usage {
    let count = |field: &str| usage.get(field).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        input_tokens: count("input_tokens"),
        output_tokens: count("output_tokens"),
        cache_read_tokens: count("cache_read_input_tokens"),
        cache_write_tokens: count("cache_creation_input_tokens"),
        requests: 1,
    }
}

fn stop_reason(reason: Option<&str>) -> FinishReason {
    match reason {
        Some("end_turn" | "stop_sequence") | None => FinishReason::Stop,
        Some("max_tokens" | "model_context_window_exceeded") => FinishReason::Length,
        Some("tool_use") => FinishReason::ToolCalls,
        Some("refusal") => FinishReason::Refusal,
        Some(other) => FinishReason::Other(other.to_owned()),
    }
}

fn error_kind(error: &Value, fallback: ErrorKind) -> ErrorKind {
    match error.get("type").and_then(Value::as_str) {
        Some("overloaded_error") => ErrorKind::Overloaded,
        Some("rate_limit_error") => ErrorKind::RateLimited,
        Some("billing_error") => ErrorKind::QuotaExhausted,
        Some("authentication_error" | "permission_error") => ErrorKind::Auth,
        Some("api_error") => ErrorKind::Server,
        Some("timeout_error") => ErrorKind::Timeout,
        Some("invalid_request_error" | "not_found_error" | "request_too_large") => {
            ErrorKind::BadRequest
        }
        _ => fallback,
    }
}

fn error_message(error: &Value) -> String {
    let message = str_field(error, "message");
    match (
        error.get("type").and_then(Value::as_str),
        message.is_empty(),
    ) {
        (Some(kind), true) => kind.to_owned(),
        (Some(kind), false) => format!("{kind}: {message}"),
        (None, false) => message.to_owned(),
        (None, true) => "the server reported an error".to_owned(),
    }
}

enum Block {
    Text,
    ToolUse {
        id: String,
        name: String,
        json: String,
    },
    Other,
}

struct AnthropicDecoder {
    provider: String,
    model: String,
    blocks: BTreeMap<u64, Block>,
    stop_reason: Option<String>,
    usage: Usage,
    stopped: bool,
}

impl StreamDecoder for AnthropicDecoder {
    fn frame(&mut self, frame: Frame, out: &mut Vec<StreamEvent>) -> Result<(), ProviderError> {
        let data = frame_json(&self.provider, &frame)?;
        let event = frame
            .event
            .clone()
            .or_else(|| data.get("type").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default();
        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
        match event.as_str() {
            "message_start" => {
                let message = data.get("message").unwrap_or(&Value::Null);
                let model = str_field(message, "model");
                if !model.is_empty() {
                    self.model = model.to_owned();
                }
                if let Some(start_usage) = message.get("usage") {
                    self.usage = usage(start_usage);
                }
            }
            "content_block_start" => {
                let block = data.get("content_block").unwrap_or(&Value::Null);
                let state = match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let text = str_field(block, "text");
                        if !text.is_empty() {
                            out.push(StreamEvent::TextDelta {
                                text: text.to_owned(),
                            });
                        }
                        Block::Text
                    }
                    Some("tool_use") => Block::ToolUse {
                        id: str_field(block, "id").to_owned(),
                        name: str_field(block, "name").to_owned(),
                        json: String::new(),
                    },
                    _ => Block::Other,
                };
                self.blocks.insert(index, state);
            }
            "content_block_delta" => {
                let delta = data.get("delta").unwrap_or(&Value::Null);
                match (
                    delta.get("type").and_then(Value::as_str),
                    self.blocks.get_mut(&index),
                ) {
                    (Some("text_delta"), _) => {
                        let text = str_field(delta, "text");
                        if !text.is_empty() {
                            out.push(StreamEvent::TextDelta {
                                text: text.to_owned(),
                            });
                        }
                    }
                    (Some("input_json_delta"), Some(Block::ToolUse { json, .. })) => {
                        json.push_str(str_field(delta, "partial_json"));
                    }
                    // Thinking, signature and citation deltas are not part of
                    // the answer.
                    _ => {}
                }
            }
            "content_block_stop" => {
                if let Some(Block::ToolUse { id, name, json }) = self.blocks.remove(&index) {
                    out.push(StreamEvent::ToolCall {
                        call: ToolCall {
                            id,
                            name,
                            arguments: ToolArguments::parse(&json),
                            signature: None,
                        },
                    });
                }
            }
            "message_delta" => {
                if let Some(reason) = data.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.stop_reason = Some(reason.to_owned());
                }
                // Counts here are running totals: the last one wins, and
                // only the fields it carries change.
                if let Some(delta_usage) = data.get("usage") {
                    let fields = [
                        ("input_tokens", &mut self.usage.input_tokens),
                        ("output_tokens", &mut self.usage.output_tokens),
                        ("cache_read_input_tokens", &mut self.usage.cache_read_tokens),
                        (
                            "cache_creation_input_tokens",
                            &mut self.usage.cache_write_tokens,
                        ),
                    ];
                    for (field, slot) in fields {
                        if let Some(count) = delta_usage.get(field).and_then(Value::as_u64) {
                            *slot = count;
                        }
                    }
                }
            }
            "message_stop" => self.stopped = true,
            "error" => {
                let error = data.get("error").unwrap_or(&Value::Null);
                return Err(ProviderError::new(
                    error_kind(error, ErrorKind::Server),
                    self.provider.as_str(),
                    error_message(error),
                ));
            }
            // `ping` and event types added after this was written.
            _ => {}
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), ProviderError> {
        if !self.stopped || self.stop_reason.is_none() {
            let why = if self.stop_reason.is_none() {
                "before the model said why it stopped (no stop_reason)"
            } else {
                "without its `message_stop` event"
            };
            return Err(ProviderError::new(
                ErrorKind::TruncatedStream,
                self.provider.as_str(),
                format!("the stream ended {why}; the answer and its usage may be incomplete"),
            ));
        }
        out.push(StreamEvent::Finished {
            finish: stop_reason(self.stop_reason.as_deref()),
            usage: self.usage,
            model: self.model.clone(),
            signature: None,
        });
        Ok(())
    }
}
