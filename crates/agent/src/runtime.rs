//! The runtime: agents, their registry and the limits of delegation.

use std::sync::Arc;
use std::time::Duration;

use deputy_registry::{HookStack, Registry, SettingsHandle, ShutdownReport, Spawned, TaskSpec};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::agent::{Agent, Subagents};
use crate::agent_loop::AgentRun;
use crate::error::{BuildError, RunError};
use crate::report::RunOutput;
use crate::run::{RunHandle, RunShared};

/// Nesting allowed below a run when none is configured: the orchestrator's
/// sub-agents are depth 1, theirs depth 2, and theirs depth 3.
pub const DEFAULT_MAX_DEPTH: u32 = 3;
/// Characters of one tool result a model reads before the rest is cut.
pub const DEFAULT_MAX_TOOL_OUTPUT_CHARS: usize = 16_000;
/// Characters of one background result handed over unasked before the rest
/// is cut (the model reads the rest with `get_task_result`).
pub const DEFAULT_MAX_RESULT_CHARS: usize = 4_000;
/// The longest a `get_task_result` wait may last, whatever it asks for.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(300);

/// What happens to an agent's background tasks that are still queued or
/// running when it gives its answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFinish {
    /// Wait for them, hand their results over and let the model go on
    /// (within its `max_turns`).
    #[default]
    Wait,
    /// Cancel them (and their own sub-agents).
    Cancel,
    /// Leave them running; their results stay in the registry for the host
    /// to collect (`Registry::take_finished` with the run's id). For
    /// long-lived hosts such as a server or an interactive chat. Sub-agents
    /// still wait for their own children, whose results would otherwise
    /// have nobody to go to.
    Detach,
}

/// What a host may add to a task it starts with [`Runtime::spawn_task`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskOptions {
    /// Background the agent gets with the task (appended under
    /// `Context:`).
    pub context: Option<String>,
    /// Turns before it must answer, instead of the agent's `max_turns`.
    pub max_turns: Option<u32>,
}

impl OnFinish {
    /// What a sub-agent does with its own pending children when it answers:
    /// nobody collects them after that, so it never detaches them.
    pub(crate) fn for_sub_agents(self) -> Self {
        match self {
            Self::Cancel => Self::Cancel,
            Self::Wait | Self::Detach => Self::Wait,
        }
    }
}

/// The limits a runtime applies to delegation and to what models read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) max_depth: u32,
    pub(crate) on_finish: OnFinish,
    pub(crate) max_tool_output_chars: usize,
    pub(crate) max_result_chars: usize,
    pub(crate) max_wait: Duration,
}

pub(crate) struct RuntimeInner {
    pub(crate) registry: Registry,
    /// The agent set new tasks use; replaced whole by
    /// [`Runtime::replace_agents`]. Running tasks keep the `Arc<Agent>` they
    /// started with.
    agents: RwLock<Arc<[Arc<Agent>]>>,
    pub(crate) limits: Limits,
}

impl RuntimeInner {
    /// The current agent set (a cheap clone; the lock is held only to copy
    /// the pointer).
    pub(crate) fn agents(&self) -> Arc<[Arc<Agent>]> {
        self.agents.read().clone()
    }

    pub(crate) fn agent(&self, name: &str) -> Option<Arc<Agent>> {
        self.agents()
            .iter()
            .find(|agent| &*agent.name == name)
            .cloned()
    }

    /// The agents `agent` may call, in definition order, as the agent set
    /// is now.
    pub(crate) fn subagents_of(&self, agent: &Agent) -> Vec<Arc<Agent>> {
        let agents = self.agents();
        match &agent.subagents {
            Subagents::None => Vec::new(),
            Subagents::AllOthers => agents
                .iter()
                .filter(|other| other.name != agent.name)
                .cloned()
                .collect(),
            Subagents::Only(names) => names
                .iter()
                .filter_map(|name| agents.iter().find(|other| other.name == *name).cloned())
                .collect(),
        }
    }

