//! The `[hooks]` and `[billing]` config sections: a raw serde form, checked
//! into [`HooksSettings`] (every problem listed, nothing opened), then built
//! into a [`HookSet`] (files opened, webhook workers started).
//!
//! The order hooks run in is fixed and documented in the crate docs: the
//! built-in hooks first, then the configured ones in file order.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deputy_registry::{DEFAULT_HOOK_TIMEOUT, HookStack, Registry};
use regex::Regex;
use serde::Deserialize;

use crate::audit::AuditLog;
use crate::billing::Billing;
use crate::command::{CommandHook, CommandLine};
use crate::error::HookConfigError;
use crate::metrics::Metrics;
use crate::payload::new_session_id;
use crate::price::{ModelPrice, PriceTable};
use crate::webhook::{
    DEFAULT_WEBHOOK_CONCURRENCY, DEFAULT_WEBHOOK_QUEUE, DEFAULT_WEBHOOK_RETRIES,
    DEFAULT_WEBHOOK_TIMEOUT, Webhook, redact_url_text,
};

/// The `[hooks]` section as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHooksConfig {
    /// `[[hooks.SubagentStart]]` entries, in order.
    #[serde(rename = "SubagentStart", default)]
    pub subagent_start: Vec<RawHookEntry>,
    /// `[[hooks.SubagentStop]]` entries, in order.
    #[serde(rename = "SubagentStop", default)]
    pub subagent_stop: Vec<RawHookEntry>,
    /// `[hooks.metrics]`.
    pub metrics: Option<RawMetricsConfig>,
    /// `[hooks.audit]`.
    pub audit: Option<RawAuditConfig>,
}

/// Which kind of hook an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookKind {
    /// An external program.
    Command,
    /// An HTTP POST.
    Webhook,
}

/// A command given as an argv list or, with `shell = true`, a string.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RawCommand {
    /// `["/path/hook", "arg"]`.
    Argv(Vec<String>),
    /// `"jq -c . >> events.jsonl"`, run by `sh -c`.
    Line(String),
}

/// A webhook URL from config; `Debug` shows only its scheme, host and first
/// path segment, since the rest may carry a token.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct HookUrl(String);

impl HookUrl {
    /// The URL as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for HookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url_text(&self.0))
    }
}

/// Variables for a command hook; `Debug` shows their names only.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct EnvVars(BTreeMap<String, String>);

impl EnvVars {
    /// Name and value pairs, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for EnvVars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// One `[[hooks.SubagentStart]]` or `[[hooks.SubagentStop]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHookEntry {
    /// `command` or `webhook`.
    pub kind: HookKind,
    /// Name in logs and metrics.
    pub name: Option<String>,
    /// Regex on the agent name; absent means every agent.
    pub matcher: Option<String>,
    /// Command hooks: argv list, or a string with `shell = true`.
    pub command: Option<RawCommand>,
    /// Command hooks: run `command` through `sh -c`.
    #[serde(default)]
    pub shell: bool,
    /// Command hooks: variables set in the program's environment.
    #[serde(default)]
    pub env: EnvVars,
    /// Command hooks: host variables passed through by name.
    #[serde(default)]
    pub pass_env: Vec<String>,
    /// Command hooks: working directory (default: the config file's).
    pub cwd: Option<PathBuf>,
    /// Webhooks: the URL.
    pub url: Option<HookUrl>,
    /// Time limit in milliseconds (command default 60 000, webhook request
    /// default 10 000).
    pub timeout_ms: Option<u64>,
    /// Webhooks: retries after the first attempt (default 3).
    pub retries: Option<u32>,
    /// Webhooks: environment variable holding the HMAC secret.
    pub secret_env: Option<String>,
    /// Start webhooks: call in line and let the answer deny.
    #[serde(default)]
    pub blocking: bool,
    /// Webhooks: capacity of the delivery queue (default 1024).
    pub queue: Option<usize>,
    /// Webhooks: deliveries in flight at once (default 4).
    pub concurrency: Option<usize>,
}

/// `[hooks.metrics]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetricsConfig {
    /// Collect metrics (default true once the section is present).
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// `[hooks.audit]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuditConfig {
    /// The JSONL file (relative to the config file's directory).
    pub path: PathBuf,
    /// Flush each line to the disk (default false).
    #[serde(default)]
    pub sync: bool,
}

