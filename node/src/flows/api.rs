//! `/v1/flows` and `/v1/schedules`: the flow set read and changed live.
//!
//! A change is validated whole before it is stored (the 400 lists every problem with its flow,
//! step and field); calls take it from their next step on. Changes replace the whole set, so
//! two operators writing at once: the last write wins.

use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use switchyard_cluster::Directory;
use switchyard_cluster::state::Command;
use switchyard_flows::{FlowSet, Override};

use super::{FLOWS_DOCUMENT, FlowStore};
use crate::acd::QueueMsg;
use crate::cluster::{ClusterRuntime, Operation, OperationError};

#[derive(Clone)]
pub struct FlowsApi {
    pub store: Arc<FlowStore>,
    pub queues: Directory<String, QueueMsg>,
    /// Where a change is stored on a clustered node.
    pub cluster: Option<ClusterRuntime>,
}

pub fn routes(state: FlowsApi) -> Router {
    Router::new()
        .route("/v1/flows", get(get_flows).put(put_flows))
        .route("/v1/schedules/{name}/override", put(put_override))
        .with_state(state)
}

fn error(status: StatusCode, message: impl ToString) -> Response {
    let body = serde_json::json!({ "error": message.to_string() });
    (status, Json(body)).into_response()
}

/// `GET /v1/flows`: the flow set calls use now.
async fn get_flows(State(api): State<FlowsApi>) -> Json<FlowSet> {
    Json((*api.store.current()).clone())
}

/// `PUT /v1/flows` with a whole flow set (the JSON form of the `[[flow]]`, `[[schedule]]` and
/// `[[number_list]]` tables).
async fn put_flows(State(api): State<FlowsApi>, body: axum::body::Bytes) -> Response {
    let set: FlowSet = match serde_json::from_slice(&body) {
        Ok(set) => set,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid flow set: {e}")),
    };
    match store(&api, set).await {
        Ok(()) => Json((*api.store.current()).clone()).into_response(),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideBody {
    state: Override,
}

/// `PUT /v1/schedules/{name}/override` with `{"state": "open" | "closed" | "auto"}`.
async fn put_override(
    State(api): State<FlowsApi>,
    UrlPath(name): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let body: OverrideBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"state\": \"open\" | \"closed\" | \"auto\"}}: {e}"),
            );
        }
    };
    let mut set = (*api.store.current()).clone();
    let Some(schedule) = set.schedules.iter_mut().find(|s| s.name == name) else {
        return error(StatusCode::NOT_FOUND, format!("no schedule {name:?}"));
    };
    schedule.manual = body.state;
    let schedule = serde_json::json!({ "schedule": name, "override": body.state });
    match store(&api, set).await {
        Ok(()) => Json(schedule).into_response(),
        Err(response) => response,
    }
}

/// Validates `set` and stores it where this node keeps the flow set.
async fn store(api: &FlowsApi, set: FlowSet) -> Result<(), Response> {
    let queues = api.queues.ids();
    api.store
        .check(&set, queues.iter().map(String::as_str))
        .map_err(|problems| error(StatusCode::BAD_REQUEST, problems))?;
    match &api.cluster {
        Some(runtime) => {
            let value = serde_json::to_vec(&set)
                .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
            let command = Command::PutConfig {
                key: FLOWS_DOCUMENT.to_owned(),
                value,
                preferred_site: None,
            };
            runtime
                .apply(Operation::Propose(command))
                .await
                .map_err(|e| {
                    let status = match e {
                        OperationError::NoLeader | OperationError::Refused(_) => {
                            StatusCode::SERVICE_UNAVAILABLE
                        }
                        _ => StatusCode::INTERNAL_SERVER_ERROR,
                    };
                    error(status, e)
                })?;
            // Committed: this node need not wait for its follower task to see it.
            api.store.replace(set);
            Ok(())
        }
        None => api
            .store
            .save(set)
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))),
    }
}
