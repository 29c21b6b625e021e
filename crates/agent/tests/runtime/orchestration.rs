//! Orchestrators delegating to background sub-agents: the seed scenarios.

use std::time::Duration;

use deputy_agent::{Agent, RunEvent, Runtime};
use deputy_providers::{ScriptedProvider, TASK_RESULTS_HEADER};
use deputy_registry::TaskStatus;

use crate::common::*;

/// An orchestrator launches two background researchers, collects both with
/// `get_task_result` (wait), and synthesizes (seed 001), on the built-in
/// demo behaviour of the scripted provider.
#[tokio::test(start_paused = true)]
async fn two_background_researchers_are_collected_with_wait_and_synthesized() {
    let lead = Recorder::new(std::sync::Arc::new(ScriptedProvider::demo("lead")));
    let researchers = std::sync::Arc::new(
        ScriptedProvider::demo("research").with_latency(Duration::from_millis(200)),
    );
    let runtime = Runtime::builder()
        .agent(
            Agent::builder("orchestrator", lead.clone())
                .subagents(["researcher"])
                .build()
                .unwrap(),
        )
        .agent(
            Agent::builder("researcher", researchers)
                .description("Researches one topic.")
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();

    let run = runtime
        .start("orchestrator", "Compare Go and Rust")
        .unwrap();
    let run_id = run.run_id();
    let events = collect_events(run).await;

    let spawns: Vec<_> = events
        .iter()
        .filter_map(|event| match event {
            RunEvent::ToolResult {
                name,
                content,
                is_error,
                ..
            } if name == "spawn_agent" => {
                assert!(!is_error, "{content}");
                Some(serde_json::from_str::<serde_json::Value>(content).unwrap())
            }
            _ => None,
        })
        .collect();
    assert_eq!(spawns.len(), 2);
    for spawn in &spawns {
        assert_eq!(spawn["agent"], "researcher");
        assert_eq!(spawn["status"], "running");
    }
    let collected: Vec<_> = events
        .iter()
        .filter_map(|event| match event {
            RunEvent::ToolResult { name, content, .. } if name == "get_task_result" => {
                Some(serde_json::from_str::<serde_json::Value>(content).unwrap())
            }
            _ => None,
        })
        .collect();
    assert_eq!(collected.len(), 2, "one wait per researcher");
    for (result, spawn) in collected.iter().zip(&spawns) {
        assert_eq!(result["task_id"], spawn["task_id"]);
        assert_eq!(result["status"], "completed");
        assert!(result["result"].as_str().unwrap().contains("briefing"));
    }

    let Some(RunEvent::Done { answer, report }) = events.last() else {
        panic!("the run did not end with Done: {:?}", events.last());
    };
    assert!(answer.contains("Synthesis"), "{answer}");
    assert!(answer.contains("Go") && answer.contains("Rust"), "{answer}");
    assert_eq!(report.run_id, run_id);
    assert_eq!(report.count(TaskStatus::Completed), 2);
    assert_eq!(report.turns, 3, "spawn, collect, synthesize");
    // Three orchestrator calls and one call per researcher.
    assert_eq!(report.usage.requests, 5);
    assert_eq!(
        count(&events, |event| matches!(
            event,
            RunEvent::TaskFinished {
                status: TaskStatus::Completed,
                ..
            }
        )),
        2
    );

    // Both results reached the model through the waits, so nothing was
    // handed over a second time.
    for request in lead.requests() {
        assert!(handovers(&request).is_empty(), "{:?}", handovers(&request));
    }
    let stats = runtime.registry().stats();
    assert_eq!(stats.slots_in_use, 0);
    assert_eq!(stats.undelivered, 0);
}

/// An orchestrator for the cap tests: turn 1 spawns `topics` in the
/// background, turn 2 waits for every task that started, turn 3 answers.
fn spawning_lead(topics: &'static [&'static str]) -> std::sync::Arc<FnProvider> {
    FnProvider::new(
        "lead",
        Duration::ZERO,
        move |request| match assistant_turns(request) {
            0 => call_tools(
                request,
                topics
                    .iter()
                    .map(|topic| background_spawn("researcher", topic))
                    .collect(),
            ),
            1 => {
                let ids = spawned_ids(request);
                call_tools(request, ids.iter().map(|id| wait_for(id)).collect())
            }
            _ => answer("all collected"),
        },
    )
}

fn researcher(latency: Duration) -> std::sync::Arc<FnProvider> {
    FnProvider::new("research", latency, |request| {
        answer(format!("notes on {}", prompt(request)))
    })
}

