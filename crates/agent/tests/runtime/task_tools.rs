//! The task tools as a model uses them: `stop_task`, `get_task_result`,
//! `list_tasks` and `spawn_agent`, with every refusal changing nothing.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use deputy_agent::Runtime;
use deputy_providers::{ErrorKind, Message};
use deputy_registry::{FailureKind, TaskFilter, TaskId, TaskStatus};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::common::*;

/// The task id in a tool's JSON answer.
fn id_of(value: &Value) -> TaskId {
    value["task_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no task_id in {value}"))
        .parse()
        .unwrap()
}

/// A lead that spawns one background `worker` on `task`, then runs
/// `second` (given the task id) in its next turn, then answers.
fn spawn_then(
    latency: Duration,
    task: &'static str,
    second: impl Fn(&str) -> Vec<(&'static str, Value)> + Send + Sync + 'static,
) -> Arc<FnProvider> {
    FnProvider::new("lead", latency, move |request| {
        match assistant_turns(request) {
            0 => call_tools(request, vec![background_spawn("worker", task)]),
            1 => {
                let id = spawned_ids(request).pop().unwrap();
                call_tools(request, second(&id))
            }
            _ => answer("done"),
        }
    })
}

fn lead_and_worker(lead: Arc<FnProvider>, worker: Arc<FnProvider>) -> Runtime {
    Runtime::builder()
        .agent(agent("lead", lead).subagents(["worker"]).build().unwrap())
        .agent(agent("worker", worker).build().unwrap())
        .build()
        .unwrap()
}

// ----- stop_task -------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn stop_task_on_a_running_background_task_cancels_it_and_frees_its_slot() {
    let lead = spawn_then(Duration::ZERO, "a long job", |id| {
        vec![("stop_task", json!({ "task_id": id }))]
    });
    let worker = worker(Duration::from_secs(60));
    let runtime = lead_and_worker(lead.clone(), worker.clone());

    let output = runtime.run("lead", "start, then stop").await.unwrap();

    let requests = lead.requests();
    assert_eq!(requests.len(), 3);
    let results = last_results(&requests[2]);
    assert_eq!(results.len(), 1);
    let (name, stop, is_error) = &results[0];
    assert_eq!(name, "stop_task");
    assert!(!is_error, "{stop}");
    assert_eq!(stop["stopped"], true);
    assert_eq!(stop["was"], "running");
    assert_eq!(stop["status"], "cancelled");
    assert_eq!(stop["agent"], "worker");
    assert!(
        stop["message"]
            .as_str()
            .unwrap()
            .contains("was running and is now cancelled"),
        "{stop}"
    );
    let id = id_of(stop);
    assert_eq!(
        runtime.registry().get(id).unwrap().status,
        TaskStatus::Cancelled
    );
    assert_eq!(output.report.tasks.len(), 1);
    assert_eq!(output.report.tasks[0].id, id);
    assert_eq!(output.report.tasks[0].status, TaskStatus::Cancelled);
    // The slot is free long before the worker's 60 s call would have ended.
    let stats = runtime.registry().stats();
    assert_eq!((stats.slots_in_use, stats.running), (0, 0));
    assert_eq!(stats.undelivered, 0, "the stop was its end notice");
    // The stop is the end notice: the cancel is not handed over as news.
    for request in &requests {
        assert!(handovers(request).is_empty(), "{:?}", handovers(request));
    }
    // The worker's call was dropped and never answered, even later.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(worker.requests().is_empty());
    assert!(worker.calls() <= 1);
}

#[tokio::test(start_paused = true)]
async fn stop_task_on_a_finished_task_says_it_had_already_ended() {
    // The lead thinks for 100 ms a turn; the worker is done after 10 ms, so
    // the stop comes after the end.
    let lead = spawn_then(Duration::from_millis(100), "a quick job", |id| {
        vec![("stop_task", json!({ "task_id": id }))]
    });
    let runtime = lead_and_worker(lead.clone(), worker(Duration::from_millis(10)));

    let output = runtime.run("lead", "start, then stop").await.unwrap();

    let requests = lead.requests();
    assert_eq!(requests.len(), 3);
    let (name, stop, is_error) = last_results(&requests[2]).remove(0);
    assert_eq!(name, "stop_task");
    assert!(!is_error, "{stop}");
    let id = id_of(&stop);
    assert_eq!(stop["stopped"], false);
    assert_eq!(stop["status"], "completed");
    assert_eq!(
        stop["message"],
        format!(
            "Task {id} (worker) had already ended (completed) before this stop; nothing was cancelled. Read its result with get_task_result."
        )
    );
    // Nothing changed: still completed with its answer, and the stop did not
    // consume the result, which is handed over once, in the next request.
    let task = runtime.registry().get(id).unwrap();
    assert_eq!(task.status, TaskStatus::Completed);
    assert_eq!(task.output.as_deref(), Some("done: a quick job"));
    assert!(handovers(&requests[1]).is_empty());
    let handed = handovers(&requests[2]);
    assert_eq!(handed.len(), 1, "{handed:?}");
    assert!(
        handed[0].contains(&format!("<task id=\"{id}\"")),
        "{handed:?}"
    );
    assert!(handed[0].contains("done: a quick job"));
    assert_eq!(output.report.tasks[0].status, TaskStatus::Completed);
    assert_eq!(runtime.registry().stats().undelivered, 0);
}

