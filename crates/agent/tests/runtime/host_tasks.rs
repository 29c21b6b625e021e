//! Tasks a host starts directly (`Runtime::spawn_task`), as the server does.

use std::time::Duration;

use deputy_agent::{RunError, Runtime, TaskOptions};
use deputy_registry::TaskStatus;

use crate::common::{agent, settings, worker};

#[tokio::test(start_paused = true)]
async fn a_host_task_runs_under_the_cap_with_its_context() {
    let provider = worker(Duration::from_secs(1));
    let runtime = Runtime::builder()
        .settings(settings(1, 0))
        .agent(agent("researcher", provider.clone()).build().unwrap())
        .build()
        .unwrap();

    let options = TaskOptions {
        context: Some("EU sources only".to_owned()),
        max_turns: Some(3),
    };
    let first = runtime
        .spawn_task("researcher", "Summarise", options)
        .unwrap();
    assert_eq!(first.status, TaskStatus::Running);

    // The cap is 1 and the queue wait 0: a second task is refused, cleanly.
    let refused = runtime
        .spawn_task("researcher", "Another", TaskOptions::default())
        .unwrap_err();
    assert!(matches!(refused, RunError::Spawn(_)), "{refused}");

    let done = runtime
        .registry()
        .wait(first.id, Some(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(done.task.status, TaskStatus::Completed);
    assert_eq!(
        done.task.output.as_deref(),
        Some("done: Summarise\n\nContext:\nEU sources only")
    );
    assert_eq!(done.task.parent_id, None);
    assert_eq!(done.task.depth, 1);
    assert!(!done.task.root);
}

#[tokio::test]
async fn unknown_agents_and_empty_tasks_are_refused() {
    let runtime = Runtime::builder()
        .agent(agent("researcher", worker(Duration::ZERO)).build().unwrap())
        .build()
        .unwrap();
    let unknown = runtime
        .spawn_task("reseacher", "x", TaskOptions::default())
        .unwrap_err();
    assert!(
        matches!(unknown, RunError::UnknownAgent { .. }),
        "{unknown}"
    );
    let empty = runtime
        .spawn_task("researcher", "  ", TaskOptions::default())
        .unwrap_err();
    assert!(matches!(empty, RunError::EmptyPrompt), "{empty}");
    assert_eq!(runtime.registry().stats().tracked, 0);
}
