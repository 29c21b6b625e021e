//! The registry at the heart of deputy: it decides when background
//! sub-agents run, keeps their lifecycle honest and hands every result back
//! exactly once.
//!
//! It is the crate every other deputy crate builds on, and it depends on
//! none of them. It owns:
//!
//! * the vocabulary: [`TaskId`], [`TaskStatus`], [`TaskFailure`], [`Usage`];
//! * the `[agent.subagents]` settings ([`RawSubagentSettings`] →
//!   [`SubagentSettings`]) and their live publisher ([`SettingsHandle`]);
//! * admission: a cap on running tasks, a fair FIFO queue with a deadline,
//!   per-agent caps, slot lending for foreground children ([`Registry`]);
//! * the lifecycle: compare-and-set transitions, cascading cancels, panics
//!   caught, time limits, retention and exactly-once delivery of results;
//! * the SubagentStart and SubagentStop hook traits and the order they run
//!   in ([`hook`](crate::SubagentStartHook), [`HookStack`]);
//! * the load-balancing [`Selector`] and its [`LoadTracker`].
//!
//! ```
//! use std::time::Duration;
//! use deputy_registry::{Registry, SettingsHandle, SubagentSettings, TaskSpec, TaskStatus};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let settings = SettingsHandle::new(SubagentSettings::default().with_max_concurrent(2).unwrap());
//! let registry = Registry::builder().settings(settings).build();
//!
//! let spawned = registry
//!     .spawn(TaskSpec::new("researcher", "Summarise Rust").background(true), |task| async move {
//!         Ok(format!("notes on: {}", task.task()))
//!     })
//!     .unwrap();
//!
//! let done = registry.wait(spawned.id, Some(Duration::from_secs(5))).await.unwrap();
//! assert_eq!(done.task.status, TaskStatus::Completed);
//! assert_eq!(done.task.output.as_deref(), Some("notes on: Summarise Rust"));
//! assert!(done.newly_delivered);
//! # }
//! ```

mod backoff;
mod cell;
mod error;
mod event;
mod hook;
mod id;
mod live;
mod load;
mod registry;
mod selector;
mod settings;
mod snapshot;
mod spec;
mod state;
mod status;
mod table;
mod task;
mod usage;

pub use backoff::backoff_delay;
pub use error::{CancelOutcome, SpawnError, UnknownTask};
pub use event::RegistryEvent;
pub use hook::{
    DEFAULT_HOOK_TIMEOUT, HookError, HookEventName, HookStack, HookTask, StartDecision,
    SubagentStartEvent, SubagentStartHook, SubagentStopEvent, SubagentStopHook,
};
pub use id::{ParseTaskIdError, TaskId};
pub use live::SettingsHandle;
pub use load::{AgentLoadSnapshot, Clock, LoadTracker, ManualClock, RunOutcome, TokioClock};
pub use registry::{
    DEFAULT_EVENT_CAPACITY, Registry, RegistryBuilder, RegistryStats, ShutdownReport, Spawned,
    WeakRegistry,
};
pub use selector::{
    AgentCandidate, CAPABILITY_MATCH_POINTS, Selection, SelectionError, SelectionMode,
    SelectionRequest, Selector,
};
pub use settings::{
    RawSubagentSettings, SelectorTuning, SettingError, SettingsError, Strategy, SubagentSettings,
    defaults,
};
pub use snapshot::{TaskFilter, TaskSnapshot, WaitOutcome};
pub use spec::{TaskLabels, TaskSpec};
pub use status::{FailureKind, ParseStatusError, TaskFailure, TaskStatus};
pub use task::TaskContext;
pub use usage::Usage;
