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

/// One task: what never changes after spawn, and, behind its own lock,
/// where the task is in its life. The task table, the queue and the task's
/// own future all hold the same cell, so the future's settle reaches the
/// task's state without a lookup in the table, and a task costs one
/// allocation besides Tokio's.
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
    /// leaves it here until the cell is dropped: memory held a little
    /// longer, never leaked.
    pub(crate) join: Mutex<Option<JoinHandle<()>>>,
    /// Locked only while the registry's lock is held, so it is never
    /// contended; lock order: the registry's lock, then this. Never locked
    /// twice at once by one thread: each use copies out what it needs.
    life: Mutex<Life>,
}

impl TaskCell {
    fn new(
        prepared: PreparedCell,
        spec: TaskSpec,
        depth: u32,
        token: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            id: prepared.id,
            agent: spec.agent,
            task: spec.task,
            parent: spec.parent,
            labels: spec.labels,
            background: spec.background,
            root: prepared.root,
            depth,
            created: prepared.created,
            created_at: prepared.created_at,
            token,
            usage: Mutex::new(Usage::default()),
            done: Notify::new(),
            join: Mutex::new(None),
            life: Mutex::new(Life::default()),
        })
    }
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

/// Where a task is in its life; see [`TaskCell::life`].
#[derive(Debug)]
struct Life {
    /// Spawn order, for FIFO admission.
    seq: u64,
    status: TaskStatus,
    failure: Option<TaskFailure>,
    output: Option<Arc<str>>,
    /// When it started and ended, as time since it was created: each is
    /// read from the clock once, and a snapshot turns them into wall-clock
    /// times and durations with additions alone.
    started: Option<Duration>,
    ended: Option<Duration>,
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

impl Default for Life {
    fn default() -> Self {
        Self {
            seq: 0,
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
        }
    }
}

/// One agent's waiters in spawn order. Entries whose task left the queue
/// another way (cancel, timeout, borrowed slot) stay as tombstones until
/// they reach the front or the deque is compacted.
#[derive(Debug, Default)]
struct AgentQueue {
    waiters: VecDeque<(u64, Arc<TaskCell>)>,
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

/// A new task as far as it can be made before the spawn takes the lock, so
/// the locked section stays short.
#[derive(Debug)]
pub(crate) enum Prepared {
    /// A parentless task, whole: its depth and cancel scope need no parent.
    Parentless(Arc<TaskCell>),
    /// A child, whose depth and cancel token come from its parent, read
    /// under the lock.
    Child {
        parent: TaskId,
        cell: PreparedCell,
        spec: TaskSpec,
    },
}

/// The parts of a cell that need neither a lock nor a parent.
#[derive(Debug)]
pub(crate) struct PreparedCell {
    id: TaskId,
    root: bool,
    created: Instant,
    created_at: SystemTime,
}

impl Prepared {
    pub(crate) fn new(spec: TaskSpec, root: bool) -> Self {
        let cell = PreparedCell {
            id: TaskId::new_random(),
            root,
            created: Instant::now(),
            created_at: SystemTime::now(),
        };
        match spec.parent {
            // A parentless task is its own cancel scope; shutdown cancels
            // every task by id.
            None => {
                let depth = u32::from(!root);
                Self::Parentless(TaskCell::new(cell, spec, depth, CancellationToken::new()))
            }
            Some(parent) => Self::Child { parent, cell, spec },
        }
    }

    pub(crate) fn id(&self) -> TaskId {
        match self {
            Self::Parentless(cell) => cell.id,
            Self::Child { cell, .. } => cell.id,
        }
    }

    fn agent(&self) -> &str {
        match self {
            Self::Parentless(cell) => &cell.agent,
            Self::Child { spec, .. } => &spec.agent,
        }
    }

    /// Whether it is a root run (see `Registry::spawn_root`).
    fn root(&self) -> bool {
        match self {
            Self::Parentless(cell) => cell.root,
            Self::Child { cell, .. } => cell.root,
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
    tasks: FxHashMap<TaskId, Arc<TaskCell>>,
    queues: FxHashMap<Arc<str>, AgentQueue>,
    n_queued: usize,
    slots_in_use: usize,
    n_running_tasks: usize,
    agent_caps: FxHashMap<Arc<str>, usize>,
    next_seq: u64,
    /// Finished tasks in finish order, for last-resort eviction; entries
    /// delivered since are stale and skipped.
    finished_order: VecDeque<Arc<TaskCell>>,
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
    /// Whether anyone has subscribed to the events; until then none is built.
    listened: bool,
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
            agent_caps: FxHashMap::default(),
            next_seq: 0,
            finished_order: VecDeque::new(),
            n_undelivered: 0,
            inboxes: FxHashMap::default(),
            delivered: VecDeque::new(),
            load,
            selector,
            shutting_down: false,
            listened: false,
            counters: Counters::default(),
            events,
        }
    }

