"""The supported surface (docs/architecture.md): every module whose name does
not start with ``_`` says what it offers in an ``__all__``, and offers it."""

from __future__ import annotations

import importlib
import pkgutil

import zkpubsub


def _public_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(zkpubsub.__path__, "zkpubsub."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def test_every_public_module_declares_what_it_offers_and_has_it() -> None:
    modules = _public_modules()
    assert "zkpubsub.layout" in modules and "zkpubsub.testing.ledger" in modules
    lacking, missing = [], []
    for name in modules:
        module = importlib.import_module(name)
        offered = getattr(module, "__all__", None)
        if offered is None:
            lacking.append(name)
            continue
        missing += [f"{name}.{n}" for n in offered if not hasattr(module, n)]
    assert lacking == [] and missing == []


def test_the_package_offers_everything_it_lists() -> None:
    assert [n for n in zkpubsub.__all__ if not hasattr(zkpubsub, n)] == []
