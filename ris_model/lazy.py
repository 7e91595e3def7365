"""Package namespaces whose names load on first use.

A package's ``__init__`` lists what it exports and the module each name lives in, then
takes its ``__getattr__`` and ``__dir__`` from `lazy_exports`. Importing the package then
imports none of those modules (no torch, no plotting) until a name is first used, which
keeps command start-up and ``import`` in other tools cheap.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose ``exports`` maps each public name
    to the submodule (relative, e.g. ``"training.train"``) that defines it."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
