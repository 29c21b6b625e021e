//! The tools an agent that may spawn gets: `spawn_agent`, `get_task_result`,
//! `stop_task` and `list_tasks`.
//!
//! Every answer is a JSON object a model can read; every refusal is a
//! sentence that says what went wrong and what to do instead, and changes
//! nothing.

use std::time::Duration;

use deputy_providers::{GET_TASK_RESULT_TOOL, SPAWN_AGENT_TOOL, ToolSpec};
use deputy_registry::{
    CancelOutcome, SelectionRequest, SpawnError, TaskFilter, TaskId, TaskSnapshot, TaskStatus,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::agent::Agent;
use crate::agent_loop::AgentRun;
use crate::format::{millis, window};
use crate::runtime::{RuntimeInner, with_context};
use crate::tool::ToolError;

/// Launches a sub-agent.
pub const SPAWN_AGENT: &str = SPAWN_AGENT_TOOL;
/// Reads (or waits for) a sub-agent's result.
pub const GET_TASK_RESULT: &str = GET_TASK_RESULT_TOOL;
/// Cancels a sub-agent and its own sub-agents.
pub const STOP_TASK: &str = "stop_task";
/// Lists the caller's own sub-agents.
pub const LIST_TASKS: &str = "list_tasks";

/// Characters of a task's text `list_tasks` shows.
const TASK_PREVIEW_CHARS: usize = 80;

pub(crate) fn is_task_tool(name: &str) -> bool {
    [SPAWN_AGENT, GET_TASK_RESULT, STOP_TASK, LIST_TASKS].contains(&name)
}

/// The task tools as `agent`'s model sees them.
pub(crate) fn specs(runtime: &RuntimeInner, agent: &Agent) -> Vec<ToolSpec> {
    let subagents = runtime.subagents_of(agent);
    let mut names: Vec<String> = vec!["auto".to_owned()];
    names.extend(subagents.iter().map(|agent| agent.name.to_string()));
    let roster = subagents
        .iter()
        .map(|agent| {
            if agent.description.is_empty() {
                format!("- {}", agent.name)
            } else {
                format!("- {}: {}", agent.name, agent.description)
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    vec![
        ToolSpec {
            name: SPAWN_AGENT.to_owned(),
            description: format!(
                "Start a sub-agent on a task. In the foreground (default) it runs and its answer comes back as the result. With background: true it returns at once with a task_id while the sub-agent works; its result is handed to you when it finishes, or read it earlier with get_task_result. Agents you can call (\"auto\" lets deputy pick the least busy fitting one):\n{roster}"
            ),
            parameters: json!({
                "type": "object",
                "properties": {
                    "agent": {"type": "string", "enum": names, "description": "Which agent; \"auto\" (the default) picks one."},
                    "task": {"type": "string", "description": "The task or question, complete in itself: the sub-agent sees nothing else of this conversation."},
                    "context": {"type": "string", "description": "Background the sub-agent needs, appended to the task."},
                    "background": {"type": "boolean", "description": "Run in the background and return a task_id at once (default false)."},
                    "max_turns": {"type": "integer", "minimum": 0, "description": "Turns the sub-agent may take; 0 or absent uses its default, and more than its default is not granted."}
                },
                "required": ["task"],
                "additionalProperties": false
            }),
        },
        ToolSpec {
            name: GET_TASK_RESULT.to_owned(),
            description: "Check a background task you started, or wait for it to finish. Returns its status and, once finished, its result or error. A wait that times out returns the current status; the task keeps running.".to_owned(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "task_id": {"type": "string", "description": "The task_id spawn_agent returned."},
                    "wait": {"type": "boolean", "description": "Block until the task finishes (default false)."},
                    "timeout_ms": {"type": "integer", "minimum": 0, "description": "Longest wait in milliseconds; 0 or absent means no limit of your own (a ceiling applies)."},
                    "offset": {"type": "integer", "minimum": 0, "description": "Character to start the result at, to read a long result in parts."}
                },
                "required": ["task_id"],
                "additionalProperties": false
            }),
        },
        ToolSpec {
            name: STOP_TASK.to_owned(),
            description: "Cancel a background task you started, and every sub-agent it started. Says whether it was cancelled or had already finished.".to_owned(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "task_id": {"type": "string", "description": "The task_id spawn_agent returned."}
                },
                "required": ["task_id"],
                "additionalProperties": false
            }),
        },
        ToolSpec {
            name: LIST_TASKS.to_owned(),
            description: "List the sub-agent tasks you started: id, agent, status, elapsed time and the start of the task.".to_owned(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "status": {"type": "string", "enum": ["queued", "running", "completed", "failed", "cancelled"], "description": "Only tasks in this status."}
                },
                "additionalProperties": false
            }),
        },
    ]
}

