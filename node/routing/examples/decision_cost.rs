//! Cost of one routing decision, per strategy: 1,000 agents across 10 queues.
//!
//! ```sh
//! cargo run --release -p switchyard-routing --example decision_cost
//! ```
//!
//! Each agent has three of the ten queue skills (levels 1-5) and one of three pools; a queue's
//! idle slice holds the agents with its skill (300 of them) or, for the worst case, all 1,000.
//! Each queue routes `skill >= 4 for 10 s, then skill >= 1`, and half the callers are past
//! 10 s. Nothing is removed from the idle slices, so every decision scans a full one.

use std::hint::black_box;
use std::time::Instant;

use switchyard_routing::{
    AgentLoad, AgentProfile, Caller, CallerCandidate, IdleAgent, PoolWeight, QueueRouting,
    Requirement, RouterState, RoutingStep, Skill, Strategy, select_agents, select_caller,
};

const AGENTS: usize = 1_000;
const QUEUES: usize = 10;
const DECISIONS: usize = 200_000;
const NOW_MS: u64 = 1_000_000;

fn skill(q: usize) -> String {
    format!("skill-{q}")
}

fn agents() -> Vec<IdleAgent> {
    (0..AGENTS)
        .map(|i| IdleAgent {
            profile: AgentProfile {
                skills: [0, 3, 7]
                    .iter()
                    .map(|d| Skill::new(skill((i + d) % QUEUES), (1 + (i / 10 + d) % 5) as u8))
                    .collect(),
                pool: ["in-house", "partner-a", "site-b"][i % 3].into(),
                site: ["paris", "lyon"][i % 2].into(),
                ..AgentProfile::new(format!("{}", 2000 + i))
            },
            load: AgentLoad {
                idle_since_ms: (i as u64 * 7_919) % 900_000,
                calls_taken: (i as u64 * 31) % 40,
                talk_ms_total: (i as u64 * 104_729) % 3_600_000,
            },
        })
        .collect()
}

fn routing(q: usize, strategy: Strategy, pools: bool) -> QueueRouting {
    QueueRouting {
        strategy,
        routing: vec![
            RoutingStep {
                requirement: Requirement::new([(skill(q), 4)]),
                for_secs: Some(10),
            },
            RoutingStep {
                requirement: Requirement::new([(skill(q), 1)]),
                for_secs: None,
            },
        ],
        pools: if pools {
            [("in-house", 50), ("partner-a", 30), ("site-b", 20)]
                .iter()
                .map(|&(pool, weight)| PoolWeight {
                    pool: pool.into(),
                    weight,
                })
                .collect()
        } else {
            Vec::new()
        },
        ..QueueRouting::new(format!("queue-{q}"))
    }
}

fn callers() -> Vec<Caller> {
    (0..64)
        .map(|i| Caller {
            call_id: format!("call-{i}"),
            priority: (i % 3) as u8,
            since_ms: NOW_MS - 20_000 + i as u64 * 300,
            entered_ms: NOW_MS - 20_000 + i as u64 * 300,
            preferred: None,
        })
        .collect()
}

/// Nanoseconds per `select_agents` call, cycling over the queues and callers.
fn measure(idle: &[Vec<IdleAgent>], strategy: Strategy, pools: bool) -> f64 {
    let queues: Vec<QueueRouting> = (0..QUEUES).map(|q| routing(q, strategy, pools)).collect();
    let mut states: Vec<RouterState> = (0..QUEUES).map(|q| RouterState::new(q as u64)).collect();
    let callers = callers();
    let mut found = 0usize;
    let start = Instant::now();
    for n in 0..DECISIONS {
        let q = n % QUEUES;
        let sel = select_agents(
            &queues[q],
            &mut states[q],
            &callers[n % callers.len()],
            &idle[q],
            black_box(NOW_MS),
        );
        found += black_box(sel).agents().len();
    }
    let ns = start.elapsed().as_nanos() as f64 / DECISIONS as f64;
    assert!(found >= DECISIONS, "every decision should find an agent");
    ns
}

fn main() {
    let all = agents();
    let by_skill: Vec<Vec<IdleAgent>> = (0..QUEUES)
        .map(|q| {
            all.iter()
                .filter(|a| a.profile.level(&skill(q)) > 0)
                .cloned()
                .collect()
        })
        .collect();
    let everyone: Vec<Vec<IdleAgent>> = vec![all.clone(); QUEUES];
    println!(
        "select_agents, ns per decision ({DECISIONS} decisions; {AGENTS} agents, {QUEUES} queues)"
    );
    println!(
        "{:<16} {:>14} {:>14} {:>18}",
        "strategy", "300 idle", "1,000 idle", "1,000 + 3 pools"
    );
    for strategy in [
        Strategy::LongestIdle,
        Strategy::FewestCalls,
        Strategy::LeastTalkTime,
        Strategy::RoundRobin,
        Strategy::RingAll,
        Strategy::Random,
        Strategy::SkillsBest,
    ] {
        let name = format!("{strategy:?}");
        println!(
            "{name:<16} {:>14.0} {:>14.0} {:>18.0}",
            measure(&by_skill, strategy, false),
            measure(&everyone, strategy, false),
            measure(&everyone, strategy, true),
        );
    }

    // A freed agent choosing among the heads of all ten queues.
    let agent = &all[0].profile;
    let queues: Vec<QueueRouting> = (0..QUEUES)
        .map(|q| routing(q, Strategy::LongestIdle, false))
        .collect();
    let candidates: Vec<CallerCandidate> = callers()
        .iter()
        .take(QUEUES)
        .zip(&queues)
        .map(|(c, q)| c.candidate(q, NOW_MS))
        .collect();
    let start = Instant::now();
    let mut taken = 0usize;
    for _ in 0..DECISIONS {
        taken += select_caller(black_box(agent), black_box(&candidates)).map_or(0, |i| i + 1);
    }
    let ns = start.elapsed().as_nanos() as f64 / DECISIONS as f64;
    assert!(taken > 0);
    println!("select_caller over {QUEUES} queue heads: {ns:.0} ns per decision");
}
