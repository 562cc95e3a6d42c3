//! saga-host: runs business services compiled to WebAssembly components and gives them a
//! message broker, event-sourced storage and a saga orchestrator. See ARCHITECTURE.md for the
//! map of the code.

pub mod broker;
pub mod cluster;
pub mod deploy;
pub mod ends;
pub mod handler;
pub mod host;
pub mod http;
pub mod runtime;
pub mod saga;
pub mod storage;

pub use host::{Config, Host, Running, StartError};
