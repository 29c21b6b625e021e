//! The agent runtime of deputy: the tool-calling loop, and the tools that
//! let an orchestrator delegate to sub-agents in the foreground or the
//! background and get every result back exactly once.
//!
//! An [`Agent`] is a model ([`Provider`](deputy_providers::Provider) and
//! model name) with instructions, [`Tool`]s and limits. A [`Runtime`] holds
//! the agents and a [`Registry`](deputy_registry::Registry) that admits
//! their sub-agents. An agent that may call sub-agents gets four tools:
//!
//! * `spawn_agent` starts one, in the foreground (its answer is the result)
//!   or in the background (a task id comes back at once);
//! * `get_task_result` reads or waits for a background result;
//! * `stop_task` cancels one, with everything it started;
//! * `list_tasks` shows the caller's own tasks.
//!
//! Before each model call, finished background results not read yet are
//! handed to the model in one message; a result read with
//! `get_task_result` is never handed over again, and none is dropped. When
//! an agent answers while its background tasks still run, [`OnFinish`]
//! decides what happens to them.
//!
//! ```
//! use deputy_agent::{Agent, Runtime, RunEvent};
//! use deputy_providers::ProviderConfig;
//! use futures::StreamExt as _;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let provider = ProviderConfig::scripted("offline").build(|_| None)?;
//! let runtime = Runtime::builder()
//!     .agent(Agent::builder("lead", provider.clone()).subagents(["*"]).build()?)
//!     .agent(Agent::builder("researcher", provider).build()?)
//!     .build()?;
//!
//! let mut run = runtime.start("lead", "Compare Go and Rust")?;
//! let mut finished_tasks = 0;
//! while let Some(event) = run.next().await {
//!     match event {
//!         RunEvent::TaskFinished { .. } => finished_tasks += 1,
//!         RunEvent::Done { answer, report } => {
//!             assert!(answer.contains("Synthesis"));
//!             assert_eq!(report.tasks.len(), 2);
//!         }
//!         _ => {}
//!     }
//! }
//! assert_eq!(finished_tasks, 2);
//! # Ok(())
//! # }
//! ```

mod agent;
mod agent_loop;
mod delivery;
mod error;
mod event;
mod format;
mod report;
mod run;
mod runtime;
mod task_tools;
mod tool;

pub use agent::{Agent, AgentBuilder, DEFAULT_MAX_TURNS, Subagents};
pub use error::{AgentError, BuildError, RunError};
pub use event::RunEvent;
pub use format::{Window, window};
pub use report::{RunOutput, RunReport, TaskSummary};
pub use run::RunHandle;
pub use runtime::{
    DEFAULT_MAX_DEPTH, DEFAULT_MAX_RESULT_CHARS, DEFAULT_MAX_TOOL_OUTPUT_CHARS, DEFAULT_MAX_WAIT,
    OnFinish, Runtime, RuntimeBuilder, TaskOptions,
};
pub use task_tools::{GET_TASK_RESULT, LIST_TASKS, SPAWN_AGENT, STOP_TASK};
pub use tool::{Tool, ToolContext, ToolError};

/// README.md's Rust code, compiled as doctests so it stays true.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
