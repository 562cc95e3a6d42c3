"""Event-sourced aggregates in Minos's style, stored by the host.

    class Exam(Aggregate, indexes=["user_uuid"]):
        user_uuid: UUID
        attempt: int

    exam = await Exam.create(user_uuid=user, attempt=1)
    exam.attempt = 2
    await exam.save()                       # an update event with the changed fields
    async for exam in Exam.find(Condition.EQUAL("user_uuid", user), Ordering.ASC("created_at")):
        ...

The type's name is the class's (or `name=`); `indexes=` lists fields whose equality conditions
the host answers from an index. Every write is an event and the host publishes
`{Name}Created`, `{Name}Updated`, `{Name}Deleted` with the call's transaction.
"""

import json
from typing import ClassVar
from uuid import UUID

from . import host
from .conditions import Condition, Ordering
from .encoding import to_json
from .errors import InvalidFieldException, SystemException
from .model import Model

_METADATA = ("uuid", "version", "created_at", "updated_at")


class Aggregate(Model):
    """An aggregate type: typed fields (see `Model`) plus the metadata the host keeps —
    `uuid`, `version` (1 after create, plus 1 per update), `created_at` and `updated_at`
    (milliseconds since the Unix epoch)."""

    _reserved_names = frozenset(_METADATA)
    # Set for each subclass from its class keywords.
    aggregate_name: ClassVar[str] = "Aggregate"
    indexes: ClassVar[tuple] = ()

    def __init_subclass__(cls, *, name: str | None = None, indexes=(), **kwargs):
        super().__init_subclass__(**kwargs)
        cls.aggregate_name = name or cls.__name__
        cls.indexes = tuple(indexes)

    def __init__(self, *args, uuid: UUID | str | None = None, **fields):
        super().__init__(*args, **fields)
        object.__setattr__(self, "uuid", None if uuid is None else UUID(str(uuid)))
        object.__setattr__(self, "version", 0)
        object.__setattr__(self, "created_at", None)
        object.__setattr__(self, "updated_at", None)
        # The fields as last stored: `save` sends only what changed since.
        object.__setattr__(self, "_stored_fields", None)

    @classmethod
    def _from_stored(cls, stored: "host.Stored") -> "Aggregate":
        try:
            aggregate = cls.from_json(stored.data)
        except InvalidFieldException as error:
            raise SystemException(
                f"the stored {cls.aggregate_name} {stored.uuid} does not fit the class {cls.__name__}: {error.message}"
            ) from None
        aggregate._loaded(stored)
        return aggregate

    def _loaded(self, stored: "host.Stored") -> None:
        object.__setattr__(self, "uuid", UUID(stored.uuid))
        object.__setattr__(self, "version", stored.version)
        object.__setattr__(self, "created_at", stored.created_at)
        object.__setattr__(self, "updated_at", stored.updated_at)
        object.__setattr__(self, "_stored_fields", self._fields_as_json())

    def _fields_as_json(self) -> dict:
        """The fields as JSON values: what storage holds, to compare and to send."""
        return json.loads(to_json(super().__json__(), f"the fields of {type(self).__name__}"))

    @classmethod
    async def create(cls, *args, uuid: UUID | str | None = None, **fields) -> "Aggregate":
        """Stores a new aggregate. Without `uuid` the host picks a random one; with it (a
        name-based `uuid5`, say) concurrent creators of the same aggregate collide, and the host
        runs the losers again."""
        aggregate = cls(*args, uuid=uuid, **fields)
        await aggregate.save()
        return aggregate

    @classmethod
    async def get(cls, uuid: UUID | str) -> "Aggregate":
        """The aggregate with this uuid; `AggregateNotFoundException` (404) when there is none."""
        return cls._from_stored(host.get(cls.aggregate_name, str(uuid)))

    @classmethod
    def find(cls, condition: Condition = Condition.TRUE, ordering=None, limit: int | None = None) -> "Found":
        """The aggregates that satisfy `condition`, sorted by `ordering` (an `Ordering` or a list
        of them; creation order without), at most `limit`. Iterate with `async for` (as in Minos)
        or `for`."""
        if isinstance(ordering, Ordering):
            ordering = [ordering]
        keys = [(order.field, order.descending) for order in ordering or ()]
        found = host.find(cls.aggregate_name, condition.flatten(), keys, limit)
        return Found(cls._from_stored(stored) for stored in found)

    async def save(self) -> None:
        """Creates the aggregate if it was never stored; otherwise writes the fields changed
        since it was read as one update event, checked against the version read
        (`AggregateConflictException`, 409, if it changed meanwhile). No change, no event."""
        fields = self._fields_as_json()
        if self._stored_fields is None:
            uuid = None if self.uuid is None else str(self.uuid)
            self._loaded(host.create(self.aggregate_name, uuid, json.dumps(fields)))
            return
        stored = self._stored_fields
        changed = {name: value for name, value in fields.items() if name not in stored or stored[name] != value}
        if changed:
            self._loaded(host.update(self.aggregate_name, str(self.uuid), self.version, json.dumps(changed)))

    async def delete(self) -> None:
        """Deletes the aggregate (a delete event); checked against the version read."""
        host.delete(self.aggregate_name, str(self.uuid), self.version)

    def __json__(self) -> dict:
        """Flat, as Minos writes it: the metadata and the fields side by side."""
        metadata = {name: getattr(self, name) for name in _METADATA}
        return {**metadata, **super().__json__()}

    def __setattr__(self, name, value):
        if name in _METADATA:
            raise AttributeError(f"{type(self).__name__}.{name} is kept by the host")
        super().__setattr__(name, value)


class Found(list):
    """What `find` returns: a list that `async for` also walks."""

    def __aiter__(self):
        return _AsyncWalk(iter(self))


class _AsyncWalk:
    def __init__(self, items):
        self._items = items

    async def __anext__(self):
        try:
            return next(self._items)
        except StopIteration:
            raise StopAsyncIteration from None