/// Runs one task tool call for `caller`.
pub(crate) async fn execute(
    caller: &AgentRun,
    name: &str,
    arguments: &Value,
) -> Result<String, ToolError> {
    let answer = match name {
        SPAWN_AGENT => spawn_agent(caller, parse(name, arguments)?).await?,
        GET_TASK_RESULT => get_task_result(caller, parse(name, arguments)?).await?,
        STOP_TASK => stop_task(caller, parse(name, arguments)?).await?,
        LIST_TASKS => list_tasks(caller, parse(name, arguments)?)?,
        other => return Err(ToolError::new(format!("unknown task tool `{other}`"))),
    };
    Ok(answer.to_string())
}

fn parse<T: DeserializeOwned>(tool: &str, arguments: &Value) -> Result<T, ToolError> {
    // Models often send `{}` as null for tools without arguments.
    let arguments = if arguments.is_null() {
        json!({})
    } else {
        arguments.clone()
    };
    serde_json::from_value(arguments).map_err(|error| {
        ToolError::invalid_arguments(format!(
            "{tool}: {error}; see the tool's schema for the fields it takes"
        ))
    })
}

// ----- spawn_agent ---------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpawnArgs {
    agent: Option<String>,
    task: String,
    context: Option<String>,
    background: Option<bool>,
    max_turns: Option<u32>,
}

async fn spawn_agent(caller: &AgentRun, args: SpawnArgs) -> Result<Value, ToolError> {
    let background = args.background.unwrap_or(false);
    let kind = if background {
        "background agent"
    } else {
        "sub-agent"
    };
    if args.task.trim().is_empty() {
        return Err(ToolError::invalid_arguments(
            "spawn_agent: `task` is empty; describe the work for the sub-agent",
        ));
    }
    let limits = &caller.runtime.limits;
    let depth = caller.task.depth().saturating_add(1);
    if depth > limits.max_depth {
        return Err(ToolError::new(format!(
            "Cannot start {kind}: the depth limit is reached (max_depth = {}, and you already run at depth {}). Do this work yourself instead of delegating it.",
            limits.max_depth,
            caller.task.depth()
        )));
    }
    let subagents = caller.runtime.subagents_of(&caller.agent);
    let candidates: Vec<_> = subagents.iter().map(|agent| agent.candidate()).collect();
    let request = SelectionRequest {
        agent: args.agent.as_deref(),
        task: &args.task,
        required_capabilities: &[],
    };
    let selection = caller
        .task
        .registry()
        .select_agent(&request, &candidates)
        .map_err(|error| ToolError::new(format!("Cannot start {kind}: {error}.")))?;
    let Some(agent) = subagents
        .iter()
        .find(|agent| agent.name == selection.agent)
        .cloned()
    else {
        return Err(ToolError::new(format!(
            "Cannot start {kind}: agent `{}` is not one you may call.",
            selection.agent
        )));
    };
    let max_turns = match args.max_turns {
        None | Some(0) => agent.max_turns,
        Some(asked) => asked.min(agent.max_turns),
    };
    let task = with_context(
        args.task,
        "Context from the calling agent",
        args.context.as_deref(),
    );
    let spawned = caller
        .spawn_child(agent.clone(), task, background, max_turns)
        .map_err(|error| refusal(kind, &error))?;
    if background {
        return Ok(json!({
            "task_id": spawned.id,
            "agent": agent.name,
            "status": spawned.status,
            "note": match spawned.status {
                TaskStatus::Queued => "queued until a slot is free; its result is handed to you when it finishes, or call get_task_result",
                _ => "running; its result is handed to you when it finishes, or call get_task_result",
            },
        }));
    }
    // Foreground: the answer is the result. Dropping this wait (the caller
    // was cancelled) cancels the child through its parent's token.
    let outcome = caller
        .task
        .registry()
        .wait(spawned.id, None)
        .await
        .map_err(|error| ToolError::new(error.to_string()))?;
    let task = outcome.task;
    match task.status {
        TaskStatus::Completed => Ok(fitted_result_json(&task, 0, limits.max_tool_output_chars)),
        _ => Err(ToolError::new(format!(
            "Sub-agent `{}` (task {}) {}.",
            task.agent,
            task.id,
            ending(&task)
        ))),
    }
}

