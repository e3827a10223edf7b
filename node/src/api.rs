//! HTTP API: call records, live calls and supervisor monitoring, queue and agent state, agent
//! state changes, metrics, health.
//!
//! Every error is JSON `{"error": "..."}`: 400 for a bad request, 404 for an unknown queue or
//! agent or call, 409 for a state change the agent or call cannot make now, 503 when an actor
//! does not answer
//! within [`RPC_TIMEOUT`], 500 when the CDR store fails.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use switchyard_cluster::Directory;
use tokio::task::JoinSet;

use crate::acd::agent::AgentSnapshot;
use crate::acd::queue::QueueSnapshot;
use crate::acd::{AgentMsg, QueueMsg, RequestedState};
use crate::call::{CallMsg, CallSnapshot, MonitorMode};
use crate::cdr::CallRecord;
use crate::cdr::store::CdrStore;

/// How long a handler waits for an actor to answer.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// Records per `GET /v1/cdrs` page unless `limit` says otherwise, and the largest `limit`.
pub const DEFAULT_CDR_LIMIT: usize = 100;
pub const MAX_CDR_LIMIT: usize = 1000;
/// Longest not-ready reason accepted; it ends up in reports and metrics.
pub const MAX_REASON_LEN: usize = 64;

/// What the handlers need; cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    pub cdrs: CdrStore,
    pub queues: Directory<String, QueueMsg>,
    pub agents: Directory<String, AgentMsg>,
    pub calls: Directory<String, CallMsg>,
    pub metrics: PrometheusHandle,
}

