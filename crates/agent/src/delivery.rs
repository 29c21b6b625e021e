//! Background results handed to the model before its next call.

use deputy_providers::{Message, TASK_RESULTS_HEADER};
use deputy_registry::{TaskSnapshot, TaskStatus};

use crate::format::{human_duration, window};

/// One user-role message that hands `tasks` (finished, not delivered
/// before) to the model: per task its id, agent, status, duration, usage
/// and result or error, each result cut to `max_chars` with a note on how
/// to read the rest.
///
/// The tasks come out of `Registry::take_finished`, which marked them
/// delivered, so none of them is ever handed over again.
pub(crate) fn handover_message(tasks: &[TaskSnapshot], max_chars: usize) -> Message {
    let count = tasks.len();
    let mut text = format!(
        "{TASK_RESULTS_HEADER} {count} background task{} finished. Each result is handed to you once, here; call get_task_result with its task_id to read it again.",
        if count == 1 { "" } else { "s" }
    );
    for task in tasks {
        text.push_str("\n\n");
        text.push_str(&task_block(task, max_chars));
    }
    Message::user(text)
}

fn task_block(task: &TaskSnapshot, max_chars: usize) -> String {
    let body = match task.status {
        TaskStatus::Completed => {
            let output = task.output.as_deref().unwrap_or_default();
            let shown = window(output, 0, max_chars);
            let mut body = shown.text.to_owned();
            if shown.has_more() {
                body.push_str(&format!(
                    "\n[result cut: showing the first {} of {} characters; call get_task_result with task_id \"{}\" and offset {} to read the rest]",
                    shown.end, shown.total, task.id, shown.end
                ));
            }
            body
        }
        TaskStatus::Failed => match &task.failure {
            Some(failure) => format!("error ({}): {}", failure.kind, failure.message),
            None => "error: it failed without a reason".to_owned(),
        },
        TaskStatus::Cancelled => "cancelled before it finished; there is no result".to_owned(),
        TaskStatus::Queued | TaskStatus::Running => {
            format!("still {}", task.status)
        }
    };
    format!(
        "<task id=\"{}\" agent=\"{}\" status=\"{}\" duration=\"{}\" input_tokens=\"{}\" output_tokens=\"{}\">\n{}\n</task>",
        task.id,
        task.agent,
        task.status,
        human_duration(task.elapsed()),
        task.usage.input_tokens + task.usage.cache_read_tokens + task.usage.cache_write_tokens,
        task.usage.output_tokens,
        body.trim_end()
    )
}
