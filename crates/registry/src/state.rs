//! The registry's state machine: admission, the fair queue, slots, lending,
//! retention and delivery.
//!
//! Everything here is synchronous and runs under the registry's one lock;
//! nothing in this module awaits, and no hook runs from here.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tokio::sync::{Notify, broadcast, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{CancelOutcome, SpawnError, UnknownTask};
use crate::event::RegistryEvent;
use crate::hook::{HookTask, SubagentStartEvent, SubagentStopEvent};
use crate::id::TaskId;
use crate::load::{LoadTracker, RunOutcome};
use crate::selector::Selector;
use crate::settings::SubagentSettings;
use crate::snapshot::{TaskFilter, TaskSnapshot, WaitOutcome};
use crate::spec::{TaskLabels, TaskSpec};
use crate::status::{FailureKind, TaskFailure, TaskStatus};
use crate::usage::Usage;

/// The parts of a task that never change after spawn, shared between the
/// registry's entry and the task's own future.
#[derive(Debug)]
pub(crate) struct TaskCell {
    pub(crate) id: TaskId,
    pub(crate) agent: Arc<str>,
    pub(crate) task: Arc<str>,
    pub(crate) parent: Option<TaskId>,
    pub(crate) labels: TaskLabels,
    pub(crate) background: bool,
    pub(crate) root: bool,
    pub(crate) depth: u32,
    pub(crate) created: Instant,
    pub(crate) created_at: SystemTime,
    pub(crate) token: CancellationToken,
    pub(crate) usage: Mutex<Usage>,
    /// Woken when the task has finished and settled.
    pub(crate) done: Notify,
    /// The task's join handle, kept until its result is handed over. The
    /// delivery takes it; a collecting wait and `take_finished` drop it
    /// outside the registry's lock.
    ///
    /// Why keep it: a Tokio task's memory is freed by whoever drops the
    /// last reference to it. Dropped at spawn, that is the worker that ran
    /// the task, and glibc's malloc returns a block freed on another thread
    /// to the arena that made it, under that arena's lock (`_int_free` in
    /// glibc's malloc/malloc.c), which the spawning thread holds for each
    /// of its own allocations. Held here, the memory is freed by the thread
    /// that collects the result, most often the one that spawned it; the
    /// throughput benchmark's figures are in BENCHMARKS.md.
    ///
    /// The spawn stores it just after the task is spawned, so a result
    /// collected in between (by someone who learnt the id from an event)
    /// leaves it here until the entry is evicted: memory held a little
    /// longer, never leaked.
    pub(crate) join: Mutex<Option<JoinHandle<()>>>,
}

/// Which slot a task runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// None: queued, finished, or a root run.
    None,
    /// One of the `max_concurrent` slots.
    Own,
    /// The slot of this task (its parent), lent while the parent awaits it.
    Borrowed(TaskId),
}

#[derive(Debug)]
struct Entry {
    cell: Arc<TaskCell>,
    /// Spawn order, for FIFO admission.
    seq: u64,
    status: TaskStatus,
    failure: Option<TaskFailure>,
    output: Option<Arc<str>>,
    started: Option<Instant>,
    ended: Option<Instant>,
    slot: Slot,
    /// The foreground child this task's slot is lent to.
    lent_to: Option<TaskId>,
    /// Queued foreground children waiting for this task's slot, oldest first
    /// (entries that left the queue another way are skipped when read).
    borrowers: VecDeque<TaskId>,
    /// Wakes the task's future when it is admitted from the queue.
    admit: Option<oneshot::Sender<()>>,
    delivered_at: Option<Instant>,
}

/// One agent's waiters in spawn order. Entries whose task left the queue
/// another way (cancel, timeout, borrowed slot) stay as tombstones until
/// they reach the front or the deque is compacted.
#[derive(Debug, Default)]
struct AgentQueue {
    waiters: VecDeque<(u64, TaskId)>,
    live: usize,
}

/// One parent's finished children, in finish order. `undelivered` counts the
/// ones not yet handed over; the inbox is dropped when it reaches zero, so
/// ids delivered by a wait never pile up here.
#[derive(Debug, Default)]
struct Inbox {
    finished: Vec<TaskId>,
    undelivered: usize,
}

/// The parts of a new task that need no lock, made before the spawn takes
/// it so the locked section stays short.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) id: TaskId,
    created: Instant,
    created_at: SystemTime,
    /// A parentless task's own cancel scope; a child's token is made from
    /// its parent's under the lock.
    token: Option<CancellationToken>,
}

impl Prepared {
    pub(crate) fn new(spec: &TaskSpec) -> Self {
        Self {
            id: TaskId::new_random(),
            created: Instant::now(),
            created_at: SystemTime::now(),
            token: spec.parent.is_none().then(CancellationToken::new),
        }
    }
}

/// A task just created by [`State::spawn`].
#[derive(Debug)]
pub(crate) struct NewTask {
    pub(crate) cell: Arc<TaskCell>,
    pub(crate) admission: Admission,
}

