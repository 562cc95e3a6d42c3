//! Runs one handler call as one transaction: a fresh instance handles the request; if it
//! succeeds its writes and messages commit together with the acknowledgement of the message it
//! handled and the reply to it; if it fails nothing of it is kept. A call whose writes collide
//! with another writer's (or with aggregates a running saga holds) is run again once the other
//! is done, so concurrent requests serialise on the aggregates they share.

use std::sync::Arc;
use std::time::{Duration, Instant};

use saga_core::ids::SagaId;

use crate::broker::{Broker, Kind, Message};
use crate::ends::SagaEnds;
use crate::runtime::bindings::types as wit;
use crate::runtime::{Access, CallContext, CallEnv, CallError, Runtime, Scope, ServiceVersion};
use crate::storage::{Consumed, StorageError, Transaction};
use crate::telemetry::metrics;

/// Runs handler calls of every service, each as one transaction (see the module).
pub struct Handlers {
    runtime: Arc<Runtime>,
    broker: Broker,
    env: Arc<CallEnv>,
    ends: SagaEnds,
    lock_wait: Duration,
}

/// A handler call to make.
pub struct Invocation {
    pub service: Arc<ServiceVersion>,
    pub request: wit::Request,
    pub scope: Scope,
    pub access: Access,
    pub user: Option<String>,
    /// The queued message being handled: consumed (once), and answered if it asks for a reply.
    pub message: Option<(Option<i64>, Message)>,
}

/// How a handler call ended.
pub enum Handled {
    /// The handler answered; when it succeeded, its effects are committed. The message it
    /// handled is consumed unless the answer is a system error (5xx) nobody gets a reply to.
    Answered(Result<wit::Response, wit::Error>),
    /// The component failed (a trap or a broken limit); nothing it did is kept. A message that
    /// asked for a reply got a SYSTEM_ERROR reply; any other stays queued.
    Failed(CallError),
    /// The message was handled before; this delivery changed nothing.
    Duplicate,
}

/// Why a handler call could not be made or stored at all.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error("the aggregates this request writes stayed held by running sagas for {0} s; try again")]
    Blocked(u64),
    #[error("storage failed: {0}")]
    Storage(StorageError),
}

/// How a broker message reaches a service: the handler's request, the scope its writes take
/// (a saga step's command stages them under the saga), and what it may do. None when the
/// service has no handler for the message.
pub fn request_for(
    service: &ServiceVersion,
    message: &Message,
) -> Option<(wit::Request, Scope, Access)> {
    let (handler, trigger) = service.handler_for(message.kind, &message.topic)?;
    // A saga's own command (a step's or a compensation's) works within the saga: its writes
    // are staged under it, and vanish if it fails. Anything else a saga sent arrives only once
    // the saga finished, and commits directly.
    let scope = match message.saga {
        Some(saga) if saga.target.is_some() && message.kind != Kind::Event => Scope::Saga(saga.id),
        _ => Scope::Direct,
    };
    let access = if matches!(trigger, wit::Trigger::BrokerQuery(_)) {
        Access::ReadOnly
    } else {
        Access::ReadWrite
    };
    let request = wit::Request {
        handler: handler.to_string(),
        trigger: trigger.clone(),
        payload: message.payload.clone(),
        params: Vec::new(),
        query: Vec::new(),
        headers: message
            .visible_headers()
            .into_iter()
            .map(|(name, value)| wit::Header { name, value })
            .collect(),
        user: message.header("user").map(str::to_string),
    };
    Some((request, scope, access))
}

/// The reply a handler's outcome makes: its status and payload (an error's payload is the
/// JSON string of its message).
pub fn reply_of(result: &Result<Result<wit::Response, wit::Error>, CallError>) -> (u16, String) {
    match result {
        Ok(Ok(response)) => (response.status, response.payload.clone()),
        Ok(Err(error)) => (error.status, json_string(&error.message)),
        Err(error) => (500, json_string(&error.to_string())),
    }
}

