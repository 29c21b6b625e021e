//! The agent runtime of deputy: the tool-calling loop and the tools an
//! orchestrator gets (`spawn_agent`, `get_task_result`, `stop_task`,
//! `list_tasks`).
//!
//! It runs agents on the providers of `deputy-providers` and admits their
//! sub-agents through the `deputy-registry` [`Registry`]. The loop and the
//! tools arrive with the agent runtime issue; today this crate only fixes its
//! place in the dependency graph.

pub use deputy_registry::Registry;
