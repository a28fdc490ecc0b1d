"""A publish/subscribe workload that records everything it does.

:class:`Workload` runs publisher threads (each on a client of its own,
publishing ``{"p": <publisher>, "s": <seq>}`` one message at a time) and
subscribers (each a client of its own with a recording handler) against
real ZooKeeper, and fills a :class:`~zkpubsub.testing.history.Recorder`.
:class:`~zkpubsub.testing.children.SubscriberProcess` is a subscriber in
a child process, for tests that kill one with SIGKILL.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..cleaner import Cleaner
from ..client import Client
from ..message import Message
from ..state import ClientState, Gap
from ..subscription import Subscription
from .checker import missing
from .children import SubscriberProcess, join_threads, tag
from .history import History, Key, Recorder, payload_for
from .ledger import Ledger, replay
from .txnlog import ClusterLog

__all__ = [
    "ClientPool",
    "Workload",
]


logger = logging.getLogger(__name__)


class _Notes(Protocol):
    def note(self, what: str, n: int = 1) -> None: ...


class ClientPool:
    """Clients on one root that note what their connections went through
    (``"sessions lost"`` and ``"sessions lost by <id>"`` for each session
    that expired, ``"suspensions"`` and ``"suspensions by <id>"`` for each
    lost connection) and are closed together."""

    def __init__(
        self,
        hosts: str,
        root: str,
        *,
        session_timeout: float,
        request_timeout: float,
        notes: _Notes,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        self.hosts = hosts
        self.root = root
        self.session_timeout = session_timeout
        self.request_timeout = request_timeout
        self.client_options = dict(client_options or {})
        self._notes = notes
        self._clients: list[Client] = []

    def client(self, client_id: str, hosts: str | None = None, **options: Any) -> Client:
        """A client on this root, closed by :meth:`close_clients`."""
        opts: dict[str, Any] = {
            "root": self.root,
            "session_timeout": self.session_timeout,
            "request_timeout": self.request_timeout,
            **self.client_options,
            **options,
        }
        client = Client(hosts or self.hosts, client_id=client_id, **opts)
        self._clients.append(client)
        notes = self._notes

        def on_state(state: ClientState) -> None:
            if state == ClientState.LOST:
                notes.note("sessions lost")
                notes.note(f"sessions lost by {client_id}")
            elif state == ClientState.SUSPENDED:
                notes.note("suspensions")
                notes.note(f"suspensions by {client_id}")

        client.add_listener(on_state)
        return client

    def cleaners(self) -> list[Cleaner]:
        """The cleaner candidates of this pool's clients still running (every
        client hosts one unless made with ``cleaner=False``)."""
        return [c.cleaner for c in self._clients if c.cleaner is not None]

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(0.05)

    def close_clients(self) -> None:
        for client in self._clients:
            try:
                client.close()
            except Exception as exc:  # a broken ensemble must not hide the result
                logger.info("closing %s: %s", client.client_id, exc)


class Workload(ClientPool):
    """Publishers and subscribers on one topic, all recorded.

    Every client is a :class:`~zkpubsub.Client` of its own on ``root`` with
    the given timeouts, on ``hosts`` unless :meth:`add_publisher` / :meth:`add_subscriber` name
    other hosts (a proxy, say). Each publisher publishes one message at a
    time, at most ``rate`` per second if given, until :meth:`stop_publishing`
    or ``max_messages``. ``log`` reads the servers' transaction logs (for
    :meth:`ledger` and :meth:`drain`); ``purge_grace`` is the grace of the
    cleaners running, if any.
    """

    def __init__(
        self,
        hosts: str,
        root: str,
        *,
        topic: str = "faults",
        session_timeout: float = 4.0,
        request_timeout: float = 20.0,
        publish_timeout: float = 20.0,
        rate: float | None = None,
        max_messages: int | None = None,
        client_options: dict[str, Any] | None = None,
        recorder: Recorder | None = None,
        log: ClusterLog | None = None,
        purge_grace: float | None = None,
    ) -> None:
        self.recorder = recorder or Recorder()
        self.log = log
        self.purge_grace = purge_grace
        super().__init__(
            hosts,
            root,
            session_timeout=session_timeout,
            request_timeout=request_timeout,
            notes=self.recorder,
            client_options=client_options,
        )
        self.topic = topic
        self.publish_timeout = publish_timeout
        self.rate = rate
        self.max_messages = max_messages
        self.publishers: dict[str, Client] = {}
        self.subscribers: dict[str, Client] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self.processes: dict[str, SubscriberProcess] = {}
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    # -- clients ---------------------------------------------------------------------

    def add_subscriber(
        self,
        name: str | None = None,
        *,
        hosts: str | None = None,
        gate: threading.Event | None = None,
        subscription: dict[str, Any] | None = None,
        **options: Any,
    ) -> Client:
        """A subscriber client; it is subscribed when this returns.
        ``subscription``: options of its ``subscribe()`` (``max_backlog``…);
        ``gate``: its handler waits for that event before each message (a
        stuck subscriber while it is clear)."""
        name = name or f"sub-{len(self.subscribers) + len(self.processes) + 1}-{tag()}"
        client = self.client(name, hosts, **options)
        recorder, topic = self.recorder, self.topic

        def on_message(message: Message) -> None:
            if gate is not None:
                gate.wait()
            recorder.delivered(name, message.topic, message.payload, message.id)

        def on_gap(gap: Gap) -> None:
            if topic in gap.topics:
                recorder.gap(
                    name, gap.since, gap.until, gap.reason, topics=gap.topics, missed=gap.missed
                )

        client.add_gap_listener(on_gap)
        sub = client.subscribe(topic, on_message, **(subscription or {}))
        recorder.subscribed(name, topic)
        self.subscribers[name] = client
        self.subscriptions[name] = sub
        return client

    def add_subscriber_process(
        self, name: str | None = None, *, hosts: str | None = None, durable: bool = False
    ) -> SubscriberProcess:
        """A subscriber in a child process (to be killed for real)."""
        name = name or f"subproc-{len(self.subscribers) + len(self.processes) + 1}-{tag()}"
        proc = SubscriberProcess(
            hosts or self.hosts,
            self.root,
            self.topic,
            name,
            session_timeout=self.session_timeout,
            durable=durable,
        )
        at = proc.start()
        self.recorder.subscribed(name, self.topic, at)
        self.processes[name] = proc
        return proc

    def kill_subscriber_process(self, name: str, *, coming_back: bool = False) -> None:
        """SIGKILL. Unless it is ``coming_back`` (:meth:`restart_subscriber_process`),
        it is no longer entitled to anything."""
        self.processes[name].kill()
        if not coming_back:
            self.recorder.ended(name)

    def restart_subscriber_process(self, name: str, *, truncate_backlog: int = 0) -> list[Key]:
        """Start a killed subscriber process again with the same client id.
        ``truncate_backlog`` makes it a faulty one: once registered, before
        it subscribes, it deletes that many of the oldest nodes of its
        queue. Returns the keys of the messages it deleted."""
        self.recorder.add_deliveries(self.processes[name].collect_new())
        return self.processes[name].restart(truncate_backlog=truncate_backlog)

    def add_publisher(
        self, name: str | None = None, *, hosts: str | None = None, **options: Any
    ) -> Client:
        name = name or f"pub-{len(self.publishers) + 1}-{tag()}"
        client = self.client(name, hosts, **options)
        self.publishers[name] = client
        return client

    def close_subscriber(self, name: str) -> None:
        """Close a subscriber before the end: it is no longer entitled to anything."""
        self.recorder.ended(name)
        self.subscriptions[name].close()
        self.subscribers[name].close()

    # -- publishing ---------------------------------------------------------------------

    def start_publishing(self) -> None:
        for name, client in self.publishers.items():
            t = threading.Thread(
                target=self._publish_loop, args=(name, client), name=f"workload-{name}", daemon=True
            )
            t.start()
            self._threads.append(t)

    def _publish_loop(self, name: str, client: Client) -> None:
        seq = 0
        pause = 1.0 / self.rate if self.rate else 0.0
        while not self._stop.is_set():
            if self.max_messages is not None and seq >= self.max_messages:
                return
            seq += 1
            started = time.time()
            try:
                receipt = client.publish(
                    self.topic, payload_for(name, seq), timeout=self.publish_timeout
                )
            except Exception as exc:
                self.recorder.published(name, seq, self.topic, started, error=exc)
                logger.info("publish %s/%d: %s", name, seq, exc)
                self._stop.wait(0.05)
                continue
            self.recorder.published(
                name,
                seq,
                self.topic,
                started,
                message_ids=receipt.message_ids,
                reached=receipt.subscribers,
            )
            if pause:
                self._stop.wait(pause)

    def publish_one(self, name: str, seq: int) -> None:
        """Publish one message synchronously from publisher ``name`` (for
        scenarios that drive publishes themselves)."""
        client = self.publishers[name]
        started = time.time()
        try:
            receipt = client.publish(
                self.topic, payload_for(name, seq), timeout=self.publish_timeout
            )
        except Exception as exc:
            self.recorder.published(name, seq, self.topic, started, error=exc)
            return
        self.recorder.published(
            name,
            seq,
            self.topic,
            started,
            message_ids=receipt.message_ids,
            reached=receipt.subscribers,
        )

    def stop_publishing(self, timeout: float | None = None) -> None:
        """Stop the publishers and wait for their last publish to return."""
        self._stop.set()
        limit = timeout if timeout is not None else self.publish_timeout + 30
        join_threads(self._threads, limit, "publishers")

    @property
    def publishing(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def wait_acked(self, n: int, timeout: float = 60.0) -> None:
        """Wait until ``n`` more publishes have been acknowledged."""
        base = self.acked()
        self.wait_until(lambda: self.acked() >= base + n, timeout, f"{n} acknowledged publishes")

    def acked(self) -> int:
        return sum(1 for p in self.recorder.history().publishes if p.outcome == "ok")

    # -- the end --------------------------------------------------------------------------

    def ledger(self) -> Ledger:
        """What the servers' logs say was written under this root."""
        if self.log is None:
            raise RuntimeError("this workload was given no server logs to read")
        return replay(self.log.committed(), self.root)

    def drain(self, timeout: float = 60.0) -> list[tuple[str, tuple[str, int]]]:
        """Wait until every subscriber got every message it must receive
        (see :mod:`~zkpubsub.testing.checker`), or ``timeout`` passes;
        return what is still missing."""
        deadline = time.monotonic() + timeout
        while True:
            left = missing(self.history(), self.ledger(), purge_grace=self.purge_grace)
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.3)

    def history(self) -> History:
        for proc in self.processes.values():
            self.recorder.add_deliveries(proc.collect_new())
        return self.recorder.history()

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.publish_timeout + 5)
        for proc in self.processes.values():
            proc.kill()
        self.close_clients()
