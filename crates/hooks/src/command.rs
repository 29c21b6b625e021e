//! Command hooks: a program in any language, with the event as JSON on its
//! standard input.
//!
//! The contract follows Claude Code's command hooks:
//!
//! * The event ([`EventPayload`]) is written to stdin as one JSON document.
//! * Exit 0: stdout may hold a JSON reply (see [`reply`](crate::reply));
//!   empty stdout allows. On a start event `{"decision":"deny","reason":...}`
//!   denies and `{"additionalContext":...}` adds context; a stop event cannot
//!   be undone, so its reply is only checked to be JSON.
//! * Exit 2 on a start event denies, with stderr as the reason.
//! * Any other exit, output that is not JSON, a crash or a program that
//!   cannot start is an error: logged and counted, and the task goes on.
//! * Past its time limit (default 60 s) the hook's whole process group is
//!   killed, children included, and the task goes on. When the hook exits,
//!   whatever it left running in its process group is killed too, so hooks
//!   never leave orphans behind; a hook that means to leave a daemon behind
//!   starts it in a new session (`setsid`).
//! * The program runs with an empty environment plus `PATH` and the
//!   variables its config lists, so the host's keys never reach it.
//! * It runs directly from its argv; only with `shell = true` is the command
//!   a string passed to `sh -c`.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use deputy_registry::{
    DEFAULT_HOOK_TIMEOUT, HookError, StartDecision, SubagentStartEvent, SubagentStartHook,
    SubagentStopEvent, SubagentStopHook,
};
use regex::Regex;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

use crate::error::HookConfigError;
use crate::payload::{EventPayload, new_session_id};
use crate::price::PriceTable;
use crate::reply::{MAX_REPLY_CHARS, cut, parse_reply};

/// Most output kept from each of stdout and stderr.
const MAX_OUTPUT_BYTES: usize = 1 << 20;

/// How long the pipes may stay open after the hook's process group is gone
/// (only a process that left the group can hold them that long).
const PIPE_GRACE: Duration = Duration::from_millis(200);

/// The registry abandons a hook a little after the hook's own limit, so the
/// hook always gets to kill its process group first.
const REGISTRY_MARGIN: Duration = Duration::from_secs(5);

/// How the program is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandLine {
    /// Run directly: the program, then its arguments.
    Argv(Vec<String>),
    /// Run through `sh -c`.
    Shell(String),
}

/// An external program run for start or stop events (see the module docs).
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use deputy_hooks::CommandHook;
/// use deputy_registry::HookStack;
///
/// let gate = CommandHook::new(["./hooks/gate.py"])
///     .unwrap()
///     .matcher("^research")
///     .unwrap()
///     .timeout(Duration::from_secs(10))
///     .env("TEAM", "search");
/// let hooks = HookStack::new().with_start(Arc::new(gate));
/// # drop(hooks);
/// ```
#[derive(Clone)]
pub struct CommandHook {
    name: String,
    command: CommandLine,
    matcher: Option<Regex>,
    timeout: Duration,
    env: Vec<(String, String)>,
    cwd: Option<PathBuf>,
    session_id: String,
    prices: PriceTable,
}

impl std::fmt::Debug for CommandHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Variable values may be secrets passed through for the hook: names only.
        let env: Vec<&str> = self.env.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("CommandHook")
            .field("name", &self.name)
            .field("command", &self.command)
            .field("matcher", &self.matcher.as_ref().map(Regex::as_str))
            .field("timeout", &self.timeout)
            .field("env", &env)
            .field("cwd", &self.cwd)
            .finish_non_exhaustive()
    }
}

