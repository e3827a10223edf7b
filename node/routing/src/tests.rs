use std::collections::BTreeMap;

use super::*;

fn agent(id: &str, skills: &[(&str, u8)], idle_since_ms: u64) -> IdleAgent {
    IdleAgent {
        profile: AgentProfile {
            skills: skills.iter().map(|&(n, l)| Skill::new(n, l)).collect(),
            ..AgentProfile::new(id)
        },
        load: AgentLoad {
            idle_since_ms,
            ..AgentLoad::default()
        },
    }
}

fn in_pool(mut a: IdleAgent, pool: &str) -> IdleAgent {
    a.profile.pool = pool.into();
    a
}

fn caller(call_id: &str, priority: u8, since_ms: u64) -> Caller {
    Caller {
        call_id: call_id.into(),
        priority,
        since_ms,
        entered_ms: since_ms,
        preferred: None,
    }
}

fn queue(strategy: Strategy) -> QueueRouting {
    QueueRouting {
        strategy,
        ..QueueRouting::new("support")
    }
}

/// billing >= 4 for 10 s, then billing >= 1.
fn billing_steps() -> Vec<RoutingStep> {
    vec![
        RoutingStep {
            requirement: Requirement::new([("billing", 4)]),
            for_secs: Some(10),
        },
        RoutingStep {
            requirement: Requirement::new([("billing", 1)]),
            for_secs: None,
        },
    ]
}

fn pick(q: &QueueRouting, state: &mut RouterState, idle: &[IdleAgent]) -> Selection {
    select_agents(q, state, &caller("c1", 0, 0), idle, 0)
}

/// The ids of the selected agents.
fn ids(sel: &Selection, idle: &[IdleAgent]) -> Vec<String> {
    sel.agents()
        .iter()
        .map(|&i| idle[i].profile.id.clone())
        .collect()
}

#[test]
fn eligibility_needs_every_skill_at_its_level() {
    let a = agent("2001", &[("billing", 3), ("french", 2)], 0).profile;
    assert!(eligible(&a, &Requirement::ANYONE));
    assert!(eligible(&a, &Requirement::new([("billing", 3)])));
    assert!(eligible(
        &a,
        &Requirement::new([("billing", 1), ("french", 2)])
    ));
    assert!(!eligible(&a, &Requirement::new([("billing", 4)])));
    assert!(!eligible(
        &a,
        &Requirement::new([("billing", 1), ("german", 1)])
    ));
}

#[test]
fn longest_idle_picks_the_earliest_idle_since() {
    let idle = [
        agent("a", &[], 300),
        agent("b", &[], 100),
        agent("c", &[], 200),
    ];
    let mut s = RouterState::default();
    assert_eq!(
        pick(&queue(Strategy::LongestIdle), &mut s, &idle),
        Selection::One(1)
    );
    assert_eq!(
        pick(&queue(Strategy::LongestIdle), &mut s, &[]),
        Selection::None
    );
}

#[test]
fn fewest_calls_then_longest_idle() {
    let mut idle = [
        agent("a", &[], 100),
        agent("b", &[], 300),
        agent("c", &[], 200),
    ];
    idle[0].load.calls_taken = 5;
    idle[1].load.calls_taken = 2;
    idle[2].load.calls_taken = 2;
    let mut s = RouterState::default();
    assert_eq!(
        pick(&queue(Strategy::FewestCalls), &mut s, &idle),
        Selection::One(2)
    );
}

#[test]
fn least_talk_time_then_longest_idle() {
    let mut idle = [
        agent("a", &[], 100),
        agent("b", &[], 300),
        agent("c", &[], 200),
    ];
    idle[0].load.talk_ms_total = 90_000;
    idle[1].load.talk_ms_total = 10_000;
    idle[2].load.talk_ms_total = 10_001;
    let mut s = RouterState::default();
    assert_eq!(
        pick(&queue(Strategy::LeastTalkTime), &mut s, &idle),
        Selection::One(1)
    );
}

