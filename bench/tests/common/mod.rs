//! Shared by the harness's end-to-end tests: temp dirs kept on failure, real node processes
//! (through the harness's own `nodes` module: temp config, free ports), running the
//! `switchyard-bench` binary, reading its summary, and running SIPp.

#![allow(dead_code)]

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_bench::http;
use switchyard_bench::nodes::{self, LocalNodes};
use switchyard_bench::scenario::Scenario;

static DIRS: AtomicU32 = AtomicU32::new(0);

/// A temp directory, removed when the test passes and kept (path printed) when it fails.
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let n = DIRS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "switchyard-bench-{name}-{}-{n}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create test dir");
        TestDir(dir)
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("[test] kept {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench lives in the workspace")
        .to_path_buf()
}

pub fn scenario_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(name)
}

/// Starts one node configured for `scenario` (queues, DIDs, agents) on free ports.
pub fn start_node(scenario: &Scenario, dir: &TestDir) -> LocalNodes {
    let bin = nodes::switchyard_bin().unwrap_or_else(|e| {
        panic!("{e:#}\nBuild the node first: `cargo build -p switchyard` (or set SWITCHYARD_BIN).")
    });
    LocalNodes::start(&bin, scenario, 1, false, &dir.0, 1000)
        .unwrap_or_else(|e| panic!("starting a node: {e:#}"))
}

/// Runs `switchyard-bench ARGS...`; its exit code and combined output.
pub fn bench(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard-bench"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run switchyard-bench");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

pub fn summary(out: &Path) -> Value {
    let text = fs::read_to_string(out.join("summary.json")).expect("summary.json written");
    serde_json::from_str(&text).expect("summary.json is JSON")
}

pub fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{path} missing in {v}"))
}

pub fn f(v: &Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} missing in {v}"))
}

pub fn get_json(addr: SocketAddr, path: &str) -> Value {
    http::get_json(addr, path).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Every call record a node holds.
pub fn cdrs(http: SocketAddr) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = get_json(http, &format!("/v1/cdrs?after={after}&limit=1000"));
        let records = page["records"].as_array().cloned().unwrap_or_default();
        if records.is_empty() {
            return out;
        }
        out.extend(records);
        after = page["next"].as_u64().expect("next");
    }
}

/// Polls until the node has `n` call records.
pub fn wait_cdrs(http: SocketAddr, n: usize, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let records = cdrs(http);
        if records.len() >= n || Instant::now() > deadline {
            return records;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn sipp_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SIPP_BIN") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("sipp"))
        .find(|p| p.is_file())
        .expect("`sipp` is not on PATH: apt-get install -y sip-tester (scripts/test.sh does)")
}

/// A SIPp process with its logs in `dir/<label>/`, killed on drop.
pub struct Sipp {
    pub label: String,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Sipp {
    /// Runs SIPp with `args` (the scenario file is `tests/sipp/<scenario>`).
    pub fn spawn(dir: &TestDir, label: &str, scenario: &str, args: &[String]) -> Sipp {
        let log_dir = dir.join(label);
        fs::create_dir_all(&log_dir).expect("sipp dir");
        let scenario = workspace_root().join("tests").join("sipp").join(scenario);
        // The remote address, when there is one, leads, as SIPp documents it.
        let mut all: Vec<String> = args.to_vec();
        all.extend([
            "-sf".into(),
            scenario.display().to_string(),
            "-i".into(),
            "127.0.0.1".into(),
            "-mi".into(),
            "127.0.0.1".into(),
            "-nostdin".into(),
            "-trace_err".into(),
            "-error_file".into(),
            log_dir.join("errors.log").display().to_string(),
            "-trace_stat".into(),
            "-stf".into(),
            log_dir.join("stat.csv").display().to_string(),
            "-fd".into(),
            "1".into(),
        ]);
        let log = fs::File::create(log_dir.join("stdout.log")).expect("sipp log");
        let child = Command::new(sipp_bin())
            .args(&all)
            .current_dir(&log_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("start sipp");
        Sipp {
            label: label.to_owned(),
            dir: log_dir,
            child: Some(child),
        }
    }

    /// Waits up to `timeout` for SIPp to exit; its exit code.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn errors(&self) -> String {
        fs::read_to_string(self.dir.join("errors.log")).unwrap_or_default()
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A free UDP port `p` with `p+2` free too (SIPp's media ports).
pub fn free_media_port() -> u16 {
    loop {
        let p = nodes::free_port().expect("free port") & !1;
        if [p, p + 1, p + 2, p + 3]
            .iter()
            .all(|&q| std::net::UdpSocket::bind(("127.0.0.1", q)).is_ok())
        {
            return p;
        }
    }
}