/// The `[billing]` section as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBillingConfig {
    /// Price tasks and keep the ledger (default true once the section is
    /// present).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The JSONL ledger (relative to the config file's directory).
    pub ledger: Option<PathBuf>,
    /// Flush each ledger line to the disk (default false).
    #[serde(default)]
    pub sync: bool,
    /// Budget for all tasks, in US dollars.
    pub budget_usd: Option<f64>,
    /// Budgets per agent, in US dollars.
    #[serde(default)]
    pub agent_budget_usd: BTreeMap<String, f64>,
    /// Prices that add to or override the built-in table, by model.
    #[serde(default)]
    pub prices: BTreeMap<String, ModelPrice>,
}

fn yes() -> bool {
    true
}

/// The longest time limit a hook may have: a hook that needs longer should
/// hand its work off and return.
const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// The most retries a webhook may have.
const MAX_RETRIES: u32 = 10;

/// A checked hook entry.
#[derive(Debug, Clone)]
pub struct HookEntry {
    /// Name in logs and metrics.
    pub name: Option<String>,
    /// Regex on the agent name.
    pub matcher: Option<Regex>,
    /// What it runs.
    pub target: HookTarget,
}

/// What a checked hook entry runs.
#[derive(Debug, Clone)]
pub enum HookTarget {
    /// An external program.
    Command {
        /// Argv or shell line.
        command: CommandLine,
        /// Variables set for it.
        env: EnvVars,
        /// Host variables passed through.
        pass_env: Vec<String>,
        /// Its working directory, if set.
        cwd: Option<PathBuf>,
        /// Its time limit.
        timeout: Duration,
    },
    /// An HTTP POST.
    Webhook {
        /// The URL.
        url: HookUrl,
        /// Time limit of one request.
        timeout: Duration,
        /// Retries after the first attempt.
        retries: u32,
        /// Environment variable with the HMAC secret.
        secret_env: Option<String>,
        /// Call in line and let the answer deny (start only).
        blocking: bool,
        /// Delivery queue capacity.
        queue: usize,
        /// Deliveries in flight.
        concurrency: usize,
    },
}

/// Checked billing settings.
#[derive(Debug, Clone)]
pub struct BillingSettings {
    /// The ledger file.
    pub ledger: Option<PathBuf>,
    /// Flush each line to the disk.
    pub sync: bool,
    /// Budget for all tasks.
    pub budget_usd: Option<f64>,
    /// Budgets per agent.
    pub agent_budget_usd: BTreeMap<String, f64>,
}

/// `[hooks]` and `[billing]`, checked.
#[derive(Debug, Clone, Default)]
pub struct HooksSettings {
    /// SubagentStart entries, in order.
    pub start: Vec<HookEntry>,
    /// SubagentStop entries, in order.
    pub stop: Vec<HookEntry>,
    /// Whether the metrics hook is on.
    pub metrics: bool,
    /// The audit log, if on: its path and whether lines are synced.
    pub audit: Option<(PathBuf, bool)>,
    /// Billing, if on.
    pub billing: Option<BillingSettings>,
    /// The built-in prices with the config's added.
    pub prices: PriceTable,
}

impl HooksSettings {
    /// Checks both sections; lists every problem, each with its key.
    ///
    /// # Errors
    /// Any entry or value that cannot be used.
    pub fn from_raw(
        hooks: &RawHooksConfig,
        billing: Option<&RawBillingConfig>,
    ) -> Result<Self, HookConfigError> {
        let mut problems = Vec::new();
        let start = check_entries(
            "hooks.SubagentStart",
            &hooks.subagent_start,
            true,
            &mut problems,
        );
        let stop = check_entries(
            "hooks.SubagentStop",
            &hooks.subagent_stop,
            false,
            &mut problems,
        );
        let audit = hooks.audit.as_ref().and_then(|audit| {
            if audit.path.as_os_str().is_empty() {
                problems.push(
                    "hooks.audit.path: is empty; give a file like \"deputy-audit.jsonl\""
                        .to_owned(),
                );
                None
            } else {
                Some((audit.path.clone(), audit.sync))
            }
        });
        // Prices apply even with billing off: metrics, command hooks and
        // webhooks report cost too.
        let mut prices = PriceTable::builtin();
        for (model, price) in billing.iter().flat_map(|billing| &billing.prices) {
            match price.invalid_field() {
                Some((field, value)) => problems.push(format!(
                    "billing.prices.{model}.{field}: must be a non-negative number of dollars per million tokens, got {value}"
                )),
                None => prices.insert(model.clone(), *price),
            }
        }
        let billing = billing.filter(|billing| billing.enabled).map(|billing| {
            let budgets = billing
                .budget_usd
                .map(|usd| ("budget_usd".to_owned(), usd))
                .into_iter()
                .chain(billing.agent_budget_usd.iter().map(|(agent, usd)| (format!("agent_budget_usd.{agent}"), *usd)));
            for (key, usd) in budgets {
                if !usd.is_finite() || usd < 0.0 {
                    problems.push(format!("billing.{key}: must be a non-negative number of dollars, got {usd}"));
                }
            }
            if billing.ledger.as_ref().is_some_and(|path| path.as_os_str().is_empty()) {
                problems.push("billing.ledger: is empty; give a file like \"deputy-ledger.jsonl\" or remove the key".to_owned());
            }
            BillingSettings {
                ledger: billing.ledger.clone(),
                sync: billing.sync,
                budget_usd: billing.budget_usd,
                agent_budget_usd: billing.agent_budget_usd.clone(),
            }
        });
        if !problems.is_empty() {
            return Err(HookConfigError::new(problems));
        }
        Ok(Self {
            start,
            stop,
            metrics: hooks
                .metrics
                .as_ref()
                .is_some_and(|metrics| metrics.enabled),
            audit,
            billing,
            prices,
        })
    }

