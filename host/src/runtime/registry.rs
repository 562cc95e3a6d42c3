//! The loaded services and what reaches them: REST routes and broker topics. A new set is built
//! and checked whole (no two services may claim the same route or command topic) before it
//! replaces the old one atomically, so a request always sees one consistent set.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock, Weak};

use arc_swap::ArcSwap;
use futures::future::BoxFuture;

use super::ServiceVersion;
use super::bindings::types as wit;
use super::manifest::{describe_trigger, method_name};
use crate::broker::Topics;

/// Where a REST request goes.
#[derive(Debug, Clone)]
pub struct RouteTarget {
    pub service: String,
    pub handler: String,
    pub trigger: wit::Trigger,
    /// A rest-query: the handler may not write.
    pub read_only: bool,
}

/// One consistent set of loaded services.
#[derive(Default)]
pub struct Services {
    pub by_name: BTreeMap<String, Arc<ServiceVersion>>,
    routes: HashMap<&'static str, matchit::Router<RouteTarget>>,
    pub topics: Topics,
}

/// A matched REST route.
pub struct Matched<'a> {
    pub target: &'a RouteTarget,
    pub params: Vec<(String, String)>,
}

impl Services {
    /// Builds the routing of a set of services, refusing any route, command topic or aggregate
    /// type that two of them declare.
    fn build(by_name: BTreeMap<String, Arc<ServiceVersion>>) -> Result<Services, String> {
        let mut routes: HashMap<&'static str, matchit::Router<RouteTarget>> = HashMap::new();
        let mut owners: HashMap<String, String> = HashMap::new();
        let mut topics = Topics::default();
        for (name, version) in &by_name {
            for aggregate in version.manifest.aggregates.keys() {
                for action in ["Created", "Updated", "Deleted"] {
                    let topic = format!("{aggregate}{action}");
                    if let Some(owner) = topics.aggregate_events.insert(topic, name.clone()) {
                        return Err(format!(
                            "aggregate type {aggregate} is declared by both service {owner} and service {name}; \
                             their events ({aggregate}Created, …) could not be told apart: rename one"
                        ));
                    }
                }
            }
            for handler in &version.manifest.handlers {
                for trigger in &handler.triggers {
                    match trigger {
                        wit::Trigger::BrokerCommand(topic) | wit::Trigger::BrokerQuery(topic) => {
                            if let Some(owner) = topics.commands.insert(topic.clone(), name.clone())
                            {
                                return Err(format!(
                                    "{} is declared by both service {owner} and service {name}",
                                    describe_trigger(trigger)
                                ));
                            }
                        }
                        wit::Trigger::BrokerEvent(topic) => {
                            topics
                                .events
                                .entry(topic.clone())
                                .or_default()
                                .push(name.clone());
                        }
                        wit::Trigger::RestCommand(route) | wit::Trigger::RestQuery(route) => {
                            let method = method_name(route.method);
                            let target = RouteTarget {
                                service: name.clone(),
                                handler: handler.name.clone(),
                                trigger: trigger.clone(),
                                read_only: matches!(trigger, wit::Trigger::RestQuery(_)),
                            };
                            let key = format!("{method} {}", route.path);
                            if let Err(error) = routes
                                .entry(method)
                                .or_default()
                                .insert(route.path.clone(), target)
                            {
                                let other = match &error {
                                    matchit::InsertError::Conflict { with } => owners
                                        .get(&format!("{method} {with}"))
                                        .map(|owner| {
                                            format!("route {method} {with} of service {owner}")
                                        })
                                        .unwrap_or_else(|| format!("route {method} {with}")),
                                    _ => error.to_string(),
                                };
                                return Err(format!(
                                    "route {method} {} of service {name} conflicts with {other}",
                                    route.path
                                ));
                            }
                            owners.insert(key, name.clone());
                        }
                    }
                }
            }
        }
        topics.services = by_name.keys().cloned().collect();
        Ok(Services {
            by_name,
            routes,
            topics,
        })
    }

    pub fn route(&self, method: &str, path: &str) -> Option<Matched<'_>> {
        let matched = self.routes.get(method)?.at(path).ok()?;
        Some(Matched {
            target: matched.value,
            params: matched
                .params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }

    /// Methods that have a route at `path`, for a 405 answer.
    pub fn methods_at(&self, path: &str) -> Vec<&'static str> {
        let mut methods: Vec<&'static str> = self
            .routes
            .iter()
            .filter(|(_, router)| router.at(path).is_ok())
            .map(|(method, _)| *method)
            .collect();
        methods.sort_unstable();
        methods
    }
}

/// Loads, on demand, a version of a service that is not loaded here: a saga taken over from
/// another host of a cluster, or resumed after a restart, may run on a version this host never
/// had (the host's deployer finds its bytes in the version store or the cluster's database).
pub trait Fetch: Send + Sync {
    /// Loads version `digest` of `service` and keeps it for the sagas running on it; none when
    /// it cannot (the log says why).
    fn fetch<'a>(
        &'a self,
        service: &'a str,
        digest: &'a str,
    ) -> BoxFuture<'a, Option<Arc<ServiceVersion>>>;
}

