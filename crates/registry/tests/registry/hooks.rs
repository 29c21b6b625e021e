//! Start and stop hooks: order, decisions, failures, and one Stop per Start.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deputy_registry::{
    FailureKind, HookError, HookStack, Registry, RegistryEvent, SettingsHandle, StartDecision,
    SubagentStartEvent, SubagentStartHook, SubagentStopEvent, SubagentStopHook, TaskFailure,
    TaskStatus, Usage,
};
use parking_lot::Mutex;

use crate::support::{Gates, MS, bg, drain, settings, settle};

/// What a test hook does when called.
#[derive(Clone)]
enum Behaviour {
    Allow,
    Context(&'static str),
    Deny(&'static str),
    Error,
    Panic,
    Hang,
    /// Reads the registry from inside the hook: deadlocks if a registry lock
    /// were held while hooks run.
    ReadRegistry(Arc<Mutex<Option<Registry>>>),
}

struct Recorder {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
    on_start: Behaviour,
    on_stop: Behaviour,
}

impl Recorder {
    fn new(name: &'static str, log: &Arc<Mutex<Vec<String>>>) -> Self {
        Self {
            name,
            log: log.clone(),
            on_start: Behaviour::Allow,
            on_stop: Behaviour::Allow,
        }
    }

    fn on_start(mut self, behaviour: Behaviour) -> Self {
        self.on_start = behaviour;
        self
    }

    fn on_stop(mut self, behaviour: Behaviour) -> Self {
        self.on_stop = behaviour;
        self
    }

    async fn act(&self, behaviour: &Behaviour) -> Result<Option<StartDecision>, HookError> {
        match behaviour {
            Behaviour::Allow => Ok(None),
            Behaviour::Context(text) => Ok(Some(StartDecision::AddContext((*text).to_owned()))),
            Behaviour::Deny(reason) => Ok(Some(StartDecision::Deny {
                reason: (*reason).to_owned(),
            })),
            Behaviour::Error => Err(HookError::msg("backend unreachable")),
            Behaviour::Panic => panic!("hook bug"),
            Behaviour::Hang => {
                std::future::pending::<()>().await;
                Ok(None)
            }
            Behaviour::ReadRegistry(registry) => {
                let registry = registry.lock().clone().unwrap();
                let _ = registry.stats();
                let _ = registry.list(&deputy_registry::TaskFilter::all());
                Ok(None)
            }
        }
    }
}

#[async_trait]
impl SubagentStartHook for Recorder {
    fn name(&self) -> &str {
        self.name
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(5)
    }

    async fn on_subagent_start(
        &self,
        event: &SubagentStartEvent,
    ) -> Result<StartDecision, HookError> {
        self.log
            .lock()
            .push(format!("{}:start:{}", self.name, event.task.text));
        Ok(self
            .act(&self.on_start)
            .await?
            .unwrap_or(StartDecision::Allow))
    }
}

#[async_trait]
impl SubagentStopHook for Recorder {
    fn name(&self) -> &str {
        self.name
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(5)
    }

    async fn on_subagent_stop(&self, event: &SubagentStopEvent) -> Result<(), HookError> {
        self.log.lock().push(format!(
            "{}:stop:{}:{}",
            self.name, event.task.text, event.status
        ));
        self.act(&self.on_stop).await.map(|_| ())
    }
}

fn build(hooks: HookStack, max_concurrent: i64) -> Registry {
    Registry::builder()
        .settings(SettingsHandle::new(settings(|s| {
            s.max_concurrent = Some(max_concurrent);
            s.queue_wait_ms = Some(1_000);
        })))
        .hooks(hooks)
        .event_capacity(4096)
        .build()
}

fn entries(log: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    log.lock().clone()
}

#[tokio::test(start_paused = true)]
async fn start_hooks_run_in_order_and_their_context_reaches_the_work() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let hooks = HookStack::new()
        .with_both(Arc::new(
            Recorder::new("first", &log).on_start(Behaviour::Context("budget: $3 left")),
        ))
        .with_both(Arc::new(
            Recorder::new("second", &log).on_start(Behaviour::Context("be brief")),
        ));
    let registry = build(hooks, 2);
    let task = registry
        .spawn(bg("w", "t"), |ctx| async move {
            Ok(ctx.additional_context().unwrap_or("none").to_owned())
        })
        .unwrap();
    let done = registry.wait(task.id, None).await.unwrap().task;
    assert_eq!(done.output.as_deref(), Some("budget: $3 left\n\nbe brief"));
    settle().await;
    assert_eq!(
        entries(&log),
        [
            "first:start:t",
            "second:start:t",
            "first:stop:t:completed",
            "second:stop:t:completed"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_first_deny_wins_and_the_task_still_gets_its_stop() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let hooks = HookStack::new()
        .with_both(Arc::new(Recorder::new("budget", &log).on_start(
            Behaviour::Deny("budget exhausted: $5.02 of $5.00 spent"),
        )))
        .with_both(Arc::new(Recorder::new("later", &log)));
    let registry = build(hooks, 1);
    let ran = Arc::new(Mutex::new(false));
    let flag = ran.clone();
    let task = registry
        .spawn(bg("w", "t"), move |_| async move {
            *flag.lock() = true;
            Ok(String::new())
        })
        .unwrap();
    let done = registry.wait(task.id, None).await.unwrap().task;
    assert!(!*ran.lock(), "denied work must not run");
    assert_eq!(done.status, TaskStatus::Failed);
    assert_eq!(
        done.failure,
        Some(TaskFailure::new(
            FailureKind::DeniedByHook,
            "denied by hook budget: budget exhausted: $5.02 of $5.00 spent"
        ))
    );
    settle().await;
    assert_eq!(
        entries(&log),
        [
            "budget:start:t",
            "budget:stop:t:failed",
            "later:stop:t:failed"
        ]
    );
    assert_eq!(registry.stats().slots_in_use, 0);
}

#[tokio::test(start_paused = true)]
async fn failing_hooks_are_counted_and_never_break_the_task() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let hooks = HookStack::new()
        .with_both(Arc::new(
            Recorder::new("erring", &log)
                .on_start(Behaviour::Error)
                .on_stop(Behaviour::Error),
        ))
        .with_both(Arc::new(
            Recorder::new("panicking", &log)
                .on_start(Behaviour::Panic)
                .on_stop(Behaviour::Panic),
        ))
        .with_both(Arc::new(
            Recorder::new("hanging", &log)
                .on_start(Behaviour::Hang)
                .on_stop(Behaviour::Hang),
        ))
        .with_both(Arc::new(Recorder::new("fine", &log)));
    let registry = build(hooks, 1);
    let mut events = registry.subscribe();
    let task = registry
        .spawn(bg("w", "t"), |_| async { Ok("answer".to_owned()) })
        .unwrap();
    let done = registry.wait(task.id, None).await.unwrap().task;
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(done.output.as_deref(), Some("answer"));
    // The hanging start hook held the task for its 5 s limit.
    assert_eq!(done.run_time, Some(Duration::from_secs(5)));
    tokio::time::sleep(Duration::from_secs(6)).await;

    let failures: Vec<String> = drain(&mut events)
        .into_iter()
        .filter_map(|event| match event {
            RegistryEvent::HookFailed {
                hook,
                event,
                reason,
                ..
            } => Some(format!("{hook} {} {reason}", event.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        failures,
        [
            "erring SubagentStart hook returned an error: backend unreachable",
            "panicking SubagentStart hook panicked: hook bug",
            "hanging SubagentStart hook timed out after 5000 ms",
            "erring SubagentStop hook returned an error: backend unreachable",
            "panicking SubagentStop hook panicked: hook bug",
            "hanging SubagentStop hook timed out after 5000 ms",
        ]
    );
    assert_eq!(registry.stats().hook_failures, 6);
    assert!(entries(&log).contains(&"fine:stop:t:completed".to_owned()));
}

#[tokio::test(start_paused = true)]
async fn no_registry_lock_is_held_while_hooks_run() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let slot = Arc::new(Mutex::new(None));
    let hooks = HookStack::new().with_both(Arc::new(
        Recorder::new("reader", &log)
            .on_start(Behaviour::ReadRegistry(slot.clone()))
            .on_stop(Behaviour::ReadRegistry(slot.clone())),
    ));
    let registry = build(hooks, 1);
    *slot.lock() = Some(registry.clone());
    let task = registry
        .spawn(bg("w", "t"), |_| async { Ok(String::new()) })
        .unwrap();
    let done = tokio::time::timeout(Duration::from_secs(1), registry.wait(task.id, None))
        .await
        .expect("a hook reading the registry must not deadlock")
        .unwrap();
    assert_eq!(done.task.status, TaskStatus::Completed);
}

#[tokio::test(start_paused = true)]
async fn a_slow_stop_hook_never_delays_the_next_task() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let hooks = HookStack::new().with_stop(Arc::new(
        Recorder::new("slow", &log).on_stop(Behaviour::Hang),
    ));
    let registry = build(hooks, 1);
    let gates = Gates::default();
    let first = gates.spawn(&registry, bg("w", "first")).unwrap();
    let second = gates.spawn(&registry, bg("w", "second")).unwrap();
    settle().await;
    let before = tokio::time::Instant::now();
    gates.complete(first.id);
    settle().await;
    assert_eq!(registry.get(second.id).unwrap().status, TaskStatus::Running);
    assert_eq!(tokio::time::Instant::now(), before);
}

#[tokio::test(start_paused = true)]
async fn the_stop_event_carries_status_error_usage_and_duration() {
    let seen = Arc::new(Mutex::new(Vec::<SubagentStopEvent>::new()));
    struct Keep(Arc<Mutex<Vec<SubagentStopEvent>>>);
    #[async_trait]
    impl SubagentStopHook for Keep {
        async fn on_subagent_stop(&self, event: &SubagentStopEvent) -> Result<(), HookError> {
            self.0.lock().push(event.clone());
            Ok(())
        }
    }
    let registry = build(HookStack::new().with_stop(Arc::new(Keep(seen.clone()))), 1);
    let gates = Gates::default();
    let blocker = gates.spawn(&registry, bg("w", "blocker")).unwrap();
    let task = registry
        .spawn(
            bg("w", "billed").provider("anthropic").model("claude"),
            |ctx| async move {
                ctx.record_usage(Usage {
                    input_tokens: 100,
                    output_tokens: 20,
                    cache_read_tokens: 50,
                    requests: 1,
                    ..Usage::default()
                });
                tokio::time::sleep(Duration::from_millis(30)).await;
                Err(TaskFailure::provider("overloaded"))
            },
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(15)).await;
    gates.complete(blocker.id);
    registry.wait(task.id, None).await.unwrap();
    settle().await;
    let events = seen.lock().clone();
    let event = events.iter().find(|e| e.task.id == task.id).unwrap();
    assert_eq!(event.status, TaskStatus::Failed);
    assert_eq!(event.error.as_ref().unwrap().message, "overloaded");
    assert_eq!(event.usage.input_tokens, 100);
    assert_eq!(event.usage.cache_read_tokens, 50);
    assert_eq!(event.duration, Duration::from_millis(30));
    assert_eq!(event.task.queued_for, Duration::from_millis(15));
    assert_eq!(event.task.labels.model.as_deref(), Some("claude"));
    assert_eq!(event.task.depth, 1);
    assert!(event.task.background);
}

/// Counts starts and stops per task.
#[derive(Default)]
struct Ledger {
    starts: Mutex<Vec<deputy_registry::TaskId>>,
    stops: Mutex<Vec<(deputy_registry::TaskId, TaskStatus)>>,
}

#[async_trait]
impl SubagentStartHook for Ledger {
    async fn on_subagent_start(
        &self,
        event: &SubagentStartEvent,
    ) -> Result<StartDecision, HookError> {
        self.starts.lock().push(event.task.id);
        Ok(if &*event.task.text == "deny me" {
            StartDecision::Deny {
                reason: "policy".into(),
            }
        } else {
            StartDecision::Allow
        })
    }
}

#[async_trait]
impl SubagentStopHook for Ledger {
    async fn on_subagent_stop(&self, event: &SubagentStopEvent) -> Result<(), HookError> {
        self.stops.lock().push((event.task.id, event.status));
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn exactly_one_stop_per_start_on_every_path() {
    let ledger = Arc::new(Ledger::default());
    let registry = build(HookStack::new().with_both(ledger.clone()), 8);
    let gates = Gates::default();

    let completed = registry
        .spawn(bg("w", "ok"), |_| async { Ok("ok".into()) })
        .unwrap();
    let failed = registry
        .spawn(bg("w", "fail"), |_| async {
            Err(TaskFailure::other("bad"))
        })
        .unwrap();
    let cancelled = gates.spawn(&registry, bg("w", "cancel me")).unwrap();
    let panicked = registry
        .spawn(bg("w", "panic"), |_| async {
            tokio::time::sleep(MS).await;
            panic!("boom")
        })
        .unwrap();
    let timed_out = registry
        .spawn(bg("w", "slow").time_limit(Duration::from_millis(5)), |_| {
            std::future::pending()
        })
        .unwrap();
    let denied = registry
        .spawn(bg("w", "deny me"), |_| async { Ok(String::new()) })
        .unwrap();
    let at_shutdown = gates
        .spawn(&registry, bg("w", "running at shutdown"))
        .unwrap();
    settle().await;
    registry.cancel(cancelled.id).unwrap();
    for id in [
        completed.id,
        failed.id,
        cancelled.id,
        panicked.id,
        timed_out.id,
        denied.id,
    ] {
        registry.wait(id, None).await.unwrap();
    }
    let report = registry.shutdown(Duration::from_millis(100)).await;
    assert!(!report.drained);
    assert_eq!(report.cancelled, 1);

    let starts = ledger.starts.lock().clone();
    let stops = ledger.stops.lock().clone();
    assert_eq!(starts.len(), 7);
    assert_eq!(stops.len(), 7);
    for id in &starts {
        assert_eq!(stops.iter().filter(|(stop, _)| stop == id).count(), 1);
    }
    let status_of = |id| stops.iter().find(|(stop, _)| *stop == id).unwrap().1;
    assert_eq!(status_of(completed.id), TaskStatus::Completed);
    assert_eq!(status_of(failed.id), TaskStatus::Failed);
    assert_eq!(status_of(cancelled.id), TaskStatus::Cancelled);
    assert_eq!(status_of(panicked.id), TaskStatus::Failed);
    assert_eq!(status_of(timed_out.id), TaskStatus::Failed);
    assert_eq!(status_of(denied.id), TaskStatus::Failed);
    assert_eq!(status_of(at_shutdown.id), TaskStatus::Cancelled);

    // After shutdown nothing new is accepted.
    let error = registry
        .spawn(bg("w", "late"), |_| async { Ok(String::new()) })
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "cannot start sub-agent: the registry is shutting down; start new work on a new registry (or after a restart)"
    );
}

#[tokio::test(start_paused = true)]
async fn a_task_that_never_started_gets_no_hooks() {
    let ledger = Arc::new(Ledger::default());
    let registry = build(HookStack::new().with_both(ledger.clone()), 1);
    let gates = Gates::default();
    let running = gates.spawn(&registry, bg("w", "a")).unwrap();
    let cancelled_in_queue = gates.spawn(&registry, bg("w", "b")).unwrap();
    let timed_out_in_queue = gates.spawn(&registry, bg("w", "c")).unwrap();
    settle().await;
    registry.cancel(cancelled_in_queue.id).unwrap();
    tokio::time::sleep(Duration::from_millis(1_001)).await;
    assert_eq!(
        registry.get(timed_out_in_queue.id).unwrap().status,
        TaskStatus::Failed
    );
    gates.complete(running.id);
    registry.wait(running.id, None).await.unwrap();
    settle().await;
    assert_eq!(*ledger.starts.lock(), [running.id]);
    assert_eq!(ledger.stops.lock().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_cancel_during_the_start_hooks_ends_the_task_at_once() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let hooks = HookStack::new().with_both(Arc::new(
        Recorder::new("slow", &log).on_start(Behaviour::Hang),
    ));
    let registry = build(hooks, 1);
    let task = registry
        .spawn(bg("w", "t"), |_| async { Ok(String::new()) })
        .unwrap();
    settle().await;
    let before = tokio::time::Instant::now();
    registry.cancel(task.id).unwrap();
    let done = registry.wait(task.id, None).await.unwrap().task;
    assert_eq!(done.status, TaskStatus::Cancelled);
    assert_eq!(
        tokio::time::Instant::now(),
        before,
        "not held for the hook's 5 s"
    );
    settle().await;
    assert_eq!(entries(&log), ["slow:start:t", "slow:stop:t:cancelled"]);
    assert_eq!(registry.stats().slots_in_use, 0);
}
