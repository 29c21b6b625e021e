//! SubagentStart and SubagentStop hooks: the traits, their typed events and
//! the stack that runs them.
//!
//! # Order contract
//!
//! * Start hooks run one after another in registration order, after the task
//!   has been admitted (it holds a slot) and before its work starts.
//! * The first hook that returns [`StartDecision::Deny`] ends the chain: later
//!   start hooks do not run, the work never starts, and the task fails with
//!   `denied_by_hook` and the hook's reason.
//! * Context added by [`StartDecision::AddContext`] is joined, in
//!   registration order, and handed to the work.
//! * Every task whose start phase began gets exactly one SubagentStop, on
//!   every path: completion, failure, cancel, panic, time limit, denial by a
//!   start hook and registry shutdown. A task cancelled just as its start
//!   phase began can get its Stop with no start hook called (or only the
//!   first few), so a Stop hook must not assume a matching Start.
//!   Stop hooks run one after another in
//!   registration order, after the task's slot has been handed on, so they
//!   never delay the next task.
//! * A hook that errors, panics or runs past its [`time limit`] is logged and
//!   counted (see [`RegistryEvent::HookFailed`]) and the chain goes on as if
//!   it had allowed. Only an explicit deny changes control flow.
//! * No hook runs while a registry lock is held.
//!
//! [`time limit`]: SubagentStartHook::timeout
//! [`RegistryEvent::HookFailed`]: crate::RegistryEvent::HookFailed

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::FutureExt as _;
use serde::Serialize;

use crate::id::TaskId;
use crate::spec::TaskLabels;
use crate::status::{TaskFailure, TaskStatus};
use crate::usage::Usage;

/// The time limit a hook gets unless it says otherwise.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// What both hook events say about the task.
#[derive(Debug, Clone, Serialize)]
pub struct HookTask {
    /// The task.
    pub id: TaskId,
    /// The task that spawned it.
    pub parent_id: Option<TaskId>,
    /// The agent that runs it.
    pub agent: Arc<str>,
    /// Provider and model labels.
    pub labels: TaskLabels,
    /// The task text.
    pub text: Arc<str>,
    /// Nesting depth: 1 for a task without a parent sub-agent.
    pub depth: u32,
    /// Whether its caller goes on without waiting.
    pub background: bool,
    /// When it was spawned.
    pub created_at: SystemTime,
    /// How long it waited for a slot.
    pub queued_for: Duration,
}

/// Sent to start hooks when a task has a slot and is about to run.
#[derive(Debug, Clone, Serialize)]
pub struct SubagentStartEvent {
    /// The task.
    pub task: HookTask,
}

/// Sent to stop hooks once per started task, when it has ended.
#[derive(Debug, Clone, Serialize)]
pub struct SubagentStopEvent {
    /// The task.
    pub task: HookTask,
    /// How it ended: completed, failed or cancelled.
    pub status: TaskStatus,
    /// The failure, when it failed.
    pub error: Option<TaskFailure>,
    /// The answer, when it completed.
    pub output: Option<Arc<str>>,
    /// Time from the start of its run to its end.
    pub duration: Duration,
    /// Tokens its provider calls spent.
    pub usage: Usage,
    /// When it ended.
    pub ended_at: SystemTime,
}

/// What a start hook wants done with the task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartDecision {
    /// Let it run.
    Allow,
    /// Let it run, with this text added to its context.
    AddContext(String),
    /// Do not run it, for this reason.
    Deny {
        /// Shown to the caller and recorded as the failure message.
        reason: String,
    },
}

/// A hook failed; the task goes on.
#[derive(Debug)]
pub struct HookError(Box<dyn std::error::Error + Send + Sync>);

impl HookError {
    /// An error from a message.
    pub fn msg(message: impl Into<String>) -> Self {
        Self(message.into().into())
    }

    /// An error from any error value.
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Box::new(error))
    }
}

impl fmt::Display for HookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for HookError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Runs when a sub-agent is about to start; may allow, deny or add context.
#[async_trait]
pub trait SubagentStartHook: Send + Sync {
    /// The name used in logs and failure counts.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }

    /// How long the hook may run before it is abandoned and counted as failed.
    fn timeout(&self) -> Duration {
        DEFAULT_HOOK_TIMEOUT
    }

    /// Decides whether the task may run.
    ///
    /// # Errors
    /// An error is logged and counted; the task runs as if allowed.
    async fn on_subagent_start(
        &self,
        event: &SubagentStartEvent,
    ) -> Result<StartDecision, HookError>;
}

/// Runs once when a started sub-agent has ended, on every path.
#[async_trait]
pub trait SubagentStopHook: Send + Sync {
    /// The name used in logs and failure counts.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }

    /// How long the hook may run before it is abandoned and counted as failed.
    fn timeout(&self) -> Duration {
        DEFAULT_HOOK_TIMEOUT
    }

    /// Observes the end of a task.
    ///
    /// # Errors
    /// An error is logged and counted; nothing else changes.
    async fn on_subagent_stop(&self, event: &SubagentStopEvent) -> Result<(), HookError>;
}

#[async_trait]
impl<H: SubagentStartHook + ?Sized> SubagentStartHook for Arc<H> {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn timeout(&self) -> Duration {
        (**self).timeout()
    }

    async fn on_subagent_start(
        &self,
        event: &SubagentStartEvent,
    ) -> Result<StartDecision, HookError> {
        (**self).on_subagent_start(event).await
    }
}

#[async_trait]
impl<H: SubagentStopHook + ?Sized> SubagentStopHook for Arc<H> {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn timeout(&self) -> Duration {
        (**self).timeout()
    }

