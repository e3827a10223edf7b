//! Starting local `switchyard node` processes for `demo` and the tests: a config written from
//! the scenario (its queues, DIDs and agent groups, and the hotline's flows with the prompts of
//! `deploy/prompts`), free ports, generated music and goodbye, a data dir
//! per node, pid files for hooks, and a clean stop (SIGTERM, then SIGKILL after 5 s).
//!
//! One node runs standalone. Several form one cluster: the harness creates a CA and a
//! certificate per node with the node binary's own `switchyard ctl`, and every config gets a
//! `[cluster]` section listing all of them as bootstrap members (Raft over the QUIC mesh;
//! queues and agents are placed by the cluster). `independent = true` starts unrelated
//! standalone nodes instead, each with its own share of agents and callers.

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::scenario::Scenario;
use crate::{hotline, http};

/// The node binary: `$SWITCHYARD_BIN`, else `switchyard` next to this executable (or one
/// directory up, for test binaries in `target/<profile>/deps`).
pub fn switchyard_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("SWITCHYARD_BIN") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("SWITCHYARD_BIN={} does not exist", p.display());
    }
    let exe = std::env::current_exe().context("cannot locate this executable")?;
    let mut candidates = Vec::new();
    if let Some(dir) = exe.parent() {
        candidates.push(dir.join("switchyard"));
        if let Some(up) = dir.parent() {
            candidates.push(up.join("switchyard"));
        }
    }
    candidates
        .iter()
        .find(|c| c.is_file())
        .cloned()
        .with_context(|| {
            format!(
                "the switchyard binary was not found (looked at {candidates:?}); build it with \
                 `cargo build --release -p switchyard` or set SWITCHYARD_BIN"
            )
        })
}

