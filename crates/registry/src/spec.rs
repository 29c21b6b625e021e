//! What a caller asks the registry to run.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::id::TaskId;

/// Labels that travel with a task into events, hooks and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskLabels {
    /// The provider backend's configured name (`openai`, `offline`, ...).
    pub provider: Option<Arc<str>>,
    /// The provider backend's kind (`openai`, `anthropic`, `gemini`,
    /// `ollama`, `scripted`), which names can hide: billing needs it to
    /// know a local backend costs nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_kind: Option<Arc<str>>,
    /// The model the agent uses.
    pub model: Option<Arc<str>>,
}

/// A request to run one sub-agent.
///
/// ```
/// use std::time::Duration;
/// use deputy_registry::TaskSpec;
///
/// let spec = TaskSpec::new("researcher", "Summarise the Go memory model")
///     .background(true)
///     .provider("scripted")
///     .model("demo")
///     .time_limit(Duration::from_secs(120));
/// assert_eq!(&*spec.agent, "researcher");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    /// The agent that runs the task.
    pub agent: Arc<str>,
    /// The task text, as given to the agent.
    pub task: Arc<str>,
    /// The task that spawned this one, if any.
    pub parent: Option<TaskId>,
    /// Provider and model labels.
    pub labels: TaskLabels,
    /// Whether the caller goes on while the task runs (`true`) or awaits it
    /// (`false`). A foreground task of a running parent borrows the parent's
    /// slot, so nesting never deadlocks the cap.
    pub background: bool,
    /// The task's own time limit; past it the task fails with `timeout`.
    pub time_limit: Option<Duration>,
}

impl TaskSpec {
    /// A parentless foreground task for `agent` with no labels or limit.
    pub fn new(agent: impl Into<Arc<str>>, task: impl Into<Arc<str>>) -> Self {
        Self {
            agent: agent.into(),
            task: task.into(),
            parent: None,
            labels: TaskLabels::default(),
            background: false,
            time_limit: None,
        }
    }

    /// Sets the parent task.
    #[must_use]
    pub fn parent(mut self, parent: TaskId) -> Self {
        self.parent = Some(parent);
        self
    }

    /// Sets whether the task runs in the background.
    #[must_use]
    pub fn background(mut self, background: bool) -> Self {
        self.background = background;
        self
    }

    /// Sets the provider label.
    #[must_use]
    pub fn provider(mut self, provider: impl Into<Arc<str>>) -> Self {
        self.labels.provider = Some(provider.into());
        self
    }

    /// Sets every label at once.
    #[must_use]
    pub fn labels(mut self, labels: TaskLabels) -> Self {
        self.labels = labels;
        self
    }

    /// Sets the provider kind label.
    #[must_use]
    pub fn provider_kind(mut self, kind: impl Into<Arc<str>>) -> Self {
        self.labels.provider_kind = Some(kind.into());
        self
    }

    /// Sets the model label.
    #[must_use]
    pub fn model(mut self, model: impl Into<Arc<str>>) -> Self {
        self.labels.model = Some(model.into());
        self
    }

    /// Sets the task's own time limit.
    #[must_use]
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = Some(limit);
        self
    }
}
