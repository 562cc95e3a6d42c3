"""The grader service, a saga participant written in Python with the SDK (sdk/python).

It keeps the answer key of each exam and grades submissions against it. In the Exam service's
saga GRADED_EXAM it is the step `GradeExam`: it answers with the grade, or refuses the
submission with a business error (no answer key, the wrong number of answers) — and the saga
then compensates its earlier steps. Its aggregates live in the host's storage, like any
service's.

Built with componentize-py against ../../wit (world `participant`); see build.sh.
"""

import logging
from uuid import UUID

from saga_host import (
    Aggregate,
    AggregateNotFoundException,
    CommandService,
    Condition,
    Microservice,
    Ordering,
    QueryService,
    Request,
    Response,
    ResponseException,
    enroute,
)

logger = logging.getLogger("grader")


class AnswerKey(Aggregate):
    """One per exam, stored under the exam's own uuid (each service has its own aggregates, so
    the uuid is free here)."""

    exam_uuid: UUID
    answers: list[str]


class Grade(Aggregate, indexes=["user_uuid"]):
    user_uuid: UUID
    exam_uuid: UUID
    score: int
    total: int
    passed: bool


def uuid_field(source, field: str) -> UUID:
    value = source.get(field) if isinstance(source, dict) else None
    try:
        return UUID(str(value))
    except ValueError:
        raise ResponseException(f"{field}: {value!r} is not a UUID") from None


def string_list(source, field: str) -> list:
    value = source.get(field) if isinstance(source, dict) else None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ResponseException(f"{field} must be a list of strings")
    return value


async def find_answer_key(exam: UUID) -> AnswerKey | None:
    try:
        return await AnswerKey.get(exam)
    except AggregateNotFoundException:
        return None


class GraderCommandService(CommandService):
    @enroute.broker.command("GradeExam")
    async def grade_exam(self, request: Request) -> Response:
        """`GradeExam {user_uuid, exam_uuid, answers}`: scores the answers against the key."""
        content = await request.content()
        user, exam = uuid_field(content, "user_uuid"), uuid_field(content, "exam_uuid")
        answers = string_list(content, "answers")
        if "crash" in answers:
            # What an unexpected bug looks like to the saga: a trap, a SYSTEM_ERROR.
            raise RuntimeError("the grader crashed on purpose")
        key = await find_answer_key(exam)
        if key is None:
            raise ResponseException(f"exam {exam} has no answer key; PUT /answer-keys/{exam} first")
        if len(answers) != len(key.answers):
            raise ResponseException(f"expected {len(key.answers)} answers, got {len(answers)}")
        score = sum(given.strip().lower() == right.strip().lower() for given, right in zip(answers, key.answers))
        total = len(key.answers)
        grade = await Grade.create(user_uuid=user, exam_uuid=exam, score=score, total=total, passed=2 * score >= total)
        logger.info(f"graded exam {exam} of user {user}: {score}/{total}")
        return Response(grade)

    @enroute.rest.command("/answer-keys/{exam_uuid}", "PUT")
    async def put_answer_key(self, request: Request) -> Response:
        """`PUT /answer-keys/{exam_uuid} {answers}`: sets an exam's answer key."""
        exam = uuid_field(await request.params(), "exam_uuid")
        answers = string_list(await request.content(), "answers")
        if not answers:
            raise ResponseException("answers must not be empty")
        key = await find_answer_key(exam)
        if key is None:
            key = await AnswerKey.create(uuid=exam, exam_uuid=exam, answers=answers)
        else:
            key.answers = answers
            await key.save()
        return Response(key)


class GraderQueryService(QueryService):
    @enroute.rest.query("/grades/{user_uuid}", "GET")
    async def list_grades(self, request: Request) -> Response:
        """`GET /grades/{user_uuid}`: a user's grades, oldest first."""
        user = uuid_field(await request.params(), "user_uuid")
        return Response(Grade.find(Condition.EQUAL("user_uuid", user), Ordering.ASC("created_at")))

    @enroute.rest.query("/grader/version", "GET")
    async def version(self, request: Request) -> Response:
        """What answers here (also the benchmark's no-op call)."""
        return Response({"service": "grader", "language": "python"})


Service, SagaCallbacks = Microservice(
    "grader", aggregates=[AnswerKey, Grade], services=[GraderCommandService, GraderQueryService]
).exports()
