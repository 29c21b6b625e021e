//! What a run did and what it cost.

use std::sync::Arc;
use std::time::Duration;

use deputy_registry::{TaskFailure, TaskId, TaskSnapshot, TaskStatus, Usage};
use serde::Serialize;

use crate::format::as_millis;

/// The answer of a run and its report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunOutput {
    /// The orchestrator's final answer.
    pub answer: String,
    /// What the run did and what it cost.
    pub report: RunReport,
}

/// What a run did and what it cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    /// The run's own task (the orchestrator).
    pub run_id: TaskId,
    /// The orchestrating agent.
    pub agent: Arc<str>,
    /// Provider calls the orchestrator made.
    pub turns: u32,
    /// Tokens of every provider call in the run, sub-agents included.
    pub usage: Usage,
    /// From start to end.
    #[serde(rename = "duration_ms", serialize_with = "as_millis")]
    pub duration: Duration,
    /// Every sub-agent task of the run, at any depth, in spawn order.
    pub tasks: Vec<TaskSummary>,
}

impl RunReport {
    /// Sub-agent tasks that ended in `status`.
    pub fn count(&self, status: TaskStatus) -> usize {
        self.tasks
            .iter()
            .filter(|task| task.status == status)
            .count()
    }
}

/// One sub-agent task of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskSummary {
    /// The task.
    pub id: TaskId,
    /// The task that spawned it.
    pub parent_id: Option<TaskId>,
    /// Its agent.
    pub agent: Arc<str>,
    /// Nesting depth (1 for the orchestrator's own sub-agents).
    pub depth: u32,
    /// Whether it ran in the background.
    pub background: bool,
    /// Its status when the report was made (a detached task may still run).
    pub status: TaskStatus,
    /// Why it failed, when it did.
    pub failure: Option<TaskFailure>,
    /// Its tokens.
    pub usage: Usage,
    /// Queued plus running time.
    #[serde(rename = "elapsed_ms", serialize_with = "as_millis")]
    pub elapsed: Duration,
}

impl From<&TaskSnapshot> for TaskSummary {
    fn from(task: &TaskSnapshot) -> Self {
        Self {
            id: task.id,
            parent_id: task.parent_id,
            agent: task.agent.clone(),
            depth: task.depth,
            background: task.background,
            status: task.status,
            failure: task.failure.clone(),
            usage: task.usage,
            elapsed: task.elapsed(),
        }
    }
}