    /// The agent called `name`, or the error a caller gets for it.
    pub(crate) fn known_agent(&self, name: &str) -> Result<Arc<Agent>, RunError> {
        self.agent(name).ok_or_else(|| RunError::UnknownAgent {
            name: name.to_owned(),
            available: self.agent_names(),
        })
    }

    pub(crate) fn agent_names(&self) -> String {
        self.agents()
            .iter()
            .map(|agent| agent.name.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A task spec for `agent`, with its labels and time limit.
pub(crate) fn spec_for(agent: &Agent, task: String) -> TaskSpec {
    let mut spec = TaskSpec::new(agent.name.clone(), task).labels(agent.labels());
    if let Some(limit) = agent.time_limit {
        spec = spec.time_limit(limit);
    }
    spec
}

/// The task text with `context` appended under `heading`, or as it is when
/// the context is missing or blank.
pub(crate) fn with_context(task: String, heading: &str, context: Option<&str>) -> String {
    match context.map(str::trim) {
        Some(context) if !context.is_empty() => format!("{task}\n\n{heading}:\n{context}"),
        _ => task,
    }
}

/// Agents, the registry that admits their sub-agents, and the limits of
/// delegation. Cheap to clone.
///
/// ```
/// use std::sync::Arc;
/// use deputy_agent::{Agent, Runtime};
/// use deputy_providers::ProviderConfig;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let provider = ProviderConfig::scripted("offline").build(|_| None)?;
/// let runtime = Runtime::builder()
///     .agent(
///         Agent::builder("orchestrator", provider.clone())
///             .system_prompt("Delegate research, then synthesize.")
///             .subagents(["researcher"])
///             .build()?,
///     )
///     .agent(
///         Agent::builder("researcher", provider)
///             .description("Researches one topic.")
///             .build()?,
///     )
///     .build()?;
///
/// let output = runtime.run("orchestrator", "Compare Go and Rust").await?;
/// assert!(output.answer.contains("Synthesis"));
/// assert_eq!(output.report.tasks.len(), 2);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("agents", &self.inner.agents())
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// A builder with the default limits.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// The registry that admits this runtime's tasks.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The agent called `name`, as new tasks get it.
    pub fn agent(&self, name: &str) -> Option<Arc<Agent>> {
        self.inner.agent(name)
    }

    /// Every agent, in the order they were added.
    pub fn agents(&self) -> Arc<[Arc<Agent>]> {
        self.inner.agents()
    }

    /// Replaces the agent set, for a config reload: new runs and new
    /// sub-agents use the new agents at once (model, prompt, limits, who may
    /// call whom); tasks already running keep the agent they started with.
    /// Per-agent caps in the registry follow the new set.
    ///
    /// # Errors
    /// The same checks as [`RuntimeBuilder::build`] (no agents, a name used
    /// twice, an unknown sub-agent); on error nothing changes.
    pub fn replace_agents(&self, agents: Vec<Agent>) -> Result<(), BuildError> {
        let problems = check_agents(&agents);
        if !problems.is_empty() {
            return Err(BuildError { problems });
        }
        let agents: Arc<[Arc<Agent>]> = agents.into_iter().map(Arc::new).collect();
        let old = std::mem::replace(&mut *self.inner.agents.write(), agents.clone());
        for agent in old.iter() {
            if !agents.iter().any(|new| new.name == agent.name) {
                self.inner.registry.set_agent_limit(&agent.name, None);
            }
        }
        for agent in agents.iter() {
            self.inner
                .registry
                .set_agent_limit(&agent.name, agent.max_concurrent);
        }
        Ok(())
    }

    /// What happens to background tasks still running at an answer.
    pub fn on_finish(&self) -> OnFinish {
        self.inner.limits.on_finish
    }

    /// Starts `agent` on `prompt` and returns at once; the handle streams
    /// the run's events and gives its output.
    ///
    /// # Errors
    /// When the agent is unknown, the prompt is empty or the registry is
    /// shutting down.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn start(&self, agent: &str, prompt: impl Into<String>) -> Result<RunHandle, RunError> {
        let agent = self.inner.known_agent(agent)?;
        let prompt = prompt.into();
        if prompt.trim().is_empty() {
            return Err(RunError::EmptyPrompt);
        }
        RunHandle::start(self.inner.clone(), agent, prompt)
    }

    /// Starts `agent` on `task` as a background sub-agent of the host, with
    /// no run around it: the registry admits it under its cap and queue like
    /// any sub-agent (so a full registry refuses it), its SubagentStart and
    /// SubagentStop hooks fire, and its result is read from the registry
    /// (`wait`, `get`, `take_finished(None)`). For servers and other hosts
    /// that hand out work one task at a time.
    ///
    /// # Errors
    /// The agent is unknown, the task is empty, or the registry refused it
    /// (disabled, full with no queue wait, queue full, shutting down).
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn spawn_task(
        &self,
        agent: &str,
        task: &str,
        options: TaskOptions,
    ) -> Result<Spawned, RunError> {
        let agent = self.inner.known_agent(agent)?;
        if task.trim().is_empty() {
            return Err(RunError::EmptyPrompt);
        }
        let text = with_context(task.to_owned(), "Context", options.context.as_deref());
        let spec = spec_for(&agent, text.clone()).background(true);
        let max_turns = options.max_turns.unwrap_or(agent.max_turns);
        let on_finish = self.inner.limits.on_finish.for_sub_agents();
        let runtime = self.inner.clone();
        let spawned = self.inner.registry.spawn(spec, move |context| {
            AgentRun::new(
                runtime,
                agent,
                context,
                RunShared::detached(),
                max_turns,
                on_finish,
            )
            .run(text)
        })?;
        Ok(spawned)
    }

    /// Runs `agent` on `prompt` to its answer.
    ///
    /// # Cancel safety
    /// Dropping the future cancels the run and every sub-agent it started.
    ///
    /// # Errors
    /// When the run cannot start, fails or is cancelled; a run that started
    /// carries its report in the error.
    pub async fn run(&self, agent: &str, prompt: impl Into<String>) -> Result<RunOutput, RunError> {
        self.start(agent, prompt)?.finish().await
    }

    /// Stops taking runs, lets tasks finish for up to `drain`, then cancels
    /// the rest (see [`Registry::shutdown`]).
    ///
    /// # Cancel safety
    /// Not cancel safe, like [`Registry::shutdown`].
    pub async fn shutdown(&self, drain: Duration) -> ShutdownReport {
        self.inner.registry.shutdown(drain).await
    }
}

/// Builds a [`Runtime`].
#[derive(Debug)]
pub struct RuntimeBuilder {
    agents: Vec<Agent>,
    settings: SettingsHandle,
    hooks: HookStack,
    limits: Limits,
    event_capacity: usize,
}

impl Default for RuntimeBuilder {
    fn default() -> Self {
        Self {
            agents: Vec::new(),
            settings: SettingsHandle::default(),
            hooks: HookStack::new(),
            event_capacity: deputy_registry::DEFAULT_EVENT_CAPACITY,
            limits: Limits {
                max_depth: DEFAULT_MAX_DEPTH,
                on_finish: OnFinish::default(),
                max_tool_output_chars: DEFAULT_MAX_TOOL_OUTPUT_CHARS,
                max_result_chars: DEFAULT_MAX_RESULT_CHARS,
                max_wait: DEFAULT_MAX_WAIT,
            },
        }
    }
}

impl RuntimeBuilder {
    /// Adds an agent.
    #[must_use]
    pub fn agent(mut self, agent: Agent) -> Self {
        self.agents.push(agent);
        self
    }

