"""The package version, in one place (``pyproject.toml`` repeats it for packaging)."""

from __future__ import annotations

from typing import Final

__all__ = ["__version__"]

__version__: Final = "0.1.0"
