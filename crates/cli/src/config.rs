//! deputy's one TOML file: read, checked (every problem listed, each with
//! its key), and turned into what the commands need.
//!
//! Sections: `[agent]` (the orchestrator and run options) with
//! `[agent.subagents]` (the registry's live settings), `[providers.<name>]`,
//! `[agents.<name>]`, `[hooks]`, `[billing]` and `[server]`. Every key is
//! documented in `config.toml.example`, which is also the built-in offline
//! config used when no file is found.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use deputy_agent::OnFinish;
use deputy_hooks::{HooksSettings, RawBillingConfig, RawHooksConfig};
use deputy_providers::{ProviderConfig, RawProviderConfig};
use deputy_registry::{RawSubagentSettings, SubagentSettings};
use serde::{Deserialize, Serialize};

use crate::toml_error::describe_toml_error;

/// The example config, which is also the built-in offline config.
pub(crate) const EXAMPLE: &str = include_str!("../../../config.toml.example");

/// The file name looked for in the working directory.
pub(crate) const DEFAULT_FILE: &str = "deputy.toml";

/// The environment variable naming a config file.
pub(crate) const CONFIG_ENV: &str = "DEPUTY_CONFIG";

/// The whole file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    agent: RawAgentSection,
    #[serde(default)]
    providers: BTreeMap<String, RawProviderConfig>,
    #[serde(default)]
    agents: BTreeMap<String, RawAgentProfile>,
    #[serde(default)]
    hooks: RawHooksConfig,
    billing: Option<RawBillingConfig>,
    #[serde(default)]
    server: RawServerConfig,
}

/// `[agent]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgentSection {
    name: Option<String>,
    max_depth: Option<i64>,
    on_finish: Option<OnFinish>,
    max_result_chars: Option<i64>,
    max_wait_ms: Option<i64>,
    #[serde(default)]
    subagents: RawSubagentSettings,
}

/// `[agents.<name>]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgentProfile {
    provider: Option<String>,
    model: Option<String>,
    system_prompt: Option<String>,
    description: Option<String>,
    #[serde(default)]
    capabilities: Vec<String>,
    priority: Option<i64>,
    max_turns: Option<i64>,
    max_concurrent: Option<i64>,
    temperature: Option<f64>,
    max_output_tokens: Option<i64>,
    timeout_secs: Option<i64>,
    token_budget: Option<i64>,
    #[serde(default)]
    subagents: Vec<String>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerConfig {
    listen: Option<String>,
    token_env: Option<String>,
    max_body_bytes: Option<i64>,
    drain_secs: Option<i64>,
}

/// A checked `[agents.<name>]`. Serialized only to tell what a reload
/// changed, under the keys the file uses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct AgentProfile {
    pub(crate) provider: String,
    pub(crate) model: Option<String>,
    pub(crate) system_prompt: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) capabilities: Vec<String>,
    pub(crate) priority: i32,
    pub(crate) max_turns: Option<u32>,
    pub(crate) max_concurrent: Option<usize>,
    #[serde(serialize_with = "as_written")]
    pub(crate) temperature: Option<f32>,
    pub(crate) max_output_tokens: Option<u32>,
    #[serde(rename = "timeout_secs", serialize_with = "whole_seconds")]
    pub(crate) time_limit: Option<Duration>,
    pub(crate) token_budget: Option<u64>,
    pub(crate) subagents: Vec<String>,
}

/// An `f32` as its shortest decimal form (`0.2`, not the `0.20000000298…`
/// that widening it to `f64` would show).
fn as_written<S: serde::Serializer>(value: &Option<f32>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.serialize_some(
            &value
                .to_string()
                .parse::<f64>()
                .unwrap_or(f64::from(*value)),
        ),
        None => serializer.serialize_none(),
    }
}

fn whole_seconds<S: serde::Serializer>(
    value: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.serialize_some(&value.as_secs()),
        None => serializer.serialize_none(),
    }
}

/// A checked `[server]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerSettings {
    pub(crate) listen: SocketAddr,
    pub(crate) token_env: Option<String>,
    pub(crate) max_body_bytes: usize,
    pub(crate) drain: Duration,
}