/// [`result_json`] with the largest window of the result whose serialized
/// answer fits in `max_chars` (escapes such as `\n` make JSON longer than
/// the text), so the answer is never cut and its offset note stays true.
fn fitted_result_json(task: &TaskSnapshot, offset: usize, max_chars: usize) -> Value {
    // Room for the fields and notes around the result.
    const ENVELOPE: usize = 600;
    let mut window_chars = max_chars.saturating_sub(ENVELOPE).max(1);
    loop {
        let answer = result_json(task, offset, window_chars);
        let length = answer.to_string().chars().count();
        if length <= max_chars || window_chars == 1 {
            return answer;
        }
        window_chars = window_chars.saturating_sub(length - max_chars).max(1);
    }
}

/// A refused spawn as a sentence a model can act on.
fn refusal(kind: &str, error: &SpawnError) -> ToolError {
    let plural = if kind == "background agent" {
        "background agents"
    } else {
        "sub-agents"
    };
    let message = match error {
        SpawnError::AtCapacity { max_concurrent } => format!(
            "Cannot start {kind}: maximum concurrent {plural} ({max_concurrent}) reached and queue wait is disabled. Stop an existing agent or wait for one to finish."
        ),
        SpawnError::AgentAtCapacity {
            agent,
            max_concurrent,
        } => format!(
            "Cannot start {kind}: agent `{agent}` already runs its maximum of {max_concurrent} tasks and queue wait is disabled. Stop one of its tasks, wait for one to finish, or pick another agent."
        ),
        SpawnError::QueueFull { max_queue } => format!(
            "Cannot start {kind}: the queue is full ({max_queue} tasks are waiting for a slot). Wait for tasks to finish before starting more."
        ),
        SpawnError::LentSlotBusy { .. } => format!(
            "Cannot start {kind}: your slot is lent to another foreground sub-agent and every slot is taken. Wait for that sub-agent to answer first."
        ),
        SpawnError::Disabled => format!(
            "Cannot start {kind}: sub-agents are disabled in this deputy's configuration. Do the work yourself."
        ),
        SpawnError::ShuttingDown => {
            format!("Cannot start {kind}: deputy is shutting down. Finish with what you have.")
        }
        other => {
            let detail = other.to_string();
            let detail = detail
                .strip_prefix("cannot start sub-agent: ")
                .unwrap_or(&detail);
            format!("Cannot start {kind}: {detail}.")
        }
    };
    ToolError::new(message)
}

// ----- get_task_result -----------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetArgs {
    task_id: String,
    wait: Option<bool>,
    timeout_ms: Option<u64>,
    offset: Option<usize>,
}

