//! Billing: the cost of every task, a JSONL ledger and budgets.
//!
//! On SubagentStop the task's usage is priced with the [`PriceTable`], added
//! to what was spent (in total and per agent) and appended to the ledger as
//! one [`LedgerEntry`] line. On SubagentStart the budgets are checked: once
//! what was spent plus what the running tasks have spent so far reaches a
//! budget, new tasks are denied with a reason like
//! `budget exhausted: $5.02 of $5.00 spent`. Tasks already running finish,
//! so spend can pass a budget by what they use.
//!
//! The ledger keeps whole lines only: a crash can cut at most the line
//! being written, which is skipped when read and removed when the ledger is
//! opened again (see `jsonl.rs`).
//!
//! Spend counts everything in the ledger: a restarted host reads the ledger
//! back and goes on from its total. Move or rotate the ledger file to start
//! a new budget period.
//!
//! "Running tasks" means every task this hook allowed and has not billed
//! yet, so a task that has ended but whose stop hooks have not run still
//! counts (through its live usage, once [`Billing::attach`] has been called).
//!
//! A model without a price is reported once, by a warning that names it,
//! and its tasks are counted as unknown ([`Billing::unknown_price_tasks`]);
//! their ledger lines say `"cost_usd": null` and `"price_known": false`.
//! Under a budget such a task is denied, since what it would spend could
//! not be counted: add its price under `[billing.prices]`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use async_trait::async_trait;
use deputy_registry::{
    HookError, Registry, StartDecision, SubagentStartEvent, SubagentStartHook, SubagentStopEvent,
    SubagentStopHook, TaskId, TaskStatus, WeakRegistry,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::HookConfigError;
use crate::jsonl::{self, JsonlFile};
use crate::payload::{millis, rfc3339};
use crate::price::{PriceLookup, PriceTable};

/// One line of the ledger: a stopped task and what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The task.
    pub task_id: TaskId,
    /// The task that spawned it.
    pub parent_id: Option<TaskId>,
    /// Its agent.
    pub agent: String,
    /// The provider backend's configured name.
    pub provider: Option<String>,
    /// The model.
    pub model: Option<String>,
    /// How it ended.
    pub status: TaskStatus,
    /// Prompt tokens at the input rate.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Prompt tokens read from the cache.
    pub cache_read_tokens: u64,
    /// Prompt tokens written to the cache.
    pub cache_write_tokens: u64,
    /// Provider requests.
    pub requests: u64,
    /// The cost in US dollars; `None` when the model has no price.
    pub cost_usd: Option<f64>,
    /// Whether the price was known (local providers count as known, free).
    pub price_known: bool,
    /// When it started running (RFC 3339, UTC).
    pub started_at: String,
    /// When it ended (RFC 3339, UTC).
    pub ended_at: String,
    /// Run time in milliseconds.
    pub duration_ms: u64,
}

impl LedgerEntry {
    /// Reads every line of a ledger file; a missing file is an empty ledger.
    ///
    /// # Errors
    /// The file cannot be read, or a line is not a ledger entry (the error
    /// names the line).
    pub fn read_all(path: &Path) -> std::io::Result<Vec<LedgerEntry>> {
        jsonl::read_lines(path)
    }
}

/// Builds a [`Billing`] hook.
#[derive(Debug)]
pub struct BillingBuilder {
    prices: PriceTable,
    ledger: Option<PathBuf>,
    sync: bool,
    budget: Option<f64>,
    agent_budgets: HashMap<String, f64>,
}

impl BillingBuilder {
    /// The prices to bill with (default: [`PriceTable::builtin`]).
    pub fn prices(mut self, prices: PriceTable) -> Self {
        self.prices = prices;
        self
    }

    /// Appends a line per stopped task to this file and starts the spend
    /// from the lines already in it.
    pub fn ledger(mut self, path: impl Into<PathBuf>) -> Self {
        self.ledger = Some(path.into());
        self
    }

