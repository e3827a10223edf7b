//! Calls across a three-node cluster: the queue lives on one node (its placement), the agent's
//! phone registers at a second, the caller dials a third; then the queue's node is killed, a
//! caller arrives while the queue's home is dead, the leader declares the node failed and the
//! queue moves, the operator removes the dead node, and the waiting caller is connected.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster::{Cluster, ClusterOptions, poll};
use common::{Node, SippProcess, http};
use serde::Deserialize;

/// One entry of `GET /v1/cluster/placement`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
struct Placement {
    node: u64,
    epoch: u64,
}

#[derive(Debug, Deserialize)]
struct PlacementJson {
    actors: BTreeMap<String, Placement>,
}

/// Node `id`'s view of where every actor lives.
fn placement(cluster: &Cluster, id: u64) -> Result<BTreeMap<String, Placement>, String> {
    let resp = http::get(
        cluster.http(id),
        "/v1/cluster/placement",
        Duration::from_secs(2),
    )
    .map_err(|e| format!("node {id}: {e}"))?;
    if resp.status != 200 {
        return Err(format!("node {id}: HTTP {} {}", resp.status, resp.text()));
    }
    let json: PlacementJson =
        serde_json::from_slice(&resp.body).map_err(|e| format!("node {id}: {e}"))?;
    Ok(json.actors)
}

/// Waits until `ids` agree on a placement of `actors` actors and returns it.
fn agreed_placement(cluster: &Cluster, ids: &[u64], actors: usize) -> BTreeMap<String, Placement> {
    poll(Duration::from_secs(20), "placement agreed", || {
        let first = placement(cluster, ids[0])?;
        if first.len() != actors {
            return Err(format!("{} of {actors} actors placed", first.len()));
        }
        for &id in &ids[1..] {
            if placement(cluster, id)? != first {
                return Err(format!("node {id} disagrees with node {}", ids[0]));
            }
        }
        Ok(first)
    })
}

/// Waits until `GET path` on `node` answers 200 with JSON satisfying `check`.
fn wait_json(node: &Node, path: &str, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    poll(Duration::from_secs(20), what, || {
        let resp = http::get(node.http, path, Duration::from_secs(3)).map_err(|e| e.to_string())?;
        let json: serde_json::Value =
            serde_json::from_slice(&resp.body).map_err(|e| format!("HTTP {}: {e}", resp.status))?;
        if resp.status == 200 && check(&json) {
            Ok(())
        } else {
            Err(format!("HTTP {}: {json}", resp.status))
        }
    });
}

fn agent_available(node: &Node, ext: &str) {
    wait_json(
        node,
        &format!("/v1/agents/{ext}"),
        &format!("agent {ext} available as node {} sees it", node.name),
        |a| a["status"] == "available",
    );
}

/// A SIPp caller into `node` for one call of `talk_ms`.
fn call(node: &Node, talk_ms: u64) -> SippProcess {
    node.sipp("caller", "caller.xml")
        .duration_ms(talk_ms)
        .timeout_secs(60)
        .spawn()
}

#[test]
fn calls_cross_nodes_and_survive_the_queue_home_dying() {
    let mut options = ClusterOptions::new(3);
    options.node.agents = "2001-2006".into();
    let mut cluster = Cluster::with("calls", options);
    cluster.wait_leader(Duration::from_secs(20));
    let actors = cluster.options.actors();
    let placed = agreed_placement(&cluster, &[1, 2, 3], actors);
    let queue_home = placed["queue/support"].node;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&n| n != queue_home).collect();
    let (register_at, call_into) = (others[0], others[1]);
    // Prefer an agent on the queue's node: it then moves with the queue and must learn its
    // phone's registration afresh.
    let ext = (2001..=2006)
        .map(|n| n.to_string())
        .find(|ext| placed[&format!("agent/{ext}")].node == queue_home)
        .unwrap_or_else(|| "2001".into());
    eprintln!(
        "[test] queue on node {queue_home}, agent {ext} on node {}, phone registers at node \
         {register_at}, calls arrive at node {call_into}",
        placed[&format!("agent/{ext}")].node
    );

    // The phone answers two calls, one before and one after the queue's node dies.
    let phone = cluster
        .node(register_at)
        .sipp(&format!("agent-{ext}"), "agent_answer_wait_bye.xml")
        .server()
        .calls(2)
        .timeout_secs(120)
        .spawn();
    wait_json(
        cluster.node(call_into),
        "/v1/queues/support",
        "queue reachable from the caller's node",
        |q| q["name"] == "support",
    );
    cluster
        .node(register_at)
        .register_agents(std::slice::from_ref(&ext), phone.local_port);
    agent_available(cluster.node(call_into), &ext);

    call(cluster.node(call_into), 1000).expect_success_with(cluster.node(call_into));
    let cdrs = cluster
        .node(call_into)
        .wait_cdrs(1, Duration::from_secs(10));
    let cdr = &cdrs[0];
    cdr.check_invariants();
    assert_eq!(cdr.disposition, "answered", "{cdr:#?}");
    assert_eq!(cdr.agent.as_deref(), Some(ext.as_str()), "{cdr:#?}");
    assert_eq!(cdr.queue.as_deref(), Some("support"), "{cdr:#?}");

    // The queue's home dies, and a caller arrives meanwhile: its Enqueue is lost with the node.
    cluster.kill9(queue_home);
    let waiting = call(cluster.node(call_into), 500);
    std::thread::sleep(Duration::from_secs(1));
    // The leader declares the dead node failed (after an election if it led); the queue moves
    // to a survivor and the caller, still hearing music on hold, joins it again.
    let survivors = [register_at, call_into];
    cluster.wait_leader_among(&survivors, Duration::from_secs(20));
    poll(
        Duration::from_secs(10),
        "the dead node declared failed",
        || {
            for id in survivors {
                let s = cluster.try_status(id)?;
                let m = s
                    .member(queue_home)
                    .ok_or_else(|| format!("node {id}: no member {queue_home}"))?;
                if !m.status_is("failed") {
                    return Err(format!("node {id}: node {queue_home} is {}", m.status));
                }
            }
            Ok(())
        },
    );
    // Removing a failed member still works.
    poll(Duration::from_secs(20), "ctl node remove", || {
        let out = cluster.ctl(&[
            "node",
            "remove",
            "--http",
            &cluster.http(call_into).to_string(),
            "--id",
            &queue_home.to_string(),
        ]);
        out.success
            .then_some(())
            .ok_or_else(|| format!("{}{}", out.stdout, out.stderr))
    });
    let moved = agreed_placement(&cluster, &survivors, actors);
    assert!(
        moved.values().all(|p| p.node != queue_home),
        "actors left on the removed node: {moved:?}"
    );
    eprintln!(
        "[test] queue now on node {}, agent {ext} on node {}",
        moved["queue/support"].node,
        moved[&format!("agent/{ext}")].node
    );
    // A moved agent starts afresh and learns its phone's registration from the node holding it.
    waiting.expect_success_with(cluster.node(call_into));
    phone.expect_success_with(cluster.node(register_at));
    let cdrs = cluster
        .node(call_into)
        .wait_cdrs(2, Duration::from_secs(10));
    let cdr = &cdrs[1];
    cdr.check_invariants();
    assert_eq!(cdr.disposition, "answered", "{cdr:#?}");
    assert_eq!(cdr.agent.as_deref(), Some(ext.as_str()), "{cdr:#?}");
    assert!(
        cdr.wait_ms >= 1000,
        "the caller waited through the move: {cdr:#?}"
    );
}

