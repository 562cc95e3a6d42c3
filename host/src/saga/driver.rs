//! The driver of one transition: feeds an event to the state machine and performs what it
//! decides — runs the component's callbacks, sends commands (running a participant loaded here
//! within the transition), and collects every write, message and history entry into one
//! storage transaction, which the orchestrator then stores.
//!
//! A remote step whose participant is loaded in this host runs *inline*: its handler is called
//! within the transition and its reply taken at once, so that a saga of local participants
//! commits once instead of twice per step. Its effects are committed in the same transaction as
//! the saga's progress, exactly as if the command had gone through the queue; only the queue
//! round trip is saved.

use std::sync::Arc;

use saga_core::engine::{
    Action, Callback, CallbackKind, Command, Entry, ErrorInfo, Event, Execution, Machine, Rejected,
    Returned,
};
use saga_core::ids::SagaId;
use saga_core::message::SagaRef;

use tracing::Instrument;

use super::Orchestrator;
use super::record::Stored;
use crate::broker::{Message, ReplyTo};
use crate::handler;
use crate::runtime::bindings::types as wit;
use crate::runtime::{Access, CallContext, CallError, Called, Scope, ServiceVersion};
use crate::storage::{Resolve, Transaction};

/// Why a transition stopped before it could be stored.
pub(super) enum Stop {
    /// A call collided with another writer (or wants aggregates saga `holder` holds): run the
    /// transition again from the stored state.
    Collided(Option<SagaId>),
    /// An operator's request that does not fit the saga's state.
    Rejected(Rejected),
}

/// How a saga's staged writes end in this transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    Promote,
    Discard,
}

/// One transition of one execution, in memory until it is stored.
pub(super) struct Transition<'a> {
    orchestrator: &'a Orchestrator,
    pub version: Arc<ServiceVersion>,
    pub stored: Stored,
    pub tx: Transaction,
    pub history: Vec<Entry>,
    pub ending: Option<Ending>,
    /// The saga reached a final status.
    pub ended: bool,
}

/// A transition ready to store.
pub(super) struct Prepared {
    /// The execution after it, at the revision it was read at.
    pub stored: Stored,
    pub tx: Transaction,
    /// What it adds to the saga's history (also in `tx`).
    pub history: Vec<Entry>,
    /// The saga reached a final status.
    pub ended: bool,
}

/// The world the state machine asks: the clock, message ids, and which topics run inline.
struct HostEnv<'a>(&'a Orchestrator);

impl saga_core::engine::Env for HostEnv<'_> {
    fn now(&self) -> i64 {
        self.0.now()
    }

    fn message_id(&mut self) -> saga_core::ids::MessageId {
        saga_core::ids::MessageId::random()
    }

    fn inline(&self, topic: &str) -> bool {
        self.0.config.inline_steps && self.0.local_participant(topic).is_some()
    }
}

/// What the state machine would decide on `event`, performing and storing nothing: the history
/// entries of its first decision (an operator's dry run).
pub(super) fn preview(
    orchestrator: &Orchestrator,
    version: &ServiceVersion,
    exec: &Execution,
    event: Event,
) -> Result<Vec<Entry>, Rejected> {
    let mut exec = exec.clone();
    let mut env = HostEnv(orchestrator);
    Machine::new(
        &version.manifest.sagas,
        &orchestrator.config.rules,
        &mut env,
    )
    .decide(&mut exec, event)
    .map(|decision| decision.history)
}

impl<'a> Transition<'a> {
    pub fn new(
        orchestrator: &'a Orchestrator,
        version: Arc<ServiceVersion>,
        stored: Stored,
    ) -> Self {
        Transition {
            orchestrator,
            version,
            stored,
            tx: Transaction::default(),
            history: Vec::new(),
            ending: None,
            ended: false,
        }
    }

    /// Whether the transition changed nothing worth storing.
    pub fn is_idle(&self) -> bool {
        self.history.is_empty() && self.tx.is_empty()
    }

