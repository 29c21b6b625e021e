//! Every background result reaches the model exactly once: handed over
//! before the next provider call, or read with `get_task_result`, never
//! both, never dropped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use deputy_agent::{OnFinish, Runtime};
use deputy_providers::{ChatRequest, ErrorKind, Message, TASK_RESULTS_HEADER};
use deputy_registry::{TaskFilter, TaskId, TaskStatus};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::common::*;

/// One `<task ...>` block of a handover message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Block {
    id: String,
    agent: String,
    status: String,
    duration: String,
    input_tokens: String,
    output_tokens: String,
    body: String,
}

fn blocks(handover: &str) -> Vec<Block> {
    assert!(handover.starts_with(TASK_RESULTS_HEADER), "{handover}");
    handover
        .split("<task id=\"")
        .skip(1)
        .map(|chunk| {
            let (head, rest) = chunk.split_once(">\n").unwrap();
            let body = rest.rsplit_once("\n</task>").unwrap().0.to_owned();
            let attribute = |name: &str| {
                let marker = format!("{name}=\"");
                let start = head.find(&marker).unwrap() + marker.len();
                let end = head[start..].find('"').unwrap();
                head[start..start + end].to_owned()
            };
            Block {
                id: head[..head.find('"').unwrap()].to_owned(),
                agent: attribute("agent"),
                status: attribute("status"),
                duration: attribute("duration"),
                input_tokens: attribute("input_tokens"),
                output_tokens: attribute("output_tokens"),
                body,
            }
        })
        .collect()
}

/// Cancels, after `after`, every task of `agent` from outside the run.
fn cancel_later(runtime: &Runtime, agent: &'static str, after: Duration) {
    let registry = runtime.registry().clone();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        for task in registry.list(&TaskFilter::all().agent(agent)) {
            registry.cancel(task.id).unwrap();
        }
    });
}

// ----- handing over ----------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn results_finished_while_the_lead_is_busy_are_handed_over_once_before_its_next_call() {
    let lead = FnProvider::new("lead", Duration::ZERO, |request| {
        match assistant_turns(request) {
            0 => call_tools(
                request,
                vec![
                    background_spawn("worker", "alpha"),
                    background_spawn("broken", "beta"),
                    background_spawn("slowpoke", "gamma"),
                ],
            ),
            1 => call_tools(request, vec![("sleep", json!({"ms": 1_000}))]),
            _ => answer("done"),
        }
    });
    let broken = FnProvider::new("broken", Duration::from_millis(100), |_| {
        provider_error(ErrorKind::Server, "boom")
    });
    let runtime = Runtime::builder()
        .agent(
            agent("lead", lead.clone())
                .subagents(["worker", "broken", "slowpoke"])
                .tool(sleep_tool())
                .build()
                .unwrap(),
        )
        .agent(
            agent("worker", worker(Duration::from_millis(200)))
                .build()
                .unwrap(),
        )
        .agent(agent("broken", broken).build().unwrap())
        .agent(
            agent("slowpoke", worker(Duration::from_secs(60)))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();

    // Someone else stops the slow one at 500 ms, while the lead sleeps.
    cancel_later(&runtime, "slowpoke", Duration::from_millis(500));
    let output = runtime.run("lead", "delegate, then sleep").await.unwrap();

    let requests = lead.requests();
    assert_eq!(requests.len(), 3);
    assert!(handovers(&requests[0]).is_empty());
    assert!(handovers(&requests[1]).is_empty());
    let handed = handovers(&requests[2]);
    assert_eq!(handed.len(), 1, "{handed:?}");
    // It came right after the sleep's result, before this call.
    assert!(matches!(
        requests[2].messages.last(),
        Some(Message::User { content }) if content == &handed[0]
    ));
    assert!(
        handed[0].starts_with(&format!(
            "{TASK_RESULTS_HEADER} 3 background tasks finished."
        )),
        "{}",
        handed[0]
    );
    let spawned = spawned_ids(&requests[1]);
    let got = blocks(&handed[0]);
    // Oldest end first: failed at 100 ms, completed at 200, cancelled at 500.
    let expected = [
        Block {
            id: spawned[1].clone(),
            agent: "broken".to_owned(),
            status: "failed".to_owned(),
            duration: "100 ms".to_owned(),
            input_tokens: "0".to_owned(),
            output_tokens: "0".to_owned(),
            body: "error (provider): provider `test`: server: boom".to_owned(),
        },
        Block {
            id: spawned[0].clone(),
            agent: "worker".to_owned(),
            status: "completed".to_owned(),
            duration: "200 ms".to_owned(),
            input_tokens: "10".to_owned(),
            output_tokens: "5".to_owned(),
            body: "done: alpha".to_owned(),
        },
        Block {
            id: spawned[2].clone(),
            agent: "slowpoke".to_owned(),
            status: "cancelled".to_owned(),
            duration: "500 ms".to_owned(),
            input_tokens: "0".to_owned(),
            output_tokens: "0".to_owned(),
            body: "cancelled before it finished; there is no result".to_owned(),
        },
    ];
    assert_eq!(got, expected);

    assert_eq!(output.report.count(TaskStatus::Completed), 1);
    assert_eq!(output.report.count(TaskStatus::Failed), 1);
    assert_eq!(output.report.count(TaskStatus::Cancelled), 1);
    assert_eq!(runtime.registry().stats().undelivered, 0);
}

