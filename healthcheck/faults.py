"""Faults: break a training run on purpose, to measure what the monitor catches.

A detector that has never seen the failure it is meant to catch is a guess. A `Fault`
is one deliberate, named breakage of a built training setup (its model, loss, optimizer,
scheduler, data, config or callbacks), applied after the setup is built and before
training starts; the detection benchmark trains once with each fault and once without,
and counts which runs the monitor flags. Faults are the mutation operators of
mutation testing (DeepCrime derives its operators from real faults: learning rate, loss,
optimizer, activation, labels, data, regularisation, initialisation), applied to a live
training object instead of to source code.

This module knows nothing about any particular trainer: ``apply`` receives whatever
object the benchmark built and the fault itself knows how to break it. Faults for the
RIS trainer live in ``healthcheck.ris.faults``. A fault that must act at step k
(a NaN batch, a weight dropped mid-run) does so through the trainer's own hooks, e.g. a
callback it adds.

Writing your own, in a file the benchmark loads with ``--faults-from FILE.py``::

    from healthcheck.faults import Fault, scale_lr

    def _tiny_lr(trainer):
        scale_lr(trainer.optimizer, 1e-6, scheduler=trainer.scheduler)

    FAULTS = [Fault("lr_x1e-6", "optimizer", _tiny_lr, expected_codes=("lr.tiny",),
                    description="every learning rate divided by a million")]

The helpers at the bottom break generic PyTorch objects (an optimizer's learning rates,
a module's forward, a method) and are what most faults are made of. torch is imported
only inside them.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .codes import CODES

if TYPE_CHECKING:  # pragma: no cover
    import torch

# The usual families, for grouping results; any lower-case name is accepted.
FAMILIES = ("loss", "weights", "optimizer", "schedule", "gradients", "data", "model", "numerics", "amp")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.@+\-]*$")
_FAMILY = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Fault:
    """One named way to break a training run.

    Args:
        name: unique, lower case (``lr_zero``, ``nan_input@8``); names a row of results.
        family: what is broken (see `FAMILIES`); recall is reported per family.
        inject: ``inject(trainer)`` mutates the built trainer; subclasses may override
            `apply` instead and leave it None.
        expected_codes: event codes a person would expect to fire. Shown next to the codes
            that did fire; never used to score (any error-level event counts), so a fault
            caught by an unexpected detector is still caught.
        description: one sentence: what is broken and how a real run gets there.
        start_step: the first step (0-based batch index) at which the fault changes
            anything; detection latency is measured from here, and error-level events
            before it are not credited to the fault.
        catalogue_rows: rows of docs/failure-catalogue.md this fault reproduces, if any.
    """

    name: str
    family: str
    inject: Callable[[Any], None] | None = field(default=None, repr=False, compare=False)
    expected_codes: tuple[str, ...] = ()
    description: str = ""
    start_step: int = 0
    catalogue_rows: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"a fault name is lower case without spaces, e.g. 'lr_zero', but got name={self.name!r}")
        if not isinstance(self.family, str) or not _FAMILY.match(self.family):
            raise ValueError(f"a fault family is a lower-case word, e.g. one of {', '.join(FAMILIES)}, "
                             f"but got family={self.family!r}")
        if self.inject is not None and not callable(self.inject):
            raise TypeError(f"inject must be callable as inject(trainer), but got inject={self.inject!r}")
        if isinstance(self.expected_codes, str):
            object.__setattr__(self, "expected_codes", (self.expected_codes,))
        object.__setattr__(self, "expected_codes", tuple(self.expected_codes))
        for code in self.expected_codes:
            if code not in CODES:
                close = difflib.get_close_matches(str(code), list(CODES), n=1)
                hint = (
                    f"; did you mean {close[0]!r}?" if close else " (register it with healthcheck.register_code first)"
                )
                raise ValueError(f"fault {self.name!r} expects unknown event code {code!r}{hint}")
        if isinstance(self.start_step, bool) or not isinstance(self.start_step, int) or self.start_step < 0:
            raise ValueError(f"start_step must be an integer >= 0, but got start_step={self.start_step!r}")
        object.__setattr__(self, "catalogue_rows", tuple(self.catalogue_rows))

    def apply(self, trainer: Any) -> None:
        """Break ``trainer`` (built, not yet fitted) in place."""
        if self.inject is None:
            raise NotImplementedError(f"fault {self.name!r} has no inject function and does not override apply()")
        self.inject(trainer)


def fault(
    name: str,
    family: str,
    *,
    expected_codes: Sequence[str] = (),
    description: str = "",
    start_step: int = 0,
    catalogue_rows: Sequence[int] = (),
) -> Callable[[Callable[[Any], None]], Fault]:
    """Decorator: turn ``inject(trainer)`` into a `Fault`; the docstring is the default description."""

    def wrap(fn: Callable[[Any], None]) -> Fault:
        text = description or " ".join((fn.__doc__ or "").split())
        return Fault(name, family, fn, tuple(expected_codes), text, start_step, tuple(catalogue_rows))

    return wrap


def check_faults(faults: Iterable[Any], where: str = "faults") -> list[Fault]:
    """The faults as a list, after checking each is a `Fault` and names are unique."""
    out: list[Fault] = []
    seen: set[str] = set()
    for i, f in enumerate(faults):
        if not isinstance(f, Fault):
            raise TypeError(f"{where}[{i}] must be a healthcheck.faults.Fault, but got {f!r}")
        if f.name in seen:
            raise ValueError(f"{where}: fault name {f.name!r} is used twice; names identify result rows")
        seen.add(f.name)
        out.append(f)
    return out


def load_faults(path: str | Path) -> list[Fault]:
    """The ``FAULTS`` list of a Python file, executed as a fresh module."""
    path = Path(path)
    if not path.is_file() or path.suffix != ".py":
        raise ValueError(f"a fault file is an existing .py file defining FAULTS = [...], but got {str(path)!r}")
    module_name = f"_healthcheck_faults_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import fault file {str(path)!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    faults = getattr(module, "FAULTS", None)
    if not isinstance(faults, (list, tuple)):
        raise ValueError(f"{str(path)!r} must define FAULTS = [Fault(...), ...], but FAULTS is {faults!r}")
    return check_faults(faults, where=f"{path.name}: FAULTS")


def select_faults(faults: Sequence[Fault], names: Iterable[str]) -> list[Fault]:
    """The faults named, in the order given; an unknown name is an error naming the closest."""
    by_name = {f.name: f for f in faults}
    out = []
    for name in names:
        if name not in by_name:
            close = difflib.get_close_matches(name, list(by_name), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known faults: {', '.join(by_name)}"
            raise ValueError(f"unknown fault {name!r}{hint}")
        out.append(by_name[name])
    return out


# --------------------------------------------------------------------------------------
# Helpers: generic ways to break PyTorch objects.


def scale_lr(
    optimizer: torch.optim.Optimizer, factor: float, *, groups: Sequence[int] | None = None, scheduler: Any = None
) -> None:
    """Multiply the learning rate of some (default: all) param groups by ``factor``.

    A scheduler derives each step's rate from its ``base_lrs`` (and the group's
    ``initial_lr``), so both are scaled too; otherwise the next scheduler step would
    silently undo the fault.
    """
    if not math.isfinite(factor) or factor < 0:
        raise ValueError(f"factor must be finite and >= 0, but got {factor=}")
    chosen = range(len(optimizer.param_groups)) if groups is None else groups
    for i in chosen:
        group = optimizer.param_groups[i]
        group["lr"] = group["lr"] * factor
        if "initial_lr" in group:
            group["initial_lr"] = group["initial_lr"] * factor
        if scheduler is not None and hasattr(scheduler, "base_lrs"):
            scheduler.base_lrs[i] = scheduler.base_lrs[i] * factor


def replace_method(obj: Any, name: str, replacement: Callable[..., Any]) -> Callable[..., Any]:
    """Shadow ``obj.name`` with ``replacement`` on this instance only; returns the original."""
    original = getattr(obj, name)
    if not callable(original):
        raise TypeError(f"{type(obj).__name__}.{name} is not a method, but got {original!r}")
    setattr(obj, name, replacement)
    return original


def make_noop(obj: Any, name: str) -> Callable[..., Any]:
    """Make ``obj.name(...)`` do nothing and return None (e.g. ``optimizer.step``)."""
    return replace_method(obj, name, lambda *args, **kwargs: None)


def detach_input(module: torch.nn.Module) -> Any:
    """Cut the graph at ``module``'s input: it still learns, everything before it gets no
    gradient (the blend-weight-of-1 bug). Returns the hook handle."""

    def hook(mod: Any, args: tuple) -> tuple:
        return tuple(a.detach() if hasattr(a, "detach") else a for a in args)

    return module.register_forward_pre_hook(hook)


def clamp_output(module: torch.nn.Module, low: float, high: float) -> Any:
    """Clamp ``module``'s tensor output to [low, high]; outside it the gradient is 0.
    Returns the hook handle."""
    if not low < high:
        raise ValueError(f"low must be smaller than high, but got {low=} and {high=}")

    def hook(mod: Any, args: tuple, output: Any) -> Any:
        return output.clamp(low, high)

    return module.register_forward_hook(hook)


def poison_gradient(param: torch.Tensor, value: float, when: Callable[[], bool] = lambda: True) -> Any:
    """Fill ``param``'s gradient with ``value`` (NaN, inf) whenever ``when()`` is true, while
    the loss stays finite (an unstable backward, e.g. eigh at repeated eigenvalues).
    Returns the hook handle."""

    def hook(grad: Any) -> Any:
        return grad.new_full(grad.shape, value) if when() else grad

    return param.register_hook(hook)


__all__ = [
    "FAMILIES",
    "Fault",
    "check_faults",
    "clamp_output",
    "detach_input",
    "fault",
    "load_faults",
    "make_noop",
    "poison_gradient",
    "replace_method",
    "scale_lr",
    "select_faults",
]
