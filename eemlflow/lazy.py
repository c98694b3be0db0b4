"""A package's public names imported when first used (PEP 562), so that importing a light part of a package does
not import its heavy parts: ``eemlflow export`` reads settings from ``eemlflow.training`` but never trains, and
should not wait seconds for torch and timm. A bottom-floor helper like ``errors``: it imports nothing of eemlflow.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, namespace: dict[str, Any],
                 exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package`` whose public names are ``exports`` (name -> the module
    that defines it); each name is imported on first access and then kept in the package's ``namespace``."""

    def getattr_(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted({*namespace, *exports})

    return getattr_, dir_