#[test]
fn round_robin_goes_round_in_extension_order_and_skips_the_ineligible() {
    let mut q = queue(Strategy::RoundRobin);
    q.routing = vec![RoutingStep {
        requirement: Requirement::new([("billing", 1)]),
        for_secs: None,
    }];
    // Slice order and idle times do not matter; "9" comes before "10" (numeric order).
    let idle = [
        agent("10", &[("billing", 1)], 0),
        agent("9", &[("billing", 2)], 5),
        agent("11", &[], 1),
        agent("12", &[("billing", 5)], 9),
    ];
    let mut s = RouterState::default();
    let order: Vec<String> = (0..5)
        .map(|_| ids(&pick(&q, &mut s, &idle), &idle).remove(0))
        .collect();
    assert_eq!(order, ["9", "10", "12", "9", "10"]);
    // The agent after the cursor left: the next one takes its turn.
    let fewer = [idle[0].clone(), idle[1].clone()];
    assert_eq!(ids(&pick(&q, &mut s, &fewer), &fewer), ["9"]);
}

#[test]
fn ring_all_offers_every_eligible_idle_agent() {
    let mut q = queue(Strategy::RingAll);
    q.routing = billing_steps();
    let idle = [
        agent("a", &[("billing", 4)], 0),
        agent("b", &[("billing", 1)], 0),
        agent("c", &[("billing", 5)], 0),
    ];
    let mut s = RouterState::default();
    assert_eq!(pick(&q, &mut s, &idle), Selection::All(vec![0, 2]));
    let late = select_agents(&q, &mut s, &caller("c1", 0, 0), &idle, 10_000);
    assert_eq!(late, Selection::All(vec![0, 1, 2]));
    assert_eq!(pick(&q, &mut s, &idle[1..2]), Selection::None);
}

#[test]
fn random_is_deterministic_for_a_seed_and_reaches_every_agent() {
    let q = queue(Strategy::Random);
    let idle: Vec<IdleAgent> = (0..5).map(|i| agent(&format!("{i}"), &[], 0)).collect();
    let draw = |seed| {
        let mut s = RouterState::new(seed);
        (0..500)
            .map(|_| pick(&q, &mut s, &idle).agents()[0])
            .collect::<Vec<_>>()
    };
    let a = draw(7);
    assert_eq!(a, draw(7));
    assert_ne!(a, draw(8));
    for i in 0..5 {
        let n = a.iter().filter(|&&x| x == i).count();
        assert!((60..=140).contains(&n), "agent {i} drawn {n} times of 500");
    }
}

#[test]
fn skills_best_takes_the_highest_level_then_the_longest_idle() {
    let mut q = queue(Strategy::SkillsBest);
    q.routing = vec![RoutingStep {
        requirement: Requirement::new([("billing", 2)]),
        for_secs: None,
    }];
    let idle = [
        agent("a", &[("billing", 3)], 0),
        agent("b", &[("billing", 5)], 500),
        agent("c", &[("billing", 5)], 400),
        agent("d", &[("billing", 1)], 0),
    ];
    let mut s = RouterState::default();
    assert_eq!(pick(&q, &mut s, &idle), Selection::One(2));
    // Several skills: the levels add up.
    q.routing[0].requirement = Requirement::new([("billing", 1), ("french", 1)]);
    let idle = [
        agent("a", &[("billing", 5), ("french", 1)], 0),
        agent("b", &[("billing", 4), ("french", 3)], 100),
    ];
    assert_eq!(pick(&q, &mut s, &idle), Selection::One(1));
}

