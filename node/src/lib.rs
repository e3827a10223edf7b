//! The Switchyard node: SIP, calls, ACD, API and storage in one process.
//!
//! Where things live:
//! - [`config`]: the TOML configuration.
//! - [`cluster`]: this node's Raft and QUIC mesh membership, and the cluster API.
//! - [`node`]: start-up and shutdown, and the [`node::NodeContext`] every actor shares.
//! - [`sip`]: sockets and the endpoint task driving the sans-IO SIP stack (`switchyard-sip`).
//! - [`registrar`]: REGISTER, digest authentication, bindings.
//! - [`call`]: one actor per call, the back-to-back user agent.
//! - [`acd`]: queue and agent actors.
//! - [`remote`]: queue, agent and call actors across the cluster (hosting by placement, proxies,
//!   remote messages).
//! - [`failover`]: calls and agents copied to standby nodes, taken over when a node fails.
//! - [`cdr`]: call records and their store.
//! - [`api`]: the HTTP API.

pub mod acd;
pub mod api;
pub mod call;
pub mod cdr;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod failover;
pub mod flows;
pub mod node;
pub mod registrar;
pub mod remote;
pub mod sip;
pub mod time;
