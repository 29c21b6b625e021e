//! Finished tasks are kept until delivered, then for a while, and memory
//! stays bounded however many tasks go through.

use std::time::Duration;

use deputy_registry::TaskFilter;

use crate::support::{bg, registry, settle};

#[tokio::test(start_paused = true)]
async fn delivered_results_are_evicted_after_their_ttl() {
    let (registry, _) = registry(|s| s.result_ttl_secs = Some(60));
    let task = registry
        .spawn(bg("w", "a"), |_| async { Ok("x".into()) })
        .unwrap();
    let undelivered = registry
        .spawn(bg("w", "b"), |_| async { Ok("y".into()) })
        .unwrap();
    registry.wait(task.id, None).await.unwrap();
    settle().await;
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert!(registry.get(task.id).is_some());
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The periodic sweep evicts it without any other activity.
    assert!(registry.get(task.id).is_none());
    // Undelivered results are kept however old they are.
    tokio::time::sleep(Duration::from_secs(3_600)).await;
    assert!(registry.get(undelivered.id).is_some());
}

#[tokio::test(start_paused = true)]
async fn max_finished_evicts_delivered_results_first() {
    let (registry, _) = registry(|s| s.max_finished = Some(5));
    let mut kept = Vec::new();
    for n in 0..5 {
        let task = registry
            .spawn(bg("w", &n.to_string()), |_| async { Ok(String::new()) })
            .unwrap();
        registry.wait(task.id, None).await.unwrap();
    }
    for n in 0..3 {
        let task = registry
            .spawn(bg("w", &format!("u{n}")), |_| async { Ok(String::new()) })
            .unwrap();
        kept.push(task.id);
    }
    settle().await;
    let stats = registry.stats();
    assert_eq!(stats.retained_finished, 5);
    assert_eq!(stats.undelivered, 3);
    assert_eq!(stats.evicted_undelivered, 0);
    for id in kept {
        assert!(registry.get(id).is_some());
    }
}

#[tokio::test(start_paused = true)]
async fn undelivered_results_are_evicted_only_as_a_last_resort_and_counted() {
    let (registry, _) = registry(|s| s.max_finished = Some(3));
    let mut ids = Vec::new();
    for n in 0..5 {
        let task = registry
            .spawn(bg("w", &n.to_string()), |_| async { Ok(String::new()) })
            .unwrap();
        ids.push(task.id);
        settle().await;
    }
    let stats = registry.stats();
    assert_eq!(stats.retained_finished, 3);
    assert_eq!(stats.evicted_undelivered, 2);
    // The oldest went first.
    assert!(registry.get(ids[0]).is_none());
    assert!(registry.get(ids[1]).is_none());
    assert!(registry.get(ids[4]).is_some());
}

#[tokio::test(start_paused = true)]
async fn memory_stays_bounded_under_an_endless_stream_of_tasks() {
    let (registry, _) = registry(|s| {
        s.max_concurrent = Some(8);
        s.max_queue = Some(100_000);
        s.max_finished = Some(64);
        s.result_ttl_secs = Some(1);
    });
    let mut peak_tracked = 0;
    for round in 0..200 {
        let mut ids = Vec::new();
        for n in 0..25 {
            let task = registry
                .spawn(bg("w", &format!("{round}-{n}")), |_| async {
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    Ok("done".into())
                })
                .unwrap();
            ids.push(task.id);
        }
        // Half the results are read, half are left for retention to handle.
        for id in ids.iter().step_by(2) {
            registry.wait(*id, None).await.unwrap();
        }
        peak_tracked = peak_tracked.max(registry.stats().tracked);
    }
    settle().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stats = registry.stats();
    assert_eq!(stats.spawned, 5_000);
    assert!(stats.retained_finished <= 64, "{stats:?}");
    assert!(registry.list(&TaskFilter::all()).len() <= 64);
    // Per round at most 25 live tasks on top of the retained 64.
    assert!(peak_tracked <= 64 + 25, "peak {peak_tracked}");
}
