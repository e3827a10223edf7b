//! Addressing actors by id.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, RwLock};

use ractor::ActorRef;

/// A map from an actor's id (a queue name, an agent extension, a call id) to its reference.
///
/// Cloning is cheap and shares the map. Lookups take a read lock held only for a hash probe, so
/// SIP and ACD hot paths never wait on each other for long.
pub struct Directory<K, M> {
    entries: Arc<RwLock<HashMap<K, ActorRef<M>>>>,
}

impl<K, M> Clone for Directory<K, M> {
    fn clone(&self) -> Self {
        Self {
            entries: Arc::clone(&self.entries),
        }
    }
}

impl<K: Eq + Hash, M> Default for Directory<K, M> {
    fn default() -> Self {
        Self {
            entries: Arc::new(RwLock::new(HashMap::new())),
        }
    }
}

impl<K: Eq + Hash + Clone, M> Directory<K, M> {
    /// Registers `actor` under `id`, replacing any earlier entry.
    pub fn insert(&self, id: K, actor: ActorRef<M>) {
        self.write().insert(id, actor);
    }

    /// Removes the entry for `id`, if any.
    pub fn remove(&self, id: &K) -> Option<ActorRef<M>> {
        self.write().remove(id)
    }

    /// The actor registered under `id`.
    pub fn get(&self, id: &K) -> Option<ActorRef<M>> {
        self.read().get(id).cloned()
    }

    /// The ids currently registered.
    pub fn ids(&self) -> Vec<K> {
        self.read().keys().cloned().collect()
    }

    /// How many actors are registered.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no actor is registered.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    // A panic while holding the lock cannot leave the map half-updated (every operation is a
    // single HashMap call), so a poisoned lock is safe to keep using.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<K, ActorRef<M>>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<K, ActorRef<M>>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }
}
