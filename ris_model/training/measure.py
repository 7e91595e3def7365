"""Cheap per-module norms for every step: fused kernels, results read in one host sync.

The trainer reports, per top-level module, the gradient norm (before clipping), the
parameter norm and the norm of the change the optimizer step made. These are the
signals behind docs/failure-catalogue.md rows 2, 3, 5, 9, 12 and 14: a module whose update norm is 0 has
stopped learning whatever the loss says.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn


class ModuleNormMeter:
    """Groups a model's trainable parameters by top-level module and measures them."""

    def __init__(self, model: nn.Module) -> None:
        groups: OrderedDict[str, list[tuple[str, nn.Parameter]]] = OrderedDict()
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            name = name.removeprefix("module.")  # DDP wrapper
            groups.setdefault(name.split(".")[0], []).append((name, p))
        self.names = list(groups)
        self.params = [p for ps in groups.values() for _, p in ps]
        self.param_names = tuple(n for ps in groups.values() for n, _ in ps)  # `params` order
        sizes = [len(ps) for ps in groups.values()]
        self._group_of = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        self._before: list[torch.Tensor] | None = None
        # (P,) float32 per-parameter gradient norms of the last `grad_norms` call, for a
        # reader that judges single parameters without reducing the gradients again
        self.last_grad_norms: torch.Tensor | None = None

    def _per_module(self, per_param: Sequence[torch.Tensor]) -> torch.Tensor:
        return self._sum_modules(torch.stack(list(per_param)).float())

    def _sum_modules(self, per_param: torch.Tensor) -> torch.Tensor:
        sq = per_param.pow(2)  # (P,)
        out = torch.zeros(len(self.names), device=sq.device, dtype=sq.dtype)
        return out.index_add_(0, self._group_of.to(sq.device), sq).sqrt()  # (modules,)

    def grad_norms(self) -> torch.Tensor:
        """(modules,) L2 norms of .grad; a parameter without a grad contributes 0."""
        grads = [p.grad if p.grad is not None else torch.zeros((), device=p.device) for p in self.params]
        self.last_grad_norms = torch.stack(torch._foreach_norm(grads)).float()  # (P,)
        return self._sum_modules(self.last_grad_norms)

    def param_norms(self) -> torch.Tensor:
        return self._per_module(torch._foreach_norm([p.detach() for p in self.params]))

    def snapshot(self) -> None:
        """Remember the parameters before the optimizer step (one fused copy)."""
        if self._before is None:
            self._before = [torch.empty_like(p, memory_format=torch.preserve_format) for p in self.params]
        torch._foreach_copy_(self._before, [p.detach() for p in self.params])

    def update_norms(self) -> torch.Tensor:
        """(modules,) ‖θ_after − θ_before‖ since the last snapshot."""
        assert self._before is not None, "snapshot() must run before the optimizer step"
        diffs = torch._foreach_sub([p.detach() for p in self.params], self._before)
        return self._per_module(torch._foreach_norm(diffs))

    def as_dict(self, values: list[float]) -> dict[str, float]:
        return dict(zip(self.names, values))
