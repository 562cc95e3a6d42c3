//! What the HTTP front tells operators: a request id on every request (`x-request-id`, taken
//! from the client or made up) and on every log line of it, a span per request that continues
//! the client's trace (`traceparent`), an access log line when asked for, request metrics by
//! route template, and `GET /metrics`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::{MakeSpan, OnResponse, TraceLayer};

use super::{Api, ApiError};
use crate::saga::Status;
use crate::storage::{Executions, Queue};
use crate::telemetry::{self, metrics};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The route template a request matched ("/exams/{uuid}"), for metrics and the access log:
/// never the raw path, whose ids would make every request a label of its own.
#[derive(Debug, Clone)]
pub struct RouteTemplate(pub String);

/// Wraps the router in the request-id, trace and metrics layers — as one layer, so that a
/// request clones one boxed service, not one per layer.
pub fn wrap(router: axum::Router<Arc<Api>>, api: &Arc<Api>) -> axum::Router<Arc<Api>> {
    let access_log = api.settings.access_log;
    router.layer(
        tower::ServiceBuilder::new()
            .layer(SetSensitiveRequestHeadersLayer::new([
                header::AUTHORIZATION,
                header::COOKIE,
            ]))
            .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(RequestSpan)
                    .on_request(())
                    .on_response(AccessLog(access_log))
                    .on_failure(()),
            )
            .layer(PropagateRequestIdLayer::new(REQUEST_ID))
            .layer(axum::middleware::from_fn(count_request)),
    )
}

/// Records the route template of a host route (as axum matched it) on its response.
pub async fn note_route(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_string());
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(RouteTemplate(route));
    }
    response
}

fn route_of<B>(response: &axum::http::Response<B>) -> &str {
    response
        .extensions()
        .get::<RouteTemplate>()
        .map_or("unmatched", |route| route.0.as_str())
}

/// Counts a request by route template, method and status, with its duration.
async fn count_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let response = next.run(request).await;
    let route = route_of(&response);
    tracing::Span::current().record("route", route);
    metrics::http_request(route, method.as_str(), response.status(), started.elapsed());
    response
}

/// The span of one request: its method, path, request id (on every log line within it), and,
/// once known, its route template; a child of the client's trace when it sent one.
#[derive(Clone)]
struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &axum::http::Request<B>) -> tracing::Span {
        let request_id = request
            .headers()
            .get(&REQUEST_ID)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        let span = tracing::info_span!(
            "request",
            method = %request.method(),
            path = request.uri().path(),
            request_id,
            route = tracing::field::Empty,
        );
        let traceparent = request
            .headers()
            .get("traceparent")
            .and_then(|value| value.to_str().ok());
        telemetry::continue_trace(&span, traceparent);
        span
    }
}

/// The access log line of a request, when asked for: within the request's span, so it carries
/// the method, path and request id; plus the route template, status and duration.
#[derive(Clone)]
struct AccessLog(bool);

impl<B> OnResponse<B> for AccessLog {
    fn on_response(
        self,
        response: &axum::http::Response<B>,
        latency: Duration,
        _span: &tracing::Span,
    ) {
        if self.0 {
            let route = route_of(response);
            tracing::info!(
                target: "saga_host::access",
                route,
                status = response.status().as_u16(),
                ms = latency.as_secs_f64() * 1e3,
                "answered"
            );
        }
    }
}

/// `GET /metrics`: every metric in the Prometheus text format, with the gauges of what storage
/// holds (sagas open by status, the queue, the dead letters, the live hosts) read now.
pub async fn metrics_page(State(api): State<Arc<Api>>, request: Request) -> Response {
    if let Some(expected) = api.settings.metrics_token.as_deref() {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        if !given.is_some_and(|given| {
            super::operator::constant_time_eq(given.as_bytes(), expected.as_bytes())
        }) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "GET /metrics needs the metrics token: send Authorization: Bearer TOKEN",
            )
            .into_response();
        }
    }
    if let Err(problem) = read_gauges(&api).await {
        tracing::warn!("the metrics' storage gauges could not be read: {problem}");
    }
    match metrics::render() {
        Some(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "metrics are not recorded in this process",
        )
        .into_response(),
    }
}

async fn read_gauges(api: &Api) -> Result<(), crate::storage::StorageError> {
    let open = api.storage.open_sagas().await?;
    for status in [
        Status::Created,
        Status::Running,
        Status::Paused,
        Status::Compensating,
    ] {
        let count = open
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n);
        metrics::sagas_open(status.as_str(), count);
    }
    let backlog = api.storage.backlog().await?;
    let now = crate::storage::now_ms();
    let oldest = backlog
        .oldest_at
        .map(|at| Duration::from_millis((now - at).max(0) as u64));
    metrics::backlog(backlog.queued, oldest, backlog.dead_letters);
    Ok(())
}
