//! The public face of the registry: spawn, cancel, read, wait, deliver.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::cell::{Prepared, TaskCell};
use crate::error::{CancelOutcome, SpawnError, UnknownTask};
use crate::event::RegistryEvent;
use crate::hook::{HookFailure, HookStack, SubagentStartEvent, SubagentStopEvent};
use crate::id::TaskId;
use crate::live::SettingsHandle;
use crate::load::{AgentLoadSnapshot, Clock, LoadTracker, TokioClock};
use crate::selector::{AgentCandidate, Selection, SelectionError, SelectionRequest, Selector};
use crate::settings::SubagentSettings;
use crate::snapshot::{TaskFilter, TaskSnapshot, WaitOutcome};
use crate::spec::TaskSpec;
use crate::state::{Admission, Collected, LeaveReason, Outcome, QueueExit, State};
use crate::status::{TaskFailure, TaskStatus};
use crate::task::{self, SettleGuard, TaskContext};

/// Default capacity of the lifecycle event channel.
pub const DEFAULT_EVENT_CAPACITY: usize = 1024;

/// Admission, lifecycle and delivery for background sub-agents.
///
/// Cheap to clone; every clone is the same registry. See the crate docs for
/// an example and ARCHITECTURE.md for the invariants it keeps.
#[derive(Clone)]
pub struct Registry {
    shared: Arc<Shared>,
}

/// A registry reference that does not keep it alive, for hooks that read
/// the registry they are part of (a strong reference there would be a
/// cycle: registry → hook stack → hook → registry).
#[derive(Clone)]
pub struct WeakRegistry {
    shared: Weak<Shared>,
}

impl WeakRegistry {
    /// The registry, while it still exists.
    pub fn upgrade(&self) -> Option<Registry> {
        self.shared.upgrade().map(|shared| Registry { shared })
    }
}

impl fmt::Debug for WeakRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakRegistry")
            .field("alive", &(self.shared.strong_count() > 0))
            .finish()
    }
}

struct Shared {
    state: State,
    hooks: HookStack,
    tracker: TaskTracker,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("stats", &self.stats())
            .field("hooks", &self.shared.hooks)
            .finish_non_exhaustive()
    }
}

/// The answer to a successful spawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Spawned {
    /// The new task.
    pub id: TaskId,
    /// `Running` if it got a slot at once, `Queued` if it waits for one.
    pub status: TaskStatus,
}

/// Counts that describe the registry right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RegistryStats {
    /// Slots held (at most `max_concurrent` at every admission).
    pub slots_in_use: usize,
    /// Sub-agents running, including foreground children on a lent slot.
    pub running: usize,
    /// Sub-agents waiting for a slot.
    pub queued: usize,
    /// The cap in force.
    pub max_concurrent: usize,
    /// Finished tasks kept for reading.
    pub retained_finished: usize,
    /// Finished tasks whose result has not been handed over.
    pub undelivered: usize,
    /// Every task the registry holds, in any state.
    pub tracked: usize,
    /// Spawns accepted since start.
    pub spawned: u64,
    /// Spawns refused since start.
    pub refused: u64,
    /// Hook calls that errored, panicked or timed out.
    pub hook_failures: u64,
    /// Finished tasks evicted before anyone read them (see `max_finished`).
    pub evicted_undelivered: u64,
}

/// How a shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Whether every task ended on its own within the drain time.
    pub drained: bool,
    /// Tasks cancelled because they did not.
    pub cancelled: usize,
}

/// Builds a [`Registry`].
#[derive(Debug)]
pub struct RegistryBuilder {
    settings: SettingsHandle,
    hooks: HookStack,
    clock: Arc<dyn Clock>,
    seed: u64,
    event_capacity: usize,
}