impl Handlers {
    pub fn new(
        runtime: Arc<Runtime>,
        broker: Broker,
        env: Arc<CallEnv>,
        ends: SagaEnds,
        lock_wait: Duration,
    ) -> Self {
        Handlers {
            runtime,
            broker,
            env,
            ends,
            lock_wait,
        }
    }

    #[tracing::instrument(
        level = "debug",
        name = "handler",
        skip_all,
        fields(
            service = invocation.service.name(),
            handler = invocation.request.handler,
            message_id = invocation.message.as_ref().map(|(_, m)| tracing::field::display(m.id)),
        )
    )]
    pub async fn run(&self, invocation: Invocation) -> Result<Handled, HandleError> {
        let given_up = Instant::now() + self.lock_wait;
        loop {
            let mut context = CallContext::new(
                invocation.service.clone(),
                Some(self.env.clone()),
                invocation.scope.clone(),
                invocation.access,
            );
            context.who.user = invocation.user.clone();
            context.who.message_id = invocation.message.as_ref().map(|(_, m)| m.id);
            // At most `concurrency` calls of one service at once: a flood of one service's
            // requests or messages waits here instead of taking every instance.
            context.permit = invocation.service.calls.clone().acquire_owned().await.ok();
            let (result, context) = self
                .runtime
                .handle(&invocation.service, context, invocation.request.clone())
                .await;
            if let Err(CallError::Raced { holder, .. }) = &result {
                drop(context);
                self.wait_to_retry(*holder, given_up).await?;
                continue;
            }
            // A failure nobody is told about (no reply requested) must not consume the message:
            // leave it queued, so that it is delivered again.
            let answered =
                matches!(&result, Ok(Ok(_))) || matches!(&result, Ok(Err(e)) if e.status < 500);
            let reply_requested = invocation
                .message
                .as_ref()
                .is_some_and(|(_, m)| m.reply_to.is_some());
            if !answered && !reply_requested {
                return Ok(match result {
                    Ok(answer) => Handled::Answered(answer),
                    Err(error) => Handled::Failed(error),
                });
            }
            let mut tx = Transaction::default();
            if matches!(&result, Ok(Ok(_))) {
                tx.writes = context.effects.writes;
                tx.messages = context.effects.messages;
            }
            if let Some((queued, message)) = &invocation.message {
                tx.ack = *queued;
                let (status, payload) = reply_of(&result);
                let reply = self.broker.address_reply(message, status, payload);
                tx.consumed.push(Consumed {
                    consumer: invocation.service.name().to_string(),
                    message_id: message.id.to_string(),
                    reply: reply.clone(),
                });
                tx.messages.extend(reply);
            }
            match self.broker.commit(tx).await {
                Ok(()) => {
                    return Ok(match result {
                        Ok(answer) => Handled::Answered(answer),
                        Err(error) => Handled::Failed(error),
                    });
                }
                Err(StorageError::Duplicate(_)) => {
                    // Consumed before: settle this copy, change nothing else.
                    if let Some((queued, message)) = &invocation.message {
                        self.broker
                            .settle_duplicate(
                                *queued,
                                invocation.service.name(),
                                &message.id.to_string(),
                            )
                            .await;
                    }
                    return Ok(Handled::Duplicate);
                }
                Err(StorageError::Conflict { holder, .. }) => {
                    let holder = holder.and_then(|h| h.parse().ok());
                    self.wait_to_retry(holder, given_up).await?
                }
                Err(error) => return Err(HandleError::Storage(error)),
            }
        }
    }

    /// Waits before running a call again after it collided with another writer: until the saga
    /// holding what it wants ends, or briefly. Gives up at `given_up`.
    async fn wait_to_retry(
        &self,
        holder: Option<SagaId>,
        given_up: Instant,
    ) -> Result<(), HandleError> {
        if Instant::now() >= given_up {
            return Err(HandleError::Blocked(self.lock_wait.as_secs()));
        }
        metrics::rerun("handler", holder.is_some());
        match holder {
            Some(saga) => self.ends.wait(saga, Duration::from_millis(100)).await,
            None => tokio::task::yield_now().await,
        }
        Ok(())
    }
}

fn json_string(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}
