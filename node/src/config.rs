//! Node configuration, read from a TOML file (see `deploy/examples/single-node.toml`).
//!
//! Every field a carrier might tune has a default, so a config file states only what differs.
//! Cross-field checks (a DID naming an unknown queue, an empty port range) run in
//! [`Config::validate`] so a bad file fails at start-up with a message naming the field.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use switchyard_flows::{Flow, FlowSet, NumberList, Schedule};
use switchyard_routing::{AgentProfile, PoolWeight, QueueRouting, RoutingStep, Skill, Strategy};
use switchyard_sip::digest::Algorithm;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub node: NodeConfig,
    pub sip: SipConfig,
    pub http: HttpConfig,
    #[serde(default)]
    pub media: MediaConfig,
    #[serde(default)]
    pub registrar: RegistrarConfig,
    #[serde(default, rename = "queue")]
    pub queues: Vec<QueueConfig>,
    #[serde(default, rename = "did")]
    pub dids: Vec<DidConfig>,
    #[serde(default, rename = "agents")]
    pub agent_groups: Vec<AgentGroupConfig>,
    /// IVR call flows, opening-hours schedules and caller lists (see `switchyard_flows`): the
    /// initial flow set, changed live through `PUT /v1/flows`.
    #[serde(default, rename = "flow")]
    pub flows: Vec<Flow>,
    #[serde(default, rename = "schedule")]
    pub schedules: Vec<Schedule>,
    #[serde(default, rename = "number_list")]
    pub number_lists: Vec<NumberList>,
    /// Carriers' SIP trunks, for the calls Switchyard places (callbacks).
    #[serde(default, rename = "trunk")]
    pub trunks: Vec<TrunkConfig>,
    /// Present when the node is part of a cluster; absent for a standalone node.
    pub cluster: Option<ClusterConfig>,
}

/// A carrier's SIP trunk: where calls to outside numbers go. No authentication yet (the
/// carrier trusts the source address, as on a private interconnect).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TrunkConfig {
    pub name: String,
    /// The carrier's SIP address: calls go to `sip:<number>@<address>`.
    pub address: SocketAddr,
    #[serde(default)]
    pub tcp: bool,
    /// The calling number the carrier sees (From user); default the DID the caller dialled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_id: Option<String>,
}

/// A queue's offer to call waiting callers back: they press `key`, confirm their number, hang
/// up and keep their place; when their turn comes an agent is connected first, then the
/// customer is dialled through `trunk`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CallbackPolicy {
    pub key: char,
    pub trunk: String,
    /// Dialling attempts before the callback is given up.
    #[serde(default = "default_callback_attempts")]
    pub attempts: u32,
    /// Wait between a failed attempt and the callback's next turn in the queue.
    #[serde(default = "default_callback_retry")]
    pub retry_after_secs: u64,
    /// How long the customer's phone may ring.
    #[serde(default = "default_callback_ring")]
    pub ring_secs: u64,
}

/// How this node takes part in a cluster (Raft control plane over a QUIC mesh).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Raft node id: unique, non-zero, never reused.
    pub node_id: u64,
    /// QUIC address for the mesh (UDP).
    pub listen: SocketAddr,
    /// Directory with `ca.pem`, `node.pem`, `node.key` (`switchyard ctl cert-issue` or
    /// `token-redeem`); relative to the config file.
    pub certs: PathBuf,
    /// The initial members, identical on every initial node. A node not listed here starts
    /// empty and waits to be added (`switchyard ctl node add`).
    #[serde(default)]
    pub bootstrap: Vec<ClusterMemberConfig>,
    /// The leader declares a member failed (and moves its actors) after this long without
    /// hearing from it. At least 500: well past the 200 ms lease, so the silent member has
    /// stopped acting before anyone takes over.
    #[serde(default = "default_failure_timeout_ms")]
    pub failure_timeout_ms: u64,
    /// Copy every call to standby nodes so that it survives this node (ADR 0015). Off, a
    /// node's calls end with it; only for measuring what the copies cost.
    #[serde(default = "default_true")]
    pub replicate_calls: bool,
}

