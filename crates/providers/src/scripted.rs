//! The offline backend: replies come from a script, or from a built-in demo
//! behaviour, never from a model. No network is touched.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deputy_registry::Usage;
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{ErrorKind, ProviderError};
use crate::message::{ChatRequest, ChatResponse, FinishReason, Message, ToolCall};
use crate::provider::{Provider, ProviderKind};
use crate::stream::{ChatStream, StreamEvent};

/// The tool an orchestrator launches sub-agents with; the demo behaviour
/// orchestrates when it is offered.
pub const SPAWN_AGENT_TOOL: &str = "spawn_agent";
/// The tool that collects a sub-agent's result.
pub const GET_TASK_RESULT_TOOL: &str = "get_task_result";

/// The first words of the message in which the agent runtime hands
/// finished background results to a model, one `<task id=".." agent=".."
/// status="..">` block each. The demo behaviour reads such messages as
/// results, not as a new prompt.
pub const TASK_RESULTS_HEADER: &str = "[background task results]";

/// The first words of the message in which the agent runtime tells a model
/// that its turns are used up and it must answer now. The demo behaviour
/// answers it with its synthesis.
pub const LAST_TURN_HEADER: &str = "[last turn]";

/// Every scripted reply starts with this, so nobody mistakes it for a
/// model's answer.
pub const OFFLINE_MARK: &str = "[offline: scripted provider, no model was called]";

/// One scripted reply, as config and script files write it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptTurn {
    /// A regex the last user message must match for this turn to be used.
    #[serde(default)]
    pub when: Option<String>,
    /// The reply text.
    #[serde(default)]
    pub text: Option<String>,
    /// Tool calls to make.
    #[serde(default)]
    pub tool_calls: Vec<ScriptToolCall>,
    /// Token counts to report (default: an estimate of about four
    /// characters per token).
    #[serde(default)]
    pub usage: Option<ScriptUsage>,
}

/// A scripted tool call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptToolCall {
    /// The tool.
    pub name: String,
    /// Its arguments.
    #[serde(default = "empty_object")]
    pub arguments: Value,
}

fn empty_object() -> Value {
    json!({})
}

/// Scripted token counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptUsage {
    /// Input tokens.
    #[serde(default)]
    pub input_tokens: u64,
    /// Output tokens.
    #[serde(default)]
    pub output_tokens: u64,
    /// Cache-read tokens.
    #[serde(default)]
    pub cache_read_tokens: u64,
    /// Cache-write tokens.
    #[serde(default)]
    pub cache_write_tokens: u64,
}

/// A script file: `{"turns": [...]}` in JSON, or `[[turns]]` in TOML.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptFile {
    turns: Vec<ScriptTurn>,
}

/// A checked script: its regexes compiled.
#[derive(Debug, Clone)]
pub struct Script {
    turns: Vec<(Option<Regex>, ScriptTurn)>,
}

impl Script {
    /// Checks `turns`.
    ///
    /// # Errors
    /// When a `when` is not a valid regex, or a turn has neither text nor
    /// tool calls.
    pub fn new(turns: Vec<ScriptTurn>) -> Result<Self, String> {
        let mut checked = Vec::with_capacity(turns.len());
        for (index, turn) in turns.into_iter().enumerate() {
            if turn.text.is_none() && turn.tool_calls.is_empty() {
                return Err(format!(
                    "script turn {} has neither `text` nor `tool_calls`; give it one",
                    index + 1
                ));
            }
            let regex = turn
                .when
                .as_deref()
                .map(Regex::new)
                .transpose()
                .map_err(|error| {
                    format!(
                        "script turn {}: `when` is not a valid regex: {error}",
                        index + 1
                    )
                })?;
            checked.push((regex, turn));
        }
        Ok(Self { turns: checked })
    }

    /// Reads a script file, JSON or TOML by its extension.
    ///
    /// # Errors
    /// When the file cannot be read or parsed, or its turns are invalid.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read script file {}: {error}", path.display()))?;
        let file: ScriptFile = match path.extension().and_then(|extension| extension.to_str()) {
            Some("toml") => toml::from_str(&text)
                .map_err(|error| format!("script file {}: {error}", path.display()))?,
            _ => serde_json::from_str(&text)
                .map_err(|error| format!("script file {}: {error}", path.display()))?,
        };
        Self::new(file.turns)
    }

    /// The turn for a call: the first one, counting from the conversation's
    /// own turn number, whose `when` matches the last user message.
    fn pick(&self, request: &ChatRequest) -> Result<&ScriptTurn, String> {
        let turn_number = request.assistant_turns();
        let last_user = request.last_user_text().unwrap_or_default();
        self.turns
            .iter()
            .skip(turn_number)
            .find(|(when, _)| when.as_ref().is_none_or(|regex| regex.is_match(last_user)))
            .map(|(_, turn)| turn)
            .ok_or_else(|| {
                format!(
                    "the script has no turn for reply {} of this conversation (it has {} turns, none left that match the last user message); add a turn",
                    turn_number + 1,
                    self.turns.len()
                )
            })
    }
}

