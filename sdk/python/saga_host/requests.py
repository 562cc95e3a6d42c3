"""What a handler receives (`Request`) and returns (`Response`), with Minos's names.

`await request.content()` is the JSON body (REST) or payload (broker). A missing field of an
object body is a business error naming it, not a crash: `content["user_uuid"]` on a body without
it refuses the request with 400 "the request has no field 'user_uuid'".
"""

import json

from .errors import MinosException, MissingFieldException

_NO_CONTENT = object()


class RequestContent(dict):
    """A request's JSON object: a dict whose missing keys are the client's mistake (400)."""

    def __missing__(self, key):
        raise MissingFieldException(f"the request has no field {key!r}")


class Request:
    """A REST request or a broker message for one handler."""

    def __init__(self, *, handler: str, payload: str, params: dict, query: dict, headers: dict, user: str | None):
        self.handler = handler
        self.raw = payload
        self._params = params
        self._query = query
        self.headers = headers
        self.user = user

    @property
    def has_content(self) -> bool:
        return self.raw != "null"

    async def content(self):
        """The body or payload as JSON values (a JSON object is a `RequestContent`)."""
        if not self.has_content:
            raise MinosException("the request has no content: send a JSON body")
        content = json.loads(self.raw)
        return RequestContent(content) if isinstance(content, dict) else content

    async def params(self) -> dict:
        """The path parameters by name: {"uuid": "…"} for "/exams/{uuid}"."""
        return dict(self._params)

    async def query_params(self) -> dict:
        """The query-string parameters (the first value of each name)."""
        return dict(self._query)

    @property
    def saga(self) -> str | None:
        """The id of the saga this message is a step or compensation of, if any."""
        return self.headers.get("saga")


class Response:
    """A handler's answer: `Response(data)` is 200 with `data` as JSON; `status` picks another
    2xx. To refuse, raise `ResponseException(message, status)` instead."""

    def __init__(self, data=None, *, status: int = 200):
        if not isinstance(status, int) or not 200 <= status <= 299:
            raise ValueError(
                f"a Response's status is 200–299, not {status!r}; to refuse, raise ResponseException(message, status)"
            )
        self.data = data
        self.status = status

    async def content(self):
        return self.data
