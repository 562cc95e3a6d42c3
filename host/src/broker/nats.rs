//! The NATS JetStream transport, for several hosts sharing one database and one broker.
//!
//! Messages still commit to the queue table with the transaction that sends them (the outbox);
//! a relay then publishes each to the stream, on the subject of the service that consumes it
//! (`NAME.msg.SERVICE`), and removes it from the table once JetStream has acknowledged it. Every
//! host that loads a service pulls from one durable consumer per service, so a command is
//! handled by one of them; an event is addressed to every subscribed service, each its own copy.
//! A message is acknowledged to JetStream only after the handler's transaction commits (which
//! records it as consumed, so that a redelivery changes nothing); a failed one is redelivered
//! with backoff, and after the last attempt it goes to the dead letters.
//!
//! The stream keeps messages on file (`StorageType::File`) until their consumer acknowledges
//! them (work-queue retention), and deduplicates republished copies by message id for two
//! minutes. Saga ends are announced on the core subject `NAME.ended`, so that a host waiting for
//! a saga another host finished learns of it at once; deploys on `NAME.deployed`, so that every
//! host that runs the service loads the new version (from the database) at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures::StreamExt;

use super::{Broker, Delivery, Message, Outcome};
use crate::storage::QueuedMessage;
use crate::telemetry::metrics;

/// How long JetStream waits for an acknowledgement before it redelivers (to any host): what a
/// dead host's messages in hand wait before another host gets them. A long handler keeps its
/// message by reporting progress.
const ACK_WAIT: Duration = Duration::from_secs(10);
const PROGRESS_EVERY: Duration = Duration::from_secs(3);
/// Messages one host pulls at a time per service, and handles at once: what a host holds
/// unacknowledged, and what waits `ACK_WAIT` for another host when it dies.
const PULL_BATCH: usize = 32;
const IN_HAND: usize = 64;
/// Unacknowledged messages per service across hosts before JetStream stops delivering: far
/// above what live hosts hold, so that a dead host's messages never stall the others.
const MAX_ACK_PENDING: i64 = 100_000;
/// Republished copies of a message within this window are dropped by the stream.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Where the cluster's stream is and how to reach it:
/// `nats://` or `tls://` `[USER:PASSWORD@ | TOKEN@]HOST[:PORT][/NAME][?OPTION=VALUE&…]`, the
/// options being `replicas=N`, `creds=FILE` (a `.creds` file: user JWT and NKey seed),
/// `nkey=FILE` (a file holding an NKey seed), `ca=FILE` (PEM CAs that signed the server's
/// certificate), `cert=FILE&key=FILE` (a client certificate, for servers that verify clients).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsUrl {
    /// `nats://HOST:PORT` or `tls://HOST:PORT`, without credentials (it appears in messages).
    pub server: String,
    /// Names the stream and prefixes the subjects: clusters with different names share a NATS
    /// server without seeing each other's messages.
    pub name: String,
    /// Copies JetStream keeps of every message (1 on a single server; 3 on a cluster of three
    /// survives the loss of one server).
    pub replicas: usize,
    pub credentials: Credentials,
    /// How the connection is encrypted and whom it trusts.
    pub tls: Tls,
}

/// How the host proves who it is to NATS: as the URL says.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    None,
    /// `USER:PASSWORD@`.
    UserPassword {
        user: String,
        password: String,
    },
    /// `TOKEN@` (a user without a password, as NATS reads it).
    Token(String),
    /// `?nkey=FILE`: signs the server's challenge with the NKey seed the file holds.
    Nkey(PathBuf),
    /// `?creds=FILE`: a decentralised-auth `.creds` file (user JWT and NKey seed).
    CredsFile(PathBuf),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::None => f.write_str("none"),
            Credentials::UserPassword { user, .. } => write!(f, "user {user:?} with a password"),
            Credentials::Token(_) => f.write_str("a token"),
            Credentials::Nkey(file) => write!(f, "the NKey seed in {}", file.display()),
            Credentials::CredsFile(file) => write!(f, "the credentials file {}", file.display()),
        }
    }
}

