//! The cap, the fair queue, its deadline, per-agent caps and live settings.

use std::time::Duration;

use deputy_registry::{FailureKind, SpawnError, TaskStatus};
use tokio::time::Instant;

use crate::support::{Gates, MS, bg, drain, registry, settings, settle, started_order};

#[tokio::test(start_paused = true)]
async fn runs_up_to_the_cap_then_queues() {
    let (registry, _) = registry(|s| s.max_concurrent = Some(2));
    let gates = Gates::default();
    let a = gates.spawn(&registry, bg("w", "a")).unwrap();
    let b = gates.spawn(&registry, bg("w", "b")).unwrap();
    let c = gates.spawn(&registry, bg("w", "c")).unwrap();
    assert_eq!(
        [a.status, b.status, c.status],
        [TaskStatus::Running, TaskStatus::Running, TaskStatus::Queued]
    );
    let stats = registry.stats();
    assert_eq!((stats.slots_in_use, stats.running, stats.queued), (2, 2, 1));
}

#[tokio::test(start_paused = true)]
async fn a_freed_slot_is_handed_to_the_oldest_waiter_without_polling() {
    let (registry, _) = registry(|s| {
        s.max_concurrent = Some(1);
        s.queue_poll_ms = Some(60_000);
    });
    let mut events = registry.subscribe();
    let gates = Gates::default();
    let a = gates.spawn(&registry, bg("w", "a")).unwrap();
    let b = gates.spawn(&registry, bg("w", "b")).unwrap();
    let c = gates.spawn(&registry, bg("w", "c")).unwrap();
    settle().await;
    tokio::time::sleep(Duration::from_millis(250)).await;

    let before = Instant::now();
    gates.complete(a.id);
    settle().await;
    // The hand-off happened with no time passing at all: it was pushed by
    // the release, not found by a poll (which is set to a minute here).
    assert_eq!(Instant::now(), before);
    assert_eq!(registry.get(b.id).unwrap().status, TaskStatus::Running);
    assert_eq!(registry.get(c.id).unwrap().status, TaskStatus::Queued);
    assert_eq!(
        registry.get(b.id).unwrap().queued_for,
        Duration::from_millis(250)
    );
    assert_eq!(started_order(&drain(&mut events)), [a.id, b.id]);
}

