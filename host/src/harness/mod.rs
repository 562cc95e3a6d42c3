//! The test harness: a host inside the test's own process — no server, no connection — on a
//! temporary SQLite database, with the participants a service talks to stubbed by topic and a
//! clock the test moves. Requests go through the same router a serving host answers with;
//! commands straight to their handler.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use saga_host::harness::{Harness, Reply};
//! use serde_json::json;
//!
//! let harness = Harness::start(&["exam.wasm".into()]).await?;
//! harness.stub("GetUserAttempts", Reply::Success(json!(0)));
//! let answer = harness
//!     .request("POST", "/exams", json!({"user_uuid": "…", "exam_uuid": "…"}))
//!     .await?;
//! assert_eq!(answer.status, 201);
//! # Ok(())
//! # }
//! ```
//!
//! `saga-host test-run SCRIPT.json` runs the same harness from a JSON script (`script.rs`), for
//! services written in Python or JavaScript.

pub mod script;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use axum::body::Body;
use futures::FutureExt;
use futures::future::BoxFuture;
use saga_core::ids::SagaId;
use saga_core::message::{Kind, Message, SagaRef};
use serde_json::Value;
use tower::ServiceExt;

use crate::broker::{Broker, Consume, Delivery, Outcome};
use crate::handler::{self, Handled, Invocation};
use crate::host::{Config, Parts};
use crate::http::Settings;
use crate::runtime::{RuntimeConfig, ServiceVersion};
use crate::saga::{Orchestrator, SagaConfig, record::Stored};
use crate::storage::{Consumed, Consumes, Queue, TopicKind, Transaction};

/// The consumer name the stubbed topics are addressed to.
const STUBS: &str = "harness-stubs";

/// How often a harness waiting for a request looks whether everything else is idle.
const IDLE_TICK: Duration = Duration::from_millis(20);

/// How long `settle` waits for the queue to empty at most.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// What a stubbed participant answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A SUCCESS reply (status 200) with this payload.
    Success(Value),
    /// An ERROR reply (status 400): the participant refused, with this message.
    BusinessError(String),
    /// A SYSTEM_ERROR reply (status 500), with this message.
    SystemError(String),
    /// Nothing: the command is taken and never answered.
    None,
}

impl Reply {
    /// The reply's status and JSON payload; none for `Reply::None`.
    fn message(&self) -> Option<(u16, String)> {
        match self {
            Reply::Success(payload) => Some((200, payload.to_string())),
            Reply::BusinessError(message) => Some((400, Value::from(message.as_str()).to_string())),
            Reply::SystemError(message) => Some((500, Value::from(message.as_str()).to_string())),
            Reply::None => None,
        }
    }
}

/// A command a stubbed participant received.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Value,
    /// The message's id: a command sent again for a missing reply keeps it.
    pub message_id: String,
    /// The saga step (or compensation) that sent it.
    pub saga: Option<SagaRef>,
    /// What the stub answered.
    pub reply: Reply,
}

/// An answer: an HTTP response's status and body, or a command's reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    /// The JSON body; a body that is not JSON as a string.
    pub body: Value,
}

type Answering = Arc<dyn Fn(&Message) -> Reply + Send + Sync>;

/// The stubbed participants: what each topic answers, and what they received.
#[derive(Default)]
struct Stubs {
    answers: Mutex<HashMap<String, Answering>>,
    received: Mutex<Vec<Received>>,
}

/// A host in the test's process. Dropping it removes its data.
pub struct Harness {
    parts: Parts,
    app: axum::Router,
    stubs: Arc<Stubs>,
    dir: PathBuf,
}

