//! A component's saga definitions: any sequence of builder calls. Each is accepted or refused
//! with a reason, and the references between the accepted ones are checked without panicking.

#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use saga_core::definition::{self, Invocation, Operation, SagaDefinition};

#[derive(Arbitrary, Debug)]
enum FuzzOperation {
    Step,
    RemoteStep,
    LocalStep,
    ConditionalStep,
    InvokeParticipant(Option<String>, Option<String>),
    OnReply(String),
    OnSuccess(String),
    OnError(String),
    WithCompensation(Option<String>, Option<String>),
    OnExecute(String),
    OnFailure(String),
    IfThen(String, String),
    ElseThen(String),
    Commit(Option<String>),
}

#[derive(Arbitrary, Debug)]
struct FuzzSaga {
    name: String,
    operations: Vec<FuzzOperation>,
    step_timeout_ms: Option<u32>,
    timeout_ms: Option<u32>,
}

fn operation(fuzzed: FuzzOperation) -> Operation {
    let invocation = |topic, prepare| Invocation { topic, prepare };
    match fuzzed {
        FuzzOperation::Step => Operation::Step,
        FuzzOperation::RemoteStep => Operation::RemoteStep,
        FuzzOperation::LocalStep => Operation::LocalStep,
        FuzzOperation::ConditionalStep => Operation::ConditionalStep,
        FuzzOperation::InvokeParticipant(topic, prepare) => {
            Operation::InvokeParticipant(invocation(topic, prepare))
        }
        FuzzOperation::OnReply(callback) => Operation::OnReply(callback),
        FuzzOperation::OnSuccess(callback) => Operation::OnSuccess(callback),
        FuzzOperation::OnError(callback) => Operation::OnError(callback),
        FuzzOperation::WithCompensation(topic, prepare) => {
            Operation::WithCompensation(invocation(topic, prepare))
        }
        FuzzOperation::OnExecute(callback) => Operation::OnExecute(callback),
        FuzzOperation::OnFailure(callback) => Operation::OnFailure(callback),
        FuzzOperation::IfThen(condition, saga) => Operation::IfThen { condition, saga },
        FuzzOperation::ElseThen(saga) => Operation::ElseThen(saga),
        FuzzOperation::Commit(callback) => Operation::Commit(callback),
    }
}

fuzz_target!(|sagas: Vec<FuzzSaga>| {
    let mut accepted = Vec::new();
    for saga in sagas {
        let operations: Vec<Operation> = saga.operations.into_iter().map(operation).collect();
        let millis = |ms: Option<u32>| ms.map(|ms| Duration::from_millis(ms.into()));
        if let Ok(definition) = SagaDefinition::parse(
            &saga.name,
            &operations,
            millis(saga.step_timeout_ms),
            millis(saga.timeout_ms),
        ) {
            let _ = definition.inner_sagas().count();
            accepted.push(definition);
        }
    }
    let _ = definition::check_references(&accepted);
});
