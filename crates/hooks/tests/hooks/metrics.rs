//! Metrics: the exposition parsed back by a Prometheus text parser.

use std::sync::Arc;

use async_trait::async_trait;
use deputy_hooks::{Metrics, ModelPrice, PriceTable, ReloadResult};
use deputy_registry::{
    HookError, HookStack, StartDecision, SubagentStartEvent, SubagentStartHook, Usage,
};
use prometheus_parse::{Scrape, Value};

use crate::support::{Work, registry, run, stop_signal, usage};

struct Broken;

#[async_trait]
impl SubagentStartHook for Broken {
    fn name(&self) -> &str {
        "broken"
    }

    async fn on_subagent_start(&self, _: &SubagentStartEvent) -> Result<StartDecision, HookError> {
        Err(HookError::msg("database down"))
    }
}

/// The value of the sample named `metric` whose labels include `labels`.
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == metric)
        .find(|sample| {
            labels
                .iter()
                .all(|(name, want)| sample.labels.get(name) == Some(want))
        })
        .and_then(|sample| match &sample.value {
            Value::Counter(value) | Value::Gauge(value) | Value::Untyped(value) => Some(*value),
            Value::Histogram(buckets) => buckets.last().map(|bucket| bucket.count),
            Value::Summary(_) => None,
        })
}

#[tokio::test]
async fn counts_gauges_histograms_tokens_and_cost_parse_back() {
    let prices = PriceTable::empty().with_price("house-model", ModelPrice::new(1.0, 2.0));
    let metrics = Arc::new(Metrics::with_prices(prices));
    let (signal, mut stops) = stop_signal();
    let registry = registry(
        HookStack::new()
            .with_both(metrics.clone())
            .with_start(Arc::new(Broken))
            .with_stop(signal),
        4,
    );
    metrics.attach(&registry);

    let cached = Usage {
        cache_read_tokens: 300,
        ..usage(1_000_000, 500_000)
    };
    run(
        &registry,
        "researcher",
        "openai",
        "house-model",
        Work::Complete(cached),
    )
    .await;
    run(
        &registry,
        "researcher",
        "openai",
        "house-model",
        Work::Complete(usage(1_000_000, 0)),
    )
    .await;
    run(
        &registry,
        "writer",
        "openai",
        "mystery",
        Work::Fail(usage(10, 0)),
    )
    .await;
    for _ in 0..3 {
        stops.next().await;
    }
    metrics.record_reload(ReloadResult::Applied);
    metrics.record_reload(ReloadResult::Rejected);
    metrics.record_reload(ReloadResult::Rejected);
    // Hook failures arrive through the registry's event stream.
    assert!(
        crate::support::eventually(|| metrics
            .render()
            .contains("deputy_hook_failures_total{hook=\"broken\",event=\"SubagentStart\"} 3"))
        .await
    );

    let text = metrics.render();
    let scrape = Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).unwrap();
    let get = |metric: &str, labels: &[(&str, &str)]| {
        value(&scrape, metric, labels)
            .unwrap_or_else(|| panic!("no {metric} {labels:?} in\n{text}"))
    };
    assert_eq!(
        get("deputy_subagents_started_total", &[("agent", "researcher")]),
        2.0
    );
    assert_eq!(
        get("deputy_subagents_started_total", &[("agent", "writer")]),
        1.0
    );
    assert_eq!(
        get(
            "deputy_subagents_finished_total",
            &[("agent", "researcher"), ("status", "completed")]
        ),
        2.0
    );
    assert_eq!(
        get(
            "deputy_subagents_finished_total",
            &[("agent", "writer"), ("status", "failed")]
        ),
        1.0
    );
    assert_eq!(get("deputy_subagents_running", &[]), 0.0);
    assert_eq!(get("deputy_subagents_queued", &[]), 0.0);
    assert_eq!(get("deputy_subagents_max_concurrent", &[]), 4.0);
    assert_eq!(
        get(
            "deputy_subagent_run_seconds_count",
            &[("agent", "researcher")]
        ),
        2.0
    );
    assert_eq!(
        get(
            "deputy_subagent_queue_wait_seconds_count",
            &[("agent", "writer")]
        ),
        1.0
    );
    assert_eq!(
        get(
            "deputy_subagent_tokens_total",
            &[
                ("agent", "researcher"),
                ("model", "house-model"),
                ("kind", "input")
            ]
        ),
        2_000_000.0
    );
    assert_eq!(
        get(
            "deputy_subagent_tokens_total",
            &[("agent", "researcher"), ("kind", "cache_read")]
        ),
        300.0
    );
    // $1 + $1 + 300 cache tokens at the input rate, and $1 for the second.
    let cost = get(
        "deputy_subagent_cost_usd_total",
        &[("agent", "researcher"), ("model", "house-model")],
    );
    assert!((cost - 3.0003).abs() < 1e-9, "{cost}");
    assert_eq!(
        get(
            "deputy_subagent_unpriced_total",
            &[("agent", "writer"), ("model", "mystery")]
        ),
        1.0
    );
    assert_eq!(
        get(
            "deputy_hook_failures_total",
            &[("hook", "broken"), ("event", "SubagentStart")]
        ),
        3.0
    );
    assert_eq!(
        get("deputy_config_reloads_total", &[("result", "applied")]),
        1.0
    );
    assert_eq!(
        get("deputy_config_reloads_total", &[("result", "rejected")]),
        2.0
    );
}
