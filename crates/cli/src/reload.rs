//! Live reload of the config file.
//!
//! The recipe follows `../shared/research/style_and_infra.md` part 2:
//!
//! * `notify` watches the file's *directory*, not the file, so saves that
//!   replace the file (vim's rename, delete and recreate) and Kubernetes'
//!   ConfigMap symlink swap (`..data`) are all seen.
//! * Events are only a hint: after a short debounce the file is read
//!   through its path (following symlinks) and hashed; an unchanged hash
//!   does nothing. A slow periodic re-check covers file systems without
//!   events, and SIGHUP forces a reload.
//! * A new file is checked in full before anything applies. A bad edit (bad
//!   TOML, a bad value, a half-written or empty file, a missing file) keeps
//!   the last good settings, logs why, and shows in the reload status; the
//!   next good edit applies.
//! * `[agent.subagents]` is published to the registry at once (a raised cap
//!   admits queued tasks right away) and `[agents.*]` profiles replace the
//!   runtime's agents for new tasks. Every other section needs a restart:
//!   a change there is logged as "restart required" and not applied.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deputy_agent::Runtime;
use deputy_hooks::{Metrics, ReloadResult};
use notify::Watcher as _;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{self, Config, Source};
use crate::wiring::{self, Providers};

/// Quiet time after the last file event before the file is read.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(100);
/// The longest a stream of events can hold a reload back.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);
/// The periodic re-check, for file systems that report nothing.
pub(crate) const POLL_EVERY: Duration = Duration::from_secs(10);

/// How the last reload went, for logs, `/v1/settings` and `/settings`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct ReloadStatus {
    /// When the file was last read after a change (RFC 3339), if ever.
    pub(crate) at: Option<String>,
    /// Whether that read applied (or needed nothing).
    pub(crate) ok: bool,
    /// Why it was rejected.
    pub(crate) error: Option<String>,
    /// What it applied, one line per section.
    pub(crate) applied: Vec<String>,
    /// Sections that changed but need a restart.
    pub(crate) restart_required: Vec<String>,
    /// Reads after a change so far.
    pub(crate) reloads: u64,
}

/// What a reload changes.
#[derive(Clone)]
pub(crate) struct Live {
    pub(crate) runtime: Runtime,
    pub(crate) providers: Providers,
    pub(crate) metrics: Option<Arc<Metrics>>,
}

impl Live {
    /// What reloads change in `stack`.
    pub(crate) fn of(stack: &wiring::Stack) -> Self {
        Self {
            runtime: stack.runtime.clone(),
            providers: stack.providers.clone(),
            metrics: stack.hooks.metrics().cloned(),
        }
    }
}

/// A running reloader; dropping it stops watching.
#[derive(Debug)]
pub(crate) struct Reloader {
    status: watch::Receiver<ReloadStatus>,
    task: JoinHandle<()>,
}

impl Drop for Reloader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Reloader {
    /// Watches `config`'s file and applies changes to `live`. A built-in
    /// config has no file: nothing is watched.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub(crate) fn start(config: Config, live: Live) -> Option<Self> {
        Self::start_with(config, live, true, POLL_EVERY)
    }

    /// [`start`](Self::start) with the file watcher optional (`watch_files`)
    /// and the re-check period given, to show the re-check alone works.
    fn start_with(
        config: Config,
        live: Live,
        watch_files: bool,
        poll_every: Duration,
    ) -> Option<Self> {
        let Source::File(path) = config.source.clone() else {
            return None;
        };
        let (status, receiver) = watch::channel(ReloadStatus {
            ok: true,
            ..ReloadStatus::default()
        });
        // The hash is of the text that was loaded, so an edit made while
        // the stack was being built is seen at the first look.
        let (hint_sender, hints) = mpsc::unbounded_channel();
        let watch = Watch::new(&path, &hint_sender, watch_files);
        // Registered before the task runs, so an early SIGHUP is a reload,
        // not the signal's default (ending the process).
        let hangups = hangup_signals();
        let state = State {
            last_hash: Some(config.text_hash),
            path,
            current: config,
            live,
            status,
            watch,
            hint_sender,
        };
        let task = tokio::spawn(state.run(hints, hangups, poll_every));
        Some(Self {
            status: receiver,
            task,
        })
    }

    /// The status of the last reload.
    pub(crate) fn status(&self) -> ReloadStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every new status.
    pub(crate) fn subscribe(&self) -> watch::Receiver<ReloadStatus> {
        self.status.clone()
    }
}