impl ClusterConfig {
    /// Lowest accepted `failure_timeout_ms`.
    pub const MIN_FAILURE_TIMEOUT_MS: u64 = 500;

    pub fn failure_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.failure_timeout_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterMemberConfig {
    pub id: u64,
    pub name: String,
    pub site: String,
    pub cluster_addr: SocketAddr,
    pub sip_addr: SocketAddr,
    pub http_addr: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Stable node id; appears in call records and (later) cluster membership.
    #[serde(default = "default_node_id")]
    pub id: String,
    /// Site label, used for affinity once the node joins a cluster.
    #[serde(default = "default_site")]
    pub site: String,
    /// Where durable state lives unless `--data-dir` overrides it.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            id: default_node_id(),
            site: default_site(),
            data_dir: default_data_dir(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipConfig {
    /// One address for both UDP and TCP.
    pub listen: SocketAddr,
    /// Address written in Via, Contact and SDP when it differs from `listen` (behind NAT).
    pub advertised_addr: Option<SocketAddr>,
    /// RFC 3261 T1 in milliseconds (RTT estimate); T2 and T4 follow the RFC defaults.
    #[serde(default = "default_t1_ms")]
    pub t1_ms: u64,
    /// Value of the Server and User-Agent headers.
    #[serde(default = "default_user_agent")]
    pub user_agent: String,
}

impl SipConfig {
    pub fn advertised(&self) -> SocketAddr {
        self.advertised_addr.unwrap_or(self.listen)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    /// Dedicated RTP worker threads.
    #[serde(default = "default_media_workers")]
    pub workers: usize,
    /// Address RTP sockets bind to and SDP advertises.
    #[serde(default = "default_media_ip")]
    pub bind_ip: IpAddr,
    #[serde(default = "default_rtp_port_min")]
    pub rtp_port_min: u16,
    #[serde(default = "default_rtp_port_max")]
    pub rtp_port_max: u16,
    /// Seconds without RTP from a connected leg before the media worker reports a timeout.
    #[serde(default = "default_rtp_timeout_secs")]
    pub rtp_timeout_secs: u64,
    /// Music on hold played to queued callers (8 kHz mono 16-bit WAV; other rates are resampled).
    #[serde(default = "default_music")]
    pub music_on_hold: PathBuf,
    /// Played before hanging up a caller the queue overflows to "goodbye".
    #[serde(default = "default_goodbye")]
    pub goodbye_prompt: PathBuf,
    /// IVR prompts, as `<dir>/<language>/<name>.wav` (`deploy/prompts` holds English and
    /// Mandarin ones); every WAV there is loaded at start.
    #[serde(default = "default_prompts_dir")]
    pub prompts_dir: PathBuf,
    /// Where call recordings go, as `<dir>/<yyyy-mm-dd>/<call id>.wav` (UTC date); default
    /// `<data dir>/recordings`. A relative path is relative to the config file.
    #[serde(default)]
    pub recordings_dir: Option<PathBuf>,
    /// Mean interval of the RTCP reports sent on each leg.
    #[serde(default = "default_rtcp_interval_ms")]
    pub rtcp_interval_ms: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            workers: default_media_workers(),
            bind_ip: default_media_ip(),
            rtp_port_min: default_rtp_port_min(),
            rtp_port_max: default_rtp_port_max(),
            rtp_timeout_secs: default_rtp_timeout_secs(),
            music_on_hold: default_music(),
            goodbye_prompt: default_goodbye(),
            prompts_dir: default_prompts_dir(),
            recordings_dir: None,
            rtcp_interval_ms: default_rtcp_interval_ms(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrarConfig {
    #[serde(default = "default_realm")]
    pub realm: String,
    #[serde(default = "default_min_expires")]
    pub min_expires: u32,
    #[serde(default = "default_max_expires")]
    pub max_expires: u32,
    #[serde(default = "default_expires")]
    pub default_expires: u32,
    /// Seconds a nonce stays valid; an older one gets `stale=true`.
    #[serde(default = "default_nonce_ttl")]
    pub nonce_ttl_secs: u64,
    /// Failed authentications from one source address within `failure_window_secs` before
    /// further requests from it are refused (403) until the window passes.
    #[serde(default = "default_failure_limit")]
    pub failure_limit: u32,
    #[serde(default = "default_failure_window")]
    pub failure_window_secs: u64,
    /// Digest algorithms offered in 401 challenges, in order ("MD5", "SHA-256"). MD5 alone by
    /// default: some phones give up on a second challenge they cannot answer (Debian's
    /// baresip 1.0 fails to register when a SHA-256 one follows), and many know only MD5.
    /// A fleet of RFC 8760 phones can list "SHA-256" (first, or alone).
    #[serde(default = "default_digest_algorithms")]
    pub digest_algorithms: Vec<String>,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        Self {
            realm: default_realm(),
            min_expires: default_min_expires(),
            max_expires: default_max_expires(),
            default_expires: default_expires(),
            nonce_ttl_secs: default_nonce_ttl(),
            failure_limit: default_failure_limit(),
            failure_window_secs: default_failure_window(),
            digest_algorithms: default_digest_algorithms(),
        }
    }
}

/// Where a caller goes after waiting `max_wait_secs`, or on joining when an exit applies.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "action")]
pub enum Overflow {
    /// Re-queue in another queue, keeping the caller's priority and first-queued time.
    Queue { queue: String },
    /// Into an IVR flow (a message, a menu of other options).
    Flow { flow: String },
    /// Play the goodbye prompt and hang up.
    Goodbye,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    pub name: String,
    /// How the queue picks among the eligible idle agents (see `switchyard_routing`).
    #[serde(default)]
    pub strategy: Strategy,
    /// Skills a caller needs, widening with the wait; none: anyone may take the calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routing: Vec<RoutingStep>,
    /// Split of the offers between agent pools by weight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<PoolWeight>,
    /// Seconds an offered agent may ring before the call goes to the next agent.
    #[serde(default = "default_offer_timeout")]
    pub offer_timeout_secs: u64,
    /// Consecutive unanswered offers after which an agent goes NotReady("no-answer").
    #[serde(default = "default_max_misses")]
    pub max_missed_offers: u32,
    /// Longest a caller waits before `overflow` applies.
    #[serde(default = "default_max_wait")]
    pub max_wait_secs: u64,
    #[serde(default = "default_overflow")]
    pub overflow: Overflow,
    /// After-call work time before the agent is offered calls again.
    #[serde(default = "default_wrap_up")]
    pub wrap_up_secs: u64,
    /// Record calls answered from this queue (see `media.recordings_dir`).
    #[serde(default = "default_true")]
    pub record: bool,
    /// Service level threshold: answered within this many seconds counts as in service level.
    #[serde(default = "default_service_level")]
    pub service_level_secs: u64,
    /// When a joining caller goes to `overflow` at once rather than waiting.
    #[serde(default, skip_serializing_if = "Exits::is_empty")]
    pub exits: Exits,
    /// Waiting callers may ask to be called back (see [`CallbackPolicy`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<CallbackPolicy>,
    /// Tell waiting callers their position and estimated wait this often (at least 15 s);
    /// never when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce_every_secs: Option<u64>,
    /// A flow the caller enters when the agent hangs up first: a satisfaction survey, whose
    /// `survey` variable (collected by the flow) is stored on the call record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub survey: Option<String>,
}

impl QueueConfig {
    /// The queue's routing, as the routing crate decides with it.
    pub fn routing(&self) -> QueueRouting {
        QueueRouting {
            name: self.name.clone(),
            strategy: self.strategy,
            routing: self.routing.clone(),
            pools: self.pools.clone(),
        }
    }
}

/// Conditions under which a caller joining the queue is sent to its overflow at once.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    Deserialize,
    Serialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct Exits {
    /// No agent of the queue is logged in (join-empty).
    #[serde(default)]
    pub no_agents: bool,
    /// This many callers are already waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_waiting: Option<u32>,
    /// The estimated wait of a caller joining now is above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_estimated_wait_secs: Option<u64>,
}

impl Exits {
    fn is_empty(&self) -> bool {
        *self == Exits::default()
    }
}

/// A dialled number and where its calls go: straight to a queue, or into an IVR flow.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DidConfig {
    /// The Request-URI user that selects this route.
    pub number: String,
    /// Exactly one of `queue` and `flow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    /// Higher is served first; FIFO within one priority. A flow's `set` step may change it.
    #[serde(default)]
    pub priority: u8,
    /// Priorities for callers on number lists (`[[number_list]]`), e.g. `{ vip = 10 }`: a
    /// caller on several lists gets the highest, and never less than `priority`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub priority_for: BTreeMap<String, u8>,
}

/// Where a DID's calls go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DidTarget<'a> {
    Queue(&'a str),
    Flow(&'a str),
}

impl DidConfig {
    /// The priority of a call from `caller`, with the number lists of `flows`.
    pub fn priority_of(&self, caller: &str, flows: &FlowSet) -> u8 {
        self.priority_for
            .iter()
            .filter(|(list, _)| flows.number_list(list).is_some_and(|l| l.contains(caller)))
            .map(|(_, priority)| *priority)
            .fold(self.priority, u8::max)
    }

    /// `None` for a DID naming both or neither (rejected by [`Config::validate`]).
    pub fn target(&self) -> Option<DidTarget<'_>> {
        match (&self.queue, &self.flow) {
            (Some(queue), None) => Some(DidTarget::Queue(queue)),
            (None, Some(flow)) => Some(DidTarget::Flow(flow)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentGroupConfig {
    /// A single extension (`"2001"`) or an inclusive numeric range (`"2001-2100"`).
    pub extensions: String,
    /// Digest password; `{ext}` is replaced by the extension (`"pw{ext}"` gives `pw2001`).
    pub password: String,
    /// Queues these agents serve.
    pub queues: Vec<String>,
    /// Log the agent in as Available as soon as a phone registers (used by load tests).
    #[serde(default)]
    pub available_on_register: bool,
    /// Skills by name with levels 1-5 (`{ billing = 5, french = 2 }`), for skills routing.
    #[serde(default)]
    pub skills: BTreeMap<String, u8>,
    /// The pool the agents belong to (in-house, a partner), for a queue's `pools`.
    #[serde(default)]
    pub pool: String,
    #[serde(default)]
    pub site: String,
    #[serde(default)]
    pub team: Option<String>,
}

/// One agent, expanded from an [`AgentGroupConfig`].
///
/// Also the replicated `agent/<ext>` document: the routing fields default, so documents
/// written before them still read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSpec {
    pub extension: String,
    pub password: String,
    pub queues: Vec<String>,
    pub available_on_register: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub skills: BTreeMap<String, u8>,
    #[serde(default)]
    pub pool: String,
    #[serde(default)]
    pub site: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
}

impl AgentSpec {
    /// Who the agent is to routing.
    pub fn profile(&self) -> AgentProfile {
        AgentProfile {
            id: self.extension.clone(),
            skills: self
                .skills
                .iter()
                .map(|(name, &level)| Skill::new(name.as_str(), level))
                .collect(),
            pool: self.pool.clone(),
            site: self.site.clone(),
            team: self.team.clone(),
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        // Media files are named relative to the config file, so an example directory works from
        // any working directory.
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let cluster_certs = config.cluster.as_mut().map(|c| &mut c.certs);
        for file in [
            Some(&mut config.media.music_on_hold),
            Some(&mut config.media.goodbye_prompt),
            Some(&mut config.media.prompts_dir),
            config.media.recordings_dir.as_mut(),
            cluster_certs,
        ]
        .into_iter()
        .flatten()
        {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: references between sections and value ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if self.media.workers == 0 {
            return invalid("media.workers must be at least 1".into());
        }
        if self.media.rtcp_interval_ms < 100 {
            return invalid("media.rtcp_interval_ms must be at least 100".into());
        }
        if self.media.rtp_port_min >= self.media.rtp_port_max {
            return invalid(format!(
                "media.rtp_port_min ({}) must be below media.rtp_port_max ({})",
                self.media.rtp_port_min, self.media.rtp_port_max
            ));
        }
        let r = &self.registrar;
        if r.min_expires > r.max_expires
            || r.default_expires < r.min_expires
            || r.default_expires > r.max_expires
        {
            return invalid("registrar: need min_expires <= default_expires <= max_expires".into());
        }
        if r.digest_algorithms.is_empty() {
            return invalid("registrar.digest_algorithms must name at least one algorithm".into());
        }
        for name in &r.digest_algorithms {
            if Algorithm::from_name(name).is_none() {
                return invalid(format!(
                    "registrar.digest_algorithms: unknown algorithm {name:?} (MD5 or SHA-256)"
                ));
            }
        }
        let mut queue_names = HashSet::new();
        for q in &self.queues {
            if !queue_names.insert(q.name.as_str()) {
                return invalid(format!("queue {:?} is defined twice", q.name));
            }
            if q.offer_timeout_secs == 0 {
                return invalid(format!(
                    "queue {:?}: offer_timeout_secs must be > 0",
                    q.name
                ));
            }
            q.routing()
                .validate()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        for q in &self.queues {
            if q.announce_every_secs.is_some_and(|secs| secs < 15) {
                return invalid(format!(
                    "queue {:?}: announce_every_secs must be at least 15",
                    q.name
                ));
            }
            if let Some(callback) = &q.callback {
                if !"0123456789*#".contains(callback.key) {
                    return invalid(format!(
                        "queue {:?}: callback.key {:?} is not a phone key",
                        q.name, callback.key
                    ));
                }
                if !self.trunks.iter().any(|t| t.name == callback.trunk) {
                    return invalid(format!(
                        "queue {:?}: callback.trunk names unknown trunk {:?}",
                        q.name, callback.trunk
                    ));
                }
                if callback.attempts == 0 || callback.ring_secs == 0 {
                    return invalid(format!(
                        "queue {:?}: callback.attempts and callback.ring_secs must be > 0",
                        q.name
                    ));
                }
            }
            if let Some(flow) = &q.survey
                && !self.flows.iter().any(|f| &f.name == flow)
            {
                return invalid(format!(
                    "queue {:?}: survey names unknown flow {flow:?}",
                    q.name
                ));
            }
            if let Overflow::Queue { queue } = &q.overflow
                && !queue_names.contains(queue.as_str())
            {
                return invalid(format!(
                    "queue {:?} overflows to unknown queue {queue:?}",
                    q.name
                ));
            }
            if let Overflow::Flow { flow } = &q.overflow
                && !self.flows.iter().any(|f| &f.name == flow)
            {
                return invalid(format!(
                    "queue {:?} overflows to unknown flow {flow:?}",
                    q.name
                ));
            }
        }
        let mut numbers = HashSet::new();
        for d in &self.dids {
            if !numbers.insert(d.number.as_str()) {
                return invalid(format!("DID {:?} is defined twice", d.number));
            }
            for list in d.priority_for.keys() {
                if !self.number_lists.iter().any(|l| &l.name == list) {
                    return invalid(format!(
                        "DID {:?}: priority_for names unknown number list {list:?}",
                        d.number
                    ));
                }
            }
            match d.target() {
                None => {
                    return invalid(format!(
                        "DID {:?} must name exactly one of queue and flow",
                        d.number
                    ));
                }
                Some(DidTarget::Queue(queue)) if !queue_names.contains(queue) => {
                    return invalid(format!(
                        "DID {:?} routes to unknown queue {queue:?}",
                        d.number
                    ));
                }
                Some(DidTarget::Flow(flow)) if !self.flows.iter().any(|f| f.name == flow) => {
                    return invalid(format!(
                        "DID {:?} routes to unknown flow {flow:?}",
                        d.number
                    ));
                }
                Some(_) => {}
            }
        }
        if let Some(cluster) = &self.cluster {
            if cluster.node_id == 0 {
                return invalid("cluster.node_id must be non-zero".into());
            }
            if cluster.failure_timeout_ms < ClusterConfig::MIN_FAILURE_TIMEOUT_MS {
                return invalid(format!(
                    "cluster.failure_timeout_ms is {} but must be at least {}: a shorter timeout \
                     could declare a member failed while it may still act for its actors \
                     (its lease lasts 200 ms)",
                    cluster.failure_timeout_ms,
                    ClusterConfig::MIN_FAILURE_TIMEOUT_MS
                ));
            }
            let mut ids = HashSet::new();
            for m in &cluster.bootstrap {
                if m.id == 0 || !ids.insert(m.id) {
                    return invalid(format!(
                        "cluster.bootstrap: member ids must be distinct and non-zero (id {})",
                        m.id
                    ));
                }
            }
        }
        let mut extensions = HashSet::new();
        for agent in self.agents()? {
            for q in &agent.queues {
                if !queue_names.contains(q.as_str()) {
                    return invalid(format!(
                        "agent {} is a member of unknown queue {q:?}",
                        agent.extension
                    ));
                }
            }
            if !extensions.insert(agent.extension.clone()) {
                return invalid(format!("agent {} is defined twice", agent.extension));
            }
            agent
                .profile()
                .validate()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        Ok(())
    }

    /// Every agent, with ranges expanded.
    pub fn agents(&self) -> Result<Vec<AgentSpec>, ConfigError> {
        let mut agents = Vec::new();
        for group in &self.agent_groups {
            for extension in expand_extensions(&group.extensions)? {
                agents.push(AgentSpec {
                    password: group.password.replace("{ext}", &extension),
                    extension,
                    queues: group.queues.clone(),
                    available_on_register: group.available_on_register,
                    skills: group.skills.clone(),
                    pool: group.pool.clone(),
                    site: group.site.clone(),
                    team: group.team.clone(),
                });
            }
        }
        Ok(agents)
    }

    /// The flows, schedules and number lists of the file, as one set.
    pub fn flow_set(&self) -> FlowSet {
        FlowSet {
            flows: self.flows.clone(),
            schedules: self.schedules.clone(),
            number_lists: self.number_lists.clone(),
        }
    }

    pub fn trunk(&self, name: &str) -> Option<&TrunkConfig> {
        self.trunks.iter().find(|t| t.name == name)
    }

    pub fn queue(&self, name: &str) -> Option<&QueueConfig> {
        self.queues.iter().find(|q| q.name == name)
    }
}

/// Expands `"2001"` or `"2001-2100"`; keeps leading zeros and width (`"0001-0003"`).
fn expand_extensions(spec: &str) -> Result<Vec<String>, ConfigError> {
    let bad = || ConfigError::Invalid(format!("agents.extensions {spec:?}: expected N or N-M"));
    let Some((start, end)) = spec.split_once('-') else {
        if spec.is_empty() || !spec.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        return Ok(vec![spec.to_owned()]);
    };
    let (first, last): (u64, u64) = (
        start.trim().parse().map_err(|_| bad())?,
        end.trim().parse().map_err(|_| bad())?,
    );
    if first > last || last - first >= 100_000 {
        return Err(bad());
    }
    let width = start.trim().len();
    Ok((first..=last).map(|n| format!("{n:0width$}")).collect())
}

fn default_node_id() -> String {
    "node1".into()
}
fn default_site() -> String {
    "default".into()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_failure_timeout_ms() -> u64 {
    1000
}
fn default_t1_ms() -> u64 {
    500
}
fn default_user_agent() -> String {
    format!("Switchyard/{}", env!("CARGO_PKG_VERSION"))
}
fn default_media_workers() -> usize {
    1
}
fn default_media_ip() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}
fn default_rtp_port_min() -> u16 {
    20000
}
fn default_rtp_port_max() -> u16 {
    29999
}
fn default_rtp_timeout_secs() -> u64 {
    30
}
fn default_rtcp_interval_ms() -> u64 {
    5000
}
fn default_music() -> PathBuf {
    PathBuf::from("../media/music-on-hold.wav")
}
fn default_goodbye() -> PathBuf {
    PathBuf::from("../media/goodbye.wav")
}
fn default_callback_attempts() -> u32 {
    3
}
fn default_callback_retry() -> u64 {
    60
}
fn default_callback_ring() -> u64 {
    30
}
fn default_prompts_dir() -> PathBuf {
    PathBuf::from("../prompts")
}
fn default_realm() -> String {
    "switchyard".into()
}
fn default_min_expires() -> u32 {
    60
}
fn default_max_expires() -> u32 {
    3600
}
fn default_expires() -> u32 {
    3600
}
fn default_nonce_ttl() -> u64 {
    300
}
fn default_failure_limit() -> u32 {
    10
}
fn default_failure_window() -> u64 {
    60
}
fn default_digest_algorithms() -> Vec<String> {
    vec!["MD5".into()]
}
fn default_offer_timeout() -> u64 {
    15
}
fn default_max_misses() -> u32 {
    3
}
fn default_max_wait() -> u64 {
    300
}
fn default_overflow() -> Overflow {
    Overflow::Goodbye
}
fn default_wrap_up() -> u64 {
    5
}
fn default_true() -> bool {
    true
}
fn default_service_level() -> u64 {
    20
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_expand_with_width() {
        assert_eq!(
            expand_extensions("2001-2003").unwrap(),
            ["2001", "2002", "2003"]
        );
        assert_eq!(expand_extensions("0009-0010").unwrap(), ["0009", "0010"]);
        assert_eq!(expand_extensions("7").unwrap(), ["7"]);
        assert!(expand_extensions("20-10").is_err());
        assert!(expand_extensions("abc").is_err());
        assert!(expand_extensions("").is_err());
    }

    fn cluster_config(extra: &str) -> Result<Config, String> {
        let text = format!(
            "[sip]\nlisten = \"127.0.0.1:5060\"\n[http]\nlisten = \"127.0.0.1:8080\"\n\
             [cluster]\nnode_id = 1\nlisten = \"127.0.0.1:7101\"\ncerts = \"certs\"\n{extra}"
        );
        let config: Config = toml::from_str(&text).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn failure_timeout_defaults_to_a_second_and_has_a_floor() {
        let config = cluster_config("").unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.failure_timeout_ms, 1000);
        assert_eq!(cluster.failure_timeout(), std::time::Duration::from_secs(1));
        let config = cluster_config("failure_timeout_ms = 500").unwrap();
        assert_eq!(config.cluster.unwrap().failure_timeout_ms, 500);
        let err = cluster_config("failure_timeout_ms = 499").unwrap_err();
        assert!(
            err.contains("cluster.failure_timeout_ms") && err.contains("at least 500"),
            "{err}"
        );
    }

    fn acd_config(extra: &str) -> Result<Config, String> {
        let text = format!(
            "[sip]\nlisten = \"127.0.0.1:5060\"\n[http]\nlisten = \"127.0.0.1:8080\"\n{extra}"
        );
        let config: Config = toml::from_str(&text).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn queue_routing_and_agent_skills_are_read_and_carried_into_the_profile() {
        let config = acd_config(
            r#"
            [[queue]]
            name = "billing"
            strategy = "skills-best"
            routing = [{ skills = { billing = 4 }, for_secs = 10 }, { skills = { billing = 1 } }]
            pools = [{ pool = "in-house", weight = 70 }, { pool = "partner", weight = 30 }]
            [[queue]]
            name = "sales"
            [[agents]]
            extensions = "2001-2002"
            password = "pw"
            queues = ["billing"]
            skills = { billing = 5, french = 2 }
            pool = "in-house"
            site = "paris"
            team = "b2b"
            "#,
        )
        .unwrap();
        let billing = config.queue("billing").unwrap().routing();
        assert_eq!(billing.strategy, Strategy::SkillsBest);
        assert_eq!(billing.routing.len(), 2);
        assert_eq!(billing.pools[1].weight, 30);
        assert_eq!(
            config.queue("sales").unwrap().strategy,
            Strategy::LongestIdle
        );
        let profile = config.agents().unwrap()[1].profile();
        assert_eq!(profile.id, "2002");
        assert_eq!((profile.level("billing"), profile.level("french")), (5, 2));
        assert_eq!(
            (profile.pool.as_str(), profile.site.as_str()),
            ("in-house", "paris")
        );
        assert_eq!(profile.team.as_deref(), Some("b2b"));
    }

    #[test]
    fn a_bad_routing_config_names_the_queue_or_agent_and_the_field() {
        let queue = |routing: &str| {
            acd_config(&format!("[[queue]]\nname = \"billing\"\n{routing}")).unwrap_err()
        };
        let err = queue("routing = [{ skills = { billing = 6 } }]");
        assert!(
            err.contains("\"billing\"") && err.contains("routing[0].skills.billing"),
            "{err}"
        );
        let err = queue("routing = [{ skills = { billing = 4 }, for_secs = 10 }]");
        assert!(err.contains("routing[0].for_secs"), "{err}");
        let err = queue("pools = [{ pool = \"a\", weight = 0 }]");
        assert!(err.contains("pools[0].weight"), "{err}");
        let err = queue("strategy = \"fastest\"");
        assert!(err.contains("strategy"), "{err}");
        let err = acd_config(
            "[[queue]]\nname = \"q\"\n[[agents]]\nextensions = \"2001\"\npassword = \"pw\"\n\
             queues = [\"q\"]\nskills = { billing = 0 }",
        )
        .unwrap_err();
        assert!(
            err.contains("\"2001\"") && err.contains("skills.billing"),
            "{err}"
        );
    }

    #[test]
    fn documents_written_before_routing_still_read() {
        let queue: QueueConfig =
            serde_json::from_str(r#"{"name":"sales","strategy":"longest-idle"}"#).unwrap();
        assert!(queue.routing.is_empty() && queue.pools.is_empty());
        let agent: AgentSpec = serde_json::from_str(
            r#"{"extension":"2001","password":"pw","queues":["sales"],"available_on_register":false}"#,
        )
        .unwrap();
        assert!(agent.skills.is_empty() && agent.team.is_none());
        let json = serde_json::to_string(&agent).unwrap();
        assert_eq!(serde_json::from_str::<AgentSpec>(&json).unwrap(), agent);
    }

    /// The examples are contracts operators and tests script against: each must load.
    #[test]
    fn every_example_config_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        let mut loaded = 0;
        for entry in std::fs::read_dir(&dir).expect("examples") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                loaded += 1;
            }
        }
        assert!(loaded >= 2, "examples found: {loaded}");
    }
}