/// A port free for both UDP and TCP on 127.0.0.1 (the node listens on both).
pub fn free_port() -> anyhow::Result<u16> {
    for _ in 0..200 {
        let tcp = TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port for UDP and TCP")
}

/// A block of `len` RTP ports below the kernel's ephemeral range (where the harness's own
/// sockets land), spot-checked for being free.
pub fn free_rtp_range(len: u16, taken: &[(u16, u16)]) -> anyhow::Result<(u16, u16)> {
    const BASE: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let len32 = u32::from(len.max(16));
    let blocks = SPAN / len32;
    let offset = std::process::id() % blocks.max(1);
    for k in 0..blocks {
        let start = BASE + ((offset + k) % blocks) * len32;
        let (lo, hi) = (start as u16, (start + len32 - 1) as u16);
        let overlaps = taken.iter().any(|&(a, b)| lo <= b && a <= hi);
        let free = [lo, lo + 1, lo + len / 2, hi - 1, hi]
            .iter()
            .all(|&p| UdpSocket::bind(("127.0.0.1", p)).is_ok());
        if !overlaps && free {
            return Ok((lo, hi));
        }
    }
    bail!("no free block of {len} RTP ports in 20000..32000")
}

/// An 8 kHz mono 16-bit WAV with a quiet tone.
pub fn write_wav(path: &Path, seconds: f64, freq: f64) -> std::io::Result<()> {
    let rate = 8000u32;
    let samples = (f64::from(rate) * seconds) as u32;
    let data_len = samples * 2;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..samples {
        let t = f64::from(i) / f64::from(rate);
        let v = (t * freq * std::f64::consts::TAU).sin() * 3000.0;
        out.extend_from_slice(&(v as i16).to_le_bytes());
    }
    fs::File::create(path)?.write_all(&out)
}

/// Where one node listens.
#[derive(Debug, Clone)]
pub struct NodeAddrs {
    pub id: String,
    pub sip: SocketAddr,
    pub http: SocketAddr,
    pub rtp: (u16, u16),
    /// QUIC mesh address, for a cluster member.
    pub cluster: Option<SocketAddr>,
}

/// The `[cluster]` section of member `k` (1-based) of `all`, its certificates in `certs`.
fn cluster_section(k: usize, all: &[NodeAddrs], certs: &Path) -> String {
    let Some(me) = all.get(k - 1).and_then(|n| n.cluster) else {
        return String::new();
    };
    let mut c = format!(
        "\n[cluster]\nnode_id = {k}\nlisten = \"{me}\"\ncerts = \"{}\"\n",
        certs.display()
    );
    for (j, n) in all.iter().enumerate() {
        if let Some(addr) = n.cluster {
            c.push_str(&format!(
                "\n[[cluster.bootstrap]]\nid = {}\nname = \"{}\"\nsite = \"bench\"\n\
                 cluster_addr = \"{addr}\"\nsip_addr = \"{}\"\nhttp_addr = \"{}\"\n",
                j + 1,
                n.id,
                n.sip,
                n.http
            ));
        }
    }
    c
}

/// Creates a cluster CA under `dir/ca` and a certificate per member under `dir/<id>`.
fn issue_certs(bin: &Path, dir: &Path, ids: &[String]) -> anyhow::Result<()> {
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new(bin)
            .arg("ctl")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {} ctl", bin.display()))?;
        if !out.status.success() {
            bail!(
                "switchyard ctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    let ca = dir.join("ca");
    if !ca.join("ca.pem").is_file() {
        run(&["ca-create", "--dir", &ca.display().to_string()])?;
    }
    for (k, id) in ids.iter().enumerate() {
        let out = dir.join(id);
        run(&[
            "cert-issue",
            "--ca",
            &ca.display().to_string(),
            "--node-id",
            &(k + 1).to_string(),
            "--name",
            id,
            "--out",
            &out.display().to_string(),
        ])?;
    }
    Ok(())
}

/// The node config for `scenario` (queues, DIDs, agents, the hotline's flows), in the node's
/// TOML format; `cluster` is the node's `[cluster]` section, empty for a standalone node, and
/// `prompts` the IVR prompts directory.
pub fn node_config(
    s: &Scenario,
    addrs: &NodeAddrs,
    dir: &Path,
    cluster: &str,
    prompts: Option<&Path>,
) -> String {
    let n = &s.node;
    let mut c = format!(
        r#"# Written by switchyard-bench for scenario {name:?}.
[node]
id = "{id}"
site = "bench"

[sip]
listen = "{sip}"

[http]
listen = "{http}"

[media]
workers = {workers}
bind_ip = "{ip}"
rtp_port_min = {lo}
rtp_port_max = {hi}
music_on_hold = "{dir}/music-on-hold.wav"
goodbye_prompt = "{dir}/goodbye.wav"
{prompts}
[registrar]
realm = "switchyard"
# The harness registers every agent from one address.
failure_limit = 1000000
"#,
        name = s.name,
        id = addrs.id,
        sip = addrs.sip,
        http = addrs.http,
        workers = n.media_workers.max(1),
        ip = addrs.sip.ip(),
        lo = addrs.rtp.0,
        hi = addrs.rtp.1,
        dir = dir.display(),
        prompts = prompts.map_or(String::new(), |p| format!(
            "prompts_dir = \"{}\"\n",
            p.display()
        )),
    );
    let surveys = s.hotline.as_ref().map_or(&[][..], |h| &h.survey_queues[..]);
    for q in s.queues() {
        c.push_str(&format!(
            "\n[[queue]]\nname = \"{q}\"\nstrategy = \"longest-idle\"\noffer_timeout_secs = {}\n\
             max_wait_secs = {}\noverflow = {{ action = \"goodbye\" }}\nwrap_up_secs = {}\n\
             record = {}\nservice_level_secs = {}\n",
            n.offer_timeout.0.as_secs().max(1),
            n.max_wait.0.as_secs().max(1),
            n.wrap_up.0.as_secs(),
            n.record,
            n.service_level.0.as_secs().max(1),
        ));
        if surveys.contains(&q) {
            c.push_str(&format!("survey = \"{}\"\n", hotline::SURVEY_FLOW));
        }
    }
    for d in &s.callers.dids {
        if let Some(q) = &d.queue {
            c.push_str(&format!(
                "\n[[did]]\nnumber = \"{}\"\nqueue = \"{q}\"\n",
                d.number
            ));
        }
    }
    if let Some(h) = &s.hotline {
        let dids: Vec<&str> = s
            .callers
            .dids
            .iter()
            .filter(|d| d.flow.is_some())
            .map(|d| d.number.as_str())
            .collect();
        c.push_str(&hotline::node_config(h, &dids));
    }
    for g in &s.agent_groups {
        let skills: Vec<String> = g.skills.iter().map(|q| format!("\"{q}\"")).collect();
        c.push_str(&format!(
            "\n[[agents]]\nextensions = \"{}-{}\"\npassword = \"{}\"\nqueues = [{}]\n\
             available_on_register = true\n",
            g.first_extension,
            g.first_extension + g.count.max(1) - 1,
            g.password,
            skills.join(", ")
        ));
    }
    c.push_str(cluster);
    c
}

pub struct LocalNode {
    pub addrs: NodeAddrs,
    pub dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl LocalNode {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if child.try_wait().ok().flatten().is_none() {
            // SIGTERM first: the node shuts down cleanly and flushes its call records.
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

/// Nodes started by the harness, stopped on drop.
pub struct LocalNodes {
    pub nodes: Vec<LocalNode>,
    /// `<id>.pid` files, handed to hooks as `BENCH_PIDS`.
    pub pid_dir: PathBuf,
}

impl LocalNodes {
    /// Starts `count` nodes for `scenario` under `dir` (`dir/<id>/`), as one cluster when
    /// there are several unless `independent`, and waits until each answers `/healthz`.
    /// `rtp_ports` is each node's RTP range size.
    pub fn start(
        bin: &Path,
        scenario: &Scenario,
        count: usize,
        independent: bool,
        dir: &Path,
        rtp_ports: u16,
    ) -> anyhow::Result<LocalNodes> {
        let pid_dir = dir.join("pids");
        fs::create_dir_all(&pid_dir)?;
        let dir = dir.canonicalize()?;
        let mut nodes = LocalNodes {
            nodes: Vec::new(),
            pid_dir,
        };
        let clustered = count > 1 && !independent;
        let mut taken = Vec::new();
        let mut all = Vec::new();
        for k in 1..=count {
            let rtp = free_rtp_range(rtp_ports, &taken)?;
            taken.push(rtp);
            all.push(NodeAddrs {
                id: format!("node{k}"),
                sip: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                http: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                rtp,
                cluster: if clustered {
                    Some(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
                } else {
                    None
                },
            });
        }
        let prompts = match &scenario.hotline {
            Some(_) => Some(hotline::prompts_dir().context(
                "the hotline's flows need prompts: run from the source tree or set \
                 SWITCHYARD_PROMPTS to deploy/prompts",
            )?),
            None => None,
        };
        let certs = dir.join("certs");
        if clustered {
            let ids: Vec<String> = all.iter().map(|a| a.id.clone()).collect();
            issue_certs(bin, &certs, &ids)?;
        }
        for (k, addrs) in all.iter().enumerate() {
            let id = addrs.id.clone();
            let node_dir = dir.join(&id);
            // Each run picks new ports, so a previous run's cluster state (its members at
            // their old addresses) could never settle: every run starts afresh.
            if node_dir.exists() {
                fs::remove_dir_all(&node_dir)
                    .with_context(|| format!("cannot clear {}", node_dir.display()))?;
            }
            fs::create_dir_all(&node_dir)?;
            write_wav(&node_dir.join("music-on-hold.wav"), 2.0, 440.0)?;
            write_wav(&node_dir.join("goodbye.wav"), 0.5, 660.0)?;
            let config = node_dir.join("node.toml");
            let cluster = if clustered {
                cluster_section(k + 1, &all, &certs.join(&id))
            } else {
                String::new()
            };
            fs::write(
                &config,
                node_config(scenario, addrs, &node_dir, &cluster, prompts.as_deref()),
            )?;
            let log = node_dir.join("node.log");
            let log_file = fs::File::create(&log)?;
            let mut cmd = Command::new(bin);
            cmd.arg("node")
                .arg("--config")
                .arg(&config)
                .arg("--data-dir")
                .arg(node_dir.join("data"))
                .env(
                    "RUST_LOG",
                    std::env::var("SWITCHYARD_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(log_file.try_clone()?)
                .stderr(log_file);
            // SAFETY: prctl is async-signal-safe and runs alone between fork and exec; it
            // makes a node die with the harness that started it, so nothing is left behind.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = cmd
                .spawn()
                .with_context(|| format!("cannot start {}", bin.display()))?;
            fs::write(
                nodes.pid_dir.join(format!("{id}.pid")),
                child.id().to_string(),
            )?;
            // For hooks that drive a node's API (`switchyard ctl node drain --http ...`).
            fs::write(
                nodes.pid_dir.join(format!("{id}.http")),
                addrs.http.to_string(),
            )?;
            nodes.nodes.push(LocalNode {
                addrs: addrs.clone(),
                dir: node_dir,
                log,
                child: Some(child),
            });
        }
        for node in &mut nodes.nodes {
            wait_healthy(node)?;
        }
        if clustered {
            nodes.wait_placed(
                scenario.queues().len(),
                scenario.agent_count() as usize,
                Duration::from_secs(30),
            )?;
        }
        Ok(nodes)
    }

    /// Waits until the cluster has a leader every member agrees on and the leader has placed
    /// every queue and agent: `/healthz` answers before that, and calls arriving earlier get
    /// 503.
    fn wait_placed(&self, queues: usize, agents: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            let statuses: Vec<serde_json::Value> = self
                .nodes
                .iter()
                .filter_map(|n| http::get_json(n.addrs.http, "/v1/cluster/status").ok())
                .collect();
            let leaders: Vec<Option<u64>> = statuses
                .iter()
                .map(|s| s.get("leader").and_then(serde_json::Value::as_u64))
                .collect();
            let leader = leaders.first().copied().flatten();
            let agreed = statuses.len() == self.nodes.len()
                && leader.is_some()
                && leaders.iter().all(|l| *l == leader);
            if agreed {
                let on_leader = statuses
                    .iter()
                    .find(|s| s.get("node_id").and_then(serde_json::Value::as_u64) == leader);
                let placed = |key: &str| -> usize {
                    on_leader
                        .and_then(|s| s.get("members"))
                        .and_then(serde_json::Value::as_array)
                        .map_or(0, |m| {
                            m.iter()
                                .filter_map(|x| x.get(key).and_then(serde_json::Value::as_u64))
                                .sum::<u64>() as usize
                        })
                };
                let (q, a) = (placed("queues"), placed("agents"));
                if q >= queues && a >= agents {
                    return Ok(());
                }
                last = format!(
                    "leader {leader:?}, {q}/{queues} queues and {a}/{agents} agents placed"
                );
            } else {
                last = format!("leaders as seen by each node: {leaders:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("the cluster did not settle within {timeout:?}: {last}")
    }

    pub fn sip(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addrs.sip).collect()
    }

    pub fn http(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addrs.http).collect()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(LocalNode::pid).collect()
    }

    /// Stops every node (SIGTERM, then SIGKILL).
    pub fn stop(&mut self) {
        for n in &mut self.nodes {
            n.stop();
        }
    }
}

impl Drop for LocalNodes {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_healthy(node: &mut LocalNode) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(child) = node.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            bail!(
                "node {} exited during start-up ({status}); log {}:\n{}",
                node.addrs.id,
                node.log.display(),
                node.log_tail()
            );
        }
        if let Ok((200, _)) = http::get(node.addrs.http, "/healthz", Duration::from_secs(1)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "node {} not healthy after 20 s; log {}:\n{}",
        node.addrs.id,
        node.log.display(),
        node.log_tail()
    )
}
