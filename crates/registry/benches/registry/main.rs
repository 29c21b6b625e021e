//! Registry benchmarks, each measured side by side with a bare
//! `tokio::sync::Semaphore` + `tokio::spawn` baseline in the same process:
//!
//! * throughput of spawn → run → complete → collect for no-op tasks, with
//!   room for all of them and with a small cap (so most of them queue);
//! * hand-off latency: from the moment a task's work returns to the moment
//!   the next queued task's work starts, at cap 1;
//! * memory per queued task, from the growth of resident memory while
//!   100,000 tasks wait.
//!
//! Throughput is also measured for the [floor](floor), a minimal registry
//! with only the parts deputy's contract asks of every task.
//!
//! Run with `cargo bench -p deputy-registry --bench registry`. Figures are
//! printed, not asserted; BENCHMARKS.md records them and the targets.
//! `-- throughput` runs only the throughput part, `-- current-thread` runs
//! on one thread, and `-- instructions` counts the instructions each
//! workload spends per task under valgrind, which unlike a rate does not
//! move with whatever else the machine is doing.

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark harness prints its figures and may panic on setup errors"
)]

mod floor;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deputy_registry::{RawSubagentSettings, Registry, SettingsHandle, SubagentSettings, TaskSpec};
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use crate::floor::Floor;

const THROUGHPUT_TASKS: usize = 200_000;
const HANDOFF_SAMPLES: usize = 20_000;
const MEMORY_TASKS: usize = 100_000;
const ROUNDS: usize = 3;
const _: () = assert!(ROUNDS >= 1, "the best of no rounds is undefined");
/// The cap of the throughput run where most tasks queue.
const SMALL_CAP: usize = 64;

/// Each memory figure is measured in a fresh process of this same binary, so
/// memory freed by earlier measurements cannot hide growth.
const MEMORY_CHILD_FLAG: &str = "--memory-child";

/// Runs one workload once and prints its rate: `--count-child registry
/// 200000` (add `current-thread` for one thread). Instruction counts run it
/// under valgrind on one thread; run alone, it is what `perf stat` and
/// `/usr/bin/time -v` measure in BENCHMARKS.md.
const COUNT_CHILD_FLAG: &str = "--count-child";
const WORKLOADS: [&str; 3] = ["registry", "floor", "baseline"];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `-- throughput` runs only the throughput part; `-- current-thread`
    // runs on one thread, which shows the CPU cost per task without lock
    // contention between threads.
    let only_throughput = args.iter().any(|arg| arg == "throughput");
    let current_thread = args.iter().any(|arg| arg == "current-thread");
    if args.iter().any(|arg| arg == "instructions") {
        count_instructions();
        return;
    }
    let runtime = if current_thread {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    if let Some(position) = args.iter().position(|arg| arg == COUNT_CHILD_FLAG) {
        let workload = args[position + 1].as_str();
        let tasks: usize = args[position + 2].parse().unwrap();
        let run = match workload {
            "registry" => runtime.block_on(registry_run(tasks, tasks)),
            "floor" => runtime.block_on(floor_run(tasks)),
            "baseline" => runtime.block_on(baseline_run(tasks, tasks)),
            other => panic!("unknown workload `{other}`; expected one of {WORKLOADS:?}"),
        };
        println!("{workload}: {:.0} tasks/s", run.rate());
        return;
    }
    if let Some(position) = args.iter().position(|arg| arg == MEMORY_CHILD_FLAG) {
        let bytes = match args.get(position + 1).map(String::as_str) {
            Some("registry") => runtime.block_on(registry_queued_memory()),
            Some("baseline") => runtime.block_on(baseline_queued_memory()),
            other => panic!(
                "unknown memory workload {other:?} after {MEMORY_CHILD_FLAG}; expected `registry` or `baseline`"
            ),
        };
        println!("{bytes}");
        return;
    }
    let threads = if current_thread {
        "a current-thread runtime"
    } else {
        "2 worker threads"
    };
    println!("deputy-registry benchmarks ({threads}, best of {ROUNDS} rounds where noted)\n");

    println!("throughput: spawn -> run -> complete -> collect, {THROUGHPUT_TASKS} no-op tasks");
    // Rounds alternate between the workloads, so each one's best comes
    // from the same stretch of time as the others' and the machine's drift
    // does not favour whichever ran first.
    let room = THROUGHPUT_TASKS;
    let mut best = Throughput::round(&runtime, room);
    for _ in 1..ROUNDS {
        best.keep_faster(Throughput::round(&runtime, room));
    }
    print_rate(room, "registry", best.registry, best.baseline);
    // The floor has no queue, so it runs only with room for all.
    print_rate(room, "floor", best.floor, best.baseline);
    print_rate(
        SMALL_CAP,
        "registry",
        best.registry_small_cap,
        best.baseline_small_cap,
    );
    println!(
        "  (each run spawns every task, then collects each in spawn order; the spawn and collect figures split its time per task)"
    );

    if only_throughput {
        return;
    }

    println!(
        "\nhand-off latency at cap 1: work returns -> next queued task's work starts, {HANDOFF_SAMPLES} samples"
    );
    let registry_latency = runtime.block_on(registry_handoff());
    let baseline_latency = runtime.block_on(baseline_handoff());
    println!("  registry: {}", describe(&registry_latency));
    println!("  baseline: {}", describe(&baseline_latency));

    println!("\nmemory per queued task ({MEMORY_TASKS} tasks waiting, resident memory growth)");
    let registry_bytes = memory_in_child("registry");
    let baseline_bytes = memory_in_child("baseline");
    println!("  registry: {registry_bytes:>6.0} bytes/task");
    println!("  baseline: {baseline_bytes:>6.0} bytes/task (a task parked on Semaphore::acquire)");
}