/// The checked config.
#[derive(Clone)]
pub(crate) struct Config {
    /// Where it came from.
    pub(crate) source: Source,
    /// The agent that runs an orchestration.
    pub(crate) orchestrator: String,
    pub(crate) max_depth: u32,
    pub(crate) on_finish: OnFinish,
    pub(crate) max_result_chars: usize,
    pub(crate) max_wait: Duration,
    pub(crate) subagents: SubagentSettings,
    pub(crate) providers: BTreeMap<String, ProviderConfig>,
    pub(crate) agents: BTreeMap<String, AgentProfile>,
    pub(crate) hooks: HooksSettings,
    pub(crate) server: ServerSettings,
    /// The sections a reload cannot apply (everything but
    /// `[agent.subagents]` and `[agents.*]`), as written, to tell a reload
    /// that one of them changed.
    pub(crate) restart_sections: toml::Table,
    /// A hash of the text it was parsed from.
    pub(crate) text_hash: u64,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The raw sections may hold keys and URLs: not shown.
        f.debug_struct("Config")
            .field("source", &self.source)
            .field("orchestrator", &self.orchestrator)
            .field("subagents", &self.subagents)
            .field("providers", &self.providers)
            .field("agents", &self.agents)
            .field("hooks", &self.hooks)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// A hash of config text, to tell whether a file changed.
pub(crate) fn text_hash(text: &str) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::hash::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// Where a config came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// A file.
    File(PathBuf),
    /// The built-in offline config (`config.toml.example`).
    BuiltIn,
}

impl Source {
    /// The directory relative paths in the config are taken from.
    pub(crate) fn base_dir(&self) -> PathBuf {
        match self {
            Self::File(path) => path
                .parent()
                .filter(|dir| !dir.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_owned),
            Self::BuiltIn => PathBuf::from("."),
        }
    }
}

/// A config that cannot be used: where, and every problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigError {
    pub(crate) source: String,
    pub(crate) problems: Vec<String>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.problems.as_slice() {
            [one] => write!(f, "{}: {one}", self.source),
            many => {
                write!(f, "{}: {} problems", self.source, many.len())?;
                for problem in many {
                    write!(f, "\n  - {}", problem.replace('\n', "\n    "))?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Which file to read, following `-c`, then `./deputy.toml`, then
/// `DEPUTY_CONFIG`; `None` means no file: use the built-in config.
///
/// # Errors
/// A path given by `-c` or `DEPUTY_CONFIG` that does not exist.
pub(crate) fn locate(
    flag: Option<&Path>,
    env: Option<&str>,
    cwd_has_default: bool,
) -> Result<Option<PathBuf>, ConfigError> {
    let missing = |path: &Path, how: &str| ConfigError {
        source: path.display().to_string(),
        problems: vec![format!(
            "no such file (given by {how}); check the path, or run `deputy config example > deputy.toml` to start one"
        )],
    };
    if let Some(path) = flag {
        return if path.is_file() {
            Ok(Some(path.to_owned()))
        } else {
            Err(missing(path, "-c/--config"))
        };
    }
    if cwd_has_default {
        return Ok(Some(PathBuf::from(DEFAULT_FILE)));
    }
    match env.filter(|value| !value.trim().is_empty()) {
        Some(value) => {
            let path = PathBuf::from(value);
            if path.is_file() {
                Ok(Some(path))
            } else {
                Err(missing(&path, CONFIG_ENV))
            }
        }
        None => Ok(None),
    }
}

/// Reads and checks the file at `path`.
///
/// # Errors
/// The file cannot be read, or the config has problems.
pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
        source: path.display().to_string(),
        problems: vec![format!("cannot read the file: {error}")],
    })?;
    parse(&text, Source::File(path.to_owned()))
}

/// The built-in offline config.
pub(crate) fn built_in() -> Result<Config, ConfigError> {
    parse(EXAMPLE, Source::BuiltIn)
}

/// Parses and checks config text.
///
/// # Errors
/// The text is not TOML of the right shape, or values break their rules.
pub(crate) fn parse(text: &str, source: Source) -> Result<Config, ConfigError> {
    let name = match &source {
        Source::File(path) => path.display().to_string(),
        Source::BuiltIn => "built-in config".to_owned(),
    };
    if text.trim().is_empty() {
        return Err(ConfigError {
            source: name,
            problems: vec![
                "the file is empty; run `deputy config example` for a complete starting point"
                    .to_owned(),
            ],
        });
    }
    let raw: RawConfig = toml::from_str(text).map_err(|error| ConfigError {
        source: name.clone(),
        problems: vec![describe_toml_error(text, &error)],
    })?;
    check(raw, source, text).map_err(|problems| ConfigError {
        source: name,
        problems,
    })
}

/// The sections a reload cannot apply: everything but `[agents]` and
/// `[agent.subagents]`.
fn restart_sections(text: &str) -> toml::Table {
    // It parsed as RawConfig, so it parses as a table.
    let mut sections: toml::Table = toml::from_str(text).unwrap_or_default();
    sections.remove("agents");
    if let Some(toml::Value::Table(agent)) = sections.get_mut("agent") {
        agent.remove("subagents");
    }
    sections
}

