//! `deputy bench`: measured scenarios through the real stack, printed as a
//! table or as JSON. Figures are reported, never asserted: targets live in
//! BENCHMARKS.md.
//!
//! * `burst`: many background tasks launched at once under a small cap.
//! * `wide`: as many tasks running at once as the cap allows, all of them.
//! * `churn`: a stream of tasks with random cancels, failures and cap
//!   changes (through the config file) for a while, then its invariants.
//! * `reload`: the time from writing a raised `max_concurrent` into the
//!   config file to the first newly admitted task starting, through the
//!   real watcher, debounce, parse, check and publish.

use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use deputy_registry::{RegistryEvent, TaskSpec};
use serde::Serialize;

use crate::bench_load;
use crate::reload::DEBOUNCE;

/// The scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Scenario {
    /// 10,000 background tasks launched at once, cap 64, 50 ms model latency.
    Burst,
    /// 10,000 tasks running at once, cap 10,000.
    Wide,
    /// Tasks with random cancels, failures and cap changes for `--secs`.
    Churn,
    /// Config write with a raised cap → the first newly admitted task.
    Reload,
}

/// `deputy bench` flags; unset ones take the scenario's default.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// Which scenario.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Tasks to launch (burst, wide).
    #[arg(long)]
    tasks: Option<usize>,
    /// `max_concurrent`.
    #[arg(long)]
    cap: Option<usize>,
    /// The scripted provider's latency per reply, standing in for model time.
    #[arg(long)]
    latency_ms: Option<u64>,
    /// How long churn runs.
    #[arg(long, default_value_t = 600)]
    secs: u64,
    /// Raises measured by reload.
    #[arg(long, default_value_t = 100)]
    iterations: usize,
    /// Seed of churn's random choices.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
    /// Measure one side only and print its figures as JSON (each side runs
    /// in a fresh process, so one's memory does not flatter the other's).
    #[arg(long, value_enum, hide = true)]
    side: Option<Side>,
}

/// One side of a load comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Side {
    /// The real stack.
    Deputy,
    /// Bare tokio tasks behind a Semaphore.
    Baseline,
}

