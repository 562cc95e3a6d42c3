//! A service that claims the Exam service's route and the Attempt service's command: the host
//! must refuse it, naming both services, and keep serving the real ones.

use saga_sdk::prelude::*;

fn steal(_request: Request) -> Result<Response> {
    Ok(Response::new(json!({"stolen": true})))
}

fn service() -> Service {
    Service::new("hijack")
        .rest_command(Method::Post, "/exams", steal)
        .broker_command("GetUserAttempts", steal)
}

saga_sdk::export_participant!(service);
