//! One run: its root task, its event stream and its report.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use deputy_registry::{
    Registry, RegistryEvent, TaskFailure, TaskId, TaskSnapshot, TaskStatus, Usage,
};
use futures::Stream;
use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

use crate::agent::Agent;
use crate::agent_loop::AgentRun;
use crate::error::RunError;
use crate::event::RunEvent;
use crate::report::{RunOutput, RunReport, TaskSummary};
use crate::runtime::{RuntimeInner, spec_for};

/// What every task of one run shares: the event sink, the usage total and
/// the list of its tasks.
pub(crate) struct RunShared {
    events: mpsc::UnboundedSender<RunEvent>,
    /// Asks the driver to forward every registry event sent so far.
    flush: mpsc::UnboundedSender<oneshot::Sender<()>>,
    usage: Mutex<Usage>,
    tasks: Mutex<RunTasks>,
    root_turns: AtomicU32,
}

#[derive(Default)]
struct RunTasks {
    order: Vec<TaskId>,
    members: HashSet<TaskId>,
}

impl RunShared {
    /// Shared state that sends its events and flush requests to these
    /// channels, with no usage and no tasks yet.
    fn new(
        events: mpsc::UnboundedSender<RunEvent>,
        flush: mpsc::UnboundedSender<oneshot::Sender<()>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            events,
            flush,
            usage: Mutex::new(Usage::default()),
            tasks: Mutex::new(RunTasks::default()),
            root_turns: AtomicU32::new(0),
        })
    }

    /// Shared state for a task with no run around it (started by a host
    /// with `Runtime::spawn_task`): nobody reads its events, so nothing
    /// waits on a reader.
    pub(crate) fn detached() -> Arc<Self> {
        let (events, _) = mpsc::unbounded_channel();
        let (flush, _) = mpsc::unbounded_channel();
        Self::new(events, flush)
    }

    /// Sends an event; a reader that went away is not an error.
    pub(crate) fn emit(&self, event: RunEvent) {
        let _ignored = self.events.send(event);
    }

    /// Whether anyone still reads events (text deltas are only worth
    /// streaming then).
    pub(crate) fn has_reader(&self) -> bool {
        !self.events.is_closed()
    }

    /// Waits until the driver has forwarded every registry event sent so
    /// far, so a tool result that reports a finished task comes after that
    /// task's `TaskFinished`.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future only skips the wait.
    pub(crate) async fn sync_task_events(&self) {
        let (done, flushed) = oneshot::channel();
        if self.flush.send(done).is_ok() {
            // An error means the driver ended, which forwarded everything.
            let _flushed = flushed.await;
        }
    }

    /// Adds one provider call's usage to the run's total and reports both.
    /// The event is sent under the lock, so `run_total` never goes
    /// backwards in the stream when sub-agents run on several threads.
    pub(crate) fn add_usage(&self, task_id: TaskId, agent: &Arc<str>, usage: Usage) {
        let mut total = self.usage.lock();
        *total += usage;
        self.emit(RunEvent::Usage {
            task_id,
            agent: agent.clone(),
            usage,
            run_total: *total,
        });
    }

    pub(crate) fn count_root_turn(&self) {
        self.root_turns.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a task of this run; returns whether it was new.
    pub(crate) fn add_task(&self, id: TaskId) -> bool {
        let mut tasks = self.tasks.lock();
        let added = tasks.members.insert(id);
        if added {
            tasks.order.push(id);
        }
        added
    }

    fn has_task(&self, id: TaskId) -> bool {
        self.tasks.lock().members.contains(&id)
    }

    fn task_ids(&self) -> Vec<TaskId> {
        self.tasks.lock().order.clone()
    }
}

/// A run under way: a stream of its [`RunEvent`]s and, at the end, its
/// output.
///
/// Dropping the handle before the run ended cancels it, with every
/// sub-agent it started.
pub struct RunHandle {
    run_id: TaskId,
    registry: Registry,
    events: mpsc::UnboundedReceiver<RunEvent>,
    output: oneshot::Receiver<Result<RunOutput, RunError>>,
    /// Whether the last event (`Done` or `Failed`) was read.
    ended: bool,
}

impl std::fmt::Debug for RunHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunHandle")
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

