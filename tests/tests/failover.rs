//! Calls survive the loss of the node that holds them: a three-node cluster, callers dialling
//! node A, agent phones registered at node B; then A is killed with `kill -9` (or cut off
//! from the cluster by a partition of its QUIC port only) while 50 calls talk, 10 ring an
//! agent and 20 wait in the queue. The standby that holds each call's replica takes it over:
//! re-INVITEs both legs of a talking call, answers a queued caller's original INVITE itself,
//! cancels a ringing offer and puts its caller back at the head of the line; every caller
//! then finishes its call normally against the standby, the ringing and queued ones answered
//! in their arrival order. A node that is drained (`ctl node drain`) hands its calls to their
//! standbys the same way, without failing.
//!
//! The SIPp scenarios `caller_failover.xml` and `agent_failover.xml` follow the remote target
//! (Contact) and answer requests at their Via, as a phone does, so they notice a dead node.
//! `agent_refuse_reinvite.xml` refuses the take-over (488) and `caller_failover_dropped.xml`
//! waits for the standby's BYE, for a take-over that fails; further tests check that agents
//! homed on the failed node keep their state and that a recording continues on the standby.
//!
//! The tests of this file run one at a time: each runs three nodes, up to 80 SIPp callers and
//! a phone answering up to 90 offers, and the failure detector's 1-1.5 s must not fire on a
//! node that is merely starved of CPU on a 2-core machine.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::cluster::{Cluster, ClusterOptions, Partition, poll};
use common::{Cdr, Node, NodeConfig, SippProcess, assert_no_agent_overlap, http};
use serde::Deserialize;
use serde_json::Value;

/// Calls connected to an agent when node A fails.
const TALKERS: u32 = 50;
/// Callers whose offer rings an agent when node A fails (the last free agents).
const RINGING: u32 = 10;
/// Callers waiting in the queue when node A fails (every agent is busy).
const QUEUED: u32 = 20;
/// The agent phones' ringing time before they answer.
const ANSWER_MS: u64 = 300;
/// How long the offers that are to be cancelled ring (below the offer timeout, 15 s).
const HOLD_MS: u64 = 13_000;
/// The spacing of the answers to offers made after the failure.
const STEP_MS: u64 = 50;
/// The spacing of the ends of the talking calls after the failure.
const TALK_STEP_MS: u64 = 150;

static SERIAL: Mutex<()> = Mutex::new(());

/// One test of this file at a time (see the module comment).
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

// ---------------------------------------------------------------------------------------------
// The cluster and who plays which part

/// Node ids: `a` holds the calls and fails (never the leader, so the failure needs no
/// election), `b` holds the agents' registrations, `c` is the third.
#[derive(Debug, Clone, Copy)]
struct Roles {
    a: u64,
    b: u64,
    c: u64,
}

impl Roles {
    fn survivors(&self) -> [u64; 2] {
        [self.b, self.c]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
struct Placement {
    node: u64,
    epoch: u64,
}

#[derive(Debug, Deserialize)]
struct PlacementJson {
    actors: BTreeMap<String, Placement>,
}

/// `GET path` on node `id`, as JSON, if it answers 200.
fn get_json(cluster: &Cluster, id: u64, path: &str) -> Result<Value, String> {
    let resp = http::get(cluster.http(id), path, Duration::from_secs(3))
        .map_err(|e| format!("node {id}: GET {path}: {e}"))?;
    if resp.status != 200 {
        return Err(format!(
            "node {id}: GET {path}: HTTP {} {}",
            resp.status,
            resp.text()
        ));
    }
    serde_json::from_slice(&resp.body).map_err(|e| format!("node {id}: GET {path}: {e}"))
}

fn placement(cluster: &Cluster, id: u64) -> Result<BTreeMap<String, Placement>, String> {
    let json = get_json(cluster, id, "/v1/cluster/placement")?;
    let placed: PlacementJson =
        serde_json::from_value(json).map_err(|e| format!("node {id}: placement: {e}"))?;
    Ok(placed.actors)
}

/// Starts a three-node cluster with agents 2001..2000+`agents`, waits until a leader is
/// elected and every node agrees on the placement, and chooses the roles: A is not the
/// leader and, if possible, not the queue's home either (so that only calls move with it).
fn start(name: &str, agents: u32) -> (Cluster, Roles) {
    start_with(name, agents, 0, |_| {})
}

/// As [`start`], with the nodes' config changed by `tweak` first.
/// `extra_actors`: queues and agents `tweak` adds to the config.
fn start_with(
    name: &str,
    agents: u32,
    extra_actors: usize,
    tweak: impl FnOnce(&mut NodeConfig),
) -> (Cluster, Roles) {
    let mut options = ClusterOptions::new(3);
    options.node.agents = format!("2001-{}", 2000 + agents);
    options.node.rtp_ports = 400;
    tweak(&mut options.node);
    let mut cluster = Cluster::with(name, options);
    let leader = cluster.wait_leader(Duration::from_secs(20)).node_id;
    let actors = cluster.options.actors() + extra_actors;
    let placed = poll(Duration::from_secs(20), "placement agreed", || {
        let first = placement(&cluster, 1)?;
        if first.len() != actors {
            return Err(format!("{} of {actors} actors placed", first.len()));
        }
        for id in [2, 3] {
            if placement(&cluster, id)? != first {
                return Err(format!("node {id} disagrees with node 1"));
            }
        }
        Ok(first)
    });
    let queue_home = placed["queue/support"].node;
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|&n| n != leader).collect();
    let a = followers
        .iter()
        .copied()
        .find(|&n| n != queue_home)
        .unwrap_or(followers[0]);
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&n| n != a).collect();
    let roles = Roles {
        a,
        b: others[0],
        c: others[1],
    };
    let agents_on_a = placed
        .iter()
        .filter(|(k, p)| k.starts_with("agent/") && p.node == a)
        .count();
    eprintln!(
        "[test] leader node {leader}; queue on node {queue_home}; calls go to node A = {a} \
         (home of {agents_on_a} agents); phones register at node B = {}; node C = {}",
        roles.b, roles.c
    );
    (cluster, roles)
}

/// How an agent phone rings (see `agent_failover.xml`): call number n (in the order the
/// INVITEs come in) rings `answer_ms` up to `fast_calls`, `hold_ms` for the next `hold_calls`,
/// and `answer_ms + (n - fast_calls - hold_calls) * step_ms` after that.
struct PhonePlan {
    /// Calls in all: the phone exits after this many.
    calls: u32,
    answer_ms: u64,
    fast_calls: u32,
    hold_calls: u32,
    hold_ms: u64,
    step_ms: u64,
}

impl PhonePlan {
    /// Every call rings `answer_ms`.
    fn plain(calls: u32, answer_ms: u64) -> Self {
        Self {
            calls,
            answer_ms,
            fast_calls: 0,
            hold_calls: 0,
            hold_ms: 0,
            step_ms: 0,
        }
    }
}

/// The SIPp of an agent phone at `node`, serving every agent registered with its port.
fn phone_sipp(node: &Node, plan: &PhonePlan) -> SippProcess {
    node.sipp("agents", "agent_failover.xml")
        .server()
        .calls(plan.calls)
        .set("answer_ms", &plan.answer_ms.to_string())
        .set("fast_calls", &plan.fast_calls.to_string())
        .set("hold_calls", &plan.hold_calls.to_string())
        .set("hold_ms", &plan.hold_ms.to_string())
        .set("step_ms", &plan.step_ms.to_string())
        .timeout_secs(150)
        .spawn()
}

/// An agent phone (one SIPp for every agent) at node `id`, ringing as `plan` says; registers
/// `extensions` with it and waits until node `seen_from` sees each of them available.
fn phones(
    cluster: &Cluster,
    id: u64,
    seen_from: u64,
    extensions: &[String],
    plan: &PhonePlan,
) -> SippProcess {
    let phone = phone_sipp(cluster.node(id), plan);
    register_phone(cluster, id, seen_from, extensions, phone)
}

/// Registers `extensions` at node `id` with `phone` (an agent phone SIPp already running) and
/// waits until node `seen_from` sees each of them available.
fn register_phone(
    cluster: &Cluster,
    id: u64,
    seen_from: u64,
    extensions: &[String],
    phone: SippProcess,
) -> SippProcess {
    cluster
        .node(id)
        .register_agents(extensions, phone.local_port);
    for ext in extensions {
        poll(
            Duration::from_secs(20),
            &format!("agent {ext} available as node {seen_from} sees it"),
            || {
                let agent = get_json(cluster, seen_from, &format!("/v1/agents/{ext}"))?;
                if agent["status"] == "available" {
                    Ok(())
                } else {
                    Err(agent.to_string())
                }
            },
        );
    }
    phone
}

/// How the callers of one SIPp run behave (see `caller_failover.xml`).
struct CallerPlan {
    calls: u32,
    /// Calls started per second.
    rate: f64,
    /// How long after its ACK a call waits for a re-INVITE.
    wait_ms: u64,
    /// Whether a call without a re-INVITE within `wait_ms` fails.
    expect_reinvite: bool,
    /// Talk time after the re-INVITE (or after `wait_ms`)...
    talk_ms: u64,
    /// ... plus this much times the call's number, so that the calls end one after another.
    talk_step_ms: u64,
}