/// Runs the scenario `args` names and prints its figures.
///
/// # Errors
/// The scenario could not run (a file could not be written, the registry
/// refused a task, a raise was never applied).
pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    match args.scenario {
        Scenario::Burst | Scenario::Wide => {
            let wide = args.scenario == Scenario::Wide;
            let tasks = args.tasks.unwrap_or(10_000);
            let cap = args.cap.unwrap_or(if wide { tasks } else { 64 });
            let latency_ms = args.latency_ms.unwrap_or(if wide { 2000 } else { 50 });
            let name = if wide { "wide" } else { "burst" };
            if let Some(side) = args.side {
                let figures = bench_load::one_side(side, tasks, cap, latency_ms).await?;
                writeln!(out, "{}", serde_json::to_string(&figures)?)?;
                return Ok(());
            }
            let measure = |side: &str| -> anyhow::Result<bench_load::Figures> {
                let args = [
                    "bench",
                    name,
                    "--side",
                    side,
                    "--tasks",
                    &tasks.to_string(),
                    "--cap",
                    &cap.to_string(),
                    "--latency-ms",
                    &latency_ms.to_string(),
                ];
                let exe = std::env::current_exe()
                    .context("cannot find the deputy executable to run each side in")?;
                let output = std::process::Command::new(&exe)
                    .args(args)
                    .env("RUST_LOG", "warn")
                    .stderr(std::process::Stdio::inherit())
                    .output()
                    .with_context(|| format!("cannot run the {side} side ({})", exe.display()))?;
                anyhow::ensure!(
                    output.status.success(),
                    "the {side} side ended with {}; its errors are above, and `deputy {}` runs it alone",
                    output.status,
                    args.join(" ")
                );
                serde_json::from_slice(&output.stdout).with_context(|| {
                    format!(
                        "the {side} side printed no figures this version can read; its output was: {}",
                        String::from_utf8_lossy(&output.stdout)
                    )
                })
            };
            let registry = measure("deputy")?;
            let baseline = measure("baseline")?;
            let report =
                bench_load::LoadReport::new(name, tasks, cap, latency_ms, registry, baseline);
            if args.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                print_load(&mut out, &report)?;
            }
        }
        Scenario::Churn => {
            let report = bench_load::churn(
                args.secs,
                args.cap.unwrap_or(32),
                args.latency_ms.unwrap_or(20),
                args.seed,
            )
            .await?;
            if args.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                writeln!(
                    out,
                    "churn: {} s, {} tasks ({:.0}/s): {} completed, {} failed, {} cancelled",
                    report.secs,
                    report.tasks,
                    report.tasks_per_s,
                    report.completed,
                    report.failures,
                    report.cancelled
                )?;
                writeln!(
                    out,
                    "  {} cancel calls that cancelled; {} caps written, {} applied",
                    report.cancels, report.cap_writes, report.cap_changes
                )?;
                let samples: Vec<String> = report
                    .rss_samples_bytes
                    .iter()
                    .map(|bytes| format!("{:.1} MiB", *bytes as f64 / 1_048_576.0))
                    .collect();
                writeln!(
                    out,
                    "  resident memory at each eighth of the run: {}",
                    samples.join(", ")
                )?;
                writeln!(
                    out,
                    "  retained tasks at most {} (bound then {}); {} of {} samples over running + queued + max_finished ({})",
                    report.retained_max,
                    report.retained_bound,
                    report.retention_violations,
                    report.retention_samples,
                    report.max_finished
                )?;
                writeln!(
                    out,
                    "  leaked slots {}; audit {} starts, {} stops, {} unpaired; undelivered {}",
                    report.leaked_slots,
                    report.starts,
                    report.stops,
                    report.unpaired,
                    report.undelivered
                )?;
                writeln!(
                    out,
                    "  invariants: {}",
                    if report.invariants_ok {
                        "hold"
                    } else {
                        "BROKEN"
                    }
                )?;
            }
            anyhow::ensure!(report.invariants_ok, "churn broke an invariant: {report:?}");
        }
        Scenario::Reload => reload(args.iterations, args.json).await?,
    }
    Ok(())
}

fn print_load(
    out: &mut impl std::io::Write,
    report: &bench_load::LoadReport,
) -> std::io::Result<()> {
    let (registry, baseline) = (&report.registry, &report.baseline);
    writeln!(
        out,
        "{}: {} tasks, cap {}, {} ms model latency (ideal {:.2} s)",
        report.scenario, report.tasks, report.cap, report.latency_ms, report.ideal_s
    )?;
    writeln!(out, "  {:<28} {:>14} {:>14}", "", "deputy", "baseline")?;
    let rows: [(&str, f64, f64, usize); 9] = [
        ("elapsed (s)", registry.elapsed_s, baseline.elapsed_s, 2),
        ("tasks/s", registry.tasks_per_s, baseline.tasks_per_s, 0),
        (
            "hand-off p50 (us)",
            registry.handoff_p50_us,
            baseline.handoff_p50_us,
            1,
        ),
        (
            "hand-off p99 (us)",
            registry.handoff_p99_us,
            baseline.handoff_p99_us,
            1,
        ),
        (
            "hand-off max (us)",
            registry.handoff_max_us,
            baseline.handoff_max_us,
            1,
        ),
        (
            "queue wait p50 (ms)",
            registry.queue_wait_p50_ms,
            baseline.queue_wait_p50_ms,
            1,
        ),
        (
            "queue wait p99 (ms)",
            registry.queue_wait_p99_ms,
            baseline.queue_wait_p99_ms,
            1,
        ),
        (
            "peak RSS (MiB)",
            registry.peak_rss_bytes as f64 / 1_048_576.0,
            baseline.peak_rss_bytes as f64 / 1_048_576.0,
            1,
        ),
        (
            "bytes per task",
            registry.bytes_per_task,
            baseline.bytes_per_task,
            0,
        ),
    ];
    for (name, ours, theirs, digits) in rows {
        writeln!(out, "  {name:<28} {ours:>14.digits$} {theirs:>14.digits$}")?;
    }
    writeln!(
        out,
        "  {:<28} {:>14.1}",
        "hook overhead per task (us)", registry.hook_overhead_us
    )?;
    writeln!(
        out,
        "  ratio to baseline (tasks/s): {:.3}",
        report.ratio_to_baseline
    )
}

