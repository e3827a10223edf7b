//! A queue's routing configuration: strategy, widening steps and pool weights.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::model::{AgentId, LEVELS, Requirement};

/// How a queue picks among the eligible idle agents (of the pool whose turn it is).
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
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Idle for the longest time.
    #[default]
    LongestIdle,
    /// Fewest calls taken, then longest idle.
    FewestCalls,
    /// Least time talking, then longest idle.
    LeastTalkTime,
    /// The next agent after the last one offered, in extension order, wrapping around.
    RoundRobin,
    /// Every eligible idle agent at once; the first to answer takes the call.
    RingAll,
    /// Uniformly at random, from the seeded generator in [`crate::RouterState`].
    Random,
    /// Highest level in the skills the current step asks for (summed), then longest idle.
    SkillsBest,
}

/// One routing step: the requirement, for `for_secs` of waiting (the last step: for good).
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
pub struct RoutingStep {
    #[serde(rename = "skills", default)]
    pub requirement: Requirement,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_secs: Option<u64>,
}

/// A pool's share of the offers while several pools have an eligible idle agent.
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
pub struct PoolWeight {
    pub pool: String,
    pub weight: u32,
}

/// Most pools one queue may split its offers between.
pub const MAX_POOLS: usize = 64;

/// One queue's routing. Empty `routing`: anyone may take its callers; empty `pools`: no split.
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
pub struct QueueRouting {
    /// The queue's name, for error messages.
    pub name: String,
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routing: Vec<RoutingStep>,
    /// Agents of a pool not listed here take calls only when no listed pool has one to offer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<PoolWeight>,
}

/// A configuration serde accepts but routing cannot use; each names the queue (or agent) and
/// the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("queue {queue:?}: routing[{step}].skills.{skill}: level {level} is outside 1..=5")]
    StepLevel {
        queue: String,
        step: usize,
        skill: String,
        level: u8,
    },
    #[error(
        "queue {queue:?}: routing[{step}] comes after routing[{}], which has no for_secs and so never ends",
        .step - 1
    )]
    StepAfterUnbounded { queue: String, step: usize },
    #[error("queue {queue:?}: routing[{step}].for_secs: the last step must have none (it lasts)")]
    LastStepBounded { queue: String, step: usize },
    #[error("queue {queue:?}: routing[{step}].for_secs must be at least 1")]
    ZeroStep { queue: String, step: usize },
    #[error("queue {queue:?}: pools[{index}].weight ({pool:?}) must be at least 1")]
    ZeroWeight {
        queue: String,
        index: usize,
        pool: String,
    },
    #[error("queue {queue:?}: pools[{index}]: pool {pool:?} is listed twice")]
    DuplicatePool {
        queue: String,
        index: usize,
        pool: String,
    },
    #[error("queue {queue:?}: pools: {count} pools, at most 64")]
    TooManyPools { queue: String, count: usize },
    #[error("agent {agent:?}: skills.{skill}: level {level} is outside 1..=5")]
    AgentLevel {
        agent: AgentId,
        skill: String,
        level: u8,
    },
}

impl QueueRouting {
    /// Longest-idle, anyone, no pool split.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            strategy: Strategy::default(),
            routing: Vec::new(),
            pools: Vec::new(),
        }
    }

    /// Checks what serde cannot: levels, step durations and order, pool weights.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let queue = || self.name.clone();
        let last = self.routing.len().saturating_sub(1);
        for (step, s) in self.routing.iter().enumerate() {
            if let Some(bad) = s
                .requirement
                .skills
                .iter()
                .find(|k| !LEVELS.contains(&k.level))
            {
                return Err(ConfigError::StepLevel {
                    queue: queue(),
                    step,
                    skill: bad.name.clone(),
                    level: bad.level,
                });
            }
            if step > 0 && self.routing[step - 1].for_secs.is_none() {
                return Err(ConfigError::StepAfterUnbounded {
                    queue: queue(),
                    step,
                });
            }
            match s.for_secs {
                Some(0) => {
                    return Err(ConfigError::ZeroStep {
                        queue: queue(),
                        step,
                    });
                }
                Some(_) if step == last => {
                    return Err(ConfigError::LastStepBounded {
                        queue: queue(),
                        step,
                    });
                }
                _ => {}
            }
        }
        if self.pools.len() > MAX_POOLS {
            return Err(ConfigError::TooManyPools {
                queue: queue(),
                count: self.pools.len(),
            });
        }
        let mut seen = HashSet::new();
        for (index, p) in self.pools.iter().enumerate() {
            if p.weight == 0 {
                return Err(ConfigError::ZeroWeight {
                    queue: queue(),
                    index,
                    pool: p.pool.clone(),
                });
            }
            if !seen.insert(p.pool.as_str()) {
                return Err(ConfigError::DuplicatePool {
                    queue: queue(),
                    index,
                    pool: p.pool.clone(),
                });
            }
        }
        Ok(())
    }
}

/// The step in force after `waited_ms` of waiting: each bounded step lasts its `for_secs`,
/// the last one for good (also when it is bounded, which [`QueueRouting::validate`] rejects).
/// No steps: anyone.
pub fn requirement_at(steps: &[RoutingStep], waited_ms: u64) -> &Requirement {
    let mut end = 0u64;
    for step in steps {
        match step.for_secs {
            Some(secs) => {
                end = end.saturating_add(secs.saturating_mul(1000));
                if waited_ms < end {
                    return &step.requirement;
                }
            }
            None => return &step.requirement,
        }
    }
    static ANYONE: Requirement = Requirement::ANYONE;
    steps.last().map_or(&ANYONE, |s| &s.requirement)
}

/// The waiting time (ms) at which the step in force after `waited_ms` gives way to the next;
/// `None` in the last step.
pub fn next_change_ms(steps: &[RoutingStep], waited_ms: u64) -> Option<u64> {
    let mut end = 0u64;
    for (i, step) in steps.iter().enumerate() {
        end = end.saturating_add(step.for_secs?.saturating_mul(1000));
        if waited_ms < end {
            return (i + 1 < steps.len()).then_some(end);
        }
    }
    None
}
