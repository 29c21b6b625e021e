//! `deputy chat`: an interactive session with the orchestrator.
//!
//! Each line is one run. Runs detach their unfinished background tasks, so
//! sub-agents keep working between prompts: a notice is printed when one
//! finishes, and its result goes into the next prompt, cut to
//! `agent.max_result_chars`, even when the user read it first with
//! `/wait ID` (which shows it whole). The last exchanges go along with
//! each prompt, so the orchestrator can follow the conversation. Lines are
//! edited with rustyline, with history in `~/.deputy_history` when there
//! is a home directory; piped input works too, a line at a time.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use deputy_agent::{OnFinish, RunError};
use deputy_registry::{RawSubagentSettings, RegistryEvent, TaskFilter, TaskId, TaskSnapshot};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::exit::CliError;
use crate::reload::{Live, Reloader};
use crate::run_cmd::{cancel_on_interrupt, interrupt_signal, one_line, show_events};
use crate::wiring::{self, Stack};

/// Exchanges sent along with each prompt.
const HISTORY_TURNS: usize = 6;
/// How long running tasks get to finish after `/quit`.
const QUIT_DRAIN: Duration = Duration::from_secs(2);

const HELP: &str = "commands: /tasks, /wait ID, /stop ID, /settings, /help, /quit (or Ctrl-D); anything else is a prompt";

/// Runs the session until `/quit` or the end of input.
///
/// # Errors
/// The stack cannot be built (exit code 2).
pub(crate) async fn chat(mut config: Config) -> Result<(), CliError> {
    // Sub-agents outlive the prompt that started them.
    config.on_finish = OnFinish::Detach;
    let orchestrator = config.orchestrator.clone();
    let max_result_chars = config.max_result_chars;
    let stack = wiring::build(&config).map_err(CliError::usage)?;
    let reloader = Reloader::start(config, Live::of(&stack));
    let lines = spawn_reader();
    let current_run = Arc::new(Mutex::new(None));
    let notices = tokio::spawn(print_finished(
        stack.runtime.registry().subscribe(),
        current_run.clone(),
    ));
    let mut session = Session {
        stack,
        reloader,
        orchestrator,
        lines,
        current_run,
        history: VecDeque::new(),
        runs: Vec::new(),
        read_by_user: Vec::new(),
        max_result_chars,
    };
    say(&format!(
        "deputy chat with {}; {HELP}",
        session.orchestrator
    ));
    session.run().await;
    notices.abort();
    session.lines.close().await;
    let report = session.stack.shutdown(QUIT_DRAIN).await;
    if report.cancelled > 0 {
        say(&format!(
            "stopped {} background tasks still running",
            report.cancelled
        ));
    }
    Ok(())
}

struct Session {
    stack: Stack,
    reloader: Option<Reloader>,
    orchestrator: String,
    lines: Lines,
    /// The run showing its own progress now; notices about its own tasks
    /// are not printed twice.
    current_run: Arc<Mutex<Option<TaskId>>>,
    /// (prompt, answer) of the last exchanges.
    history: VecDeque<(String, String)>,
    /// Earlier runs whose detached tasks may still finish.
    runs: Vec<TaskId>,
    /// Results of those tasks that `/wait` handed to the user first; the
    /// orchestrator that started them still hears of them in the next
    /// prompt.
    read_by_user: Vec<TaskSnapshot>,
    /// Characters of one background result put in a prompt (the
    /// `agent.max_result_chars` setting); the user reads the rest with
    /// `/wait`.
    max_result_chars: usize,
}

impl Session {
    async fn run(&mut self) {
        while let Some(line) = self.lines.next("> ").await {
            let line = line.trim().to_owned();
            let (command, argument) = line
                .split_once(char::is_whitespace)
                .map_or((line.as_str(), ""), |(command, rest)| {
                    (command, rest.trim())
                });
            match command {
                "" => {}
                "/quit" | "/exit" => return,
                "/help" => say(HELP),
                "/tasks" => self.tasks(),
                "/settings" => self.settings(),
                "/wait" => self.wait(argument).await,
                "/stop" => self.stop(argument),
                unknown if unknown.starts_with('/') => {
                    say(&format!("unknown command {unknown}; {HELP}"));
                }
                _ => self.prompt(&line).await,
            }
        }
    }