impl Default for RegistryBuilder {
    fn default() -> Self {
        Self {
            settings: SettingsHandle::default(),
            hooks: HookStack::new(),
            clock: Arc::new(TokioClock),
            seed: 0x5eed_de97,
            event_capacity: DEFAULT_EVENT_CAPACITY,
        }
    }
}

impl RegistryBuilder {
    /// The live settings to follow (default: the defaults, never changed).
    #[must_use]
    pub fn settings(mut self, settings: SettingsHandle) -> Self {
        self.settings = settings;
        self
    }

    /// The hooks to run, in their order.
    #[must_use]
    pub fn hooks(mut self, hooks: HookStack) -> Self {
        self.hooks = hooks;
        self
    }

    /// The clock the load tracker reads.
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Seed for the selector's random choices (`p2c`).
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Capacity of the lifecycle event channel (at least 1).
    #[must_use]
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// Builds the registry and starts its housekeeping task, which applies
    /// new settings the moment they are published and runs the
    /// `queue_poll_ms` sweep.
    ///
    /// # Panics
    /// Outside a Tokio runtime, like `tokio::spawn`.
    pub fn build(self) -> Registry {
        let (events, _) = broadcast::channel(self.event_capacity);
        let state = State::new(
            self.settings,
            LoadTracker::new(self.clock),
            Selector::with_seed(self.seed),
            events,
        );
        let shared = Arc::new(Shared {
            state,
            hooks: self.hooks,
            tracker: TaskTracker::new(),
        });
        tokio::spawn(housekeeping(Arc::downgrade(&shared)));
        Registry { shared }
    }
}

/// Applies published settings at once and sweeps every `queue_poll_ms`
/// until the registry is dropped.
async fn housekeeping(shared: Weak<Shared>) {
    let Some(mut changes) = shared
        .upgrade()
        .map(|shared| shared.state.settings_handle().subscribe())
    else {
        return;
    };
    loop {
        let Some(poll) = shared
            .upgrade()
            .map(|shared| shared.state.settings().queue_poll())
        else {
            return;
        };
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(poll) => {}
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.state.sweep();
    }
}

impl Registry {
    /// A builder with default settings and no hooks.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }

    /// Starts a sub-agent task, or queues it until a slot is free.
    ///
    /// Returns at once with the new id and whether it is running or queued.
    /// `work` is called once a slot is granted and the start hooks allowed
    /// it; its future is dropped as soon as the task is cancelled (directly
    /// or through an ancestor) and is failed with `timeout` past
    /// `spec.time_limit`. A panic in it fails the task with `panicked`.
    ///
    /// A foreground spec (`background = false`) whose parent is running on
    /// a slot borrows that slot while the parent awaits it, so nested calls
    /// never deadlock the cap.
    ///
    /// # Errors
    /// Refused at once, leaving nothing behind, when sub-agents are
    /// disabled, the queue is full, the cap is full and `queue_wait_ms` is
    /// 0, the parent is unknown or not running, or the registry is shutting
    /// down.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn spawn<F, Fut>(&self, spec: TaskSpec, work: F) -> Result<Spawned, SpawnError>
    where
        F: FnOnce(TaskContext) -> Fut + Send + 'static,
        Fut: Future<Output = Result<String, TaskFailure>> + Send + 'static,
    {
        self.spawn_inner(spec, false, work)
    }

    /// Starts a root run: an orchestrator whose sub-agents are its children.
    ///
    /// A root run holds no slot, is never queued, runs no hooks and is not
    /// refused when sub-agents are disabled; it exists so its children have
    /// a parent to cascade cancels from and to deliver results to.
    ///
    /// # Errors
    /// When the registry is shutting down or the spec is unusable.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn spawn_root<F, Fut>(&self, spec: TaskSpec, work: F) -> Result<Spawned, SpawnError>
    where
        F: FnOnce(TaskContext) -> Fut + Send + 'static,
        Fut: Future<Output = Result<String, TaskFailure>> + Send + 'static,
    {
        self.spawn_inner(spec, true, work)
    }