#[derive(Debug)]
pub(crate) enum Admission {
    /// It holds a slot (or needs none) and may run at once.
    Running,
    /// It waits; `admitted` fires when a slot is handed to it, and the
    /// sender is dropped if it leaves the queue by a cancel.
    Queued {
        admitted: oneshot::Receiver<()>,
        deadline: Instant,
    },
}

/// What [`State::collect`] found.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "returned by value once per wait; boxing would add an allocation to the hot path"
)]
pub(crate) enum Collected {
    /// Finished: its result, now delivered, and the task's join handle if
    /// this delivery took it, for the caller to drop once the lock is
    /// released (see [`TaskCell::join`]).
    Finished(WaitOutcome, Option<JoinHandle<()>>),
    /// Not finished yet: the cell whose `done` wakes waiters.
    Pending(Arc<TaskCell>),
}

/// How a queued task's wait ended, seen from its own future.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueExit {
    /// A slot was handed over first; run.
    Admitted,
    /// It ended while queued (cancelled or timed out); do nothing more.
    Ended,
}

/// How a task's work ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    Completed(Arc<str>),
    Failed(TaskFailure),
    Cancelled,
}

/// Counters for [`RegistryStats`](crate::RegistryStats).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counters {
    pub(crate) spawned: u64,
    pub(crate) refused: u64,
    pub(crate) hook_failures: u64,
    pub(crate) evicted_undelivered: u64,
}

#[derive(Debug)]
pub(crate) struct State {
    settings: Arc<SubagentSettings>,
    settings_rx: watch::Receiver<Arc<SubagentSettings>>,
    tasks: FxHashMap<TaskId, Box<Entry>>,
    queues: FxHashMap<Arc<str>, AgentQueue>,
    n_queued: usize,
    slots_in_use: usize,
    n_running_tasks: usize,
    agent_running: FxHashMap<Arc<str>, usize>,
    agent_caps: FxHashMap<Arc<str>, usize>,
    next_seq: u64,
    /// Finished tasks in finish order, for last-resort eviction; entries
    /// delivered or evicted since are stale and skipped.
    finished_order: VecDeque<TaskId>,
    /// How many finished tasks have not been delivered.
    n_undelivered: usize,
    /// Finished, undelivered tasks per parent.
    inboxes: FxHashMap<Option<TaskId>, Inbox>,
    /// Delivered tasks by delivery time.
    delivered: VecDeque<(Instant, TaskId)>,
    pub(crate) load: LoadTracker,
    pub(crate) selector: Selector,
    shutting_down: bool,
    pub(crate) counters: Counters,
    events: broadcast::Sender<RegistryEvent>,
}

impl State {
    pub(crate) fn new(
        settings_rx: watch::Receiver<Arc<SubagentSettings>>,
        load: LoadTracker,
        selector: Selector,
        events: broadcast::Sender<RegistryEvent>,
    ) -> Self {
        let settings = settings_rx.borrow().clone();
        Self {
            settings,
            settings_rx,
            tasks: FxHashMap::default(),
            queues: FxHashMap::default(),
            n_queued: 0,
            slots_in_use: 0,
            n_running_tasks: 0,
            agent_running: FxHashMap::default(),
            agent_caps: FxHashMap::default(),
            next_seq: 0,
            finished_order: VecDeque::new(),
            n_undelivered: 0,
            inboxes: FxHashMap::default(),
            delivered: VecDeque::new(),
            load,
            selector,
            shutting_down: false,
            counters: Counters::default(),
            events,
        }
    }

    fn emit(&self, event: RegistryEvent) {
        // No subscribers is fine: events are for whoever listens.
        let _ = self.events.send(event);
    }

    pub(crate) fn settings(&self) -> &Arc<SubagentSettings> {
        &self.settings
    }

    /// Picks up newly published settings and acts on them: admits waiters
    /// if the cap rose and announces the change.
    pub(crate) fn refresh_settings(&mut self) {
        if !self.settings_rx.has_changed().unwrap_or(false) {
            return;
        }
        let new = self.settings_rx.borrow_and_update().clone();
        if *new == *self.settings {
            return;
        }
        tracing::info!(
            old_max_concurrent = self.settings.max_concurrent(),
            new_max_concurrent = new.max_concurrent(),
            enabled = new.enabled(),
            queue_wait_ms = u64::try_from(new.queue_wait().as_millis()).unwrap_or(u64::MAX),
            "sub-agent settings applied"
        );
        self.settings = new.clone();
        self.emit(RegistryEvent::SettingsApplied { settings: new });
        self.admit_waiters();
    }

    pub(crate) fn begin_shutdown(&mut self) {
        self.shutting_down = true;
    }

    fn agent_has_room(
        agent_running: &FxHashMap<Arc<str>, usize>,
        agent_caps: &FxHashMap<Arc<str>, usize>,
        agent: &str,
    ) -> bool {
        match agent_caps.get(agent) {
            None => true,
            Some(cap) => agent_running.get(agent).copied().unwrap_or(0) < *cap,
        }
    }