#[tokio::test(start_paused = true)]
async fn stopping_a_child_cancels_its_own_background_grandchild_and_its_calls() {
    // The lead takes 1 s a turn: the middle agent and its grandchild have
    // started long before the stop.
    let lead = FnProvider::new(
        "lead",
        Duration::from_secs(1),
        |request| match assistant_turns(request) {
            0 => call_tools(request, vec![background_spawn("middle", "coordinate")]),
            1 => {
                let id = spawned_ids(request).pop().unwrap();
                call_tools(request, vec![("stop_task", json!({ "task_id": id }))])
            }
            _ => answer("stopped"),
        },
    );
    let middle = FnProvider::new("middle", Duration::ZERO, |request| {
        match assistant_turns(request) {
            0 => call_tools(request, vec![background_spawn("worker", "deep dive")]),
            1 => {
                let id = spawned_ids(request).pop().unwrap();
                call_tools(request, vec![wait_for(id)])
            }
            _ => answer("middle done"),
        }
    });
    let worker = worker(Duration::from_secs(60));
    let runtime = Runtime::builder()
        .agent(
            agent("lead", lead.clone())
                .subagents(["middle"])
                .build()
                .unwrap(),
        )
        .agent(
            agent("middle", middle.clone())
                .subagents(["worker"])
                .build()
                .unwrap(),
        )
        .agent(agent("worker", worker.clone()).build().unwrap())
        .build()
        .unwrap();

    let output = runtime.run("lead", "start and stop").await.unwrap();

    let requests = lead.requests();
    let (name, stop, is_error) = last_results(&requests[2]).remove(0);
    assert_eq!(name, "stop_task");
    assert!(!is_error, "{stop}");
    assert_eq!(stop["stopped"], true);
    assert_eq!(stop["was"], "running");
    assert!(
        stop["message"]
            .as_str()
            .unwrap()
            .contains("with every sub-agent it started")
    );
    let middle_id = id_of(&stop);

    let tasks = &output.report.tasks;
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    let grandchild = tasks.iter().find(|task| &*task.agent == "worker").unwrap();
    assert_eq!(grandchild.parent_id, Some(middle_id));
    assert_eq!(grandchild.depth, 2);
    for task in tasks {
        assert_eq!(task.status, TaskStatus::Cancelled, "{task:?}");
        assert_eq!(
            runtime.registry().get(task.id).unwrap().status,
            TaskStatus::Cancelled
        );
    }
    let stats = runtime.registry().stats();
    assert_eq!(stats.slots_in_use, 0);
    // The grandchild's end has nobody to go to (its parent was stopped), so
    // it is not left waiting as an unread result.
    assert_eq!(stats.undelivered, 0);

    // The grandchild's call had started before the stop; none comes after,
    // and the one under way is never answered.
    assert_eq!(worker.calls(), 1);
    assert_eq!(middle.calls(), 2);
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(worker.calls(), 1);
    assert!(worker.requests().is_empty());
    assert_eq!(middle.calls(), 2);
    for request in &requests {
        assert!(handovers(request).is_empty(), "{:?}", handovers(request));
    }
}

