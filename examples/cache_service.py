"""A service kept consistent by zkpubsub: FastAPI, several instances, one cache.

Every instance caches users read from a shared database (a SQLite file
here) in an :class:`~zkpubsub.cache.AsyncInvalidatingCache`; a write on any
instance invalidates the user in every instance. Each instance exposes
Prometheus metrics and liveness / readiness endpoints.

One command starts a local ZooKeeper and three instances::

    python examples/cache_service.py --instances 3

(it needs ZooKeeper installed, and ``pip install 'zkpubsub[example]'``).
It prints one JSON line with the addresses, then serves until Ctrl-C::

    curl http://127.0.0.1:PORT1/users/1
    curl -X PUT http://127.0.0.1:PORT2/users/1 -H 'content-type: application/json' \\
         -d '{"name": "Grace"}'
    curl http://127.0.0.1:PORT3/users/1            # Grace, within milliseconds
    curl http://127.0.0.1:PORT1/metrics
    curl http://127.0.0.1:PORT1/health/ready

``--hosts`` uses a running ZooKeeper instead of starting one. One instance
alone: ``python examples/cache_service.py serve --hosts H --db FILE --port P``.

Endpoints: ``GET /users/{id}``, ``PUT /users/{id}`` (``{"name": ...}``),
``GET /stats`` (the cache's counters), ``GET /metrics``,
``GET /health/live``, ``GET /health/ready``.
"""

# (no "from __future__ import annotations": FastAPI reads the local types below)

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

TOPIC = "cache.users"
SEED = {"1": "Ada", "2": "Barbara", "3": "Edsger"}


# -- the source of truth ---------------------------------------------------------------


def init_db(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("create table if not exists users (id text primary key, name text)")
        db.executemany("insert or ignore into users values (?, ?)", SEED.items())


def read_user(path: Path, user_id: str) -> dict[str, str] | None:
    with sqlite3.connect(path) as db:
        row = db.execute("select id, name from users where id = ?", (user_id,)).fetchone()
    return None if row is None else {"id": row[0], "name": row[1]}


def write_user(path: Path, user_id: str, name: str) -> None:
    with sqlite3.connect(path) as db:
        db.execute("insert or replace into users values (?, ?)", (user_id, name))


# -- one instance ------------------------------------------------------------------------


def make_app(hosts: str, root: str, db: Path, name: str) -> Any:
    from fastapi import FastAPI, HTTPException, Response
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from pydantic import BaseModel

    from zkpubsub.aio import AsyncClient
    from zkpubsub.cache import AsyncInvalidatingCache
    from zkpubsub.health import check
    from zkpubsub.metrics import ClientMetrics

    registry = CollectorRegistry()

    async def load_user(user_id: str) -> dict[str, str] | None:
        return await asyncio.to_thread(read_user, db, user_id)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncClient.connect(hosts, root=root) as client:
            metrics = ClientMetrics(client, registry=registry)
            async with AsyncInvalidatingCache(client, TOPIC, load_user) as cache:
                app.state.client, app.state.cache = client, cache
                yield
            metrics.close()

    app = FastAPI(title=f"cache service {name}", lifespan=lifespan)

    class User(BaseModel):
        name: str

    @app.get("/users/{user_id}")
    async def get_user(user_id: str) -> dict[str, str]:
        user = await app.state.cache.get(user_id)
        if user is None:
            raise HTTPException(404, f"no user {user_id}")
        return {**user, "instance": name}

    @app.put("/users/{user_id}")
    async def put_user(user_id: str, user: User) -> dict[str, Any]:
        await asyncio.to_thread(write_user, db, user_id, user.name)
        receipt = await app.state.cache.invalidate(user_id)  # here at once, elsewhere soon
        return {"id": user_id, "name": user.name, "instances_told": receipt.subscribers}

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return {"instance": name, "cache": asdict(app.state.cache.stats())}

    @app.get("/metrics")
    async def metrics() -> Response:
        # a scrape may ask ZooKeeper (up to 3 s when it stops answering):
        # off the loop, so the health endpoints answer meanwhile
        scraped = await asyncio.to_thread(generate_latest, registry)
        return Response(scraped, media_type=CONTENT_TYPE_LATEST)

    @app.get("/health/live")
    async def live(response: Response) -> dict[str, Any]:
        health = check(app.state.client)
        response.status_code = health.liveness_code
        return health.as_dict()

    @app.get("/health/ready")
    async def ready(response: Response) -> dict[str, Any]:
        health = check(app.state.client)  # degraded (ZooKeeper down) is still ready
        response.status_code = health.readiness_code
        return health.as_dict()

    return app


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    app = make_app(args.hosts, args.root, Path(args.db), args.name)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


# -- several instances, and a ZooKeeper, with one command ----------------------------------


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health/ready", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def launch(args: argparse.Namespace) -> int:
    from zkpubsub.testing import ZooKeeperCluster, free_ports

    stopping: list[int] = []
    # before anything is started: a SIGTERM then stops what was started
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    workdir = Path(tempfile.mkdtemp(prefix="cache-service-"))
    cluster = None
    instances: list[subprocess.Popen[bytes]] = []
    try:
        db = workdir / "users.db"
        init_db(db)
        hosts = args.hosts
        if hosts is None:
            cluster = ZooKeeperCluster(1, base_dir=workdir / "zookeeper")
            cluster.start()  # closed below even if interrupted while it starts
            hosts = cluster.hosts
        ports = free_ports(args.instances)
        for i, port in enumerate(ports, 1):
            if stopping:
                return 0
            command = [sys.executable, __file__, "serve", "--hosts", hosts, "--root", args.root]
            command += ["--db", str(db), "--port", str(port), "--name", f"instance-{i}"]
            instances.append(subprocess.Popen(command))
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        deadline = time.monotonic() + 60
        while not all(_ready(url) for url in urls):
            if stopping:
                return 0
            if time.monotonic() > deadline or any(p.poll() is not None for p in instances):
                print("an instance did not start", file=sys.stderr)
                return 1
            time.sleep(0.2)
        print(json.dumps({"zookeeper": hosts, "instances": urls}), flush=True)
        while not stopping and all(p.poll() is None for p in instances):
            time.sleep(0.2)
        return 0
    except KeyboardInterrupt:  # Ctrl-C
        return 0
    finally:
        for process in instances:
            # SIGTERM, not SIGINT: after a terminal's Ctrl-C, which reached
            # them too, uvicorn takes a second SIGINT for a forced quit (and
            # skips the shutdown that closes the cache and the client)
            process.send_signal(signal.SIGTERM)
        for process in instances:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        if cluster is not None:
            cluster.close()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--instances", type=int, default=3, help="how many instances (default 3)")
    parser.add_argument("--hosts", default=None, help="a running ZooKeeper (default: start one)")
    parser.add_argument("--root", default="/cache-service", help="where the bus lives")
    commands = parser.add_subparsers(dest="command")
    one = commands.add_parser("serve", help="run one instance")
    one.add_argument("--hosts", required=True)
    one.add_argument("--root", default="/cache-service")
    one.add_argument("--db", required=True)
    one.add_argument("--port", type=int, required=True)
    one.add_argument("--name", default="instance")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args)
        return 0
    return launch(args)


if __name__ == "__main__":
    sys.exit(main())