impl RunHandle {
    pub(crate) fn start(
        runtime: Arc<RuntimeInner>,
        agent: Arc<Agent>,
        prompt: String,
    ) -> Result<Self, RunError> {
        let (sender, events) = mpsc::unbounded_channel();
        let (flush, flush_requests) = mpsc::unbounded_channel();
        let shared = RunShared::new(sender, flush);
        let registry = runtime.registry.clone();
        // Subscribed before the root exists, so no event of the run is missed.
        let registry_events = registry.subscribe();
        let started = Instant::now();
        let spec = spec_for(&agent, prompt.clone());
        let on_finish = runtime.limits.on_finish;
        let max_turns = agent.max_turns;
        let work_shared = shared.clone();
        let work_agent = agent.clone();
        let spawned = registry.spawn_root(spec, move |task| {
            AgentRun::new(runtime, work_agent, task, work_shared, max_turns, on_finish).run(prompt)
        })?;
        let (output_sender, output) = oneshot::channel();
        tokio::spawn(drive(Driver {
            registry: registry.clone(),
            run_id: spawned.id,
            agent: agent.name.clone(),
            shared,
            registry_events,
            flush_requests,
            started,
            output: output_sender,
        }));
        Ok(Self {
            run_id: spawned.id,
            registry,
            events,
            output,
            ended: false,
        })
    }

    /// The run's own task id (its sub-agents are its descendants).
    pub fn run_id(&self) -> TaskId {
        self.run_id
    }

    /// Cancels the run and every sub-agent it started; returns whether it
    /// was still going.
    pub fn cancel(&self) -> bool {
        matches!(
            self.registry.cancel(self.run_id),
            Ok(deputy_registry::CancelOutcome::Cancelled { .. })
        )
    }

    /// Waits for the run to end and returns its output; events not read yet
    /// are discarded.
    ///
    /// # Cancel safety
    /// Dropping the future drops the handle, which cancels the run.
    ///
    /// # Errors
    /// When the run failed or was cancelled.
    pub async fn finish(mut self) -> Result<RunOutput, RunError> {
        self.events.close();
        match (&mut self.output).await {
            Ok(result) => result,
            // The driver only goes away without an answer if its runtime
            // shut down under it.
            Err(_closed) => Err(RunError::Cancelled {
                report: Box::new(empty_report(self.run_id)),
            }),
        }
    }
}

impl Stream for RunHandle {
    type Item = RunEvent;

    /// Ends after `Done` or `Failed`, even while detached sub-agents of the
    /// run still hold the sending side.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<RunEvent>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let polled = self.events.poll_recv(cx);
        if let Poll::Ready(Some(RunEvent::Done { .. } | RunEvent::Failed { .. })) = &polled {
            self.ended = true;
        }
        polled
    }
}

impl Drop for RunHandle {
    fn drop(&mut self) {
        // A finished run is unaffected: cancelling it changes nothing, and
        // detached sub-agents of a finished run keep running.
        let _outcome = self.registry.cancel(self.run_id);
    }
}

struct Driver {
    registry: Registry,
    run_id: TaskId,
    agent: Arc<str>,
    shared: Arc<RunShared>,
    registry_events: broadcast::Receiver<RegistryEvent>,
    flush_requests: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    started: Instant,
    output: oneshot::Sender<Result<RunOutput, RunError>>,
}

/// Forwards the registry's events about the run's tasks until the root has
/// settled, then sends the last event and the output.
async fn drive(mut driver: Driver) {
    let registry = driver.registry.clone();
    let settled = registry.wait(driver.run_id, None);
    let mut settled = std::pin::pin!(settled);
    let outcome = loop {
        tokio::select! {
            biased;
            outcome = &mut settled => break outcome,
            received = driver.registry_events.recv() => match received {
                Ok(event) => driver.forward(event),
                Err(broadcast::error::RecvError::Lagged(missed)) => driver.lagged(missed),
                Err(broadcast::error::RecvError::Closed) => {}
            },
            Some(flushed) = driver.flush_requests.recv() => {
                driver.forward_buffered();
                let _asker_gone = flushed.send(());
            }
        }
    };
    // Events the registry sent before the root settled are still buffered.
    driver.forward_buffered();
    // A run that failed or was cancelled is cancelling its sub-agents: let
    // them settle, so the report and the stream show how each one ended.
    if matches!(&outcome, Ok(done) if done.task.status != TaskStatus::Completed) {
        driver.settle_tasks().await;
        driver.forward_buffered();
    }
    let result = match outcome {
        Ok(outcome) => driver.conclude(&outcome.task),
        Err(unknown) => Err(RunError::Failed {
            failure: TaskFailure::other(unknown.to_string()),
            report: Box::new(driver.report()),
        }),
    };
    let last = match &result {
        Ok(output) => RunEvent::Done {
            answer: output.answer.clone(),
            report: Box::new(output.report.clone()),
        },
        Err(error) => RunEvent::Failed {
            message: error.to_string(),
            report: Box::new(error.report().cloned().unwrap_or_else(|| driver.report())),
        },
    };
    driver.shared.emit(last);
    let _reader_gone = driver.output.send(result);
}

