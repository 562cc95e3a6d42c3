//! The operator API: saga inspection (`/sagas`; queries and actions are in `queries.rs` and
//! `actions.rs`) and administration (`/admin`). Both need the
//! admin token when one is configured; without one, `/admin` is off and `/sagas` is open (the
//! host listens on loopback by default).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Api, ApiError, error};
use crate::broker::Message;
use crate::deploy::{ClusterView, DEPLOY_WAIT, DeployError, HostOutcome, Origin};
use crate::saga::record;
use crate::storage::{Executions, Queue};
use saga_core::ids::SagaId;

/// Lets a request through only with the admin token; `/admin` is off without a configured one.
pub async fn require_token(State(api): State<Arc<Api>>, request: Request, next: Next) -> Response {
    let admin = request.uri().path().starts_with("/admin");
    let refusal = match api.settings.admin_token.as_deref() {
        None if admin => error(
            StatusCode::FORBIDDEN,
            "the admin API is off: start the host with --admin-token TOKEN (or SAGA_HOST_ADMIN_TOKEN)",
        ),
        None => return next.run(request).await,
        Some(expected) => {
            let given = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "));
            match given {
                None => unauthorized(
                    "this endpoint needs the admin token: send Authorization: Bearer TOKEN",
                ),
                Some(token) if !constant_time_eq(token.as_bytes(), expected.as_bytes()) => {
                    unauthorized("the admin token is wrong")
                }
                Some(_) => return next.run(request).await,
            }
        }
    };
    // Read the body (a component upload, say) before answering, so that the client gets the
    // refusal rather than a connection closed under its upload.
    let _ = axum::body::to_bytes(request.into_body(), api.settings.max_component_bytes).await;
    refusal
}

fn unauthorized(message: &str) -> Response {
    let mut response = error(StatusCode::UNAUTHORIZED, message);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

/// Compares without an early exit, so that the time taken does not tell how much matched.
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `GET /sagas/{id}`: one execution with its steps.
pub async fn get_saga(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Response {
    let saga = match saga_id(&id) {
        Ok(saga) => saga,
        Err(refusal) => return refusal.into_response(),
    };
    match api.orchestrator.inspect(saga).await {
        Ok(Some(stored)) => Json(record::to_json(&stored.exec)).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no saga execution {id}")),
        Err(problem) => error(StatusCode::INTERNAL_SERVER_ERROR, problem),
    }
}

/// `GET /sagas/{id}/history`: everything that happened to a saga, oldest first.
pub async fn get_history(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Response {
    let saga = match saga_id(&id) {
        Ok(saga) => saga,
        Err(refusal) => return refusal.into_response(),
    };
    match api
        .orchestrator
        .inspect(saga)
        .await
        .and_then(|s| s.map(|s| s.entries()).transpose())
    {
        Ok(Some(entries)) => Json(entries).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no saga execution {id}")),
        Err(problem) => error(StatusCode::INTERNAL_SERVER_ERROR, problem),
    }
}

/// A saga id from a path, or a 404 that says why it cannot be one.
fn saga_id(id: &str) -> Result<SagaId, ApiError> {
    id.parse().map_err(|e: saga_core::ids::IdError| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no saga execution {id}: {e}"),
        )
    })
}

/// `GET /admin/dead-letters`: messages whose handling kept failing, oldest first.
pub async fn list_dead_letters(State(api): State<Arc<Api>>) -> Response {
    match dead_letters(&api).await {
        Ok(letters) => Json(letters).into_response(),
        Err(failure) => failure.into_response(),
    }
}

/// The dead letters as the operator sees them (the API and the console).
pub async fn dead_letters(api: &Api) -> Result<Vec<Value>, ApiError> {
    match api.storage.dead_letters(1000).await {
        Ok(letters) => {
            let letters: Vec<Value> = letters
                .iter()
                .map(|letter| {
                    let message: Option<Message> = serde_json::from_str(&letter.body).ok();
                    json!({
                        "id": letter.seq,
                        "message_id": letter.message_id,
                        "consumer": letter.consumer,
                        "kind": message.as_ref().map(|m| m.kind),
                        "topic": message.as_ref().map(|m| m.topic.clone()),
                        "headers": message.as_ref().map(|m| m.headers.clone()),
                        // The operator needs what failed to decide on a redrive; the list is
                        // behind the admin token, and payloads never reach the log.
                        "payload": message.as_ref().map(|m| payload_json(&m.payload)),
                        "attempts": letter.attempts,
                        "error": letter.error,
                        "failed_at": letter.failed_at,
                    })
                })
                .collect();
            Ok(letters)
        }
        Err(failure) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            failure.to_string(),
        )),
    }
}