    async fn prompt(&mut self, line: &str) {
        let mut prompt = String::new();
        if !self.history.is_empty() {
            prompt.push_str("Conversation so far:\n");
            for (asked, answered) in &self.history {
                let _ = writeln!(prompt, "User: {asked}\nYou: {answered}");
            }
            prompt.push('\n');
        }
        let results = self.finished_background();
        if !results.is_empty() {
            prompt.push_str("Background tasks from earlier turns finished since:\n");
            for task in &results {
                prompt.push_str(&background_result(task, self.max_result_chars));
            }
            prompt.push('\n');
        }
        if prompt.is_empty() {
            prompt.push_str(line);
        } else {
            let _ = write!(prompt, "User: {line}");
        }
        let mut run = match self.stack.runtime.start(&self.orchestrator, prompt) {
            Ok(run) => run,
            Err(error) => {
                say(&format!("error: {error}"));
                return;
            }
        };
        self.runs.push(run.run_id());
        *self.current_run.lock() = Some(run.run_id());
        // Ctrl-C cancels this prompt's run, not the session.
        let interrupt = cancel_on_interrupt(self.stack.runtime.registry().clone(), run.run_id());
        show_events(&mut run, true).await;
        interrupt.abort();
        *self.current_run.lock() = None;
        match run.finish().await {
            Ok(output) => {
                let detached = output
                    .report
                    .tasks
                    .iter()
                    .filter(|task| !task.status.is_terminal())
                    .count();
                if detached > 0 {
                    say(&format!(
                        "({detached} background tasks still running; /tasks shows them)"
                    ));
                }
                self.history.push_back((line.to_owned(), output.answer));
                while self.history.len() > HISTORY_TURNS {
                    self.history.pop_front();
                }
            }
            Err(RunError::Failed { failure, .. }) => {
                say(&format!("error: the run failed: {failure}"))
            }
            Err(error) => say(&format!("error: {error}")),
        }
    }

    /// Results of earlier runs' detached tasks, each handed over once
    /// (those the user read with `/wait` first among them).
    /// Runs whose tasks have all been handed over are forgotten, so a long
    /// session does not look through every run it ever made. A task that
    /// ends after the take above is not yet handed over, so its run stays.
    fn finished_background(&mut self) -> Vec<TaskSnapshot> {
        let registry = self.stack.runtime.registry().clone();
        let mut finished = std::mem::take(&mut self.read_by_user);
        finished.extend(
            self.runs
                .iter()
                .flat_map(|run| registry.take_finished(Some(*run))),
        );
        self.runs.retain(|run| {
            registry
                .list(&TaskFilter::all().parent(*run))
                .iter()
                .any(|task| !task.delivered)
        });
        finished
    }

    fn tasks(&self) {
        let tasks: Vec<TaskSnapshot> = self
            .stack
            .runtime
            .registry()
            .list(&TaskFilter::all())
            .into_iter()
            .filter(|task| !task.root)
            .collect();
        if tasks.is_empty() {
            say("no tasks");
        }
        for task in tasks {
            say(&format!(
                "{}  {:<12} {:<10} {:>6} ms  {}",
                task.id.short(),
                task.agent,
                task.status,
                task.elapsed().as_millis(),
                one_line(&task.task, 60)
            ));
        }
    }

    fn settings(&self) {
        let registry = self.stack.runtime.registry();
        let stats = registry.stats();
        let live = RawSubagentSettings::from((*registry.settings()).clone());
        say(&format!(
            "[agent.subagents]\n{}running {}, queued {}",
            toml::to_string(&live).unwrap_or_default(),
            stats.running,
            stats.queued
        ));
        if let Some(status) = self.reloader.as_ref().map(Reloader::status)
            && let Some(at) = &status.at
        {
            let outcome = status.error.as_deref().unwrap_or("applied");
            say(&format!("last reload at {at}: {outcome}"));
        }
    }

    /// The task whose id (or id prefix, as `/tasks` shows) is `given`.
    fn find(&self, given: &str) -> Option<TaskId> {
        if given.is_empty() {
            say("give a task id (as /tasks shows it)");
            return None;
        }
        let matches: Vec<TaskId> = self
            .stack
            .runtime
            .registry()
            .list(&TaskFilter::all())
            .into_iter()
            .filter(|task| !task.root && task.id.to_string().starts_with(given))
            .map(|task| task.id)
            .collect();
        match matches.as_slice() {
            [id] => Some(*id),
            [] => {
                say(&format!("no task {given}; /tasks lists them"));
                None
            }
            _ => {
                say(&format!(
                    "{given} matches {} tasks; give more of the id",
                    matches.len()
                ));
                None
            }
        }
    }

    async fn wait(&mut self, given: &str) {
        let Some(id) = self.find(given) else {
            return;
        };
        say(&format!(
            "waiting for {} (Ctrl-C stops waiting)",
            id.short()
        ));
        let waited = tokio::select! {
            waited = self.stack.runtime.registry().wait(id, None) => waited,
            true = interrupt_signal() => {
                say("stopped waiting; the task goes on");
                return;
            }
        };
        match waited {
            Ok(done) => {
                let task = done.task;
                // The wait took the result from the orchestrator's
                // tasks: hand it on with the next prompt.
                if done.newly_delivered
                    && task
                        .parent_id
                        .is_some_and(|parent| self.runs.contains(&parent))
                {
                    self.read_by_user.push(task.clone());
                }
                match (&task.output, &task.failure) {
                    (Some(output), _) => {
                        say(&format!("{} {}: {output}", task.id.short(), task.status))
                    }
                    (None, Some(failure)) => {
                        say(&format!("{} {}: {failure}", task.id.short(), task.status))
                    }
                    (None, None) => say(&format!("{} {}", task.id.short(), task.status)),
                }
            }
            Err(error) => say(&format!("error: {error}")),
        }
    }

