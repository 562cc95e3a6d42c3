//! The web console at `/console`: server-rendered HTML (`pages.rs`, maud templates, so that
//! every string from a saga or a component is escaped) over the same functions as the
//! operator API — the saga list with filters and counts, one saga's steps and history with the
//! cancel and retry buttons, the components, the dead letters with redrive.
//!
//! The console is off unless the host has an admin token: a login form exchanges the token for
//! an HttpOnly, SameSite=Strict cookie. Every request that changes something carries a token
//! derived from the session (and the browser's Origin, when it sends one, must be this host),
//! so that another site cannot submit it.

mod pages;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use saga_core::engine::OperatorAction;
use saga_core::ids::SagaId;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::actions::{self, OPERATOR};
use super::queries;
use super::{Api, ApiError, operator};
use crate::storage::SagaFilter;

const COOKIE: &str = "saga_console";

/// The console's routes, behind its gate.
pub fn routes(api: Arc<Api>) -> axum::Router<Arc<Api>> {
    axum::Router::new()
        .route("/console", get(list))
        .route("/console/login", get(login_form).post(login))
        .route("/console/logout", post(logout))
        .route("/console/sagas/{id}", get(saga))
        .route("/console/sagas/{id}/{action}", post(act))
        .route("/console/components", get(components).post(deploy))
        .route("/console/components/{name}/remove", post(remove))
        .route("/console/dead-letters", get(dead_letters))
        .route("/console/dead-letters/{id}/redrive", post(redrive))
        .route_layer(axum::middleware::from_fn_with_state(api, gate))
}

fn hex_sha256(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The session cookie's value for this host's admin token (none without a token: then the
/// console is off).
fn session(api: &Api) -> Option<String> {
    let token = api.settings.admin_token.as_deref()?;
    Some(hex_sha256(&["saga-host console session", token]))
}

/// The token every changing request carries, derived from the session.
fn csrf(api: &Api) -> String {
    hex_sha256(&["saga-host console form", &session(api).unwrap_or_default()])
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_string())
}

/// Whether a browser's Origin (when sent) is this host.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    host.is_some() && origin_host == host
}

/// Lets a request in with the session cookie; sends a browser to the login form otherwise.
/// Without an admin token the console is off; a changing request from another origin is
/// refused.
async fn gate(State(api): State<Arc<Api>>, request: Request, next: Next) -> Response {
    let Some(expected) = session(&api) else {
        return pages::refused(
            StatusCode::FORBIDDEN,
            "the console is off: start the host with --admin-token TOKEN (or \
             SAGA_HOST_ADMIN_TOKEN), then log in here with that token",
        );
    };
    let changing = *request.method() == axum::http::Method::POST;
    if changing && !same_origin(request.headers()) {
        return pages::refused(
            StatusCode::FORBIDDEN,
            "this form was sent from another site; use the console itself",
        );
    }
    let login = request.uri().path() == "/console/login";
    let given = cookie(request.headers(), COOKIE);
    if login || given.as_deref() == Some(expected.as_str()) {
        return next.run(request).await;
    }
    if changing {
        return pages::refused(StatusCode::UNAUTHORIZED, "log in first: /console/login");
    }
    Redirect::to("/console/login").into_response()
}

