//! Clusters of real `switchyard node` processes on 127.0.0.1: a temp CA and per-node
//! certificates made with `switchyard ctl`, configs rendered by [`super::render_config`] with a
//! `[cluster]` section, start / `kill -9` / graceful stop / restart on the same data dir per
//! node, the `/v1/cluster/...` API, network partitions with iptables, and a history-checked
//! writer for the replicated configuration.
//!
//! Nodes are addressed by their cluster node id (1, 2, ...). Every node gets fresh ports (SIP,
//! HTTP, QUIC cluster port, an RTP range), so tests run in parallel; a partition only drops
//! packets between the cluster ports of its own test.
//!
//! Start and restart nodes from the test's own thread: a node gets SIGTERM when the thread that
//! started it exits (see [`super::DieWithParent`]).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    ClusterMemberSection, ClusterSection, Node, NodeConfig, NodePorts, TestDir, free_port, http,
    switchyard_bin,
};

// ---------------------------------------------------------------------------------------------
// Status as `GET /v1/cluster/status` reports it

/// `GET /v1/cluster/status` (the node's `StatusJson`).
#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    pub node_id: u64,
    pub role: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_index: u64,
    pub lease_valid: bool,
    pub config_revision: u64,
    pub placement_epoch: u64,
    pub members: Vec<MemberInfo>,
    pub sites: BTreeMap<String, Vec<u64>>,
}

/// One member in [`Status::members`].
#[derive(Debug, Clone, Deserialize)]
pub struct MemberInfo {
    pub id: u64,
    pub name: String,
    pub site: String,
    pub cluster_addr: String,
    pub sip_addr: String,
    pub http_addr: String,
    /// `Active`, `Draining`, `Failed` or `Removed`.
    pub status: String,
    pub voter: bool,
    /// `up`, `down` or `unknown` (only the leader knows every member's).
    pub health: String,
    pub connected: bool,
    pub rtt_ms: Option<f64>,
    pub last_heard_ms: Option<u64>,
    pub replication_lag: Option<u64>,
    pub queues: usize,
    pub agents: usize,
}

impl MemberInfo {
    /// Case-insensitive comparison of [`MemberInfo::status`].
    pub fn status_is(&self, status: &str) -> bool {
        self.status.eq_ignore_ascii_case(status)
    }
}

impl Status {
    pub fn is_leader(&self) -> bool {
        self.role == "leader"
    }

    pub fn member(&self, id: u64) -> Option<&MemberInfo> {
        self.members.iter().find(|m| m.id == id)
    }

    /// Ids of the members not marked removed.
    pub fn live_members(&self) -> Vec<u64> {
        self.members
            .iter()
            .filter(|m| !m.status_is("removed"))
            .map(|m| m.id)
            .collect()
    }

