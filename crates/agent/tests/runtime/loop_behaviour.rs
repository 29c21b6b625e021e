//! The tool-calling loop itself: concurrent tool calls, bad calls, cut
//! output, max_turns, cancellation, the event stream and hook context.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deputy_agent::{RunError, RunEvent, Runtime, SPAWN_AGENT, ToolError};
use deputy_providers::{ChatRequest, ChatResponse, FinishReason, Message, ToolArguments, ToolCall};
use deputy_registry::{
    HookError, HookStack, StartDecision, SubagentStartEvent, SubagentStartHook, TaskFilter, TaskId,
    TaskStatus,
};
use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::common::*;

/// A turn that calls tools with calls built by hand.
fn tool_turn(calls: Vec<ToolCall>) -> Result<ChatResponse, deputy_providers::ProviderError> {
    Ok(ChatResponse {
        text: String::new(),
        tool_calls: calls,
        finish: FinishReason::ToolCalls,
        usage: usage(),
        model: "test-model".to_owned(),
        signature: None,
    })
}

/// The tool messages right after the last assistant turn, as (call id,
/// content, is_error).
fn tool_messages(request: &ChatRequest) -> Vec<(String, String, bool)> {
    let after = request
        .messages
        .iter()
        .rposition(|message| matches!(message, Message::Assistant { .. }))
        .map_or(0, |at| at + 1);
    request.messages[after..]
        .iter()
        .map(|message| match message {
            Message::Tool {
                call_id,
                content,
                is_error,
                ..
            } => (call_id.clone(), content.clone(), *is_error),
            other => panic!("expected only tool results after the turn: {other:?}"),
        })
        .collect()
}

/// One agent `solo` with `tools` whose model makes the calls `first_turn`
/// returns, then answers "finished".
fn one_turn_runtime(
    tools: Vec<Arc<FnTool>>,
    first_turn: impl Fn(&ChatRequest) -> Result<ChatResponse, deputy_providers::ProviderError>
    + Send
    + Sync
    + 'static,
) -> (Arc<FnProvider>, Runtime) {
    let provider = FnProvider::new(
        "solo",
        Duration::ZERO,
        move |request| match assistant_turns(request) {
            0 => first_turn(request),
            _ => answer("finished"),
        },
    );
    let mut builder = agent("solo", provider.clone());
    for tool in tools {
        builder = builder.tool(tool);
    }
    let runtime = Runtime::builder()
        .agent(builder.build().unwrap())
        .build()
        .unwrap();
    (provider, runtime)
}

// ----- concurrency ---------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn the_tool_calls_of_one_turn_run_concurrently_and_their_results_keep_the_call_order() {
    let nap = FnTool::new("nap", |arguments| {
        Ok(format!("{} rested", arguments["label"].as_str().unwrap()))
    });
    // The first call sleeps longest, so the calls finish in reverse order.
    let (provider, runtime) = one_turn_runtime(vec![nap.clone()], |request| {
        call_tools(
            request,
            vec![
                ("nap", json!({"label": "a", "sleep_ms": 1000})),
                ("nap", json!({"label": "b", "sleep_ms": 900})),
                ("nap", json!({"label": "c", "sleep_ms": 800})),
            ],
        )
    });

    let started = Instant::now();
    let output = runtime.run("solo", "rest three times").await.unwrap();
    let elapsed = started.elapsed();

    // One second (the longest nap), not 2.7 s: provider latency is zero.
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_millis(1100),
        "{elapsed:?}"
    );
    assert_eq!(nap.calls(), 3);
    let starts = nap.started.lock().clone();
    assert!(
        starts.iter().all(|at| *at == starts[0]),
        "all three started together"
    );

    let requests = provider.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        tool_messages(&requests[1]),
        [
            ("call-0-0".to_owned(), "a rested".to_owned(), false),
            ("call-0-1".to_owned(), "b rested".to_owned(), false),
            ("call-0-2".to_owned(), "c rested".to_owned(), false),
        ]
    );
    assert_eq!(output.answer, "finished");
}

