//! Billing: cost, ledger, budgets and a ledger that survives a kill.

use std::sync::Arc;
use std::time::Duration;

use deputy_hooks::{Billing, LedgerEntry, ModelPrice, PriceTable, SubagentStopHook as _};
use deputy_registry::{FailureKind, HookStack, TaskSpec, TaskStatus, Usage};

use crate::support::{Work, hook_task, registry, run, stop_event, stop_signal, usage};

/// A billing hook from `builder`, a registry (cap 4) that runs it, and a
/// signal after each task's stop hooks.
fn billed(
    builder: deputy_hooks::BillingBuilder,
) -> (
    Arc<Billing>,
    deputy_registry::Registry,
    crate::support::Stops,
) {
    let billing = Arc::new(builder.build().unwrap());
    let (signal, stops) = stop_signal();
    let registry = registry(
        HookStack::new()
            .with_both(billing.clone())
            .with_stop(signal),
        4,
    );
    (billing, registry, stops)
}

/// Runs one task of `agent` on house-model that spends `input_tokens`.
async fn house_task(
    registry: &deputy_registry::Registry,
    agent: &str,
    input_tokens: u64,
) -> deputy_registry::TaskSnapshot {
    run(
        registry,
        agent,
        "openai",
        "house-model",
        Work::Complete(usage(input_tokens, 0)),
    )
    .await
}

/// Runs one task of `agent` on house-model that spends `input_tokens`,
/// and waits until its stop hooks have run.
async fn spend(
    registry: &deputy_registry::Registry,
    stops: &mut crate::support::Stops,
    agent: &str,
    input_tokens: u64,
) -> deputy_registry::TaskSnapshot {
    let task = house_task(registry, agent, input_tokens).await;
    stops.next().await;
    task
}

fn house_prices() -> PriceTable {
    PriceTable::builtin().with_price(
        "house-model",
        ModelPrice::new(1.0, 2.0).with_cache(0.1, 1.25),
    )
}

#[tokio::test]
async fn cost_counts_every_token_kind_and_lands_in_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let (billing, registry, mut stops) =
        billed(Billing::builder().prices(house_prices()).ledger(&ledger));

    let spent = Usage {
        input_tokens: 100_000,
        output_tokens: 20_000,
        cache_read_tokens: 1_000_000,
        cache_write_tokens: 40_000,
        requests: 2,
    };
    let task = run(
        &registry,
        "researcher",
        "anthropic",
        "house-model",
        Work::Complete(spent),
    )
    .await;
    stops.next().await;

    // 0.1 + 0.04 + 0.1 + 0.05 dollars.
    let expected = 0.29;
    assert!(
        (billing.spent() - expected).abs() < 1e-9,
        "{}",
        billing.spent()
    );
    assert!((billing.spent_by("researcher") - expected).abs() < 1e-9);
    let lines = LedgerEntry::read_all(&ledger).unwrap();
    assert_eq!(lines.len(), 1);
    let line = &lines[0];
    assert_eq!(line.task_id, task.id);
    assert_eq!(line.agent, "researcher");
    assert_eq!(line.provider.as_deref(), Some("anthropic"));
    assert_eq!(line.model.as_deref(), Some("house-model"));
    assert_eq!(line.status, TaskStatus::Completed);
    assert_eq!(
        (
            line.input_tokens,
            line.output_tokens,
            line.cache_read_tokens,
            line.cache_write_tokens
        ),
        (100_000, 20_000, 1_000_000, 40_000)
    );
    assert_eq!(line.requests, 2);
    assert!(line.price_known);
    assert!((line.cost_usd.unwrap() - expected).abs() < 1e-9);
    assert!(
        line.started_at <= line.ended_at,
        "{} > {}",
        line.started_at,
        line.ended_at
    );
}

#[tokio::test]
async fn a_spent_budget_denies_the_next_start_with_the_amounts() {
    let (billing, registry, mut stops) =
        billed(Billing::builder().prices(house_prices()).budget(5.0));

    // 5.02 million input tokens at $1 per million.
    let first = spend(&registry, &mut stops, "researcher", 5_020_000).await;
    assert_eq!(first.status, TaskStatus::Completed);

    let second = spend(&registry, &mut stops, "researcher", 1).await;
    assert_eq!(second.status, TaskStatus::Failed);
    let failure = second.failure.unwrap();
    assert_eq!(failure.kind, FailureKind::DeniedByHook);
    assert!(
        failure
            .message
            .contains("budget exhausted: $5.02 of $5.00 spent"),
        "{}",
        failure.message
    );
    // A denied task costs nothing.
    assert!((billing.spent() - 5.02).abs() < 1e-9);
}