    pub(crate) fn set_agent_cap(&mut self, agent: &str, cap: Option<usize>) {
        match cap {
            Some(cap) => {
                self.agent_caps.insert(Arc::from(agent), cap.max(1));
            }
            None => {
                self.agent_caps.remove(agent);
            }
        }
        self.admit_waiters();
    }

    // ----- spawning -------------------------------------------------------

    pub(crate) fn spawn(
        &mut self,
        spec: TaskSpec,
        root: bool,
        prepared: Prepared,
    ) -> Result<NewTask, SpawnError> {
        self.refresh_settings();
        let result = self.try_spawn(spec, root, prepared);
        match &result {
            Ok(_) => self.counters.spawned += 1,
            Err(_) => self.counters.refused += 1,
        }
        result
    }

    fn try_spawn(
        &mut self,
        spec: TaskSpec,
        root: bool,
        prepared: Prepared,
    ) -> Result<NewTask, SpawnError> {
        let Prepared {
            id,
            created: now,
            created_at,
            token,
        } = prepared;
        if self.shutting_down {
            return Err(SpawnError::ShuttingDown);
        }
        if spec.agent.trim().is_empty() {
            return Err(SpawnError::InvalidSpec(
                "the agent name is empty; name a configured agent",
            ));
        }
        if !root && !self.settings.enabled() {
            return Err(SpawnError::Disabled);
        }

        // The parent decides depth, cancel scope and whether a slot can be
        // borrowed.
        let (depth, token, lender) = match spec.parent {
            // A parentless task is its own cancel scope; shutdown cancels
            // every task by id.
            None => (u32::from(!root), token.unwrap_or_default(), None),
            Some(parent_id) => {
                let parent = self
                    .tasks
                    .get(&parent_id)
                    .ok_or(SpawnError::UnknownParent(parent_id))?;
                if parent.status != TaskStatus::Running {
                    return Err(SpawnError::ParentNotRunning {
                        parent: parent_id,
                        status: parent.status,
                    });
                }
                let can_lend = !root
                    && !spec.background
                    && parent.slot != Slot::None
                    && parent.lent_to.is_none();
                let waits_for_lend = !root && !spec.background && parent.slot != Slot::None;
                (
                    parent.cell.depth.saturating_add(1),
                    parent.cell.token.child_token(),
                    waits_for_lend.then_some((parent_id, can_lend)),
                )
            }
        };

        let agent = spec.agent.clone();
        let max_concurrent = self.settings.max_concurrent();
        let queue_wait = self.settings.queue_wait();
        let cell = Arc::new(TaskCell {
            id,
            agent: agent.clone(),
            task: spec.task,
            parent: spec.parent,
            labels: spec.labels,
            background: spec.background,
            root,
            depth,
            created: now,
            created_at,
            token,
            usage: Mutex::new(Usage::default()),
            done: Notify::new(),
            join: Mutex::new(None),
        });

        let slot = if root {
            Some(Slot::None)
        } else if let Some((parent_id, true)) = lender {
            Some(Slot::Borrowed(parent_id))
        } else if self.slots_in_use < max_concurrent
            && Self::agent_has_room(&self.agent_running, &self.agent_caps, &agent)
        {
            Some(Slot::Own)
        } else {
            None
        };

        if slot.is_none() {
            if queue_wait.is_zero() {
                return Err(if let Some((parent, false)) = lender {
                    SpawnError::LentSlotBusy { parent }
                } else if self.slots_in_use < max_concurrent {
                    SpawnError::AgentAtCapacity {
                        agent: agent.to_string(),
                        max_concurrent: self.agent_caps.get(&agent).copied().unwrap_or(0),
                    }
                } else {
                    SpawnError::AtCapacity { max_concurrent }
                });
            }
            if self.n_queued >= self.settings.max_queue() {
                return Err(SpawnError::QueueFull {
                    max_queue: self.settings.max_queue(),
                });
            }
        }

        let seq = self.next_seq;
        self.next_seq += 1;
        let mut entry = Entry {
            cell: cell.clone(),
            seq,
            status: TaskStatus::Queued,
            failure: None,
            output: None,
            started: None,
            ended: None,
            slot: Slot::None,
            lent_to: None,
            borrowers: VecDeque::new(),
            admit: None,
            delivered_at: None,
        };

        let admission = match slot {
            Some(slot) => {
                entry.status = TaskStatus::Running;
                entry.started = Some(now);
                entry.slot = slot;
                match slot {
                    Slot::Own => self.slots_in_use += 1,
                    Slot::Borrowed(parent_id) => {
                        if let Some(parent) = self.tasks.get_mut(&parent_id) {
                            parent.lent_to = Some(id);
                        }
                    }
                    Slot::None => {}
                }
                self.tasks.insert(id, Box::new(entry));
                if !root {
                    self.note_started(&agent);
                    self.emit(RegistryEvent::Started {
                        task_id: id,
                        agent,
                        parent_id: cell.parent,
                        running: self.slots_in_use,
                        max_concurrent,
                        borrowed: matches!(slot, Slot::Borrowed(_)),
                        queued_for: Duration::ZERO,
                    });
                }
                Admission::Running
            }
            None => {
                let (sender, admitted) = oneshot::channel();
                entry.admit = Some(sender);
                self.tasks.insert(id, Box::new(entry));
                let queue = self.queues.entry(agent.clone()).or_default();
                queue.waiters.push_back((seq, id));
                queue.live += 1;
                self.n_queued += 1;
                if let Some((parent_id, false)) = lender
                    && let Some(parent) = self.tasks.get_mut(&parent_id)
                {
                    let mut borrowers = std::mem::take(&mut parent.borrowers);
                    if borrowers.len() >= 16 {
                        // Children that left the queue another way.
                        let tasks = &self.tasks;
                        borrowers.retain(|borrower| {
                            tasks
                                .get(borrower)
                                .is_some_and(|entry| entry.status == TaskStatus::Queued)
                        });
                    }
                    borrowers.push_back(id);
                    if let Some(parent) = self.tasks.get_mut(&parent_id) {
                        parent.borrowers = borrowers;
                    }
                }
                self.emit(RegistryEvent::Queued {
                    task_id: id,
                    agent,
                    parent_id: cell.parent,
                    queued: self.n_queued,
                });
                Admission::Queued {
                    admitted,
                    deadline: now + queue_wait,
                }
            }
        };
        Ok(NewTask { cell, admission })
    }