// ----- bad calls -----------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn malformed_arguments_get_an_error_result_saying_the_json_did_not_parse_and_the_loop_goes_on()
 {
    let echo = FnTool::echo();
    let (provider, runtime) = one_turn_runtime(vec![echo.clone()], |_| {
        tool_turn(vec![ToolCall {
            id: "bad-1".to_owned(),
            name: "echo".to_owned(),
            arguments: ToolArguments::Malformed {
                raw: r#"{"text": "hi""#.to_owned(),
                error: "EOF while parsing an object at line 1 column 13".to_owned(),
            },
            signature: None,
        }])
    });

    let events = collect_events(runtime.start("solo", "echo hi").unwrap()).await;

    assert_eq!(echo.calls(), 0, "a call with broken arguments is not run");
    let requests = provider.requests();
    assert_eq!(requests.len(), 2);
    let results = tool_messages(&requests[1]);
    assert_eq!(results.len(), 1);
    let (call_id, content, is_error) = &results[0];
    assert_eq!(call_id, "bad-1");
    assert!(is_error);
    assert!(
        content.contains("invalid arguments for `echo`"),
        "{content}"
    );
    assert!(content.contains("not valid JSON"), "{content}");
    assert!(
        content.contains("EOF while parsing an object at line 1 column 13"),
        "{content}"
    );
    // The event shows what the model wrote.
    assert!(events.iter().any(|event| matches!(
        event,
        RunEvent::ToolCallStarted { call_id, arguments, .. }
            if call_id == "bad-1" && *arguments == Value::String(r#"{"text": "hi""#.to_owned())
    )));
    let Some(RunEvent::Done { answer, .. }) = events.last() else {
        panic!("no Done: {:?}", events.last());
    };
    assert_eq!(answer, "finished");
}

#[tokio::test(start_paused = true)]
async fn an_unknown_tool_gets_an_error_listing_the_available_tools() {
    let echo = FnTool::echo();
    let nap = FnTool::new("nap", |_| Ok("rested".to_owned()));
    let (provider, runtime) = one_turn_runtime(vec![echo.clone(), nap.clone()], |request| {
        call_tools(request, vec![("teleport", json!({"to": "mars"}))])
    });

    let output = runtime.run("solo", "go to mars").await.unwrap();

    let results = tool_messages(&provider.requests()[1]);
    assert_eq!(
        results,
        [(
            "call-0-0".to_owned(),
            "unknown tool `teleport`; the tools you can call are echo, nap".to_owned(),
            true
        )]
    );
    assert_eq!(echo.calls() + nap.calls(), 0);
    assert_eq!(output.answer, "finished");
}

#[tokio::test(start_paused = true)]
async fn a_tool_error_reaches_the_model_as_an_error_result_with_its_message() {
    let flaky = FnTool::new("flaky", |_| Err(ToolError::new("disk full: cannot write")));
    let strict = FnTool::new("strict", |_| {
        Err(ToolError::invalid_arguments("`path` must be absolute"))
    });
    let (provider, runtime) = one_turn_runtime(vec![flaky.clone(), strict.clone()], |request| {
        call_tools(
            request,
            vec![("flaky", json!({})), ("strict", json!({"path": "x"}))],
        )
    });

    let events = collect_events(runtime.start("solo", "write it").unwrap()).await;

    let results = tool_messages(&provider.requests()[1]);
    assert_eq!(
        results,
        [
            (
                "call-0-0".to_owned(),
                "disk full: cannot write".to_owned(),
                true
            ),
            (
                "call-0-1".to_owned(),
                "invalid arguments: `path` must be absolute".to_owned(),
                true
            ),
        ]
    );
    assert_eq!(
        count(&events, |event| matches!(
            event,
            RunEvent::ToolResult { is_error: true, .. }
        )),
        2
    );
    assert!(matches!(events.last(), Some(RunEvent::Done { answer, .. }) if answer == "finished"));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_tool_gives_an_error_result_and_the_run_still_completes() {
    let boom = FnTool::new("boom", |_| panic!("kaboom"));
    let echo = FnTool::echo();
    let (provider, runtime) = one_turn_runtime(vec![boom.clone(), echo.clone()], |request| {
        call_tools(
            request,
            vec![("boom", json!({})), ("echo", json!({"text": "still here"}))],
        )
    });

    let output = runtime.run("solo", "try it").await.unwrap();

    assert_eq!(boom.calls(), 1);
    let results = tool_messages(&provider.requests()[1]);
    assert_eq!(results.len(), 2);
    let (_, content, is_error) = &results[0];
    assert!(is_error);
    assert!(
        content.contains("tool `boom` crashed (kaboom)"),
        "{content}"
    );
    // The other call of the same turn is unharmed.
    assert_eq!(
        results[1],
        ("call-0-1".to_owned(), "still here".to_owned(), false)
    );
    assert_eq!(output.answer, "finished");
    let root = runtime.registry().get(output.report.run_id).unwrap();
    assert_eq!(root.status, TaskStatus::Completed);
}

// ----- output cut ----------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn tool_output_over_max_tool_output_chars_is_cut_with_a_note() {
    let dump = FnTool::new("dump", |_| Ok("é".repeat(5_000)));
    let echo = FnTool::echo();
    let provider = FnProvider::new("solo", Duration::ZERO, |request| {
        match assistant_turns(request) {
            0 => call_tools(
                request,
                vec![("dump", json!({})), ("echo", json!({"text": "short"}))],
            ),
            _ => answer("read it"),
        }
    });
    let runtime = Runtime::builder()
        .max_tool_output_chars(300)
        .agent(
            agent("solo", provider.clone())
                .tool(dump)
                .tool(echo)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();

    let events = collect_events(runtime.start("solo", "dump it").unwrap()).await;

    let expected = format!(
        "{}\n[output cut: showing the first 300 of 5000 characters]",
        "é".repeat(300)
    );
    let results = tool_messages(&provider.requests()[1]);
    assert_eq!(results[0].1, expected);
    assert!(!results[0].2, "a cut output is not an error");
    assert_eq!(results[1].1, "short", "short output is left alone");
    assert!(events.iter().any(|event| matches!(
        event,
        RunEvent::ToolResult { name, content, .. } if name == "dump" && *content == expected
    )));
}

// ----- max_turns -----------------------------------------------------------

/// The last user message of a request.
fn last_user_message(request: &ChatRequest) -> String {
    request
        .messages
        .iter()
        .rev()
        .find_map(|message| match message {
            Message::User { content } => Some(content.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn max_turns_runtime(last_text: &'static str) -> (Arc<FnProvider>, Arc<FnTool>, Runtime) {
    let provider = FnProvider::new("solo", Duration::ZERO, move |request| {
        let mut turn = call_tools(request, vec![("echo", json!({"text": "again"}))])?;
        if last_user_message(request).contains("used all") {
            turn.text = last_text.to_owned();
        }
        Ok(turn)
    });
    let echo = FnTool::echo();
    let runtime = Runtime::builder()
        .agent(
            agent("solo", provider.clone())
                .tool(echo.clone())
                .max_turns(2)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    (provider, echo, runtime)
}

#[tokio::test(start_paused = true)]
async fn after_max_turns_one_last_call_is_told_to_answer_and_its_text_is_the_answer() {
    let (provider, echo, runtime) = max_turns_runtime("best effort");

    let output = runtime.run("solo", "loop forever").await.unwrap();

    let requests = provider.requests();
    assert_eq!(requests.len(), 3, "two turns and one last call");
    assert_eq!(echo.calls(), 2, "the last call's tool calls are not run");
    let last = requests.last().unwrap();
    assert_eq!(
        last.messages.last().unwrap(),
        &Message::user(
            "[last turn] You have used all 2 of your turns. Tools are no longer run: answer now, with what you have."
        )
    );
    assert!(
        !last.tools.is_empty(),
        "tool definitions stay in the request"
    );
    for request in &requests[..2] {
        assert!(!last_user_message(request).contains("used all"));
    }
    assert_eq!(output.answer, "best effort");
    assert_eq!(output.report.turns, 3);
}

#[tokio::test(start_paused = true)]
async fn after_max_turns_an_empty_last_answer_fails_the_run_naming_max_turns() {
    let (provider, echo, runtime) = max_turns_runtime("  ");

    let error = runtime.run("solo", "loop forever").await.unwrap_err();

    let RunError::Failed { failure, .. } = &error else {
        panic!("expected a failed run: {error:?}");
    };
    assert!(failure.message.contains("max_turns (2)"), "{failure}");
    assert!(
        failure.message.contains("without a final answer"),
        "{failure}"
    );
    assert_eq!(provider.calls(), 3);
    assert_eq!(echo.calls(), 2);
}

// ----- cancellation --------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn cancel_ends_a_run_at_once_and_abandons_its_provider_call() {
    let provider = FnProvider::new("slow", Duration::from_secs(10), |_| answer("too late"));
    let runtime = Runtime::builder()
        .agent(agent("solo", provider.clone()).build().unwrap())
        .build()
        .unwrap();

    let handle = runtime.start("solo", "think hard").unwrap();
    let run_id = handle.run_id();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(provider.calls(), 1);
    assert!(handle.cancel(), "the run was still going");
    assert!(!handle.cancel(), "a second cancel changes nothing");

    let cancelled_at = Instant::now();
    let error = handle.finish().await.unwrap_err();
    assert!(
        cancelled_at.elapsed() < Duration::from_millis(100),
        "{:?}",
        cancelled_at.elapsed()
    );
    assert!(matches!(error, RunError::Cancelled { .. }), "{error:?}");
    assert_eq!(
        runtime.registry().get(run_id).unwrap().status,
        TaskStatus::Cancelled
    );

    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(provider.calls(), 1, "no call started after the cancel");
    assert!(provider.requests().is_empty(), "the call never answered");
}

/// An orchestrator that starts two background workers (10 s per call) and
/// waits for the first.
fn orchestrator_with_slow_workers() -> (Arc<FnProvider>, Arc<FnProvider>, Runtime) {
    let lead = FnProvider::new("lead", Duration::ZERO, |request| {
        match assistant_turns(request) {
            0 => call_tools(
                request,
                vec![
                    background_spawn("worker", "one"),
                    background_spawn("worker", "two"),
                ],
            ),
            1 => {
                let id = spawned_ids(request).remove(0);
                call_tools(request, vec![wait_for(id)])
            }
            _ => answer("lead done"),
        }
    });
    let worker = FnProvider::new("worker", Duration::from_secs(10), |_| answer("work"));
    let runtime = Runtime::builder()
        .agent(
            agent("lead", lead.clone())
                .subagents(["worker"])
                .build()
                .unwrap(),
        )
        .agent(agent("worker", worker.clone()).build().unwrap())
        .build()
        .unwrap();
    (lead, worker, runtime)
}

fn children(runtime: &Runtime, run_id: TaskId) -> Vec<TaskStatus> {
    runtime
        .registry()
        .list(&TaskFilter::all().parent(run_id))
        .iter()
        .map(|task| task.status)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_run_cancels_its_background_children_too() {
    let (lead, worker, runtime) = orchestrator_with_slow_workers();

    let handle = runtime.start("lead", "go").unwrap();
    let run_id = handle.run_id();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(children(&runtime, run_id), [TaskStatus::Running; 2]);
    assert_eq!((lead.calls(), worker.calls()), (2, 2));
    assert!(handle.cancel());

    let cancelled_at = Instant::now();
    let error = handle.finish().await.unwrap_err();
    assert!(cancelled_at.elapsed() < Duration::from_millis(100));
    let RunError::Cancelled { report } = &error else {
        panic!("expected a cancelled run: {error:?}");
    };
    assert_eq!(report.tasks.len(), 2);

    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(children(&runtime, run_id), [TaskStatus::Cancelled; 2]);
    assert_eq!(
        (lead.calls(), worker.calls()),
        (2, 2),
        "no call started after the cancel"
    );
    assert!(
        worker.requests().is_empty(),
        "the workers' calls never answered"
    );
    let stats = runtime.registry().stats();
    assert_eq!((stats.slots_in_use, stats.running), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn the_report_of_a_cancelled_run_shows_its_children_cancelled() {
    let (_lead, _worker, runtime) = orchestrator_with_slow_workers();

    let handle = runtime.start("lead", "go").unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(handle.cancel());
    let error = handle.finish().await.unwrap_err();

    let report = error.report().unwrap();
    assert_eq!(report.count(TaskStatus::Cancelled), 2, "{:?}", report.tasks);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_run_handle_cancels_the_run_and_its_children() {
    let (lead, worker, runtime) = orchestrator_with_slow_workers();

    let handle = runtime.start("lead", "go").unwrap();
    let run_id = handle.run_id();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        runtime.registry().get(run_id).unwrap().status,
        TaskStatus::Running
    );
    drop(handle);

    assert_eq!(
        runtime.registry().get(run_id).unwrap().status,
        TaskStatus::Cancelled
    );
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(children(&runtime, run_id), [TaskStatus::Cancelled; 2]);
    assert_eq!((lead.calls(), worker.calls()), (2, 2));
    assert!(worker.requests().is_empty());
    assert_eq!(runtime.registry().stats().slots_in_use, 0);
}

// ----- events --------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_runs_events_come_in_order_and_end_with_one_done() {
    let echo = FnTool::echo();
    let (_provider, runtime) = one_turn_runtime(vec![echo], |request| {
        call_tools(request, vec![("echo", json!({"text": "ping"}))])
    });

    let mut run = runtime.start("solo", "ping it").unwrap();
    let mut events = Vec::new();
    while let Some(event) = run.next().await {
        let done = matches!(event, RunEvent::Done { .. });
        events.push(event);
        if done {
            break;
        }
    }
    assert!(run.next().await.is_none(), "the stream ends after Done");
    assert!(run.next().await.is_none());

    let position = |wanted: &dyn Fn(&RunEvent) -> bool| {
        events
            .iter()
            .position(wanted)
            .unwrap_or_else(|| panic!("missing event in {events:?}"))
    };
    let started = position(
        &|event| matches!(event, RunEvent::ToolCallStarted { call_id, name, .. } if call_id == "call-0-0" && name == "echo"),
    );
    let result = position(
        &|event| matches!(event, RunEvent::ToolResult { call_id, content, is_error: false, .. } if call_id == "call-0-0" && content == "ping"),
    );
    let delta =
        position(&|event| matches!(event, RunEvent::TextDelta { text, .. } if text == "finished"));
    let done = position(&|event| matches!(event, RunEvent::Done { .. }));
    assert!(started < result, "{events:?}");
    assert!(result < delta, "{events:?}");
    assert!(delta < done, "{events:?}");
    assert_eq!(done, events.len() - 1);
    assert_eq!(
        count(&events, |event| matches!(event, RunEvent::Done { .. })),
        1
    );
    assert_eq!(
        count(&events, |event| matches!(event, RunEvent::Failed { .. })),
        0
    );
    let text: String = events
        .iter()
        .filter_map(|event| match event {
            RunEvent::TextDelta { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    let RunEvent::Done { answer, report } = &events[done] else {
        unreachable!()
    };
    assert_eq!(text, *answer);
    assert_eq!(answer, "finished");
    assert_eq!(report.turns, 2);
}

// ----- hooks ---------------------------------------------------------------

/// Adds a line naming the agent to every sub-agent's context.
#[derive(Debug)]
struct Codename;

#[async_trait]
impl SubagentStartHook for Codename {
    async fn on_subagent_start(
        &self,
        event: &SubagentStartEvent,
    ) -> Result<StartDecision, HookError> {
        Ok(StartDecision::AddContext(format!(
            "Project codename: Bluebird (for {}).",
            event.task.agent
        )))
    }
}

#[tokio::test(start_paused = true)]
async fn context_from_a_subagent_start_hook_reaches_the_sub_agents_system_message() {
    let lead = FnProvider::new("lead", Duration::ZERO, |request| {
        match assistant_turns(request) {
            0 => call_tools(
                request,
                vec![
                    (SPAWN_AGENT, json!({"agent": "researcher", "task": "dig"})),
                    (SPAWN_AGENT, json!({"agent": "plain", "task": "dig too"})),
                ],
            ),
            _ => answer("lead done"),
        }
    });
    let researcher = FnProvider::new("researcher", Duration::ZERO, |_| answer("notes"));
    let plain = FnProvider::new("plain", Duration::ZERO, |_| answer("more notes"));
    let runtime = Runtime::builder()
        .hooks(HookStack::new().with_start(Arc::new(Codename)))
        .agent(
            agent("lead", lead.clone())
                .system_prompt("You lead.")
                .subagents(["researcher", "plain"])
                .build()
                .unwrap(),
        )
        .agent(
            agent("researcher", researcher.clone())
                .system_prompt("You research.")
                .build()
                .unwrap(),
        )
        .agent(agent("plain", plain.clone()).build().unwrap())
        .build()
        .unwrap();

    let output = runtime.run("lead", "go").await.unwrap();

    assert_eq!(
        researcher.requests()[0].messages[..2],
        [
            Message::system("You research.\n\nProject codename: Bluebird (for researcher)."),
            Message::user("dig"),
        ]
    );
    // Without a system prompt of its own, the context is the system message.
    assert_eq!(
        plain.requests()[0].messages[0],
        Message::system("Project codename: Bluebird (for plain).")
    );
    // The root run is no sub-agent: no hook ran for it.
    assert_eq!(lead.requests()[0].messages[0], Message::system("You lead."));
    assert_eq!(output.report.count(TaskStatus::Completed), 2);
}