/// `lead` may delegate to a researcher that answers after 100 ms.
fn lead_and_researcher(
    lead: &std::sync::Arc<FnProvider>,
    settings: deputy_registry::SettingsHandle,
) -> Runtime {
    Runtime::builder()
        .settings(settings)
        .agent(
            agent("lead", lead.clone())
                .subagents(["researcher"])
                .build()
                .unwrap(),
        )
        .agent(
            agent("researcher", researcher(Duration::from_millis(100)))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn with_a_cap_of_one_the_second_background_task_queues_then_runs() {
    let lead = spawning_lead(&["Go", "Rust"]);
    let runtime = lead_and_researcher(&lead, settings(1, 60_000));

    let events = collect_events(runtime.start("lead", "research both").unwrap()).await;

    let statuses: Vec<String> = last_results(&lead.requests()[1])
        .iter()
        .map(|(_, value, _)| value["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, ["running", "queued"]);

    // The queued task starts only once the first one has finished.
    let position = |wanted: &dyn Fn(&RunEvent) -> bool| events.iter().position(wanted).unwrap();
    let first_finished = position(&|event| matches!(event, RunEvent::TaskFinished { .. }));
    let queued = position(&|event| matches!(event, RunEvent::TaskQueued { .. }));
    let RunEvent::TaskQueued {
        task_id: second, ..
    } = &events[queued]
    else {
        unreachable!()
    };
    let second_started = position(
        &|event| matches!(event, RunEvent::TaskStarted { task_id, .. } if task_id == second),
    );
    assert!(queued < first_finished && first_finished < second_started);

    let results = last_results(&lead.requests()[2]);
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].1["result"], "notes on Go");
    assert_eq!(results[1].1["result"], "notes on Rust");
    let Some(RunEvent::Done { report, .. }) = events.last() else {
        panic!("no Done: {:?}", events.last());
    };
    assert_eq!(report.count(TaskStatus::Completed), 2);
    assert_eq!(runtime.registry().stats().slots_in_use, 0);
}

#[tokio::test(start_paused = true)]
async fn with_queue_wait_zero_the_second_background_task_is_refused_in_words() {
    let lead = spawning_lead(&["Go", "Rust"]);
    let runtime = lead_and_researcher(&lead, settings(1, 0));

    let output = runtime.run("lead", "research both").await.unwrap();

    let results = last_results(&lead.requests()[1]);
    assert_eq!(results.len(), 2);
    assert!(!results[0].2, "the first spawn runs");
    assert_eq!(results[0].1["status"], "running");
    assert!(results[1].2, "the second spawn is refused");
    assert_eq!(
        results[1].1,
        "Cannot start background agent: maximum concurrent background agents (1) reached and queue wait is disabled. Stop an existing agent or wait for one to finish."
    );
    // Nothing of the refused spawn is left behind.
    assert_eq!(output.report.tasks.len(), 1);
    assert_eq!(output.report.count(TaskStatus::Completed), 1);
    let stats = runtime.registry().stats();
    assert_eq!((stats.slots_in_use, stats.running, stats.queued), (0, 0, 0));
    assert_eq!(stats.refused, 1);
    assert_eq!(output.answer, "all collected");
    for request in lead.requests() {
        assert!(handovers(&request).is_empty());
    }
    let _ = TASK_RESULTS_HEADER;
}

/// With one turn, the demo orchestrator spawns, and its last turn (tools no
/// longer run) gets the researchers' results and writes the synthesis.
#[tokio::test(start_paused = true)]
async fn the_last_turn_hands_over_the_results_and_gets_the_synthesis() {
    let researchers = std::sync::Arc::new(
        ScriptedProvider::demo("research").with_latency(Duration::from_millis(200)),
    );
    let runtime = Runtime::builder()
        .agent(
            Agent::builder(
                "orchestrator",
                std::sync::Arc::new(ScriptedProvider::demo("lead")),
            )
            .subagents(["researcher"])
            .max_turns(1)
            .build()
            .unwrap(),
        )
        .agent(Agent::builder("researcher", researchers).build().unwrap())
        .build()
        .unwrap();

    let output = runtime
        .run("orchestrator", "Compare Go and Rust")
        .await
        .unwrap();

    assert!(
        output.answer.contains("Synthesis") && output.answer.contains("from 2 sub-agent results"),
        "{}",
        output.answer
    );
    assert_eq!(output.report.turns, 2, "the spawn turn and the last turn");
    assert_eq!(output.report.count(TaskStatus::Completed), 2);
    assert_eq!(runtime.registry().stats().undelivered, 0);
}

#[tokio::test]
async fn calling_every_other_agent_needs_another_agent() {
    let provider = std::sync::Arc::new(ScriptedProvider::demo("lead"));
    let error = Runtime::builder()
        .agent(
            Agent::builder("alone", provider)
                .subagents(["*"])
                .build()
                .unwrap(),
        )
        .build()
        .unwrap_err();
    assert!(
        error.to_string().contains(
            "agent `alone` may call every other agent (`*`), but there is no other agent"
        ),
        "{error}"
    );
}
