//! Exactly one SubagentStop per SubagentStart with every built-in hook
//! attached, on every way a task can end.
#![cfg(unix)]

use std::collections::HashMap;
use std::time::Duration;

use deputy_hooks::{AuditLog, HooksSettings, LedgerEntry, RawBillingConfig, RawHooksConfig};
use deputy_registry::{FailureKind, TaskId, TaskSpec, TaskStatus};
use prometheus_parse::{Scrape, Value};
use serde::Deserialize;

use crate::support::{registry, usage};

#[derive(Deserialize)]
struct File {
    hooks: RawHooksConfig,
    billing: RawBillingConfig,
}

const CONFIG: &str = r#"
[hooks.metrics]

[hooks.audit]
path = "audit.jsonl"

[billing]
ledger = "ledger.jsonl"
prices."house-model" = { input = 1.0, output = 2.0 }

[[hooks.SubagentStart]]
kind = "command"
name = "gate"
matcher = "^denied$"
shell = true
command = "echo 'not this agent' >&2; exit 2"

[[hooks.SubagentStop]]
kind = "command"
name = "sink"
shell = true
# Stop hooks of different tasks run at once: one write per line.
command = "line=$(cat); printf '%s\\n' \"$line\" >> stops.jsonl"
"#;

fn sum(scrape: &Scrape, metric: &str) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == metric)
        .map(|sample| match sample.value {
            Value::Counter(value) | Value::Untyped(value) => value,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_start_has_one_stop_on_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let file: File = toml::from_str(CONFIG).unwrap();
    let set = HooksSettings::from_raw(&file.hooks, Some(&file.billing))
        .unwrap()
        .build(dir.path(), None)
        .unwrap();
    let registry = registry(set.stack(), 8);
    set.attach(&registry);

    let spec = |agent: &str| {
        TaskSpec::new(agent, "work")
            .background(true)
            .provider("openai")
            .model("house-model")
    };
    let spent = usage(1000, 100);
    let mut expected: HashMap<TaskId, (TaskStatus, Option<FailureKind>)> = HashMap::new();

    let completed = registry
        .spawn(spec("researcher"), move |task| async move {
            task.record_usage(spent);
            Ok("ok".to_owned())
        })
        .unwrap();
    expected.insert(completed.id, (TaskStatus::Completed, None));

    let failed = registry
        .spawn(spec("researcher"), move |task| async move {
            task.record_usage(spent);
            Err(deputy_registry::TaskFailure::provider("the model is down"))
        })
        .unwrap();
    expected.insert(failed.id, (TaskStatus::Failed, Some(FailureKind::Provider)));

    let panicked = registry
        .spawn(spec("researcher"), |_| async { panic!("a bug in a tool") })
        .unwrap();
    expected.insert(
        panicked.id,
        (TaskStatus::Failed, Some(FailureKind::Panicked)),
    );

    let timed_out = registry
        .spawn(
            spec("researcher").time_limit(Duration::from_millis(100)),
            move |task| async move {
                task.record_usage(spent);
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok("too late".to_owned())
            },
        )
        .unwrap();
    expected.insert(
        timed_out.id,
        (TaskStatus::Failed, Some(FailureKind::Timeout)),
    );

    let denied = registry
        .spawn(spec("denied"), |_| async { Ok("never runs".to_owned()) })
        .unwrap();
    expected.insert(
        denied.id,
        (TaskStatus::Failed, Some(FailureKind::DeniedByHook)),
    );

    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let cancelled = registry
        .spawn(spec("researcher"), move |task| async move {
            task.record_usage(spent);
            let _ = started_tx.send(());
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok("never".to_owned())
        })
        .unwrap();
    started_rx.await.unwrap();
    registry.cancel(cancelled.id).unwrap();
    expected.insert(cancelled.id, (TaskStatus::Cancelled, None));

    for id in expected.keys() {
        registry
            .wait(*id, Some(Duration::from_secs(30)))
            .await
            .unwrap();
    }
    // Shutdown waits for every pending SubagentStop.
    registry.shutdown(Duration::from_secs(30)).await;

    // The audit log: one start and one stop per task, with the right end.
    let audit = AuditLog::read_all(&dir.path().join("audit.jsonl")).unwrap();
    let mut seen: HashMap<String, (usize, usize)> = HashMap::new();
    for line in &audit {
        let id = line["task_id"].as_str().unwrap().to_owned();
        let counts = seen.entry(id.clone()).or_default();
        match line["hook_event_name"].as_str().unwrap() {
            "SubagentStart" => counts.0 += 1,
            "SubagentStop" => {
                counts.1 += 1;
                let (status, kind) = expected[&id.parse::<TaskId>().unwrap()];
                assert_eq!(line["status"], status.as_str(), "{line}");
                match kind {
                    Some(kind) => assert_eq!(line["error"]["kind"], kind.as_str(), "{line}"),
                    None => assert!(line["error"].is_null(), "{line}"),
                }
            }
            other => panic!("unexpected event {other}"),
        }
    }
    assert_eq!(seen.len(), expected.len(), "{audit:#?}");
    assert!(seen.values().all(|counts| *counts == (1, 1)), "{seen:?}");

    // The ledger: one line per task.
    let ledger = LedgerEntry::read_all(&dir.path().join("ledger.jsonl")).unwrap();
    let mut ledger_ids: Vec<TaskId> = ledger.iter().map(|entry| entry.task_id).collect();
    ledger_ids.sort_by_key(ToString::to_string);
    ledger_ids.dedup();
    assert_eq!(
        (ledger.len(), ledger_ids.len()),
        (expected.len(), expected.len())
    );
    let cancelled_line = ledger
        .iter()
        .find(|entry| entry.task_id == cancelled.id)
        .unwrap();
    assert_eq!(
        cancelled_line.input_tokens, 1000,
        "usage up to the cancel is billed"
    );

    // The command stop hook: one event per task.
    let sink = std::fs::read_to_string(dir.path().join("stops.jsonl")).unwrap();
    let sunk: Vec<serde_json::Value> = sink
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(sunk.len(), expected.len(), "{sink}");

    // Metrics: as many finished as started.
    let text = set.metrics().unwrap().render();
    let scrape = Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).unwrap();
    assert_eq!(
        sum(&scrape, "deputy_subagents_started_total"),
        expected.len() as f64
    );
    assert_eq!(
        sum(&scrape, "deputy_subagents_finished_total"),
        expected.len() as f64
    );
}
