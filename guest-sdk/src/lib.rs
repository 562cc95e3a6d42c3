//! The Rust SDK for saga-host services.
//!
//! A service is a function that builds a [`Service`] — its handlers, aggregates and sagas — and
//! one line that exports it:
//!
//! ```ignore
//! use saga_sdk::prelude::*;
//!
//! fn service() -> Service<Orchestrator> {
//!     Service::new("exam")
//!         .aggregate::<Exam>()
//!         .rest_command(Method::Post, "/exams", submit_exam)
//!         .saga(GET_USER_ATTEMPTS, get_user_attempts())
//! }
//!
//! saga_sdk::export_orchestrator!(service);
//! ```
//!
//! A service without sagas is a plain `Service` and is exported with
//! [`export_participant!`]: the component is then built for the WIT world `participant`.
//!
//! Build it with `cargo build --target wasm32-wasip2 --release`; the `.wasm` is the component
//! saga-host loads. The host makes a fresh instance for every call, so keep no state in
//! globals: store it in aggregates.
//!
//! `saga-sdk` is the only dependency a service needs. Payloads, aggregates and saga contexts are
//! serde types; the SDK re-exports [`serde`], and a derive names it with one attribute:
//!
//! ```ignore
//! #[derive(Serialize, Deserialize)]
//! #[serde(crate = "saga_sdk::serde")]
//! struct Exam { user_uuid: Uuid, exam_uuid: Uuid, attempt: u32 }
//! ```

mod aggregate;
mod arena;
#[doc(hidden)]
pub mod bindings;
mod condition;
mod error;
mod export;
mod request;
mod saga;
mod service;

pub use aggregate::{Aggregate, Stored};
pub use arena::ARENA_BYTES;
pub use condition::{Condition, Op, Ordering};
pub use error::{Error, Result};
pub use request::{Request, Response};
pub use saga::{Reply, Saga, SagaContext, SagaExecution, SagaManager, SagaStatus};
/// The serde the SDK is built with. serde's derives refer to a crate named `serde`; with
/// `#[serde(crate = "saga_sdk::serde")]` they use this one instead, so a service needs no
/// serde dependency of its own.
pub use serde;
pub use serde_json::{Value, json};
pub use service::{Method, Orchestrator, Participant, Service};
pub use uuid::Uuid;

#[doc(hidden)]
pub use service::dispatch as __dispatch;

/// A UUID as the host names things ("67e55044-10b1-426f-9247-bb680e5fe0c8"), written into
/// `buffer` (`Uuid::encode_buffer()`): `to_string` would go through `fmt`, on every call.
fn uuid_text<'a>(uuid: &Uuid, buffer: &'a mut [u8; uuid::fmt::Urn::LENGTH]) -> &'a str {
    uuid.hyphenated().encode_lower(buffer)
}

/// Messages to other services; they are sent when the current call succeeds.
pub mod broker {
    use crate::Result;
    use serde::Serialize;

    use crate::bindings::saga::host::broker;

    /// Publishes an event to every service subscribed to `topic`.
    pub fn publish(topic: &str, payload: &impl Serialize) -> Result<()> {
        let payload = serde_json::to_string(payload)?;
        Ok(broker::publish(topic, &payload)?)
    }

    /// Sends a command to the service that handles `topic`; its reply, if `reply_topic` is
    /// given, arrives as a request on that topic of this service. Returns the message id.
    pub fn send(
        topic: &str,
        payload: &impl Serialize,
        reply_topic: Option<&str>,
    ) -> Result<String> {
        let payload = serde_json::to_string(payload)?;
        Ok(broker::send(topic, &payload, reply_topic)?)
    }
}

/// Log lines, recorded by the host with the service, saga and message ids.
pub mod log {
    use crate::bindings::saga::host::logging::{Level, log};

    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }

    pub fn info(message: &str) {
        log(Level::Info, message)
    }

    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }

    pub fn error(message: &str) {
        log(Level::Error, message)
    }
}

/// Everything a service usually needs.
pub mod prelude {
    pub use crate::{
        Aggregate, Condition, Error, Method, Orchestrator, Ordering, Participant, Reply, Request,
        Response, Result, Saga, SagaContext, SagaExecution, SagaManager, SagaStatus, Service,
        Stored, Uuid, Value, json,
    };
    pub use serde::{Deserialize, Serialize};
}
