"""Exact signals a training process can give about itself, beyond norms.

Norms say how big things are; some faults leave every norm ordinary and break a fact
instead. This module measures such facts, each at a known cost:

* `GradClearWatch`: a parameter's gradient was not cleared between two optimizer steps
  (``zero_grad`` forgotten, or called on the wrong module). An optimizer step hook notes
  each gradient tensor and its version counter after every step; a tensor hook on each
  parameter looks at ``.grad`` when the next backward is about to add to it. A gradient
  that is the same tensor at the same version was neither set to None nor zeroed in
  place nor replaced: the new gradient is about to be added to the old one. Gradient
  accumulation is untouched (several backwards between two steps are not looked at), so
  it needs no declaring, and any loop style that calls ``optimizer.step()`` is covered.
* `term_reach`: the gradient of each loss term with respect to the model's output, one
  small autograd call that stops at the output (it does not go through the model), so a
  term whose prediction was detached is seen as having no reach.
* `pairing_gap`: the loss of the model's output against its own targets and against the
  targets shuffled within the batch; no gap means the model has learnt nothing that ties
  an input to its target.

torch is imported inside the functions that need it.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .live import per_tensor_norms, written

if TYPE_CHECKING:  # pragma: no cover
    import torch


def _unwrapped(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside the wrappers trainers hand out (accelerate's
    AcceleratedOptimizer, Lightning's LightningOptimizer): the step hook must sit on the
    object whose ``step`` really runs."""
    import torch

    for _ in range(8):  # wrappers subclass Optimizer without its state: look inside first
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            break
        optimizer = inner
    return optimizer  # duck-typed: whatever offers register_step_post_hook


class WeightWriteWatch:
    """Which parameters were written between an optimizer step and the end of the next
    step's backward by something other than the optimizer.

    `settle` after the optimizer step keeps each parameter's norm; `take` when the next
    step's gradients are complete reads them again and returns (and forgets) the names
    whose norm changed. Each costs one fused norm reduction and one host read. For a loop
    whose own per-step measurement cannot carry the comparison (`TrainingHealth` folds it
    into the norms it reads anyway).
    """

    def __init__(self, named_params: Sequence[tuple[str, torch.nn.Parameter]]) -> None:
        self.names = tuple(n for n, _ in named_params)
        self._params = [p for _, p in named_params]
        self._settled: list[float] | None = None

    def settle(self) -> None:
        self._settled = per_tensor_norms(self._params)

    def take(self) -> tuple[str, ...]:
        """Names of the parameters written since `settle`; () before the first settle."""
        if self._settled is None:
            return ()
        settled, self._settled = self._settled, None
        return tuple(self.names[i] for i in written(settled, per_tensor_norms(self._params)))


class GradClearWatch:
    """Which parameters' gradients were carried over from one optimizer step into the next.

    Costs one Python call per parameter at each optimizer step and at each backward, and
    no tensor work. `take` returns (and forgets) the names found since it was last called.
    `remove` takes the hooks off.
    """

    def __init__(self, named_params: Sequence[tuple[str, torch.nn.Parameter]],
                 optimizer: torch.optim.Optimizer) -> None:
        self.names = tuple(n for n, _ in named_params)
        self._params = [weakref.ref(p) for _, p in named_params]
        self._after_step: list[tuple[Any, int] | None] = [None] * len(self._params)
        self._found: list[int] = []
        self._handles = [p.register_hook(self._hook(i)) for i, (_, p) in enumerate(named_params)]
        self._handles.append(_unwrapped(optimizer).register_step_post_hook(self._stepped))

    def _hook(self, i: int) -> Callable[[Any], None]:
        def before_accumulate(grad: Any) -> None:
            seen = self._after_step[i]
            if seen is None:
                return None
            self._after_step[i] = None  # one look per parameter per step
            param = self._params[i]()
            old = None if param is None else param.grad
            if old is not None and old is seen[0]() and old._version == seen[1]:
                self._found.append(i)
            return None
        before_accumulate.__torch_unserializable__ = True  # type: ignore[attr-defined]
        return before_accumulate

    def _stepped(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        marks = self._after_step
        for i, ref in enumerate(self._params):
            param = ref()
            grad = None if param is None else param.grad
            marks[i] = None if grad is None else (weakref.ref(grad), grad._version)

    def take(self) -> tuple[str, ...]:
        """Names of the parameters whose gradient was not cleared, found since the last call."""
        if not self._found:
            return ()
        found, self._found = self._found, []
        return tuple(self.names[i] for i in sorted(set(found)))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _outputs(output: Any) -> list[torch.Tensor]:
    """The tensors of a model's output (a tensor, or a tuple/list/dict of them) that
    carry a graph."""
    if isinstance(output, Mapping):
        items = list(output.values())
    elif isinstance(output, (tuple, list)):
        items = list(output)
    else:
        items = [output]
    return [t for t in items if hasattr(t, "requires_grad") and t.requires_grad]


def term_reach(output: Any, terms: Mapping[str, Any], weights: Mapping[str, float] | None = None
               ) -> dict[str, tuple[float, float]]:
    """{term: (|term|, ‖∂term/∂output‖)} for each term with a positive (or undeclared)
    weight; the gradient norm is 0 where the term does not depend on the output. The
    graph is kept (``retain_graph``), so the loop's ``backward`` still works. One host
    sync for all terms."""
    import torch

    outs = _outputs(output)
    chosen = {k: v for k, v in terms.items()
              if hasattr(v, "detach") and ((weights or {}).get(k) is None or float((weights or {})[k]) > 0)}
    if not outs or not chosen:
        return {}
    values, norms = [], []
    for term in chosen.values():
        t = term.reshape(()) if term.numel() == 1 else term.sum()
        values.append(t.detach().float())
        if not t.requires_grad:
            norms.append(torch.zeros((), device=t.device))
            continue
        grads = torch.autograd.grad(t, outs, retain_graph=True, allow_unused=True)
        parts = [g.detach().float().norm() for g in grads if g is not None]
        norms.append(torch.stack(parts).norm() if parts else torch.zeros((), device=t.device))
    dev = values[0].device
    read = torch.stack([v.to(dev) for v in values] + [n.to(dev) for n in norms]).tolist()
    n = len(chosen)
    return {k: (abs(read[i]), read[n + i]) for i, k in enumerate(chosen)}


def pairing_gap(output: Any, targets: Any, loss_fn: Callable[[Any, Any], Any],
                generator: torch.Generator | None = None) -> tuple[float, float] | None:
    """(loss with the true pairing, loss with the targets shuffled within the batch) of
    an output already computed, under no_grad: no extra forward pass. None for a batch
    of fewer than two samples."""
    import torch

    first = targets[0] if isinstance(targets, (tuple, list)) else targets
    n = int(first.shape[0])
    if n < 2:
        return None
    perm = torch.randperm(n, generator=generator)
    if torch.equal(perm, torch.arange(n)):
        perm = torch.roll(perm, 1)
    perm = perm.to(first.device)
    shuffled = (type(targets)(t[perm] for t in targets) if isinstance(targets, (tuple, list))
                else targets[perm])
    with torch.no_grad():
        true, wrong = loss_fn(output, targets), loss_fn(output, shuffled)
        read = torch.stack([torch.as_tensor(true).float().reshape(()),
                            torch.as_tensor(wrong).float().reshape(()).to(torch.as_tensor(true).device)]).tolist()
    if not all(math.isfinite(v) for v in read):
        return None
    return read[0], read[1]
