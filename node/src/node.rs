//! Start-up, shutdown, and the context shared by the node's actors.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use switchyard_cluster::Directory;
use switchyard_cluster::state::NodeId;
use switchyard_media::{EndpointId, MediaEvent, MediaHandle, Prompt};
use switchyard_sip::transaction::{Timers, Transport};
use tokio::sync::mpsc;

use crate::acd::agent::{self, AgentArgs};
use crate::acd::board::QueueBoard;
use crate::acd::queue::{self, QueueArgs};
use crate::acd::{AgentMsg, QueueMsg};
use crate::call::CallMsg;
use crate::call::Local;
use crate::cdr::store::{CdrStore, CdrWriter};
use crate::config::{AgentSpec, Config, DidConfig};
use crate::failover::Failover;
use crate::flows::{FlowStore, Prompts};
use crate::registrar::{BindingChange, Registrar};
use crate::remote::hosting::Hosting;
use crate::remote::mailroom::Mailroom;
use crate::remote::{Fence, Hosted, Postman};
use crate::sip::endpoint::{self, SipHandle};
use crate::sip::transport::Transports;
use crate::time::unix_ms;

/// What every call, queue and agent actor of this node shares.
pub struct NodeContext {
    pub config: Config,
    /// The cluster node id; 0 on a standalone node.
    pub node_id: NodeId,
    pub sip: SipHandle,
    pub media: MediaHandle,
    pub music: Arc<Prompt>,
    pub goodbye: Arc<Prompt>,
    /// 20 ms of silence, looped to an agent whose customer the API put on hold.
    pub silence: Arc<Prompt>,
    pub registrar: Arc<Mutex<Registrar>>,
    /// Every queue and agent by id: the actor where it runs here, a proxy where it runs on
    /// another node (`crate::remote`).
    pub queues: Directory<String, QueueMsg>,
    pub agents: Directory<String, AgentMsg>,
    /// Media endpoint -> the call that allocated it, for media events.
    pub media_owners: Directory<EndpointId, CallMsg>,
    /// Live calls by Switchyard call id (`CallRecord::id`), for the API and for queues.
    pub calls: Directory<String, CallMsg>,
    /// Delivers queue messages to calls on this node or another.
    pub postman: Postman,
    /// Root of call recordings.
    pub recordings_dir: PathBuf,
    pub cdrs: CdrWriter,
    /// Call and agent replication and take-over (clustered nodes only).
    pub failover: Option<Failover>,
    /// IVR flows and their prompts.
    pub flows: Arc<FlowStore>,
    /// Staffing and waits of the queues homed here, for flows that branch on them.
    pub queue_board: QueueBoard,
    /// Each agent's pool (from the config file), for call records.
    pub agent_pools: HashMap<String, String>,
    dids: HashMap<String, DidConfig>,
}

impl NodeContext {
    pub fn timers(&self) -> Timers {
        Timers {
            t1: Duration::from_millis(self.config.sip.t1_ms),
            ..Timers::default()
        }
    }

    /// This node's SIP address for `transport`, as written in Via and Contact.
    pub fn local(&self, transport: Transport) -> Local {
        Local {
            addr: self.config.sip.advertised(),
            transport,
        }
    }

    pub fn did(&self, number: &str) -> Option<&DidConfig> {
        self.dids.get(number)
    }

    /// Tells the agent actor, wherever it runs, which contacts this node now holds for it.
    pub fn binding_changed(&self, change: BindingChange) {
        if let Some(agent) = self.agents.get(&change.user) {
            let _ = agent.cast(AgentMsg::Contacts {
                node: self.node_id,
                contacts: change.contacts,
            });
        }
    }
}

