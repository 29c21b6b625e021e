//! The floor: a minimal registry with only the parts deputy's contract asks
//! of every task, measured beside the real one.
//!
//! A task here gets what every registry task must have: a random [`TaskId`]
//! in a table that finds it by id, a shared cell with its spec and times, its
//! own cancel token, a cap taken and given back (whose count also tells
//! shutdown when all have ended), and a [`TaskSnapshot`] handed to the
//! collecting wait. Like the registry, it keeps each task's join handle
//! until the result is collected, so the task's memory is freed by the
//! collecting thread rather than by the worker that ran it. It leaves out
//! everything else the real registry does: no
//! queue (it runs only with room for every task), no hooks, no lifecycle
//! events, no load tracker, no lending, no retention or delivery
//! bookkeeping. The table is sharded and each task's state has its own lock,
//! so spawns, finishes and collects of different tasks share no lock; the
//! one counter every task touches sits on a cache line of its own.
//!
//! It is not a registry anyone should use. It answers one question: how
//! close to a bare `Semaphore` + `tokio::spawn` does a registry with these
//! parts get on this machine?

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use deputy_registry::{TaskId, TaskLabels, TaskSnapshot, TaskSpec, TaskStatus, Usage};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const SHARDS: usize = 16;

pub(crate) struct Floor {
    shared: Arc<Shared>,
}

struct Shared {
    shards: Vec<Mutex<FxHashMap<TaskId, Arc<Cell>>>>,
    /// Tasks running; the spawning thread and the workers all write it, so
    /// it gets a cache line of its own.
    running: OwnLine<AtomicUsize>,
    /// Woken when `running` drops to zero, for shutdown.
    idle: Notify,
    cap: usize,
    /// One wall-clock reading, so a task's times need one clock read each.
    epoch: (Instant, SystemTime),
}

#[repr(align(128))]
struct OwnLine<T>(T);

struct Cell {
    id: TaskId,
    agent: Arc<str>,
    task: Arc<str>,
    labels: TaskLabels,
    created: Instant,
    token: CancellationToken,
    state: Mutex<CellState>,
    done: Notify,
    join: Mutex<Option<JoinHandle<()>>>,
}

/// Set once, when the task ends. A task starts when it is created (there is
/// no queue), so `created` is also its start; it ends completed with an
/// output or cancelled without one; and only the collecting wait hands
/// results over, so nothing records delivery.
#[derive(Default)]
struct CellState {
    output: Option<Arc<str>>,
    ended: Option<Instant>,
}

impl Floor {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                shards: (0..SHARDS)
                    .map(|_| Mutex::new(FxHashMap::default()))
                    .collect(),
                running: OwnLine(AtomicUsize::new(0)),
                idle: Notify::new(),
                cap,
                epoch: (Instant::now(), SystemTime::now()),
            }),
        }
    }

    fn shard(&self, id: TaskId) -> &Mutex<FxHashMap<TaskId, Arc<Cell>>> {
        let index = (id.as_uuid().as_u128() % SHARDS as u128) as usize;
        &self.shared.shards[index]
    }

    /// Starts `work` at once, or returns `None` when the cap is full.
    pub(crate) fn spawn<F, Fut>(&self, spec: &TaskSpec, work: F) -> Option<TaskId>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = String> + Send + 'static,
    {
        let shared = &self.shared;
        shared
            .running
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |running| {
                (running < shared.cap).then_some(running + 1)
            })
            .ok()?;
        let id = TaskId::new_random();
        let now = Instant::now();
        let cell = Arc::new(Cell {
            id,
            agent: spec.agent.clone(),
            task: spec.task.clone(),
            labels: spec.labels.clone(),
            created: now,
            token: CancellationToken::new(),
            state: Mutex::new(CellState::default()),
            done: Notify::new(),
            join: Mutex::new(None),
        });
        self.shard(id).lock().insert(id, cell.clone());
        let join = tokio::spawn({
            let shared = self.shared.clone();
            let cell = cell.clone();
            async move {
                // The work first: a task whose work is ready at once never
                // registers with its token.
                let output = tokio::select! {
                    biased;
                    output = work() => Some(Arc::<str>::from(output)),
                    () = cell.token.cancelled() => None,
                };
                {
                    let mut state = cell.state.lock();
                    state.output = output;
                    state.ended = Some(Instant::now());
                }
                cell.done.notify_waiters();
                if shared.running.0.fetch_sub(1, Ordering::AcqRel) == 1 {
                    shared.idle.notify_waiters();
                }
            }
        });
        *cell.join.lock() = Some(join);
        Some(id)
    }

    /// Waits for the task to finish and returns its snapshot, which says
    /// delivered as the registry's collecting wait does.
    pub(crate) async fn wait(&self, id: TaskId) -> Option<TaskSnapshot> {
        let cell = self.shard(id).lock().get(&id)?.clone();
        loop {
            let notified = cell.done.notified();
            let mut notified = std::pin::pin!(notified);
            if let Some(snapshot) = self.collect(&cell) {
                return Some(snapshot);
            }
            notified.as_mut().enable();
            if let Some(snapshot) = self.collect(&cell) {
                return Some(snapshot);
            }
            notified.await;
        }
    }

    fn collect(&self, cell: &Cell) -> Option<TaskSnapshot> {
        let state = cell.state.lock();
        let ended = state.ended?;
        // Taken here, dropped once `state` is released, as the registry
        // drops its handles after its locks.
        let join = cell.join.lock().take();
        let (epoch, epoch_at) = self.shared.epoch;
        let at = |instant: Instant| epoch_at + instant.saturating_duration_since(epoch);
        let snapshot = TaskSnapshot {
            id: cell.id,
            parent_id: None,
            agent: cell.agent.clone(),
            labels: cell.labels.clone(),
            task: cell.task.clone(),
            depth: 1,
            background: true,
            root: false,
            status: if state.output.is_some() {
                TaskStatus::Completed
            } else {
                TaskStatus::Cancelled
            },
            failure: None,
            output: state.output.clone(),
            usage: Usage::default(),
            created_at: at(cell.created),
            started_at: Some(at(cell.created)),
            ended_at: Some(at(ended)),
            queued_for: Duration::ZERO,
            run_time: Some(ended.saturating_duration_since(cell.created)),
            delivered: true,
        };
        drop(state);
        drop(join);
        Some(snapshot)
    }

    /// Waits until every task has ended.
    pub(crate) async fn shutdown(&self) {
        loop {
            let idle = self.shared.idle.notified();
            let mut idle = std::pin::pin!(idle);
            idle.as_mut().enable();
            if self.shared.running.0.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}
