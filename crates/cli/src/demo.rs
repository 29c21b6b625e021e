//! `deputy demo`: simulated background tasks through the registry alone,
//! showing the cap, the queue and exactly-once delivery (offline).

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use deputy_registry::{
    Registry, RegistryEvent, SettingsHandle, SubagentSettings, TaskSpec, TaskStatus,
};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub(crate) async fn demo(tasks: u16, cap: usize, work: Duration) -> anyhow::Result<()> {
    let settings = SubagentSettings::default()
        .with_max_concurrent(cap)
        .context("invalid --cap")?;
    // More would be refused with a full queue: spawns come faster than
    // the simulated work ends.
    let most = cap.saturating_add(settings.max_queue());
    anyhow::ensure!(
        usize::from(tasks) <= most,
        "--tasks {tasks} is more than the demo holds at once: {cap} running (--cap) plus {} queued (max_queue); use --tasks {most} or less, or raise --cap",
        settings.max_queue()
    );
    let registry = Registry::builder()
        .settings(SettingsHandle::new(settings))
        .build();
    let mut events = registry.subscribe();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "deputy demo (offline): {tasks} background tasks, max_concurrent = {cap}, {} ms of simulated work each",
        work.as_millis()
    )?;
    drop(out);

    let root = registry
        .spawn_root(
            TaskSpec::new("orchestrator", "demo"),
            move |ctx| async move {
                let mut ids = Vec::new();
                for n in 1..=tasks {
                    let spec = TaskSpec::new("worker", format!("task {n}"))
                        .parent(ctx.id())
                        .background(true);
                    let spawned = ctx
                        .registry()
                        .spawn(spec, move |task| async move {
                            tokio::time::sleep(work).await;
                            Ok(format!("{} done", task.task()))
                        })
                        .map_err(|error| deputy_registry::TaskFailure::other(error.to_string()))?;
                    ids.push(spawned.id);
                }
                // Nothing else collects these results, so each wait is the
                // one that hands its result over.
                let mut collected = 0;
                for id in &ids {
                    let outcome =
                        ctx.registry().wait(*id, None).await.map_err(|error| {
                            deputy_registry::TaskFailure::other(error.to_string())
                        })?;
                    collected += usize::from(outcome.newly_delivered);
                }
                Ok(format!("collected {collected} results, each exactly once"))
            },
        )
        .context("could not start the demo run")?;

    // Prints until every task has ended and its events are read, so no
    // line is cut off; it does not count events (a refused spawn sends
    // none), it stops when told that nothing more is coming.
    let ended = CancellationToken::new();
    let printer_ended = ended.clone();
    let printer = tokio::spawn(async move {
        let mut out = std::io::stdout();
        loop {
            let received = tokio::select! {
                // Events already sent are printed before the stop is seen.
                biased;
                received = events.recv() => received,
                () = printer_ended.cancelled() => break,
            };
            let event = match received {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    if writeln!(out, "  ({missed} events missed)").is_err() {
                        break;
                    }
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            };
            let line = match event {
                RegistryEvent::Queued {
                    task_id, queued, ..
                } => {
                    format!("  queued   {}  ({queued} waiting)", task_id.short())
                }
                RegistryEvent::Started {
                    task_id,
                    running,
                    max_concurrent,
                    queued_for,
                    ..
                } => format!(
                    "  started  {}  ({running}/{max_concurrent} slots, waited {} ms)",
                    task_id.short(),
                    queued_for.as_millis()
                ),
                RegistryEvent::Finished {
                    task_id, status, ..
                } => format!("  finished {}  {status}", task_id.short()),
                _ => continue,
            };
            if writeln!(out, "{line}").is_err() {
                break;
            }
        }
    });

    let outcome = registry.wait(root.id, None).await;
    // Every task has ended after the shutdown, and each one's events were
    // sent before it ended. Done before the wait's error is returned, so
    // no task or printer outlives the demo.
    registry.shutdown(Duration::from_secs(1)).await;
    ended.cancel();
    printer.await.context("the event printer failed")?;
    let outcome = outcome?;
    let mut out = std::io::stdout().lock();
    match (
        outcome.task.status,
        outcome.task.output,
        outcome.task.failure,
    ) {
        (TaskStatus::Completed, Some(answer), _) => writeln!(out, "{answer}")?,
        (status, _, failure) => anyhow::bail!(
            "the demo run ended {status}: {}",
            failure.map_or_else(|| "no detail".to_owned(), |f| f.to_string())
        ),
    }
    Ok(())
}
