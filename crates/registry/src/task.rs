//! One task's life as a future: wait for a slot, run the start hooks, run
//! the work, settle, run the stop hooks.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::CatchUnwind;
use tokio::sync::oneshot;
use tokio::time::error::Elapsed;
use tokio::time::{Instant, Sleep, Timeout};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

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

    /// The task settled itself: nothing is left for the drop to do.
    fn disarm(&mut self) {
        self.armed = false;
    }
}

/// A queued task: waits for its slot, its deadline or a cancel, then runs.
/// An async block, not an async fn, for the reason `run_admitted` gives.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice in its state"
)]
pub(crate) fn run_queued<F, Fut>(
    mut admitted: oneshot::Receiver<()>,
    deadline: Instant,
    time_limit: Option<Duration>,
    work: F,
    mut guard: SettleGuard,
) -> impl Future<Output = ()> + Send + 'static
where
    F: FnOnce(TaskContext) -> Fut + Send + 'static,
    Fut: Future<Output = Result<String, TaskFailure>> + Send + 'static,
{
    async move {
        // The guard's registry and cell are the ones the task uses, so the
        // task holds one reference to each instead of two. They are reached
        // through the guard and the receiver is polled where it is, so
        // nothing is kept twice (see `run_admitted`).
        let wait = QueueWait {
            admitted: &mut admitted,
            cancelled: guard.cell.token.cancelled(),
            deadline: tokio::time::sleep_until(deadline),
        };
        let exit = match wait.await {
            QueueWaitEnd::Admitted => QueueExit::Admitted,
            QueueWaitEnd::Cancelled => guard
                .registry
                .leave_queue(&guard.cell, LeaveReason::Cancelled),
            QueueWaitEnd::Deadline => guard
                .registry
                .leave_queue(&guard.cell, LeaveReason::Deadline),
        };
        if exit == QueueExit::Ended {
            guard.disarm();
            return;
        }
        // The rest lives in its own allocation, made only once a slot is
        // held, so a queued task costs little more than its waiting state.
        Box::pin(run_admitted(time_limit, work, guard)).await;
    }
}

pin_project_lite::pin_project! {
    /// A queued task's wait: for its slot, a cancel or its deadline, in
    /// that order of precedence. Hand-written for the size of every queued
    /// task, which this is most of: a `select!` adds its own state.
    struct QueueWait<'a> {
        admitted: &'a mut oneshot::Receiver<()>,
        #[pin]
        cancelled: WaitForCancellationFuture<'a>,
        #[pin]
        deadline: Sleep,
    }
}

/// How a queued task's wait ended.
enum QueueWaitEnd {
    Admitted,
    /// Cancelled, or the admission's sender was dropped, which only a
    /// cancel does; in both cases `leave_queue` finds the task settled or
    /// settles it.
    Cancelled,
    Deadline,
}

impl Future for QueueWait<'_> {
    type Output = QueueWaitEnd;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<QueueWaitEnd> {
        let this = self.project();
        if let Poll::Ready(handed_over) = Pin::new(&mut **this.admitted).poll(cx) {
            return Poll::Ready(match handed_over {
                Ok(()) => QueueWaitEnd::Admitted,
                Err(_) => QueueWaitEnd::Cancelled,
            });
        }
        if this.cancelled.poll(cx).is_ready() {
            return Poll::Ready(QueueWaitEnd::Cancelled);
        }
        if this.deadline.poll(cx).is_ready() {
            return Poll::Ready(QueueWaitEnd::Deadline);
        }
        Poll::Pending
    }
}

