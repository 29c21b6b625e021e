//! One task's life as a future: wait for a slot, run the start hooks, run
//! the work, settle, run the stop hooks.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cell::TaskCell;
use crate::hook::{StartVerdict, panic_message};
use crate::id::TaskId;
use crate::registry::Registry;
use crate::spec::TaskLabels;
use crate::state::{LeaveReason, Outcome, QueueExit};
use crate::status::{FailureKind, TaskFailure};
use crate::usage::Usage;

/// What a task's work gets: who it is, its cancel token, where to record
/// usage, and the context its start hooks added.
#[derive(Clone)]
pub struct TaskContext {
    cell: Arc<TaskCell>,
    registry: Registry,
    additional_context: Option<Arc<str>>,
}

impl std::fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskContext")
            .field("id", &self.cell.id)
            .field("agent", &self.cell.agent)
            .field("depth", &self.cell.depth)
            .finish_non_exhaustive()
    }
}

impl TaskContext {
    /// This task's id; pass it as the parent of tasks it spawns.
    pub fn id(&self) -> TaskId {
        self.cell.id
    }

    /// The task that spawned this one.
    pub fn parent_id(&self) -> Option<TaskId> {
        self.cell.parent
    }

    /// The agent running the task.
    pub fn agent(&self) -> &Arc<str> {
        &self.cell.agent
    }

    /// The task text.
    pub fn task(&self) -> &Arc<str> {
        &self.cell.task
    }

    /// Provider and model labels.
    pub fn labels(&self) -> &TaskLabels {
        &self.cell.labels
    }

    /// Nesting depth: 0 for a root run, 1 for its sub-agents, and so on.
    pub fn depth(&self) -> u32 {
        self.cell.depth
    }

    /// Cancelled when this task or any ancestor is stopped. The registry
    /// drops the work future as soon as it is cancelled; the token is for
    /// work that wants to stop cleanly first or to pass cancellation to
    /// things it started.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cell.token
    }

    /// Adds the tokens of one provider call to this task's usage, which
    /// SubagentStop reports.
    pub fn record_usage(&self, usage: Usage) {
        *self.cell.usage.lock() += usage;
    }

    /// Usage recorded so far.
    pub fn usage(&self) -> Usage {
        *self.cell.usage.lock()
    }

    /// Text the start hooks added for the agent to read, joined in hook order.
    pub fn additional_context(&self) -> Option<&str> {
        self.additional_context.as_deref()
    }

    /// The registry running this task, for spawning children.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// Settles the task if its future is dropped before it did so itself (an
/// abort, or the runtime shutting down), so no slot is leaked and a started
/// task still gets its stop hooks when a runtime is there to run them.
pub(crate) struct SettleGuard {
    registry: Registry,
    cell: Arc<TaskCell>,
    start_began: bool,
    armed: bool,
}

impl Drop for SettleGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let stop = self.registry.abandon(&self.cell, self.start_began);
        if let Some(event) = stop
            && tokio::runtime::Handle::try_current().is_ok()
        {
            // Tracked, so a shutdown waits for these stop hooks too.
            let registry = self.registry.clone();
            self.registry
                .track(async move { registry.run_stop_hooks(&event).await });
        }
    }
}

impl SettleGuard {
    /// Made synchronously by the spawn, before the task's future exists, so
    /// even a future dropped unpolled (its runtime shutting down) settles.
    pub(crate) fn new(registry: Registry, cell: Arc<TaskCell>) -> Self {
        Self {
            registry,
            cell,
            start_began: false,
            armed: true,
        }
    }
}

/// A queued task: waits for its slot, its deadline or a cancel, then runs.
pub(crate) async fn run_queued<F, Fut>(
    admitted: oneshot::Receiver<()>,
    deadline: Instant,
    time_limit: Option<Duration>,
    work: F,
    mut guard: SettleGuard,
) where
    F: FnOnce(TaskContext) -> Fut + Send + 'static,
    Fut: Future<Output = Result<String, TaskFailure>> + Send + 'static,
{
    // The guard's registry and cell are the ones the task uses, so the
    // task holds one reference to each instead of two.
    let registry = &guard.registry;
    let cell = &guard.cell;
    let exit = tokio::select! {
        biased;
        handed_over = admitted => match handed_over {
            Ok(()) => QueueExit::Admitted,
            // Dropped by a cancel, which already settled the task.
            Err(_) => registry.leave_queue(cell, LeaveReason::Cancelled),
        },
        () = cell.token.cancelled() => registry.leave_queue(cell, LeaveReason::Cancelled),
        () = tokio::time::sleep_until(deadline) => registry.leave_queue(cell, LeaveReason::Deadline),
    };
    if exit == QueueExit::Ended {
        guard.armed = false;
        return;
    }
    // The rest lives in its own allocation, made only once a slot is held,
    // so a queued task costs little more than its waiting state.
    Box::pin(run_admitted(time_limit, work, guard)).await;
}

