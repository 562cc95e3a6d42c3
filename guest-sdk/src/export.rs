//! The macros that make a crate a component: they implement the exports of a WIT world for a
//! function that builds the [`crate::Service`], and invoke the bindings' `export!`, which tells
//! the component's build the world it is for.
//!
//! The host calls a component an orchestrator when it exports `saga-callbacks`, so a service
//! without sagas is exported for the `participant` world: it exports `service` alone.

/// Exports a service that runs no saga of its own: `export_participant!(service)` where
/// `fn service() -> Service`. It handles commands, queries, events and routes — saga steps'
/// commands among them — and is built for the WIT world `participant`.
#[macro_export]
macro_rules! export_participant {
    ($service:path) => {
        $crate::__export_service!(__SagaSdkExport, $crate::Participant, $service);
    };
}

/// Exports a service that orchestrates sagas: `export_orchestrator!(service)` where
/// `fn service() -> Service<Orchestrator>` (what [`crate::Service::saga`] returns). It is built
/// for the WIT world `orchestrator`: it can run its sagas, and exports their callbacks.
#[macro_export]
macro_rules! export_orchestrator {
    ($service:path) => {
        $crate::__export_service!(__SagaSdkExport, $crate::Orchestrator, $service);

        impl $crate::bindings::orchestrator::exports::saga::host::saga_callbacks::Guest
            for __SagaSdkExport
        {
            fn prepare(
                saga: ::std::string::String,
                callback: ::std::string::String,
                context: ::std::string::String,
            ) -> ::core::result::Result<
                $crate::bindings::saga::host::types::SagaRequest,
                $crate::bindings::saga::host::types::Error,
            > {
                $crate::__dispatch::prepare(&__SagaSdkExport::service(), &saga, &callback, &context)
            }

            fn on_reply(
                saga: ::std::string::String,
                callback: ::std::string::String,
                context: ::std::string::String,
                reply: $crate::bindings::saga::host::types::Reply,
            ) -> ::core::result::Result<::std::string::String, $crate::bindings::saga::host::types::Error> {
                $crate::__dispatch::on_reply(&__SagaSdkExport::service(), &saga, &callback, &context, reply)
            }

            fn execute(
                saga: ::std::string::String,
                callback: ::std::string::String,
                context: ::std::string::String,
            ) -> ::core::result::Result<::std::string::String, $crate::bindings::saga::host::types::Error> {
                $crate::__dispatch::execute(&__SagaSdkExport::service(), &saga, &callback, &context)
            }

            fn condition(
                saga: ::std::string::String,
                callback: ::std::string::String,
                context: ::std::string::String,
            ) -> ::core::result::Result<bool, $crate::bindings::saga::host::types::Error> {
                $crate::__dispatch::condition(&__SagaSdkExport::service(), &saga, &callback, &context)
            }
        }

        $crate::bindings::orchestrator::export!(
            __SagaSdkExport with_types_in $crate::bindings::orchestrator
        );
    };
}

/// What both worlds export: `service`, and with it the world `participant`, which the
/// orchestrator's additions complete.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_service {
    ($export:ident, $world:ty, $service:path) => {
        struct $export;

        impl $export {
            /// The service every export calls. Its type names the world, so that a service
            /// exported with the other world's macro is one type error here ("expected
            /// `Service<Participant>`, found `Service<Orchestrator>`").
            fn service() -> $crate::Service<$world> {
                $service()
            }
        }

        impl $crate::bindings::exports::saga::host::service::Guest for $export {
            fn describe() -> $crate::bindings::saga::host::types::Manifest {
                $crate::__dispatch::describe(&$export::service())
            }

            fn handle(
                request: $crate::bindings::saga::host::types::Request,
            ) -> ::core::result::Result<
                $crate::bindings::saga::host::types::Response,
                $crate::bindings::saga::host::types::Error,
            > {
                $crate::__dispatch::handle(&$export::service(), request)
            }
        }

        $crate::bindings::export!($export with_types_in $crate::bindings);
    };
}
