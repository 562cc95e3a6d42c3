//! Messages as they travel between services and are stored in the queue: commands, queries,
//! events and replies, with their headers. Decoding a stored or received message checks it, so
//! that a corrupt one is refused with a reason rather than trusted.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A message as it travels and is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub id: String,
    pub kind: Kind,
    pub topic: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<ReplyTo>,
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
    /// To the orchestrator of `service`, for the saga step in the message's headers.
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
            id: Uuid::new_v4().to_string(),
            kind: Kind::Command,
            topic: topic.to_string(),
            reply_to,
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

    /// The reply to this message, carrying its headers back.
    pub fn reply(&self, status: u16, payload: String) -> Self {
        Message {
            id: Uuid::new_v4().to_string(),
            kind: Kind::Reply,
            topic: self.topic.clone(),
            reply_to: None,
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
    /// Decodes a message and checks what the host relies on: an id, a valid topic, a JSON
    /// payload, a status in 100..=599, and the numeric headers ("step", "compensation",
    /// "attempt") being numbers.
    pub fn decode(body: &str) -> Result<Message, DecodeError> {
        let message: Message =
            serde_json::from_str(body).map_err(|e| DecodeError(e.to_string()))?;
        if message.id.is_empty() || message.id.len() > 128 {
            return Err(DecodeError("the id must be 1 to 128 characters".into()));
        }
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
        for name in ["step", "compensation", "attempt"] {
            if let Some(value) = message.header(name)
                && value.parse::<u32>().is_err()
            {
                return Err(DecodeError(format!(
                    "the {name} header {value:?} is not a number"
                )));
            }
        }
        Ok(message)
    }

    /// The message as the queue stores it.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("messages serialise")
    }

    /// A numeric header ("step", "compensation", "attempt").
    pub fn header_number(&self, name: &str) -> Option<usize> {
        self.header(name).and_then(|value| value.parse().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips_and_bad_ones_are_refused_with_the_reason() {
        let message = Message::command(
            "GetUserAttempts",
            "{}".into(),
            vec![("step".into(), "0".into())],
            None,
        );
        assert_eq!(Message::decode(&message.encode()), Ok(message.clone()));
        let reply = message.reply(400, "\"refused\"".into());
        assert_eq!(Message::decode(&reply.encode()).unwrap().kind, Kind::Reply);

        let with = |f: &dyn Fn(&mut Message)| {
            let mut m = message.clone();
            f(&mut m);
            Message::decode(&m.encode()).unwrap_err().0
        };
        assert!(with(&|m| m.topic = "a b".into()).contains("topic"));
        assert!(with(&|m| m.id.clear()).contains("id"));
        assert!(with(&|m| m.payload = "{".into()).contains("payload is not JSON"));
        assert!(with(&|m| m.status = 42).contains("not an HTTP status"));
        assert!(with(&|m| m.headers = vec![("step".into(), "x".into())]).contains("step header"));
        assert!(Message::decode("not json").is_err());
        assert!(
            Message::decode(r#"{"id":"1","kind":"gossip","topic":"T","payload":"{}"}"#).is_err()
        );
    }
}