    /// Ids of the voters.
    pub fn voters(&self) -> Vec<u64> {
        self.members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.id)
            .collect()
    }

    /// Queues + agents placed on all members.
    pub fn placed_actors(&self) -> usize {
        self.members.iter().map(|m| m.queues + m.agents).sum()
    }

    /// One line for logs: `node 2 follower of 1 term 3 commit 40 applied 40 lease ok`.
    pub fn brief(&self) -> String {
        format!(
            "node {} {} (leader {:?}) term {} commit {} applied {} last {} lease {}",
            self.node_id,
            self.role,
            self.leader,
            self.term,
            self.commit_index,
            self.applied_index,
            self.last_index,
            if self.lease_valid { "ok" } else { "LOST" }
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Polling

/// Calls `f` every 25 ms until it returns `Ok`, and returns that; panics after `timeout` with
/// `what` and the last error.
pub fn poll<T>(timeout: Duration, what: &str, f: impl FnMut() -> Result<T, String>) -> T {
    try_poll(timeout, f)
        .unwrap_or_else(|last| panic!("{what}: not within {timeout:?}; last: {last}"))
}

/// As [`poll`], returning the last error instead of panicking.
pub fn try_poll<T>(
    timeout: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(25)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster

/// How to build a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Nodes 1..=bootstrap are the initial members (`[[cluster.bootstrap]]`) and start at once.
    pub bootstrap: u64,
    /// Nodes prepared in all (certificates, ports); the ones past `bootstrap` start empty, with
    /// [`Cluster::start_node`], and wait to be added with `ctl node add`.
    pub total: u64,
    /// Node `id` is in site `sites[(id - 1) % sites.len()]`.
    pub sites: Vec<String>,
    /// Everything but ports, site and `[cluster]` (which the cluster fills in).
    pub node: NodeConfig,
}

impl ClusterOptions {
    /// `n` initial members in sites `site-a`, `site-b` alternately, one queue and 20 agents.
    pub fn new(n: u64) -> Self {
        Self {
            bootstrap: n,
            total: n,
            sites: vec!["site-a".into(), "site-b".into()],
            node: NodeConfig {
                agents: "2001-2020".into(),
                rtp_ports: 200,
                ..NodeConfig::default()
            },
        }
    }

    /// Queues + agents every node's config defines (the actors the cluster places).
    pub fn actors(&self) -> usize {
        let agents = match self.node.agents.split_once('-') {
            Some((a, b)) => {
                b.trim().parse::<usize>().expect("agent range")
                    - a.trim().parse::<usize>().expect("agent range")
                    + 1
            }
            None => 1,
        };
        1 + agents
    }
}

/// Where a prepared node lives.
#[derive(Debug, Clone)]
pub struct MemberSpec {
    pub id: u64,
    pub name: String,
    pub site: String,
    /// QUIC (UDP) cluster address.
    pub cluster: SocketAddr,
    pub ports: NodePorts,
    pub certs: PathBuf,
}

impl MemberSpec {
    pub fn http(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.http))
    }

    pub fn sip(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.sip))
    }

    fn section(&self) -> ClusterMemberSection {
        ClusterMemberSection {
            id: self.id,
            name: self.name.clone(),
            site: self.site.clone(),
            cluster_addr: self.cluster,
            sip_addr: self.sip(),
            http_addr: self.http(),
        }
    }
}

/// Output of a `switchyard ctl` run.
#[derive(Debug)]
pub struct CtlOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Nodes 1..=N of one cluster; every process is killed on drop, and each node's log is printed
/// if the test failed.
pub struct Cluster {
    pub name: String,
    pub options: ClusterOptions,
    specs: Vec<MemberSpec>,
    bootstrap: Vec<ClusterMemberSection>,
    /// Index `id - 1`; `None` until the node is first started.
    nodes: Vec<Option<Node>>,
    /// CA and certificates; dropped last (kept when the test fails).
    pub dir: TestDir,
}

impl Cluster {
    /// `n` initial members with [`ClusterOptions::new`].
    pub fn start(name: &str, n: u64) -> Cluster {
        Cluster::with(name, ClusterOptions::new(n))
    }

    /// Creates the CA and certificates for every node, starts the initial members at once and
    /// waits until each answers `/healthz` (not until a leader is elected: see
    /// [`Cluster::wait_leader`]).
    pub fn with(name: &str, options: ClusterOptions) -> Cluster {
        assert!(options.bootstrap >= 1 && options.total >= options.bootstrap);
        let dir = TestDir::new(&format!("cluster-{name}"));
        let ca = dir.join("ca");
        ctl_ok(&["ca-create", "--dir", &ca.to_string_lossy()]);
        let specs: Vec<MemberSpec> = (1..=options.total)
            .map(|id| {
                let node_name = format!("{name}-{id}");
                let certs = dir.join(&format!("certs/node{id}"));
                ctl_ok(&[
                    "cert-issue",
                    "--ca",
                    &ca.to_string_lossy(),
                    "--node-id",
                    &id.to_string(),
                    "--name",
                    &node_name,
                    "--out",
                    &certs.to_string_lossy(),
                ]);
                MemberSpec {
                    id,
                    name: node_name,
                    site: options.sites[(id as usize - 1) % options.sites.len()].clone(),
                    cluster: SocketAddr::from(([127, 0, 0, 1], free_port())),
                    ports: NodePorts::free(options.node.rtp_ports),
                    certs,
                }
            })
            .collect();
        let bootstrap = specs[..options.bootstrap as usize]
            .iter()
            .map(MemberSpec::section)
            .collect();
        let mut cluster = Cluster {
            name: name.to_owned(),
            nodes: (0..options.total).map(|_| None).collect(),
            options,
            specs,
            bootstrap,
            dir,
        };
        let initial: Vec<u64> = (1..=cluster.options.bootstrap).collect();
        for &id in &initial {
            let node = Node::spawn(
                &cluster.specs[id as usize - 1].name,
                cluster.node_config(id),
            );
            cluster.nodes[id as usize - 1] = Some(node);
        }
        for &id in &initial {
            cluster.node_mut(id).wait_ready();
        }
        eprintln!(
            "[cluster {name}] {} nodes started; cluster ports {:?}",
            initial.len(),
            cluster
                .specs
                .iter()
                .map(|s| s.cluster.port())
                .collect::<Vec<_>>()
        );
        cluster
    }

