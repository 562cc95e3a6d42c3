"""Minos's `@enroute` decorators and the service classes they decorate.

    class ExamCommandService(CommandService):
        @enroute.rest.command("/exams", "POST")
        @enroute.broker.command("CreateExam")
        async def submit_exam(self, request: Request) -> Response: ...

A decorator only marks the function with its triggers; `Microservice` collects the marked
methods of the classes it is given. Handlers may be methods (with `self`), static methods or
class methods, plain or `async`.
"""

_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _marking(trigger: tuple):
    def mark(function):
        # Under @staticmethod / @classmethod the function itself carries the mark.
        target = getattr(function, "__func__", function)
        target.__dict__.setdefault("__enroute__", []).append(trigger)
        return function

    return mark


def _route(kind: str, path: str, method: str) -> tuple:
    if method.upper() not in _METHODS:
        raise ValueError(f"unknown HTTP method {method!r} for route {path}; use one of {', '.join(_METHODS)}")
    return (kind, method.upper(), path)


class _Rest:
    @staticmethod
    def command(path: str, method: str):
        """An HTTP route that may write, e.g. `("/exams", "POST")`; `{name}` segments are path
        parameters (`await request.params()`)."""
        return _marking(_route("rest_command", path, method))

    @staticmethod
    def query(path: str, method: str = "GET"):
        """An HTTP route that only reads: the handler may not write to storage."""
        return _marking(_route("rest_query", path, method))


class _Broker:
    @staticmethod
    def command(topic: str):
        """A broker command, e.g. a saga step's "GetUserAttempts"; the result is the reply."""
        return _marking(("broker_command", topic))

    @staticmethod
    def query(topic: str):
        """A broker query: like a command, but it may not write."""
        return _marking(("broker_query", topic))

    @staticmethod
    def event(topic: str):
        """A domain event, e.g. "ExamCreated": every subscribed service gets each once."""
        return _marking(("broker_event", topic))


class enroute:  # noqa: N801 - Minos's name
    rest = _Rest()
    broker = _Broker()


class CommandService:
    """Minos's base for a class of handlers that may write. `self.saga_manager` runs the
    service's sagas (the `Microservice` sets it)."""

    saga_manager = None


class QueryService(CommandService):
    """Minos's base for a class of handlers that only read (give them `rest.query`,
    `broker.query` or `broker.event` triggers: the host refuses writes from queries)."""


def triggers_of(function) -> list:
    """The triggers `@enroute` marked a function (or static/class method) with."""
    return getattr(getattr(function, "__func__", function), "__enroute__", [])
