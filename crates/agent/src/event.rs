//! What a run shows while it runs.

use std::sync::Arc;

use deputy_registry::{FailureKind, TaskId, TaskStatus, Usage};
use serde::Serialize;

use crate::report::RunReport;

/// One thing that happened in a run, from the orchestrator or any of its
/// sub-agents (`task_id` and `agent` say which).
///
/// A run's stream ends with exactly one [`Done`](Self::Done) or
/// [`Failed`](Self::Failed).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunEvent {
    /// More answer text, as the model writes it.
    TextDelta {
        /// The task writing.
        task_id: TaskId,
        /// Its agent.
        agent: Arc<str>,
        /// The new text.
        text: String,
    },
    /// A tool call is about to run.
    ToolCallStarted {
        /// The calling task.
        task_id: TaskId,
        /// Its agent.
        agent: Arc<str>,
        /// The model's id for the call.
        call_id: String,
        /// The tool.
        name: String,
        /// The arguments as the model wrote them.
        arguments: serde_json::Value,
    },
    /// A tool call returned.
    ToolResult {
        /// The calling task.
        task_id: TaskId,
        /// Its agent.
        agent: Arc<str>,
        /// The model's id for the call.
        call_id: String,
        /// The tool.
        name: String,
        /// What the model reads (after any cut).
        content: String,
        /// Whether the call failed.
        is_error: bool,
    },
    /// A sub-agent waits for a slot.
    TaskQueued {
        /// The sub-agent's task.
        task_id: TaskId,
        /// Its agent.
        agent: Arc<str>,
        /// The task that spawned it.
        parent_id: Option<TaskId>,
    },
    /// A sub-agent got its slot.
    TaskStarted {
        /// The sub-agent's task.
        task_id: TaskId,
        /// Its agent.
        agent: Arc<str>,
        /// The task that spawned it.
        parent_id: Option<TaskId>,
    },
    /// A sub-agent ended.
    TaskFinished {
        /// The sub-agent's task.
        task_id: TaskId,
        /// Its agent.
        agent: Arc<str>,
        /// The task that spawned it.
        parent_id: Option<TaskId>,
        /// Completed, failed or cancelled.
        status: TaskStatus,
        /// Why it failed, when it did.
        failure: Option<FailureKind>,
    },
    /// One provider call's tokens.
    Usage {
        /// The task that made the call.
        task_id: TaskId,
        /// Its agent.
        agent: Arc<str>,
        /// This call.
        usage: Usage,
        /// The whole run so far.
        run_total: Usage,
    },
    /// Something went wrong that the run reports but may survive (a
    /// sub-agent's provider failing, events lost to a slow reader).
    Error {
        /// The task it happened in, if any.
        task_id: Option<TaskId>,
        /// Its agent.
        agent: Option<Arc<str>>,
        /// What happened.
        message: String,
    },
    /// The run answered.
    Done {
        /// The answer.
        answer: String,
        /// What the run did and what it cost.
        report: Box<RunReport>,
    },
    /// The run ended without an answer.
    Failed {
        /// Why.
        message: String,
        /// What the run did before it ended.
        report: Box<RunReport>,
    },
}
