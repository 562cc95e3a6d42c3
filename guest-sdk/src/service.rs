//! A service: its name, handlers and the triggers that reach them, aggregates and sagas. Build
//! one in a function and export it with [`crate::export_participant!`], or with
//! [`crate::export_orchestrator!`] once it has sagas.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use crate::bindings::saga::host::types;
use crate::saga::Callback;
use crate::{Aggregate, Error, Reply, Request, Response, Result, Saga, SagaContext};

type HandlerFn = Box<dyn Fn(Request) -> Result<Response>>;

struct Handler {
    trigger: types::Trigger,
    function: HandlerFn,
}

/// A service that orchestrates no saga: [`crate::export_participant!`] builds it for the WIT
/// world `participant`, which neither imports `sagas` nor exports `saga-callbacks`.
pub enum Participant {}

/// A service with sagas of its own ([`Service::saga`] makes one): [`crate::export_orchestrator!`]
/// builds it for the WIT world `orchestrator`, which runs sagas and exports their callbacks.
pub enum Orchestrator {}

/// A service definition: a `Service` (a participant) until [`Service::saga`] registers a saga,
/// a `Service<Orchestrator>` from then on. The world is in the type so that exporting a service
/// with the wrong macro is a type error, not a component the host refuses when it loads.
pub struct Service<World = Participant> {
    name: String,
    handlers: Vec<(String, Handler)>,
    aggregates: Vec<types::AggregateType>,
    sagas: BTreeMap<String, Saga>,
    world: PhantomData<World>,
}

impl Service {
    /// A service named `name` ("exam"): letters, digits, '-' and '_'.
    pub fn new(name: &str) -> Self {
        Service {
            name: name.to_string(),
            handlers: Vec::new(),
            aggregates: Vec::new(),
            sagas: BTreeMap::new(),
            world: PhantomData,
        }
    }
}

impl<World> Service<World> {
    fn handler(
        mut self,
        name: String,
        trigger: types::Trigger,
        function: impl Fn(Request) -> Result<Response> + 'static,
    ) -> Self {
        self.handlers.push((
            name,
            Handler {
                trigger,
                function: Box::new(function),
            },
        ));
        self
    }

    /// An HTTP route that may write, e.g. `rest_command(Method::Post, "/exams", submit_exam)`.
    pub fn rest_command(
        self,
        method: Method,
        path: &str,
        handler: impl Fn(Request) -> Result<Response> + 'static,
    ) -> Self {
        self.handler(
            [method.as_str(), " ", path].concat(),
            types::Trigger::RestCommand(rest_route(method, path)),
            handler,
        )
    }

    /// An HTTP route that only reads, e.g. `rest_query(Method::Get, "/exams/{uuid}", get_exam)`.
    pub fn rest_query(
        self,
        method: Method,
        path: &str,
        handler: impl Fn(Request) -> Result<Response> + 'static,
    ) -> Self {
        self.handler(
            [method.as_str(), " ", path].concat(),
            types::Trigger::RestQuery(rest_route(method, path)),
            handler,
        )
    }

    /// A broker command, e.g. `broker_command("GetUserAttempts", get_user_attempts)`.
    pub fn broker_command(
        self,
        topic: &str,
        handler: impl Fn(Request) -> Result<Response> + 'static,
    ) -> Self {
        self.handler(
            ["command ", topic].concat(),
            types::Trigger::BrokerCommand(topic.to_string()),
            handler,
        )
    }

    /// A broker query: like a command, but it may not write.
    pub fn broker_query(
        self,
        topic: &str,
        handler: impl Fn(Request) -> Result<Response> + 'static,
    ) -> Self {
        self.handler(
            ["query ", topic].concat(),
            types::Trigger::BrokerQuery(topic.to_string()),
            handler,
        )
    }

    /// A domain event, e.g. `broker_event("ExamCreated", count_exam)`.
    pub fn broker_event(
        self,
        topic: &str,
        handler: impl Fn(Request) -> Result<Response> + 'static,
    ) -> Self {
        self.handler(
            ["event ", topic].concat(),
            types::Trigger::BrokerEvent(topic.to_string()),
            handler,
        )
    }

    /// Declares an aggregate type the service stores.
    pub fn aggregate<A: Aggregate>(mut self) -> Self {
        self.aggregates.push(types::AggregateType {
            name: A::NAME.to_string(),
            indexes: A::INDEXES.iter().map(|s| s.to_string()).collect(),
        });
        self
    }

    /// Registers a saga under the name `SagaManager::run` starts it by; the service becomes an
    /// orchestrator.
    pub fn saga(self, name: &str, saga: Saga) -> Service<Orchestrator> {
        let mut sagas = self.sagas;
        sagas.insert(name.to_string(), saga);
        Service {
            name: self.name,
            handlers: self.handlers,
            aggregates: self.aggregates,
            sagas,
            world: PhantomData,
        }
    }
}

