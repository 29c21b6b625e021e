//! `deputy run`: one orchestration. The answer streams to stdout; sub-agent
//! progress and the closing summary go to stderr, so `deputy run ... >
//! answer.txt` keeps only the answer.

use std::collections::HashMap;
use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use deputy_agent::{RunError, RunEvent, RunHandle, RunOutput, RunReport};
use deputy_registry::{Registry, TaskId, TaskStatus, Usage};
use futures::StreamExt as _;
use serde::Serialize;

use crate::exit::CliError;
use crate::reload::Reloader;
use crate::wiring::Stack;

/// How long running sub-agents get to end when the run is over.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// The `--json` document.
#[derive(Serialize)]
struct JsonOutput<'a> {
    ok: bool,
    answer: Option<&'a str>,
    error: Option<&'a str>,
    cost_usd: Option<f64>,
    /// `null` only for a run that ended without one (see [`Ended`]).
    report: Option<&'a RunReport>,
}

/// How a run ended, as `deputy run` prints it and the API shows it.
#[derive(Debug, Clone)]
pub(crate) struct Ended {
    /// `completed`, `failed` or `cancelled`.
    pub(crate) status: &'static str,
    /// The answer, when it completed.
    pub(crate) answer: Option<String>,
    /// Why it did not, when it did not.
    pub(crate) error: Option<String>,
    /// What it did; `None` only when the run ended in an error that
    /// carries no report, which is then shown as `failed`.
    pub(crate) report: Option<RunReport>,
}

impl From<Result<RunOutput, RunError>> for Ended {
    fn from(result: Result<RunOutput, RunError>) -> Self {
        match result {
            Ok(RunOutput { answer, report }) => Self {
                status: "completed",
                answer: Some(answer),
                error: None,
                report: Some(report),
            },
            Err(error) => Self {
                status: if matches!(error, RunError::Cancelled { .. }) {
                    "cancelled"
                } else {
                    "failed"
                },
                answer: None,
                // A failure is shown as itself, without the run error's
                // "the run failed: " opening.
                error: Some(match &error {
                    RunError::Failed { failure, .. } => failure.to_string(),
                    other => other.to_string(),
                }),
                report: error.report().cloned(),
            },
        }
    }
}

/// Runs `prompt` on `agent` and prints as the module docs say.
///
/// # Errors
/// Exit code 1 when the run fails or is cancelled (after printing what it
/// did), 2 when the prompt or agent is unusable.
pub(crate) async fn run(
    stack: Stack,
    reloader: Option<Reloader>,
    agent: &str,
    prompt: &str,
    json: bool,
) -> Result<(), CliError> {
    let mut run = stack
        .runtime
        .start(agent, prompt)
        .map_err(|error| match error {
            RunError::UnknownAgent { .. } | RunError::EmptyPrompt => CliError::usage(error.into()),
            other => CliError::failed(other.into()),
        })?;
    // Ctrl-C cancels the run (its sub-agents get their SubagentStop and
    // the summary still prints); it does not kill the process.
    let interrupt = cancel_on_interrupt(stack.runtime.registry().clone(), run.run_id());
    show_events(&mut run, !json).await;
    interrupt.abort();
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    let ended = Ended::from(run.finish().await);
    stack.shutdown(SHUTDOWN_DRAIN).await;

    let cost = ended
        .report
        .as_ref()
        .and_then(|report| run_cost(&stack, report));
    if json {
        let document = JsonOutput {
            ok: ended.error.is_none(),
            answer: ended.answer.as_deref(),
            error: ended.error.as_deref(),
            cost_usd: cost,
            report: ended.report.as_ref(),
        };
        let text = serde_json::to_string_pretty(&document)
            .map_err(|error| CliError::failed(error.into()))?;
        let _ = writeln!(out, "{text}");
    }
    if let Some(report) = &ended.report {
        let _ = writeln!(err, "{}", summary(report, cost));
    }
    if let Some(status) = reloader
        .as_ref()
        .map(Reloader::status)
        .filter(|status| status.reloads > 0)
    {
        let last = if status.ok { "applied" } else { "rejected" };
        let _ = writeln!(
            err,
            "config re-read {} times during the run; the last change was {last}",
            status.reloads
        );
    }
    match ended.error {
        None => Ok(()),
        Some(failure) => Err(CliError::failed(anyhow::anyhow!("{failure}"))),
    }
}