/// Six queues served by agent 3001, each with a DID (`11N`) and a priority-10 DID (`12N`).
fn fair_pick_config() -> String {
    let mut extra = String::from(
        "[[agents]]\nextensions = \"3001\"\npassword = \"pw{ext}\"\n\
         queues = [\"q1\", \"q2\", \"q3\", \"q4\", \"q5\", \"q6\"]\navailable_on_register = true\n",
    );
    for n in 1..=6 {
        extra.push_str(&format!(
            "[[queue]]\nname = \"q{n}\"\n\
             [[did]]\nnumber = \"110{n}\"\nqueue = \"q{n}\"\n\
             [[did]]\nnumber = \"120{n}\"\nqueue = \"q{n}\"\npriority = 10\n"
        ));
    }
    extra
}

#[test]
fn a_freed_agent_takes_the_best_caller_across_queues_homed_on_different_nodes() {
    let mut options = ClusterOptions::new(3);
    options.node.agents = "2001".into();
    options.node.extra = fair_pick_config();
    let mut cluster = Cluster::with("fair-pick", options);
    cluster.wait_leader(Duration::from_secs(20));
    // support, q1-q6, agents 2001 and 3001.
    let placed = agreed_placement(&cluster, &[1, 2, 3], 9);
    let home = |n: u32| placed[&format!("queue/q{n}")].node;
    let (a, b) = (1..=6)
        .flat_map(|x| (1..=6).map(move |y| (x, y)))
        .find(|&(x, y)| home(x) != home(y))
        .expect("two of six queues on different nodes");
    eprintln!(
        "[test] queue q{a} on node {}, queue q{b} on node {}",
        home(a),
        home(b)
    );
    let node = cluster.node(1);
    let wait_for = |queue: u32, waiting: u64| {
        wait_json(
            node,
            &format!("/v1/queues/q{queue}"),
            &format!("{waiting} waiting in q{queue}"),
            |q| q["waiting"] == waiting,
        )
    };
    // Nobody is logged in: X waits in q{a}, then Y in q{b}, then V in q{b} with priority 10.
    let dial = |label: &str, did: String| {
        node.sipp(label, "caller.xml")
            .dial(&did)
            .duration_ms(300)
            .timeout_secs(60)
            .spawn()
    };
    let x = dial("caller-x", format!("110{a}"));
    wait_for(a, 1);
    let y = dial("caller-y", format!("110{b}"));
    wait_for(b, 1);
    let v = dial("caller-v", format!("120{b}"));
    wait_for(b, 2);

    // The agent logs in: each time it frees up it takes the highest priority, then the
    // longest waiting caller of all its queues, wherever they are homed.
    let phone = node
        .sipp("agent-3001", "agent_answer_wait_bye.xml")
        .server()
        .calls(3)
        .duration_ms(200)
        .timeout_secs(90)
        .spawn();
    node.register_agents(&["3001".to_owned()], phone.local_port);
    for caller in [x, y, v] {
        caller.expect_success_with(node);
    }
    phone.expect_success_with(node);
    let mut cdrs = node.wait_cdrs(3, Duration::from_secs(10));
    cdrs.sort_by_key(|c| c.answered_ms);
    let order: Vec<&str> = cdrs.iter().map(|c| c.did.as_str()).collect();
    assert_eq!(
        order,
        [format!("120{b}"), format!("110{a}"), format!("110{b}")],
        "{cdrs:#?}"
    );
}