/// The connection's TLS: required by `tls://` (else as the server asks), checked against the
/// CAs of `ca` (else those the system trusts), with a client certificate if given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    pub required: bool,
    pub ca: Option<PathBuf>,
    pub client: Option<(PathBuf, PathBuf)>,
}

impl NatsUrl {
    pub fn parse(text: &str) -> Result<NatsUrl, String> {
        // Never echo the URL itself: it may hold a password.
        let url = url::Url::parse(text).map_err(|e| format!("the NATS URL is not a URL: {e}"))?;
        let scheme = url.scheme();
        if scheme != "nats" && scheme != "tls" {
            return Err(format!(
                "the NATS URL must start with nats:// or tls://, not {scheme}://"
            ));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("the NATS URL names no server, e.g. nats://127.0.0.1:4222")?;
        let decode = |part: &str| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| "the NATS URL's credentials are not UTF-8".to_string())
        };
        let mut credentials = match (url.username(), url.password()) {
            ("", None) => Credentials::None,
            (token, None) => Credentials::Token(decode(token)?),
            (user, Some(password)) => Credentials::UserPassword {
                user: decode(user)?,
                password: decode(password)?,
            },
        };
        let name = url.path().trim_start_matches('/');
        let name = if name.is_empty() { "saga-host" } else { name };
        if name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "the cluster name {name:?} in the NATS URL must be 1 to 64 letters, digits, '-' or '_'"
            ));
        }
        let mut replicas = 1;
        let mut tls = Tls {
            required: scheme == "tls",
            ..Tls::default()
        };
        let (mut cert, mut key) = (None, None);
        for (option, value) in url.query_pairs() {
            let file = || PathBuf::from(value.as_ref());
            match option.as_ref() {
                "replicas" => {
                    replicas = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=5).contains(n))
                        .ok_or_else(|| format!("replicas must be 1 to 5, not {value:?}"))?
                }
                "creds" | "nkey" => {
                    if credentials != Credentials::None {
                        return Err(
                            "the NATS URL gives more than one kind of credentials; give one of \
                             USER:PASSWORD@, TOKEN@, creds=FILE or nkey=FILE"
                                .to_string(),
                        );
                    }
                    credentials = if option == "creds" {
                        Credentials::CredsFile(file())
                    } else {
                        Credentials::Nkey(file())
                    };
                }
                "ca" => tls.ca = Some(file()),
                "cert" => cert = Some(file()),
                "key" => key = Some(file()),
                other => {
                    return Err(format!(
                        "{other:?} in the NATS URL is not a known option (replicas=N, creds=FILE, \
                         nkey=FILE, ca=FILE, cert=FILE, key=FILE)"
                    ));
                }
            }
        }
        tls.client = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(
                    "the NATS URL gives cert= without key= or key= without cert=; a client \
                     certificate needs both"
                        .to_string(),
                );
            }
        };
        Ok(NatsUrl {
            server: format!("{scheme}://{host}:{}", url.port().unwrap_or(4222)),
            name: name.to_string(),
            replicas,
            credentials,
            tls,
        })
    }

    /// The client options this URL makes; reads the files it names (each named when it
    /// cannot be read).
    async fn options(&self) -> Result<async_nats::ConnectOptions, String> {
        let readable = |file: &Path, what: &str| {
            std::fs::metadata(file)
                .map(|_| ())
                .map_err(|e| format!("cannot read the NATS {what} {}: {e}", file.display()))
        };
        let mut options = async_nats::ConnectOptions::new()
            .name("saga-host")
            .require_tls(self.tls.required);
        if let Some(ca) = &self.tls.ca {
            readable(ca, "CA certificate (ca=)")?;
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.tls.client {
            readable(cert, "client certificate (cert=)")?;
            readable(key, "client key (key=)")?;
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        Ok(match &self.credentials {
            Credentials::None => options,
            Credentials::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.clone())
            }
            Credentials::Token(token) => options.token(token.clone()),
            Credentials::Nkey(file) => {
                let seed = std::fs::read_to_string(file).map_err(|e| {
                    format!(
                        "cannot read the NATS NKey seed (nkey=) {}: {e}",
                        file.display()
                    )
                })?;
                let seed = seed.trim();
                if nkeys::KeyPair::from_seed(seed).is_err() {
                    return Err(format!(
                        "{} does not hold an NKey seed (a line starting with \"SU\"; `nsc` or \
                         `nk -gen user` make one)",
                        file.display()
                    ));
                }
                options.nkey(seed.to_string())
            }
            Credentials::CredsFile(file) => options.credentials_file(file).await.map_err(|e| {
                format!(
                    "cannot use the NATS credentials file (creds=) {}: {e}",
                    file.display()
                )
            })?,
        })
    }
}

