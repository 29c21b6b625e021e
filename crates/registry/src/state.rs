//! The registry's state: the task table, admission, the fair queue, slots,
//! lending, retention and delivery.
//!
//! Nothing in this module awaits, and no hook runs from here.
//!
//! # Who locks what
//!
//! The common task is admitted at once, because a slot is free and nobody
//! waited when it looked, and settles with nothing lent. (A waiter that
//! queues between that look and the compare-and-set can be overtaken by
//! this one spawn; no slot is left idle by it.) Its admission is a compare-and-set
//! on the slot count, so its spawn takes no lock a settle takes except the
//! load tracker's, and one shard of the task table. Everything that
//! involves the queue or a lent slot takes the admission lock (`core`).
//!
//! Locks, in the only order one thread takes them (never an earlier one
//! while it holds a later one):
//!
//! 1. `core`: the settings in force, the queues, the agent caps, the
//!    selector;
//! 2. `records`: retention and delivery;
//! 3. a cell's `life`, one at a time, except that a spawn holds the
//!    parent's while it sets up the new child's, which nobody else can
//!    see yet;
//! 4. leaves, under which nothing else is locked: a shard of the table, the
//!    load tracker, a cell's `usage` and `join`, the event channel.
//!
//! # Slots without a lock
//!
//! `slots` counts the slots held. A spawn on the fast path takes one with a
//! compare-and-set while `queued` is 0; a settle gives its slot back with a
//! decrement and then reads `queued`. A spawn that queues raises `queued`
//! under `core` and then tries for a slot itself. Both pairs are
//! sequentially consistent, so at least one side sees the other: either
//! the settle sees the waiter and admits it under `core`, or the waiter's
//! own try sees the freed slot. No slot is left free while someone waits
//! for it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use rustc_hash::FxHashMap;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cell::{
    Life, Prepared, Slot, TaskCell, hook_task, is_undelivered, is_waiting, snapshot_of, stop_event,
};
use crate::error::{CancelOutcome, SpawnError, UnknownTask};
use crate::event::RegistryEvent;
use crate::hook::{SubagentStartEvent, SubagentStopEvent};
use crate::id::TaskId;
use crate::live::SettingsHandle;
use crate::load::{AgentLoadSnapshot, LoadTracker, RunOutcome};
use crate::selector::{AgentCandidate, Selection, SelectionError, SelectionRequest, Selector};
use crate::settings::SubagentSettings;
use crate::snapshot::{TaskFilter, TaskSnapshot, WaitOutcome};
use crate::status::{FailureKind, TaskFailure, TaskStatus};
use crate::table::Table;

/// One agent's waiters in queue order. Entries whose task left the queue
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
    /// this delivery took it, for the caller to drop once the locks are
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

/// Why a queued task's own future left the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaveReason {
    Cancelled,
    Deadline,
}

/// A value on cache lines of its own, so writes to it do not slow the
/// threads reading its neighbours.
#[derive(Debug, Default)]
#[repr(align(128))]
struct OwnLine<T>(T);

/// Counts every spawn and every settle writes.
#[derive(Debug, Default)]
struct SlotCounts {
    /// Slots held (`Slot::Own`); at most `max_concurrent` at every
    /// admission.
    slots: AtomicUsize,
    /// Sub-agents running, including foreground children on a lent slot.
    running: AtomicUsize,
}

/// What a spawn reads to know whether it may take the fast path; written
/// only under `core` (the queued count on each queue change, the rest
/// rarely).
#[derive(Debug, Default)]
struct Gate {
    /// Tasks waiting for a slot: changed only under `core`, read without
    /// it (the fast path, a settle, stats).
    queued: AtomicUsize,
    max_concurrent: AtomicUsize,
    enabled: AtomicBool,
    /// Whether any agent has its own cap.
    agent_caps: AtomicBool,
    shutting_down: AtomicBool,
    /// Set when shutdown stops waiting and cancels every task: a spawn that
    /// got past the shutdown check before it began, and reaches the table
    /// only after the sweep read it, is cancelled by its own spawn.
    cancelling_all: AtomicBool,
    /// The settings handle's generation last applied.
    applied_generation: AtomicU64,
    /// Whether anyone has subscribed to the events; until then none is
    /// built.
    listened: AtomicBool,
}

/// Counts written by the spawning thread alone, apart from the rest.
#[derive(Debug, Default)]
struct SpawnCounts {
    next_seq: AtomicU64,
    spawned: AtomicU64,
    refused: AtomicU64,
}

/// What admission from the queue and lending need; see the module docs.
#[derive(Debug)]
struct Core {
    settings: Arc<SubagentSettings>,
    queues: FxHashMap<Arc<str>, AgentQueue>,
    agent_caps: FxHashMap<Arc<str>, usize>,
    /// Queue order: a waiter's place, given under this lock so each
    /// agent's deque stays in order.
    next_queue_seq: u64,
    selector: Selector,
}

/// Retention and delivery.
#[derive(Debug)]
struct Records {
    /// The settings in force (a copy of `Core::settings`, for the TTL, the
    /// retention bound and the load window).
    settings: Arc<SubagentSettings>,
    /// Finished tasks in finish order, for last-resort eviction; entries
    /// delivered since are stale and skipped.
    finished_order: VecDeque<Arc<TaskCell>>,
    /// How many finished tasks have not been delivered.
    n_undelivered: usize,
    /// Finished, undelivered tasks per parent.
    inboxes: FxHashMap<Option<TaskId>, Inbox>,
    /// Delivered tasks by delivery time.
    delivered: VecDeque<(Instant, TaskId)>,
    evicted_undelivered: u64,
}

