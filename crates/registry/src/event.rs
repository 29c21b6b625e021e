//! Lifecycle events for UIs, metrics and tests.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::hook::HookEventName;
use crate::id::TaskId;
use crate::settings::SubagentSettings;
use crate::status::{FailureKind, TaskStatus};

/// One change in the registry, in the order the registry made it.
///
/// Delivered through a bounded broadcast channel
/// ([`Registry::subscribe`](crate::Registry::subscribe)): a subscriber that
/// falls more than the channel's capacity behind misses events and is told
/// so by `RecvError::Lagged`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RegistryEvent {
    /// A task is waiting for a slot.
    Queued {
        /// The task.
        task_id: TaskId,
        /// Its agent.
        agent: Arc<str>,
        /// Its parent.
        parent_id: Option<TaskId>,
        /// Tasks waiting, this one included.
        queued: usize,
    },
    /// A task got a slot and is starting.
    Started {
        /// The task.
        task_id: TaskId,
        /// Its agent.
        agent: Arc<str>,
        /// Its parent.
        parent_id: Option<TaskId>,
        /// Slots in use after this admission.
        running: usize,
        /// The cap this admission was checked against.
        max_concurrent: usize,
        /// Whether it runs on a slot lent by its parent (a foreground child)
        /// rather than one of its own; `running` does not change then.
        borrowed: bool,
        /// How long it waited.
        #[serde(rename = "queued_ms", serialize_with = "crate::snapshot::as_millis")]
        queued_for: Duration,
    },
    /// A task reached its end state.
    Finished {
        /// The task.
        task_id: TaskId,
        /// Its agent.
        agent: Arc<str>,
        /// Its parent.
        parent_id: Option<TaskId>,
        /// Completed, failed or cancelled.
        status: TaskStatus,
        /// The failure's kind, when it failed.
        failure: Option<FailureKind>,
    },
    /// A hook errored, panicked or timed out; the task went on.
    HookFailed {
        /// The task the hook ran for.
        task_id: TaskId,
        /// The hook's name.
        hook: Arc<str>,
        /// Which event it handled.
        event: HookEventName,
        /// What went wrong.
        reason: String,
    },
    /// New settings took effect.
    SettingsApplied {
        /// The settings now in force.
        settings: Arc<SubagentSettings>,
    },
}

impl RegistryEvent {
    /// The task the event is about, if it is about one.
    pub fn task_id(&self) -> Option<TaskId> {
        match self {
            Self::Queued { task_id, .. }
            | Self::Started { task_id, .. }
            | Self::Finished { task_id, .. }
            | Self::HookFailed { task_id, .. } => Some(*task_id),
            Self::SettingsApplied { .. } => None,
        }
    }
}