/// What is watched for a config path: its own directory and, when the
/// path is a symlink into another directory, that directory too. Checked
/// again at every re-check, so a directory deleted and made again, or a
/// link that now points elsewhere, is watched anew.
struct Watch {
    enabled: bool,
    targets: Vec<(PathBuf, Option<(u64, u64)>)>,
    watcher: Option<notify::RecommendedWatcher>,
}

impl Watch {
    fn new(path: &Path, hints: &mpsc::UnboundedSender<()>, enabled: bool) -> Self {
        let mut watch = Self {
            enabled,
            targets: Vec::new(),
            watcher: None,
        };
        watch.refresh(path, hints);
        watch
    }

    /// (Re)starts the watcher when what should be watched changed.
    fn refresh(&mut self, path: &Path, hints: &mpsc::UnboundedSender<()>) {
        if !self.enabled {
            return;
        }
        let targets = watch_targets(path);
        if targets == self.targets && self.watcher.is_some() {
            return;
        }
        // The same targets again means a retry after a failure, which is
        // said once (when the targets were new), not at every re-check.
        let moved = targets != self.targets;
        let restarted = moved && !self.targets.is_empty();
        self.targets = targets;
        // A watcher of the old directories is no use; a failure retries.
        self.watcher = None;
        match start_watcher(path, &self.targets, hints.clone()) {
            Ok(watcher) => {
                self.watcher = Some(watcher);
                if restarted {
                    tracing::info!(path = %path.display(), "the config directory changed; watching it again");
                }
            }
            Err(error) if moved => tracing::warn!(
                path = %path.display(),
                %error,
                "cannot watch the config file's directory; changes are picked up by the {}-second re-check or SIGHUP",
                POLL_EVERY.as_secs()
            ),
            Err(error) => {
                tracing::debug!(path = %path.display(), %error, "still cannot watch the config file's directory");
            }
        }
    }
}

/// The directories to watch for `path`, each with its identity (device
/// and inode) when it exists.
fn watch_targets(path: &Path) -> Vec<(PathBuf, Option<(u64, u64)>)> {
    let own = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    let mut dirs = vec![own.clone()];
    if let Ok(real) = std::fs::canonicalize(path)
        && let Some(real_dir) = real.parent()
        && std::fs::canonicalize(&own).ok().as_deref() != Some(real_dir)
        // A ConfigMap's target directory is replaced on every update; its
        // `..data` link is seen from the file's own directory.
        && !real_dir
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with(".."))
    {
        dirs.push(real_dir.to_owned());
    }
    dirs.into_iter()
        .map(|dir| {
            let identity = identity(&dir);
            (dir, identity)
        })
        .collect()
}

