//! One task's cell: what never changes after spawn and, behind the cell's
//! own lock, where the task is in its life.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::hook::{HookTask, SubagentStopEvent};
use crate::id::TaskId;
use crate::snapshot::TaskSnapshot;
use crate::spec::{TaskLabels, TaskSpec};
use crate::status::{TaskFailure, TaskStatus};
use crate::usage::Usage;

/// One task. The task table, the queue and the task's own future all hold
/// the same cell, so the future's settle reaches the task's state without a
/// lookup in the table, and a task costs one allocation besides Tokio's.
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
    /// Spawn order, for listing in spawn order.
    pub(crate) seq: u64,
    pub(crate) created: Instant,
    pub(crate) created_at: SystemTime,
    pub(crate) token: CancellationToken,
    pub(crate) usage: Mutex<Usage>,
    /// Woken when the task has finished and settled.
    pub(crate) done: Notify,
    /// The task's join handle, kept until its result is handed over. The
    /// delivery takes it; a collecting wait and `take_finished` drop it
    /// outside the registry's locks.
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
    /// Where the task is in its life. Every change of status happens under
    /// this lock, so transitions are compare-and-set. See the lock order in
    /// the `state` module.
    pub(crate) life: Mutex<Life>,
}

impl TaskCell {
    pub(crate) fn new(
        prepared: PreparedCell,
        spec: TaskSpec,
        depth: u32,
        token: CancellationToken,
    ) -> Self {
        Self {
            id: prepared.id,
            agent: spec.agent,
            task: spec.task,
            parent: spec.parent,
            labels: spec.labels,
            background: spec.background,
            root: prepared.root,
            depth,
            seq: prepared.seq,
            created: prepared.created,
            created_at: prepared.created_at,
            token,
            usage: Mutex::new(Usage::default()),
            done: Notify::new(),
            join: Mutex::new(None),
            life: Mutex::new(Life::default()),
        }
    }
}

/// Which slot a task runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// None: queued, finished, or a root run.
    None,
    /// One of the `max_concurrent` slots.
    Own,
    /// The slot of this task (its parent), lent while the parent awaits it.
    Borrowed(TaskId),
}

/// Where a task is in its life; see [`TaskCell::life`].
#[derive(Debug)]
pub(crate) struct Life {
    pub(crate) status: TaskStatus,
    /// Boxed, like the lending below: rare, and inline they would make
    /// every task's cell larger (see `the_cell_and_future_stay_small`).
    pub(crate) failure: Option<Box<TaskFailure>>,
    pub(crate) output: Option<Arc<str>>,
    /// When it started and ended, as time since it was created: each is
    /// read from the clock once, and a snapshot turns them into wall-clock
    /// times and durations with additions alone.
    pub(crate) started: Option<Duration>,
    pub(crate) ended: Option<Duration>,
    pub(crate) slot: Slot,
    /// Set once the task has lent its slot or had a child queue for it.
    lending: Option<Box<Lending>>,
    /// Wakes the task's future when it is admitted from the queue.
    pub(crate) admit: Option<oneshot::Sender<()>>,
    /// Whether its result has been handed over (when is kept by the
    /// retention queue, which evicts by it).
    pub(crate) delivered: bool,
}

impl Default for Life {
    fn default() -> Self {
        Self {
            status: TaskStatus::Queued,
            failure: None,
            output: None,
            started: None,
            ended: None,
            slot: Slot::None,
            lending: None,
            admit: None,
            delivered: false,
        }
    }
}

impl Life {
    /// Whether settling this task involves another task's slot: it lends
    /// its slot, has children waiting to borrow it, or runs on a borrowed
    /// one. Such a settle takes the admission lock.
    pub(crate) fn involves_lending(&self) -> bool {
        self.lending
            .as_ref()
            .is_some_and(|lending| lending.lent_to.is_some() || !lending.borrowers.is_empty())
            || matches!(self.slot, Slot::Borrowed(_))
    }

    /// The foreground child this task's slot is lent to.
    pub(crate) fn lent_to(&self) -> Option<TaskId> {
        self.lending.as_ref().and_then(|lending| lending.lent_to)
    }

    pub(crate) fn set_lent_to(&mut self, child: Option<TaskId>) {
        if child.is_some() || self.lending.is_some() {
            self.lending.get_or_insert_default().lent_to = child;
        }
    }