/// `value` if it is within `min..=max` (and fits `T`); otherwise a problem
/// sentence naming `key`, and `None`.
fn ranged<T: TryFrom<i64>>(
    value: Option<i64>,
    key: &str,
    min: i64,
    max: i64,
    problems: &mut Vec<String>,
) -> Option<T> {
    let value = value?;
    if !(min..=max).contains(&value) {
        problems.push(format!(
            "{key} must be between {min} and {max}, got {value}"
        ));
        return None;
    }
    T::try_from(value).ok()
}

/// The checked config of `raw`, parsed from `text`.
fn check(raw: RawConfig, source: Source, text: &str) -> Result<Config, Vec<String>> {
    let mut problems = Vec::new();

    let subagents = SubagentSettings::from_raw(raw.agent.subagents)
        .map_err(|error| {
            problems.extend(
                error
                    .errors()
                    .iter()
                    .map(|error| format!("agent.subagents.{error}")),
            );
        })
        .ok();

    let mut providers = BTreeMap::new();
    for (name, raw_provider) in raw.providers {
        match ProviderConfig::from_raw(&name, raw_provider) {
            Ok(provider) => {
                providers.insert(name, provider.resolve_paths(&source.base_dir()));
            }
            Err(error) => problems.extend(
                error
                    .problems
                    .iter()
                    .map(|problem| format!("providers.{name}: {problem}")),
            ),
        }
    }

    let agent_names: Vec<String> = raw.agents.keys().cloned().collect();
    let mut agents = BTreeMap::new();
    for (name, profile) in raw.agents {
        let at = |key: &str| format!("agents.{name}.{key}");
        let provider = match profile.provider {
            None => {
                problems.push(format!(
                    "{} is missing; name one of the [providers.*] tables ({})",
                    at("provider"),
                    known(providers.keys())
                ));
                None
            }
            Some(provider)
                if !providers.contains_key(&provider) && !provider_failed(&provider, &problems) =>
            {
                problems.push(format!(
                    "{}: there is no [providers.{provider}]; known providers: {}{}",
                    at("provider"),
                    known(providers.keys()),
                    did_you_mean(&provider, providers.keys())
                ));
                None
            }
            Some(provider) => Some(provider),
        };
        for subagent in &profile.subagents {
            if subagent != "*" && !agent_names.contains(subagent) {
                problems.push(format!(
                    "{}: there is no [agents.{subagent}]; known agents: {}{}",
                    at("subagents"),
                    known(agent_names.iter()),
                    did_you_mean(subagent, agent_names.iter())
                ));
            }
        }
        let priority = ranged(
            profile.priority,
            &at("priority"),
            -1000,
            1000,
            &mut problems,
        )
        .unwrap_or(0);
        let max_turns = ranged(profile.max_turns, &at("max_turns"), 1, 1000, &mut problems);
        let max_concurrent = ranged(
            profile.max_concurrent,
            &at("max_concurrent"),
            1,
            1_000_000,
            &mut problems,
        );
        let max_output_tokens = ranged(
            profile.max_output_tokens,
            &at("max_output_tokens"),
            1,
            10_000_000,
            &mut problems,
        );
        let time_limit = ranged(
            profile.timeout_secs,
            &at("timeout_secs"),
            1,
            604_800,
            &mut problems,
        )
        .map(Duration::from_secs);
        let token_budget = ranged(
            profile.token_budget,
            &at("token_budget"),
            1,
            i64::MAX,
            &mut problems,
        );
        let temperature = match profile.temperature {
            Some(value) if !(0.0..=2.0).contains(&value) => {
                problems.push(format!(
                    "{} must be between 0 and 2, got {value}",
                    at("temperature")
                ));
                None
            }
            #[expect(
                clippy::cast_possible_truncation,
                reason = "checked to be within 0..=2"
            )]
            Some(value) => Some(value as f32),
            None => None,
        };
        if let Some(provider) = provider {
            agents.insert(
                name.clone(),
                AgentProfile {
                    provider,
                    model: profile.model,
                    system_prompt: profile.system_prompt,
                    description: profile.description,
                    capabilities: profile.capabilities,
                    priority,
                    max_turns,
                    max_concurrent,
                    temperature,
                    max_output_tokens,
                    time_limit,
                    token_budget,
                    subagents: profile.subagents,
                },
            );
        }
    }

    let orchestrator = raw.agent.name.unwrap_or_else(|| "orchestrator".to_owned());
    if !agent_names.contains(&orchestrator) {
        problems.push(format!(
            "agent.name: there is no [agents.{orchestrator}] to run orchestrations; known agents: {}{}",
            known(agent_names.iter()),
            did_you_mean(&orchestrator, agent_names.iter())
        ));
    }
    let max_depth =
        ranged(raw.agent.max_depth, "agent.max_depth", 1, 16, &mut problems).unwrap_or(3);
    let max_result_chars = ranged(
        raw.agent.max_result_chars,
        "agent.max_result_chars",
        100,
        10_000_000,
        &mut problems,
    )
    .unwrap_or(4000);
    let max_wait = ranged(
        raw.agent.max_wait_ms,
        "agent.max_wait_ms",
        1,
        86_400_000,
        &mut problems,
    )
    .map_or(Duration::from_secs(300), Duration::from_millis);

    let hooks = HooksSettings::from_raw(&raw.hooks, raw.billing.as_ref())
        .map_err(|error| problems.extend(error.problems().iter().cloned()))
        .ok();

    let server = check_server(raw.server, &mut problems);

    match (subagents, hooks, problems.is_empty()) {
        (Some(subagents), Some(hooks), true) => Ok(Config {
            source,
            orchestrator,
            max_depth,
            on_finish: raw.agent.on_finish.unwrap_or_default(),
            max_result_chars,
            max_wait,
            subagents,
            providers,
            agents,
            hooks,
            server,
            restart_sections: restart_sections(text),
            text_hash: text_hash(text),
        }),
        _ => Err(problems),
    }
}