impl Service<Orchestrator> {
    fn saga_callback(&self, saga: &str, callback: &str) -> Result<&Callback> {
        self.sagas
            .get(saga)
            .ok_or_else(|| Error::system(format!("service {} has no saga {saga:?}", self.name)))?
            .callback(callback)
            .ok_or_else(|| Error::system(format!("saga {saga} has no callback {callback:?}")))
    }
}

/// The HTTP methods a REST route may use: the WIT's `http-method`. An enum rather than text so
/// that a misspelt method is a compile error, not a component that fails when it loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    /// The method as HTTP spells it ("POST"); it starts the handler's name ("POST /exams").
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn rest_route(method: Method, path: &str) -> types::RestRoute {
    types::RestRoute {
        method: match method {
            Method::Get => types::HttpMethod::Get,
            Method::Post => types::HttpMethod::Post,
            Method::Put => types::HttpMethod::Put,
            Method::Patch => types::HttpMethod::Patch,
            Method::Delete => types::HttpMethod::Delete,
        },
        path: path.to_string(),
    }
}

/// What the export macros' glue calls; not for service code.
#[doc(hidden)]
pub mod dispatch {
    use super::*;
    use std::time::Duration;

    fn millis(duration: Option<Duration>) -> Option<u64> {
        duration.map(|d| d.as_millis().min(u64::MAX as u128) as u64)
    }

    pub fn describe<World>(service: &Service<World>) -> types::Manifest {
        types::Manifest {
            name: service.name.clone(),
            handlers: service
                .handlers
                .iter()
                .map(|(name, handler)| types::Handler {
                    name: name.clone(),
                    triggers: vec![handler.trigger.clone()],
                })
                .collect(),
            aggregates: service.aggregates.clone(),
            sagas: service
                .sagas
                .iter()
                .map(|(name, saga)| types::SagaDefinition {
                    name: name.clone(),
                    operations: saga.operations.clone(),
                    step_timeout_ms: millis(saga.step_timeout),
                    timeout_ms: millis(saga.timeout),
                })
                .collect(),
        }
    }

    pub fn handle<World>(
        service: &Service<World>,
        request: types::Request,
    ) -> Result<types::Response, types::Error> {
        let Some((_, handler)) = service
            .handlers
            .iter()
            .find(|(name, _)| *name == request.handler)
        else {
            return Err(Error::system(format!(
                "service {} has no handler {:?}",
                service.name, request.handler
            ))
            .into());
        };
        (handler.function)(Request::new(request))
            .map(|response| types::Response {
                status: response.status,
                payload: response.payload,
            })
            .map_err(Into::into)
    }

    pub fn prepare(
        service: &Service<Orchestrator>,
        saga: &str,
        callback: &str,
        context: &str,
    ) -> Result<types::SagaRequest, types::Error> {
        let run = || -> Result<types::SagaRequest> {
            match service.saga_callback(saga, callback)? {
                Callback::Prepare(prepare) => Ok(types::SagaRequest {
                    target: None,
                    payload: serde_json::to_string(&prepare(&SagaContext::parse(context)?)?)?,
                }),
                _ => Err(Error::system(format!(
                    "{saga}.{callback} does not build a payload"
                ))),
            }
        };
        run().map_err(Into::into)
    }

    pub fn on_reply(
        service: &Service<Orchestrator>,
        saga: &str,
        callback: &str,
        context: &str,
        reply: types::Reply,
    ) -> Result<String, types::Error> {
        let run = || -> Result<String> {
            match service.saga_callback(saga, callback)? {
                Callback::Reply(on_reply) => {
                    let reply = Reply {
                        status: reply.status,
                        payload: reply.payload,
                    };
                    Ok(on_reply(SagaContext::parse(context)?, reply)?.to_json())
                }
                _ => Err(Error::system(format!(
                    "{saga}.{callback} does not take a reply"
                ))),
            }
        };
        run().map_err(Into::into)
    }

    pub fn execute(
        service: &Service<Orchestrator>,
        saga: &str,
        callback: &str,
        context: &str,
    ) -> Result<String, types::Error> {
        let run = || -> Result<String> {
            match service.saga_callback(saga, callback)? {
                Callback::Execute(execute) => Ok(execute(SagaContext::parse(context)?)?.to_json()),
                _ => Err(Error::system(format!(
                    "{saga}.{callback} is not a local step or commit"
                ))),
            }
        };
        run().map_err(Into::into)
    }

    pub fn condition(
        service: &Service<Orchestrator>,
        saga: &str,
        callback: &str,
        context: &str,
    ) -> Result<bool, types::Error> {
        let run = || -> Result<bool> {
            match service.saga_callback(saga, callback)? {
                Callback::Condition(condition) => condition(&SagaContext::parse(context)?),
                _ => Err(Error::system(format!(
                    "{saga}.{callback} is not a condition"
                ))),
            }
        };
        run().map_err(Into::into)
    }
}
