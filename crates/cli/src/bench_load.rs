//! Load scenarios for `deputy bench`: `burst`, `wide` and `churn`, through
//! the real stack (config, agent runtime, registry, the scripted provider,
//! and the metrics, billing and audit hooks), each beside a baseline of bare
//! tokio tasks behind a `tokio::sync::Semaphore` in the same process.
//!
//! Figures are reported, never asserted here; `churn` reports its
//! invariants (leaked slots, unpaired hook events, retention checked at
//! every sample, every task read back once) and the soak test asserts
//! those.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use deputy_agent::TaskOptions;
use deputy_registry::{CancelOutcome, RegistryEvent, TaskId, TaskStatus};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{Semaphore, TryAcquireError, broadcast};

use crate::config::{self, Config};
use crate::reload::{Live, Reloader};
use crate::wiring::{self, Stack};

/// What a load scenario measured, for the registry or the baseline.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub(crate) struct Figures {
    pub(crate) tasks_per_s: f64,
    pub(crate) handoff_p50_us: f64,
    pub(crate) handoff_p99_us: f64,
    pub(crate) handoff_max_us: f64,
    pub(crate) queue_wait_p50_ms: f64,
    pub(crate) queue_wait_p99_ms: f64,
    pub(crate) peak_rss_bytes: u64,
    pub(crate) bytes_per_task: f64,
    pub(crate) hook_overhead_us: f64,
    pub(crate) elapsed_s: f64,
}

impl Figures {
    /// Figures from one side's raw samples.
    fn from_samples(
        tasks: usize,
        elapsed: Duration,
        handoffs: Vec<f64>,
        queue_waits: Vec<f64>,
        peak_rss: u64,
        rss_before: u64,
        hook_overhead_us: f64,
    ) -> Self {
        let handoffs = sorted(handoffs);
        let queue_waits = sorted(queue_waits);
        #[expect(clippy::cast_precision_loss, reason = "task counts and byte sizes")]
        Self {
            tasks_per_s: tasks as f64 / elapsed.as_secs_f64(),
            handoff_p50_us: quantile(&handoffs, 0.50),
            handoff_p99_us: quantile(&handoffs, 0.99),
            handoff_max_us: handoffs.last().copied().unwrap_or(0.0),
            queue_wait_p50_ms: quantile(&queue_waits, 0.50),
            queue_wait_p99_ms: quantile(&queue_waits, 0.99),
            peak_rss_bytes: peak_rss,
            bytes_per_task: peak_rss.saturating_sub(rss_before) as f64 / tasks.max(1) as f64,
            hook_overhead_us,
            elapsed_s: elapsed.as_secs_f64(),
        }
    }
}

/// The `--json` document of `burst` and `wide`.
#[derive(Debug, Serialize)]
pub(crate) struct LoadReport {
    pub(crate) scenario: &'static str,
    pub(crate) tasks: usize,
    pub(crate) cap: usize,
    pub(crate) latency_ms: u64,
    /// `tasks × latency ÷ cap`: the time a perfect scheduler would take.
    pub(crate) ideal_s: f64,
    #[serde(flatten)]
    pub(crate) registry: Figures,
    pub(crate) baseline: Figures,
    pub(crate) ratio_to_baseline: f64,
}

/// A config for the bench stack: one `worker` on the scripted provider
/// (and a `flaky` one whose tasks time out), with every built-in hook.
fn config_text(cap: usize, latency_ms: u64, tasks: usize) -> String {
    let queue = tasks.max(256);
    format!(
        r#"
[agent.subagents]
max_concurrent = {cap}
queue_wait_ms = 86400000
max_queue = {queue}
max_finished = {queue}

[providers.offline]
kind = "scripted"
latency_ms = {latency_ms}

[providers.stuck]
kind = "scripted"
latency_ms = 1500

[agents.orchestrator]
provider = "offline"
subagents = ["worker"]

[agents.worker]
provider = "offline"

[agents.flaky]
provider = "stuck"
timeout_secs = 1

[hooks.metrics]

[hooks.audit]
path = "audit.jsonl"

[billing]
ledger = "ledger.jsonl"
"#
    )
}