/// Everything the registry knows; see the module docs for its locks.
#[derive(Debug)]
pub(crate) struct State {
    counts: OwnLine<SlotCounts>,
    gate: OwnLine<Gate>,
    spawn_counts: OwnLine<SpawnCounts>,
    hook_failures: AtomicU64,
    table: Table,
    core: Mutex<Core>,
    records: Mutex<Records>,
    load: Mutex<LoadTracker>,
    settings_handle: SettingsHandle,
    events: broadcast::Sender<RegistryEvent>,
}

impl State {
    pub(crate) fn new(
        settings_handle: SettingsHandle,
        load: LoadTracker,
        selector: Selector,
        events: broadcast::Sender<RegistryEvent>,
    ) -> Self {
        let generation = settings_handle.generation();
        let settings = settings_handle.current();
        let gate = Gate {
            max_concurrent: AtomicUsize::new(settings.max_concurrent()),
            enabled: AtomicBool::new(settings.enabled()),
            applied_generation: AtomicU64::new(generation),
            ..Gate::default()
        };
        Self {
            counts: OwnLine::default(),
            gate: OwnLine(gate),
            spawn_counts: OwnLine::default(),
            hook_failures: AtomicU64::new(0),
            table: Table::default(),
            core: Mutex::new(Core {
                settings: settings.clone(),
                queues: FxHashMap::default(),
                agent_caps: FxHashMap::default(),
                next_queue_seq: 0,
                selector,
            }),
            records: Mutex::new(Records {
                settings,
                finished_order: VecDeque::new(),
                n_undelivered: 0,
                inboxes: FxHashMap::default(),
                delivered: VecDeque::new(),
                evicted_undelivered: 0,
            }),
            load: Mutex::new(load),
            settings_handle,
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
        if self.gate.0.listened.load(Ordering::Acquire) {
            // Every receiver may have gone since; that is fine.
            let _ = self.events.send(make());
        }
    }

    /// A stream of lifecycle events from now on. The listener is noted
    /// before the subscription is made, so every event sent after this
    /// returns is built and reaches the new receiver.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<RegistryEvent> {
        self.gate.0.listened.store(true, Ordering::Release);
        self.events.subscribe()
    }

    /// The handle the registry follows.
    pub(crate) fn settings_handle(&self) -> &SettingsHandle {
        &self.settings_handle
    }

