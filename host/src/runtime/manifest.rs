//! What a component says about itself (`service.describe`), checked and indexed: its handlers and
//! their triggers, its aggregate types, and its saga definitions.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::bindings::types as wit;
use crate::storage::condition::FieldPath;
use saga_core::definition::{self, Invocation, Operation, SagaDefinition};
use saga_core::message::valid_topic;

/// Path prefixes that belong to the host's own API.
pub const RESERVED_PATHS: [&str; 3] = ["/admin", "/sagas", "/health"];

/// A component's self-description, checked: its name, handlers, aggregate types and sagas.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub name: String,
    pub handlers: Vec<Handler>,
    pub aggregates: HashMap<String, AggregateType>,
    pub sagas: HashMap<String, Arc<SagaDefinition>>,
}

/// A handler a component exports, and the triggers that reach it.
#[derive(Debug, Clone)]
pub struct Handler {
    pub name: String,
    pub triggers: Vec<wit::Trigger>,
}

/// An aggregate type a service stores, with the fields it indexes.
#[derive(Debug, Clone)]
pub struct AggregateType {
    pub name: String,
    pub indexes: Vec<FieldPath>,
}

/// What is wrong with a manifest, in words a service author can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ManifestError(pub String);

impl Manifest {
    /// Checks a described manifest. `orchestrates` tells whether the component exports the saga
    /// callbacks (the `orchestrator` world), which declaring sagas requires.
    pub fn from_wit(
        manifest: wit::Manifest,
        orchestrates: bool,
    ) -> Result<Manifest, ManifestError> {
        let fail = |problem: String| Err(ManifestError(problem));
        if !valid_service_name(&manifest.name) {
            return fail(format!(
                "the service name {:?} is invalid: use 1 to 64 letters, digits, '-' or '_'",
                manifest.name
            ));
        }
        let mut handler_names = HashSet::new();
        let mut seen_triggers = HashSet::new();
        for handler in &manifest.handlers {
            if handler.name.is_empty() || handler.name.len() > 128 {
                return fail(format!(
                    "handler name {:?} must be 1 to 128 characters",
                    handler.name
                ));
            }
            if !handler_names.insert(handler.name.as_str()) {
                return fail(format!("two handlers are named {:?}", handler.name));
            }
            if handler.triggers.is_empty() {
                return fail(format!(
                    "handler {:?} has no trigger, so nothing can reach it",
                    handler.name
                ));
            }
            for trigger in &handler.triggers {
                check_trigger(trigger)
                    .map_err(|p| ManifestError(format!("handler {:?}: {p}", handler.name)))?;
                if !seen_triggers.insert(trigger_key(trigger)) {
                    return fail(format!("{} is declared twice", describe_trigger(trigger)));
                }
            }
        }
        let mut aggregates = HashMap::new();
        for aggregate in manifest.aggregates {
            if !valid_aggregate_name(&aggregate.name) {
                return fail(format!(
                    "aggregate type name {:?} is invalid: use a letter followed by up to 63 letters, digits or '_'",
                    aggregate.name
                ));
            }
            let indexes = aggregate
                .indexes
                .iter()
                .map(|field| FieldPath::parse(field))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ManifestError(format!("aggregate {}: {e}", aggregate.name)))?;
            let name = aggregate.name.clone();
            if aggregates
                .insert(name.clone(), AggregateType { name, indexes })
                .is_some()
            {
                return fail(format!(
                    "aggregate type {:?} is declared twice",
                    aggregate.name
                ));
            }
        }
        if !manifest.sagas.is_empty() && !orchestrates {
            return fail(
                "the service declares sagas but does not export saga-callbacks; build it for the `orchestrator` world"
                    .into(),
            );
        }
        let definitions = manifest
            .sagas
            .into_iter()
            .map(|saga| {
                let operations: Vec<Operation> = saga
                    .operations
                    .into_iter()
                    .map(operation_from_wit)
                    .collect();
                SagaDefinition::parse(
                    &saga.name,
                    &operations,
                    saga.step_timeout_ms.map(std::time::Duration::from_millis),
                    saga.timeout_ms.map(std::time::Duration::from_millis),
                )
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ManifestError(e.to_string()))?;
        definition::check_references(&definitions).map_err(|e| ManifestError(e.to_string()))?;
        Ok(Manifest {
            name: manifest.name,
            handlers: manifest
                .handlers
                .into_iter()
                .map(|h| Handler {
                    name: h.name,
                    triggers: h.triggers,
                })
                .collect(),
            aggregates,
            sagas: definitions
                .into_iter()
                .map(|d| (d.name.clone(), Arc::new(d)))
                .collect(),
        })
    }
}

fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn valid_aggregate_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_trigger(trigger: &wit::Trigger) -> Result<(), String> {
    match trigger {
        wit::Trigger::BrokerCommand(topic)
        | wit::Trigger::BrokerQuery(topic)
        | wit::Trigger::BrokerEvent(topic) => {
            if valid_topic(topic) {
                Ok(())
            } else {
                Err(format!(
                    "topic {topic:?} is invalid: use 1 to 128 letters, digits, '_', '-' or '.'"
                ))
            }
        }
        wit::Trigger::RestCommand(route) | wit::Trigger::RestQuery(route) => {
            check_path(&route.path)
        }
    }
}

/// A REST path: "/" then segments that are literal or `{param}`.
fn check_path(path: &str) -> Result<(), String> {
    let bad = |problem: &str| Err(format!("REST path {path:?} is invalid: {problem}"));
    if !path.starts_with('/') {
        return bad("it must start with '/'");
    }
    if path.len() > 512 {
        return bad("it is longer than 512 characters");
    }
    for reserved in RESERVED_PATHS {
        if path == reserved || path.starts_with(&format!("{reserved}/")) {
            return bad(&format!("{reserved} belongs to the host"));
        }
    }
    if path == "/" {
        return Ok(());
    }
    let mut params = HashSet::new();
    for segment in path[1..].split('/') {
        if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let mut chars = name.chars();
            let valid = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return bad(&format!(
                    "parameter {{{name}}} must be a name of letters, digits and '_'"
                ));
            }
            if !params.insert(name) {
                return bad(&format!("parameter {{{name}}} appears twice"));
            }
        } else if segment.is_empty() {
            return bad("it has an empty segment ('//' or a trailing '/')");
        } else if !segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'))
        {
            return bad(&format!(
                "segment {segment:?} may only contain letters, digits, '-', '_', '.', '~', or be a {{param}}"
            ));
        }
    }
    Ok(())
}

fn trigger_key(trigger: &wit::Trigger) -> String {
    match trigger {
        wit::Trigger::BrokerCommand(t) | wit::Trigger::BrokerQuery(t) => format!("topic {t}"),
        wit::Trigger::BrokerEvent(t) => format!("event {t}"),
        wit::Trigger::RestCommand(r) | wit::Trigger::RestQuery(r) => {
            format!("{:?} {}", r.method, r.path)
        }
    }
}

/// A trigger in words, for error messages and logs.
pub fn describe_trigger(trigger: &wit::Trigger) -> String {
    match trigger {
        wit::Trigger::BrokerCommand(t) => format!("broker command {t:?}"),
        wit::Trigger::BrokerQuery(t) => format!("broker query {t:?}"),
        wit::Trigger::BrokerEvent(t) => format!("event {t:?}"),
        wit::Trigger::RestCommand(r) | wit::Trigger::RestQuery(r) => {
            format!("route {} {}", method_name(r.method), r.path)
        }
    }
}

pub fn method_name(method: wit::HttpMethod) -> &'static str {
    match method {
        wit::HttpMethod::Get => "GET",
        wit::HttpMethod::Post => "POST",
        wit::HttpMethod::Put => "PUT",
        wit::HttpMethod::Patch => "PATCH",
        wit::HttpMethod::Delete => "DELETE",
    }
}

fn invocation_from_wit(invocation: wit::Invocation) -> Invocation {
    Invocation {
        topic: Some(invocation.topic),
        prepare: invocation.prepare,
    }
}

