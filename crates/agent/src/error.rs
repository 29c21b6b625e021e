//! Errors of building agents and runtimes, and of runs.

use deputy_registry::{SpawnError, TaskFailure};

use crate::report::RunReport;

/// An agent definition that cannot be used; lists every problem at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("agent `{agent}` is invalid: {}", problems.join("; "))]
pub struct AgentError {
    /// The agent's name as given.
    pub agent: String,
    /// What is wrong, one sentence each.
    pub problems: Vec<String>,
}

/// A runtime that cannot be built; lists every problem at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the agent runtime cannot be built: {}", problems.join("; "))]
pub struct BuildError {
    /// What is wrong, one sentence each.
    pub problems: Vec<String>,
}

/// A run that did not produce an answer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The agent asked for is not in the runtime.
    #[error("unknown agent `{name}`: available agents are {available}")]
    UnknownAgent {
        /// The name asked for.
        name: String,
        /// The agents that exist, comma-separated.
        available: String,
    },
    /// The prompt is empty.
    #[error("the prompt is empty; give the agent something to do")]
    EmptyPrompt,
    /// The registry refused to start the run.
    #[error("cannot start the run: {}", spawn_detail(.0))]
    Spawn(#[from] SpawnError),
    /// The run's agent failed (its provider erred, it timed out, ...).
    #[error("the run failed: {failure}")]
    Failed {
        /// How it failed.
        failure: TaskFailure,
        /// What it did before it failed, and what that cost.
        report: Box<RunReport>,
    },
    /// The run was cancelled.
    #[error("the run was cancelled")]
    Cancelled {
        /// What it did before it was cancelled, and what that cost.
        report: Box<RunReport>,
    },
}

impl RunError {
    /// The report of a run that started, if this one did.
    pub fn report(&self) -> Option<&RunReport> {
        match self {
            Self::Failed { report, .. } | Self::Cancelled { report } => Some(report),
            _ => None,
        }
    }
}

/// The registry's refusal without its own "cannot start sub-agent" opening.
fn spawn_detail(error: &SpawnError) -> String {
    let message = error.to_string();
    message
        .strip_prefix("cannot start sub-agent: ")
        .map_or_else(|| message.clone(), str::to_owned)
}
