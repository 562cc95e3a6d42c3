//! The broker. Messages (commands, queries, events, replies) are addressed to the service that
//! consumes them and stored in the queue table in the same transaction as the writes of the
//! call that sent them (a transactional outbox). Then, by transport:
//!
//! - in process (the default): delivered from memory once that transaction commits, and
//!   removed in the transaction that commits their handling. A restarted host delivers whatever
//!   is still queued.
//! - NATS JetStream (`nats.rs`): handed on to the stream, for whichever host loads the consumer.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::future::BoxFuture;
use saga_core::ids::{MessageId, SagaId};
use tokio::sync::Semaphore;
use tracing::Instrument;

pub use saga_core::message::{Kind, Message, ReplyTo};

use crate::storage::{
    self, Committed, Consumed, Consumes, DeadLettering, NewMessage, Queue, QueuedMessage, Storage,
    StorageError, TopicKind, Transaction, Transactions,
};
use crate::telemetry::{self, metrics};

pub mod nats;

use nats::{Nats, NatsUrl};

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
    /// The services loaded here: each consumes its commands, events and saga replies.
    pub services: Vec<String>,
}

impl Topics {
    /// What these services consume, as a host tells the others.
    pub fn consumes(&self) -> Vec<Consumes> {
        let commands = self.commands.iter().map(|(topic, service)| Consumes {
            service: service.clone(),
            kind: TopicKind::Command,
            topic: topic.clone(),
        });
        let events = self.events.iter().flat_map(|(topic, services)| {
            services.iter().map(move |service| Consumes {
                service: service.clone(),
                kind: TopicKind::Event,
                topic: topic.clone(),
            })
        });
        let mut all: Vec<Consumes> = commands.chain(events).collect();
        all.sort();
        all
    }

    /// The topics of other hosts' services, from what they said they consume.
    fn from_consumes(consumes: &[Consumes]) -> Topics {
        let mut topics = Topics::default();
        for entry in consumes {
            if entry.kind == TopicKind::Command {
                topics
                    .commands
                    .entry(entry.topic.clone())
                    .or_insert_with(|| entry.service.clone());
            } else {
                let services = topics.events.entry(entry.topic.clone()).or_default();
                if !services.contains(&entry.service) {
                    services.push(entry.service.clone());
                }
            }
        }
        topics
    }
}

/// Why the broker could not address a message or reach its transport.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("no loaded service handles the command {0:?}; deploy the service that declares it")]
    NoConsumer(String),
    #[error("{0}")]
    Connect(String),
}

/// A message handed to its consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Its queue entry (in-process transport), removed by the transaction of its handling;
    /// none from NATS, where it is acknowledged after that transaction commits.
    pub queued: Option<i64>,
    pub consumer: String,
    pub message: Message,
    pub attempts: u32,
}

/// How the handling of a delivery ended, for the broker to acknowledge, retry or dead-letter it.
pub enum Outcome {
    /// Handled: the handler's transaction recorded it as consumed.
    Done,
    /// Not handled this time; deliver again later.
    Retry(String),
    /// The host is stopping: leave it for the next start, or another host.
    Stopping,
}

/// What consumes deliveries (the host: handlers and saga orchestration).
pub trait Consume: Send + Sync + 'static {
    /// Handles one message.
    fn consume(&self, delivery: Delivery) -> BoxFuture<'static, Outcome>;
    /// A saga ended on another host.
    fn saga_ended(&self, id: String) -> BoxFuture<'static, ()>;
}

/// The broker: addresses messages, commits them with their transaction, hands them to their
/// consumer; cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    storage: Storage,
    /// What the services loaded here consume.
    topics: ArcSwap<Topics>,
    /// What the services of other hosts consume (NATS transport).
    remote: ArcSwap<Topics>,
    consumer: OnceLock<Arc<dyn Consume>>,
    in_flight: Semaphore,
    /// Copies of one message to one consumer (a step's command sent again after its reply
    /// deadline) are handed over one after the other.
    copies: OneCopyAtATime,
    retry: RetryPolicy,
    nats: Option<Arc<Nats>>,
}

/// Locks that let one copy of a message to a consumer be handled at a time.
#[derive(Default)]
struct OneCopyAtATime(std::sync::Mutex<HashMap<(String, MessageId), CopyLock>>);

type CopyLock = Arc<tokio::sync::Mutex<()>>;