/// The NATS JetStream transport: one connection, the stream, and this host's pull consumers.
pub struct Nats {
    client: async_nats::Client,
    stream: stream::Stream,
    jetstream: jetstream::Context,
    name: String,
    /// The pull loops of the services loaded here.
    consuming: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
}

impl Nats {
    pub async fn connect(url: &NatsUrl) -> Result<Nats, String> {
        let client = url
            .options()
            .await?
            .connect(&url.server)
            .await
            .map_err(|e| format!("cannot connect to NATS at {}: {e}", url.server))?;
        let jetstream = jetstream::new(client.clone());
        let stream = jetstream
            .get_or_create_stream(stream::Config {
                name: format!("SAGA_HOST_{}", url.name),
                subjects: vec![format!("{}.msg.>", url.name)],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                num_replicas: url.replicas,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                format!(
                    "cannot create the JetStream stream on {}: {e}; is JetStream enabled (nats-server -js)?",
                    url.server
                )
            })?;
        Ok(Nats {
            client,
            stream,
            jetstream,
            name: url.name.clone(),
            consuming: Mutex::new(HashMap::new()),
        })
    }

    fn subject(&self, consumer: &str) -> String {
        format!("{}.msg.{consumer}", self.name)
    }

    fn ended_subject(&self) -> String {
        format!("{}.ended", self.name)
    }

    /// Publishes queued messages and waits for JetStream to store them; returns the queue
    /// entries it stored (to remove from the outbox).
    pub async fn publish(&self, queued: &[QueuedMessage]) -> Vec<i64> {
        let mut pending = Vec::with_capacity(queued.len());
        for entry in queued {
            let publish = jetstream::message::PublishMessage::build()
                .payload(entry.body.clone().into())
                // The same queue entry published twice (a relay that died before removing it)
                // is stored once.
                .message_id(format!("{}-{}", entry.id, entry.seq));
            match self
                .jetstream
                .send_publish(self.subject(&entry.consumer), publish)
                .await
            {
                Ok(ack) => pending.push((entry.seq, ack)),
                Err(error) => {
                    tracing::warn!(%error, "could not publish a message; it stays queued")
                }
            }
        }
        let mut stored = Vec::with_capacity(pending.len());
        for (seq, ack) in pending {
            match ack.await {
                Ok(_) => stored.push(seq),
                Err(error) => {
                    tracing::warn!(%error, "JetStream did not store a message; it stays queued")
                }
            }
        }
        stored
    }

    /// Tells every host that saga `id` ended.
    pub fn announce_end(&self, id: &str) {
        let (client, subject, id) = (self.client.clone(), self.ended_subject(), id.to_string());
        tokio::spawn(async move {
            if let Err(error) = client.publish(subject, id.into()).await {
                tracing::debug!(%error, "could not announce a saga's end");
            }
        });
    }

    /// Passes every saga end announced by any host to the broker's consumer.
    pub fn listen_for_ends(self: &Arc<Self>, broker: Broker) {
        let nats = self.clone();
        tokio::spawn(async move {
            let mut ends = match nats.client.subscribe(nats.ended_subject()).await {
                Ok(ends) => ends,
                Err(error) => {
                    tracing::error!(%error, "cannot listen for saga ends; waiters fall back to polling");
                    return;
                }
            };
            while let Some(end) = ends.next().await {
                if let Ok(id) = std::str::from_utf8(&end.payload) {
                    broker.saga_ended(id).await;
                }
            }
        });
    }

