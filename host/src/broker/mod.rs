//! The in-process durable broker. Messages (commands, queries, events, replies) are addressed to
//! the service that consumes them, stored in the queue table in the same transaction as the
//! writes of the call that sent them (a transactional outbox), delivered from memory once that
//! transaction commits, and removed in the transaction that commits their handling. A restarted
//! host delivers whatever is still queued.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use uuid::Uuid;

pub use saga_core::message::{Kind, Message, ReplyTo};

use crate::storage::{
    self, Committed, NewMessage, QueuedMessage, Storage, StorageError, Transaction,
};

/// Which service consumes which topic; replaced whenever the set of loaded components changes.
#[derive(Debug, Default, Clone)]
pub struct Topics {
    /// Command and query topics: exactly one consumer each.
    pub commands: HashMap<String, String>,
    /// Event topics: every subscribed service.
    pub events: HashMap<String, Vec<String>>,
    /// The events of aggregates (`ExamCreated`, `ExamUpdated`, `ExamDeleted`): the one service
    /// whose aggregate they report, the only one that may publish them.
    pub aggregate_events: HashMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("no loaded service handles the command {0:?}; deploy the service that declares it")]
    NoConsumer(String),
}

/// A queued message handed to its consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub seq: i64,
    pub consumer: String,
    pub message: Message,
    pub attempts: u32,
}

pub enum Outcome {
    /// Handled: the handler's transaction removed it from the queue.
    Done,
    /// Not handled this time; deliver again later.
    Retry(String),
}

/// What consumes deliveries (the host: handlers and saga orchestration).
pub trait Deliver: Send + Sync + 'static {
    fn deliver(&self, delivery: Delivery) -> BoxFuture<'static, Outcome>;
}

#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    storage: Storage,
    topics: ArcSwap<Topics>,
    consumer: OnceLock<Arc<dyn Deliver>>,
    in_flight: Semaphore,
    retry: RetryPolicy,
}

/// Deliveries handled at once; more wait in memory (they are durable in the queue anyway).
const MAX_IN_FLIGHT: usize = 512;

