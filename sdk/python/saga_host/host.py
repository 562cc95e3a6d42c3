"""The one module that speaks the generated bindings (`wit_world`, made by componentize-py).

Everything else in the SDK works with plain Python values and neutral tuples (a condition node
is `("compare", field, op, json)`, a saga operation `("on_reply", name)`); here they become the
binding's records and variants, and the host's `Err` results become the SDK's exceptions.

Outside a component (the SDK's unit tests on CPython) the bindings do not exist: the SDK still
imports, and only a call that needs the host fails, saying so.
"""

import json

from .errors import (
    AggregateConflictException,
    AggregateNotFoundException,
    MinosException,
    SystemException,
)


class _Missing:
    """Stands in for a binding module this build does not have."""

    def __init__(self, why: str):
        self._why = why

    def __getattr__(self, name):
        raise RuntimeError(self._why)


try:
    from componentize_py_types import Err
    from wit_world.imports import broker, storage, types
    from wit_world.imports import logging as wit_logging
except ImportError:  # CPython, outside a component
    _outside = _Missing("saga_host reaches the host only inside a component built by componentize-py")
    broker = storage = types = wit_logging = _outside

    class Err(Exception):  # noqa: N818 - the binding's name
        value = None

try:
    from wit_world.imports import sagas
except ImportError:  # world `participant`
    sagas = _Missing("running sagas needs the world `orchestrator`: build with --world orchestrator")


def _camel(tag: str) -> str:
    return "".join(part.capitalize() for part in tag.split("_"))


# ---------------------------------------------------------------------------------------------
# What the component exports: the manifest, responses, errors
# ---------------------------------------------------------------------------------------------


def _trigger(trigger: tuple):
    kind, *rest = trigger
    variant = getattr(types, f"Trigger_{_camel(kind)}")
    if kind.startswith("rest_"):
        method, path = rest
        return variant(types.RestRoute(method=types.HttpMethod[method], path=path))
    return variant(rest[0])


def _operation(operation: tuple):
    kind, *rest = operation
    variant = getattr(types, f"SagaOperation_{_camel(kind)}")
    if kind in ("invoke_participant", "with_compensation"):
        topic, prepare = rest
        return variant(types.Invocation(topic=topic, prepare=prepare))
    if kind == "if_then":
        condition, saga = rest
        return variant(types.Branch(condition=condition, saga=saga))
    return variant(*rest)


def manifest(name: str, handlers: dict, aggregates: list, sagas_by_name: dict):
    """`handlers`: name → triggers; `aggregates`: (name, indexes); `sagas_by_name`: name →
    (operations, step timeout ms, timeout ms)."""
    return types.Manifest(
        name=name,
        handlers=[
            types.Handler(name=handler, triggers=[_trigger(trigger) for trigger in triggers])
            for handler, triggers in handlers.items()
        ],
        aggregates=[types.AggregateType(name=aggregate, indexes=list(indexes)) for aggregate, indexes in aggregates],
        sagas=[
            types.SagaDefinition(
                name=saga,
                operations=[_operation(operation) for operation in operations],
                step_timeout_ms=step_timeout_ms,
                timeout_ms=timeout_ms,
            )
            for saga, (operations, step_timeout_ms, timeout_ms) in sagas_by_name.items()
        ],
    )


def response(status: int, payload: str):
    return types.Response(status=status, payload=payload)


def saga_request(target: str | None, payload: str):
    return types.SagaRequest(target=target, payload=payload)


def refusal(error: MinosException) -> Exception:
    """The `Err` an export raises for a handler's or callback's refusal."""
    return Err(types.Error(status=error.status, message=error.message))


# ---------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------


class Stored:
    """An aggregate as the host returns it, its fields parsed."""

    def __init__(self, aggregate):
        self.uuid = aggregate.uuid
        self.version = aggregate.version
        self.created_at = aggregate.created_at
        self.updated_at = aggregate.updated_at
        self.data = json.loads(aggregate.data)


def _storage(call, *args):
    try:
        return call(*args)
    except Err as error:
        reason = error.value
        if isinstance(reason, storage.StorageError_NotFound):
            raise AggregateNotFoundException(reason.value) from None
        if isinstance(reason, storage.StorageError_Conflict):
            raise AggregateConflictException(reason.value) from None
        # invalid, denied, unavailable: the service's own mistake or the host's trouble.
        raise SystemException(f"storage refused ({type(reason).__name__.rsplit('_', 1)[-1]}): {reason.value}") from None


def _condition_node(node: tuple):
    kind, *rest = node
    variant = getattr(storage, f"ConditionNode_{_camel(kind)}")
    if kind == "compare":
        field, op, value = rest
        return variant(storage.Comparison(field=field, op=storage.ComparisonOp[op.upper()], value=value))
    if kind == "in":
        field, values = rest
        return variant(storage.Membership(field=field, values=values))
    if kind == "like":
        field, pattern = rest
        return variant(storage.Pattern(field=field, pattern=pattern))
    return variant(*rest)


def create(aggregate_type: str, uuid: str | None, data: str) -> Stored:
    return Stored(_storage(storage.create, aggregate_type, uuid, data))


def get(aggregate_type: str, uuid: str) -> Stored:
    return Stored(_storage(storage.get, aggregate_type, uuid))


def update(aggregate_type: str, uuid: str, expected_version: int | None, fields: str) -> Stored:
    return Stored(_storage(storage.update, aggregate_type, uuid, expected_version, fields))


def delete(aggregate_type: str, uuid: str, expected_version: int | None) -> None:
    _storage(storage.delete, aggregate_type, uuid, expected_version)


def find(aggregate_type: str, nodes: list, ordering: list, limit: int | None) -> list:
    """`ordering`: (field, descending) pairs."""
    condition = [_condition_node(node) for node in nodes]
    order_by = [storage.OrderBy(field=field, descending=descending) for field, descending in ordering]
    return [Stored(found) for found in _storage(storage.find, aggregate_type, condition, order_by, limit)]


# ---------------------------------------------------------------------------------------------
# Broker, sagas, logging
# ---------------------------------------------------------------------------------------------


def _broker(call, *args):
    try:
        return call(*args)
    except Err as error:
        reason = error.value
        raise SystemException(f"the broker refused ({type(reason).__name__.rsplit('_', 1)[-1]}): {reason.value}") from None


def publish(topic: str, payload: str) -> None:
    _broker(broker.publish, topic, payload)


def send(topic: str, payload: str, reply_topic: str | None) -> str:
    return _broker(broker.send, topic, payload, reply_topic)


class Execution:
    """A saga execution as the host reports it; `status` is the WIT enum's name."""

    def __init__(self, execution):
        self.id = execution.id
        self.name = execution.name
        self.status = execution.status.name
        self.context = json.loads(execution.context)
        self.error = None if execution.error is None else MinosException(execution.error.message, _error_status(execution.error.status))


def _error_status(status: int) -> int:
    # The WIT: "any other status is treated as 500".
    return status if 400 <= status <= 599 else 500


def _sagas(call, *args):
    try:
        return call(*args)
    except Err as error:
        raise MinosException(error.value.message, _error_status(error.value.status)) from None


def run_saga(name: str, context: str, wait: bool) -> Execution:
    return Execution(_sagas(sagas.run, name, context, sagas.RunOptions(wait=wait)))


def get_saga(execution_id: str) -> Execution:
    return Execution(_sagas(sagas.get, execution_id))


def current_saga() -> str | None:
    return sagas.current()


def log(level: str, message: str) -> None:
    """`level`: trace, debug, info, warn or error."""
    wit_logging.log(wit_logging.Level[level.upper()], message)