    fn note_started(&mut self, agent: &Arc<str>) {
        self.n_running_tasks += 1;
        *self.agent_running.entry(agent.clone()).or_default() += 1;
        self.load.record_started(agent);
    }

    // ----- the queue ------------------------------------------------------

    /// Bookkeeping for a task leaving its agent's queue other than from the
    /// front; its deque entry becomes a tombstone.
    fn leave_queue_bookkeeping(&mut self, agent: &Arc<str>) {
        self.n_queued = self.n_queued.saturating_sub(1);
        if let Some(queue) = self.queues.get_mut(agent) {
            queue.live = queue.live.saturating_sub(1);
            if queue.live == 0 {
                self.queues.remove(agent);
            } else if queue.waiters.len() > 2 * queue.live + 32 {
                let tasks = &self.tasks;
                queue
                    .waiters
                    .retain(|(seq, id)| is_waiting(tasks, *id, *seq));
            }
        }
    }

    /// Hands free slots to the oldest eligible waiters until slots or
    /// eligible waiters run out.
    fn admit_waiters(&mut self) {
        while self.n_queued > 0 && self.slots_in_use < self.settings.max_concurrent() {
            let Some(id) = self.pop_oldest_eligible() else {
                break;
            };
            self.slots_in_use += 1;
            self.admit_queued(id, Slot::Own);
        }
    }

    /// Removes and returns the oldest waiter whose agent has room.
    fn pop_oldest_eligible(&mut self) -> Option<TaskId> {
        let mut best: Option<(u64, Arc<str>)> = None;
        for (agent, queue) in &mut self.queues {
            if !Self::agent_has_room(&self.agent_running, &self.agent_caps, agent) {
                continue;
            }
            while let Some(&(seq, id)) = queue.waiters.front() {
                if is_waiting(&self.tasks, id, seq) {
                    break;
                }
                queue.waiters.pop_front();
            }
            if let Some(&(seq, _)) = queue.waiters.front()
                && best.as_ref().is_none_or(|(best_seq, _)| seq < *best_seq)
            {
                best = Some((seq, agent.clone()));
            }
        }
        let (_, agent) = best?;
        let queue = self.queues.get_mut(&agent)?;
        let (_, id) = queue.waiters.pop_front()?;
        queue.live = queue.live.saturating_sub(1);
        if queue.live == 0 {
            self.queues.remove(&agent);
        }
        self.n_queued = self.n_queued.saturating_sub(1);
        Some(id)
    }

    /// Marks a task that has just left the queue as running on `slot` and
    /// wakes its future. The caller has done the queue bookkeeping and the
    /// slot accounting.
    fn admit_queued(&mut self, id: TaskId, slot: Slot) {
        let Some(entry) = self.tasks.get_mut(&id) else {
            return;
        };
        let now = Instant::now();
        entry.status = TaskStatus::Running;
        entry.started = Some(now);
        entry.slot = slot;
        let queued_for = now.saturating_duration_since(entry.cell.created);
        if let Some(admit) = entry.admit.take() {
            // The receiver is gone only if the task's future was dropped,
            // whose guard then settles the task; nothing to do here.
            let _ = admit.send(());
        }
        let agent = entry.cell.agent.clone();
        let parent_id = entry.cell.parent;
        self.note_started(&agent);
        self.emit(RegistryEvent::Started {
            task_id: id,
            agent,
            parent_id,
            running: self.slots_in_use,
            max_concurrent: self.settings.max_concurrent(),
            borrowed: matches!(slot, Slot::Borrowed(_)),
            queued_for,
        });
    }

