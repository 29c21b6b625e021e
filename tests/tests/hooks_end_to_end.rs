//! Whole runs with the built-in hooks built from the `[hooks]` and
//! `[billing]` TOML the CLI loads: the audit log pairs every start with a
//! stop, the ledger bills what the run reports, and a spent budget stops
//! the next sub-agent with a reason the orchestrator gets to read.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on unexpected states"
)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use deputy_agent::{Agent, Runtime};
use deputy_hooks::{
    AuditLog, HookSet, HooksSettings, LedgerEntry, RawBillingConfig, RawHooksConfig,
};
use deputy_providers::{
    ChatRequest, ChatResponse, ChatStream, Provider, ProviderError, ProviderKind, ScriptedProvider,
};
use deputy_registry::{FailureKind, TaskStatus};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    hooks: RawHooksConfig,
    billing: RawBillingConfig,
}

fn hook_set(dir: &Path, budget: &str) -> HookSet {
    let text = format!(
        r#"
[hooks.metrics]

[hooks.audit]
path = "audit.jsonl"

[billing]
ledger = "ledger.jsonl"
{budget}

[billing.prices."house-model"]
input = 1000.0
output = 2000.0
"#
    );
    let config: Config = toml::from_str(&text).unwrap();
    HooksSettings::from_raw(&config.hooks, Some(&config.billing))
        .unwrap()
        .build(dir, Some("e2e"))
        .unwrap()
}

/// The scripted demo, reporting itself as a hosted backend so that its
/// tasks are billed (a `scripted` backend is free).
#[derive(Debug)]
struct Hosted(ScriptedProvider);

#[async_trait::async_trait]
impl Provider for Hosted {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn kind(&self) -> ProviderKind {
        ProviderKind::Openai
    }

    fn default_model(&self) -> &str {
        self.0.default_model()
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        self.0.chat(request).await
    }

    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream, ProviderError> {
        self.0.chat_stream(request).await
    }
}

fn runtime(hooks: &HookSet) -> Runtime {
    // A hosted backend with a priced model, so tasks cost money.
    let lead = Arc::new(Hosted(ScriptedProvider::demo("house")));
    let research = Arc::new(Hosted(
        ScriptedProvider::demo("house").with_latency(Duration::from_millis(200)),
    ));
    let runtime = Runtime::builder()
        .hooks(hooks.stack())
        .agent(
            Agent::builder("orchestrator", lead)
                .model("house-model")
                .subagents(["researcher"])
                .build()
                .unwrap(),
        )
        .agent(
            Agent::builder("researcher", research)
                .model("house-model")
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    hooks.attach(runtime.registry());
    runtime
}

#[tokio::test(start_paused = true)]
async fn a_run_is_audited_billed_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = hook_set(dir.path(), "");
    let runtime = runtime(&hooks);

    let output = runtime
        .run("orchestrator", "Compare Go and Rust")
        .await
        .unwrap();
    runtime.shutdown(Duration::from_secs(5)).await;
    let report = output.report;
    assert_eq!(report.tasks.len(), 2);

    let audit = AuditLog::read_all(&dir.path().join("audit.jsonl")).unwrap();
    let mut events: HashMap<String, Vec<String>> = HashMap::new();
    for line in &audit {
        assert_eq!(line["session_id"], "e2e");
        events
            .entry(line["task_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(line["hook_event_name"].as_str().unwrap().to_owned());
    }
    assert_eq!(events.len(), 2, "one pair per sub-agent, none for the run");
    assert!(
        events
            .values()
            .all(|names| names == &["SubagentStart", "SubagentStop"])
    );

    let ledger = LedgerEntry::read_all(&dir.path().join("ledger.jsonl")).unwrap();
    assert_eq!(ledger.len(), 2);
    let billing = hooks.billing().unwrap();
    let mut billed = 0.0;
    for task in &report.tasks {
        let line = ledger.iter().find(|line| line.task_id == task.id).unwrap();
        assert_eq!(line.input_tokens, task.usage.input_tokens);
        assert_eq!(line.output_tokens, task.usage.output_tokens);
        assert_eq!(line.provider.as_deref(), Some("house"));
        assert_eq!(line.model.as_deref(), Some("house-model"));
        let expected = (task.usage.input_tokens as f64 * 1000.0
            + task.usage.output_tokens as f64 * 2000.0)
            / 1e6;
        assert!(
            (line.cost_usd.unwrap() - expected).abs() < 1e-9,
            "{line:?} {expected}"
        );
        billed += expected;
    }
    assert!(billed > 0.0);
    assert!((billing.spent() - billed).abs() < 1e-9);

    let metrics = hooks.metrics().unwrap().render();
    assert!(
        metrics.contains(
            r#"deputy_subagents_finished_total{agent="researcher",status="completed"} 2"#
        ),
        "{metrics}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_spent_budget_denies_the_next_sub_agent_and_the_orchestrator_reads_why() {
    let dir = tempfile::tempdir().unwrap();
    // Spend past a one-cent budget with a first run.
    let hooks = hook_set(dir.path(), "budget_usd = 0.01");
    let first = runtime(&hooks);
    let output = first
        .run("orchestrator", "Compare Go and Rust")
        .await
        .unwrap();
    first.shutdown(Duration::from_secs(5)).await;
    assert_eq!(output.report.count(TaskStatus::Completed), 2);
    drop(hooks);

    // A restarted host reads the ledger back and refuses new sub-agents.
    let hooks = hook_set(dir.path(), "budget_usd = 0.01");
    assert!(hooks.billing().unwrap().spent() > 0.01);
    let second = runtime(&hooks);
    let output = second
        .run("orchestrator", "Compare Go and Rust")
        .await
        .unwrap();
    second.shutdown(Duration::from_secs(5)).await;

    let report = output.report;
    assert_eq!(report.tasks.len(), 2);
    for task in &report.tasks {
        assert_eq!(task.status, TaskStatus::Failed);
        let failure = task.failure.as_ref().unwrap();
        assert_eq!(failure.kind, FailureKind::DeniedByHook);
        assert!(
            failure
                .message
                .starts_with("denied by hook billing: budget exhausted: $"),
            "{}",
            failure.message
        );
        assert!(
            failure.message.ends_with("of $0.01 spent"),
            "{}",
            failure.message
        );
    }
    // The orchestrator's answer was made from what it was told.
    assert!(
        output.answer.contains("budget exhausted"),
        "{}",
        output.answer
    );
}