#[tokio::test]
async fn an_agent_budget_stops_only_that_agent() {
    let (_, registry, mut stops) = billed(
        Billing::builder()
            .prices(house_prices())
            .agent_budget("researcher", 1.0),
    );

    spend(&registry, &mut stops, "researcher", 1_000_000).await;
    let researcher = spend(&registry, &mut stops, "researcher", 1).await;
    let writer = spend(&registry, &mut stops, "writer", 1).await;

    assert_eq!(researcher.status, TaskStatus::Failed);
    assert!(
        researcher
            .failure
            .unwrap()
            .message
            .contains("budget of agent researcher exhausted: $1.00 of $1.00 spent")
    );
    assert_eq!(writer.status, TaskStatus::Completed);
}

#[tokio::test]
async fn running_tasks_count_against_the_budget() {
    let (billing, registry, mut stops) =
        billed(Billing::builder().prices(house_prices()).budget(5.0));
    billing.attach(&registry);

    spend(&registry, &mut stops, "researcher", 2_000_000).await;

    // A long task that has already spent $3.
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let (recorded, has_recorded) = tokio::sync::oneshot::channel::<()>();
    let spec = TaskSpec::new("researcher", "long")
        .background(true)
        .provider("openai")
        .model("house-model");
    let long = registry
        .spawn(spec, move |task| async move {
            task.record_usage(usage(3_000_000, 0));
            let _ = recorded.send(());
            let _ = released.await;
            Ok("late".to_owned())
        })
        .unwrap();
    has_recorded.await.unwrap();

    let denied = spend(&registry, &mut stops, "writer", 1).await;
    assert_eq!(denied.status, TaskStatus::Failed);
    let message = denied.failure.unwrap().message;
    assert!(
        message.contains("budget exhausted: $2.00 spent and $3.00 in running tasks, of $5.00"),
        "{message}"
    );

    release.send(()).unwrap();
    registry
        .wait(long.id, Some(Duration::from_secs(10)))
        .await
        .unwrap();
    stops.next().await;
    assert!((billing.spent() - 5.0).abs() < 1e-9);
}

#[tokio::test]
async fn unknown_models_are_counted_as_unknown_not_free() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let billing = Arc::new(Billing::builder().ledger(&ledger).build().unwrap());
    for _ in 0..2 {
        billing
            .on_subagent_stop(&stop_event(
                hook_task("researcher", "openai", "mystery-model"),
                usage(1000, 10),
            ))
            .await
            .unwrap();
    }
    // A local provider is free, not unknown.
    billing
        .on_subagent_stop(&stop_event(
            hook_task("researcher", "ollama", "llama3.2"),
            usage(1000, 10),
        ))
        .await
        .unwrap();

    assert_eq!(billing.unknown_price_tasks(), 2);
    assert_eq!(billing.spent(), 0.0);
    let lines = LedgerEntry::read_all(&ledger).unwrap();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0].cost_usd, None);
    assert!(!lines[0].price_known);
    assert_eq!(lines[2].cost_usd, Some(0.0));
    assert!(lines[2].price_known);
    let text = std::fs::read_to_string(&ledger).unwrap();
    assert!(
        text.lines().next().unwrap().contains("\"cost_usd\":null"),
        "{text}"
    );
}

#[tokio::test]
async fn a_restarted_host_goes_on_from_the_ledger_total() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    {
        let billing = Billing::builder()
            .prices(house_prices())
            .ledger(&ledger)
            .build()
            .unwrap();
        for agent in ["researcher", "writer"] {
            billing
                .on_subagent_stop(&stop_event(
                    hook_task(agent, "openai", "house-model"),
                    usage(1_500_000, 0),
                ))
                .await
                .unwrap();
        }
    }
    let billing = Billing::builder()
        .prices(house_prices())
        .ledger(&ledger)
        .budget(3.0)
        .build()
        .unwrap();
    assert!((billing.spent() - 3.0).abs() < 1e-9);
    assert!((billing.spent_by("writer") - 1.5).abs() < 1e-9);
}

#[test]
fn a_ledger_that_is_not_a_ledger_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    std::fs::write(&ledger, "{\"not\":\"an entry\"}\n").unwrap();
    let error = Billing::builder()
        .ledger(&ledger)
        .build()
        .unwrap_err()
        .to_string();
    assert!(error.contains("line 1"), "{error}");
    assert!(error.contains("fix or move the file"), "{error}");
}

/// Set in the child process of the kill test: the ledger to write to.
const CHILD_LEDGER: &str = "DEPUTY_TEST_LEDGER_CHILD";

