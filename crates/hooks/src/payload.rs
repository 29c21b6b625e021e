//! The JSON document that command hooks, webhooks and the audit log get for
//! each event.
//!
//! Field names follow Claude Code's hook input where it has one
//! (`hook_event_name`, `session_id`, `agent_id`, `agent_type`,
//! `stop_hook_active`, `last_assistant_message`; see
//! <https://code.claude.com/docs/en/hooks>), so scripts written for it read
//! deputy's events unchanged. deputy adds what billing and metrics need:
//! the task, its parent, status, error, duration, usage, cost, provider and
//! model.

use std::time::{Duration, SystemTime};

use deputy_registry::{
    HookEventName, HookTask, SubagentStartEvent, SubagentStopEvent, TaskFailure, TaskId,
    TaskStatus, Usage,
};
use serde::Serialize;

use crate::price::PriceTable;

/// One event as hooks outside the process see it.
///
/// ```json
/// {"hook_event_name":"SubagentStop","session_id":"…","agent_id":"<task id>",
///  "agent_type":"researcher","timestamp":"2026-11-21T10:00:00.000Z",
///  "task_id":"<task id>","parent_id":null,"task":"…","depth":1,"background":true,
///  "provider":"openai","model":"gpt-4o","created_at":"…","queued_ms":0,
///  "stop_hook_active":false,"last_assistant_message":"…","status":"completed",
///  "error":null,"duration_ms":1200,"usage":{"input_tokens":…},"cost_usd":0.0123,
///  "ended_at":"…"}
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct EventPayload<'a> {
    /// `SubagentStart` or `SubagentStop`.
    pub hook_event_name: &'static str,
    /// The host's session (one per `deputy` process unless set).
    pub session_id: &'a str,
    /// The task id; Claude Code's name for the sub-agent instance.
    pub agent_id: TaskId,
    /// The agent's name; Claude Code's name for the sub-agent kind.
    pub agent_type: &'a str,
    /// When the payload was made (RFC 3339, UTC).
    pub timestamp: String,
    /// The task id again, under deputy's own name.
    pub task_id: TaskId,
    /// The task that spawned it.
    pub parent_id: Option<TaskId>,
    /// The task text.
    pub task: &'a str,
    /// Nesting depth: 1 for a task spawned by a root run.
    pub depth: u32,
    /// Whether its caller went on without waiting.
    pub background: bool,
    /// The provider backend's configured name.
    pub provider: Option<&'a str>,
    /// The provider backend's kind (`openai`, `anthropic`, `scripted`, ...).
    pub provider_kind: Option<&'a str>,
    /// The model.
    pub model: Option<&'a str>,
    /// When it was spawned (RFC 3339, UTC).
    pub created_at: String,
    /// How long it waited for a slot, in milliseconds.
    pub queued_ms: u64,
    /// What only stop events carry.
    #[serde(flatten)]
    pub stop: Option<StopFields<'a>>,
}

/// The part of a payload that only SubagentStop has.
#[derive(Debug, Clone, Serialize)]
pub struct StopFields<'a> {
    /// Always `false`: deputy never re-runs a sub-agent because of a stop
    /// hook, so no stop hook runs inside such a continuation.
    pub stop_hook_active: bool,
    /// The answer, when it completed.
    pub last_assistant_message: Option<&'a str>,
    /// Completed, failed or cancelled.
    pub status: TaskStatus,
    /// The failure (`kind`, `message`), when it failed.
    pub error: Option<&'a TaskFailure>,
    /// Time from the start of its run to its end, in milliseconds.
    pub duration_ms: u64,
    /// Tokens by kind, and provider requests.
    pub usage: Usage,
    /// What the usage cost in US dollars; `null` when the model has no price.
    pub cost_usd: Option<f64>,
    /// When it ended (RFC 3339, UTC).
    pub ended_at: String,
}

impl<'a> EventPayload<'a> {
    /// The payload of a start event.
    pub fn start(event: &'a SubagentStartEvent, session_id: &'a str) -> Self {
        Self::common(HookEventName::SubagentStart, &event.task, session_id)
    }

    /// The payload of a stop event, priced with `prices`.
    pub fn stop(event: &'a SubagentStopEvent, session_id: &'a str, prices: &PriceTable) -> Self {
        let mut payload = Self::common(HookEventName::SubagentStop, &event.task, session_id);
        payload.stop = Some(StopFields {
            stop_hook_active: false,
            last_assistant_message: event.output.as_deref(),
            status: event.status,
            error: event.error.as_ref(),
            duration_ms: millis(event.duration),
            usage: event.usage,
            cost_usd: prices.cost(&event.task.labels, &event.usage),
            ended_at: rfc3339(event.ended_at),
        });
        payload
    }

    fn common(name: HookEventName, task: &'a HookTask, session_id: &'a str) -> Self {
        Self {
            hook_event_name: name.as_str(),
            session_id,
            agent_id: task.id,
            agent_type: &task.agent,
            timestamp: rfc3339(SystemTime::now()),
            task_id: task.id,
            parent_id: task.parent_id,
            task: &task.text,
            depth: task.depth,
            background: task.background,
            provider: task.labels.provider.as_deref(),
            provider_kind: task.labels.provider_kind.as_deref(),
            model: task.labels.model.as_deref(),
            created_at: rfc3339(task.created_at),
            queued_ms: millis(task.queued_for),
            stop: None,
        }
    }

    /// The payload as one line of JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // Every field serializes infallibly (strings, numbers, ids).
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A time as RFC 3339 in UTC with milliseconds.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A fresh session id for a host that did not set one.
pub(crate) fn new_session_id() -> String {
    TaskId::new_random().to_string()
}
