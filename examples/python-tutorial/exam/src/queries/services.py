"""Reading exams (not in the tutorial): the Rust Exam service's two queries."""

from uuid import UUID

from saga_host import Condition, Ordering, QueryService, Request, Response, ResponseException, enroute

from ..aggregates import Exam


def _uuid(name: str, value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise ResponseException(f"{name} = {value!r} is not a UUID") from None


class ExamQueryService(QueryService):
    @enroute.rest.query("/exams/{uuid}", "GET")
    async def get_exam(self, request: Request) -> Response:
        """One exam; 404 when there is none."""
        params = await request.params()
        return Response(await Exam.get(_uuid("uuid", params["uuid"])))

    @enroute.rest.query("/exams", "GET")
    async def list_exams(self, request: Request) -> Response:
        """`GET /exams?user_uuid=…&exam_uuid=…`: a user's submissions, oldest first."""
        query = await request.query_params()
        conditions = [
            Condition.EQUAL(field, _uuid(field, query[field])) for field in ("user_uuid", "exam_uuid") if field in query
        ]
        if not conditions:
            raise ResponseException("give user_uuid, exam_uuid or both as query parameters")
        return Response(Exam.find(Condition.AND(*conditions), Ordering.ASC("created_at"), limit=100))
