//! `deputy config check` and `deputy config example`.

use std::fmt::Write as _;
use std::io::Write as _;

use deputy_hooks::HookTarget;
use deputy_providers::KeySource;

use crate::config::{Config, EXAMPLE, Source};
use crate::exit::CliError;

/// Prints the example config to stdout.
pub(crate) fn example() -> Result<(), CliError> {
    std::io::stdout()
        .write_all(EXAMPLE.as_bytes())
        .map_err(|error| CliError::failed(error.into()))
}

/// Prints the effective settings of a config that checked out, and
/// warnings for what can only fail later (an unset key variable).
pub(crate) fn check(config: &Config) -> Result<(), CliError> {
    let text = describe(config);
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(|error| CliError::failed(error.into()))
}

fn describe(config: &Config) -> String {
    let mut text = String::new();
    let source = match &config.source {
        Source::File(path) => path.display().to_string(),
        Source::BuiltIn => "the built-in offline config (no file found)".to_owned(),
    };
    let _ = writeln!(text, "ok: {source}\n");
    let _ = writeln!(text, "[agent]");
    let _ = writeln!(text, "name = {:?}", config.orchestrator);
    let _ = writeln!(text, "max_depth = {}", config.max_depth);
    let _ = writeln!(
        text,
        "on_finish = {:?}",
        serde_json::to_value(config.on_finish)
            .ok()
            .and_then(|value| value.as_str().map(str::to_owned))
            .unwrap_or_default()
    );
    let _ = writeln!(text, "max_result_chars = {}", config.max_result_chars);
    let _ = writeln!(text, "max_wait_ms = {}", config.max_wait.as_millis());
    let subagents = toml::to_string(&config.raw_subagents()).unwrap_or_default();
    let _ = writeln!(text, "\n[agent.subagents]\n{subagents}");
    for (name, provider) in &config.providers {
        let key = match provider.key_source() {
            KeySource::None => "no key".to_owned(),
            KeySource::Inline(_) => "key written in the file".to_owned(),
            KeySource::Env(variable) => {
                let set = std::env::var(variable).is_ok_and(|value| !value.trim().is_empty());
                if set {
                    format!("key from {variable}")
                } else {
                    format!(
                        "key from {variable} (warning: not set now; runs using this provider will fail)"
                    )
                }
            }
        };
        let _ = writeln!(
            text,
            "[providers.{name}] {} at {}, model {}, {key}",
            provider.kind(),
            provider.base_url(),
            provider.model()
        );
    }
    let _ = writeln!(text);
    for (name, agent) in &config.agents {
        let model = agent
            .model
            .clone()
            .unwrap_or_else(|| config.providers[&agent.provider].model().to_owned());
        let subagents = if agent.subagents.is_empty() {
            String::new()
        } else {
            format!(", may spawn {}", agent.subagents.join(", "))
        };
        let _ = writeln!(
            text,
            "[agents.{name}] provider {}, model {model}{subagents}",
            agent.provider
        );
    }
    let hooks = &config.hooks;
    let _ = writeln!(
        text,
        "\nhooks: metrics {}",
        if hooks.metrics { "on" } else { "off" }
    );
    if let Some((path, _)) = &hooks.audit {
        let _ = writeln!(text, "hooks: audit log {}", path.display());
    }
    if let Some(billing) = &hooks.billing {
        let ledger = billing.ledger.as_ref().map_or_else(
            || "no ledger".to_owned(),
            |path| format!("ledger {}", path.display()),
        );
        let budget = billing
            .budget_usd
            .map_or_else(|| "no budget".to_owned(), |usd| format!("budget ${usd:.2}"));
        let _ = writeln!(
            text,
            "billing: {ledger}, {budget}, {} agent budgets",
            billing.agent_budget_usd.len()
        );
        for agent in billing.agent_budget_usd.keys() {
            if !config.agents.contains_key(agent) {
                let _ = writeln!(
                    text,
                    "billing: warning: agent_budget_usd.{agent} names no [agents.{agent}]; it never applies"
                );
            }
        }
    }
    for (event, entries) in [
        ("SubagentStart", &hooks.start),
        ("SubagentStop", &hooks.stop),
    ] {
        for entry in entries {
            let what = match &entry.target {
                HookTarget::Command { command, .. } => format!("command {command:?}"),
                HookTarget::Webhook { url, .. } => format!("webhook {url:?}"),
            };
            let _ = writeln!(text, "hooks.{event}: {what}");
        }
    }
    let server = &config.server;
    let _ = writeln!(
        text,
        "\n[server] listen {}, {}, max body {} bytes, drain {} s",
        server.listen,
        server.token_env.as_ref().map_or_else(
            || "no token".to_owned(),
            |variable| format!("token from {variable}")
        ),
        server.max_body_bytes,
        server.drain.as_secs()
    );
    text
}