    fn spawn_inner<F, Fut>(
        &self,
        spec: TaskSpec,
        root: bool,
        work: F,
    ) -> Result<Spawned, SpawnError>
    where
        F: FnOnce(TaskContext) -> Fut + Send + 'static,
        Fut: Future<Output = Result<String, TaskFailure>> + Send + 'static,
    {
        let time_limit = spec.time_limit;
        // What needs no lock is made before any is taken.
        let prepared = Prepared::new(spec, root, self.shared.state.next_seq());
        let id = prepared.id();
        let new = self.shared.state.spawn(prepared)?;
        if self.shared.state.cancelling_all() {
            // It got past the shutdown check before shutdown began, and
            // shutdown's sweep may have missed it.
            let _ = self.cancel(id);
        }
        let cell = new.cell.clone();
        let guard = SettleGuard::new(self.clone(), new.cell);
        let (status, join) = match new.admission {
            Admission::Running => (
                TaskStatus::Running,
                self.shared
                    .tracker
                    .spawn(task::run_admitted(time_limit, work, guard)),
            ),
            Admission::Queued { admitted, deadline } => (
                TaskStatus::Queued,
                self.shared.tracker.spawn(task::run_queued(
                    admitted, deadline, time_limit, work, guard,
                )),
            ),
        };
        // Kept until the result is collected; see `TaskCell::join`.
        *cell.join.lock() = Some(join);
        Ok(Spawned { id, status })
    }

    /// Cancels a queued or running task and, through its cancel token, all
    /// of its descendants.
    ///
    /// Says truthfully what happened: cancelled (and from which status), or
    /// already finished (and how). A queued task is settled at once; a
    /// running one is marked cancelled at once and its work is dropped at
    /// its next await point, which releases its slot.
    ///
    /// # Errors
    /// When the id is unknown.
    pub fn cancel(&self, id: TaskId) -> Result<CancelOutcome, UnknownTask> {
        self.shared.state.cancel(id)
    }

    /// The task's state now, without marking its result delivered.
    pub fn get(&self, id: TaskId) -> Option<TaskSnapshot> {
        self.shared.state.snapshot(id, Instant::now())
    }

    /// Tasks matching `filter`, in spawn order.
    pub fn list(&self, filter: &TaskFilter) -> Vec<TaskSnapshot> {
        self.shared.state.list(filter)
    }

    /// Waits until the task has finished, or until `timeout` (`None`: no
    /// limit), and returns its state.
    ///
    /// A finished task's result is marked delivered by this call, so
    /// [`take_finished`](Self::take_finished) never hands it over again. A
    /// wait that times out returns the current (queued or running) state
    /// and consumes nothing.
    ///
    /// # Cancel safety
    /// Cancel safe: the result is marked delivered only in the same
    /// synchronous step that returns it, so dropping the future before it
    /// completes consumes nothing.
    ///
    /// # Errors
    /// When the id is unknown (never spawned, or evicted after delivery).
    pub async fn wait(
        &self,
        id: TaskId,
        timeout: Option<Duration>,
    ) -> Result<WaitOutcome, UnknownTask> {
        // Most waits find the task finished: no waiter set up. The join
        // handle a collect hands back is dropped here, after the locks.
        let collected = self.shared.state.collect(id)?;
        let cell = match collected {
            Collected::Finished(outcome, _join) => return Ok(outcome),
            Collected::Pending(cell) => cell,
        };
        let deadline = timeout.and_then(|timeout| Instant::now().checked_add(timeout));
        loop {
            let notified = cell.done.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            // Checked after enabling the waiter, so a settle in between is
            // not missed.
            let collected = self.shared.state.collect(id)?;
            if let Collected::Finished(outcome, _join) = collected {
                return Ok(outcome);
            }
            let timed_out = match deadline {
                None => {
                    notified.await;
                    false
                }
                Some(deadline) => tokio::time::timeout_at(deadline, notified).await.is_err(),
            };
            if timed_out {
                // It may have finished just as time ran out: then hand it
                // over rather than report a stale state.
                let state = &self.shared.state;
                if let Collected::Finished(outcome, _join) = state.collect(id)? {
                    return Ok(outcome);
                }
                let task = state.snapshot(id, Instant::now()).ok_or(UnknownTask(id))?;
                return Ok(WaitOutcome {
                    task,
                    newly_delivered: false,
                });
            }
        }
    }