/// Whether a problem was already reported for `[providers.<name>]`, so a
/// reference to it is not reported as unknown as well.
fn provider_failed(name: &str, problems: &[String]) -> bool {
    let prefix = format!("providers.{name}: ");
    problems.iter().any(|problem| problem.starts_with(&prefix))
}

fn check_server(raw: RawServerConfig, problems: &mut Vec<String>) -> ServerSettings {
    let listen_text = raw.listen.unwrap_or_else(|| "127.0.0.1:7878".to_owned());
    let listen = match listen_text.parse::<SocketAddr>() {
        Ok(listen) => listen,
        Err(error) => {
            problems.push(format!(
                "server.listen: {listen_text:?} is not an address ({error}); write it like \"127.0.0.1:7878\""
            ));
            SocketAddr::from(([127, 0, 0, 1], 7878))
        }
    };
    if !listen.ip().is_loopback() && raw.token_env.is_none() {
        problems.push(format!(
            "server.listen: {listen} is reachable from other machines, so the server needs a token; set server.token_env to a variable holding one, or listen on 127.0.0.1"
        ));
    }
    let max_body_bytes = ranged(
        raw.max_body_bytes,
        "server.max_body_bytes",
        1024,
        1 << 30,
        problems,
    )
    .unwrap_or(1_048_576);
    let drain = ranged(raw.drain_secs, "server.drain_secs", 0, 86_400, problems)
        .map_or(Duration::from_secs(30), Duration::from_secs);
    ServerSettings {
        listen,
        token_env: raw.token_env,
        max_body_bytes,
        drain,
    }
}

/// `a, b, c`, or `none` for an empty list.
fn known<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// `; did you mean "x"?` when a known name is close to `given`.
pub(crate) fn did_you_mean<'a>(given: &str, known: impl Iterator<Item = &'a String>) -> String {
    closest(given, known.map(String::as_str))
        .map(|name| format!("; did you mean {name:?}?"))
        .unwrap_or_default()
}

/// The known name closest to `given`, if any is close enough to be a typo.
pub(crate) fn closest<'a>(given: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    known
        .map(|name| (strsim::jaro_winkler(given, name), name))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, name)| name)
}