    /// The config of node `id`: the common one, plus its ports, site and `[cluster]` section
    /// with the (identical) bootstrap list.
    fn node_config(&self, id: u64) -> NodeConfig {
        let spec = self.spec(id);
        NodeConfig {
            site: spec.site.clone(),
            ports: Some(spec.ports),
            cluster: Some(ClusterSection {
                node_id: id,
                listen: spec.cluster,
                certs: spec.certs.clone(),
                bootstrap: self.bootstrap.clone(),
            }),
            ..self.options.node.clone()
        }
    }

    /// Starts a prepared node that never ran (e.g. one past the bootstrap list, which then
    /// waits to be added).
    pub fn start_node(&mut self, id: u64) {
        assert!(
            self.nodes[id as usize - 1].is_none(),
            "node {id} was started before; use restart"
        );
        let mut node = Node::spawn(&self.spec(id).name, self.node_config(id));
        node.wait_ready();
        self.nodes[id as usize - 1] = Some(node);
    }

    pub fn spec(&self, id: u64) -> &MemberSpec {
        self.specs
            .get(id as usize - 1)
            .unwrap_or_else(|| panic!("cluster {} has no node {id}", self.name))
    }

    pub fn node(&self, id: u64) -> &Node {
        self.nodes[id as usize - 1]
            .as_ref()
            .unwrap_or_else(|| panic!("node {id} was never started"))
    }

