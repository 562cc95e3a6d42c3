//! The Attempt service of the tutorial: it counts how many times a user has submitted an exam
//! and refuses a submission beyond the limit.
//!
//! `GetUserAttempts {user, exam}` answers with the number of attempts the user had before this
//! one (0 when none) and counts this one — or refuses with "The maximum number of attempts has
//! been exceeded." once the limit is reached. Run as a step of the Exam service's saga, the
//! count is staged under the saga: it becomes visible when the saga commits and vanishes if the
//! saga fails. While a saga holds the count, a concurrent submission for the same user and exam
//! waits for it, so the limit holds under any concurrency.

use saga_sdk::prelude::*;

/// How many attempts a user has at one exam.
pub const MAX_ATTEMPTS: u32 = 3;

#[derive(Debug, Serialize, Deserialize)]
#[serde(crate = "saga_sdk::serde")]
struct Attempt {
    user: Uuid,
    exam: Uuid,
    quantity: u32,
}

impl Aggregate for Attempt {
    const NAME: &'static str = "Attempt";
    const INDEXES: &'static [&'static str] = &["user", "exam"];
}

#[derive(Deserialize)]
#[serde(crate = "saga_sdk::serde")]
struct AttemptQuery {
    user: Uuid,
    exam: Uuid,
}

/// One Attempt per (user, exam), under a name-based uuid: it is read by that uuid, and
/// concurrent first attempts create the same aggregate, so that the storage lets only one of
/// them through at a time (the host runs the others again, and they find it).
fn attempt_uuid(user: Uuid, exam: Uuid) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("attempt/{user}/{exam}").as_bytes(),
    )
}

fn get_user_attempts(request: Request) -> Result<Response> {
    let AttemptQuery { user, exam } = request.content()?;
    let uuid = attempt_uuid(user, exam);
    match Attempt::get(uuid) {
        Ok(mut attempt) => {
            if attempt.quantity >= MAX_ATTEMPTS {
                return Err(Error::business(
                    "The maximum number of attempts has been exceeded.",
                ));
            }
            let before = attempt.quantity;
            attempt.quantity += 1;
            attempt.save()?;
            Ok(Response::new(before))
        }
        Err(error) if error.is_not_found() => {
            Attempt {
                user,
                exam,
                quantity: 1,
            }
            .create_with_uuid(uuid)?;
            Ok(Response::new(0))
        }
        Err(error) => Err(error),
    }
}

/// `GET /attempts/{user_uuid}/{exam_uuid}`: the count, 0 when the user never submitted.
fn count_attempts(request: Request) -> Result<Response> {
    let user: Uuid = request.param_as("user_uuid")?;
    let exam: Uuid = request.param_as("exam_uuid")?;
    let quantity = match Attempt::get(attempt_uuid(user, exam)) {
        Ok(attempt) => attempt.quantity,
        Err(error) if error.is_not_found() => 0,
        Err(error) => return Err(error),
    };
    Ok(Response::new(json!({
        "user_uuid": user,
        "exam_uuid": exam,
        "quantity": quantity,
        "remaining": MAX_ATTEMPTS.saturating_sub(quantity),
    })))
}

fn service() -> Service {
    Service::new("attempt")
        .aggregate::<Attempt>()
        .broker_command("GetUserAttempts", get_user_attempts)
        .rest_query(
            Method::Get,
            "/attempts/{user_uuid}/{exam_uuid}",
            count_attempts,
        )
}

saga_sdk::export_participant!(service);
