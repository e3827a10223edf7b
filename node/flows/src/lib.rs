//! IVR call flows and opening-hours schedules for Switchyard, sans-IO.
//!
//! Call flows are data, not code: a [`FlowSet`] lives in the cluster's replicated configuration
//! (TOML in a node's file, JSON through the API), so operators change a hotline's menus, hours
//! and VIP lists live, without a restart. [`validate`] checks a set against the queues, trunks and
//! prompts the cluster has before it is accepted, reporting every problem with its flow, step and
//! field, because a flow that breaks only when a caller reaches the broken step is a hotline down.
//!
//! A caller's progress is a [`FlowRun`]: plain data fed events (start, digits, prompt and timer
//! completions) with the time and a read-only view of the queues injected, returning commands
//! (play, stop, start a timer, queue, transfer, hang up). Like the SIP transaction layer, it owns
//! no sockets, tasks or clocks, so every transition is tested without media or time passing, and
//! the run is copied to the call's standby with the rest of the call (it derives rkyv): a caller
//! whose node dies resumes at the same step ([`FlowRun::resume`]).
//!
//! A digit pressed while a prompt plays stops it and is acted on at once (barge-in); one pressed
//! during a play step is kept for the menu or collect step that follows (type-ahead).
//! [`Schedule`]s evaluate opening hours, holidays and a manual override in a named time zone (the
//! tz database is compiled in: the node runs `FROM scratch`). [`announce`] and [`read_number`]
//! compose spoken numbers from recorded prompts in English and Mandarin.
//!
//! ```toml
//! [[flow]]
//! name = "main"
//! start = "welcome"
//! language = "zh"
//! [flow.steps.welcome]
//! play = ["welcome"]
//! next = "menu"
//! [flow.steps.menu]
//! menu = { prompt = ["menu"], options = { "1" = "billing", "0" = "general" }, on_timeout = "general", on_invalid = "general" }
//! [flow.steps.billing]
//! queue = { name = "billing" }
//! [flow.steps.general]
//! branch_time = { schedule = "general", open = "general-queue", closed = "closed" }
//! [flow.steps.general-queue]
//! queue = { name = "general" }
//! [flow.steps.closed]
//! hangup = { prompt = ["closed"], disposition = "closed" }
//!
//! [[schedule]]
//! name = "general"
//! time_zone = "Asia/Shanghai"
//! hours = [{ open = "08:30", close = "22:30" }]
//! holidays = ["2026-10-01"]
//! ```

mod announce;
mod model;
mod numbers;
mod run;
mod schedule;
mod validate;

pub use announce::{announce, read_number};
pub use model::{
    BranchCaller, BranchQueue, BranchTime, BranchVar, Collect, Flow, FlowSet, Hangup, Menu, Queue,
    Set, Step, StepKind, Transfer,
};
pub use numbers::{NumberList, NumberPattern};
pub use run::{FlowCommand, FlowEnv, FlowEvent, FlowRun, Phase, PreferredAgent, SURVEY_VAR};
pub use schedule::{OpeningHours, Override, Schedule, ScheduleState, Weekday};
pub use validate::{Catalog, FlowError, Subject, validate};
