"""Messages to other services. They leave when the call ends successfully, together with its
writes (in a saga: when the saga finishes); a call that fails sends nothing."""

from . import host
from .encoding import to_json


async def publish(topic: str, content) -> None:
    """Publishes an event to every service subscribed to `topic` (the host publishes the
    aggregates' own `…Created`/`…Updated`/`…Deleted` events itself)."""
    host.publish(topic, to_json(content, f"the event {topic}"))


async def send(topic: str, content, reply_topic: str | None = None) -> str:
    """Sends a command to the service that handles `topic`; its reply arrives as a request on
    `reply_topic` (a broker command of this service) when given. Returns the message id."""
    return host.send(topic, to_json(content, f"the command {topic}"), reply_topic)