/// The child side of the kill test: writes ledger lines until it is
/// killed. Ignored, so a normal run never counts it as a passing test; the
/// kill test starts it with `--ignored`.
#[tokio::test]
#[ignore = "the child process of ledger_lines_survive_a_process_killed_mid_run"]
async fn ledger_writer_child_process() {
    let path = std::env::var_os(CHILD_LEDGER)
        .expect("started by the kill test, which sets the ledger path");
    let billing = Billing::builder().ledger(path).build().unwrap();
    loop {
        let mut task = hook_task("researcher", "openai", "gpt-4o");
        // Long agent names make long lines, so a torn write would show.
        task.agent = "r".repeat(2000).into();
        billing
            .on_subagent_stop(&stop_event(task, usage(1000, 100)))
            .await
            .unwrap();
    }
}

#[test]
fn ledger_lines_survive_a_process_killed_mid_run() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    /// Kills the writer however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "billing::ledger_writer_child_process",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_LEDGER, &ledger)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(Killed)
        .unwrap();
    // Let it write a few hundred lines, then kill it without warning.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::fs::read(&ledger).map_or(0, |bytes| bytes.iter().filter(|&&b| b == b'\n').count())
        < 300
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the child wrote too little"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.0.kill().unwrap();
    child.0.wait().unwrap();

    // The kernel may stop a write at a page boundary when the process is
    // killed, so only the line being written at that instant can be cut:
    // it is the tail after the last newline. Every line before it is whole.
    let bytes = std::fs::read(&ledger).unwrap();
    let whole = bytes
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |end| end + 1);
    let newlines = bytes.iter().filter(|&&b| b == b'\n').count();
    let lines = LedgerEntry::read_all(&ledger).unwrap();
    assert!(lines.len() >= 300);
    assert_eq!(lines.len(), newlines, "every whole line parses");

    // A new host cuts the cut line off before appending and reads the rest
    // back.
    let billing = Billing::builder().ledger(&ledger).build().unwrap();
    let repaired = std::fs::read(&ledger).unwrap();
    assert_eq!(repaired.len(), whole);
    assert!(repaired.is_empty() || repaired.ends_with(b"\n"));
    let expected: f64 = lines.iter().map(|line| line.cost_usd.unwrap()).sum();
    assert!(expected > 0.0);
    assert!((billing.spent() - expected).abs() < 1e-9);
}

/// A stop hook that holds its task's stop phase until released.
struct Gate(tokio::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>);

#[async_trait::async_trait]
impl deputy_registry::SubagentStopHook for Gate {
    async fn on_subagent_stop(
        &self,
        _: &deputy_registry::SubagentStopEvent,
    ) -> Result<(), deputy_registry::HookError> {
        if let Some(release) = self.0.lock().await.take() {
            let _ = release.await;
        }
        Ok(())
    }
}

#[tokio::test]
async fn an_ended_task_not_yet_billed_still_counts_against_the_budget() {
    let billing = Arc::new(
        Billing::builder()
            .prices(house_prices())
            .budget(5.0)
            .build()
            .unwrap(),
    );
    let (release, released) = tokio::sync::oneshot::channel();
    let gate = Arc::new(Gate(tokio::sync::Mutex::new(Some(released))));
    // The gate runs before billing's stop hook, so the first task ends and
    // hands on its slot while its cost is not yet in the spend.
    let registry = registry(
        HookStack::new()
            .with_start(billing.clone())
            .with_stop(gate)
            .with_stop(billing.clone()),
        4,
    );
    billing.attach(&registry);

    let first = house_task(&registry, "researcher", 6_000_000).await;
    assert_eq!(first.status, TaskStatus::Completed);
    assert_eq!(billing.spent(), 0.0, "not billed yet");

    let second = house_task(&registry, "researcher", 1).await;
    assert_eq!(second.status, TaskStatus::Failed);
    let message = second.failure.unwrap().message;
    assert!(
        message.contains("budget exhausted: $0.00 spent and $6.00 in running tasks, of $5.00"),
        "{message}"
    );
    release.send(()).unwrap();
    registry.shutdown(Duration::from_secs(10)).await;
    assert!((billing.spent() - 6.0).abs() < 1e-9);
}

#[tokio::test]
async fn under_a_budget_a_model_without_a_price_is_denied() {
    let billing = Arc::new(Billing::builder().budget(5.0).build().unwrap());
    let registry = registry(HookStack::new().with_both(billing.clone()), 4);
    let task = run(
        &registry,
        "researcher",
        "openai",
        "brand-new-model",
        Work::Complete(usage(1, 0)),
    )
    .await;
    let message = task.failure.unwrap().message;
    assert!(
        message.contains("budget cannot be checked: model brand-new-model of provider openai has no price; add it under [billing.prices]"),
        "{message}"
    );
    // Local models are free, so they run.
    let local = run(
        &registry,
        "researcher",
        "ollama",
        "llama3.2",
        Work::Complete(usage(1, 0)),
    )
    .await;
    assert_eq!(local.status, TaskStatus::Completed);
}
