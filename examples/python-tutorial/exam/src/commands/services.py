"""The tutorial's ExamCommandService ("SAGA execution in Exam microservice"), as printed but for
the imports.

`saga_manager.run` raises when the saga fails (Minos's `raise_on_error=True`), with the failing
step's status and message: a fourth submission gets 400 "saga GET_USER_ATTEMPTS failed: The
maximum number of attempts has been exceeded.", and the `else` below is not reached.
"""

from saga_host import (
    CommandService,
    Request,
    Response,
    ResponseException,
    SagaContext,
    SagaStatus,
    enroute,
)

from .sagas import (
    GET_USER_ATTEMPTS,
)


class ExamCommandService(CommandService):
    """Exam Service class"""

    @enroute.rest.command("/exams", "POST")
    @enroute.broker.command("CreateExam")
    async def submit_exam(self, request: Request) -> Response:

        content = await request.content()
        user_uuid = content["user_uuid"]
        exam_uuid = content["exam_uuid"]

        saga = await self.saga_manager.run(
            GET_USER_ATTEMPTS,
            context=SagaContext(
                user_uuid=user_uuid,
                exam_uuid=exam_uuid,
            ),
        )

        if saga.status == SagaStatus.Finished:
            return Response(dict(saga.context["exam"]))
        else:
            raise ResponseException("An error occurred during exam submit.")
