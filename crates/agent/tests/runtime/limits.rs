//! The limits of delegation and of one task: depth, time, provider errors,
//! usage accounting, token budgets, and the checks of the builders.

use std::sync::Arc;
use std::time::Duration;

use deputy_agent::{Agent, RunError, RunEvent, Runtime, SPAWN_AGENT};
use deputy_providers::ErrorKind;
use deputy_registry::{FailureKind, TaskId, TaskStatus, Usage};
use serde_json::json;

use crate::common::*;

fn tool_names(request: &deputy_providers::ChatRequest) -> Vec<String> {
    request.tools.iter().map(|tool| tool.name.clone()).collect()
}

// ----- depth ---------------------------------------------------------------

/// lead → mid (foreground) → leaf (foreground), under `max_depth`.
fn three_levels(max_depth: u32) -> (Arc<FnProvider>, Arc<FnProvider>, Runtime) {
    let lead = FnProvider::new("lead", Duration::ZERO, |request| {
        match assistant_turns(request) {
            0 => call_tools(
                request,
                vec![(
                    SPAWN_AGENT,
                    json!({"agent": "mid", "task": "delegate further"}),
                )],
            ),
            _ => answer("lead done"),
        }
    });
    let mid = FnProvider::new("mid", Duration::ZERO, |request| {
        match assistant_turns(request) {
            0 => call_tools(
                request,
                vec![(
                    SPAWN_AGENT,
                    json!({"agent": "leaf", "task": "the real work"}),
                )],
            ),
            _ => answer("mid done"),
        }
    });
    let leaf = FnProvider::new("leaf", Duration::ZERO, |_| answer("leaf result"));
    let runtime = Runtime::builder()
        .max_depth(max_depth)
        .agent(agent("lead", lead).subagents(["mid"]).build().unwrap())
        .agent(
            agent("mid", mid.clone())
                .subagents(["leaf"])
                .build()
                .unwrap(),
        )
        .agent(agent("leaf", leaf.clone()).build().unwrap())
        .build()
        .unwrap();
    (mid, leaf, runtime)
}

#[tokio::test(start_paused = true)]
async fn at_max_depth_one_a_sub_agent_cannot_spawn_its_own_sub_agent() {
    let (mid, leaf, runtime) = three_levels(1);

    let output = runtime.run("lead", "go").await.unwrap();

    // mid may spawn but runs at the depth limit, so it is not offered the
    // task tools; when it calls spawn_agent anyway, the refusal is clear.
    let requests = mid.requests();
    assert_eq!(requests.len(), 2);
    assert!(!tool_names(&requests[0]).contains(&SPAWN_AGENT.to_owned()));
    let results = last_results(&requests[1]);
    assert_eq!(results.len(), 1);
    let (name, content, is_error) = &results[0];
    assert_eq!(name, SPAWN_AGENT);
    assert!(is_error, "{content}");
    let text = content.as_str().unwrap();
    assert!(text.contains("depth limit"), "{text}");
    assert!(text.contains("max_depth = 1"), "{text}");
    assert!(text.contains("at depth 1"), "{text}");

    assert_eq!(leaf.calls(), 0, "the grandchild never ran");
    assert_eq!(output.answer, "lead done");
    assert_eq!(output.report.tasks.len(), 1, "only mid was spawned");
    assert_eq!(&*output.report.tasks[0].agent, "mid");
    assert_eq!(output.report.tasks[0].depth, 1);
    // The root run and mid.
    assert_eq!(runtime.registry().stats().spawned, 2);
}

#[tokio::test(start_paused = true)]
async fn at_max_depth_two_the_same_grandchild_spawn_works() {
    let (mid, leaf, runtime) = three_levels(2);

    let output = runtime.run("lead", "go").await.unwrap();

    let results = last_results(&mid.requests()[1]);
    assert_eq!(results.len(), 1);
    let (_, content, is_error) = &results[0];
    assert!(!is_error, "{content}");
    assert_eq!(content["status"], "completed");
    assert_eq!(content["result"], "leaf result");

    assert_eq!(leaf.calls(), 1);
    // A leaf that lists no sub-agents is offered no task tools.
    assert!(leaf.requests()[0].tools.is_empty());
    let depths: Vec<(String, u32)> = output
        .report
        .tasks
        .iter()
        .map(|task| (task.agent.to_string(), task.depth))
        .collect();
    assert_eq!(depths, [("mid".to_owned(), 1), ("leaf".to_owned(), 2)]);
    assert_eq!(output.report.count(TaskStatus::Completed), 2);
}

