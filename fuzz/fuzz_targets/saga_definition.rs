//! A component's saga definitions: any sequence of builder calls. Each is accepted or refused
//! with a reason, and the references between the accepted ones are checked without panicking.

#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use saga_core::definition::{self, Operation, SagaDefinition};

#[derive(Arbitrary, Debug)]
struct FuzzSaga {
    name: String,
    operations: Vec<Operation>,
    step_timeout_ms: Option<u32>,
    timeout_ms: Option<u32>,
}

fuzz_target!(|sagas: Vec<FuzzSaga>| {
    let mut accepted = Vec::new();
    for saga in sagas {
        let millis = |ms: Option<u32>| ms.map(|ms| Duration::from_millis(ms.into()));
        if let Ok(definition) = SagaDefinition::parse(
            &saga.name,
            &saga.operations,
            millis(saga.step_timeout_ms),
            millis(saga.timeout_ms),
        ) {
            let _ = definition.inner_sagas().count();
            accepted.push(definition);
        }
    }
    let _ = definition::check_references(&accepted);
});