async fn get_task_result(caller: &AgentRun, args: GetArgs) -> Result<Value, ToolError> {
    let id = own_task(caller, &args.task_id)?.id;
    let registry = caller.task.registry();
    let ceiling = caller.runtime.limits.max_wait;
    let timeout = if args.wait.unwrap_or(false) {
        match args.timeout_ms {
            None | Some(0) => ceiling,
            Some(ms) => Duration::from_millis(ms).min(ceiling),
        }
    } else {
        Duration::ZERO
    };
    // A zero wait reads without blocking; either way a finished result is
    // marked delivered here and never handed over again.
    let outcome = registry
        .wait(id, Some(timeout))
        .await
        .map_err(|error| ToolError::new(error.to_string()))?;
    let task = outcome.task;
    let mut answer = fitted_result_json(
        &task,
        args.offset.unwrap_or(0),
        caller.runtime.limits.max_tool_output_chars,
    );
    if !task.status.is_terminal() {
        answer["note"] = Value::String(if timeout.is_zero() {
            format!(
                "still {}; call get_task_result with wait: true to wait for it, or keep working: its result is handed to you when it finishes",
                task.status
            )
        } else {
            format!(
                "still {} after waiting {} ms; wait again, or keep working: its result is handed to you when it finishes",
                task.status,
                millis(timeout)
            )
        });
    }
    Ok(answer)
}

/// A task as a JSON object: status, timing, usage, and its result (a
/// window of it from `offset`) or error.
fn result_json(task: &TaskSnapshot, offset: usize, max_chars: usize) -> Value {
    let mut answer = json!({
        "task_id": task.id,
        "agent": task.agent,
        "status": task.status,
        "elapsed_ms": millis(task.elapsed()),
    });
    if task.status.is_terminal() {
        answer["usage"] = json!({
            "input_tokens": task.usage.input_tokens,
            "output_tokens": task.usage.output_tokens,
            "cache_read_tokens": task.usage.cache_read_tokens,
            "cache_write_tokens": task.usage.cache_write_tokens,
        });
    }
    match task.status {
        TaskStatus::Completed => {
            let output = task.output.as_deref().unwrap_or_default();
            let shown = window(output, offset, max_chars);
            answer["result"] = Value::String(shown.text.to_owned());
            if shown.start > 0 || shown.has_more() {
                answer["result_chars"] = json!({
                    "from": shown.start,
                    "to": shown.end,
                    "total": shown.total,
                });
            }
            if shown.has_more() {
                answer["note"] = Value::String(format!(
                    "the result goes on; call get_task_result with offset {} to read more",
                    shown.end
                ));
            }
        }
        TaskStatus::Failed | TaskStatus::Cancelled => {
            answer["error"] = Value::String(ending(task));
        }
        TaskStatus::Queued | TaskStatus::Running => {}
    }
    answer
}

/// How a task that did not complete ended, in words.
fn ending(task: &TaskSnapshot) -> String {
    match (&task.status, &task.failure) {
        (TaskStatus::Failed, Some(failure)) => {
            format!("failed ({}): {}", failure.kind, failure.message)
        }
        (TaskStatus::Cancelled, _) => "was cancelled before it finished".to_owned(),
        (status, _) => format!("ended {status}"),
    }
}

/// The caller's own child task `raw_id`, or a refusal that says why not.
fn own_task(caller: &AgentRun, raw_id: &str) -> Result<TaskSnapshot, ToolError> {
    let id: TaskId = raw_id.trim().parse().map_err(|_| {
        ToolError::invalid_arguments(format!(
            "`{raw_id}` is not a task id; use the task_id that spawn_agent returned, or call list_tasks to see yours"
        ))
    })?;
    let known = caller.task.registry().get(id);
    match known {
        Some(task) if task.parent_id == Some(caller.task.id()) => Ok(task),
        Some(_) => Err(ToolError::new(format!(
            "task {id} is not one of yours: you can only read and stop tasks you started; call list_tasks to see them"
        ))),
        None => Err(ToolError::new(format!(
            "task {id} not found: no task has this id, or its result was read and has since been cleared; call list_tasks to see your tasks"
        ))),
    }
}

