"""The {{name}} service, a saga participant (WIT world `participant`), as `saga-host new` wrote
it: one aggregate, two routes and the commands a saga's step sends it.

- `POST /{{name}} {"name": "widget", "quantity": 5}` stores a {{Name}}: 201 with it.
- `GET /{{name}}/{uuid}` reads one back: 404 when there is none.
- The broker command `Reserve{{Name}} {"uuid", "quantity"}` takes that quantity from the
  {{Name}} — a saga's step (`saga-host new … --orchestrator --participant {{name}}` writes an
  orchestrator that sends it) — and refuses (400) when not enough is left; `Release{{Name}}`
  gives it back: the step's compensation.

`./build.sh` builds {{name}}.wasm; `./build.sh test` also runs tests/smoke.json.
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
    enroute,
)


class {{Name}}(Aggregate):
    """The aggregate: every write is an event, and the host publishes `{{Name}}Created`,
    `{{Name}}Updated` and `{{Name}}Deleted` to the services subscribed to them."""

    name: str
    quantity: int


async def _object(request: Request) -> dict:
    content = await request.content()
    if not isinstance(content, dict):
        raise ResponseException("the body must be a JSON object")
    return content


def _uuid(source: dict, field: str) -> UUID:
    try:
        return UUID(str(source[field]))
    except ValueError:
        raise ResponseException(f"{field}: {source[field]!r} is not a UUID") from None


def _quantity(source: dict, least: int) -> int:
    quantity = source["quantity"]  # missing: a 400 naming the field
    if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < least:
        raise ResponseException(f"quantity must be a whole number, {least} or more, not {quantity!r}")
    return quantity


class {{Name}}CommandService(CommandService):
    @enroute.rest.command("/{{name}}", "POST")
    async def create(self, request: Request) -> Response:
        content = await _object(request)
        name = content["name"]
        if not isinstance(name, str) or not name.strip():
            raise ResponseException("name must be a text, not empty")
        created = await {{Name}}.create(name=name, quantity=_quantity(content, 0))
        return Response(created, status=201)

    @enroute.broker.command("Reserve{{Name}}")
    async def reserve(self, request: Request) -> Response:
        """In a saga, this write is staged under the saga: it becomes visible when the saga
        commits and vanishes if the saga fails."""
        content = await _object(request)
        stored = await {{Name}}.get(_uuid(content, "uuid"))  # none: a 404, the step fails
        quantity = _quantity(content, 1)
        if stored.quantity < quantity:
            raise ResponseException(f"only {stored.quantity} of {stored.name} left, not {quantity}")
        stored.quantity -= quantity
        await stored.save()
        return Response({"uuid": stored.uuid, "reserved": quantity, "left": stored.quantity})

    @enroute.broker.command("Release{{Name}}")
    async def release(self, request: Request) -> Response:
        """The compensation of `Reserve{{Name}}`: the obvious undo. A compensation runs inside
        its failed saga, so this write vanishes with the reservation it undoes."""
        content = await _object(request)
        stored = await {{Name}}.get(_uuid(content, "uuid"))
        quantity = _quantity(content, 1)
        stored.quantity += quantity
        await stored.save()
        return Response({"uuid": stored.uuid, "released": quantity, "left": stored.quantity})


class {{Name}}QueryService(QueryService):
    @enroute.rest.query("/{{name}}/{uuid}", "GET")
    async def get(self, request: Request) -> Response:
        return Response(await {{Name}}.get(_uuid(await request.params(), "uuid")))


Service, SagaCallbacks = Microservice(
    "{{name}}", aggregates=[{{Name}}], services=[{{Name}}CommandService, {{Name}}QueryService]
).exports()