impl Harness {
    /// Starts a harness with these components loaded (a failure to load one says which and
    /// why), on a fresh temporary SQLite database.
    pub async fn start(components: &[PathBuf]) -> anyhow::Result<Harness> {
        let dir = std::env::temp_dir().join(format!("saga-harness-{}", uuid::Uuid::new_v4()));
        let components_dir = dir.join("components");
        std::fs::create_dir_all(&components_dir)
            .with_context(|| format!("cannot create {}", components_dir.display()))?;
        let harness = Harness::assemble(dir.clone()).await?;
        for path in components {
            let name = path
                .file_name()
                .ok_or_else(|| anyhow!("{} names no file", path.display()))?;
            std::fs::copy(path, components_dir.join(name))
                .with_context(|| format!("cannot read the component {}", path.display()))?;
        }
        harness
            .parts
            .deployer
            .load_components()
            .await
            .map_err(|e| anyhow!("{e}"))?;
        Ok(harness)
    }

    async fn assemble(dir: PathBuf) -> anyhow::Result<Harness> {
        let config = Config {
            listen: ([127, 0, 0, 1], 0).into(),
            tls: None,
            data_dir: dir.clone(),
            components_dir: dir.join("components"),
            database_url: None,
            runtime: RuntimeConfig {
                max_instances: 64,
                cache_dir: Some(compile_cache()),
                ..RuntimeConfig::default()
            },
            sagas: SagaConfig::default(),
            delivery: Default::default(),
            http: Settings {
                max_body_bytes: 1 << 20,
                request_timeout: Duration::from_secs(120),
                max_component_bytes: 64 << 20,
                admin_token: Some("harness".into()),
                metrics_token: None,
                access_log: false,
            },
            watch: None,
            broker_url: None,
            lease: Duration::from_secs(5),
            history_retention: Duration::from_secs(7 * 24 * 3600),
            idempotency_retention: Duration::from_secs(24 * 3600),
        };
        let parts = crate::host::assemble(&config)
            .await
            .map_err(|e| anyhow!("the harness could not start: {e}"))?;
        let stubs = Arc::new(Stubs::default());
        parts.broker.set_consumer(Arc::new(StubbingConsumer {
            stubs: stubs.clone(),
            router: Arc::downgrade(&parts.router),
            broker: parts.broker.clone(),
        }));
        let app = crate::http::router(parts.api.clone());
        Ok(Harness {
            parts,
            app,
            stubs,
            dir,
        })
    }

    /// The services loaded.
    pub fn services(&self) -> Vec<String> {
        self.parts
            .api
            .registry
            .current()
            .by_name
            .keys()
            .cloned()
            .collect()
    }

    /// Every command on `topic` gets `reply` from now on (replacing an earlier stub).
    pub fn stub(&self, topic: &str, reply: Reply) {
        self.stub_with(topic, move |_| reply.clone());
    }

    /// Every command on `topic` is answered by `answer`, which sees the message.
    pub fn stub_with(
        &self,
        topic: &str,
        answer: impl Fn(&Message) -> Reply + Send + Sync + 'static,
    ) {
        let mut answers = self.stubs.answers.lock().expect("stubs lock");
        answers.insert(topic.to_string(), Arc::new(answer));
        let consumes: Vec<Consumes> = answers
            .keys()
            .map(|topic| Consumes {
                service: STUBS.into(),
                kind: TopicKind::Command,
                topic: topic.clone(),
            })
            .collect();
        self.parts.broker.set_cluster_consumes(&consumes);
    }

    /// The commands the stubs received, in order.
    pub fn received(&self) -> Vec<Received> {
        self.stubs.received.lock().expect("stubs lock").clone()
    }

    /// Forgets what the stubs received.
    pub fn clear_received(&self) {
        self.stubs.received.lock().expect("stubs lock").clear();
    }

    /// Sends an HTTP request through the host's router (no connection) and waits until the
    /// work it queued is done.
    pub async fn request(&self, method: &str, path: &str, body: Value) -> anyhow::Result<Answer> {
        self.request_with(method, path, body, &[]).await
    }

    /// `request`, with headers.
    pub async fn request_with(
        &self,
        method: &str,
        path: &str,
        body: Value,
        headers: &[(String, String)],
    ) -> anyhow::Result<Answer> {
        let mut request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let body = if body.is_null() {
            Body::empty()
        } else {
            Body::from(body.to_string())
        };
        let request = request
            .body(body)
            .map_err(|e| anyhow!("not a request: {method} {path}: {e}"))?;
        let response = self
            .skipping_idle_time(self.app.clone().oneshot(request))
            .await?;
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
        self.settle().await;
        Ok(Answer {
            status,
            body: json_or_text(&bytes),
        })
    }