// ----- stop_task -----------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StopArgs {
    task_id: String,
}

async fn stop_task(caller: &AgentRun, args: StopArgs) -> Result<Value, ToolError> {
    let task = own_task(caller, &args.task_id)?;
    let registry = caller.task.registry();
    let outcome = registry
        .cancel(task.id)
        .map_err(|error| ToolError::new(error.to_string()))?;
    Ok(match outcome {
        CancelOutcome::Cancelled { was } => {
            // The stop is its end notice: wait for it to settle (at its
            // next poll) and mark it delivered, so it is not handed over
            // again as news.
            let _settled = registry.wait(task.id, None).await;
            json!({
                "task_id": task.id,
                "agent": task.agent,
                "stopped": true,
                "was": was,
                "status": TaskStatus::Cancelled,
                "message": format!(
                    "Task {} ({}) was {was} and is now cancelled, with every sub-agent it started.",
                    task.id, task.agent
                ),
            })
        }
        CancelOutcome::AlreadyFinished { status } => json!({
            "task_id": task.id,
            "agent": task.agent,
            "stopped": false,
            "status": status,
            "message": format!(
                "Task {} ({}) had already ended ({status}) before this stop; nothing was cancelled.{}",
                task.id,
                task.agent,
                if status == TaskStatus::Completed {
                    " Read its result with get_task_result."
                } else {
                    ""
                }
            ),
        }),
    })
}

// ----- list_tasks ----------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListArgs {
    status: Option<String>,
}

fn list_tasks(caller: &AgentRun, args: ListArgs) -> Result<Value, ToolError> {
    let mut filter = TaskFilter::all().parent(caller.task.id());
    if let Some(status) = args
        .status
        .as_deref()
        .filter(|status| !status.trim().is_empty())
    {
        let status: TaskStatus = status
            .parse()
            .map_err(|error| ToolError::invalid_arguments(format!("list_tasks: {error}")))?;
        filter = filter.status(status);
    }
    let tasks: Vec<Value> = caller
        .task
        .registry()
        .list(&filter)
        .iter()
        .map(|task| {
            let preview = window(&task.task, 0, TASK_PREVIEW_CHARS);
            let mut text = preview.text.replace('\n', " ");
            if preview.has_more() {
                text.push('…');
            }
            let mut entry = json!({
                "task_id": task.id,
                "agent": task.agent,
                "status": task.status,
                "elapsed_ms": millis(task.elapsed()),
                "task": text,
            });
            if task.status.is_terminal() {
                entry["result_delivered"] = Value::Bool(task.delivered);
            }
            entry
        })
        .collect();
    Ok(json!({ "count": tasks.len(), "tasks": tasks }))
}

#[cfg(test)]
mod tests {
    use deputy_registry::{SpawnError, TaskId, TaskStatus};

    use super::refusal;

    #[test]
    fn refusals_open_once_and_end_with_what_to_do() {
        let parent = TaskId::new_random();
        let message = refusal(
            "sub-agent",
            &SpawnError::ParentNotRunning {
                parent,
                status: TaskStatus::Cancelled,
            },
        )
        .message()
        .to_owned();
        assert!(
            message.starts_with("Cannot start sub-agent: parent task"),
            "{message}"
        );
        assert_eq!(message.matches("annot start").count(), 1, "{message}");
        assert!(message.contains("only a running task can start sub-agents"));

        let at_cap = refusal(
            "background agent",
            &SpawnError::AtCapacity { max_concurrent: 2 },
        );
        assert_eq!(
            at_cap.message(),
            "Cannot start background agent: maximum concurrent background agents (2) reached and queue wait is disabled. Stop an existing agent or wait for one to finish."
        );
    }
}
