//! The `broker` import: events and commands to other services, over the parts of the call it
//! needs — who calls, what it sends, and its budget.

use std::sync::Arc;

use super::outgoing;
use crate::broker::Message;
use crate::runtime::bindings::broker;
use crate::runtime::call::{Budget, CallEnv, Effects, Identity};

/// The call's state as the broker import sees it.
pub struct BrokerImport<'a> {
    pub(super) who: &'a Identity,
    pub(super) env: Option<&'a Arc<CallEnv>>,
    pub(super) effects: &'a mut Effects,
    pub(super) budget: &'a mut Budget,
}

impl broker::Host for BrokerImport<'_> {
    async fn publish(
        &mut self,
        topic: String,
        payload: String,
    ) -> wasmtime::Result<Result<(), broker::BrokerError>> {
        self.budget.host_call(self.who)?;
        Ok((|| {
            let ctx = &mut *self;
            let env = super::acting(ctx.who, ctx.env)
                .map_err(broker::BrokerError::Denied)?
                .clone();
            ctx.check_message(&topic, &payload)?;
            if let Some(owner) = env.broker.aggregate_event_owner(&topic)
                && owner != ctx.who.service_name()
            {
                return Err(broker::BrokerError::Denied(format!(
                    "{topic} reports an aggregate of service {owner}; a service publishes only its own aggregates' events (the host does, when it writes them)"
                )));
            }
            let message = || outgoing(ctx.who, Message::event(&topic, payload, Vec::new()));
            let addressed = env.broker.address_event(&topic, ctx.who.saga_id(), message);
            ctx.effects.messages.extend(addressed);
            Ok(())
        })())
    }

    async fn send(
        &mut self,
        topic: String,
        payload: String,
        reply_topic: Option<String>,
    ) -> wasmtime::Result<Result<String, broker::BrokerError>> {
        self.budget.host_call(self.who)?;
        Ok((|| {
            let ctx = &mut *self;
            let env = super::acting(ctx.who, ctx.env)
                .map_err(broker::BrokerError::Denied)?
                .clone();
            ctx.check_message(&topic, &payload)?;
            if let Some(reply_topic) = &reply_topic
                && !ctx.who.service.handles_command(reply_topic)
            {
                return Err(broker::BrokerError::Denied(format!(
                    "the reply topic {reply_topic:?} is not a broker-command of service {}; replies must come back to a topic it handles",
                    ctx.who.service_name()
                )));
            }
            let reply = reply_topic.map(|topic| crate::broker::ReplyTo::Topic {
                service: ctx.who.service_name().to_string(),
                topic,
            });
            let message = outgoing(
                ctx.who,
                Message::command(&topic, payload, Vec::new(), reply),
            );
            let id = message.id.to_string();
            let addressed = env
                .broker
                .address_command(&message, ctx.who.saga_id())
                .map_err(|e| broker::BrokerError::NoConsumer(e.to_string()))?;
            ctx.effects.messages.push(addressed);
            Ok(id)
        })())
    }
}

impl BrokerImport<'_> {
    /// A message the call may send: a valid topic, a JSON payload, within the limits.
    fn check_message(&mut self, topic: &str, payload: &str) -> Result<(), broker::BrokerError> {
        if !saga_core::message::valid_topic(topic) {
            return Err(broker::BrokerError::Invalid(format!(
                "topic {topic:?} is invalid: use 1 to 128 letters, digits, '_', '-' or '.'"
            )));
        }
        let limits = self.who.limits();
        let (max_messages, max_bytes) = (limits.max_messages, limits.max_value_bytes);
        if self.effects.messages.len() >= max_messages {
            return Err(broker::BrokerError::Denied(self.budget.refuse(format!(
                "a call may send at most {max_messages} messages (limit max-messages)"
            ))));
        }
        if payload.len() > max_bytes {
            return Err(broker::BrokerError::Denied(self.budget.refuse(format!(
                "the payload is {} bytes; the limit is {max_bytes} (limit max-value-kb)",
                payload.len()
            ))));
        }
        serde_json::from_str::<serde::de::IgnoredAny>(payload)
            .map(|_| ())
            .map_err(|e| {
                broker::BrokerError::Invalid(format!("the payload is not valid JSON: {e}"))
            })
    }
}