    /// The live `[agent.subagents]` settings the registry follows.
    #[must_use]
    pub fn settings(mut self, settings: SettingsHandle) -> Self {
        self.settings = settings;
        self
    }

    /// The SubagentStart and SubagentStop hooks.
    #[must_use]
    pub fn hooks(mut self, hooks: HookStack) -> Self {
        self.hooks = hooks;
        self
    }

    /// How deep sub-agents may nest (default 3; at least 1).
    #[must_use]
    pub fn max_depth(mut self, max_depth: u32) -> Self {
        self.limits.max_depth = max_depth;
        self
    }

    /// What happens to background tasks still running at an answer.
    #[must_use]
    pub fn on_finish(mut self, on_finish: OnFinish) -> Self {
        self.limits.on_finish = on_finish;
        self
    }

    /// Characters of one tool result before it is cut (default 16 000).
    #[must_use]
    pub fn max_tool_output_chars(mut self, chars: usize) -> Self {
        self.limits.max_tool_output_chars = chars;
        self
    }

    /// Characters of one background result handed over unasked before it
    /// is cut (default 4 000).
    #[must_use]
    pub fn max_result_chars(mut self, chars: usize) -> Self {
        self.limits.max_result_chars = chars;
        self
    }

    /// The longest one `get_task_result` wait may last (default 300 s).
    #[must_use]
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.limits.max_wait = max_wait;
        self
    }