#[test]
fn a_step_widens_at_exactly_its_end() {
    let mut q = queue(Strategy::LongestIdle);
    q.routing = billing_steps();
    let mut s = RouterState::default();
    let c = Caller {
        entered_ms: 50_000,
        ..caller("c1", 0, 1_000)
    };
    let level2 = [agent("2", &[("billing", 2)], 0)];
    let level5 = [agent("5", &[("billing", 5)], 0)];
    assert_eq!(
        select_agents(&q, &mut s, &c, &level2, 59_999),
        Selection::None
    );
    assert_eq!(
        select_agents(&q, &mut s, &c, &level2, 60_000),
        Selection::One(0)
    );
    assert_eq!(
        select_agents(&q, &mut s, &c, &level5, 50_000),
        Selection::One(0)
    );
    // The timer the queue sets to re-evaluate, and nothing after the last step.
    assert_eq!(c.next_change_at_ms(&q, 50_000), Some(60_000));
    assert_eq!(c.next_change_at_ms(&q, 60_000), None);
}

#[test]
fn requirement_at_and_next_change_walk_the_steps() {
    let steps = billing_steps();
    assert_eq!(requirement_at(&steps, 0), &steps[0].requirement);
    assert_eq!(requirement_at(&steps, 9_999), &steps[0].requirement);
    assert_eq!(requirement_at(&steps, 10_000), &steps[1].requirement);
    assert_eq!(requirement_at(&steps, u64::MAX), &steps[1].requirement);
    assert_eq!(next_change_ms(&steps, 0), Some(10_000));
    assert_eq!(next_change_ms(&steps, 10_000), None);
    assert_eq!(requirement_at(&[], 5), &Requirement::ANYONE);
    assert_eq!(next_change_ms(&[], 5), None);
    let three = vec![
        RoutingStep {
            for_secs: Some(5),
            ..billing_steps()[0].clone()
        },
        RoutingStep {
            for_secs: Some(20),
            ..billing_steps()[1].clone()
        },
        RoutingStep {
            requirement: Requirement::ANYONE,
            for_secs: None,
        },
    ];
    assert_eq!(next_change_ms(&three, 4_000), Some(5_000));
    assert_eq!(next_change_ms(&three, 5_000), Some(25_000));
    assert_eq!(requirement_at(&three, 25_000), &Requirement::ANYONE);
}

#[test]
fn a_vip_arriving_later_overtakes_three_waiting_callers() {
    let q = queue(Strategy::LongestIdle);
    let waiting = [
        caller("c1", 0, 1_000),
        caller("c2", 0, 2_000),
        caller("c3", 0, 3_000),
        caller("vip", 9, 4_000),
    ];
    let candidates: Vec<CallerCandidate> = waiting.iter().map(|c| c.candidate(&q, 5_000)).collect();
    let freed = AgentProfile::new("2001");
    assert_eq!(select_caller(&freed, &candidates), Some(3));
    assert_eq!(select_caller(&freed, &candidates[..3]), Some(0));
}

#[test]
fn a_freed_agent_takes_the_best_caller_it_may_take_across_its_queues() {
    let sales = queue(Strategy::LongestIdle);
    let mut billing = queue(Strategy::LongestIdle);
    billing.routing = billing_steps();
    let mut vip = caller("v", 5, 3_000);
    vip.preferred = Some(PreferredAgent {
        agent: "other".into(),
        until_ms: 20_000,
    });
    let candidates = [
        caller("s1", 0, 2_000).candidate(&sales, 5_000),
        // Waited longest, but needs billing >= 4 until 11 s.
        caller("b1", 0, 1_000).candidate(&billing, 5_000),
        // Higher priority, but reserved for its account manager.
        vip.candidate(&sales, 5_000),
        caller("s0", 0, 2_000).candidate(&sales, 5_000),
    ];
    let level2 = agent("2001", &[("billing", 2)], 0).profile;
    let level4 = agent("2002", &[("billing", 4)], 0).profile;
    // Same virtual start: the call id decides, whatever the order given.
    assert_eq!(select_caller(&level2, &candidates), Some(3));
    assert_eq!(select_caller(&level4, &candidates), Some(1));
    assert_eq!(
        select_caller(&AgentProfile::new("other"), &candidates),
        Some(2)
    );
    assert_eq!(select_caller(&level2, &candidates[1..3]), None);
}

