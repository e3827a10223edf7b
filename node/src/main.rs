//! The `switchyard` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchyard::config::Config;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Contact-centre telephony cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a local three-node cluster and drive it with the bench harness's busy hour,
    /// printing live figures (`switchyard-bench demo`; options such as `--duration 60s`,
    /// `--nodes 1` are passed through). Runs until Ctrl-C without `--duration`.
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Operate a cluster: certificates and join tokens.
    Ctl {
        #[command(subcommand)]
        command: Ctl,
    },
    /// Run a node.
    Node {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Directory for durable state (call records); overrides `node.data_dir`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum Ctl {
    /// Create the cluster CA (ca.pem, ca.key) in DIR. Keep ca.key offline if you can.
    CaCreate {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a node certificate signed by the cluster CA into OUT (ca.pem, node.pem, node.key).
    CertIssue {
        /// Directory holding ca.pem and ca.key.
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        node_id: u64,
        /// Human-readable node name, written into the certificate's common name.
        #[arg(long)]
        name: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a join token for a new node: a secret carrying its certificate; give it to the
    /// new node's operator over a trusted channel.
    TokenIssue {
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        node_id: u64,
        /// Validity in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
    /// Write the certificate carried by a join token into OUT.
    TokenRedeem {
        token: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Leader, term, members, sites, health, placement counts and replication lag.
    Status {
        /// HTTP address of any member.
        #[arg(long, default_value = "127.0.0.1:8081")]
        http: String,
        /// Print the raw JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Change the cluster's membership.
    Node {
        #[command(subcommand)]
        command: NodeCtl,
    },
}

#[derive(Subcommand)]
enum NodeCtl {
    /// Add a node (started with a certificate for its id and not in the bootstrap list).
    Add {
        #[arg(long, default_value = "127.0.0.1:8081")]
        http: String,
        #[arg(long)]
        id: u64,
        #[arg(long)]
        name: String,
        #[arg(long)]
        site: String,
        #[arg(long)]
        cluster_addr: String,
        #[arg(long)]
        sip_addr: String,
        #[arg(long)]
        http_addr: String,
    },
    /// Remove a node from the cluster; its actors move to the others.
    Remove {
        #[arg(long, default_value = "127.0.0.1:8081")]
        http: String,
        #[arg(long)]
        id: u64,
    },
    /// Move every actor off a node without removing it (before maintenance).
    Drain {
        #[arg(long, default_value = "127.0.0.1:8081")]
        http: String,
        #[arg(long)]
        id: u64,
    },
}

fn ctl(command: Ctl) -> ExitCode {
    use switchyard_cluster::tls;
    let result = match command {
        Ctl::Status { .. } | Ctl::Node { .. } => return ctl_http(command),
        Ctl::CaCreate { dir } => tls::create_ca(&dir).map(|()| {
            println!("cluster CA written to {}", dir.display());
        }),
        Ctl::CertIssue {
            ca,
            node_id,
            name,
            out,
        } => tls::issue_node_cert(&ca, node_id, &name, &out).map(|()| {
            println!(
                "certificate for node {node_id} ({name}) written to {}",
                out.display()
            );
        }),
        Ctl::TokenIssue {
            ca,
            node_id,
            ttl_secs,
        } => tls::issue_join_token(&ca, node_id, std::time::Duration::from_secs(ttl_secs))
            .map(|token| println!("{token}")),
        Ctl::TokenRedeem { token, out } => tls::redeem_join_token(&token, &out).map(|node_id| {
            println!(
                "certificate for node {node_id} written to {}",
                out.display()
            );
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn ctl_http(command: Ctl) -> ExitCode {
    let (http, method, path, body, json_out) = match command {
        Ctl::Status { http, json } => (http, "GET", "/v1/cluster/status".to_owned(), None, json),
        Ctl::Node { command } => match command {
            NodeCtl::Add {
                http,
                id,
                name,
                site,
                cluster_addr,
                sip_addr,
                http_addr,
            } => {
                let body = serde_json::json!({
                    "id": id, "name": name, "site": site, "cluster_addr": cluster_addr,
                    "sip_addr": sip_addr, "http_addr": http_addr,
                });
                (
                    http,
                    "POST",
                    "/v1/cluster/nodes".to_owned(),
                    Some(body.to_string()),
                    true,
                )
            }
            NodeCtl::Remove { http, id } => (
                http,
                "DELETE",
                format!("/v1/cluster/nodes/{id}"),
                None,
                true,
            ),
            NodeCtl::Drain { http, id } => (
                http,
                "POST",
                format!("/v1/cluster/nodes/{id}/drain"),
                None,
                true,
            ),
        },
        _ => return ExitCode::FAILURE,
    };
    match switchyard::cli::http_request(&http, method, &path, body.as_deref()) {
        Ok((status, text)) if (200..300).contains(&status) => {
            // Only the leader sees every member's health and lag: show its view when it is up.
            let text = match serde_json::from_str::<switchyard::cluster::StatusJson>(&text) {
                Ok(s) if method == "GET" && s.leader.is_some_and(|l| l != s.node_id) => s
                    .members
                    .iter()
                    .find(|m| Some(m.id) == s.leader)
                    .and_then(|leader| {
                        switchyard::cli::http_request(&leader.http_addr, "GET", &path, None).ok()
                    })
                    .filter(|(status, _)| *status == 200)
                    .map_or(text, |(_, leader_text)| leader_text),
                _ => text,
            };
            if json_out {
                println!("{text}");
            } else {
                match serde_json::from_str::<switchyard::cluster::StatusJson>(&text) {
                    Ok(s) => print!("{}", switchyard::cli::render_status(&s)),
                    Err(_) => println!("{text}"),
                }
            }
            ExitCode::SUCCESS
        }
        Ok((status, text)) => {
            eprintln!("switchyard ctl: {method} {path} on {http}: HTTP {status}: {text}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("switchyard ctl: cannot reach {http}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `switchyard-bench demo`, found beside this executable (both come from one build).
fn demo(mut args: Vec<String>) -> ExitCode {
    let bench = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("switchyard-bench")))
        .filter(|path| path.exists());
    let Some(bench) = bench else {
        eprintln!(
            "switchyard demo: switchyard-bench not found beside this binary; \
             build it with `cargo build --release -p switchyard-bench`"
        );
        return ExitCode::FAILURE;
    };
    if !args
        .iter()
        .any(|a| a == "--nodes" || a.starts_with("--nodes="))
    {
        args.splice(0..0, ["--nodes".to_owned(), "3".to_owned()]);
    }
    match std::process::Command::new(&bench)
        .arg("demo")
        .args(&args)
        .status()
    {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(status) => ExitCode::from(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1)),
        Err(e) => {
            eprintln!("switchyard demo: cannot run {}: {e}", bench.display());
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Demo { args } => demo(args),
        Command::Ctl { command } => ctl(command),
        Command::Node { config, data_dir } => {
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("switchyard: {e}");
                    return ExitCode::from(2);
                }
            };
            let data_dir = data_dir.unwrap_or_else(|| config.node.data_dir.clone());
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("switchyard")
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("switchyard: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(switchyard::node::run(config, data_dir)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("switchyard: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
