//! Turns a checked [`Config`] into running parts: providers, agents, the
//! hooks and the agent runtime with its registry.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context as _;
use deputy_agent::{Agent, Runtime};
use deputy_hooks::{HookSet, PriceTable};
use deputy_providers::Provider;
use deputy_registry::{SettingsHandle, TaskLabels, Usage};

use crate::config::Config;

/// Everything a command runs on.
pub(crate) struct Stack {
    pub(crate) runtime: Runtime,
    pub(crate) hooks: HookSet,
    labels: BTreeMap<String, TaskLabels>,
    prices: PriceTable,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("agents", &self.labels.keys().collect::<Vec<_>>())
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
pub(crate) fn build(config: &Config, orchestrator: &str) -> anyhow::Result<Stack> {
    let env = |name: &str| std::env::var(name).ok();
    let mut providers: BTreeMap<&str, Arc<dyn Provider>> = BTreeMap::new();
    let mut labels = BTreeMap::new();
    let mut builder = Runtime::builder();
    for (name, profile) in &config.agents {
        let provider = match providers.get(profile.provider.as_str()) {
            Some(provider) => provider.clone(),
            None => {
                let built = config.providers[&profile.provider]
                    .build(env)
                    .with_context(|| {
                        format!("agents.{name} needs provider {}", profile.provider)
                    })?;
                providers.insert(&profile.provider, built.clone());
                built
            }
        };
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
        let agent = agent
            .build()
            .with_context(|| format!("agents.{name} cannot be built"))?;
        labels.insert(
            name.clone(),
            TaskLabels {
                provider: Some(provider.name().into()),
                provider_kind: Some(provider.kind().as_str().into()),
                model: Some(agent.model().into()),
            },
        );
        builder = builder.agent(agent);
    }
    anyhow::ensure!(
        labels.contains_key(orchestrator),
        "there is no agent `{orchestrator}`; known agents: {}",
        labels.keys().cloned().collect::<Vec<_>>().join(", ")
    );

    let hooks = config
        .hooks
        .build(&config.source.base_dir(), None)
        .context("the hooks cannot be started")?;
    let settings = SettingsHandle::new(config.subagents.clone());
    let runtime = builder
        .settings(settings)
        .hooks(hooks.stack())
        .max_depth(config.max_depth)
        .on_finish(config.on_finish)
        .max_result_chars(config.max_result_chars)
        .max_wait(config.max_wait)
        .build()
        .context("the agents do not fit together")?;
    hooks.attach(runtime.registry());
    Ok(Stack {
        runtime,
        hooks,
        labels,
        prices: config.hooks.prices.clone(),
    })
}

impl Stack {
    /// What `usage` by `agent` cost, in US dollars; `None` when its model
    /// has no price.
    pub(crate) fn cost(&self, agent: &str, usage: &Usage) -> Option<f64> {
        self.labels
            .get(agent)
            .and_then(|labels| self.prices.cost(labels, usage))
    }
}