/// SIPp callers dialling node `node`; returns the run and the SIP Call-IDs of its calls
/// (`N-PID@127.0.0.1`, as SIPp makes them), in the order they start.
fn callers(node: &Node, label: &str, plan: &CallerPlan) -> (SippProcess, Vec<String>) {
    let run = node
        .sipp(label, "caller_failover.xml")
        .calls(plan.calls)
        .rate(plan.rate)
        .limit(plan.calls)
        .set("wait_ms", &plan.wait_ms.to_string())
        .set(
            "expect_reinvite",
            if plan.expect_reinvite { "1" } else { "0" },
        )
        .set("talk_ms", &plan.talk_ms.to_string())
        .set("talk_step_ms", &plan.talk_step_ms.to_string())
        .timeout_secs(90)
        .spawn();
    let pid = run.pid();
    let ids = (1..=plan.calls)
        .map(|n| format!("{n}-{pid}@127.0.0.1"))
        .collect();
    (run, ids)
}

/// `GET /v1/calls` on node `id`: the number of calls in each state.
fn call_states(cluster: &Cluster, id: u64) -> Result<BTreeMap<String, usize>, String> {
    let calls = get_json(cluster, id, "/v1/calls")?;
    let calls = calls
        .as_array()
        .ok_or_else(|| format!("node {id}: /v1/calls is not an array: {calls}"))?;
    let mut states = BTreeMap::new();
    for call in calls {
        let state = call["state"].as_str().unwrap_or("?").to_owned();
        *states.entry(state).or_default() += 1;
    }
    Ok(states)
}

/// Waits until node `id` holds exactly the calls `want` (state -> count), and nothing else.
fn wait_call_states(cluster: &Cluster, id: u64, want: &[(&str, usize)]) {
    let want: BTreeMap<String, usize> = want
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| ((*s).to_owned(), *n))
        .collect();
    poll(
        Duration::from_secs(30),
        &format!("node {id} holds calls {want:?}"),
        || {
            let states = call_states(cluster, id)?;
            if states == want {
                Ok(())
            } else {
                Err(format!("{states:?}"))
            }
        },
    );
}

/// Waits until `GET /v1/queues/support` on node `id` counts `n` waiting callers.
fn wait_queue_waiting(cluster: &Cluster, id: u64, n: u64) {
    poll(
        Duration::from_secs(20),
        &format!("{n} callers waiting in queue support as node {id} sees it"),
        || {
            let queue = get_json(cluster, id, "/v1/queues/support")?;
            if queue["waiting"].as_u64() == Some(n) {
                Ok(())
            } else {
                Err(queue.to_string())
            }
        },
    );
}

/// Waits until a node of `observers` reports member `failed` as failed in
/// `/v1/cluster/status`; returns how long that took from `since`.
fn wait_declared_failed(cluster: &Cluster, observers: &[u64], failed: u64, since: Instant) {
    let what = format!("node {failed} declared failed by one of nodes {observers:?}");
    poll(Duration::from_secs(20), &what, || {
        let mut seen = Vec::new();
        for &id in observers {
            let status = match cluster.try_status(id) {
                Ok(s) => s,
                Err(e) => {
                    seen.push(e);
                    continue;
                }
            };
            let Some(m) = status.member(failed) else {
                seen.push(format!("node {id}: no member {failed}"));
                continue;
            };
            if m.status_is("failed") || m.health.eq_ignore_ascii_case("failed") {
                return Ok(());
            }
            seen.push(format!(
                "node {id} sees node {failed} {} / health {}",
                m.status, m.health
            ));
        }
        Err(seen.join("; "))
    });
    eprintln!(
        "[test] node {failed} declared failed {:?} after it failed",
        since.elapsed()
    );
}

