//! The HTTP front: the routes components declare (matched against the current registry on every
//! request, so hot-loaded routes take effect at once), the host's own `/health`, and the
//! operator API. Every refusal is JSON `{"error": "..."}` that says what was wrong.

mod actions;
mod console;
mod observe;
mod operator;
mod queries;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use saga_core::request::Incoming;
use serde_json::json;

use crate::broker::Broker;
use crate::deploy::Deployer;
use crate::handler::{self, HandleError, Handled, Handlers, Invocation, Keyed, KeyedOutcome};
use crate::runtime::bindings::types as wit;
use crate::runtime::registry::{Matched, Registry, Services};
use crate::runtime::{Access, Scope};
use crate::saga::Orchestrator;
use crate::storage::{RequestKey, Storage};

/// What the HTTP front serves with: the parts of the host it reaches, and its settings.
pub struct Api {
    pub handlers: Arc<Handlers>,
    pub orchestrator: Arc<Orchestrator>,
    pub deployer: Arc<Deployer>,
    pub registry: Arc<Registry>,
    pub storage: Storage,
    pub broker: Broker,
    pub settings: Settings,
}

/// How the HTTP front behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// How long one request may take before it is answered 504.
    pub request_timeout: std::time::Duration,
    /// Largest component the admin API accepts, in bytes.
    pub max_component_bytes: usize,
    /// The bearer token of the operator API; none: `/admin` is off.
    pub admin_token: Option<String>,
    /// The bearer token `/metrics` requires; none: it is open.
    pub metrics_token: Option<String>,
    /// Write an access log line per request.
    pub access_log: bool,
}

pub fn router(api: Arc<Api>) -> Router {
    let operator = Router::new()
        .route("/sagas", get(queries::list_sagas))
        .route("/sagas/stats", get(queries::stats))
        .route("/sagas/actions", post(actions::bulk))
        .route("/sagas/{id}/cancel", post(actions::cancel))
        .route(
            "/sagas/{id}/retry-compensations",
            post(actions::retry_compensations),
        )
        .route("/sagas/{id}/retry-now", post(actions::retry_now))
        .route("/sagas/{id}", get(operator::get_saga))
        .route("/sagas/{id}/history", get(operator::get_history))
        .route("/admin/dead-letters", get(operator::list_dead_letters))
        .route("/admin/dead-letters/{id}/redrive", post(operator::redrive))
        .route(
            "/admin/components",
            get(operator::list_components).post(operator::post_component),
        )
        .route(
            "/admin/components/{name}",
            axum::routing::put(operator::put_component).delete(operator::delete_component),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            api.clone(),
            operator::require_token,
        ));
    let routes = Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(observe::metrics_page))
        .merge(operator)
        .merge(console::routes(api.clone()))
        .route_layer(axum::middleware::from_fn(observe::note_route))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(component_route)
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            request_timeout,
        ));
    observe::wrap(routes, &api).with_state(api)
}

/// Answers 504 to a request not finished within the configured time, reading its body included
/// (so that a slow client cannot hold a connection's work forever). What the request started
/// may still complete: the answer says so.
async fn request_timeout(
    State(api): State<Arc<Api>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let limit = api.settings.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the request took longer than {} s (--request-timeout-s); what it started may still complete, check before retrying",
                limit.as_secs_f64()
            ),
        ),
    }
}

async fn health(State(api): State<Arc<Api>>) -> Response {
    let services: Vec<String> = api.registry.current().by_name.keys().cloned().collect();
    (
        StatusCode::OK,
        axum::Json(json!({"status": "ok", "services": services})),
    )
        .into_response()
}

/// The OpenAPI document of the host's own routes, kept by hand next to the code
/// (`tests/openapi.rs` holds it to the routes registered here).
async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../../openapi.json"),
    )
        .into_response()
}

/// A JSON error response.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError::new(status, message).into_response()
}

/// What the host's own API answers when it refuses or fails: a status and words that say what
/// was wrong, as JSON `{"error": "…"}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({"error": self.message}))).into_response()
    }
}

async fn component_route(State(api): State<Arc<Api>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let services = api.registry.current();
    let Some(matched) = services.route(parts.method.as_str(), parts.uri.path()) else {
        return unrouted(&services, parts.method.as_str(), parts.uri.path());
    };
    let template = match &matched.target.trigger {
        wit::Trigger::RestCommand(route) | wit::Trigger::RestQuery(route) => route.path.clone(),
        _ => "unmatched".to_string(),
    };
    let service = matched.target.service.clone();
    // The database is down (the storage writer lost it and has not connected again): refuse
    // at once with why, rather than wait for it and fail.
    if let Some(down) = api.storage.unreachable() {
        let mut response = error(StatusCode::SERVICE_UNAVAILABLE, down.to_string());
        response
            .extensions_mut()
            .insert(observe::RouteTemplate(template));
        return response;
    }
    let keyed = !matched.target.read_only;
    let mut response = match idempotency_key(&parts.headers) {
        Err(refusal) => refusal.into_response(),
        Ok(key) => match invocation(&api, &services, matched, &parts, body).await {
            Ok((invocation, body)) => {
                drop(services);
                match key.filter(|_| keyed) {
                    None => answer(&service, api.handlers.run(invocation).await),
                    Some(key) => {
                        let route = format!("{} {template}", parts.method);
                        let keyed = Keyed {
                            request_hash: request_hash(&parts.uri, &body),
                            key: RequestKey {
                                service: service.clone(),
                                route,
                                key,
                            },
                            stale_after: api.settings.request_timeout + STALE_CLAIM_MARGIN,
                        };
                        let key = keyed.key.clone();
                        answer_keyed(
                            &service,
                            &key,
                            api.handlers.run_keyed(invocation, keyed).await,
                        )
                    }
                }
            }
            Err(refusal) => refusal,
        },
    };
    response
        .extensions_mut()
        .insert(observe::RouteTemplate(template));
    response
}

