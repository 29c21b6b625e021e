//! The load tool, in short forms: the churn soak asserts its invariants
//! (never its timings), and burst prints every figure scripts track.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on unexpected states"
)]

use std::process::Command;

use serde_json::Value;

fn bench(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_deputy"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn a_short_churn_keeps_every_invariant() {
    let report = bench(&["churn", "--secs", "8", "--cap", "8", "--latency-ms", "10"]);
    assert_eq!(report["invariants_ok"], true, "{report:#}");
    assert_eq!(report["leaked_slots"], 0, "{report:#}");
    assert_eq!(report["unpaired"], 0, "{report:#}");
    assert_eq!(report["undelivered"], 0, "{report:#}");
    assert_eq!(report["starts"], report["stops"], "{report:#}");
    assert!(report["tasks"].as_u64().unwrap() > 100, "{report:#}");
    assert!(report["cancels"].as_u64().unwrap() > 0, "{report:#}");
    assert!(report["failures"].as_u64().unwrap() > 0, "{report:#}");
    assert!(report["cap_changes"].as_u64().unwrap() >= 2, "{report:#}");
    // Memory is bounded by counting what the registry keeps, not by time.
    assert!(
        report["retained_max"].as_u64().unwrap() <= report["retained_bound"].as_u64().unwrap(),
        "{report:#}"
    );
}

#[test]
fn burst_reports_every_figure_beside_the_baseline() {
    let report = bench(&["burst", "--tasks", "200", "--cap", "8", "--latency-ms", "5"]);
    for key in [
        "scenario",
        "tasks",
        "cap",
        "tasks_per_s",
        "handoff_p50_us",
        "handoff_p99_us",
        "handoff_max_us",
        "queue_wait_p50_ms",
        "queue_wait_p99_ms",
        "peak_rss_bytes",
        "bytes_per_task",
        "hook_overhead_us",
        "baseline",
        "ratio_to_baseline",
    ] {
        assert!(report.get(key).is_some(), "no {key} in {report:#}");
    }
    assert_eq!(report["scenario"], "burst");
    assert_eq!(report["tasks"], 200);
    assert!(report["tasks_per_s"].as_f64().unwrap() > 0.0);
    assert!(report["baseline"]["tasks_per_s"].as_f64().unwrap() > 0.0);
    assert!(report["hook_overhead_us"].as_f64().unwrap() > 0.0);
}
