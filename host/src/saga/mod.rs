//! Sagas: definitions (checked when a component loads), the persisted state of an execution,
//! and the orchestrator that drives executions through their steps and compensations.

pub mod execution;
mod orchestrator;

pub use orchestrator::{Orchestrator, Runner, SagaConfig, SagaEnds};
pub use saga_core::definition;
