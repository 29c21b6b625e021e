//! Read-side views of tasks.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};

use crate::id::TaskId;
use crate::spec::TaskLabels;
use crate::status::{TaskFailure, TaskStatus};
use crate::usage::Usage;

/// A copy of one task's state at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskSnapshot {
    /// The task.
    pub id: TaskId,
    /// The task that spawned it.
    pub parent_id: Option<TaskId>,
    /// The agent that runs it.
    pub agent: Arc<str>,
    /// Provider and model labels.
    pub labels: TaskLabels,
    /// The task text.
    pub task: Arc<str>,
    /// Nesting depth: 0 for a root run, 1 for its sub-agents, and so on.
    pub depth: u32,
    /// Whether its caller went on without waiting.
    pub background: bool,
    /// Whether it is a root run (an orchestrator), which holds no slot.
    pub root: bool,
    /// Its status.
    pub status: TaskStatus,
    /// The failure, when it failed.
    pub failure: Option<TaskFailure>,
    /// The answer, when it completed.
    pub output: Option<Arc<str>>,
    /// Tokens spent so far.
    pub usage: Usage,
    /// When it was spawned.
    pub created_at: SystemTime,
    /// When it started running.
    pub started_at: Option<SystemTime>,
    /// When it ended.
    pub ended_at: Option<SystemTime>,
    /// Time spent waiting for a slot (so far, while queued).
    #[serde(rename = "queued_ms", serialize_with = "as_millis")]
    pub queued_for: Duration,
    /// Time spent running (so far, while running).
    #[serde(rename = "run_ms", serialize_with = "as_millis_opt")]
    pub run_time: Option<Duration>,
    /// Whether its result has been handed to its parent.
    pub delivered: bool,
}

impl TaskSnapshot {
    /// Time from spawn to end, or to now while it is not finished.
    pub fn elapsed(&self) -> Duration {
        self.queued_for + self.run_time.unwrap_or_default()
    }

    /// Whether it has finished and settled: end state final, slot handed
    /// on, waiters woken. Its stop hooks may still be running.
    pub fn is_finished(&self) -> bool {
        self.ended_at.is_some()
    }
}

/// Which tasks [`Registry::list`](crate::Registry::list) returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    /// Only tasks in this status.
    pub status: Option<TaskStatus>,
    /// Only children of this task.
    pub parent: Option<TaskId>,
    /// Only tasks of this agent.
    pub agent: Option<String>,
}

impl TaskFilter {
    /// Every task.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only tasks in `status`.
    #[must_use]
    pub fn status(mut self, status: TaskStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// Only children of `parent`.
    #[must_use]
    pub fn parent(mut self, parent: TaskId) -> Self {
        self.parent = Some(parent);
        self
    }

    /// Only tasks of `agent`.
    #[must_use]
    pub fn agent(mut self, agent: impl Into<String>) -> Self {
        self.agent = Some(agent.into());
        self
    }

    pub(crate) fn matches(
        &self,
        snapshot_status: TaskStatus,
        parent: Option<TaskId>,
        agent: &str,
    ) -> bool {
        self.status.is_none_or(|wanted| wanted == snapshot_status)
            && self.parent.is_none_or(|wanted| Some(wanted) == parent)
            && self.agent.as_deref().is_none_or(|wanted| wanted == agent)
    }
}

/// What a wait returned.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitOutcome {
    /// The task as it is now: finished, or still queued or running when the
    /// wait timed out.
    pub task: TaskSnapshot,
    /// Whether this call handed the result over for the first time. A
    /// result handed over once (by a wait or by
    /// [`Registry::take_finished`](crate::Registry::take_finished)) is never
    /// taken by `take_finished` again.
    pub newly_delivered: bool,
}

pub(crate) fn as_millis<S: Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn as_millis_opt<S: Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match duration {
        Some(duration) => as_millis(duration, serializer),
        None => serializer.serialize_none(),
    }
}