/// What `deputy bench reload` measured.
#[derive(Debug, Serialize)]
struct ReloadFigures {
    scenario: &'static str,
    iterations: usize,
    debounce_ms: u128,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    mean_ms: f64,
}

/// Runs the reload scenario `iterations` times and prints the figures.
///
/// # Errors
/// The temporary config cannot be written, or a raise is never applied
/// (after 10 s).
async fn reload(iterations: usize, json: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        iterations > 0,
        "--iterations 0 measures nothing; give at least 1 (the default is 100)"
    );
    // The load scenarios' stack (hooks included), with one slot.
    let bench = bench_load::Bench::new(1, 0, iterations + 1)?;
    let path = bench.config_path();
    let stack = &bench.stack;
    let _reloader = bench.reloader()?;
    let registry = stack.runtime.registry().clone();
    let (release, released) = tokio::sync::watch::channel(false);
    let hold = |n: usize| {
        let mut released = released.clone();
        registry.spawn(
            TaskSpec::new("worker", format!("hold {n}")).background(true),
            move |_| async move {
                let _ = released.wait_for(|go| *go).await;
                Ok(String::new())
            },
        )
    };
    // One task holds the single slot.
    hold(0)?;
    let mut events = registry.subscribe();
    let mut samples = Vec::with_capacity(iterations);
    for n in 1..=iterations {
        let queued = hold(n)?.id;
        // Let the watcher settle between writes so each raise is its own
        // reload, as a person editing the file makes them.
        tokio::time::sleep(DEBOUNCE * 2).await;
        let written = Instant::now();
        bench_load::write_cap(&path, n, n + 1)?;
        let started = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match events.recv().await {
                    Ok(RegistryEvent::Started { task_id, .. }) if task_id == queued => {
                        return Ok(Instant::now());
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(error) => return Err(error),
                }
            }
        })
        .await
        .context("the raised cap was not applied within 10 s")??;
        samples.push(started.duration_since(written));
    }
    release.send(true).ok();
    stack.shutdown(Duration::from_secs(5)).await;

    let mut samples: Vec<f64> = samples
        .iter()
        .map(|duration| duration.as_secs_f64() * 1000.0)
        .collect();
    samples.sort_by(f64::total_cmp);
    #[expect(clippy::cast_precision_loss, reason = "a count of raises")]
    let mean_ms = samples.iter().sum::<f64>() / samples.len() as f64;
    let figures = ReloadFigures {
        scenario: "reload",
        iterations,
        debounce_ms: DEBOUNCE.as_millis(),
        p50_ms: bench_load::quantile(&samples, 0.50),
        p99_ms: bench_load::quantile(&samples, 0.99),
        max_ms: samples.last().copied().unwrap_or(0.0),
        mean_ms,
    };
    let mut out = std::io::stdout();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&figures)?)?;
    } else {
        writeln!(
            out,
            "reload: config write -> first newly admitted task, {iterations} raises (debounce {} ms)",
            figures.debounce_ms
        )?;
        writeln!(
            out,
            "  p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms   mean {:.1} ms",
            figures.p50_ms, figures.p99_ms, figures.max_ms, figures.mean_ms
        )?;
    }
    Ok(())
}
