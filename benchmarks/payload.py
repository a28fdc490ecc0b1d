"""The 100-byte message every implementation sends.

The first 24 bytes carry a sequence number, the time the message was
scheduled to be sent and the time it was sent (``time.monotonic()``, which on
Linux is one clock for every process of the machine); the rest is padding.
Subscribers in other processes compute latencies from it.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

PAYLOAD_SIZE: Final = 100
_HEADER: Final = struct.Struct("!Qdd")
_PADDING: Final = b"." * (PAYLOAD_SIZE - _HEADER.size)


class Stamp(NamedTuple):
    seq: int
    scheduled: float
    sent: float


def make(seq: int, scheduled: float, sent: float) -> bytes:
    """A ``PAYLOAD_SIZE``-byte payload."""
    return _HEADER.pack(seq, scheduled, sent) + _PADDING


def parse(data: bytes) -> Stamp:
    seq, scheduled, sent = _HEADER.unpack_from(data)
    return Stamp(seq, scheduled, sent)