/// Runs a node until SIGINT or SIGTERM.
pub async fn run(config: Config, data_dir: PathBuf) -> anyhow::Result<()> {
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let metrics = crate::api::install_metrics().context("cannot install metrics recorder")?;
    let (cdr_store, cdrs) = CdrStore::open(&data_dir).context("cannot open call record store")?;

    let (media, media_events) = switchyard_media::start(switchyard_media::MediaConfig {
        workers: config.media.workers,
        bind_ip: config.media.bind_ip,
        port_min: config.media.rtp_port_min,
        port_max: config.media.rtp_port_max,
        rtp_timeout: Duration::from_secs(config.media.rtp_timeout_secs),
        rtcp_interval: Duration::from_millis(config.media.rtcp_interval_ms),
    })
    .context("cannot start media workers")?;
    let load = |path: &PathBuf| {
        Prompt::load_wav(path)
            .map(Arc::new)
            .with_context(|| format!("cannot load prompt {}", path.display()))
    };
    let music = load(&config.media.music_on_hold)?;
    let goodbye = load(&config.media.goodbye_prompt)?;
    let silence = Arc::new(Prompt::from_pcm(&[0; 160]).context("cannot make silence")?);

    let prompts = Arc::new(Prompts::load(&config.media.prompts_dir)?);
    // A clustered node keeps API changes in the cluster's `flows` document instead.
    let saved_flows = config
        .cluster
        .is_none()
        .then(|| data_dir.join("flows.json"));
    let trunks = config.trunks.iter().map(|t| t.name.clone()).collect();
    let flows = Arc::new(FlowStore::open(
        config.flow_set(),
        prompts,
        trunks,
        saved_flows,
    )?);
    let queue_names: Vec<&str> = config.queues.iter().map(|q| q.name.as_str()).collect();
    flows
        .check(&flows.current(), queue_names)
        .map_err(|problems| anyhow::anyhow!("invalid flows: {problems}"))?;

    let agents_spec = config.agents()?;
    let agent_pools = agents_spec
        .iter()
        .map(|a| (a.extension.clone(), a.pool.clone()))
        .collect();
    let passwords = agents_spec
        .iter()
        .map(|a| (a.extension.clone(), a.password.clone()))
        .collect();
    let registrar = Arc::new(Mutex::new(Registrar::new(
        config.registrar.clone(),
        passwords,
        rand::random(),
    )));

    let (inbound_tx, inbound_rx) = mpsc::unbounded_channel();
    let transports = Transports::bind(config.sip.listen, inbound_tx)
        .await
        .with_context(|| format!("cannot bind SIP on {}", config.sip.listen))?;
    let (sip, sip_commands) = endpoint::channel();
    let cluster = crate::cluster::start(&config, &data_dir).await?;
    let node_id = cluster.as_ref().map_or(0, |(runtime, _)| runtime.node_id());
    let replicate_calls = config.cluster.as_ref().is_none_or(|c| c.replicate_calls);
    let failover = cluster.as_ref().map(|(runtime, _)| {
        Failover::new(
            node_id,
            replicate_calls,
            runtime.mesh().clone(),
            runtime.watch_view(),
        )
    });
    let calls = Directory::default();

    let recordings_dir = config
        .media
        .recordings_dir
        .clone()
        .unwrap_or_else(|| data_dir.join("recordings"));
    let ctx = Arc::new(NodeContext {
        dids: config
            .dids
            .iter()
            .map(|d| (d.number.clone(), d.clone()))
            .collect(),
        config,
        node_id,
        sip,
        media,
        music,
        goodbye,
        silence,
        registrar: Arc::clone(&registrar),
        queues: Directory::default(),
        agents: Directory::default(),
        media_owners: Directory::default(),
        postman: Postman::new(
            node_id,
            calls.clone(),
            cluster.as_ref().map(|(runtime, _)| runtime.mesh().clone()),
        ),
        calls,
        recordings_dir,
        cdrs,
        failover,
        flows,
        queue_board: QueueBoard::default(),
        agent_pools,
    });

    let cluster = match cluster {
        // Queues and agents run where the placement puts them, once this node is in good
        // standing.
        Some((runtime, actor_traffic)) => {
            let hosted = Hosted::default();
            let mailroom = Mailroom {
                view: runtime.watch_view(),
                mesh: runtime.mesh().clone(),
                hosted: hosted.clone(),
                calls: ctx.calls.clone(),
                queues: ctx.queues.clone(),
                registrar: Arc::clone(&ctx.registrar),
                failover: ctx.failover.clone(),
            };
            tokio::spawn(mailroom.run(actor_traffic));
            if let Some(failover) = ctx.failover.clone() {
                tokio::spawn(failover.run(Arc::clone(&ctx)));
            }
            tokio::spawn(Hosting::new(Arc::clone(&ctx), runtime.clone(), hosted).run());
            tokio::spawn(crate::flows::follow_cluster(
                runtime.clone(),
                Arc::clone(&ctx.flows),
            ));
            Some(runtime)
        }
        None => {
            spawn_acd(&ctx, agents_spec).await?;
            None
        }
    };

    endpoint::spawn(
        Arc::clone(&ctx),
        transports,
        inbound_rx,
        sip_commands,
        registrar,
    );
    forward_media_events(media_events, ctx.media_owners.clone());
    tokio::spawn(sweep_registrations(Arc::clone(&ctx)));

    let http = tokio::net::TcpListener::bind(ctx.config.http.listen)
        .await
        .with_context(|| format!("cannot bind HTTP on {}", ctx.config.http.listen))?;
    tracing::info!(
        node = %ctx.config.node.id,
        sip = %ctx.config.sip.listen,
        http = %ctx.config.http.listen,
        data_dir = %data_dir.display(),
        "switchyard node ready"
    );
    let router = crate::api::router(crate::api::ApiState {
        cdrs: cdr_store,
        queues: ctx.queues.clone(),
        agents: ctx.agents.clone(),
        calls: ctx.calls.clone(),
        metrics,
    });
    let router = router.merge(crate::flows::api::routes(crate::flows::api::FlowsApi {
        store: Arc::clone(&ctx.flows),
        queues: ctx.queues.clone(),
        cluster: cluster.clone(),
    }));
    let router = match &cluster {
        Some(runtime) => router.merge(crate::cluster::routes(runtime.clone())),
        None => router,
    };
    crate::api::serve(http, router, shutdown_signal()).await?;
    tracing::info!("shutting down");
    if let Some(runtime) = cluster {
        runtime.shutdown().await;
    }
    if let Err(e) = ctx.cdrs.shutdown().await {
        tracing::error!(error = %e, "call records not all written at shutdown");
    }
    Ok(())
}

