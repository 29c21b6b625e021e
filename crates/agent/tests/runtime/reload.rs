//! Replacing the agent set while the runtime runs, as a config reload does.

use std::time::Duration;

use deputy_agent::{Agent, Runtime};
use deputy_providers::Message;

use crate::common::{agent, worker};

#[tokio::test(start_paused = true)]
async fn new_runs_use_the_new_agents_and_running_ones_keep_theirs() {
    let old = worker(Duration::from_secs(10));
    let new = worker(Duration::from_millis(10));
    let runtime = Runtime::builder()
        .agent(
            agent("researcher", old.clone())
                .system_prompt("v1")
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();

    let running = runtime.start("researcher", "long task").unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    runtime
        .replace_agents(vec![
            agent("researcher", new.clone())
                .system_prompt("v2")
                .max_concurrent(1)
                .build()
                .unwrap(),
        ])
        .unwrap();
    assert_eq!(
        runtime.agent("researcher").unwrap().max_concurrent(),
        Some(1)
    );

    let fresh = runtime.run("researcher", "short task").await.unwrap();
    assert_eq!(fresh.answer, "done: short task");
    assert_eq!(new.calls(), 1);
    assert!(
        matches!(&new.requests()[0].messages[0], Message::System { content } if content == "v2"),
        "{:?}",
        new.requests()[0].messages
    );

    let finished = running.finish().await.unwrap();
    assert_eq!(finished.answer, "done: long task");
    assert_eq!(old.calls(), 1, "the running task kept its agent");
}

#[tokio::test]
async fn an_invalid_set_is_refused_and_changes_nothing() {
    let provider = worker(Duration::ZERO);
    let runtime = Runtime::builder()
        .agent(
            agent("lead", provider.clone())
                .subagents(["researcher"])
                .build()
                .unwrap(),
        )
        .agent(agent("researcher", provider.clone()).build().unwrap())
        .build()
        .unwrap();
    let error = runtime
        .replace_agents(vec![
            Agent::builder("lead", provider.clone())
                .subagents(["writer"])
                .build()
                .unwrap(),
        ])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("lists sub-agent `writer`, which is not defined"),
        "{error}"
    );
    assert_eq!(runtime.agents().len(), 2);
    assert!(runtime.agent("researcher").is_some());
}