// ----- get_task_result -----------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_wait_that_times_out_returns_running_after_its_timeout_and_consumes_nothing() {
    let seen_at: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let clock = seen_at.clone();
    let lead = FnProvider::new("lead", Duration::ZERO, move |request| {
        clock.lock().push(Instant::now());
        match assistant_turns(request) {
            0 => call_tools(request, vec![background_spawn("worker", "slow job")]),
            1 => {
                let id = spawned_ids(request).pop().unwrap();
                call_tools(
                    request,
                    vec![(
                        "get_task_result",
                        json!({"task_id": id, "wait": true, "timeout_ms": 100}),
                    )],
                )
            }
            2 => call_tools(request, vec![("sleep", json!({"ms": 6_000}))]),
            _ => answer("done"),
        }
    });
    let runtime = Runtime::builder()
        .agent(
            agent("lead", lead.clone())
                .subagents(["worker"])
                .tool(sleep_tool())
                .build()
                .unwrap(),
        )
        .agent(
            agent("worker", worker(Duration::from_secs(5)))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();

    let output = runtime.run("lead", "wait briefly").await.unwrap();

    let requests = lead.requests();
    assert_eq!(requests.len(), 4);
    let (name, got, is_error) = last_results(&requests[2]).remove(0);
    assert_eq!(name, "get_task_result");
    assert!(!is_error, "{got}");
    let id = id_of(&got);
    assert_eq!(got["status"], "running");
    assert!(
        got.get("result").is_none() && got.get("usage").is_none(),
        "{got}"
    );
    assert_eq!(
        got["note"],
        "still running after waiting 100 ms; wait again, or keep working: its result is handed to you when it finishes"
    );
    // The wait took the 100 ms asked for, not the 5 s the task needs.
    let seen_at = seen_at.lock().clone();
    let waited = seen_at[2] - seen_at[1];
    assert!(
        waited >= Duration::from_millis(100) && waited < Duration::from_millis(120),
        "{waited:?}"
    );

    // The result came later, handed over exactly once, and never through
    // get_task_result.
    let last = requests.last().unwrap();
    let blocks: Vec<String> = handovers(last)
        .into_iter()
        .filter(|text| text.contains(&format!("<task id=\"{id}\"")))
        .collect();
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    assert!(blocks[0].contains("done: slow job"));
    assert!(handovers(&requests[2]).is_empty());
    let completed_reads = last
        .messages
        .iter()
        .filter(|message| {
            matches!(message, Message::Tool { name, content, .. }
                if name == "get_task_result" && content.contains("\"completed\""))
        })
        .count();
    assert_eq!(completed_reads, 0);
    assert_eq!(output.report.tasks[0].status, TaskStatus::Completed);
    assert_eq!(runtime.registry().stats().undelivered, 0);
}