#[test]
fn the_preferred_agent_alone_until_the_deadline_then_the_steps_from_it() {
    let mut q = queue(Strategy::LongestIdle);
    q.routing = billing_steps();
    let mut s = RouterState::default();
    let c = Caller {
        preferred: Some(PreferredAgent {
            agent: "manager".into(),
            until_ms: 15_000,
        }),
        ..caller("c1", 0, 0)
    };
    let idle = [
        agent("expert", &[("billing", 5)], 0),
        agent("manager", &[], 9_000),
        agent("junior", &[("billing", 1)], 0),
    ];
    // Before the deadline: the manager, though skill-less and idle the shortest.
    assert_eq!(
        select_agents(&q, &mut s, &c, &idle, 14_999),
        Selection::One(1)
    );
    // The manager busy: nobody else, the caller waits for the deadline.
    let others = [idle[0].clone(), idle[2].clone()];
    assert_eq!(
        select_agents(&q, &mut s, &c, &others, 1_000),
        Selection::None
    );
    assert_eq!(c.next_change_at_ms(&q, 1_000), Some(15_000));
    // After it: the first step, counted from the deadline, then the second.
    assert_eq!(
        select_agents(&q, &mut s, &c, &idle[1..], 15_000),
        Selection::None
    );
    assert_eq!(
        select_agents(&q, &mut s, &c, &idle, 15_000),
        Selection::One(0)
    );
    assert_eq!(c.next_change_at_ms(&q, 15_000), Some(25_000));
    assert_eq!(
        select_agents(&q, &mut s, &c, &idle[1..], 25_000),
        Selection::One(1)
    );
}

fn partner_queue() -> QueueRouting {
    QueueRouting {
        pools: vec![
            PoolWeight {
                pool: "in-house".into(),
                weight: 70,
            },
            PoolWeight {
                pool: "partner-a".into(),
                weight: 30,
            },
        ],
        ..queue(Strategy::LongestIdle)
    }
}

fn pools_idle() -> Vec<IdleAgent> {
    let mut idle = Vec::new();
    for i in 0..5 {
        idle.push(in_pool(agent(&format!("h{i}"), &[], i), "in-house"));
        idle.push(in_pool(agent(&format!("p{i}"), &[], i), "partner-a"));
    }
    idle
}

fn pool_of(sel: &Selection, idle: &[IdleAgent]) -> String {
    idle[sel.agents()[0]].profile.pool.clone()
}

#[test]
fn pools_split_seventy_thirty_over_a_thousand_calls() {
    let q = partner_queue();
    let idle = pools_idle();
    let mut s = RouterState::default();
    let mut counts = BTreeMap::<String, u32>::new();
    for _ in 0..1_000 {
        *counts
            .entry(pool_of(&pick(&q, &mut s, &idle), &idle))
            .or_default() += 1;
    }
    let in_house = counts["in-house"];
    assert!((670..=730).contains(&in_house), "{counts:?}");
    assert_eq!(in_house + counts["partner-a"], 1_000);
    // Smooth: never more than 3 in-house offers in a row at 70/30.
    let mut run = 0;
    for _ in 0..100 {
        if pool_of(&pick(&q, &mut s, &idle), &idle) == "in-house" {
            run += 1;
            assert!(run <= 3);
        } else {
            run = 0;
        }
    }
}

