//! Test providers that answer from closures and record what they were asked.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deputy_agent::{Agent, RunEvent, RunHandle, Tool, ToolContext, ToolError};
use deputy_providers::{
    ChatRequest, ChatResponse, ChatStream, ErrorKind, FinishReason, Message, Provider,
    ProviderError, ProviderKind, StreamEvent, TASK_RESULTS_HEADER, ToolCall, Usage,
};
use futures::StreamExt as _;
use parking_lot::Mutex;
use serde_json::{Value, json};

type Reply = dyn Fn(&ChatRequest) -> Result<ChatResponse, ProviderError> + Send + Sync;

/// A provider whose replies come from a closure, after `latency`.
pub(crate) struct FnProvider {
    name: String,
    latency: Duration,
    reply: Box<Reply>,
    requests: Mutex<Vec<ChatRequest>>,
    calls: AtomicUsize,
}

impl std::fmt::Debug for FnProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnProvider")
            .field("name", &self.name)
            .finish()
    }
}

impl FnProvider {
    pub(crate) fn new(
        name: &str,
        latency: Duration,
        reply: impl Fn(&ChatRequest) -> Result<ChatResponse, ProviderError> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            latency,
            reply: Box::new(reply),
            requests: Mutex::new(Vec::new()),
            calls: AtomicUsize::new(0),
        })
    }

    /// Calls that started (including ones dropped before they answered).
    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Requests that were answered, in order.
    pub(crate) fn requests(&self) -> Vec<ChatRequest> {
        self.requests.lock().clone()
    }
}