/// Prints a run's events until it ends: the orchestrator's text to
/// stdout (when `print_text`), tool calls and sub-agent progress to stderr:
/// a live status line per sub-agent in a terminal, plain lines otherwise.
///
/// Cancel safety: dropping it mid-way leaves the run going; its events are
/// simply not printed.
pub(crate) async fn show_events(run: &mut RunHandle, print_text: bool) {
    let run_id = run.run_id();
    let mut out = std::io::stdout();
    let mut progress = Progress::new();
    // Spinners redraw the bottom lines of the terminal; text written there
    // mid-line would be wiped at the next tick. While spinners show on the
    // terminal the text goes to, it is printed above them a whole line at a
    // time.
    let shares_terminal = progress.draws() && out.is_terminal();
    let mut held = HeldLine::default();
    let mut at_line_start = true;
    while let Some(event) = run.next().await {
        let line = match event {
            RunEvent::TextDelta { task_id, text, .. } if task_id == run_id => {
                if !print_text {
                    continue;
                }
                if shares_terminal && progress.active() {
                    for line in held.push(&text) {
                        progress.text_line(&line);
                    }
                } else {
                    let text = held.take().unwrap_or_default() + &text;
                    let _ = write!(out, "{text}");
                    let _ = out.flush();
                    at_line_start = text.ends_with('\n');
                }
                continue;
            }
            RunEvent::ToolCallStarted {
                task_id,
                name,
                arguments,
                ..
            } if task_id == run_id => {
                format!("  -> {name} {}", one_line(&arguments.to_string(), 160))
            }
            RunEvent::ToolResult {
                task_id,
                name,
                content,
                is_error,
                ..
            } if task_id == run_id => {
                let mark = if is_error { "error" } else { "ok" };
                format!("  <- {name} ({mark}): {}", one_line(&content, 160))
            }
            RunEvent::TaskQueued { task_id, agent, .. } => {
                end_line(&mut out, &mut at_line_start);
                progress.queued(task_id, &agent);
                continue;
            }
            RunEvent::TaskStarted { task_id, agent, .. } => {
                end_line(&mut out, &mut at_line_start);
                progress.started(task_id, &agent);
                continue;
            }
            RunEvent::TaskFinished {
                task_id,
                agent,
                status,
                ..
            } => {
                // Text that came before the news goes above it.
                if let Some(partial) = held.take() {
                    progress.text_line(&partial);
                }
                progress.finished(task_id, &agent, status);
                continue;
            }
            RunEvent::Error { message, .. } => format!("  error: {message}"),
            _ => continue,
        };
        end_line(&mut out, &mut at_line_start);
        if let Some(partial) = held.take() {
            progress.text_line(&partial);
        }
        progress.line(&line);
    }
    // Tasks the run left behind (detached) stop showing live here.
    progress.clear();
    if let Some(partial) = held.take() {
        let _ = writeln!(out, "{partial}");
    } else {
        end_line(&mut out, &mut at_line_start);
    }
}

/// Ends the line the streamed text left open, before anything else is
/// printed below it.
fn end_line(out: &mut std::io::Stdout, at_line_start: &mut bool) {
    if !*at_line_start {
        let _ = writeln!(out);
        *at_line_start = true;
    }
}

/// Streamed text held back until its line is whole.
#[derive(Debug, Default)]
struct HeldLine {
    partial: String,
}

impl HeldLine {
    /// Adds `text`; returns the lines it completes, without their breaks.
    fn push(&mut self, text: &str) -> Vec<String> {
        self.partial.push_str(text);
        let Some(last_break) = self.partial.rfind('\n') else {
            return Vec::new();
        };
        let rest = self.partial.split_off(last_break + 1);
        let whole = std::mem::replace(&mut self.partial, rest);
        whole.lines().map(str::to_owned).collect()
    }

    /// The start of a line not yet whole, if any.
    fn take(&mut self) -> Option<String> {
        (!self.partial.is_empty()).then(|| std::mem::take(&mut self.partial))
    }
}

/// Sub-agent progress on stderr: spinners in a terminal, lines otherwise.
enum Progress {
    Lines,
    Bars {
        bars: MultiProgress,
        tasks: HashMap<TaskId, ProgressBar>,
    },
}

impl Progress {
    fn new() -> Self {
        if std::io::stderr().is_terminal() {
            Self::Bars {
                bars: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                tasks: HashMap::new(),
            }
        } else {
            Self::Lines
        }
    }

    /// Whether it draws spinners (stderr is a terminal).
    fn draws(&self) -> bool {
        matches!(self, Self::Bars { .. })
    }

    /// Whether a spinner shows now.
    fn active(&self) -> bool {
        matches!(self, Self::Bars { tasks, .. } if !tasks.is_empty())
    }

    /// Takes every spinner off the screen.
    fn clear(&mut self) {
        if let Self::Bars { tasks, .. } = self {
            for (_, bar) in tasks.drain() {
                bar.finish_and_clear();
            }
        }
    }

    /// A whole line of the answer, on stdout, above the spinners.
    fn text_line(&self, line: &str) {
        let print = || {
            let _ = writeln!(std::io::stdout(), "{line}");
        };
        match self {
            Self::Lines => print(),
            Self::Bars { bars, .. } => bars.suspend(print),
        }
    }