/// A stack built from [`config_text`] in a fresh directory.
pub(crate) struct Bench {
    pub(crate) stack: Stack,
    /// The config the stack was built from, kept so the reloader starts
    /// from it rather than from a second load of the file.
    config: Config,
    /// Declared last, so the stack (and its open audit and ledger files)
    /// is dropped before the directory is removed.
    dir: tempfile::TempDir,
}

impl Bench {
    pub(crate) fn new(cap: usize, latency_ms: u64, tasks: usize) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("deputy-bench-")
            .tempdir()
            .context("cannot create a temporary directory for the benchmark; check TMPDIR")?;
        let path = dir.path().join("deputy.toml");
        std::fs::write(&path, config_text(cap, latency_ms, tasks))
            .context("cannot write the benchmark config")?;
        let config = config::load(&path)?;
        // Every event of the burst is read, so the channel holds them all.
        let stack = wiring::build_with_events(&config, tasks.saturating_mul(4).max(1024))?;
        Ok(Self { stack, config, dir })
    }

    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn config_path(&self) -> PathBuf {
        self.dir().join("deputy.toml")
    }

    /// Starts the live reloader on the config file, from the config the
    /// stack was built with.
    ///
    /// # Errors
    /// The config has no file to watch (never for a bench's own).
    pub(crate) fn reloader(&self) -> anyhow::Result<Reloader> {
        Reloader::start(self.config.clone(), Live::of(&self.stack))
            .context("the benchmark config has no file to watch, so a reload cannot be measured")
    }
}

/// The process's resident memory now, in bytes.
pub(crate) fn rss_bytes() -> u64 {
    status_bytes("VmRSS:")
}

/// A size from `/proc/self/status` (given there in kB), in bytes; 0 when
/// it cannot be read.
fn status_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|value| {
                    value
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(0, |kib| kib * 1024)
}

/// Starts a stretch of a run whose peak resident memory
/// [`peak_rss_bytes`] reads: the kernel's high-water mark (`VmHWM`) is
/// reset to the resident memory now, by writing 5 to
/// `/proc/self/clear_refs` (Linux 4.0 and later; proc(5)), so no peak
/// between samples is missed and no sampler runs beside the load. Where
/// that fails, the mark counts from the start of the process, which each
/// load side has to itself.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory since [`reset_peak_rss`], in bytes.
fn peak_rss_bytes() -> u64 {
    status_bytes("VmHWM:").max(rss_bytes())
}