    /// Tells every host that a service has a new version in the cluster (the note says which),
    /// once the server has it.
    pub async fn announce_deployed(&self, note: String) -> Result<(), String> {
        let subject = format!("{}.deployed", self.name);
        (self.client.publish(subject, note.into()).await).map_err(|e| e.to_string())?;
        self.client.flush().await.map_err(|e| e.to_string())
    }

    /// Passes the note of every deploy any host announces to `notes`, while it is open.
    pub fn listen_for_deploys(&self, notes: tokio::sync::mpsc::UnboundedSender<String>) {
        let (client, subject) = (self.client.clone(), format!("{}.deployed", self.name));
        tokio::spawn(async move {
            let mut deploys = match client.subscribe(subject).await {
                Ok(deploys) => deploys,
                Err(error) => {
                    tracing::error!(%error, "cannot listen for deploys; hosts catch up with the cluster's versions every lease");
                    return;
                }
            };
            while let Some(deploy) = deploys.next().await {
                let note = String::from_utf8_lossy(&deploy.payload).into_owned();
                if notes.send(note).is_err() {
                    return;
                }
            }
        });
    }

    /// Consumes the messages of exactly these services here.
    pub fn consume(self: &Arc<Self>, services: &[String], broker: &Broker) {
        let mut consuming = self.consuming.lock().expect("consumers lock");
        consuming.retain(|service, task| {
            let keep = services.contains(service);
            if !keep {
                task.abort();
            }
            keep
        });
        for service in services {
            if !consuming.contains_key(service) {
                let (nats, broker, name) = (self.clone(), broker.clone(), service.clone());
                consuming.insert(
                    service.clone(),
                    tokio::spawn(async move { nats.pull(broker, name).await }),
                );
            }
        }
    }

