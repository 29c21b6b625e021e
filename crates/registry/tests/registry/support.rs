//! Helpers shared by the registry tests.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deputy_registry::{
    RawSubagentSettings, Registry, RegistryEvent, SettingsHandle, Spawned, SubagentSettings,
    TaskFailure, TaskId, TaskSpec,
};
use parking_lot::Mutex;
use tokio::sync::{broadcast, oneshot};

/// Settings from a raw form adjusted by `adjust`.
pub(crate) fn settings(adjust: impl FnOnce(&mut RawSubagentSettings)) -> SubagentSettings {
    let mut raw = RawSubagentSettings::default();
    adjust(&mut raw);
    SubagentSettings::from_raw(raw).unwrap()
}

/// A registry on adjusted settings, with the handle to change them.
pub(crate) fn registry(
    adjust: impl FnOnce(&mut RawSubagentSettings),
) -> (Registry, SettingsHandle) {
    let handle = SettingsHandle::new(settings(adjust));
    let registry = Registry::builder()
        .settings(handle.clone())
        .event_capacity(1 << 16)
        .build();
    (registry, handle)
}

/// Lets every task that can make progress do so, without moving time.
pub(crate) async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

type GateSender = oneshot::Sender<Result<String, TaskFailure>>;

/// Tasks whose work ends only when the test says so.
#[derive(Clone, Default)]
pub(crate) struct Gates {
    senders: Arc<Mutex<HashMap<TaskId, GateSender>>>,
}

impl Gates {
    /// Spawns a task whose work waits for [`Gates::open`].
    pub(crate) fn spawn(
        &self,
        registry: &Registry,
        spec: TaskSpec,
    ) -> Result<Spawned, deputy_registry::SpawnError> {
        let (sender, receiver) = oneshot::channel();
        let spawned = registry.spawn(spec, move |_| async move {
            receiver
                .await
                .unwrap_or_else(|_| Err(TaskFailure::other("gate dropped")))
        })?;
        self.senders.lock().insert(spawned.id, sender);
        Ok(spawned)
    }

    /// Ends the task's work with `result`.
    pub(crate) fn open(&self, id: TaskId, result: Result<String, TaskFailure>) {
        let sender = self
            .senders
            .lock()
            .remove(&id)
            .expect("a gate for this task");
        let _ = sender.send(result);
    }

    /// Ends the task's work with a completion.
    pub(crate) fn complete(&self, id: TaskId) {
        self.open(id, Ok(format!("done {}", id.short())));
    }
}

/// A root run that never ends, to parent tasks whose delivery a test reads.
pub(crate) fn idle_root(registry: &Registry) -> TaskId {
    registry
        .spawn_root(TaskSpec::new("lead", "run"), |_| std::future::pending())
        .unwrap()
        .id
}

/// A background spec for `agent`.
pub(crate) fn bg(agent: &str, text: &str) -> TaskSpec {
    TaskSpec::new(agent, text).background(true)
}

/// Every event received so far.
pub(crate) fn drain(events: &mut broadcast::Receiver<RegistryEvent>) -> Vec<RegistryEvent> {
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    seen
}

/// Ids of tasks in the order they started.
pub(crate) fn started_order(events: &[RegistryEvent]) -> Vec<TaskId> {
    events
        .iter()
        .filter_map(|event| match event {
            RegistryEvent::Started { task_id, .. } => Some(*task_id),
            _ => None,
        })
        .collect()
}

pub(crate) const MS: Duration = Duration::from_millis(1);
