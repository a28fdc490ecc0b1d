"""What subscribers receive and what publishers get back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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