/// Installs the process-wide Prometheus recorder and starts its upkeep task. Call once, from
/// within the Tokio runtime, before spawning anything that records metrics.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|e| anyhow::anyhow!("install_metrics needs a Tokio runtime: {e}"))?;
    let handle = PrometheusBuilder::new().install_recorder()?;
    let upkeep = handle.clone();
    // Without a listener the exporter leaves upkeep (histogram housekeeping) to us.
    runtime.spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_secs(5));
        loop {
            interval.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/cdrs", get(list_cdrs))
        .route("/v1/queues", get(list_queues))
        .route("/v1/queues/{name}", get(get_queue))
        .route("/v1/agents", get(list_agents))
        .route("/v1/agents/{ext}", get(get_agent))
        .route("/v1/agents/{ext}/state", put(set_agent_state))
        .route("/v1/calls", get(list_calls))
        .route("/v1/calls/{id}", get(get_call))
        .route("/v1/calls/{id}/hold", post(hold_call))
        .route("/v1/calls/{id}/resume", post(resume_call))
        .route(
            "/v1/calls/{id}/monitor",
            post(start_monitor).put(set_monitor_mode),
        )
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` completes, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body {
            error: String,
        }
        let body = axum::Json(Body {
            error: self.message,
        });
        (self.status, body).into_response()
    }
}

type ApiResult<T> = Result<axum::Json<T>, ApiError>;

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

#[derive(Debug, Deserialize)]
struct CdrQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

/// A page of records. `next` is the `after` to ask for the following page: the last sequence
/// number returned, or the request's own `after` (0 if none) when the page is empty, so a client
/// can poll with it forever.
#[derive(Serialize)]
struct CdrPage {
    records: Vec<SeqRecord>,
    next: u64,
}

#[derive(Serialize)]
struct SeqRecord {
    seq: u64,
    #[serde(flatten)]
    record: CallRecord,
}

async fn list_cdrs(
    State(state): State<ApiState>,
    query: Result<Query<CdrQuery>, QueryRejection>,
) -> ApiResult<CdrPage> {
    let Query(query) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let limit = query.limit.unwrap_or(DEFAULT_CDR_LIMIT);
    if limit == 0 || limit > MAX_CDR_LIMIT {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and {MAX_CDR_LIMIT}"),
        ));
    }
    let store = state.cdrs.clone();
    let after = query.after;
    let records = tokio::task::spawn_blocking(move || store.list(after, limit))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| {
            tracing::error!(error = %e, "listing CDRs failed");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        })?;
    let next = records.last().map_or(after.unwrap_or(0), |(seq, _)| *seq);
    let records = records
        .into_iter()
        .map(|(seq, record)| SeqRecord { seq, record })
        .collect();
    Ok(axum::Json(CdrPage { records, next }))
}

/// Asks `actor` for its snapshot; `what` names it in errors.
async fn ask<M: ractor::Message, T: Send + 'static>(
    actor: &ActorRef<M>,
    request: impl FnOnce(RpcReplyPort<T>) -> M,
    what: &str,
) -> Result<T, ApiError> {
    match actor.call(request, Some(RPC_TIMEOUT)).await {
        Ok(CallResult::Success(value)) => Ok(value),
        Ok(CallResult::Timeout) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{what} did not answer in time"),
        )),
        Ok(CallResult::SenderError) | Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{what} is not running"),
        )),
    }
}

/// Snapshots of every actor in `dir`, in parallel, sorted by id.
async fn snapshot_all<M, T>(
    dir: &Directory<String, M>,
    request: fn(RpcReplyPort<T>) -> M,
    kind: &'static str,
) -> Result<Vec<T>, ApiError>
where
    M: ractor::Message,
    T: Send + 'static,
{
    let mut tasks = JoinSet::new();
    for id in dir.ids() {
        let Some(actor) = dir.get(&id) else { continue };
        tasks.spawn(async move {
            let result = ask(&actor, request, &format!("{kind} {id}")).await;
            result.map(|snapshot| (id, snapshot))
        });
    }
    let mut all = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        let snapshot = joined
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
        all.push(snapshot);
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(all.into_iter().map(|(_, snapshot)| snapshot).collect())
}

fn not_found(kind: &str, id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no {kind} {id:?}"))
}

async fn list_queues(State(state): State<ApiState>) -> ApiResult<Vec<QueueSnapshot>> {
    snapshot_all(&state.queues, QueueMsg::Snapshot, "queue")
        .await
        .map(axum::Json)
}

async fn get_queue(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult<QueueSnapshot> {
    let queue = state
        .queues
        .get(&name)
        .ok_or_else(|| not_found("queue", &name))?;
    ask(&queue, QueueMsg::Snapshot, &format!("queue {name}"))
        .await
        .map(axum::Json)
}

async fn list_agents(State(state): State<ApiState>) -> ApiResult<Vec<AgentSnapshot>> {
    snapshot_all(&state.agents, AgentMsg::Snapshot, "agent")
        .await
        .map(axum::Json)
}

async fn get_agent(
    State(state): State<ApiState>,
    Path(ext): Path<String>,
) -> ApiResult<AgentSnapshot> {
    let agent = state
        .agents
        .get(&ext)
        .ok_or_else(|| not_found("agent", &ext))?;
    ask(&agent, AgentMsg::Snapshot, &format!("agent {ext}"))
        .await
        .map(axum::Json)
}

/// Parses and validates a `PUT /v1/agents/{ext}/state` body.
fn parse_requested_state(body: &[u8]) -> Result<RequestedState, String> {
    let requested: RequestedState = serde_json::from_slice(body).map_err(|e| {
        format!(
            "invalid body ({e}); expected {{\"state\":\"available\"}}, \
             {{\"state\":\"not-ready\",\"reason\":\"...\"}} or {{\"state\":\"logged-out\"}}"
        )
    })?;
    if let RequestedState::NotReady(reason) = &requested {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err("a not-ready reason must not be empty".into());
        }
        if reason.chars().count() > MAX_REASON_LEN || reason.chars().any(char::is_control) {
            return Err(format!(
                "a not-ready reason must be at most {MAX_REASON_LEN} printable characters"
            ));
        }
        return Ok(RequestedState::NotReady(reason.to_owned()));
    }
    Ok(requested)
}

/// Changes an agent's state and answers with the agent as it is afterwards.
async fn set_agent_state(
    State(state): State<ApiState>,
    Path(ext): Path<String>,
    body: Bytes,
) -> ApiResult<AgentSnapshot> {
    let agent = state
        .agents
        .get(&ext)
        .ok_or_else(|| not_found("agent", &ext))?;
    let requested =
        parse_requested_state(&body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let what = format!("agent {ext}");
    ask(
        &agent,
        |reply| AgentMsg::SetState {
            state: requested,
            reply,
        },
        &what,
    )
    .await?
    .map_err(|e| ApiError::new(StatusCode::CONFLICT, e))?;
    ask(&agent, AgentMsg::Snapshot, &what).await.map(axum::Json)
}

async fn list_calls(State(state): State<ApiState>) -> ApiResult<Vec<CallSnapshot>> {
    let mut calls = Vec::new();
    for id in state.calls.ids() {
        let Some(call) = state.calls.get(&id) else {
            continue;
        };
        // A call that ends while we ask is simply not listed.
        if let Ok(snapshot) = ask(&call, CallMsg::Snapshot, &format!("call {id}")).await {
            calls.push(snapshot);
        }
    }
    calls.sort_by_key(|c| c.arrived_ms);
    Ok(axum::Json(calls))
}

async fn get_call(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<CallSnapshot> {
    let call = state.calls.get(&id).ok_or_else(|| not_found("call", &id))?;
    ask(&call, CallMsg::Snapshot, &format!("call {id}"))
        .await
        .map(axum::Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MonitorRequest {
    supervisor: String,
    mode: MonitorMode,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModeRequest {
    mode: MonitorMode,
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8], expected: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid body ({e}); expected {expected}"),
        )
    })
}

/// `POST /v1/calls/{id}/monitor`: rings the supervisor's extension; it joins the call in the
/// given mode when it answers, and its BYE ends the monitoring only.
async fn start_monitor(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, axum::Json<CallSnapshot>), ApiError> {
    let request: MonitorRequest = parse_body(
        &body,
        r#"{"supervisor":"<extension>","mode":"listen"|"whisper"|"barge"}"#,
    )?;
    let call = state.calls.get(&id).ok_or_else(|| not_found("call", &id))?;
    let snapshot = ask(
        &call,
        |reply| CallMsg::Monitor {
            supervisor: request.supervisor,
            mode: request.mode,
            reply,
        },
        &format!("call {id}"),
    )
    .await?
    .map_err(|e| ApiError::new(StatusCode::CONFLICT, e))?;
    Ok((StatusCode::ACCEPTED, axum::Json(snapshot)))
}

/// `PUT /v1/calls/{id}/monitor`: changes the monitoring supervisor's mode.
async fn set_monitor_mode(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<CallSnapshot> {
    let request: ModeRequest = parse_body(&body, r#"{"mode":"listen"|"whisper"|"barge"}"#)?;
    let call = state.calls.get(&id).ok_or_else(|| not_found("call", &id))?;
    ask(
        &call,
        |reply| CallMsg::SetMonitorMode {
            mode: request.mode,
            reply,
        },
        &format!("call {id}"),
    )
    .await?
    .map(axum::Json)
    .map_err(|e| ApiError::new(StatusCode::CONFLICT, e))
}

/// `POST /v1/calls/{id}/hold`: the customer hears music on hold, the agent silence.
async fn hold_call(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<CallSnapshot> {
    change_hold(&state, &id, true).await
}

/// `POST /v1/calls/{id}/resume`: takes the call off hold.
async fn resume_call(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<CallSnapshot> {
    change_hold(&state, &id, false).await
}

async fn change_hold(state: &ApiState, id: &str, hold: bool) -> ApiResult<CallSnapshot> {
    let call = state
        .calls
        .get(&id.to_owned())
        .ok_or_else(|| not_found("call", id))?;
    ask(
        &call,
        |reply| CallMsg::Hold { hold, reply },
        &format!("call {id}"),
    )
    .await?
    .map(axum::Json)
    .map_err(|e| ApiError::new(StatusCode::CONFLICT, e))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::acd::agent::{self, AgentArgs, spawn_agent};
    use crate::acd::queue::{QueueArgs, spawn_queue};
    use crate::cdr::{Disposition, HangupBy};
    use crate::config::Config;
    use crate::remote::{Fence, Postman};

    /// A minimal HTTP/1.1 client: one request per connection.
    async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, body.to_owned())
    }

    fn json(body: &str) -> serde_json::Value {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    fn record(id: &str) -> CallRecord {
        CallRecord {
            id: id.into(),
            node: "node1".into(),
            caller_call_id: format!("sip-{id}"),
            agent_call_id: None,
            caller: "alice".into(),
            did: "100".into(),
            queue: Some("sales".into()),
            agent: None,
            arrived_ms: 1,
            queued_ms: Some(2),
            offers: vec![],
            answered_ms: None,
            ended_ms: 3,
            wait_ms: 1,
            talk_ms: 0,
            disposition: Disposition::Abandoned,
            hangup_by: HangupBy::Caller,
            recording: None,
            caller_rtp: None,
            agent_rtp: None,
            dtmf: String::new(),
            monitors: Vec::new(),
            hold_ms: 0,
            flow: None,
            menu: String::new(),
            priority: 0,
            survey_score: None,
            callback_of: None,
            transferred_to: None,
            pool: None,
            skills: Default::default(),
            failover: None,
        }
    }

    #[tokio::test]
    async fn endpoints_over_a_real_socket() {
        let dir = tempfile::tempdir().unwrap();
        let (cdrs, writer) = CdrStore::open(dir.path()).unwrap();
        for id in ["a", "b", "c"] {
            writer.submit(record(id)).unwrap();
        }
        writer.flush().await.unwrap();

        let config: Config = toml::from_str(
            r#"
            sip = { listen = "127.0.0.1:5060" }
            http = { listen = "127.0.0.1:8080" }
            [[queue]]
            name = "sales"
            wrap_up_secs = 0
            [[agents]]
            extensions = "2001"
            password = "pw"
            queues = ["sales"]
            "#,
        )
        .unwrap();
        let queues = Directory::default();
        let agents = Directory::default();
        let queue = spawn_queue(QueueArgs {
            config: config.queues[0].clone(),
            agents: agents.clone(),
            postman: Postman::new(0, Directory::default(), None),
            fence: Fence::open(),
            board: crate::acd::board::QueueBoard::default(),
        })
        .await
        .unwrap();
        queues.insert("sales".into(), queue);
        let spec = config.agents().unwrap().remove(0);
        let agent = spawn_agent(AgentArgs {
            policies: agent::policies(&spec, |name| config.queue(name).cloned()),
            spec,
            queues: queues.clone(),
            fence: Fence::open(),
            restored: None,
            failover: None,
        })
        .await
        .unwrap();
        agents.insert("2001".into(), agent.clone());

        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!("switchyard_test_total").increment(7);
        });
        let state = ApiState {
            cdrs,
            queues,
            agents,
            calls: Directory::default(),
            metrics: handle,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, router(state), async {
            let _ = stopped.await;
        }));

        assert_eq!(
            http(addr, "GET", "/healthz", "").await,
            (200, "ok\n".into())
        );
        let (status, body) = http(addr, "GET", "/metrics", "").await;
        assert_eq!(status, 200);
        assert!(body.contains("switchyard_test_total 7"), "{body}");

        // CDR paging.
        let (status, body) = http(addr, "GET", "/v1/cdrs?limit=2", "").await;
        assert_eq!(status, 200);
        let page = json(&body);
        assert_eq!(page["next"], 2);
        assert_eq!(page["records"][0]["seq"], 1);
        assert_eq!(page["records"][0]["id"], "a");
        assert_eq!(page["records"][1]["disposition"], "abandoned");
        let page = json(&http(addr, "GET", "/v1/cdrs?after=2", "").await.1);
        assert_eq!(page["records"].as_array().unwrap().len(), 1);
        assert_eq!(page["next"], 3);
        let page = json(&http(addr, "GET", "/v1/cdrs?after=3", "").await.1);
        assert_eq!(
            (page["records"].as_array().unwrap().len(), &page["next"]),
            (0, &3.into())
        );
        for bad in [
            "/v1/cdrs?limit=0",
            "/v1/cdrs?limit=5000",
            "/v1/cdrs?after=x",
        ] {
            let (status, body) = http(addr, "GET", bad, "").await;
            assert_eq!(status, 400, "{bad}");
            assert!(json(&body)["error"].is_string());
        }

        // Queues.
        let (status, body) = http(addr, "GET", "/v1/queues", "").await;
        assert_eq!(status, 200);
        assert_eq!(json(&body)[0]["name"], "sales");
        let (status, body) = http(addr, "GET", "/v1/queues/sales", "").await;
        assert_eq!((status, json(&body)["waiting"].clone()), (200, 0.into()));
        assert_eq!(http(addr, "GET", "/v1/queues/nope", "").await.0, 404);

        // Agents and state changes.
        let (status, body) = http(addr, "GET", "/v1/agents", "").await;
        assert_eq!(status, 200);
        assert_eq!(json(&body)[0]["status"], "logged-out");
        assert_eq!(http(addr, "GET", "/v1/agents/9999", "").await.0, 404);
        let put = |body: &'static str| http(addr, "PUT", "/v1/agents/2001/state", body);
        // No phone registered yet.
        let (status, body) = put(r#"{"state":"available"}"#).await;
        assert_eq!(status, 409, "{body}");
        agent
            .send_message(AgentMsg::Contacts {
                node: 0,
                contacts: vec!["sip:2001@127.0.0.1:5999".into()],
            })
            .unwrap();
        let (status, body) = put(r#"{"state":"available"}"#).await;
        assert_eq!(
            (status, json(&body)["status"].clone()),
            (200, "available".into())
        );
        let (status, body) = put(r#"{"state":"not-ready","reason":"break"}"#).await;
        assert_eq!(status, 200);
        assert_eq!(json(&body)["reason"], "break");
        for bad in [
            r#"{"state":"busy"}"#,
            r#"{"state":"not-ready"}"#,
            r#"{"state":"not-ready","reason":" "}"#,
            "not json",
        ] {
            let (status, body) = put(bad).await;
            assert_eq!(status, 400, "{bad}: {body}");
            assert!(json(&body)["error"].is_string());
        }
        assert_eq!(
            http(
                addr,
                "PUT",
                "/v1/agents/9999/state",
                r#"{"state":"logged-out"}"#
            )
            .await
            .0,
            404
        );
        let (status, body) = http(addr, "GET", "/v1/agents/2001", "").await;
        assert_eq!(
            (status, json(&body)["status"].clone()),
            (200, "not-ready".into())
        );

        // A stopped actor is a 503, not a hang or a panic.
        agent.stop(None);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(http(addr, "GET", "/v1/agents/2001", "").await.0, 503);

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
        writer.shutdown().await.unwrap();
    }

    #[test]
    fn requested_state_parsing() {
        assert_eq!(
            parse_requested_state(br#"{"state":"logged-out"}"#),
            Ok(RequestedState::LoggedOut)
        );
        assert_eq!(
            parse_requested_state(br#"{"state":"not-ready","reason":" lunch "}"#),
            Ok(RequestedState::NotReady("lunch".into()))
        );
        let long = format!(r#"{{"state":"not-ready","reason":"{}"}}"#, "x".repeat(65));
        assert!(parse_requested_state(long.as_bytes()).is_err());
        let err = parse_requested_state(br#"{"state":"away"}"#).unwrap_err();
        assert!(err.contains("not-ready"), "{err}");
    }
}
