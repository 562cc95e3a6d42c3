//! Runs one handler call as one transaction: a fresh instance handles the request; if it
//! succeeds its writes and messages commit together with the acknowledgement of the message it
//! handled and the reply to it; if it fails nothing of it is kept. A call whose writes collide
//! with another writer's (or with aggregates a running saga holds) is run again once the other
//! is done, so concurrent requests serialise on the aggregates they share.
//!
//! A request with an idempotency key (`run_keyed`) first claims the key in a transaction of its
//! own, so that a repeat sent meanwhile waits instead of running too; the answer is stored in
//! the same transaction as the call's effects, and every later repeat gets it. A call that
//! stored nothing (a system error, a trap, a database outage) gives the key up: a retry runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use saga_core::ids::SagaId;

use crate::broker::{Broker, Kind, Message};
use crate::ends::SagaEnds;
use crate::runtime::bindings::types as wit;
use crate::runtime::{Access, CallContext, CallEnv, CallError, Runtime, Scope, ServiceVersion};
use crate::storage::{
    Consumed, KeyRecord, KeyUse, Keys, RequestKey, StorageError, Transaction, now_ms,
};
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

/// A request's idempotency key, with what tells a repeat of the request from another one.
pub struct Keyed {
    pub key: RequestKey,
    /// A digest of what the request asks (its path, query and body).
    pub request_hash: String,
    /// A claim older than this (its host died while running it) may be taken over by a repeat.
    pub stale_after: Duration,
}

/// How a request with an idempotency key ended.
pub enum KeyedOutcome {
    /// It ran, this time.
    Ran(Result<Handled, HandleError>),
    /// It ran before: the status and JSON body it was answered with then.
    Replayed { status: u16, body: String },
    /// The key was used before for another request.
    Reused,
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
        self.attempt(&invocation, None).await.0
    }

    /// Runs a request once per key: claims the key (waiting while another run holds it), runs
    /// the call with its answer stored alongside its effects, and gives the key up when the call
    /// stored nothing. A repeat of an answered request gets the first answer.
    pub async fn run_keyed(
        &self,
        invocation: Invocation,
        keyed: Keyed,
    ) -> Result<KeyedOutcome, HandleError> {
        let claim = uuid::Uuid::new_v4().to_string();
        let claimed = || KeyUse::Claim {
            key: keyed.key.clone(),
            request_hash: keyed.request_hash.clone(),
            claim: claim.clone(),
            stale_before: now_ms() - keyed.stale_after.as_millis() as i64,
        };
        loop {
            let tx = Transaction {
                key: Some(claimed()),
                ..Transaction::default()
            };
            match self.broker.commit(tx).await {
                Ok(()) => break,
                Err(StorageError::KeyHeld(_)) => {}
                Err(error) => return Err(HandleError::Storage(error)),
            }
            let record = self.env.storage.request_key(&keyed.key).await;
            match record.map_err(HandleError::Storage)? {
                // Given up meanwhile: claim it again.
                None => {}
                Some(KeyRecord { request_hash, .. }) if request_hash != keyed.request_hash => {
                    return Ok(KeyedOutcome::Reused);
                }
                Some(KeyRecord {
                    answer: Some((status, body)),
                    ..
                }) => return Ok(KeyedOutcome::Replayed { status, body }),
                // Running elsewhere: wait for its answer (the request's own timeout bounds this).
                Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let (handled, stored) = self.attempt(&invocation, Some((&keyed.key, &claim))).await;
        if !stored {
            let tx = Transaction {
                key: Some(KeyUse::Release {
                    key: keyed.key.clone(),
                    claim,
                }),
                ..Transaction::default()
            };
            if let Err(error) = self.broker.commit(tx).await {
                // The claim then lapses after `stale_after`, when a repeat takes it over.
                tracing::warn!(%error, key = keyed.key.key, "could not give up an idempotency key");
            }
        }
        Ok(KeyedOutcome::Ran(handled))
    }

    /// One call, run again while it collides with other writers; with a key claim, the answer
    /// is stored under it. Also says whether the call's transaction was stored.
    async fn attempt(
        &self,
        invocation: &Invocation,
        claim: Option<(&RequestKey, &str)>,
    ) -> (Result<Handled, HandleError>, bool) {
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
                if let Err(blocked) = self.wait_to_retry(*holder, given_up).await {
                    return (Err(blocked), false);
                }
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
                let handled = match result {
                    Ok(answer) => Handled::Answered(answer),
                    Err(error) => Handled::Failed(error),
                };
                return (Ok(handled), false);
            }
            let mut tx = Transaction::default();
            if matches!(&result, Ok(Ok(_))) {
                tx.writes = context.effects.writes;
                tx.messages = context.effects.messages;
            }
            if let (Some((key, claim)), Ok(answer)) = (claim, &result) {
                let (status, body) = http_answer(invocation.service.name(), answer);
                tx.key = Some(KeyUse::Answer {
                    key: key.clone(),
                    claim: claim.to_string(),
                    status,
                    body,
                });
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
                    let handled = match result {
                        Ok(answer) => Handled::Answered(answer),
                        Err(error) => Handled::Failed(error),
                    };
                    return (Ok(handled), true);
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
                    return (Ok(Handled::Duplicate), false);
                }
                Err(StorageError::Conflict { holder, .. }) => {
                    let holder = holder.and_then(|h| h.parse().ok());
                    if let Err(blocked) = self.wait_to_retry(holder, given_up).await {
                        return (Err(blocked), false);
                    }
                }
                Err(error) => return (Err(HandleError::Storage(error)), false),
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

/// What an HTTP client is answered when a handler answered: its status and JSON body, or a
/// 500 when the answer breaks the contract (a success status for success, a JSON payload); an
/// error as `{"error": MESSAGE}` with its 4xx or 5xx status.
pub fn http_answer(service: &str, answer: &Result<wit::Response, wit::Error>) -> (u16, String) {
    let error =
        |status: u16, message: &str| (status, serde_json::json!({ "error": message }).to_string());
    match answer {
        Ok(response) if !(200..=299).contains(&response.status) => error(
            500,
            &format!(
                "service {service} answered with status {}, which is not a success status; errors must be returned as errors",
                response.status
            ),
        ),
        Ok(response)
            if serde_json::from_str::<serde::de::IgnoredAny>(&response.payload).is_err() =>
        {
            error(
                500,
                &format!("service {service} answered with a payload that is not JSON"),
            )
        }
        Ok(response) => (response.status, response.payload.clone()),
        Err(failure) if (400..=599).contains(&failure.status) => {
            error(failure.status, &failure.message)
        }
        Err(failure) => error(500, &failure.message),
    }
}

fn json_string(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}