/// Waits until node `a` is back as an active member in good standing: the others' leader
/// sees it `active` and `up`, and it follows that leader with a valid lease.
fn wait_rejoined(cluster: &Cluster, roles: &Roles) {
    poll(
        Duration::from_secs(30),
        &format!("node {} active again", roles.a),
        || {
            let leader = cluster.try_status(roles.b)?.leader.ok_or("no leader")?;
            let view = cluster.try_status(leader)?;
            let m = view
                .member(roles.a)
                .ok_or_else(|| format!("node {} is not a member", roles.a))?;
            if !m.status_is("active") || m.health != "up" {
                return Err(format!("leader {leader} sees {m:?}"));
            }
            let own = cluster.try_status(roles.a)?;
            if own.leader != Some(leader) || !own.lease_valid {
                return Err(own.brief());
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Records

/// `failover` of a record: (from_node, at_ms, outcome).
fn failover_of(cdr: &Cdr) -> Option<(Value, u64, String)> {
    let f = cdr.failover.as_ref()?;
    Some((
        f["from_node"].clone(),
        f["at_ms"].as_u64().unwrap_or(0),
        f["outcome"].as_str().unwrap_or("").to_owned(),
    ))
}

/// Whether `from_node` names node `id` (by cluster id, as a number or a string).
fn names_node(from_node: &Value, id: u64) -> bool {
    from_node.as_u64() == Some(id) || from_node.as_str() == Some(id.to_string().as_str())
}

fn outcome(cdr: &Cdr) -> Option<String> {
    failover_of(cdr).map(|(_, _, o)| o)
}

/// Every record on nodes `ids`, with the node that served it.
fn records_on(cluster: &Cluster, ids: &[u64]) -> Vec<(u64, Cdr)> {
    ids.iter()
        .flat_map(|&id| cluster.node(id).cdrs().into_iter().map(move |c| (id, c)))
        .collect()
}

/// Waits until nodes `ids` hold a record for each of `call_ids` (by caller Call-ID); returns
/// them grouped by caller Call-ID.
fn wait_records(
    cluster: &Cluster,
    ids: &[u64],
    call_ids: &[String],
) -> BTreeMap<String, Vec<(u64, Cdr)>> {
    poll(
        Duration::from_secs(20),
        &format!("records of {} calls on nodes {ids:?}", call_ids.len()),
        || {
            let by_call = group(records_on(cluster, ids));
            let missing: Vec<&String> = call_ids
                .iter()
                .filter(|id| !by_call.contains_key(*id))
                .collect();
            if missing.is_empty() {
                Ok(by_call)
            } else {
                Err(format!("no record yet for {missing:?}"))
            }
        },
    )
}

fn group(records: Vec<(u64, Cdr)>) -> BTreeMap<String, Vec<(u64, Cdr)>> {
    let mut by_call: BTreeMap<String, Vec<(u64, Cdr)>> = BTreeMap::new();
    for (node, cdr) in records {
        by_call
            .entry(cdr.caller_call_id.clone())
            .or_default()
            .push((node, cdr));
    }
    by_call
}

/// The one record of each of `call_ids` among `by_call`: complete, answered, hung up by the
/// caller, taken over from node `from` and resumed.
fn resumed_records(
    by_call: &BTreeMap<String, Vec<(u64, Cdr)>>,
    call_ids: &[String],
    from: u64,
) -> Vec<Cdr> {
    call_ids
        .iter()
        .map(|id| {
            let records = &by_call[id];
            assert_eq!(
                records.len(),
                1,
                "call {id}: one record expected on the survivors: {records:#?}"
            );
            let (node, cdr) = &records[0];
            cdr.check_invariants();
            assert_eq!(cdr.disposition, "answered", "node {node}: {cdr:#?}");
            assert_eq!(cdr.hangup_by, "caller", "node {node}: {cdr:#?}");
            let (from_node, at_ms, outcome) = failover_of(cdr)
                .unwrap_or_else(|| panic!("node {node}: no `failover` in {cdr:#?}"));
            assert_eq!(outcome, "resumed", "node {node}: {cdr:#?}");
            assert!(
                names_node(&from_node, from),
                "failover.from_node should be {from}: node {node}: {cdr:#?}"
            );
            assert!(
                at_ms >= cdr.arrived_ms && at_ms <= cdr.ended_ms,
                "failover.at_ms outside the call: node {node}: {cdr:#?}"
            );
            cdr.clone()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Talking, ringing and queued calls through a failure of their node

enum Failure {
    Kill9,
    Partition,
}

/// What [`talking_ringing_queued`] leaves for the test's own checks.
struct Run {
    cluster: Cluster,
    roles: Roles,
    /// Caller Call-IDs of the calls that talked, rang an agent or waited when A failed.
    talkers: Vec<String>,
    ringing: Vec<String>,
    queued: Vec<String>,
    /// The partition, while it lasts.
    partition: Option<Partition>,
}

impl Run {
    fn all_ids(&self) -> Vec<String> {
        self.talkers
            .iter()
            .chain(&self.ringing)
            .chain(&self.queued)
            .cloned()
            .collect()
    }
}

/// `TALKERS` calls connected, `RINGING` ringing an agent and `QUEUED` waiting on node A when
/// it fails. Every call must finish normally through the standbys: the talking ones re-INVITEd
/// and hung up by their callers; the ringing offers cancelled; the ringing and queued callers
/// answered afterwards, in their arrival order; no agent on two calls at once.
///
/// The agent phone (one SIPp for all `TALKERS + RINGING` agents) answers the talking calls
/// after `ANSWER_MS`, lets the ringing offers ring (`HOLD_MS`, longer than the failure takes
/// to be handled), and answers the k-th offer after the failure after `ANSWER_MS + k *
/// STEP_MS`: in the order the offers reach it, each at least `STEP_MS` after the one before,
/// so that the order of the answers in the records is the order in which the node offered.
///
/// After the failure the agents whose ringing offers the standby cancelled are free at once,
/// and the talking calls end one after another, `TALK_STEP_MS` apart, a second after their
/// take-over. Callers of the failed node hold their place in the queue until their standby has
/// brought them back (even when two standbys do it in any order), so each freed agent must go
/// to the first of them in arrival order.
fn talking_ringing_queued(name: &str, failure: Failure) -> Run {
    const AGENTS: u32 = TALKERS + RINGING;
    let (mut cluster, roles) = start_with(name, AGENTS, 0, |_| {});
    let Roles { a, b, .. } = roles;
    let phone = phones(
        &cluster,
        b,
        a,
        &Node::extensions(2001, AGENTS),
        &PhonePlan {
            // Talking calls; their offers again after the failure; the queued callers.
            calls: TALKERS + 2 * RINGING + QUEUED,
            answer_ms: ANSWER_MS,
            fast_calls: TALKERS,
            hold_calls: RINGING,
            hold_ms: HOLD_MS,
            step_ms: STEP_MS,
        },
    );
    let started = Instant::now();

    // The talking calls wait up to 30 s for the take-over's re-INVITE (failing without one),
    // then end 1 s + n * TALK_STEP_MS after it.
    let (talkers, talker_ids) = callers(
        cluster.node(a),
        "talkers",
        &CallerPlan {
            calls: TALKERS,
            rate: 20.0,
            wait_ms: 30_000,
            expect_reinvite: true,
            talk_ms: 1000,
            talk_step_ms: TALK_STEP_MS,
        },
    );
    wait_call_states(&cluster, a, &[("connected", TALKERS as usize)]);
    // The last free agents: their phones ring until the standby cancels the offers. Once
    // answered, these callers talk long enough to keep their agents until every caller that
    // rang or waited has been answered (about TALK_STEP_MS + STEP_MS apart): only the
    // talking calls free agents then, one at a time.
    let waiting_plan = CallerPlan {
        calls: RINGING,
        rate: 10.0,
        wait_ms: 1000,
        expect_reinvite: false,
        talk_ms: 8000,
        talk_step_ms: 0,
    };
    let (ringers, ringing_ids) = callers(cluster.node(a), "ringing", &waiting_plan);
    wait_call_states(
        &cluster,
        a,
        &[
            ("connected", TALKERS as usize),
            ("offering", RINGING as usize),
        ],
    );
    // Every agent is busy: these wait, arriving a tenth of a second apart.
    let (queued, queued_ids) = callers(
        cluster.node(a),
        "queued",
        &CallerPlan {
            calls: QUEUED,
            ..waiting_plan
        },
    );
    wait_call_states(
        &cluster,
        a,
        &[
            ("connected", TALKERS as usize),
            ("offering", RINGING as usize),
            ("queued", QUEUED as usize),
        ],
    );
    wait_queue_waiting(&cluster, a, u64::from(RINGING + QUEUED));
    // Let the last replication reach the standby.
    std::thread::sleep(Duration::from_secs(1));
    eprintln!(
        "[test] {TALKERS} talking, {RINGING} ringing, {QUEUED} queued on node {a} after {:?}",
        started.elapsed()
    );

    let failed_at = Instant::now();
    let failed_at_ms = epoch_ms();
    let partition = match failure {
        Failure::Kill9 => {
            eprintln!("[test] kill -9 node {a}");
            cluster.kill9(a);
            None
        }
        Failure::Partition => {
            eprintln!("[test] cutting node {a}'s cluster port off");
            Some(cluster.partition(&[a], &roles.survivors()))
        }
    };
    wait_declared_failed(&cluster, &roles.survivors(), a, failed_at);

    let report_node = cluster.node(b);
    talkers.expect_success_with(report_node);
    ringers.expect_success_with(report_node);
    queued.expect_success_with(report_node);
    phone.expect_success_with(report_node);
    eprintln!(
        "[test] every caller finished {:?} after node {a} failed",
        failed_at.elapsed()
    );

    let run = Run {
        cluster,
        roles,
        talkers: talker_ids,
        ringing: ringing_ids,
        queued: queued_ids,
        partition,
    };
    let by_call = wait_records(&run.cluster, &roles.survivors(), &run.all_ids());
    let talking = resumed_records(&by_call, &run.talkers, a);
    let ringing = resumed_records(&by_call, &run.ringing, a);
    let queued = resumed_records(&by_call, &run.queued, a);

    for cdr in &talking {
        assert!(
            cdr.answered_ms.is_some_and(|t| t < failed_at_ms),
            "a talking call was answered before node {a} failed: {cdr:#?}"
        );
    }
    let agents: BTreeSet<&str> = talking.iter().filter_map(|c| c.agent.as_deref()).collect();
    assert_eq!(
        agents.len(),
        TALKERS as usize,
        "each talking call had its own agent: {agents:?}"
    );
    for cdr in &ringing {
        assert!(
            cdr.offers.len() >= 2
                && cdr.offers[0].outcome != "answered"
                && cdr.offers[0].offered_ms < failed_at_ms,
            "a ringing caller's offer was cancelled and made again: {cdr:#?}"
        );
    }

    // The callers that rang or waited, answered after the failure, in their arrival order
    // (all of equal priority): by first-queued time, the answers must not go backwards.
    let mut waiting: Vec<Cdr> = ringing.iter().chain(&queued).cloned().collect();
    waiting.sort_by_key(|c| c.queued_ms);
    let arrival: Vec<&str> = waiting.iter().map(|c| c.caller_call_id.as_str()).collect();
    let started_order: Vec<&str> = run
        .ringing
        .iter()
        .chain(&run.queued)
        .map(String::as_str)
        .collect();
    assert_eq!(
        arrival, started_order,
        "the ringing and queued callers arrived in the order SIPp started them"
    );
    for c in &waiting {
        let after = |t: u64| t as i64 - failed_at_ms as i64;
        eprintln!(
            "[test] waiting caller {} (call {} on node {}): queued {:?}; offered at {:?} ms, \
             answered at {} ms after the failure, by {:?}",
            c.caller_call_id,
            c.id,
            c.node,
            c.queued_ms,
            c.offers
                .iter()
                .map(|o| (after(o.offered_ms), o.agent.as_str(), o.outcome.as_str()))
                .collect::<Vec<_>>(),
            after(c.answered_ms.unwrap_or(0)),
            c.agent,
        );
    }
    for c in &waiting {
        assert!(
            c.queued_ms.is_some() && c.answered_ms.is_some_and(|t| t > failed_at_ms),
            "a ringing or queued caller was answered only after node {a} failed: {c:#?}"
        );
    }
    let all: Vec<Cdr> = talking.iter().chain(&waiting).cloned().collect();
    assert_no_agent_overlap(&all);
    // The queue decides the order: each caller's answered offer is made (the record keeps the
    // queue's time of the offer) no earlier than the one of the caller before it.
    let answered_offer = |c: &Cdr| {
        c.offers
            .iter()
            .find(|o| o.outcome == "answered")
            .map_or(u64::MAX, |o| o.offered_ms)
    };
    let out_of_order: Vec<(&str, &str, u64, u64)> = waiting
        .windows(2)
        .filter(|p| answered_offer(&p[0]) > answered_offer(&p[1]))
        .map(|p| {
            (
                p[0].caller_call_id.as_str(),
                p[1].caller_call_id.as_str(),
                answered_offer(&p[0]),
                answered_offer(&p[1]),
            )
        })
        .collect();
    assert!(
        out_of_order.is_empty(),
        "callers offered out of their arrival order (earlier, later, their offer times): \
         {out_of_order:?}"
    );
    run
}

// ---------------------------------------------------------------------------------------------
// Tests

/// The failover scenarios complete an ordinary call on a standalone node: no re-INVITE, ACK
/// and BYE to the node that answered.
#[test]
fn failover_scenarios_complete_calls_without_a_failure() {
    let _serial = serial();
    let node = Node::start("failover-plain", NodeConfig::default());
    let phone = phone_sipp(&node, &PhonePlan::plain(2, 200));
    node.register_agents(&Node::extensions(2001, 2), phone.local_port);
    let (run, ids) = callers(
        &node,
        "callers",
        &CallerPlan {
            calls: 2,
            rate: 10.0,
            wait_ms: 1000,
            expect_reinvite: false,
            talk_ms: 500,
            talk_step_ms: 100,
        },
    );
    run.expect_success_with(&node);
    phone.expect_success_with(&node);
    let cdrs = node.wait_cdrs(2, Duration::from_secs(10));
    assert_eq!(
        cdrs.iter()
            .map(|c| c.caller_call_id.clone())
            .collect::<Vec<_>>(),
        ids
    );
    for cdr in &cdrs {
        cdr.check_invariants();
        assert_eq!(cdr.disposition, "answered", "{cdr:#?}");
        assert_eq!(cdr.hangup_by, "caller", "{cdr:#?}");
        assert!(cdr.failover.is_none(), "no failover happened: {cdr:#?}");
    }
    assert_no_agent_overlap(&cdrs);
}

#[test]
fn talking_and_queued_calls_survive_kill_9_of_their_node() {
    let _serial = serial();
    let began = Instant::now();
    let run = talking_ringing_queued("failover-kill", Failure::Kill9);
    eprintln!(
        "[test] {} talking, {} ringing and {} queued calls resumed after node {} was killed; \
         {:?} in all",
        run.talkers.len(),
        run.ringing.len(),
        run.queued.len(),
        run.roles.a,
        began.elapsed()
    );
}

#[test]
fn calls_survive_a_partition_of_their_node() {
    let _serial = serial();
    let began = Instant::now();
    let mut run = talking_ringing_queued("failover-cut", Failure::Partition);
    let Roles { a, .. } = run.roles;
    // Heal: node A comes back into the cluster and must not resume the calls it held.
    drop(run.partition.take());
    wait_rejoined(&run.cluster, &run.roles);
    poll(
        Duration::from_secs(20),
        &format!("node {a} holds no calls"),
        || {
            let states = call_states(&run.cluster, a)?;
            if states.is_empty() {
                Ok(())
            } else {
                Err(format!("{states:?}"))
            }
        },
    );
    // ... and stays so.
    std::thread::sleep(Duration::from_secs(2));
    let states = call_states(&run.cluster, a).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        states.is_empty(),
        "node {a} picked calls up again: {states:?}"
    );

    // One live record per call across the whole cluster: node A may only have recorded a
    // call as dropped.
    let by_call = group(records_on(&run.cluster, &[1, 2, 3]));
    for id in &run.all_ids() {
        let records = by_call.get(id).map(Vec::as_slice).unwrap_or_default();
        let live: Vec<&(u64, Cdr)> = records
            .iter()
            .filter(|(_, c)| outcome(c).as_deref() != Some("dropped"))
            .collect();
        assert_eq!(
            live.len(),
            1,
            "call {id}: exactly one record that is not `dropped` expected: {records:#?}"
        );
        assert_ne!(
            live[0].0, a,
            "call {id}: node {a} kept the call: {records:#?}"
        );
    }
    eprintln!(
        "[test] node {a} rejoined without resuming; records on node {a}: {}; {:?} in all",
        run.cluster.node(a).cdrs().len(),
        began.elapsed()
    );
}

#[test]
fn a_node_that_returns_does_not_resume_its_calls() {
    const CALLS: u32 = 5;
    let _serial = serial();
    let (mut cluster, roles) = start("failover-return", CALLS);
    let Roles { a, b, .. } = roles;
    let phone = phones(
        &cluster,
        b,
        a,
        &Node::extensions(2001, CALLS),
        &PhonePlan::plain(CALLS, ANSWER_MS),
    );
    let (talkers, ids) = callers(
        cluster.node(a),
        "talkers",
        &CallerPlan {
            calls: CALLS,
            rate: 10.0,
            wait_ms: 30_000,
            expect_reinvite: true,
            talk_ms: 2000,
            talk_step_ms: 0,
        },
    );
    wait_call_states(&cluster, a, &[("connected", CALLS as usize)]);
    std::thread::sleep(Duration::from_secs(1));
    let failed_at = Instant::now();
    eprintln!("[test] kill -9 node {a}");
    cluster.kill9(a);
    wait_declared_failed(&cluster, &roles.survivors(), a, failed_at);
    talkers.expect_success_with(cluster.node(b));
    phone.expect_success_with(cluster.node(b));
    let by_call = wait_records(&cluster, &roles.survivors(), &ids);
    resumed_records(&by_call, &ids, a);

    eprintln!("[test] restarting node {a}");
    cluster.restart(a);
    wait_rejoined(&cluster, &roles);
    // Give a resurrected call actor time to show itself.
    std::thread::sleep(Duration::from_secs(3));
    let states = call_states(&cluster, a).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        states.is_empty(),
        "node {a} holds calls after its return: {states:?}"
    );
    let records = cluster.node(a).cdrs();
    let theirs: Vec<&Cdr> = records
        .iter()
        .filter(|c| ids.contains(&c.caller_call_id))
        .collect();
    assert!(
        theirs.is_empty(),
        "node {a} recorded calls the standby took over: {theirs:#?}"
    );
}

/// An offer ringing when its node dies is cancelled by the standby, and its caller keeps the
/// head of the queue: the agent answers it before the caller who arrived after it.
#[test]
fn a_ringing_offer_is_cancelled_and_its_caller_keeps_its_place() {
    // Long enough for detection and the CANCEL to come first on a slow machine.
    const RING_MS: u64 = 8000;
    let _serial = serial();
    let (mut cluster, roles) = start("failover-ring", 1);
    let Roles { a, b, .. } = roles;
    // One agent; its phone rings RING_MS each time: the cancelled offer, then both callers.
    let phone = phones(
        &cluster,
        b,
        a,
        &Node::extensions(2001, 1),
        &PhonePlan::plain(3, RING_MS),
    );
    let phone_dir = phone.dir.clone();
    let plan = CallerPlan {
        calls: 1,
        rate: 1.0,
        wait_ms: 1000,
        expect_reinvite: false,
        talk_ms: 1000,
        talk_step_ms: 0,
    };
    let (first, first_ids) = callers(cluster.node(a), "first", &plan);
    wait_call_states(&cluster, a, &[("offering", 1)]);
    let (second, second_ids) = callers(cluster.node(a), "second", &plan);
    wait_call_states(&cluster, a, &[("offering", 1), ("queued", 1)]);
    std::thread::sleep(Duration::from_millis(500));

    let failed_at = Instant::now();
    eprintln!("[test] kill -9 node {a} while agent 2001 rings");
    cluster.kill9(a);
    wait_declared_failed(&cluster, &roles.survivors(), a, failed_at);
    first.expect_success_with(cluster.node(b));
    second.expect_success_with(cluster.node(b));
    phone.expect_success_with(cluster.node(b));
    let messages = std::fs::read_to_string(phone_dir.join("messages.log")).unwrap_or_default();
    assert!(
        messages.contains("CANCEL sip:"),
        "the standby cancelled the ringing offer (phone's messages in {})",
        phone_dir.display()
    );

    let ids: Vec<String> = first_ids.iter().chain(&second_ids).cloned().collect();
    let by_call = wait_records(&cluster, &roles.survivors(), &ids);
    let records = resumed_records(&by_call, &ids, a);
    let (one, two) = (&records[0], &records[1]);
    assert!(
        one.offers.len() >= 2 && one.offers[0].outcome != "answered",
        "the first caller's ringing offer was cancelled and made again: {one:#?}"
    );
    assert!(
        one.answered_ms < two.answered_ms,
        "the first caller kept its place at the head of the queue:\n{one:#?}\n{two:#?}"
    );
    assert_no_agent_overlap(&records);
}

// ---------------------------------------------------------------------------------------------
// Draining: a planned hand-over

/// One SIP message in a SIPp `-trace_msg` log.
#[derive(Debug)]
struct Traced {
    received: bool,
    start_line: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Traced {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A request of `method`, not a response.
    fn is_request(&self, method: &str) -> bool {
        self.start_line.starts_with(&format!("{method} "))
    }

    /// Whether the To header carries a tag: a request inside a dialog.
    fn in_dialog(&self) -> bool {
        self.header("To").is_some_and(|to| to.contains("tag="))
    }

    /// The port of the top Via (`SIP/2.0/UDP host:port;...`).
    fn via_port(&self) -> Option<u16> {
        let sent_by = self.header("Via")?.split_whitespace().nth(1)?;
        port_of(sent_by.split(';').next()?)
    }

    /// The port of the Contact URI.
    fn contact_port(&self) -> Option<u16> {
        uri_port(self.header("Contact")?)
    }

    /// The port of the Request-URI.
    fn request_uri_port(&self) -> Option<u16> {
        uri_port(self.start_line.split_whitespace().nth(1)?)
    }

    /// The port of the SDP's audio line.
    fn audio_port(&self) -> Option<u16> {
        self.body
            .lines()
            .find_map(|l| l.trim().strip_prefix("m=audio "))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|p| p.parse().ok())
    }
}

/// `host:port` -> port.
fn port_of(host_port: &str) -> Option<u16> {
    host_port.rsplit_once(':')?.1.trim().parse().ok()
}

/// The port of a SIP URI, bare or in `<...>`: `<sip:user@host:port;params>`.
fn uri_port(uri: &str) -> Option<u16> {
    let uri = uri.trim();
    let uri = uri
        .strip_prefix('<')
        .map_or(uri, |u| u.split('>').next().unwrap_or(u));
    let rest = uri.split_once(':')?.1;
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, hp)| hp);
    port_of(host_port.split(';').next()?)
}

/// The messages of a SIPp `-trace_msg` log (`messages.log` in `dir`), in order.
fn traced_messages(dir: &std::path::Path) -> Vec<Traced> {
    let path = dir.join("messages.log");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut out = Vec::new();
    for block in text.split("\n-----------------------------------------------") {
        let mut lines = block.lines();
        let received = loop {
            match lines.next() {
                Some(l) if l.contains("message received") => break true,
                Some(l) if l.contains("message sent") => break false,
                Some(_) => continue,
                None => break false,
            }
        };
        let mut lines = lines.skip_while(|l| l.trim().is_empty());
        let Some(start_line) = lines.next() else {
            continue;
        };
        let mut headers = Vec::new();
        for line in lines.by_ref() {
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
        }
        let body = lines.collect::<Vec<_>>().join("\n");
        out.push(Traced {
            received,
            start_line: start_line.trim().to_owned(),
            headers,
            body,
        });
    }
    out
}

/// Checks the re-INVITEs a SIPp run (`who`) received: `expected` of them, each from a
/// standby among `standbys` (its Via), with that node's Contact and media from its RTP range.
fn check_reinvites(
    cluster: &Cluster,
    who: &str,
    dir: &std::path::Path,
    standbys: &[u64],
    expected: usize,
) {
    let sip_ports: BTreeMap<u16, u64> = standbys
        .iter()
        .map(|&id| (cluster.node(id).sip.port(), id))
        .collect();
    let reinvites: Vec<Traced> = traced_messages(dir)
        .into_iter()
        .filter(|m| m.received && m.is_request("INVITE") && m.in_dialog())
        .collect();
    assert_eq!(
        reinvites.len(),
        expected,
        "{who}: re-INVITEs received (trace in {})",
        dir.display()
    );
    for m in &reinvites {
        let from = m
            .via_port()
            .and_then(|p| sip_ports.get(&p).copied())
            .unwrap_or_else(|| {
                panic!("{who}: a re-INVITE not from a standby {standbys:?}: {m:#?}")
            });
        let node = cluster.node(from);
        assert_eq!(
            m.contact_port(),
            Some(node.sip.port()),
            "{who}: the re-INVITE's Contact is node {from}'s: {m:#?}"
        );
        let media = m.audio_port().unwrap_or(0);
        assert!(
            (node.rtp.0..=node.rtp.1).contains(&media),
            "{who}: the re-INVITE's media is on node {from} (RTP {}-{}): {m:#?}",
            node.rtp.0,
            node.rtp.1
        );
    }
}

/// `ctl node drain` on a node with talking calls: the node hands each call to its standby at
/// once (re-INVITEs on both legs from the standby, with its Contact and media), keeps relaying
/// media for a while and then lets go of the calls without a word on SIP. The callers end
/// their calls normally, with the BYE to the standby, which writes the records.
#[test]
fn draining_a_node_hands_its_calls_over() {
    const CALLS: u32 = 20;
    let _serial = serial();
    let began = Instant::now();
    let (cluster, roles) = start("failover-drain", CALLS);
    let Roles { a, b, .. } = roles;
    let survivors = roles.survivors();
    // One call more than will come: the phone stays to hear anything node A might still
    // send after its calls ended (it is stopped at the end).
    let mut phone = phones(
        &cluster,
        b,
        a,
        &Node::extensions(2001, CALLS),
        &PhonePlan::plain(CALLS + 1, ANSWER_MS),
    );
    let phone_dir = phone.dir.clone();
    // Each call waits up to 30 s for the hand-over's re-INVITE (failing without one), then
    // ends 2 s + n * 0.1 s after it.
    let (talkers, ids) = callers(
        cluster.node(a),
        "talkers",
        &CallerPlan {
            calls: CALLS,
            rate: 10.0,
            wait_ms: 30_000,
            expect_reinvite: true,
            talk_ms: 2000,
            talk_step_ms: 100,
        },
    );
    let talkers_dir = talkers.dir.clone();
    wait_call_states(&cluster, a, &[("connected", CALLS as usize)]);
    // Let the last replication reach the standby.
    std::thread::sleep(Duration::from_secs(1));

    eprintln!("[test] ctl node drain --id {a}");
    let drained_at = Instant::now();
    let drained_at_ms = epoch_ms();
    let out = cluster.ctl(&[
        "node",
        "drain",
        "--http",
        &cluster.http(b).to_string(),
        "--id",
        &a.to_string(),
    ]);
    assert!(
        out.success,
        "switchyard ctl node drain --id {a} failed:\nstdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    // The node lets go of every call within its linger (10 s) of the hand-over.
    poll(
        Duration::from_secs(15).saturating_sub(drained_at.elapsed()),
        &format!("node {a} holds no calls within 15 s of its drain"),
        || {
            let states = call_states(&cluster, a)?;
            if states.is_empty() {
                Ok(())
            } else {
                Err(format!("{states:?}"))
            }
        },
    );
    eprintln!(
        "[test] node {a} held no calls {:?} after the drain",
        drained_at.elapsed()
    );

    talkers.expect_success_with(cluster.node(b));
    eprintln!(
        "[test] every caller finished {:?} after the drain",
        drained_at.elapsed()
    );
    // A second past node A's letting go, the phone has ended every call normally.
    std::thread::sleep(Duration::from_secs(1));
    poll(
        Duration::from_secs(10),
        &format!("the agent phone ended {CALLS} calls successfully"),
        || match phone.stats() {
            Some(s) if s.successful == u64::from(CALLS) && s.failed == 0 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    phone.kill();

    // Both legs of every call were re-INVITEd by a standby, and every BYE went to one.
    check_reinvites(
        &cluster,
        "callers",
        &talkers_dir,
        &survivors,
        CALLS as usize,
    );
    check_reinvites(
        &cluster,
        "agent phone",
        &phone_dir,
        &survivors,
        CALLS as usize,
    );
    let standby_ports: Vec<u16> = survivors
        .iter()
        .map(|&id| cluster.node(id).sip.port())
        .collect();
    let caller_byes: Vec<Traced> = traced_messages(&talkers_dir)
        .into_iter()
        .filter(|m| !m.received && m.is_request("BYE"))
        .collect();
    let byes_to: BTreeSet<String> = caller_byes
        .iter()
        .filter_map(|m| m.header("Call-ID").map(str::to_owned))
        .collect();
    assert_eq!(
        byes_to.len(),
        CALLS as usize,
        "one BYE (and its retransmissions) per call"
    );
    for m in &caller_byes {
        assert!(
            m.request_uri_port()
                .is_some_and(|p| standby_ports.contains(&p)),
            "a caller's BYE did not go to a standby (SIP ports {standby_ports:?}): {m:#?}"
        );
    }
    // Node A sent the agent phone nothing once a call's hand-over re-INVITE had come.
    let a_port = cluster.node(a).sip.port();
    let mut handed: BTreeSet<String> = BTreeSet::new();
    for m in traced_messages(&phone_dir).iter().filter(|m| m.received) {
        let call = m.header("Call-ID").unwrap_or_default().to_owned();
        if handed.contains(&call) {
            assert_ne!(
                m.via_port(),
                Some(a_port),
                "node {a} sent the agent phone a message after handing the call over: {m:#?}"
            );
        } else if m.is_request("INVITE") && m.in_dialog() {
            handed.insert(call);
        }
    }

    let by_call = wait_records(&cluster, &survivors, &ids);
    let records = resumed_records(&by_call, &ids, a);
    for cdr in &records {
        assert!(
            cdr.answered_ms.is_some_and(|t| t < drained_at_ms),
            "the call was answered before the drain: {cdr:#?}"
        );
    }
    let on_a: Vec<Cdr> = cluster
        .node(a)
        .cdrs()
        .into_iter()
        .filter(|c| ids.contains(&c.caller_call_id))
        .collect();
    assert!(
        on_a.is_empty(),
        "node {a} wrote records of calls it handed over: {on_a:#?}"
    );
    let everywhere: Vec<Cdr> = records_on(&cluster, &[1, 2, 3])
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    assert_no_agent_overlap(&everywhere);
    eprintln!(
        "[test] {CALLS} calls handed over by node {a} and resumed on nodes {:?}; {:?} in all",
        records
            .iter()
            .map(|c| c.node.as_str())
            .collect::<BTreeSet<_>>(),
        began.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// A whole site cut off

/// Five nodes on three sites (`docs/operations/sites.md`): site-a {1, 3}, site-b {2, 4} and a
/// witness, node 5, on site-c. Calls arrive at a node of the site that does not hold the Raft
/// leader, so each has one standby on its own site (cut off with it) and one on another; that
/// whole site is cut off from the rest (cluster traffic only: phones still reach every node).
/// The majority declares both of its nodes failed and the standbys on the other sites take
/// every call over; when the site comes back, its nodes let go of the calls they held, so
/// nothing is owned twice.
#[test]
fn calls_survive_the_loss_of_their_site() {
    const CALLS: u32 = 20;
    let _serial = serial();
    common::cluster::check_iptables();
    let began = Instant::now();
    let mut options = ClusterOptions::new(5);
    options.sites = ["site-a", "site-b", "site-a", "site-b", "site-c"]
        .map(String::from)
        .to_vec();
    options.node.agents = format!("2001-{}", 2000 + CALLS);
    options.node.rtp_ports = 400;
    let mut cluster = Cluster::with("failover-site", options);
    let leader = cluster.wait_leader(Duration::from_secs(30)).node_id;
    // The site cut off is the one of a and b without the leader: no election needed.
    let lost: [u64; 2] = if [1, 3].contains(&leader) {
        [2, 4]
    } else {
        [1, 3]
    };
    let kept: Vec<u64> = (1..=5).filter(|n| !lost.contains(n)).collect();
    let a = lost[0];
    let registrar = kept[0];
    eprintln!(
        "[test] leader node {leader}; site of nodes {lost:?} will be cut off; calls go to node \
         {a}; phones register at node {registrar}"
    );
    poll(
        Duration::from_secs(30),
        "every node agrees on the placement",
        || {
            let first = placement(&cluster, 1)?;
            if first.len() != cluster.options.actors() {
                return Err(format!("{} actors placed", first.len()));
            }
            for id in 2..=5 {
                if placement(&cluster, id)? != first {
                    return Err(format!("node {id} disagrees with node 1"));
                }
            }
            Ok(())
        },
    );
    let phone = phones(
        &cluster,
        registrar,
        a,
        &Node::extensions(2001, CALLS),
        &PhonePlan::plain(CALLS, ANSWER_MS),
    );
    let (talkers, ids) = callers(
        cluster.node(a),
        "talkers",
        &CallerPlan {
            calls: CALLS,
            rate: 10.0,
            wait_ms: 30_000,
            expect_reinvite: true,
            talk_ms: 1000,
            talk_step_ms: 100,
        },
    );
    wait_call_states(&cluster, a, &[("connected", CALLS as usize)]);
    // Let the copies reach the standbys.
    std::thread::sleep(Duration::from_secs(1));

    eprintln!("[test] cutting site {lost:?} off from {kept:?}");
    let cut_at = Instant::now();
    let cut = cluster.partition(&lost, &kept);
    for &node in &lost {
        wait_declared_failed(&cluster, &kept, node, cut_at);
    }
    talkers.expect_success_with(cluster.node(registrar));
    eprintln!(
        "[test] every caller finished {:?} after the cut",
        cut_at.elapsed()
    );
    let by_call = wait_records(&cluster, &kept, &ids);
    let records = resumed_records(&by_call, &ids, a);
    assert_no_agent_overlap(&records);
    drop(phone);

    // The site comes back: its nodes rejoin and hold none of the calls.
    drop(cut);
    for &node in &lost {
        poll(
            Duration::from_secs(30),
            &format!("node {node} active again and holding no calls"),
            || {
                let status = cluster.try_status(leader)?;
                let m = status
                    .member(node)
                    .ok_or_else(|| format!("node {node} is not a member"))?;
                if !m.status_is("active") {
                    return Err(format!("leader sees {m:?}"));
                }
                let states = call_states(&cluster, node)?;
                if states.is_empty() {
                    Ok(())
                } else {
                    Err(format!("node {node} holds {states:?}"))
                }
            },
        );
    }
    let everywhere = group(records_on(&cluster, &[1, 2, 3, 4, 5]));
    for id in &ids {
        let live: Vec<&(u64, Cdr)> = everywhere[id]
            .iter()
            .filter(|(_, c)| outcome(c).as_deref() != Some("dropped"))
            .collect();
        assert_eq!(live.len(), 1, "call {id}: one live record: {live:#?}");
        assert!(
            !lost.contains(&live[0].0),
            "call {id}: a node of the lost site kept it: {live:#?}"
        );
    }
    eprintln!("[test] site loss handled in {:?}", began.elapsed());
}

// ---------------------------------------------------------------------------------------------
// A refused take-over, agents' state, recordings

/// SIPp callers dialling node `node` with `scenario` (one without variables); returns the run
/// and the SIP Call-IDs of its calls, as [`callers`] does.
fn scenario_callers(
    node: &Node,
    label: &str,
    scenario: &str,
    calls: u32,
) -> (SippProcess, Vec<String>) {
    let run = node
        .sipp(label, scenario)
        .calls(calls)
        .rate(10.0)
        .limit(calls)
        .timeout_secs(90)
        .spawn();
    let pid = run.pid();
    let ids = (1..=calls)
        .map(|n| format!("{n}-{pid}@127.0.0.1"))
        .collect();
    (run, ids)
}

/// `failover_calls_total{outcome="<outcome>"}` in node `id`'s `/metrics` (0 when absent).
fn failover_count(cluster: &Cluster, id: u64, outcome: &str) -> u64 {
    let resp = http::get(cluster.http(id), "/metrics", Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("node {id}: GET /metrics: {e}"));
    assert_eq!(resp.status, 200, "node {id}: GET /metrics: {}", resp.text());
    let label = format!("outcome=\"{outcome}\"");
    resp.text()
        .lines()
        .filter(|l| l.starts_with("failover_calls_total{") && l.contains(&label))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("node {id}: unreadable metric line {l:?}"))
                as u64
        })
        .sum()
}

/// `GET /v1/agents/{ext}` on node `id`.
fn agent_on(cluster: &Cluster, id: u64, ext: &str) -> Result<Value, String> {
    get_json(cluster, id, &format!("/v1/agents/{ext}"))
}

/// The seconds of audio in a stereo 8 kHz 16-bit WAV file (its `data` chunk, as far as the
/// file holds it); `None` if the file is missing or not such a WAV.
fn wav_seconds(path: &std::path::Path) -> Option<f64> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.get(..4)? != b"RIFF" || bytes.get(8..12)? != b"WAVE" {
        return None;
    }
    let mut at = 12;
    let mut format_ok = false;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().ok()?) as usize;
        if id == b"fmt " {
            let body = bytes.get(at + 8..at + 8 + len)?;
            let channels = u16::from_le_bytes([*body.get(2)?, *body.get(3)?]);
            let rate = u32::from_le_bytes(body.get(4..8)?.try_into().ok()?);
            let bits = u16::from_le_bytes([*body.get(14)?, *body.get(15)?]);
            format_ok = (channels, rate, bits) == (2, 8000, 16);
        } else if id == b"data" {
            if !format_ok {
                return None;
            }
            let held = len.min(bytes.len() - (at + 8));
            return Some(held as f64 / 4.0 / 8000.0);
        }
        at += 8 + len + (len & 1);
    }
    None
}

/// A take-over refused by one leg (the agent's phone answers the re-INVITE with 488): the
/// standby ends the call on both legs (ACK of the 488, then a BYE to each; the caller's
/// re-INVITE was accepted) and records it as `dropped`, hung up by the system.
#[test]
fn a_leg_refusing_the_takeover_ends_the_call_cleanly() {
    const CALLS: u32 = 4;
    let _serial = serial();
    let began = Instant::now();
    let (mut cluster, roles) = start("failover-refuse", CALLS);
    let Roles { a, b, .. } = roles;
    let survivors = roles.survivors();
    let phone = cluster
        .node(b)
        .sipp("agents", "agent_refuse_reinvite.xml")
        .server()
        .calls(CALLS)
        .timeout_secs(90)
        .spawn();
    let phone = register_phone(&cluster, b, a, &Node::extensions(2001, CALLS), phone);
    let (callers, ids) = scenario_callers(
        cluster.node(a),
        "callers",
        "caller_failover_dropped.xml",
        CALLS,
    );
    wait_call_states(&cluster, a, &[("connected", CALLS as usize)]);
    // Let the copies reach the standbys.
    std::thread::sleep(Duration::from_secs(1));

    let failed_at = Instant::now();
    let failed_at_ms = epoch_ms();
    eprintln!("[test] kill -9 node {a}");
    cluster.kill9(a);
    wait_declared_failed(&cluster, &survivors, a, failed_at);
    // Both legs of every call end: each caller accepted the re-INVITE and got a BYE, each
    // agent phone refused it, got the 488 acknowledged and then a BYE.
    callers.expect_success_with(cluster.node(b));
    phone.expect_success_with(cluster.node(b));
    eprintln!(
        "[test] both legs of every call ended {:?} after node {a} failed",
        failed_at.elapsed()
    );

    let by_call = wait_records(&cluster, &survivors, &ids);
    let mut records = Vec::new();
    for id in &ids {
        let found = &by_call[id];
        assert_eq!(
            found.len(),
            1,
            "call {id}: one record expected on the survivors: {found:#?}"
        );
        let (node, cdr) = &found[0];
        cdr.check_invariants();
        assert_eq!(cdr.disposition, "answered", "node {node}: {cdr:#?}");
        assert_eq!(cdr.hangup_by, "system", "node {node}: {cdr:#?}");
        assert!(
            cdr.answered_ms.is_some_and(|t| t < failed_at_ms),
            "the call was answered before node {a} failed: {cdr:#?}"
        );
        let (from_node, at_ms, outcome) =
            failover_of(cdr).unwrap_or_else(|| panic!("node {node}: no `failover` in {cdr:#?}"));
        assert_eq!(outcome, "dropped", "node {node}: {cdr:#?}");
        assert!(
            names_node(&from_node, a),
            "failover.from_node should be {a}: node {node}: {cdr:#?}"
        );
        assert!(
            at_ms >= failed_at_ms && at_ms <= cdr.ended_ms,
            "failover.at_ms between the failure and the end of the call: node {node}: {cdr:#?}"
        );
        records.push(cdr.clone());
    }
    assert_no_agent_overlap(&records);

    let count = |outcome: &str| -> u64 {
        survivors
            .iter()
            .map(|&id| failover_count(&cluster, id, outcome))
            .sum()
    };
    assert_eq!(
        count("dropped"),
        u64::from(CALLS),
        "failover_calls_total{{outcome=\"dropped\"}} over nodes {survivors:?}"
    );
    assert_eq!(
        count("resumed"),
        0,
        "failover_calls_total{{outcome=\"resumed\"}} over nodes {survivors:?}"
    );
    eprintln!(
        "[test] {CALLS} refused take-overs dropped cleanly; {:?} in all",
        began.elapsed()
    );
}

/// Agents homed on the failed node restart on their new home as they were, from the copy
/// their old home sent their heir: one not ready (with its reason) stays not ready, one on a
/// call stays on it until the taken-over call ends, then wraps up and becomes available.
#[test]
fn agents_keep_their_state_across_a_failure() {
    // Enough agents that several are homed on node A.
    const AGENTS: u32 = 30;
    const WRAP_UP_SECS: u64 = 5;
    let _serial = serial();
    let began = Instant::now();
    let (mut cluster, roles) = start_with("failover-agents", AGENTS, 0, |c| {
        c.wrap_up_secs = WRAP_UP_SECS;
    });
    let Roles { a, b, .. } = roles;
    let survivors = roles.survivors();
    let placed = placement(&cluster, b).unwrap_or_else(|e| panic!("{e}"));
    let on_a: Vec<String> = placed
        .iter()
        .filter(|(_, p)| p.node == a)
        .filter_map(|(k, _)| k.strip_prefix("agent/").map(str::to_owned))
        .collect();
    assert!(
        on_a.len() >= 2,
        "two agents homed on node {a} needed, it has {on_a:?}"
    );
    let (resting, talking) = (on_a[0].clone(), on_a[1].clone());
    eprintln!("[test] agents {resting} (not ready) and {talking} (on a call), homed on node {a}");
    // Only these two have a phone: the call can only go to `talking`.
    let phone = phones(
        &cluster,
        b,
        a,
        &[resting.clone(), talking.clone()],
        &PhonePlan::plain(1, ANSWER_MS),
    );

    let resp = http::send_json(
        cluster.http(a),
        "PUT",
        &format!("/v1/agents/{resting}/state"),
        r#"{"state":"not-ready","reason":"break"}"#,
        Duration::from_secs(3),
    )
    .unwrap_or_else(|e| panic!("PUT /v1/agents/{resting}/state: {e}"));
    assert_eq!(
        resp.status,
        200,
        "PUT /v1/agents/{resting}/state: {}",
        resp.text()
    );
    let not_ready = |agent: &Value| agent["status"] == "not-ready" && agent["reason"] == "break";
    poll(
        Duration::from_secs(5),
        &format!("agent {resting} not ready (break) as node {a} sees it"),
        || {
            let agent = agent_on(&cluster, a, &resting)?;
            if not_ready(&agent) {
                Ok(())
            } else {
                Err(agent.to_string())
            }
        },
    );

    // The call talks 8 s after its take-over: time for the agents to move and be looked at.
    let (talker, ids) = callers(
        cluster.node(a),
        "talker",
        &CallerPlan {
            calls: 1,
            rate: 1.0,
            wait_ms: 30_000,
            expect_reinvite: true,
            talk_ms: 8000,
            talk_step_ms: 0,
        },
    );
    wait_call_states(&cluster, a, &[("connected", 1)]);
    let call_id = poll(
        Duration::from_secs(5),
        &format!("agent {talking} on the call as node {a} sees it"),
        || {
            let agent = agent_on(&cluster, a, &talking)?;
            match agent["call_id"].as_str() {
                Some(id) if agent["status"] == "on-call" => Ok(id.to_owned()),
                _ => Err(agent.to_string()),
            }
        },
    );
    // Copies go 50 ms after a change: let them reach the heirs.
    std::thread::sleep(Duration::from_secs(1));

    let failed_at = Instant::now();
    eprintln!("[test] kill -9 node {a}");
    cluster.kill9(a);
    wait_declared_failed(&cluster, &survivors, a, failed_at);
    poll(
        Duration::from_secs(20),
        &format!("agents {resting} and {talking} moved off node {a}"),
        || {
            let placed = placement(&cluster, b)?;
            for ext in [&resting, &talking] {
                let p = placed
                    .get(&format!("agent/{ext}"))
                    .ok_or_else(|| format!("agent {ext} not placed"))?;
                if p.node == a {
                    return Err(format!("agent {ext} still on node {a}"));
                }
                for &id in &survivors {
                    agent_on(&cluster, id, ext)?;
                }
            }
            Ok(())
        },
    );
    eprintln!(
        "[test] agents moved {:?} after node {a} failed",
        failed_at.elapsed()
    );
    for &id in &survivors {
        let agent = agent_on(&cluster, id, &resting).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            not_ready(&agent),
            "agent {resting} is still not ready (break) after its move, as node {id} sees it: \
             {agent}"
        );
        let agent = agent_on(&cluster, id, &talking).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            agent["status"] == "on-call" && agent["call_id"] == call_id.as_str(),
            "agent {talking} is still on call {call_id} after its move, as node {id} sees it: \
             {agent}"
        );
    }

    // The taken-over call ends: the agent wraps up (WRAP_UP_SECS), then is available.
    let after_call = poll(
        Duration::from_secs(30),
        &format!("agent {talking} off its call"),
        || {
            let agent = agent_on(&cluster, b, &talking)?;
            if agent["status"] == "on-call" {
                Err(agent.to_string())
            } else {
                Ok(agent)
            }
        },
    );
    let ended_at = Instant::now();
    assert!(
        after_call["status"] == "wrap-up" && after_call["call_id"] == call_id.as_str(),
        "agent {talking} wraps up call {call_id} after it: {after_call}"
    );
    talker.expect_success_with(cluster.node(b));
    phone.expect_success_with(cluster.node(b));
    poll(
        Duration::from_secs(WRAP_UP_SECS + 5),
        &format!("agent {talking} available after its wrap-up"),
        || {
            let agent = agent_on(&cluster, b, &talking)?;
            if agent["status"] == "available" {
                Ok(())
            } else {
                Err(agent.to_string())
            }
        },
    );
    let wrapped = ended_at.elapsed();
    assert!(
        wrapped >= Duration::from_secs(WRAP_UP_SECS - 1),
        "agent {talking} available only after its wrap-up ({WRAP_UP_SECS} s), not {wrapped:?}"
    );
    let agent = agent_on(&cluster, b, &resting).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        not_ready(&agent),
        "agent {resting} still not ready (break) at the end: {agent}"
    );

    let by_call = wait_records(&cluster, &survivors, &ids);
    let records = resumed_records(&by_call, &ids, a);
    assert_eq!(
        records[0].agent.as_deref(),
        Some(talking.as_str()),
        "{:#?}",
        records[0]
    );
    eprintln!(
        "[test] agents kept their state; {:?} in all",
        began.elapsed()
    );
}

