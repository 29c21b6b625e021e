//! What an agent is: its model, its instructions, its tools and its limits.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use deputy_providers::Provider;
use deputy_registry::{AgentCandidate, TaskLabels};

use crate::error::AgentError;
use crate::task_tools::is_task_tool;
use crate::tool::Tool;

/// Turns an agent may take when its config names no limit.
pub const DEFAULT_MAX_TURNS: u32 = 20;

/// The sub-agents an agent may call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Subagents {
    /// None: the agent gets no task tools and cannot spawn.
    #[default]
    None,
    /// Only these agents.
    Only(Vec<Arc<str>>),
    /// Every other agent of the runtime (`"*"` in config).
    AllOthers,
}

impl Subagents {
    /// Whether the agent may spawn at all.
    pub fn may_spawn(&self) -> bool {
        match self {
            Self::None => false,
            Self::Only(names) => !names.is_empty(),
            Self::AllOthers => true,
        }
    }
}

/// One agent: a model with instructions, tools and limits.
///
/// Built with [`Agent::builder`]; cheap to share (`Arc<Agent>`).
pub struct Agent {
    pub(crate) name: Arc<str>,
    pub(crate) description: String,
    pub(crate) provider: Arc<dyn Provider>,
    pub(crate) model: Option<String>,
    pub(crate) system_prompt: String,
    pub(crate) temperature: Option<f32>,
    pub(crate) max_output_tokens: Option<u32>,
    pub(crate) max_turns: u32,
    pub(crate) tools: Vec<Arc<dyn Tool>>,
    pub(crate) capabilities: Vec<String>,
    pub(crate) priority: i32,
    pub(crate) max_concurrent: Option<usize>,
    pub(crate) time_limit: Option<Duration>,
    pub(crate) token_budget: Option<u64>,
    pub(crate) subagents: Subagents,
    /// Set by [`AgentBuilder::build`]: an agent never changes after it,
    /// and every spawn needs them.
    labels: TaskLabels,
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("name", &self.name)
            .field("provider", &self.provider.name())
            .field("model", &self.model())
            .field("max_turns", &self.max_turns)
            .field(
                "tools",
                &self
                    .tools
                    .iter()
                    .map(|tool| tool.name())
                    .collect::<Vec<_>>(),
            )
            .field("subagents", &self.subagents)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// A builder for an agent called `name` that runs on `provider`.
    pub fn builder(name: impl Into<Arc<str>>, provider: Arc<dyn Provider>) -> AgentBuilder {
        AgentBuilder {
            agent: Agent {
                name: name.into(),
                description: String::new(),
                provider,
                model: None,
                system_prompt: String::new(),
                temperature: None,
                max_output_tokens: None,
                max_turns: DEFAULT_MAX_TURNS,
                tools: Vec::new(),
                capabilities: Vec::new(),
                priority: 0,
                max_concurrent: None,
                time_limit: None,
                token_budget: None,
                subagents: Subagents::None,
                labels: TaskLabels::default(),
            },
        }
    }

    /// Its name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// What it is for, as orchestrators read it in `spawn_agent`.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Its provider.
    pub fn provider(&self) -> &Arc<dyn Provider> {
        &self.provider
    }

    /// The model it asks for: its own, or its provider's default.
    pub fn model(&self) -> &str {
        self.model
            .as_deref()
            .unwrap_or_else(|| self.provider.default_model())
    }

    /// Turns it may take before it must answer.
    pub fn max_turns(&self) -> u32 {
        self.max_turns
    }

    /// Its own tools (the task tools come on top when it may spawn).
    pub fn tools(&self) -> &[Arc<dyn Tool>] {
        &self.tools
    }

    /// The sub-agents it may call.
    pub fn subagents(&self) -> &Subagents {
        &self.subagents
    }

    /// Its cap on tasks running at once, if it has one.
    pub fn max_concurrent(&self) -> Option<usize> {
        self.max_concurrent
    }

    /// The time limit of each of its tasks.
    pub fn time_limit(&self) -> Option<Duration> {
        self.time_limit
    }

    /// The tokens one of its tasks may spend before it must stop.
    pub fn token_budget(&self) -> Option<u64> {
        self.token_budget
    }

    /// The provider and model labels its tasks carry into events, hooks
    /// and metrics (and that billing prices them by).
    pub fn labels(&self) -> TaskLabels {
        self.labels.clone()
    }

    /// How the selector sees it.
    pub fn candidate(&self) -> AgentCandidate {
        AgentCandidate::new(self.name.clone())
            .capabilities(self.capabilities.iter().cloned())
            .priority(self.priority)
    }
}

/// Builds an [`Agent`]; [`build`](Self::build) checks it.
#[derive(Debug)]
pub struct AgentBuilder {
    agent: Agent,
}

