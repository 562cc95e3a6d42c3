//! The console's pages as maud templates: every value interpolated is HTML-escaped unless it
//! is one of the constants below (the style sheet, the refresh script). Plain semantic markup,
//! one small style sheet for light and dark, no assets fetched from anywhere.

use std::collections::{BTreeMap, HashMap};

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use saga_core::engine::{Entry, Execution, Recorded, Status};
use saga_core::instant;
use saga_core::request::{path_segment, query_string};
use serde_json::Value;

use super::super::queries::{FILTER_PARAMS, SagaPage};

const STYLE: &str = r#"
:root { color-scheme: light dark; --fg: #1b1f24; --bg: #fff; --muted: #5b6570; --line: #d5dae0;
  --accent: #0b5cad; --bad: #b3261e; --good: #1e7a34; --bar: #4a89dc; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6e9ed; --bg: #15181c; --muted: #9aa4ae;
  --line: #343b43; --accent: #6cb0ff; --bad: #ff8a80; --good: #7bd88f; --bar: #5d9cec; } }
body { font: 15px/1.45 system-ui, sans-serif; color: var(--fg); background: var(--bg);
  margin: 0 auto; max-width: 1200px; padding: 0 1rem 2rem; }
nav { display: flex; gap: 1rem; align-items: center; padding: .6rem 0; border-bottom: 1px solid var(--line); }
nav form { margin-left: auto; }
a { color: var(--accent); }
table { border-collapse: collapse; width: 100%; margin: .6rem 0; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--muted); font-weight: 600; }
code, pre { font: 13px ui-monospace, monospace; }
pre { white-space: pre-wrap; word-break: break-word; border: 1px solid var(--line); padding: .5rem; }
form.filters { display: flex; flex-wrap: wrap; gap: .5rem; align-items: end; }
label { display: flex; flex-direction: column; font-size: 13px; color: var(--muted); }
input, select, button { font: inherit; padding: .25rem .4rem; }
.counts { display: flex; gap: .8rem; flex-wrap: wrap; margin: .6rem 0; }
.status-errored, .status-compensation-failed, .error { color: var(--bad); }
.status-finished { color: var(--good); }
.track { position: relative; height: 12px; background: var(--line); min-width: 240px; }
.track span { position: absolute; top: 0; bottom: 0; background: var(--bar); min-width: 2px; }
.actions { display: flex; gap: 1rem; flex-wrap: wrap; margin: .8rem 0; }
.actions form { display: flex; gap: .4rem; align-items: center; }
"#;

/// Reloads the list every five seconds while the box is ticked (remembered in the browser).
const REFRESH: &str = r#"
const box = document.getElementById('auto-refresh');
box.checked = localStorage.getItem('saga-console-refresh') === 'on';
box.addEventListener('change', () => {
  localStorage.setItem('saga-console-refresh', box.checked ? 'on' : 'off');
  if (box.checked) location.reload();
});
if (box.checked) setTimeout(() => location.reload(), 5000);
"#;

/// Posts the chosen file to `/console/components` as `application/wasm` with the form token;
/// shows the host's words when it refuses.
const UPLOAD: &str = r#"
const upload = document.getElementById('upload');
upload.addEventListener('submit', async (event) => {
  event.preventDefault();
  const problem = document.getElementById('upload-problem');
  problem.textContent = 'Deploying…';
  let answer, said;
  try {
    answer = await fetch('/console/components', { method: 'POST', body: upload.component.files[0],
      headers: { 'content-type': 'application/wasm', 'x-console-csrf': upload.dataset.csrf } });
    said = JSON.parse(await answer.text());
  } catch (_) {
    said = { error: 'no answer the console understands: log in again and retry' };
  }
  if (answer && answer.ok) {
    location.assign('/console/components?deployed=' + encodeURIComponent(said.service));
  } else {
    problem.textContent = 'Not deployed: ' + said.error;
  }
});
"#;

fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · saga-host" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                nav aria-label="console" {
                    strong { "saga-host" }
                    a href="/console" { "Sagas" }
                    a href="/console/components" { "Components" }
                    a href="/console/dead-letters" { "Dead letters" }
                    form method="post" action="/console/logout" { button type="submit" { "Log out" } }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// An error page: what was wrong, with the status.
pub fn refused(status: StatusCode, message: &str) -> Response {
    let body = html! { p.error role="alert" { (message) } p { a href="/console" { "Back to the sagas" } } };
    (status, Html(page("Refused", body).into_string())).into_response()
}

pub fn login(problem: Option<&str>) -> Markup {
    page(
        "Log in",
        html! {
            @if let Some(problem) = problem { p.error role="alert" { (problem) } }
            form method="post" action="/console/login" {
                label { "Admin token" input type="password" name="token" autocomplete="current-password" required autofocus; }
                p { button type="submit" { "Log in" } }
            }
        },
    )
}

fn time(ms: i64) -> String {
    instant::format(ms)
}

fn status(status: Status) -> Markup {
    html! { span class=(format!("status-{}", status.as_str())) { (status.as_str()) } }
}