#[tokio::test(start_paused = true)]
async fn zero_queue_wait_refuses_at_once_and_leaves_nothing_behind() {
    let (registry, _) = registry(|s| {
        s.max_concurrent = Some(2);
        s.queue_wait_ms = Some(0);
    });
    let gates = Gates::default();
    gates.spawn(&registry, bg("w", "a")).unwrap();
    gates.spawn(&registry, bg("w", "b")).unwrap();
    let before = registry.stats();
    let error = gates.spawn(&registry, bg("w", "c")).unwrap_err();
    assert_eq!(error, SpawnError::AtCapacity { max_concurrent: 2 });
    assert_eq!(
        error.to_string(),
        "cannot start sub-agent: maximum concurrent sub-agents (2) reached and queue wait is disabled (queue_wait_ms = 0); stop a running task or wait for one to finish"
    );
    assert!(error.is_capacity());
    let after = registry.stats();
    assert_eq!(after.tracked, before.tracked);
    assert_eq!(after.slots_in_use, 2);
    assert_eq!(after.refused, before.refused + 1);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses() {
    let (registry, _) = registry(|s| {
        s.max_concurrent = Some(1);
        s.max_queue = Some(2);
    });
    let gates = Gates::default();
    for name in ["a", "b", "c"] {
        gates.spawn(&registry, bg("w", name)).unwrap();
    }
    let error = gates.spawn(&registry, bg("w", "d")).unwrap_err();
    assert_eq!(error, SpawnError::QueueFull { max_queue: 2 });
    assert!(error.to_string().contains("raise max_queue"));
    assert_eq!(registry.stats().queued, 2);
}

#[tokio::test(start_paused = true)]
async fn disabling_refuses_new_spawns_and_leaves_running_tasks_alone() {
    let (registry, handle) = registry(|s| s.max_concurrent = Some(1));
    let gates = Gates::default();
    let running = gates.spawn(&registry, bg("w", "a")).unwrap();
    let queued = gates.spawn(&registry, bg("w", "b")).unwrap();
    handle.publish(settings(|s| {
        s.max_concurrent = Some(1);
        s.enabled = Some(false);
    }));
    settle().await;
    let error = gates.spawn(&registry, bg("w", "c")).unwrap_err();
    assert_eq!(error, SpawnError::Disabled);
    assert!(error.to_string().contains("set enabled = true"));

    // Work already accepted carries on, queued work included.
    gates.complete(running.id);
    settle().await;
    assert_eq!(
        registry.get(running.id).unwrap().status,
        TaskStatus::Completed
    );
    assert_eq!(registry.get(queued.id).unwrap().status, TaskStatus::Running);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_past_its_deadline_fails_with_queue_timeout() {
    let (registry, _) = registry(|s| {
        s.max_concurrent = Some(1);
        s.queue_wait_ms = Some(1_000);
    });
    let gates = Gates::default();
    gates.spawn(&registry, bg("busy", "a")).unwrap();
    let waiter = gates.spawn(&registry, bg("patient", "b")).unwrap();
    tokio::time::sleep(Duration::from_millis(999)).await;
    assert_eq!(registry.get(waiter.id).unwrap().status, TaskStatus::Queued);
    tokio::time::sleep(Duration::from_millis(2)).await;

    let task = registry.get(waiter.id).unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    let failure = task.failure.clone().unwrap();
    assert_eq!(failure.kind, FailureKind::QueueTimeout);
    assert!(
        failure.message.starts_with(
            "waited 1000 ms for a slot without getting one (max_concurrent = 1, 1 running)"
        ),
        "{}",
        failure.message
    );
    assert!(task.is_finished());
    assert_eq!(task.run_time, None);
    assert_eq!(registry.stats().queued, 0);
    // Waiting too long is not the agent's fault.
    assert_eq!(registry.agent_load("patient").recent_failures, 0);
}

#[tokio::test(start_paused = true)]
async fn an_agent_cap_holds_its_waiters_back_without_blocking_other_agents() {
    let (registry, _) = registry(|s| s.max_concurrent = Some(3));
    registry.set_agent_limit("slow", Some(1));
    let gates = Gates::default();
    let slow1 = gates.spawn(&registry, bg("slow", "1")).unwrap();
    let slow2 = gates.spawn(&registry, bg("slow", "2")).unwrap();
    let fast1 = gates.spawn(&registry, bg("fast", "1")).unwrap();
    let fast2 = gates.spawn(&registry, bg("fast", "2")).unwrap();
    assert_eq!(slow1.status, TaskStatus::Running);
    assert_eq!(slow2.status, TaskStatus::Queued);
    assert_eq!(fast1.status, TaskStatus::Running);
    assert_eq!(fast2.status, TaskStatus::Running);

    // Now the global cap is full too; a fast waiter queues behind slow2 in
    // spawn order, but when a fast task frees a slot it goes to fast3, since
    // slow2 is still held back by its agent's cap.
    let fast3 = gates.spawn(&registry, bg("fast", "3")).unwrap();
    assert_eq!(fast3.status, TaskStatus::Queued);
    gates.complete(fast1.id);
    settle().await;
    assert_eq!(registry.get(fast3.id).unwrap().status, TaskStatus::Running);
    assert_eq!(registry.get(slow2.id).unwrap().status, TaskStatus::Queued);

    // Raising the agent's cap lets slow2 take the next free slot.
    registry.set_agent_limit("slow", Some(2));
    gates.complete(fast2.id);
    settle().await;
    assert_eq!(registry.get(slow2.id).unwrap().status, TaskStatus::Running);
}

#[tokio::test(start_paused = true)]
async fn agent_cap_with_zero_queue_wait_names_the_agent() {
    let (registry, _) = registry(|s| {
        s.max_concurrent = Some(5);
        s.queue_wait_ms = Some(0);
    });
    registry.set_agent_limit("slow", Some(1));
    let gates = Gates::default();
    gates.spawn(&registry, bg("slow", "1")).unwrap();
    let error = gates.spawn(&registry, bg("slow", "2")).unwrap_err();
    assert_eq!(
        error,
        SpawnError::AgentAtCapacity {
            agent: "slow".into(),
            max_concurrent: 1
        }
    );
}

#[tokio::test(start_paused = true)]
async fn raising_the_cap_admits_queued_tasks_at_once_oldest_first() {
    let (registry, handle) = registry(|s| {
        s.max_concurrent = Some(1);
        s.queue_poll_ms = Some(60_000);
    });
    let mut events = registry.subscribe();
    let gates = Gates::default();
    let ids: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .map(|name| gates.spawn(&registry, bg("w", name)).unwrap().id)
        .collect();
    settle().await;
    let before = Instant::now();
    handle.publish(settings(|s| s.max_concurrent = Some(3)));
    settle().await;
    assert_eq!(Instant::now(), before, "applied without waiting for a poll");
    let statuses: Vec<_> = ids
        .iter()
        .map(|id| registry.get(*id).unwrap().status)
        .collect();
    assert_eq!(
        statuses,
        [
            TaskStatus::Running,
            TaskStatus::Running,
            TaskStatus::Running,
            TaskStatus::Queued
        ]
    );
    assert_eq!(started_order(&drain(&mut events)), ids[..3]);
    assert_eq!(registry.settings().max_concurrent(), 3);
}

#[tokio::test(start_paused = true)]
async fn lowering_the_cap_never_stops_running_tasks() {
    let (registry, handle) = registry(|s| s.max_concurrent = Some(3));
    let gates = Gates::default();
    let running: Vec<_> = (0..3)
        .map(|n| gates.spawn(&registry, bg("w", &n.to_string())).unwrap().id)
        .collect();
    handle.publish(settings(|s| s.max_concurrent = Some(1)));
    settle().await;
    let late = gates.spawn(&registry, bg("w", "late")).unwrap();
    assert_eq!(late.status, TaskStatus::Queued);
    for id in &running {
        assert_eq!(registry.get(*id).unwrap().status, TaskStatus::Running);
    }
    // Nothing new starts until running drops below the new cap.
    gates.complete(running[0]);
    settle().await;
    assert_eq!(registry.get(late.id).unwrap().status, TaskStatus::Queued);
    gates.complete(running[1]);
    settle().await;
    assert_eq!(registry.get(late.id).unwrap().status, TaskStatus::Queued);
    gates.complete(running[2]);
    settle().await;
    assert_eq!(registry.get(late.id).unwrap().status, TaskStatus::Running);
    assert_eq!(registry.stats().slots_in_use, 1);
}

#[tokio::test(start_paused = true)]
async fn a_task_reads_queue_settings_when_it_is_spawned() {
    let (registry, handle) = registry(|s| {
        s.max_concurrent = Some(1);
        s.queue_wait_ms = Some(100);
    });
    let gates = Gates::default();
    gates.spawn(&registry, bg("w", "busy")).unwrap();
    let short = gates.spawn(&registry, bg("w", "short")).unwrap();
    handle.publish(settings(|s| {
        s.max_concurrent = Some(1);
        s.queue_wait_ms = Some(10_000);
    }));
    settle().await;
    let long = gates.spawn(&registry, bg("w", "long")).unwrap();
    tokio::time::sleep(101 * MS).await;
    assert_eq!(registry.get(short.id).unwrap().status, TaskStatus::Failed);
    assert_eq!(registry.get(long.id).unwrap().status, TaskStatus::Queued);
}
