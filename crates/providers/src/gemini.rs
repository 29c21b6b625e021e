//! Google Gemini `generateContent` and `streamGenerateContent`.
//!
//! Wire format: `../shared/research/providers.md` §2.5. Gemini ends a turn
//! that calls functions with `STOP`, so the finish reason is read from the
//! parts; thought signatures ride on parts and are sent back unchanged.

use deputy_registry::Usage;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderName};
use serde_json::{Map, Value, json};

use crate::error::{ErrorKind, ProviderError};
use crate::framing::{Frame, Framing};
use crate::http::{
    Classified, PreparedRequest, WireFormat, body_or_status, key_headers, kind_for_status,
    mentions_context_length,
};
use crate::message::{ChatRequest, ChatResponse, FinishReason, Message, ToolArguments, ToolCall};
use crate::provider::ProviderKind;
use crate::retry::parse_google_duration;
use crate::secret::ApiKey;
use crate::stream::{StreamDecoder, StreamEvent, excerpt, frame_json, text_and_calls};

/// The default base URL.
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com/v1beta";

/// Ids deputy makes for calls that came without one; they are never sent
/// back to Gemini as if Gemini had chosen them.
const MADE_ID_PREFIX: &str = "gemini-call-";

#[derive(Debug, Clone)]
pub(crate) struct GeminiWire {
    pub(crate) base_url: String,
}

impl WireFormat for GeminiWire {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Gemini
    }

    fn fixed_headers(&self, key: Option<&ApiKey>) -> Result<HeaderMap, String> {
        key_headers(key, HeaderName::from_static("x-goog-api-key"), "")
    }

    fn request(
        &self,
        request: &ChatRequest,
        model: &str,
        stream: bool,
    ) -> Result<PreparedRequest, String> {
        let mut body = Map::new();
        if let Some(system) = request.system_text() {
            body.insert(
                "systemInstruction".into(),
                json!({"parts": [{"text": system}]}),
            );
        }
        body.insert("contents".into(), contents_json(&request.messages));
        if !request.tools.is_empty() {
            let declarations: Vec<Value> = request
                .tools
                .iter()
                .map(|tool| {
                    json!({
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": tool.parameters,
                    })
                })
                .collect();
            body.insert(
                "tools".into(),
                json!([{"functionDeclarations": declarations}]),
            );
        }
        let mut generation = Map::new();
        if let Some(max) = request.options.max_output_tokens {
            generation.insert("maxOutputTokens".into(), json!(max));
        }
        if let Some(temperature) = request.options.temperature {
            generation.insert("temperature".into(), json!(temperature));
        }
        if !generation.is_empty() {
            body.insert("generationConfig".into(), Value::Object(generation));
        }
        let base = self.base_url.trim_end_matches('/');
        let url = if stream {
            format!("{base}/models/{model}:streamGenerateContent?alt=sse")
        } else {
            format!("{base}/models/{model}:generateContent")
        };
        Ok(PreparedRequest {
            url,
            body: Value::Object(body),
        })
    }

    fn parse(&self, provider: &str, body: Value) -> Result<ChatResponse, ProviderError> {
        let mut reader = ResponseReader::new(provider, "");
        let mut events = Vec::new();
        reader.read(&body, &mut events)?;
        if reader.finish.is_none() && body.get("candidates").is_none() {
            return Err(ProviderError::new(
                ErrorKind::MalformedResponse,
                provider,
                format!(
                    "the answer has no candidates: {}",
                    excerpt(&body.to_string())
                ),
            ));
        }
        let (text, tool_calls) = text_and_calls(events);
        Ok(ChatResponse {
            finish: reader.finish_reason(!tool_calls.is_empty()),
            text,
            tool_calls,
            usage: reader.usage,
            model: reader.model,
            signature: reader.signature,
        })
    }

    fn classify(&self, status: StatusCode, body: &str) -> Classified {
        let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let error = json.get("error").unwrap_or(&Value::Null);
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| body_or_status(status, body));
        let (kind, retry_after) = error_details(error, kind_for_status(status), &message);
        Classified {
            kind,
            message,
            retry_after,
        }
    }

    fn framing(&self) -> Framing {
        Framing::Sse
    }

    fn decoder(&self, provider: &str, model: &str) -> Box<dyn StreamDecoder> {
        Box::new(GeminiDecoder {
            reader: ResponseReader::new(provider, model),
        })
    }
}

