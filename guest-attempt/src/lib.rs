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

/// One Attempt per (user, exam): a name-based uuid makes concurrent first attempts create the
/// same aggregate, so that the storage lets only one of them through at a time.
fn attempt_uuid(user: Uuid, exam: Uuid) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("attempt/{user}/{exam}").as_bytes(),
    )
}

fn by_user_and_exam(user: Uuid, exam: Uuid) -> Condition {
    Condition::and([
        Condition::equal("user", user),
        Condition::equal("exam", exam),
    ])
}

fn get_user_attempts(request: Request) -> Result<Response> {
    let AttemptQuery { user, exam } = request.content()?;
    match Attempt::find(by_user_and_exam(user, exam), Some(1))?
        .into_iter()
        .next()
    {
        Some(mut attempt) => {
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
        None => {
            Attempt {
                user,
                exam,
                quantity: 1,
            }
            .create_with_uuid(attempt_uuid(user, exam))?;
            Ok(Response::new(0))
        }
    }
}

/// `GET /attempts/{user_uuid}/{exam_uuid}`: the count, 0 when the user never submitted.
fn count_attempts(request: Request) -> Result<Response> {
    let user: Uuid = request.param_as("user_uuid")?;
    let exam: Uuid = request.param_as("exam_uuid")?;
    let quantity = Attempt::find(by_user_and_exam(user, exam), Some(1))?
        .first()
        .map_or(0, |attempt| attempt.quantity);
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
