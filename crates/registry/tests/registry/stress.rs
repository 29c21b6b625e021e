//! A seeded random workload that checks the registry's invariants: the cap
//! at every admission, no leaked slot, one end state per task, one Stop per
//! Start, FIFO among equally eligible waiters.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deputy_registry::{
    HookError, HookStack, Registry, RegistryEvent, SettingsHandle, StartDecision,
    SubagentStartEvent, SubagentStartHook, SubagentStopEvent, SubagentStopHook, TaskFailure,
    TaskId, TaskStatus,
};
use parking_lot::Mutex;
use tokio::sync::broadcast::error::TryRecvError;

use crate::support::{Gates, bg, settings, settle};

#[derive(Default)]
struct StartStop {
    starts: Mutex<HashMap<TaskId, usize>>,
    stops: Mutex<HashMap<TaskId, usize>>,
}

#[async_trait]
impl SubagentStartHook for StartStop {
    async fn on_subagent_start(
        &self,
        event: &SubagentStartEvent,
    ) -> Result<StartDecision, HookError> {
        *self.starts.lock().entry(event.task.id).or_default() += 1;
        Ok(StartDecision::Allow)
    }
}

#[async_trait]
impl SubagentStopHook for StartStop {
    async fn on_subagent_stop(&self, event: &SubagentStopEvent) -> Result<(), HookError> {
        *self.stops.lock().entry(event.task.id).or_default() += 1;
        Ok(())
    }
}

const AGENTS: [&str; 4] = ["a", "b", "c", "capped"];
const CAPPED_LIMIT: usize = 2;

#[tokio::test(start_paused = true)]
async fn random_workloads_keep_every_invariant() {
    for seed in [1_u64, 2, 3, 4, 5] {
        run(seed, 3_000).await;
    }
}