impl Config {
    /// The `[agent.subagents]` values as they would be written.
    pub(crate) fn raw_subagents(&self) -> RawSubagentSettings {
        RawSubagentSettings::from(self.subagents.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        parse(text, Source::BuiltIn).unwrap_err().problems
    }

    const MINIMAL: &str = r#"
[providers.offline]
kind = "scripted"

[agents.orchestrator]
provider = "offline"
subagents = ["researcher"]

[agents.researcher]
provider = "offline"
"#;

    #[test]
    fn the_example_is_a_valid_config() {
        let config = built_in().unwrap();
        assert_eq!(config.orchestrator, "orchestrator");
        assert!(config.agents.contains_key("researcher"));
        assert_eq!(config.source, Source::BuiltIn);
    }

    #[test]
    fn a_minimal_config_gets_the_defaults() {
        let config = parse(MINIMAL, Source::BuiltIn).unwrap();
        assert_eq!(config.max_depth, 3);
        assert_eq!(config.on_finish, OnFinish::Wait);
        assert_eq!(config.max_result_chars, 4000);
        assert_eq!(config.max_wait, Duration::from_secs(300));
        assert_eq!(config.subagents, SubagentSettings::default());
        assert_eq!(
            config.server.listen,
            SocketAddr::from(([127, 0, 0, 1], 7878))
        );
        assert_eq!(config.agents["researcher"].priority, 0);
    }

    #[test]
    fn unknown_keys_name_their_line_path_and_nearest_key() {
        let text = format!("{MINIMAL}\n[agent.subagents]\nmax_concurent = 5\n");
        let problems = problems(&text);
        assert_eq!(problems.len(), 1);
        let problem = &problems[0];
        assert!(problem.contains("line 13, column 1"), "{problem}");
        assert!(
            problem.contains("agent.subagents.max_concurent"),
            "{problem}"
        );
        assert!(
            problem.contains("did you mean `max_concurrent`?"),
            "{problem}"
        );
    }

    #[test]
    fn type_errors_name_line_and_column() {
        let text = format!("{MINIMAL}\n[agent.subagents]\nmax_concurrent = \"five\"\n");
        let problem = &problems(&text)[0];
        assert!(problem.contains("line 13, column 18"), "{problem}");
        assert!(
            problem.contains("at agent.subagents.max_concurrent:"),
            "{problem}"
        );
        assert!(
            problem.contains("invalid type: string \"five\""),
            "{problem}"
        );
    }

    #[test]
    fn every_value_problem_is_listed_with_its_key() {
        let text = r#"
[agent]
name = "orchestrater"
max_depth = 0

[agent.subagents]
max_concurrent = 0

[providers.offline]
kind = "scripted"

[agents.orchestrator]
provider = "ofline"
subagents = ["reseacher"]
temperature = 3.0

[agents.researcher]
provider = "offline"
max_turns = 0

[server]
listen = "0.0.0.0:7878"
"#;
        let problems = problems(text).join("\n");
        for expected in [
            "agent.subagents.max_concurrent must be at least 1, got 0",
            "agents.orchestrator.provider: there is no [providers.ofline]; known providers: offline; did you mean \"offline\"?",
            "agents.orchestrator.subagents: there is no [agents.reseacher]; known agents: orchestrator, researcher; did you mean \"researcher\"?",
            "agents.orchestrator.temperature must be between 0 and 2, got 3",
            "agents.researcher.max_turns must be between 1 and 1000, got 0",
            "agent.name: there is no [agents.orchestrater] to run orchestrations; known agents: orchestrator, researcher; did you mean \"orchestrator\"?",
            "agent.max_depth must be between 1 and 16, got 0",
            "server.listen: 0.0.0.0:7878 is reachable from other machines, so the server needs a token",
        ] {
            assert!(
                problems.contains(expected),
                "missing {expected:?} in:\n{problems}"
            );
        }
    }

    #[test]
    fn an_empty_file_says_so() {
        assert_eq!(
            problems("  \n"),
            ["the file is empty; run `deputy config example` for a complete starting point"]
        );
    }

    #[test]
    fn locate_follows_flag_then_default_file_then_env() {
        let dir = std::env::temp_dir();
        let flag_missing = dir.join("deputy-no-such-config.toml");
        let error = locate(Some(&flag_missing), None, true).unwrap_err();
        assert!(
            error.to_string().contains("given by -c/--config"),
            "{error}"
        );
        assert_eq!(
            locate(None, Some("/elsewhere.toml"), true).unwrap(),
            Some(PathBuf::from(DEFAULT_FILE))
        );
        let error = locate(None, Some("/no/such/deputy.toml"), false).unwrap_err();
        assert!(
            error.to_string().contains("given by DEPUTY_CONFIG"),
            "{error}"
        );
        assert_eq!(locate(None, None, false).unwrap(), None);
        assert_eq!(locate(None, Some(" "), false).unwrap(), None);
    }

    #[test]
    fn closest_names_only_near_misses() {
        let names = ["max_concurrent", "queue_wait_ms", "enabled"];
        assert_eq!(
            closest("max_concurent", names.into_iter()),
            Some("max_concurrent")
        );
        assert_eq!(
            closest("queue_wait", names.into_iter()),
            Some("queue_wait_ms")
        );
        assert_eq!(closest("zzz", names.into_iter()), None);
    }
}
