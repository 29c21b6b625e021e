//! The task table: every task the registry holds, by id, in shards.

use std::sync::Arc;

use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use crate::cell::TaskCell;
use crate::id::TaskId;

/// Shards of the table. A spawn inserts into one and a read looks in one,
/// so the spawning thread and the threads reading or evicting other tasks
/// seldom meet on the same lock; 16 is plenty for the two to a few dozen
/// threads a registry sees.
const SHARDS: usize = 16;

/// Task cells by id.
///
/// A shard's lock is a leaf: nothing else is locked while one is held, and
/// every read clones the cell out, so the caller locks the cell's state
/// with no shard held.
#[derive(Debug)]
pub(crate) struct Table {
    shards: [Mutex<FxHashMap<TaskId, Arc<TaskCell>>>; SHARDS],
}

impl Default for Table {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::new(FxHashMap::default())),
        }
    }
}

impl Table {
    fn shard(&self, id: TaskId) -> &Mutex<FxHashMap<TaskId, Arc<TaskCell>>> {
        // A v4 id's low bits are random, so they spread ids evenly.
        let index = (id.as_uuid().as_u128() as usize) % SHARDS;
        &self.shards[index]
    }

    pub(crate) fn insert(&self, cell: Arc<TaskCell>) {
        self.shard(cell.id).lock().insert(cell.id, cell);
    }

    pub(crate) fn get(&self, id: TaskId) -> Option<Arc<TaskCell>> {
        self.shard(id).lock().get(&id).cloned()
    }

    pub(crate) fn remove(&self, id: TaskId) -> Option<Arc<TaskCell>> {
        self.shard(id).lock().remove(&id)
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().len()).sum()
    }

    /// Every cell, in no order; each shard is locked in turn, so tasks
    /// spawned or evicted meanwhile may or may not be in it.
    pub(crate) fn cells(&self) -> Vec<Arc<TaskCell>> {
        let mut cells = Vec::new();
        for shard in &self.shards {
            cells.extend(shard.lock().values().cloned());
        }
        cells
    }
}