    /// Pulls a service's messages for as long as it is loaded here, reconnecting on errors.
    async fn pull(self: Arc<Self>, broker: Broker, service: String) {
        loop {
            if let Err(error) = self.pull_until_error(&broker, &service).await {
                tracing::warn!(service, %error, "pulling messages failed; trying again in a second");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn pull_until_error(&self, broker: &Broker, service: &str) -> Result<(), String> {
        let consumer: consumer::PullConsumer = self
            .stream
            .get_or_create_consumer(
                service,
                consumer::pull::Config {
                    durable_name: Some(service.to_string()),
                    filter_subject: self.subject(service),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    max_deliver: -1,
                    max_ack_pending: MAX_ACK_PENDING,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        let in_hand = Arc::new(tokio::sync::Semaphore::new(IN_HAND));
        loop {
            // Take no more than it can handle: what it pulls, it holds until it acknowledges.
            let Ok(permit) = in_hand.clone().acquire_owned().await else {
                return Ok(());
            };
            let Some(message) = messages.next().await else {
                return Ok(());
            };
            let message = message.map_err(|e| e.to_string())?;
            let (broker, service) = (broker.clone(), service.to_string());
            tokio::spawn(async move {
                consume_pulled(broker, service, message).await;
                drop(permit);
            });
        }
    }
}

/// Hands one pulled message to the host and settles it with JetStream by the outcome.
async fn consume_pulled(broker: Broker, service: String, message: jetstream::Message) {
    let delivered = message
        .info()
        .map(|info| info.delivered)
        .unwrap_or(1)
        .max(1) as u32;
    let decoded = std::str::from_utf8(&message.payload)
        .map_err(|e| e.to_string())
        .and_then(|body| Message::decode(body).map_err(|e| e.to_string()));
    let decoded = match decoded {
        Ok(decoded) => decoded,
        Err(error) => {
            tracing::error!(service, %error, "an unreadable message is dropped");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    let delivery = Delivery {
        queued: None,
        consumer: service,
        message: decoded,
        attempts: delivered - 1,
    };
    // How many run at once is bounded by what the pull loop takes in hand.
    let handled = {
        let Some(consumer) = broker.inner.consumer.get().cloned() else {
            return;
        };
        let handling = consumer.consume(delivery.clone());
        tokio::pin!(handling);
        loop {
            tokio::select! {
                outcome = &mut handling => break outcome,
                _ = tokio::time::sleep(PROGRESS_EVERY) => {
                    let _ = message.ack_with(AckKind::Progress).await;
                }
            }
        }
    };
    let settled = match handled {
        Outcome::Done => message.ack().await,
        // Another host takes it at once.
        Outcome::Stopping => message.ack_with(AckKind::Nak(None)).await,
        Outcome::Retry(reason) => {
            let policy = &broker.inner.retry;
            if delivered >= policy.max_attempts {
                match broker.dead_letter(&delivery, delivered, reason).await {
                    Ok(()) => message.ack_with(AckKind::Term).await,
                    Err(error) => {
                        tracing::error!(%error, "could not record a dead letter; the message stays");
                        message.ack_with(AckKind::Nak(Some(policy.max_delay))).await
                    }
                }
            } else {
                let delay = policy.delay(delivered);
                tracing::warn!(
                    message_id = %delivery.message.id,
                    topic = %delivery.message.topic,
                    attempts = delivered,
                    retry_in_ms = delay.as_millis() as u64,
                    "delivery failed: {reason}"
                );
                metrics::redelivered(&delivery.consumer);
                message.ack_with(AckKind::Nak(Some(delay))).await
            }
        }
    };
    if let Err(error) = settled {
        tracing::warn!(%error, "could not settle a message with JetStream; it will be redelivered");
    }
}

#[cfg(test)]
mod tests {
    use super::{Credentials, NatsUrl};

    #[test]
    fn urls_name_the_server_the_cluster_and_the_replicas() {
        let url = NatsUrl::parse("nats://127.0.0.1:4222").unwrap();
        assert_eq!(
            (url.server.as_str(), url.name.as_str(), url.replicas),
            ("nats://127.0.0.1:4222", "saga-host", 1)
        );
        assert_eq!(url.credentials, Credentials::None);
        let url = NatsUrl::parse("nats://n1:4222/exams?replicas=3").unwrap();
        assert_eq!((url.name.as_str(), url.replicas), ("exams", 3));
        let url = NatsUrl::parse("nats://host-a:s%40cr%3At@n1/exams").unwrap();
        assert_eq!(
            url.server, "nats://n1:4222",
            "no credentials in what is shown"
        );
        assert_eq!(
            url.credentials,
            Credentials::UserPassword {
                user: "host-a".into(),
                password: "s@cr:t".into()
            }
        );
        assert_eq!(
            format!("{:?}", url.credentials),
            "user \"host-a\" with a password"
        );
        let url = NatsUrl::parse("tls://n1/exams?creds=/etc/h.creds&ca=/etc/ca.pem").unwrap();
        assert_eq!(url.server, "tls://n1:4222");
        assert_eq!(
            url.credentials,
            Credentials::CredsFile("/etc/h.creds".into())
        );
        assert!(url.tls.required);
        assert_eq!(
            url.tls.ca.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        let url = NatsUrl::parse("nats://n1?nkey=seed.nk&cert=c.pem&key=k.pem").unwrap();
        assert_eq!(url.credentials, Credentials::Nkey("seed.nk".into()));
        assert!(!url.tls.required, "nats:// leaves TLS to the server");
        assert_eq!(url.tls.client, Some(("c.pem".into(), "k.pem".into())));
        let url = NatsUrl::parse("nats://t0k3n@n1:4333").unwrap();
        assert_eq!(url.credentials, Credentials::Token("t0k3n".into()));
        assert!(!format!("{url:?}").contains("t0k3n"));
        for (bad, says) in [
            ("http://x", "must start with nats:// or tls://"),
            (
                "nats://u:p@h/x?nkey=/k",
                "more than one kind of credentials",
            ),
            ("nats://h/x?cert=/c", "needs both"),
            ("nats:///x", "names no server"),
            ("nats://h/a.b", "must be 1 to 64 letters"),
            ("nats://h/x?replicas=9", "replicas must be 1 to 5"),
            ("nats://h/x?speed=1", "not a known option"),
        ] {
            let error = NatsUrl::parse(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }
}
