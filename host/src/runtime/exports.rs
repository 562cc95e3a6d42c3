//! What a component exports and how one call reaches it: the calls the host makes (`Call`) and
//! what each returns (`Returned`), where the exported functions are (`Exports`, found once at
//! load), and one call on a fresh instance (`run_call`).

use wasmtime::Store;
use wasmtime::component::{
    ComponentExportIndex, ComponentNamedList, Instance, InstancePre, Lift, Lower, TypedFunc,
};

use super::bindings::{saga_callbacks, service, types as wit};
use super::outcome::MissingExport;
use super::{CallState, ServiceVersion, WIT_VERSION};

/// What a call asks of the component.
pub(super) enum Call {
    Describe,
    Handle(wit::Request),
    Prepare {
        saga: String,
        callback: String,
        context: String,
    },
    OnReply {
        saga: String,
        callback: String,
        context: String,
        reply: wit::Reply,
    },
    Execute {
        saga: String,
        callback: String,
        context: String,
    },
    Condition {
        saga: String,
        callback: String,
        context: String,
    },
}

pub(super) enum Returned {
    Manifest(wit::Manifest),
    Response(Result<wit::Response, wit::Error>),
    Request(Result<wit::SagaRequest, wit::Error>),
    Context(Result<String, wit::Error>),
    Decision(Result<bool, wit::Error>),
}

impl Call {
    /// The export called, as the WIT names it.
    pub(super) fn export(&self) -> &'static str {
        match self {
            Call::Describe => "describe",
            Call::Handle(_) => "handle",
            Call::Prepare { .. } => "prepare",
            Call::OnReply { .. } => "on-reply",
            Call::Execute { .. } => "execute",
            Call::Condition { .. } => "condition",
        }
    }

    /// The saga definition and callback it runs, for a saga callback.
    pub(super) fn callback(&self) -> (&str, &str) {
        match self {
            Call::Describe | Call::Handle(_) => ("", ""),
            Call::Prepare { saga, callback, .. }
            | Call::OnReply { saga, callback, .. }
            | Call::Execute { saga, callback, .. }
            | Call::Condition { saga, callback, .. } => (saga, callback),
        }
    }
}

impl Returned {
    /// Whether the component answered with an error of its own.
    pub(super) fn is_error(&self) -> bool {
        match self {
            Returned::Manifest(_) => false,
            Returned::Response(r) => r.is_err(),
            Returned::Request(r) => r.is_err(),
            Returned::Context(r) => r.is_err(),
            Returned::Decision(r) => r.is_err(),
        }
    }
}

/// Where a component's exports are. `describe` (the first call of every version) checks every
/// exported function's type through the generated bindings; each later call looks its one
/// function up by index and trusts those types, instead of checking the whole interface again
/// on every instance (which the generated `load` does: a tenth of a no-op call's cost).
#[derive(Clone)]
pub(super) struct Exports {
    service: service::GuestIndices,
    handle: ComponentExportIndex,
    /// The saga callbacks, when the component exports them (an orchestrator).
    callbacks: Option<Callbacks>,
}

#[derive(Clone)]
struct Callbacks {
    indices: saga_callbacks::GuestIndices,
    prepare: ComponentExportIndex,
    on_reply: ComponentExportIndex,
    execute: ComponentExportIndex,
    condition: ComponentExportIndex,
}

impl Exports {
    /// The exports of `pre`'s component; `None` when it does not export the service interface.
    pub(super) fn of(pre: &InstancePre<CallState>) -> Option<Exports> {
        let component = pre.component();
        let func = |interface: &str, name: &str| {
            let interface =
                component.get_export_index(None, format!("saga:host/{interface}@{WIT_VERSION}"))?;
            component.get_export_index(Some(&interface), name)
        };
        let callbacks = (|| {
            Some(Callbacks {
                indices: saga_callbacks::GuestIndices::new(pre).ok()?,
                prepare: func("saga-callbacks", "prepare")?,
                on_reply: func("saga-callbacks", "on-reply")?,
                execute: func("saga-callbacks", "execute")?,
                condition: func("saga-callbacks", "condition")?,
            })
        })();
        Some(Exports {
            service: service::GuestIndices::new(pre).ok()?,
            handle: func("service", "handle")?,
            callbacks,
        })
    }