impl CommandHook {
    /// A hook that runs `argv` directly (no shell).
    ///
    /// # Errors
    /// `argv` is empty or its program is an empty string.
    pub fn new<I, S>(argv: I) -> Result<Self, HookConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let argv: Vec<String> = argv.into_iter().map(Into::into).collect();
        match argv.first() {
            Some(program) if !program.trim().is_empty() => {
                let name = program.clone();
                Ok(Self::with_command(name, CommandLine::Argv(argv)))
            }
            _ => Err(HookConfigError::one(
                "command: the argv list is empty; give the program and its arguments, like \
                 [\"/usr/local/bin/hook\", \"--flag\"]"
                    .to_owned(),
            )),
        }
    }

    /// A hook that runs `script` through `sh -c`.
    ///
    /// # Errors
    /// `script` is empty.
    pub fn shell(script: impl Into<String>) -> Result<Self, HookConfigError> {
        let script = script.into();
        if script.trim().is_empty() {
            return Err(HookConfigError::one(
                "command: the shell command is empty".to_owned(),
            ));
        }
        Ok(Self::with_command(
            cut(&script, 40),
            CommandLine::Shell(script),
        ))
    }

    fn with_command(name: String, command: CommandLine) -> Self {
        let mut env = Vec::new();
        if let Ok(path) = std::env::var("PATH") {
            env.push(("PATH".to_owned(), path));
        }
        Self {
            name: format!("command:{name}"),
            command,
            matcher: None,
            timeout: DEFAULT_HOOK_TIMEOUT,
            env,
            cwd: None,
            session_id: new_session_id(),
            prices: PriceTable::builtin(),
        }
    }

    /// Runs only for agents whose name matches `pattern` (a regex, not
    /// anchored unless it says so).
    ///
    /// # Errors
    /// `pattern` is not a valid regex.
    pub fn matcher(mut self, pattern: &str) -> Result<Self, HookConfigError> {
        let regex = Regex::new(pattern).map_err(|error| {
            HookConfigError::one(format!("matcher: invalid regex {pattern:?}: {error}"))
        })?;
        self.matcher = Some(regex);
        Ok(self)
    }

    /// The name used in logs and failure counts (default `command:<program>`).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// How long the program may run before its process group is killed.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets a variable in the program's environment.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into();
        self.env.retain(|(existing, _)| *existing != name);
        self.env.push((name, value.into()));
        self
    }

    /// Passes the host's value of `name` through, if it has one.
    pub fn pass_env(self, name: &str) -> Self {
        match std::env::var(name) {
            Ok(value) => self.env(name, value),
            Err(_) => self,
        }
    }

    /// The program's working directory (default: the host's).
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// The `session_id` put into every event.
    pub fn session_id(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = session_id.into();
        self
    }

    /// The prices that fill a stop event's `cost_usd`.
    pub fn prices(mut self, prices: PriceTable) -> Self {
        self.prices = prices;
        self
    }

    fn matches(&self, agent: &str) -> bool {
        self.matcher
            .as_ref()
            .is_none_or(|matcher| matcher.is_match(agent))
    }

    fn command(&self) -> Command {
        let mut command = match &self.command {
            CommandLine::Argv(argv) => {
                let mut command = Command::new(&argv[0]);
                command.args(&argv[1..]);
                command
            }
            CommandLine::Shell(script) => {
                let mut command = Command::new("sh");
                command.arg("-c").arg(script);
                command
            }
        };
        command
            .env_clear()
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(cwd) = &self.cwd {
            command.current_dir(cwd);
        }
        #[cfg(unix)]
        command.process_group(0);
        command
    }

    /// Runs the program with `input` on stdin; kills its group when done.
    async fn run(&self, input: Vec<u8>) -> Result<Finished, HookError> {
        let mut child = self.command().spawn().map_err(|error| {
            HookError::msg(format!("cannot start {}: {error}", self.describe()))
        })?;
        let mut group = ProcessGroup::of(&child);
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let ended = Notify::new();
        let mut out = Vec::new();
        let mut err = Vec::new();

        let running = async {
            // The input is fed while the exit is awaited, not before it: a
            // hook that exits without reading a large event (while a child
            // keeps the pipe open) must not be held up by the write.
            let feed = async {
                if let Some(mut stdin) = stdin {
                    // A hook that ignores its input closes the pipe early:
                    // not an error.
                    let _ = stdin.write_all(&input).await;
                    drop(stdin);
                }
                std::future::pending::<std::convert::Infallible>().await
            };
            let waited = tokio::time::timeout(self.timeout, async {
                tokio::select! {
                    status = child.wait() => status,
                    never = feed => match never {},
                }
            })
            .await;
            // Whatever the hook left behind in its group goes with it, which
            // also closes the pipes the readers wait on.
            group.kill();
            let _ = child.wait().await;
            ended.notify_one();
            waited
        };
        let reading = async {
            let drained = async {
                tokio::join!(drain(stdout, &mut out), drain(stderr, &mut err));
            };
            tokio::select! {
                () = drained => {}
                () = async { ended.notified().await; tokio::time::sleep(PIPE_GRACE).await } => {}
            }
        };
        let (waited, ()) = tokio::join!(running, reading);
        match waited {
            Err(_) => Err(HookError::msg(format!(
                "{} ran past its {} ms time limit and was killed",
                self.describe(),
                self.timeout.as_millis()
            ))),
            Ok(Err(error)) => Err(HookError::msg(format!(
                "cannot wait for {}: {error}",
                self.describe()
            ))),
            Ok(Ok(status)) => Ok(Finished {
                status,
                stdout: String::from_utf8_lossy(&out).into_owned(),
                stderr: String::from_utf8_lossy(&err).into_owned(),
            }),
        }
    }

    fn describe(&self) -> String {
        format!("hook {}", self.name)
    }

    /// An exit that is neither 0 nor a deny, as an error.
    fn failed(&self, finished: &Finished) -> HookError {
        let how = match finished.status.code() {
            Some(code) => format!("exited with code {code}"),
            None => signal_description(finished.status),
        };
        let stderr = finished.stderr.trim();
        if stderr.is_empty() {
            HookError::msg(format!("{} {how}", self.describe()))
        } else {
            HookError::msg(format!("{} {how}: {}", self.describe(), cut(stderr, 500)))
        }
    }
}