    /// Applies `event`, and the events its own actions produce, until the machine waits for
    /// something outside this transition.
    pub async fn apply(&mut self, event: Event) -> Result<(), Stop> {
        let mut next = Some(event);
        while let Some(event) = next.take() {
            let definitions = &self.version.manifest.sagas;
            let rules = &self.orchestrator.config.rules;
            let mut env = HostEnv(self.orchestrator);
            let decision = Machine::new(definitions, rules, &mut env)
                .decide(&mut self.stored.exec, event)
                .map_err(Stop::Rejected)?;
            self.history.extend(decision.history);
            for action in decision.actions {
                match action {
                    Action::Call(callback) => next = Some(self.call(callback).await?),
                    Action::Send(command) => {
                        let span = tracing::debug_span!(
                            "step",
                            topic = command.topic,
                            message_id = %command.message_id,
                            target = ?command.target,
                            attempt = command.attempt,
                            inline = command.inline,
                        );
                        next = self.send(command).instrument(span).await?
                    }
                    Action::Promote => self.ending = Some(Ending::Promote),
                    Action::Discard => self.ending = Some(Ending::Discard),
                    Action::Ended => self.ended = true,
                }
            }
        }
        Ok(())
    }

    /// A call's context within this transition: staged under the saga, seeing what the
    /// transition wrote before it.
    fn call_context(&self, service: Arc<ServiceVersion>, access: Access) -> CallContext {
        let exec = &self.stored.exec;
        let mut context = CallContext::new(
            service,
            self.orchestrator.env(),
            Scope::Saga(exec.id),
            access,
        );
        context.who.user = exec.user.clone();
        context.effects.prior = self.tx.writes.clone();
        context
    }

    async fn call(&mut self, callback: Callback) -> Result<Event, Stop> {
        if let Some(probe) = self.orchestrator.probe()
            && let Err(error) = probe.callback(&self.stored.exec, &callback)
        {
            return Ok(Event::Called {
                outcome: Err(error),
                cost: Default::default(),
            });
        }
        let runtime = &self.orchestrator.runtime;
        let version = &self.version;
        let context = self.call_context(version.clone(), Access::ReadWrite);
        let saga_context = self.stored.exec.context.as_str().to_string();
        let (saga, name) = (callback.saga.as_str(), callback.name.as_str());
        let (result, context) = match callback.kind {
            CallbackKind::Prepare => {
                let (result, context) = runtime
                    .prepare(version, context, saga, name, saga_context)
                    .await;
                let result = result.map(|r| {
                    r.map(|request| Returned::Request {
                        target: request.target,
                        payload: request.payload,
                    })
                });
                (result, context)
            }
            CallbackKind::OnReply => {
                let (status, payload) = callback.reply.clone().unwrap_or((200, "null".into()));
                let reply = wit::Reply { status, payload };
                let (result, context) = runtime
                    .on_reply(version, context, saga, name, saga_context, reply)
                    .await;
                (result.map(|r| r.map(Returned::Context)), context)
            }
            CallbackKind::Execute => {
                let (result, context) = runtime
                    .execute(version, context, saga, name, saga_context)
                    .await;
                (result.map(|r| r.map(Returned::Context)), context)
            }
            CallbackKind::Condition => {
                let (result, context) = runtime
                    .condition(version, context, saga, name, saga_context)
                    .await;
                (result.map(|r| r.map(Returned::Decision)), context)
            }
        };
        let cost = context.cost;
        let outcome = self.absorb((result, context))?;
        Ok(Event::Called { outcome, cost })
    }

    /// A call's result; on success its writes and messages join the transaction.
    fn absorb<T>(
        &mut self,
        called: Called<Result<T, wit::Error>>,
    ) -> Result<Result<T, ErrorInfo>, Stop> {
        let (result, context) = called;
        Ok(match result {
            Ok(Ok(value)) => {
                self.tx.writes.extend(context.effects.writes);
                self.tx.messages.extend(context.effects.messages);
                Ok(value)
            }
            Ok(Err(error)) => Err(ErrorInfo::new(
                if (400..=599).contains(&error.status) {
                    error.status
                } else {
                    500
                },
                error.message,
            )),
            Err(CallError::Raced { holder, .. }) => return Err(Stop::Collided(holder)),
            Err(error) => Err(ErrorInfo::new(500, error.to_string())),
        })
    }

