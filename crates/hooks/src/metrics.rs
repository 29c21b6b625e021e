//! Prometheus metrics for sub-agents, rendered by [`Metrics::render`] for a
//! server's `/metrics`.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `deputy_subagents_started_total` | counter | `agent` |
//! | `deputy_subagents_finished_total` | counter | `agent`, `status` |
//! | `deputy_subagents_running` | gauge | |
//! | `deputy_subagents_queued` | gauge | |
//! | `deputy_subagents_max_concurrent` | gauge | |
//! | `deputy_subagent_queue_wait_seconds` | histogram | `agent` |
//! | `deputy_subagent_run_seconds` | histogram | `agent` |
//! | `deputy_subagent_tokens_total` | counter | `agent`, `model`, `kind` (`input`, `output`, `cache_read`, `cache_write`) |
//! | `deputy_subagent_cost_usd_total` | counter | `agent`, `model` |
//! | `deputy_subagent_unpriced_total` | counter | `agent`, `model` |
//! | `deputy_hook_failures_total` | counter | `hook`, `event` |
//! | `deputy_config_reloads_total` | counter | `result` (`applied`, `rejected`) |
//!
//! A labelled family appears once it has its first sample. The gauges are
//! read from the registry at render time, once
//! [`Metrics::attach`] has been called; hook failures are counted from the
//! registry's events (a reader that falls more than the event channel's
//! capacity behind logs how many it missed; `RegistryStats::hook_failures`
//! keeps the exact total).

use std::sync::OnceLock;

use async_trait::async_trait;
use deputy_registry::{
    HookError, HookEventName, Registry, RegistryEvent, StartDecision, SubagentStartEvent,
    SubagentStartHook, SubagentStopEvent, SubagentStopHook, WeakRegistry,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use std::sync::atomic::AtomicU64;
use tokio::sync::broadcast::error::RecvError;

use crate::price::PriceTable;

/// The `Content-Type` of [`Metrics::render`]'s output (OpenMetrics text,
/// which Prometheus scrapes natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    agent: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishedLabels {
    agent: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    agent: String,
    model: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    agent: String,
    model: String,
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    hook: String,
    event: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: String,
}

/// How a config reload went, for [`Metrics::record_reload`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    /// The new settings took effect.
    Applied,
    /// The edit was invalid; the last good settings stayed.
    Rejected,
}

fn seconds_histogram() -> Histogram {
    // 1 ms to about 9 hours, doubling.
    Histogram::new(exponential_buckets(0.001, 2.0, 25))
}

/// The metrics hook: a start and stop hook that counts, plus the registry
/// gauges and hook-failure counts once attached (see the module docs).
///
/// ```
/// use std::sync::Arc;
/// use deputy_hooks::Metrics;
/// use deputy_registry::HookStack;
///
/// let metrics = Arc::new(Metrics::new());
/// let hooks = HookStack::new().with_both(Arc::clone(&metrics));
/// let text = metrics.render();
/// assert!(text.contains("# TYPE deputy_subagents_running gauge"));
/// # drop(hooks);
/// ```
#[derive(Debug)]
pub struct Metrics {
    exposition: prometheus_client::registry::Registry,
    prices: PriceTable,
    started: Family<AgentLabels, Counter>,
    finished: Family<FinishedLabels, Counter>,
    running: Gauge,
    queued: Gauge,
    max_concurrent: Gauge,
    queue_wait: Family<AgentLabels, Histogram>,
    run_time: Family<AgentLabels, Histogram>,
    tokens: Family<TokenLabels, Counter>,
    cost: Family<ModelLabels, Counter<f64, AtomicU64>>,
    unpriced: Family<ModelLabels, Counter>,
    hook_failures: Family<HookLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    registry: OnceLock<WeakRegistry>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Metrics priced with the built-in price table.
    pub fn new() -> Self {
        Self::with_prices(PriceTable::builtin())
    }

