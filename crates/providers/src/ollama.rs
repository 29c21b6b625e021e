//! Ollama's native `/api/chat`, with NDJSON streaming.
//!
//! Wire format: `../shared/research/providers.md` §2.4. Tool calls may come
//! without ids; they get stable ones from their position in the turn.
//! (Ollama also speaks OpenAI's format under `/v1`: the `openai` backend
//! with that base URL works too.)

use deputy_registry::Usage;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Map, Value, json};

use crate::error::{ErrorKind, ProviderError};
use crate::framing::{Frame, Framing};
use crate::http::{
    Classified, PreparedRequest, WireFormat, bearer_headers, body_or_status, kind_for_status,
};
use crate::message::{ChatRequest, ChatResponse, FinishReason, Message, ToolArguments, ToolCall};
use crate::openai::function_tools;
use crate::provider::ProviderKind;
use crate::secret::ApiKey;
use crate::stream::{StreamDecoder, StreamEvent, excerpt, frame_json, text_and_calls};

/// The default base URL: a local Ollama.
pub const DEFAULT_BASE_URL: &str = "http://127.0.0.1:11434";

#[derive(Debug, Clone)]
pub(crate) struct OllamaWire {
    pub(crate) base_url: String,
}

impl WireFormat for OllamaWire {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Ollama
    }

    fn fixed_headers(&self, key: Option<&ApiKey>) -> Result<HeaderMap, String> {
        // Ollama itself takes no key; a proxy in front of it may.
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
        // Ollama streams unless told not to.
        body.insert("stream".into(), json!(stream));
        let mut options = Map::new();
        if let Some(max) = request.options.max_output_tokens {
            options.insert("num_predict".into(), json!(max));
        }
        if let Some(temperature) = request.options.temperature {
            options.insert("temperature".into(), json!(temperature));
        }
        if !options.is_empty() {
            body.insert("options".into(), Value::Object(options));
        }
        Ok(PreparedRequest {
            url: format!("{}/api/chat", self.base_url.trim_end_matches('/')),
            body: Value::Object(body),
        })
    }

    fn parse(&self, provider: &str, body: Value) -> Result<ChatResponse, ProviderError> {
        let mut reader = LineReader::new(provider, "");
        let mut events = Vec::new();
        reader.read(&body, &mut events)?;
        if !reader.done {
            return Err(ProviderError::new(
                ErrorKind::MalformedResponse,
                provider,
                format!(
                    "the answer is not marked done: {}",
                    excerpt(&body.to_string())
                ),
            ));
        }
        let (text, tool_calls) = text_and_calls(events);
        Ok(ChatResponse {
            finish: reader.finish_reason(),
            text,
            tool_calls,
            usage: reader.usage,
            model: reader.model,
            signature: None,
        })
    }

    fn classify(&self, status: StatusCode, body: &str) -> Classified {
        let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let message = json
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| body_or_status(status, body));
        Classified::new(kind_for_status(status), message)
    }

    fn framing(&self) -> Framing {
        Framing::Ndjson
    }

    fn decoder(&self, provider: &str, model: &str) -> Box<dyn StreamDecoder> {
        Box::new(OllamaDecoder {
            reader: LineReader::new(provider, model),
        })
    }
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
            let mut object = json!({"role": "assistant", "content": content});
            if !tool_calls.is_empty() {
                object["tool_calls"] = tool_calls
                    .iter()
                    .map(|call| {
                        json!({"function": {"name": call.name, "arguments": call.arguments.to_object()}})
                    })
                    .collect();
            }
            object
        }
        Message::Tool { name, content, .. } => {
            json!({"role": "tool", "content": content, "tool_name": name})
        }
    }
}

/// Reads `/api/chat` objects: the whole answer, or one NDJSON line.
struct LineReader {
    provider: String,
    model: String,
    done: bool,
    done_reason: Option<String>,
    calls_seen: usize,
    usage: Usage,
}

impl LineReader {
    fn new(provider: &str, model: &str) -> Self {
        Self {
            provider: provider.to_owned(),
            model: model.to_owned(),
            done: false,
            done_reason: None,
            calls_seen: 0,
            usage: Usage {
                requests: 1,
                ..Usage::default()
            },
        }
    }

    fn read(&mut self, line: &Value, out: &mut Vec<StreamEvent>) -> Result<(), ProviderError> {
        if let Some(error) = line.get("error") {
            let message = error.as_str().unwrap_or("the server reported an error");
            return Err(ProviderError::new(
                ErrorKind::Server,
                self.provider.as_str(),
                message,
            ));
        }
        if let Some(model) = line.get("model").and_then(Value::as_str) {
            self.model = model.to_owned();
        }
        let message = line.get("message").unwrap_or(&Value::Null);
        if let Some(text) = message.get("content").and_then(Value::as_str)
            && !text.is_empty()
        {
            out.push(StreamEvent::TextDelta {
                text: text.to_owned(),
            });
        }
        for call in message
            .get("tool_calls")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let function = call.get("function").unwrap_or(&Value::Null);
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            // Stable: the same answer gives the same ids, streamed or not.
            let id = call
                .get("id")
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty())
                .map_or_else(|| format!("ollama-call-{}", self.calls_seen), str::to_owned);
            self.calls_seen += 1;
            let arguments = match function.get("arguments") {
                Some(Value::String(raw)) => ToolArguments::parse(raw),
                Some(value) => ToolArguments::Json(value.clone()),
                None => ToolArguments::Json(json!({})),
            };
            out.push(StreamEvent::ToolCall {
                call: ToolCall {
                    id,
                    name,
                    arguments,
                    signature: None,
                },
            });
        }
        if line.get("done").and_then(Value::as_bool) == Some(true) {
            self.done = true;
            self.done_reason = line
                .get("done_reason")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let count = |field: &str| line.get(field).and_then(Value::as_u64).unwrap_or(0);
            self.usage = Usage {
                input_tokens: count("prompt_eval_count"),
                output_tokens: count("eval_count"),
                cache_read_tokens: 0,
                cache_write_tokens: 0,
                requests: 1,
            };
        }
        Ok(())
    }

    fn finish_reason(&self) -> FinishReason {
        match self.done_reason.as_deref() {
            _ if self.calls_seen > 0 => FinishReason::ToolCalls,
            Some("stop") | None => FinishReason::Stop,
            Some("length") => FinishReason::Length,
            Some(other) => FinishReason::Other(other.to_owned()),
        }
    }
}

struct OllamaDecoder {
    reader: LineReader,
}

impl StreamDecoder for OllamaDecoder {
    fn frame(&mut self, frame: Frame, out: &mut Vec<StreamEvent>) -> Result<(), ProviderError> {
        let line = frame_json(&self.reader.provider, &frame)?;
        self.reader.read(&line, out)
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), ProviderError> {
        if !self.reader.done {
            return Err(ProviderError::new(
                ErrorKind::TruncatedStream,
                self.reader.provider.as_str(),
                "the stream ended without its final `done: true` line; the answer and its usage may be incomplete",
            ));
        }
        out.push(StreamEvent::Finished {
            finish: self.reader.finish_reason(),
            usage: self.reader.usage,
            model: self.reader.model.clone(),
            signature: None,
        });
        Ok(())
    }
}
