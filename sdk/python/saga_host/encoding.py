"""JSON text for what crosses the boundary: payloads, saga contexts, aggregate fields.

Besides JSON's own types it writes UUIDs as their text and models (aggregates, `ModelType`
classes, refs) as objects. Whatever else cannot be written is refused with an error that says
whose value it was, so that a service author knows which handler or callback to fix.
"""

import json
from uuid import UUID

from .errors import SystemException


def plain(value):
    """`value` with UUIDs and models turned into JSON's types (for `json.dumps`' `default`)."""
    if isinstance(value, UUID):
        return str(value)
    as_json = getattr(value, "__json__", None)
    if as_json is not None:
        return as_json()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"a {type(value).__name__} ({value!r:.80}) is not JSON-serialisable")


def to_json(value, whose: str) -> str:
    """JSON text of `value`; `whose` names it in the error ("the response of handler …")."""
    try:
        return json.dumps(value, default=plain, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as error:
        raise SystemException(f"{whose} cannot be sent as JSON: {error}") from None
