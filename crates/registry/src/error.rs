//! Errors of the registry's operations.

use crate::id::TaskId;
use crate::status::TaskStatus;

/// Why a spawn was refused. Nothing is left behind by a refused spawn.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// `[agent.subagents] enabled = false`.
    #[error(
        "cannot start sub-agent: sub-agents are disabled ([agent.subagents] enabled = false); set enabled = true to allow new tasks"
    )]
    Disabled,
    /// Every slot is taken and `queue_wait_ms = 0`.
    #[error(
        "cannot start sub-agent: maximum concurrent sub-agents ({max_concurrent}) reached and queue wait is disabled (queue_wait_ms = 0); stop a running task or wait for one to finish"
    )]
    AtCapacity {
        /// The cap.
        max_concurrent: usize,
    },
    /// The agent's own cap is reached and `queue_wait_ms = 0`.
    #[error(
        "cannot start sub-agent: agent `{agent}` already runs its maximum of {max_concurrent} tasks and queue wait is disabled (queue_wait_ms = 0); stop one of its tasks or wait for one to finish"
    )]
    AgentAtCapacity {
        /// The agent.
        agent: String,
        /// Its cap.
        max_concurrent: usize,
    },
    /// `max_queue` tasks are already waiting.
    #[error(
        "cannot start sub-agent: the queue is full ({max_queue} tasks waiting, max_queue = {max_queue}); wait for tasks to finish or raise max_queue"
    )]
    QueueFull {
        /// The queue's bound.
        max_queue: usize,
    },
    /// The parent task is not known.
    #[error(
        "cannot start sub-agent: parent task {0} does not exist; pass the id of a running task, or no parent"
    )]
    UnknownParent(TaskId),
    /// The parent task is not running.
    #[error(
        "cannot start sub-agent: parent task {parent} is {status}, not running; only a running task can start sub-agents"
    )]
    ParentNotRunning {
        /// The parent.
        parent: TaskId,
        /// Its status.
        status: TaskStatus,
    },
    /// A foreground child's parent has lent its slot to another foreground
    /// child, every slot is taken and `queue_wait_ms = 0`.
    #[error(
        "cannot start sub-agent: parent task {parent} has lent its slot to another foreground sub-agent, every slot is taken and queue wait is disabled (queue_wait_ms = 0); await that sub-agent first, or set queue_wait_ms above 0"
    )]
    LentSlotBusy {
        /// The parent.
        parent: TaskId,
    },
    /// The spec is unusable.
    #[error("cannot start sub-agent: {0}")]
    InvalidSpec(&'static str),
    /// The registry is shutting down.
    #[error(
        "cannot start sub-agent: the registry is shutting down; start new work on a new registry (or after a restart)"
    )]
    ShuttingDown,
}

impl SpawnError {
    /// Whether the refusal is about capacity (a full cap or queue), as
    /// opposed to bad input or a disabled or closing registry.
    pub fn is_capacity(&self) -> bool {
        matches!(
            self,
            Self::AtCapacity { .. }
                | Self::AgentAtCapacity { .. }
                | Self::LentSlotBusy { .. }
                | Self::QueueFull { .. }
        )
    }
}

/// The task id is not known to the registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "task {0} not found: it never existed here, or it was evicted (delivered results after result_ttl_secs, any result past max_finished); check the id, or read results sooner"
)]
pub struct UnknownTask(pub TaskId);

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The task was queued or running and is now cancelled; its descendants
    /// are being cancelled too.
    Cancelled {
        /// Its status before the cancel.
        was: TaskStatus,
    },
    /// The task had already ended (or a cancel was already under way);
    /// nothing changed.
    AlreadyFinished {
        /// Its end status.
        status: TaskStatus,
    },
}
