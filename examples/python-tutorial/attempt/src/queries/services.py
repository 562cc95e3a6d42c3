"""Reading the count (not in the tutorial): the Rust Attempt service's query."""

from saga_host import Condition, QueryService, Request, Response, enroute

from ..aggregates import Attempt

# The limit AttemptCommandService.get_user_attempts enforces (the tutorial writes it as 3).
MAX_ATTEMPTS = 3


class AttemptQueryService(QueryService):
    @enroute.rest.query("/attempts/{user_uuid}/{exam_uuid}", "GET")
    async def count_attempts(self, request: Request) -> Response:
        """The count, 0 when the user never submitted."""
        params = await request.params()
        user, exam = params["user_uuid"], params["exam_uuid"]
        condition = Condition.AND(Condition.EQUAL("user", user), Condition.EQUAL("exam", exam))
        quantity = next((attempt.quantity for attempt in Attempt.find(condition, limit=1)), 0)
        return Response(
            {"user_uuid": user, "exam_uuid": exam, "quantity": quantity, "remaining": max(MAX_ATTEMPTS - quantity, 0)}
        )
