//! Built-in hooks for deputy: metrics, billing, audit log, command hooks and
//! webhooks.
//!
//! They implement the registry's [`SubagentStartHook`] and
//! [`SubagentStopHook`] traits; the registry guarantees one SubagentStop per
//! started task. The hooks themselves arrive with the hooks issue; today this
//! crate only fixes its place in the dependency graph (it depends on
//! `deputy-registry` and never on `deputy-providers`).

pub use deputy_registry::{SubagentStartHook, SubagentStopHook};