    /// Metrics whose cost counter uses `prices`.
    pub fn with_prices(prices: PriceTable) -> Self {
        let mut exposition = prometheus_client::registry::Registry::default();
        let started = Family::<AgentLabels, Counter>::default();
        let finished = Family::<FinishedLabels, Counter>::default();
        let running = Gauge::default();
        let queued = Gauge::default();
        let max_concurrent = Gauge::default();
        let queue_wait = Family::<AgentLabels, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        let run_time = Family::<AgentLabels, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        let cost = Family::<ModelLabels, Counter<f64, AtomicU64>>::default();
        let unpriced = Family::<ModelLabels, Counter>::default();
        let hook_failures = Family::<HookLabels, Counter>::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        exposition.register(
            "deputy_subagents_started",
            "Sub-agent tasks that got a slot and started",
            started.clone(),
        );
        exposition.register(
            "deputy_subagents_finished",
            "Started sub-agent tasks that ended, by status",
            finished.clone(),
        );
        exposition.register(
            "deputy_subagents_running",
            "Sub-agent tasks running now",
            running.clone(),
        );
        exposition.register(
            "deputy_subagents_queued",
            "Sub-agent tasks waiting for a slot now",
            queued.clone(),
        );
        exposition.register(
            "deputy_subagents_max_concurrent",
            "The cap on running sub-agent tasks in force",
            max_concurrent.clone(),
        );
        exposition.register(
            "deputy_subagent_queue_wait_seconds",
            "Time a sub-agent task waited for a slot",
            queue_wait.clone(),
        );
        exposition.register(
            "deputy_subagent_run_seconds",
            "Time a sub-agent task ran",
            run_time.clone(),
        );
        exposition.register(
            "deputy_subagent_tokens",
            "Tokens spent by sub-agent tasks, by kind",
            tokens.clone(),
        );
        exposition.register(
            "deputy_subagent_cost_usd",
            "Cost of sub-agent tasks in US dollars (priced models only)",
            cost.clone(),
        );
        exposition.register(
            "deputy_subagent_unpriced",
            "Sub-agent tasks whose model has no price",
            unpriced.clone(),
        );
        exposition.register(
            "deputy_hook_failures",
            "Hook calls that errored, panicked, timed out or lost an event",
            hook_failures.clone(),
        );
        exposition.register(
            "deputy_config_reloads",
            "Config reloads, by result",
            reloads.clone(),
        );
        Self {
            exposition,
            prices,
            started,
            finished,
            running,
            queued,
            max_concurrent,
            queue_wait,
            run_time,
            tokens,
            cost,
            unpriced,
            hook_failures,
            reloads,
            registry: OnceLock::new(),
        }
    }

    /// Reads the running, queued and cap gauges from `registry` at every
    /// render, and counts its hook failures.
    ///
    /// Call it once; later calls do nothing.
    ///
    /// # Panics
    /// Outside a Tokio runtime (it spawns the task that reads the events).
    pub fn attach(self: &std::sync::Arc<Self>, registry: &Registry) {
        if self.registry.set(registry.downgrade()).is_err() {
            return;
        }
        let mut events = registry.subscribe();
        let metrics = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(RegistryEvent::HookFailed { hook, event, .. }) => {
                        let Some(metrics) = metrics.upgrade() else {
                            return;
                        };
                        metrics.record_hook_failure(&hook, event);
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "metrics fell behind the registry's events");
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }

    /// Counts a hook failure that the registry did not see (a webhook that
    /// gave up delivering, or dropped an event from a full queue).
    pub fn record_hook_failure(&self, hook: &str, event: HookEventName) {
        self.hook_failures
            .get_or_create(&HookLabels {
                hook: hook.to_owned(),
                event: event.as_str().to_owned(),
            })
            .inc();
    }

    /// Counts a config reload.
    pub fn record_reload(&self, result: ReloadResult) {
        let result = match result {
            ReloadResult::Applied => "applied",
            ReloadResult::Rejected => "rejected",
        };
        self.reloads
            .get_or_create(&ReloadLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// The exposition text, with the gauges read from the attached registry.
    pub fn render(&self) -> String {
        if let Some(registry) = self.registry.get().and_then(WeakRegistry::upgrade) {
            let stats = registry.stats();
            self.running.set(gauge_value(stats.running));
            self.queued.set(gauge_value(stats.queued));
            self.max_concurrent.set(gauge_value(stats.max_concurrent));
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.exposition);
        text
    }
}

fn gauge_value(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

#[async_trait]
impl SubagentStartHook for Metrics {
    fn name(&self) -> &str {
        "metrics"
    }

    async fn on_subagent_start(
        &self,
        event: &SubagentStartEvent,
    ) -> Result<StartDecision, HookError> {
        let agent = AgentLabels {
            agent: event.task.agent.to_string(),
        };
        self.started.get_or_create(&agent).inc();
        self.queue_wait
            .get_or_create(&agent)
            .observe(event.task.queued_for.as_secs_f64());
        Ok(StartDecision::Allow)
    }
}

#[async_trait]
impl SubagentStopHook for Metrics {
    fn name(&self) -> &str {
        "metrics"
    }

    async fn on_subagent_stop(&self, event: &SubagentStopEvent) -> Result<(), HookError> {
        let agent = event.task.agent.to_string();
        let model = event.task.labels.model.as_deref().unwrap_or("").to_owned();
        self.finished
            .get_or_create(&FinishedLabels {
                agent: agent.clone(),
                status: event.status.as_str().to_owned(),
            })
            .inc();
        self.run_time
            .get_or_create(&AgentLabels {
                agent: agent.clone(),
            })
            .observe(event.duration.as_secs_f64());
        let usage = &event.usage;
        let kinds = [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_read", usage.cache_read_tokens),
            ("cache_write", usage.cache_write_tokens),
        ];
        for (kind, count) in kinds.into_iter().filter(|(_, count)| *count > 0) {
            self.tokens
                .get_or_create(&TokenLabels {
                    agent: agent.clone(),
                    model: model.clone(),
                    kind: kind.to_owned(),
                })
                .inc_by(count);
        }
        let labels = ModelLabels { agent, model };
        match self.prices.cost(&event.task.labels, usage) {
            Some(cost) => {
                self.cost.get_or_create(&labels).inc_by(cost);
            }
            None => {
                self.unpriced.get_or_create(&labels).inc();
            }
        }
        Ok(())
    }
}