#[tokio::test(start_paused = true)]
async fn a_result_read_with_get_task_result_is_never_handed_over() {
    let lead = FnProvider::new("lead", Duration::ZERO, |request| {
        match assistant_turns(request) {
            0 => call_tools(
                request,
                vec![
                    background_spawn("worker", "first"),
                    background_spawn("slow", "second"),
                ],
            ),
            1 => {
                let ids = spawned_ids(request);
                call_tools(
                    request,
                    vec![("get_task_result", json!({"task_id": ids[0], "wait": true}))],
                )
            }
            2 => {
                // The second is read while a longer sleep runs beside it.
                let ids = all_spawned(request);
                call_tools(
                    request,
                    vec![
                        ("get_task_result", json!({"task_id": ids[1], "wait": true})),
                        ("sleep", json!({"ms": 2_000})),
                    ],
                )
            }
            3 => call_tools(request, vec![("sleep", json!({"ms": 1_000}))]),
            _ => answer("done"),
        }
    });
    let runtime = Runtime::builder()
        .agent(
            agent("lead", lead.clone())
                .subagents(["worker", "slow"])
                .tool(sleep_tool())
                .build()
                .unwrap(),
        )
        .agent(
            agent("worker", worker(Duration::from_millis(100)))
                .build()
                .unwrap(),
        )
        .agent(
            agent("slow", worker(Duration::from_secs(1)))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();

    let output = runtime.run("lead", "read both").await.unwrap();

    let requests = lead.requests();
    assert_eq!(requests.len(), 5);
    let first = &last_results(&requests[2])[0].1;
    assert_eq!(first["status"], "completed");
    assert_eq!(first["result"], "done: first");
    let second = &last_results(&requests[3])[0].1;
    assert_eq!(second["status"], "completed");
    assert_eq!(second["result"], "done: second");
    for request in &requests {
        assert!(handovers(request).is_empty(), "{:?}", handovers(request));
    }
    assert_eq!(output.report.count(TaskStatus::Completed), 2);
    assert_eq!(runtime.registry().stats().undelivered, 0);
}

// ----- exactly once under random interleavings --------------------------------

/// SplitMix64: small, deterministic, good enough to shuffle a test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `low..high`.
    fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

/// Every `spawn_agent` task id in the conversation, in order.
fn all_spawned(request: &ChatRequest) -> Vec<String> {
    request
        .messages
        .iter()
        .filter_map(|message| match message {
            Message::Tool {
                name,
                content,
                is_error: false,
                ..
            } if name == "spawn_agent" => serde_json::from_str::<Value>(content)
                .ok()
                .and_then(|value| value["task_id"].as_str().map(str::to_owned)),
            _ => None,
        })
        .collect()
}

/// One seeded scenario: `n` background tasks of random length, and a lead
/// that reads random ones or sleeps for a random number of turns. Returns
/// how many results were handed over and how many were only read.
async fn random_interleaving(seed: u64) -> (usize, usize) {
    let mut rng = Rng(seed);
    let n = rng.range(3, 8);
    let lengths: Vec<u64> = (0..n).map(|_| rng.range(0, 2_000)).collect();
    let turns = rng.range(1, 9) as usize;
    let script = Arc::new(Mutex::new(Rng(rng.next())));

    let lead = {
        let lengths = lengths.clone();
        FnProvider::new("lead", Duration::ZERO, move |request| {
            let turn = assistant_turns(request);
            if turn == 0 {
                let calls = lengths
                    .iter()
                    .enumerate()
                    .map(|(index, ms)| background_spawn("worker", &format!("job-{index} {ms}")))
                    .collect();
                return call_tools(request, calls);
            }
            if turn > turns {
                return answer("final");
            }
            let ids = all_spawned(request);
            let mut rng = script.lock();
            let count = rng.range(1, 4);
            let calls = (0..count)
                .map(|_| {
                    if rng.coin() {
                        let id = &ids[rng.range(0, ids.len() as u64) as usize];
                        let wait = rng.coin();
                        let timeout_ms = rng.range(0, 1_500);
                        (
                            "get_task_result",
                            json!({"task_id": id, "wait": wait, "timeout_ms": timeout_ms}),
                        )
                    } else {
                        ("sleep", json!({"ms": rng.range(0, 1_500)}))
                    }
                })
                .collect();
            call_tools(request, calls)
        })
    };
    // A job sleeps for the milliseconds its task names, then reports.
    let worker = FnProvider::new("worker", Duration::ZERO, |request| {
        let task = prompt(request);
        let (name, ms) = task.split_once(' ').unwrap();
        match assistant_turns(request) {
            0 => call_tools(
                request,
                vec![("sleep", json!({"ms": ms.parse::<u64>().unwrap()}))],
            ),
            _ => answer(format!("result of {name}")),
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
        .agent(agent("worker", worker).tool(sleep_tool()).build().unwrap())
        .build()
        .unwrap();

    let output = runtime.run("lead", "juggle").await.unwrap();
    assert_eq!(output.answer, "final", "seed {seed}");

    // The last request holds the whole conversation, up to the answer.
    let requests = lead.requests();
    let last = requests.last().unwrap();
    let spawned = all_spawned(last);
    assert_eq!(spawned.len() as u64, n, "seed {seed}");
    let expected: HashMap<String, String> = spawned
        .iter()
        .enumerate()
        .map(|(index, id)| (id.clone(), format!("result of job-{index}")))
        .collect();

    let mut handed_at: HashMap<String, Vec<usize>> = HashMap::new();
    let mut read_at: HashMap<String, Vec<usize>> = HashMap::new();
    for (position, message) in last.messages.iter().enumerate() {
        match message {
            Message::User { content } if content.starts_with(TASK_RESULTS_HEADER) => {
                for block in blocks(content) {
                    assert_eq!(block.status, "completed", "seed {seed}: {block:?}");
                    assert_eq!(Some(&block.body), expected.get(&block.id), "seed {seed}");
                    handed_at.entry(block.id).or_default().push(position);
                }
            }
            Message::Tool {
                name,
                content,
                is_error,
                ..
            } if name == "get_task_result" => {
                assert!(!is_error, "seed {seed}: {content}");
                let value: Value = serde_json::from_str(content).unwrap();
                let id = value["task_id"].as_str().unwrap().to_owned();
                match value["status"].as_str().unwrap() {
                    "completed" => {
                        assert_eq!(
                            value["result"].as_str(),
                            expected.get(&id).map(String::as_str)
                        );
                        read_at.entry(id).or_default().push(position);
                    }
                    "running" => assert!(value["note"].is_string(), "seed {seed}"),
                    other => panic!("seed {seed}: unexpected status {other}"),
                }
            }
            _ => {}
        }
    }
    for id in &spawned {
        let handed = handed_at.get(id).map_or(&[][..], Vec::as_slice);
        let read = read_at.get(id).map_or(&[][..], Vec::as_slice);
        assert!(
            !handed.is_empty() || !read.is_empty(),
            "seed {seed}: the result of {id} never reached the model"
        );
        assert!(
            handed.len() <= 1,
            "seed {seed}: {id} handed over {} times",
            handed.len()
        );
        if let (Some(handed), Some(first_read)) = (handed.first(), read.first()) {
            assert!(
                handed < first_read,
                "seed {seed}: {id} handed over after get_task_result returned it"
            );
        }
    }
    // Earlier requests agree with the last one: a handover, once made,
    // stays where it was and is never repeated.
    let mut seen: HashSet<String> = HashSet::new();
    for request in &requests {
        let blocks: Vec<String> = handovers(request)
            .iter()
            .flat_map(|text| blocks(text))
            .map(|block| block.id)
            .collect();
        let unique: HashSet<String> = blocks.iter().cloned().collect();
        assert_eq!(unique.len(), blocks.len(), "seed {seed}");
        assert!(seen.is_subset(&unique), "seed {seed}");
        seen = unique;
    }

    let stats = runtime.registry().stats();
    assert_eq!(stats.undelivered, 0, "seed {seed}");
    assert_eq!(stats.slots_in_use, 0, "seed {seed}");
    assert_eq!(output.report.tasks.len() as u64, n, "seed {seed}");
    assert!(
        output
            .report
            .tasks
            .iter()
            .all(|task| task.status == TaskStatus::Completed),
        "seed {seed}"
    );
    let only_read = read_at
        .keys()
        .filter(|id| !handed_at.contains_key(*id))
        .count();
    (handed_at.len(), only_read)
}

#[tokio::test(start_paused = true)]
async fn every_result_reaches_the_model_exactly_once_under_random_interleavings() {
    let (mut handed, mut only_read) = (0, 0);
    for seed in 0..30 {
        let (seed_handed, seed_read) = random_interleaving(seed).await;
        handed += seed_handed;
        only_read += seed_read;
    }
    // The seeds exercise both ways a result reaches the model.
    assert!(
        handed > 30 && only_read > 5,
        "{handed} handed, {only_read} read"
    );
}

// ----- on_finish -------------------------------------------------------------

/// A lead that spawns one background worker, answers at once, and answers
/// again if it is called once more.
fn hasty_lead() -> Arc<FnProvider> {
    FnProvider::new("lead", Duration::ZERO, |request| {
        match assistant_turns(request) {
            0 => call_tools(request, vec![background_spawn("worker", "report")]),
            1 => answer("early answer"),
            _ => answer("answer with the report"),
        }
    })
}

fn hasty_runtime(
    on_finish: Option<OnFinish>,
    lead: Arc<FnProvider>,
    worker: Arc<FnProvider>,
) -> Runtime {
    let mut builder = Runtime::builder()
        .agent(agent("lead", lead).subagents(["worker"]).build().unwrap())
        .agent(agent("worker", worker).build().unwrap());
    if let Some(on_finish) = on_finish {
        builder = builder.on_finish(on_finish);
    }
    builder.build().unwrap()
}

#[tokio::test(start_paused = true)]
async fn by_default_an_answer_waits_for_running_tasks_and_the_model_goes_on_with_them() {
    let lead = hasty_lead();
    let runtime = hasty_runtime(None, lead.clone(), worker(Duration::from_secs(1)));
    assert_eq!(runtime.on_finish(), OnFinish::Wait);

    let started = Instant::now();
    let output = runtime.run("lead", "be quick").await.unwrap();

    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(output.answer, "answer with the report");
    let requests = lead.requests();
    assert_eq!(requests.len(), 3);
    assert!(handovers(&requests[1]).is_empty());
    let handed = handovers(&requests[2]);
    assert_eq!(handed.len(), 1);
    let got = blocks(&handed[0]);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].status, "completed");
    assert_eq!(got[0].body, "done: report");
    assert_eq!(output.report.tasks[0].status, TaskStatus::Completed);
    assert_eq!(output.report.turns, 3);
    assert_eq!(runtime.registry().stats().undelivered, 0);
}

#[tokio::test(start_paused = true)]
async fn on_finish_cancel_cancels_running_tasks_and_returns_the_answer_without_another_call() {
    let lead = hasty_lead();
    let worker = worker(Duration::from_secs(60));
    let runtime = hasty_runtime(Some(OnFinish::Cancel), lead.clone(), worker.clone());

    let started = Instant::now();
    let output = runtime.run("lead", "be quick").await.unwrap();

    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(output.answer, "early answer");
    assert_eq!(lead.calls(), 2);
    let task = &output.report.tasks[0];
    assert_eq!(task.status, TaskStatus::Cancelled);
    assert_eq!(
        runtime.registry().get(task.id).unwrap().status,
        TaskStatus::Cancelled
    );
    let stats = runtime.registry().stats();
    assert_eq!((stats.slots_in_use, stats.undelivered), (0, 0));
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(worker.requests().is_empty());
    assert_eq!(lead.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn on_finish_detach_returns_at_once_and_leaves_the_result_for_the_host() {
    let lead = hasty_lead();
    let runtime = hasty_runtime(
        Some(OnFinish::Detach),
        lead.clone(),
        worker(Duration::from_secs(5)),
    );

    let started = Instant::now();
    let run = runtime.start("lead", "be quick").unwrap();
    let run_id = run.run_id();
    let output = run.finish().await.unwrap();

    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(output.answer, "early answer");
    assert_eq!(lead.calls(), 2);
    let task_id: TaskId = output.report.tasks[0].id;
    assert_eq!(output.report.tasks[0].status, TaskStatus::Running);
    assert_eq!(
        runtime.registry().get(task_id).unwrap().status,
        TaskStatus::Running
    );
    assert!(runtime.registry().take_finished(Some(run_id)).is_empty());

    tokio::time::sleep(Duration::from_secs(10)).await;
    let finished = runtime.registry().take_finished(Some(run_id));
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].id, task_id);
    assert_eq!(finished[0].status, TaskStatus::Completed);
    assert_eq!(finished[0].output.as_deref(), Some("done: report"));
    assert!(runtime.registry().take_finished(Some(run_id)).is_empty());
    assert_eq!(runtime.registry().stats().undelivered, 0);
    assert_eq!(lead.calls(), 2, "the lead is not called again");
}

// ----- long results ----------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_long_result_is_cut_in_the_handover_and_read_on_from_the_offset() {
    let long: String = (0..10_000)
        .map(|index| char::from(b'a' + (index % 26) as u8))
        .collect();
    let lead = FnProvider::new("lead", Duration::ZERO, |request| {
        match assistant_turns(request) {
            0 => call_tools(request, vec![background_spawn("worker", "write a lot")]),
            1 => call_tools(request, vec![("sleep", json!({"ms": 200}))]),
            2 => {
                let id = handovers(request)
                    .iter()
                    .flat_map(|text| blocks(text))
                    .map(|block| block.id)
                    .next()
                    .unwrap();
                call_tools(
                    request,
                    vec![
                        ("get_task_result", json!({"task_id": id, "offset": 500})),
                        ("get_task_result", json!({"task_id": id, "offset": 9_000})),
                    ],
                )
            }
            _ => answer("read it all"),
        }
    });
    let writer = {
        let long = long.clone();
        FnProvider::new("writer", Duration::from_millis(100), move |_| {
            answer(long.clone())
        })
    };
    let runtime = Runtime::builder()
        .max_result_chars(500)
        .max_tool_output_chars(2_400)
        .agent(
            agent("lead", lead.clone())
                .subagents(["worker"])
                .tool(sleep_tool())
                .build()
                .unwrap(),
        )
        .agent(agent("worker", writer).build().unwrap())
        .build()
        .unwrap();

    runtime.run("lead", "read a long result").await.unwrap();

    let requests = lead.requests();
    assert_eq!(requests.len(), 4);
    let handed = handovers(&requests[2]);
    assert_eq!(handed.len(), 1);
    let block = blocks(&handed[0]).remove(0);
    assert_eq!(
        block.body,
        format!(
            "{}\n[result cut: showing the first 500 of 10000 characters; call get_task_result with task_id \"{}\" and offset 500 to read the rest]",
            &long[..500],
            block.id
        )
    );

    let reads = last_results(&requests[3]);
    let (_, next, is_error) = &reads[0];
    assert!(!is_error, "{next}");
    // The window is as large as fits: the whole answer stays within
    // max_tool_output_chars, so it is never cut and its note stays true.
    assert!(next.to_string().chars().count() <= 2_400, "{next}");
    let to = next["result_chars"]["to"].as_u64().unwrap() as usize;
    assert!(
        to > 1_500,
        "a window of {} characters is too small",
        to - 500
    );
    assert_eq!(next["result"], &long[500..to]);
    assert_eq!(
        next["result_chars"],
        json!({"from": 500, "to": to, "total": 10_000})
    );
    assert_eq!(
        next["note"],
        format!("the result goes on; call get_task_result with offset {to} to read more")
    );
    let (_, tail, is_error) = &reads[1];
    assert!(!is_error, "{tail}");
    assert_eq!(tail["result"], &long[9_000..]);
    assert_eq!(
        tail["result_chars"],
        json!({"from": 9_000, "to": 10_000, "total": 10_000})
    );
    assert!(tail.get("note").is_none(), "{tail}");
}

/// A result full of characters JSON must escape is still read whole, part
/// by part: every answer parses, fits the cap, and the parts join up.
#[tokio::test(start_paused = true)]
async fn a_result_full_of_escapes_is_read_in_parts_that_join_up() {
    let long: String = (0..3_000)
        .map(|index| ["line\n", "\"q\"", "\t", "é"][index % 4])
        .collect();
    let lead = FnProvider::new("lead", Duration::ZERO, |request| {
        match assistant_turns(request) {
            0 => call_tools(request, vec![background_spawn("worker", "write a lot")]),
            _ => {
                // Wait for the task first, then read on from each note.
                let results = last_results(request);
                let (_, last, _) = results.last().unwrap();
                let id = last["task_id"].as_str().unwrap().to_owned();
                match last
                    .get("result_chars")
                    .map(|chars| chars["to"].as_u64().unwrap())
                {
                    _ if last["status"] == "running" => call_tools(request, vec![wait_for(id)]),
                    Some(to) if to < last["result_chars"]["total"].as_u64().unwrap() => call_tools(
                        request,
                        vec![("get_task_result", json!({"task_id": id, "offset": to}))],
                    ),
                    _ => answer("done reading"),
                }
            }
        }
    });
    let writer = {
        let long = long.clone();
        FnProvider::new("writer", Duration::from_millis(100), move |_| {
            answer(long.clone())
        })
    };
    let runtime = Runtime::builder()
        .max_tool_output_chars(2_000)
        .agent(
            agent("lead", lead.clone())
                .subagents(["worker"])
                .build()
                .unwrap(),
        )
        .agent(agent("worker", writer).build().unwrap())
        .build()
        .unwrap();

    let output = runtime.run("lead", "read it all").await.unwrap();
    assert_eq!(output.answer, "done reading");

    let mut joined = String::new();
    for request in lead.requests() {
        for message in &request.messages {
            let Message::Tool {
                name,
                content,
                is_error,
                ..
            } = message
            else {
                continue;
            };
            if name != "get_task_result" || request.messages.last() != Some(message) {
                continue;
            }
            assert!(!is_error, "{content}");
            assert!(content.chars().count() <= 2_000, "an answer was cut");
            let answer: serde_json::Value = serde_json::from_str(content).unwrap();
            if let Some(part) = answer["result"].as_str() {
                joined.push_str(part);
            }
        }
    }
    assert_eq!(joined, long);
}