async fn run(seed: u64, operations: usize) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let ledger = Arc::new(StartStop::default());
    let handle = SettingsHandle::new(settings(|s| {
        s.max_concurrent = Some(4);
        s.queue_wait_ms = Some(300);
        s.max_queue = Some(100_000);
        s.max_finished = Some(1_000_000);
    }));
    let registry = Registry::builder()
        .settings(handle.clone())
        .hooks(HookStack::new().with_both(ledger.clone()))
        .event_capacity(1 << 20)
        .build();
    registry.set_agent_limit("capped", Some(CAPPED_LIMIT));
    let mut events = registry.subscribe();
    let gates = Gates::default();
    let mut spawned: Vec<(TaskId, &str)> = Vec::new();
    let mut gated: Vec<TaskId> = Vec::new();

    for _ in 0..operations {
        match rng.u8(..100) {
            0..=54 => {
                let agent = AGENTS[rng.usize(..AGENTS.len())];
                let spec = bg(agent, "stress");
                let result = match rng.u8(..6) {
                    0 => gates.spawn(&registry, spec).inspect(|s| gated.push(s.id)),
                    1 => {
                        let after = Duration::from_millis(rng.u64(1..40));
                        registry.spawn(spec, move |_| async move {
                            tokio::time::sleep(after).await;
                            Err(TaskFailure::provider("upstream 500"))
                        })
                    }
                    2 => {
                        let after = Duration::from_millis(rng.u64(1..40));
                        registry.spawn(spec, move |_| async move {
                            tokio::time::sleep(after).await;
                            panic!("stress panic")
                        })
                    }
                    3 => registry.spawn(
                        spec.time_limit(Duration::from_millis(rng.u64(5..60))),
                        |_| std::future::pending(),
                    ),
                    _ => {
                        let after = Duration::from_millis(rng.u64(1..80));
                        registry.spawn(spec, move |_| async move {
                            tokio::time::sleep(after).await;
                            Ok("ok".into())
                        })
                    }
                };
                let spawned_task = result.expect("no refusals with this queue size");
                spawned.push((spawned_task.id, agent));
            }
            55..=64 => {
                if !spawned.is_empty() {
                    let (id, _) = spawned[rng.usize(..spawned.len())];
                    registry.cancel(id).unwrap();
                }
            }
            65..=72 => {
                if !gated.is_empty() {
                    let id = gated.swap_remove(rng.usize(..gated.len()));
                    gates.complete(id);
                }
            }
            73..=78 => {
                let cap = rng.i64(1..9);
                handle.publish(settings(|s| {
                    s.max_concurrent = Some(cap);
                    s.queue_wait_ms = Some(300);
                    s.max_queue = Some(100_000);
                    s.max_finished = Some(1_000_000);
                }));
            }
            _ => tokio::time::sleep(Duration::from_millis(rng.u64(0..25))).await,
        }
    }

    // Let everything settle: open every gate, wait out every deadline.
    for id in gated.drain(..) {
        gates.complete(id);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    settle().await;

    // No leaked slot and nothing left behind.
    let stats = registry.stats();
    assert_eq!(
        (stats.slots_in_use, stats.running, stats.queued),
        (0, 0, 0),
        "seed {seed}: {stats:?}"
    );

    let mut log = Vec::new();
    loop {
        match events.try_recv() {
            Ok(event) => log.push(event),
            Err(TryRecvError::Empty) => break,
            Err(error) => panic!("seed {seed}: event stream broke: {error}"),
        }
    }

    // The cap held at every admission on an own slot.
    for event in &log {
        if let RegistryEvent::Started {
            running,
            max_concurrent,
            borrowed: false,
            ..
        } = event
        {
            assert!(running <= max_concurrent, "seed {seed}: {event:?}");
        }
    }

    // Exactly one end state per task, matching what the registry reports.
    let mut finished: HashMap<TaskId, Vec<TaskStatus>> = HashMap::new();
    for event in &log {
        if let RegistryEvent::Finished {
            task_id, status, ..
        } = event
        {
            finished.entry(*task_id).or_default().push(*status);
        }
    }
    for (id, _) in &spawned {
        let ends = finished.get(id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(ends.len(), 1, "seed {seed}: task {id} ended {ends:?}");
        let snapshot = registry.get(*id).unwrap();
        assert_eq!(snapshot.status, ends[0], "seed {seed}");
        assert!(snapshot.status.is_terminal() && snapshot.is_finished());
    }

    // One Stop per Start, and Starts only for tasks that ran.
    let starts = ledger.starts.lock().clone();
    let stops = ledger.stops.lock().clone();
    assert_eq!(starts.len(), stops.len(), "seed {seed}");
    for (id, count) in &starts {
        assert_eq!(*count, 1, "seed {seed}");
        assert_eq!(
            stops.get(id),
            Some(&1),
            "seed {seed}: {id} has no single stop"
        );
    }
    let n_started = log
        .iter()
        .filter(|e| matches!(e, RegistryEvent::Started { .. }))
        .count();
    assert!(starts.len() <= n_started);

    // FIFO among equally eligible waiters: uncapped agents' queued tasks
    // start in spawn order, and so do the capped agent's among themselves.
    let spawn_index: HashMap<TaskId, usize> = spawned
        .iter()
        .enumerate()
        .map(|(index, (id, _))| (*id, index))
        .collect();
    let agent_of: HashMap<TaskId, &str> = spawned.iter().copied().collect();
    let mut last_uncapped = None;
    let mut last_capped = None;
    for event in &log {
        if let RegistryEvent::Started {
            task_id,
            queued_for,
            ..
        } = event
        {
            if queued_for.is_zero() {
                continue;
            }
            let index = spawn_index[task_id];
            let last = if agent_of[task_id] == "capped" {
                &mut last_capped
            } else {
                &mut last_uncapped
            };
            if let Some(previous) = *last {
                assert!(index > previous, "seed {seed}: FIFO broken at {task_id}");
            }
            *last = Some(index);
        }
    }

    // The mix really exercised every path.
    let count = |status| {
        spawned
            .iter()
            .filter(|(id, _)| registry.get(*id).unwrap().status == status)
            .count()
    };
    assert!(count(TaskStatus::Completed) > 0, "seed {seed}");
    assert!(count(TaskStatus::Cancelled) > 0, "seed {seed}");
    let kinds: Vec<_> = spawned
        .iter()
        .filter_map(|(id, _)| registry.get(*id).unwrap().failure.map(|f| f.kind))
        .collect();
    for kind in [
        deputy_registry::FailureKind::Provider,
        deputy_registry::FailureKind::Panicked,
        deputy_registry::FailureKind::Timeout,
        deputy_registry::FailureKind::QueueTimeout,
    ] {
        assert!(
            kinds.contains(&kind),
            "seed {seed}: no {kind} failure happened"
        );
    }
}