#[test]
fn nobody_waits_for_the_ratio_and_an_absent_pool_is_owed_nothing() {
    let q = partner_queue();
    let idle = pools_idle();
    let partners_only: Vec<IdleAgent> = idle
        .iter()
        .filter(|a| a.profile.pool == "partner-a")
        .cloned()
        .collect();
    let mut s = RouterState::default();
    for _ in 0..50 {
        assert_eq!(
            pool_of(&pick(&q, &mut s, &partners_only), &partners_only),
            "partner-a"
        );
    }
    // Back to both pools: the usual split at once, no burst of in-house catching up.
    let next: Vec<String> = (0..10)
        .map(|_| pool_of(&pick(&q, &mut s, &idle), &idle))
        .collect();
    let in_house = next.iter().filter(|p| *p == "in-house").count();
    assert_eq!(in_house, 7, "{next:?}");
    // An eligible agent missing in one pool counts as the pool missing.
    let mut b = q.clone();
    b.routing = vec![RoutingStep {
        requirement: Requirement::new([("billing", 1)]),
        for_secs: None,
    }];
    let mut mixed = idle.clone();
    mixed[1].profile.skills = vec![Skill::new("billing", 3)];
    for _ in 0..5 {
        assert_eq!(pick(&b, &mut s, &mixed), Selection::One(1));
    }
}

#[test]
fn unlisted_pools_serve_only_when_no_listed_pool_can() {
    let q = partner_queue();
    let mut idle = vec![in_pool(agent("x", &[], 0), "site-b")];
    let mut s = RouterState::default();
    assert_eq!(pick(&q, &mut s, &idle), Selection::One(0));
    idle.push(in_pool(agent("p", &[], 500), "partner-a"));
    assert_eq!(pick(&q, &mut s, &idle), Selection::One(1));
}

#[test]
fn strategies_pick_within_the_pool_whose_turn_it_is() {
    let mut q = partner_queue();
    q.strategy = Strategy::RingAll;
    let idle = pools_idle();
    let mut s = RouterState::default();
    let first = pick(&q, &mut s, &idle);
    assert_eq!(ids(&first, &idle), ["h0", "h1", "h2", "h3", "h4"]);
}

#[test]
fn config_reads_from_toml_and_writes_back_the_same() {
    let text = r#"
        [[queue]]
        name = "billing"
        strategy = "skills-best"
        routing = [
          { skills = { billing = 4 }, for_secs = 10 },
          { skills = { billing = 1, french = 2 } },
        ]
        pools = [{ pool = "in-house", weight = 70 }, { pool = "partner-a", weight = 30 }]

        [[queue]]
        name = "sales"

        [[agent]]
        id = "2001"
        skills = { billing = 5, french = 2 }
        pool = "in-house"
        site = "paris"
        team = "b2b"
    "#;
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct File {
        queue: Vec<QueueRouting>,
        agent: Vec<AgentProfile>,
    }
    let file: File = toml::from_str(text).unwrap();
    let billing = &file.queue[0];
    assert_eq!(billing.strategy, Strategy::SkillsBest);
    assert_eq!(
        billing.routing[0].requirement,
        Requirement::new([("billing", 4)])
    );
    assert_eq!(billing.routing[0].for_secs, Some(10));
    assert_eq!(
        billing.routing[1].requirement,
        Requirement::new([("billing", 1), ("french", 2)])
    );
    assert_eq!(billing.routing[1].for_secs, None);
    assert_eq!(billing.pools[1].weight, 30);
    assert_eq!(file.queue[1], QueueRouting::new("sales"));
    assert_eq!(file.agent[0].level("billing"), 5);
    assert_eq!(file.agent[0].team.as_deref(), Some("b2b"));
    for q in &file.queue {
        q.validate().unwrap();
    }
    file.agent[0].validate().unwrap();
    let written = toml::to_string(&file).unwrap();
    assert_eq!(toml::from_str::<File>(&written).unwrap(), file, "{written}");
}

#[test]
fn an_unknown_strategy_or_field_is_a_serde_error_naming_what_is_allowed() {
    let err = toml::from_str::<QueueRouting>("name = \"q\"\nstrategy = \"fastest\"")
        .unwrap_err()
        .to_string();
    for name in [
        "longest-idle",
        "fewest-calls",
        "least-talk-time",
        "round-robin",
        "ring-all",
        "random",
        "skills-best",
    ] {
        assert!(err.contains(name), "{err}");
    }
    let err = toml::from_str::<QueueRouting>("name = \"q\"\nrouting = [{ for_sec = 3 }]")
        .unwrap_err()
        .to_string();
    assert!(err.contains("for_sec"), "{err}");
}

