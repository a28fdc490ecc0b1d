"""Prometheus metrics of a client: what an operator needs to see that the
bus works, without writing any of them by hand.

Needs the ``metrics`` extra (``pip install 'zkpubsub[metrics]'``, which
brings ``prometheus_client``). One :class:`ClientMetrics` per client,
registered in a ``prometheus_client`` registry (the default one unless
told)::

    from zkpubsub.metrics import ClientMetrics

    metrics = ClientMetrics(client, queues=["thumbnails"])
    # expose prometheus_client's default registry as usual, e.g.
    # prometheus_client.start_http_server(9100) or make_asgi_app()

Events are counted as they happen (publishes and their latency,
deliveries and their lag from the publisher's clock, handler errors and
drops, lost reservations, gaps), so a counter outlives the subscription
that counted; the rest is read when Prometheus scrapes (session state,
pending publishes, per-subscription read-ahead and backlog, work-queue
depth, the hosted cleaner). Reading the server at scrape time is skipped while the
client is not connected, and its reads share a budget of
``SCRAPE_READS_BUDGET`` (3 s), so a scrape never waits long for ZooKeeper,
even one that stopped answering before the client noticed; with work
queues to read, the backlogs have half of it (and leave them what they do
not use). A backlog or work queue not read by then (or while not connected)
is given as last read, and the next scrape reads on from there, so that
each is read in turn.

Every metric is named ``zkpubsub_...``:

=============================================  ===========  =====================
name                                           type         labels
=============================================  ===========  =====================
publishes_total (messages)                     counter      topic, outcome
publish_duration_seconds                       histogram    topic
publishes_pending                              gauge
deliveries_total                               counter      topic
delivery_lag_seconds (published → handled)     histogram    topic
handler_errors_total                           counter      topic
messages_dropped_total                         counter      topic
subscription_pending (read ahead, unhandled)   gauge        topic
subscription_backlog (nodes in its queue)      gauge        topic
gaps_total                                     counter      reason
session_state (1 for the current one)          gauge        state
reservations_lost_total                        counter      queue
work_queue_items                               gauge        queue, state
work_queue_workers                             gauge        queue
cleaner_leader (1 while this client leads)     gauge
cleaner_sweeps_total                           counter
cleaner_queues_removed_total                   counter
cleaner_nodes_removed_total                    counter
cleaner_subscriptions_evicted_total            counter
=============================================  ===========  =====================
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final, Literal

from ._deadlines import deadline_after, expired, remaining
from .client import Client
from .errors import ZkPubSubError
from .layout import validate_name
from .state import ClientState, Gap

if TYPE_CHECKING:
    from .aio import AsyncClient

__all__ = ["ClientMetrics"]

logger = logging.getLogger(__name__)

# What one scrape may spend reading the server (backlogs, queue counts) in
# all; past it the backlogs left are given as last read, the queues left out.
SCRAPE_READS_BUDGET: Final = 3.0
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "zkpubsub.metrics needs prometheus_client: pip install 'zkpubsub[metrics]'"
        ) from exc
    return prometheus_client


# The families :meth:`ClientMetrics.collect` builds at scrape time: name,
# kind, help and labels (its describe() names them from here too).
_SCRAPED: Final[dict[str, tuple[Literal["gauge", "counter"], str, tuple[str, ...]]]] = {
    "zkpubsub_session_state": ("gauge", "The client's state (1 for the current one).", ("state",)),
    "zkpubsub_publishes_pending": ("gauge", "Publishes accepted and not confirmed yet.", ()),
    "zkpubsub_gaps": (
        "counter",
        "Gap notices: messages may have been missed.",
        ("reason",),
    ),
    "zkpubsub_reservations_lost": (
        "counter",
        "Work items whose reservation was gone at ack or release.",
        ("queue",),
    ),
    "zkpubsub_handler_errors": (
        "counter",
        "Handler failures and undecodable nodes.",
        ("topic",),
    ),
    "zkpubsub_messages_dropped": (
        "counter",
        "Messages given up after max_attempts.",
        ("topic",),
    ),
    "zkpubsub_subscription_pending": (
        "gauge",
        "Messages read ahead or listed, not handled yet.",
        ("topic",),
    ),
    "zkpubsub_subscription_backlog": (
        "gauge",
        "Message nodes in the subscription's queue on the server.",
        ("topic",),
    ),
    "zkpubsub_work_queue_items": ("gauge", "Items of a work queue.", ("queue", "state")),
    "zkpubsub_work_queue_workers": ("gauge", "Registered workers.", ("queue",)),
    "zkpubsub_cleaner_leader": ("gauge", "1 while the cleaner hosted by this client leads.", ()),
    "zkpubsub_cleaner_sweeps": ("counter", "Sweeps of the hosted cleaner.", ()),
    "zkpubsub_cleaner_queues_removed": ("counter", "Queues it removed.", ()),
    "zkpubsub_cleaner_nodes_removed": ("counter", "Nodes it removed.", ()),
    "zkpubsub_cleaner_subscriptions_evicted": (
        "counter",
        "Subscriptions it ended because their queue filled up (evict).",
        (),
    ),
}


def _family(name: str, value: float | None = None) -> Any:
    """A new, empty family of :data:`_SCRAPED` (or one sample of ``value``)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    kind, text, labels = _SCRAPED[name]
    make = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
    if value is not None:
        return make(name, text, value=value)
    return make(name, text, labels=list(labels))


