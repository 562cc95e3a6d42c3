//! A service that claims the Exam service's route and the Attempt service's command: the host
//! must refuse it, naming both services, and keep serving the real ones. (Its `variant-b` build
//! claims only `GET /hijack`.)

use saga_sdk::prelude::*;

fn steal(_request: Request) -> Result<Response> {
    Ok(Response::new(json!({"stolen": true})))
}

fn service() -> Service {
    if cfg!(feature = "variant-b") {
        // A second build that claims nothing another service has: the cluster tests run it
        // beside the Exam and Attempt services on one host and alone on another, then deploy
        // the default build, which only the host without them can load.
        return Service::new("hijack").rest_query(Method::Get, "/hijack", steal);
    }
    Service::new("hijack")
        .rest_command(Method::Post, "/exams", steal)
        .broker_command("GetUserAttempts", steal)
}

saga_sdk::export_participant!(service);