    /// Opens the files, starts the webhook workers and stacks the hooks in
    /// the documented order. Relative paths are taken from `base_dir` (the
    /// config file's directory), which is also a command's default
    /// working directory.
    ///
    /// # Errors
    /// A file cannot be opened, the ledger cannot be read back, or a webhook
    /// secret variable is unset.
    ///
    /// # Panics
    /// Outside a Tokio runtime when a webhook is configured.
    pub fn build(
        &self,
        base_dir: &Path,
        session_id: Option<&str>,
    ) -> Result<HookSet, HookConfigError> {
        let session_id = session_id.map_or_else(new_session_id, str::to_owned);
        let mut problems = Vec::new();
        let audit_file = self
            .audit
            .as_ref()
            .map(|(path, sync)| (path, base_dir.join(path), *sync));
        let ledger = self
            .billing
            .as_ref()
            .and_then(|billing| billing.ledger.as_ref())
            .map(|path| (path, base_dir.join(path)));
        if let (Some((audit_given, audit, _)), Some((ledger_given, ledger))) =
            (&audit_file, &ledger)
            && same_file(audit, ledger)
        {
            return Err(HookConfigError::one(format!(
                "hooks.audit.path ({}) and billing.ledger ({}) are both {}; give each its own file",
                audit_given.display(),
                ledger_given.display(),
                audit.display()
            )));
        }
        let ledger_path = ledger.map(|(_, path)| path);
        let metrics = self
            .metrics
            .then(|| Arc::new(Metrics::with_prices(self.prices.clone())));
        let audit = audit_file.and_then(|(_, path, sync)| {
            AuditLog::open_with(&path, sync, session_id.clone(), self.prices.clone())
                .map_err(|error| problems.extend(error.problems().iter().cloned()))
                .ok()
                .map(Arc::new)
        });
        let billing = self.billing.as_ref().and_then(|settings| {
            let mut builder = Billing::builder()
                .prices(self.prices.clone())
                .sync(settings.sync);
            if let Some(ledger) = ledger_path {
                builder = builder.ledger(ledger);
            }
            if let Some(budget) = settings.budget_usd {
                builder = builder.budget(budget);
            }
            for (agent, usd) in &settings.agent_budget_usd {
                builder = builder.agent_budget(agent.clone(), *usd);
            }
            builder
                .build()
                .map_err(|error| problems.extend(error.problems().iter().cloned()))
                .ok()
                .map(Arc::new)
        });

        let mut stack = HookStack::new();
        if let Some(metrics) = &metrics {
            stack = stack.with_start(metrics.clone());
        }
        if let Some(audit) = &audit {
            stack = stack.with_start(audit.clone());
        }
        if let Some(billing) = &billing {
            stack = stack.with_start(billing.clone()).with_stop(billing.clone());
        }
        if let Some(metrics) = &metrics {
            stack = stack.with_stop(metrics.clone());
        }
        if let Some(audit) = &audit {
            stack = stack.with_stop(audit.clone());
        }
        let mut webhooks = Vec::new();
        let context = BuildContext {
            base_dir,
            session_id: &session_id,
            prices: &self.prices,
            metrics: metrics.as_ref(),
        };
        for (section, entries, start) in [
            ("hooks.SubagentStart", &self.start, true),
            ("hooks.SubagentStop", &self.stop, false),
        ] {
            for (index, entry) in entries.iter().enumerate() {
                match context.build_entry(entry) {
                    Ok(Built::Command(hook)) => {
                        let hook = Arc::new(hook);
                        stack = if start {
                            stack.with_start(hook)
                        } else {
                            stack.with_stop(hook)
                        };
                    }
                    Ok(Built::Webhook(hook)) => {
                        let hook = Arc::new(hook);
                        webhooks.push(hook.clone());
                        stack = if start {
                            stack.with_start(hook)
                        } else {
                            stack.with_stop(hook)
                        };
                    }
                    Err(error) => problems.extend(
                        error
                            .problems()
                            .iter()
                            .map(|problem| format!("{section}[{index}].{problem}")),
                    ),
                }
            }
        }
        if !problems.is_empty() {
            return Err(HookConfigError::new(problems));
        }
        Ok(HookSet {
            stack,
            metrics,
            billing,
            audit,
            webhooks,
            session_id,
        })
    }
}