fn operation_from_wit(operation: wit::SagaOperation) -> Operation {
    use wit::SagaOperation as W;
    match operation {
        W::Step => Operation::Step,
        W::RemoteStep => Operation::RemoteStep,
        W::LocalStep => Operation::LocalStep,
        W::ConditionalStep => Operation::ConditionalStep,
        W::InvokeParticipant(i) => Operation::InvokeParticipant(invocation_from_wit(i)),
        W::OnReply(c) => Operation::OnReply(c),
        W::OnSuccess(c) => Operation::OnSuccess(c),
        W::OnError(c) => Operation::OnError(c),
        W::WithCompensation(i) => Operation::WithCompensation(invocation_from_wit(i)),
        W::OnExecute(c) => Operation::OnExecute(c),
        W::OnFailure(c) => Operation::OnFailure(c),
        W::IfThen(b) => Operation::IfThen {
            condition: b.condition,
            saga: b.saga,
        },
        W::ElseThen(s) => Operation::ElseThen(s),
        W::Commit(c) => Operation::Commit(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(handlers: Vec<wit::Handler>) -> wit::Manifest {
        wit::Manifest {
            name: "exam".into(),
            handlers,
            aggregates: vec![],
            sagas: vec![],
        }
    }

    fn rest(method: wit::HttpMethod, path: &str) -> wit::Trigger {
        wit::Trigger::RestCommand(wit::RestRoute {
            method,
            path: path.into(),
        })
    }

    fn handler(name: &str, triggers: Vec<wit::Trigger>) -> wit::Handler {
        wit::Handler {
            name: name.into(),
            triggers,
        }
    }

    fn error_of(m: wit::Manifest) -> String {
        Manifest::from_wit(m, true).unwrap_err().0
    }

    #[test]
    fn paths_and_topics_are_checked() {
        assert!(
            Manifest::from_wit(
                manifest(vec![handler(
                    "h",
                    vec![rest(wit::HttpMethod::Post, "/exams/{uuid}")]
                )]),
                false
            )
            .is_ok()
        );
        for (path, expected) in [
            ("exams", "must start with '/'"),
            ("/admin/x", "belongs to the host"),
            ("/health", "belongs to the host"),
            ("/a//b", "empty segment"),
            ("/a/{1x}", "parameter"),
            ("/a/{x}/{x}", "appears twice"),
            ("/a b", "may only contain"),
        ] {
            let text = error_of(manifest(vec![handler(
                "h",
                vec![rest(wit::HttpMethod::Get, path)],
            )]));
            assert!(text.contains(expected), "{path}: {text}");
        }
        let text = error_of(manifest(vec![handler(
            "h",
            vec![wit::Trigger::BrokerCommand("Get User".into())],
        )]));
        assert!(text.contains("topic \"Get User\" is invalid"), "{text}");
    }

    #[test]
    fn duplicates_and_empty_handlers_are_refused() {
        let twice = manifest(vec![
            handler("a", vec![wit::Trigger::BrokerCommand("X".into())]),
            handler("b", vec![wit::Trigger::BrokerCommand("X".into())]),
        ]);
        assert!(error_of(twice).contains("declared twice"));
        assert!(error_of(manifest(vec![handler("a", vec![])])).contains("no trigger"));
        let same_name = manifest(vec![
            handler("a", vec![wit::Trigger::BrokerCommand("X".into())]),
            handler("a", vec![wit::Trigger::BrokerCommand("Y".into())]),
        ]);
        assert!(error_of(same_name).contains("two handlers"));
    }

    #[test]
    fn sagas_need_the_orchestrator_world() {
        let mut m = manifest(vec![]);
        m.sagas.push(wit::SagaDefinition {
            name: "S".into(),
            operations: vec![
                wit::SagaOperation::Step,
                wit::SagaOperation::InvokeParticipant(wit::Invocation {
                    topic: "T".into(),
                    prepare: None,
                }),
                wit::SagaOperation::Commit(None),
            ],
            step_timeout_ms: None,
            timeout_ms: None,
        });
        let err = Manifest::from_wit(m.clone(), false).unwrap_err().0;
        assert!(err.contains("orchestrator"), "{err}");
        assert!(Manifest::from_wit(m, true).is_ok());
    }
}