    /// Every finished child of `parent` (or, for `None`, every finished
    /// parentless task) whose result has not been handed over yet, oldest
    /// first; each is marked delivered and never returned again.
    pub fn take_finished(&self, parent: Option<TaskId>) -> Vec<TaskSnapshot> {
        let (taken, joins) = self.shared.state.take_finished(parent);
        // Dropped after the locks; see `TaskCell::join`.
        drop(joins);
        taken
    }

    /// A reference that does not keep the registry alive.
    pub fn downgrade(&self) -> WeakRegistry {
        WeakRegistry {
            shared: Arc::downgrade(&self.shared),
        }
    }

    /// A stream of lifecycle events from now on (see [`RegistryEvent`]).
    pub fn subscribe(&self) -> broadcast::Receiver<RegistryEvent> {
        self.shared.state.subscribe()
    }

    /// Counts that describe the registry now.
    pub fn stats(&self) -> RegistryStats {
        self.shared.state.stats()
    }

    /// The settings in force.
    pub fn settings(&self) -> Arc<SubagentSettings> {
        self.shared.state.settings()
    }

    /// The handle the registry follows; publish on it to change settings.
    pub fn settings_handle(&self) -> &SettingsHandle {
        self.shared.state.settings_handle()
    }

    /// Sets (or, with `None`, removes) an agent's own cap. A waiter held
    /// back by its agent's cap does not block waiters of other agents.
    /// Raising or removing a cap admits waiting tasks at once.
    pub fn set_agent_limit(&self, agent: &str, max_concurrent: Option<usize>) {
        self.shared.state.set_agent_cap(agent, max_concurrent);
    }

    /// Picks an agent for a task (see [`Selector`]) using the live load and
    /// strategy, and records the selection.
    ///
    /// # Errors
    /// When no agent fits (see [`SelectionError`]).
    pub fn select_agent(
        &self,
        request: &SelectionRequest<'_>,
        candidates: &[AgentCandidate],
    ) -> Result<Selection, SelectionError> {
        self.shared.state.select_agent(request, candidates)
    }

    /// One agent's load as the selector sees it.
    pub fn agent_load(&self, agent: &str) -> AgentLoadSnapshot {
        self.shared.state.agent_load(agent)
    }

    /// Stops taking new tasks, lets running and queued ones finish for up
    /// to `drain`, then cancels the rest and waits until every task has
    /// settled and every pending SubagentStop has run.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping the future leaves the registry refusing new
    /// tasks, with whatever was cancelled so far cancelled.
    pub async fn shutdown(&self, drain: Duration) -> ShutdownReport {
        self.shared.state.begin_shutdown();
        self.shared.tracker.close();
        if tokio::time::timeout(drain, self.shared.tracker.wait())
            .await
            .is_ok()
        {
            return ShutdownReport {
                drained: true,
                cancelled: 0,
            };
        }
        let active = self.shared.state.begin_cancelling_all();
        let cancelled = active
            .into_iter()
            .filter(|id| matches!(self.cancel(*id), Ok(CancelOutcome::Cancelled { .. })))
            .count();
        self.shared.tracker.wait().await;
        ShutdownReport {
            drained: false,
            cancelled,
        }
    }

    // ----- used by the task future ---------------------------------------