class ClientMetrics:
    """Prometheus metrics of ``client`` (a :class:`~zkpubsub.Client` or an
    :class:`~zkpubsub.aio.AsyncClient`), registered in ``registry``
    (default: ``prometheus_client``'s). ``queues`` names the work queues
    whose depth is reported (more with :meth:`watch_queue`). A registry
    takes one: a second on it, whichever client it watches, is refused
    with ``ValueError`` (every series would come twice; give each its own
    ``registry=``). :meth:`close` unregisters."""

    def __init__(
        self,
        client: Client | AsyncClient,
        *,
        registry: Any = None,
        queues: Iterable[str] = (),
    ) -> None:
        prometheus = _prometheus()
        self._client: Client = client if isinstance(client, Client) else client.sync
        self._registry = prometheus.REGISTRY if registry is None else registry
        if isinstance(queues, str):
            raise TypeError("queues is a list of queue names, not one str")
        self._queues: list[str] = [validate_name(q, "queue name") for q in queues]
        self._lock = threading.Lock()
        self._gaps: dict[str, int] = {}
        self._lost: dict[str, int] = {}
        # handler errors and drops by topic, counted as they happen (read
        # from the subscriptions at scrape time, a closed one's went back to 0)
        self._errors: dict[str, int] = {}
        self._dropped: dict[str, int] = {}
        # what scrapes read of the server, by kind ("backlogs" by topic,
        # "queues" by name): the last value read of each, and where the next
        # scrape starts reading (each goes on where the last stopped)
        self._last: dict[str, dict[str, Any]] = {"backlogs": {}, "queues": {}}
        self._read_from: dict[str, int] = {"backlogs": 0, "queues": 0}
        unregistered = {"registry": None}
        self._published = prometheus.Counter(
            "zkpubsub_publishes",
            "Messages whose publish settled, by outcome (ok or the error's class name).",
            ["topic", "outcome"],
            **unregistered,
        )
        self._publish_seconds = prometheus.Histogram(
            "zkpubsub_publish_duration_seconds",
            "From a publish call to ZooKeeper's confirmation (or its error).",
            ["topic"],
            buckets=_LATENCY_BUCKETS,
            **unregistered,
        )
        self._deliveries = prometheus.Counter(
            "zkpubsub_deliveries",
            "Messages handled by this client's subscriptions.",
            ["topic"],
            **unregistered,
        )
        self._lag = prometheus.Histogram(
            "zkpubsub_delivery_lag_seconds",
            "From publish (the publisher's clock) to the handler's return.",
            ["topic"],
            buckets=_LATENCY_BUCKETS,
            **unregistered,
        )
        # a closed client is refused (ClientClosed) before the registry is taken
        self._client.add_gap_listener(self._on_gap)
        self._client.add_observer(self)
        try:
            self._registry.register(self)
        except ValueError as exc:  # its names are taken (see describe)
            self._client.remove_observer(self)
            self._client.remove_gap_listener(self._on_gap)
            raise ValueError(
                f"{exc}: the registry has zkpubsub metrics already (one client's, or "
                "another's); a registry takes one ClientMetrics (give each its own registry=...)"
            ) from None

    def watch_queue(self, name: str) -> None:
        """Report the depth of work queue ``name`` too."""
        validate_name(name, "queue name")
        with self._lock:
            if name not in self._queues:
                self._queues.append(name)

    def close(self) -> None:
        """Stop counting and unregister. Idempotent."""
        self._client.remove_observer(self)
        self._client.remove_gap_listener(self._on_gap)
        with contextlib.suppress(KeyError):  # unregistered already
            self._registry.unregister(self)

    # -- events, as they happen (on the client's threads) ------------------------------

    def published(self, topic: str, messages: int, seconds: float, outcome: str) -> None:
        self._published.labels(topic, outcome).inc(messages)
        self._publish_seconds.labels(topic).observe(seconds)

    def handled(self, topic: str, published_at: float, handled_at: float) -> None:
        self._deliveries.labels(topic).inc()
        self._lag.labels(topic).observe(max(0.0, handled_at - published_at))

    def reservation_lost(self, queue: str, items: int) -> None:
        with self._lock:
            self._lost[queue] = self._lost.get(queue, 0) + items

    def errored(self, topic: str) -> None:
        with self._lock:
            self._errors[topic] = self._errors.get(topic, 0) + 1

    def dropped(self, topic: str) -> None:
        with self._lock:
            self._dropped[topic] = self._dropped.get(topic, 0) + 1

    def _on_gap(self, gap: Gap) -> None:
        with self._lock:
            self._gaps[gap.reason] = self._gaps.get(gap.reason, 0) + 1

    # -- the rest, at scrape time ------------------------------------------------------

    def describe(self) -> list[Any]:
        """The families :meth:`collect` yields, empty: the registry checks
        their names against those it has (two of these on one registry
        would give every series twice, which a scrape's parser refuses)."""
        return [
            *self._published.describe(),
            *self._publish_seconds.describe(),
            *self._deliveries.describe(),
            *self._lag.describe(),
            *(_family(name) for name in _SCRAPED),
        ]

    def collect(self) -> Iterator[Any]:
        client = self._client
        yield from self._published.collect()
        yield from self._publish_seconds.collect()
        yield from self._deliveries.collect()
        yield from self._lag.collect()
        status = client.status
        state = _family("zkpubsub_session_state")
        for each in ClientState:
            state.add_metric([each.value], 1.0 if each == status else 0.0)
        yield state
        yield _family("zkpubsub_publishes_pending", value=client.pending_publishes)
        with self._lock:
            gaps, lost, queues = dict(self._gaps), dict(self._lost), list(self._queues)
        family = _family("zkpubsub_gaps")
        for reason in sorted(set(gaps) | {"session expired", "backlog purged"}):
            family.add_metric([reason], gaps.get(reason, 0))
        yield family
        family = _family("zkpubsub_reservations_lost")
        for queue in sorted(set(lost) | set(queues)):
            family.add_metric([queue], lost.get(queue, 0))
        yield family
        connected = status == ClientState.CONNECTED
        # the reads of the server share one budget: a frozen server costs a
        # scrape SCRAPE_READS_BUDGET, whatever it reads
        deadline = deadline_after(SCRAPE_READS_BUDGET) if connected else None
        # the backlogs have half the budget when there are work queues to
        # read too (and leave them what they do not use): neither starves
        share = deadline
        if deadline is not None and queues:
            share = deadline_after(SCRAPE_READS_BUDGET / 2)
        yield from self._subscriptions(share)
        yield from self._work_queues(queues, deadline)
        yield from self._cleaner()

    def _subscriptions(self, deadline: float | None) -> Iterator[Any]:
        subs = self._client.subscriptions()
        by_topic = {sub.topic: sub for sub in subs}
        errors = _family("zkpubsub_handler_errors")
        dropped = _family("zkpubsub_messages_dropped")
        pending = _family("zkpubsub_subscription_pending")
        backlog = _family("zkpubsub_subscription_backlog")
        backlogs: dict[str, int] = self._read_in_turn(
            "backlogs",
            [sub.topic for sub in subs],
            lambda topic, timeout: by_topic[topic].backlog(timeout=timeout),
            deadline,
        )
        topics = {sub.topic for sub in subs}
        with self._lock:
            counted = {"errors": dict(self._errors), "dropped": dict(self._dropped)}
        for family, counts in ((errors, counted["errors"]), (dropped, counted["dropped"])):
            for topic in sorted(topics | set(counts)):
                family.add_metric([topic], counts.get(topic, 0))
        for sub in subs:
            pending.add_metric([sub.topic], sub.stats().pending)
            if sub.topic in backlogs:
                backlog.add_metric([sub.topic], backlogs[sub.topic])
        yield from (errors, dropped, pending, backlog)

    def _read_in_turn(
        self,
        kind: str,
        keys: list[str],
        read: Callable[[str, float | None], Any],
        deadline: float | None,
    ) -> dict[str, Any]:
        """``read(key, timeout)`` of each of ``keys`` until ``deadline``
        (``None``: not connected, nothing read), starting where the last
        scrape stopped, and for those not reached the value read last (so
        that all are read in turn and none drops out of a scrape once it
        has been read)."""
        with self._lock:  # scrapes at once (a threaded exporter) each read on
            start = self._read_from[kind] % len(keys) if keys else 0
        got: dict[str, Any] = {}
        tried = 0
        for key in keys[start:] + keys[:start]:
            if deadline is None or expired(deadline):
                break
            tried += 1
            try:
                got[key] = read(key, remaining(deadline))
            except ZkPubSubError as exc:
                logger.debug("metrics: %s of %r: %s", kind, key, exc)
        wanted = set(keys)
        with self._lock:
            self._read_from[kind] = start + tried
            kept = {k: v for k, v in self._last[kind].items() if k in wanted}
            self._last[kind] = {**kept, **got}
            return dict(self._last[kind])

    def _work_queues(self, queues: list[str], deadline: float | None) -> Iterator[Any]:
        items = _family("zkpubsub_work_queue_items")
        workers = _family("zkpubsub_work_queue_workers")
        read = self._read_in_turn(
            "queues",
            queues,
            lambda name, timeout: self._client.queue(name).stats(timeout=timeout),
            deadline,
        )
        for name in queues:
            stats = read.get(name)
            if stats is None:
                continue
            for what in ("ready", "reserved", "dead"):
                items.add_metric([name, what], getattr(stats, what))
            workers.add_metric([name], stats.workers)
        yield from (items, workers)

    def _cleaner(self) -> Iterator[Any]:
        cleaner = self._client.cleaner
        stats = cleaner.stats() if cleaner is not None else None
        leads = stats is not None and stats.is_leader
        yield _family("zkpubsub_cleaner_leader", value=1.0 if leads else 0.0)
        for what in ("sweeps", "queues_removed", "nodes_removed", "subscriptions_evicted"):
            count = getattr(stats, what) if stats is not None else 0
            yield _family(f"zkpubsub_cleaner_{what}", value=count)
