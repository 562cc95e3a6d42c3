//! The Rust SDK for saga-host services.
//!
//! A service is a function that builds a [`Service`] — its handlers, aggregates and sagas — and
//! one line that exports it:
//!
//! ```ignore
//! use saga_sdk::prelude::*;
//!
//! fn service() -> Service {
//!     Service::new("exam")
//!         .aggregate::<Exam>()
//!         .rest_command(Method::Post, "/exams", submit_exam)
//!         .saga(GET_USER_ATTEMPTS, get_user_attempts())
//! }
//!
//! saga_sdk::export_service!(service);
//! ```
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
#[doc(hidden)]
pub mod bindings;
mod condition;
mod error;
mod request;
mod saga;
mod service;

pub use aggregate::{Aggregate, Stored};
pub use condition::{Condition, Op, Ordering};
pub use error::{Error, Result};
pub use request::{Request, Response};
pub use saga::{Reply, Saga, SagaContext, SagaExecution, SagaManager, SagaStatus};
/// The serde the SDK is built with. serde's derives refer to a crate named `serde`; with
/// `#[serde(crate = "saga_sdk::serde")]` they use this one instead, so a service needs no
/// serde dependency of its own.
pub use serde;
pub use serde_json::{Value, json};
pub use service::{Method, Service};
pub use uuid::Uuid;

#[doc(hidden)]
pub use service::dispatch as __dispatch;

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
        Aggregate, Condition, Error, Method, Ordering, Reply, Request, Response, Result, Saga,
        SagaContext, SagaExecution, SagaManager, SagaStatus, Service, Stored, Uuid, Value, json,
    };
    pub use serde::{Deserialize, Serialize};
}

/// Exports a service: `export_service!(service)` where `fn service() -> Service`.
#[macro_export]
macro_rules! export_service {
    ($service:path) => {
        struct __SagaSdkExport;

        impl $crate::bindings::exports::saga::host::service::Guest for __SagaSdkExport {
            fn describe() -> $crate::bindings::saga::host::types::Manifest {
                $crate::__dispatch::describe(&$service())
            }

            fn handle(
                request: $crate::bindings::saga::host::types::Request,
            ) -> ::core::result::Result<
                $crate::bindings::saga::host::types::Response,
                $crate::bindings::saga::host::types::Error,
            > {
                $crate::__dispatch::handle(&$service(), request)
            }
        }

        impl $crate::bindings::exports::saga::host::saga_callbacks::Guest for __SagaSdkExport {
            fn prepare(
                saga: ::std::string::String,
                callback: ::std::string::String,
                context: ::std::string::String,
            ) -> ::core::result::Result<
                $crate::bindings::saga::host::types::SagaRequest,
                $crate::bindings::saga::host::types::Error,
            > {
                $crate::__dispatch::prepare(&$service(), &saga, &callback, &context)
            }

            fn on_reply(
                saga: ::std::string::String,
                callback: ::std::string::String,
                context: ::std::string::String,
                reply: $crate::bindings::saga::host::types::Reply,
            ) -> ::core::result::Result<::std::string::String, $crate::bindings::saga::host::types::Error> {
                $crate::__dispatch::on_reply(&$service(), &saga, &callback, &context, reply)
            }

            fn execute(
                saga: ::std::string::String,
                callback: ::std::string::String,
                context: ::std::string::String,
            ) -> ::core::result::Result<::std::string::String, $crate::bindings::saga::host::types::Error> {
                $crate::__dispatch::execute(&$service(), &saga, &callback, &context)
            }

            fn condition(
                saga: ::std::string::String,
                callback: ::std::string::String,
                context: ::std::string::String,
            ) -> ::core::result::Result<bool, $crate::bindings::saga::host::types::Error> {
                $crate::__dispatch::condition(&$service(), &saga, &callback, &context)
            }
        }

        $crate::bindings::export!(__SagaSdkExport with_types_in $crate::bindings);
    };
}
