"""Callbacks contributed by other packages, found through an entry-point group.

``ris_model`` never imports the health harness: ``healthcheck`` registers a factory in
the ``ris_model.callbacks`` entry-point group, and the CLI asks every registered factory
for callbacks. Anyone can plug their own monitor into ``ris-model train`` the same way.
"""

from __future__ import annotations

from collections.abc import Set
from importlib.metadata import entry_points
from typing import Any

from ris_model.training.callbacks import Callback

GROUP = "ris_model.callbacks"


def plugin_callbacks(options: dict[str, Any], *, disabled: Set[str] = frozenset()) -> list[Callback]:
    """Callbacks from every registered factory ``factory(options) -> list[Callback]``."""
    found: list[Callback] = []
    for ep in entry_points(group=GROUP):
        if ep.name in disabled:
            continue
        factory = ep.load()
        found.extend(factory(options))
    return found