/// Gemini's `error` object: the kind (a daily quota is spent, not merely
/// rate limited) and the `RetryInfo` delay.
fn error_details(
    error: &Value,
    fallback: ErrorKind,
    message: &str,
) -> (ErrorKind, Option<std::time::Duration>) {
    let details = error
        .get("details")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let detail_type = |detail: &Value| {
        detail
            .get("@type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let retry_after = details
        .iter()
        .filter(|detail| detail_type(detail).ends_with("RetryInfo"))
        .find_map(|detail| detail.get("retryDelay").and_then(Value::as_str))
        .and_then(parse_google_duration);
    // Per-day quotas stay spent until the day turns over: retrying in
    // seconds only burns requests.
    let daily_quota = details
        .iter()
        .filter(|detail| detail_type(detail).ends_with("QuotaFailure"))
        .flat_map(|detail| {
            detail
                .get("violations")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .any(|violation| {
            violation
                .get("quotaId")
                .and_then(Value::as_str)
                .is_some_and(|quota| quota.to_ascii_lowercase().contains("perday"))
        });
    let kind = match error.get("status").and_then(Value::as_str) {
        Some("RESOURCE_EXHAUSTED") if daily_quota => ErrorKind::QuotaExhausted,
        Some("RESOURCE_EXHAUSTED") => ErrorKind::RateLimited,
        Some("UNAVAILABLE") => ErrorKind::Overloaded,
        Some("INTERNAL") => ErrorKind::Server,
        Some("DEADLINE_EXCEEDED") => ErrorKind::Timeout,
        Some("UNAUTHENTICATED" | "PERMISSION_DENIED") => ErrorKind::Auth,
        Some("INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "NOT_FOUND") => {
            if mentions_context_length(message) {
                ErrorKind::ContextLength
            } else {
                ErrorKind::BadRequest
            }
        }
        _ if fallback == ErrorKind::BadRequest && mentions_context_length(message) => {
            ErrorKind::ContextLength
        }
        _ => fallback,
    };
    (kind, retry_after)
}

/// Gemini takes `user` and `model` turns; tool results are
/// `functionResponse` parts of a user turn. Consecutive messages of one
/// role become one turn.
fn contents_json(messages: &[Message]) -> Value {
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut push = |role: &'static str, part: Value| match turns.last_mut() {
        Some((last_role, parts)) if *last_role == role => parts.push(part),
        _ => turns.push((role, vec![part])),
    };
    for message in messages {
        match message {
            Message::System { .. } => {}
            Message::User { content } => push("user", json!({"text": content})),
            Message::Assistant {
                content,
                tool_calls,
                signature,
            } => {
                if !content.is_empty() {
                    let mut part = json!({"text": content});
                    if let Some(signature) = signature {
                        part["thoughtSignature"] = json!(signature);
                    }
                    push("model", part);
                }
                for call in tool_calls {
                    let mut function_call = json!({
                        "name": call.name,
                        "args": call.arguments.to_object(),
                    });
                    if !call.id.starts_with(MADE_ID_PREFIX) {
                        function_call["id"] = json!(call.id);
                    }
                    let mut part = json!({"functionCall": function_call});
                    if let Some(signature) = &call.signature {
                        part["thoughtSignature"] = json!(signature);
                    }
                    push("model", part);
                }
            }
            Message::Tool {
                call_id,
                name,
                content,
                is_error,
            } => {
                let response = if *is_error {
                    json!({"error": content})
                } else {
                    json!({"result": content})
                };
                let mut function_response = json!({"name": name, "response": response});
                if !call_id.starts_with(MADE_ID_PREFIX) {
                    function_response["id"] = json!(call_id);
                }
                push("user", json!({"functionResponse": function_response}));
            }
        }
    }
    Value::Array(
        turns
            .into_iter()
            .map(|(role, parts)| json!({"role": role, "parts": parts}))
            .collect(),
    )
}

/// Reads `GenerateContentResponse` objects: one for a plain call, one per
/// chunk for a stream.
struct ResponseReader {
    provider: String,
    model: String,
    finish: Option<String>,
    calls_seen: usize,
    usage: Usage,
    signature: Option<String>,
}

impl ResponseReader {
    fn new(provider: &str, model: &str) -> Self {
        Self {
            provider: provider.to_owned(),
            model: model.to_owned(),
            finish: None,
            calls_seen: 0,
            usage: Usage {
                requests: 1,
                ..Usage::default()
            },
            signature: None,
        }
    }

    fn read(&mut self, response: &Value, out: &mut Vec<StreamEvent>) -> Result<(), ProviderError> {
        if let Some(error) = response.get("error") {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("the server reported an error")
                .to_owned();
            let (kind, retry_after) = error_details(error, ErrorKind::Server, &message);
            return Err(ProviderError::new(kind, self.provider.as_str(), message)
                .with_retry_after(retry_after));
        }
        if let Some(model) = response.get("modelVersion").and_then(Value::as_str) {
            self.model = model.to_owned();
        }
        if let Some(metadata) = response.get("usageMetadata") {
            let count = |field: &str| metadata.get(field).and_then(Value::as_u64).unwrap_or(0);
            let cached = count("cachedContentTokenCount");
            self.usage = Usage {
                // The cached part of the prompt is priced apart; tool-use
                // prompt tokens are billed as input.
                input_tokens: count("promptTokenCount")
                    .saturating_sub(cached)
                    .saturating_add(count("toolUsePromptTokenCount")),
                // Thinking is billed as output.
                output_tokens: count("candidatesTokenCount")
                    .saturating_add(count("thoughtsTokenCount")),
                cache_read_tokens: cached,
                cache_write_tokens: 0,
                requests: 1,
            };
        }
        if response.pointer("/promptFeedback/blockReason").is_some() {
            self.finish.get_or_insert_with(|| "SAFETY".to_owned());
        }
        let Some(candidate) = response.pointer("/candidates/0") else {
            return Ok(());
        };
        let parts = candidate
            .pointer("/content/parts")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for part in parts {
            let signature = part
                .get("thoughtSignature")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if let Some(call) = part.get("functionCall") {
                let id = call
                    .get("id")
                    .and_then(Value::as_str)
                    .filter(|id| !id.is_empty())
                    .map_or_else(
                        || format!("{MADE_ID_PREFIX}{}", self.calls_seen),
                        str::to_owned,
                    );
                self.calls_seen += 1;
                out.push(StreamEvent::ToolCall {
                    call: ToolCall {
                        id,
                        name: call
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        arguments: ToolArguments::Json(
                            call.get("args").cloned().unwrap_or(json!({})),
                        ),
                        signature,
                    },
                });
            } else if let Some(text) = part.get("text").and_then(Value::as_str) {
                if signature.is_some() {
                    self.signature = signature;
                }
                // Thought summaries are not part of the answer.
                let thought = part.get("thought").and_then(Value::as_bool) == Some(true);
                if !thought && !text.is_empty() {
                    out.push(StreamEvent::TextDelta {
                        text: text.to_owned(),
                    });
                }
            }
        }
        if let Some(reason) = candidate.get("finishReason").and_then(Value::as_str) {
            self.finish = Some(reason.to_owned());
        }
        Ok(())
    }

    fn finish_reason(&self, has_tool_calls: bool) -> FinishReason {
        match self.finish.as_deref() {
            _ if has_tool_calls => FinishReason::ToolCalls,
            Some("STOP") | None => FinishReason::Stop,
            Some("MAX_TOKENS") => FinishReason::Length,
            Some(
                "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII"
                | "IMAGE_SAFETY",
            ) => FinishReason::ContentFilter,
            Some(other) => FinishReason::Other(other.to_ascii_lowercase()),
        }
    }
}

struct GeminiDecoder {
    reader: ResponseReader,
}

impl StreamDecoder for GeminiDecoder {
    fn frame(&mut self, frame: Frame, out: &mut Vec<StreamEvent>) -> Result<(), ProviderError> {
        let chunk = frame_json(&self.reader.provider, &frame)?;
        self.reader.read(&chunk, out)
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), ProviderError> {
        if self.reader.finish.is_none() {
            return Err(ProviderError::new(
                ErrorKind::TruncatedStream,
                self.reader.provider.as_str(),
                "the stream ended before the model said why it stopped (no finishReason); the answer and its usage may be incomplete",
            ));
        }
        out.push(StreamEvent::Finished {
            finish: self.reader.finish_reason(self.reader.calls_seen > 0),
            usage: self.reader.usage,
            model: self.reader.model.clone(),
            signature: self.reader.signature.clone(),
        });
        Ok(())
    }
}