/// A standalone node runs every queue and agent itself, queues first.
async fn spawn_acd(ctx: &NodeContext, agents: Vec<AgentSpec>) -> anyhow::Result<()> {
    for config in &ctx.config.queues {
        let name = config.name.clone();
        let args = QueueArgs {
            config: config.clone(),
            agents: ctx.agents.clone(),
            postman: ctx.postman.clone(),
            fence: Fence::open(),
            board: ctx.queue_board.clone(),
        };
        let queue = queue::spawn_queue(args)
            .await
            .with_context(|| format!("cannot start queue {name}"))?;
        ctx.queues.insert(name, queue);
    }
    for spec in agents {
        let extension = spec.extension.clone();
        let args = AgentArgs {
            policies: agent::policies(&spec, |name| ctx.config.queue(name).cloned()),
            spec,
            queues: ctx.queues.clone(),
            fence: Fence::open(),
            restored: None,
            failover: None,
        };
        let agent = agent::spawn_agent(args)
            .await
            .with_context(|| format!("cannot start agent {extension}"))?;
        ctx.agents.insert(extension, agent);
    }
    Ok(())
}

/// Media workers report on a crossbeam channel; a plain thread hands each event to its call.
fn forward_media_events(
    events: crossbeam_channel::Receiver<MediaEvent>,
    owners: Directory<EndpointId, CallMsg>,
) {
    let spawned = std::thread::Builder::new()
        .name("media-events".into())
        .spawn(move || {
            for event in events {
                if let Some(call) = owners.get(&event.endpoint()) {
                    let _ = call.cast(CallMsg::Media(event));
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start media event thread; media events are lost");
    }
}

async fn sweep_registrations(ctx: Arc<NodeContext>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let changes = {
            let mut registrar = ctx.registrar.lock().unwrap_or_else(|e| e.into_inner());
            let changes = registrar.sweep(unix_ms());
            metrics::gauge!("registrar_registered_users").set(registrar.registered_users() as f64);
            changes
        };
        for change in changes {
            ctx.binding_changed(change);
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