    /// Capacity of the registry's lifecycle event channel (default
    /// [`deputy_registry::DEFAULT_EVENT_CAPACITY`]); a host that reads
    /// every event of a large burst needs more.
    #[must_use]
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity;
        self
    }

    /// Checks the agents and limits and builds the runtime with its own
    /// registry.
    ///
    /// # Errors
    /// Every problem at once: no agents, a name used twice, a sub-agent
    /// that is not defined, or a limit out of range.
    ///
    /// # Panics
    /// Outside a Tokio runtime (the registry starts its housekeeping task).
    pub fn build(self) -> Result<Runtime, BuildError> {
        let mut problems = check_agents(&self.agents);
        let limits = self.limits;
        if limits.max_depth == 0 {
            problems.push(
                "max_depth is 0, so no sub-agent could ever start; use at least 1 (agents without sub-agents never spawn anyway)"
                    .to_owned(),
            );
        }
        if limits.max_tool_output_chars < 256 {
            problems.push(format!(
                "max_tool_output_chars is {}; use at least 256 so tool results stay readable",
                limits.max_tool_output_chars
            ));
        }
        if limits.max_result_chars < 100 {
            problems.push(format!(
                "max_result_chars is {}; use at least 100 so handed-over results stay readable",
                limits.max_result_chars
            ));
        }
        if limits.max_wait.is_zero() {
            problems.push("max_wait is 0; give waits a positive ceiling".to_owned());
        }
        if !problems.is_empty() {
            return Err(BuildError { problems });
        }

        let registry = Registry::builder()
            .settings(self.settings)
            .hooks(self.hooks)
            .event_capacity(self.event_capacity)
            .build();
        for agent in &self.agents {
            registry.set_agent_limit(&agent.name, agent.max_concurrent);
        }
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                registry,
                agents: RwLock::new(self.agents.into_iter().map(Arc::new).collect()),
                limits,
            }),
        })
    }
}

/// What is wrong with an agent set: none at all, a name used twice, a
/// sub-agent that is not defined.
fn check_agents(agents: &[Agent]) -> Vec<String> {
    let mut problems = Vec::new();
    if agents.is_empty() {
        problems.push("no agents are defined; add at least one".to_owned());
    }
    let names: Vec<&str> = agents.iter().map(|agent| &*agent.name).collect();
    for (index, name) in names.iter().enumerate() {
        if names[..index].contains(name) {
            problems.push(format!(
                "agent `{name}` is defined twice; agent names must be unique"
            ));
        }
    }
    for agent in agents {
        if agent.subagents == Subagents::AllOthers && agents.len() < 2 {
            problems.push(format!(
                "agent `{}` may call every other agent (`*`), but there is no other agent; add one or remove `*`",
                agent.name
            ));
        }
        if let Subagents::Only(wanted) = &agent.subagents {
            for name in wanted {
                if !names.contains(&&**name) {
                    problems.push(format!(
                        "agent `{}` lists sub-agent `{name}`, which is not defined; defined agents are {}",
                        agent.name,
                        names.join(", ")
                    ));
                }
            }
        }
    }
    problems
}