struct BuildContext<'a> {
    base_dir: &'a Path,
    session_id: &'a str,
    prices: &'a PriceTable,
    metrics: Option<&'a Arc<Metrics>>,
}

enum Built {
    Command(CommandHook),
    Webhook(Webhook),
}

impl BuildContext<'_> {
    fn build_entry(&self, entry: &HookEntry) -> Result<Built, HookConfigError> {
        match &entry.target {
            HookTarget::Command {
                command,
                env,
                pass_env,
                cwd,
                timeout,
            } => {
                let mut hook = match command {
                    CommandLine::Argv(argv) => CommandHook::new(argv.clone())?,
                    CommandLine::Shell(line) => CommandHook::shell(line.clone())?,
                };
                let dir = cwd
                    .as_ref()
                    .map_or_else(|| self.base_dir.to_owned(), |cwd| self.base_dir.join(cwd));
                if !dir.is_dir() {
                    return Err(HookConfigError::one(format!(
                        "cwd: {} is not a directory; create it or fix the path",
                        dir.display()
                    )));
                }
                hook = hook
                    .timeout(*timeout)
                    .cwd(dir)
                    .session_id(self.session_id)
                    .prices(self.prices.clone());
                for name in pass_env {
                    hook = hook.pass_env(name);
                }
                for (name, value) in env.iter() {
                    hook = hook.env(name.clone(), value.clone());
                }
                if let Some(matcher) = &entry.matcher {
                    hook = hook.matcher(matcher.as_str())?;
                }
                if let Some(name) = &entry.name {
                    hook = hook.named(name.clone());
                }
                Ok(Built::Command(hook))
            }
            HookTarget::Webhook {
                url,
                timeout,
                retries,
                secret_env,
                blocking,
                queue,
                concurrency,
            } => {
                let mut builder = Webhook::builder(url.as_str())
                    .timeout(*timeout)
                    .retries(*retries)
                    .blocking(*blocking)
                    .queue(*queue)
                    .concurrency(*concurrency)
                    .session_id(self.session_id)
                    .prices(self.prices.clone());
                if let Some(secret_env) = secret_env {
                    builder = builder.secret_env(secret_env);
                }
                if let Some(matcher) = &entry.matcher {
                    builder = builder.matcher(matcher.as_str());
                }
                if let Some(name) = &entry.name {
                    builder = builder.name(name.clone());
                }
                if let Some(metrics) = self.metrics {
                    builder = builder.metrics(metrics.clone());
                }
                builder.build().map(Built::Webhook)
            }
        }
    }
}

/// Whether two paths name the same file: by where they resolve to when
/// both (or their directories) exist, else by what they say once `.` and
/// `..` are taken out. Checked before either file is opened, so a clash
/// leaves no file created behind it even when a directory is missing.
fn same_file(a: &Path, b: &Path) -> bool {
    match (canonical(a), canonical(b)) {
        // Canonical paths follow symlinks, which make `..` mean another
        // directory than the text says.
        (Some(a), Some(b)) => a == b,
        _ => lexical(a) == lexical(b),
    }
}

/// The path with symlinks, `.` and `..` resolved; a file that does not
/// exist yet is placed in its resolved directory.
fn canonical(path: &Path) -> Option<PathBuf> {
    if let Ok(resolved) = path.canonicalize() {
        return Some(resolved);
    }
    let name = path.file_name()?;
    let parent = match path.parent()? {
        parent if parent.as_os_str().is_empty() => Path::new("."),
        parent => parent,
    };
    Some(parent.canonicalize().ok()?.join(name))
}

