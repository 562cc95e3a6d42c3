//! Raw bindings of `wit/saga-host.wit`. Service code should not need them: the rest of this crate
//! wraps them.
//!
//! This module holds the world `participant`, which is what every service has. [`orchestrator`]
//! holds what the world `orchestrator` adds to it: the `sagas` import and the `saga-callbacks`
//! export. The world a component is built for is the union of the worlds whose `export!` its
//! export macro invokes — `participant` alone ([`crate::export_participant!`]), or both
//! ([`crate::export_orchestrator!`]) — and imports no code of the component calls are left out.

wit_bindgen::generate!({
    path: "../wit",
    world: "participant",
    pub_export_macro: true,
    default_bindings_module: "saga_sdk::bindings",
});

/// What the world `orchestrator` adds to `participant`.
///
/// wit-bindgen names the macros that export an interface after the interface alone, once per
/// crate, so the `service` export can be generated only once, here in `participant`. This world
/// is therefore the orchestrator's two additional lines of `wit/saga-host.wit`, and it reuses
/// the types generated above.
pub mod orchestrator {
    wit_bindgen::generate!({
        path: "../wit",
        inline: "
            package saga-sdk:bindings;

            world orchestrator-additions {
                import saga:host/sagas@0.2.0;
                export saga:host/saga-callbacks@0.2.0;
            }
        ",
        world: "saga-sdk:bindings/orchestrator-additions",
        pub_export_macro: true,
        default_bindings_module: "saga_sdk::bindings::orchestrator",
        with: {
            "saga:host/types@0.2.0": crate::bindings::saga::host::types,
            "saga:host/sagas@0.2.0": generate,
        },
    });
}
