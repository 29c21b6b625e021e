//! Foreground children borrow their parent's slot, so nesting never
//! deadlocks the cap.

use std::time::Duration;

use deputy_registry::{Registry, TaskContext, TaskFailure, TaskSpec, TaskStatus};

use crate::support::{bg, registry, settle};

async fn run_foreground_child(
    ctx: &TaskContext,
    text: &str,
    work: Duration,
) -> Result<String, TaskFailure> {
    let registry: &Registry = ctx.registry();
    let child = registry
        .spawn(
            TaskSpec::new("helper", text).parent(ctx.id()),
            move |child| async move {
                tokio::time::sleep(work).await;
                Ok(format!("{} done at depth {}", child.task(), child.depth()))
            },
        )
        .map_err(|e| TaskFailure::other(e.to_string()))?;
    let outcome = registry
        .wait(child.id, None)
        .await
        .map_err(|e| TaskFailure::other(e.to_string()))?;
    outcome
        .task
        .output
        .map(|text| text.to_string())
        .ok_or_else(|| TaskFailure::other("child failed"))
}

#[tokio::test(start_paused = true)]
async fn with_cap_one_a_task_awaiting_a_foreground_child_completes() {
    let (registry, _) = registry(|s| {
        s.max_concurrent = Some(1);
        s.queue_wait_ms = Some(1_000);
    });
    let parent = registry
        .spawn(bg("lead", "parent"), |ctx| async move {
            let stats_during = ctx.registry().stats();
            let answer = run_foreground_child(&ctx, "child", Duration::from_millis(10)).await?;
            Ok(format!(
                "{answer}; slots before child: {}",
                stats_during.slots_in_use
            ))
        })
        .unwrap();
    let task = registry.wait(parent.id, None).await.unwrap().task;
    assert_eq!(task.status, TaskStatus::Completed, "{:?}", task.failure);
    assert_eq!(
        task.output.as_deref(),
        Some("child done at depth 2; slots before child: 1")
    );
    assert_eq!(registry.stats().slots_in_use, 0);
}

