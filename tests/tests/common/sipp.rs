//! Running SIPp: builds the command line, runs it with its own logs in a directory of its
//! own, enforces a timeout, and on failure reports SIPp's exit code, error log, statistics and
//! the tail of its message trace.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{DieWithParent, Node, free_media_port, free_port, sipp_bin, tail_lines};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    fn flag(self) -> &'static str {
        match self {
            Transport::Udp => "u1",
            Transport::Tcp => "t1",
        }
    }
}

/// A SIPp command being put together.
#[derive(Debug, Clone)]
pub struct Sipp {
    label: String,
    scenario: PathBuf,
    dir: PathBuf,
    remote: Option<SocketAddr>,
    server: bool,
    transport: Transport,
    local_port: Option<u16>,
    calls: u32,
    rate: Option<f64>,
    limit: Option<u32>,
    duration_ms: Option<u64>,
    inf: Option<PathBuf>,
    timeout_secs: u64,
    trace_msg: bool,
    /// The number a client scenario dials (`-s`, `[service]`).
    service: String,
    extra: Vec<String>,
}

impl Sipp {
    pub fn new(label: &str, scenario: PathBuf, dir: PathBuf) -> Self {
        Self {
            label: label.to_owned(),
            scenario,
            dir,
            remote: None,
            server: false,
            transport: Transport::Udp,
            local_port: None,
            calls: 1,
            rate: None,
            limit: None,
            duration_ms: None,
            inf: None,
            timeout_secs: 60,
            trace_msg: true,
            service: "1000".into(),
            extra: Vec::new(),
        }
    }