    /// A queued task's own future gave up waiting (deadline or cancel).
    pub(crate) fn leave_queue(&mut self, id: TaskId, reason: LeaveReason) -> QueueExit {
        let Some(entry) = self.tasks.get_mut(&id) else {
            return QueueExit::Ended;
        };
        if entry.status != TaskStatus::Queued {
            // Admitted before this call got the lock (and perhaps cancelled
            // since): the run settles it. Otherwise it has already ended.
            return if entry.started.is_some() && entry.ended.is_none() {
                QueueExit::Admitted
            } else {
                QueueExit::Ended
            };
        }
        let agent = entry.cell.agent.clone();
        entry.admit = None;
        match reason {
            LeaveReason::Cancelled => {
                entry.status = TaskStatus::Cancelled;
            }
            LeaveReason::Deadline => {
                let waited = Instant::now().saturating_duration_since(entry.cell.created);
                let agent_cap = self.agent_caps.get(&agent).copied();
                let agent_running = self.agent_running.get(&agent).copied().unwrap_or(0);
                let message = match agent_cap {
                    Some(cap) if agent_running >= cap => format!(
                        "waited {} ms for a slot without getting one (agent `{agent}` already runs its maximum of {cap} tasks); raise that agent's max_concurrent or queue_wait_ms, or stop one of its tasks",
                        waited.as_millis(),
                    ),
                    _ => format!(
                        "waited {} ms for a slot without getting one (max_concurrent = {}, {} running); raise max_concurrent or queue_wait_ms, or stop a running task",
                        waited.as_millis(),
                        self.settings.max_concurrent(),
                        self.slots_in_use,
                    ),
                };
                entry.status = TaskStatus::Failed;
                entry.failure = Some(TaskFailure::new(FailureKind::QueueTimeout, message));
            }
        }
        self.leave_queue_bookkeeping(&agent);
        self.settle(id);
        QueueExit::Ended
    }

    // ----- cancel ---------------------------------------------------------

    pub(crate) fn cancel(&mut self, id: TaskId) -> Result<CancelOutcome, UnknownTask> {
        let entry = self.tasks.get_mut(&id).ok_or(UnknownTask(id))?;
        match entry.status {
            TaskStatus::Queued => {
                entry.cell.token.cancel();
                self.leave_queue(id, LeaveReason::Cancelled);
                Ok(CancelOutcome::Cancelled {
                    was: TaskStatus::Queued,
                })
            }
            TaskStatus::Running => {
                // The status flips now, so a completion racing with this
                // cancel cannot overwrite it; the task's future sees the
                // token, drops its work and settles.
                entry.status = TaskStatus::Cancelled;
                entry.cell.token.cancel();
                Ok(CancelOutcome::Cancelled {
                    was: TaskStatus::Running,
                })
            }
            status => Ok(CancelOutcome::AlreadyFinished { status }),
        }
    }

    // ----- finishing ------------------------------------------------------

    /// Records how a running task's work ended, releases or returns its slot
    /// (handing it to the next waiter), and returns the stop event when the
    /// task's start phase had begun.
    pub(crate) fn finish(
        &mut self,
        id: TaskId,
        outcome: Outcome,
        stop_event_wanted: bool,
    ) -> Option<SubagentStopEvent> {
        let entry = self.tasks.get_mut(&id)?;
        if entry.ended.is_some() {
            return None;
        }
        if entry.status == TaskStatus::Running {
            match outcome {
                Outcome::Completed(text) => {
                    entry.status = TaskStatus::Completed;
                    entry.output = Some(text);
                }
                Outcome::Failed(failure) => {
                    entry.status = TaskStatus::Failed;
                    entry.failure = Some(failure);
                }
                Outcome::Cancelled => entry.status = TaskStatus::Cancelled,
            }
        }
        // Otherwise a cancel got there first and its status stands.
        self.settle(id);
        if !stop_event_wanted {
            return None;
        }
        self.stop_event(id)
    }

    /// The task's future was dropped before it settled: leave the queue or
    /// finish as cancelled.
    pub(crate) fn abandon(
        &mut self,
        id: TaskId,
        stop_event_wanted: bool,
    ) -> Option<SubagentStopEvent> {
        if self.tasks.get(&id)?.status == TaskStatus::Queued {
            self.leave_queue(id, LeaveReason::Cancelled);
            return None;
        }
        self.finish(id, Outcome::Cancelled, stop_event_wanted)
    }

