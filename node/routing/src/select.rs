//! The two decisions: which agents a caller is offered to, and which caller a freed agent takes.

use std::cmp::{Ordering, Reverse};

use serde::{Deserialize, Serialize};

use crate::config::{MAX_POOLS, QueueRouting, Strategy};
use crate::model::{AgentProfile, Caller, CallerCandidate, IdleAgent, InForce, eligible};

/// What a queue's decisions remember between offers: the round-robin cursor, the pools'
/// credits and the random generator. Replicated with the queue, so a standby continues the
/// same sequence. It follows its [`QueueRouting`]: the credits restart when the pool list
/// changes length.
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
pub struct RouterState {
    /// Id of the agent round-robin offered to last.
    cursor: String,
    /// Smooth weighted round robin credits, one per configured pool.
    credits: Vec<i64>,
    /// splitmix64 state.
    rng: u64,
}

impl RouterState {
    /// `seed` starts the generator of the random strategy.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: seed,
            ..Self::default()
        }
    }

    /// Uniform in `0..n` (splitmix64, then multiply-shift: a bias of n / 2^64 at most).
    fn below(&mut self, n: usize) -> usize {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((u128::from(z) * n as u128) >> 64) as usize
    }
}

/// The agents to offer a caller to, as indices into the idle slice given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// No idle agent may take the caller now: it keeps its place.
    None,
    One(usize),
    /// Ring-all: every one of them at once (one or more).
    All(Vec<usize>),
}

impl Selection {
    /// The chosen indices, whichever the variant.
    pub fn agents(&self) -> &[usize] {
        match self {
            Self::None => &[],
            Self::One(i) => std::slice::from_ref(i),
            Self::All(v) => v,
        }
    }
}

/// Which agents a selection draws from.
#[derive(Clone, Copy)]
enum Group<'a> {
    /// No pool split configured.
    All,
    /// The pool whose turn it is.
    Pool(&'a str),
    /// Agents of pools the queue does not list (no listed pool had one).
    Unlisted,
}

impl Group<'_> {
    fn contains(self, routing: &QueueRouting, agent: &AgentProfile) -> bool {
        match self {
            Self::All => true,
            Self::Pool(pool) => agent.pool == pool,
            Self::Unlisted => !routing.pools.iter().any(|p| p.pool == agent.pool),
        }
    }
}

/// Picks the agents `caller` is offered to from the queue's `idle` agents at `now_ms`.
///
/// While the caller's preferred-agent window is open, only that agent may be chosen (whatever
/// its skills). Otherwise the agents meeting the step in force are considered: with pools
/// configured, the pool comes first (smooth weighted round robin among the pools that have such
/// an agent right now, so the split follows the weights when several do and nobody waits when
/// one does), then the strategy picks within it. Ties go to the longest idle, then the smaller
/// id. Allocates only for ring-all (and when the pool list changed).
///
/// `state` moves on at selection (the pool's turn, the round-robin cursor, the random draw): when
/// a reservation fails, leave that agent out of `idle` and select again; the split then stays
/// within a call of the weights.
pub fn select_agents(
    routing: &QueueRouting,
    state: &mut RouterState,
    caller: &Caller,
    idle: &[IdleAgent],
    now_ms: u64,
) -> Selection {
    let requirement = match caller.in_force(routing, now_ms) {
        InForce::Agent(id) => {
            return idle
                .iter()
                .position(|a| a.profile.id == id)
                .map_or(Selection::None, Selection::One);
        }
        InForce::Skills(requirement) => requirement,
    };
    let Some(group) = choose_group(routing, state, idle, |a| eligible(a, requirement)) else {
        return Selection::None;
    };
    let admits =
        |a: &IdleAgent| group.contains(routing, &a.profile) && eligible(&a.profile, requirement);
    let one = |i: Option<usize>| i.map_or(Selection::None, Selection::One);
    match routing.strategy {
        Strategy::LongestIdle => one(best(idle, admits, |a| {
            (a.load.idle_since_ms, &a.profile.id)
        })),
        Strategy::FewestCalls => one(best(idle, admits, |a| {
            (a.load.calls_taken, a.load.idle_since_ms, &a.profile.id)
        })),
        Strategy::LeastTalkTime => one(best(idle, admits, |a| {
            (a.load.talk_ms_total, a.load.idle_since_ms, &a.profile.id)
        })),
        Strategy::SkillsBest => one(best(idle, admits, |a| {
            let score: u32 = requirement
                .skills
                .iter()
                .map(|s| u32::from(a.profile.level(&s.name)))
                .sum();
            (Reverse(score), a.load.idle_since_ms, &a.profile.id)
        })),
        Strategy::RoundRobin => one(round_robin(state, idle, admits)),
        Strategy::Random => {
            let count = idle.iter().filter(|a| admits(a)).count();
            if count == 0 {
                return Selection::None;
            }
            let nth = state.below(count);
            one(idle
                .iter()
                .enumerate()
                .filter(|(_, a)| admits(a))
                .nth(nth)
                .map(|(i, _)| i))
        }
        Strategy::RingAll => {
            let all: Vec<usize> = (0..idle.len()).filter(|&i| admits(&idle[i])).collect();
            if all.is_empty() {
                Selection::None
            } else {
                Selection::All(all)
            }
        }
    }
}