    /// The next spawn-order number, for a task about to be prepared.
    pub(crate) fn next_seq(&self) -> u64 {
        self.spawn_counts.0.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    // ----- settings ---------------------------------------------------------

    /// The settings in force, after picking up any newly published.
    pub(crate) fn settings(&self) -> Arc<SubagentSettings> {
        let mut core = self.core.lock();
        self.refresh_settings(&mut core);
        core.settings.clone()
    }

    /// Whether every published setting has been applied; one atomic read
    /// of each side.
    fn settings_applied(&self) -> bool {
        self.settings_handle.generation() == self.gate.0.applied_generation.load(Ordering::Acquire)
    }

    /// Picks up newly published settings and acts on them: admits waiters
    /// if the cap rose and announces the change.
    fn refresh_settings(&self, core: &mut Core) {
        // The generation first: the channel holds settings at least that new.
        let generation = self.settings_handle.generation();
        if generation == self.gate.0.applied_generation.load(Ordering::Acquire) {
            return;
        }
        let new = self.settings_handle.current();
        if *new != *core.settings {
            tracing::info!(
                old_max_concurrent = core.settings.max_concurrent(),
                new_max_concurrent = new.max_concurrent(),
                enabled = new.enabled(),
                queue_wait_ms = u64::try_from(new.queue_wait().as_millis()).unwrap_or(u64::MAX),
                "sub-agent settings applied"
            );
            core.settings = new.clone();
            self.records.lock().settings = new.clone();
            self.gate
                .0
                .max_concurrent
                .store(new.max_concurrent(), Ordering::SeqCst);
            self.gate.0.enabled.store(new.enabled(), Ordering::SeqCst);
            self.emit(|| RegistryEvent::SettingsApplied {
                settings: new.clone(),
            });
        }
        self.gate
            .0
            .applied_generation
            .store(generation, Ordering::Release);
        self.admit_waiters(core);
    }

    pub(crate) fn begin_shutdown(&self) {
        self.gate.0.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Every task still queued or running, to cancel; from now on every
    /// task that reaches the table is cancelled by its spawn (see
    /// [`cancelling_all`](Self::cancelling_all)).
    ///
    /// The flag is set before the table is read, and a spawn reads it after
    /// it put the task in the table, both in sequentially consistent order
    /// around a shard's lock: the sweep sees the task, or the spawn sees the
    /// flag.
    pub(crate) fn begin_cancelling_all(&self) -> Vec<TaskId> {
        self.gate.0.cancelling_all.store(true, Ordering::SeqCst);
        self.active_ids()
    }

    /// Whether shutdown is cancelling every task.
    pub(crate) fn cancelling_all(&self) -> bool {
        self.gate.0.cancelling_all.load(Ordering::SeqCst)
    }

    /// Whether `agent` is below its own cap. Its running count is the load
    /// tracker's in-flight count: both count exactly the running tasks.
    fn agent_has_room(&self, core: &Core, agent: &str) -> bool {
        match core.agent_caps.get(agent) {
            None => true,
            Some(cap) => self.load.lock().in_flight(agent) < *cap,
        }
    }

    pub(crate) fn set_agent_cap(&self, agent: &str, cap: Option<usize>) {
        let mut core = self.core.lock();
        match cap {
            Some(cap) => {
                core.agent_caps.insert(Arc::from(agent), cap.max(1));
            }
            None => {
                core.agent_caps.remove(agent);
            }
        }
        self.gate
            .0
            .agent_caps
            .store(!core.agent_caps.is_empty(), Ordering::SeqCst);
        self.admit_waiters(&mut core);
    }

    // ----- spawning -------------------------------------------------------

    pub(crate) fn spawn(&self, prepared: Prepared) -> Result<NewTask, SpawnError> {
        let result = self.try_spawn(prepared);
        let counter = match &result {
            Ok(_) => &self.spawn_counts.0.spawned,
            Err(_) => &self.spawn_counts.0.refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    /// Whether a spawn may take a slot without the admission lock: nobody
    /// waits (or the slot would be theirs), no agent has a cap of its own,
    /// sub-agents are enabled and the settings are current.
    fn may_admit_at_once(&self) -> bool {
        let gate = &self.gate.0;
        gate.queued.load(Ordering::SeqCst) == 0
            && !gate.agent_caps.load(Ordering::Acquire)
            && gate.enabled.load(Ordering::Acquire)
            && self.settings_applied()
    }

    /// Tasks waiting for a slot now.
    fn n_queued(&self) -> usize {
        self.gate.0.queued.load(Ordering::SeqCst)
    }

    /// Takes one of the `max_concurrent` slots if one is free.
    fn take_slot(&self) -> bool {
        let max_concurrent = self.gate.0.max_concurrent.load(Ordering::SeqCst);
        self.counts
            .0
            .slots
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                (held < max_concurrent).then_some(held + 1)
            })
            .is_ok()
    }

    fn try_spawn(&self, prepared: Prepared) -> Result<NewTask, SpawnError> {
        if self.gate.0.shutting_down.load(Ordering::SeqCst) {
            return Err(SpawnError::ShuttingDown);
        }
        if prepared.agent().trim().is_empty() {
            return Err(SpawnError::InvalidSpec(
                "the agent name is empty; name a configured agent",
            ));
        }
        match prepared {
            Prepared::Parentless(cell) => {
                if !cell.root && self.may_admit_at_once() && self.take_slot() {
                    self.start_at_once(&cell, Slot::Own);
                    return Ok(NewTask {
                        cell,
                        admission: Admission::Running,
                    });
                }
                let mut core = self.core.lock();
                self.ready_for_admission(&mut core, cell.root)?;
                let new = self.spawn_locked(&mut core, cell, None)?;
                self.after_enqueue(&mut core, &new);
                Ok(new)
            }
            Prepared::Child {
                parent: parent_id,
                cell,
                spec,
            } => {
                let parent = self
                    .table
                    .get(parent_id)
                    .ok_or(SpawnError::UnknownParent(parent_id))?;
                let root = cell.root;
                if !root && self.may_admit_at_once() {
                    // The parent's lock is held until the child is in the
                    // table, so the parent cannot settle in between: a
                    // child is never added to a parent that has ended.
                    let life = parent.life.lock();
                    check_parent(parent_id, &life)?;
                    // A foreground child of a parent on a slot borrows that
                    // slot, which takes the admission lock.
                    let borrows = !spec.background && life.slot != Slot::None;
                    if !borrows && self.take_slot() {
                        let depth = parent.depth.saturating_add(1);
                        let child =
                            Arc::new(TaskCell::new(cell, spec, depth, parent.token.child_token()));
                        self.start_at_once(&child, Slot::Own);
                        drop(life);
                        return Ok(NewTask {
                            cell: child,
                            admission: Admission::Running,
                        });
                    }
                }
                let mut core = self.core.lock();
                self.ready_for_admission(&mut core, root)?;
                let mut life = parent.life.lock();
                check_parent(parent_id, &life)?;
                let waits_for_lend = !root && !spec.background && life.slot != Slot::None;
                let can_lend = waits_for_lend && life.lent_to().is_none();
                let depth = parent.depth.saturating_add(1);
                let child = Arc::new(TaskCell::new(cell, spec, depth, parent.token.child_token()));
                let lender = waits_for_lend.then_some(Lender {
                    id: parent_id,
                    life: &mut life,
                    can_lend,
                });
                let new = self.spawn_locked(&mut core, child, lender)?;
                let compact = life.n_borrowers() >= 16;
                drop(life);
                self.after_enqueue(&mut core, &new);
                if compact {
                    self.compact_borrowers(&parent);
                }
                Ok(new)
            }
        }
    }

    /// Marks a task admitted without waiting as running on `slot`, makes it
    /// visible and announces it.
    fn start_at_once(&self, cell: &Arc<TaskCell>, slot: Slot) {
        {
            let mut life = cell.life.lock();
            life.status = TaskStatus::Running;
            life.started = Some(Duration::ZERO);
            life.slot = slot;
        }
        self.table.insert(cell.clone());
        if !cell.root {
            let max_concurrent = self.gate.0.max_concurrent.load(Ordering::Relaxed);
            self.note_started(cell, slot, max_concurrent, Duration::ZERO);
        }
    }

    /// What a spawn under the admission lock does before it locks a
    /// parent: applies new settings, refuses when sub-agents are disabled,
    /// and hands slots freed by settles that have not reached this lock yet
    /// to the oldest waiters, whose they are, rather than to the newcomer.
    fn ready_for_admission(&self, core: &mut Core, root: bool) -> Result<(), SpawnError> {
        self.refresh_settings(core);
        if !root && !core.settings.enabled() {
            return Err(SpawnError::Disabled);
        }
        self.admit_waiters(core);
        Ok(())
    }

    /// A task just queued tries for a slot itself, once no parent's lock is
    /// held: one freed while it was queued is handed over now (see "Slots
    /// without a lock").
    fn after_enqueue(&self, core: &mut Core, new: &NewTask) {
        if matches!(new.admission, Admission::Queued { .. }) {
            self.admit_waiters(core);
        }
    }

    /// Admission under the admission lock, after
    /// [`ready_for_admission`](Self::ready_for_admission): a root run, a
    /// borrowed slot, a free slot, or the queue. Locks no cell but the new
    /// one, so a parent's lock may be held.
    fn spawn_locked(
        &self,
        core: &mut Core,
        cell: Arc<TaskCell>,
        lender: Option<Lender<'_, '_>>,
    ) -> Result<NewTask, SpawnError> {
        let root = cell.root;
        let max_concurrent = core.settings.max_concurrent();
        let queue_wait = core.settings.queue_wait();
        let slot = if root {
            Some(Slot::None)
        } else if let Some(Lender {
            id, can_lend: true, ..
        }) = &lender
        {
            Some(Slot::Borrowed(*id))
        } else if self.agent_has_room(core, &cell.agent) && self.take_slot() {
            Some(Slot::Own)
        } else {
            None
        };

        let Some(slot) = slot else {
            if queue_wait.is_zero() {
                return Err(if let Some(lender) = &lender {
                    SpawnError::LentSlotBusy { parent: lender.id }
                } else if self.counts.0.slots.load(Ordering::SeqCst) < max_concurrent {
                    SpawnError::AgentAtCapacity {
                        agent: cell.agent.to_string(),
                        max_concurrent: core.agent_caps.get(&cell.agent).copied().unwrap_or(0),
                    }
                } else {
                    SpawnError::AtCapacity { max_concurrent }
                });
            }
            if self.n_queued() >= core.settings.max_queue() {
                return Err(SpawnError::QueueFull {
                    max_queue: core.settings.max_queue(),
                });
            }
            return Ok(self.enqueue(core, cell, lender, queue_wait));
        };

        if let (Slot::Borrowed(_), Some(lender)) = (slot, lender) {
            lender.life.set_lent_to(Some(cell.id));
        }
        self.start_at_once(&cell, slot);
        Ok(NewTask {
            cell,
            admission: Admission::Running,
        })
    }

    /// Puts a task in its agent's queue (and, for a foreground child, in
    /// its parent's line for the lent slot).
    fn enqueue(
        &self,
        core: &mut Core,
        cell: Arc<TaskCell>,
        lender: Option<Lender<'_, '_>>,
        queue_wait: Duration,
    ) -> NewTask {
        let (sender, admitted) = oneshot::channel();
        cell.life.lock().admit = Some(sender);
        self.table.insert(cell.clone());
        let seq = core.next_queue_seq;
        core.next_queue_seq += 1;
        let queue = core.queues.entry(cell.agent.clone()).or_default();
        queue.waiters.push_back((seq, cell.clone()));
        queue.live += 1;
        if let Some(lender) = lender {
            lender.life.borrowers().push_back(cell.id);
        }
        // Raised before the try below; see "Slots without a lock".
        self.gate.0.queued.fetch_add(1, Ordering::SeqCst);
        self.emit(|| RegistryEvent::Queued {
            task_id: cell.id,
            agent: cell.agent.clone(),
            parent_id: cell.parent,
            queued: self.n_queued(),
        });
        let deadline = cell.created + queue_wait;
        NewTask {
            cell,
            admission: Admission::Queued { admitted, deadline },
        }
    }

    /// Drops borrowers of `parent` that left the queue another way. Called
    /// under the admission lock, which every change to the line takes, with
    /// the parent's own lock released while the children's are read.
    fn compact_borrowers(&self, parent: &TaskCell) {
        let mut borrowers = std::mem::take(parent.life.lock().borrowers());
        borrowers.retain(|borrower| {
            self.table
                .get(*borrower)
                .is_some_and(|cell| is_waiting(&cell))
        });
        let mut life = parent.life.lock();
        // A parent that settled meanwhile lends nothing any more.
        if life.ended.is_none() {
            *life.borrowers() = borrowers;
        }
    }

    /// Counts a sub-agent that has just started on `slot` and announces it.
    fn note_started(
        &self,
        cell: &TaskCell,
        slot: Slot,
        max_concurrent: usize,
        queued_for: Duration,
    ) {
        self.counts.0.running.fetch_add(1, Ordering::Relaxed);
        self.load.lock().record_started(&cell.agent);
        self.emit(|| RegistryEvent::Started {
            task_id: cell.id,
            agent: cell.agent.clone(),
            parent_id: cell.parent,
            running: self.counts.0.slots.load(Ordering::Relaxed),
            max_concurrent,
            borrowed: matches!(slot, Slot::Borrowed(_)),
            queued_for,
        });
    }

    // ----- the queue ------------------------------------------------------

    /// Bookkeeping for a task leaving its agent's queue other than from the
    /// front; its deque entry becomes a tombstone.
    fn leave_queue_bookkeeping(&self, core: &mut Core, agent: &Arc<str>) {
        self.gate.0.queued.fetch_sub(1, Ordering::SeqCst);
        if let Some(queue) = core.queues.get_mut(agent) {
            queue.live = queue.live.saturating_sub(1);
            if queue.live == 0 {
                core.queues.remove(agent);
            } else if queue.waiters.len() > 2 * queue.live + 32 {
                queue.waiters.retain(|(_, cell)| is_waiting(cell));
            }
        }
    }

    /// Hands free slots to the oldest eligible waiters until slots or
    /// eligible waiters run out.
    fn admit_waiters(&self, core: &mut Core) {
        while self.n_queued() > 0 {
            // The slot first: one freed by a settle that does not take this
            // lock shows in the count.
            if !self.take_slot() {
                break;
            }
            let Some(cell) = self.pop_oldest_eligible(core) else {
                self.counts.0.slots.fetch_sub(1, Ordering::SeqCst);
                break;
            };
            self.admit_queued(core, &cell, Slot::Own);
        }
    }

    /// Removes and returns the oldest waiter whose agent has room.
    fn pop_oldest_eligible(&self, core: &mut Core) -> Option<Arc<TaskCell>> {
        let mut best: Option<(u64, Arc<str>)> = None;
        let agents: Vec<Arc<str>> = core.queues.keys().cloned().collect();
        for agent in agents {
            if !self.agent_has_room(core, &agent) {
                continue;
            }
            let Some(queue) = core.queues.get_mut(&agent) else {
                continue;
            };
            while let Some((_, cell)) = queue.waiters.front() {
                if is_waiting(cell) {
                    break;
                }
                queue.waiters.pop_front();
            }
            if let Some(&(seq, _)) = queue.waiters.front()
                && best.as_ref().is_none_or(|(best_seq, _)| seq < *best_seq)
            {
                best = Some((seq, agent));
            }
        }
        let (_, agent) = best?;
        let queue = core.queues.get_mut(&agent)?;
        let (_, cell) = queue.waiters.pop_front()?;
        queue.live = queue.live.saturating_sub(1);
        if queue.live == 0 {
            core.queues.remove(&agent);
        }
        self.gate.0.queued.fetch_sub(1, Ordering::SeqCst);
        Some(cell)
    }

    /// Marks a task that has just left the queue as running on `slot` and
    /// wakes its future. The caller has done the queue bookkeeping and the
    /// slot accounting.
    fn admit_queued(&self, core: &Core, cell: &TaskCell, slot: Slot) {
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
        self.note_started(cell, slot, core.settings.max_concurrent(), queued_for);
    }

    /// A queued task's own future gave up waiting (deadline or cancel).
    pub(crate) fn leave_queue(&self, cell: &Arc<TaskCell>, reason: LeaveReason) -> QueueExit {
        let mut core = self.core.lock();
        let exit = self.leave_queue_locked(&mut core, cell, reason);
        drop(core);
        if exit == QueueExit::Ended {
            cell.done.notify_waiters();
        }
        exit
    }

    /// [`leave_queue`](Self::leave_queue) under the admission lock; the
    /// caller wakes the task's waiters once the locks are released.
    fn leave_queue_locked(
        &self,
        core: &mut Core,
        cell: &Arc<TaskCell>,
        reason: LeaveReason,
    ) -> QueueExit {
        let mut records = self.records.lock();
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
                let agent_cap = core.agent_caps.get(agent).copied();
                let agent_running = self.load.lock().in_flight(agent);
                let message = match agent_cap {
                    Some(cap) if agent_running >= cap => format!(
                        "waited {} ms for a slot without getting one (agent `{agent}` already runs its maximum of {cap} tasks); raise that agent's max_concurrent or queue_wait_ms, or stop one of its tasks",
                        waited.as_millis(),
                    ),
                    _ => format!(
                        "waited {} ms for a slot without getting one (max_concurrent = {}, {} running); raise max_concurrent or queue_wait_ms, or stop a running task",
                        waited.as_millis(),
                        core.settings.max_concurrent(),
                        self.counts.0.slots.load(Ordering::SeqCst),
                    ),
                };
                life.status = TaskStatus::Failed;
                life.failure = Some(Box::new(TaskFailure::new(
                    FailureKind::QueueTimeout,
                    message,
                )));
            }
        }
        // The bookkeeping may read other waiters' cells, and perhaps this
        // one's tombstone, so it runs with no cell locked. Nobody else
        // settles a task that has left the queue: its future does not run
        // its work, and every other way out of the queue takes the
        // admission lock, which is held here.
        drop(life);
        self.leave_queue_bookkeeping(core, &cell.agent);
        let life = cell.life.lock();
        self.settle(Some(core), &mut records, cell, life);
        QueueExit::Ended
    }

