"""Benchmarks of zkpubsub against honest baselines, on ZooKeeper servers the
run starts itself. ``python -m benchmarks --help``; see ``README.md``."""

from __future__ import annotations

from .runner import main

__all__ = ["main"]
