"""What subscribers receive and what publishers get back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final

__all__ = ["Message", "PublishReceipt"]


@dataclass(frozen=True, slots=True)
class Message:
    """One message as a subscriber receives it.

    ``published_at`` is the publisher's wall clock (seconds since the epoch);
    ``attempt`` counts the deliveries of this message to this subscription's
    handler, starting at 1.
    """

    id: str
    topic: str
    payload: Any
    headers: Mapping[str, str]
    published_at: float
    publisher_id: str
    content_type: str = "application/msgpack"
    attempt: int = 1


# The slots' own setters, in field order. A subscriber makes a Message of
# every message it reads; the frozen dataclass's __init__ sets each field
# through object.__setattr__, which takes over twice as long.
_SETTERS: Final = tuple(getattr(Message, f.name).__set__ for f in fields(Message))
_new: Final = object.__new__
(
    _id,
    _topic,
    _payload,
    _headers,
    _published_at,
    _publisher_id,
    _content_type,
    _attempt,
) = _SETTERS


def received(
    id: str,
    topic: str,
    payload: Any,
    headers: Mapping[str, str],
    published_at: float,
    publisher_id: str,
    content_type: str,
    attempt: int = 1,
) -> Message:
    """The :class:`Message` that ``Message(...)`` with these fields makes,
    made faster (internal: the receive path's; a test holds the two equal)."""
    message = _new(Message)
    _id(message, id)
    _topic(message, topic)
    _payload(message, payload)
    _headers(message, headers)
    _published_at(message, published_at)
    _publisher_id(message, publisher_id)
    _content_type(message, content_type)
    _attempt(message, attempt)
    return message


@dataclass(frozen=True, slots=True)
class PublishReceipt:
    """Confirmation that ZooKeeper stored a publish.

    ``subscribers`` is the number of subscriber queues the message (or the
    batch) was written to; ``message_ids`` lists one id per message, in
    publish order; ``skipped`` counts the subscribers whose queue was full
    (they hear of it through a gap notice).
    """

    message_ids: tuple[str, ...]
    subscribers: int
    topic: str = ""
    transactions: int = field(default=1, compare=False)
    skipped: int = 0

    @property
    def message_id(self) -> str:
        """The id of the (first) message."""
        return self.message_ids[0]
