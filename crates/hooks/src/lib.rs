//! Built-in SubagentStart/SubagentStop hooks for deputy: metrics, billing,
//! an audit log, command hooks in any language and webhooks.
//!
//! Each implements the registry's [`SubagentStartHook`] and/or
//! [`SubagentStopHook`], so it can be stacked from Rust, and each can be
//! configured from the `[hooks]` and `[billing]` sections of deputy's TOML
//! ([`RawHooksConfig`], [`RawBillingConfig`] → [`HooksSettings`] →
//! [`HookSet`]). The registry guarantees exactly one SubagentStop per
//! started task on every path, so metrics, ledger and audit lines pair up.
//!
//! | hook | events | what it does |
//! |---|---|---|
//! | [`Metrics`] | start, stop | Prometheus counters, gauges and histograms; [`Metrics::render`] for `/metrics` |
//! | [`Billing`] | start, stop | cost from usage and a [`PriceTable`]; JSONL ledger; budgets that deny new starts |
//! | [`AuditLog`] | start, stop | every event as a JSON line |
//! | [`CommandHook`] | start, stop | runs a program with the event on stdin (Claude Code's contract) |
//! | [`Webhook`] | start, stop | POSTs the event, retried and signed, off the task's path |
//!
//! # Order
//!
//! A [`HookSet`] built from config runs, on SubagentStart: metrics, audit,
//! billing (the budget check), then the `[[hooks.SubagentStart]]` entries in
//! file order; on SubagentStop: billing (so spend is current before the next
//! start), metrics, audit, then the `[[hooks.SubagentStop]]` entries in file
//! order. The first deny wins and later start hooks do not run; the task
//! still gets its stop events. A hook that fails (error, crash, time-out,
//! unreachable URL) is logged and counted and never changes the outcome.
//!
//! # Config
//!
//! ```toml
//! [hooks.metrics]
//! enabled = true                    # default true once the section exists
//!
//! [hooks.audit]
//! path = "deputy-audit.jsonl"       # relative to the config file
//! sync = false                      # fsync every line (default false)
//!
//! [billing]
//! enabled = true                    # default true once the section exists
//! ledger = "deputy-ledger.jsonl"    # one line per stopped task
//! sync = false                      # fsync every line (default false)
//! budget_usd = 5.0                  # all tasks together
//! agent_budget_usd = { researcher = 1.0 }
//!
//! [billing.prices."house-model"]    # USD per million tokens; adds or overrides
//! input = 0.5
//! output = 1.5
//! cache_read = 0.05                 # optional, default: the input price
//! cache_write = 0.6                 # optional, default: the input price
//!
//! [[hooks.SubagentStart]]
//! kind = "command"                  # "command" or "webhook"
//! name = "gate"                     # in logs and metrics (optional)
//! matcher = "^research"             # regex on the agent name (optional)
//! command = ["./hooks/gate.py"]     # argv; a string only with shell = true
//! shell = false
//! timeout_ms = 10000                # default 60000; then the process group is killed
//! env = { TEAM = "search" }         # the only variables it gets, besides PATH
//! pass_env = ["HOME"]               # host variables passed through by name
//! cwd = "."                         # default: the config file's directory
//!
//! [[hooks.SubagentStop]]
//! kind = "webhook"
//! url = "https://billing.example.com/deputy"
//! timeout_ms = 10000                # per request, default 10000
//! retries = 3                       # on connect errors, 408, 429, 5xx
//! secret_env = "DEPUTY_WEBHOOK_SECRET"  # HMAC-SHA256 signature header
//! queue = 1024                      # events waiting; a full queue drops, counted
//! concurrency = 4                   # deliveries in flight
//! # blocking = true                 # start webhooks only: wait and let it deny
//! ```
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use deputy_hooks::{HooksSettings, RawHooksConfig, RawBillingConfig};
//!
//! let hooks: RawHooksConfig = serde_json::from_value(serde_json::json!({
//!     "metrics": {},
//!     "SubagentStop": [{"kind": "command", "command": ["true"]}],
//! })).unwrap();
//! let settings = HooksSettings::from_raw(&hooks, None).unwrap();
//! let set = settings.build(std::path::Path::new("."), None).unwrap();
//! assert_eq!(set.stack().len(), 3); // metrics (start, stop) + the command
//! assert!(set.metrics().unwrap().render().contains("deputy_subagents_running"));
//! # }
//! ```

mod audit;
mod billing;
mod command;
mod config;
mod error;
mod jsonl;
mod metrics;
mod payload;
mod price;
mod reply;
mod webhook;

pub use audit::AuditLog;
pub use billing::{Billing, BillingBuilder, LedgerEntry};
pub use command::{CommandHook, CommandLine};
pub use config::{
    BillingSettings, HookEntry, HookKind, HookSet, HookTarget, HooksSettings, RawAuditConfig,
    RawBillingConfig, RawCommand, RawHookEntry, RawHooksConfig, RawMetricsConfig,
};
pub use deputy_registry::{SubagentStartHook, SubagentStopHook};
pub use error::HookConfigError;
pub use metrics::{CONTENT_TYPE, Metrics, ReloadResult};
pub use payload::{EventPayload, StopFields};
pub use price::{ModelPrice, PriceLookup, PriceTable};
pub use webhook::{
    DEFAULT_WEBHOOK_CONCURRENCY, DEFAULT_WEBHOOK_QUEUE, DEFAULT_WEBHOOK_RETRIES,
    DEFAULT_WEBHOOK_TIMEOUT, DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, Webhook,
    WebhookBuilder, signature,
};
