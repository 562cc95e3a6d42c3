"""Sagas in Minos's style, and running them.

    GET_USER_ATTEMPTS = (
        Saga()
        .step()
        .invoke_participant("GetUserAttempts", _prepare_data)
        .on_reply(_store_attempts)
        .on_error(_refuse)
        .commit(commit_result)
    )

    saga = await self.saga_manager.run(GET_USER_ATTEMPTS, context=SagaContext(user_uuid=user))

The builder records the calls as the WIT's `saga-operation` list; the host checks the
definition when the component loads. A saga is known to the host by the module-level name it is
bound to (`GET_USER_ATTEMPTS`); a saga written inline in a conditional step's `if_then` /
`else_then` is named after that branch. Each callback gets a name from its place in the
definition ("step1.invoke_participant", "commit"): stable as long as the definition is.

Callbacks are plain or `async` functions: `prepare(context)` returns the command's payload (or
a `SagaRequest` to send it elsewhere), `on_reply(context, response)` and friends return the new
context (None: the context as the callback left it).
"""

import enum
import json
import sys

from . import host
from .encoding import to_json
from .errors import SagaFailedExecutionException


class SagaContext(dict):
    """The data a saga carries from step to step: a JSON object. Read and write it as a dict
    (`context["user_uuid"]`) or by attribute (`context.user_uuid`) for keys that are not dict
    methods' names. `SagaContext(user_uuid=user)` as in Minos."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"the saga context has no {name!r}; it has {', '.join(self) or 'nothing'}") from None

    def __setattr__(self, name, value):
        self[name] = value

    def __delattr__(self, name):
        del self[name]


class SagaStatus(enum.Enum):
    """Where a saga execution is (Minos's names; `Compensating` and `CompensationFailed` are
    saga-host's). The values are the WIT enum's names."""

    Created = "CREATED"
    Running = "RUNNING"
    Paused = "PAUSED"
    Compensating = "COMPENSATING"
    Finished = "FINISHED"
    Errored = "ERRORED"
    CompensationFailed = "COMPENSATION_FAILED"


class SagaResponse:
    """A participant's reply, as `on_reply` / `on_success` / `on_error` receive it."""

    def __init__(self, status: int, payload: str):
        self.status = status
        self._payload = payload

    @property
    def ok(self) -> bool:
        return 200 <= self.status <= 299

    async def content(self):
        """The participant's response; for an error reply, its message."""
        return json.loads(self._payload)


class SagaRequest:
    """What a prepare callback may return instead of the bare payload: the payload and another
    topic to send it to (Minos 0.7's `SagaRequest(target, content)`)."""

    def __init__(self, target: str, content=None):
        self.target = target
        self.content = content


class SagaExecution:
    """A saga execution: its `uuid`, the saga's `name`, `status`, final `context`, and the
    `error` (a `MinosException`) that failed it, if one did."""

    def __init__(self, execution: "host.Execution"):
        self.uuid = execution.id
        self.name = execution.name
        self.status = SagaStatus(execution.status)
        self.context = SagaContext(execution.context)
        self.error = execution.error


# Every saga built so far, in order; `definitions()` names them.
_BUILT: list = []


class Saga:
    """A saga definition under construction (see the module's documentation).

    `step_timeout` and `timeout`, in seconds, bound a remote step's wait for its reply and the
    whole saga (the host's defaults otherwise)."""

    def __init__(self, *, step_timeout: float | None = None, timeout: float | None = None):
        self.operations: list = []
        # callback name → (kind, function); kind is what saga-callbacks export calls it.
        self.callbacks: dict = {}
        self.step_timeout_ms = None if step_timeout is None else round(step_timeout * 1000)
        self.timeout_ms = None if timeout is None else round(timeout * 1000)
        self._steps = 0
        self._branches = 0
        # Where the saga was written: its module-level name is looked up there.
        self.module = sys._getframe(1).f_globals.get("__name__")
        _BUILT.append(self)

    def _operation(self, *operation) -> "Saga":
        self.operations.append(operation)
        return self

    def _start(self, kind: str) -> "Saga":
        self._steps += 1
        self._branches = 0
        return self._operation(kind)

    def _callback(self, what: str, kind: str, function) -> str:
        if not callable(function):
            raise TypeError(f"{what} takes a function, not {function!r:.80}")
        name = f"step{self._steps}.{what}" if what != "commit" else "commit"
        self.callbacks[name] = (kind, function)
        return name

    def step(self) -> "Saga":
        """Starts a step; what follows decides whether it is remote, local or conditional."""
        return self._start("step")

    def remote_step(self) -> "Saga":
        return self._start("remote_step")

    def local_step(self) -> "Saga":
        return self._start("local_step")

    def conditional_step(self) -> "Saga":
        return self._start("conditional_step")

    def invoke_participant(self, topic: str, prepare=None) -> "Saga":
        """Remote step: sends the command `topic` with the payload `prepare(context)` returns
        (the whole context without it)."""
        name = None if prepare is None else self._callback("invoke_participant", "prepare", prepare)
        return self._operation("invoke_participant", topic, name)

    def on_reply(self, callback) -> "Saga":
        """Remote step: `callback(context, response)` takes a SUCCESS reply."""
        return self._operation("on_reply", self._callback("on_reply", "reply", callback))

    def on_success(self, callback) -> "Saga":
        """Minos 0.7's name for `on_reply`."""
        return self._operation("on_success", self._callback("on_success", "reply", callback))

    def on_error(self, callback) -> "Saga":
        """Remote step: `callback(context, response)` takes an ERROR (4xx) reply; it returns a
        context to go on or raises to fail the step. Without it an ERROR reply does not stop
        the saga (Minos's rule)."""
        return self._operation("on_error", self._callback("on_error", "reply", callback))

    def with_compensation(self, topic: str, prepare=None) -> "Saga":
        """Remote step: the command that undoes it when a later step fails."""
        name = None if prepare is None else self._callback("with_compensation", "prepare", prepare)
        return self._operation("with_compensation", topic, name)

    def on_execute(self, callback) -> "Saga":
        """Local step: `callback(context)` runs in this service and returns the new context."""
        return self._operation("on_execute", self._callback("on_execute", "execute", callback))

    def on_failure(self, callback) -> "Saga":
        """Local step: `callback(context)` undoes `on_execute` when a later step fails."""
        return self._operation("on_failure", self._callback("on_failure", "execute", callback))

    def if_then(self, condition, saga: "Saga") -> "Saga":
        """Conditional step: when `condition(context)` holds, `saga` runs as an inner saga."""
        self._branches += 1
        name = self._callback(f"if_then{self._branches}", "condition", condition)
        return self._operation("if_then", name, _saga(saga, "if_then"))

    def else_then(self, saga: "Saga") -> "Saga":
        """Conditional step: the saga to run when no branch holds."""
        return self._operation("else_then", _saga(saga, "else_then"))

    def commit(self, callback=None) -> "Saga":
        """Ends the definition; `callback(context)` runs once every step succeeded and returns
        the final context. Its writes commit with the saga's."""
        return self._operation("commit", None if callback is None else self._callback("commit", "execute", callback))


def _saga(saga, where: str) -> Saga:
    if not isinstance(saga, Saga):
        raise TypeError(f"{where} takes a Saga, not {saga!r:.80}")
    return saga


def definitions() -> dict:
    """Every saga built so far, by name: the module-level name it is bound to, or for an inline
    branch saga "{outer}.step{n}.if_then{i}" / ".else_then". A saga with neither is left out
    (it cannot be run)."""
    names: dict = {}
    for saga in _BUILT:
        module = sys.modules.get(saga.module)
        bound = [name for name, value in vars(module).items() if value is saga] if module else []
        if bound:
            names[saga] = bound[0]
    pending = list(names)
    while pending:
        outer = pending.pop()
        step = 0
        for operation in outer.operations:
            if operation[0] in ("step", "remote_step", "local_step", "conditional_step"):
                step += 1
            elif operation[0] in ("if_then", "else_then"):
                inner = operation[-1]
                if inner not in names:
                    branch = operation[1].split(".")[-1] if operation[0] == "if_then" else "else_then"
                    names[inner] = f"{names[outer]}.step{step}.{branch}"
                    pending.append(inner)
    return {name: saga for saga, name in names.items()}


class SagaManager:
    """Runs this service's sagas (Minos's `saga_manager`); services reach it as
    `self.saga_manager`."""

    def __init__(self, names: dict):
        # Saga → name, from `definitions()` when the service was built.
        self._names = names

    async def run(self, definition: Saga, context: SagaContext | None = None, *, pause_on_disk: bool = False,
                  raise_on_error: bool = True, return_execution: bool = True):
        """Runs the saga and waits until it has finished or failed (`pause_on_disk=True`: starts
        it and returns at once). A failed saga raises `SagaFailedExecutionException` with the
        failing step's status and message, unless `raise_on_error=False`."""
        name = self._names.get(definition)
        if name is None:
            raise TypeError(
                "this saga is not one of the service's: bind it to a module-level name (GET_X = Saga()...) "
                "in a module the service imports, so that it is declared when the component is built"
            )
        payload = to_json(SagaContext() if context is None else context, f"the context of saga {name}")
        execution = SagaExecution(host.run_saga(name, payload, wait=not pause_on_disk))
        if raise_on_error and execution.status in (SagaStatus.Errored, SagaStatus.CompensationFailed):
            raise SagaFailedExecutionException(execution)
        return execution if return_execution else execution.uuid

    async def get(self, uuid) -> SagaExecution:
        """An execution of this service's sagas."""
        return SagaExecution(host.get_saga(str(uuid)))