    async fn on_subagent_stop(&self, event: &SubagentStopEvent) -> Result<(), HookError> {
        (**self).on_subagent_stop(event).await
    }
}

/// Which hook event a failure happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum HookEventName {
    /// A start hook.
    SubagentStart,
    /// A stop hook.
    SubagentStop,
}

impl HookEventName {
    /// The event's name as hook configs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SubagentStart => "SubagentStart",
            Self::SubagentStop => "SubagentStop",
        }
    }
}

/// A hook that errored, panicked or timed out.
#[derive(Debug, Clone)]
pub(crate) struct HookFailure {
    pub(crate) hook: Arc<str>,
    pub(crate) event: HookEventName,
    pub(crate) reason: String,
}

/// The start hooks' combined answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StartVerdict {
    Allowed { context: Option<String> },
    Denied { hook: Arc<str>, reason: String },
}

/// The hooks a registry runs, in registration order (see the module docs).
///
/// ```
/// use std::sync::Arc;
/// use async_trait::async_trait;
/// use deputy_registry::{
///     HookError, HookStack, StartDecision, SubagentStartEvent, SubagentStartHook,
/// };
///
/// struct OnlyResearchers;
///
/// #[async_trait]
/// impl SubagentStartHook for OnlyResearchers {
///     async fn on_subagent_start(
///         &self,
///         event: &SubagentStartEvent,
///     ) -> Result<StartDecision, HookError> {
///         Ok(if &*event.task.agent == "researcher" {
///             StartDecision::Allow
///         } else {
///             StartDecision::Deny { reason: format!("agent {} is not allowed", event.task.agent) }
///         })
///     }
/// }
///
/// let hooks = HookStack::new().with_start(Arc::new(OnlyResearchers));
/// assert_eq!(hooks.len(), 1);
/// ```
#[derive(Clone, Default)]
pub struct HookStack {
    start: Vec<Arc<dyn SubagentStartHook>>,
    stop: Vec<Arc<dyn SubagentStopHook>>,
}

impl fmt::Debug for HookStack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookStack")
            .field(
                "start",
                &self
                    .start
                    .iter()
                    .map(|hook| hook.name())
                    .collect::<Vec<_>>(),
            )
            .field(
                "stop",
                &self.stop.iter().map(|hook| hook.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl HookStack {
    /// No hooks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a start hook after those already added.
    #[must_use]
    pub fn with_start(mut self, hook: Arc<dyn SubagentStartHook>) -> Self {
        self.start.push(hook);
        self
    }

    /// Adds a stop hook after those already added.
    #[must_use]
    pub fn with_stop(mut self, hook: Arc<dyn SubagentStopHook>) -> Self {
        self.stop.push(hook);
        self
    }

    /// Adds one value as both a start and a stop hook (a budget check that
    /// also records spend, for example).
    #[must_use]
    pub fn with_both<H>(self, hook: Arc<H>) -> Self
    where
        H: SubagentStartHook + SubagentStopHook + 'static,
    {
        self.with_start(hook.clone()).with_stop(hook)
    }

    /// How many hooks there are of both kinds.
    pub fn len(&self) -> usize {
        self.start.len() + self.stop.len()
    }

    /// Whether there are no hooks at all.
    pub fn is_empty(&self) -> bool {
        self.start.is_empty() && self.stop.is_empty()
    }

    pub(crate) fn has_stop_hooks(&self) -> bool {
        !self.stop.is_empty()
    }

    pub(crate) fn has_start_hooks(&self) -> bool {
        !self.start.is_empty()
    }

    /// Runs the start hooks in order; the first deny wins.
    pub(crate) async fn run_start(
        &self,
        event: &SubagentStartEvent,
        on_failure: &(dyn Fn(HookFailure) + Send + Sync),
    ) -> StartVerdict {
        let mut contexts: Vec<String> = Vec::new();
        for hook in &self.start {
            let outcome = guarded(hook.timeout(), hook.on_subagent_start(event)).await;
            match outcome {
                Ok(StartDecision::Allow) => {}
                Ok(StartDecision::AddContext(context)) => contexts.push(context),
                Ok(StartDecision::Deny { reason }) => {
                    return StartVerdict::Denied {
                        hook: Arc::from(hook.name()),
                        reason,
                    };
                }
                Err(reason) => on_failure(HookFailure {
                    hook: Arc::from(hook.name()),
                    event: HookEventName::SubagentStart,
                    reason,
                }),
            }
        }
        StartVerdict::Allowed {
            context: (!contexts.is_empty()).then(|| contexts.join("\n\n")),
        }
    }

    /// Runs every stop hook in order; failures are reported and skipped.
    pub(crate) async fn run_stop(
        &self,
        event: &SubagentStopEvent,
        on_failure: &(dyn Fn(HookFailure) + Send + Sync),
    ) {
        for hook in &self.stop {
            if let Err(reason) = guarded(hook.timeout(), hook.on_subagent_stop(event)).await {
                on_failure(HookFailure {
                    hook: Arc::from(hook.name()),
                    event: HookEventName::SubagentStop,
                    reason,
                });
            }
        }
    }
}

/// Runs one hook call with its time limit, turning errors, panics and
/// timeouts into a reason string.
async fn guarded<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, HookError>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, AssertUnwindSafe(call).catch_unwind()).await {
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(error))) => Err(format!("hook returned an error: {error}")),
        Ok(Err(panic)) => Err(format!("hook panicked: {}", panic_message(&*panic))),
        Err(_elapsed) => Err(format!("hook timed out after {} ms", limit.as_millis())),
    }
}

/// The text of a panic payload, when it has one.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