/// The `quantile` of sorted `values` (nearest rank).
pub(crate) fn quantile(sorted: &[f64], quantile: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a rank within a small vector"
    )]
    let rank = ((sorted.len() as f64 * quantile).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

/// Registry events with the moment each was read.
type EventLog = Arc<Mutex<Vec<(Instant, RegistryEvent)>>>;

/// Every registry event with the moment it was read.
fn record_events(
    mut events: broadcast::Receiver<RegistryEvent>,
) -> (EventLog, tokio::task::JoinHandle<()>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    let task = tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(event) => sink.lock().push((Instant::now(), event)),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    (log, task)
}

/// Hand-off latencies: for each task that waited for a slot, the time from
/// the last task end before its start to its start.
fn handoffs(events: &[(Instant, RegistryEvent)]) -> Vec<f64> {
    let mut last_finished: Option<Instant> = None;
    let mut latencies = Vec::new();
    for (at, event) in events {
        match event {
            RegistryEvent::Finished { .. } => last_finished = Some(*at),
            RegistryEvent::Started { queued_for, .. } if !queued_for.is_zero() => {
                if let Some(finished) = last_finished {
                    latencies.push(at.duration_since(finished).as_secs_f64() * 1e6);
                }
            }
            _ => {}
        }
    }
    latencies
}

/// The cost of the hook stack per task: start and stop hooks run back to
/// back on synthetic events, timed. A hook that fails ends the benchmark,
/// since a hook failing fast would make the stack look cheap.
async fn hook_overhead_us(stack: &Stack, rounds: usize) -> anyhow::Result<f64> {
    use deputy_hooks::{SubagentStartHook, SubagentStopHook};
    use deputy_registry::{HookTask, SubagentStartEvent, SubagentStopEvent, Usage};
    let mut starts: Vec<Arc<dyn SubagentStartHook>> = Vec::new();
    let mut stops: Vec<Arc<dyn SubagentStopHook>> = Vec::new();
    if let Some(metrics) = stack.hooks.metrics() {
        starts.push(metrics.clone());
        stops.push(metrics.clone());
    }
    if let Some(audit) = stack.hooks.audit() {
        starts.push(audit.clone());
        stops.push(audit.clone());
    }
    if let Some(billing) = stack.hooks.billing() {
        starts.push(billing.clone());
        stops.push(billing.clone());
    }
    let task = HookTask {
        id: TaskId::new_random(),
        parent_id: None,
        agent: "worker".into(),
        // The labels a worker's task carries.
        labels: stack
            .runtime
            .agent("worker")
            .map(|agent| agent.labels())
            .unwrap_or_default(),
        text: "a task of the benchmark".into(),
        depth: 1,
        background: true,
        created_at: std::time::SystemTime::now(),
        queued_for: Duration::ZERO,
    };
    let began = Instant::now();
    for _ in 0..rounds {
        let mut task = task.clone();
        task.id = TaskId::new_random();
        let start = SubagentStartEvent { task: task.clone() };
        let stop = SubagentStopEvent {
            task,
            status: TaskStatus::Completed,
            error: None,
            output: Some("done".into()),
            duration: Duration::from_millis(50),
            usage: Usage {
                input_tokens: 100,
                output_tokens: 50,
                requests: 1,
                ..Usage::default()
            },
            ended_at: std::time::SystemTime::now(),
        };
        for hook in &starts {
            hook.on_subagent_start(&start).await.with_context(|| {
                format!("the {} start hook failed on a benchmark event", hook.name())
            })?;
        }
        for hook in &stops {
            hook.on_subagent_stop(&stop).await.with_context(|| {
                format!("the {} stop hook failed on a benchmark event", hook.name())
            })?;
        }
    }
    #[expect(clippy::cast_precision_loss, reason = "a count of rounds")]
    let per_task = began.elapsed().as_secs_f64() * 1e6 / rounds.max(1) as f64;
    Ok(per_task)
}

impl LoadReport {
    /// Both sides' figures, with the ideal time and the ratio.
    pub(crate) fn new(
        scenario: &'static str,
        tasks: usize,
        cap: usize,
        latency_ms: u64,
        registry: Figures,
        baseline: Figures,
    ) -> Self {
        let latency = Duration::from_millis(latency_ms);
        #[expect(clippy::cast_precision_loss, reason = "task counts")]
        let ideal_s =
            (tasks as f64 * latency.as_secs_f64() / cap.max(1) as f64).max(latency.as_secs_f64());
        let ratio_to_baseline = if baseline.tasks_per_s > 0.0 {
            registry.tasks_per_s / baseline.tasks_per_s
        } else {
            0.0
        };
        Self {
            scenario,
            tasks,
            cap,
            latency_ms,
            ideal_s,
            registry,
            baseline,
            ratio_to_baseline,
        }
    }
}

/// One side of a load comparison, measured in this process.
///
/// # Errors
/// The stack cannot be built or refused a task.
pub(crate) async fn one_side(
    side: crate::bench::Side,
    tasks: usize,
    cap: usize,
    latency_ms: u64,
) -> anyhow::Result<Figures> {
    match side {
        crate::bench::Side::Deputy => run_stack(tasks, cap, latency_ms).await,
        crate::bench::Side::Baseline => {
            Ok(run_baseline(tasks, cap, Duration::from_millis(latency_ms)).await)
        }
    }
}

async fn run_stack(tasks: usize, cap: usize, latency_ms: u64) -> anyhow::Result<Figures> {
    let bench = Bench::new(cap, latency_ms, tasks)?;
    let runtime = bench.stack.runtime.clone();
    let hook_overhead = hook_overhead_us(&bench.stack, 2000).await?;
    let (events, recorder) = record_events(runtime.registry().subscribe());
    let rss_before = rss_bytes();
    reset_peak_rss();
    let began = Instant::now();
    let mut ids = Vec::with_capacity(tasks);
    for n in 0..tasks {
        let spawned = runtime
            .spawn_task("worker", &format!("task {n}"), TaskOptions::default())
            .context("the registry refused a benchmark task")?;
        ids.push(spawned.id);
    }
    let mut queue_waits = Vec::with_capacity(tasks);
    for id in &ids {
        let done = runtime.registry().wait(*id, None).await?;
        queue_waits.push(done.task.queued_for.as_secs_f64() * 1000.0);
    }
    let elapsed = began.elapsed();
    let peak_rss = peak_rss_bytes();
    tokio::time::sleep(Duration::from_millis(50)).await;
    recorder.abort();
    bench.stack.shutdown(Duration::from_secs(10)).await;
    Ok(Figures::from_samples(
        tasks,
        elapsed,
        handoffs(&events.lock()),
        queue_waits,
        peak_rss,
        rss_before,
        hook_overhead,
    ))
}

async fn run_baseline(tasks: usize, cap: usize, latency: Duration) -> Figures {
    let semaphore = Arc::new(Semaphore::new(cap));
    let marks: Arc<Mutex<Vec<(Instant, bool)>>> =
        Arc::new(Mutex::new(Vec::with_capacity(tasks * 2)));
    let rss_before = rss_bytes();
    reset_peak_rss();
    let began = Instant::now();
    let mut handles = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        let semaphore = semaphore.clone();
        let marks = marks.clone();
        let spawned_at = Instant::now();
        handles.push(tokio::spawn(async move {
            // A free permit is a start without a wait, as the registry's
            // `queued_for` of zero for a task admitted at spawn; only a
            // task that found none waited.
            let (permit, waited) = match semaphore.clone().try_acquire_owned() {
                Ok(permit) => (permit, None),
                Err(TryAcquireError::NoPermits) => {
                    let Ok(permit) = semaphore.acquire_owned().await else {
                        return Duration::ZERO;
                    };
                    (permit, Some(spawned_at.elapsed()))
                }
                Err(TryAcquireError::Closed) => return Duration::ZERO,
            };
            marks.lock().push((Instant::now(), waited.is_some()));
            tokio::time::sleep(latency).await;
            marks.lock().push((Instant::now(), false));
            drop(permit);
            waited.unwrap_or_default()
        }));
    }
    let mut queue_waits = Vec::with_capacity(tasks);
    for handle in handles {
        queue_waits.push(handle.await.unwrap_or_default().as_secs_f64() * 1000.0);
    }
    let elapsed = began.elapsed();
    let peak_rss = peak_rss_bytes();
    // Marks in order: (time, true) for a start after a wait, (time, false)
    // for an end (or an unqueued start, which is skipped).
    let mut marks = marks.lock().clone();
    marks.sort_by_key(|(at, _)| *at);
    let mut last_end: Option<Instant> = None;
    let mut handoffs = Vec::new();
    for (at, queued_start) in marks {
        if queued_start {
            if let Some(end) = last_end {
                handoffs.push(at.duration_since(end).as_secs_f64() * 1e6);
            }
        } else {
            last_end = Some(at);
        }
    }
    Figures::from_samples(
        tasks,
        elapsed,
        handoffs,
        queue_waits,
        peak_rss,
        rss_before,
        0.0,
    )
}

