"""A service built from Minos-style pieces, and the exports componentize-py needs.

The component's entry module (the one given to `componentize-py componentize`) makes one:

    microservice = Microservice("exam", aggregates=[Exam], services=[ExamCommandService, ExamQueryService])
    Service, SagaCallbacks = microservice.exports()

Building it at import time is the point: componentize-py snapshots the module once, so the
handler table, the saga names and the aggregates' resolved fields are ready in every call's
fresh instance, and a mistake in them fails the build rather than a request.

Each call runs one handler or callback. An `async def` one is driven to completion right here:
host calls are synchronous, so nothing ever really waits. A `MinosException` becomes the call's
error (its status and message); any other exception is a trap, which the host reports as a
system error with the traceback.
"""

import json
import logging

from . import host
from .encoding import to_json
from .errors import MinosException, SystemException
from .requests import Request, Response
from .sagas import Saga, SagaContext, SagaManager, SagaRequest, SagaResponse, definitions
from .services import triggers_of


def complete(result, what: str):
    """The value of `result`, running it to the end first if it is a coroutine."""
    if not hasattr(result, "__await__"):
        return result
    steps = result.__await__()
    try:
        steps.send(None)
    except StopIteration as done:
        return done.value
    steps.close()
    raise SystemException(
        f"{what} awaited something that waits for an event loop (asyncio.sleep, a future, …); "
        "saga-host's calls are synchronous: await only the SDK's methods"
    )


class _HostLogHandler(logging.Handler):
    """Sends Python's `logging` records to the host's log (recorded with the service's name and
    the current saga and message ids)."""

    _LEVELS = ((logging.ERROR, "error"), (logging.WARNING, "warn"), (logging.INFO, "info"), (logging.DEBUG, "debug"))

    def emit(self, record: logging.LogRecord) -> None:
        level = next((name for threshold, name in self._LEVELS if record.levelno >= threshold), "trace")
        host.log(level, self.format(record))


class _Handler:
    def __init__(self, service: type, attribute: str, triggers: list):
        self.service = service
        self.attribute = attribute
        self.triggers = triggers
        self.label = f"{service.__name__}.{attribute}"


class Microservice:
    """One service: its `name` (it scopes the service's aggregates), the aggregate classes it
    stores, and the service classes whose `@enroute` methods handle its requests. Sagas are
    found on their own (see `saga_host.sagas`). Python's `logging` goes to the host's log."""

    def __init__(self, name: str, *, aggregates=(), services=()):
        self.name = name
        self.aggregates = list(aggregates)
        for aggregate in self.aggregates:
            aggregate.fields()  # resolve the annotations now: a typo fails the build
        self.handlers: dict = {}
        for service in services:
            self._collect_handlers(service)
        self.sagas = definitions()
        self.saga_names = {saga: name for name, saga in self.sagas.items()}
        self.saga_manager = SagaManager(self.saga_names)
        for service in services:
            service.saga_manager = self.saga_manager
        root = logging.getLogger()
        root.addHandler(_HostLogHandler())
        root.setLevel(logging.DEBUG)

    def _collect_handlers(self, service: type) -> None:
        for cls in reversed(service.__mro__):
            for attribute, value in vars(cls).items():
                triggers = triggers_of(value)
                if triggers:
                    handler = _Handler(service, attribute, triggers)
                    self.handlers[handler.label] = handler
        if not any(handler.service is service for handler in self.handlers.values()):
            raise TypeError(f"{service.__name__} has no @enroute handler")

    def exports(self) -> tuple:
        """The classes componentize-py calls: `Service` (world `participant`) and
        `SagaCallbacks` (world `orchestrator` only)."""
        microservice = self

        class Service:
            def describe(self):
                return microservice.describe()

            def handle(self, request):
                return microservice.handle(request)

        class SagaCallbacks:
            def prepare(self, saga, callback, context):
                return microservice.prepare(saga, callback, context)

            def on_reply(self, saga, callback, context, reply):
                return microservice.on_reply(saga, callback, context, reply)

            def execute(self, saga, callback, context):
                return microservice.execute(saga, callback, context)

            def condition(self, saga, callback, context):
                return microservice.condition(saga, callback, context)

        return Service, SagaCallbacks

    # -- service ---------------------------------------------------------------------------

    def describe(self):
        return host.manifest(
            self.name,
            {label: handler.triggers for label, handler in self.handlers.items()},
            [(aggregate.aggregate_name, aggregate.indexes) for aggregate in self.aggregates],
            {name: (self._resolved(saga.operations), saga.step_timeout_ms, saga.timeout_ms) for name, saga in self.sagas.items()},
        )

    def _resolved(self, operations: list) -> list:
        """The operations with inner sagas given by name."""
        return [
            tuple(self.saga_names[part] if isinstance(part, Saga) else part for part in operation)
            for operation in operations
        ]

    def handle(self, request):
        handler = self.handlers.get(request.handler)
        if handler is None:
            raise host.refusal(SystemException(f"service {self.name} has no handler {request.handler!r}"))
        what = f"handler {handler.label}"
        try:
            function = getattr(handler.service(), handler.attribute)
            result = complete(function(_request(request)), what)
            response = result if isinstance(result, Response) else Response(result)
            return host.response(response.status, to_json(response.data, f"the response of {what}"))
        except MinosException as error:
            raise host.refusal(error) from None

    # -- saga callbacks --------------------------------------------------------------------

    def _call(self, saga: str, callback: str, kind: str, *args):
        definition = self.sagas.get(saga)
        if definition is None or callback not in definition.callbacks:
            raise SystemException(f"service {self.name} has no callback {callback!r} in saga {saga!r}")
        expected, function = definition.callbacks[callback]
        if expected != kind:
            raise SystemException(f"callback {callback!r} of saga {saga} is a {expected} callback, not {kind}")
        what = f"callback {callback} ({getattr(function, '__qualname__', function)}) of saga {saga}"
        return complete(function(*args), what), what

    def _new_context(self, saga, callback, kind, context: str, *args) -> str:
        context = SagaContext(json.loads(context))
        result, what = self._call(saga, callback, kind, context, *args)
        if result is None:
            result = context  # the callback changed the context in place
        if not isinstance(result, dict):
            raise SystemException(f"{what} returned a {type(result).__name__}; return the SagaContext")
        return to_json(result, f"the context {what} returned")

    def prepare(self, saga, callback, context):
        try:
            result, what = self._call(saga, callback, "prepare", SagaContext(json.loads(context)))
            target = None
            if isinstance(result, SagaRequest):
                target, result = result.target, result.content
            return host.saga_request(target, to_json(result, f"the payload {what} built"))
        except MinosException as error:
            raise host.refusal(error) from None

    def on_reply(self, saga, callback, context, reply):
        try:
            return self._new_context(saga, callback, "reply", context, SagaResponse(reply.status, reply.payload))
        except MinosException as error:
            raise host.refusal(error) from None

    def execute(self, saga, callback, context):
        try:
            return self._new_context(saga, callback, "execute", context)
        except MinosException as error:
            raise host.refusal(error) from None

    def condition(self, saga, callback, context):
        try:
            result, _ = self._call(saga, callback, "condition", SagaContext(json.loads(context)))
            return bool(result)
        except MinosException as error:
            raise host.refusal(error) from None


def _request(request) -> Request:
    return Request(
        handler=request.handler,
        payload=request.payload,
        params=dict(request.params),
        # The first value of a repeated name wins.
        query={name: value for name, value in reversed(request.query)},
        headers={header.name: header.value for header in request.headers},
        user=request.user,
    )
