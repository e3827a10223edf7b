//! `switchyard-bench run SCENARIO.toml --target HOST:PORT ...` and `switchyard-bench demo`.
//! Exit status: 0 when the scenario's pass criteria hold, 1 when one fails, 2 on errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use switchyard_bench::duration::Dur;
use switchyard_bench::nodes::{self, LocalNodes};
use switchyard_bench::report;
use switchyard_bench::runner::{self, RunOptions};
use switchyard_bench::scenario::{Overrides, Scenario};

/// The scenario `demo` runs unless told otherwise, built in so the binary works anywhere.
const BUSY_HOUR: &str = include_str!("../scenarios/busy-hour.toml");

#[derive(Parser)]
#[command(
    name = "switchyard-bench",
    version,
    about = "Load harness for Switchyard: simulated callers and agents, latency, media and \
             service figures checked against the cluster's own"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a scenario against running nodes.
    Run(RunArgs),
    /// Start local nodes with their embedded stores and drive them with a scenario
    /// (busy-hour by default), printing live figures; stops at the end of --duration, or on
    /// Ctrl-C without it.
    Demo(DemoArgs),
}

#[derive(Args)]
struct Common {
    /// Arrival rate in calls per second (wall clock), replacing the scenario's rate or load.
    #[arg(long)]
    rate: Option<f64>,
    /// Number of agents (the scenario's groups keep their proportions).
    #[arg(long)]
    agents: Option<u32>,
    /// Run call behaviour this many times faster than real time.
    #[arg(long)]
    time_scale: Option<f64>,
    /// Output directory (summary.json, intervals.csv, calls.csv, report.html, hooks.log).
    #[arg(long)]
    out: Option<PathBuf>,
    /// REGISTERs started per second.
    #[arg(long, default_value_t = 200.0)]
    register_rate: f64,
    /// SIP timer T1.
    #[arg(long, default_value = "500ms")]
    t1: Dur,
    /// Runtime threads for SIP (media has its own thread).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct RunArgs {
    /// Scenario file (see bench/scenarios/).
    scenario: PathBuf,
    /// SIP address of a node; repeat for a cluster (callers are spread over them).
    #[arg(long = "target")]
    targets: Vec<SocketAddr>,
    /// HTTP API of a node, for the server-side cross-check; repeat per node.
    #[arg(long = "http")]
    http: Vec<SocketAddr>,
    /// How long calls arrive (overrides the scenario; 0 = until Ctrl-C).
    #[arg(long)]
    duration: Option<Dur>,
    /// Also sample this process's CPU, memory and open files (a node); repeatable.
    #[arg(long = "watch-pid")]
    watch: Vec<u32>,
    /// No node: callers ring the harness's own agents, to measure the harness alone.
    #[arg(long)]
    loopback: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct DemoArgs {
    /// How long calls arrive; without it the demo runs until Ctrl-C.
    #[arg(long)]
    duration: Option<Dur>,
    /// Local nodes to start; several form one cluster (Raft, QUIC mesh, placement).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// With several nodes: unrelated standalone nodes instead of a cluster.
    #[arg(long)]
    independent: bool,
    /// Scenario file instead of the built-in busy-hour.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Where the nodes keep their config, logs and call records.
    #[arg(long, default_value = "data/demo")]
    data_dir: PathBuf,
    #[command(flatten)]
    common: Common,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run(args) => run(args),
        Cmd::Demo(args) => demo(args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("switchyard-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("bench-sip")
        .enable_all()
        .build()?)
}

fn overrides(c: &Common, duration: Option<Dur>) -> Overrides {
    Overrides {
        duration: duration.map(|d| d.0),
        rate: c.rate,
        agents: c.agents,
        time_scale: c.time_scale,
    }
}

fn default_out(name: &str) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    PathBuf::from("bench")
        .join("out")
        .join(format!("{name}-{secs}"))
}

fn finish(summary: &report::Summary, out: &Path) -> bool {
    print!("{}", report::text(summary));
    println!("report     {}", out.join("report.html").display());
    summary.pass.ok
}

fn run(args: RunArgs) -> anyhow::Result<bool> {
    let mut scenario = Scenario::load(&args.scenario)?;
    scenario.apply(&overrides(&args.common, args.duration))?;
    let targets = if args.targets.is_empty() {
        scenario.targets.sip.clone()
    } else {
        args.targets
    };
    let http = if args.http.is_empty() {
        scenario.targets.http.clone()
    } else {
        args.http
    };
    let out = args
        .common
        .out
        .clone()
        .unwrap_or_else(|| default_out(&scenario.name));
    let mut watch = scenario.watch.pids.clone();
    watch.extend(args.watch);
    let rt = runtime(args.common.threads)?;
    let summary = rt.block_on(runner::run(RunOptions {
        scenario,
        scenario_file: args.scenario.display().to_string(),
        targets,
        http,
        out: out.clone(),
        loopback: args.loopback,
        watch,
        pid_dir: None,
        register_rate: args.common.register_rate,
        t1: args.common.t1.0,
        quiet: args.common.quiet,
    }))?;
    Ok(finish(&summary, &out))
}

fn demo(args: DemoArgs) -> anyhow::Result<bool> {
    let (mut scenario, file) = match &args.scenario {
        Some(p) => (Scenario::load(p)?, p.display().to_string()),
        None => (
            Scenario::parse(BUSY_HOUR).context("built-in busy-hour scenario")?,
            "busy-hour (built in)".to_owned(),
        ),
    };
    // Without --duration the demo runs until Ctrl-C.
    let duration = Some(args.duration.unwrap_or_default());
    scenario.apply(&overrides(&args.common, duration))?;
    let bin = nodes::switchyard_bin()?;
    std::fs::create_dir_all(&args.data_dir)?;
    let out = args
        .common
        .out
        .clone()
        .unwrap_or_else(|| args.data_dir.join("bench"));
    // A call holds two endpoints on its node (caller and agent legs), each an RTP and an
    // RTCP port; the ranges of all nodes share 20000-31999.
    let per_node = scenario.peak_calls_estimate() / args.nodes.max(1) as f64;
    let rtp_ports = (per_node * 4.0 * 1.5).clamp(400.0, 12_000.0 / args.nodes.max(1) as f64) as u16;
    eprintln!(
        "starting {} node(s) from {} (data in {})",
        args.nodes,
        bin.display(),
        args.data_dir.display()
    );
    // Started on this (the main) thread: the nodes die with it if the harness is killed.
    let mut local = LocalNodes::start(
        &bin,
        &scenario,
        args.nodes,
        args.independent,
        &args.data_dir,
        rtp_ports,
    )?;
    for n in &local.nodes {
        eprintln!(
            "{}: SIP {} HTTP http://{} (pid {}, log {})",
            n.addrs.id,
            n.addrs.sip,
            n.addrs.http,
            n.pid(),
            n.log.display()
        );
    }
    eprintln!(
        "scenario {}: {} agents, {}{}",
        scenario.name,
        scenario.agent_count(),
        if scenario.duration.0.is_zero() {
            "until Ctrl-C".to_owned()
        } else {
            format!("for {}", scenario.duration)
        },
        if scenario.time_scale != 1.0 {
            format!(", {}x faster than real time", scenario.time_scale)
        } else {
            String::new()
        }
    );
    let rt = runtime(args.common.threads)?;
    let result = rt.block_on(runner::run(RunOptions {
        scenario,
        scenario_file: file,
        targets: local.sip(),
        http: local.http(),
        out: out.clone(),
        loopback: false,
        watch: local.pids(),
        pid_dir: Some(local.pid_dir.clone()),
        register_rate: args.common.register_rate,
        t1: args.common.t1.0,
        quiet: args.common.quiet,
    }));
    eprintln!("stopping the node(s)");
    local.stop();
    let summary = result?;
    Ok(finish(&summary, &out))
}
