"""The {{name}} service, a saga orchestrator (WIT world `orchestrator`), as `saga-host new` wrote
it: one aggregate, two routes, a broker command and the saga they run.

- `POST /{{name}} {"item": "<uuid of a {{Participant}}>", "quantity": 2}` runs the saga
  CREATE_{{NAME}}: its step asks the {{participant}} service to reserve the quantity
  (`Reserve{{Participant}}`, compensated by `Release{{Participant}}`) and its commit stores the
  {{Name}}: 201 with it, or the participant's refusal (400 when not enough is left).
- The broker command `Create{{Name}}` does the same for another service (200 with it).
- `GET /{{name}}/{uuid}` reads one back: 404 when there is none.

`saga-host new python {{participant}}` writes that participant. `./build.sh` builds
{{name}}.wasm; `./build.sh test` also runs tests/smoke.json (the participant stubbed).
"""

from uuid import UUID

from saga_host import (
    Aggregate,
    CommandService,
    Microservice,
    QueryService,
    Request,
    Response,
    ResponseException,
    Saga,
    SagaContext,
    SagaResponse,
    enroute,
)


class {{Name}}(Aggregate, indexes=["item"]):
    """The aggregate: every write is an event, and the host publishes `{{Name}}Created`,
    `{{Name}}Updated` and `{{Name}}Deleted` to the services subscribed to them."""

    item: UUID
    quantity: int


def _reservation(context: SagaContext) -> dict:
    """The payload of `Reserve{{Participant}}` and of its compensation `Release{{Participant}}`."""
    return {"uuid": context["item"], "quantity": context["quantity"]}


async def _store_reservation(context: SagaContext, response: SagaResponse) -> SagaContext:
    context["reservation"] = await response.content()
    return context


async def _refuse(context: SagaContext, response: SagaResponse) -> SagaContext:
    """The participant refused (an ERROR reply): fail the step with its reason. Without
    `on_error` the saga would go on and commit."""
    raise ResponseException(await response.content(), response.status)


async def _commit(context: SagaContext) -> SagaContext:
    """The saga's commit: its writes (the {{Name}} here, the reservation in the participant)
    become visible together."""
    context["created"] = await {{Name}}.create(item=context["item"], quantity=context["quantity"])
    return context


# A saga is known by the module-level name it is bound to.
CREATE_{{NAME}} = (
    Saga()
    .step()
    .invoke_participant("Reserve{{Participant}}", _reservation)
    .on_reply(_store_reservation)
    .on_error(_refuse)
    .with_compensation("Release{{Participant}}", _reservation)
    .commit(_commit)
)


def _uuid(source: dict, field: str) -> UUID:
    try:
        return UUID(str(source[field]))  # missing: a 400 naming the field
    except ValueError:
        raise ResponseException(f"{field}: {source[field]!r} is not a UUID") from None


class {{Name}}CommandService(CommandService):
    async def _create(self, request: Request) -> dict:
        """Runs CREATE_{{NAME}}; when it fails, `run` raises with the failing step's status and
        message."""
        content = await request.content()
        if not isinstance(content, dict):
            raise ResponseException("the body must be a JSON object")
        item = _uuid(content, "item")
        quantity = content["quantity"]
        if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 1:
            raise ResponseException(f"quantity must be a whole number, 1 or more, not {quantity!r}")
        saga = await self.saga_manager.run(CREATE_{{NAME}}, context=SagaContext(item=item, quantity=quantity))
        return saga.context["created"]

    @enroute.rest.command("/{{name}}", "POST")
    async def create(self, request: Request) -> Response:
        return Response(await self._create(request), status=201)

    @enroute.broker.command("Create{{Name}}")
    async def create_command(self, request: Request) -> Response:
        return Response(await self._create(request))


class {{Name}}QueryService(QueryService):
    @enroute.rest.query("/{{name}}/{uuid}", "GET")
    async def get(self, request: Request) -> Response:
        return Response(await {{Name}}.get(_uuid(await request.params(), "uuid")))


Service, SagaCallbacks = Microservice(
    "{{name}}", aggregates=[{{Name}}], services=[{{Name}}CommandService, {{Name}}QueryService]
).exports()