/// A task that holds its slot (or needs none): start hooks, work, settle,
/// stop hooks.
///
/// An async block rather than an async fn: an async fn's state keeps its
/// arguments twice, as given and as its own locals, for its whole life
/// (see `the_cell_and_future_stay_small`).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice in its state"
)]
pub(crate) fn run_admitted<F, Fut>(
    time_limit: Option<Duration>,
    work: F,
    mut guard: SettleGuard,
) -> impl Future<Output = ()> + Send + 'static
where
    F: FnOnce(TaskContext) -> Fut + Send + 'static,
    Fut: Future<Output = Result<String, TaskFailure>> + Send + 'static,
{
    async move {
        // The registry and the cell are reached through the guard each
        // time, not kept in locals of their own: every byte held across an
        // await is a byte of every task's allocation.
        if guard.cell.token.is_cancelled() {
            guard
                .registry
                .finish(&guard.cell, Outcome::Cancelled, false);
            guard.disarm();
            return;
        }

        // Root runs are not sub-agents: no hooks.
        guard.start_began = !guard.cell.root;
        // The work phase is one future made in a block of its own, and
        // awaited as the block's value: a local still in scope at an await
        // takes room in the future even after it has been moved out.
        let ran = {
            // The hook phases are boxed and entered only when there are
            // hooks: inline, their futures made every task's future more
            // than twice as large.
            let start = if guard.start_began && guard.registry.hooks().has_start_hooks() {
                Box::pin(start_phase(&guard.registry, &guard.cell)).await
            } else {
                StartPhase::Allowed(None)
            };
            match start {
                StartPhase::Denied(failure) => WorkPhase::ended(Outcome::Failed(failure)),
                StartPhase::Cancelled => WorkPhase::ended(Outcome::Cancelled),
                StartPhase::Allowed(additional_context) => {
                    let context = TaskContext {
                        cell: guard.cell.clone(),
                        registry: guard.registry.clone(),
                        additional_context,
                    };
                    WorkPhase::begin(work, context, time_limit, &guard.cell.token)
                }
            }
        }
        .await;
        // Only a task with a time limit can run out of time; the limit is
        // read here rather than kept in the work phase, where it would take
        // room in every task's future.
        let outcome = ran.unwrap_or_else(|_elapsed| timed_out(time_limit.unwrap_or_default()));

        let wants_stop = guard.start_began && guard.registry.hooks().has_stop_hooks();
        let stop_hooks = guard
            .registry
            .finish(&guard.cell, outcome, wants_stop)
            .map(|event| {
                // The event moves into the box, so it takes no room in this
                // future.
                let registry = guard.registry.clone();
                Box::pin(async move { registry.run_stop_hooks(&event).await })
            });
        guard.disarm();
        if let Some(stop_hooks) = stop_hooks {
            stop_hooks.await;
        }
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

/// The work's future, with its panics caught.
type Caught<Fut> = CatchUnwind<AssertUnwindSafe<Fut>>;

pin_project_lite::pin_project! {
    /// The work phase of a task as one future: the work raced against the
    /// task's cancellation (checked first) and, when it has one, its time
    /// limit. Hand-written because a `select!` in an async fn would keep
    /// the work's future twice. `Err` when the time limit passed.
    #[project = WorkPhaseProjection]
    enum WorkPhase<'a, Fut> {
        /// Ended before the work began: denied, cancelled, or the closure
        /// panicked. Taken when polled.
        Ended { outcome: Option<Outcome> },
        Untimed {
            #[pin]
            cancelled: WaitForCancellationFuture<'a>,
            #[pin]
            work: Caught<Fut>,
        },
        /// Boxed: a timer makes the future larger, and most tasks have none.
        Timed {
            #[pin]
            cancelled: WaitForCancellationFuture<'a>,
            work: Pin<Box<Timeout<Caught<Fut>>>>,
        },
    }
}

impl<'a, Fut> WorkPhase<'a, Fut>
where
    Fut: Future<Output = Result<String, TaskFailure>>,
{
    fn ended(outcome: Outcome) -> Self {
        Self::Ended {
            outcome: Some(outcome),
        }
    }

    /// Makes the work's future from its closure; a closure that panics
    /// ends the phase as failed.
    fn begin<F>(
        work: F,
        context: TaskContext,
        time_limit: Option<Duration>,
        token: &'a CancellationToken,
    ) -> Self
    where
        F: FnOnce(TaskContext) -> Fut,
    {
        let work = match std::panic::catch_unwind(AssertUnwindSafe(move || work(context))) {
            Ok(future) => AssertUnwindSafe(future).catch_unwind(),
            Err(panic) => return Self::ended(Outcome::Failed(panicked(&*panic))),
        };
        match time_limit {
            None => Self::Untimed {
                cancelled: token.cancelled(),
                work,
            },
            Some(limit) => Self::Timed {
                cancelled: token.cancelled(),
                work: Box::pin(tokio::time::timeout(limit, work)),
            },
        }
    }
}

impl<Fut> Future for WorkPhase<'_, Fut>
where
    Fut: Future<Output = Result<String, TaskFailure>>,
{
    type Output = Result<Outcome, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            // Polled again after it was ready: nothing more will come.
            WorkPhaseProjection::Ended { outcome } => outcome
                .take()
                .map_or(Poll::Pending, |outcome| Poll::Ready(Ok(outcome))),
            WorkPhaseProjection::Untimed { cancelled, work } => {
                if cancelled.poll(cx).is_ready() {
                    return Poll::Ready(Ok(Outcome::Cancelled));
                }
                work.poll(cx).map(|ended| Ok(outcome_of(ended)))
            }
            WorkPhaseProjection::Timed { cancelled, work } => {
                if cancelled.poll(cx).is_ready() {
                    return Poll::Ready(Ok(Outcome::Cancelled));
                }
                work.as_mut().poll(cx).map(|ended| ended.map(outcome_of))
            }
        }
    }
}

/// How work that ran to its end (or panicked) ended.
fn outcome_of(ended: std::thread::Result<Result<String, TaskFailure>>) -> Outcome {
    match ended {
        // Made into the shared form here, not under the registry's locks.
        Ok(Ok(text)) => Outcome::Completed(Arc::from(text)),
        Ok(Err(failure)) => Outcome::Failed(failure),
        Err(panic) => Outcome::Failed(panicked(&*panic)),
    }
}

fn timed_out(limit: Duration) -> Outcome {
    Outcome::Failed(TaskFailure::new(
        FailureKind::Timeout,
        format!("ran past its time limit of {}", describe(limit)),
    ))
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