/// How a message whose handling fails is tried again.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts before the message goes to the dead letters.
    pub max_attempts: u32,
    /// The first delay; each next one doubles, up to `max_delay`.
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempts + 1`.
    pub fn delay(&self, attempts: u32) -> Duration {
        let factor = 1u32 << attempts.saturating_sub(1).min(20);
        self.first_delay.saturating_mul(factor).min(self.max_delay)
    }
}

impl Broker {
    pub fn new(storage: Storage, retry: RetryPolicy) -> Self {
        Broker {
            inner: Arc::new(Inner {
                storage,
                topics: ArcSwap::from_pointee(Topics::default()),
                consumer: OnceLock::new(),
                in_flight: Semaphore::new(MAX_IN_FLIGHT),
                retry,
            }),
        }
    }

    /// Sets who consumes deliveries; done once, when the host starts.
    pub fn set_consumer(&self, consumer: Arc<dyn Deliver>) {
        if self.inner.consumer.set(consumer).is_err() {
            panic!("the broker's consumer is set once");
        }
    }

    pub fn set_topics(&self, topics: Topics) {
        self.inner.topics.store(Arc::new(topics));
    }

    /// The service whose aggregate events `topic` carries, if it does.
    pub fn aggregate_event_owner(&self, topic: &str) -> Option<String> {
        self.inner
            .topics
            .load()
            .aggregate_events
            .get(topic)
            .cloned()
    }

    pub fn handles(&self, topic: &str) -> bool {
        self.inner.topics.load().commands.contains_key(topic)
    }

    /// A command or query for the one service that handles its topic.
    pub fn address_command(
        &self,
        message: &Message,
        staged_under: Option<String>,
    ) -> Result<NewMessage, BrokerError> {
        let topics = self.inner.topics.load();
        let consumer = topics
            .commands
            .get(&message.topic)
            .ok_or_else(|| BrokerError::NoConsumer(message.topic.clone()))?;
        Ok(addressed(message, consumer, staged_under))
    }

    /// An event, once for every subscribed service.
    pub fn address_event(
        &self,
        message: &Message,
        staged_under: Option<String>,
    ) -> Vec<NewMessage> {
        let topics = self.inner.topics.load();
        topics
            .events
            .get(&message.topic)
            .map(|services| {
                services
                    .iter()
                    .map(|service| {
                        // Each subscriber's copy is its own message, deduplicated on its own.
                        let copy = Message {
                            id: Uuid::new_v4().to_string(),
                            ..message.clone()
                        };
                        addressed(&copy, service, staged_under.clone())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The reply to `request`, sent where it asked.
    pub fn address_reply(
        &self,
        request: &Message,
        status: u16,
        payload: String,
    ) -> Option<NewMessage> {
        let reply = request.reply(status, payload);
        match request.reply_to.as_ref()? {
            ReplyTo::Saga { service } => Some(addressed(&reply, service, None)),
            ReplyTo::Topic { service, topic } => {
                let mut reply = reply;
                reply.kind = Kind::Command;
                reply.topic = topic.clone();
                reply.headers.push(("status".into(), status.to_string()));
                Some(addressed(&reply, service, None))
            }
        }
    }

    /// Commits a transaction and delivers the messages it queued.
    pub async fn commit(&self, transaction: Transaction) -> Result<(), StorageError> {
        let Committed { queued } = self.inner.storage.commit(transaction).await?;
        self.dispatch(queued);
        Ok(())
    }

    /// Delivers queued messages to their consumer, each in its own task.
    pub fn dispatch(&self, queued: Vec<QueuedMessage>) {
        for entry in queued {
            let message = match Message::decode(&entry.body) {
                Ok(message) => message,
                Err(error) => {
                    tracing::error!(seq = entry.seq, %error, "a queued message is not readable; it stays in the queue");
                    continue;
                }
            };
            let delivery = Delivery {
                seq: entry.seq,
                consumer: entry.consumer,
                message,
                attempts: entry.attempts,
            };
            let delay =
                Duration::from_millis((entry.available_at - storage::now_ms()).max(0) as u64);
            let broker = self.clone();
            tokio::spawn(async move { broker.deliver(delivery, delay).await });
        }
    }

    async fn deliver(self, mut delivery: Delivery, mut delay: Duration) {
        let Some(consumer) = self.inner.consumer.get().cloned() else {
            tracing::error!("a message arrived before the host set its consumer");
            return;
        };
        loop {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let outcome = {
                let Ok(_permit) = self.inner.in_flight.acquire().await else {
                    return;
                };
                consumer.deliver(delivery.clone()).await
            };
            match outcome {
                Outcome::Done => return,
                Outcome::Retry(reason) => {
                    delivery.attempts += 1;
                    let policy = &self.inner.retry;
                    if delivery.attempts >= policy.max_attempts {
                        tracing::error!(
                            message_id = %delivery.message.id,
                            topic = %delivery.message.topic,
                            consumer = %delivery.consumer,
                            attempts = delivery.attempts,
                            "delivery failed for the last time; the message goes to the dead letters: {reason}"
                        );
                        let tx = Transaction {
                            dead_letter: Some((delivery.seq, delivery.attempts, reason)),
                            ..Transaction::default()
                        };
                        if let Err(error) = self.inner.storage.commit(tx).await {
                            tracing::error!(%error, "could not move a message to the dead letters");
                        }
                        return;
                    }
                    delay = policy.delay(delivery.attempts);
                    tracing::warn!(
                        message_id = %delivery.message.id,
                        topic = %delivery.message.topic,
                        attempts = delivery.attempts,
                        retry_in_ms = delay.as_millis() as u64,
                        "delivery failed: {reason}"
                    );
                    let available_at = storage::now_ms() + delay.as_millis() as i64;
                    if let Err(error) = self
                        .inner
                        .storage
                        .defer_message(delivery.seq, delivery.attempts, available_at)
                        .await
                    {
                        tracing::error!(%error, "could not record a failed delivery");
                    }
                }
            }
        }
    }

    /// Removes a queued copy of a message that was consumed before (a duplicate).
    pub async fn drop_duplicate(&self, seq: i64) -> Outcome {
        let tx = Transaction {
            ack: Some(seq),
            ..Transaction::default()
        };
        match self.inner.storage.commit(tx).await {
            Ok(_) => Outcome::Done,
            Err(error) => Outcome::Retry(error.to_string()),
        }
    }

    /// Queues a dead letter again; false when there is no such dead letter.
    pub async fn redrive(&self, seq: i64) -> Result<bool, StorageError> {
        let tx = Transaction {
            redrive: Some(seq),
            ..Transaction::default()
        };
        let Committed { queued } = self.inner.storage.commit(tx).await?;
        let found = !queued.is_empty();
        self.dispatch(queued);
        Ok(found)
    }

    /// Delivers every message left in the queue (after a restart).
    pub async fn recover(&self) -> Result<usize, StorageError> {
        let queued = self.inner.storage.queued_messages().await?;
        let count = queued.len();
        self.dispatch(queued);
        Ok(count)
    }
}

fn addressed(message: &Message, consumer: &str, staged_under: Option<String>) -> NewMessage {
    NewMessage {
        id: message.id.clone(),
        consumer: consumer.to_string(),
        body: message.encode(),
        staged_under,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        let delays: Vec<u64> = (1..=6)
            .map(|a| policy.delay(a).as_millis() as u64)
            .collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
    }
}