impl AgentBuilder {
    /// What it is for; orchestrators read this when they pick a sub-agent.
    #[must_use]
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.agent.description = description.into();
        self
    }

    /// The model to ask for (default: the provider's).
    #[must_use]
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.agent.model = Some(model.into());
        self
    }

    /// Its instructions.
    #[must_use]
    pub fn system_prompt(mut self, prompt: impl Into<String>) -> Self {
        self.agent.system_prompt = prompt.into();
        self
    }

    /// Sampling temperature (the provider's default when unset).
    #[must_use]
    pub fn temperature(mut self, temperature: f32) -> Self {
        self.agent.temperature = Some(temperature);
        self
    }

    /// Most tokens one reply may have.
    #[must_use]
    pub fn max_output_tokens(mut self, max: u32) -> Self {
        self.agent.max_output_tokens = Some(max);
        self
    }

    /// Turns before it must answer (default 20, at least 1).
    #[must_use]
    pub fn max_turns(mut self, max_turns: u32) -> Self {
        self.agent.max_turns = max_turns;
        self
    }

    /// Adds a tool.
    #[must_use]
    pub fn tool(mut self, tool: Arc<dyn Tool>) -> Self {
        self.agent.tools.push(tool);
        self
    }

    /// Tags the selector matches against a task ("rust", "search").
    #[must_use]
    pub fn capabilities<I, S>(mut self, capabilities: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.agent.capabilities = capabilities.into_iter().map(Into::into).collect();
        self
    }

    /// Added to its score when the selector ranks agents.
    #[must_use]
    pub fn priority(mut self, priority: i32) -> Self {
        self.agent.priority = priority;
        self
    }

    /// Its own cap on tasks running at once, below the registry's.
    #[must_use]
    pub fn max_concurrent(mut self, max: usize) -> Self {
        self.agent.max_concurrent = Some(max);
        self
    }

    /// Each of its tasks fails with `timeout` past this time.
    #[must_use]
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.agent.time_limit = Some(limit);
        self
    }

    /// Each of its tasks stops calling its provider once it has spent this
    /// many tokens, and fails with a message that says so.
    #[must_use]
    pub fn token_budget(mut self, tokens: u64) -> Self {
        self.agent.token_budget = Some(tokens);
        self
    }

    /// The agents it may call; `"*"` means every other agent.
    #[must_use]
    pub fn subagents<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<Arc<str>>,
    {
        let names: Vec<Arc<str>> = names.into_iter().map(Into::into).collect();
        self.agent.subagents = if names.iter().any(|name| &**name == "*") {
            Subagents::AllOthers
        } else if names.is_empty() {
            Subagents::None
        } else {
            Subagents::Only(names)
        };
        self
    }

    /// Checks the agent.
    ///
    /// # Errors
    /// Every problem at once: an empty or odd name, `max_turns` of 0, a
    /// zero cap, limit or budget, a temperature out of range, or a tool that
    /// is nameless, named twice or named like a task tool.
    pub fn build(self) -> Result<Agent, AgentError> {
        let mut agent = self.agent;
        let mut problems = Vec::new();
        let name = agent.name.trim();
        if name.is_empty() {
            problems.push("the name is empty; give the agent a name".to_owned());
        } else if name == "auto" || name == "*" {
            problems.push(format!(
                "`{name}` is reserved (it asks the selector to pick); choose another name"
            ));
        } else if name.chars().any(char::is_whitespace) {
            problems.push(format!(
                "`{name}` contains whitespace; use letters, digits, `-` or `_`"
            ));
        }
        if agent.max_turns == 0 {
            problems.push("max_turns is 0; it must be at least 1".to_owned());
        }
        if agent.max_concurrent == Some(0) {
            problems.push(
                "max_concurrent is 0, so no task of it could ever run; leave it unset or give at least 1"
                    .to_owned(),
            );
        }
        if agent.time_limit == Some(Duration::ZERO) {
            problems.push(
                "the time limit is 0, so every task would time out; leave it unset or give a positive limit"
                    .to_owned(),
            );
        }
        if agent.token_budget == Some(0) {
            problems.push(
                "token_budget is 0, so no task could call its model; leave it unset or give a positive budget"
                    .to_owned(),
            );
        }
        if let Some(temperature) = agent.temperature
            && !(0.0..=2.0).contains(&temperature)
        {
            problems.push(format!(
                "temperature {temperature} is out of range; use a value from 0.0 to 2.0"
            ));
        }
        let mut seen: Vec<&str> = Vec::new();
        for tool in &agent.tools {
            let tool_name = tool.name();
            if tool_name.trim().is_empty() {
                problems.push("a tool has an empty name; name every tool".to_owned());
            } else if is_task_tool(tool_name) {
                problems.push(format!(
                    "tool `{tool_name}` is reserved for the task tools; rename it"
                ));
            } else if seen.contains(&tool_name) {
                problems.push(format!(
                    "tool `{tool_name}` is added twice; tool names must be unique"
                ));
            }
            seen.push(tool_name);
        }
        if problems.is_empty() {
            agent.labels = TaskLabels {
                provider: Some(agent.provider.name().into()),
                provider_kind: Some(agent.provider.kind().as_str().into()),
                model: Some(agent.model().into()),
            };
            Ok(agent)
        } else {
            Err(AgentError {
                agent: agent.name.to_string(),
                problems,
            })
        }
    }
}