#[tokio::test(start_paused = true)]
async fn an_agent_without_subagents_gets_no_task_tools_and_spawn_agent_is_an_unknown_tool() {
    let solo = FnProvider::new("solo", Duration::ZERO, |request| {
        match assistant_turns(request) {
            0 => call_tools(
                request,
                vec![(SPAWN_AGENT, json!({"agent": "other", "task": "help me"}))],
            ),
            _ => answer("did it myself"),
        }
    });
    let other = FnProvider::new("other", Duration::ZERO, |_| answer("never"));
    let lookup = FnTool::lookup("lookup");
    let runtime = Runtime::builder()
        .agent(agent("solo", solo.clone()).tool(lookup).build().unwrap())
        .agent(agent("other", other.clone()).build().unwrap())
        .build()
        .unwrap();

    let output = runtime.run("solo", "work").await.unwrap();

    let requests = solo.requests();
    assert_eq!(tool_names(&requests[0]), ["lookup"]);
    let results = last_results(&requests[1]);
    assert_eq!(results.len(), 1);
    let (name, content, is_error) = &results[0];
    assert_eq!(name, SPAWN_AGENT);
    assert!(is_error);
    assert_eq!(
        content,
        "unknown tool `spawn_agent`; the tools you can call are lookup"
    );
    assert_eq!(other.calls(), 0);
    assert!(output.report.tasks.is_empty());
    // Only the root run itself.
    assert_eq!(runtime.registry().stats().spawned, 1);
    assert_eq!(output.answer, "did it myself");
}