/// The saga list: filters, counts by status, one page of sagas and a link to the next.
pub fn list(
    params: &HashMap<String, String>,
    page_of: &SagaPage,
    counts: &BTreeMap<&str, i64>,
) -> Markup {
    let value = |key: &str| params.get(key).cloned().unwrap_or_default();
    let with = |key: &'static str, v: &str| {
        let mut pairs: Vec<(&str, &str)> = FILTER_PARAMS
            .iter()
            .filter(|k| **k != key)
            .filter_map(|k| params.get(*k).map(|v| (*k, v.as_str())))
            .collect();
        pairs.push((key, v));
        format!("/console?{}", query_string(pairs))
    };
    let body = html! {
        form.filters method="get" action="/console" {
            @for (key, label) in [("service", "Service"), ("name", "Definition"), ("id_prefix", "Id starts with"),
                                  ("created_from", "Created from"), ("created_to", "Created before")] {
                label { (label) input type="text" name=(key) value=(value(key)); }
            }
            label { "Status"
                select name="status" {
                    option value="" { "any" }
                    @for s in Status::ALL { option value=(s.as_str()) selected[value("status") == s.as_str()] { (s.as_str()) } }
                }
            }
            button type="submit" { "Filter" }
            label { "Auto-refresh" input id="auto-refresh" type="checkbox"; }
        }
        p.counts aria-label="counts by status" {
            @for (name, count) in counts {
                a href=(with("status", name)) { (name) ": " strong { (count) } }
            }
        }
        table {
            thead { tr { th { "Saga" } th { "Service" } th { "Definition" } th { "Status" } th { "Steps" } th { "Created" } th { "Error" } } }
            tbody {
                @for saga in &page_of.sagas {
                    @let id = saga["id"].as_str().unwrap_or_default();
                    tr {
                        td { a href=(format!("/console/sagas/{id}")) { code { (id) } } }
                        td { (saga["service"].as_str().unwrap_or_default()) }
                        td { (saga["name"].as_str().unwrap_or_default()) }
                        td { @if let Some(s) = saga["status"].as_str().and_then(Status::parse) { (status(s)) } }
                        td { (saga["steps"]) }
                        td { (saga["created_at"].as_i64().map(time).unwrap_or_default()) }
                        td.error { (saga["error"]["message"].as_str().unwrap_or_default()) }
                    }
                }
            }
        }
        @if page_of.sagas.is_empty() { p { "No saga matches." } }
        @if let Some(next) = page_of.next() { p { a rel="next" href=(with("cursor", &next)) { "Older sagas →" } } }
        script { (PreEscaped(REFRESH)) }
    };
    page("Sagas", body)
}

/// Where a span sits on a saga's time axis, as CSS.
fn span(start: i64, total: i64, from: i64, to: i64) -> String {
    let left = (from - start) as f64 * 100.0 / total as f64;
    let width = ((to - from) as f64 * 100.0 / total as f64).max(0.5);
    format!("left:{left:.2}%;width:{width:.2}%")
}

/// One saga: what it is, its steps on a time axis (to its end, or to `now` while it runs), the
/// actions, its context and history.
pub fn saga(exec: &Execution, history: &[Entry], csrf: &str, now: i64) -> Markup {
    let start = exec.created_at;
    let end = if exec.status.is_final() {
        exec.updated_at
    } else {
        now.max(exec.updated_at)
    };
    let total = (end - start).max(1);
    // Each callback's CPU time, by the step it ran for (the history's `called` entries).
    let calls: Vec<(Option<usize>, u64)> = history
        .iter()
        .filter_map(|e| match &e.event {
            Recorded::Called { step, cpu_us, .. } => Some((*step, *cpu_us)),
            _ => None,
        })
        .collect();
    let cpu_us: u64 = calls.iter().map(|(_, cpu)| cpu).sum();
    let step_cpu_us = |i: usize| -> u64 {
        calls
            .iter()
            .filter(|(step, _)| *step == Some(i))
            .map(|(_, cpu)| cpu)
            .sum()
    };
    let body = html! {
        p { (status(exec.status)) " · " (exec.service.as_str()) " / " (exec.name)
            " · created " (time(exec.created_at)) " · updated " (time(exec.updated_at))
            " · " (exec.updated_at - exec.created_at) " ms · component CPU " (cpu_us) " µs" }
        @if let Some(error) = &exec.error { p.error role="alert" { "Error " (error.status) ": " (error.message) } }
        (action_forms(exec, csrf))
        h2 { "Steps" }
        table {
            thead { tr { th { "#" } th { "Step" } th { "Topic" } th { "Status" } th { "Tries" } th { "Compensation" } th { "Callback CPU" } th { "Timeline" } } }
            tbody {
                @for (i, step) in exec.steps.iter().enumerate() {
                    @let to = step.finished_at.unwrap_or(end);
                    tr {
                        td { (i + 1) }
                        td { (step.saga) " #" (step.index + 1) }
                        td { (step.topic.as_deref().unwrap_or("-")) }
                        td { (serde_json::to_value(step.status).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()) }
                        td { (step.attempts()) }
                        td { (step.compensation.as_ref().and_then(|c| serde_json::to_value(c.status).ok()).and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| "-".into())) }
                        td.cpu { (step_cpu_us(i)) " µs" }
                        td { div.track title=(format!("{} ms", to - step.started_at)) {
                            span style=(span(start, total, step.started_at, to)) {}
                        } }
                    }
                }
            }
        }
        h2 { "Context" }
        pre { (exec.context.as_str()) }
        h2 { "History" }
        table {
            thead { tr { th { "At" } th { "Event" } th { "Detail" } } }
            tbody {
                @for entry in history {
                    @let json = serde_json::to_value(entry).unwrap_or(Value::Null);
                    tr {
                        td { (time(entry.at)) " (+" (entry.at - start) " ms)" }
                        td { (json["event"].as_str().unwrap_or_default()) }
                        td { code { (detail(&json)) } }
                    }
                }
            }
        }
    };
    page(&format!("Saga {}", exec.id), body)
}

