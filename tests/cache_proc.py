"""An instance of a service with an :class:`InvalidatingCache`, in a child
process that a test can freeze with SIGSTOP.

    python -m tests.cache_proc serve --hosts H --root R --out F --store FILE --client-id ID

The source of truth is a JSON file (``--store``). The child prints
``ready`` once subscribed, then answers each ``get KEY`` line on its
standard input with ``value KEY VALUE``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from zkpubsub import Client
from zkpubsub.cache import InvalidatingCache
from zkpubsub.testing.children import ChildProcess, child_parser

TOPIC = "cache.users"


class CacheProcess(ChildProcess):
    def __init__(self, hosts: str, root: str, store: Path, client_id: str, session_timeout: float):
        super().__init__(
            "tests.cache_proc",
            "serve",
            client_id,
            hosts=hosts,
            root=root,
            session_timeout=session_timeout,
            options=["--store", str(store), "--client-id", client_id],
            directory=store.parent,
        )

    def start(self) -> None:
        self._spawn(stdin=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
        assert self.readline(60) == "ready"

    def readline(self, timeout: float) -> str:
        assert self.process is not None and self.process.stdout is not None
        import select

        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise AssertionError(f"the cache process said nothing in {timeout}s")
        return str(self.process.stdout.readline()).strip()

    def get(self, key: str, timeout: float = 30.0) -> str:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(f"get {key}\n")
        self.process.stdin.flush()
        line = self.readline(timeout).split(" ", 2)
        assert line[:2] == ["value", key], line
        return line[2]


def main() -> None:
    parser, serve = child_parser("python -m tests.cache_proc", "serve", "serve cached reads")
    serve.add_argument("--store", required=True)
    serve.add_argument("--client-id", required=True)
    args = parser.parse_args()
    store = Path(args.store)
    client = Client(
        args.hosts, root=args.root, client_id=args.client_id, session_timeout=args.session_timeout
    )
    cache: InvalidatingCache[str, str] = InvalidatingCache(
        client, TOPIC, lambda key: json.loads(store.read_text())[key]
    )
    print("ready", flush=True)
    for line in sys.stdin:
        command, _, key = line.strip().partition(" ")
        if command == "get":
            print(f"value {key} {cache.get(key)}", flush=True)


if __name__ == "__main__":
    main()
