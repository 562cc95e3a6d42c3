//! Messages as they travel between services and are stored in the queue: commands, queries,
//! events and replies. A message that belongs to a saga carries a typed reference to it (which
//! saga, which step or compensation, which attempt) — the host's own protocol; the headers are
//! what a handler sees. Decoding a stored or received message checks it, so that a corrupt one
//! is refused with a reason rather than trusted.

use serde::{Deserialize, Serialize};

use crate::engine::Target;
use crate::ids::{MessageId, SagaId};

/// A message as it travels and is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub id: MessageId,
    pub kind: Kind,
    pub topic: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<ReplyTo>,
    /// The saga the message belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saga: Option<SagaRef>,
    /// For a reply: the message it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<MessageId>,
    /// The W3C `traceparent` of the work that sent it, so that its handling joins the same
    /// trace (when traces are exported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    /// What the receiving handler sees besides the saga's own headers: "user", and "status" on
    /// a reply delivered to a topic.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// JSON text.
    pub payload: String,
    /// For replies: 200 SUCCESS, 4xx ERROR, 5xx SYSTEM_ERROR.
    #[serde(default = "success")]
    pub status: u16,
}

fn success() -> u16 {
    200
}

/// The saga a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaRef {
    pub id: SagaId,
    /// A saga's own command (and the reply to it): the step or compensation it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// Which attempt at that command this is, from 1 (0 for other messages).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl SagaRef {
    /// A message sent by a call that works for saga `id` (an event, a command it sends).
    pub fn within(id: SagaId) -> Self {
        SagaRef {
            id,
            target: None,
            attempt: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Command,
    Query,
    Event,
    Reply,
}

/// Where the answer to a command goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyTo {
    /// To the orchestrator of `service`, for the saga step the message's saga reference names.
    Saga { service: String },
    /// To a broker-command topic of `service`.
    Topic { service: String, topic: String },
}

impl Message {
    pub fn command(
        topic: &str,
        payload: String,
        headers: Vec<(String, String)>,
        reply_to: Option<ReplyTo>,
    ) -> Self {
        Message {
            id: MessageId::random(),
            kind: Kind::Command,
            topic: topic.to_string(),
            reply_to,
            saga: None,
            in_reply_to: None,
            trace: None,
            headers,
            payload,
            status: 200,
        }
    }

    pub fn event(topic: &str, payload: String, headers: Vec<(String, String)>) -> Self {
        Message {
            kind: Kind::Event,
            reply_to: None,
            ..Message::command(topic, payload, headers, None)
        }
    }

    /// The reply to this message, carrying its headers and saga reference back.
    pub fn reply(&self, status: u16, payload: String) -> Self {
        Message {
            id: MessageId::random(),
            kind: Kind::Reply,
            topic: self.topic.clone(),
            reply_to: None,
            saga: self.saga,
            in_reply_to: Some(self.id),
            trace: self.trace.clone(),
            headers: self.headers.clone(),
            payload,
            status,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The headers a handler of this message sees: its own, then what the saga reference says
    /// ("saga", "step" or "compensation", "attempt"), as the WIT documents them.
    pub fn visible_headers(&self) -> Vec<(String, String)> {
        let mut headers = self.headers.clone();
        if let Some(saga) = &self.saga {
            headers.push(("saga".into(), saga.id.to_string()));
            match saga.target {
                Some(Target::Step(index)) => headers.push(("step".into(), index.to_string())),
                Some(Target::Compensation(index)) => {
                    headers.push(("compensation".into(), index.to_string()))
                }
                None => {}
            }
            if saga.attempt > 0 {
                headers.push(("attempt".into(), saga.attempt.to_string()));
            }
        }
        headers
    }
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable message: {0}")]
pub struct DecodeError(pub String);

/// Topics: 1 to 128 letters, digits, '_', '-' or '.'.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 128
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl Message {
    /// Decodes a message and checks what the host relies on: a UUID id, a valid topic, a JSON
    /// payload, a status in 100..=599, and a printable trace context.
    pub fn decode(body: &str) -> Result<Message, DecodeError> {
        let message: Message =
            serde_json::from_str(body).map_err(|e| DecodeError(e.to_string()))?;
        if !valid_topic(&message.topic) {
            return Err(DecodeError(format!(
                "the topic {:?} is invalid",
                message.topic
            )));
        }
        if !(100..=599).contains(&message.status) {
            return Err(DecodeError(format!(
                "the status {} is not an HTTP status",
                message.status
            )));
        }
        serde_json::from_str::<serde::de::IgnoredAny>(&message.payload)
            .map_err(|e| DecodeError(format!("the payload is not JSON: {e}")))?;
        if let Some(trace) = &message.trace
            && (trace.len() > 256 || !trace.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(DecodeError(
                "the trace context is not a printable W3C traceparent".into(),
            ));
        }
        Ok(message)
    }

    /// The message as the queue stores it.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("messages serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips_and_bad_ones_are_refused_with_the_reason() {
        let mut message = Message::command("GetUserAttempts", "{}".into(), Vec::new(), None);
        message.saga = Some(SagaRef {
            id: SagaId::random(),
            target: Some(Target::Step(0)),
            attempt: 1,
        });
        assert_eq!(Message::decode(&message.encode()), Ok(message.clone()));
        let reply = message.reply(400, "\"refused\"".into());
        let decoded = Message::decode(&reply.encode()).unwrap();
        assert_eq!(decoded.kind, Kind::Reply);
        assert_eq!(decoded.in_reply_to, Some(message.id));
        assert_eq!(decoded.saga, message.saga);

        let with = |f: &dyn Fn(&mut Message)| {
            let mut m = message.clone();
            f(&mut m);
            Message::decode(&m.encode()).unwrap_err().0
        };
        assert!(with(&|m| m.topic = "a b".into()).contains("topic"));
        assert!(with(&|m| m.payload = "{".into()).contains("payload is not JSON"));
        assert!(with(&|m| m.status = 42).contains("not an HTTP status"));
        assert!(Message::decode("not json").is_err());
        assert!(
            Message::decode(r#"{"id":"1","kind":"command","topic":"T","payload":"{}"}"#).is_err(),
            "the id must be a UUID"
        );
        assert!(
            Message::decode(r#"{"id":"67e55044-10b1-426f-9247-bb680e5fe0c8","kind":"gossip","topic":"T","payload":"{}"}"#).is_err()
        );
    }

    #[test]
    fn a_handler_sees_the_saga_reference_as_the_headers_the_wit_documents() {
        let id = SagaId::random();
        let mut message =
            Message::command("Undo", "{}".into(), vec![("user".into(), "u".into())], None);
        message.saga = Some(SagaRef {
            id,
            target: Some(Target::Compensation(2)),
            attempt: 3,
        });
        assert_eq!(
            message.visible_headers(),
            vec![
                ("user".to_string(), "u".to_string()),
                ("saga".to_string(), id.to_string()),
                ("compensation".to_string(), "2".to_string()),
                ("attempt".to_string(), "3".to_string()),
            ]
        );
    }
}