    /// The number the caller dials (default DID 1000).
    pub fn dial(mut self, number: &str) -> Self {
        number.clone_into(&mut self.service);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn remote(mut self, addr: SocketAddr) -> Self {
        self.remote = Some(addr);
        self
    }

    /// A UAS scenario: SIPp waits for requests and needs no remote address.
    pub fn server(mut self) -> Self {
        self.server = true;
        self
    }

    pub fn transport(mut self, t: Transport) -> Self {
        self.transport = t;
        self
    }

    pub fn local_port(mut self, port: u16) -> Self {
        self.local_port = Some(port);
        self
    }

    /// `-m`: SIPp exits after this many calls.
    pub fn calls(mut self, n: u32) -> Self {
        self.calls = n;
        self
    }

    /// `-r`: calls started per second.
    pub fn rate(mut self, per_sec: f64) -> Self {
        self.rate = Some(per_sec);
        self
    }

    /// `-l`: most simultaneous calls.
    pub fn limit(mut self, n: u32) -> Self {
        self.limit = Some(n);
        self
    }

    /// `-d`: length of the scenario's `<pause/>`s.
    pub fn duration_ms(mut self, ms: u64) -> Self {
        self.duration_ms = Some(ms);
        self
    }

    pub fn inf(mut self, path: &Path) -> Self {
        self.inf = Some(path.to_path_buf());
        self
    }

    /// `-timeout Ns -timeout_error`; the harness kills SIPp 15 s after that.
    pub fn timeout_secs(mut self, secs: u64) -> Self {
        self.timeout_secs = secs;
        self
    }

    /// `-trace_msg` is on by default; off for big runs.
    pub fn trace_msg(mut self, on: bool) -> Self {
        self.trace_msg = on;
        self
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.extra.push(a.to_owned());
        self
    }

    /// `-set name value` (a scenario's `<Global>` variable).
    pub fn set(self, name: &str, value: &str) -> Self {
        self.arg("-set").arg(name).arg(value)
    }

    pub fn spawn(self) -> SippProcess {
        fs::create_dir_all(&self.dir).expect("create sipp dir");
        let local_port = self.local_port.unwrap_or_else(free_port);
        let media_port = free_media_port();
        let err = self.dir.join("errors.log");
        let msgs = self.dir.join("messages.log");
        let stat = self.dir.join("stat.csv");
        let screen = self.dir.join("screen.log");
        let mut args: Vec<String> = Vec::new();
        if !self.server {
            let remote = self
                .remote
                .expect("a client SIPp run needs a remote address");
            args.push(remote.to_string());
            args.extend(["-s".to_owned(), self.service.clone()]);
        }
        args.extend(
            [
                "-sf",
                &self.scenario.to_string_lossy(),
                "-i",
                "127.0.0.1",
                "-mi",
                "127.0.0.1",
                "-p",
                &local_port.to_string(),
                "-mp",
                &media_port.to_string(),
                "-t",
                self.transport.flag(),
                "-m",
                &self.calls.to_string(),
                "-nostdin",
                "-timeout",
                &format!("{}s", self.timeout_secs),
                "-timeout_error",
                "-trace_err",
                "-error_file",
                &err.to_string_lossy(),
                "-trace_stat",
                "-stf",
                &stat.to_string_lossy(),
                "-fd",
                "1",
                "-trace_screen",
                "-screen_file",
                &screen.to_string_lossy(),
            ]
            .map(String::from),
        );
        if self.trace_msg {
            args.extend(["-trace_msg", "-message_file", &msgs.to_string_lossy()].map(String::from));
        }
        if let Some(r) = self.rate {
            args.extend(["-r".into(), format!("{r}")]);
        }
        if let Some(l) = self.limit {
            args.extend(["-l".into(), l.to_string()]);
        }
        if let Some(d) = self.duration_ms {
            args.extend(["-d".into(), d.to_string()]);
        }
        if let Some(inf) = &self.inf {
            args.extend(["-inf".into(), inf.to_string_lossy().into_owned()]);
        }
        args.extend(self.extra.iter().cloned());
        let stdout = fs::File::create(self.dir.join("stdout.log")).expect("sipp stdout");
        let bin = sipp_bin();
        let command_line = format!("{} {}", bin.display(), args.join(" "));
        fs::write(self.dir.join("command.txt"), &command_line).ok();
        let child = Command::new(&bin)
            .args(&args)
            .current_dir(&self.dir)
            .die_with_parent(libc::SIGKILL)
            .stdin(Stdio::null())
            .stdout(stdout.try_clone().expect("dup"))
            .stderr(stdout)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        SippProcess {
            label: self.label,
            dir: self.dir,
            command_line,
            local_port,
            child: Some(child),
            started: Instant::now(),
            kill_after: Duration::from_secs(self.timeout_secs + 15),
            exit_code: None,
        }
    }
}

/// Counters from SIPp's `-trace_stat` file, final line.
#[derive(Debug, Clone, Default)]
pub struct SippStats {
    pub successful: u64,
    pub failed: u64,
    pub created: u64,
}

/// A running (or finished) SIPp process, killed on drop.
pub struct SippProcess {
    pub label: String,
    pub dir: PathBuf,
    pub command_line: String,
    /// The SIP port SIPp listens on (`-p`): an agent phone's Contact port.
    pub local_port: u16,
    child: Option<Child>,
    started: Instant,
    kill_after: Duration,
    exit_code: Option<i32>,
}

impl SippProcess {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits for SIPp to exit (killing it past its timeout); returns its exit code
    /// (`None` = killed by the harness or a signal).
    pub fn wait(&mut self) -> Option<i32> {
        let Some(child) = self.child.as_mut() else {
            return self.exit_code;
        };
        loop {
            if let Some(status) = child.try_wait().expect("wait for sipp") {
                self.exit_code = status.code();
                self.child = None;
                return self.exit_code;
            }
            if self.started.elapsed() > self.kill_after {
                eprintln!(
                    "[harness] sipp {} still running after {:?}: killing it",
                    self.label, self.kill_after
                );
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                self.exit_code = None;
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// Stops SIPp now (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn stats(&self) -> Option<SippStats> {
        let text = fs::read_to_string(self.dir.join("stat.csv")).ok()?;
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header: Vec<&str> = lines.next()?.split(';').collect();
        let last: Vec<&str> = lines.next_back()?.split(';').collect();
        let col = |name: &str| -> u64 {
            header
                .iter()
                .position(|h| *h == name)
                .and_then(|i| last.get(i))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        Some(SippStats {
            successful: col("SuccessfulCall(C)"),
            failed: col("FailedCall(C)"),
            created: col("TotalCallCreated"),
        })
    }

    /// The messages SIPp sent and received (`-trace_msg`).
    pub fn messages(&self) -> String {
        fs::read_to_string(self.dir.join("messages.log")).unwrap_or_default()
    }

    /// Everything useful for diagnosing a failed run.
    pub fn report(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!(
            "---- sipp {label}: exit {code:?}, stats {stats:?}\n\
             command: {cmd}\n\
             ---- errors.log (tail) ----\n{err}\n\
             ---- screen (tail) ----\n{screen}\n\
             ---- messages.log (tail) ----\n{msgs}\n\
             ---- (all files in {dir}) ----",
            label = self.label,
            code = self.exit_code,
            stats = self.stats(),
            cmd = self.command_line,
            err = tail_lines(&read("errors.log"), 60),
            screen = tail_lines(&read("screen.log"), 40),
            msgs = tail_lines(&read("messages.log"), 120),
            dir = self.dir.display(),
        )
    }

    /// Waits and panics, with SIPp's report, unless SIPp exited 0 (every call succeeded).
    pub fn expect_success(mut self) -> SippStats {
        let code = self.wait();
        if code != Some(0) {
            panic!(
                "sipp {} failed (exit {code:?}; 0 = all calls succeeded, 1 = some failed, \
                 None = killed on timeout)\n{}",
                self.label,
                self.report()
            );
        }
        self.stats().unwrap_or_default()
    }

    /// As [`SippProcess::expect_success`], with the tail of the node's log in the report.
    pub fn expect_success_with(mut self, node: &Node) -> SippStats {
        let code = self.wait();
        if code != Some(0) {
            panic!(
                "sipp {} failed against node {} (exit {code:?}; 0 = all calls succeeded, \
                 1 = some failed, None = killed on timeout)\n{}\n---- node log (tail) ----\n{}",
                self.label,
                node.name,
                self.report(),
                node.log_tail(60)
            );
        }
        self.stats().unwrap_or_default()
    }
}

impl Drop for SippProcess {
    fn drop(&mut self) {
        let was_running = self.child.is_some();
        self.kill();
        if std::thread::panicking() && was_running {
            eprintln!(
                "[harness] sipp {} was still running; killed.\n{}",
                self.label,
                self.report()
            );
        }
    }
}