    /// Ends a task's life in the registry: end time, slot, load, retention,
    /// waiters. Its status must already be terminal.
    fn settle(&mut self, id: TaskId) {
        let now = Instant::now();
        let Some(entry) = self.tasks.get_mut(&id) else {
            return;
        };
        entry.ended = Some(now);
        let slot = std::mem::replace(&mut entry.slot, Slot::None);
        let lent_to = entry.lent_to.take();
        entry.borrowers.clear();
        let was_running = entry.started.is_some() && !entry.cell.root;
        let run_time = entry
            .started
            .map(|started| now.saturating_duration_since(started));
        let status = entry.status;
        let failure_kind = entry.failure.as_ref().map(|failure| failure.kind);
        let cell = entry.cell.clone();

        match (slot, lent_to) {
            (Slot::None, _) => {}
            // The slot is with a foreground child that outlives us: it
            // becomes the child's, on the same terms we held it.
            (slot, Some(child_id)) => {
                if let Some(child) = self.tasks.get_mut(&child_id) {
                    child.slot = slot;
                }
                if let Slot::Borrowed(lender_id) = slot
                    && let Some(lender) = self.tasks.get_mut(&lender_id)
                {
                    lender.lent_to = Some(child_id);
                }
            }
            (Slot::Own, None) => {
                self.slots_in_use = self.slots_in_use.saturating_sub(1);
            }
            (Slot::Borrowed(lender_id), None) => self.return_slot(lender_id),
        }

        if was_running {
            self.n_running_tasks = self.n_running_tasks.saturating_sub(1);
            if let Some(count) = self.agent_running.get_mut(&cell.agent) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.agent_running.remove(&cell.agent);
                }
            }
            let outcome = match (status, failure_kind) {
                (TaskStatus::Completed, _) => RunOutcome::Succeeded(run_time.unwrap_or_default()),
                (TaskStatus::Failed, Some(kind)) if kind.counts_against_agent() => {
                    RunOutcome::Failed
                }
                _ => RunOutcome::Neutral,
            };
            let window = self.settings.selector().load_window;
            self.load.record_finished(&cell.agent, outcome, window);
        }

        self.finished_order.push_back(id);
        self.n_undelivered += 1;
        let inbox = self.inboxes.entry(cell.parent).or_default();
        inbox.finished.push(id);
        inbox.undelivered += 1;
        if inbox.finished.len() > 2 * inbox.undelivered + 32 {
            // Ids delivered by waits pile up while one result stays unread.
            let tasks = &self.tasks;
            inbox.finished.retain(|id| is_undelivered(tasks, *id));
        }
        // A parent that failed or was cancelled reads no more results: this
        // one is settled as delivered, with nobody left to receive it.
        if let Some(parent) = cell.parent
            && self.tasks.get(&parent).is_some_and(|parent| {
                matches!(parent.status, TaskStatus::Failed | TaskStatus::Cancelled)
            })
        {
            // Nobody reads it; its handle, if any, is dropped at once.
            drop(self.deliver(id, now));
        }

        if status != TaskStatus::Completed {
            // Nobody is left to await or collect its descendants' work: stop
            // them. A completed task's background children keep running (the
            // agent's on_finish policy has already decided their fate).
            cell.token.cancel();
            // Results its children left unread have nobody to go to now.
            let unread = self
                .inboxes
                .get(&Some(id))
                .map(|inbox| inbox.finished.clone())
                .unwrap_or_default();
            for child in unread {
                drop(self.deliver(child, now));
            }
        }
        if !cell.root {
            self.emit(RegistryEvent::Finished {
                task_id: id,
                agent: cell.agent.clone(),
                parent_id: cell.parent,
                status,
                failure: failure_kind,
            });
        }
        cell.done.notify_waiters();
        self.admit_waiters();
        self.evict(now);
    }

    /// A borrowed slot comes back to `lender_id`: it goes to the lender's
    /// next queued foreground child, or back to the lender.
    fn return_slot(&mut self, lender_id: TaskId) {
        let Some(lender) = self.tasks.get_mut(&lender_id) else {
            // The lender is gone (cannot happen: a settling lender passes its
            // slot on); free the slot rather than leak it.
            self.slots_in_use = self.slots_in_use.saturating_sub(1);
            return;
        };
        lender.lent_to = None;
        loop {
            let Some(borrower_id) = self
                .tasks
                .get_mut(&lender_id)
                .and_then(|lender| lender.borrowers.pop_front())
            else {
                return;
            };
            let Some(borrower) = self.tasks.get(&borrower_id) else {
                continue;
            };
            if borrower.status != TaskStatus::Queued {
                continue;
            }
            let agent = borrower.cell.agent.clone();
            if let Some(lender) = self.tasks.get_mut(&lender_id) {
                lender.lent_to = Some(borrower_id);
            }
            self.leave_queue_bookkeeping(&agent);
            self.admit_queued(borrower_id, Slot::Borrowed(lender_id));
            return;
        }
    }

    // ----- retention and delivery -----------------------------------------

    fn n_finished(&self) -> usize {
        self.n_undelivered + self.delivered.len()
    }

    /// Evicts delivered results past their TTL, then the oldest results
    /// while more than `max_finished` are kept: delivered ones first, and
    /// undelivered ones only as a last resort (counted and logged).
    fn evict(&mut self, now: Instant) {
        let ttl = self.settings.result_ttl();
        let max_finished = self.settings.max_finished();
        while let Some(&(delivered_at, id)) = self.delivered.front() {
            if self.n_finished() <= max_finished
                && now.saturating_duration_since(delivered_at) < ttl
            {
                break;
            }
            self.delivered.pop_front();
            self.tasks.remove(&id);
        }
        while self.n_finished() > max_finished {
            let Some(id) = self.finished_order.pop_front() else {
                break;
            };
            if !is_undelivered(&self.tasks, id) {
                continue;
            }
            let Some(entry) = self.tasks.remove(&id) else {
                continue;
            };
            self.n_undelivered = self.n_undelivered.saturating_sub(1);
            self.note_left_inbox(entry.cell.parent);
            self.counters.evicted_undelivered += 1;
            tracing::warn!(
                task_id = %id,
                agent = %entry.cell.agent,
                max_finished,
                "evicted a finished task whose result was never read; raise max_finished or collect results sooner"
            );
        }
        if self.finished_order.len() > 2 * self.n_undelivered + 64 {
            let tasks = &self.tasks;
            self.finished_order.retain(|id| is_undelivered(tasks, *id));
        }
    }

    /// One of `parent`'s undelivered children was delivered or evicted.
    fn note_left_inbox(&mut self, parent: Option<TaskId>) {
        let Some(inbox) = self.inboxes.get_mut(&parent) else {
            return;
        };
        inbox.undelivered = inbox.undelivered.saturating_sub(1);
        if inbox.undelivered == 0 {
            self.inboxes.remove(&parent);
        }
    }

    /// Marks a finished task's result as handed over and lets go of its
    /// join handle, returned for the caller to drop (see [`TaskCell::join`]).
    /// `None` when the result was not there to deliver: unknown, not
    /// finished, or already delivered.
    fn deliver(&mut self, id: TaskId, now: Instant) -> Option<Option<JoinHandle<()>>> {
        let entry = self.tasks.get_mut(&id)?;
        if entry.ended.is_none() || entry.delivered_at.is_some() {
            return None;
        }
        entry.delivered_at = Some(now);
        let parent = entry.cell.parent;
        let join = entry.cell.join.lock().take();
        self.note_delivered(id, parent, now);
        Some(join)
    }

    /// Bookkeeping for a result just marked delivered.
    fn note_delivered(&mut self, id: TaskId, parent: Option<TaskId>, now: Instant) {
        self.n_undelivered = self.n_undelivered.saturating_sub(1);
        self.note_left_inbox(parent);
        self.delivered.push_back((now, id));
    }

    /// The finished task's snapshot, marked delivered; while it has not
    /// finished, its cell to wait on.
    pub(crate) fn collect(&mut self, id: TaskId) -> Result<Collected, UnknownTask> {
        // One table lookup: this is the hot path of every collecting wait.
        let entry = self.tasks.get_mut(&id).ok_or(UnknownTask(id))?;
        if entry.ended.is_none() {
            return Ok(Collected::Pending(entry.cell.clone()));
        }
        let now = Instant::now();
        let newly_delivered = entry.delivered_at.is_none();
        if newly_delivered {
            entry.delivered_at = Some(now);
        }
        let task = snapshot_of(id, entry, now);
        let join = entry.cell.join.lock().take();
        if newly_delivered {
            self.note_delivered(id, task.parent_id, now);
        }
        Ok(Collected::Finished(
            WaitOutcome {
                task,
                newly_delivered,
            },
            join,
        ))
    }

    /// Every finished child of `parent` not yet handed over, oldest first,
    /// now marked delivered, with the join handles taken from them for the
    /// caller to drop once the lock is released (see [`TaskCell::join`]).
    pub(crate) fn take_finished(
        &mut self,
        parent: Option<TaskId>,
    ) -> (Vec<TaskSnapshot>, Vec<JoinHandle<()>>) {
        let Some(inbox) = self.inboxes.remove(&parent) else {
            return (Vec::new(), Vec::new());
        };
        let now = Instant::now();
        let mut taken = Vec::with_capacity(inbox.undelivered);
        let mut joins = Vec::with_capacity(inbox.undelivered);
        for id in inbox.finished {
            let Some(join) = self.deliver(id, now) else {
                continue;
            };
            joins.extend(join);
            if let Some(snapshot) = self.snapshot(id, now) {
                taken.push(snapshot);
            }
        }
        self.evict(now);
        (taken, joins)
    }

    // ----- reading ----------------------------------------------------------

    pub(crate) fn snapshot(&self, id: TaskId, now: Instant) -> Option<TaskSnapshot> {
        self.tasks.get(&id).map(|entry| snapshot_of(id, entry, now))
    }

    pub(crate) fn list(&mut self, filter: &TaskFilter) -> Vec<TaskSnapshot> {
        let now = Instant::now();
        self.evict(now);
        let mut matching: Vec<(u64, TaskId)> = self
            .tasks
            .iter()
            .filter(|(_, entry)| filter.matches(entry.status, entry.cell.parent, &entry.cell.agent))
            .map(|(id, entry)| (entry.seq, *id))
            .collect();
        matching.sort_unstable();
        matching
            .into_iter()
            .filter_map(|(_, id)| self.snapshot(id, now))
            .collect()
    }

    pub(crate) fn start_event(&self, id: TaskId) -> Option<SubagentStartEvent> {
        Some(SubagentStartEvent {
            task: self.hook_task(id)?,
        })
    }

    fn stop_event(&self, id: TaskId) -> Option<SubagentStopEvent> {
        let entry = self.tasks.get(&id)?;
        let ended = entry.ended?;
        let duration = entry
            .started
            .map(|started| ended.saturating_duration_since(started))
            .unwrap_or_default();
        Some(SubagentStopEvent {
            task: self.hook_task(id)?,
            status: entry.status,
            error: entry.failure.clone(),
            output: entry.output.clone(),
            duration,
            usage: *entry.cell.usage.lock(),
            ended_at: entry.cell.created_at + ended.saturating_duration_since(entry.cell.created),
        })
    }

    fn hook_task(&self, id: TaskId) -> Option<HookTask> {
        let entry = self.tasks.get(&id)?;
        let cell = &entry.cell;
        Some(HookTask {
            id,
            parent_id: cell.parent,
            agent: cell.agent.clone(),
            labels: cell.labels.clone(),
            text: cell.task.clone(),
            depth: cell.depth,
            background: cell.background,
            created_at: cell.created_at,
            queued_for: entry
                .started
                .map(|started| started.saturating_duration_since(cell.created))
                .unwrap_or_default(),
        })
    }

    pub(crate) fn stats(&self) -> crate::RegistryStats {
        crate::RegistryStats {
            slots_in_use: self.slots_in_use,
            running: self.n_running_tasks,
            queued: self.n_queued,
            max_concurrent: self.settings.max_concurrent(),
            retained_finished: self.n_finished(),
            undelivered: self.n_undelivered,
            tracked: self.tasks.len(),
            spawned: self.counters.spawned,
            refused: self.counters.refused,
            hook_failures: self.counters.hook_failures,
            evicted_undelivered: self.counters.evicted_undelivered,
        }
    }

    /// Runs the periodic sweep: settings, admission and retention.
    pub(crate) fn sweep(&mut self) {
        self.refresh_settings();
        self.admit_waiters();
        self.evict(Instant::now());
        self.load.forget_idle(self.settings.selector().load_window);
    }

    pub(crate) fn emit_hook_failure(&mut self, event: RegistryEvent) {
        self.counters.hook_failures += 1;
        self.emit(event);
    }

    /// Whether the task's join handle is still kept (see [`TaskCell::join`]).
    #[cfg(test)]
    pub(crate) fn keeps_join_handle(&self, id: TaskId) -> Option<bool> {
        let entry = self.tasks.get(&id)?;
        Some(entry.cell.join.lock().is_some())
    }

    /// Every task id still queued or running, for shutdown.
    pub(crate) fn active_ids(&self) -> Vec<TaskId> {
        self.tasks
            .iter()
            .filter(|(_, entry)| entry.ended.is_none())
            .map(|(id, _)| *id)
            .collect()
    }
}