/// One run of each throughput workload: one round's, or the fastest of
/// each across rounds.
struct Throughput {
    registry: Run,
    floor: Run,
    baseline: Run,
    registry_small_cap: Run,
    baseline_small_cap: Run,
}

impl Throughput {
    /// Runs each workload once, in this order.
    fn round(runtime: &tokio::runtime::Runtime, room: usize) -> Self {
        Self {
            registry: runtime.block_on(registry_run(room, room)),
            floor: runtime.block_on(floor_run(room)),
            baseline: runtime.block_on(baseline_run(room, room)),
            registry_small_cap: runtime.block_on(registry_run(room, SMALL_CAP)),
            baseline_small_cap: runtime.block_on(baseline_run(room, SMALL_CAP)),
        }
    }

    /// Keeps, for each workload, the faster of its run here and in `round`.
    fn keep_faster(&mut self, round: Self) {
        self.registry.keep_faster(round.registry);
        self.floor.keep_faster(round.floor);
        self.baseline.keep_faster(round.baseline);
        self.registry_small_cap
            .keep_faster(round.registry_small_cap);
        self.baseline_small_cap
            .keep_faster(round.baseline_small_cap);
    }
}

/// One throughput run: how many tasks, and how long spawning them all and
/// then collecting them all took.
#[derive(Clone, Copy)]
struct Run {
    tasks: usize,
    spawning: Duration,
    collecting: Duration,
}

impl Run {
    /// A run of `tasks` that began at `started`, spent `spawning` spawning
    /// and has just finished collecting.
    fn finished(tasks: usize, started: Instant, spawning: Duration) -> Self {
        Self {
            tasks,
            spawning,
            collecting: started.elapsed() - spawning,
        }
    }

    fn rate(&self) -> f64 {
        self.tasks as f64 / (self.spawning + self.collecting).as_secs_f64()
    }

    fn micros_per_task(&self, phase: Duration) -> f64 {
        phase.as_secs_f64() * 1e6 / self.tasks as f64
    }

    /// Becomes `run` if that one was faster.
    fn keep_faster(&mut self, run: Run) {
        if run.rate() > self.rate() {
            *self = run;
        }
    }
}

fn print_rate(cap: usize, name: &str, run: Run, baseline: Run) {
    let (rate, baseline_rate) = (run.rate(), baseline.rate());
    println!(
        "  cap {cap:>7}: {name:<8} {rate:>10.0} tasks/s   baseline {baseline_rate:>10.0} tasks/s   ratio {:.2}   overhead {:>5.2} us/task",
        rate / baseline_rate,
        (1.0 / rate - 1.0 / baseline_rate) * 1e6,
    );
    println!(
        "  {:>13}spawn {:>5.2} us/task (baseline {:.2}), collect {:>5.2} us/task (baseline {:.2})",
        "",
        run.micros_per_task(run.spawning),
        baseline.micros_per_task(baseline.spawning),
        run.micros_per_task(run.collecting),
        baseline.micros_per_task(baseline.collecting),
    );
}

