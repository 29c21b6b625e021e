//! The tool-calling loop every agent runs, orchestrator or sub-agent.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use deputy_providers::{
    ChatRequest, ChatResponse, LAST_TURN_HEADER, Message, ProviderError, StreamEvent,
    ToolArguments, ToolCall, ToolSpec,
};
use deputy_registry::{
    CancelOutcome, FailureKind, SpawnError, Spawned, TaskContext, TaskFailure, TaskFilter, TaskId,
    TaskSnapshot,
};
use futures::{FutureExt as _, StreamExt as _};

use crate::agent::Agent;
use crate::delivery::handover_message;
use crate::event::RunEvent;
use crate::format::cut_tool_output;
use crate::run::RunShared;
use crate::runtime::{OnFinish, RuntimeInner, spec_for};
use crate::task_tools;
use crate::tool::{ToolContext, spec_of};

/// One agent working on one task.
pub(crate) struct AgentRun {
    pub(crate) runtime: Arc<RuntimeInner>,
    pub(crate) agent: Arc<Agent>,
    pub(crate) task: TaskContext,
    pub(crate) run: Arc<RunShared>,
    max_turns: u32,
    on_finish: OnFinish,
}

impl AgentRun {
    pub(crate) fn new(
        runtime: Arc<RuntimeInner>,
        agent: Arc<Agent>,
        task: TaskContext,
        run: Arc<RunShared>,
        max_turns: u32,
        on_finish: OnFinish,
    ) -> Self {
        Self {
            runtime,
            agent,
            task,
            run,
            max_turns,
            on_finish,
        }
    }

    fn is_root(&self) -> bool {
        self.task.depth() == 0
    }

    fn may_spawn(&self) -> bool {
        self.agent.subagents.may_spawn()
    }

    /// Calls the model and runs the tools it asks for until it answers, or
    /// until `max_turns`, when one last turn asks for the answer.
    ///
    /// Cancelled by dropping: the registry drops this future at the task's
    /// cancel, so no provider call starts after it.
    pub(crate) async fn run(self, prompt: String) -> Result<String, TaskFailure> {
        let tools = self.tool_specs();
        let mut messages = Vec::new();
        let system = match self.task.additional_context() {
            Some(extra) if self.agent.system_prompt.is_empty() => extra.to_owned(),
            Some(extra) => format!("{}\n\n{extra}", self.agent.system_prompt),
            None => self.agent.system_prompt.clone(),
        };
        if !system.is_empty() {
            messages.push(Message::system(system));
        }
        messages.push(Message::user(prompt));

        let mut turns = 0;
        loop {
            self.hand_over(&mut messages, Vec::new());
            if turns >= self.max_turns {
                return self.last_turn(messages, &tools).await;
            }
            let response = self.call(&messages, &tools).await?;
            turns += 1;
            messages.push(response.to_message());
            if response.tool_calls.is_empty() {
                if self.settle_children(&mut messages).await {
                    continue;
                }
                return Ok(response.text);
            }
            let results = self.run_tools(&response.tool_calls).await;
            messages.extend(results);
        }
    }

    /// The turn after the last one: finished results handed over, the
    /// model told to answer, and no tool it asks for run.
    async fn last_turn(
        &self,
        mut messages: Vec<Message>,
        tools: &[ToolSpec],
    ) -> Result<String, TaskFailure> {
        let results = self.apply_on_finish().await;
        self.hand_over(&mut messages, results);
        messages.push(Message::user(format!(
            "{LAST_TURN_HEADER} You have used all {} of your turns. Tools are no longer run: answer now, with what you have.",
            self.max_turns
        )));
        // The tool definitions stay in the request: some APIs (Anthropic)
        // refuse a conversation with tool calls in it but no tools.
        let response = self.call(&messages, tools).await?;
        if response.text.trim().is_empty() {
            return Err(TaskFailure::other(format!(
                "agent `{}` reached max_turns ({}) without a final answer; raise max_turns or give it a smaller task",
                self.agent.name, self.max_turns
            )));
        }
        Ok(response.text)
    }

    /// The tools this agent offers its model.
    fn tool_specs(&self) -> Vec<ToolSpec> {
        let mut specs: Vec<ToolSpec> = self
            .agent
            .tools
            .iter()
            .map(|tool| spec_of(&**tool))
            .collect();
        // An agent at the depth limit is not offered tools that could only
        // refuse; a call it makes anyway still gets the clear refusal.
        if self.may_spawn() && self.task.depth() < self.runtime.limits.max_depth {
            specs.extend(task_tools::specs(&self.runtime, &self.agent));
        }
        specs
    }