    pub fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes[id as usize - 1]
            .as_mut()
            .unwrap_or_else(|| panic!("node {id} was never started"))
    }

    /// Every prepared node id.
    pub fn all_ids(&self) -> Vec<u64> {
        self.specs.iter().map(|s| s.id).collect()
    }

    /// Ids of the nodes whose process is running.
    pub fn running(&mut self) -> Vec<u64> {
        let mut ids = Vec::new();
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if let Some(node) = node
                && node.is_running()
            {
                ids.push(i as u64 + 1);
            }
        }
        ids
    }

    pub fn http(&self, id: u64) -> SocketAddr {
        self.spec(id).http()
    }

    /// `kill -9` node `id` (its data dir stays).
    pub fn kill9(&mut self, id: u64) {
        self.node_mut(id).kill9();
    }

    /// SIGTERM node `id` and wait for a clean exit.
    pub fn stop(&mut self, id: u64) {
        self.node_mut(id).stop_gracefully();
    }

    /// Starts node `id` again on its data dir; waits for `/healthz`.
    pub fn restart(&mut self, id: u64) {
        self.node_mut(id).restart();
    }

    /// Runs `switchyard ctl ARGS`.
    pub fn ctl(&self, args: &[&str]) -> CtlOutput {
        ctl(args)
    }

    // ---- API ------------------------------------------------------------------------------

    /// `GET /v1/cluster/status` on node `id` (2 s timeout).
    pub fn try_status(&self, id: u64) -> Result<Status, String> {
        let resp = http::get(self.http(id), "/v1/cluster/status", Duration::from_secs(2))
            .map_err(|e| format!("node {id}: GET /v1/cluster/status: {e}"))?;
        if resp.status != 200 {
            return Err(format!(
                "node {id}: GET /v1/cluster/status: HTTP {} {}",
                resp.status,
                resp.text()
            ));
        }
        serde_json::from_slice(&resp.body)
            .map_err(|e| format!("node {id}: status JSON ({e}): {}", resp.text()))
    }

    /// As [`Cluster::try_status`]; panics on failure.
    pub fn status(&self, id: u64) -> Status {
        self.try_status(id).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits until every running node follows one leader in one term, the leader says it leads
    /// and all are in good standing; returns the leader's status.
    pub fn wait_leader(&mut self, timeout: Duration) -> Status {
        let ids = self.running();
        self.wait_leader_among(&ids, timeout)
    }

    /// [`Cluster::wait_leader`] over the nodes `ids` only (e.g. one side of a partition).
    pub fn wait_leader_among(&self, ids: &[u64], timeout: Duration) -> Status {
        poll(
            timeout,
            &format!("one leader in good standing among nodes {ids:?}"),
            || self.leader_among(ids),
        )
    }

    fn leader_among(&self, ids: &[u64]) -> Result<Status, String> {
        let all: Vec<Status> = ids
            .iter()
            .map(|&id| self.try_status(id))
            .collect::<Result<_, _>>()?;
        let briefs = || all.iter().map(Status::brief).collect::<Vec<_>>().join("; ");
        let leader = all[0]
            .leader
            .ok_or_else(|| format!("no leader: {}", briefs()))?;
        if !ids.contains(&leader) {
            return Err(format!("leader {leader} not among {ids:?}: {}", briefs()));
        }
        if all
            .iter()
            .any(|s| s.leader != Some(leader) || s.term != all[0].term || !s.lease_valid)
        {
            return Err(format!("not settled: {}", briefs()));
        }
        let status = all
            .into_iter()
            .find(|s| s.node_id == leader)
            .expect("leader is among ids");
        if !status.is_leader() {
            return Err(format!("node {leader} does not lead: {}", status.brief()));
        }
        Ok(status)
    }

    /// Waits until the nodes `ids` follow one leader, every one has applied everything the
    /// leader committed (same commit and applied index everywhere), and the leader sees each
    /// of them as a voter, `up`, with no replication lag. Returns every node's status.
    pub fn wait_converged(&self, ids: &[u64], timeout: Duration) -> Vec<Status> {
        poll(
            timeout,
            &format!("nodes {ids:?} converged (same commit index, lag 0, health up)"),
            || {
                let leader = self.leader_among(ids)?;
                for &id in ids {
                    let m = leader
                        .member(id)
                        .ok_or_else(|| format!("node {id} is not a member"))?;
                    // The leader reports no lag for itself.
                    let lag_ok = id == leader.node_id || m.replication_lag == Some(0);
                    if !m.voter || m.health != "up" || !lag_ok {
                        return Err(format!("leader's view of node {id}: {m:?}"));
                    }
                }
                let all: Vec<Status> = ids
                    .iter()
                    .map(|&id| self.try_status(id))
                    .collect::<Result<_, _>>()?;
                let commit = leader.commit_index;
                if all
                    .iter()
                    .any(|s| s.commit_index != commit || s.applied_index != commit)
                {
                    return Err(format!(
                        "commit {commit} not applied everywhere: {}",
                        all.iter().map(Status::brief).collect::<Vec<_>>().join("; ")
                    ));
                }
                Ok(all)
            },
        )
    }

    /// Like [`Cluster::wait_converged`], but for a cluster that keeps taking writes: every
    /// node in `ids` follows the leader, which sees it `up` as a voter that has replicated
    /// the leader's commit index C, and every node has applied C (or more). Returns the
    /// leader's status.
    pub fn wait_caught_up(&self, ids: &[u64], timeout: Duration) -> Status {
        poll(
            timeout,
            &format!("nodes {ids:?} caught up with the leader"),
            || {
                let leader = self.leader_among(ids)?;
                let commit = leader.commit_index;
                for &id in ids {
                    let m = leader
                        .member(id)
                        .ok_or_else(|| format!("node {id} is not a member"))?;
                    let replicated = id == leader.node_id
                        || m.replication_lag
                            .is_some_and(|lag| leader.last_index - lag >= commit);
                    if !m.voter || m.health != "up" || !replicated {
                        return Err(format!(
                            "leader's view of node {id} (commit {commit}, last {}): {m:?}",
                            leader.last_index
                        ));
                    }
                }
                for &id in ids {
                    let s = self.try_status(id)?;
                    if s.applied_index < commit {
                        return Err(format!("commit {commit} not applied: {}", s.brief()));
                    }
                }
                Ok(leader)
            },
        )
    }

    /// `PUT /v1/cluster/config/KEY` with `value` through node `id`, classified.
    pub fn put(&self, id: u64, key: &str, value: &Value, timeout: Duration) -> Outcome {
        put(self.http(id), key, value, timeout).0
    }

    /// As [`Cluster::put`]; panics unless the write was acknowledged.
    pub fn put_ok(&self, id: u64, key: &str, value: &Value) {
        match self.put(id, key, value, Duration::from_secs(10)) {
            Outcome::Ok(_) => {}
            other => panic!("PUT {key} through node {id}: {other:?}"),
        }
    }

    /// `GET /v1/cluster/config/KEY` on node `id` (its local applied state): the value, or
    /// `None` for 404; panics on anything else.
    pub fn get(&self, id: u64, key: &str) -> Option<Value> {
        get_config(self.http(id), key).unwrap_or_else(|e| panic!("node {id}: {e}"))
    }

    /// Blocks UDP between the cluster ports of nodes `a` and nodes `b`, both ways, until the
    /// returned guard is dropped.
    pub fn partition(&self, a: &[u64], b: &[u64]) -> Partition {
        let ports = |ids: &[u64]| -> Vec<u16> {
            ids.iter().map(|&id| self.spec(id).cluster.port()).collect()
        };
        Partition::new(&ports(a), &ports(b), &format!("nodes {a:?} | nodes {b:?}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Kill everything at once; each Node's own drop then prints its log on failure.
        for node in self.nodes.iter_mut().flatten() {
            node.kill9();
        }
    }
}

/// Runs `switchyard ctl ARGS`.
pub fn ctl(args: &[&str]) -> CtlOutput {
    let out = Command::new(switchyard_bin())
        .arg("ctl")
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run switchyard ctl {args:?}: {e}"));
    CtlOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `switchyard ctl ARGS`; panics (with its output) unless it succeeds. Returns stdout.
pub fn ctl_ok(args: &[&str]) -> String {
    let out = ctl(args);
    assert!(
        out.success,
        "switchyard ctl {} failed:\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.stdout,
        out.stderr
    );
    out.stdout
}

// ---------------------------------------------------------------------------------------------
// Writes and their outcomes

/// What a client can know about a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: acknowledged, so it must be in the replicated state.
    Ok(u16),
    /// Definitely not applied: the request never reached the node (connection refused), or the
    /// node answered 503 (no leader: nothing was proposed) or 4xx (refused before, or
    /// rejected by, the state machine).
    Refused(String),
    /// May or may not have been applied: no answer (timeout, connection dropped mid-request),
    /// or 502 / other 5xx (a forward to the leader that timed out, an outcome Raft reports as
    /// unknown).
    Unknown(String),
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok(_))
    }

    /// The HTTP status, if the node answered.
    pub fn http_status(&self) -> Option<u16> {
        let text = match self {
            Outcome::Ok(code) => return Some(*code),
            Outcome::Refused(t) | Outcome::Unknown(t) => t,
        };
        text.strip_prefix("HTTP ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
    }
}

/// `PUT /v1/cluster/config/KEY` on `addr`; the outcome and how long it took.
pub fn put(addr: SocketAddr, key: &str, value: &Value, timeout: Duration) -> (Outcome, Duration) {
    let started = Instant::now();
    let outcome = put_inner(addr, key, value, timeout);
    (outcome, started.elapsed())
}

fn put_inner(addr: SocketAddr, key: &str, value: &Value, timeout: Duration) -> Outcome {
    let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(s) => s,
        // Nothing was sent.
        Err(e) => return Outcome::Refused(format!("not sent: connect: {e}")),
    };
    let body = value.to_string();
    let request = format!(
        "PUT /v1/cluster/config/{key} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let sent = stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .and_then(|()| stream.write_all(request.as_bytes()));
    if let Err(e) = sent {
        return Outcome::Unknown(format!("send: {e}"));
    }
    let mut raw = Vec::new();
    if let Err(e) = stream.read_to_end(&mut raw) {
        return Outcome::Unknown(format!("no answer: {e}"));
    }
    match http::parse(&raw) {
        Err(e) => Outcome::Unknown(format!("bad answer ({e}), {} bytes", raw.len())),
        Ok(resp) if (200..300).contains(&resp.status) => Outcome::Ok(resp.status),
        Ok(resp) if resp.status == 503 || (400..500).contains(&resp.status) => {
            Outcome::Refused(format!("HTTP {} {}", resp.status, resp.text()))
        }
        Ok(resp) => Outcome::Unknown(format!("HTTP {} {}", resp.status, resp.text())),
    }
}

/// `GET /v1/cluster/config/KEY`: `Some(value)`, `None` on 404, `Err` otherwise.
pub fn get_config(addr: SocketAddr, key: &str) -> Result<Option<Value>, String> {
    let path = format!("/v1/cluster/config/{key}");
    let resp =
        http::get(addr, &path, Duration::from_secs(5)).map_err(|e| format!("GET {path}: {e}"))?;
    match resp.status {
        404 => Ok(None),
        200 => {
            let body: Value = serde_json::from_slice(&resp.body)
                .map_err(|e| format!("GET {path}: bad JSON ({e}): {}", resp.text()))?;
            body.get("value")
                .cloned()
                .map(Some)
                .ok_or_else(|| format!("GET {path}: no `value`: {body}"))
        }
        code => Err(format!("GET {path}: HTTP {code} {}", resp.text())),
    }
}

// ---------------------------------------------------------------------------------------------
// History-checked writer

/// One write of the [`Writer`]: key `PREFIX/n`, value `n`.
#[derive(Debug, Clone)]
pub struct WriteRecord {
    pub n: u64,
    /// The node it was sent to.
    pub node: u64,
    pub outcome: Outcome,
    /// When it started, from the writer's start.
    pub at: Duration,
    pub took: Duration,
}

/// Threads issuing unique writes (`PUT PREFIX/n` = `n`, n = 1, 2, ...) round-robin to a set of
/// nodes, recording each outcome, until stopped. Requests time out after 10 s (longer than the
/// node's 5 s forwarding timeout, so most writes get a definite answer).
pub struct Writer {
    prefix: String,
    origin: Instant,
    stop: Arc<AtomicBool>,
    records: Arc<Mutex<Vec<WriteRecord>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Writer {
    /// `threads` writers over `targets` (node id, HTTP address), each pausing `pace` between
    /// its writes.
    pub fn start(
        prefix: &str,
        targets: Vec<(u64, SocketAddr)>,
        threads: usize,
        pace: Duration,
    ) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let records = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(AtomicU64::new(1));
        let origin = Instant::now();
        let threads = (0..threads)
            .map(|_| {
                let (stop, records, next, targets) =
                    (stop.clone(), records.clone(), next.clone(), targets.clone());
                let prefix = prefix.to_owned();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        let (node, addr) = targets[(n as usize) % targets.len()];
                        let at = origin.elapsed();
                        let (outcome, took) = put(
                            addr,
                            &format!("{prefix}/{n}"),
                            &json!(n),
                            Duration::from_secs(10),
                        );
                        records.lock().unwrap().push(WriteRecord {
                            n,
                            node,
                            outcome,
                            at,
                            took,
                        });
                        std::thread::sleep(pace);
                    }
                })
            })
            .collect();
        Writer {
            prefix: prefix.to_owned(),
            origin,
            stop,
            records,
            threads,
        }
    }

    /// Time since the writer started, on the clock of [`WriteRecord::at`].
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Acknowledged writes so far.
    pub fn acked(&self) -> usize {
        self.records
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.outcome.is_ok())
            .count()
    }

    /// Waits until `more` writes beyond those acknowledged now are acknowledged.
    pub fn wait_acks(&self, more: usize, timeout: Duration) {
        let target = self.acked() + more;
        poll(timeout, &format!("{more} more acknowledged writes"), || {
            let acked = self.acked();
            if acked >= target {
                Ok(())
            } else {
                Err(format!("{acked} of {target} acknowledged"))
            }
        });
    }

    /// Stops the threads (waiting for writes in flight) and returns the history.
    pub fn stop(mut self) -> History {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().expect("writer thread panicked");
        }
        let mut records = std::mem::take(&mut *self.records.lock().unwrap());
        records.sort_by_key(|r| r.n);
        History {
            prefix: self.prefix.clone(),
            records,
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The writes a [`Writer`] made.
#[derive(Debug)]
pub struct History {
    pub prefix: String,
    pub records: Vec<WriteRecord>,
}

/// What [`History::verify`] found.
#[derive(Debug, Default)]
pub struct HistoryReport {
    pub acked: usize,
    pub refused: usize,
    pub unknown: usize,
    /// Writes with an unknown outcome that turned out applied.
    pub unknown_applied: usize,
    /// Distinct keys present (the same on every node).
    pub present: usize,
}

impl History {
    /// Counts per node and outcome, and the slowest write, for the test log.
    pub fn summary(&self) -> String {
        let mut per_node: BTreeMap<u64, [usize; 3]> = BTreeMap::new();
        for r in &self.records {
            let slot = match r.outcome {
                Outcome::Ok(_) => 0,
                Outcome::Refused(_) => 1,
                Outcome::Unknown(_) => 2,
            };
            per_node.entry(r.node).or_default()[slot] += 1;
        }
        let slowest = self
            .records
            .iter()
            .map(|r| r.took)
            .max()
            .unwrap_or_default();
        let mut codes: BTreeMap<String, usize> = BTreeMap::new();
        for r in self.records.iter().filter(|r| !r.outcome.is_ok()) {
            let code = match (&r.outcome, r.outcome.http_status()) {
                (_, Some(c)) => format!("HTTP {c}"),
                (Outcome::Refused(_), None) => "not sent".to_owned(),
                _ => "no answer".to_owned(),
            };
            *codes.entry(code).or_default() += 1;
        }
        let unknown: Vec<String> = self
            .records
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Unknown(_)))
            .take(10)
            .map(|r| {
                format!(
                    "#{} via node {} at {:?} took {:?}: {:?}",
                    r.n, r.node, r.at, r.took, r.outcome
                )
            })
            .collect();
        format!(
            "{} writes; per node [ok, refused, unknown]: {per_node:?}; failures: {codes:?}; \
             slowest {slowest:?}; unknown outcomes: {unknown:#?}",
            self.records.len()
        )
    }

    /// Checks the history against the replicated state on nodes `ids`, which must have
    /// converged (same applied index). The rule:
    /// - every acknowledged (2xx) write is present, with its own value, on every node;
    /// - every definitely refused write (not sent, 503, 4xx) is absent everywhere;
    /// - a write with an unknown outcome (timeout, dropped connection, 502) may be either,
    ///   but the same on every node;
    /// - every key present holds its own `n` (no duplicated or mixed-up writes), and no key
    ///   past the last one written exists.
    pub fn verify(&self, cluster: &Cluster, ids: &[u64]) -> HistoryReport {
        let max = self.records.last().map_or(0, |r| r.n);
        // Every node's view of every key, read in parallel (one thread per node).
        let views: BTreeMap<u64, Vec<Option<Value>>> = std::thread::scope(|s| {
            let handles: Vec<_> = ids
                .iter()
                .map(|&id| {
                    let addr = cluster.http(id);
                    let prefix = &self.prefix;
                    s.spawn(move || {
                        let values = (1..=max + 3)
                            .map(|n| {
                                get_config(addr, &format!("{prefix}/{n}"))
                                    .unwrap_or_else(|e| panic!("node {id}: {e}"))
                            })
                            .collect::<Vec<_>>();
                        (id, values)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("reader thread"))
                .collect()
        });
        let mut report = HistoryReport::default();
        let mut violations = Vec::new();
        for r in &self.records {
            let key = format!("{}/{}", self.prefix, r.n);
            let seen: Vec<(u64, &Option<Value>)> = views
                .iter()
                .map(|(&id, values)| (id, &values[r.n as usize - 1]))
                .collect();
            for (id, value) in &seen {
                if let Some(v) = value
                    && v != &json!(r.n)
                {
                    violations.push(format!("{key} holds {v} on node {id} (written: {})", r.n));
                }
            }
            let present_on = seen.iter().filter(|(_, v)| v.is_some()).count();
            let everywhere = present_on == seen.len();
            let nowhere = present_on == 0;
            if !everywhere && !nowhere {
                violations.push(format!(
                    "{key} present on only some nodes: {:?} ({r:?})",
                    seen.iter()
                        .map(|(id, v)| (id, v.is_some()))
                        .collect::<Vec<_>>()
                ));
            }
            match &r.outcome {
                Outcome::Ok(_) => {
                    report.acked += 1;
                    if !everywhere {
                        violations.push(format!("acknowledged write {key} lost: {r:?}"));
                    }
                }
                Outcome::Refused(_) => {
                    report.refused += 1;
                    if !nowhere {
                        violations.push(format!("refused write {key} was applied: {r:?}"));
                    }
                }
                Outcome::Unknown(_) => {
                    report.unknown += 1;
                    if everywhere {
                        report.unknown_applied += 1;
                    }
                }
            }
            if everywhere {
                report.present += 1;
            }
        }
        for (id, values) in &views {
            for (i, v) in values.iter().enumerate().skip(max as usize) {
                if let Some(v) = v {
                    violations.push(format!(
                        "{}/{} was never written but holds {v} on node {id}",
                        self.prefix,
                        i + 1
                    ));
                }
            }
        }
        assert!(
            violations.is_empty(),
            "history check failed ({} violations; {}):\n{}",
            violations.len(),
            self.summary(),
            violations
                .iter()
                .take(50)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        report
    }
}

// ---------------------------------------------------------------------------------------------
// Partitions with iptables

/// Comment on every rule this process adds, so a rule left by a killed test run can be found
/// (`iptables -S INPUT | grep switchyard-tests`).
fn rule_comment() -> String {
    format!("switchyard-tests pid {}", std::process::id())
}

fn iptables(args: &[String]) -> Result<(), String> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run iptables: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables -w {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Fails (does not skip) when iptables is unusable: the partition tests need root and
/// iptables, which CI has.
pub fn check_iptables() {
    if let Err(e) = iptables(&["-L".into(), "-n".into()]) {
        panic!(
            "iptables does not work here ({e}).\nThe cluster tests cut the network with iptables \
             on loopback: run them as root (or with CAP_NET_ADMIN) on a machine with iptables \
             installed (`apt-get install -y iptables`)."
        );
    }
}

/// UDP between two sets of loopback ports dropped in both directions while this guard lives.
/// Drop removes exactly the rules it added (also when the test panics).
pub struct Partition {
    what: String,
    rules: Vec<Vec<String>>,
}

impl Partition {
    /// Drops UDP from any port in `a` to any port in `b`, and from `b` to `a`, on `lo`.
    pub fn new(a: &[u16], b: &[u16], what: &str) -> Partition {
        check_iptables();
        assert!(
            !a.is_empty() && !b.is_empty() && a.len() <= 15 && b.len() <= 15,
            "multiport takes 1-15 ports a side"
        );
        let list = |ports: &[u16]| {
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let rule = |from: &[u16], to: &[u16]| -> Vec<String> {
            [
                "INPUT",
                "-i",
                "lo",
                "-p",
                "udp",
                "-m",
                "multiport",
                "--sports",
                &list(from),
                "-m",
                "multiport",
                "--dports",
                &list(to),
                "-m",
                "comment",
                "--comment",
                &rule_comment(),
                "-j",
                "DROP",
            ]
            .map(String::from)
            .to_vec()
        };
        let mut partition = Partition {
            what: what.to_owned(),
            rules: Vec::new(),
        };
        for spec in [rule(a, b), rule(b, a)] {
            let mut insert = vec!["-I".to_owned()];
            insert.extend(spec.iter().cloned());
            // On failure, `partition` drops here and removes the rule already added.
            iptables(&insert).unwrap_or_else(|e| panic!("cannot partition {what}: {e}"));
            partition.rules.push(spec);
        }
        eprintln!("[partition] cut {what} (udp {a:?} <-> {b:?})");
        partition
    }

    /// Removes the rules now (same as dropping the guard).
    pub fn heal(self) {}
}

impl Drop for Partition {
    fn drop(&mut self) {
        for spec in self.rules.drain(..) {
            let mut delete = vec!["-D".to_owned()];
            delete.extend(spec);
            if let Err(e) = iptables(&delete) {
                eprintln!(
                    "[partition] WARNING: could not remove a rule ({e}); remove it by hand: \
                     iptables -S INPUT | grep '{}'",
                    rule_comment()
                );
            }
        }
        eprintln!("[partition] healed {}", self.what);
    }
}