    /// Hands a command (or query) to the loaded service that handles `topic` and returns its
    /// reply; what the handler sent is handled before this returns.
    pub async fn command(&self, topic: &str, payload: Value) -> anyhow::Result<Answer> {
        let services = self.parts.api.registry.current();
        let Some(service) = services
            .topics
            .commands
            .get(topic)
            .and_then(|name| services.by_name.get(name))
            .cloned()
        else {
            bail!("no loaded service handles the command {topic:?}");
        };
        drop(services);
        let message = Message::command(topic, payload.to_string(), Vec::new(), None);
        let Some((request, scope, access)) = handler::request_for(&service, &message) else {
            bail!("service {} has no handler for {topic:?}", service.name());
        };
        let invocation = Invocation {
            service,
            user: None,
            request,
            scope,
            access,
            message: None,
        };
        let handled = self
            .skipping_idle_time(self.parts.api.handlers.run(invocation))
            .await?;
        let (status, payload) = match handled {
            Handled::Answered(answer) => handler::reply_of(&Ok(answer)),
            Handled::Failed(error) => handler::reply_of(&Err(error)),
            Handled::Duplicate => bail!("the command was handled before"),
        };
        self.settle().await;
        Ok(Answer {
            status,
            body: json_or_text(payload.as_bytes()),
        })
    }

    /// Publishes an event to every loaded service that subscribes to `topic`, and waits until
    /// they handled it.
    pub async fn event(&self, topic: &str, payload: Value) -> anyhow::Result<()> {
        let messages = self.parts.broker.address_event(topic, None, || {
            Message::event(topic, payload.to_string(), Vec::new())
        });
        if messages.is_empty() {
            bail!("no loaded service subscribes to the event {topic:?}");
        }
        self.parts
            .broker
            .commit(Transaction {
                messages,
                ..Transaction::default()
            })
            .await?;
        self.settle().await;
        Ok(())
    }

    /// Lets `by` pass on the sagas' clock: the step timeouts, retries and deadlines due by then
    /// fire, and what they send is handled.
    pub async fn advance(&self, by: Duration) {
        self.orchestrator().advance_clock(by).await;
        self.settle().await;
    }