// ----- bad input -------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn bad_task_tool_calls_are_tool_errors_that_change_nothing() {
    let foreign: Arc<Mutex<String>> = Arc::default();
    let unknown = TaskId::new_random().to_string();
    let lead = {
        let foreign = foreign.clone();
        let unknown = unknown.clone();
        FnProvider::new("lead", Duration::ZERO, move |request| {
            if assistant_turns(request) > 0 {
                return answer("gave up");
            }
            let foreign = foreign.lock().clone();
            call_tools(
                request,
                vec![
                    ("spawn_agent", json!({"agent": "worker"})),
                    ("spawn_agent", json!({"agent": "worker", "task": "   "})),
                    ("spawn_agent", json!({"agent": "nobody", "task": "x"})),
                    (
                        "spawn_agent",
                        json!({"agent": "worker", "task": "x", "background": "yes"}),
                    ),
                    (
                        "spawn_agent",
                        json!({"agent": "worker", "task": "x", "priority": 9}),
                    ),
                    ("get_task_result", json!({"task_id": "task-7"})),
                    ("get_task_result", json!({ "task_id": unknown })),
                    ("get_task_result", json!({ "task_id": foreign })),
                    ("stop_task", json!({ "task_id": foreign })),
                    ("list_tasks", json!({"status": "done"})),
                ],
            )
        })
    };
    // Another run on the same runtime: its lead spawns a long background
    // worker and waits for it.
    let other = spawn_then(Duration::ZERO, "foreign work", |id| vec![wait_for(id)]);
    let worker = worker(Duration::from_secs(60));
    let runtime = Runtime::builder()
        .agent(
            agent("lead", lead.clone())
                .subagents(["worker"])
                .build()
                .unwrap(),
        )
        .agent(
            agent("other", other.clone())
                .subagents(["worker"])
                .build()
                .unwrap(),
        )
        .agent(agent("worker", worker.clone()).build().unwrap())
        .build()
        .unwrap();

    let other_run = runtime.start("other", "work on your own").unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let foreign_task = runtime
        .registry()
        .list(&TaskFilter::all().agent("worker"))
        .pop()
        .unwrap();
    assert_eq!(foreign_task.status, TaskStatus::Running);
    *foreign.lock() = foreign_task.id.to_string();
    let before = runtime.registry().stats();

    let output = runtime.run("lead", "misuse the tools").await.unwrap();

    let after = runtime.registry().stats();
    // Only the run itself was added.
    assert_eq!(after.spawned, before.spawned + 1);
    assert_eq!(after.tracked, before.tracked + 1);
    assert_eq!(after.refused, before.refused);
    assert!(output.report.tasks.is_empty());

    let results = last_results(&lead.requests()[1]);
    assert_eq!(results.len(), 10);
    for (name, value, is_error) in &results {
        assert!(is_error, "{name} should have failed: {value}");
    }
    let text = |index: usize| results[index].1.as_str().unwrap().to_owned();
    assert!(
        text(0).starts_with("invalid arguments: spawn_agent: missing field `task`"),
        "{}",
        text(0)
    );
    assert_eq!(
        text(1),
        "invalid arguments: spawn_agent: `task` is empty; describe the work for the sub-agent"
    );
    assert_eq!(
        text(2),
        "Cannot start sub-agent: unknown agent `nobody`: available agents are worker."
    );
    assert!(
        text(3).starts_with(
            "invalid arguments: spawn_agent: invalid type: string \"yes\", expected a boolean"
        ),
        "{}",
        text(3)
    );
    assert!(
        text(4).starts_with("invalid arguments: spawn_agent: unknown field `priority`"),
        "{}",
        text(4)
    );
    assert!(
        text(5).starts_with("invalid arguments: `task-7` is not a task id"),
        "{}",
        text(5)
    );
    assert!(
        text(6).starts_with(&format!("task {unknown} not found")),
        "{}",
        text(6)
    );
    let not_yours = format!(
        "task {} is not one of yours: you can only read and stop tasks you started",
        foreign_task.id
    );
    assert!(text(7).starts_with(&not_yours), "{}", text(7));
    assert!(text(8).starts_with(&not_yours), "{}", text(8));
    assert_eq!(
        text(9),
        "invalid arguments: list_tasks: unknown task status `done`: expected one of queued, running, completed, failed, cancelled"
    );

    // The foreign task still runs, its result unread, and its own run gets it.
    let still = runtime.registry().get(foreign_task.id).unwrap();
    assert_eq!(still.status, TaskStatus::Running);
    assert!(!still.delivered);
    let other_output = other_run.finish().await.unwrap();
    assert_eq!(other_output.report.tasks.len(), 1);
    assert_eq!(other_output.report.tasks[0].status, TaskStatus::Completed);
    let (_, read, _) = last_results(&other.requests()[2]).remove(0);
    assert_eq!(read["status"], "completed");
    assert_eq!(read["result"], "done: foreign work");
}