    /// Whether the component exports saga callbacks.
    pub(super) fn orchestrates(&self) -> bool {
        self.callbacks.is_some()
    }
}

/// The function at `index` of a fresh instance, typed without a check.
///
/// # Safety
/// `Params` and `Results` must be the types the generated bindings give the function, which
/// `describe` checked for this component when it was loaded.
unsafe fn export<Params, Results>(
    store: &mut Store<CallState>,
    instance: &Instance,
    index: &ComponentExportIndex,
) -> wasmtime::Result<TypedFunc<Params, Results>>
where
    Params: ComponentNamedList + Lower,
    Results: ComponentNamedList + Lift,
{
    let func = instance
        .get_func(&mut *store, index)
        .ok_or_else(|| wasmtime::Error::msg("an export found at load is missing"))?;
    // SAFETY: the caller's promise: the types are the ones checked at load.
    Ok(unsafe { TypedFunc::new_unchecked(func) })
}

pub(super) async fn run_call(
    store: &mut Store<CallState>,
    version: &ServiceVersion,
    call: Call,
) -> wasmtime::Result<Returned> {
    let instance: Instance = version.pre.instantiate_async(&mut *store).await?;
    let exports = &version.exports;
    let callbacks = || {
        exports
            .callbacks
            .as_ref()
            .ok_or_else(|| wasmtime::Error::new(MissingExport("saga:host/saga-callbacks@0.2.0")))
    };
    // SAFETY (each `export`): the types are the generated bindings' for these functions, which
    // `Call::Describe` checked when this version was loaded.
    Ok(match call {
        Call::Describe => {
            let guest = exports.service.load(&mut *store, &instance)?;
            if let Some(callbacks) = &exports.callbacks {
                callbacks.indices.load(&mut *store, &instance)?;
            }
            Returned::Manifest(guest.call_describe(&mut *store).await?)
        }
        Call::Handle(request) => {
            let handle = unsafe {
                export::<(&wit::Request,), (Result<wit::Response, wit::Error>,)>(
                    store,
                    &instance,
                    &exports.handle,
                )
            }?;
            Returned::Response(handle.call_async(&mut *store, (&request,)).await?.0)
        }
        Call::Prepare {
            saga,
            callback,
            context,
        } => {
            let prepare = unsafe {
                export::<(&str, &str, &str), (Result<wit::SagaRequest, wit::Error>,)>(
                    store,
                    &instance,
                    &callbacks()?.prepare,
                )
            }?;
            let args = (saga.as_str(), callback.as_str(), context.as_str());
            Returned::Request(prepare.call_async(&mut *store, args).await?.0)
        }
        Call::OnReply {
            saga,
            callback,
            context,
            reply,
        } => {
            let on_reply = unsafe {
                export::<(&str, &str, &str, &wit::Reply), (Result<String, wit::Error>,)>(
                    store,
                    &instance,
                    &callbacks()?.on_reply,
                )
            }?;
            let args = (saga.as_str(), callback.as_str(), context.as_str(), &reply);
            Returned::Context(on_reply.call_async(&mut *store, args).await?.0)
        }
        Call::Execute {
            saga,
            callback,
            context,
        } => {
            let execute = unsafe {
                export::<(&str, &str, &str), (Result<String, wit::Error>,)>(
                    store,
                    &instance,
                    &callbacks()?.execute,
                )
            }?;
            let args = (saga.as_str(), callback.as_str(), context.as_str());
            Returned::Context(execute.call_async(&mut *store, args).await?.0)
        }
        Call::Condition {
            saga,
            callback,
            context,
        } => {
            let condition = unsafe {
                export::<(&str, &str, &str), (Result<bool, wit::Error>,)>(
                    store,
                    &instance,
                    &callbacks()?.condition,
                )
            }?;
            let args = (saga.as_str(), callback.as_str(), context.as_str());
            Returned::Decision(condition.call_async(&mut *store, args).await?.0)
        }
    })
}