/// Why a queued task's own future left the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaveReason {
    Cancelled,
    Deadline,
}

fn snapshot_of(id: TaskId, entry: &Entry, now: Instant) -> TaskSnapshot {
    let cell = &entry.cell;
    let at = |instant: Instant| cell.created_at + instant.saturating_duration_since(cell.created);
    let queue_end = entry.started.or(entry.ended).unwrap_or(now);
    TaskSnapshot {
        id,
        parent_id: cell.parent,
        agent: cell.agent.clone(),
        labels: cell.labels.clone(),
        task: cell.task.clone(),
        depth: cell.depth,
        background: cell.background,
        root: cell.root,
        status: entry.status,
        failure: entry.failure.clone(),
        output: entry.output.clone(),
        usage: *cell.usage.lock(),
        created_at: cell.created_at,
        started_at: entry.started.map(at),
        ended_at: entry.ended.map(at),
        queued_for: queue_end.saturating_duration_since(cell.created),
        run_time: entry.started.map(|started| {
            entry
                .ended
                .unwrap_or(now)
                .saturating_duration_since(started)
        }),
        delivered: entry.delivered_at.is_some(),
    }
}

/// Whether `id` is a finished task whose result has not been handed over.
fn is_undelivered(tasks: &FxHashMap<TaskId, Box<Entry>>, id: TaskId) -> bool {
    tasks
        .get(&id)
        .is_some_and(|entry| entry.ended.is_some() && entry.delivered_at.is_none())
}

fn is_waiting(tasks: &FxHashMap<TaskId, Box<Entry>>, id: TaskId, seq: u64) -> bool {
    tasks
        .get(&id)
        .is_some_and(|entry| entry.seq == seq && entry.status == TaskStatus::Queued)
}
