//! The data decisions are made on: skills, requirements, agents and callers.

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, QueueRouting, next_change_ms, requirement_at};

/// An agent's extension, e.g. `"2001"`.
pub type AgentId = String;
/// Switchyard's own call id.
pub type CallId = String;

/// Skill levels run from 1 (can take the call) to 5 (expert).
pub const LEVELS: std::ops::RangeInclusive<u8> = 1..=5;

/// A named skill at a level in [`LEVELS`]: what an agent has, or what a step asks for at least.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct Skill {
    pub name: String,
    pub level: u8,
}

impl Skill {
    pub fn new(name: impl Into<String>, level: u8) -> Self {
        Self {
            name: name.into(),
            level,
        }
    }
}

/// Skills as a TOML/JSON map, `{ billing = 4, french = 2 }`, kept as a list sorted by name.
mod skill_map {
    use std::collections::BTreeMap;

    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Skill;

    pub fn serialize<S: Serializer>(skills: &[Skill], s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(skills.len()))?;
        for skill in skills {
            map.serialize_entry(&skill.name, &skill.level)?;
        }
        map.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Skill>, D::Error> {
        Ok(BTreeMap::<String, u8>::deserialize(d)?
            .into_iter()
            .map(|(name, level)| Skill { name, level })
            .collect())
    }
}

/// What a caller needs right now: every listed skill at its level or above. Empty: anyone.
#[derive(
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(transparent)]
pub struct Requirement {
    #[serde(with = "skill_map")]
    pub skills: Vec<Skill>,
}

impl Requirement {
    /// Any agent will do.
    pub const ANYONE: Requirement = Requirement { skills: Vec::new() };

    /// `Requirement::new([("billing", 4)])`: billing at level 4 or above.
    pub fn new<N: Into<String>>(skills: impl IntoIterator<Item = (N, u8)>) -> Self {
        Self {
            skills: skills
                .into_iter()
                .map(|(name, level)| Skill::new(name, level))
                .collect(),
        }
    }
}

/// Whether `agent` has every skill `requirement` lists, each at its level or above.
pub fn eligible(agent: &AgentProfile, requirement: &Requirement) -> bool {
    requirement
        .skills
        .iter()
        .all(|need| agent.level(&need.name) >= need.level)
}

/// Who an agent is, as routing sees it (configuration, changes rarely).
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct AgentProfile {
    pub id: AgentId,
    #[serde(default, with = "skill_map")]
    pub skills: Vec<Skill>,
    /// The pool the agent belongs to (in-house, a partner), for [`QueueRouting::pools`].
    #[serde(default)]
    pub pool: String,
    #[serde(default)]
    pub site: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
}

impl AgentProfile {
    /// A profile with no skills, pool, site or team.
    pub fn new(id: impl Into<AgentId>) -> Self {
        Self {
            id: id.into(),
            skills: Vec::new(),
            pool: String::new(),
            site: String::new(),
            team: None,
        }
    }

    /// The agent's level in `skill`, 0 when it lacks it.
    pub fn level(&self, skill: &str) -> u8 {
        self.skills
            .iter()
            .find(|s| s.name == skill)
            .map_or(0, |s| s.level)
    }

    /// Checks the skill levels, naming the agent and the skill.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.skills.iter().find(|s| !LEVELS.contains(&s.level)) {
            Some(s) => Err(ConfigError::AgentLevel {
                agent: self.id.clone(),
                skill: s.name.clone(),
                level: s.level,
            }),
            None => Ok(()),
        }
    }
}

/// What the load-based strategies compare; kept by the agent actor, across all its queues.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct AgentLoad {
    /// Unix ms since which the agent has been idle (longest-idle and every tie-break).
    pub idle_since_ms: u64,
    /// Calls answered (fewest-calls).
    pub calls_taken: u64,
    /// Milliseconds spent connected, summed over those calls (least-talk-time).
    pub talk_ms_total: u64,
}

/// An agent that is Available for the queue making the decision.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct IdleAgent {
    pub profile: AgentProfile,
    pub load: AgentLoad,
}

/// The agent a flow asked for ("account manager first"), and until when only they may take
/// the call.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct PreferredAgent {
    pub agent: AgentId,
    /// Unix ms; the queue's routing steps start here.
    pub until_ms: u64,
}

/// A waiting caller, as routing sees it.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct Caller {
    pub call_id: CallId,
    /// Higher is served first.
    pub priority: u8,
    /// Unix ms of the first entry into any queue (the virtual start time): the caller's place
    /// in line, kept across overflow and across the widening of steps.
    pub since_ms: u64,
    /// Unix ms of the entry into this queue: its routing steps count from here.
    pub entered_ms: u64,
    pub preferred: Option<PreferredAgent>,
}

/// Who may take a caller at a given moment, borrowed from the caller and its queue's routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InForce<'a> {
    /// Only this agent (the preferred agent's window is open).
    Agent(&'a str),
    /// Any agent meeting the requirement of the current step.
    Skills(&'a Requirement),
}

impl Caller {
    /// Unix ms from which the routing steps count: entry into the queue, or the end of the
    /// preferred agent's window if that is later.
    fn steps_start_ms(&self) -> u64 {
        self.preferred
            .as_ref()
            .map_or(self.entered_ms, |p| p.until_ms.max(self.entered_ms))
    }

    pub(crate) fn in_force<'a>(&'a self, routing: &'a QueueRouting, now_ms: u64) -> InForce<'a> {
        match &self.preferred {
            Some(p) if now_ms < p.until_ms => InForce::Agent(&p.agent),
            _ => {
                let waited = now_ms.saturating_sub(self.steps_start_ms());
                InForce::Skills(requirement_at(&routing.routing, waited))
            }
        }
    }

    /// Unix ms at which who may take this caller next changes (the preferred window closes or a
    /// step widens), for the queue's re-evaluation timer; `None` once in the last step.
    pub fn next_change_at_ms(&self, routing: &QueueRouting, now_ms: u64) -> Option<u64> {
        if let Some(p) = &self.preferred
            && now_ms < p.until_ms
        {
            return Some(p.until_ms);
        }
        let start = self.steps_start_ms();
        next_change_ms(&routing.routing, now_ms.saturating_sub(start)).map(|w| start + w)
    }

    /// This caller as a candidate for [`crate::select_caller`], with what is in force at `now_ms`.
    pub fn candidate(&self, routing: &QueueRouting, now_ms: u64) -> CallerCandidate {
        CallerCandidate {
            call_id: self.call_id.clone(),
            priority: self.priority,
            since_ms: self.since_ms,
            constraint: match self.in_force(routing, now_ms) {
                InForce::Agent(id) => Constraint::Agent(id.to_owned()),
                InForce::Skills(r) => Constraint::Skills(r.clone()),
            },
        }
    }
}

/// Who may take a candidate caller.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Constraint {
    /// Only this agent (preferred agent, window open).
    Agent(AgentId),
    /// Any agent meeting this requirement.
    Skills(Requirement),
}

impl Constraint {
    pub fn admits(&self, agent: &AgentProfile) -> bool {
        match self {
            Self::Agent(id) => agent.id == *id,
            Self::Skills(r) => eligible(agent, r),
        }
    }
}

/// The head of one of an agent's queues, offered to that agent when it frees up; it may cross
/// the mesh from a queue homed on another node.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct CallerCandidate {
    pub call_id: CallId,
    pub priority: u8,
    /// Virtual start time ([`Caller::since_ms`]).
    pub since_ms: u64,
    pub constraint: Constraint,
}