#[cfg(unix)]
fn identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(dir)
        .ok()
        .map(|meta| (meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn identity(dir: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(dir).ok().map(|_| (0, 0))
}

/// A watcher over `targets` that sends a hint for every event that may
/// concern `path`; an error when the platform refuses, in which case the
/// periodic re-check still works.
fn start_watcher(
    path: &Path,
    targets: &[(PathBuf, Option<(u64, u64)>)],
    hints: mpsc::UnboundedSender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    let mut names: Vec<std::ffi::OsString> = path
        .file_name()
        .map(ToOwned::to_owned)
        .into_iter()
        .collect();
    if let Ok(real) = std::fs::canonicalize(path)
        && let Some(name) = real.file_name()
    {
        names.push(name.to_owned());
    }
    let handler = move |event: notify::Result<notify::Event>| {
        let concerns_us = match &event {
            // An error may mean lost events: look at the file.
            Err(_) => true,
            Ok(event) => {
                event.paths.is_empty()
                    || event.paths.iter().any(|changed| {
                        changed.file_name().is_some_and(|changed| {
                            names.iter().any(|name| name == changed)
                                || changed.to_string_lossy().starts_with("..")
                        })
                    })
            }
        };
        if concerns_us {
            // The receiver outlives the watcher; a send after shutdown is moot.
            let _ = hints.send(());
        }
    };
    notify::recommended_watcher(handler).and_then(|mut watcher| {
        for (dir, _) in targets {
            watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
        }
        Ok(watcher)
    })
}

struct State {
    path: PathBuf,
    current: Config,
    live: Live,
    last_hash: Option<u64>,
    status: watch::Sender<ReloadStatus>,
    watch: Watch,
    /// Kept so a restarted watcher can send hints again.
    hint_sender: mpsc::UnboundedSender<()>,
}

impl State {
    async fn run(
        mut self,
        mut hints: mpsc::UnboundedReceiver<()>,
        mut hangups: Hangups,
        poll_every: Duration,
    ) {
        let mut poll = tokio::time::interval(poll_every);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        // Without a watcher the re-check and SIGHUP still work. The hints
        // never close: `self.hint_sender` lives as long as this loop.
        loop {
            let forced = tokio::select! {
                _ = hints.recv() => {
                    debounce(&mut hints).await;
                    false
                }
                () = next_hangup(&mut hangups) => {
                    tracing::info!(path = %self.path.display(), "SIGHUP: reloading the config");
                    true
                }
                _ = poll.tick() => {
                    self.watch.refresh(&self.path, &self.hint_sender);
                    false
                }
            };
            self.reload(forced).await;
        }
    }

    /// Reads the file and applies it if it changed (or if `forced`).
    async fn reload(&mut self, forced: bool) {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) => {
                // Reported once per disappearance, not at every re-check.
                if self.last_hash.take().is_some() || forced {
                    self.reject(format!(
                        "cannot read {}: {error}; keeping the last good settings",
                        self.path.display()
                    ));
                }
                return;
            }
        };
        let new_hash = config::text_hash(&text);
        if self.last_hash == Some(new_hash) && !forced {
            return;
        }
        let mut parsed = config::parse(&text, Source::File(self.path.clone()));
        if parsed.is_err() {
            // A save may be caught half-way (truncated, not yet written):
            // look once more before calling the edit bad.
            tokio::time::sleep(DEBOUNCE).await;
            if let Ok(again) = std::fs::read_to_string(&self.path)
                && again != text
            {
                parsed = config::parse(&again, Source::File(self.path.clone()));
                self.last_hash = Some(config::text_hash(&again));
            } else {
                self.last_hash = Some(new_hash);
            }
        } else {
            self.last_hash = Some(new_hash);
        }
        match parsed {
            Err(error) => self.reject(format!("{error}; keeping the last good settings")),
            Ok(new) => self.apply(new),
        }
    }

    fn reject(&self, error: String) {
        tracing::warn!("config reload rejected: {error}");
        if let Some(metrics) = &self.live.metrics {
            metrics.record_reload(ReloadResult::Rejected);
        }
        self.status.send_modify(|status| {
            status.at = Some(crate::api::rfc3339(SystemTime::now()));
            status.ok = false;
            status.error = Some(error);
            status.applied.clear();
            status.reloads += 1;
        });
    }

    fn apply(&mut self, new: Config) {
        // Everything that can fail is checked before anything applies, so a
        // reload applies a whole file or nothing of it.
        let agents_changed = new.agents != self.current.agents;
        let agents = if !agents_changed {
            None
        } else if !new.agents.contains_key(&self.current.orchestrator) {
            self.reject(format!(
                "[agents.{0}] is gone, but it runs the orchestrations until deputy restarts; keep it (or restart to change [agent] name); nothing was applied",
                self.current.orchestrator
            ));
            return;
        } else {
            match wiring::agents(&new, &self.live.providers) {
                Ok(agents) => Some(agents),
                Err(error) => {
                    self.reject(format!("{error:#}; nothing was applied"));
                    return;
                }
            }
        };
        if let Some(agents) = agents
            && let Err(error) = self.live.runtime.replace_agents(agents)
        {
            self.reject(format!("{error}; nothing was applied"));
            return;
        }

        let mut applied = Vec::new();
        if new.subagents != self.current.subagents {
            let changes = differences(&self.current.raw_subagents(), &new.raw_subagents());
            self.live
                .runtime
                .registry()
                .settings_handle()
                .publish(new.subagents.clone());
            applied.push(format!("[agent.subagents] {changes}"));
            self.current.subagents = new.subagents.clone();
        }
        if agents_changed {
            for (name, profile) in &new.agents {
                match self.current.agents.get(name) {
                    Some(old) if old == profile => {}
                    Some(old) => applied.push(format!(
                        "[agents.{name}] {} (new tasks use it)",
                        differences(old, profile)
                    )),
                    None => applied.push(format!("[agents.{name}] added")),
                }
            }
            for name in self
                .current
                .agents
                .keys()
                .filter(|name| !new.agents.contains_key(*name))
            {
                applied.push(format!("[agents.{name}] removed (running tasks finish)"));
            }
            self.current.agents = new.agents.clone();
        }
        let restart_required =
            changed_sections(&self.current.restart_sections, &new.restart_sections);
        for section in &restart_required {
            tracing::warn!(
                "restart required: [{section}] changed in {}; the running values stay until deputy restarts",
                self.path.display()
            );
        }
        if applied.is_empty() {
            tracing::info!(path = %self.path.display(), "config re-read: nothing to apply");
        }
        for line in &applied {
            tracing::info!(path = %self.path.display(), "config reloaded: {line}");
        }
        if let Some(metrics) = &self.live.metrics {
            metrics.record_reload(ReloadResult::Applied);
        }
        self.status.send_modify(|status| {
            status.at = Some(crate::api::rfc3339(SystemTime::now()));
            status.ok = true;
            status.error = None;
            status.applied = applied;
            status.restart_required = restart_required;
            status.reloads += 1;
        });
    }
}

