//! The operator's actions on sagas: cancel, retry the failed compensations, retry a paused step
//! now — on one saga (`POST /sagas/{id}/cancel`, …) or on every saga a filter selects
//! (`POST /sagas/actions`, with a dry run that changes nothing). Each action is a transition of
//! the saga's state machine, recorded in its history with who asked and why; one that does not
//! fit the saga's state is refused (409) and changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use saga_core::engine::{Entry, Execution, OperatorAction, Recorded, Target};
use saga_core::ids::SagaId;
use serde::Deserialize;
use serde_json::{Value, json};

use super::queries::{self, SagaQuery};
use super::{Api, ApiError};
use crate::saga::TransitionError;
use crate::saga::record;

/// Who acted, as the history records it. The admin token has no name of its own: every action
/// taken with it (or on a host without one) is the admin's.
pub const OPERATOR: &str = "admin";

/// The most sagas one bulk action goes through.
const BULK_LIMIT: usize = 10_000;

/// What happened to a saga, or would.
fn refusal(id: &str, action: &OperatorAction, error: TransitionError) -> ApiError {
    let verb = action.name();
    match error {
        TransitionError::Gone => {
            ApiError::new(StatusCode::NOT_FOUND, format!("no saga execution {id}"))
        }
        TransitionError::Rejected(rejected) => ApiError::new(
            StatusCode::CONFLICT,
            format!("cannot {verb} saga {id}: {rejected}; nothing changed"),
        ),
        TransitionError::Unloaded(problem) => ApiError::new(
            StatusCode::CONFLICT,
            format!("cannot {verb} saga {id}: {problem}; deploy that version again first"),
        ),
        other => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot {verb} saga {id}: {other}; try again"),
        ),
    }
}

/// Applies `action` to saga `id`, on behalf of `by`.
pub async fn perform(
    api: &Api,
    id: &str,
    action: OperatorAction,
    by: &str,
) -> Result<Execution, ApiError> {
    let saga: SagaId = id
        .parse()
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, format!("no saga execution {id}")))?;
    api.orchestrator
        .act(saga, action.clone(), by.to_string())
        .await
        .map_err(|error| refusal(id, &action, error))
}

/// The body of a single action: an optional reason.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Reason {
    #[serde(default)]
    reason: String,
}

async fn act(api: Arc<Api>, id: String, name: &str, body: Bytes) -> Response {
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        Reason::default()
    } else {
        match serde_json::from_slice::<Reason>(&body) {
            Ok(reason) => reason,
            Err(e) => {
                return ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("the body must be empty or JSON {{\"reason\": \"why\"}}: {e}"),
                )
                .into_response();
            }
        }
    };
    let action = OperatorAction::parse(name, reason.reason).expect("a known action name");
    match perform(&api, &id, action, OPERATOR).await {
        Ok(exec) => Json(record::to_json(&exec)).into_response(),
        Err(refused) => refused.into_response(),
    }
}

/// `POST /sagas/{id}/cancel {"reason"}`: fails a running or paused saga; what its steps did is
/// compensated, and it ends errored ("cancelled by the operator: REASON").
pub async fn cancel(State(api): State<Arc<Api>>, Path(id): Path<String>, body: Bytes) -> Response {
    act(api, id, "cancel", body).await
}

/// `POST /sagas/{id}/retry-compensations {"reason"}`: runs a compensation-failed saga's failed
/// compensations again.
pub async fn retry_compensations(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    act(api, id, "retry-compensations", body).await
}

/// `POST /sagas/{id}/retry-now {"reason"}`: sends what a paused step (or compensation) waits to
/// send again, without waiting for its back-off.
pub async fn retry_now(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    act(api, id, "retry-now", body).await
}

/// The body of `POST /sagas/actions`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Bulk {
    action: String,
    #[serde(default)]
    filter: serde_json::Map<String, Value>,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    dry_run: bool,
}

/// A JSON filter as the query parameters it stands for.
fn filter_params(
    filter: &serde_json::Map<String, Value>,
) -> Result<HashMap<String, String>, ApiError> {
    filter
        .iter()
        .map(|(key, value)| match value {
            Value::String(text) => Ok((key.clone(), text.clone())),
            Value::Number(number) => Ok((key.clone(), number.to_string())),
            _ => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("filter.{key} must be a string or a number"),
            )),
        })
        .collect()
}