/// The offline backend.
#[derive(Clone)]
pub struct ScriptedProvider {
    name: Arc<str>,
    model: String,
    script: Option<Arc<Script>>,
    latency: Duration,
}

impl fmt::Debug for ScriptedProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptedProvider")
            .field("name", &self.name)
            .field("model", &self.model)
            .field(
                "scripted_turns",
                &self.script.as_ref().map(|script| script.turns.len()),
            )
            .field("latency", &self.latency)
            .finish()
    }
}

impl ScriptedProvider {
    /// The model name scripted replies report when none is configured.
    pub const DEFAULT_MODEL: &'static str = "scripted";

    /// A provider with the built-in demo behaviour and no latency.
    pub fn demo(name: impl Into<Arc<str>>) -> Self {
        Self {
            name: name.into(),
            model: Self::DEFAULT_MODEL.to_owned(),
            script: None,
            latency: Duration::ZERO,
        }
    }

    /// Replies from `script` instead of the demo behaviour.
    #[must_use]
    pub fn with_script(mut self, script: Script) -> Self {
        self.script = Some(Arc::new(script));
        self
    }

    /// Waits this long before each reply, so tasks take real time.
    #[must_use]
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Reports this model name.
    #[must_use]
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }

    fn reply(&self, request: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let model = request
            .options
            .model
            .clone()
            .unwrap_or_else(|| self.model.clone());
        let (text, tool_calls, scripted_usage) = match &self.script {
            Some(script) => {
                let turn = script.pick(request).map_err(|message| {
                    ProviderError::new(ErrorKind::BadRequest, self.name.clone(), message)
                })?;
                let calls = turn
                    .tool_calls
                    .iter()
                    .enumerate()
                    .map(|(index, call)| {
                        ToolCall::new(
                            call_id(request, index),
                            call.name.clone(),
                            call.arguments.clone(),
                        )
                    })
                    .collect();
                (turn.text.clone().unwrap_or_default(), calls, turn.usage)
            }
            None => {
                let (text, calls) = demo_reply(request);
                (text, calls, None)
            }
        };
        let usage = match scripted_usage {
            Some(usage) => Usage {
                input_tokens: usage.input_tokens,
                output_tokens: usage.output_tokens,
                cache_read_tokens: usage.cache_read_tokens,
                cache_write_tokens: usage.cache_write_tokens,
                requests: 1,
            },
            None => estimate_usage(request, &text, &tool_calls),
        };
        let finish = if tool_calls.is_empty() {
            FinishReason::Stop
        } else {
            FinishReason::ToolCalls
        };
        Ok(ChatResponse {
            text,
            tool_calls,
            finish,
            usage,
            model,
            signature: None,
        })
    }
}

#[async_trait]
impl Provider for ScriptedProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> ProviderKind {
        ProviderKind::Scripted
    }

    fn default_model(&self) -> &str {
        &self.model
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        tokio::time::sleep(self.latency).await;
        self.reply(request)
    }

    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream, ProviderError> {
        tokio::time::sleep(self.latency).await;
        let response = self.reply(request)?;
        let mut events: Vec<Result<StreamEvent, ProviderError>> = Vec::new();
        // Word by word, as a model would stream it.
        for word in response.text.split_inclusive(' ') {
            events.push(Ok(StreamEvent::TextDelta {
                text: word.to_owned(),
            }));
        }
        for call in response.tool_calls {
            events.push(Ok(StreamEvent::ToolCall { call }));
        }
        events.push(Ok(StreamEvent::Finished {
            finish: response.finish,
            usage: response.usage,
            model: response.model,
            signature: None,
        }));
        Ok(ChatStream::new(futures::stream::iter(events)))
    }
}

/// Ids unique within a conversation: the reply number and the position.
fn call_id(request: &ChatRequest, index: usize) -> String {
    format!("scripted-{}-{index}", request.assistant_turns() + 1)
}

