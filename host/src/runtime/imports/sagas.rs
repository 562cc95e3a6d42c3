//! The `sagas` import: a service starts and looks up its own sagas, over the parts of the call
//! it needs — who calls, its budget, its place among the service's concurrent calls (given up
//! while it waits for a saga, which may need a place of its own), and what it read of storage
//! (which the saga may change).

use std::sync::Arc;

use saga_core::engine::Context;

use crate::runtime::bindings::{sagas, types as wit};
use crate::runtime::call::{Budget, CallEnv, Caller, Identity, Seen};
use crate::runtime::compute::{Meter, Pacer};

/// The call's state as the sagas import sees it.
pub struct SagasImport<'a> {
    pub(super) who: &'a Identity,
    pub(super) env: Option<&'a Arc<CallEnv>>,
    pub(super) budget: &'a mut Budget,
    pub(super) permit: &'a mut Option<tokio::sync::OwnedSemaphorePermit>,
    pub(super) seen: &'a mut Seen,
    pub(super) pacer: &'a Pacer,
    pub(super) meter: &'a Meter,
}

fn refused(message: String) -> wit::Error {
    wit::Error {
        status: 500,
        message,
    }
}

impl sagas::Host for SagasImport<'_> {
    async fn run(
        &mut self,
        name: String,
        context: String,
        options: sagas::RunOptions,
    ) -> wasmtime::Result<Result<wit::Execution, wit::Error>> {
        self.budget.host_call(self.who)?;
        let env = match super::acting(self.who, self.env) {
            Ok(env) => env.clone(),
            Err(problem) => return Ok(Err(refused(problem))),
        };
        let context = match Context::parse(context) {
            Ok(context) => context,
            Err(problem) => {
                return Ok(Err(wit::Error {
                    status: 400,
                    message: format!("the saga context is invalid: {problem}"),
                }));
            }
        };
        let caller = Caller {
            service: self.who.service.clone(),
            user: self.who.user.clone(),
        };
        let gave_up_permit = options.wait && self.permit.take().is_some();
        let waiting = options
            .wait
            .then(|| self.pacer.waiting(self.meter))
            .flatten();
        let result = env.sagas.run(caller, name, context, options.wait).await;
        drop(waiting);
        // The saga may have changed what the call read: it reads it from storage again.
        self.seen.forget_reads();
        if gave_up_permit {
            *self.permit = self.who.service.calls.clone().acquire_owned().await.ok();
        }
        Ok(result)
    }

    async fn current(&mut self) -> wasmtime::Result<Option<String>> {
        self.budget.host_call(self.who)?;
        Ok(self.who.saga_id().map(|id| id.to_string()))
    }

    async fn get(&mut self, id: String) -> wasmtime::Result<Result<wit::Execution, wit::Error>> {
        self.budget.host_call(self.who)?;
        let env = match super::env(self.who, self.env) {
            Ok(env) => env.clone(),
            Err(problem) => return Ok(Err(refused(problem))),
        };
        let service = self.who.service_name().to_string();
        Ok(env.sagas.get(service, id).await)
    }
}