    /// Flushes each ledger line to the disk before the stop hook returns
    /// (default off: a killed process keeps every line anyway; this also
    /// survives power loss).
    pub fn sync(mut self, sync: bool) -> Self {
        self.sync = sync;
        self
    }

    /// A budget in US dollars for all tasks together.
    pub fn budget(mut self, usd: f64) -> Self {
        self.budget = Some(usd);
        self
    }

    /// A budget in US dollars for one agent's tasks.
    pub fn agent_budget(mut self, agent: impl Into<String>, usd: f64) -> Self {
        self.agent_budgets.insert(agent.into(), usd);
        self
    }

    /// Opens the ledger and reads back its spend.
    ///
    /// # Errors
    /// A budget is negative or not finite, or the ledger cannot be opened or
    /// read; the error names the file or the field.
    pub fn build(self) -> Result<Billing, HookConfigError> {
        let mut problems = Vec::new();
        let budgets = std::iter::once(("budget_usd".to_owned(), self.budget)).chain(
            self.agent_budgets
                .iter()
                .map(|(agent, usd)| (format!("agent_budget_usd.{agent}"), Some(*usd))),
        );
        for (field, usd) in budgets {
            if let Some(usd) = usd
                && (!usd.is_finite() || usd < 0.0)
            {
                problems.push(format!(
                    "billing.{field}: must be a non-negative number of dollars, got {usd}"
                ));
            }
        }
        if !problems.is_empty() {
            return Err(HookConfigError::new(problems));
        }
        let mut spend = Spend::default();
        let ledger = match &self.ledger {
            Some(path) => {
                let file = JsonlFile::open(path, self.sync).map_err(|error| {
                    HookConfigError::one(format!(
                        "billing.ledger: cannot open {}: {error}",
                        path.display()
                    ))
                })?;
                let past = LedgerEntry::read_all(path).map_err(|error| {
                    HookConfigError::one(format!(
                        "billing.ledger: cannot read back {}: {error}; fix or move the file",
                        path.display()
                    ))
                })?;
                for entry in &past {
                    spend.add(&entry.agent, entry.cost_usd.unwrap_or(0.0));
                }
                Some(file)
            }
            None => None,
        };
        Ok(Billing {
            prices: self.prices,
            ledger,
            budget: self.budget,
            agent_budgets: self.agent_budgets,
            state: Mutex::new(BillingState {
                spend,
                open: HashSet::new(),
                unknown_models: HashSet::new(),
                unknown_price_tasks: 0,
            }),
            registry: OnceLock::new(),
        })
    }
}

/// Prices every stopped task, keeps the ledger and enforces budgets (see
/// the module docs).
///
/// ```
/// use deputy_hooks::{Billing, PriceTable, ModelPrice};
///
/// let billing = Billing::builder()
///     .prices(PriceTable::builtin().with_price("house-model", ModelPrice::new(0.5, 1.5)))
///     .budget(5.0)
///     .agent_budget("researcher", 1.0)
///     .build()
///     .unwrap();
/// assert_eq!(billing.spent(), 0.0);
/// ```
#[derive(Debug)]
pub struct Billing {
    prices: PriceTable,
    ledger: Option<JsonlFile>,
    budget: Option<f64>,
    agent_budgets: HashMap<String, f64>,
    state: Mutex<BillingState>,
    registry: OnceLock<WeakRegistry>,
}

#[derive(Debug)]
struct BillingState {
    spend: Spend,
    /// Tasks allowed to start and not yet billed, whatever their status:
    /// a task that has ended but whose stop hook has not run yet still
    /// counts, through its live usage. Agent, labels and usage are read
    /// from the registry, which already holds them.
    open: HashSet<TaskId>,
    unknown_models: HashSet<String>,
    unknown_price_tasks: u64,
}

#[derive(Debug, Default)]
struct Spend {
    total: f64,
    by_agent: HashMap<String, f64>,
}

impl Spend {
    fn add(&mut self, agent: &str, usd: f64) {
        self.total += usd;
        *self.by_agent.entry(agent.to_owned()).or_default() += usd;
    }
}