#[async_trait]
impl Provider for FnProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> ProviderKind {
        ProviderKind::Scripted
    }

    fn default_model(&self) -> &str {
        "test-model"
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.latency).await;
        self.requests.lock().push(request.clone());
        (self.reply)(request)
    }

    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream, ProviderError> {
        let response = self.chat(request).await?;
        let mut events = vec![Ok(StreamEvent::TextDelta {
            text: response.text.clone(),
        })];
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

/// Ten input and five output tokens, one request.
pub(crate) fn usage() -> Usage {
    Usage {
        input_tokens: 10,
        output_tokens: 5,
        requests: 1,
        ..Usage::default()
    }
}

/// A final answer.
pub(crate) fn answer(text: impl Into<String>) -> Result<ChatResponse, ProviderError> {
    Ok(ChatResponse {
        text: text.into(),
        tool_calls: Vec::new(),
        finish: FinishReason::Stop,
        usage: usage(),
        model: "test-model".to_owned(),
        signature: None,
    })
}

/// A turn that calls tools; call ids are unique within the conversation.
pub(crate) fn call_tools(
    request: &ChatRequest,
    calls: Vec<(&str, Value)>,
) -> Result<ChatResponse, ProviderError> {
    let turn = assistant_turns(request);
    Ok(ChatResponse {
        text: String::new(),
        tool_calls: calls
            .into_iter()
            .enumerate()
            .map(|(index, (name, arguments))| {
                ToolCall::new(format!("call-{turn}-{index}"), name, arguments)
            })
            .collect(),
        finish: FinishReason::ToolCalls,
        usage: usage(),
        model: "test-model".to_owned(),
        signature: None,
    })
}

/// A provider error of `kind`.
pub(crate) fn provider_error(
    kind: ErrorKind,
    message: &str,
) -> Result<ChatResponse, ProviderError> {
    Err(ProviderError::new(kind, "test", message))
}

pub(crate) fn assistant_turns(request: &ChatRequest) -> usize {
    request
        .messages
        .iter()
        .filter(|message| matches!(message, Message::Assistant { .. }))
        .count()
}

/// The results of the last turn's tool calls, parsed as JSON when they are.
pub(crate) fn last_results(request: &ChatRequest) -> Vec<(String, Value, bool)> {
    let after = request
        .messages
        .iter()
        .rposition(|message| matches!(message, Message::Assistant { .. }))
        .map_or(0, |at| at + 1);
    request.messages[after..]
        .iter()
        .filter_map(|message| match message {
            Message::Tool {
                name,
                content,
                is_error,
                ..
            } => Some((
                name.clone(),
                serde_json::from_str(content).unwrap_or_else(|_| Value::String(content.clone())),
                *is_error,
            )),
            _ => None,
        })
        .collect()
}

/// A sub-agent that answers "done: <its task>" after `latency`.
pub(crate) fn worker(latency: Duration) -> Arc<FnProvider> {
    FnProvider::new("worker", latency, |request| {
        answer(format!("done: {}", prompt(request)))
    })
}

/// A `spawn_agent` call that starts `agent` on `task` in the background.
pub(crate) fn background_spawn(agent: &str, task: &str) -> (&'static str, Value) {
    (
        "spawn_agent",
        json!({"agent": agent, "task": task, "background": true}),
    )
}

/// A `get_task_result` call that waits for `task_id` without a limit.
pub(crate) fn wait_for(task_id: impl serde::Serialize) -> (&'static str, Value) {
    ("get_task_result", json!({"task_id": task_id, "wait": true}))
}

/// Every message that handed background results over.
pub(crate) fn handovers(request: &ChatRequest) -> Vec<String> {
    request
        .messages
        .iter()
        .filter_map(|message| match message {
            Message::User { content } if content.starts_with(TASK_RESULTS_HEADER) => {
                Some(content.clone())
            }
            _ => None,
        })
        .collect()
}

/// The task prompt a request started from (its first user message).
pub(crate) fn prompt(request: &ChatRequest) -> String {
    request
        .messages
        .iter()
        .find_map(|message| match message {
            Message::User { content } => Some(content.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// An agent on `provider`.
pub(crate) fn agent(name: &str, provider: Arc<FnProvider>) -> deputy_agent::AgentBuilder {
    Agent::builder(name, provider)
}

/// Every event of a run, up to and including its last.
pub(crate) async fn collect_events(mut run: RunHandle) -> Vec<RunEvent> {
    let mut events = Vec::new();
    while let Some(event) = run.next().await {
        events.push(event);
    }
    events
}

/// Wraps any provider and records the requests it answered.
#[derive(Debug)]
pub(crate) struct Recorder {
    inner: Arc<dyn Provider>,
    requests: Mutex<Vec<ChatRequest>>,
}

impl Recorder {
    pub(crate) fn new(inner: Arc<dyn Provider>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            requests: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn requests(&self) -> Vec<ChatRequest> {
        self.requests.lock().clone()
    }
}

#[async_trait]
impl Provider for Recorder {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn kind(&self) -> ProviderKind {
        self.inner.kind()
    }

    fn default_model(&self) -> &str {
        self.inner.default_model()
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        self.requests.lock().push(request.clone());
        self.inner.chat(request).await
    }

    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream, ProviderError> {
        self.requests.lock().push(request.clone());
        self.inner.chat_stream(request).await
    }
}

/// Live settings with this cap and queue wait.
pub(crate) fn settings(max_concurrent: i64, queue_wait_ms: i64) -> deputy_registry::SettingsHandle {
    let raw = deputy_registry::RawSubagentSettings {
        max_concurrent: Some(max_concurrent),
        queue_wait_ms: Some(queue_wait_ms),
        ..Default::default()
    };
    deputy_registry::SettingsHandle::new(deputy_registry::SubagentSettings::from_raw(raw).unwrap())
}

/// The task ids the last turn's `spawn_agent` calls returned.
pub(crate) fn spawned_ids(request: &ChatRequest) -> Vec<String> {
    last_results(request)
        .into_iter()
        .filter(|(name, _, is_error)| name == "spawn_agent" && !is_error)
        .filter_map(|(_, value, _)| value["task_id"].as_str().map(str::to_owned))
        .collect()
}

/// The events of one kind, by a predicate.
pub(crate) fn count(events: &[RunEvent], wanted: impl Fn(&RunEvent) -> bool) -> usize {
    events.iter().filter(|event| wanted(event)).count()
}

/// A user tool that waits `ms` milliseconds (of tokio time) and says so.
#[derive(Debug)]
pub(crate) struct SleepTool;

#[async_trait]
impl deputy_agent::Tool for SleepTool {
    fn name(&self) -> &str {
        "sleep"
    }

    fn description(&self) -> &str {
        "Waits `ms` milliseconds."
    }

    fn parameters(&self) -> Value {
        serde_json::json!({
            "type": "object",
            "properties": {"ms": {"type": "integer", "minimum": 0}},
            "required": ["ms"]
        })
    }

    async fn execute(
        &self,
        arguments: Value,
        _context: &deputy_agent::ToolContext,
    ) -> Result<String, deputy_agent::ToolError> {
        let ms = arguments["ms"]
            .as_u64()
            .ok_or_else(|| deputy_agent::ToolError::invalid_arguments("`ms` must be a number"))?;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(format!("slept {ms} ms"))
    }
}

/// The `sleep` tool, ready to add to an agent.
pub(crate) fn sleep_tool() -> Arc<dyn deputy_agent::Tool> {
    Arc::new(SleepTool)
}

type ToolFn = dyn Fn(&Value) -> Result<String, ToolError> + Send + Sync;

/// A user tool whose result comes from a closure, after sleeping
/// `sleep_ms` (an argument) on tokio time. Counts its calls and records
/// when each started.
pub(crate) struct FnTool {
    name: &'static str,
    run: Box<ToolFn>,
    calls: AtomicUsize,
    pub(crate) started: Mutex<Vec<tokio::time::Instant>>,
}

impl std::fmt::Debug for FnTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnTool").field("name", &self.name).finish()
    }
}

impl FnTool {
    pub(crate) fn new(
        name: &'static str,
        run: impl Fn(&Value) -> Result<String, ToolError> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            name,
            run: Box::new(run),
            calls: AtomicUsize::new(0),
            started: Mutex::new(Vec::new()),
        })
    }

    /// Answers `found <q>`.
    pub(crate) fn lookup(name: &'static str) -> Arc<Self> {
        Self::new(name, |arguments| {
            Ok(format!("found {}", arguments["q"].as_str().unwrap_or("?")))
        })
    }

    /// Answers its `text` argument.
    pub(crate) fn echo() -> Arc<Self> {
        Self::new("echo", |arguments| {
            Ok(arguments["text"].as_str().unwrap_or_default().to_owned())
        })
    }

    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Tool for FnTool {
    fn name(&self) -> &str {
        self.name
    }

    fn description(&self) -> &str {
        "A test tool."
    }

    fn parameters(&self) -> Value {
        json!({"type": "object"})
    }

    async fn execute(&self, arguments: Value, _context: &ToolContext) -> Result<String, ToolError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.started.lock().push(tokio::time::Instant::now());
        if let Some(ms) = arguments["sleep_ms"].as_u64() {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        (self.run)(&arguments)
    }
}
