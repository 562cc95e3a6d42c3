//! The saga engine's rules, as a pure state machine: `Machine::decide(execution, event)` moves an
//! execution to its next state and says what must be done (`Action`s: run a callback, send a
//! command, promote or discard the saga's staged writes, wake whoever waits) and what to record
//! in its history (`Entry`s). The host's driver performs the actions and stores the result; the
//! rules themselves are unit- and property-tested here, without wasm, storage or time.

mod backward;
mod commands;
mod execution;
mod forward;
mod io;
mod machine;
mod operator;

#[cfg(test)]
mod tests;

pub use execution::{
    Acted, Compensation, CompensationStatus, Context, ErrorInfo, Execution, Frame, Json, Sent,
    Status, StepKind, StepRecord, StepStatus,
};
pub use io::{
    Action, Callback, CallbackKind, Command, Cost, Due, Entry, Event, OperatorAction, Recorded,
    Rejected, Returned, Target,
};
pub use machine::{Config, Decision, Definitions, Env, Machine, reply_message};
