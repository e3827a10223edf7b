//! Skills-based routing for Switchyard's ACD: the decisions alone, with no actors, clocks or I/O.
//!
//! Why a crate of its own: routing rules are where contact centres differ most and where bugs
//! cost the most quietly (a caller never offered, a partner paid for calls it never got). As
//! plain functions over plain data they are tested exhaustively in milliseconds, their cost is
//! measured (`examples/decision_cost.rs`), and the state they keep ([`RouterState`]) is
//! replicated with the queue like the rest of the ACD's state (serde and rkyv on everything).
//! Time is always passed in (`now_ms`, Unix ms), randomness comes from a seeded generator.
//!
//! What it decides:
//!
//! - **Which agents a caller is offered to** ([`select_agents`]). Agents carry skills with levels
//!   1-5; a queue's routing steps say what a caller needs and for how long ("billing >= 4 for
//!   10 s, then billing >= 1"): [`requirement_at`] gives the step in force, [`next_change_ms`] /
//!   [`Caller::next_change_at_ms`] when it widens, for a re-evaluation timer. The caller keeps
//!   its place in line while steps widen. A flow may name a preferred agent: until its deadline
//!   only that agent may take the call, then the steps apply, counting from the deadline.
//!   With pools (in-house 70, partner 30), the offers are split by weight while several pools
//!   have an eligible idle agent, and nobody waits for the ratio when only one has.
//!   The [`Strategy`] then picks within the pool.
//! - **Which caller a freed agent takes** ([`select_caller`]) across all its queues, wherever they
//!   are homed: the highest priority, then the longest waiting (earliest virtual start), of
//!   the callers it may take. A VIP (higher priority) who arrives later goes first.
//!
//! Configuration, as part of a `[[queue]]` table ([`QueueRouting`]; check it with
//! [`QueueRouting::validate`], which names the queue and field of what it rejects):
//!
//! ```toml
//! [[queue]]
//! name = "billing"
//! strategy = "skills-best"   # longest-idle (default), fewest-calls, least-talk-time,
//!                            # round-robin, ring-all, random, skills-best
//! routing = [
//!   { skills = { billing = 4 }, for_secs = 10 },    # experts only for 10 s
//!   { skills = { billing = 1, french = 2 } },       # then anyone with billing and some French
//! ]
//! pools = [{ pool = "in-house", weight = 70 }, { pool = "partner-a", weight = 30 }]
//! ```
//!
//! No `routing`: anyone may take the calls. Only the last step may (and must) lack `for_secs`.
//! An agent ([`AgentProfile`]) reads `{ id = "2001", skills = { billing = 5 }, pool =
//! "in-house", site = "paris", team = "b2b" }`.

mod config;
mod model;
mod select;

pub use config::{
    ConfigError, MAX_POOLS, PoolWeight, QueueRouting, RoutingStep, Strategy, next_change_ms,
    requirement_at,
};
pub use model::{
    AgentId, AgentLoad, AgentProfile, CallId, Caller, CallerCandidate, Constraint, IdleAgent,
    LEVELS, PreferredAgent, Requirement, Skill, eligible,
};
pub use select::{RouterState, Selection, select_agents, select_caller};

#[cfg(test)]
mod tests;