/// `max_concurrent 2 -> 4, queue_wait_ms 30000 -> 0`: every field that
/// differs, under its serialized name, unset or null read as `unset` and
/// long values shortened to 40 characters. Derived from `Serialize`, so a
/// field added to a section shows up here without a second list.
fn differences<T: Serialize>(old: &T, new: &T) -> String {
    fn shown(value: Option<&serde_json::Value>) -> String {
        let text = match value {
            None | Some(serde_json::Value::Null) => return "unset".to_owned(),
            Some(value) => value.to_string(),
        };
        if text.chars().count() > 40 {
            format!("{}…", text.chars().take(40).collect::<String>())
        } else {
            text
        }
    }
    let (Ok(serde_json::Value::Object(old)), Ok(serde_json::Value::Object(new))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return "changed".to_owned();
    };
    // Compared whole and shortened only for display, so a long value that
    // changes past its 40th character still shows up.
    fn set(value: Option<&serde_json::Value>) -> Option<&serde_json::Value> {
        value.filter(|value| !value.is_null())
    }
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let changes: Vec<String> = keys
        .into_iter()
        .filter(|key| set(old.get(*key)) != set(new.get(*key)))
        .map(|key| format!("{key} {} -> {}", shown(old.get(key)), shown(new.get(key))))
        .collect();
    changes.join(", ")
}

/// Top-level sections (and `agent.*` keys) that differ.
fn changed_sections(old: &toml::Table, new: &toml::Table) -> Vec<String> {
    let mut changed = Vec::new();
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for key in keys {
        if old.get(key) != new.get(key) {
            changed.push(key.clone());
        }
    }
    changed
}

/// Waits until no hint has arrived for [`DEBOUNCE`], at most
/// [`MAX_DEBOUNCE`] in all.
///
/// Cancel safety: hints are only drained, so dropping it loses nothing
/// that matters (the file is read afterwards anyway).
async fn debounce(hints: &mut mpsc::UnboundedReceiver<()>) {
    let deadline = tokio::time::Instant::now() + MAX_DEBOUNCE;
    loop {
        let quiet = tokio::time::sleep(DEBOUNCE);
        tokio::select! {
            hint = hints.recv() => {
                if hint.is_none() || tokio::time::Instant::now() >= deadline {
                    return;
                }
            }
            () = quiet => return,
        }
    }
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = Option<()>;

#[cfg(unix)]
fn hangup_signals() -> Hangups {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signals) => Some(signals),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; reloads follow file changes only");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signals() -> Hangups {
    None
}