    /// Runs `future` as part of the registry's work, so shutdown waits for it.
    pub(crate) fn track(&self, future: impl Future<Output = ()> + Send + 'static) {
        self.shared.tracker.spawn(future);
    }

    pub(crate) fn hooks(&self) -> &HookStack {
        &self.shared.hooks
    }

    pub(crate) fn leave_queue(&self, cell: &Arc<TaskCell>, reason: LeaveReason) -> QueueExit {
        self.shared.state.leave_queue(cell, reason)
    }

    pub(crate) fn finish(
        &self,
        cell: &Arc<TaskCell>,
        outcome: Outcome,
        stop_event_wanted: bool,
    ) -> Option<SubagentStopEvent> {
        self.shared.state.finish(cell, outcome, stop_event_wanted)
    }

    pub(crate) fn abandon(
        &self,
        cell: &Arc<TaskCell>,
        start_began: bool,
    ) -> Option<SubagentStopEvent> {
        let wants_stop = start_began && self.shared.hooks.has_stop_hooks();
        self.shared.state.abandon(cell, wants_stop)
    }

    pub(crate) fn start_event(&self, cell: &TaskCell) -> SubagentStartEvent {
        self.shared.state.start_event(cell)
    }

    pub(crate) async fn run_stop_hooks(&self, event: &SubagentStopEvent) {
        let id = event.task.id;
        let report = |failure| self.report_hook_failure(id, failure);
        self.shared.hooks.run_stop(event, &report).await;
    }