/// How much longer than a request may take a claim on its idempotency key is honoured: past
/// it, the host that held it is taken for dead and a repeat runs.
const STALE_CLAIM_MARGIN: std::time::Duration = std::time::Duration::from_secs(30);

/// The request's `Idempotency-Key`, if it has one: 1 to 255 printable ASCII characters.
fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > 255 || !bytes.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "the Idempotency-Key header must be 1 to 255 printable ASCII characters (a UUID is a good key); this one is {} bytes{}",
                bytes.len(),
                if bytes.iter().all(|b| (0x20..=0x7e).contains(b)) {
                    ""
                } else {
                    " with characters outside printable ASCII"
                }
            ),
        ));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// What tells a repeat of a request from another request under the same key: a digest of its
/// path, query and body.
fn request_hash(uri: &axum::http::Uri, body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    digest.update(uri.path().as_bytes());
    digest.update([0]);
    digest.update(uri.query().unwrap_or_default().as_bytes());
    digest.update([0]);
    digest.update(body);
    format!("{:x}", digest.finalize())
}

/// The HTTP answer to a request with an idempotency key.
fn answer_keyed(
    service: &str,
    key: &RequestKey,
    outcome: Result<KeyedOutcome, HandleError>,
) -> Response {
    match outcome {
        Ok(KeyedOutcome::Ran(handled)) => answer(service, handled),
        Ok(KeyedOutcome::Replayed { status, body }) => json_response(status, body, true),
        Ok(KeyedOutcome::Reused) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "the Idempotency-Key {:?} was already used for another request to {} (another body, path or query); send a new key with a new request",
                key.key, key.route
            ),
        ),
        Err(failure) => answer(service, Err(failure)),
    }
}

/// A JSON body with its status; `replayed` marks the stored answer to an earlier request.
fn json_response(status: u16, body: String, replayed: bool) -> Response {
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json");
    if replayed {
        response = response.header("idempotent-replayed", "true");
    }
    response.body(Body::from(body)).unwrap_or_else(|_| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not build the response",
        )
    })
}

/// A host route asked with a method it does not take: 405, as JSON like every refusal (axum
/// keeps the `Allow` header it computed).
async fn method_not_allowed(request: Request) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed on {}; see the Allow header, or GET /openapi.json for the host's routes",
            request.method(),
            request.uri().path()
        ),
    )
}

/// The answer to a request no component route matches: 404, or 405 with the methods the path
/// accepts.
fn unrouted(services: &Services, method: &str, path: &str) -> Response {
    let allowed = services.methods_at(path);
    if allowed.is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            format!("no route for {method} {path}"),
        );
    }
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} is not allowed on {path}; it accepts {}",
            allowed.join(", ")
        ),
    );
    if let Ok(value) = HeaderValue::from_str(&allowed.join(", ")) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

/// The call a routed request makes: its body read (within the size limit) and checked, the
/// route's parameters, query and headers; or the refusal to answer.
async fn invocation(
    api: &Api,
    services: &Services,
    matched: Matched<'_>,
    parts: &axum::http::request::Parts,
    body: Body,
) -> Result<(Invocation, axum::body::Bytes), Response> {
    let limit = api.settings.max_body_bytes;
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than the limit of {limit} bytes"),
        ));
    };
    let incoming = Incoming {
        content_type: parts
            .headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
        query: parts.uri.query(),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
            .collect(),
        body: &bytes,
    };
    let checked = saga_core::request::check(&incoming).map_err(|refusal| {
        let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST);
        error(status, refusal.message)
    })?;
    let target = matched.target.clone();
    let Some(service) = services.by_name.get(&target.service).cloned() else {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("no route for {} {}", parts.method, parts.uri.path()),
        ));
    };
    let invocation = Invocation {
        service,
        request: wit::Request {
            handler: target.handler,
            trigger: target.trigger,
            payload: checked.payload,
            params: matched.params,
            query: checked.query,
            headers: checked
                .headers
                .into_iter()
                .map(|(name, value)| wit::Header { name, value })
                .collect(),
            user: checked.user.clone(),
        },
        scope: Scope::Direct,
        access: if target.read_only {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        },
        user: checked.user,
        message: None,
    };
    Ok((invocation, bytes))
}

/// The HTTP answer to what a handler did.
fn answer(service: &str, handled: Result<Handled, HandleError>) -> Response {
    match handled {
        Ok(Handled::Answered(answered)) => {
            let (status, body) = handler::http_answer(service, &answered);
            json_response(status, body, false)
        }
        Ok(Handled::Failed(failure)) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, failure.to_string())
        }
        Ok(Handled::Duplicate) => error(StatusCode::CONFLICT, "this request was already handled"),
        Err(blocked @ HandleError::Blocked(_)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, blocked.to_string())
        }
        Err(HandleError::Storage(failure)) => match failure.outage() {
            // The database down or full: 503 or 507, with what to do.
            Some(outage) => error(
                StatusCode::from_u16(outage.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                failure.to_string(),
            ),
            None => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("storage failed: {failure}"),
            ),
        },
    }
}
