"""zkpubsub: reliable messaging on Apache ZooKeeper.

Topic broadcast (every subscriber gets every message, in one order), an
elected cleaner for the queues of clients that went away, and a work queue.
Everyday use needs only what is imported here, and for caches
:class:`zkpubsub.cache.InvalidatingCache`::

    from zkpubsub import Client

    with Client("127.0.0.1:2181") as client:
        client.subscribe("orders", lambda m: print(m.payload))
        client.publish("orders", {"id": 42})
"""

from __future__ import annotations

from ._version import __version__
from .cleaner import Cleaner, CleanerStats
from .client import Client
from .config import ClientConfig
from .errors import (
    AlreadySubscribed,
    ClientClosed,
    ClientIdInUse,
    ConnectionLost,
    ConnectTimeout,
    DecodeError,
    ItemFailed,
    NoSubscribers,
    NotFound,
    OperationTimeout,
    PayloadTooLarge,
    PublishTimeout,
    QueueFull,
    ReservationLost,
    SerializationError,
    ZkPubSubError,
    ZooKeeperError,
)
from .layout import DEFAULT_ROOT
from .message import Message, PublishReceipt
from .observer import Observer
from .serializers import JsonSerializer, MsgpackSerializer, RawSerializer, Serializer
from .state import ClientState, Gap
from .stats import BusStats, ClientInfo, QueueStats
from .subscription import Subscription, SubscriptionStats
from .workqueue import (
    Consumer,
    ConsumerStats,
    DeadItem,
    Item,
    Ticket,
    Worker,
    WorkQueue,
    WorkQueueStats,
)

__all__ = [
    "DEFAULT_ROOT",
    "AlreadySubscribed",
    "BusStats",
    "Cleaner",
    "CleanerStats",
    "Client",
    "ClientClosed",
    "ClientConfig",
    "ClientIdInUse",
    "ClientInfo",
    "ClientState",
    "ConnectTimeout",
    "ConnectionLost",
    "Consumer",
    "ConsumerStats",
    "DeadItem",
    "DecodeError",
    "Gap",
    "Item",
    "ItemFailed",
    "JsonSerializer",
    "Message",
    "MsgpackSerializer",
    "NoSubscribers",
    "NotFound",
    "Observer",
    "OperationTimeout",
    "PayloadTooLarge",
    "PublishReceipt",
    "PublishTimeout",
    "QueueFull",
    "QueueStats",
    "RawSerializer",
    "ReservationLost",
    "SerializationError",
    "Serializer",
    "Subscription",
    "SubscriptionStats",
    "Ticket",
    "WorkQueue",
    "WorkQueueStats",
    "Worker",
    "ZkPubSubError",
    "ZooKeeperError",
    "__version__",
]
