//! Turns a checked [`Config`] into running parts: providers, agents, the
//! hooks and the agent runtime with its registry.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use deputy_agent::{Agent, Runtime};
use deputy_hooks::{HookSet, PriceTable};
use deputy_providers::Provider;
use deputy_registry::{SettingsHandle, ShutdownReport, Usage};

use crate::config::Config;

/// Providers by their `[providers.<name>]` name.
pub(crate) type Providers = BTreeMap<String, Arc<dyn Provider>>;

/// Everything a command runs on.
pub(crate) struct Stack {
    pub(crate) runtime: Runtime,
    pub(crate) hooks: HookSet,
    pub(crate) providers: Providers,
    prices: PriceTable,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Builds providers (reading keys from the environment), agents, hooks and
/// the runtime.
///
/// # Errors
/// A provider's key variable is unset, a hook file cannot be opened, or an
/// agent cannot be built; the message names which.
///
/// # Panics
/// Outside a Tokio runtime.
pub(crate) fn build(config: &Config) -> anyhow::Result<Stack> {
    build_with_events(config, deputy_registry::DEFAULT_EVENT_CAPACITY)
}

/// [`build`] with the registry's event channel sized for a reader that
/// must see every event of a large burst.
///
/// # Errors
/// As [`build`].
pub(crate) fn build_with_events(config: &Config, event_capacity: usize) -> anyhow::Result<Stack> {
    let env = |name: &str| std::env::var(name).ok();
    let mut providers = Providers::new();
    for profile in config.agents.values() {
        if !providers.contains_key(&profile.provider) {
            let built = config.providers[&profile.provider]
                .build(env)
                .with_context(|| format!("provider {} cannot be built", profile.provider))?;
            providers.insert(profile.provider.clone(), built);
        }
    }
    // `config::check` made sure the orchestrator is among them, and
    // `deputy run` checks its `--agent` before building.
    let agents = agents(config, &providers)?;

    let hooks = config
        .hooks
        .build(&config.source.base_dir(), None)
        .context("the hooks cannot be started")?;
    let mut builder = Runtime::builder();
    for agent in agents {
        builder = builder.agent(agent);
    }
    let runtime = builder
        .settings(SettingsHandle::new(config.subagents.clone()))
        .hooks(hooks.stack())
        .max_depth(config.max_depth)
        .on_finish(config.on_finish)
        .max_result_chars(config.max_result_chars)
        .max_wait(config.max_wait)
        .event_capacity(event_capacity)
        .build()
        .context("the agents do not fit together")?;
    hooks.attach(runtime.registry());
    Ok(Stack {
        runtime,
        hooks,
        providers,
        prices: config.hooks.prices.clone(),
    })
}

/// The agents of `config`, on providers already built.
///
/// # Errors
/// A profile names a provider that is not built (one added after start: a
/// restart builds it), or an agent cannot be built.
pub(crate) fn agents(config: &Config, providers: &Providers) -> anyhow::Result<Vec<Agent>> {
    let mut agents = Vec::new();
    for (name, profile) in &config.agents {
        let provider = providers.get(&profile.provider).with_context(|| {
            format!(
                "agents.{name} uses provider {}, which was not running at start; restart deputy to add a provider",
                profile.provider
            )
        })?;
        let mut agent = Agent::builder(name.as_str(), provider.clone())
            .capabilities(profile.capabilities.iter().cloned())
            .priority(profile.priority)
            .subagents(profile.subagents.iter().cloned());
        if let Some(model) = &profile.model {
            agent = agent.model(model.clone());
        }
        if let Some(prompt) = &profile.system_prompt {
            agent = agent.system_prompt(prompt.clone());
        }
        if let Some(description) = &profile.description {
            agent = agent.description(description.clone());
        }
        if let Some(turns) = profile.max_turns {
            agent = agent.max_turns(turns);
        }
        if let Some(max) = profile.max_concurrent {
            agent = agent.max_concurrent(max);
        }
        if let Some(temperature) = profile.temperature {
            agent = agent.temperature(temperature);
        }
        if let Some(max) = profile.max_output_tokens {
            agent = agent.max_output_tokens(max);
        }
        if let Some(limit) = profile.time_limit {
            agent = agent.time_limit(limit);
        }
        if let Some(tokens) = profile.token_budget {
            agent = agent.token_budget(tokens);
        }
        agents.push(
            agent
                .build()
                .with_context(|| format!("agents.{name} cannot be built"))?,
        );
    }
    Ok(agents)
}

impl Stack {
    /// Stops the runtime (running tasks get `drain` to finish, then are
    /// cancelled; every SubagentStop runs), then gives queued webhook
    /// events up to `drain` to go out, warning about any left.
    ///
    /// Cancel safety: not cancel safe, like [`Runtime::shutdown`].
    pub(crate) async fn shutdown(&self, drain: Duration) -> ShutdownReport {
        let report = self.runtime.shutdown(drain).await;
        let pending = self.hooks.flush(drain).await;
        if pending > 0 {
            tracing::warn!(
                pending,
                "webhook events still queued at exit were not delivered"
            );
        }
        report
    }

    /// What `usage` by `agent` cost, in US dollars, with the agent as it is
    /// now; `None` when its model has no price.
    pub(crate) fn cost(&self, agent: &str, usage: &Usage) -> Option<f64> {
        let agent = self.runtime.agent(agent)?;
        self.prices.cost(&agent.labels(), usage)
    }
}