    /// Sends the event `make` builds, once anyone has subscribed. Until
    /// then none is built: an event holds the agent's name, shared by all
    /// of its tasks, and each clone of it writes to the count every thread
    /// running them touches; and asking the channel whether anyone listens
    /// takes its lock, which the spawning thread and the workers would
    /// trade on every task.
    fn emit(&self, make: impl FnOnce() -> RegistryEvent) {
        if self.listened {
            // Every receiver may have gone since; that is fine.
            let _ = self.events.send(make());
        }
    }

    /// Someone subscribes to the events: from now on they are built.
    pub(crate) fn note_listener(&mut self) {
        self.listened = true;
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
        self.emit(|| RegistryEvent::SettingsApplied { settings: new });
        self.admit_waiters();
    }

    pub(crate) fn begin_shutdown(&mut self) {
        self.shutting_down = true;
    }

    /// Whether `agent` is below its own cap. Its running count is the load
    /// tracker's in-flight count: both count exactly the running tasks.
    fn agent_has_room(
        load: &LoadTracker,
        agent_caps: &FxHashMap<Arc<str>, usize>,
        agent: &str,
    ) -> bool {
        match agent_caps.get(agent) {
            None => true,
            Some(cap) => load.in_flight(agent) < *cap,
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

    pub(crate) fn spawn(&mut self, prepared: Prepared) -> Result<NewTask, SpawnError> {
        self.refresh_settings();
        let result = self.try_spawn(prepared);
        match &result {
            Ok(_) => self.counters.spawned += 1,
            Err(_) => self.counters.refused += 1,
        }
        result
    }

    fn try_spawn(&mut self, prepared: Prepared) -> Result<NewTask, SpawnError> {
        let root = prepared.root();
        if self.shutting_down {
            return Err(SpawnError::ShuttingDown);
        }
        if prepared.agent().trim().is_empty() {
            return Err(SpawnError::InvalidSpec(
                "the agent name is empty; name a configured agent",
            ));
        }
        if !root && !self.settings.enabled() {
            return Err(SpawnError::Disabled);
        }

        // The parent decides depth, cancel scope and whether a slot can be
        // borrowed.
        let (cell, lender) = match prepared {
            Prepared::Parentless(cell) => (cell, None),
            Prepared::Child {
                parent: parent_id,
                cell,
                spec,
            } => {
                let parent = self
                    .tasks
                    .get(&parent_id)
                    .ok_or(SpawnError::UnknownParent(parent_id))?;
                let (status, holds_slot, lending) = {
                    let life = parent.life.lock();
                    (life.status, life.slot != Slot::None, life.lent_to.is_some())
                };
                if status != TaskStatus::Running {
                    return Err(SpawnError::ParentNotRunning {
                        parent: parent_id,
                        status,
                    });
                }
                let waits_for_lend = !root && !spec.background && holds_slot;
                let can_lend = waits_for_lend && !lending;
                let depth = parent.depth.saturating_add(1);
                let token = parent.token.child_token();
                (
                    TaskCell::new(cell, spec, depth, token),
                    waits_for_lend.then_some((parent_id, can_lend)),
                )
            }
        };

        let id = cell.id;
        let now = cell.created;
        let agent = &cell.agent;
        let max_concurrent = self.settings.max_concurrent();
        let queue_wait = self.settings.queue_wait();

        let slot = if root {
            Some(Slot::None)
        } else if let Some((parent_id, true)) = lender {
            Some(Slot::Borrowed(parent_id))
        } else if self.slots_in_use < max_concurrent
            && Self::agent_has_room(&self.load, &self.agent_caps, agent)
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
                        max_concurrent: self.agent_caps.get(agent).copied().unwrap_or(0),
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

        let admission = match slot {
            Some(slot) => {
                {
                    let mut life = cell.life.lock();
                    life.seq = seq;
                    life.status = TaskStatus::Running;
                    life.started = Some(Duration::ZERO);
                    life.slot = slot;
                }
                match slot {
                    Slot::Own => self.slots_in_use += 1,
                    Slot::Borrowed(parent_id) => {
                        if let Some(parent) = self.tasks.get(&parent_id) {
                            parent.life.lock().lent_to = Some(id);
                        }
                    }
                    Slot::None => {}
                }
                self.tasks.insert(id, cell.clone());
                if !root {
                    self.note_started(agent);
                    self.emit(|| RegistryEvent::Started {
                        task_id: id,
                        agent: cell.agent.clone(),
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
                {
                    let mut life = cell.life.lock();
                    life.seq = seq;
                    life.admit = Some(sender);
                }
                self.tasks.insert(id, cell.clone());
                let queue = self.queues.entry(agent.clone()).or_default();
                queue.waiters.push_back((seq, cell.clone()));
                queue.live += 1;
                self.n_queued += 1;
                if let Some((parent_id, false)) = lender
                    && let Some(parent) = self.tasks.get(&parent_id)
                {
                    let mut borrowers = std::mem::take(&mut parent.life.lock().borrowers);
                    if borrowers.len() >= 16 {
                        // Children that left the queue another way.
                        let tasks = &self.tasks;
                        borrowers.retain(|borrower| {
                            tasks.get(borrower).is_some_and(|cell| is_waiting(cell))
                        });
                    }
                    borrowers.push_back(id);
                    parent.life.lock().borrowers = borrowers;
                }
                self.emit(|| RegistryEvent::Queued {
                    task_id: id,
                    agent: cell.agent.clone(),
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
                queue.waiters.retain(|(_, cell)| is_waiting(cell));
            }
        }
    }

    /// Hands free slots to the oldest eligible waiters until slots or
    /// eligible waiters run out.
    fn admit_waiters(&mut self) {
        while self.n_queued > 0 && self.slots_in_use < self.settings.max_concurrent() {
            let Some(cell) = self.pop_oldest_eligible() else {
                break;
            };
            self.slots_in_use += 1;
            self.admit_queued(&cell, Slot::Own);
        }
    }

    /// Removes and returns the oldest waiter whose agent has room.
    fn pop_oldest_eligible(&mut self) -> Option<Arc<TaskCell>> {
        let mut best: Option<(u64, Arc<str>)> = None;
        for (agent, queue) in &mut self.queues {
            if !Self::agent_has_room(&self.load, &self.agent_caps, agent) {
                continue;
            }
            while let Some((_, cell)) = queue.waiters.front() {
                if is_waiting(cell) {
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
        let (_, cell) = queue.waiters.pop_front()?;
        queue.live = queue.live.saturating_sub(1);
        if queue.live == 0 {
            self.queues.remove(&agent);
        }
        self.n_queued = self.n_queued.saturating_sub(1);
        Some(cell)
    }

    /// Marks a task that has just left the queue as running on `slot` and
    /// wakes its future. The caller has done the queue bookkeeping and the
    /// slot accounting.
    fn admit_queued(&mut self, cell: &TaskCell, slot: Slot) {
        let queued_for = Instant::now().saturating_duration_since(cell.created);
        let admit = {
            let mut life = cell.life.lock();
            life.status = TaskStatus::Running;
            life.started = Some(queued_for);
            life.slot = slot;
            life.admit.take()
        };
        if let Some(admit) = admit {
            // The receiver is gone only if the task's future was dropped,
            // whose guard then settles the task; nothing to do here.
            let _ = admit.send(());
        }
        self.note_started(&cell.agent);
        self.emit(|| RegistryEvent::Started {
            task_id: cell.id,
            agent: cell.agent.clone(),
            parent_id: cell.parent,
            running: self.slots_in_use,
            max_concurrent: self.settings.max_concurrent(),
            borrowed: matches!(slot, Slot::Borrowed(_)),
            queued_for,
        });
    }

    /// A queued task's own future gave up waiting (deadline or cancel).
    pub(crate) fn leave_queue(&mut self, cell: &Arc<TaskCell>, reason: LeaveReason) -> QueueExit {
        let mut life = cell.life.lock();
        if life.status != TaskStatus::Queued {
            // Admitted before this call got the lock (and perhaps cancelled
            // since): the run settles it. Otherwise it has already ended.
            return if life.started.is_some() && life.ended.is_none() {
                QueueExit::Admitted
            } else {
                QueueExit::Ended
            };
        }
        let agent = &cell.agent;
        life.admit = None;
        match reason {
            LeaveReason::Cancelled => {
                life.status = TaskStatus::Cancelled;
            }
            LeaveReason::Deadline => {
                let waited = Instant::now().saturating_duration_since(cell.created);
                let agent_cap = self.agent_caps.get(agent).copied();
                let agent_running = self.load.in_flight(agent);
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
                life.status = TaskStatus::Failed;
                life.failure = Some(TaskFailure::new(FailureKind::QueueTimeout, message));
            }
        }
        drop(life);
        self.leave_queue_bookkeeping(&cell.agent);
        self.settle(cell);
        QueueExit::Ended
    }

    // ----- cancel ---------------------------------------------------------

    pub(crate) fn cancel(&mut self, id: TaskId) -> Result<CancelOutcome, UnknownTask> {
        let cell = self.tasks.get(&id).ok_or(UnknownTask(id))?.clone();
        let mut life = cell.life.lock();
        match life.status {
            TaskStatus::Queued => {
                drop(life);
                cell.token.cancel();
                self.leave_queue(&cell, LeaveReason::Cancelled);
                Ok(CancelOutcome::Cancelled {
                    was: TaskStatus::Queued,
                })
            }
            TaskStatus::Running => {
                // The status flips now, so a completion racing with this
                // cancel cannot overwrite it; the task's future sees the
                // token, drops its work and settles.
                life.status = TaskStatus::Cancelled;
                drop(life);
                cell.token.cancel();
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
        cell: &Arc<TaskCell>,
        outcome: Outcome,
        stop_event_wanted: bool,
    ) -> Option<SubagentStopEvent> {
        {
            let mut life = cell.life.lock();
            if life.ended.is_some() {
                return None;
            }
            if life.status == TaskStatus::Running {
                match outcome {
                    Outcome::Completed(text) => {
                        life.status = TaskStatus::Completed;
                        life.output = Some(text);
                    }
                    Outcome::Failed(failure) => {
                        life.status = TaskStatus::Failed;
                        life.failure = Some(failure);
                    }
                    Outcome::Cancelled => life.status = TaskStatus::Cancelled,
                }
            }
            // Otherwise a cancel got there first and its status stands.
        }
        self.settle(cell);
        if !stop_event_wanted {
            return None;
        }
        stop_event(cell)
    }

    /// The task's future was dropped before it settled: leave the queue or
    /// finish as cancelled.
    pub(crate) fn abandon(
        &mut self,
        cell: &Arc<TaskCell>,
        stop_event_wanted: bool,
    ) -> Option<SubagentStopEvent> {
        let queued = cell.life.lock().status == TaskStatus::Queued;
        if queued {
            self.leave_queue(cell, LeaveReason::Cancelled);
            return None;
        }
        self.finish(cell, Outcome::Cancelled, stop_event_wanted)
    }

    /// Ends a task's life in the registry: end time, slot, load, retention,
    /// waiters. Its status must already be terminal.
    fn settle(&mut self, cell: &Arc<TaskCell>) {
        let now = Instant::now();
        let ended = now.saturating_duration_since(cell.created);
        let id = cell.id;
        let (slot, lent_to, run_time, status, failure_kind) = {
            let mut life = cell.life.lock();
            life.ended = Some(ended);
            life.borrowers.clear();
            (
                std::mem::replace(&mut life.slot, Slot::None),
                life.lent_to.take(),
                life.started.map(|started| ended.saturating_sub(started)),
                life.status,
                life.failure.as_ref().map(|failure| failure.kind),
            )
        };
        let was_running = run_time.is_some() && !cell.root;

        match (slot, lent_to) {
            (Slot::None, _) => {}
            // The slot is with a foreground child that outlives us: it
            // becomes the child's, on the same terms we held it.
            (slot, Some(child_id)) => {
                if let Some(child) = self.tasks.get(&child_id) {
                    child.life.lock().slot = slot;
                }
                if let Slot::Borrowed(lender_id) = slot
                    && let Some(lender) = self.tasks.get(&lender_id)
                {
                    lender.life.lock().lent_to = Some(child_id);
                }
            }
            (Slot::Own, None) => {
                self.slots_in_use = self.slots_in_use.saturating_sub(1);
            }
            (Slot::Borrowed(lender_id), None) => self.return_slot(lender_id),
        }

        if was_running {
            self.n_running_tasks = self.n_running_tasks.saturating_sub(1);
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

        self.finished_order.push_back(cell.clone());
        self.n_undelivered += 1;
        let inbox = self.inboxes.entry(cell.parent).or_default();
        inbox.finished.push(id);
        inbox.undelivered += 1;
        if inbox.finished.len() > 2 * inbox.undelivered + 32 {
            // Ids delivered by waits pile up while one result stays unread.
            let tasks = &self.tasks;
            inbox
                .finished
                .retain(|id| tasks.get(id).is_some_and(|cell| is_undelivered(cell)));
        }
        // A parent that failed or was cancelled reads no more results: this
        // one is settled as delivered, with nobody left to receive it.
        if let Some(parent) = cell.parent
            && self.tasks.get(&parent).is_some_and(|parent| {
                matches!(
                    parent.life.lock().status,
                    TaskStatus::Failed | TaskStatus::Cancelled
                )
            })
        {
            // Nobody reads it; its handle, if any, is dropped at once.
            drop(self.deliver(cell, now));
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
            for child_id in unread {
                if let Some(child) = self.tasks.get(&child_id).cloned() {
                    drop(self.deliver(&child, now));
                }
            }
        }
        if !cell.root {
            self.emit(|| RegistryEvent::Finished {
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
        let Some(lender) = self.tasks.get(&lender_id).cloned() else {
            // The lender is gone (cannot happen: a settling lender passes its
            // slot on); free the slot rather than leak it.
            self.slots_in_use = self.slots_in_use.saturating_sub(1);
            return;
        };
        lender.life.lock().lent_to = None;
        loop {
            let Some(borrower_id) = lender.life.lock().borrowers.pop_front() else {
                return;
            };
            let Some(borrower) = self.tasks.get(&borrower_id).cloned() else {
                continue;
            };
            if !is_waiting(&borrower) {
                continue;
            }
            lender.life.lock().lent_to = Some(borrower_id);
            self.leave_queue_bookkeeping(&borrower.agent);
            self.admit_queued(&borrower, Slot::Borrowed(lender_id));
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
            let Some(cell) = self.finished_order.pop_front() else {
                break;
            };
            if !is_undelivered(&cell) || self.tasks.remove(&cell.id).is_none() {
                continue;
            }
            self.n_undelivered = self.n_undelivered.saturating_sub(1);
            self.note_left_inbox(cell.parent);
            self.counters.evicted_undelivered += 1;
            tracing::warn!(
                task_id = %cell.id,
                agent = %cell.agent,
                max_finished,
                "evicted a finished task whose result was never read; raise max_finished or collect results sooner"
            );
        }
        if self.finished_order.len() > 2 * self.n_undelivered + 64 {
            self.finished_order.retain(|cell| is_undelivered(cell));
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
    /// `None` when the result was not there to deliver: not finished, or
    /// already delivered.
    fn deliver(&mut self, cell: &TaskCell, now: Instant) -> Option<Option<JoinHandle<()>>> {
        {
            let mut life = cell.life.lock();
            if life.ended.is_none() || life.delivered_at.is_some() {
                return None;
            }
            life.delivered_at = Some(now);
        }
        let join = cell.join.lock().take();
        self.note_delivered(cell.id, cell.parent, now);
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
        let cell = self.tasks.get(&id).ok_or(UnknownTask(id))?;
        let mut life = cell.life.lock();
        if life.ended.is_none() {
            return Ok(Collected::Pending(cell.clone()));
        }
        let now = Instant::now();
        let newly_delivered = life.delivered_at.is_none();
        if newly_delivered {
            life.delivered_at = Some(now);
        }
        let task = snapshot_of(cell, &life, now);
        drop(life);
        let join = cell.join.lock().take();
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
            // Evicted ones are gone from the table, and so not handed over.
            let Some(cell) = self.tasks.get(&id).cloned() else {
                continue;
            };
            let Some(join) = self.deliver(&cell, now) else {
                continue;
            };
            joins.extend(join);
            taken.push(snapshot_of(&cell, &cell.life.lock(), now));
        }
        self.evict(now);
        (taken, joins)
    }

    // ----- reading ----------------------------------------------------------

    pub(crate) fn snapshot(&self, id: TaskId, now: Instant) -> Option<TaskSnapshot> {
        self.tasks
            .get(&id)
            .map(|cell| snapshot_of(cell, &cell.life.lock(), now))
    }

    pub(crate) fn list(&mut self, filter: &TaskFilter) -> Vec<TaskSnapshot> {
        let now = Instant::now();
        self.evict(now);
        let mut matching: Vec<(u64, &Arc<TaskCell>)> = self
            .tasks
            .values()
            .filter_map(|cell| {
                let life = cell.life.lock();
                filter
                    .matches(life.status, cell.parent, &cell.agent)
                    .then_some((life.seq, cell))
            })
            .collect();
        matching.sort_unstable_by_key(|(seq, _)| *seq);
        matching
            .into_iter()
            .map(|(_, cell)| snapshot_of(cell, &cell.life.lock(), now))
            .collect()
    }

    pub(crate) fn start_event(&self, cell: &TaskCell) -> SubagentStartEvent {
        SubagentStartEvent {
            task: hook_task(cell, &cell.life.lock()),
        }
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
        self.emit(|| event);
    }

    /// Whether the task's join handle is still kept (see [`TaskCell::join`]).
    #[cfg(test)]
    pub(crate) fn keeps_join_handle(&self, id: TaskId) -> Option<bool> {
        let cell = self.tasks.get(&id)?;
        Some(cell.join.lock().is_some())
    }

    /// Every task id still queued or running, for shutdown.
    pub(crate) fn active_ids(&self) -> Vec<TaskId> {
        self.tasks
            .values()
            .filter(|cell| cell.life.lock().ended.is_none())
            .map(|cell| cell.id)
            .collect()
    }
}

/// Why a queued task's own future left the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaveReason {
    Cancelled,
    Deadline,
}

/// The stop event of a task that has settled.
fn stop_event(cell: &TaskCell) -> Option<SubagentStopEvent> {
    let life = cell.life.lock();
    let ended = life.ended?;
    let duration = life
        .started
        .map(|started| ended.saturating_sub(started))
        .unwrap_or_default();
    Some(SubagentStopEvent {
        task: hook_task(cell, &life),
        status: life.status,
        error: life.failure.clone(),
        output: life.output.clone(),
        duration,
        usage: *cell.usage.lock(),
        ended_at: cell.created_at + ended,
    })
}

fn hook_task(cell: &TaskCell, life: &Life) -> HookTask {
    HookTask {
        id: cell.id,
        parent_id: cell.parent,
        agent: cell.agent.clone(),
        labels: cell.labels.clone(),
        text: cell.task.clone(),
        depth: cell.depth,
        background: cell.background,
        created_at: cell.created_at,
        queued_for: life.started.unwrap_or_default(),
    }
}

fn snapshot_of(cell: &TaskCell, life: &Life, now: Instant) -> TaskSnapshot {
    // Only a task still queued or running needs the clock.
    let age = || now.saturating_duration_since(cell.created);
    TaskSnapshot {
        id: cell.id,
        parent_id: cell.parent,
        agent: cell.agent.clone(),
        labels: cell.labels.clone(),
        task: cell.task.clone(),
        depth: cell.depth,
        background: cell.background,
        root: cell.root,
        status: life.status,
        failure: life.failure.clone(),
        output: life.output.clone(),
        usage: *cell.usage.lock(),
        created_at: cell.created_at,
        started_at: life.started.map(|started| cell.created_at + started),
        ended_at: life.ended.map(|ended| cell.created_at + ended),
        queued_for: life.started.or(life.ended).unwrap_or_else(age),
        run_time: life
            .started
            .map(|started| life.ended.unwrap_or_else(age).saturating_sub(started)),
        delivered: life.delivered_at.is_some(),
    }
}

/// Whether the task has finished and its result has not been handed over.
fn is_undelivered(cell: &TaskCell) -> bool {
    let life = cell.life.lock();
    life.ended.is_some() && life.delivered_at.is_none()
}

/// Whether the task is still waiting in the queue.
fn is_waiting(cell: &TaskCell) -> bool {
    cell.life.lock().status == TaskStatus::Queued
}