/// What a hook run that ended on its own left.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Reads a pipe into `buf`, keeping at most [`MAX_OUTPUT_BYTES`].
///
/// Cancel safety: what was read stays in `buf`.
async fn drain(pipe: Option<impl AsyncRead + Unpin>, buf: &mut Vec<u8>) {
    let Some(mut pipe) = pipe else {
        return;
    };
    let mut chunk = [0_u8; 8192];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(read) => {
                let room = MAX_OUTPUT_BYTES.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..read.min(room)]);
            }
        }
    }
}

#[cfg(unix)]
fn signal_description(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match status.signal() {
        Some(signal) => format!("was killed by signal {signal}"),
        None => format!("ended with {status}"),
    }
}

#[cfg(not(unix))]
fn signal_description(status: ExitStatus) -> String {
    format!("ended with {status}")
}

/// The hook's process group; killed on [`kill`](Self::kill) and on drop, so
/// a hook abandoned mid-run (the registry gave up on it, or the host is
/// shutting down) takes its children with it.
struct ProcessGroup {
    #[cfg(unix)]
    id: Option<nix::unistd::Pid>,
}

impl ProcessGroup {
    fn of(child: &Child) -> Self {
        #[cfg(unix)]
        {
            let id = child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .map(nix::unistd::Pid::from_raw);
            Self { id }
        }
        #[cfg(not(unix))]
        {
            let _ = child;
            Self {}
        }
    }

    /// Kills the group once; later calls (and the drop) do nothing, so a
    /// process group id reused after the hook is gone is never hit.
    fn kill(&mut self) {
        #[cfg(unix)]
        if let Some(id) = self.id.take() {
            // ESRCH (already gone) is the common, fine case.
            let _ = nix::sys::signal::killpg(id, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

#[async_trait]
impl SubagentStartHook for CommandHook {
    fn name(&self) -> &str {
        &self.name
    }

    fn timeout(&self) -> Duration {
        self.timeout.saturating_add(REGISTRY_MARGIN)
    }

    async fn on_subagent_start(
        &self,
        event: &SubagentStartEvent,
    ) -> Result<StartDecision, HookError> {
        if !self.matches(&event.task.agent) {
            return Ok(StartDecision::Allow);
        }
        let input = EventPayload::start(event, &self.session_id).to_json();
        let finished = self.run(input).await?;
        match finished.status.code() {
            Some(0) => parse_reply(&finished.stdout, &self.name)
                .map_err(|error| HookError::msg(format!("{}: {error}", self.describe()))),
            Some(2) => {
                let reason = finished.stderr.trim();
                let reason = if reason.is_empty() {
                    format!("denied by {} (exit 2)", self.describe())
                } else {
                    cut(reason, MAX_REPLY_CHARS)
                };
                Ok(StartDecision::Deny { reason })
            }
            _ => Err(self.failed(&finished)),
        }
    }
}

#[async_trait]
impl SubagentStopHook for CommandHook {
    fn name(&self) -> &str {
        &self.name
    }

    fn timeout(&self) -> Duration {
        self.timeout.saturating_add(REGISTRY_MARGIN)
    }

    async fn on_subagent_stop(&self, event: &SubagentStopEvent) -> Result<(), HookError> {
        if !self.matches(&event.task.agent) {
            return Ok(());
        }
        let input = EventPayload::stop(event, &self.session_id, &self.prices).to_json();
        let finished = self.run(input).await?;
        match finished.status.code() {
            Some(0) => parse_reply(&finished.stdout, &self.name)
                .map(drop)
                .map_err(|error| HookError::msg(format!("{}: {error}", self.describe()))),
            Some(2) => Err(HookError::msg(format!(
                "{} exited with code 2, which cannot block a SubagentStop: {}",
                self.describe(),
                cut(finished.stderr.trim(), 500)
            ))),
            _ => Err(self.failed(&finished)),
        }
    }
}
