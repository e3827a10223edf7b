//! Test harness shared by the multi-process tests: free ports, temp dirs, a real `switchyard`
//! node process, SIPp processes, a tiny HTTP/1.1 client for the node's API, and raw SIP
//! sockets for the protocol tests.
//!
//! Everything runs on 127.0.0.1. Each test starts its own node on its own ports (and its own
//! RTP port range), so tests run in parallel. On failure the node's log, SIPp's error log and
//! the temp directory (kept, path printed) say what happened.

#![allow(dead_code)]

pub mod cluster;
pub mod http;
pub mod sip;
pub mod sipp;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

#[allow(unused_imports)]
pub use sipp::{Sipp, SippProcess, Transport};

/// The workspace root (the directory holding the workspace `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives inside the workspace")
        .to_path_buf()
}

/// `tests/sipp/NAME`.
pub fn scenario(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sipp")
        .join(name);
    assert!(
        path.is_file(),
        "SIPp scenario {} is missing",
        path.display()
    );
    path
}

/// The `switchyard` binary under test: `$SWITCHYARD_BIN`, else the one next to this test
/// binary's target directory (`target/<profile>/switchyard`), else `<workspace>/target/debug`.
pub fn switchyard_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SWITCHYARD_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "SWITCHYARD_BIN={} does not exist",
            path.display()
        );
        return path;
    }
    let mut candidates = Vec::new();
    // target/debug/deps/<test-binary> -> target/debug/switchyard
    if let Ok(exe) = std::env::current_exe()
        && let Some(profile_dir) = exe.parent().and_then(Path::parent)
    {
        candidates.push(profile_dir.join("switchyard"));
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(dir).join("debug").join("switchyard"));
    }
    candidates.push(
        workspace_root()
            .join("target")
            .join("debug")
            .join("switchyard"),
    );
    for candidate in &candidates {
        if candidate.is_file() {
            warn_if_stale(candidate);
            return candidate.clone();
        }
    }
    panic!(
        "the switchyard binary was not found (looked at {candidates:?}).\n\
         Build it first: `cargo build -p switchyard` (or set SWITCHYARD_BIN=/path/to/switchyard)."
    );
}

/// Warns (once) when a source file of the node is newer than the binary: the tests would
/// run against an old build.
fn warn_if_stale(bin: &Path) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(built) = fs::metadata(bin).and_then(|m| m.modified()) else {
            return;
        };
        let root = workspace_root();
        let mut stack: Vec<PathBuf> = ["node", "media", "cluster"]
            .iter()
            .map(|d| root.join(d))
            .collect();
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs")
                    && entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|m| m > built)
                {
                    eprintln!(
                        "[harness] WARNING: {} is newer than {}: testing an old build \
                         (run `cargo build -p switchyard`)",
                        path.display(),
                        bin.display()
                    );
                    return;
                }
            }
        }
    });
}

/// `sipp` from PATH.
pub fn sipp_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SIPP_BIN") {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "SIPP_BIN={} does not exist", path.display());
        return path;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("sipp");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`sipp` is not on PATH. Install SIPp: `apt-get install -y sip-tester` \
         (scripts/test.sh does this), or set SIPP_BIN."
    );
}

// ---------------------------------------------------------------------------------------------
// Ports

static PORT_COUNTER: AtomicU32 = AtomicU32::new(0);
static RANGE_COUNTER: AtomicU32 = AtomicU32::new(0);

fn udp_free(port: u16) -> bool {
    UdpSocket::bind(("127.0.0.1", port)).is_ok()
}

fn tcp_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A port free for both UDP and TCP on 127.0.0.1 (bind and release). Ports come from
/// 12000..19999, below the kernel's ephemeral range, starting at a per-process offset so that
/// concurrent test binaries rarely even try the same one.
pub fn free_port() -> u16 {
    const BASE: u32 = 12000;
    const SPAN: u32 = 8000;
    let offset = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let n = PORT_COUNTER.fetch_add(1, Ordering::Relaxed);
        let port = (BASE + (offset + n * 7) % SPAN) as u16;
        if udp_free(port) && tcp_free(port) {
            return port;
        }
    }
    panic!("no free port in 12000..19999");
}