/// How long a failed or cancelled run waits for its sub-agents' cancels to
/// land before it reports (a cancel lands at the task's next poll, so this
/// is only a backstop).
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Driver {
    /// Waits until every task of the run has ended, at most
    /// [`SETTLE_LIMIT`] in all.
    async fn settle_tasks(&self) {
        let waits = self
            .shared
            .task_ids()
            .into_iter()
            .map(|id| self.registry.wait(id, None));
        let _ = tokio::time::timeout(SETTLE_LIMIT, futures::future::join_all(waits)).await;
    }

    /// Forwards every event the registry has sent so far.
    fn forward_buffered(&mut self) {
        loop {
            match self.registry_events.try_recv() {
                Ok(event) => self.forward(event),
                Err(broadcast::error::TryRecvError::Lagged(missed)) => self.lagged(missed),
                Err(_) => break,
            }
        }
    }

    fn forward(&self, event: RegistryEvent) {
        let in_run = |parent: Option<TaskId>| {
            parent.is_some_and(|parent| parent == self.run_id || self.shared.has_task(parent))
        };
        let event = match event {
            RegistryEvent::Queued {
                task_id,
                agent,
                parent_id,
                ..
            } if in_run(parent_id) => {
                self.shared.add_task(task_id);
                RunEvent::TaskQueued {
                    task_id,
                    agent,
                    parent_id,
                }
            }
            RegistryEvent::Started {
                task_id,
                agent,
                parent_id,
                ..
            } if in_run(parent_id) => {
                self.shared.add_task(task_id);
                RunEvent::TaskStarted {
                    task_id,
                    agent,
                    parent_id,
                }
            }
            RegistryEvent::Finished {
                task_id,
                agent,
                parent_id,
                status,
                failure,
            } if task_id != self.run_id && self.shared.has_task(task_id) => {
                RunEvent::TaskFinished {
                    task_id,
                    agent,
                    parent_id,
                    status,
                    failure,
                }
            }
            _ => return,
        };
        self.shared.emit(event);
    }

    fn lagged(&self, missed: u64) {
        self.shared.emit(RunEvent::Error {
            task_id: None,
            agent: None,
            message: format!(
                "missed {missed} task events because the registry's event channel overflowed; the run goes on, and its report is complete"
            ),
        });
    }

    fn conclude(&self, root: &TaskSnapshot) -> Result<RunOutput, RunError> {
        let report = self.report();
        match root.status {
            TaskStatus::Completed => Ok(RunOutput {
                answer: root.output.as_deref().unwrap_or_default().to_owned(),
                report,
            }),
            TaskStatus::Failed => Err(RunError::Failed {
                failure: root
                    .failure
                    .clone()
                    .unwrap_or_else(|| TaskFailure::other("failed without a reason")),
                report: Box::new(report),
            }),
            _ => Err(RunError::Cancelled {
                report: Box::new(report),
            }),
        }
    }

    fn report(&self) -> RunReport {
        let tasks = self
            .shared
            .task_ids()
            .into_iter()
            .filter_map(|id| self.registry.get(id))
            .map(|task| TaskSummary::from(&task))
            .collect();
        RunReport {
            run_id: self.run_id,
            agent: self.agent.clone(),
            turns: self.shared.root_turns.load(Ordering::Relaxed),
            usage: *self.shared.usage.lock(),
            duration: self.started.elapsed(),
            tasks,
        }
    }
}

fn empty_report(run_id: TaskId) -> RunReport {
    RunReport {
        run_id,
        agent: Arc::from(""),
        turns: 0,
        usage: Usage::default(),
        duration: std::time::Duration::ZERO,
        tasks: Vec::new(),
    }
}