// ----- list_tasks ------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn list_tasks_shows_only_the_callers_own_children_with_a_working_status_filter() {
    let long_task = format!(
        "slow survey\n{}",
        "of every crate in the workspace, one by one, ".repeat(3)
    );
    assert!(long_task.chars().count() > 80);
    let lead = {
        let long_task = long_task.clone();
        FnProvider::new(
            "lead",
            Duration::ZERO,
            move |request| match assistant_turns(request) {
                0 => call_tools(
                    request,
                    vec![
                        background_spawn("worker", "quick check"),
                        background_spawn("worker", &long_task),
                        background_spawn("middle", "coordinate"),
                    ],
                ),
                1 => call_tools(request, vec![("sleep", json!({"ms": 1_000}))]),
                2 => call_tools(
                    request,
                    vec![
                        ("list_tasks", json!({})),
                        ("list_tasks", json!({"status": "running"})),
                        ("list_tasks", json!({"status": "completed"})),
                        ("list_tasks", json!({"status": "queued"})),
                    ],
                ),
                _ => answer("listed"),
            },
        )
    };
    let middle = FnProvider::new("middle", Duration::ZERO, |request| {
        match assistant_turns(request) {
            0 => call_tools(request, vec![background_spawn("worker", "slow grandchild")]),
            1 => call_tools(request, vec![("list_tasks", json!({}))]),
            _ => answer("middle done"),
        }
    });
    // Workers whose task says "slow" sleep for a minute first.
    let worker = FnProvider::new("worker", Duration::ZERO, |request| {
        let task = prompt(request);
        if assistant_turns(request) == 0 && task.contains("slow") {
            return call_tools(request, vec![("sleep", json!({"ms": 60_000}))]);
        }
        answer(format!("done: {task}"))
    });
    let runtime = Runtime::builder()
        .agent(
            agent("lead", lead.clone())
                .subagents(["worker", "middle"])
                .tool(sleep_tool())
                .build()
                .unwrap(),
        )
        .agent(
            agent("middle", middle.clone())
                .subagents(["worker"])
                .build()
                .unwrap(),
        )
        .agent(agent("worker", worker).tool(sleep_tool()).build().unwrap())
        .build()
        .unwrap();

    let output = runtime.run("lead", "list your tasks").await.unwrap();
    assert_eq!(output.report.tasks.len(), 4);

    // The middle agent sees its own child only.
    let middle_requests = middle.requests();
    let grandchild = spawned_ids(&middle_requests[1]).pop().unwrap();
    let (_, own, is_error) = last_results(&middle_requests[2]).remove(0);
    assert!(!is_error, "{own}");
    assert_eq!(own["count"], 1);
    let entry = &own["tasks"][0];
    assert_eq!(entry["task_id"], grandchild.as_str());
    assert_eq!(entry["agent"], "worker");
    assert_eq!(entry["status"], "running");
    assert_eq!(entry["task"], "slow grandchild");
    assert!(entry["elapsed_ms"].is_u64());
    assert!(entry.get("result_delivered").is_none(), "{entry}");

    // The lead sees its three children, in spawn order, and no grandchild.
    let lead_requests = lead.requests();
    let spawned = spawned_ids(&lead_requests[1]);
    assert_eq!(spawned.len(), 3);
    let lists = last_results(&lead_requests[3]);
    let ids = |list: &Value| -> Vec<String> {
        list["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|task| task["task_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = &lists[0].1;
    assert_eq!(all["count"], 3);
    assert_eq!(ids(all), spawned);
    assert!(!ids(all).contains(&grandchild));
    let tasks = all["tasks"].as_array().unwrap();
    for task in tasks {
        for field in ["task_id", "agent", "status", "elapsed_ms", "task"] {
            assert!(task.get(field).is_some(), "{field} missing in {task}");
        }
    }
    assert_eq!(tasks[0]["agent"], "worker");
    assert_eq!(tasks[0]["status"], "completed");
    assert_eq!(tasks[0]["task"], "quick check");
    assert_eq!(tasks[0]["result_delivered"], true);
    let preview: String = long_task
        .chars()
        .take(80)
        .collect::<String>()
        .replace('\n', " ")
        + "…";
    assert_eq!(tasks[1]["task"], preview.as_str());
    assert_eq!(tasks[1]["status"], "running");
    let elapsed = tasks[1]["elapsed_ms"].as_u64().unwrap();
    assert!((1_000..1_020).contains(&elapsed), "{elapsed}");
    assert_eq!(tasks[2]["agent"], "middle");
    assert_eq!(tasks[2]["status"], "running");
    assert!(tasks[2].get("result_delivered").is_none());

    let running = &lists[1].1;
    assert_eq!(ids(running), spawned[1..].to_vec());
    let completed = &lists[2].1;
    assert_eq!(ids(completed), spawned[..1].to_vec());
    let queued = &lists[3].1;
    assert_eq!(queued["count"], 0);
    assert!(lists.iter().all(|(_, _, is_error)| !is_error));
}

// ----- spawn_agent -----------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn auto_or_no_agent_picks_an_allowed_sub_agent_and_others_are_refused() {
    let lead = FnProvider::new("lead", Duration::ZERO, |request| {
        match assistant_turns(request) {
            0 => call_tools(
                request,
                vec![
                    background_spawn("auto", "first"),
                    ("spawn_agent", json!({"task": "second", "background": true})),
                    ("spawn_agent", json!({"task": "third"})),
                    background_spawn("gamma", "fourth"),
                ],
            ),
            _ => answer("done"),
        }
    });
    let named = |name: &'static str| {
        FnProvider::new(name, Duration::from_millis(50), move |_| {
            answer(format!("{name} did it"))
        })
    };
    let (alpha, beta, gamma) = (named("alpha"), named("beta"), named("gamma"));
    let runtime = Runtime::builder()
        .agent(
            agent("lead", lead.clone())
                .subagents(["alpha", "beta"])
                .build()
                .unwrap(),
        )
        .agent(agent("alpha", alpha.clone()).build().unwrap())
        .agent(agent("beta", beta.clone()).build().unwrap())
        .agent(agent("gamma", gamma.clone()).build().unwrap())
        .build()
        .unwrap();

    let output = runtime.run("lead", "delegate").await.unwrap();

    let requests = lead.requests();
    let spawn_spec = requests[0]
        .tools
        .iter()
        .find(|tool| tool.name == "spawn_agent")
        .unwrap();
    assert_eq!(
        spawn_spec.parameters["properties"]["agent"]["enum"],
        json!(["auto", "alpha", "beta"])
    );

    let results = last_results(&requests[1]);
    assert_eq!(results.len(), 4);
    let allowed: HashSet<&str> = ["alpha", "beta"].into();
    for (_, value, is_error) in &results[..2] {
        assert!(!is_error, "{value}");
        assert!(
            allowed.contains(value["agent"].as_str().unwrap()),
            "{value}"
        );
    }
    // In the foreground, the picked agent's answer is the result.
    let (_, foreground, is_error) = &results[2];
    assert!(!is_error, "{foreground}");
    assert_eq!(foreground["status"], "completed");
    let picked = foreground["agent"].as_str().unwrap();
    assert!(allowed.contains(picked));
    assert_eq!(foreground["result"], format!("{picked} did it"));
    let (_, refused, is_error) = &results[3];
    assert!(is_error);
    assert_eq!(
        refused,
        "Cannot start background agent: unknown agent `gamma`: available agents are alpha, beta."
    );

    assert_eq!(gamma.calls(), 0);
    assert_eq!(alpha.calls() + beta.calls(), 3);
    assert_eq!(output.report.tasks.len(), 3);
    for task in &output.report.tasks {
        assert!(allowed.contains(&*task.agent), "{task:?}");
        assert_eq!(task.status, TaskStatus::Completed);
    }
}