/// The current set of services, swapped atomically, and the older versions that running
/// sagas are still pinned to.
pub struct Registry {
    current: ArcSwap<Services>,
    broker: crate::broker::Broker,
    /// Serialises changes, so that two concurrent installs cannot lose one another.
    change: tokio::sync::Mutex<()>,
    /// Replaced versions kept for the sagas that started on them, by digest.
    retired: std::sync::Mutex<HashMap<String, Arc<ServiceVersion>>>,
    /// Where versions that are not loaded come from (weak: the deployer holds the registry).
    fetch: OnceLock<Weak<dyn Fetch>>,
}

impl Registry {
    pub fn new(broker: crate::broker::Broker) -> Self {
        Registry {
            current: ArcSwap::from_pointee(Services::default()),
            broker,
            change: tokio::sync::Mutex::new(()),
            retired: std::sync::Mutex::new(HashMap::new()),
            fetch: OnceLock::new(),
        }
    }

    /// Sets where versions that are not loaded come from; done once, when the host starts.
    pub fn set_fetch(&self, fetch: Weak<dyn Fetch>) {
        let _ = self.fetch.set(fetch);
    }

    /// A version of a service, loaded first if it is not (see `Fetch`).
    pub async fn version_or_fetch(
        &self,
        service: &str,
        digest: &str,
    ) -> Option<Arc<ServiceVersion>> {
        if let Some(version) = self.version(service, digest) {
            return Some(version);
        }
        let fetch = self.fetch.get().and_then(Weak::upgrade)?;
        fetch.fetch(service, digest).await
    }

    /// A version of a service: the current one, or a retired one a saga is pinned to.
    pub fn version(&self, service: &str, digest: &str) -> Option<Arc<ServiceVersion>> {
        if let Some(current) = self.service(service)
            && current.digest == digest
        {
            return Some(current);
        }
        self.retired
            .lock()
            .expect("retired lock")
            .get(digest)
            .filter(|v| v.name() == service)
            .cloned()
    }

    /// Keeps a replaced version for the sagas still running on it.
    pub fn retire(&self, version: Arc<ServiceVersion>) {
        tracing::info!(
            service = version.name(),
            digest = version.short_digest(),
            "the replaced version stays loaded for the sagas still running on it"
        );
        self.retired
            .lock()
            .expect("retired lock")
            .insert(version.digest.clone(), version);
    }

    /// Unloads a retired version no saga needs any more.
    pub fn release(&self, digest: &str) {
        if let Some(version) = self.retired.lock().expect("retired lock").remove(digest) {
            tracing::info!(
                service = version.name(),
                digest = version.short_digest(),
                "unloaded a retired version"
            );
        }
    }

    pub fn retired(&self) -> Vec<Arc<ServiceVersion>> {
        self.retired
            .lock()
            .expect("retired lock")
            .values()
            .cloned()
            .collect()
    }

    pub fn current(&self) -> Arc<Services> {
        self.current.load_full()
    }

    pub fn service(&self, name: &str) -> Option<Arc<ServiceVersion>> {
        self.current.load().by_name.get(name).cloned()
    }

    /// Installs a version, replacing the service's current one; refused (nothing changes) when
    /// its routes or topics clash with another service's. Returns the version it replaced.
    pub async fn install(
        &self,
        version: Arc<ServiceVersion>,
    ) -> Result<Option<Arc<ServiceVersion>>, String> {
        let _change = self.change.lock().await;
        let mut by_name = self.current.load().by_name.clone();
        let digest = version.digest.clone();
        let replaced = by_name.insert(version.manifest.name.clone(), version);
        let services = Services::build(by_name)?;
        self.broker.set_topics(services.topics.clone());
        self.current.store(Arc::new(services));
        // A version loaded for its sagas before it became current is current now.
        self.retired.lock().expect("retired lock").remove(&digest);
        Ok(replaced)
    }

    /// Removes a service; returns the removed version.
    pub async fn remove(&self, name: &str) -> Option<Arc<ServiceVersion>> {
        let _change = self.change.lock().await;
        let mut by_name = self.current.load().by_name.clone();
        let removed = by_name.remove(name)?;
        let services =
            Services::build(by_name).expect("removing a service cannot create a conflict");
        self.broker.set_topics(services.topics.clone());
        self.current.store(Arc::new(services));
        Some(removed)
    }
}

impl ServiceVersion {
    /// The handler a broker message for `topic` of this kind reaches, with the trigger.
    pub fn handler_for(
        &self,
        kind: crate::broker::Kind,
        topic: &str,
    ) -> Option<(&str, &wit::Trigger)> {
        use crate::broker::Kind;
        self.manifest.handlers.iter().find_map(|handler| {
            handler
                .triggers
                .iter()
                .find(|trigger| match (kind, trigger) {
                    (Kind::Command, wit::Trigger::BrokerCommand(t)) => t == topic,
                    (Kind::Query, wit::Trigger::BrokerQuery(t)) => t == topic,
                    // A command may be sent to a query topic and vice versa: the sender does not
                    // know which the receiver declared.
                    (Kind::Command, wit::Trigger::BrokerQuery(t)) => t == topic,
                    (Kind::Query, wit::Trigger::BrokerCommand(t)) => t == topic,
                    (Kind::Event, wit::Trigger::BrokerEvent(t)) => t == topic,
                    _ => false,
                })
                .map(|trigger| (handler.name.as_str(), trigger))
        })
    }
}