/// A payload as JSON when it is (it should be), else as the text it is.
fn payload_json(payload: &str) -> Value {
    serde_json::from_str(payload).unwrap_or_else(|_| Value::String(payload.to_string()))
}

/// `POST /admin/dead-letters/{id}/redrive`: queues a dead letter again.
pub async fn redrive(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Response {
    let Ok(seq) = id.parse::<i64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("dead letter id {id:?} is not a number"),
        );
    };
    match redrive_letter(&api, seq).await {
        Ok(()) => Json(json!({"redriven": seq})).into_response(),
        Err(failure) => failure.into_response(),
    }
}

/// Queues dead letter `seq` again (the API and the console).
pub async fn redrive_letter(api: &Api, seq: i64) -> Result<(), ApiError> {
    match api.broker.redrive(seq).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no dead letter {seq}"),
        )),
        Err(failure) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            failure.to_string(),
        )),
    }
}

/// `GET /admin/components`: each service's current version, its routes, topics and sagas,
/// every version sagas still run on, and on a cluster which version each host runs.
pub async fn list_components(State(api): State<Arc<Api>>) -> Response {
    match components(&api).await {
        Ok(list) => Json(list).into_response(),
        Err(failure) => failure.into_response(),
    }
}

/// Each service with its versions, as the operator sees them (the API and the console).
pub async fn components(api: &Api) -> Result<Vec<Value>, ApiError> {
    let running = api
        .storage
        .running_versions()
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let sagas_on = |service: &str, digest: &str| {
        running
            .iter()
            .find(|(s, v, _)| s == service && v == digest)
            .map_or(0, |(_, _, count)| *count)
    };
    let cluster = (api.deployer.cluster_view().await)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let retired = api.registry.retired();
    let services = api.registry.current();
    let list: Vec<Value> = services
        .by_name
        .values()
        .map(|version| {
            let mut versions = vec![json!({
                "digest": version.digest,
                "current": true,
                "loaded_at": version.loaded_at,
                "running_sagas": sagas_on(version.name(), &version.digest),
            })];
            versions.extend(
                retired
                    .iter()
                    .filter(|old| old.name() == version.name())
                    .map(|old| {
                        json!({
                            "digest": old.digest,
                            "current": false,
                            "loaded_at": old.loaded_at,
                            "running_sagas": sagas_on(old.name(), &old.digest),
                        })
                    }),
            );
            let mut sagas: Vec<&String> = version.manifest.sagas.keys().collect();
            sagas.sort();
            let mut listed = json!({
                "name": version.name(),
                "digest": version.digest,
                "source": version.source,
                "loaded_at": version.loaded_at,
                "triggers": version
                    .manifest
                    .handlers
                    .iter()
                    .flat_map(|h| h.triggers.iter().map(crate::runtime::manifest::describe_trigger))
                    .collect::<Vec<_>>(),
                "sagas": sagas,
                "versions": versions,
            });
            if let Some(cluster) = &cluster {
                listed["cluster"] = cluster_json(cluster, version.name());
            }
            listed
        })
        .collect();
    Ok(list)
}

/// A service as the cluster runs it: the version it last deployed, and each live host's current
/// version (and the last deploy it could not load, with the reason).
fn cluster_json(cluster: &ClusterView, service: &str) -> Value {
    let hosts: Vec<Value> = (cluster.hosts.iter())
        .filter(|row| row.service == service)
        .map(|row| {
            json!({
                "host": row.host,
                "here": row.host == cluster.host,
                "current": row.current,
                "failed": row.failed.as_ref().map(|(digest, _)| digest),
                "error": row.failed.as_ref().map(|(_, error)| error),
                "at": row.at,
            })
        })
        .collect();
    json!({"digest": cluster.current.get(service), "hosts": hosts})
}

