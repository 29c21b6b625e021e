//! Transitions, failures, panics, time limits, cancels and their cascade.

use std::time::Duration;

use deputy_registry::{
    CancelOutcome, FailureKind, RegistryEvent, SpawnError, TaskFailure, TaskFilter, TaskId,
    TaskSpec, TaskStatus, UnknownTask, Usage,
};

use crate::support::{Gates, MS, bg, drain, registry, settle};

#[tokio::test(start_paused = true)]
async fn a_completed_task_keeps_its_answer_usage_and_times() {
    let (registry, _) = registry(|_| {});
    let spawned = registry
        .spawn(
            bg("w", "count").provider("scripted").model("demo"),
            |ctx| async move {
                tokio::time::sleep(Duration::from_millis(40)).await;
                ctx.record_usage(Usage {
                    input_tokens: 10,
                    output_tokens: 4,
                    requests: 1,
                    ..Usage::default()
                });
                ctx.record_usage(Usage {
                    input_tokens: 5,
                    requests: 1,
                    ..Usage::default()
                });
                Ok("42".to_owned())
            },
        )
        .unwrap();
    let outcome = registry.wait(spawned.id, None).await.unwrap();
    let task = outcome.task;
    assert_eq!(task.status, TaskStatus::Completed);
    assert_eq!(task.output.as_deref(), Some("42"));
    assert_eq!(task.usage.input_tokens, 15);
    assert_eq!(task.usage.requests, 2);
    assert_eq!(task.run_time, Some(Duration::from_millis(40)));
    assert_eq!(task.labels.provider.as_deref(), Some("scripted"));
    assert_eq!(task.depth, 1);
    assert!(task.ended_at.unwrap() >= task.started_at.unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_failed_task_carries_its_kind_and_message() {
    let (registry, _) = registry(|_| {});
    let spawned = registry
        .spawn(bg("w", "x"), |_| async {
            Err(TaskFailure::provider("429 rate limited by upstream"))
        })
        .unwrap();
    let task = registry.wait(spawned.id, None).await.unwrap().task;
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(
        task.failure,
        Some(TaskFailure::new(
            FailureKind::Provider,
            "429 rate limited by upstream"
        ))
    );
    assert_eq!(registry.agent_load("w").recent_failures, 1);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_task_fails_as_panicked_and_frees_its_slot() {
    let (registry, _) = registry(|s| s.max_concurrent = Some(1));
    let gates = Gates::default();
    let boom = registry
        .spawn(bg("w", "boom"), |_| async {
            tokio::time::sleep(MS).await;
            panic!("index out of bounds");
        })
        .unwrap();
    let next = gates.spawn(&registry, bg("w", "next")).unwrap();
    assert_eq!(next.status, TaskStatus::Queued);
    let task = registry.wait(boom.id, None).await.unwrap().task;
    assert_eq!(task.status, TaskStatus::Failed);
    let failure = task.failure.unwrap();
    assert_eq!(failure.kind, FailureKind::Panicked);
    assert_eq!(failure.message, "the task panicked: index out of bounds");
    settle().await;
    assert_eq!(registry.get(next.id).unwrap().status, TaskStatus::Running);

    // A panic while building the future counts the same.
    let early = registry
        .spawn(
            bg("w", "early"),
            |_| -> std::future::Ready<Result<String, TaskFailure>> { panic!("no future for you") },
        )
        .unwrap();
    gates.complete(next.id);
    let task = registry.wait(early.id, None).await.unwrap().task;
    assert_eq!(task.failure.unwrap().kind, FailureKind::Panicked);
    assert_eq!(registry.stats().slots_in_use, 0);
}

#[tokio::test(start_paused = true)]
async fn a_task_past_its_time_limit_fails_with_timeout_and_frees_its_slot() {
    let (registry, _) = registry(|s| s.max_concurrent = Some(1));
    let slow = registry
        .spawn(
            bg("w", "slow").time_limit(Duration::from_secs(2)),
            |_| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(String::new())
            },
        )
        .unwrap();
    let task = registry.wait(slow.id, None).await.unwrap().task;
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(
        task.failure,
        Some(TaskFailure::new(
            FailureKind::Timeout,
            "ran past its time limit of 2 s"
        ))
    );
    assert_eq!(task.run_time, Some(Duration::from_secs(2)));
    assert_eq!(registry.stats().slots_in_use, 0);
}

#[tokio::test(start_paused = true)]
async fn cancel_tells_the_truth() {
    let (registry, _) = registry(|s| s.max_concurrent = Some(1));
    let gates = Gates::default();
    let running = gates.spawn(&registry, bg("w", "a")).unwrap();
    let queued = gates.spawn(&registry, bg("w", "b")).unwrap();
    settle().await;

    assert_eq!(
        registry.cancel(queued.id),
        Ok(CancelOutcome::Cancelled {
            was: TaskStatus::Queued
        })
    );
    assert_eq!(
        registry.cancel(running.id),
        Ok(CancelOutcome::Cancelled {
            was: TaskStatus::Running
        })
    );
    // Marked at once; settled (slot freed) at the work's next await point.
    assert_eq!(
        registry.get(running.id).unwrap().status,
        TaskStatus::Cancelled
    );
    assert_eq!(
        registry.cancel(running.id),
        Ok(CancelOutcome::AlreadyFinished {
            status: TaskStatus::Cancelled
        })
    );
    settle().await;
    assert_eq!(registry.stats().slots_in_use, 0);
    assert_eq!(registry.stats().queued, 0);

    let done = registry
        .spawn(bg("w", "c"), |_| async { Ok("fine".to_owned()) })
        .unwrap();
    registry.wait(done.id, None).await.unwrap();
    assert_eq!(
        registry.cancel(done.id),
        Ok(CancelOutcome::AlreadyFinished {
            status: TaskStatus::Completed
        })
    );
    let stranger = TaskId::new_random();
    assert_eq!(registry.cancel(stranger), Err(UnknownTask(stranger)));
}

#[tokio::test(start_paused = true)]
async fn a_completion_racing_a_cancel_never_overwrites_it() {
    let (registry, _) = registry(|_| {});
    let gates = Gates::default();
    let task = gates.spawn(&registry, bg("w", "a")).unwrap();
    settle().await;
    // The work's answer is ready and the cancel lands in the same instant.
    gates.complete(task.id);
    registry.cancel(task.id).unwrap();
    let task = registry.wait(task.id, None).await.unwrap().task;
    assert_eq!(task.status, TaskStatus::Cancelled);
    assert_eq!(task.output, None);
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_task_cancels_its_descendants() {
    let (registry, _) = registry(|s| s.max_concurrent = Some(2));
    let gates = Gates::default();
    let (child_tx, child_rx) = tokio::sync::oneshot::channel();
    let parent = {
        let gates = gates.clone();
        registry
            .spawn(bg("lead", "parent"), move |ctx| async move {
                let child = gates
                    .spawn(ctx.registry(), bg("w", "child").parent(ctx.id()))
                    .unwrap();
                let grandchild = gates
                    .spawn(ctx.registry(), bg("w", "grandchild").parent(child.id))
                    .unwrap();
                child_tx.send((child, grandchild)).unwrap();
                std::future::pending::<()>().await;
                Ok(String::new())
            })
            .unwrap()
    };
    let (child, grandchild) = child_rx.await.unwrap();
    assert_eq!(child.status, TaskStatus::Running);
    assert_eq!(grandchild.status, TaskStatus::Queued);

    registry.cancel(parent.id).unwrap();
    settle().await;
    for id in [parent.id, child.id, grandchild.id] {
        let task = registry.get(id).unwrap();
        assert_eq!(task.status, TaskStatus::Cancelled, "{:?}", task.task);
        assert!(task.is_finished());
    }
    let stats = registry.stats();
    assert_eq!((stats.slots_in_use, stats.running, stats.queued), (0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn spawning_under_a_bad_parent_is_refused() {
    let (registry, _) = registry(|_| {});
    let stranger = TaskId::new_random();
    let error = registry
        .spawn(bg("w", "x").parent(stranger), |_| async {
            Ok(String::new())
        })
        .unwrap_err();
    assert_eq!(error, SpawnError::UnknownParent(stranger));

    let done = registry
        .spawn(bg("w", "x"), |_| async { Ok(String::new()) })
        .unwrap();
    registry.wait(done.id, None).await.unwrap();
    let error = registry
        .spawn(bg("w", "y").parent(done.id), |_| async {
            Ok(String::new())
        })
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "cannot start sub-agent: parent task {} is completed, not running; only a running task can start sub-agents",
            done.id
        )
    );

    let error = registry
        .spawn(TaskSpec::new(" ", "x"), |_| async { Ok(String::new()) })
        .unwrap_err();
    assert!(error.to_string().contains("agent name is empty"));
    assert_eq!(registry.stats().tracked, 1);
}

#[tokio::test(start_paused = true)]
async fn a_wait_that_times_out_returns_the_current_status_and_consumes_nothing() {
    let (registry, _) = registry(|_| {});
    let gates = Gates::default();
    let task = gates.spawn(&registry, bg("w", "a")).unwrap();
    let outcome = registry
        .wait(task.id, Some(Duration::from_millis(500)))
        .await
        .unwrap();
    assert_eq!(outcome.task.status, TaskStatus::Running);
    assert!(!outcome.newly_delivered);
    assert!(!outcome.task.delivered);

    gates.complete(task.id);
    settle().await;
    let delivered = registry.take_finished(None);
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].id, task.id);
    assert!(registry.take_finished(None).is_empty());
}

#[tokio::test(start_paused = true)]
async fn events_follow_each_task_through_its_life_in_order() {
    let (registry, _) = registry(|s| s.max_concurrent = Some(1));
    let mut events = registry.subscribe();
    let gates = Gates::default();
    let a = gates.spawn(&registry, bg("w", "a")).unwrap();
    let b = gates.spawn(&registry, bg("w", "b")).unwrap();
    gates.complete(a.id);
    settle().await;
    gates.open(b.id, Err(TaskFailure::other("nope")));
    settle().await;
    let kinds: Vec<(TaskId, &str)> = drain(&mut events)
        .iter()
        .filter_map(|event| {
            let kind = match event {
                RegistryEvent::Queued { .. } => "queued",
                RegistryEvent::Started { .. } => "started",
                RegistryEvent::Finished { .. } => "finished",
                _ => return None,
            };
            Some((event.task_id()?, kind))
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (a.id, "started"),
            (b.id, "queued"),
            (a.id, "finished"),
            (b.id, "started"),
            (b.id, "finished"),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn list_filters_by_status_parent_and_agent_in_spawn_order() {
    let (registry, _) = registry(|s| s.max_concurrent = Some(1));
    let gates = Gates::default();
    let root = registry
        .spawn_root(TaskSpec::new("lead", "run"), |_| std::future::pending())
        .unwrap();
    let a = gates
        .spawn(&registry, bg("x", "a").parent(root.id))
        .unwrap();
    let b = gates
        .spawn(&registry, bg("y", "b").parent(root.id))
        .unwrap();
    let c = gates.spawn(&registry, bg("x", "c")).unwrap();
    let ids = |filter: TaskFilter| -> Vec<TaskId> {
        registry.list(&filter).iter().map(|t| t.id).collect()
    };
    assert_eq!(ids(TaskFilter::all()), [root.id, a.id, b.id, c.id]);
    assert_eq!(ids(TaskFilter::all().parent(root.id)), [a.id, b.id]);
    assert_eq!(
        ids(TaskFilter::all().status(TaskStatus::Queued)),
        [b.id, c.id]
    );
    assert_eq!(ids(TaskFilter::all().agent("x")), [a.id, c.id]);
    assert_eq!(
        ids(TaskFilter::all().agent("x").status(TaskStatus::Running)),
        [a.id]
    );
    // The root run holds no slot.
    assert_eq!(registry.stats().slots_in_use, 1);
    assert_eq!(registry.get(root.id).unwrap().depth, 0);
    assert_eq!(registry.get(a.id).unwrap().depth, 1);
}

#[test]
fn a_task_dropped_unpolled_with_its_runtime_still_settles() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (registry, running, queued) = runtime.block_on(async {
        let (registry, _) = registry(|s| s.max_concurrent = Some(1));
        let running = registry
            .spawn(bg("w", "a"), |_| async { Ok(String::new()) })
            .unwrap();
        let queued = registry
            .spawn(bg("w", "b"), |_| async { Ok(String::new()) })
            .unwrap();
        (registry, running, queued)
    });
    // Neither task's future was ever polled; the runtime drops them.
    drop(runtime);
    let stats = registry.stats();
    assert_eq!((stats.slots_in_use, stats.running, stats.queued), (0, 0, 0));
    assert_eq!(
        registry.get(running.id).unwrap().status,
        TaskStatus::Cancelled
    );
    assert_eq!(
        registry.get(queued.id).unwrap().status,
        TaskStatus::Cancelled
    );
}

#[tokio::test(start_paused = true)]
async fn a_wait_whose_time_runs_out_as_the_task_ends_still_delivers_it() {
    for offset_ms in [0_u64, 1] {
        let (registry, _) = registry(|_| {});
        let task = registry
            .spawn(bg("w", "a"), |_| async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok("x".into())
            })
            .unwrap();
        let outcome = registry
            .wait(task.id, Some(Duration::from_millis(100 - offset_ms)))
            .await
            .unwrap();
        // Whatever it returns, a finished result it returns is delivered.
        assert_eq!(outcome.task.status.is_terminal(), outcome.newly_delivered);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let later = registry.take_finished(None).len() + usize::from(outcome.newly_delivered);
        assert_eq!(later, 1);
    }
}
