"""Where ``grad.dead_units`` draws the line between "the run still learns" and "it does not".

    python benchmarks/dead_units_grade.py

Trains a ReLU MLP with 32 hidden units (a regression and a 3-class cross-entropy; Adam,
lr 1e-2; 5 seeds) with 0, 20 or all 32 hidden units forced dead, and prints, at step 20
and step 50, how many times lower the mean of the last 10 losses is than the mean of the
first 5: the factor `DeadUnits` grades by. A run with every unit dead must stay below the
``improvement`` threshold, one that keeps a third of its units must get above it.
"""

from __future__ import annotations

import torch
from torch import nn

HIDDEN, BATCH, SEEDS = 32, 32, 5


def loss_factor(kind: str, dead: int, seed: int, steps: int) -> float:
    torch.manual_seed(seed)
    n_in, n_out = (6, 1) if kind == "regression" else (10, 3)
    X = torch.randn(20 * BATCH, n_in)
    if kind == "regression":
        Y = X @ torch.randn(n_in, 1) + 0.1 * torch.randn(len(X), 1)
    else:
        Y = (X[:, :3].sum(1) > 0).long() + (X[:, 3] > 1).long()
    hidden, out = nn.Linear(n_in, HIDDEN), nn.Linear(HIDDEN, n_out)
    shift = torch.zeros(HIDDEN)
    shift[:dead] = 100.0  # these units never activate: their rows get no gradient
    opt = torch.optim.Adam([*hidden.parameters(), *out.parameters()], lr=1e-2)
    losses = []
    for i in range(steps):
        x, y = X[(i % 20) * BATCH:(i % 20 + 1) * BATCH], Y[(i % 20) * BATCH:(i % 20 + 1) * BATCH]
        pred = out(torch.relu(hidden(x) - shift))
        loss = (pred - y).pow(2).mean() if kind == "regression" else nn.functional.cross_entropy(pred, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return (sum(losses[:5]) / 5) / (sum(losses[-10:]) / 10)


def main() -> None:
    print("steps  task            dead  loss factor per seed")
    for steps in (20, 50):
        for kind in ("regression", "classification"):
            for dead in (0, 20, HIDDEN):
                factors = " ".join(f"{loss_factor(kind, dead, s, steps):6.3g}" for s in range(SEEDS))
                print(f"{steps:5d}  {kind:14s}  {dead:4d}  {factors}")


if __name__ == "__main__":
    main()
