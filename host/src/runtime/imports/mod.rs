//! The host's imports, one module per WIT interface, each implemented over a narrow view of the
//! call's state — the parts of `CallContext` it needs — as wasmtime-wasi does per interface.

mod broker;
mod logging;
mod sagas;
mod storage;

use std::sync::Arc;

use saga_core::message::SagaRef;
use wasmtime::component::{HasData, HasSelf, Linker};

pub use storage::json_kind;

use super::bindings::saga::host as wit;
use super::call::{Access, CallEnv, CallState, Identity};
use crate::broker::Message;
use broker::BrokerImport;
use logging::LoggingImport;
use sagas::SagasImport;
use storage::{Failure, StorageImport};

struct StorageData;
impl HasData for StorageData {
    type Data<'a> = StorageImport<'a>;
}

struct BrokerData;
impl HasData for BrokerData {
    type Data<'a> = BrokerImport<'a>;
}

struct SagasData;
impl HasData for SagasData {
    type Data<'a> = SagasImport<'a>;
}

struct LoggingData;
impl HasData for LoggingData {
    type Data<'a> = LoggingImport<'a>;
}

/// Adds WASI (which grants nothing) and every saga:host interface to `linker`, each over its
/// view of the call.
pub fn add_to_linker(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wit::types::add_to_linker::<CallState, HasSelf<CallState>>(linker, |state| state)?;
    wit::storage::add_to_linker::<CallState, StorageData>(linker, |state| {
        let ctx = &mut state.ctx;
        StorageImport {
            who: &ctx.who,
            env: ctx.env.as_ref(),
            effects: &mut ctx.effects,
            budget: &mut ctx.budget,
            seen: &mut ctx.seen,
        }
    })?;
    wit::broker::add_to_linker::<CallState, BrokerData>(linker, |state| {
        let ctx = &mut state.ctx;
        BrokerImport {
            who: &ctx.who,
            env: ctx.env.as_ref(),
            effects: &mut ctx.effects,
            budget: &mut ctx.budget,
        }
    })?;
    wit::sagas::add_to_linker::<CallState, SagasData>(linker, |state| SagasImport {
        who: &state.ctx.who,
        env: state.ctx.env.as_ref(),
        budget: &mut state.ctx.budget,
        permit: &mut state.ctx.permit,
        seen: &mut state.ctx.seen,
        pacer: &state.pacer,
        meter: &state.meter,
    })?;
    wit::logging::add_to_linker::<CallState, LoggingData>(linker, |state| LoggingImport {
        who: &state.ctx.who,
        budget: &mut state.ctx.budget,
    })?;
    Ok(())
}

/// What the host gives the call, unless it is `describe`, which may use nothing.
fn env<'a>(who: &Identity, env: Option<&'a Arc<CallEnv>>) -> Result<&'a Arc<CallEnv>, String> {
    match (env, who.access) {
        (Some(env), Access::ReadWrite | Access::ReadOnly) => Ok(env),
        _ => Err("describe may not use storage, the broker or sagas".into()),
    }
}

/// What the host gives the call, if it may change something (write, send, start a saga): not
/// a query.
fn acting<'a>(who: &Identity, env: Option<&'a Arc<CallEnv>>) -> Result<&'a Arc<CallEnv>, String> {
    let env = self::env(who, env)?;
    if who.access == Access::ReadOnly {
        return Err("this handler is a query (rest-query or broker-query) and may not write; declare it as a command to write".into());
    }
    Ok(env)
}

/// A message the call sends, marked with the user it acts for and the saga it works for.
fn outgoing(who: &Identity, mut message: Message) -> Message {
    if let Some(user) = &who.user {
        message.headers.push(("user".to_string(), user.clone()));
    }
    message.saga = who.saga_id().map(SagaRef::within);
    message
}

/// An import's outcome for wasmtime: an error the component receives, or a trap.
fn answer<T, E>(result: Result<T, Failure>) -> wasmtime::Result<Result<T, E>>
where
    E: From<super::bindings::storage::StorageError>,
{
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(Failure::Guest(error)) => Ok(Err(error.into())),
        Err(Failure::Trap(trap)) => Err(trap),
    }
}
