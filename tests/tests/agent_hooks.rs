//! A whole run through the agent runtime, the scripted provider and the
//! registry's hooks: every sub-agent gets one SubagentStart and one
//! SubagentStop, and the stop carries exactly the usage the run reports.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on unexpected states"
)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deputy_agent::{Agent, RunError, Runtime};
use deputy_providers::ScriptedProvider;
use deputy_registry::{
    HookError, HookStack, StartDecision, SubagentStartEvent, SubagentStartHook, SubagentStopEvent,
    SubagentStopHook, TaskId, TaskStatus, Usage,
};
use parking_lot::Mutex;

/// What one SubagentStop said: task, status, usage, provider label.
type Stop = (TaskId, TaskStatus, Usage, Option<Arc<str>>);

#[derive(Default)]
struct Ledger {
    starts: Mutex<Vec<TaskId>>,
    stops: Mutex<Vec<Stop>>,
}

#[async_trait]
impl SubagentStartHook for Ledger {
    async fn on_subagent_start(
        &self,
        event: &SubagentStartEvent,
    ) -> Result<StartDecision, HookError> {
        self.starts.lock().push(event.task.id);
        Ok(StartDecision::Allow)
    }
}

#[async_trait]
impl SubagentStopHook for Ledger {
    async fn on_subagent_stop(&self, event: &SubagentStopEvent) -> Result<(), HookError> {
        self.stops.lock().push((
            event.task.id,
            event.status,
            event.usage,
            event.task.labels.provider.clone(),
        ));
        Ok(())
    }
}

fn runtime(ledger: &Arc<Ledger>, research_latency: Duration) -> Runtime {
    let lead = Arc::new(ScriptedProvider::demo("scripted"));
    let research = Arc::new(ScriptedProvider::demo("scripted").with_latency(research_latency));
    Runtime::builder()
        .hooks(HookStack::new().with_both(ledger.clone()))
        .agent(
            Agent::builder("orchestrator", lead)
                .subagents(["researcher"])
                .build()
                .unwrap(),
        )
        .agent(Agent::builder("researcher", research).build().unwrap())
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn every_sub_agent_of_a_run_gets_one_start_and_one_stop_with_its_usage() {
    let ledger = Arc::new(Ledger::default());
    let runtime = runtime(&ledger, Duration::from_millis(200));

    let output = runtime
        .run("orchestrator", "Compare Go, Rust and Zig")
        .await
        .unwrap();
    // Stop hooks run after the slot is handed on; shutdown waits for them.
    runtime.shutdown(Duration::from_secs(5)).await;

    let report = output.report;
    assert_eq!(report.tasks.len(), 3);
    let mut starts = ledger.starts.lock().clone();
    let mut task_ids: Vec<TaskId> = report.tasks.iter().map(|task| task.id).collect();
    starts.sort();
    task_ids.sort();
    assert_eq!(
        starts, task_ids,
        "one start per sub-agent, none for the run"
    );

    let stops = ledger.stops.lock().clone();
    assert_eq!(stops.len(), 3);
    for task in &report.tasks {
        let (_, status, usage, provider) = stops
            .iter()
            .find(|(id, ..)| *id == task.id)
            .expect("a stop for every task");
        assert_eq!(*status, TaskStatus::Completed);
        assert_eq!(
            *usage, task.usage,
            "SubagentStop bills what the run reports"
        );
        assert_eq!(usage.requests, 1);
        assert_eq!(provider.as_deref(), Some("scripted"));
    }
    let sub_agent_usage = report
        .tasks
        .iter()
        .fold(Usage::default(), |sum, task| sum + task.usage);
    assert!(report.usage.total_tokens() > sub_agent_usage.total_tokens());
    assert_eq!(report.usage.requests, sub_agent_usage.requests + 3);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_run_still_pairs_every_start_with_a_stop() {
    let ledger = Arc::new(Ledger::default());
    let runtime = runtime(&ledger, Duration::from_secs(60));

    let run = runtime
        .start("orchestrator", "Compare Go and Rust")
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(ledger.starts.lock().len(), 2, "both researchers started");
    assert!(run.cancel());
    let error = run.finish().await.unwrap_err();
    runtime.shutdown(Duration::from_secs(5)).await;

    let RunError::Cancelled { report } = error else {
        panic!("expected a cancelled run, got {error}");
    };
    assert_eq!(report.count(TaskStatus::Cancelled), 2);
    let stops = ledger.stops.lock().clone();
    assert_eq!(stops.len(), 2);
    assert!(
        stops
            .iter()
            .all(|(_, status, ..)| *status == TaskStatus::Cancelled)
    );
    let stats = runtime.registry().stats();
    assert_eq!(
        (stats.slots_in_use, stats.running, stats.undelivered),
        (0, 0, 0)
    );
}