    /// One provider call: budget checked first, text streamed to the run's
    /// events, usage recorded on the task and the run.
    async fn call(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
    ) -> Result<ChatResponse, TaskFailure> {
        if let Some(budget) = self.agent.token_budget {
            let spent = self.task.usage().total_tokens();
            if spent >= budget {
                return Err(TaskFailure::new(
                    FailureKind::Budget,
                    format!(
                        "agent `{}` spent {spent} tokens, its token_budget is {budget}; raise token_budget or give it a smaller task",
                        self.agent.name
                    ),
                ));
            }
        }
        let mut request = ChatRequest::new(messages.to_vec())
            .tools(tools.to_vec())
            .model(self.agent.model());
        if let Some(temperature) = self.agent.temperature {
            request = request.temperature(temperature);
        }
        if let Some(max) = self.agent.max_output_tokens {
            request = request.max_output_tokens(max);
        }
        if self.is_root() {
            self.run.count_root_turn();
        }
        let answered = if self.run.has_reader() {
            self.call_streamed(&request).await
        } else {
            self.agent.provider.chat(&request).await
        };
        let response = match answered {
            Ok(response) => response,
            Err(error) => {
                self.run.emit(RunEvent::Error {
                    task_id: Some(self.task.id()),
                    agent: Some(self.agent.name.clone()),
                    message: error.to_string(),
                });
                return Err(TaskFailure::provider(error.to_string()));
            }
        };
        self.task.record_usage(response.usage);
        self.run
            .add_usage(self.task.id(), &self.agent.name, response.usage);
        Ok(response)
    }

    async fn call_streamed(&self, request: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let mut stream = self.agent.provider.chat_stream(request).await?;
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        while let Some(event) = stream.next().await {
            match event? {
                StreamEvent::TextDelta { text: delta } => {
                    text.push_str(&delta);
                    self.run.emit(RunEvent::TextDelta {
                        task_id: self.task.id(),
                        agent: self.agent.name.clone(),
                        text: delta,
                    });
                }
                StreamEvent::ToolCall { call } => tool_calls.push(call),
                StreamEvent::Finished {
                    finish,
                    usage,
                    model,
                    signature,
                } => {
                    return Ok(ChatResponse {
                        text,
                        tool_calls,
                        finish,
                        usage,
                        model,
                        signature,
                    });
                }
            }
        }
        Err(ProviderError::new(
            deputy_providers::ErrorKind::TruncatedStream,
            self.agent.provider.name(),
            "the stream ended without its final event",
        ))
    }

    /// Runs one turn's tool calls concurrently; results come back in the
    /// order of the calls.
    async fn run_tools(&self, calls: &[ToolCall]) -> Vec<Message> {
        futures::future::join_all(calls.iter().map(|call| self.run_tool(call))).await
    }

    async fn run_tool(&self, call: &ToolCall) -> Message {
        let arguments = match &call.arguments {
            ToolArguments::Json(value) => value.clone(),
            ToolArguments::Malformed { raw, .. } => serde_json::Value::String(raw.clone()),
        };
        self.run.emit(RunEvent::ToolCallStarted {
            task_id: self.task.id(),
            agent: self.agent.name.clone(),
            call_id: call.id.clone(),
            name: call.name.clone(),
            arguments: arguments.clone(),
        });
        let (content, is_error) = match &call.arguments {
            ToolArguments::Malformed { error, .. } => (
                format!(
                    "invalid arguments for `{}`: they are not valid JSON ({error}); call it again with one JSON object",
                    call.name
                ),
                true,
            ),
            ToolArguments::Json(arguments) => match self.dispatch(call, arguments).await {
                Ok(text) => (text, false),
                Err(message) => (message, true),
            },
        };
        let content = cut_tool_output(content, self.runtime.limits.max_tool_output_chars);
        self.run.emit(RunEvent::ToolResult {
            task_id: self.task.id(),
            agent: self.agent.name.clone(),
            call_id: call.id.clone(),
            name: call.name.clone(),
            content: content.clone(),
            is_error,
        });
        Message::tool_result(call, content, is_error)
    }