#[tokio::test(start_paused = true)]
async fn a_foreground_spawn_returns_the_answer_and_a_failing_one_is_a_tool_error() {
    let lead = FnProvider::new("lead", Duration::ZERO, |request| {
        match assistant_turns(request) {
            0 => call_tools(
                request,
                vec![(
                    "spawn_agent",
                    json!({"agent": "worker", "task": "summarise the notes"}),
                )],
            ),
            1 => call_tools(
                request,
                vec![(
                    "spawn_agent",
                    json!({"agent": "broken", "task": "try this", "background": false}),
                )],
            ),
            _ => answer("done"),
        }
    });
    let broken = FnProvider::new("broken", Duration::from_millis(20), |_| {
        provider_error(ErrorKind::Overloaded, "the model is overloaded")
    });
    let runtime = Runtime::builder()
        .agent(
            agent("lead", lead.clone())
                .subagents(["worker", "broken"])
                .build()
                .unwrap(),
        )
        .agent(
            agent("worker", worker(Duration::from_millis(300)))
                .build()
                .unwrap(),
        )
        .agent(agent("broken", broken).build().unwrap())
        .build()
        .unwrap();

    let started = Instant::now();
    let output = runtime
        .run("lead", "delegate in the foreground")
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(320));

    let requests = lead.requests();
    assert_eq!(requests.len(), 3);
    let (_, done, is_error) = last_results(&requests[1]).remove(0);
    assert!(!is_error, "{done}");
    assert_eq!(done["status"], "completed");
    assert_eq!(done["agent"], "worker");
    assert_eq!(done["result"], "done: summarise the notes");
    assert_eq!(done["usage"]["input_tokens"], 10);
    assert_eq!(done["usage"]["output_tokens"], 5);

    let (_, failed, is_error) = last_results(&requests[2]).remove(0);
    assert!(is_error, "{failed}");
    let failed = failed.as_str().unwrap();
    let broken_task = output
        .report
        .tasks
        .iter()
        .find(|task| &*task.agent == "broken")
        .unwrap();
    assert_eq!(
        failed,
        format!(
            "Sub-agent `broken` (task {}) failed (provider): provider `test`: overloaded: the model is overloaded.",
            broken_task.id
        )
    );
    assert_eq!(broken_task.status, TaskStatus::Failed);
    assert_eq!(
        broken_task.failure.as_ref().map(|failure| failure.kind),
        Some(FailureKind::Provider)
    );
    assert!(!broken_task.background);
    // Foreground results are the tool's answer, never handed over again.
    for request in &requests {
        assert!(handovers(request).is_empty(), "{:?}", handovers(request));
    }
    assert_eq!(output.answer, "done");
    assert_eq!(runtime.registry().stats().undelivered, 0);
}
