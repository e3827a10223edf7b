//! Switchyard cluster layer.
//!
//! Today: the [`Directory`] through which every actor is addressed by id. The cluster issue turns
//! the same lookup into a placement-aware, cluster-wide one (Raft-replicated placement, QUIC mesh,
//! remote actor messages) without changing the callers.

mod directory;
pub mod mesh;
pub mod placement;
pub mod raft;
pub mod state;
pub mod tls;

pub use directory::Directory;
