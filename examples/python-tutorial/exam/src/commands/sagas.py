"""The tutorial's saga ("SAGA creation in Exam microservice"), with the SDK's imports.

Two steps of the printed saga are added, `on_reply` and `on_error`. The printed saga has
neither, and relies on the Attempt service's refusal stopping it; but in Minos 0.7, as on
saga-host, an ERROR reply without `on_error` lets the saga go on (it would commit a fourth
exam). `_refuse` makes the refusal fail the step; `_store_attempts` keeps the Attempt service's
count, which `commit_result` (whose `Exam.create(...)` the tutorial leaves out) numbers the
exam with.
"""

from uuid import UUID

from saga_host import MinosException, Model, ModelType, Saga, SagaContext, SagaResponse
from src.aggregates import Exam

AttemptQuery = ModelType.build("PaymentQuery", {"user": UUID, "exam": UUID})


def _prepare_data(context: SagaContext) -> Model:
    return AttemptQuery(context["user_uuid"], context["exam_uuid"])


async def _store_attempts(context: SagaContext, response: SagaResponse) -> SagaContext:
    context["attempts"] = await response.content()
    return context


async def _refuse(context: SagaContext, response: SagaResponse) -> SagaContext:
    raise MinosException(await response.content(), response.status)


async def commit_result(context: SagaContext) -> SagaContext:
    exam = await Exam.create(
        user_uuid=context["user_uuid"],
        exam_uuid=context["exam_uuid"],
        attempt=context["attempts"] + 1,
    )

    return SagaContext(exam=exam)


GET_USER_ATTEMPTS = (
    Saga()
    .step()
    .invoke_participant("GetUserAttempts", _prepare_data)
    .on_reply(_store_attempts)
    .on_error(_refuse)
    .commit(commit_result)
)
