//! OpenAI Chat Completions, as OpenAI and every compatible server speak it
//! (OpenRouter, vLLM, llama.cpp server, LM Studio, Ollama's `/v1`, Groq,
//! DeepSeek, ...).
//!
//! Wire format: `../shared/research/providers.md` §2.1.

use std::collections::BTreeMap;

use deputy_registry::Usage;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::{ErrorKind, ProviderError};
use crate::framing::{Frame, Framing};
use crate::http::{
    Classified, PreparedRequest, WireFormat, bearer_headers, body_or_status, kind_for_status,
};
use crate::message::{
    ChatRequest, ChatResponse, FinishReason, Message, ToolArguments, ToolCall, ToolSpec,
};
use crate::provider::ProviderKind;
use crate::secret::ApiKey;
use crate::stream::{StreamDecoder, StreamEvent, excerpt, frame_json};

/// The default base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// The name of the output-token cap in the request body: OpenAI's newer
/// models want `max_completion_tokens`, many compatible servers know only
/// `max_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensField {
    /// `max_tokens`, understood by nearly every compatible server.
    #[default]
    MaxTokens,
    /// `max_completion_tokens`, required by OpenAI's reasoning models.
    MaxCompletionTokens,
}

impl MaxTokensField {
    fn as_str(self) -> &'static str {
        match self {
            Self::MaxTokens => "max_tokens",
            Self::MaxCompletionTokens => "max_completion_tokens",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct OpenAiWire {
    pub(crate) base_url: String,
    pub(crate) max_tokens_field: MaxTokensField,
}

impl WireFormat for OpenAiWire {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Openai
    }

    fn fixed_headers(&self, key: Option<&ApiKey>) -> Result<HeaderMap, String> {
        bearer_headers(key)
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
            "messages".into(),
            Value::Array(request.messages.iter().map(message_json).collect()),
        );
        if !request.tools.is_empty() {
            body.insert("tools".into(), function_tools(&request.tools));
        }
        if let Some(max) = request.options.max_output_tokens {
            body.insert(self.max_tokens_field.as_str().into(), json!(max));
        }
        if let Some(temperature) = request.options.temperature {
            body.insert("temperature".into(), json!(temperature));
        }
        if stream {
            body.insert("stream".into(), json!(true));
            body.insert("stream_options".into(), json!({"include_usage": true}));
        }
        Ok(PreparedRequest {
            url: format!("{}/chat/completions", self.base_url.trim_end_matches('/')),
            body: Value::Object(body),
        })
    }