/// The path made absolute (when the working directory is known) with `.`
/// and `..` taken out by their text alone.
fn lexical(path: &Path) -> PathBuf {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => match normal.components().next_back() {
                Some(Component::Normal(_)) => {
                    normal.pop();
                }
                // `/..` is `/`.
                Some(Component::RootDir | Component::Prefix(_)) => {}
                Some(Component::CurDir | Component::ParentDir) | None => normal.push(".."),
            },
            other => normal.push(other),
        }
    }
    normal
}

/// Checks one list of entries, adding problems as `section[i].key: ...`.
fn check_entries(
    section: &str,
    entries: &[RawHookEntry],
    start: bool,
    problems: &mut Vec<String>,
) -> Vec<HookEntry> {
    let mut checked = Vec::new();
    for (index, raw) in entries.iter().enumerate() {
        let at = |key: &str| format!("{section}[{index}].{key}");
        let before = problems.len();
        let matcher = raw.matcher.as_deref().and_then(|pattern| {
            Regex::new(pattern)
                .map_err(|error| {
                    problems.push(format!(
                        "{}: invalid regex {pattern:?}: {error}",
                        at("matcher")
                    ))
                })
                .ok()
        });
        match raw.timeout_ms {
            Some(0) => problems.push(format!("{}: must be at least 1, got 0", at("timeout_ms"))),
            Some(ms) if ms > MAX_TIMEOUT_MS => problems.push(format!(
                "{}: must be at most {MAX_TIMEOUT_MS} (one hour), got {ms}",
                at("timeout_ms")
            )),
            _ => {}
        }
        if let Some(retries) = raw.retries
            && retries > MAX_RETRIES
        {
            problems.push(format!(
                "{}: must be at most {MAX_RETRIES}, got {retries}",
                at("retries")
            ));
        }
        let not_for = |problems: &mut Vec<String>, present: bool, key: &str, kind: &str| {
            if present {
                problems.push(format!(
                    "{}: does not apply to {kind} hooks; remove it",
                    at(key)
                ));
            }
        };
        let target = match raw.kind {
            HookKind::Command => {
                not_for(problems, raw.url.is_some(), "url", "command");
                not_for(problems, raw.retries.is_some(), "retries", "command");
                not_for(problems, raw.secret_env.is_some(), "secret_env", "command");
                not_for(problems, raw.queue.is_some(), "queue", "command");
                not_for(
                    problems,
                    raw.concurrency.is_some(),
                    "concurrency",
                    "command",
                );
                not_for(
                    problems,
                    raw.blocking,
                    "blocking",
                    "command (a command start hook always waits)",
                );
                for name in raw.env.iter().map(|(name, _)| name).chain(&raw.pass_env) {
                    if name.is_empty() || name.contains('=') {
                        problems.push(format!("{}: {name:?} is not a variable name", at("env")));
                    }
                }
                let command = match (&raw.command, raw.shell) {
                    (None, _) => {
                        problems.push(format!(
                            "{}: is missing; give an argv list like [\"./hooks/gate.py\"]",
                            at("command")
                        ));
                        None
                    }
                    (Some(RawCommand::Argv(argv)), false)
                        if argv
                            .first()
                            .is_some_and(|program| !program.trim().is_empty()) =>
                    {
                        Some(CommandLine::Argv(argv.clone()))
                    }
                    (Some(RawCommand::Argv(_)), false) => {
                        problems.push(format!(
                            "{}: the argv list is empty or starts with an empty program",
                            at("command")
                        ));
                        None
                    }
                    (Some(RawCommand::Line(line)), true) if !line.trim().is_empty() => {
                        Some(CommandLine::Shell(line.clone()))
                    }
                    (Some(RawCommand::Line(_)), true) => {
                        problems.push(format!("{}: the shell command is empty", at("command")));
                        None
                    }
                    (Some(RawCommand::Line(line)), false) => {
                        problems.push(format!(
                            "{}: {line:?} is a string but shell is false; give an argv list like [\"./hook\", \"arg\"] or set shell = true",
                            at("command")
                        ));
                        None
                    }
                    (Some(RawCommand::Argv(_)), true) => {
                        problems.push(format!(
                            "{}: with shell = true the command is one string, not a list",
                            at("command")
                        ));
                        None
                    }
                };
                command.map(|command| HookTarget::Command {
                    command,
                    env: raw.env.clone(),
                    pass_env: raw.pass_env.clone(),
                    cwd: raw.cwd.clone(),
                    timeout: raw
                        .timeout_ms
                        .map_or(DEFAULT_HOOK_TIMEOUT, Duration::from_millis),
                })
            }
            HookKind::Webhook => {
                not_for(problems, raw.command.is_some(), "command", "webhook");
                not_for(problems, raw.shell, "shell", "webhook");
                not_for(problems, !raw.env.is_empty(), "env", "webhook");
                not_for(problems, !raw.pass_env.is_empty(), "pass_env", "webhook");
                not_for(problems, raw.cwd.is_some(), "cwd", "webhook");
                if raw.blocking && !start {
                    problems.push(format!(
                        "{}: a stop webhook cannot block a task that has ended; remove it",
                        at("blocking")
                    ));
                }
                for (key, value) in [("queue", raw.queue), ("concurrency", raw.concurrency)] {
                    if value == Some(0) {
                        problems.push(format!("{}: must be at least 1, got 0", at(key)));
                    }
                }
                if let Some(name) = &raw.secret_env
                    && std::env::var(name).map_or(true, |value| value.is_empty())
                {
                    problems.push(format!(
                        "{}: environment variable {name} is unset or empty; export the webhook secret in it or remove secret_env",
                        at("secret_env")
                    ));
                }
                match &raw.url {
                    None => {
                        problems.push(format!(
                            "{}: is missing; give the URL to POST events to",
                            at("url")
                        ));
                        None
                    }
                    Some(url) => match reqwest::Url::parse(url.as_str()) {
                        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {
                            Some(HookTarget::Webhook {
                                url: url.clone(),
                                timeout: raw
                                    .timeout_ms
                                    .map_or(DEFAULT_WEBHOOK_TIMEOUT, Duration::from_millis),
                                retries: raw.retries.unwrap_or(DEFAULT_WEBHOOK_RETRIES),
                                secret_env: raw.secret_env.clone(),
                                blocking: raw.blocking,
                                queue: raw.queue.unwrap_or(DEFAULT_WEBHOOK_QUEUE),
                                concurrency: raw.concurrency.unwrap_or(DEFAULT_WEBHOOK_CONCURRENCY),
                            })
                        }
                        Ok(parsed) => {
                            problems.push(format!(
                                "{}: scheme {:?} is not supported; use http:// or https://",
                                at("url"),
                                parsed.scheme()
                            ));
                            None
                        }
                        Err(error) => {
                            problems.push(format!(
                                "{}: not a URL ({error}); write it like https://example.com/hook",
                                at("url")
                            ));
                            None
                        }
                    },
                }
            }
        };
        if problems.len() == before
            && let Some(target) = target
        {
            checked.push(HookEntry {
                name: raw.name.clone(),
                matcher,
                target,
            });
        }
    }
    checked
}