fn registry_with(max_concurrent: usize) -> Registry {
    let raw = RawSubagentSettings {
        max_concurrent: Some(i64::try_from(max_concurrent).unwrap()),
        max_queue: Some(10_000_000),
        queue_wait_ms: Some(86_400_000),
        max_finished: Some(10_000_000),
        ..RawSubagentSettings::default()
    };
    let settings = SettingsHandle::new(SubagentSettings::from_raw(raw).unwrap());
    Registry::builder().settings(settings).build()
}

/// Spawns `tasks` no-op tasks, then collects each.
async fn registry_run(tasks: usize, cap: usize) -> Run {
    let registry = registry_with(cap);
    let spec = TaskSpec::new("bench", "no-op").background(true);
    let started = Instant::now();
    let mut ids = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        let spawned = registry
            .spawn(spec.clone(), |_| async { Ok(String::new()) })
            .unwrap();
        ids.push(spawned.id);
    }
    let spawning = started.elapsed();
    for id in ids {
        std::hint::black_box(registry.wait(id, None).await.unwrap());
    }
    let run = Run::finished(tasks, started, spawning);
    registry.shutdown(Duration::from_secs(10)).await;
    run
}

async fn floor_run(tasks: usize) -> Run {
    let floor = Floor::new(tasks);
    let spec = TaskSpec::new("bench", "no-op").background(true);
    let started = Instant::now();
    let mut ids = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        ids.push(floor.spawn(&spec, || async { String::new() }).unwrap());
    }
    let spawning = started.elapsed();
    for id in ids {
        std::hint::black_box(floor.wait(id).await.unwrap());
    }
    let run = Run::finished(tasks, started, spawning);
    floor.shutdown().await;
    run
}

async fn baseline_run(tasks: usize, cap: usize) -> Run {
    let semaphore = Arc::new(Semaphore::new(cap));
    let started = Instant::now();
    let mut handles = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        let semaphore = semaphore.clone();
        handles.push(tokio::spawn(async move {
            let _permit = semaphore.acquire_owned().await.unwrap();
            String::new()
        }));
    }
    let spawning = started.elapsed();
    for handle in handles {
        std::hint::black_box(handle.await.unwrap());
    }
    Run::finished(tasks, started, spawning)
}

/// Instructions per task for each workload on one thread, from the
/// difference between runs of two sizes, so start-up and tear-down cancel
/// out.
fn count_instructions() {
    const SMALL: usize = 10_000;
    const LARGE: usize = 20_000;
    let valgrind_found = Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !valgrind_found {
        println!("instruction counts need valgrind on PATH (Debian: apt-get install valgrind)");
        return;
    }
    println!("instructions per task (callgrind, one thread, runs of {SMALL} and {LARGE} tasks)");
    let mut counts = Vec::new();
    for workload in WORKLOADS {
        let small = instructions_of(workload, SMALL);
        let large = instructions_of(workload, LARGE);
        let per_task = (large as f64 - small as f64) / (LARGE - SMALL) as f64;
        counts.push(per_task);
        println!("  {workload:<8}: {per_task:>8.0}");
    }
    println!(
        "  registry / baseline: {:.2}   floor / baseline: {:.2}",
        counts[0] / counts[2],
        counts[1] / counts[2]
    );
}

fn instructions_of(workload: &str, tasks: usize) -> u64 {
    let output = Command::new("valgrind")
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(std::env::current_exe().unwrap())
        .args([
            COUNT_CHILD_FLAG,
            workload,
            &tasks.to_string(),
            "current-thread",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "valgrind run of {workload} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // callgrind ends with a line such as "==123== Collected : 88401958".
    let stderr = String::from_utf8_lossy(&output.stderr);
    stderr
        .lines()
        .find_map(|line| line.split("Collected :").nth(1))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no `Collected : N` count in callgrind's output for {workload} ({tasks} tasks); \
                 check that this valgrind's callgrind prints one. Its stderr:\n{stderr}"
            )
        })
}

/// Per sample: when the previous task's work returned, when this one's began.
type Marks = Arc<Mutex<Vec<(Option<Instant>, Option<Instant>)>>>;

fn latencies(marks: &Marks) -> Vec<Duration> {
    let marks = marks.lock();
    let mut latencies: Vec<Duration> = marks
        .windows(2)
        .filter_map(|pair| Some(pair[1].0?.saturating_duration_since(pair[0].1?)))
        .collect();
    latencies.sort_unstable();
    latencies
}

