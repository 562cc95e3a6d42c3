"""saga_host: write saga-host services in Python with the Minos framework's names.

    from saga_host import Aggregate, CommandService, Condition, Request, Response, enroute

See the README's "Writing a service in Python" and `examples/python-tutorial` for a whole
service. Module by module: `model` (typed fields), `aggregates` (storage), `conditions`
(queries), `requests` and `services` (handlers and their triggers), `sagas` (definitions and
running them), `errors`, `broker`, `uuid5`, and `microservice`, which ties a service together
and exports it to componentize-py. `host` is the only module that speaks the generated bindings.
"""

from .aggregates import Aggregate
from .conditions import Condition, Ordering
from .errors import (
    AggregateConflictException,
    AggregateNotFoundException,
    InvalidFieldException,
    MinosException,
    MissingFieldException,
    ResponseException,
    SagaFailedExecutionException,
    SystemException,
)
from .microservice import Microservice
from .model import AggregateRef, Model, ModelRef, ModelType
from .requests import Request, Response
from .sagas import Saga, SagaContext, SagaExecution, SagaRequest, SagaResponse, SagaStatus
from .services import CommandService, QueryService, enroute
from .uuid5 import uuid5

__all__ = [
    "Aggregate",
    "AggregateConflictException",
    "AggregateNotFoundException",
    "AggregateRef",
    "CommandService",
    "Condition",
    "InvalidFieldException",
    "MinosException",
    "MissingFieldException",
    "Microservice",
    "Model",
    "ModelRef",
    "ModelType",
    "Ordering",
    "QueryService",
    "Request",
    "ResponseException",
    "Response",
    "Saga",
    "SagaContext",
    "SagaExecution",
    "SagaFailedExecutionException",
    "SagaRequest",
    "SagaResponse",
    "SagaStatus",
    "SystemException",
    "enroute",
    "uuid5",
]
