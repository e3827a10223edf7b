//! `switchyard-bench`: the load harness for Switchyard.
//!
//! Simulated callers (UAC) and agents (registering UAS) in one process drive one node or a
//! cluster with the calls a scenario file describes, measure set-up latency, queue wait,
//! outcomes and the RTP each side receives, set the cluster's own figures beside the
//! harness's, watch the harness's own load, and write a JSON summary, a per-interval CSV and
//! an HTML report. See `bench/scenarios/README.md` and `docs/adr/0011-bench-harness.md`.
//!
//! - [`scenario`], [`dist`], [`duration`], [`arrivals`]: what to run; [`hotline`]: callers in
//!   an IVR flow (menu keys, VIP numbers, surveys) and their check against the call records.
//! - [`ua`] (the SIP loop over `switchyard-sip`'s transaction layer), [`caller`], [`agent`],
//!   [`auth`]: the simulated parties.
//! - [`media`], [`rtpstats`], [`sys`]: RTP on one timer-wheel thread, RFC 3550 statistics.
//! - [`stats`], [`monitor`], [`server`], [`summary`], [`report`], [`html`]: measuring and
//!   reporting.
//! - [`runner`], [`hooks`], [`nodes`], [`http`]: running it all.

pub mod agent;
pub mod arrivals;
pub mod auth;
pub mod caller;
pub mod dist;
pub mod duration;
pub mod hooks;
pub mod hotline;
pub mod html;
pub mod http;
pub mod media;
pub mod monitor;
pub mod nodes;
pub mod report;
pub mod rtpstats;
pub mod runner;
pub mod scenario;
pub mod server;
pub mod stats;
pub mod summary;
pub mod sys;
pub mod ua;
