//! Every finished result reaches its parent exactly once.

use std::collections::HashMap;
use std::time::Duration;

use deputy_registry::{TaskId, TaskStatus};

use crate::support::{Gates, bg, idle_root, registry, settle};

#[tokio::test(start_paused = true)]
async fn take_finished_hands_each_result_over_once_oldest_first() {
    let (registry, _) = registry(|_| {});
    let gates = Gates::default();
    let root = idle_root(&registry);
    let a = gates.spawn(&registry, bg("w", "a").parent(root)).unwrap();
    let b = gates.spawn(&registry, bg("w", "b").parent(root)).unwrap();
    let other = gates.spawn(&registry, bg("w", "not a child")).unwrap();
    assert!(registry.take_finished(Some(root)).is_empty());

    gates.complete(b.id);
    gates.complete(other.id);
    settle().await;
    gates.complete(a.id);
    settle().await;
    let taken: Vec<TaskId> = registry
        .take_finished(Some(root))
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(taken, [b.id, a.id]);
    assert!(registry.take_finished(Some(root)).is_empty());
    assert!(registry.get(a.id).unwrap().delivered);
    // Reading a delivered result again is allowed; it is just not new.
    let again = registry.wait(a.id, None).await.unwrap();
    assert!(!again.newly_delivered);
    assert_eq!(
        again.task.output.as_deref(),
        Some(&*format!("done {}", a.id.short()))
    );
}

#[tokio::test(start_paused = true)]
async fn a_result_read_by_a_wait_is_never_taken_again() {
    let (registry, _) = registry(|_| {});
    let gates = Gates::default();
    let root = idle_root(&registry);
    let a = gates.spawn(&registry, bg("w", "a").parent(root)).unwrap();
    gates.complete(a.id);
    let waited = registry.wait(a.id, None).await.unwrap();
    assert!(waited.newly_delivered);
    assert_eq!(waited.task.status, TaskStatus::Completed);
    assert!(registry.take_finished(Some(root)).is_empty());
}

#[tokio::test(start_paused = true)]
async fn exactly_once_under_random_interleavings() {
    for seed in 0..20_u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let (registry, _) = registry(|s| {
            s.max_concurrent = Some(4);
            s.max_queue = Some(1_000);
        });
        let root = idle_root(&registry);
        let n_tasks = 60;
        let mut ids = Vec::new();
        for n in 0..n_tasks {
            let work = Duration::from_millis(rng.u64(1..50));
            let fails = rng.u8(..10) == 0;
            let spawned = registry
                .spawn(bg("w", &n.to_string()).parent(root), move |_| async move {
                    tokio::time::sleep(work).await;
                    if fails {
                        Err(deputy_registry::TaskFailure::other("flaky"))
                    } else {
                        Ok("ok".into())
                    }
                })
                .unwrap();
            ids.push(spawned.id);
        }
        let mut deliveries: HashMap<TaskId, usize> = HashMap::new();
        let mut steps = 0;
        while deliveries.len() < n_tasks && steps < 10_000 {
            steps += 1;
            match rng.u8(..3) {
                0 => {
                    for task in registry.take_finished(Some(root)) {
                        *deliveries.entry(task.id).or_default() += 1;
                    }
                }
                1 => {
                    let id = ids[rng.usize(..ids.len())];
                    let timeout = Duration::from_millis(rng.u64(0..20));
                    let outcome = registry.wait(id, Some(timeout)).await.unwrap();
                    if outcome.newly_delivered {
                        assert!(outcome.task.status.is_terminal());
                        *deliveries.entry(id).or_default() += 1;
                    }
                }
                _ => tokio::time::sleep(Duration::from_millis(rng.u64(1..10))).await,
            }
        }
        assert_eq!(deliveries.len(), n_tasks, "seed {seed}: a result was lost");
        assert!(
            deliveries.values().all(|count| *count == 1),
            "seed {seed}: a result was delivered twice"
        );
        assert_eq!(registry.stats().undelivered, 0);
    }
}

#[tokio::test(start_paused = true)]
async fn results_of_a_cancelled_parent_have_nobody_to_wait_for_them() {
    let (registry, _) = registry(|_| {});
    let gates = Gates::default();
    let root = idle_root(&registry);
    let parent = gates
        .spawn(&registry, bg("lead", "parent").parent(root))
        .unwrap();
    let finished_child = gates
        .spawn(&registry, bg("w", "done early").parent(parent.id))
        .unwrap();
    let running_child = gates
        .spawn(&registry, bg("w", "still going").parent(parent.id))
        .unwrap();
    gates.complete(finished_child.id);
    settle().await;
    assert_eq!(registry.stats().undelivered, 1);

    registry.cancel(parent.id).unwrap();
    settle().await;

    // The early result and the cascaded cancel are settled as delivered:
    // a cancelled parent will never read them. Only the parent's own end
    // waits for the root.
    for child in [finished_child.id, running_child.id] {
        assert!(registry.get(child).unwrap().delivered, "{child}");
    }
    assert_eq!(
        registry.get(running_child.id).unwrap().status,
        TaskStatus::Cancelled
    );
    let stats = registry.stats();
    assert_eq!(stats.undelivered, 1);
    let taken: Vec<TaskId> = registry
        .take_finished(Some(root))
        .iter()
        .map(|task| task.id)
        .collect();
    assert_eq!(taken, [parent.id]);
    assert_eq!(registry.stats().undelivered, 0);
}