/// A history entry's fields but its time and kind.
fn detail(entry: &Value) -> String {
    let mut rest = entry.clone();
    if let Some(fields) = rest.as_object_mut() {
        fields.remove("at");
        fields.remove("event");
    }
    rest.to_string()
}

/// The buttons of the actions that fit the saga's state, each asking for confirmation.
fn action_forms(exec: &Execution, csrf: &str) -> Markup {
    let fits: &[(&str, &str)] = match exec.status {
        Status::Created | Status::Running => &[("cancel", "Cancel")],
        Status::Paused => &[("cancel", "Cancel"), ("retry-now", "Retry now")],
        Status::Compensating => &[("retry-now", "Retry now")],
        Status::CompensationFailed => &[("retry-compensations", "Retry compensations")],
        Status::Finished | Status::Errored => &[],
    };
    html! {
        @if !fits.is_empty() {
            div.actions {
                @for (action, label) in fits {
                    form method="post" action=(format!("/console/sagas/{}/{action}", exec.id))
                        onsubmit=(format!("return confirm('{label} this saga?')")) {
                        input type="hidden" name="csrf" value=(csrf);
                        input type="text" name="reason" placeholder="reason" aria-label=(format!("reason to {action}"));
                        button type="submit" name="action" value=(action) { (label) }
                    }
                }
            }
        }
    }
}

/// The services with their versions, each current one with a remove button; an upload form
/// for a new component or version.
pub fn components(list: &[Value], deployed: Option<&str>, csrf: &str) -> Markup {
    let body = html! {
        @if let Some(name) = deployed { p role="status" { "Deployed " strong { (name) } "." } }
        form #upload data-csrf=(csrf) {
            label { "A new component, or a new version of one (.wasm)"
                input type="file" name="component" accept=".wasm,application/wasm" required; }
            button type="submit" { "Deploy" }
        }
        p.error #upload-problem aria-live="assertive" {}
        table {
            thead { tr { th { "Service" } th { "Version" } th { "Loaded" } th { "Sagas" } th { "Running sagas" } th {} } }
            tbody {
                @for component in list {
                    @let name = component["name"].as_str().unwrap_or_default();
                    @for version in component["versions"].as_array().into_iter().flatten() {
                        tr {
                            td { (name) }
                            td { code { (version["digest"].as_str().unwrap_or_default().chars().take(12).collect::<String>()) }
                                 @if version["current"] == true { " (current)" } }
                            td { (version["loaded_at"].as_i64().map(time).unwrap_or_default()) }
                            td { (component["sagas"].as_array().map(|s| s.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                            td { (version["running_sagas"]) }
                            td { @if version["current"] == true { (remove_form(name, csrf)) } }
                        }
                    }
                }
            }
        }
        script { (PreEscaped(UPLOAD)) }
    };
    page("Components", body)
}

/// Removes a service after a confirmation (the name goes to the script as data, not as code).
fn remove_form(name: &str, csrf: &str) -> Markup {
    html! {
        form method="post" action=(format!("/console/components/{}/remove", path_segment(name)))
            data-name=(name)
            onsubmit="return confirm('Remove the service ' + this.dataset.name + '? Sagas running on it finish on it.')" {
            input type="hidden" name="csrf" value=(csrf);
            button type="submit" { "Remove" }
        }
    }
}

pub fn dead_letters(list: &[Value], csrf: &str) -> Markup {
    let body = html! {
        @if list.is_empty() { p { "No dead letters." } }
        table {
            thead { tr { th { "Id" } th { "Consumer" } th { "Topic" } th { "Attempts" } th { "Failed" } th { "Last error" } th {} } }
            tbody {
                @for letter in list {
                    tr {
                        td { (letter["id"]) }
                        td { (letter["consumer"].as_str().unwrap_or_default()) }
                        td { (letter["topic"].as_str().unwrap_or_default()) }
                        td { (letter["attempts"]) }
                        td { (letter["failed_at"].as_i64().map(time).unwrap_or_default()) }
                        td.error { (letter["error"].as_str().unwrap_or_default()) }
                        td { form method="post" action=(format!("/console/dead-letters/{}/redrive", letter["id"])) {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { "Redrive" }
                        } }
                    }
                }
            }
        }
    };
    page("Dead letters", body)
}
