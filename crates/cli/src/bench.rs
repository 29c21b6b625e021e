//! `deputy bench`: measured scenarios through the real stack, printed as a
//! table or as JSON. Figures are reported, never asserted: targets live in
//! BENCHMARKS.md.
//!
//! `reload`: the time from writing a raised `max_concurrent` into the
//! config file to the first newly admitted task starting, through the real
//! watcher, debounce, parse, check and publish.

use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use deputy_registry::{RegistryEvent, TaskSpec};
use serde::Serialize;

use crate::config;
use crate::reload::{DEBOUNCE, Live, Reloader};
use crate::wiring;

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

fn config_text(max_concurrent: usize) -> String {
    format!(
        r#"[agent.subagents]
max_concurrent = {max_concurrent}
queue_wait_ms = 600000

[providers.offline]
kind = "scripted"

[agents.orchestrator]
provider = "offline"
subagents = ["worker"]

[agents.worker]
provider = "offline"
"#
    )
}

/// Runs the reload scenario `iterations` times and prints the figures.
///
/// # Errors
/// The temporary config cannot be written, or a raise is never applied
/// (after 10 s).
pub(crate) async fn reload(iterations: usize, json: bool) -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    let path = dir.join("deputy.toml");
    std::fs::write(&path, config_text(1)).context("cannot write the benchmark config")?;
    let config = config::load(&path)?;
    let stack = wiring::build(&config, "orchestrator")?;
    let _reloader = Reloader::start(config, Live::of(&stack));
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
        std::fs::write(&path, config_text(n + 1)).context("cannot write the benchmark config")?;
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
    stack.runtime.shutdown(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(&dir);

    samples.sort();
    let ms = |duration: Duration| duration.as_secs_f64() * 1000.0;
    let at = |quantile: f64| {
        let index = ((samples.len() as f64 * quantile).ceil() as usize).clamp(1, samples.len()) - 1;
        ms(samples[index])
    };
    let figures = ReloadFigures {
        scenario: "reload",
        iterations,
        debounce_ms: DEBOUNCE.as_millis(),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        max_ms: samples.last().copied().map_or(0.0, ms),
        mean_ms: samples.iter().copied().map(ms).sum::<f64>() / samples.len() as f64,
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

/// A fresh directory under the system's temporary directory.
fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "deputy-bench-{}-{}",
        std::process::id(),
        deputy_registry::TaskId::new_random().short()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}
