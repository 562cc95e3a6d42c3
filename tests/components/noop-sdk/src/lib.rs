//! `test-noop` written with the SDK: `GET /noop` answers nothing. `saga-bench instantiate` calls
//! it (as `rust-sdk`) beside `test-noop` to show what a service built with Rust's standard
//! library costs a call more: resolving the WASI imports the library links in.

use saga_sdk::prelude::*;

fn noop(_request: Request) -> Result<Response> {
    Ok(Response::empty())
}

fn service() -> Service {
    Service::new("noop").rest_query(Method::Get, "/noop", noop)
}

saga_sdk::export_participant!(service);