async fn registry_handoff() -> Vec<Duration> {
    let registry = registry_with(1);
    let marks: Marks = Arc::new(Mutex::new(vec![(None, None); HANDOFF_SAMPLES]));
    let spec = TaskSpec::new("bench", "chain").background(true);
    let mut ids = Vec::with_capacity(HANDOFF_SAMPLES);
    for index in 0..HANDOFF_SAMPLES {
        let marks = marks.clone();
        let spawned = registry
            .spawn(spec.clone(), move |_| async move {
                marks.lock()[index].0 = Some(Instant::now());
                // A little work, so the next task is surely queued.
                std::hint::black_box((0..200).sum::<u64>());
                marks.lock()[index].1 = Some(Instant::now());
                Ok(String::new())
            })
            .unwrap();
        ids.push(spawned.id);
    }
    for id in ids {
        registry.wait(id, None).await.unwrap();
    }
    registry.shutdown(Duration::from_secs(10)).await;
    latencies(&marks)
}

async fn baseline_handoff() -> Vec<Duration> {
    let semaphore = Arc::new(Semaphore::new(1));
    let marks: Marks = Arc::new(Mutex::new(vec![(None, None); HANDOFF_SAMPLES]));
    // Hold the permit while the chain is set up, as the registry's queue is
    // set up before its first task starts.
    let hold = semaphore.clone().acquire_owned().await.unwrap();
    let mut handles = Vec::with_capacity(HANDOFF_SAMPLES);
    for index in 0..HANDOFF_SAMPLES {
        let marks = marks.clone();
        let semaphore = semaphore.clone();
        handles.push(tokio::spawn(async move {
            let _permit = semaphore.acquire_owned().await.unwrap();
            marks.lock()[index].0 = Some(Instant::now());
            std::hint::black_box((0..200).sum::<u64>());
            marks.lock()[index].1 = Some(Instant::now());
        }));
        // Semaphore waiters are FIFO once queued; yield so each acquire
        // queues in spawn order.
        tokio::task::yield_now().await;
    }
    drop(hold);
    for handle in handles {
        handle.await.unwrap();
    }
    latencies(&marks)
}

fn describe(latencies: &[Duration]) -> String {
    let at = |q: f64| {
        let index = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies[index].as_secs_f64() * 1e6
    };
    format!(
        "p50 {:>6.1} us   p99 {:>6.1} us   max {:>8.1} us   ({} samples)",
        at(0.50),
        at(0.99),
        at(1.0),
        latencies.len()
    )
}

fn memory_in_child(which: &str) -> f64 {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([MEMORY_CHILD_FLAG, which])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap()
}

fn resident_bytes() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0
}

async fn registry_queued_memory() -> f64 {
    let registry = registry_with(1);
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let blocker = registry
        .spawn(
            TaskSpec::new("bench", "blocker").background(true),
            |_| async move {
                let _ = release_rx.await;
                Ok(String::new())
            },
        )
        .unwrap();
    let spec = TaskSpec::new("bench", "queued").background(true);
    let before = resident_bytes();
    let mut ids = Vec::with_capacity(MEMORY_TASKS);
    for _ in 0..MEMORY_TASKS {
        ids.push(
            registry
                .spawn(spec.clone(), |_| async { Ok(String::new()) })
                .unwrap()
                .id,
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let grown = resident_bytes() - before;
    assert_eq!(registry.stats().queued, MEMORY_TASKS);
    release_tx.send(()).unwrap();
    registry.wait(blocker.id, None).await.unwrap();
    registry.shutdown(Duration::from_secs(30)).await;
    drop(ids);
    grown / MEMORY_TASKS as f64
}

async fn baseline_queued_memory() -> f64 {
    let semaphore = Arc::new(Semaphore::new(0));
    let before = resident_bytes();
    let mut handles = Vec::with_capacity(MEMORY_TASKS);
    for _ in 0..MEMORY_TASKS {
        let semaphore = semaphore.clone();
        handles.push(tokio::spawn(async move {
            let _permit = semaphore.acquire_owned().await.unwrap();
            String::new()
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let grown = resident_bytes() - before;
    semaphore.add_permits(MEMORY_TASKS);
    for handle in handles {
        handle.await.unwrap();
    }
    grown / MEMORY_TASKS as f64
}