/// About four characters a token: enough for limits and billing to have
/// something to count, and said to be an estimate in the docs.
fn estimate_usage(request: &ChatRequest, text: &str, calls: &[ToolCall]) -> Usage {
    let prompt_chars: usize = request
        .messages
        .iter()
        .map(|message| match message {
            Message::System { content } | Message::User { content } => content.len(),
            Message::Assistant { content, .. } => content.len(),
            Message::Tool { content, .. } => content.len(),
        })
        .sum();
    let output_chars = text.len()
        + calls
            .iter()
            .map(|call| call.name.len() + call.arguments.to_json_string().len())
            .sum::<usize>();
    let tokens = |chars: usize| u64::try_from(chars.div_ceil(4)).unwrap_or(u64::MAX);
    Usage {
        input_tokens: tokens(prompt_chars),
        output_tokens: tokens(output_chars),
        cache_read_tokens: 0,
        cache_write_tokens: 0,
        requests: 1,
    }
}

/// The built-in behaviour. With `spawn_agent` on offer it orchestrates:
/// one background sub-agent per topic of the prompt, then a wait for each
/// result, then a synthesis of them. Without it, a short deterministic
/// note about the task.
fn demo_reply(request: &ChatRequest) -> (String, Vec<ToolCall>) {
    let is_prompt = |message: &Message| {
        matches!(message, Message::User { content }
            if !content.starts_with(TASK_RESULTS_HEADER) && !content.starts_with(LAST_TURN_HEADER))
    };
    let last_turn = matches!(request.messages.last(),
        Some(Message::User { content }) if content.starts_with(LAST_TURN_HEADER));
    let prompt_at = request.messages.iter().rposition(is_prompt);
    let prompt = prompt_at
        .and_then(|at| match &request.messages[at] {
            Message::User { content } => Some(content.trim().to_owned()),
            _ => None,
        })
        .unwrap_or_default();
    let orchestrates = request
        .tools
        .iter()
        .any(|tool| tool.name == SPAWN_AGENT_TOOL);
    if !orchestrates {
        return (note_on(&prompt), Vec::new());
    }

    // What happened since the prompt: the calls made, their results, and
    // results the runtime handed over unasked.
    let since_prompt = prompt_at.map_or(&request.messages[..], |at| &request.messages[at + 1..]);
    let mut spawned = Vec::new();
    let mut collected: Vec<(Option<String>, String, bool)> = Vec::new();
    let mut asked_for_results = false;
    let mut call_names = std::collections::HashMap::new();
    for message in since_prompt {
        match message {
            Message::Assistant { tool_calls, .. } => {
                for call in tool_calls {
                    call_names.insert(call.id.clone(), call.name.clone());
                    asked_for_results |= call.name == GET_TASK_RESULT_TOOL;
                }
            }
            Message::Tool {
                call_id,
                content,
                is_error,
                ..
            } => match call_names.get(call_id).map(String::as_str) {
                Some(SPAWN_AGENT_TOOL) if !is_error => {
                    if let Some(task_id) = json_field(content, "task_id") {
                        spawned.push(task_id);
                    }
                }
                Some(GET_TASK_RESULT_TOOL) => {
                    let body = ["result", "output", "error"]
                        .iter()
                        .find_map(|field| json_field(content, field))
                        .unwrap_or_else(|| content.clone());
                    let failed = *is_error
                        || json_field(content, "status")
                            .is_some_and(|status| status != "completed");
                    collected.push((json_field(content, "task_id"), body, failed));
                }
                _ => {}
            },
            Message::User { content } => collected.extend(handed_over(content)),
            Message::System { .. } => {}
        }
    }

    if last_turn {
        let results: Vec<(String, bool)> = collected
            .into_iter()
            .map(|(_, body, failed)| (body, failed))
            .collect();
        return (synthesis(&prompt, &results), Vec::new());
    }
    if call_names.is_empty() {
        let calls = topics(&prompt)
            .into_iter()
            .enumerate()
            .map(|(index, topic)| {
                ToolCall::new(
                    call_id(request, index),
                    SPAWN_AGENT_TOOL,
                    json!({
                        "agent": "auto",
                        "task": format!("Write a short briefing on {topic} for this request: {prompt}"),
                        "background": true,
                    }),
                )
            })
            .collect::<Vec<_>>();
        let text = format!(
            "{OFFLINE_MARK} Starting {} background sub-agent{} for: {prompt}",
            calls.len(),
            if calls.len() == 1 { "" } else { "s" }
        );
        return (text, calls);
    }
    let missing: Vec<&String> = spawned
        .iter()
        .filter(|task_id| {
            !collected
                .iter()
                .any(|(id, _, _)| id.as_deref() == Some(task_id.as_str()))
        })
        .collect();
    if !asked_for_results && !missing.is_empty() {
        let calls = missing
            .iter()
            .enumerate()
            .map(|(index, task_id)| {
                ToolCall::new(
                    call_id(request, index),
                    GET_TASK_RESULT_TOOL,
                    json!({"task_id": task_id, "wait": true}),
                )
            })
            .collect();
        return (
            format!("{OFFLINE_MARK} Waiting for the sub-agents' results."),
            calls,
        );
    }
    let results: Vec<(String, bool)> = collected
        .into_iter()
        .map(|(_, body, failed)| (body, failed))
        .collect();
    (synthesis(&prompt, &results), Vec::new())
}