async fn login_form() -> Response {
    Html(pages::login(None).into_string()).into_response()
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

async fn login(State(api): State<Arc<Api>>, Form(form): Form<Login>) -> Response {
    // The gate lets no request in without an admin token.
    let expected = api.settings.admin_token.as_deref().unwrap_or_default();
    if expected.is_empty()
        || !operator::constant_time_eq(form.token.as_bytes(), expected.as_bytes())
    {
        let page = pages::login(Some(
            "the admin token is wrong; it is the host's --admin-token",
        ));
        return (StatusCode::UNAUTHORIZED, Html(page.into_string())).into_response();
    }
    let value = session(&api).unwrap_or_default();
    let cookie = format!("{COOKIE}={value}; Path=/console; HttpOnly; SameSite=Strict");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/console")).into_response()
}

async fn logout() -> Response {
    let cookie = format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0");
    (
        [(header::SET_COOKIE, cookie)],
        Redirect::to("/console/login"),
    )
        .into_response()
}

/// Whether a changing request carries this session's form token.
fn fresh(api: &Api, given: &str) -> bool {
    operator::constant_time_eq(given.as_bytes(), csrf(api).as_bytes())
}

/// The refusal of a form whose token is not this session's.
fn stale_form() -> Response {
    pages::refused(
        StatusCode::FORBIDDEN,
        "this form is stale: reload the page and try again",
    )
}

fn failed(failure: ApiError) -> Response {
    pages::refused(failure.status, &failure.message)
}

/// `GET /console?…`: the sagas the filter selects, a page at a time, with counts by status.
async fn list(
    State(api): State<Arc<Api>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let params: HashMap<String, String> =
        params.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    let query = match queries::parse_query(&params) {
        Ok(query) => query,
        Err(refused) => return failed(refused),
    };
    let unfiltered_status = SagaFilter {
        status: None,
        ..query.filter.clone()
    };
    let (page, counts) = match (
        queries::page(&api, &query).await,
        queries::counts(&api, &unfiltered_status).await,
    ) {
        (Ok(page), Ok(counts)) => (page, counts),
        (Err(failure), _) | (_, Err(failure)) => return failed(failure),
    };
    let by_status = queries::by_status(&counts);
    Html(pages::list(&params, &page, &by_status).into_string()).into_response()
}

/// `GET /console/sagas/{id}`: one saga.
async fn saga(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Response {
    let not_found = || pages::refused(StatusCode::NOT_FOUND, &format!("no saga execution {id}"));
    let Ok(saga) = id.parse::<SagaId>() else {
        return not_found();
    };
    let stored = match api.orchestrator.inspect(saga).await {
        Ok(Some(stored)) => stored,
        Ok(None) => return not_found(),
        Err(problem) => return pages::refused(StatusCode::INTERNAL_SERVER_ERROR, &problem),
    };
    let history = match stored.entries() {
        Ok(history) => history,
        Err(problem) => return pages::refused(StatusCode::INTERNAL_SERVER_ERROR, &problem),
    };
    let now = crate::storage::now_ms();
    Html(pages::saga(&stored.exec, &history, &csrf(&api), now).into_string()).into_response()
}

/// A form that carries only its token.
#[derive(Deserialize)]
struct Guarded {
    csrf: String,
}

#[derive(Deserialize)]
struct Acting {
    csrf: String,
    #[serde(default)]
    reason: String,
}

/// `POST /console/sagas/{id}/{action}`: the action, then back to the saga.
async fn act(
    State(api): State<Arc<Api>>,
    Path((id, name)): Path<(String, String)>,
    Form(form): Form<Acting>,
) -> Response {
    if !fresh(&api, &form.csrf) {
        return stale_form();
    }
    let Some(action) = OperatorAction::parse(&name, form.reason) else {
        return pages::refused(
            StatusCode::NOT_FOUND,
            &format!(
                "no action {name:?}; use one of {}",
                OperatorAction::NAMES.join(", ")
            ),
        );
    };
    match actions::perform(&api, &id, action, OPERATOR).await {
        Ok(_) => Redirect::to(&format!("/console/sagas/{id}")).into_response(),
        Err(refused) => failed(refused),
    }
}

#[derive(Deserialize)]
struct Deployed {
    deployed: Option<String>,
}

/// `GET /console/components[?deployed=NAME]`
async fn components(State(api): State<Arc<Api>>, Query(just): Query<Deployed>) -> Response {
    match operator::components(&api).await {
        Ok(list) => {
            let page = pages::components(&list, just.deployed.as_deref(), &csrf(&api));
            Html(page.into_string()).into_response()
        }
        Err(failure) => failed(failure),
    }
}

/// The header the components page's upload script sends the form token in.
const CSRF_HEADER: &str = "x-console-csrf";

/// `POST /console/components` with the component as an `application/wasm` body (the page's
/// upload script): deployed like `POST /admin/components`, answered as JSON.
async fn deploy(State(api): State<Arc<Api>>, request: Request) -> Response {
    let given = request
        .headers()
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !fresh(&api, given) {
        let stale = "this page is stale: reload it and upload again";
        return ApiError::new(StatusCode::FORBIDDEN, stale).into_response();
    }
    operator::deploy(&api, None, request).await
}

/// `POST /console/components/{name}/remove`
async fn remove(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    Form(form): Form<Guarded>,
) -> Response {
    if !fresh(&api, &form.csrf) {
        return stale_form();
    }
    match operator::remove_component(&api, &name).await {
        Ok(_) => Redirect::to("/console/components").into_response(),
        Err(failure) => failed(failure),
    }
}

/// `GET /console/dead-letters`
async fn dead_letters(State(api): State<Arc<Api>>) -> Response {
    match operator::dead_letters(&api).await {
        Ok(list) => Html(pages::dead_letters(&list, &csrf(&api)).into_string()).into_response(),
        Err(failure) => failed(failure),
    }
}

/// `POST /console/dead-letters/{id}/redrive`
async fn redrive(
    State(api): State<Arc<Api>>,
    Path(seq): Path<i64>,
    Form(form): Form<Guarded>,
) -> Response {
    if !fresh(&api, &form.csrf) {
        return stale_form();
    }
    match operator::redrive_letter(&api, seq).await {
        Ok(()) => Redirect::to("/console/dead-letters").into_response(),
        Err(failure) => failed(failure),
    }
}
