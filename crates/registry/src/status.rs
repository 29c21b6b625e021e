//! Where a task is in its life, and why it failed.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The state of a task.
///
/// Transitions only go forward: `Queued → Running → Completed | Failed |
/// Cancelled`, or `Queued → Cancelled | Failed`. The registry applies them as
/// compare-and-set operations, so a late completion never overwrites a
/// cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Waiting for a slot.
    Queued,
    /// Holding a slot (its own or one lent by its parent) and running.
    Running,
    /// Finished with an answer.
    Completed,
    /// Finished with an error; see [`TaskFailure`].
    Failed,
    /// Stopped by a cancel, directly or through its parent.
    Cancelled,
}

impl TaskStatus {
    /// Whether the task has reached an end state.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// The lowercase name used in JSON, tools and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Every status, in lifecycle order.
    pub const ALL: [TaskStatus; 5] = [
        Self::Queued,
        Self::Running,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not a task status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown task status `{0}`: expected one of queued, running, completed, failed, cancelled")]
pub struct ParseStatusError(String);

impl std::str::FromStr for TaskStatus {
    type Err = ParseStatusError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let wanted = input.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == wanted)
            .ok_or_else(|| ParseStatusError(input.to_owned()))
    }
}

/// Why a task failed, in a form callers can branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// It ran past its own time limit.
    Timeout,
    /// It waited in the queue past `queue_wait_ms` and never ran.
    QueueTimeout,
    /// A SubagentStart hook denied it.
    DeniedByHook,
    /// Its work panicked.
    Panicked,
    /// Its provider returned an error.
    Provider,
    /// It spent its token budget.
    Budget,
    /// Anything else.
    Other,
}

impl FailureKind {
    /// The snake_case name used in JSON and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::QueueTimeout => "queue_timeout",
            Self::DeniedByHook => "denied_by_hook",
            Self::Panicked => "panicked",
            Self::Provider => "provider",
            Self::Budget => "budget",
            Self::Other => "other",
        }
    }

    /// Whether a failure of this kind says something about the agent itself,
    /// so the load balancer should steer away from it. Waiting too long in
    /// the queue, being denied by a hook or spending a configured budget is
    /// not the agent's fault.
    pub fn counts_against_agent(self) -> bool {
        matches!(
            self,
            Self::Timeout | Self::Panicked | Self::Provider | Self::Other
        )
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure: its kind and a message for people (and models) to read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct TaskFailure {
    /// What kind of failure it was.
    pub kind: FailureKind,
    /// What happened, in words.
    pub message: String,
}

impl TaskFailure {
    /// A failure of the given kind.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// A provider error, with the provider's own message.
    pub fn provider(message: impl Into<String>) -> Self {
        Self::new(FailureKind::Provider, message)
    }

    /// Any other error.
    pub fn other(message: impl Into<String>) -> Self {
        Self::new(FailureKind::Other, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_parse_from_their_names() {
        for status in TaskStatus::ALL {
            assert_eq!(status.as_str().parse::<TaskStatus>().unwrap(), status);
        }
        let err = "done".parse::<TaskStatus>().unwrap_err();
        assert!(err.to_string().contains("`done`"));
    }

    #[test]
    fn only_end_states_are_terminal() {
        assert!(!TaskStatus::Queued.is_terminal());
        assert!(!TaskStatus::Running.is_terminal());
        assert!(TaskStatus::Completed.is_terminal());
        assert!(TaskStatus::Failed.is_terminal());
        assert!(TaskStatus::Cancelled.is_terminal());
    }

    #[test]
    fn failures_serialize_with_snake_case_kinds() {
        let failure = TaskFailure::new(FailureKind::QueueTimeout, "waited 5 ms");
        let json = serde_json::to_string(&failure).unwrap();
        assert_eq!(json, r#"{"kind":"queue_timeout","message":"waited 5 ms"}"#);
        assert_eq!(failure.to_string(), "queue_timeout: waited 5 ms");
    }
}