/// What `churn` saw, and the invariants it checked.
#[derive(Debug, Serialize)]
pub(crate) struct ChurnReport {
    pub(crate) scenario: &'static str,
    pub(crate) secs: u64,
    pub(crate) cap: usize,
    /// Tasks spawned.
    pub(crate) tasks: usize,
    /// How the spawned tasks ended, counted from the results read back.
    pub(crate) completed: usize,
    pub(crate) failures: usize,
    pub(crate) cancelled: usize,
    /// Cancel calls the registry answered with a cancel (a call that found
    /// the task already finished is not counted).
    pub(crate) cancels: usize,
    /// New caps written into the config file.
    pub(crate) cap_writes: usize,
    /// Changes of the cap in force that the registry showed, so writes the
    /// reloader applied.
    pub(crate) cap_changes: usize,
    pub(crate) tasks_per_s: f64,
    /// Resident memory at each eighth of the run.
    pub(crate) rss_samples_bytes: Vec<u64>,
    pub(crate) peak_rss_bytes: u64,
    /// `max_finished` in force at the end (churn changes only the cap).
    pub(crate) max_finished: usize,
    /// Samples of the registry's counts, and how many of them held more
    /// tasks than running + queued + `max_finished` at that same moment.
    pub(crate) retention_samples: usize,
    pub(crate) retention_violations: usize,
    /// The most tasks the registry held at one sample, and the bound
    /// (running + queued + `max_finished`) at that same sample.
    pub(crate) retained_max: usize,
    pub(crate) retained_bound: usize,
    pub(crate) leaked_slots: usize,
    pub(crate) starts: usize,
    pub(crate) stops: usize,
    pub(crate) unpaired: usize,
    pub(crate) undelivered: usize,
    pub(crate) invariants_ok: bool,
}