    pub(crate) fn report_hook_failure(&self, id: TaskId, failure: HookFailure) {
        tracing::warn!(
            task_id = %id,
            hook = %failure.hook,
            event = failure.event.as_str(),
            reason = %failure.reason,
            "hook failed; the task goes on"
        );
        self.shared
            .state
            .emit_hook_failure(RegistryEvent::HookFailed {
                task_id: id,
                hook: failure.hook,
                event: failure.event,
                reason: failure.reason,
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::FailureKind;

    /// Every spawn allocates its task's future and its cell, and on a busy
    /// registry fresh memory is much of a spawn's cost (BENCHMARKS.md). The
    /// hook phases and the time limit's timer are boxed and entered only
    /// when present: inline, they made the future 1,088 bytes. Ending each
    /// phase's scope before the next await took it from 424 to 320 bytes.
    /// Async blocks in place of async fns (which keep their arguments
    /// twice) and hand-written races in place of `select!` (which kept the
    /// work twice, and adds state of its own) took it to 136, and a queued
    /// task's from 336 to 264. Tokio rounds a task's allocation up to a
    /// multiple of 128 bytes: these sizes make it 256 and 384 bytes rather
    /// than 512. Boxing the failure and the lending took the cell from 456
    /// to 392, and a delivered flag in place of a delivery time to 376.
    #[tokio::test]
    async fn the_cell_and_future_stay_small() {
        let registry = Registry::builder().build();
        let prepared = Prepared::new(TaskSpec::new("probe", "size"), false, 0);
        let id = prepared.id();
        let new = registry.shared.state.spawn(prepared).unwrap();
        let work = |_| async { Ok(String::new()) };
        let guard = SettleGuard::new(registry.clone(), new.cell);
        let running = task::run_admitted(None, work, guard);
        let running_size = std::mem::size_of_val(&running);
        // Dropped unpolled: the guard settles the task and frees its slot.
        drop(running);
        let grow = "box what made it grow, or end the scope of what is held across an await";
        assert!(
            running_size <= 136,
            "a running task's future is {running_size} bytes; {grow}"
        );
        let (_admit, admitted) = tokio::sync::oneshot::channel();
        let guard = SettleGuard::new(registry.clone(), registry.shared.state.cell(id).unwrap());
        let queued = task::run_queued(admitted, Instant::now(), None, work, guard);
        let queued_size = std::mem::size_of_val(&queued);
        drop(queued);
        assert!(
            queued_size <= 264,
            "a queued task's future is {queued_size} bytes; {grow}"
        );
        // The cell is the other allocation every task makes.
        let cell = std::mem::size_of::<TaskCell>();
        assert!(
            cell <= 376,
            "a task's cell is {cell} bytes; box the fields few tasks use"
        );
        assert_eq!(registry.stats().slots_in_use, 0);
        assert_eq!(
            registry.get(id).unwrap().status,
            TaskStatus::Cancelled,
            "the drop guard settles the task"
        );
    }

    /// A task's join handle is kept until its result is handed over, and
    /// let go by every way of handing it over, so a delivered task holds no
    /// Tokio task memory.
    #[tokio::test]
    async fn the_join_handle_is_kept_until_the_result_is_delivered() {
        let registry = Registry::builder().build();
        let keeps = |id| registry.shared.state.keeps_join_handle(id);
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let waited = registry
            .spawn(TaskSpec::new("probe", "waited"), |_| async move {
                let _ = release_rx.await;
                Ok("done".to_owned())
            })
            .unwrap()
            .id;
        let taken = registry
            .spawn(TaskSpec::new("probe", "taken"), |_| async {
                Ok("done".to_owned())
            })
            .unwrap()
            .id;
        assert_eq!(keeps(waited), Some(true), "kept while running");

        release_tx.send(()).unwrap();
        while registry.get(waited).unwrap().status == TaskStatus::Running
            || registry.get(taken).unwrap().status == TaskStatus::Running
        {
            tokio::task::yield_now().await;
        }
        assert_eq!(keeps(waited), Some(true), "kept while undelivered");
        assert_eq!(keeps(taken), Some(true), "kept while undelivered");

        registry.wait(waited, None).await.unwrap();
        assert_eq!(keeps(waited), Some(false), "let go by a collecting wait");
        let results = registry.take_finished(None);
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].id, taken);
        assert_eq!(keeps(taken), Some(false), "let go by take_finished");

        // A failed parent's unread children are delivered to nobody.
        let (fail_tx, fail_rx) = tokio::sync::oneshot::channel::<()>();
        let parent = registry
            .spawn(TaskSpec::new("probe", "parent"), |_| async move {
                let _ = fail_rx.await;
                Err(TaskFailure::new(FailureKind::Other, "gave up"))
            })
            .unwrap()
            .id;
        let child = registry
            .spawn(
                TaskSpec::new("probe", "child")
                    .parent(parent)
                    .background(true),
                |_| async { Ok("done".to_owned()) },
            )
            .unwrap()
            .id;
        while registry.get(child).unwrap().status == TaskStatus::Running {
            tokio::task::yield_now().await;
        }
        assert_eq!(keeps(child), Some(true));
        fail_tx.send(()).unwrap();
        registry.wait(parent, None).await.unwrap();
        assert!(registry.get(child).unwrap().delivered);
        assert_eq!(keeps(child), Some(false), "let go when delivered to nobody");
    }

    /// A spawn can pass the shutdown check just before shutdown begins and
    /// reach the task table only after shutdown's sweep has read it (its
    /// thread held up for the whole drain time). Such a task is cancelled
    /// by its own spawn. The race is set up by starting the sweep without
    /// the check that would refuse the spawn.
    #[tokio::test(start_paused = true)]
    async fn a_spawn_that_lands_after_the_shutdown_sweep_is_cancelled() {
        let registry = Registry::builder().build();
        assert!(registry.shared.state.begin_cancelling_all().is_empty());
        let id = registry
            .spawn(TaskSpec::new("probe", "late"), |_| std::future::pending())
            .unwrap()
            .id;
        let waited = tokio::time::timeout(Duration::from_secs(60), registry.wait(id, None))
            .await
            .expect("a task spawned after the sweep was left running");
        assert_eq!(waited.unwrap().task.status, TaskStatus::Cancelled);
        assert_eq!(registry.stats().running, 0);
    }
}
