//! Live settings: one publisher, any number of readers, applied at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

use crate::settings::SubagentSettings;

/// Publishes validated [`SubagentSettings`] to every registry built from it.
///
/// Cloning the handle shares the channel. A registry listens for changes and
/// acts on them immediately: a raised `max_concurrent` admits queued tasks
/// oldest first, a lowered one stops new admissions until running tasks drop
/// below it (running tasks are never stopped), and `enabled = false` refuses
/// new spawns while running ones carry on.
///
/// ```
/// use deputy_registry::{SettingsHandle, SubagentSettings};
///
/// let handle = SettingsHandle::new(SubagentSettings::default());
/// let raised = handle.current().with_max_concurrent(32).unwrap();
/// let previous = handle.publish(raised);
/// assert_eq!(previous.max_concurrent(), 10);
/// assert_eq!(handle.current().max_concurrent(), 32);
/// ```
#[derive(Debug, Clone)]
pub struct SettingsHandle {
    sender: Arc<watch::Sender<Arc<SubagentSettings>>>,
    /// Counts publications that changed something, raised after the new
    /// settings are in the channel. A registry compares it with the count
    /// it last applied, one atomic read, to know whether it must look at
    /// the channel at all.
    generation: Arc<AtomicU64>,
}

impl SettingsHandle {
    /// A handle that starts with `settings`.
    pub fn new(settings: SubagentSettings) -> Self {
        let (sender, _receiver) = watch::channel(Arc::new(settings));
        Self {
            sender: Arc::new(sender),
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The settings in force now.
    pub fn current(&self) -> Arc<SubagentSettings> {
        self.sender.borrow().clone()
    }

    /// Replaces the settings for every reader and returns the previous ones.
    ///
    /// Publishing settings equal to the current ones changes nothing and
    /// wakes nobody.
    pub fn publish(&self, settings: SubagentSettings) -> Arc<SubagentSettings> {
        let new = Arc::new(settings);
        let mut previous = None;
        let changed = self.sender.send_if_modified(|current| {
            if **current == *new {
                return false;
            }
            previous = Some(std::mem::replace(current, new.clone()));
            true
        });
        if changed {
            // After the send, so whoever sees the new count finds the new
            // settings in the channel.
            self.generation.fetch_add(1, Ordering::Release);
        }
        previous.unwrap_or(new)
    }

    /// How many changing publications there have been; see `generation`.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A receiver that sees every change from now on.
    pub fn subscribe(&self) -> watch::Receiver<Arc<SubagentSettings>> {
        self.sender.subscribe()
    }
}

impl Default for SettingsHandle {
    fn default() -> Self {
        Self::new(SubagentSettings::default())
    }
}
