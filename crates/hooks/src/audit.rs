//! The audit log: every SubagentStart and SubagentStop as one JSON line.
//!
//! Each line is the [`EventPayload`] that command hooks and webhooks get,
//! so one reader handles all three. A task whose start hooks got as far as
//! the audit log has one start line and one stop line with the same
//! `task_id`; a task denied by a later start hook has both too (its stop
//! says `failed`, `denied_by_hook`). A task denied by an earlier hook, or
//! cancelled before its start hooks reached the audit log, has only its
//! stop line.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use deputy_registry::{
    HookError, StartDecision, SubagentStartEvent, SubagentStartHook, SubagentStopEvent,
    SubagentStopHook,
};

use crate::error::HookConfigError;
use crate::jsonl::{self, JsonlFile};
use crate::payload::{EventPayload, new_session_id};
use crate::price::PriceTable;

/// Writes every start and stop event to a JSONL file.
///
/// ```no_run
/// use std::sync::Arc;
/// use deputy_hooks::AuditLog;
/// use deputy_registry::HookStack;
///
/// let audit = Arc::new(AuditLog::open("deputy-audit.jsonl").unwrap());
/// let hooks = HookStack::new().with_both(audit);
/// # drop(hooks);
/// ```
#[derive(Debug)]
pub struct AuditLog {
    file: JsonlFile,
    session_id: String,
    prices: PriceTable,
}

impl AuditLog {
    /// Opens (or creates) the log at `path`, with a fresh session id and
    /// the built-in prices for `cost_usd`.
    ///
    /// # Errors
    /// The file cannot be opened; the error names it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, HookConfigError> {
        Self::open_with(
            path.as_ref(),
            false,
            new_session_id(),
            PriceTable::builtin(),
        )
    }

    /// Opens the log with every option: `sync` flushes each line to the
    /// disk, `session_id` goes into every line, `prices` fill `cost_usd`.
    ///
    /// # Errors
    /// The file cannot be opened; the error names it.
    pub fn open_with(
        path: &Path,
        sync: bool,
        session_id: String,
        prices: PriceTable,
    ) -> Result<Self, HookConfigError> {
        let file = JsonlFile::open(path, sync).map_err(|error| {
            HookConfigError::one(format!(
                "hooks.audit.path: cannot open {}: {error}",
                path.display()
            ))
        })?;
        Ok(Self {
            file,
            session_id,
            prices,
        })
    }

    /// The log's path.
    pub fn path(&self) -> PathBuf {
        self.file.path().to_owned()
    }

    /// Reads every line of an audit log.
    ///
    /// # Errors
    /// The file cannot be read, or a line is not JSON (the error names it).
    pub fn read_all(path: &Path) -> std::io::Result<Vec<serde_json::Value>> {
        jsonl::read_lines(path)
    }

    async fn write(&self, payload: &EventPayload<'_>) -> Result<(), HookError> {
        self.file.append(payload).await.map_err(|error| {
            HookError::msg(format!(
                "cannot append to the audit log {}: {error}",
                self.file.path().display()
            ))
        })
    }
}

#[async_trait]
impl SubagentStartHook for AuditLog {
    fn name(&self) -> &str {
        "audit"
    }

    async fn on_subagent_start(
        &self,
        event: &SubagentStartEvent,
    ) -> Result<StartDecision, HookError> {
        self.write(&EventPayload::start(event, &self.session_id))
            .await?;
        Ok(StartDecision::Allow)
    }
}

#[async_trait]
impl SubagentStopHook for AuditLog {
    fn name(&self) -> &str {
        "audit"
    }

    async fn on_subagent_stop(&self, event: &SubagentStopEvent) -> Result<(), HookError> {
        self.write(&EventPayload::stop(event, &self.session_id, &self.prices))
            .await
    }
}