/// The pool to draw from, charging its turn; `None` when no idle agent qualifies.
fn choose_group<'r>(
    routing: &'r QueueRouting,
    state: &mut RouterState,
    idle: &[IdleAgent],
    qualifies: impl Fn(&AgentProfile) -> bool,
) -> Option<Group<'r>> {
    let pools = &routing.pools[..routing.pools.len().min(MAX_POOLS)];
    if pools.is_empty() {
        return Some(Group::All);
    }
    if state.credits.len() != pools.len() {
        state.credits = vec![0; pools.len()];
    }
    let every = u64::MAX >> (64 - pools.len());
    let mut present = 0u64;
    let mut unlisted = false;
    for agent in idle.iter().map(|a| &a.profile) {
        let pool = pools.iter().position(|p| p.pool == agent.pool);
        if pool.map_or(unlisted, |i| present & (1 << i) != 0) || !qualifies(agent) {
            continue;
        }
        match pool {
            Some(i) => {
                present |= 1 << i;
                if present == every {
                    break;
                }
            }
            None => unlisted = true,
        }
    }
    if present == 0 {
        return unlisted.then_some(Group::Unlisted);
    }
    // Smooth weighted round robin over the pools present: each gains its weight, the richest
    // wins and pays the sum. Absent pools neither gain nor pay, so they are owed nothing later.
    let mut total = 0i64;
    let mut winner = 0;
    let mut first = true;
    for (i, p) in pools.iter().enumerate() {
        if present & (1 << i) == 0 {
            continue;
        }
        total += i64::from(p.weight);
        state.credits[i] += i64::from(p.weight);
        if first || state.credits[i] > state.credits[winner] {
            winner = i;
            first = false;
        }
    }
    state.credits[winner] -= total;
    Some(Group::Pool(&pools[winner].pool))
}

/// The admitted agent with the smallest key.
fn best<'a, K: Ord>(
    idle: &'a [IdleAgent],
    admits: impl Fn(&IdleAgent) -> bool,
    key: impl Fn(&'a IdleAgent) -> K,
) -> Option<usize> {
    let mut best: Option<(usize, K)> = None;
    for (i, agent) in idle.iter().enumerate() {
        if !admits(agent) {
            continue;
        }
        let k = key(agent);
        if best.as_ref().is_none_or(|(_, b)| k < *b) {
            best = Some((i, k));
        }
    }
    best.map(|(i, _)| i)
}

/// Extension order: shorter ids first, then lexicographic (numeric order for extensions).
fn id_order(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// The first admitted agent after the cursor in extension order, else the first of all; moves
/// the cursor to it (reusing the cursor's buffer).
fn round_robin(
    state: &mut RouterState,
    idle: &[IdleAgent],
    admits: impl Fn(&IdleAgent) -> bool,
) -> Option<usize> {
    let mut first: Option<usize> = None;
    let mut next: Option<usize> = None;
    for (i, agent) in idle.iter().enumerate() {
        if !admits(agent) {
            continue;
        }
        let id = agent.profile.id.as_str();
        let before = |j: Option<usize>| j.is_none_or(|j| id_order(id, &idle[j].profile.id).is_lt());
        if before(first) {
            first = Some(i);
        }
        if id_order(id, &state.cursor).is_gt() && before(next) {
            next = Some(i);
        }
    }
    let pick = next.or(first)?;
    state.cursor.clear();
    state.cursor.push_str(&idle[pick].profile.id);
    Some(pick)
}

/// The caller an agent who frees up takes among the heads of all its queues: of those it may
/// take, the highest priority, then the earliest virtual start, then the smaller call id.
pub fn select_caller(agent: &AgentProfile, candidates: &[CallerCandidate]) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.constraint.admits(agent))
        .min_by(|(_, a), (_, b)| {
            b.priority
                .cmp(&a.priority)
                .then(a.since_ms.cmp(&b.since_ms))
                .then_with(|| a.call_id.cmp(&b.call_id))
        })
        .map(|(i, _)| i)
}