#[test]
fn validation_names_the_queue_and_the_field() {
    let check = |text: &str| {
        toml::from_str::<QueueRouting>(text)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        check("name = \"b\"\nrouting = [{ skills = { billing = 6 } }]"),
        "queue \"b\": routing[0].skills.billing: level 6 is outside 1..=5"
    );
    assert_eq!(
        check(
            "name = \"b\"\nrouting = [{ skills = { x = 1 }, for_secs = 5 }, { skills = { billing = 0 } }]"
        ),
        "queue \"b\": routing[1].skills.billing: level 0 is outside 1..=5"
    );
    assert_eq!(
        check("name = \"b\"\nrouting = [{ skills = { x = 1 } }, { skills = { x = 2 } }]"),
        "queue \"b\": routing[1] comes after routing[0], which has no for_secs and so never ends"
    );
    assert_eq!(
        check("name = \"b\"\nrouting = [{ skills = { x = 1 }, for_secs = 5 }]"),
        "queue \"b\": routing[0].for_secs: the last step must have none (it lasts)"
    );
    assert_eq!(
        check("name = \"b\"\nrouting = [{ for_secs = 0 }, {}]"),
        "queue \"b\": routing[0].for_secs must be at least 1"
    );
    assert_eq!(
        check(
            "name = \"b\"\npools = [{ pool = \"in\", weight = 1 }, { pool = \"out\", weight = 0 }]"
        ),
        "queue \"b\": pools[1].weight (\"out\") must be at least 1"
    );
    assert_eq!(
        check(
            "name = \"b\"\npools = [{ pool = \"in\", weight = 1 }, { pool = \"in\", weight = 2 }]"
        ),
        "queue \"b\": pools[1]: pool \"in\" is listed twice"
    );
    let mut many = QueueRouting::new("b");
    many.pools = (0..65)
        .map(|i| PoolWeight {
            pool: format!("p{i}"),
            weight: 1,
        })
        .collect();
    assert_eq!(
        many.validate().unwrap_err().to_string(),
        "queue \"b\": pools: 65 pools, at most 64"
    );
    let bad = agent("2001", &[("billing", 9)], 0).profile;
    assert_eq!(
        bad.validate().unwrap_err().to_string(),
        "agent \"2001\": skills.billing: level 9 is outside 1..=5"
    );
}

#[test]
fn state_survives_rkyv_and_goes_on_with_the_same_sequence() {
    let mut q = partner_queue();
    q.strategy = Strategy::Random;
    let idle = pools_idle();
    let mut s = RouterState::new(42);
    for _ in 0..7 {
        pick(&q, &mut s, &idle);
    }
    let mut rr = queue(Strategy::RoundRobin);
    pick(&rr, &mut s, &idle);
    rr.routing = billing_steps();
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&s).unwrap();
    let mut back = rkyv::from_bytes::<RouterState, rkyv::rancor::Error>(&bytes).unwrap();
    assert_eq!(back, s);
    for _ in 0..20 {
        assert_eq!(pick(&q, &mut back, &idle), pick(&q, &mut s, &idle));
    }
    // The rest of what is replicated, too.
    let c = caller("c1", 3, 99).candidate(&rr, 0);
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&c).unwrap();
    assert_eq!(
        rkyv::from_bytes::<CallerCandidate, rkyv::rancor::Error>(&bytes).unwrap(),
        c
    );
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&rr).unwrap();
    assert_eq!(
        rkyv::from_bytes::<QueueRouting, rkyv::rancor::Error>(&bytes).unwrap(),
        rr
    );
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&idle).unwrap();
    assert_eq!(
        rkyv::from_bytes::<Vec<IdleAgent>, rkyv::rancor::Error>(&bytes).unwrap(),
        idle
    );
}
