//! The Exam service of the tutorial. `POST /exams {"user_uuid", "exam_uuid"}` (or the broker
//! command `CreateExam`) runs the saga GET_USER_ATTEMPTS: it asks the Attempt service
//! `GetUserAttempts` and, when the user has attempts left, commits by creating the Exam.

use saga_sdk::prelude::*;

pub const GET_USER_ATTEMPTS: &str = "GET_USER_ATTEMPTS";

/// The hot-swap tests deploy a second build of this service (feature `variant-b`) in turns with
/// the default one, and tell their answers apart by this field.
const BUILD: Option<&str> = if cfg!(feature = "variant-b") {
    Some("b")
} else {
    None
};

#[derive(Debug, Serialize, Deserialize)]
struct Exam {
    user_uuid: Uuid,
    exam_uuid: Uuid,
    /// Which attempt this submission is: 1 for the first.
    attempt: u32,
}

impl Aggregate for Exam {
    const NAME: &'static str = "Exam";
    const INDEXES: &'static [&'static str] = &["user_uuid", "exam_uuid"];
}

/// The body of `POST /exams`.
#[derive(Deserialize)]
struct SubmitExam {
    user_uuid: Uuid,
    exam_uuid: Uuid,
}

/// The payload of the `GetUserAttempts` command.
#[derive(Serialize)]
struct AttemptQuery {
    user: Uuid,
    exam: Uuid,
}

fn prepare_data(context: &SagaContext) -> Result<AttemptQuery> {
    Ok(AttemptQuery {
        user: context.get("user_uuid")?,
        exam: context.get("exam_uuid")?,
    })
}

fn store_attempts(mut context: SagaContext, reply: Reply) -> Result<SagaContext> {
    context.set("attempts", reply.content::<u32>()?);
    Ok(context)
}

/// The Attempt service refused (the limit is reached): fail the step with its reason.
fn refuse(_context: SagaContext, reply: Reply) -> Result<SagaContext> {
    Err(Error::with_status(reply.status, reply.message()))
}

fn commit_result(mut context: SagaContext) -> Result<SagaContext> {
    let exam = Exam {
        user_uuid: context.get("user_uuid")?,
        exam_uuid: context.get("exam_uuid")?,
        attempt: context.get::<u32>("attempts")? + 1,
    }
    .create()?;
    context.set("exam", &exam);
    Ok(context)
}

fn get_user_attempts() -> Saga {
    Saga::new()
        .step()
        .invoke_participant("GetUserAttempts", prepare_data)
        .on_reply(store_attempts)
        .on_error(refuse)
        .commit(commit_result)
}

fn submit_exam(request: Request) -> Result<Response> {
    let content: SubmitExam = request.content()?;
    let saga = SagaManager::run(
        GET_USER_ATTEMPTS,
        SagaContext::new()
            .with("user_uuid", content.user_uuid)
            .with("exam_uuid", content.exam_uuid),
    )?;
    if saga.status == SagaStatus::Finished {
        let mut exam = saga.context["exam"].clone();
        if let (Some(build), Some(fields)) = (BUILD, exam.as_object_mut()) {
            fields.insert("build".into(), build.into());
        }
        return Ok(Response::new(exam));
    }
    let cause = saga
        .error
        .unwrap_or_else(|| Error::system("the saga did not finish"));
    Err(Error::with_status(
        cause.status,
        format!("An error occurred during exam submit: {}", cause.message),
    ))
}

fn get_exam(request: Request) -> Result<Response> {
    let uuid: Uuid = request.param_as("uuid")?;
    Ok(Response::new(Exam::get(uuid)?))
}

/// `GET /exams?user_uuid=…&exam_uuid=…`: a user's submissions, oldest first.
fn list_exams(request: Request) -> Result<Response> {
    let mut conditions = Vec::new();
    for field in ["user_uuid", "exam_uuid"] {
        if let Some(value) = request.query(field) {
            let uuid = Uuid::parse_str(value).map_err(|e| {
                Error::business(format!(
                    "query parameter {field} = {value:?} is not a UUID: {e}"
                ))
            })?;
            conditions.push(Condition::equal(field, uuid));
        }
    }
    if conditions.is_empty() {
        return Err(Error::business(
            "give user_uuid, exam_uuid or both as query parameters",
        ));
    }
    let exams = Exam::find_ordered(
        Condition::and(conditions),
        &[Ordering::asc("created_at")],
        Some(100),
    )?;
    Ok(Response::new(exams))
}

fn service() -> Service {
    Service::new("exam")
        .aggregate::<Exam>()
        .rest_command("POST", "/exams", submit_exam)
        .broker_command("CreateExam", submit_exam)
        .rest_query("GET", "/exams/{uuid}", get_exam)
        .rest_query("GET", "/exams", list_exams)
        .saga(GET_USER_ATTEMPTS, get_user_attempts())
}

saga_sdk::export_service!(service);