/// A task that holds its slot (or needs none): start hooks, work, settle,
/// stop hooks.
pub(crate) async fn run_admitted<F, Fut>(
    time_limit: Option<Duration>,
    work: F,
    mut guard: SettleGuard,
) where
    F: FnOnce(TaskContext) -> Fut + Send + 'static,
    Fut: Future<Output = Result<String, TaskFailure>> + Send + 'static,
{
    let registry = &guard.registry;
    let cell = &guard.cell;
    if cell.token.is_cancelled() {
        registry.finish(cell, Outcome::Cancelled, false);
        guard.armed = false;
        return;
    }

    // Root runs are not sub-agents: no hooks.
    guard.start_began = !cell.root;
    // Each phase's values live in a block of their own: a local still in
    // scope at an await takes room in the future, and so in the allocation
    // every spawn makes for it, even after it has been moved out.
    let outcome = {
        // The hook phases are boxed and entered only when there are hooks:
        // inline, their futures made every task's future more than twice
        // as large.
        let start = if guard.start_began && registry.hooks().has_start_hooks() {
            Box::pin(start_phase(registry, cell)).await
        } else {
            StartPhase::Allowed(None)
        };
        match start {
            StartPhase::Denied(failure) => Err(Outcome::Failed(failure)),
            StartPhase::Cancelled => Err(Outcome::Cancelled),
            StartPhase::Allowed(additional_context) => Ok(TaskContext {
                cell: cell.clone(),
                registry: registry.clone(),
                additional_context,
            }),
        }
    };
    let outcome = match outcome {
        Err(outcome) => outcome,
        Ok(context) => {
            tokio::select! {
                biased;
                () = cell.token.cancelled() => Outcome::Cancelled,
                outcome = execute(work, context, time_limit) => outcome,
            }
        }
    };

    let wants_stop = guard.start_began && registry.hooks().has_stop_hooks();
    let stop_hooks = registry.finish(cell, outcome, wants_stop).map(|event| {
        // The event moves into the box, so it takes no room in this
        // future.
        let registry = registry.clone();
        Box::pin(async move { registry.run_stop_hooks(&event).await })
    });
    guard.armed = false;
    if let Some(stop_hooks) = stop_hooks {
        stop_hooks.await;
    }
}

/// How the start phase ended.
enum StartPhase {
    /// Run, with the context the hooks added.
    Allowed(Option<Arc<str>>),
    /// A hook denied the task.
    Denied(TaskFailure),
    /// The task was cancelled while its start hooks ran.
    Cancelled,
}

/// Runs the start hooks; a cancel meanwhile ends the phase at once (the
/// task still gets its SubagentStop, since its start phase began).
async fn start_phase(registry: &Registry, cell: &TaskCell) -> StartPhase {
    let id = cell.id;
    let event = registry.start_event(cell);
    let report = |failure| registry.report_hook_failure(id, failure);
    let verdict = tokio::select! {
        biased;
        () = cell.token.cancelled() => return StartPhase::Cancelled,
        verdict = registry.hooks().run_start(&event, &report) => verdict,
    };
    match verdict {
        StartVerdict::Allowed { context } => StartPhase::Allowed(context.map(Arc::from)),
        StartVerdict::Denied { hook, reason } => StartPhase::Denied(TaskFailure::new(
            FailureKind::DeniedByHook,
            format!("denied by hook {hook}: {reason}"),
        )),
    }
}

/// Runs the work with its time limit, turning panics into failures.
async fn execute<F, Fut>(work: F, context: TaskContext, time_limit: Option<Duration>) -> Outcome
where
    F: FnOnce(TaskContext) -> Fut,
    Fut: Future<Output = Result<String, TaskFailure>>,
{
    let guarded = match std::panic::catch_unwind(AssertUnwindSafe(move || work(context))) {
        Ok(future) => AssertUnwindSafe(future).catch_unwind(),
        Err(panic) => return Outcome::Failed(panicked(&*panic)),
    };
    let result = match time_limit {
        None => guarded.await,
        // Boxed: a timer makes the future larger, and most tasks have none.
        Some(limit) => match Box::pin(tokio::time::timeout(limit, guarded)).await {
            Ok(result) => result,
            Err(_elapsed) => {
                return Outcome::Failed(TaskFailure::new(
                    FailureKind::Timeout,
                    format!("ran past its time limit of {}", describe(limit)),
                ));
            }
        },
    };
    match result {
        // Made into the shared form here, not under the registry's locks.
        Ok(Ok(text)) => Outcome::Completed(Arc::from(text)),
        Ok(Err(failure)) => Outcome::Failed(failure),
        Err(panic) => Outcome::Failed(panicked(&*panic)),
    }
}

fn panicked(payload: &(dyn std::any::Any + Send)) -> TaskFailure {
    TaskFailure::new(
        FailureKind::Panicked,
        format!("the task panicked: {}", panic_message(payload)),
    )
}

/// "120 s" for whole seconds, "1500 ms" otherwise.
fn describe(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{} s", duration.as_secs())
    } else {
        format!("{} ms", duration.as_millis())
    }
}