    // ----- cancel ---------------------------------------------------------

    pub(crate) fn cancel(&self, id: TaskId) -> Result<CancelOutcome, UnknownTask> {
        let cell = self.table.get(id).ok_or(UnknownTask(id))?;
        // A queued task leaves the queue, which takes the admission lock
        // first. A task never goes back to queued, so a task not queued
        // now needs no lock but its own.
        // Read in a statement of its own: a guard made in the condition
        // would live until the admission lock is taken, the wrong order.
        let queued = cell.life.lock().status == TaskStatus::Queued;
        let mut core = queued.then(|| self.core.lock());
        let mut life = cell.life.lock();
        match (life.status, core.as_deref_mut()) {
            (TaskStatus::Queued, Some(locked)) => {
                drop(life);
                cell.token.cancel();
                self.leave_queue_locked(locked, &cell, LeaveReason::Cancelled);
                drop(core);
                cell.done.notify_waiters();
                Ok(CancelOutcome::Cancelled {
                    was: TaskStatus::Queued,
                })
            }
            (TaskStatus::Running, _) => {
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
            (status, _) => Ok(CancelOutcome::AlreadyFinished { status }),
        }
    }

    // ----- finishing ------------------------------------------------------

    /// Records how a running task's work ended, releases or returns its slot
    /// (handing it to the next waiter), and returns the stop event when the
    /// task's start phase had begun.
    pub(crate) fn finish(
        &self,
        cell: &Arc<TaskCell>,
        outcome: Outcome,
        stop_event_wanted: bool,
    ) -> Option<SubagentStopEvent> {
        // A settle that passes a lent slot on, or hands a slot to a waiter,
        // does it under the admission lock. Whether it lends is read again
        // under the task's own lock below, where it cannot change.
        let mut needs_core =
            cell.life.lock().involves_lending() || self.gate.0.queued.load(Ordering::SeqCst) > 0;
        let mut outcome = Some(outcome);
        loop {
            let mut core = needs_core.then(|| self.core.lock());
            let mut records = self.records.lock();
            let mut life = cell.life.lock();
            if life.ended.is_some() {
                return None;
            }
            if core.is_none() && life.involves_lending() {
                needs_core = true;
                continue;
            }
            if life.status == TaskStatus::Running {
                match outcome.take() {
                    Some(Outcome::Completed(text)) => {
                        life.status = TaskStatus::Completed;
                        life.output = Some(text);
                    }
                    Some(Outcome::Failed(failure)) => {
                        life.status = TaskStatus::Failed;
                        life.failure = Some(Box::new(failure));
                    }
                    Some(Outcome::Cancelled) | None => life.status = TaskStatus::Cancelled,
                }
            }
            // Otherwise a cancel got there first and its status stands.
            self.settle(core.as_deref_mut(), &mut records, cell, life);
            drop(records);
            drop(core);
            break;
        }
        if !needs_core && self.gate.0.queued.load(Ordering::SeqCst) > 0 {
            // Someone queued while this settle gave its slot back without
            // the lock; see "Slots without a lock".
            self.admit_waiters(&mut self.core.lock());
        }
        cell.done.notify_waiters();
        if !stop_event_wanted {
            return None;
        }
        stop_event(cell)
    }

    /// The task's future was dropped before it settled: leave the queue or
    /// finish as cancelled.
    pub(crate) fn abandon(
        &self,
        cell: &Arc<TaskCell>,
        stop_event_wanted: bool,
    ) -> Option<SubagentStopEvent> {
        let queued = cell.life.lock().status == TaskStatus::Queued;
        // Admitted between the read and the admission lock, it is running
        // with nobody left to finish it but this.
        if queued && self.leave_queue(cell, LeaveReason::Cancelled) == QueueExit::Ended {
            return None;
        }
        self.finish(cell, Outcome::Cancelled, stop_event_wanted)
    }

    /// Ends a task's life in the registry: end time, slot, load, retention.
    /// Its status must already be terminal. `core` is held when the task
    /// lends or borrows a slot, or when waiters may take its slot; the
    /// caller wakes the task's waiters once the locks are released.
    fn settle(
        &self,
        mut core: Option<&mut Core>,
        records: &mut Records,
        cell: &Arc<TaskCell>,
        mut life: MutexGuard<'_, Life>,
    ) {
        let now = Instant::now();
        let ended = now.saturating_duration_since(cell.created);
        let id = cell.id;
        life.ended = Some(ended);
        let slot = std::mem::replace(&mut life.slot, Slot::None);
        let lent_to = life.end_lending();
        let run_time = life.started.map(|started| ended.saturating_sub(started));
        let status = life.status;
        let failure_kind = life.failure.as_ref().map(|failure| failure.kind);
        let was_running = run_time.is_some() && !cell.root;
        // Given back before anyone can see the task ended (which they see
        // under its lock), so a caller that saw it end finds its slot free.
        if (slot, lent_to) == (Slot::Own, None) {
            self.counts.0.slots.fetch_sub(1, Ordering::SeqCst);
        }
        if was_running {
            self.counts.0.running.fetch_sub(1, Ordering::Relaxed);
        }
        drop(life);

        match (slot, lent_to, core.as_deref_mut()) {
            (Slot::None | Slot::Own, None, _) => {}
            // The slot is with a foreground child that outlives us: it
            // becomes the child's, on the same terms we held it.
            (slot, Some(child_id), _) => {
                if let Some(child) = self.table.get(child_id) {
                    child.life.lock().slot = slot;
                }
                if let Slot::Borrowed(lender_id) = slot
                    && let Some(lender) = self.table.get(lender_id)
                {
                    lender.life.lock().set_lent_to(Some(child_id));
                }
            }
            (Slot::Borrowed(lender_id), None, Some(core)) => self.return_slot(core, lender_id),
            (Slot::Borrowed(_), None, None) => {
                // `finish` takes the admission lock for every task on a
                // borrowed slot, so this is not reached; were it reached,
                // the lender's slot would only come back when the lender
                // ends.
                tracing::error!(task_id = %id, "a borrowed slot came back without the admission lock");
            }
        }

        if was_running {
            let outcome = match (status, failure_kind) {
                (TaskStatus::Completed, _) => RunOutcome::Succeeded(run_time.unwrap_or_default()),
                (TaskStatus::Failed, Some(kind)) if kind.counts_against_agent() => {
                    RunOutcome::Failed
                }
                _ => RunOutcome::Neutral,
            };
            let window = records.settings.selector().load_window;
            self.load
                .lock()
                .record_finished(&cell.agent, outcome, window);
        }

        records.finished_order.push_back(cell.clone());
        records.n_undelivered += 1;
        let inbox = records.inboxes.entry(cell.parent).or_default();
        inbox.finished.push(id);
        inbox.undelivered += 1;
        if inbox.finished.len() > 2 * inbox.undelivered + 32 {
            // Ids delivered by waits pile up while one result stays unread.
            let table = &self.table;
            inbox
                .finished
                .retain(|id| table.get(*id).is_some_and(|cell| is_undelivered(&cell)));
        }
        // A parent that failed or was cancelled reads no more results: this
        // one is settled as delivered, with nobody left to receive it.
        if let Some(parent) = cell.parent
            && self.table.get(parent).is_some_and(|parent| {
                matches!(
                    parent.life.lock().status,
                    TaskStatus::Failed | TaskStatus::Cancelled
                )
            })
        {
            // Nobody reads it; its handle, if any, is dropped at once.
            drop(deliver(records, cell, now));
        }

        if status != TaskStatus::Completed {
            // Nobody is left to await or collect its descendants' work: stop
            // them. A completed task's background children keep running (the
            // agent's on_finish policy has already decided their fate).
            cell.token.cancel();
            // Results its children left unread have nobody to go to now.
            let unread = records
                .inboxes
                .get(&Some(id))
                .map(|inbox| inbox.finished.clone())
                .unwrap_or_default();
            for child_id in unread {
                if let Some(child) = self.table.get(child_id) {
                    drop(deliver(records, &child, now));
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
        if let Some(core) = core {
            self.admit_waiters(core);
        }
        self.evict(records, now);
    }

    /// A borrowed slot comes back to `lender_id`: it goes to the lender's
    /// next queued foreground child, or back to the lender.
    fn return_slot(&self, core: &mut Core, lender_id: TaskId) {
        let Some(lender) = self.table.get(lender_id) else {
            // The lender is gone (cannot happen: a settling lender passes its
            // slot on); free the slot rather than leak it.
            self.counts.0.slots.fetch_sub(1, Ordering::SeqCst);
            return;
        };
        lender.life.lock().set_lent_to(None);
        loop {
            let Some(borrower_id) = lender.life.lock().borrowers().pop_front() else {
                return;
            };
            let Some(borrower) = self.table.get(borrower_id) else {
                continue;
            };
            if !is_waiting(&borrower) {
                continue;
            }
            lender.life.lock().set_lent_to(Some(borrower_id));
            self.leave_queue_bookkeeping(core, &borrower.agent);
            self.admit_queued(core, &borrower, Slot::Borrowed(lender_id));
            return;
        }
    }

    // ----- retention and delivery -----------------------------------------

    /// Evicts delivered results past their TTL, then the oldest results
    /// while more than `max_finished` are kept: delivered ones first, and
    /// undelivered ones only as a last resort (counted and logged).
    fn evict(&self, records: &mut Records, now: Instant) {
        let ttl = records.settings.result_ttl();
        let max_finished = records.settings.max_finished();
        while let Some(&(delivered_at, id)) = records.delivered.front() {
            if records.n_finished() <= max_finished
                && now.saturating_duration_since(delivered_at) < ttl
            {
                break;
            }
            records.delivered.pop_front();
            self.table.remove(id);
        }
        while records.n_finished() > max_finished {
            let Some(cell) = records.finished_order.pop_front() else {
                break;
            };
            if !is_undelivered(&cell) || self.table.remove(cell.id).is_none() {
                continue;
            }
            records.n_undelivered = records.n_undelivered.saturating_sub(1);
            records.note_left_inbox(cell.parent);
            records.evicted_undelivered += 1;
            tracing::warn!(
                task_id = %cell.id,
                agent = %cell.agent,
                max_finished,
                "evicted a finished task whose result was never read; raise max_finished or collect results sooner"
            );
        }
        if records.finished_order.len() > 2 * records.n_undelivered + 64 {
            records.finished_order.retain(|cell| is_undelivered(cell));
        }
    }

    /// The finished task's snapshot, marked delivered; while it has not
    /// finished, its cell to wait on.
    pub(crate) fn collect(&self, id: TaskId) -> Result<Collected, UnknownTask> {
        // The lookup under `records`, which eviction holds: a task evicted
        // undelivered is gone here, not delivered a second time.
        let mut records = self.records.lock();
        let cell = self.table.get(id).ok_or(UnknownTask(id))?;
        let mut life = cell.life.lock();
        if life.ended.is_none() {
            drop(life);
            return Ok(Collected::Pending(cell));
        }
        let now = Instant::now();
        let newly_delivered = !life.delivered;
        life.delivered = true;
        let task = snapshot_of(&cell, &life, now);
        drop(life);
        let join = cell.join.lock().take();
        if newly_delivered {
            records.note_delivered(id, task.parent_id, now);
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
    /// caller to drop once the locks are released (see [`TaskCell::join`]).
    pub(crate) fn take_finished(
        &self,
        parent: Option<TaskId>,
    ) -> (Vec<TaskSnapshot>, Vec<JoinHandle<()>>) {
        let mut records = self.records.lock();
        let Some(inbox) = records.inboxes.remove(&parent) else {
            return (Vec::new(), Vec::new());
        };
        let now = Instant::now();
        let mut taken = Vec::with_capacity(inbox.undelivered);
        let mut joins = Vec::with_capacity(inbox.undelivered);
        for id in inbox.finished {
            // Evicted ones are gone from the table, and so not handed over.
            let Some(cell) = self.table.get(id) else {
                continue;
            };
            let Some(join) = deliver(&mut records, &cell, now) else {
                continue;
            };
            joins.extend(join);
            taken.push(snapshot_of(&cell, &cell.life.lock(), now));
        }
        self.evict(&mut records, now);
        (taken, joins)
    }

    // ----- reading ----------------------------------------------------------

    pub(crate) fn snapshot(&self, id: TaskId, now: Instant) -> Option<TaskSnapshot> {
        self.table
            .get(id)
            .map(|cell| snapshot_of(&cell, &cell.life.lock(), now))
    }

    pub(crate) fn list(&self, filter: &TaskFilter) -> Vec<TaskSnapshot> {
        let now = Instant::now();
        self.evict(&mut self.records.lock(), now);
        let mut matching: Vec<(u64, TaskSnapshot)> = self
            .table
            .cells()
            .into_iter()
            .filter_map(|cell| {
                let life = cell.life.lock();
                filter
                    .matches(life.status, cell.parent, &cell.agent)
                    .then(|| (cell.seq, snapshot_of(&cell, &life, now)))
            })
            .collect();
        matching.sort_unstable_by_key(|(seq, _)| *seq);
        matching.into_iter().map(|(_, task)| task).collect()
    }

    pub(crate) fn start_event(&self, cell: &TaskCell) -> SubagentStartEvent {
        SubagentStartEvent {
            task: hook_task(cell, &cell.life.lock()),
        }
    }

    pub(crate) fn stats(&self) -> crate::RegistryStats {
        let max_concurrent = self.settings().max_concurrent();
        let (retained_finished, undelivered, evicted_undelivered) = {
            let records = self.records.lock();
            (
                records.n_finished(),
                records.n_undelivered,
                records.evicted_undelivered,
            )
        };
        crate::RegistryStats {
            slots_in_use: self.counts.0.slots.load(Ordering::SeqCst),
            running: self.counts.0.running.load(Ordering::SeqCst),
            queued: self.n_queued(),
            max_concurrent,
            retained_finished,
            undelivered,
            tracked: self.table.len(),
            spawned: self.spawn_counts.0.spawned.load(Ordering::Relaxed),
            refused: self.spawn_counts.0.refused.load(Ordering::Relaxed),
            hook_failures: self.hook_failures.load(Ordering::Relaxed),
            evicted_undelivered,
        }
    }

    /// Runs the periodic sweep: settings, admission and retention.
    pub(crate) fn sweep(&self) {
        let window = {
            let mut core = self.core.lock();
            self.refresh_settings(&mut core);
            self.admit_waiters(&mut core);
            core.settings.selector().load_window
        };
        self.evict(&mut self.records.lock(), Instant::now());
        self.load.lock().forget_idle(window);
    }

    pub(crate) fn emit_hook_failure(&self, event: RegistryEvent) {
        self.hook_failures.fetch_add(1, Ordering::Relaxed);
        self.emit(|| event);
    }

    /// Picks an agent with the live load and strategy, and records the
    /// selection.
    pub(crate) fn select_agent(
        &self,
        request: &SelectionRequest<'_>,
        candidates: &[AgentCandidate],
    ) -> Result<Selection, SelectionError> {
        let mut core = self.core.lock();
        self.refresh_settings(&mut core);
        let tuning = *core.settings.selector();
        let mut load = self.load.lock();
        let selection = core
            .selector
            .select(request, candidates, &tuning, |agent| {
                load.snapshot(agent, tuning.load_window)
            })?;
        load.record_selection(&selection.agent, tuning.load_window);
        Ok(selection)
    }

    /// One agent's load as the selector sees it.
    pub(crate) fn agent_load(&self, agent: &str) -> AgentLoadSnapshot {
        let window = self.settings().selector().load_window;
        self.load.lock().snapshot(agent, window)
    }

    /// The task's cell.
    #[cfg(test)]
    pub(crate) fn cell(&self, id: TaskId) -> Option<Arc<TaskCell>> {
        self.table.get(id)
    }

    /// Whether the task's join handle is still kept (see [`TaskCell::join`]).
    #[cfg(test)]
    pub(crate) fn keeps_join_handle(&self, id: TaskId) -> Option<bool> {
        let cell = self.table.get(id)?;
        let kept = cell.join.lock().is_some();
        Some(kept)
    }

    /// Every task id still queued or running.
    fn active_ids(&self) -> Vec<TaskId> {
        self.table
            .cells()
            .into_iter()
            .filter(|cell| cell.life.lock().ended.is_none())
            .map(|cell| cell.id)
            .collect()
    }
}

/// The parent a foreground child borrows from, with its lock held by the
/// spawn.
struct Lender<'guard, 'life> {
    id: TaskId,
    life: &'guard mut MutexGuard<'life, Life>,
    /// Whether its slot is free to lend now (not lent to another child).
    can_lend: bool,
}

/// A child may be spawned only by a running parent.
fn check_parent(parent: TaskId, life: &Life) -> Result<(), SpawnError> {
    if life.status == TaskStatus::Running && life.ended.is_none() {
        Ok(())
    } else {
        Err(SpawnError::ParentNotRunning {
            parent,
            status: life.status,
        })
    }
}

/// Marks a finished task's result as handed over and lets go of its
/// join handle, returned for the caller to drop (see [`TaskCell::join`]).
/// `None` when the result was not there to deliver: not finished, or
/// already delivered.
fn deliver(records: &mut Records, cell: &TaskCell, now: Instant) -> Option<Option<JoinHandle<()>>> {
    {
        let mut life = cell.life.lock();
        if life.ended.is_none() || life.delivered {
            return None;
        }
        life.delivered = true;
    }
    let join = cell.join.lock().take();
    records.note_delivered(cell.id, cell.parent, now);
    Some(join)
}

impl Records {
    fn n_finished(&self) -> usize {
        self.n_undelivered + self.delivered.len()
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

    /// Bookkeeping for a result just marked delivered.
    fn note_delivered(&mut self, id: TaskId, parent: Option<TaskId>, now: Instant) {
        self.n_undelivered = self.n_undelivered.saturating_sub(1);
        self.note_left_inbox(parent);
        self.delivered.push_back((now, id));
    }
}
