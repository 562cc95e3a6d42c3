"""The grader service, a saga participant written in Python.

It keeps the answer key of each exam and grades submissions against it. In the Exam service's
saga GRADED_EXAM it is the step `GradeExam`: it answers with the score, or refuses the
submission with a business error (no answer key, the wrong number of answers) — and the saga
then compensates its earlier steps. Its aggregates live in the host's storage, like any
service's.

Built with componentize-py against ../../wit (world `participant`); see build.sh.
"""

import json
import uuid

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import logging, storage, types


class Refused(Exception):
    """A request the rules refuse: a business error (400 unless told otherwise)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def key_uuid(exam_uuid: str) -> str:
    """One answer key per exam, stored under the exam's own uuid (each service has its own
    aggregates, so the uuid is free here). (uuid5 would need hashlib, which componentize-py's
    Python does not include.)"""
    return exam_uuid


def field_uuid(body: dict, field: str) -> str:
    value = body.get(field)
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise Refused(f"{field}: {value!r} is not a UUID")


def json_object(text: str) -> dict:
    try:
        body = json.loads(text)
    except ValueError as error:
        raise Refused(f"the body is not JSON: {error}")
    if not isinstance(body, dict):
        raise Refused("the body must be a JSON object")
    return body


def string_list(body: dict, field: str) -> list:
    value = body.get(field)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise Refused(f"{field} must be a list of strings")
    return value


def stored(aggregate: storage.Aggregate) -> dict:
    """An aggregate as JSON: its fields and its uuid and version."""
    return {**json.loads(aggregate.data), "uuid": aggregate.uuid, "version": aggregate.version}


def find_answer_key(exam_uuid: str):
    try:
        return storage.get("AnswerKey", key_uuid(exam_uuid))
    except Err as error:
        if isinstance(error.value, storage.StorageError_NotFound):
            return None
        raise


def grade_exam(request: types.Request) -> dict:
    """`GradeExam {user_uuid, exam_uuid, answers}`: scores the answers against the key."""
    body = json_object(request.payload)
    user, exam = field_uuid(body, "user_uuid"), field_uuid(body, "exam_uuid")
    answers = string_list(body, "answers")
    if "crash" in answers:
        # What an unexpected bug looks like to the saga: a trap, a SYSTEM_ERROR.
        raise RuntimeError("the grader crashed on purpose")
    key = find_answer_key(exam)
    if key is None:
        raise Refused(f"exam {exam} has no answer key; PUT /answer-keys/{exam} first")
    expected = json.loads(key.data)["answers"]
    if len(answers) != len(expected):
        raise Refused(f"expected {len(expected)} answers, got {len(answers)}")
    score = sum(given.strip().lower() == right.strip().lower() for given, right in zip(answers, expected))
    grade = {
        "user_uuid": user,
        "exam_uuid": exam,
        "score": score,
        "total": len(expected),
        "passed": 2 * score >= len(expected),
    }
    storage.create("Grade", None, json.dumps(grade))
    logging.log(logging.Level.INFO, f"graded exam {exam} of user {user}: {score}/{len(expected)}")
    return grade


def put_answer_key(request: types.Request) -> dict:
    """`PUT /answer-keys/{exam_uuid} {answers}`: sets an exam's answer key."""
    exam = field_uuid(dict(request.params), "exam_uuid")
    answers = string_list(json_object(request.payload), "answers")
    if not answers:
        raise Refused("answers must not be empty")
    key = find_answer_key(exam)
    fields = json.dumps({"exam_uuid": exam, "answers": answers})
    if key is None:
        key = storage.create("AnswerKey", key_uuid(exam), fields)
    else:
        key = storage.update("AnswerKey", key.uuid, key.version, fields)
    return stored(key)


def list_grades(request: types.Request) -> list:
    """`GET /grades/{user_uuid}`: a user's grades, oldest first."""
    user = field_uuid(dict(request.params), "user_uuid")
    condition = [
        storage.ConditionNode_Compare(
            storage.Comparison(field="user_uuid", op=storage.ComparisonOp.EQUAL, value=json.dumps(user))
        )
    ]
    ordering = [storage.OrderBy(field="created_at", descending=False)]
    return [stored(grade) for grade in storage.find("Grade", condition, ordering, None)]


def version(_request: types.Request) -> dict:
    """`GET /grader/version`: what answers here (also the benchmark's no-op call)."""
    return {"service": "grader", "language": "python"}


HANDLERS = {
    "grade-exam": grade_exam,
    "put-answer-key": put_answer_key,
    "list-grades": list_grades,
    "version": version,
}


def rest(method: types.HttpMethod, path: str, query: bool = False):
    route = types.RestRoute(method=method, path=path)
    return types.Trigger_RestQuery(route) if query else types.Trigger_RestCommand(route)


class Service(exports.Service):
    def describe(self) -> types.Manifest:
        return types.Manifest(
            name="grader",
            handlers=[
                types.Handler(name="grade-exam", triggers=[types.Trigger_BrokerCommand("GradeExam")]),
                types.Handler(
                    name="put-answer-key",
                    triggers=[rest(types.HttpMethod.PUT, "/answer-keys/{exam_uuid}")],
                ),
                types.Handler(
                    name="list-grades",
                    triggers=[rest(types.HttpMethod.GET, "/grades/{user_uuid}", query=True)],
                ),
                types.Handler(name="version", triggers=[rest(types.HttpMethod.GET, "/grader/version", query=True)]),
            ],
            aggregates=[
                types.AggregateType(name="AnswerKey", indexes=[]),
                types.AggregateType(name="Grade", indexes=["user_uuid"]),
            ],
            sagas=[],
        )

    def handle(self, request: types.Request) -> types.Response:
        try:
            answer = HANDLERS[request.handler](request)
        except Refused as refused:
            raise Err(types.Error(status=refused.status, message=str(refused)))
        except Err as error:
            # A storage error the handler did not expect: a system error, with its reason.
            raise Err(types.Error(status=500, message=f"storage: {error.value}"))
        return types.Response(status=200, payload=json.dumps(answer))
