//! Host-side bindings of the WIT contract in `wit/` (world `orchestrator`, which includes the
//! `participant` world). Imports are async (they reach storage and the saga orchestrator) and may
//! trap (a call that breaks a host limit is stopped).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "orchestrator",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use exports::saga::host::saga_callbacks;
pub use exports::saga::host::service;
pub use saga::host::types;
pub use saga::host::{broker, logging, sagas, storage};
