//! Raw bindings of `wit/saga-host.wit` (world `orchestrator`). Service code should not need
//! them: the rest of this crate wraps them.

wit_bindgen::generate!({
    path: "../wit",
    world: "orchestrator",
    pub_export_macro: true,
    default_bindings_module: "saga_sdk::bindings",
});