/// The next SIGHUP; never, without a signal stream.
async fn next_hangup(hangups: &mut Hangups) {
    #[cfg(unix)]
    if let Some(signals) = hangups
        && signals.recv().await.is_some()
    {
        return;
    }
    let _ = hangups;
    std::future::pending::<()>().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use deputy_registry::{TaskSpec, TaskStatus};

    #[test]
    fn a_long_value_that_changes_past_its_shown_part_is_reported() {
        let prefix = "x".repeat(50);
        let old = serde_json::json!({ "system_prompt": format!("{prefix} old"), "same": 1 });
        let new = serde_json::json!({ "system_prompt": format!("{prefix} new"), "same": 1 });
        let changes = differences(&old, &new);
        assert!(changes.starts_with("system_prompt \"xxx"), "{changes}");
        assert!(changes.contains("…"), "shortened for display: {changes}");
        assert!(!changes.contains("same"), "{changes}");
        assert_eq!(differences(&old, &old), "");
    }

    fn config_text(max_concurrent: usize, extra: &str) -> String {
        format!(
            r#"
[agent.subagents]
max_concurrent = {max_concurrent}
queue_wait_ms = 600000

[providers.offline]
kind = "scripted"

[agents.orchestrator]
provider = "offline"
subagents = ["researcher"]

[agents.researcher]
provider = "offline"
description = "first"
{extra}"#
        )
    }

    /// A config file in a fresh directory, its stack and its reloader.
    struct Fixture {
        dir: tempfile::TempDir,
        path: PathBuf,
        stack: wiring::Stack,
        reloader: Reloader,
    }

    /// Longer than any test runs: a test on this fixture passes on file
    /// events alone, never on the periodic re-check.
    const NO_RE_CHECK: Duration = Duration::from_secs(3600);

    /// A fixture that sees edits through file events only.
    fn fixture(text: &str) -> Fixture {
        fixture_with(text, true, NO_RE_CHECK)
    }

    fn fixture_with(text: &str, watch_files: bool, poll_every: Duration) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deputy.toml");
        std::fs::write(&path, text).unwrap();
        let config = config::load(&path).unwrap();
        let stack = wiring::build(&config).unwrap();
        let reloader =
            Reloader::start_with(config, Live::of(&stack), watch_files, poll_every).unwrap();
        Fixture {
            dir,
            path,
            stack,
            reloader,
        }
    }

    impl Fixture {
        fn cap(&self) -> usize {
            self.stack.runtime.registry().settings().max_concurrent()
        }

        async fn wait_for(&self, what: &str, done: impl Fn(&Self) -> bool) {
            for _ in 0..1000 {
                if done(self) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!(
                "{what} did not happen within 10 s; status {:?}",
                self.reloader.status()
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn raising_the_cap_in_the_file_starts_queued_tasks() {
        let fixture = fixture(&config_text(1, ""));
        let registry = fixture.stack.runtime.registry().clone();
        let (release, released) = tokio::sync::watch::channel(false);
        let mut ids = Vec::new();
        for n in 0..3 {
            let mut released = released.clone();
            let spec = TaskSpec::new("researcher", format!("task {n}")).background(true);
            let spawned = registry
                .spawn(spec, move |_| async move {
                    let _ = released.wait_for(|go| *go).await;
                    Ok(String::new())
                })
                .unwrap();
            ids.push(spawned.id);
        }
        assert_eq!((registry.stats().running, registry.stats().queued), (1, 2));

        std::fs::write(&fixture.path, config_text(3, "")).unwrap();
        fixture
            .wait_for("the queued tasks starting", |_| {
                registry.stats().running == 3
            })
            .await;
        // The status is published just after the settings.
        fixture
            .wait_for("the reload status", |f| f.reloader.status().reloads >= 1)
            .await;
        let status = fixture.reloader.status();
        assert!(status.ok, "{status:?}");
        assert!(
            status
                .applied
                .iter()
                .any(|line| line.contains("max_concurrent 1 -> 3")),
            "{status:?}"
        );
        release.send(true).unwrap();
        for id in ids {
            let done = registry
                .wait(id, Some(Duration::from_secs(10)))
                .await
                .unwrap();
            assert_eq!(done.task.status, TaskStatus::Completed);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bad_edit_is_kept_out_and_reported_until_a_good_one() {
        let fixture = fixture(&config_text(2, ""));
        std::fs::write(
            &fixture.path,
            "[agent.subagents]\nmax_concurrent = \"many\"\n",
        )
        .unwrap();
        fixture
            .wait_for("the bad edit being reported", |f| !f.reloader.status().ok)
            .await;
        let error = fixture.reloader.status().error.unwrap();
        assert!(error.contains("line 2, column 18"), "{error}");
        assert!(error.contains("keeping the last good settings"), "{error}");
        assert_eq!(fixture.cap(), 2);

        // Half-written and empty files are kept out the same way.
        std::fs::write(&fixture.path, "[agent.subagents\n").unwrap();
        fixture
            .wait_for("the half-written file being reported", |f| {
                f.reloader
                    .status()
                    .error
                    .is_some_and(|error| error.contains("line 1"))
            })
            .await;
        std::fs::write(&fixture.path, "").unwrap();
        fixture
            .wait_for("the empty file being reported", |f| {
                f.reloader
                    .status()
                    .error
                    .is_some_and(|error| error.contains("the file is empty"))
            })
            .await;
        assert_eq!(fixture.cap(), 2);

        std::fs::write(&fixture.path, config_text(5, "")).unwrap();
        fixture
            .wait_for("the good edit applying", |f| f.cap() == 5)
            .await;
        assert!(fixture.reloader.status().ok);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_save_by_rename_is_seen() {
        let fixture = fixture(&config_text(2, ""));
        let temporary = fixture.dir.path().join(".deputy.toml.swp");
        std::fs::write(&temporary, config_text(4, "")).unwrap();
        std::fs::rename(&temporary, &fixture.path).unwrap();
        fixture
            .wait_for("the renamed file applying", |f| f.cap() == 4)
            .await;
        // And the watch survives it: a second rename-save applies too.
        std::fs::write(&temporary, config_text(6, "")).unwrap();
        std::fs::rename(&temporary, &fixture.path).unwrap();
        fixture
            .wait_for("the second rename applying", |f| f.cap() == 6)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delete_and_recreate_keeps_the_settings_then_applies() {
        let fixture = fixture(&config_text(2, ""));
        std::fs::remove_file(&fixture.path).unwrap();
        fixture
            .wait_for("the missing file being reported", |f| {
                f.reloader
                    .status()
                    .error
                    .is_some_and(|error| error.contains("cannot read"))
            })
            .await;
        assert_eq!(fixture.cap(), 2);
        std::fs::write(&fixture.path, config_text(7, "")).unwrap();
        fixture
            .wait_for("the recreated file applying", |f| f.cap() == 7)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn truncate_then_write_applies_the_final_content() {
        use std::io::Write as _;
        let fixture = fixture(&config_text(2, ""));
        let mut file = std::fs::File::create(&fixture.path).unwrap();
        file.write_all(config_text(8, "").as_bytes()).unwrap();
        drop(file);
        fixture
            .wait_for("the rewritten file applying", |f| f.cap() == 8)
            .await;
    }

    #[cfg(unix)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kubernetes_configmap_symlink_swap_is_seen() {
        use std::os::unix::fs::symlink;
        // The layout a ConfigMap volume has: deputy.toml -> ..data/deputy.toml,
        // ..data -> ..<timestamp>; an update swaps ..data atomically.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("..2026_01")).unwrap();
        std::fs::write(root.join("..2026_01/deputy.toml"), config_text(2, "")).unwrap();
        symlink("..2026_01", root.join("..data")).unwrap();
        symlink("..data/deputy.toml", root.join("deputy.toml")).unwrap();
        let path = root.join("deputy.toml");
        let config = config::load(&path).unwrap();
        let stack = wiring::build(&config).unwrap();
        let reloader = Reloader::start_with(config, Live::of(&stack), true, NO_RE_CHECK).unwrap();

        std::fs::create_dir(root.join("..2026_02")).unwrap();
        std::fs::write(root.join("..2026_02/deputy.toml"), config_text(9, "")).unwrap();
        symlink("..2026_02", root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        std::fs::remove_dir_all(root.join("..2026_01")).unwrap();

        for _ in 0..1000 {
            if stack.runtime.registry().settings().max_concurrent() == 9 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the swapped config did not apply: {:?}", reloader.status());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn agent_profiles_apply_to_new_tasks_and_other_sections_need_a_restart() {
        let fixture = fixture(&config_text(2, ""));
        let text = config_text(2, "").replace(
            "description = \"first\"",
            "description = \"second\"\nmax_concurrent = 1",
        ) + "\n[server]\nlisten = \"127.0.0.1:9999\"\n";
        std::fs::write(&fixture.path, text).unwrap();
        fixture
            .wait_for("the new profile applying", |f| {
                f.stack.runtime.agent("researcher").unwrap().description() == "second"
            })
            .await;
        fixture
            .wait_for("the reload status", |f| f.reloader.status().reloads >= 1)
            .await;
        let status = fixture.reloader.status();
        assert_eq!(
            fixture
                .stack
                .runtime
                .agent("researcher")
                .unwrap()
                .max_concurrent(),
            Some(1)
        );
        assert!(
            status.applied.contains(
                &"[agents.researcher] description \"first\" -> \"second\", max_concurrent unset -> 1 (new tasks use it)".to_owned()
            ),
            "{status:?}"
        );
        assert_eq!(status.restart_required, ["server"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_periodic_re_check_alone_picks_up_an_edit() {
        // As on a file system that reports no events (NFS, some container
        // mounts): no watcher, only the re-check.
        let fixture = fixture_with(&config_text(2, ""), false, Duration::from_millis(100));
        std::fs::write(&fixture.path, config_text(5, "")).unwrap();
        fixture
            .wait_for("the re-check applying the edit", |f| f.cap() == 5)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_edit_that_cannot_apply_in_full_applies_nothing() {
        let fixture = fixture(&config_text(2, ""));
        // The cap is raised, but the researcher moves to a provider that was
        // not running at start: nothing of the edit may apply.
        let text = config_text(6, "").replace(
            "[agents.researcher]\nprovider = \"offline\"",
            "[agents.researcher]\nprovider = \"later\"",
        ) + "\n[providers.later]\nkind = \"scripted\"\n";
        std::fs::write(&fixture.path, text).unwrap();
        fixture
            .wait_for("the edit being rejected", |f| !f.reloader.status().ok)
            .await;
        let error = fixture.reloader.status().error.unwrap();
        assert!(
            error.contains("provider later, which was not running at start"),
            "{error}"
        );
        assert!(error.contains("nothing was applied"), "{error}");
        assert_eq!(fixture.cap(), 2);

        // Removing the running orchestrator is refused the same way.
        let text = config_text(6, "").replace("[agents.orchestrator]", "[agents.lead]")
            + "\n[agent]\nname = \"lead\"\n";
        std::fs::write(&fixture.path, text).unwrap();
        fixture
            .wait_for("the orchestrator removal being rejected", |f| {
                f.reloader
                    .status()
                    .error
                    .is_some_and(|error| error.contains("[agents.orchestrator] is gone"))
            })
            .await;
        assert_eq!(fixture.cap(), 2);
        assert!(fixture.stack.runtime.agent("orchestrator").is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn debounce_waits_for_quiet_but_not_forever() {
        let (hints, mut receiver) = mpsc::unbounded_channel();
        hints.send(()).unwrap();
        let began = tokio::time::Instant::now();
        debounce(&mut receiver).await;
        assert_eq!(began.elapsed(), DEBOUNCE);

        // A steady stream of events holds a reload back at most MAX_DEBOUNCE.
        let sender = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if hints.send(()).is_err() {
                    return;
                }
            }
        });
        let began = tokio::time::Instant::now();
        debounce(&mut receiver).await;
        let waited = began.elapsed();
        assert!(
            waited >= MAX_DEBOUNCE && waited < MAX_DEBOUNCE + DEBOUNCE,
            "{waited:?}"
        );
        sender.abort();
    }
}