impl Billing {
    /// A builder with the built-in prices, no ledger and no budgets.
    pub fn builder() -> BillingBuilder {
        BillingBuilder {
            prices: PriceTable::builtin(),
            ledger: None,
            sync: false,
            budget: None,
            agent_budgets: HashMap::new(),
        }
    }

    /// Lets budget checks count what running tasks have spent so far. Without
    /// it only billed tasks count.
    pub fn attach(&self, registry: &Registry) {
        let _ = self.registry.set(registry.downgrade());
    }

    /// US dollars spent by finished tasks, ledger history included.
    pub fn spent(&self) -> f64 {
        self.state.lock().spend.total
    }

    /// US dollars spent by one agent's finished tasks.
    pub fn spent_by(&self, agent: &str) -> f64 {
        self.state
            .lock()
            .spend
            .by_agent
            .get(agent)
            .copied()
            .unwrap_or(0.0)
    }

    /// Tasks whose model had no price.
    pub fn unknown_price_tasks(&self) -> u64 {
        self.state.lock().unknown_price_tasks
    }

    /// The prices in use.
    pub fn prices(&self) -> &PriceTable {
        &self.prices
    }

    /// The ledger file, if there is one.
    pub fn ledger_path(&self) -> Option<&Path> {
        self.ledger.as_ref().map(JsonlFile::path)
    }

    /// What tasks started but not yet billed (all, and `agent`'s) have
    /// spent so far, read from the registry's live usage.
    fn open_spend(&self, registry: &Registry, open: &[TaskId], agent: &str) -> (f64, f64) {
        let mut total = 0.0;
        let mut mine = 0.0;
        for id in open {
            // A task the registry no longer holds has nothing live to count.
            let Some(snapshot) = registry.get(*id) else {
                continue;
            };
            let cost = self
                .prices
                .cost(&snapshot.labels, &snapshot.usage)
                .unwrap_or(0.0);
            total += cost;
            if &*snapshot.agent == agent {
                mine += cost;
            }
        }
        (total, mine)
    }
}

/// The deny reason for a budget that is used up, if it is.
fn exhausted(scope: &str, spent: f64, running: f64, budget: f64) -> Option<String> {
    if spent + running < budget {
        return None;
    }
    Some(if running > 0.0 {
        format!(
            "{scope} exhausted: {} spent and {} in running tasks, of {}",
            usd(spent),
            usd(running),
            usd(budget)
        )
    } else {
        format!("{scope} exhausted: {} of {} spent", usd(spent), usd(budget))
    })
}

/// Dollars with cents, or with four decimals below a cent.
fn usd(amount: f64) -> String {
    if amount != 0.0 && amount.abs() < 0.01 {
        format!("${amount:.4}")
    } else {
        format!("${amount:.2}")
    }
}

#[async_trait]
impl SubagentStartHook for Billing {
    fn name(&self) -> &str {
        "billing"
    }

    async fn on_subagent_start(
        &self,
        event: &SubagentStartEvent,
    ) -> Result<StartDecision, HookError> {
        let task = &event.task;
        let agent_budget = self.agent_budgets.get(&*task.agent).copied();
        if self.budget.is_none() && agent_budget.is_none() {
            return Ok(StartDecision::Allow);
        }
        let provider = task.labels.provider.as_deref();
        let model = task.labels.model.as_deref();
        if self.prices.lookup_labels(&task.labels) == PriceLookup::Unknown {
            // Running it would spend an unknown amount against the budget.
            return Ok(StartDecision::Deny {
                reason: format!(
                    "budget cannot be checked: model {} of provider {} has no price; add it under [billing.prices]",
                    model.unwrap_or("(none)"),
                    provider.unwrap_or("(none)")
                ),
            });
        }
        let registry = self.registry.get().and_then(WeakRegistry::upgrade);
        // One look at the state, so no task is counted both as spent and
        // as open, or as neither. Only the ids are copied, and only when
        // there is a registry to read their usage from: reading it here
        // would hold this lock while taking the registry's.
        let (spent_total, spent_mine, open) = {
            let state = self.state.lock();
            let mine = state
                .spend
                .by_agent
                .get(&*task.agent)
                .copied()
                .unwrap_or(0.0);
            let open: Vec<TaskId> = if registry.is_some() {
                state.open.iter().copied().collect()
            } else {
                Vec::new()
            };
            (state.spend.total, mine, open)
        };
        let (open_total, open_mine) = match &registry {
            Some(registry) => self.open_spend(registry, &open, &task.agent),
            None => (0.0, 0.0),
        };
        let denial = self
            .budget
            .and_then(|budget| exhausted("budget", spent_total, open_total, budget))
            .or_else(|| {
                agent_budget.and_then(|budget| {
                    let scope = format!("budget of agent {}", task.agent);
                    exhausted(&scope, spent_mine, open_mine, budget)
                })
            });
        if let Some(reason) = denial {
            return Ok(StartDecision::Deny { reason });
        }
        self.state.lock().open.insert(task.id);
        Ok(StartDecision::Allow)
    }
}