/// `POST /sagas/actions {"action", "filter", "reason", "dry_run"}`: the action on every saga the
/// filter selects (at most 10,000). Answers how many it was applied to (or would be) and, for
/// each saga, what happened (or would happen).
pub async fn bulk(State(api): State<Arc<Api>>, body: Bytes) -> Response {
    let bulk: Bulk = match serde_json::from_slice(&body) {
        Ok(bulk) => bulk,
        Err(e) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body must be JSON {{\"action\", \"filter\": {{…}}, \"reason\", \"dry_run\"}}: {e}"
                ),
            )
            .into_response();
        }
    };
    let Some(action) = OperatorAction::parse(&bulk.action, bulk.reason.clone()) else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "unknown action {:?}; use one of {}",
                bulk.action,
                OperatorAction::NAMES.join(", ")
            ),
        )
        .into_response();
    };
    let filter = match filter_params(&bulk.filter).and_then(|p| queries::parse_filter(&p, &[])) {
        Ok(filter) => filter,
        Err(refused) => return refused.into_response(),
    };
    let mut query = SagaQuery {
        filter,
        after: None,
        limit: 500,
    };
    let mut results = Vec::new();
    let mut count = 0;
    loop {
        let page = match queries::page(&api, &query).await {
            Ok(page) => page,
            Err(failure) => return failure.into_response(),
        };
        for saga in &page.sagas {
            let (result, applies) = one(&api, saga, &action, bulk.dry_run).await;
            count += usize::from(applies);
            results.push(result);
        }
        match page.more_after {
            Some(last) if results.len() < BULK_LIMIT => query.after = Some(last),
            _ => break,
        }
    }
    Json(json!({
        "action": action.name(),
        "dry_run": bulk.dry_run,
        "matched": results.len(),
        "count": count,
        "sagas": results,
    }))
    .into_response()
}

/// The action (or its dry run) on one saga of a bulk action: what it says, and whether it
/// applies.
async fn one(api: &Api, saga: &Value, action: &OperatorAction, dry_run: bool) -> (Value, bool) {
    let id = saga["id"].as_str().unwrap_or_default();
    let mut result = json!({"id": id, "status": saga["status"]});
    let outcome = match id.parse::<SagaId>() {
        Err(e) => Err(format!("saga {id} has an unreadable id: {e}")),
        Ok(saga) if dry_run => api
            .orchestrator
            .preview(saga, action.clone(), OPERATOR.to_string())
            .await
            .map(|entries| json!({"would": describe(&entries), "entries": entries}))
            .map_err(|e| refusal(id, action, e).message),
        Ok(_) => perform(api, id, action.clone(), OPERATOR)
            .await
            .map(|exec| json!({"done": true, "now": exec.status}))
            .map_err(|e| e.message),
    };
    let applies = outcome.is_ok();
    match outcome {
        Ok(Value::Object(fields)) => result.as_object_mut().expect("an object").extend(fields),
        Ok(_) => {}
        Err(why) => result["refused"] = Value::String(why),
    }
    (result, applies)
}

/// What the history entries of an action's first step say, in a line.
pub fn describe(entries: &[Entry]) -> String {
    let said: Vec<String> = entries
        .iter()
        .filter_map(|entry| match &entry.event {
            Recorded::Failed {
                error,
                compensating,
            } if compensating.is_empty() => Some(format!(
                "fail with \"{}\"; nothing to compensate",
                error.message
            )),
            Recorded::Failed {
                error,
                compensating,
            } => Some(format!(
                "fail with \"{}\"; compensate steps {} (latest first)",
                error.message,
                compensating
                    .iter()
                    .map(|s| (s + 1).to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Recorded::Dispatched {
                target: Target::Step(i),
                topic,
                attempt,
                ..
            } => Some(format!(
                "send {topic} for step {} (attempt {attempt})",
                i + 1
            )),
            Recorded::Dispatched {
                target: Target::Compensation(i),
                topic,
                ..
            } => Some(format!("send {topic} to compensate step {}", i + 1)),
            Recorded::Ended { status, .. } => Some(format!("end {}", status.as_str())),
            _ => None,
        })
        .collect();
    if said.is_empty() {
        "change nothing yet".to_string()
    } else {
        said.join("; ")
    }
}
