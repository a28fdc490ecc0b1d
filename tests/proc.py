"""A zkpubsub client in its own process, for tests that kill it with SIGKILL.

    python -m tests.proc HOSTS ROOT CLIENT_ID ROLE [TOPIC] [durable]

ROLE ``hang-subscriber``: subscribe to TOPIC (durably if asked) and, for the first message,
print ``got <message id> <payload>`` and then block inside the handler, so
the message is never acknowledged. ROLE ``cleaner``: host a cleaner and
print ``leader`` once it leads. ROLE ``hang-worker``: reserve one item of
queue TOPIC, print ``got <id> <attempts>`` and never ack;
``hang-leased-worker`` does the same with a lease of ARG seconds (the
argument after TOPIC) and a 10 s session. ROLE ``long-subscriber``:
subscribe to TOPIC on a 10 s session, host a cleaner, print ``ready``.
ROLE ``evict-subscriber``: subscribe to TOPIC on a 10 s session, without a
cleaner, with ``when_full="evict"`` and ``max_backlog`` ARG, never reading;
print ``gap <reason>`` for each gap and ``evicted`` once the subscription is.
Subscribers and cleaners print ``ready`` when set up.
"""

from __future__ import annotations

import sys
import threading
import time

from zkpubsub import Client, Message


def main() -> None:
    hosts, root, client_id, role = sys.argv[1:5]
    long = ("hang-leased-worker", "long-subscriber", "evict-subscriber")
    session_timeout = 10.0 if role in long else 2.0
    cleaner = role != "evict-subscriber"
    client = Client(
        hosts, root=root, client_id=client_id, session_timeout=session_timeout, cleaner=cleaner
    )
    if role == "hang-subscriber":
        topic = sys.argv[5]

        def handler(msg: Message) -> None:
            print("got", msg.id, msg.payload, flush=True)
            threading.Event().wait()  # never returns: the node stays

        client.subscribe(topic, handler, durable=sys.argv[6:] == ["durable"])
        print("ready", flush=True)
    elif role == "hang-worker":
        item = client.queue(sys.argv[5]).reserve(timeout=30)
        assert item is not None
        print("got", item.id, item.attempts, flush=True)  # then never acks
    elif role == "long-subscriber":
        client.subscribe(sys.argv[5])
        client.start_cleaner()
        print("ready", flush=True)
    elif role == "evict-subscriber":
        client.add_gap_listener(lambda gap: print("gap", gap.reason, flush=True))
        sub = client.subscribe(sys.argv[5], max_backlog=int(sys.argv[6]), when_full="evict")
        print("ready", flush=True)
        while not sub.evicted:
            time.sleep(0.05)
        print("evicted", flush=True)
    elif role == "hang-leased-worker":
        queue = client.queue(sys.argv[5], visibility_timeout=float(sys.argv[6]))
        item = queue.reserve(timeout=30)
        assert item is not None
        print("got", item.id, item.attempts, flush=True)  # then never acks
    elif role == "cleaner":
        cleaner = client.start_cleaner(grace=2.0, interval=0.5)
        print("ready", flush=True)
        if cleaner.wait_leader(60):
            print("leader", flush=True)
    else:
        raise SystemExit(f"unknown role {role}")
    threading.Event().wait()


if __name__ == "__main__":
    main()