    /// Sends a command: inline when the machine said so and its participant is still here (its
    /// reply is the next event), through the queue otherwise.
    async fn send(&mut self, command: Command) -> Result<Option<Event>, Stop> {
        let exec = &self.stored.exec;
        let headers = exec
            .user
            .iter()
            .map(|user| ("user".to_string(), user.clone()))
            .collect();
        let reply_to = Some(ReplyTo::Saga {
            service: exec.service.to_string(),
        });
        let mut message = Message::command(
            &command.topic,
            command.payload.as_str().to_string(),
            headers,
            reply_to,
        );
        message.id = command.message_id;
        message.saga = Some(SagaRef {
            id: exec.id,
            target: Some(command.target),
            attempt: command.attempt,
        });
        if command.inline
            && let Some(participant) = self.orchestrator.local_participant(&command.topic)
            && let Some((request, _, access)) = handler::request_for(&participant, &message)
        {
            let mut context = self.call_context(participant.clone(), access);
            context.who.message_id = Some(message.id);
            let (result, called) = self
                .orchestrator
                .runtime
                .handle(&participant, context, request)
                .await;
            if let Err(CallError::Raced { holder, .. }) = &result {
                return Err(Stop::Collided(*holder));
            }
            if matches!(result, Ok(Ok(_))) {
                self.tx.writes.extend(called.effects.writes);
                self.tx.messages.extend(called.effects.messages);
            }
            // No consumed record: a fresh message handled inline is answered at once, so no
            // copy of it is ever queued (only a missing reply makes the same id go out again,
            // and that copy goes through the queue).
            let (status, payload) = handler::reply_of(&result);
            return Ok(Some(Event::Replied {
                target: command.target,
                message_id: command.message_id,
                status,
                payload,
            }));
        }
        match self.orchestrator.broker.address_command(&message, None) {
            Ok(addressed) => {
                self.tx.messages.push(addressed);
                Ok(None)
            }
            Err(error) => Ok(Some(Event::Undeliverable {
                target: command.target,
                error: ErrorInfo::new(500, error.to_string()),
            })),
        }
    }

    /// The storage transaction of this transition: the saga's row and history, and its writes
    /// — staged under the saga, promoted or discarded as it ends.
    pub fn into_transaction(self, owner: &str) -> Prepared {
        let orchestrator_now = self.orchestrator.now();
        let Transition {
            mut stored,
            mut tx,
            history,
            ending,
            ended,
            ..
        } = self;
        let id = stored.exec.id;
        let first = stored.revision == 0;
        match ending {
            // A saga that ends in its first transition staged nothing before: what it wrote
            // commits directly, or vanishes, without ever being staged.
            Some(Ending::Promote) if first => {
                for write in &mut tx.writes {
                    if write.staged_under == Some(id) {
                        write.staged_under = None;
                    }
                }
                for message in &mut tx.messages {
                    if message.staged_under == Some(id) {
                        message.staged_under = None;
                    }
                }
            }
            Some(Ending::Promote) => tx.resolve = Some(Resolve::Promote(id)),
            Some(Ending::Discard) => {
                tx.writes.retain(|w| w.staged_under != Some(id));
                tx.messages.retain(|m| m.staged_under != Some(id));
                if !first {
                    tx.resolve = Some(Resolve::Discard(id));
                }
            }
            None => {}
        }
        stored.exec.updated_at = orchestrator_now.max(stored.exec.updated_at);
        tx.saga = Some(stored.to_row(owner, &history));
        Prepared {
            stored,
            tx,
            history,
            ended,
        }
    }
}