// ----- time limit ----------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_sub_agent_past_its_time_limit_fails_with_timeout_frees_its_slot_and_the_parent_reads_why()
 {
    let lead = FnProvider::new("lead", Duration::ZERO, |request| {
        match assistant_turns(request) {
            0 => call_tools(request, vec![background_spawn("slow", "take your time")]),
            1 => {
                let id = spawned_ids(request).remove(0);
                call_tools(request, vec![wait_for(id)])
            }
            // With a cap of one and no queue wait, this spawn only works if
            // the timed-out task gave its slot back.
            2 => call_tools(
                request,
                vec![(SPAWN_AGENT, json!({"agent": "quick", "task": "be quick"}))],
            ),
            _ => answer("lead done"),
        }
    });
    let slow = FnProvider::new("slow", Duration::from_secs(10), |_| answer("too late"));
    let quick = FnProvider::new("quick", Duration::ZERO, |_| answer("quick result"));
    let runtime = Runtime::builder()
        .settings(settings(1, 0))
        .agent(
            agent("lead", lead.clone())
                .subagents(["slow", "quick"])
                .build()
                .unwrap(),
        )
        .agent(
            agent("slow", slow.clone())
                .time_limit(Duration::from_secs(1))
                .build()
                .unwrap(),
        )
        .agent(agent("quick", quick.clone()).build().unwrap())
        .build()
        .unwrap();

    let output = runtime.run("lead", "go").await.unwrap();

    let requests = lead.requests();
    assert_eq!(requests.len(), 4);
    let child: TaskId = spawned_ids(&requests[1])[0].parse().unwrap();
    let waited = last_results(&requests[2]);
    assert_eq!(waited.len(), 1);
    let (_, result, is_error) = &waited[0];
    assert!(!is_error, "{result}");
    assert_eq!(result["status"], "failed");
    let error = result["error"].as_str().unwrap();
    assert!(error.contains("timeout"), "{error}");
    assert!(error.contains("time limit of 1 s"), "{error}");

    let snapshot = runtime.registry().get(child).unwrap();
    assert_eq!(snapshot.status, TaskStatus::Failed);
    assert_eq!(snapshot.failure.unwrap().kind, FailureKind::Timeout);

    // Its slot went to the next spawn.
    let respawn = last_results(&requests[3]);
    assert!(!respawn[0].2, "{}", respawn[0].1);
    assert_eq!(respawn[0].1["result"], "quick result");
    let stats = runtime.registry().stats();
    assert_eq!((stats.slots_in_use, stats.running), (0, 0));
    assert_eq!(stats.refused, 0);

    // The run did not wait for the 10 s provider call.
    assert!(
        output.report.duration < Duration::from_secs(2),
        "{:?}",
        output.report.duration
    );
    // The provider call started and was abandoned: it never answered, even
    // long after it would have.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(slow.calls(), 1);
    assert!(slow.requests().is_empty());
    assert!(output.report.tasks[0].failure.is_some());
    assert_eq!(
        output.report.tasks[0].failure.as_ref().unwrap().kind,
        FailureKind::Timeout
    );
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_background_task_is_handed_over_as_a_timeout_when_the_parent_answers() {
    let lead = FnProvider::new("lead", Duration::ZERO, |request| {
        match assistant_turns(request) {
            0 => call_tools(request, vec![background_spawn("slow", "take your time")]),
            1 => answer("early answer"),
            _ => answer("final answer"),
        }
    });
    let slow = FnProvider::new("slow", Duration::from_secs(10), |_| answer("too late"));
    let runtime = Runtime::builder()
        .agent(
            agent("lead", lead.clone())
                .subagents(["slow"])
                .build()
                .unwrap(),
        )
        .agent(
            agent("slow", slow)
                .time_limit(Duration::from_secs(1))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();

    let output = runtime.run("lead", "go").await.unwrap();

    assert_eq!(output.answer, "final answer");
    let requests = lead.requests();
    assert_eq!(requests.len(), 3);
    let handed = handovers(&requests[2]);
    assert_eq!(handed.len(), 1);
    assert!(handed[0].contains("status=\"failed\""), "{}", handed[0]);
    assert!(
        handed[0].contains("error (timeout): ran past its time limit of 1 s"),
        "{}",
        handed[0]
    );
    assert_eq!(output.report.count(TaskStatus::Failed), 1);
}

// ----- provider errors -----------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_provider_error_mid_task_fails_the_sub_agent_and_the_parent_and_the_event_stream_say_so()
{
    let lead = FnProvider::new("lead", Duration::ZERO, |request| {
        match assistant_turns(request) {
            0 => call_tools(request, vec![background_spawn("worker", "look it up")]),
            1 => {
                let id = spawned_ids(request).remove(0);
                call_tools(request, vec![wait_for(id)])
            }
            _ => answer("lead done"),
        }
    });
    let worker = FnProvider::new("worker", Duration::ZERO, |request| {
        match assistant_turns(request) {
            0 => call_tools(request, vec![("lookup", json!({"q": "rust"}))]),
            _ => provider_error(ErrorKind::Server, "upstream exploded"),
        }
    });
    let lookup = FnTool::lookup("lookup");
    let runtime = Runtime::builder()
        .agent(
            agent("lead", lead.clone())
                .subagents(["worker"])
                .build()
                .unwrap(),
        )
        .agent(
            agent("worker", worker.clone())
                .tool(lookup.clone())
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();

    let events = collect_events(runtime.start("lead", "go").unwrap()).await;

    assert_eq!(worker.calls(), 2);
    assert_eq!(lookup.calls(), 1, "the first call's tool ran");
    let requests = lead.requests();
    let child: TaskId = spawned_ids(&requests[1])[0].parse().unwrap();
    let (_, result, _) = &last_results(&requests[2])[0];
    assert_eq!(result["status"], "failed");
    let error = result["error"].as_str().unwrap();
    assert!(error.contains("provider"), "{error}");
    assert!(error.contains("upstream exploded"), "{error}");

    let errors: Vec<&RunEvent> = events
        .iter()
        .filter(|event| matches!(event, RunEvent::Error { .. }))
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let RunEvent::Error {
        task_id,
        agent,
        message,
    } = errors[0]
    else {
        unreachable!()
    };
    assert_eq!(*task_id, Some(child));
    assert_eq!(agent.as_deref(), Some("worker"));
    assert!(message.contains("upstream exploded"), "{message}");
    assert_eq!(
        count(&events, |event| matches!(
            event,
            RunEvent::TaskFinished {
                task_id,
                status: TaskStatus::Failed,
                failure: Some(FailureKind::Provider),
                ..
            } if *task_id == child
        )),
        1
    );
    let snapshot = runtime.registry().get(child).unwrap();
    assert_eq!(snapshot.failure.unwrap().kind, FailureKind::Provider);
    // The parent survives its sub-agent's failure.
    let Some(RunEvent::Done { answer, .. }) = events.last() else {
        panic!("no Done: {:?}", events.last());
    };
    assert_eq!(answer, "lead done");
}

// ----- usage ---------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn every_call_is_counted_on_its_task_and_summed_over_the_run() {
    let lead = FnProvider::new("lead", Duration::ZERO, |request| {
        match assistant_turns(request) {
            0 => call_tools(
                request,
                vec![
                    background_spawn("one", "short"),
                    background_spawn("two", "long"),
                ],
            ),
            1 => {
                let ids = spawned_ids(request);
                call_tools(request, ids.iter().map(|id| wait_for(id)).collect())
            }
            _ => answer("lead done"),
        }
    });
    // One call.
    let one = FnProvider::new("one", Duration::from_millis(10), |_| answer("one done"));
    // Three calls: two tool turns, then the answer.
    let two = FnProvider::new(
        "two",
        Duration::from_millis(10),
        |request| match assistant_turns(request) {
            0 | 1 => call_tools(request, vec![("lookup", json!({"q": "x"}))]),
            _ => answer("two done"),
        },
    );
    let runtime = Runtime::builder()
        .agent(
            agent("lead", lead.clone())
                .subagents(["one", "two"])
                .build()
                .unwrap(),
        )
        .agent(agent("one", one.clone()).build().unwrap())
        .agent(
            agent("two", two.clone())
                .tool(FnTool::lookup("lookup"))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();

    let events = collect_events(runtime.start("lead", "go").unwrap()).await;
    let Some(RunEvent::Done { report, .. }) = events.last() else {
        panic!("no Done: {:?}", events.last());
    };

    assert_eq!((lead.calls(), one.calls(), two.calls()), (3, 1, 3));
    assert_eq!(report.tasks.len(), 2);
    for task in &report.tasks {
        let calls = match &*task.agent {
            "one" => one.calls(),
            "two" => two.calls(),
            other => panic!("unexpected task of {other}"),
        };
        let calls = u64::try_from(calls).unwrap();
        assert_eq!(task.usage.requests, calls, "{}", task.agent);
        assert_eq!(task.usage.input_tokens, 10 * calls);
        assert_eq!(task.usage.output_tokens, 5 * calls);
    }
    // The run's usage is the orchestrator's plus every sub-agent's.
    let root = runtime.registry().get(report.run_id).unwrap();
    assert_eq!(root.usage.requests, 3);
    let summed = report
        .tasks
        .iter()
        .fold(root.usage, |total, task| total + task.usage);
    assert_eq!(report.usage, summed);
    assert_eq!(report.usage.requests, 7);
    assert_eq!(report.usage.total_tokens(), 7 * 15);
    assert_eq!(report.turns, 3);

    // Usage events: one per call, each run_total the previous plus this call.
    let totals: Vec<(Usage, Usage)> = events
        .iter()
        .filter_map(|event| match event {
            RunEvent::Usage {
                usage, run_total, ..
            } => Some((*usage, *run_total)),
            _ => None,
        })
        .collect();
    assert_eq!(totals.len(), 7);
    let mut previous = Usage::default();
    for (usage, run_total) in &totals {
        assert_eq!(*run_total, previous + *usage);
        assert!(run_total.requests > previous.requests);
        assert!(run_total.total_tokens() >= previous.total_tokens());
        previous = *run_total;
    }
    assert_eq!(previous, report.usage);
}

/// Many sub-agents calling their models at once on several threads: the
/// `run_total` of the Usage events must still only grow in stream order
/// (the total is added and its event sent in one locked step). A race, so
/// the test tries many runs and stops at the first misorder.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_run_totals_stay_in_order_when_sub_agents_run_on_several_threads() {
    let lead = FnProvider::new("lead", Duration::ZERO, |request| {
        match assistant_turns(request) {
            0 => call_tools(
                request,
                (0..16)
                    .map(|index| {
                        (
                            SPAWN_AGENT,
                            json!({"agent": "worker", "task": format!("part {index}"), "background": true}),
                        )
                    })
                    .collect(),
            ),
            _ => answer("lead done"),
        }
    });
    let worker = FnProvider::new("worker", Duration::ZERO, |request| {
        if assistant_turns(request) < 20 {
            call_tools(request, vec![("lookup", json!({"q": "x"}))])
        } else {
            answer("done")
        }
    });
    let runtime = Runtime::builder()
        .settings(settings(16, 60_000))
        .agent(agent("lead", lead).subagents(["worker"]).build().unwrap())
        .agent(
            agent("worker", worker)
                .tool(FnTool::lookup("lookup"))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();

    for attempt in 0..100 {
        let events = collect_events(runtime.start("lead", "go").unwrap()).await;
        let totals: Vec<u64> = events
            .iter()
            .filter_map(|event| match event {
                RunEvent::Usage { run_total, .. } => Some(run_total.requests),
                _ => None,
            })
            .collect();
        // The lead: spawn, answer, answer again after the handover.
        assert_eq!(totals.len(), 3 + 16 * 21);
        let misordered = totals.windows(2).find(|pair| pair[1] <= pair[0]);
        assert!(
            misordered.is_none(),
            "run {attempt}: run_total.requests went {:?}",
            misordered
        );
    }
}

// ----- token budget --------------------------------------------------------

/// A model that always asks for a tool: only a limit stops it.
fn always_looking_up() -> Arc<FnProvider> {
    FnProvider::new("thrifty", Duration::ZERO, |request| {
        call_tools(request, vec![("lookup", json!({"q": "more"}))])
    })
}

#[tokio::test(start_paused = true)]
async fn a_sub_agent_over_its_token_budget_stops_calling_its_model_and_fails_with_budget() {
    let lead = FnProvider::new("lead", Duration::ZERO, |request| {
        match assistant_turns(request) {
            0 => call_tools(
                request,
                vec![(SPAWN_AGENT, json!({"agent": "thrifty", "task": "dig"}))],
            ),
            _ => answer("lead done"),
        }
    });
    let thrifty = always_looking_up();
    let runtime = Runtime::builder()
        .agent(
            agent("lead", lead.clone())
                .subagents(["thrifty"])
                .build()
                .unwrap(),
        )
        .agent(
            agent("thrifty", thrifty.clone())
                .tool(FnTool::lookup("lookup"))
                .token_budget(20)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();

    let output = runtime.run("lead", "go").await.unwrap();

    // 0 < 20: first call; 15 < 20: second call; 30 >= 20: no third call.
    assert_eq!(thrifty.calls(), 2);
    let task = &output.report.tasks[0];
    assert_eq!(task.status, TaskStatus::Failed);
    let failure = task.failure.as_ref().unwrap();
    assert_eq!(failure.kind, FailureKind::Budget);
    assert!(failure.message.contains("token_budget is 20"), "{failure}");
    assert!(failure.message.contains("spent 30 tokens"), "{failure}");
    assert_eq!(task.usage.total_tokens(), 30);

    // The foreground spawn reports the failure to the parent.
    let (_, content, is_error) = &last_results(&lead.requests()[1])[0];
    assert!(is_error);
    let text = content.as_str().unwrap();
    assert!(text.contains("failed (budget)"), "{text}");
    assert!(text.contains("token_budget"), "{text}");
    assert_eq!(output.answer, "lead done");
}

#[tokio::test(start_paused = true)]
async fn a_run_over_its_orchestrators_token_budget_fails_with_budget() {
    let thrifty = always_looking_up();
    let runtime = Runtime::builder()
        .agent(
            agent("thrifty", thrifty.clone())
                .tool(FnTool::lookup("lookup"))
                .token_budget(20)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();

    let error = runtime.run("thrifty", "dig").await.unwrap_err();

    let RunError::Failed { failure, report } = &error else {
        panic!("expected a failed run: {error:?}");
    };
    assert_eq!(failure.kind, FailureKind::Budget);
    assert!(failure.message.contains("token_budget"), "{failure}");
    assert_eq!(thrifty.calls(), 2);
    assert_eq!(report.usage.total_tokens(), 30);
    assert_eq!(report.turns, 2);
}

// ----- builders ------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn an_agent_builder_lists_every_problem_at_once() {
    let provider = FnProvider::new("p", Duration::ZERO, |_| answer("x"));
    let error = Agent::builder("auto", provider.clone())
        .max_turns(0)
        .tool(FnTool::lookup("lookup"))
        .tool(FnTool::lookup("lookup"))
        .tool(FnTool::lookup("spawn_agent"))
        .build()
        .unwrap_err();

    assert_eq!(error.agent, "auto");
    assert_eq!(error.problems.len(), 4, "{:?}", error.problems);
    let has = |needle: &str| {
        error
            .problems
            .iter()
            .any(|problem| problem.contains(needle))
    };
    assert!(has("`auto` is reserved"), "{:?}", error.problems);
    assert!(has("max_turns is 0"), "{:?}", error.problems);
    assert!(has("tool `lookup` is added twice"), "{:?}", error.problems);
    assert!(
        has("tool `spawn_agent` is reserved for the task tools"),
        "{:?}",
        error.problems
    );
    let message = error.to_string();
    for problem in &error.problems {
        assert!(message.contains(problem.as_str()), "{message}");
    }

    let error = Agent::builder("  ", provider.clone()).build().unwrap_err();
    assert_eq!(error.problems.len(), 1);
    assert!(error.problems[0].contains("the name is empty"));

    let error = Agent::builder("", provider)
        .max_turns(0)
        .build()
        .unwrap_err();
    assert_eq!(error.problems.len(), 2, "{:?}", error.problems);
}

#[tokio::test(start_paused = true)]
async fn a_runtime_builder_lists_every_problem_at_once() {
    let error = Runtime::builder().max_depth(0).build().unwrap_err();
    assert_eq!(error.problems.len(), 2, "{:?}", error.problems);
    assert!(error.problems[0].contains("no agents are defined"));
    assert!(error.problems[1].contains("max_depth is 0"));

    let provider = FnProvider::new("p", Duration::ZERO, |_| answer("x"));
    let error = Runtime::builder()
        .agent(
            agent("lead", provider.clone())
                .subagents(["ghost"])
                .build()
                .unwrap(),
        )
        .agent(agent("worker", provider.clone()).build().unwrap())
        .agent(agent("worker", provider).build().unwrap())
        .max_depth(0)
        .build()
        .unwrap_err();
    assert_eq!(error.problems.len(), 3, "{:?}", error.problems);
    let has = |needle: &str| {
        error
            .problems
            .iter()
            .any(|problem| problem.contains(needle))
    };
    assert!(
        has("agent `worker` is defined twice"),
        "{:?}",
        error.problems
    );
    assert!(
        has("agent `lead` lists sub-agent `ghost`, which is not defined"),
        "{:?}",
        error.problems
    );
    assert!(has("max_depth is 0"), "{:?}", error.problems);
    let message = error.to_string();
    for problem in &error.problems {
        assert!(message.contains(problem.as_str()), "{message}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_run_of_an_unknown_agent_or_an_empty_prompt_is_refused_before_it_starts() {
    let provider = FnProvider::new("p", Duration::ZERO, |_| answer("x"));
    let runtime = Runtime::builder()
        .agent(agent("lead", provider.clone()).build().unwrap())
        .agent(agent("worker", provider.clone()).build().unwrap())
        .build()
        .unwrap();

    let error = runtime.run("nobody", "hello").await.unwrap_err();
    let RunError::UnknownAgent { name, available } = &error else {
        panic!("expected UnknownAgent: {error:?}");
    };
    assert_eq!(name, "nobody");
    assert_eq!(available, "lead, worker");
    assert!(error.to_string().contains("lead, worker"));
    assert!(error.report().is_none());

    let error = runtime.run("lead", "  \n ").await.unwrap_err();
    assert!(matches!(error, RunError::EmptyPrompt), "{error:?}");

    assert_eq!(provider.calls(), 0);
    assert_eq!(runtime.registry().stats().tracked, 0);
}