    async fn dispatch(
        &self,
        call: &ToolCall,
        arguments: &serde_json::Value,
    ) -> Result<String, String> {
        if self.may_spawn() && task_tools::is_task_tool(&call.name) {
            let answer = task_tools::execute(self, &call.name, arguments).await;
            // A task this call saw finish shows as finished before the result.
            self.run.sync_task_events().await;
            return answer.map_err(|error| error.message().to_owned());
        }
        let Some(tool) = self
            .agent
            .tools
            .iter()
            .find(|tool| tool.name() == call.name)
        else {
            return Err(format!(
                "unknown tool `{}`; the tools you can call are {}",
                call.name,
                self.tool_names()
            ));
        };
        let context = ToolContext {
            task_id: self.task.id(),
            agent: self.agent.name.clone(),
            call_id: call.id.clone(),
            cancellation: self.task.cancellation().clone(),
        };
        let executed = AssertUnwindSafe(tool.execute(arguments.clone(), &context))
            .catch_unwind()
            .await;
        match executed {
            Ok(Ok(text)) => Ok(text),
            Ok(Err(error)) => Err(error.message().to_owned()),
            Err(panic) => Err(format!(
                "tool `{}` crashed ({}); try other arguments or another approach",
                call.name,
                panic_text(&*panic)
            )),
        }
    }

    fn tool_names(&self) -> String {
        let names: Vec<String> = self
            .tool_specs()
            .into_iter()
            .map(|spec| spec.name)
            .collect();
        if names.is_empty() {
            "none (answer in text)".to_owned()
        } else {
            names.join(", ")
        }
    }

    // ----- sub-agents ------------------------------------------------------

    /// Starts a sub-agent as a child of this task.
    pub(crate) fn spawn_child(
        &self,
        agent: Arc<Agent>,
        task: String,
        background: bool,
        max_turns: u32,
    ) -> Result<Spawned, SpawnError> {
        let spec = spec_for(&agent, task.clone())
            .parent(self.task.id())
            .background(background);
        let on_finish = self.runtime.limits.on_finish.for_sub_agents();
        let runtime = self.runtime.clone();
        let run = self.run.clone();
        let spawned = self.task.registry().spawn(spec, move |context| {
            AgentRun::new(runtime, agent, context, run, max_turns, on_finish).run(task)
        })?;
        self.run.add_task(spawned.id);
        Ok(spawned)
    }

    /// Children of this task that are still queued or running.
    fn pending_children(&self) -> Vec<TaskId> {
        self.task
            .registry()
            .list(&TaskFilter::all().parent(self.task.id()))
            .into_iter()
            .filter(|child| !child.status.is_terminal())
            .map(|child| child.id)
            .collect()
    }

    /// Applies `on_finish` to children still queued or running; returns the
    /// results this handed over.
    async fn apply_on_finish(&self) -> Vec<TaskSnapshot> {
        if !self.may_spawn() {
            return Vec::new();
        }
        let registry = self.task.registry();
        let mut handed_over = Vec::new();
        for id in self.pending_children() {
            match self.on_finish {
                OnFinish::Wait => {
                    if let Ok(outcome) = registry.wait(id, None).await
                        && outcome.newly_delivered
                    {
                        handed_over.push(outcome.task);
                    }
                }
                OnFinish::Cancel => match registry.cancel(id) {
                    // Settled (at the task's next poll) and consumed here: a
                    // child this agent stopped is not news to hand over.
                    Ok(CancelOutcome::Cancelled { .. }) => {
                        let _settled = registry.wait(id, None).await;
                    }
                    // It finished first: its result is news.
                    Ok(CancelOutcome::AlreadyFinished { .. }) => {
                        if let Ok(outcome) = registry.wait(id, Some(Duration::ZERO)).await
                            && outcome.newly_delivered
                        {
                            handed_over.push(outcome.task);
                        }
                    }
                    Err(_unknown) => {}
                },
                OnFinish::Detach => {}
            }
        }
        handed_over
    }

    /// After an answer: applies `on_finish`, then hands over every result
    /// not seen yet. Returns whether it handed any over, in which case the
    /// model goes on.
    async fn settle_children(&self, messages: &mut Vec<Message>) -> bool {
        if !self.may_spawn() {
            return false;
        }
        let results = self.apply_on_finish().await;
        self.hand_over(messages, results)
    }

    /// Hands `results` (already marked delivered) and every other finished
    /// result of this task's children not seen yet to the model, in one
    /// message; returns whether there was anything to hand over.
    fn hand_over(&self, messages: &mut Vec<Message>, mut results: Vec<TaskSnapshot>) -> bool {
        if self.may_spawn() {
            results.extend(self.task.registry().take_finished(Some(self.task.id())));
        }
        if results.is_empty() {
            return false;
        }
        messages.push(handover_message(
            &results,
            self.runtime.limits.max_result_chars,
        ));
        true
    }
}

/// A panic's message, if it has one.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}
