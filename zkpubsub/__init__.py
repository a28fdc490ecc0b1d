"""zkpubsub: reliable messaging on Apache ZooKeeper.

Topic broadcast (every subscriber gets every message, in one order), an
elected cleaner for the queues of clients that went away, and a work queue.
Everyday use needs only what is imported here; asyncio code uses
:mod:`zkpubsub.aio`, caches :mod:`zkpubsub.cache`, operators
:mod:`zkpubsub.metrics` and :mod:`zkpubsub.health`; other languages reach
the bus over HTTP through ``zkpubsub gateway`` (:mod:`zkpubsub.gateway`)::

    from zkpubsub import Client

    with Client("127.0.0.1:2181") as client:
        client.subscribe("orders", lambda m: print(m.payload))
        client.publish("orders", {"id": 42})
"""

from __future__ import annotations

import logging

from ._version import __version__
from .backlog import Backlog
from .cleaner import Cleaner, CleanerStats
from .client import Client
from .config import ClientConfig
from .errors import (
    AlreadySubscribed,
    AuthenticationFailed,
    ClientClosed,
    ClientIdInUse,
    ConnectionLost,
    ConnectTimeout,
    DecodeError,
    ItemFailed,
    NoSubscribers,
    NotAuthorized,
    NotFound,
    OperationTimeout,
    PartlyPublished,
    PayloadTooLarge,
    PublishTimeout,
    QueueFull,
    ReservationLost,
    SecurityError,
    SerializationError,
    TlsError,
    ZkPubSubError,
    ZooKeeperError,
)
from .layout import DEFAULT_ROOT
from .message import Message, PublishReceipt
from .observer import Observer
from .security import (
    Auth,
    Roles,
    Sasl,
    Security,
    Tls,
    digest_identity,
    from_environment,
    sasl_identity,
    x509_identity,
)
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

# A library configures no handler: its records reach the application's.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "DEFAULT_ROOT",
    "AlreadySubscribed",
    "Auth",
    "AuthenticationFailed",
    "Backlog",
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
    "NotAuthorized",
    "NotFound",
    "Observer",
    "OperationTimeout",
    "PartlyPublished",
    "PayloadTooLarge",
    "PublishReceipt",
    "PublishTimeout",
    "QueueFull",
    "QueueStats",
    "RawSerializer",
    "ReservationLost",
    "Roles",
    "Sasl",
    "Security",
    "SecurityError",
    "SerializationError",
    "Serializer",
    "Subscription",
    "SubscriptionStats",
    "Ticket",
    "Tls",
    "TlsError",
    "WorkQueue",
    "WorkQueueStats",
    "Worker",
    "ZkPubSubError",
    "ZooKeeperError",
    "__version__",
    "digest_identity",
    "from_environment",
    "sasl_identity",
    "x509_identity",
]