    fn stop(&self, given: &str) {
        let Some(id) = self.find(given) else {
            return;
        };
        match self.stack.runtime.registry().cancel(id) {
            Ok(deputy_registry::CancelOutcome::Cancelled { .. }) => {
                say(&format!("{} cancelled", id.short()));
            }
            Ok(deputy_registry::CancelOutcome::AlreadyFinished { status }) => {
                say(&format!("{} had already ended: {status}", id.short()));
            }
            Err(error) => say(&format!("error: {error}")),
        }
    }
}

/// One background result as a prompt line, the result cut to `max_chars`
/// characters with a note on where the rest is: the new run cannot read an
/// earlier run's tasks, so the model is told the user can.
fn background_result(task: &TaskSnapshot, max_chars: usize) -> String {
    let outcome = match (&task.output, &task.failure) {
        (Some(output), _) => {
            let shown = deputy_agent::window(output, 0, max_chars);
            if shown.has_more() {
                format!(
                    "{}\n  [result cut: the first {} of {} characters; the user can read it whole with /wait {}]",
                    shown.text,
                    shown.end,
                    shown.total,
                    task.id.short()
                )
            } else {
                output.to_string()
            }
        }
        (None, Some(failure)) => failure.to_string(),
        (None, None) => "there is no result".to_owned(),
    };
    format!(
        "- task {} ({}, {}): {}\n",
        task.id, task.agent, task.status, outcome
    )
}

/// A line on stderr (notices and command output, apart from answers).
fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Prints a notice whenever a background sub-agent ends, but for those of
/// the run showing its own progress.
async fn print_finished(
    mut events: tokio::sync::broadcast::Receiver<RegistryEvent>,
    current_run: Arc<Mutex<Option<TaskId>>>,
) {
    loop {
        match events.recv().await {
            Ok(RegistryEvent::Finished {
                task_id,
                agent,
                status,
                parent_id: Some(parent),
                ..
            }) if *current_run.lock() != Some(parent) => say(&format!(
                "[{} {agent} {status}; /wait {} shows it]",
                task_id.short(),
                task_id.short()
            )),
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Lines from the editor, read on a thread of their own (rustyline
/// blocks).
struct Lines {
    asks: Option<std::sync::mpsc::Sender<String>>,
    lines: mpsc::Receiver<Option<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Lines {
    /// The next line, after showing `prompt`; `None` at the end of input.
    ///
    /// Cancel safety: not cancel safe; a dropped call may lose a line.
    async fn next(&mut self, prompt: &str) -> Option<String> {
        self.asks.as_ref()?.send(prompt.to_owned()).ok()?;
        self.lines.recv().await.flatten()
    }

    /// Lets the reader thread end, and waits for it to save the history.
    async fn close(mut self) {
        drop(self.asks.take());
        if let Some(reader) = self.reader.take() {
            let _ = tokio::task::spawn_blocking(move || reader.join()).await;
        }
    }
}

fn spawn_reader() -> Lines {
    let (asks, asked) = std::sync::mpsc::channel::<String>();
    let (sender, lines) = mpsc::channel(1);
    let reader = std::thread::spawn(move || {
        let history =
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".deputy_history"));
        let mut editor = match rustyline::DefaultEditor::new() {
            Ok(editor) => editor,
            Err(error) => {
                say(&format!("error: cannot read input: {error}"));
                let _ = sender.blocking_send(None);
                return;
            }
        };
        if let Some(path) = &history {
            let _ = editor.load_history(path);
        }
        while let Ok(prompt) = asked.recv() {
            let line = match editor.readline(&prompt) {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        let _ = editor.add_history_entry(line.as_str());
                    }
                    Some(line)
                }
                // Ctrl-C drops the line being typed; the session goes on.
                Err(rustyline::error::ReadlineError::Interrupted) => Some(String::new()),
                // Ctrl-D (or the end of piped input) ends the session.
                Err(_) => None,
            };
            let done = line.is_none();
            if sender.blocking_send(line).is_err() || done {
                break;
            }
        }
        if let Some(path) = &history {
            let _ = editor.save_history(path);
        }
    });
    Lines {
        asks: Some(asks),
        lines,
        reader: Some(reader),
    }
}