/// How the tasks read back ended.
#[derive(Debug, Default)]
struct Outcomes {
    completed: usize,
    failed: usize,
    cancelled: usize,
}

impl Outcomes {
    fn add(&mut self, status: TaskStatus) {
        match status {
            TaskStatus::Completed => self.completed += 1,
            TaskStatus::Failed => self.failed += 1,
            TaskStatus::Cancelled => self.cancelled += 1,
            // `take_finished` hands over finished tasks only.
            TaskStatus::Queued | TaskStatus::Running => {}
        }
    }

    fn total(&self) -> usize {
        self.completed + self.failed + self.cancelled
    }
}

/// A stream of tasks for `secs` seconds with random cancels, failures and
/// cap changes written into the config file, then the invariants.
pub(crate) async fn churn(
    secs: u64,
    cap: usize,
    latency_ms: u64,
    seed: u64,
) -> anyhow::Result<ChurnReport> {
    // Sizes the queue and `max_finished`; the retention bound is read back
    // from the registry, not from here.
    let bench = Bench::new(cap, latency_ms, 512)?;
    let reloader = bench.reloader()?;
    let runtime = bench.stack.runtime.clone();
    let registry = runtime.registry().clone();
    let mut rng = fastrand::Rng::with_seed(seed);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let began = Instant::now();
    // Only a count: a list of every id would itself grow without bound.
    let mut spawned = 0_usize;
    let mut outcomes = Outcomes::default();
    let mut cancels = 0;
    let (mut cap_writes, mut cap_changes) = (0, 0);
    // The cap the file says, and the cap in force at the last sample.
    let mut written_cap = cap;
    let mut cap_in_force = registry.stats().max_concurrent;
    let (mut retention_samples, mut retention_violations) = (0, 0);
    let (mut retained_max, mut retained_bound) = (0, 0);
    let mut rss_samples = Vec::new();
    let mut next_cap_change = Instant::now() + Duration::from_secs(2);
    let sample_every = Duration::from_secs(secs).div_f64(8.0);
    let mut next_sample = Instant::now() + sample_every;
    reset_peak_rss();
    let mut pending: HashSet<TaskId> = HashSet::new();
    while Instant::now() < deadline {
        // Keep about twice the cap in flight.
        let load = registry.stats();
        for _ in load.running + load.queued..load.max_concurrent * 2 {
            let flaky = rng.u8(..100) < 5;
            let agent = if flaky { "flaky" } else { "worker" };
            let task = runtime
                .spawn_task(agent, "churn", TaskOptions::default())
                .context("the registry refused a churn task")?;
            spawned += 1;
            pending.insert(task.id);
            // Drawn for every task, so the seed gives the same choices
            // whatever the cancel answers.
            if rng.u8(..100) < 5
                && matches!(
                    registry.cancel(task.id),
                    Ok(CancelOutcome::Cancelled { .. })
                )
            {
                cancels += 1;
            }
        }
        // Read what finished, as a host does (exactly once).
        for task in registry.take_finished(None) {
            pending.remove(&task.id);
            outcomes.add(task.status);
        }
        // Retention is checked against the counts of the same moment.
        let held = registry.stats();
        let bound = held.running + held.queued + registry.settings().max_finished();
        retention_samples += 1;
        if held.tracked > bound {
            retention_violations += 1;
        }
        if held.tracked > retained_max {
            (retained_max, retained_bound) = (held.tracked, bound);
        }
        if held.max_concurrent != cap_in_force {
            cap_changes += 1;
            cap_in_force = held.max_concurrent;
        }
        if Instant::now() >= next_cap_change {
            let new_cap = rng.usize((cap / 2).max(1)..=cap * 2);
            // The same cap again would be a write with nothing to apply.
            if new_cap != written_cap {
                write_cap(&bench.config_path(), written_cap, new_cap)?;
                written_cap = new_cap;
                cap_writes += 1;
            }
            next_cap_change = Instant::now() + Duration::from_secs(2);
        }
        if Instant::now() >= next_sample {
            rss_samples.push(rss_bytes());
            next_sample += sample_every;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(reloader);
    // Let everything end, then read what is left.
    bench.stack.shutdown(Duration::from_secs(30)).await;
    for task in registry.take_finished(None) {
        pending.remove(&task.id);
        outcomes.add(task.status);
    }
    let elapsed = began.elapsed();
    let peak_rss = peak_rss_bytes();
    let stats = registry.stats();
    let (starts, stops, unpaired) = audit_pairs(&bench.dir().join("audit.jsonl"))?;
    // Delivered results were evicted after their TTL or by max_finished;
    // what is left undelivered must be listed.
    let undelivered = pending
        .iter()
        .filter(|id| registry.get(**id).is_none_or(|task| !task.is_finished()))
        .count();
    let leaked_slots = stats.slots_in_use;
    // Every spawned task read back exactly once, with its end status.
    let invariants_ok = leaked_slots == 0
        && unpaired == 0
        && undelivered == 0
        && retention_violations == 0
        && outcomes.total() == spawned;
    #[expect(clippy::cast_precision_loss, reason = "task counts")]
    let tasks_per_s = spawned as f64 / elapsed.as_secs_f64();
    Ok(ChurnReport {
        scenario: "churn",
        secs,
        cap,
        tasks: spawned,
        completed: outcomes.completed,
        failures: outcomes.failed,
        cancelled: outcomes.cancelled,
        cancels,
        cap_writes,
        cap_changes,
        tasks_per_s,
        rss_samples_bytes: rss_samples,
        peak_rss_bytes: peak_rss,
        max_finished: registry.settings().max_finished(),
        retention_samples,
        retention_violations,
        retained_max,
        retained_bound,
        leaked_slots,
        starts,
        stops,
        unpaired,
        undelivered,
        invariants_ok,
    })
}

/// Rewrites the config's `max_concurrent = from` line as `= to`.
pub(crate) fn write_cap(path: &Path, from: usize, to: usize) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the benchmark config {}", path.display()))?;
    let current = format!("max_concurrent = {from}\n");
    anyhow::ensure!(
        text.contains(&current),
        "the benchmark config {} has no `max_concurrent = {from}` line; leave the file alone while the benchmark runs",
        path.display()
    );
    std::fs::write(
        path,
        text.replacen(&current, &format!("max_concurrent = {to}\n"), 1),
    )
    .with_context(|| format!("cannot write the benchmark config {}", path.display()))
}

/// Start lines, stop lines, and task ids without exactly one of each.
fn audit_pairs(path: &Path) -> anyhow::Result<(usize, usize, usize)> {
    let lines = deputy_hooks::AuditLog::read_all(path)
        .with_context(|| format!("cannot read the audit log {}", path.display()))?;
    let mut counts: HashMap<String, (usize, usize)> = HashMap::new();
    let (mut starts, mut stops) = (0, 0);
    for line in &lines {
        let id = line["task_id"].as_str().unwrap_or_default().to_owned();
        let entry = counts.entry(id).or_default();
        if line["hook_event_name"] == "SubagentStart" {
            entry.0 += 1;
            starts += 1;
        } else {
            entry.1 += 1;
            stops += 1;
        }
    }
    let unpaired = counts
        .values()
        .filter(|(start, stop)| *start != 1 || *stop != 1)
        .count();
    Ok((starts, stops, unpaired))
}