/// The results in a message of handed-over background results: task id,
/// body, and whether the task did not complete.
fn handed_over(content: &str) -> Vec<(Option<String>, String, bool)> {
    if !content.starts_with(TASK_RESULTS_HEADER) {
        return Vec::new();
    }
    static BLOCK: std::sync::LazyLock<Option<Regex>> = std::sync::LazyLock::new(|| {
        Regex::new(r#"(?s)<task id="([^"]*)"[^>]*? status="([^"]*)"[^>]*>\n(.*?)\n</task>"#).ok()
    });
    let Some(block) = BLOCK.as_ref() else {
        return Vec::new();
    };
    block
        .captures_iter(content)
        .map(|found| {
            (
                Some(found[1].to_owned()),
                found[3].to_owned(),
                &found[2] != "completed",
            )
        })
        .collect()
}

fn note_on(task: &str) -> String {
    let words: Vec<&str> = task.split_whitespace().collect();
    let mut terms: Vec<&str> = words
        .iter()
        .map(|word| word.trim_matches(|c: char| !c.is_alphanumeric()))
        .filter(|word| word.chars().count() > 3 || word.starts_with(char::is_uppercase))
        .collect();
    terms.dedup();
    terms.truncate(5);
    format!(
        "{OFFLINE_MARK} A note on \"{task}\": the task has {} words; its key terms are {}. A real model would answer it here.",
        words.len(),
        if terms.is_empty() {
            "none".to_owned()
        } else {
            terms.join(", ")
        }
    )
}

fn synthesis(prompt: &str, collected: &[(String, bool)]) -> String {
    let mut text = format!("{OFFLINE_MARK} Synthesis for \"{prompt}\"");
    if collected.is_empty() {
        text.push_str(": no sub-agent result came back.");
        return text;
    }
    text.push_str(&format!(
        ", from {} sub-agent result{}:",
        collected.len(),
        if collected.len() == 1 { "" } else { "s" }
    ));
    for (index, (body, is_error)) in collected.iter().enumerate() {
        let label = if *is_error { " (failed)" } else { "" };
        text.push_str(&format!("\n{}.{label} {}", index + 1, body.trim()));
    }
    text
}

/// A string field of a JSON object written as text.
fn json_field(text: &str, field: &str) -> Option<String> {
    let value: Value = serde_json::from_str(text).ok()?;
    value.get(field)?.as_str().map(str::to_owned)
}

/// The topics of a prompt: "Compare Go and Rust" gives Go and Rust. Topics
/// are split at commas, semicolons and the words "and", "vs" and "versus";
/// a leading verb such as "compare" is dropped.
pub fn topics(prompt: &str) -> Vec<String> {
    const LEADING_VERBS: [&str; 8] = [
        "compare",
        "contrast",
        "research",
        "summarize",
        "summarise",
        "evaluate",
        "review",
        "explain",
    ];
    let mut rest = prompt.trim().trim_end_matches(['.', '?', '!']);
    if let Some((first, after)) = rest.split_once(char::is_whitespace)
        && LEADING_VERBS.contains(&first.to_ascii_lowercase().as_str())
    {
        rest = after;
    }
    let mut topics = Vec::new();
    for piece in rest.split([',', ';']) {
        let mut words: Vec<&str> = Vec::new();
        for word in piece.split_whitespace() {
            if matches!(
                word.to_ascii_lowercase().as_str(),
                "and" | "vs" | "vs." | "versus"
            ) {
                topics.push(words.join(" "));
                words.clear();
            } else {
                words.push(word);
            }
        }
        topics.push(words.join(" "));
    }
    topics.retain(|topic| !topic.is_empty());
    topics.truncate(8);
    if topics.is_empty() {
        vec![prompt.trim().to_owned()]
    } else {
        topics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_split_on_and_commas_and_versus() {
        assert_eq!(topics("Compare Go and Rust"), ["Go", "Rust"]);
        assert_eq!(topics("compare Go, Rust and Zig."), ["Go", "Rust", "Zig"]);
        assert_eq!(topics("Python vs Ruby"), ["Python", "Ruby"]);
        assert_eq!(topics("Write a haiku"), ["Write a haiku"]);
        assert_eq!(topics(""), [""]);
    }
}
