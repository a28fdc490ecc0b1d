"""zkpubsub: reliable messaging on Apache ZooKeeper.

Topic broadcast (every subscriber gets every message, in one order), an
elected cleaner for the queues of clients that went away, and a work queue.
Everyday use needs only what is imported here::

    from zkpubsub import Client

    with Client("127.0.0.1:2181") as client:
        sub = client.subscribe("cache.users", lambda m: cache.pop(m.payload, None))
        client.publish("cache.users", "user:42")
"""

from __future__ import annotations

from ._version import __version__
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
    OperationTimeout,
    PayloadTooLarge,
    PublishTimeout,
    ReservationLost,
    SecurityError,
    SerializationError,
    TlsError,
    ZkPubSubError,
    ZooKeeperError,
)
from .layout import DEFAULT_ROOT
from .message import Message, PublishReceipt
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
from .stats import BusStats, QueueStats
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
    "Auth",
    "AuthenticationFailed",
    "BusStats",
    "Cleaner",
    "CleanerStats",
    "Client",
    "ClientClosed",
    "ClientConfig",
    "ClientIdInUse",
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
    "OperationTimeout",
    "PayloadTooLarge",
    "PublishReceipt",
    "PublishTimeout",
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