#[tokio::test(start_paused = true)]
async fn the_lent_slot_is_counted_once() {
    let (registry, _) = registry(|s| s.max_concurrent = Some(1));
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    let parent = registry
        .spawn(bg("lead", "parent"), |ctx| async move {
            let registry = ctx.registry().clone();
            let child = registry
                .spawn(
                    TaskSpec::new("helper", "child").parent(ctx.id()),
                    |child| async move {
                        let stats = child.registry().stats();
                        seen_tx.send(stats).unwrap();
                        Ok(String::new())
                    },
                )
                .unwrap();
            assert_eq!(child.status, TaskStatus::Running);
            registry.wait(child.id, None).await.unwrap();
            Ok(String::new())
        })
        .unwrap();
    let stats = seen_rx.await.unwrap();
    assert_eq!((stats.slots_in_use, stats.running), (1, 2));
    registry.wait(parent.id, None).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn parallel_foreground_children_share_the_lent_slot_in_turn() {
    let (registry, _) = registry(|s| {
        s.max_concurrent = Some(1);
        s.queue_wait_ms = Some(60_000);
    });
    let parent = registry
        .spawn(bg("lead", "parent"), |ctx| async move {
            let (a, b) = tokio::join!(
                run_foreground_child(&ctx, "a", Duration::from_millis(100)),
                run_foreground_child(&ctx, "b", Duration::from_millis(100)),
            );
            Ok(format!("{} | {}", a?, b?))
        })
        .unwrap();
    let started = tokio::time::Instant::now();
    let task = registry.wait(parent.id, None).await.unwrap().task;
    assert_eq!(task.status, TaskStatus::Completed, "{:?}", task.failure);
    assert_eq!(
        task.output.as_deref(),
        Some("a done at depth 2 | b done at depth 2")
    );
    // One slot, so the children ran one after the other.
    assert_eq!(started.elapsed(), Duration::from_millis(200));
    assert_eq!(registry.stats().slots_in_use, 0);
}

#[tokio::test(start_paused = true)]
async fn cancelling_the_parent_frees_the_lent_slot() {
    let (registry, _) = registry(|s| s.max_concurrent = Some(1));
    let parent = registry
        .spawn(bg("lead", "parent"), |ctx| async move {
            run_foreground_child(&ctx, "forever", Duration::from_secs(3_600)).await
        })
        .unwrap();
    settle().await;
    assert_eq!(registry.stats().running, 2);
    registry.cancel(parent.id).unwrap();
    settle().await;
    let stats = registry.stats();
    assert_eq!((stats.slots_in_use, stats.running), (0, 0));
    let after = registry
        .spawn(bg("w", "after"), |_| async { Ok("ok".to_owned()) })
        .unwrap();
    assert_eq!(after.status, TaskStatus::Running);
}

#[tokio::test(start_paused = true)]
async fn a_background_child_does_not_borrow() {
    let (registry, _) = registry(|s| s.max_concurrent = Some(1));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let _parent = registry
        .spawn(bg("lead", "parent"), |ctx| async move {
            let child = ctx
                .registry()
                .spawn(bg("helper", "bg child").parent(ctx.id()), |_| async {
                    Ok(String::new())
                })
                .unwrap();
            tx.send(child.status).unwrap();
            std::future::pending::<()>().await;
            Ok(String::new())
        })
        .unwrap();
    assert_eq!(rx.await.unwrap(), TaskStatus::Queued);
}

#[tokio::test(start_paused = true)]
async fn a_parent_that_completes_while_its_child_runs_passes_the_slot_on() {
    // The parent returns without awaiting its foreground child: the lent
    // slot becomes the child's, and is freed exactly once when it ends.
    let (registry, _) = registry(|s| s.max_concurrent = Some(1));
    let (child_tx, child_rx) = tokio::sync::oneshot::channel();
    let parent = registry
        .spawn(bg("lead", "parent"), |ctx| async move {
            let child = ctx
                .registry()
                .spawn(
                    TaskSpec::new("helper", "child").parent(ctx.id()),
                    |_| async {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok("child".to_owned())
                    },
                )
                .unwrap();
            child_tx.send(child).unwrap();
            Ok(String::new())
        })
        .unwrap();
    let child = child_rx.await.unwrap();
    assert_eq!(child.status, TaskStatus::Running);
    let parent_task = registry.wait(parent.id, None).await.unwrap().task;
    assert_eq!(parent_task.status, TaskStatus::Completed);
    assert_eq!(registry.get(child.id).unwrap().status, TaskStatus::Running);
    let stats = registry.stats();
    assert_eq!((stats.slots_in_use, stats.running), (1, 1));
    let queued = registry
        .spawn(bg("w", "next"), |_| async { Ok(String::new()) })
        .unwrap();
    assert_eq!(queued.status, TaskStatus::Queued);
    let child_task = registry.wait(child.id, None).await.unwrap().task;
    assert_eq!(child_task.status, TaskStatus::Completed);
    registry.wait(queued.id, None).await.unwrap();
    assert_eq!(registry.stats().slots_in_use, 0);
}

#[tokio::test(start_paused = true)]
async fn a_parent_that_fails_stops_its_descendants() {
    let (registry, _) = registry(|s| s.max_concurrent = Some(2));
    let (child_tx, child_rx) = tokio::sync::oneshot::channel();
    let parent = registry
        .spawn(
            bg("lead", "parent").time_limit(Duration::from_millis(10)),
            |ctx| async move {
                let background = ctx
                    .registry()
                    .spawn(bg("helper", "bg").parent(ctx.id()), |_| {
                        std::future::pending()
                    })
                    .unwrap();
                child_tx.send(background.id).unwrap();
                std::future::pending::<()>().await;
                Ok(String::new())
            },
        )
        .unwrap();
    let child = child_rx.await.unwrap();
    let parent_task = registry.wait(parent.id, None).await.unwrap().task;
    assert_eq!(parent_task.status, TaskStatus::Failed);
    settle().await;
    assert_eq!(registry.get(child).unwrap().status, TaskStatus::Cancelled);
    assert_eq!(registry.stats().slots_in_use, 0);
}

#[tokio::test(start_paused = true)]
async fn with_no_queue_wait_a_second_foreground_child_is_told_why() {
    let (registry, _) = registry(|s| {
        s.max_concurrent = Some(1);
        s.queue_wait_ms = Some(0);
    });
    let parent = registry
        .spawn(bg("lead", "parent"), |ctx| async move {
            let registry = ctx.registry();
            let first = registry
                .spawn(TaskSpec::new("helper", "a").parent(ctx.id()), |_| {
                    std::future::pending()
                })
                .unwrap();
            let second = registry
                .spawn(TaskSpec::new("helper", "b").parent(ctx.id()), |_| async {
                    Ok(String::new())
                })
                .unwrap_err();
            registry.cancel(first.id).unwrap();
            Ok(second.to_string())
        })
        .unwrap();
    let message = registry
        .wait(parent.id, None)
        .await
        .unwrap()
        .task
        .output
        .unwrap();
    assert!(
        message.contains("has lent its slot to another foreground sub-agent"),
        "{message}"
    );
    assert!(message.contains("await that sub-agent first"), "{message}");
}
