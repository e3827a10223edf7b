//! What the queues homed on this node last said about themselves, for IVR flows that branch on
//! a queue's staffing or wait (a flow step must decide at once, without asking the queue actor).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// One queue's figures, as of its last change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueFigures {
    /// Agents of the queue logged in (available, busy or not ready).
    pub logged_in_agents: u32,
    /// Callers waiting, including those being offered.
    pub waiting: u32,
    /// Estimated wait of a caller joining now, in seconds; unknown before the queue has seen
    /// two answers while callers waited.
    pub estimated_wait_secs: Option<u64>,
}

/// Figures of every queue homed on this node. Cheap to clone.
#[derive(Clone, Default)]
pub struct QueueBoard {
    figures: Arc<RwLock<HashMap<String, QueueFigures>>>,
}

impl QueueBoard {
    pub fn publish(&self, queue: &str, figures: QueueFigures) {
        let mut board = self.figures.write().unwrap_or_else(|e| e.into_inner());
        match board.get_mut(queue) {
            Some(current) => *current = figures,
            None => {
                board.insert(queue.to_owned(), figures);
            }
        }
    }

    /// The queue's figures; `None` for a queue not homed on this node.
    pub fn get(&self, queue: &str) -> Option<QueueFigures> {
        let board = self.figures.read().unwrap_or_else(|e| e.into_inner());
        board.get(queue).copied()
    }
}