/// A copy's turn; the lock is forgotten when no other copy waits for it.
struct Turn<'a> {
    copies: &'a OneCopyAtATime,
    key: (String, MessageId),
    lock: CopyLock,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl OneCopyAtATime {
    async fn hold(&self, consumer: &str, id: MessageId) -> Turn<'_> {
        let key = (consumer.to_string(), id);
        let lock = (self.0.lock().expect("copies lock"))
            .entry(key.clone())
            .or_default()
            .clone();
        let held = Some(lock.clone().lock_owned().await);
        Turn {
            copies: self,
            key,
            lock,
            held,
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.held = None;
        let mut copies = self.copies.0.lock().expect("copies lock");
        // The map's reference and this turn's: nobody else waits.
        if Arc::strong_count(&self.lock) == 2 {
            copies.remove(&self.key);
        }
    }
}

/// In-process deliveries handled at once; more wait in memory (they are durable in the queue
/// anyway). NATS deliveries are bounded by what each pull loop takes in hand.
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
    /// A broker on the transport `url` names: none for in process, `nats://…` for NATS
    /// JetStream.
    pub async fn connect(
        storage: Storage,
        retry: RetryPolicy,
        url: Option<&str>,
    ) -> Result<Self, BrokerError> {
        let nats = match url {
            None => None,
            Some(url) => {
                let url = NatsUrl::parse(url).map_err(|e| {
                    BrokerError::Connect(format!(
                        "{e}; the broker URL is nats://[USER:PASSWORD@]HOST:PORT[/CLUSTER-NAME][?OPTIONS] (tls:// to require TLS), or none for the in-process broker"
                    ))
                })?;
                Some(Arc::new(
                    Nats::connect(&url).await.map_err(BrokerError::Connect)?,
                ))
            }
        };
        Ok(Broker {
            inner: Arc::new(Inner {
                storage,
                topics: ArcSwap::from_pointee(Topics::default()),
                remote: ArcSwap::from_pointee(Topics::default()),
                consumer: OnceLock::new(),
                in_flight: Semaphore::new(MAX_IN_FLIGHT),
                copies: OneCopyAtATime::default(),
                retry,
                nats,
            }),
        })
    }

    /// Whether messages travel through NATS, to and from other hosts.
    pub fn is_shared(&self) -> bool {
        self.inner.nats.is_some()
    }

    /// Sets who consumes deliveries; done once, when the host starts.
    pub fn set_consumer(&self, consumer: Arc<dyn Consume>) {
        if self.inner.consumer.set(consumer).is_err() {
            panic!("the broker's consumer is set once");
        }
        if let Some(nats) = &self.inner.nats {
            nats.listen_for_ends(self.clone());
        }
    }

    /// What the services loaded here consume; with NATS, this host starts (or stops) pulling
    /// their messages.
    pub fn set_topics(&self, topics: Topics) {
        if let Some(nats) = &self.inner.nats {
            nats.consume(&topics.services, self);
        }
        self.inner.topics.store(Arc::new(topics));
    }

    /// What these services consume, for the other hosts.
    pub fn local_consumes(&self) -> Vec<Consumes> {
        self.inner.topics.load().consumes()
    }

    /// What the services of every live host consume (this one's included).
    pub fn set_cluster_consumes(&self, consumes: &[Consumes]) {
        self.inner
            .remote
            .store(Arc::new(Topics::from_consumes(consumes)));
    }

    /// Tells the other hosts that saga `id` ended.
    pub fn announce_end(&self, id: &str) {
        if let Some(nats) = &self.inner.nats {
            nats.announce_end(id);
        }
    }

    /// Tells the other hosts that a service has a new version in the cluster (NATS only).
    pub async fn announce_deployed(&self, note: String) -> Result<(), String> {
        match &self.inner.nats {
            Some(nats) => nats.announce_deployed(note).await,
            None => Ok(()),
        }
    }

    /// Passes the note of every deploy announced in the cluster to `notes` (NATS only).
    pub fn listen_for_deploys(&self, notes: tokio::sync::mpsc::UnboundedSender<String>) {
        if let Some(nats) = &self.inner.nats {
            nats.listen_for_deploys(notes);
        }
    }

    async fn saga_ended(&self, id: &str) {
        if let Some(consumer) = self.inner.consumer.get() {
            consumer.saga_ended(id.to_string()).await;
        }
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
            || self.inner.remote.load().commands.contains_key(topic)
    }

    /// A command or query for the one service that handles its topic.
    pub fn address_command(
        &self,
        message: &Message,
        staged_under: Option<SagaId>,
    ) -> Result<NewMessage, BrokerError> {
        let (local, remote) = (self.inner.topics.load(), self.inner.remote.load());
        let consumer = local
            .commands
            .get(&message.topic)
            .or_else(|| remote.commands.get(&message.topic))
            .ok_or_else(|| BrokerError::NoConsumer(message.topic.clone()))?;
        Ok(addressed(message, consumer, staged_under))
    }

    /// An event of `topic`, once for every service that subscribes to it, here or on another
    /// host. `event` makes the message only when one does: an event nobody consumes costs
    /// nothing to build.
    pub fn address_event(
        &self,
        topic: &str,
        staged_under: Option<SagaId>,
        event: impl FnOnce() -> Message,
    ) -> Vec<NewMessage> {
        let (local, remote) = (self.inner.topics.load(), self.inner.remote.load());
        let mut subscribers: Vec<&String> = [&local, &remote]
            .into_iter()
            .filter_map(|topics| topics.events.get(topic))
            .flatten()
            .collect();
        if subscribers.is_empty() {
            return Vec::new();
        }
        subscribers.sort_unstable();
        subscribers.dedup();
        let message = event();
        debug_assert_eq!(message.topic, topic);
        subscribers
            .into_iter()
            .map(|service| {
                // Each subscriber's copy is its own message, deduplicated on its own.
                let copy = Message {
                    id: MessageId::random(),
                    ..message.clone()
                };
                addressed(&copy, service, staged_under)
            })
            .collect()
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

    /// Commits a transaction and sends the messages it queued.
    pub async fn commit(&self, transaction: Transaction) -> Result<(), StorageError> {
        let span = tracing::debug_span!(
            "commit",
            writes = transaction.writes.len(),
            messages = transaction.messages.len(),
            saga = transaction.saga.as_ref().map(|row| row.id.as_str()),
        );
        let Committed { queued } = self
            .inner
            .storage
            .commit(transaction)
            .instrument(span)
            .await?;
        self.send(queued);
        Ok(())
    }

    /// Sends committed messages on: delivers them here, or hands them to NATS.
    fn send(&self, queued: Vec<QueuedMessage>) {
        if queued.is_empty() {
            return;
        }
        match &self.inner.nats {
            None => self.dispatch(queued),
            Some(nats) => {
                let (nats, storage) = (nats.clone(), self.inner.storage.clone());
                tokio::spawn(async move { relay(&nats, &storage, &queued).await });
            }
        }
    }

    /// Hands on the messages a host left in the queue (it died between the commit and the
    /// hand-over): those queued before `before`. NATS transport only.
    pub async fn relay_left_behind(&self, before: i64) -> Result<usize, StorageError> {
        let Some(nats) = &self.inner.nats else {
            return Ok(0);
        };
        let queued = self.inner.storage.queued_before(before, 1000).await?;
        relay(nats, &self.inner.storage, &queued).await;
        Ok(queued.len())
    }

    /// Delivers queued messages to their consumer, each in its own task.
    fn dispatch(&self, queued: Vec<QueuedMessage>) {
        for entry in queued {
            let message = match Message::decode(&entry.body) {
                Ok(message) => message,
                Err(error) => {
                    tracing::error!(seq = entry.seq, %error, "a queued message is not readable; it stays in the queue");
                    continue;
                }
            };
            let delivery = Delivery {
                queued: Some(entry.seq),
                consumer: entry.consumer,
                message,
                attempts: entry.attempts,
            };
            let delay =
                Duration::from_millis((entry.available_at - storage::now_ms()).max(0) as u64);
            let broker = self.clone();
            tokio::spawn(async move { broker.hand_over(delivery, delay).await });
        }
    }

    /// Hands a message to the consumer after `delay`, again and again while it fails, until
    /// the attempts are used up and it goes to the dead letters.
    async fn hand_over(self, mut delivery: Delivery, mut delay: Duration) {
        let Some(consumer) = self.inner.consumer.get().cloned() else {
            tracing::error!("a message arrived before the host set its consumer");
            return;
        };
        loop {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let outcome = {
                // A copy waits for the one in hand, and then finds it consumed (and is answered
                // with its reply) instead of doing the same work beside it.
                let _alone = (self.inner.copies)
                    .hold(&delivery.consumer, delivery.message.id)
                    .await;
                let Ok(_permit) = self.inner.in_flight.acquire().await else {
                    return;
                };
                consumer.consume(delivery.clone()).await
            };
            match outcome {
                Outcome::Done | Outcome::Stopping => return,
                Outcome::Retry(reason) => {
                    delivery.attempts += 1;
                    let policy = &self.inner.retry;
                    if delivery.attempts >= policy.max_attempts {
                        if let Err(error) =
                            self.dead_letter(&delivery, delivery.attempts, reason).await
                        {
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
                    metrics::redelivered(&delivery.consumer);
                    let available_at = storage::now_ms() + delay.as_millis() as i64;
                    if let Some(seq) = delivery.queued
                        && let Err(error) = self
                            .inner
                            .storage
                            .defer_message(seq, delivery.attempts, available_at)
                            .await
                    {
                        tracing::error!(%error, "could not record a failed delivery");
                    }
                }
            }
        }
    }

    /// Moves a message whose deliveries all failed (`attempts` of them, the last for `reason`)
    /// to the dead letters, out of the queue.
    pub(crate) async fn dead_letter(
        &self,
        delivery: &Delivery,
        attempts: u32,
        reason: String,
    ) -> Result<(), StorageError> {
        tracing::error!(
            message_id = %delivery.message.id,
            topic = %delivery.message.topic,
            consumer = %delivery.consumer,
            attempts,
            "delivery failed for the last time; the message goes to the dead letters: {reason}"
        );
        let tx = Transaction {
            dead_letter: Some(DeadLettering {
                queued: delivery.queued,
                message_id: delivery.message.id.to_string(),
                consumer: delivery.consumer.clone(),
                body: delivery.message.encode(),
                attempts,
                error: reason,
            }),
            ..Transaction::default()
        };
        self.inner.storage.commit(tx).await?;
        metrics::dead_lettered();
        Ok(())
    }

    /// Consumes a message no handler runs for: removes it from the queue (`queued`), records
    /// it as consumed, and sends the reply the record holds, if any — in one transaction. A copy
    /// consumed before is settled instead.
    pub async fn acknowledge(&self, queued: Option<i64>, consumed: Consumed) -> Outcome {
        let tx = Transaction {
            ack: queued,
            messages: consumed.reply.clone().into_iter().collect(),
            consumed: vec![consumed.clone()],
            ..Transaction::default()
        };
        match self.commit(tx).await {
            Ok(()) => Outcome::Done,
            Err(StorageError::Duplicate(_)) => {
                self.settle_duplicate(queued, &consumed.consumer, &consumed.message_id)
                    .await
            }
            Err(error) => Outcome::Retry(error.to_string()),
        }
    }

    /// Settles a copy of a message that `consumer` consumed before: removes it from the queue
    /// and sends the reply of the first handling again (its first copy may be late, or held by a
    /// host that died). Nothing else changes.
    pub async fn settle_duplicate(
        &self,
        queued: Option<i64>,
        consumer: &str,
        message_id: &str,
    ) -> Outcome {
        let reply = match self.inner.storage.stored_reply(consumer, message_id).await {
            Ok(reply) => reply,
            Err(error) => return Outcome::Retry(error.to_string()),
        };
        let tx = Transaction {
            ack: queued,
            messages: reply.into_iter().collect(),
            ..Transaction::default()
        };
        if tx.is_empty() {
            return Outcome::Done;
        }
        match self.commit(tx).await {
            Ok(()) => Outcome::Done,
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
        self.send(queued);
        Ok(found)
    }

    /// Delivers every message left in the queue (after a restart of a lone host).
    pub async fn recover(&self) -> Result<usize, StorageError> {
        let queued = self.inner.storage.queued_messages().await?;
        let count = queued.len();
        self.send(queued);
        Ok(count)
    }
}

/// Publishes queued messages to NATS and removes from the queue those it stored.
async fn relay(nats: &Nats, storage: &Storage, queued: &[QueuedMessage]) {
    let stored = nats.publish(queued).await;
    let now = storage::now_ms();
    for entry in queued.iter().filter(|entry| stored.contains(&entry.seq)) {
        metrics::relayed(Duration::from_millis(
            (now - entry.available_at).max(0) as u64
        ));
    }
    if let Err(error) = storage.remove_queued(&stored).await {
        // They will be published again, and dropped as duplicates by the stream.
        tracing::warn!(%error, "could not remove handed-on messages from the queue");
    }
}

/// A message as queued for `consumer`, carrying the trace of the work that sends it.
fn addressed(message: &Message, consumer: &str, staged_under: Option<SagaId>) -> NewMessage {
    let body = match telemetry::traceparent() {
        Some(trace) => Message {
            trace: Some(trace),
            ..message.clone()
        }
        .encode(),
        None => message.encode(),
    };
    NewMessage {
        id: message.id.to_string(),
        consumer: consumer.to_string(),
        body,
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
