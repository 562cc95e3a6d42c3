//! A service whose saga is never committed: the host must refuse it when it loads, naming the
//! saga.

use saga_sdk::prelude::*;

fn nothing(_request: Request) -> Result<Response> {
    Ok(Response::empty())
}

fn service() -> Service<Orchestrator> {
    Service::new("broken")
        .rest_query(Method::Get, "/broken", nothing)
        .saga(
            "UNFINISHED",
            Saga::new()
                .step()
                .invoke_participant("GetUserAttempts", |_context| Ok(Value::Null)),
        )
}

saga_sdk::export_orchestrator!(service);
