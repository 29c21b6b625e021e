//! `deputy`: run LLM sub-agents in the background.
//!
//! Today the binary has two offline commands: `deputy run "<prompt>"` runs an
//! orchestrator with background researchers on the built-in `scripted`
//! provider and shows the run as it happens, and `deputy demo` drives the
//! registry alone under a small cap. Config files, `chat`, `serve` and live
//! reload arrive with the CLI issue.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use deputy_agent::{Agent, RunEvent, Runtime};
use deputy_providers::ScriptedProvider;
use deputy_registry::{
    Registry, RegistryEvent, SettingsHandle, SubagentSettings, TaskSpec, TaskStatus,
};
use futures::StreamExt as _;

#[derive(Debug, Parser)]
#[command(
    name = "deputy",
    version,
    about = "Run LLM sub-agents in the background"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an orchestrator that delegates to background researchers, on the
    /// offline `scripted` provider, and show every step.
    Run {
        /// What to ask the orchestrator ("Compare Go and Rust" gives one
        /// researcher per topic).
        prompt: String,
        /// How many sub-agents may run at once.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
        cap: u16,
        /// Simulated model latency of each researcher call, in milliseconds.
        #[arg(long, default_value_t = 300)]
        latency_ms: u64,
    },
    /// Launch simulated background tasks through the registry and show the
    /// cap, the queue and exactly-once delivery at work (offline).
    Demo {
        /// How many background tasks to launch.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000))]
        tasks: u16,
        /// How many may run at once (`[agent.subagents] max_concurrent`).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
        cap: u16,
        /// Simulated work time of each task, in milliseconds.
        #[arg(long, default_value_t = 300)]
        work_ms: u64,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: cannot start the async runtime: {error}"
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            prompt,
            cap,
            latency_ms,
        } => offline_run(&prompt, usize::from(cap), Duration::from_millis(latency_ms)).await,
        Command::Demo {
            tasks,
            cap,
            work_ms,
        } => demo(tasks, usize::from(cap), Duration::from_millis(work_ms)).await,
    }
}

async fn demo(tasks: u16, cap: usize, work: Duration) -> anyhow::Result<()> {
    let settings = SubagentSettings::default()
        .with_max_concurrent(cap)
        .context("invalid --cap")?;
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

    // Prints until every worker has finished, so no line is cut off.
    let printer = tokio::spawn(async move {
        let mut out = std::io::stdout();
        let mut finished = 0;
        while finished < tasks {
            let Ok(event) = events.recv().await else {
                break;
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
                } => {
                    finished += 1;
                    format!("  finished {}  {status}", task_id.short())
                }
                _ => continue,
            };
            if writeln!(out, "{line}").is_err() {
                break;
            }
        }
    });

    let outcome = registry.wait(root.id, None).await?;
    registry.shutdown(Duration::from_secs(1)).await;
    printer.await.context("the event printer failed")?;
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

async fn offline_run(prompt: &str, cap: usize, latency: Duration) -> anyhow::Result<()> {
    let settings = SubagentSettings::default()
        .with_max_concurrent(cap)
        .context("invalid --cap")?;
    let lead = std::sync::Arc::new(ScriptedProvider::demo("scripted"));
    let research = std::sync::Arc::new(ScriptedProvider::demo("scripted").with_latency(latency));
    let runtime = Runtime::builder()
        .settings(SettingsHandle::new(settings))
        .agent(
            Agent::builder("orchestrator", lead)
                .system_prompt("Delegate research to background researchers, collect their results, then synthesize.")
                .subagents(["researcher"])
                .build()?,
        )
        .agent(
            Agent::builder("researcher", research)
                .description("Writes a short briefing on one topic.")
                .build()?,
        )
        .build()?;

    let mut out = std::io::stdout();
    writeln!(
        out,
        "deputy run (offline: scripted provider, max_concurrent = {cap}): {prompt}"
    )?;
    let mut run = runtime.start("orchestrator", prompt)?;
    let run_id = run.run_id();
    let mut at_line_start = true;
    while let Some(event) = run.next().await {
        let line = match event {
            RunEvent::TextDelta { task_id, text, .. } if task_id == run_id => {
                write!(out, "{text}")?;
                at_line_start = text.ends_with('\n');
                continue;
            }
            RunEvent::ToolCallStarted {
                task_id,
                name,
                arguments,
                ..
            } if task_id == run_id => format!("  -> {name} {arguments}"),
            RunEvent::ToolResult {
                task_id,
                name,
                content,
                is_error,
                ..
            } if task_id == run_id => {
                let mark = if is_error { "error" } else { "ok" };
                format!("  <- {name} ({mark}): {}", one_line(&content, 160))
            }
            RunEvent::TaskQueued { task_id, agent, .. } => {
                format!("  queued   {} {agent}", task_id.short())
            }
            RunEvent::TaskStarted { task_id, agent, .. } => {
                format!("  started  {} {agent}", task_id.short())
            }
            RunEvent::TaskFinished {
                task_id,
                agent,
                status,
                ..
            } => format!("  finished {} {agent} {status}", task_id.short()),
            RunEvent::Error { message, .. } => format!("  error: {message}"),
            RunEvent::Done { report, .. } => format!(
                "done: {} sub-agent tasks, {} completed; {} provider calls, {} input and {} output tokens; {} ms",
                report.tasks.len(),
                report.count(TaskStatus::Completed),
                report.usage.requests,
                report.usage.input_tokens,
                report.usage.output_tokens,
                report.duration.as_millis()
            ),
            RunEvent::Failed { message, .. } => format!("failed: {message}"),
            _ => continue,
        };
        if !at_line_start {
            writeln!(out)?;
            at_line_start = true;
        }
        writeln!(out, "{line}")?;
    }
    let result = run.finish().await;
    runtime.shutdown(Duration::from_secs(1)).await;
    result?;
    Ok(())
}

/// `text` on one line, cut to `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let cut: String = flat.chars().take(max).collect();
    format!("{cut}...")
}
