//! The Exam service of the tutorial. `POST /exams {"user_uuid", "exam_uuid"}` (or the broker
//! command `CreateExam`) runs the saga GET_USER_ATTEMPTS: it asks the Attempt service
//! `GetUserAttempts` and, when the user has attempts left, commits by creating the Exam.
//!
//! `POST /exams/graded {"user_uuid", "exam_uuid", "answers"}` runs GRADED_EXAM, which also
//! involves the participants written in other languages (examples/): the notifier (JavaScript)
//! tells the student, the grader (Python) scores the answers — or refuses them, and then the
//! notification is retracted (its compensation).

use saga_sdk::prelude::*;

pub const GET_USER_ATTEMPTS: &str = "GET_USER_ATTEMPTS";
pub const GRADED_EXAM: &str = "GRADED_EXAM";

/// The hot-swap tests deploy a second build of this service (feature `variant-b`) in turns with
/// the default one, and tell their answers apart by this field.
const BUILD: Option<&str> = if cfg!(feature = "variant-b") {
    Some("b")
} else {
    None
};

#[derive(Debug, Serialize, Deserialize)]
#[serde(crate = "saga_sdk::serde")]
struct Exam {
    user_uuid: Uuid,
    exam_uuid: Uuid,
    /// Which attempt this submission is: 1 for the first.
    attempt: u32,
    /// The grader's score, for graded submissions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    score: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    total: Option<u32>,
}

impl Aggregate for Exam {
    const NAME: &'static str = "Exam";
    const INDEXES: &'static [&'static str] = &["user_uuid", "exam_uuid"];
}

/// The body of `POST /exams`.
#[derive(Deserialize)]
#[serde(crate = "saga_sdk::serde")]
struct SubmitExam {
    user_uuid: Uuid,
    exam_uuid: Uuid,
}

/// The body of `POST /exams/graded`.
#[derive(Deserialize)]
#[serde(crate = "saga_sdk::serde")]
struct SubmitGradedExam {
    user_uuid: Uuid,
    exam_uuid: Uuid,
    answers: Vec<String>,
}

/// The payload of the `GetUserAttempts` command.
#[derive(Serialize)]
#[serde(crate = "saga_sdk::serde")]
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
    let grade: Option<Value> = context.get("grade").ok();
    let score = |field: &str| {
        grade
            .as_ref()
            .and_then(|g| g[field].as_u64())
            .map(|n| n as u32)
    };
    let exam = Exam {
        user_uuid: context.get("user_uuid")?,
        exam_uuid: context.get("exam_uuid")?,
        attempt: context.get::<u32>("attempts")? + 1,
        score: score("score"),
        total: score("total"),
    }
    .create()?;
    context.set("exam", &exam);
    Ok(context)
}

/// The payload of `NotifyStudent` and of its compensation `RetractNotification`.
fn student(context: &SagaContext) -> Result<Value> {
    Ok(json!({
        "user_uuid": context.get::<Uuid>("user_uuid")?,
        "exam_uuid": context.get::<Uuid>("exam_uuid")?,
    }))
}

/// The payload of `GradeExam`.
fn grade_request(context: &SagaContext) -> Result<Value> {
    Ok(json!({
        "user_uuid": context.get::<Uuid>("user_uuid")?,
        "exam_uuid": context.get::<Uuid>("exam_uuid")?,
        "answers": context.get::<Vec<String>>("answers")?,
    }))
}

fn store_grade(mut context: SagaContext, reply: Reply) -> Result<SagaContext> {
    context.set("grade", reply.content::<Value>()?);
    Ok(context)
}

/// Counts the attempt, tells the student, grades the answers, then creates the Exam. A refusal
/// by the grader retracts the notification and leaves no trace of the attempt.
fn graded_exam() -> Saga {
    Saga::new()
        .step()
        .invoke_participant("GetUserAttempts", prepare_data)
        .on_reply(store_attempts)
        .on_error(refuse)
        .step()
        .invoke_participant("NotifyStudent", student)
        .with_compensation("RetractNotification", student)
        .step()
        .invoke_participant("GradeExam", grade_request)
        .on_reply(store_grade)
        .on_error(refuse)
        .commit(commit_result)
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
    submit(
        GET_USER_ATTEMPTS,
        SagaContext::new()
            .with("user_uuid", content.user_uuid)
            .with("exam_uuid", content.exam_uuid),
    )
}

fn submit_graded_exam(request: Request) -> Result<Response> {
    let content: SubmitGradedExam = request.content()?;
    submit(
        GRADED_EXAM,
        SagaContext::new()
            .with("user_uuid", content.user_uuid)
            .with("exam_uuid", content.exam_uuid)
            .with("answers", content.answers),
    )
}

/// Runs a submission saga and answers with the exam, or with why the submission failed.
fn submit(saga_name: &str, context: SagaContext) -> Result<Response> {
    let saga = SagaManager::run(saga_name, context)?;
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

fn service() -> Service<Orchestrator> {
    Service::new("exam")
        .aggregate::<Exam>()
        .rest_command(Method::Post, "/exams", submit_exam)
        .rest_command(Method::Post, "/exams/graded", submit_graded_exam)
        .broker_command("CreateExam", submit_exam)
        .rest_query(Method::Get, "/exams/{uuid}", get_exam)
        .rest_query(Method::Get, "/exams", list_exams)
        .saga(GET_USER_ATTEMPTS, get_user_attempts())
        .saga(GRADED_EXAM, graded_exam())
}

saga_sdk::export_orchestrator!(service);