/// A recorded call taken over goes on being recorded by the standby, in `<id>-2.wav` under
/// its recordings, named in `failover.recording_segments`; the first part stays where the
/// failed node wrote it, a valid file holding what it had written.
#[test]
fn recording_continues_in_a_new_segment_after_a_takeover() {
    const CALLS: u32 = 3;
    let _serial = serial();
    let began = Instant::now();
    let (mut cluster, roles) = start_with("failover-record", CALLS, 0, |c| c.record = Some(true));
    let Roles { a, b, .. } = roles;
    let survivors = roles.survivors();
    let phone = phones(
        &cluster,
        b,
        a,
        &Node::extensions(2001, CALLS),
        &PhonePlan::plain(CALLS, ANSWER_MS),
    );
    let (talkers, ids) = callers(
        cluster.node(a),
        "talkers",
        &CallerPlan {
            calls: CALLS,
            rate: 10.0,
            wait_ms: 30_000,
            expect_reinvite: true,
            talk_ms: 2000,
            talk_step_ms: 200,
        },
    );
    wait_call_states(&cluster, a, &[("connected", CALLS as usize)]);
    // Two seconds recorded on node A: its writer has flushed at least one whole second.
    std::thread::sleep(Duration::from_secs(2));

    let failed_at = Instant::now();
    eprintln!("[test] kill -9 node {a}");
    cluster.kill9(a);
    wait_declared_failed(&cluster, &survivors, a, failed_at);
    talkers.expect_success_with(cluster.node(b));
    phone.expect_success_with(cluster.node(b));

    let by_call = wait_records(&cluster, &survivors, &ids);
    let records = resumed_records(&by_call, &ids, a);
    let a_dir = cluster.node(a).data_dir.clone();
    for cdr in &records {
        let standby = by_call[&cdr.caller_call_id][0].0;
        let first = cdr
            .recording
            .as_deref()
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| panic!("no `recording` in {cdr:#?}"));
        assert!(
            first.starts_with(a_dir.join("recordings"))
                && first.file_name().and_then(|n| n.to_str())
                    == Some(format!("{}.wav", cdr.id).as_str()),
            "the first part is node {a}'s <id>.wav (data dir {}): {cdr:#?}",
            a_dir.display()
        );
        let first_seconds = wav_seconds(&first);
        assert!(
            first_seconds.is_some_and(|s| s >= 0.99),
            "node {a}'s part {} is a valid WAV with at least the first second: \
             {first_seconds:?}",
            first.display()
        );

        let failover = cdr.failover.as_ref().expect("checked by resumed_records");
        let segments: Vec<&str> = failover["recording_segments"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert_eq!(
            segments.len(),
            1,
            "one more recording segment, from node {standby}: {cdr:#?}"
        );
        let segment = std::path::PathBuf::from(segments[0]);
        let standby_dir = &cluster.node(standby).data_dir;
        assert!(
            segment.starts_with(standby_dir.join("recordings"))
                && segment.file_name().and_then(|n| n.to_str())
                    == Some(format!("{}-2.wav", cdr.id).as_str()),
            "the segment is node {standby}'s <id>-2.wav (data dir {}): {cdr:#?}",
            standby_dir.display()
        );
        // The writer closes the file just after the call ends; the call talked 2 s or more
        // on the standby.
        let seconds = poll(
            Duration::from_secs(5),
            &format!("segment {} readable", segment.display()),
            || match wav_seconds(&segment) {
                Some(s) if s >= 1.5 => Ok(s),
                other => Err(format!("{other:?} s")),
            },
        );
        let len = std::fs::metadata(&segment).map_or(0, |m| m.len());
        assert!(len > 44, "segment {} has {len} bytes", segment.display());
        eprintln!(
            "[test] call {}: {:.2} s in {} on node {a}, {seconds:.2} s in {} on node {standby}",
            cdr.id,
            first_seconds.unwrap_or_default(),
            first.display(),
            segment.display()
        );
    }
    eprintln!(
        "[test] recordings continued on the standbys; {:?} in all",
        began.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// IVR

/// Flow `main` on DID 10086: a menu whose key 0 leads to a line closed by its schedule's
/// override, waiting long enough for the failover to happen mid-menu.
const MENU: &str = r#"
[[did]]
number = "10086"
flow = "main"

[[flow]]
name = "main"
start = "menu"
language = "en"
[flow.steps.menu]
menu = { prompt = ["menu"], options = { "1" = "support", "0" = "late" }, timeout_secs = 30, on_timeout = "support", on_invalid = "support" }
[flow.steps.support]
queue = { name = "support" }
[flow.steps.late]
branch_time = { schedule = "late", open = "support", closed = "closed" }
[flow.steps.closed]
hangup = { prompt = ["closed"], disposition = "closed" }

[[schedule]]
name = "late"
time_zone = "Asia/Shanghai"
override = "closed"
"#;

#[test]
fn a_caller_mid_menu_resumes_at_the_same_step_on_the_standby_after_kill_9() {
    let _serial = serial();
    let (mut cluster, roles) = start_with("failover-ivr", 1, 0, |node| node.extra = MENU.into());
    let Roles { a, .. } = roles;
    let sipp = cluster
        .node(a)
        .sipp("caller-ivr", "caller_ivr_failover.xml")
        .dial("10086")
        .timeout_secs(90);
    std::fs::create_dir_all(sipp.dir()).expect("sipp dir");
    std::fs::copy(
        "/usr/share/sip-tester/dtmf_2833_0.pcap",
        sipp.dir().join("keys.pcap"),
    )
    .expect("SIPp's dtmf_2833_0.pcap (Debian's sip-tester ships it)");
    let caller = sipp.spawn();
    let call_id = format!("1-{}@127.0.0.1", caller.pid());
    wait_call_states(&cluster, a, &[("ivr", 1)]);
    // Past the copy delay, so that the standby holds the caller at the menu.
    std::thread::sleep(Duration::from_millis(300));

    let failed_at = Instant::now();
    eprintln!("[test] kill -9 node {a} while the caller is in the menu");
    cluster.kill9(a);
    wait_declared_failed(&cluster, &roles.survivors(), a, failed_at);
    caller.expect_success_with(cluster.node(roles.b));

    let by_call = wait_records(&cluster, &roles.survivors(), std::slice::from_ref(&call_id));
    let records = &by_call[&call_id];
    assert_eq!(records.len(), 1, "one record: {records:#?}");
    let (node, record) = &records[0];
    assert_ne!(*node, a);
    assert_eq!(record.disposition, "closed", "{record:#?}");
    assert_eq!(record.flow.as_deref(), Some("main"), "{record:#?}");
    assert_eq!(
        record.menu, "0",
        "the key pressed after the take-over: {record:#?}"
    );
    let (from_node, _, outcome) = failover_of(record).expect("failover recorded");
    assert!(names_node(&from_node, a), "{record:#?}");
    assert_eq!(outcome, "resumed", "{record:#?}");
}

#[test]
fn a_callback_keeps_its_place_through_kill_9_of_its_queues_home() {
    let _serial = serial();
    let trunk_port = common::free_port();
    let (mut cluster, roles) = start_with("failover-callback", 1, 2, |node| {
        node.extra = format!(
            "[[trunk]]\nname = \"carrier\"\naddress = \"127.0.0.1:{trunk_port}\"\n\
             [[queue]]\nname = \"callbacks\"\n\
             callback = {{ key = \"9\", trunk = \"carrier\", retry_after_secs = 1 }}\n\
             [[did]]\nnumber = \"1005\"\nqueue = \"callbacks\"\n\
             [[agents]]\nextensions = \"3005\"\npassword = \"pw{{ext}}\"\n\
             queues = [\"callbacks\"]\navailable_on_register = true\n"
        );
    });
    let home = poll(Duration::from_secs(20), "callbacks queue placed", || {
        placement(&cluster, roles.b)?
            .get("queue/callbacks")
            .map(|p| p.node)
            .ok_or_else(|| "not placed yet".to_owned())
    });
    // The caller dials a node that is not the queue's home, which is then killed.
    let entry = [roles.a, roles.b, roles.c]
        .into_iter()
        .find(|&n| n != home)
        .expect("a node other than the queue's home");
    let survivor = [roles.a, roles.b, roles.c]
        .into_iter()
        .find(|&n| n != home && n != entry)
        .expect("a third node");
    eprintln!("[test] queue callbacks on node {home}; the caller dials node {entry}");
    let customer = cluster
        .node(entry)
        .sipp("carrier", "agent_answer_wait_bye.xml")
        .server()
        .local_port(trunk_port)
        .calls(1)
        .duration_ms(200)
        .timeout_secs(120)
        .spawn();
    let sipp = cluster
        .node(entry)
        .sipp("caller-callback", "caller_callback.xml")
        .dial("1005")
        .timeout_secs(60);
    std::fs::create_dir_all(sipp.dir()).expect("sipp dir");
    for key in ['9', '1'] {
        std::fs::copy(
            format!("/usr/share/sip-tester/dtmf_2833_{key}.pcap"),
            sipp.dir().join(format!("key{key}.pcap")),
        )
        .expect("SIPp's dtmf pcaps (Debian's sip-tester ships them)");
    }
    sipp.spawn().expect_success_with(cluster.node(entry));
    wait_call_states(&cluster, entry, &[("callback", 1)]);

    let failed_at = Instant::now();
    eprintln!("[test] kill -9 node {home}, the queue's home");
    cluster.kill9(home);
    wait_declared_failed(&cluster, &[entry, survivor], home, failed_at);
    // The queue starts again elsewhere and the callback joins it again in its place.
    poll(
        Duration::from_secs(30),
        "the callback waiting in the moved queue",
        || {
            let queue = get_json(&cluster, entry, "/v1/queues/callbacks")?;
            if queue["waiting"] == 1 {
                Ok(())
            } else {
                Err(queue.to_string())
            }
        },
    );
    let phone = cluster
        .node(entry)
        .sipp("agent-3005", "agent_answer_send_bye.xml")
        .server()
        .calls(1)
        .duration_ms(200)
        .set("talk_ms", "8000")
        .timeout_secs(90)
        .spawn();
    cluster
        .node(entry)
        .register_agents(&["3005".to_owned()], phone.local_port);
    phone.expect_success_with(cluster.node(entry));
    customer.expect_success_with(cluster.node(entry));
    let records = poll(Duration::from_secs(20), "both records", || {
        let cdrs = cluster.node(entry).cdrs();
        if cdrs.len() >= 2 {
            Ok(cdrs)
        } else {
            Err(format!("{} records", cdrs.len()))
        }
    });
    let asked = records
        .iter()
        .find(|c| c.disposition == "callback-requested")
        .expect("the caller's record");
    let called = records
        .iter()
        .find(|c| c.callback_of.as_deref() == Some(asked.id.as_str()))
        .expect("the callback's record");
    assert_eq!(called.disposition, "answered", "{called:#?}");
    assert_eq!(called.agent.as_deref(), Some("3005"), "{called:#?}");
}