/// The hooks built from config, and handles to the built-in ones.
#[derive(Debug)]
pub struct HookSet {
    stack: HookStack,
    metrics: Option<Arc<Metrics>>,
    billing: Option<Arc<Billing>>,
    audit: Option<Arc<AuditLog>>,
    webhooks: Vec<Arc<Webhook>>,
    session_id: String,
}

impl HookSet {
    /// The hooks, in order, for the registry or runtime builder.
    pub fn stack(&self) -> HookStack {
        self.stack.clone()
    }

    /// The metrics hook, when `[hooks.metrics]` is on.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// The billing hook, when `[billing]` is on.
    pub fn billing(&self) -> Option<&Arc<Billing>> {
        self.billing.as_ref()
    }

    /// The audit log, when `[hooks.audit]` is on.
    pub fn audit(&self) -> Option<&Arc<AuditLog>> {
        self.audit.as_ref()
    }

    /// The session id every event carries.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Lets metrics read the registry's gauges and hook failures, and
    /// billing count running tasks' spend.
    ///
    /// # Panics
    /// Outside a Tokio runtime when metrics are on.
    pub fn attach(&self, registry: &Registry) {
        if let Some(metrics) = &self.metrics {
            metrics.attach(registry);
        }
        if let Some(billing) = &self.billing {
            billing.attach(registry);
        }
    }

    /// Waits for queued webhook events to go out, at most `within` in all;
    /// returns how many were still pending.
    ///
    /// Cancel safety: cancel safe; it only watches.
    pub async fn flush(&self, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        let mut pending = 0;
        for webhook in &self.webhooks {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            pending += webhook.flush(left).await;
        }
        pending
    }
}