    fn line(&self, line: &str) {
        match self {
            Self::Lines => {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
            Self::Bars { bars, .. } => {
                let _ = bars.println(line);
            }
        }
    }

    fn bar(&mut self, task: TaskId, agent: &str, state: &str) {
        if let Self::Bars { bars, tasks } = self {
            let bar = tasks.entry(task).or_insert_with(|| {
                let bar = bars.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("  {spinner} {prefix} {msg} {elapsed}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_prefix(format!("{} {agent}", task.short()));
                bar.enable_steady_tick(Duration::from_millis(120));
                bar
            });
            bar.set_message(state.to_owned());
        }
    }

    fn queued(&mut self, task: TaskId, agent: &str) {
        match self {
            Self::Lines => self.line(&format!("  queued   {} {agent}", task.short())),
            Self::Bars { .. } => self.bar(task, agent, "queued"),
        }
    }

    fn started(&mut self, task: TaskId, agent: &str) {
        match self {
            Self::Lines => self.line(&format!("  started  {} {agent}", task.short())),
            Self::Bars { .. } => self.bar(task, agent, "running"),
        }
    }

    fn finished(&mut self, task: TaskId, agent: &str, status: TaskStatus) {
        match self {
            Self::Lines => self.line(&format!("  finished {} {agent} {status}", task.short())),
            Self::Bars { tasks, .. } => {
                if let Some(bar) = tasks.remove(&task) {
                    bar.finish_and_clear();
                    self.line(&format!(
                        "  {} {} {agent} {status} in {:.1} s",
                        if status == TaskStatus::Completed {
                            "done"
                        } else {
                            "ended"
                        },
                        task.short(),
                        bar.elapsed().as_secs_f64()
                    ));
                }
            }
        }
    }
}

/// Cancels `task` at the first Ctrl-C; abort the handle once it is moot.
///
/// The signal handler is in place when this returns, so a Ctrl-C right
/// after never falls through to the default (ending the process).
pub(crate) fn cancel_on_interrupt(registry: Registry, task: TaskId) -> tokio::task::JoinHandle<()> {
    let interrupted = interrupt_signal();
    tokio::spawn(async move {
        if interrupted.await {
            let _ = writeln!(std::io::stderr(), "interrupted: cancelling the run");
            let _ = registry.cancel(task);
        }
    })
}

/// A future that is true at the next Ctrl-C, false if none can be awaited;
/// the handler is registered before this returns.
#[cfg(unix)]
pub(crate) fn interrupt_signal() -> impl std::future::Future<Output = bool> + Send + 'static {
    let signals = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
    async move {
        match signals {
            Ok(mut signals) => signals.recv().await.is_some(),
            Err(_) => false,
        }
    }
}

/// A future that is true at the next Ctrl-C, false if none can be awaited.
#[cfg(not(unix))]
pub(crate) fn interrupt_signal() -> impl std::future::Future<Output = bool> + Send + 'static {
    async { tokio::signal::ctrl_c().await.is_ok() }
}

/// The run's cost: the orchestrator's own calls plus every sub-agent's;
/// `None` when any model involved has no price.
fn run_cost(stack: &Stack, report: &RunReport) -> Option<f64> {
    let sub_agents = report
        .tasks
        .iter()
        .fold(Usage::default(), |sum, task| sum + task.usage);
    let own = report.usage.saturating_sub(sub_agents);
    let mut total = stack.cost(&report.agent, &own)?;
    for task in &report.tasks {
        total += stack.cost(&task.agent, &task.usage)?;
    }
    Some(total)
}

/// `done: 3 sub-agent tasks, 2 completed, 1 failed; 7 provider calls, ...`.
fn summary(report: &RunReport, cost: Option<f64>) -> String {
    let mut counts = vec![format!("{} completed", report.count(TaskStatus::Completed))];
    for status in [
        TaskStatus::Failed,
        TaskStatus::Cancelled,
        TaskStatus::Running,
        TaskStatus::Queued,
    ] {
        let count = report.count(status);
        if count > 0 {
            counts.push(format!("{count} {status}"));
        }
    }
    let cost = cost.map_or_else(
        || "cost unknown (a model has no price)".to_owned(),
        |usd| format!("cost ${usd:.4}"),
    );
    format!(
        "done: {} sub-agent tasks, {}; {} provider calls, {} input and {} output tokens; {cost}; {} ms",
        report.tasks.len(),
        counts.join(", "),
        report.usage.requests,
        report.usage.input_tokens,
        report.usage.output_tokens,
        report.duration.as_millis()
    )
}

/// `text` on one line, cut to `max` characters.
pub(crate) fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let cut: String = flat.chars().take(max).collect();
    format!("{cut}...")
}

#[cfg(test)]
mod tests {
    use super::HeldLine;

    #[test]
    fn held_text_comes_out_a_whole_line_at_a_time() {
        let mut held = HeldLine::default();
        assert!(held.push("Go has").is_empty());
        assert_eq!(held.push(" goroutines.\nRust has"), ["Go has goroutines."]);
        assert_eq!(held.push(" threads.\n\nBoth"), ["Rust has threads.", ""]);
        assert_eq!(held.take().as_deref(), Some("Both"));
        assert_eq!(held.take(), None, "taken once");
        assert_eq!(held.push("end\n"), ["end"]);
        assert_eq!(held.take(), None, "nothing left after a whole line");
    }
}