    /// Queued foreground children waiting for this task's slot.
    pub(crate) fn borrowers(&mut self) -> &mut VecDeque<TaskId> {
        &mut self.lending.get_or_insert_default().borrowers
    }

    pub(crate) fn n_borrowers(&self) -> usize {
        self.lending
            .as_ref()
            .map_or(0, |lending| lending.borrowers.len())
    }

    /// Ends all lending: returns the child the slot was lent to, and
    /// forgets the children waiting for it.
    pub(crate) fn end_lending(&mut self) -> Option<TaskId> {
        self.lending.take().and_then(|lending| lending.lent_to)
    }
}

/// A task's part in slot lending (see `Registry::spawn`).
#[derive(Debug, Default)]
pub(crate) struct Lending {
    /// The foreground child the slot is lent to.
    lent_to: Option<TaskId>,
    /// Queued foreground children waiting for the slot, oldest first
    /// (entries that left the queue another way are skipped when read).
    borrowers: VecDeque<TaskId>,
}

impl Life {
    /// The failure, for a snapshot or an event.
    pub(crate) fn failure(&self) -> Option<TaskFailure> {
        self.failure.as_deref().cloned()
    }
}

/// A new task as far as it can be made before any lock is taken.
#[derive(Debug)]
pub(crate) enum Prepared {
    /// A parentless task, whole: its depth and cancel scope need no parent.
    Parentless(Arc<TaskCell>),
    /// A child, whose depth and cancel token come from its parent, read
    /// under the parent's lock.
    Child {
        parent: TaskId,
        cell: PreparedCell,
        spec: TaskSpec,
    },
}

/// The parts of a cell that need neither a lock nor a parent.
#[derive(Debug)]
pub(crate) struct PreparedCell {
    pub(crate) id: TaskId,
    pub(crate) root: bool,
    pub(crate) seq: u64,
    pub(crate) created: Instant,
    pub(crate) created_at: SystemTime,
}

impl Prepared {
    pub(crate) fn new(spec: TaskSpec, root: bool, seq: u64) -> Self {
        let cell = PreparedCell {
            id: TaskId::new_random(),
            root,
            seq,
            created: Instant::now(),
            created_at: SystemTime::now(),
        };
        match spec.parent {
            // A parentless task is its own cancel scope; shutdown cancels
            // every task by id.
            None => {
                let depth = u32::from(!root);
                Self::Parentless(Arc::new(TaskCell::new(
                    cell,
                    spec,
                    depth,
                    CancellationToken::new(),
                )))
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

    pub(crate) fn agent(&self) -> &str {
        match self {
            Self::Parentless(cell) => &cell.agent,
            Self::Child { spec, .. } => &spec.agent,
        }
    }
}

/// The stop event of a task that has settled.
pub(crate) fn stop_event(cell: &TaskCell) -> Option<SubagentStopEvent> {
    let life = cell.life.lock();
    let ended = life.ended?;
    let duration = life
        .started
        .map(|started| ended.saturating_sub(started))
        .unwrap_or_default();
    Some(SubagentStopEvent {
        task: hook_task(cell, &life),
        status: life.status,
        error: life.failure(),
        output: life.output.clone(),
        duration,
        usage: *cell.usage.lock(),
        ended_at: cell.created_at + ended,
    })
}

pub(crate) fn hook_task(cell: &TaskCell, life: &Life) -> HookTask {
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

pub(crate) fn snapshot_of(cell: &TaskCell, life: &Life, now: Instant) -> TaskSnapshot {
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
        failure: life.failure(),
        output: life.output.clone(),
        usage: *cell.usage.lock(),
        created_at: cell.created_at,
        started_at: life.started.map(|started| cell.created_at + started),
        ended_at: life.ended.map(|ended| cell.created_at + ended),
        queued_for: life.started.or(life.ended).unwrap_or_else(age),
        run_time: life
            .started
            .map(|started| life.ended.unwrap_or_else(age).saturating_sub(started)),
        delivered: life.delivered,
    }
}

/// Whether the task has finished and its result has not been handed over.
pub(crate) fn is_undelivered(cell: &TaskCell) -> bool {
    let life = cell.life.lock();
    life.ended.is_some() && !life.delivered
}

/// Whether the task is still waiting in the queue.
pub(crate) fn is_waiting(cell: &TaskCell) -> bool {
    cell.life.lock().status == TaskStatus::Queued
}
