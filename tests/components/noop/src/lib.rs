//! The smallest service: `GET /noop` answers nothing. `saga-bench instantiate` calls it to
//! measure what one instantiate-and-call costs the host itself, with as little of the
//! component's own work as a service can have.

use saga_sdk::prelude::*;

fn noop(_request: Request) -> Result<Response> {
    Ok(Response::empty())
}

fn service() -> Service {
    Service::new("noop").rest_query(Method::Get, "/noop", noop)
}

saga_sdk::export_participant!(service);