/// A free even UDP port `p` with `p+1..p+3` free too: SIPp's `-mp` binds p and p+2.
pub fn free_media_port() -> u16 {
    loop {
        let p = free_port() & !1;
        if (p..p + 4).all(udp_free) {
            return p;
        }
    }
}

/// A block of `len` UDP ports (for a node's RTP range) in 20000..31999, distinct per test.
pub fn free_port_range(len: u16) -> (u16, u16) {
    const BASE: u32 = 20000;
    const SPAN: u32 = 12000;
    let len32 = u32::from(len).max(16);
    let blocks = SPAN / len32;
    let offset = std::process::id().wrapping_mul(104_729) % blocks;
    for _ in 0..blocks {
        let n = RANGE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let start = BASE + ((offset + n) % blocks) * len32;
        let (lo, hi) = (start as u16, (start + len32 - 1) as u16);
        // Spot-check the block; the node reports a clear error if one is taken after all.
        if [lo, lo + 1, lo + len / 2, hi - 1, hi]
            .into_iter()
            .all(udp_free)
        {
            return (lo, hi);
        }
    }
    panic!("no free RTP port block of {len} in 20000..31999");
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// Makes a spawned process get `signal` when the test thread that started it goes away
/// (`PR_SET_PDEATHSIG`), so a killed or aborted test run leaves no node or SIPp behind.
pub trait DieWithParent {
    fn die_with_parent(&mut self, signal: libc::c_int) -> &mut Self;
}

impl DieWithParent for Command {
    fn die_with_parent(&mut self, signal: libc::c_int) -> &mut Self {
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            self.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Temp dirs kept on failure

/// A temp directory that is kept (and its path printed) when the test panics.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    pub fn new(prefix: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("switchyard-{prefix}-"))
            .tempdir()
            .expect("create temp dir");
        let path = dir.path().to_path_buf();
        Self {
            dir: Some(dir),
            path,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if (std::thread::panicking() || std::env::var_os("SWITCHYARD_KEEP_TEST_DIRS").is_some())
            && let Some(dir) = self.dir.take()
        {
            let path = dir.keep();
            eprintln!("[harness] kept test directory {}", path.display());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Node

/// What a test may change in the node's config; the rest follows
/// `deploy/examples/single-node.toml`.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub t1_ms: u64,
    pub offer_timeout_secs: u64,
    pub max_missed_offers: u32,
    pub max_wait_secs: u64,
    pub wrap_up_secs: u64,
    /// The queue's `record`; the node's default (recording) when `None`.
    pub record: Option<bool>,
    /// `[[agents]] extensions`, e.g. `"2001-2100"`.
    pub agents: String,
    pub available_on_register: bool,
    pub min_expires: u32,
    /// Extra `key = value` lines for the `[registrar]` table.
    pub registrar_extra: Vec<String>,
    /// How many RTP ports the node gets.
    pub rtp_ports: u16,
    /// Appended verbatim at the end of the file.
    pub extra: String,
    /// `[node] site`.
    pub site: String,
    /// SIP, HTTP and RTP ports chosen by the caller (a cluster's members must know each
    /// other's addresses before any of them starts); fresh free ports when `None`.
    pub ports: Option<NodePorts>,
    /// A `[cluster]` section (see [`cluster`]); a standalone node when `None`.
    pub cluster: Option<ClusterSection>,
}

/// A node's listening ports, fixed before it starts.
#[derive(Debug, Clone, Copy)]
pub struct NodePorts {
    pub sip: u16,
    pub http: u16,
    pub rtp: (u16, u16),
}

impl NodePorts {
    /// Fresh free ports, `rtp_ports` of them for RTP.
    pub fn free(rtp_ports: u16) -> Self {
        Self {
            sip: free_port(),
            http: free_port(),
            rtp: free_port_range(rtp_ports),
        }
    }
}

/// The `[cluster]` section of a node's config.
#[derive(Debug, Clone)]
pub struct ClusterSection {
    pub node_id: u64,
    /// QUIC (UDP) address of the mesh.
    pub listen: SocketAddr,
    /// Directory with `ca.pem`, `node.pem`, `node.key`.
    pub certs: PathBuf,
    /// `[[cluster.bootstrap]]`; empty for a node that joins later.
    pub bootstrap: Vec<ClusterMemberSection>,
}

/// One `[[cluster.bootstrap]]` entry.
#[derive(Debug, Clone)]
pub struct ClusterMemberSection {
    pub id: u64,
    pub name: String,
    pub site: String,
    pub cluster_addr: SocketAddr,
    pub sip_addr: SocketAddr,
    pub http_addr: SocketAddr,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            t1_ms: 500,
            offer_timeout_secs: 15,
            max_missed_offers: 3,
            max_wait_secs: 300,
            wrap_up_secs: 0,
            record: None,
            agents: "2001-2100".into(),
            available_on_register: true,
            min_expires: 60,
            registrar_extra: Vec::new(),
            rtp_ports: 400,
            extra: String::new(),
            site: "test".into(),
            ports: None,
            cluster: None,
        }
    }
}

/// A running `switchyard node`, killed on drop. Its log (stderr and stdout) goes to
/// `node.log` in the test directory and is printed when the test fails.
pub struct Node {
    pub name: String,
    pub sip: SocketAddr,
    pub http: SocketAddr,
    pub rtp: (u16, u16),
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// `--data-dir`, kept across restarts.
    pub data_dir: PathBuf,
    child: Option<Child>,
    sipp_runs: AtomicU32,
    // Declared last: dropped after the node is stopped and its log printed.
    pub dir: TestDir,
}

impl Node {
    /// Writes a config with fresh ports, starts the node and waits for `GET /healthz` = 200.
    pub fn start(name: &str, cfg: NodeConfig) -> Node {
        let mut node = Node::spawn(name, cfg);
        node.wait_ready();
        node
    }

    /// Writes the config and starts the process without waiting for it to be ready (several
    /// nodes can then start at once); call [`Node::wait_ready`] next.
    pub fn spawn(name: &str, cfg: NodeConfig) -> Node {
        let dir = TestDir::new(name);
        let ports = cfg.ports.unwrap_or_else(|| NodePorts::free(cfg.rtp_ports));
        write_wav(&dir.join("music-on-hold.wav"), 2.0, 440.0);
        write_wav(&dir.join("goodbye.wav"), 0.5, 660.0);
        let config = render_config(name, &cfg, ports.sip, ports.http, ports.rtp);
        let config_path = dir.join("node.toml");
        fs::write(&config_path, &config).expect("write node config");
        let log_path = dir.join("node.log");
        fs::File::create(&log_path).expect("create node log");
        let mut node = Node {
            name: name.to_owned(),
            sip: SocketAddr::from(([127, 0, 0, 1], ports.sip)),
            http: SocketAddr::from(([127, 0, 0, 1], ports.http)),
            rtp: ports.rtp,
            config_path,
            log_path,
            data_dir: dir.join("data"),
            child: None,
            sipp_runs: AtomicU32::new(0),
            dir,
        };
        node.spawn_process();
        node
    }

    /// Starts a node on one of `deploy/examples/` as it is, ports included (`sip` and `http`
    /// are what the file says), and waits until it is ready.
    pub fn start_example(name: &str, example: &str, sip: SocketAddr, http: SocketAddr) -> Node {
        let dir = TestDir::new(name);
        let log_path = dir.join("node.log");
        fs::File::create(&log_path).expect("create node log");
        let mut node = Node {
            name: name.to_owned(),
            sip,
            http,
            rtp: (20000, 29999),
            config_path: workspace_root().join("deploy/examples").join(example),
            log_path,
            data_dir: dir.join("data"),
            child: None,
            sipp_runs: AtomicU32::new(0),
            dir,
        };
        node.spawn_process();
        node.wait_ready();
        node
    }

    /// Starts the process on the node's config and data dir, its output appended to the log.
    /// The process gets SIGTERM when the thread calling this exits (`PR_SET_PDEATHSIG`), so
    /// start nodes from the test's own thread.
    fn spawn_process(&mut self) {
        assert!(
            self.child.is_none(),
            "node {} is already running",
            self.name
        );
        let bin = switchyard_bin();
        let log = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.log_path)
            .expect("open node log");
        let child = Command::new(&bin)
            .arg("node")
            .arg("--config")
            .arg(&self.config_path)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env(
                "RUST_LOG",
                std::env::var("SWITCHYARD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .die_with_parent(libc::SIGTERM)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        self.child = Some(child);
    }

    /// Waits for `GET /healthz` = 200 (20 s at most) and prints where the node lives.
    pub fn wait_ready(&mut self) {
        self.wait_healthy(Duration::from_secs(20));
        eprintln!(
            "[harness] node {}: sip {} http {} rtp {}-{} dir {}",
            self.name,
            self.sip,
            self.http,
            self.rtp.0,
            self.rtp.1,
            self.dir.path().display()
        );
    }

    /// Whether the process is running (started and not exited).
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exit_status().is_none()
    }

    /// `kill -9`, then reaps the process. The data dir stays for [`Node::restart`].
    pub fn kill9(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = child.kill();
        let _ = child.wait();
        self.log_marker("killed with SIGKILL");
    }

    /// SIGTERM, and waits (10 s at most) for a clean exit; panics (with the log) if the node
    /// does not exit, or exits with an error.
    pub fn stop_gracefully(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().ok().flatten() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "node {} did not exit within 10 s of SIGTERM.\nlog:\n{}",
                    self.name,
                    self.log_tail(100)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.log_marker("stopped with SIGTERM");
        assert!(
            status.success(),
            "node {} exited with {status} after SIGTERM.\nlog:\n{}",
            self.name,
            self.log_tail(100)
        );
    }

    /// Starts the stopped (or killed) node again on the same config and data dir, and waits
    /// until it is healthy.
    pub fn restart(&mut self) {
        self.log_marker("restarting");
        self.spawn_process();
        self.wait_ready();
    }

    fn log_marker(&self, what: &str) {
        if let Ok(mut log) = fs::OpenOptions::new().append(true).open(&self.log_path) {
            let _ = writeln!(log, "[harness] ---- node {} {what} ----", self.name);
        }
    }

    fn wait_healthy(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            if let Some(status) = self.exit_status() {
                panic!(
                    "node {} exited during start-up ({status}).\nconfig:\n{}\nlog:\n{}",
                    self.name,
                    fs::read_to_string(&self.config_path).unwrap_or_default(),
                    self.log_tail(200)
                );
            }
            match http::get(self.http, "/healthz", Duration::from_secs(2)) {
                Ok(resp) if resp.status == 200 => return,
                Ok(resp) => last = format!("HTTP {}", resp.status),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "node {} not healthy after {timeout:?} (last /healthz: {last}).\nlog:\n{}",
            self.name,
            self.log_tail(200)
        );
    }

    /// `Some(status)` if the process has exited.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Panics (with the log) if the node process is gone.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.exit_status() {
            panic!(
                "node {} is not running any more ({status}).\nlog:\n{}",
                self.name,
                self.log_tail(300)
            );
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail_lines(&self.log(), lines)
    }

    /// GET on the node's HTTP API; panics on transport errors.
    pub fn get(&self, path: &str) -> http::Response {
        http::get(self.http, path, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("GET {path} on node {}: {e}", self.name))
    }

    pub fn get_json(&self, path: &str) -> Value {
        let resp = self.get(path);
        assert_eq!(
            resp.status,
            200,
            "GET {path}: HTTP {} {}",
            resp.status,
            resp.text()
        );
        serde_json::from_slice(&resp.body)
            .unwrap_or_else(|e| panic!("GET {path}: invalid JSON ({e}): {}", resp.text()))
    }

    /// Every call record, oldest first. Accepts both envelopes: a bare array (one page of
    /// `limit=1000`), or `{"records": [...], "next": N}`, whose pages are followed with
    /// `after=N` until one comes back empty.
    pub fn cdrs(&self) -> Vec<Cdr> {
        let mut records: Vec<Value> = Vec::new();
        let mut after: Option<u64> = None;
        loop {
            let path = match after {
                Some(a) => format!("/v1/cdrs?limit=1000&after={a}"),
                None => "/v1/cdrs?limit=1000".to_owned(),
            };
            let value = self.get_json(&path);
            match &value {
                Value::Array(items) => {
                    records.extend(items.iter().cloned());
                    break;
                }
                Value::Object(map) => {
                    let Some(Value::Array(items)) = map.get("records") else {
                        panic!("GET {path}: object without a `records` array: {value}");
                    };
                    if items.is_empty() {
                        break;
                    }
                    records.extend(items.iter().cloned());
                    let next = map.get("next").and_then(Value::as_u64).unwrap_or_else(|| {
                        panic!("GET {path}: `next` missing or not a number: {value}")
                    });
                    assert!(
                        after.is_none_or(|a| next > a),
                        "GET {path}: `next` ({next}) does not advance past `after`"
                    );
                    after = Some(next);
                }
                _ => panic!("GET {path}: expected an array or {{records: [...]}}, got {value}"),
            }
        }
        let mut cdrs: Vec<Cdr> = records
            .into_iter()
            .map(|r| {
                serde_json::from_value(r.clone()).unwrap_or_else(|e| {
                    panic!("call record does not match the contract ({e}): {r}")
                })
            })
            .collect();
        cdrs.sort_by_key(|c| (c.arrived_ms, c.seq.unwrap_or(0)));
        let ids: std::collections::HashSet<&str> = cdrs.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(
            ids.len(),
            cdrs.len(),
            "duplicate call records (paging bug?)"
        );
        cdrs
    }

    /// Polls `/v1/cdrs` until at least `n` records exist.
    pub fn wait_cdrs(&self, n: usize, timeout: Duration) -> Vec<Cdr> {
        let deadline = Instant::now() + timeout;
        loop {
            let cdrs = self.cdrs();
            if cdrs.len() >= n {
                return cdrs;
            }
            if Instant::now() > deadline {
                panic!(
                    "expected {n} call records within {timeout:?}, have {}: {cdrs:#?}\nnode log:\n{}",
                    cdrs.len(),
                    self.log_tail(100)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `GET /v1/agents`, as JSON.
    pub fn agents(&self) -> Value {
        self.get_json("/v1/agents")
    }

    /// The state of agent `ext` in `/v1/agents`, normalised to lowercase letters only
    /// (`"available"`, `"loggedout"`, `"notready"`, `"oncall"`, ...).
    pub fn agent_state(&self, ext: &str) -> String {
        let agents = self.agents();
        let entry = find_agent(&agents, ext)
            .unwrap_or_else(|| panic!("agent {ext} not found in GET /v1/agents: {agents}"));
        state_of(entry)
            .unwrap_or_else(|| panic!("agent {ext}: no state field in GET /v1/agents: {entry}"))
    }

    /// Waits until agent `ext` is in `state` (normalised, see [`Node::agent_state`]).
    pub fn wait_agent_state(&self, ext: &str, state: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.agent_state(ext);
            if now == state {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "agent {ext} is {now:?}, expected {state:?} within {timeout:?}: {}",
                    self.agents()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A SIPp run against this node (client scenarios) or for it (UAS scenarios: agent phones).
    pub fn sipp(&self, label: &str, scenario_file: &str) -> Sipp {
        let n = self.sipp_runs.fetch_add(1, Ordering::Relaxed);
        let dir = self.dir.join(&format!("sipp-{n:02}-{label}"));
        Sipp::new(label, scenario(scenario_file), dir).remote(self.sip)
    }

    /// Starts one agent phone (a SIPp UAS running `scenario_file`) for `calls` calls.
    pub fn agent_phone(&self, label: &str, scenario_file: &str, calls: u32) -> SippProcess {
        self.sipp(label, scenario_file)
            .server()
            .calls(calls)
            .timeout_secs(120)
            .spawn()
    }

    /// Registers `extensions` (password `pw{ext}`) with Contact `sip:EXT@127.0.0.1:contact_port`
    /// through `agent_register.xml`, and checks that SIPp saw every registration succeed.
    pub fn register_agents(&self, extensions: &[String], contact_port: u16) {
        let label = format!(
            "register-{}",
            extensions.first().map_or("none", |s| s.as_str())
        );
        let sipp = self.sipp(&label, "agent_register.xml");
        let csv = sipp.dir().join("agents.csv");
        let mut text = String::from("SEQUENTIAL\n");
        for ext in extensions {
            text.push_str(&format!(
                "{ext};pw{ext};{contact_port};[authentication username={ext} password=pw{ext}]\n"
            ));
        }
        fs::create_dir_all(sipp.dir()).expect("sipp dir");
        fs::write(&csv, text).expect("write agents.csv");
        let run = sipp
            .inf(&csv)
            .calls(extensions.len() as u32)
            .rate(100.0)
            .limit(20)
            .timeout_secs(60)
            .spawn();
        let stats = run.expect_success_with(self);
        assert_eq!(
            stats.successful,
            extensions.len() as u64,
            "registrations that succeeded"
        );
    }

    /// `extensions("2001", 3)` = `["2001", "2002", "2003"]`.
    pub fn extensions(first: u32, count: u32) -> Vec<String> {
        (first..first + count).map(|n| n.to_string()).collect()
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if child.try_wait().ok().flatten().is_none() {
            // SIGTERM first: the node should exit cleanly.
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
            eprintln!(
                "[harness] node {} ignored SIGTERM for 5 s; killing it",
                self.name
            );
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        let crashed = self.exit_status();
        self.stop();
        if panicking {
            eprintln!(
                "[harness] ---- node {} log ({}), last 300 lines{} ----\n{}\n[harness] ---- end of node log ----",
                self.name,
                self.log_path.display(),
                crashed.map_or(String::new(), |s| format!(", process had exited: {s}")),
                self.log_tail(300)
            );
        }
    }
}

fn render_config(
    name: &str,
    cfg: &NodeConfig,
    sip_port: u16,
    http_port: u16,
    rtp: (u16, u16),
) -> String {
    let mut registrar_extra = String::new();
    for line in &cfg.registrar_extra {
        registrar_extra.push_str(line);
        registrar_extra.push('\n');
    }
    format!(
        r#"# Written by the switchyard-tests harness for test {name:?}.
[node]
id = "test-{name}"
site = "{site}"

[sip]
listen = "127.0.0.1:{sip_port}"
t1_ms = {t1}

[http]
listen = "127.0.0.1:{http_port}"

[media]
workers = 1
bind_ip = "127.0.0.1"
rtp_port_min = {rtp_min}
rtp_port_max = {rtp_max}
music_on_hold = "music-on-hold.wav"
goodbye_prompt = "goodbye.wav"
prompts_dir = "{prompts}"

[registrar]
realm = "switchyard"
min_expires = {min_expires}
{registrar_extra}
[[queue]]
name = "support"
strategy = "longest-idle"
offer_timeout_secs = {offer_timeout}
max_missed_offers = {max_missed}
max_wait_secs = {max_wait}
overflow = {{ action = "goodbye" }}
wrap_up_secs = {wrap_up}
{record}
[[did]]
number = "1000"
queue = "support"

[[agents]]
extensions = "{agents}"
password = "pw{{ext}}"
queues = ["support"]
available_on_register = {available}

{extra}
{cluster}"#,
        site = cfg.site,
        prompts = workspace_root().join("deploy/prompts").display(),
        cluster = cfg.cluster.as_ref().map(render_cluster).unwrap_or_default(),
        t1 = cfg.t1_ms,
        rtp_min = rtp.0,
        rtp_max = rtp.1,
        min_expires = cfg.min_expires,
        offer_timeout = cfg.offer_timeout_secs,
        max_missed = cfg.max_missed_offers,
        max_wait = cfg.max_wait_secs,
        wrap_up = cfg.wrap_up_secs,
        record = cfg
            .record
            .map(|r| format!("record = {r}\n"))
            .unwrap_or_default(),
        agents = cfg.agents,
        available = cfg.available_on_register,
        extra = cfg.extra,
    )
}

fn render_cluster(c: &ClusterSection) -> String {
    let mut out = format!(
        "[cluster]\nnode_id = {}\nlisten = \"{}\"\ncerts = {:?}\n",
        c.node_id, c.listen, c.certs
    );
    for m in &c.bootstrap {
        out.push_str(&format!(
            "\n[[cluster.bootstrap]]\nid = {}\nname = {:?}\nsite = {:?}\n\
             cluster_addr = \"{}\"\nsip_addr = \"{}\"\nhttp_addr = \"{}\"\n",
            m.id, m.name, m.site, m.cluster_addr, m.sip_addr, m.http_addr
        ));
    }
    out
}

/// Writes an 8 kHz mono 16-bit PCM WAV with a quiet sine tone.
pub fn write_wav(path: &Path, seconds: f64, freq: f64) {
    let rate = 8000u32;
    let samples = (f64::from(rate) * seconds) as u32;
    let data_len = samples * 2;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..samples {
        let t = f64::from(i) / f64::from(rate);
        let v = (t * freq * std::f64::consts::TAU).sin() * 4000.0;
        out.extend_from_slice(&(v as i16).to_le_bytes());
    }
    let mut f = fs::File::create(path).expect("create wav");
    f.write_all(&out).expect("write wav");
}

pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Call records and agent snapshots

/// One call record from `GET /v1/cdrs` (the contract's fields; `seq` only in the bare-array
/// envelope).
#[derive(Debug, Clone, Deserialize)]
pub struct Cdr {
    pub id: String,
    pub node: String,
    pub caller_call_id: String,
    pub agent_call_id: Option<String>,
    pub caller: String,
    pub did: String,
    pub queue: Option<String>,
    pub agent: Option<String>,
    pub arrived_ms: u64,
    pub queued_ms: Option<u64>,
    pub offers: Vec<Offer>,
    pub answered_ms: Option<u64>,
    pub ended_ms: u64,
    pub wait_ms: u64,
    pub talk_ms: u64,
    pub disposition: String,
    pub hangup_by: String,
    pub recording: Option<String>,
    #[serde(default)]
    pub seq: Option<u64>,
    /// The IVR flow a DID sent the call into, the menu keys it took, its queue priority.
    #[serde(default)]
    pub flow: Option<String>,
    #[serde(default)]
    pub menu: String,
    #[serde(default)]
    pub priority: u8,
    /// The answering agent's pool, and the skills (minimum levels) required at the answer.
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default)]
    pub skills: std::collections::BTreeMap<String, u8>,
    /// On a callback's record: the record of the call that asked for it.
    #[serde(default)]
    pub callback_of: Option<String>,
    /// `{"from_node", "at_ms", "outcome"}` on a call another node took over (failover).
    #[serde(default)]
    pub failover: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Offer {
    pub agent: String,
    pub queue: String,
    pub offered_ms: u64,
    pub ended_ms: u64,
    pub outcome: String,
}

impl Cdr {
    /// Internal consistency every record must have, whatever happened to the call.
    pub fn check_invariants(&self) {
        let ctx = || format!("{self:#?}");
        assert!(!self.id.is_empty(), "empty id: {}", ctx());
        assert!(
            self.ended_ms >= self.arrived_ms,
            "ended before it arrived: {}",
            ctx()
        );
        if let Some(q) = self.queued_ms {
            assert!(
                q >= self.arrived_ms && q <= self.ended_ms,
                "queued_ms out of range: {}",
                ctx()
            );
        }
        if let Some(a) = self.answered_ms {
            assert!(
                a >= self.arrived_ms && a <= self.ended_ms,
                "answered_ms out of range: {}",
                ctx()
            );
            assert!(
                self.talk_ms.abs_diff(self.ended_ms - a) <= 5,
                "talk_ms != ended_ms - answered_ms: {}",
                ctx()
            );
            if let Some(q) = self.queued_ms {
                assert!(
                    self.wait_ms.abs_diff(a.saturating_sub(q)) <= 5,
                    "wait_ms != answered_ms - queued_ms: {}",
                    ctx()
                );
            }
        } else {
            assert_eq!(self.talk_ms, 0, "talk_ms without an answer: {}", ctx());
        }
        for o in &self.offers {
            assert!(
                o.ended_ms >= o.offered_ms,
                "offer ends before it starts: {}",
                ctx()
            );
        }
        let answered_offers = self
            .offers
            .iter()
            .filter(|o| o.outcome == "answered")
            .count();
        if self.disposition == "answered" {
            assert!(
                self.answered_ms.is_some(),
                "answered without answered_ms: {}",
                ctx()
            );
            assert!(self.agent.is_some(), "answered without agent: {}", ctx());
            assert_eq!(
                answered_offers,
                1,
                "answered call needs exactly one answered offer: {}",
                ctx()
            );
            assert_eq!(
                self.offers.last().map(|o| o.agent.as_str()),
                self.agent.as_deref(),
                "the answered offer is the last one and names the agent: {}",
                ctx()
            );
        } else {
            assert_eq!(
                answered_offers,
                0,
                "unanswered call with an answered offer: {}",
                ctx()
            );
            assert!(self.answered_ms.is_none(), "{}", ctx());
        }
    }
}

/// Finds the snapshot of agent `ext` in `/v1/agents`: a bare array or an object holding one
/// (`{"agents": [...]}`), or an object keyed by extension; the entry names the agent in `id`,
/// `agent`, `agent_id` or `extension`.
pub fn find_agent<'a>(agents: &'a Value, ext: &str) -> Option<&'a Value> {
    let list: Vec<&Value> = match agents {
        Value::Array(items) => items.iter().collect(),
        Value::Object(map) => {
            if let Some(Value::Array(items)) = map.get("agents") {
                items.iter().collect()
            } else if let Some(v) = map.get(ext) {
                return Some(v);
            } else {
                Vec::new()
            }
        }
        _ => Vec::new(),
    };
    list.into_iter().find(|entry| {
        ["id", "agent", "agent_id", "extension"]
            .iter()
            .any(|k| entry.get(*k).and_then(Value::as_str) == Some(ext))
    })
}

/// The agent's state from its snapshot: `state` (or `status`) as a string, or as an object
/// with its own `state`, normalised to lowercase ASCII letters.
pub fn state_of(entry: &Value) -> Option<String> {
    let raw = ["state", "status"].iter().find_map(|k| entry.get(*k))?;
    let text = match raw {
        Value::String(s) => s.clone(),
        Value::Object(map) => map
            .get("state")
            .or_else(|| map.get("kind"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| map.keys().next().cloned())?,
        _ => return None,
    };
    Some(
        text.chars()
            .filter(char::is_ascii_alphabetic)
            .map(|c| c.to_ascii_lowercase())
            .collect(),
    )
}

/// For each agent, checks its answered calls never overlap in time.
pub fn assert_no_agent_overlap(cdrs: &[Cdr]) {
    let mut by_agent: BTreeMap<&str, Vec<&Cdr>> = BTreeMap::new();
    for c in cdrs.iter().filter(|c| c.disposition == "answered") {
        by_agent
            .entry(c.agent.as_deref().expect("answered call has an agent"))
            .or_default()
            .push(c);
    }
    for (agent, calls) in &mut by_agent {
        calls.sort_by_key(|c| c.answered_ms);
        for pair in calls.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert!(
                b.answered_ms.unwrap() >= a.ended_ms,
                "agent {agent} was on two calls at once:\n{a:#?}\n{b:#?}"
            );
        }
    }
}