    /// Awaits `work`; whenever everything else is idle meanwhile — no message queued for a few
    /// ticks — while a saga timer is pending, moves the clock to that timer. A request that
    /// waits for a saga whose participant never answers thus returns once the step's timeouts
    /// ran out, at once.
    async fn skipping_idle_time<T>(&self, work: impl Future<Output = T>) -> T {
        let mut work = std::pin::pin!(work);
        let mut quiet_ticks = 0;
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = tokio::time::sleep(IDLE_TICK) => {}
            }
            let queued = self.parts.storage.backlog().await.map_or(1, |b| b.queued);
            quiet_ticks = if queued == 0 { quiet_ticks + 1 } else { 0 };
            let orchestrator = self.orchestrator();
            if quiet_ticks >= 3
                && let Some(at) = orchestrator.next_timer_at()
            {
                let by = (at - orchestrator.now()).max(0) as u64;
                orchestrator
                    .advance_clock(Duration::from_millis(by + 1))
                    .await;
                quiet_ticks = 0;
            }
        }
    }

    /// A saga as stored.
    pub async fn saga(&self, id: SagaId) -> anyhow::Result<Stored> {
        self.orchestrator()
            .inspect(id)
            .await
            .map_err(|e| anyhow!(e))?
            .ok_or_else(|| anyhow!("no saga {id}"))
    }

    /// The ids of every saga stored, oldest first.
    pub async fn sagas(&self) -> anyhow::Result<Vec<SagaId>> {
        let answer = self
            .request_with(
                "GET",
                "/sagas?limit=1000",
                Value::Null,
                &[("authorization".into(), "Bearer harness".into())],
            )
            .await?;
        let mut ids: Vec<SagaId> = answer.body["sagas"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|saga| saga["id"].as_str()?.parse().ok())
            .collect();
        ids.reverse();
        Ok(ids)
    }

    /// The committed events of the aggregates, all services together (a saga's staged ones
    /// count once it finished).
    pub async fn aggregate_events(&self) -> anyhow::Result<i64> {
        let url = format!(
            "sqlite://{}?mode=ro",
            self.dir.join("saga-host.db").display()
        );
        let mut connection = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url).await?;
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
            .fetch_one(&mut connection)
            .await?;
        Ok(count)
    }

    /// The loaded version of a service.
    pub(crate) fn version(&self, service: &str) -> Option<Arc<ServiceVersion>> {
        self.parts.api.registry.service(service)
    }

    pub(crate) fn orchestrator(&self) -> &Arc<Orchestrator> {
        &self.parts.orchestrator
    }

    /// Waits (a bounded time) until no message waits in the queue: whatever the last action
    /// sent has been handled.
    pub async fn settle(&self) {
        let given_up = tokio::time::Instant::now() + SETTLE_LIMIT;
        while tokio::time::Instant::now() < given_up {
            match self.parts.storage.backlog().await {
                Ok(backlog) if backlog.queued == 0 => return,
                Ok(_) => tokio::time::sleep(Duration::from_millis(2)).await,
                Err(error) => {
                    tracing::warn!(%error, "the harness could not read the queue");
                    return;
                }
            }
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where harnesses keep compiled components, shared by every run (entries are named by the
/// component's digest and written durably, so runs at once do not trip on each other):
/// `$SAGA_HOST_CACHE`, else the user's own `~/.cache/saga-host` — never a directory others
/// can write, since what is there is loaded as native code.
fn compile_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("SAGA_HOST_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("saga-host-{}", uuid::Uuid::new_v4()))
        });
    base.join("saga-host")
}

fn json_or_text(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// The broker's consumer in a harness: commands to stubbed topics get their canned reply; all
/// else goes where it goes in a host.
struct StubbingConsumer {
    stubs: Arc<Stubs>,
    router: std::sync::Weak<crate::host::Router>,
    broker: Broker,
}

impl StubbingConsumer {
    async fn answer(&self, delivery: Delivery) -> Outcome {
        let message = &delivery.message;
        let answering = self
            .stubs
            .answers
            .lock()
            .expect("stubs lock")
            .get(&message.topic)
            .cloned();
        let reply = answering.map_or(Reply::None, |answer| answer(message));
        self.stubs
            .received
            .lock()
            .expect("stubs lock")
            .push(Received {
                topic: message.topic.clone(),
                payload: json_or_text(message.payload.as_bytes()),
                message_id: message.id.to_string(),
                saga: message.saga,
                reply: reply.clone(),
            });
        let consumed = Consumed {
            consumer: delivery.consumer.clone(),
            message_id: message.id.to_string(),
            reply: reply
                .message()
                .and_then(|(status, payload)| self.broker.address_reply(message, status, payload)),
        };
        self.broker.acknowledge(delivery.queued, consumed).await
    }
}

impl Consume for StubbingConsumer {
    fn consume(&self, delivery: Delivery) -> BoxFuture<'static, Outcome> {
        if delivery.consumer == STUBS && delivery.message.kind != Kind::Reply {
            let this = StubbingConsumer {
                stubs: self.stubs.clone(),
                router: self.router.clone(),
                broker: self.broker.clone(),
            };
            return async move { this.answer(delivery).await }.boxed();
        }
        let router = self.router.upgrade();
        async move {
            match router {
                Some(router) => router.route(delivery).await,
                None => Outcome::Stopping,
            }
        }
        .boxed()
    }

    fn saga_ended(&self, _id: String) -> BoxFuture<'static, ()> {
        // One host: nothing ends elsewhere.
        async {}.boxed()
    }
}

/// Reads a component path relative to a directory (a script's).
pub(crate) fn relative_to(base: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}