    fn parse(&self, provider: &str, body: Value) -> Result<ChatResponse, ProviderError> {
        let malformed = |what: &str| {
            ProviderError::new(
                ErrorKind::MalformedResponse,
                provider,
                format!("{what}: {}", excerpt(&body.to_string())),
            )
        };
        let choice = body
            .pointer("/choices/0")
            .ok_or_else(|| malformed("the answer has no choices"))?;
        let message = choice
            .get("message")
            .ok_or_else(|| malformed("the answer's choice has no message"))?;
        let mut text = message
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let refusal = message.get("refusal").and_then(Value::as_str);
        if let Some(refusal) = refusal
            && text.is_empty()
        {
            text = refusal.to_owned();
        }
        let tool_calls: Vec<ToolCall> = message
            .get("tool_calls")
            .and_then(Value::as_array)
            .map(|calls| {
                calls
                    .iter()
                    .enumerate()
                    .map(|(index, call)| ToolCall {
                        id: call
                            .get("id")
                            .and_then(Value::as_str)
                            .map_or_else(|| format!("call_{index}"), str::to_owned),
                        name: str_at(call, "/function/name").to_owned(),
                        arguments: ToolArguments::parse(str_at(call, "/function/arguments")),
                        signature: None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let finish = finish_reason(
            choice.get("finish_reason").and_then(Value::as_str),
            !tool_calls.is_empty(),
            refusal.is_some(),
        );
        Ok(ChatResponse {
            text,
            tool_calls,
            finish,
            usage: body.get("usage").map(usage).unwrap_or_default(),
            model: str_at(&body, "/model").to_owned(),
            signature: None,
        })
    }

    fn classify(&self, status: StatusCode, body: &str) -> Classified {
        classify(status, body)
    }

    fn framing(&self) -> Framing {
        Framing::Sse
    }

    fn decoder(&self, provider: &str, model: &str) -> Box<dyn StreamDecoder> {
        Box::new(OpenAiDecoder {
            provider: provider.to_owned(),
            model: model.to_owned(),
            calls: BTreeMap::new(),
            refusal: false,
            finish: None,
            usage: Usage::default(),
            done: false,
        })
    }
}

/// Tools as OpenAI (and Ollama) declare them.
pub(crate) fn function_tools(tools: &[ToolSpec]) -> Value {
    tools
        .iter()
        .map(|tool| {
            json!({
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters,
                }
            })
        })
        .collect()
}

fn message_json(message: &Message) -> Value {
    match message {
        Message::System { content } => json!({"role": "system", "content": content}),
        Message::User { content } => json!({"role": "user", "content": content}),
        Message::Assistant {
            content,
            tool_calls,
            ..
        } => {
            let mut object = Map::new();
            object.insert("role".into(), json!("assistant"));
            let content = if content.is_empty() && !tool_calls.is_empty() {
                Value::Null
            } else {
                json!(content)
            };
            object.insert("content".into(), content);
            if !tool_calls.is_empty() {
                let calls = tool_calls
                    .iter()
                    .map(|call| {
                        json!({
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": call.arguments.to_json_string()},
                        })
                    })
                    .collect();
                object.insert("tool_calls".into(), Value::Array(calls));
            }
            Value::Object(object)
        }
        Message::Tool {
            call_id, content, ..
        } => json!({"role": "tool", "tool_call_id": call_id, "content": content}),
    }
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn u64_at(value: &Value, pointer: &str) -> u64 {
    value.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}

/// OpenAI counts cached prompt tokens inside `prompt_tokens`; deputy counts
/// them apart, since they are priced apart.
fn usage(usage: &Value) -> Usage {
    let prompt = u64_at(usage, "/prompt_tokens");
    let cache_read = u64_at(usage, "/prompt_tokens_details/cached_tokens");
    let cache_write = u64_at(usage, "/prompt_tokens_details/cache_write_tokens");
    Usage {
        input_tokens: prompt
            .saturating_sub(cache_read)
            .saturating_sub(cache_write),
        output_tokens: u64_at(usage, "/completion_tokens"),
        cache_read_tokens: cache_read,
        cache_write_tokens: cache_write,
        requests: 1,
    }
}

fn finish_reason(reason: Option<&str>, has_tool_calls: bool, refused: bool) -> FinishReason {
    match reason {
        // Some compatible servers say "stop" after tool calls.
        _ if has_tool_calls => FinishReason::ToolCalls,
        _ if refused => FinishReason::Refusal,
        Some("stop") | None => FinishReason::Stop,
        Some("length") => FinishReason::Length,
        Some("tool_calls" | "function_call") => FinishReason::ToolCalls,
        Some("content_filter") => FinishReason::ContentFilter,
        Some(other) => FinishReason::Other(other.to_owned()),
    }
}

/// Reads an OpenAI-style error body: `{"error": {"message", "type",
/// "code"}}`, or `{"error": "text"}` as some compatible servers send.
pub(crate) fn classify(status: StatusCode, body: &str) -> Classified {
    let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let error = json.get("error").unwrap_or(&Value::Null);
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| error.as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| body_or_status(status, body));
    let code = error
        .get("code")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind_name = error
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = if code == "insufficient_quota" || kind_name == "insufficient_quota" {
        ErrorKind::QuotaExhausted
    } else if code == "context_length_exceeded" {
        ErrorKind::ContextLength
    } else {
        kind_for_status(status)
    };
    Classified::new(kind, message)
}

#[derive(Debug, Default)]
struct PartialCall {
    id: Option<String>,
    name: String,
    arguments: String,
}

struct OpenAiDecoder {
    provider: String,
    model: String,
    /// Tool calls being assembled, by their `index`.
    calls: BTreeMap<u64, PartialCall>,
    refusal: bool,
    finish: Option<FinishReason>,
    usage: Usage,
    done: bool,
}

impl OpenAiDecoder {
    fn flush_calls(&mut self, out: &mut Vec<StreamEvent>) {
        for (index, call) in std::mem::take(&mut self.calls) {
            out.push(StreamEvent::ToolCall {
                call: ToolCall {
                    id: call.id.unwrap_or_else(|| format!("call_{index}")),
                    name: call.name,
                    arguments: ToolArguments::parse(&call.arguments),
                    signature: None,
                },
            });
        }
    }
}

impl StreamDecoder for OpenAiDecoder {
    fn frame(&mut self, frame: Frame, out: &mut Vec<StreamEvent>) -> Result<(), ProviderError> {
        if frame.data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let chunk = frame_json(&self.provider, &frame)?;
        if let Some(error) = chunk.get("error") {
            return Err(in_stream_error(&self.provider, error));
        }
        if let Some(model) = chunk.get("model").and_then(Value::as_str)
            && !model.is_empty()
        {
            self.model = model.to_owned();
        }
        if let Some(usage_json) = chunk.get("usage").filter(|usage| usage.is_object()) {
            self.usage = usage(usage_json);
        }
        let Some(choice) = chunk.pointer("/choices/0") else {
            return Ok(());
        };
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        for field in ["content", "refusal"] {
            if let Some(text) = delta.get(field).and_then(Value::as_str)
                && !text.is_empty()
            {
                self.refusal |= field == "refusal";
                out.push(StreamEvent::TextDelta {
                    text: text.to_owned(),
                });
            }
        }
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for (position, call) in calls.iter().enumerate() {
                let index = call
                    .get("index")
                    .and_then(Value::as_u64)
                    .unwrap_or(position as u64);
                let partial = self.calls.entry(index).or_default();
                if let Some(id) = call.get("id").and_then(Value::as_str) {
                    partial.id = Some(id.to_owned());
                }
                if let Some(name) = call.pointer("/function/name").and_then(Value::as_str) {
                    partial.name.push_str(name);
                }
                if let Some(arguments) = call.pointer("/function/arguments").and_then(Value::as_str)
                {
                    partial.arguments.push_str(arguments);
                }
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            let has_calls = !self.calls.is_empty();
            self.finish = Some(finish_reason(Some(reason), has_calls, self.refusal));
            // The calls are complete once the model says why it stopped.
            self.flush_calls(out);
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), ProviderError> {
        let truncated = |why: &str| {
            Err(ProviderError::new(
                ErrorKind::TruncatedStream,
                self.provider.as_str(),
                format!("the stream ended {why}; the answer and its usage may be incomplete"),
            ))
        };
        let Some(finish) = self.finish.take() else {
            return truncated("before the model said why it stopped (no finish_reason)");
        };
        if !self.done {
            return truncated("without its closing `data: [DONE]`");
        }
        out.push(StreamEvent::Finished {
            finish,
            usage: self.usage,
            model: self.model.clone(),
            signature: None,
        });
        Ok(())
    }
}

/// An `{"error": ...}` object sent inside a stream that began with 200.
fn in_stream_error(provider: &str, error: &Value) -> ProviderError {
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| error.as_str())
        .unwrap_or("the server reported an error mid-stream");
    let code = [error.get("code"), error.get("type")]
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(" ");
    let kind = if code.contains("insufficient_quota") {
        ErrorKind::QuotaExhausted
    } else if code.contains("rate_limit") {
        ErrorKind::RateLimited
    } else if code.contains("overloaded") {
        ErrorKind::Overloaded
    } else {
        ErrorKind::Server
    };
    ProviderError::new(kind, provider, message)
}