/// `POST /admin/components`: deploys the component in the body under the name it gives itself.
pub async fn post_component(State(api): State<Arc<Api>>, request: Request) -> Response {
    deploy(&api, None, request).await
}

/// `PUT /admin/components/{name}`: deploys the component in the body as service `name`.
pub async fn put_component(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    deploy(&api, Some(name), request).await
}

/// Deploys the component in the request's body through the deployer, as service `name` or
/// the name it gives itself; answers what it deployed as JSON (the API and the console).
pub async fn deploy(api: &Api, name: Option<String>, request: Request) -> Response {
    let deployed = match upload(api, request).await {
        Ok(bytes) => deploy_component(api, name, bytes).await,
        Err(refused) => Err(refused),
    };
    match deployed {
        Ok(deployed) => Json(deployed).into_response(),
        Err(failure) => failure.into_response(),
    }
}

/// A component uploaded as the request's body, up to `--max-component-mb`.
async fn upload(api: &Api, request: Request) -> Result<Vec<u8>, ApiError> {
    let limit = api.settings.max_component_bytes;
    match axum::body::to_bytes(request.into_body(), limit).await {
        Ok(bytes) => Ok(bytes.to_vec()),
        Err(_) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the component is larger than the limit of {} MiB (--max-component-mb)",
                limit >> 20
            ),
        )),
    }
}

/// What deploying `bytes` gave: the service, its digest and the version it replaced; on a
/// cluster, each live host's result (`current`, `failed` with the reason, or `no answer`).
async fn deploy_component(
    api: &Api,
    name: Option<String>,
    bytes: Vec<u8>,
) -> Result<Value, ApiError> {
    // The services as they were: the one the component turns out to be is looked up after.
    let before = api.registry.current();
    match (api.deployer)
        .deploy_everywhere(bytes, Origin::Api(name), true)
        .await
    {
        Ok((version, hosts)) => {
            let replaced = before.by_name.get(version.name()).map(|v| v.digest.clone());
            let mut sagas: Vec<&String> = version.manifest.sagas.keys().collect();
            sagas.sort();
            let mut deployed = json!({
                "service": version.name(),
                "digest": version.digest,
                "replaced": replaced,
                "sagas": sagas,
            });
            if let Some(hosts) = hosts {
                let hosts: Vec<Value> = (hosts.iter())
                    .map(|answer| {
                        let (result, error) = match &answer.outcome {
                            HostOutcome::Current => ("current", None),
                            HostOutcome::Failed(error) => ("failed", Some(error.clone())),
                            HostOutcome::NoAnswer => (
                                "no answer",
                                Some(format!(
                                    "it did not load the version within {} s; it catches up when it can",
                                    DEPLOY_WAIT.as_secs()
                                )),
                            ),
                        };
                        json!({
                            "host": answer.host,
                            "here": answer.here,
                            "result": result,
                            "error": error,
                        })
                    })
                    .collect();
                deployed["hosts"] = Value::Array(hosts);
            }
            Ok(deployed)
        }
        Err(failure @ DeployError::Invalid(_)) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, failure.to_string()))
        }
        Err(failure @ DeployError::Conflict(_)) => {
            Err(ApiError::new(StatusCode::CONFLICT, failure.to_string()))
        }
        Err(failure) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            failure.to_string(),
        )),
    }
}

/// `DELETE /admin/components/{name}`: removes a service.
pub async fn delete_component(State(api): State<Arc<Api>>, Path(name): Path<String>) -> Response {
    match remove_component(&api, &name).await {
        Ok(removed) => Json(removed).into_response(),
        Err(failure) => failure.into_response(),
    }
}

/// Removes service `name` through the deployer (the API and the console).
pub async fn remove_component(api: &Api, name: &str) -> Result<Value, ApiError> {
    match api.deployer.undeploy(name).await {
        Ok(version) => Ok(json!({"removed": version.name(), "digest": version.digest})),
        Err(failure @ DeployError::Invalid(_)) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, failure.to_string()))
        }
        Err(failure) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            failure.to_string(),
        )),
    }
}