#[async_trait]
impl SubagentStopHook for Billing {
    fn name(&self) -> &str {
        "billing"
    }

    async fn on_subagent_stop(&self, event: &SubagentStopEvent) -> Result<(), HookError> {
        let task = &event.task;
        let cost = self.prices.cost(&task.labels, &event.usage);
        {
            let mut state = self.state.lock();
            state.open.remove(&task.id);
            match cost {
                Some(cost) => state.spend.add(&task.agent, cost),
                None => {
                    state.unknown_price_tasks += 1;
                    let model = task.labels.model.as_deref().unwrap_or("(no model)");
                    if state.unknown_models.insert(model.to_owned()) {
                        tracing::warn!(
                            model,
                            provider = task.labels.provider.as_deref().unwrap_or("(none)"),
                            "no price for this model: its tasks are billed as unknown, not free; \
                             add it under [billing.prices]"
                        );
                    }
                }
            }
        }
        let Some(ledger) = &self.ledger else {
            return Ok(());
        };
        let started_at = task.created_at + task.queued_for;
        let entry = LedgerEntry {
            task_id: task.id,
            parent_id: task.parent_id,
            agent: task.agent.to_string(),
            provider: task.labels.provider.as_deref().map(str::to_owned),
            model: task.labels.model.as_deref().map(str::to_owned),
            status: event.status,
            input_tokens: event.usage.input_tokens,
            output_tokens: event.usage.output_tokens,
            cache_read_tokens: event.usage.cache_read_tokens,
            cache_write_tokens: event.usage.cache_write_tokens,
            requests: event.usage.requests,
            cost_usd: cost,
            price_known: cost.is_some(),
            started_at: rfc3339(started_at),
            ended_at: rfc3339(event.ended_at),
            duration_ms: millis(event.duration),
        };
        ledger.append(&entry).await.map_err(|error| {
            HookError::msg(format!(
                "cannot append to the ledger {}: {error}",
                ledger.path().display()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_show_dollars_and_what_is_running() {
        assert_eq!(
            exhausted("budget", 5.02, 0.0, 5.0).as_deref(),
            Some("budget exhausted: $5.02 of $5.00 spent")
        );
        assert_eq!(
            exhausted("budget", 4.8, 0.25, 5.0).as_deref(),
            Some("budget exhausted: $4.80 spent and $0.25 in running tasks, of $5.00")
        );
        assert_eq!(exhausted("budget", 4.0, 0.5, 5.0), None);
        assert_eq!(usd(0.00042), "$0.0004");
        assert_eq!(usd(0.0), "$0.00");
    }

    #[test]
    fn negative_budgets_are_refused_with_their_field() {
        let error = Billing::builder()
            .budget(-1.0)
            .agent_budget("researcher", f64::NAN)
            .build()
            .unwrap_err()
            .to_string();
        assert!(error.contains("billing.budget_usd"), "{error}");
        assert!(
            error.contains("billing.agent_budget_usd.researcher"),
            "{error}"
        );
    }
}
