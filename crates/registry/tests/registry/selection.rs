//! The selector inside the registry sees live load.

use std::time::Duration;

use deputy_registry::{AgentCandidate, SelectionMode, SelectionRequest, Strategy, TaskFailure};

use crate::support::{Gates, bg, registry, settings, settle};

fn candidates() -> Vec<AgentCandidate> {
    vec![AgentCandidate::new("alpha"), AgentCandidate::new("beta")]
}

#[tokio::test(start_paused = true)]
async fn in_flight_counts_running_tasks_not_queued_ones() {
    let (registry, _) = registry(|s| {
        s.max_concurrent = Some(1);
        s.strategy = Some("least_loaded".into());
    });
    let gates = Gates::default();
    let running = gates.spawn(&registry, bg("alpha", "1")).unwrap();
    gates.spawn(&registry, bg("beta", "2")).unwrap();
    gates.spawn(&registry, bg("beta", "3")).unwrap();
    assert_eq!(registry.agent_load("alpha").in_flight, 1);
    assert_eq!(registry.agent_load("beta").in_flight, 0);
    let pick = registry
        .select_agent(&SelectionRequest::default(), &candidates())
        .unwrap();
    assert_eq!(&*pick.agent, "beta");
    gates.complete(running.id);
    settle().await;
    assert_eq!(registry.agent_load("alpha").in_flight, 0);
    assert_eq!(registry.agent_load("beta").in_flight, 1);
}

#[tokio::test(start_paused = true)]
async fn adaptive_steers_away_from_recent_failures_until_the_window_passes() {
    let (registry, _) = registry(|s| {
        s.strategy = Some("adaptive".into());
        s.load_window_secs = Some(60);
    });
    let failing = registry
        .spawn(bg("alpha", "x"), |_| async {
            Err(TaskFailure::provider("500"))
        })
        .unwrap();
    registry.wait(failing.id, None).await.unwrap();
    let pick = registry
        .select_agent(&SelectionRequest::default(), &candidates())
        .unwrap();
    assert_eq!(&*pick.agent, "beta");
    assert_eq!(pick.mode, SelectionMode::Strategy(Strategy::Adaptive));
    // beta was just selected (-3), alpha failed (-16): still beta's turn.
    let pick = registry
        .select_agent(&SelectionRequest::default(), &candidates())
        .unwrap();
    assert_eq!(&*pick.agent, "beta");
    tokio::time::sleep(Duration::from_secs(61)).await;
    let pick = registry
        .select_agent(&SelectionRequest::default(), &candidates())
        .unwrap();
    assert_eq!(&*pick.agent, "alpha");
}

#[tokio::test(start_paused = true)]
async fn the_strategy_follows_live_settings() {
    let (registry, handle) = registry(|s| s.strategy = Some("round_robin".into()));
    let names: Vec<String> = (0..3)
        .map(|_| {
            registry
                .select_agent(&SelectionRequest::default(), &candidates())
                .unwrap()
                .agent
                .to_string()
        })
        .collect();
    assert_eq!(names, ["alpha", "beta", "alpha"]);
    handle.publish(settings(|s| s.strategy = Some("least_loaded".into())));
    let pick = registry
        .select_agent(&SelectionRequest::default(), &candidates())
        .unwrap();
    assert_eq!(pick.mode, SelectionMode::Strategy(Strategy::LeastLoaded));
}
