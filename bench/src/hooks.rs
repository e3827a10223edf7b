//! Scenario hooks: shell commands run at a given time into the run (kill or drain a node, cut
//! a link with `tc`/`iptables`, ...). Each runs under `sh -c` with
//!
//! - `BENCH_OUT`: the output directory,
//! - `BENCH_PIDS`: a directory of `<node id>.pid` and `<node id>.http` (its API address) files
//!   when the harness started the nodes, and `SWITCHYARD_BIN`, the node binary, then too,
//! - `BENCH_ELAPSED`: seconds since arrivals began,
//!
//! and its output goes to `hooks.log` in the output directory. A hook's time marks the
//! report's plots.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::scenario::Hook;
use crate::stats::Recorder;

/// A hook that hangs must not hold the run.
const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// What a hook did.
#[derive(Debug, Clone, Serialize)]
pub struct HookResult {
    pub name: String,
    pub at_s: f64,
    pub started_s: f64,
    pub took_s: f64,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
}

/// Starts a task per hook; results accumulate in the returned list.
pub fn spawn(
    hooks: &[Hook],
    start: Instant,
    out: &Path,
    pid_dir: Option<&Path>,
    recorder: Arc<Mutex<Recorder>>,
) -> Arc<Mutex<Vec<HookResult>>> {
    let results = Arc::new(Mutex::new(Vec::new()));
    for hook in hooks.iter().cloned() {
        let results = results.clone();
        let recorder = recorder.clone();
        let out = out.to_path_buf();
        let pid_dir = pid_dir.map(Path::to_path_buf);
        tokio::spawn(async move {
            tokio::time::sleep_until((start + hook.at.0).into()).await;
            let name = hook.name.clone().unwrap_or_else(|| hook.run.clone());
            if let Ok(mut r) = recorder.lock() {
                r.hook_fired(&name);
            }
            let started = start.elapsed();
            let command = hook.run.clone();
            let (name2, out2) = (name.clone(), out.clone());
            let t0 = Instant::now();
            let outcome = tokio::task::spawn_blocking(move || {
                run_one(&name2, &command, started, &out2, pid_dir)
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            let (exit_code, error) = match outcome {
                Ok(code) => (code, None),
                Err(e) => (None, Some(e)),
            };
            eprintln!(
                "[{:>5.0}s] hook {name}: {}",
                started.as_secs_f64(),
                match (&exit_code, &error) {
                    (Some(c), _) => format!("exit {c}"),
                    (None, Some(e)) => e.clone(),
                    (None, None) => "killed by a signal".into(),
                }
            );
            if let Ok(mut list) = results.lock() {
                list.push(HookResult {
                    name,
                    at_s: hook.at.secs_f64(),
                    started_s: started.as_secs_f64(),
                    took_s: t0.elapsed().as_secs_f64(),
                    exit_code,
                    error,
                });
            }
        });
    }
    results
}

/// Runs one hook with its output appended to `hooks.log`; its exit code.
fn run_one(
    name: &str,
    command: &str,
    started: Duration,
    out: &Path,
    pid_dir: Option<PathBuf>,
) -> Result<Option<i32>, String> {
    let mut log: File = OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.join("hooks.log"))
        .map_err(|e| format!("hooks.log: {e}"))?;
    let _ = writeln!(
        log,
        "---- [{:.3}s] {name}: {command}",
        started.as_secs_f64()
    );
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .env("BENCH_OUT", out)
        .env("BENCH_ELAPSED", format!("{:.3}", started.as_secs_f64()))
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log.try_clone().map_err(|e| e.to_string())?);
    if let Some(dir) = &pid_dir {
        cmd.env("BENCH_PIDS", dir);
        if let Ok(bin) = crate::nodes::switchyard_bin() {
            cmd.env("SWITCHYARD_BIN", bin);
        }
    }
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    let deadline = Instant::now() + HOOK_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status.code()),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("killed after {}s", HOOK_TIMEOUT.as_secs()));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}
