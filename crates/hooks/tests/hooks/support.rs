//! Shared helpers: events, a registry with hooks, and a stop signal.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use deputy_registry::{
    HookError, HookStack, HookTask, Registry, SettingsHandle, SubagentSettings, SubagentStartEvent,
    SubagentStopEvent, SubagentStopHook, TaskFailure, TaskId, TaskLabels, TaskSnapshot, TaskSpec,
    TaskStatus, Usage,
};
use tokio::sync::mpsc;

/// A task as hooks see it.
pub(crate) fn hook_task(agent: &str, provider: &str, model: &str) -> HookTask {
    HookTask {
        id: TaskId::new_random(),
        parent_id: None,
        agent: agent.into(),
        labels: TaskLabels {
            provider: Some(provider.into()),
            model: Some(model.into()),
            ..TaskLabels::default()
        },
        text: "Summarise the Go memory model".into(),
        depth: 1,
        background: true,
        created_at: SystemTime::now(),
        queued_for: Duration::from_millis(15),
    }
}

pub(crate) fn start_event(agent: &str) -> SubagentStartEvent {
    SubagentStartEvent {
        task: hook_task(agent, "openai", "gpt-4o"),
    }
}

pub(crate) fn stop_event(task: HookTask, usage: Usage) -> SubagentStopEvent {
    SubagentStopEvent {
        task,
        status: TaskStatus::Completed,
        error: None,
        output: Some("Go has a happens-before model.".into()),
        duration: Duration::from_millis(1200),
        usage,
        ended_at: SystemTime::now(),
    }
}

/// A stop hook that reports each stopped task; put it last in a stack and
/// await [`Stops::next`] to know every earlier stop hook has run.
pub(crate) struct StopSignal(mpsc::UnboundedSender<TaskId>);

pub(crate) struct Stops(mpsc::UnboundedReceiver<TaskId>);

pub(crate) fn stop_signal() -> (Arc<StopSignal>, Stops) {
    let (sender, receiver) = mpsc::unbounded_channel();
    (Arc::new(StopSignal(sender)), Stops(receiver))
}

#[async_trait]
impl SubagentStopHook for StopSignal {
    async fn on_subagent_stop(&self, event: &SubagentStopEvent) -> Result<(), HookError> {
        let _ = self.0.send(event.task.id);
        Ok(())
    }
}

impl Stops {
    pub(crate) async fn next(&mut self) -> TaskId {
        tokio::time::timeout(Duration::from_secs(30), self.0.recv())
            .await
            .expect("a stop within 30 s")
            .expect("the stop signal is alive")
    }
}

pub(crate) fn registry(hooks: HookStack, cap: usize) -> Registry {
    let settings = SubagentSettings::default()
        .with_max_concurrent(cap)
        .unwrap();
    Registry::builder()
        .settings(SettingsHandle::new(settings))
        .hooks(hooks)
        .build()
}

/// What a test task does.
#[derive(Clone)]
pub(crate) enum Work {
    Complete(Usage),
    Fail(Usage),
}

/// Spawns one task on `agent` with these labels and waits for its end.
pub(crate) async fn run(
    registry: &Registry,
    agent: &str,
    provider: &str,
    model: &str,
    work: Work,
) -> TaskSnapshot {
    let spec = TaskSpec::new(agent, "test task")
        .background(true)
        .provider(provider)
        .model(model);
    let spawned = registry
        .spawn(spec, move |task| async move {
            match work {
                Work::Complete(usage) => {
                    task.record_usage(usage);
                    Ok("done".to_owned())
                }
                Work::Fail(usage) => {
                    task.record_usage(usage);
                    Err(TaskFailure::provider("the model is down"))
                }
            }
        })
        .unwrap();
    registry
        .wait(spawned.id, Some(Duration::from_secs(30)))
        .await
        .unwrap()
        .task
}

/// Usage of `input` and `output` tokens.
pub(crate) fn usage(input: u64, output: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        requests: 1,
        ..Usage::default()
    }
}

/// Writes an executable shell script.
#[cfg(unix)]
pub(crate) fn script(dir: &Path, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Whether a process with this pid is alive (and not a zombie we reaped).
#[cfg(unix)]
pub(crate) fn alive(pid: i32) -> bool {
    // /proc/<pid>/stat's third field is the state; Z is a zombie.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Polls `condition` every 10 ms for up to 10 s.
pub(crate) async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    for _ in 0..1000 {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}
