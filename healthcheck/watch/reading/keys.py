"""Mapping other loggers' column names onto the run-dir metrics schema.

A CSV or TensorBoard log has no schema: the training loss may be `train_loss`,
`train_loss_step` or `train/loss`. `KeyMap` turns one flat row {name: number} into a
metrics line of docs/run-dir.md, so every detector reads one format. Names the user
gives win; otherwise the first known spelling present is used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Spellings seen in Lightning's CSVLogger / self.log(...) and in SummaryWriter scripts, most
# specific first: `train_loss_step` is the per-batch value when on_epoch=True is also logged.
LOSS_KEYS = ("train_loss_step", "train_loss", "train/loss", "loss/train", "Loss/train", "loss")
EPOCH_LOSS_KEYS = ("train_loss_epoch", "train/loss_epoch")
VAL_LOSS_KEYS = ("val_loss", "val/loss", "loss/val", "Loss/val", "valid_loss", "eval/loss",
                 "val_loss_epoch")
STEP_KEYS = ("step", "global_step", "trainer/global_step")
EPOCH_KEYS = ("epoch", "trainer/epoch")
LR_PREFIXES = ("lr-", "lr/", "train/lr", "learning_rate", "lr")
GRAD_TOTAL_KEYS = ("grad_2.0_norm_total", "grad_norm", "grad_norm/_total", "train/grad_norm")
GRAD_PREFIXES = ("grad_2.0_norm/", "grad_norm/")


def _first(candidates: Iterable[str], names: Mapping[str, object]) -> str | None:
    return next((c for c in candidates if c in names), None)


def _is_lr(name: str, lr_key: str | None) -> bool:
    if lr_key is not None:
        return name == lr_key or name.startswith(lr_key + "/")
    return any(name == p or name.startswith(p) for p in LR_PREFIXES)


@dataclass(frozen=True)
class KeyMap:
    """Which source names hold the loss, validation loss, learning rates, step and epoch.

    `lr` names one column, or a prefix shared by several (`lr-AdamW` also takes
    `lr-AdamW/pg1`, Lightning's LearningRateMonitor naming for further param groups).
    """

    loss: str | None = None
    val_loss: str | None = None
    lr: str | None = None
    step: str | None = None
    epoch: str | None = None

    def to_lines(self, row: Mapping[str, float], *, step: int, epoch: int | None,
                 time: float | None, lr: list[float] | None) -> list[dict]:
        """The metrics lines one flat row stands for (a row can hold a step and an eval)."""
        base = {"schema": 1, "step": step, "epoch": epoch, "time": time, "rank": 0}
        lines = []
        loss_key = self.loss or _first(LOSS_KEYS, row)
        if loss_key is not None and _present(row.get(loss_key)):
            grad = self._grad_norms(row)
            line = {**base, "kind": "step", "loss": row[loss_key], "terms": {}, "weights": {},
                    "primary": None, "lr": lr or []}
            if grad:
                line["grad_norm"] = grad
            extra = {k: v for k, v in row.items()
                     if k != loss_key and _present(v) and self._is_extra(k)}
            if extra:
                line["metrics"] = extra
            lines.append(line)
        epoch_key = _first(EPOCH_LOSS_KEYS, row) if self.loss is None else None
        if epoch_key is not None and _present(row.get(epoch_key)):
            lines.append({**base, "kind": "epoch", "loss": row[epoch_key], "terms": {},
                          "weights": {}, "lr": lr or []})
        val_key = self.val_loss or _first(VAL_LOSS_KEYS, row)
        if val_key is not None and _present(row.get(val_key)):
            lines.append({**base, "kind": "eval", "loss": row[val_key], "terms": {},
                          "metrics": {k: v for k, v in row.items()
                                      if k != val_key and k.startswith(("val", "eval"))
                                      and _present(v)}})
        return lines

    def step_key(self, names: Mapping[str, object]) -> str | None:
        return self.step or _first(STEP_KEYS, names)

    def epoch_key(self, names: Mapping[str, object]) -> str | None:
        return self.epoch or _first(EPOCH_KEYS, names)

    def lrs(self, row: Mapping[str, float]) -> list[float]:
        """Learning rates in column order, one per param group."""
        return [v for k, v in row.items() if _is_lr(k, self.lr) and _present(v)]

    def missing(self, names: Iterable[str]) -> list[str]:
        """User-given names that the source does not have (a typo must not pass silently)."""
        names = set(names)
        wanted = {"--loss-key": self.loss, "--val-loss-key": self.val_loss,
                  "--step-key": self.step}
        bad = [f"{opt}={key!r}" for opt, key in wanted.items() if key and key not in names]
        if self.lr and not any(_is_lr(n, self.lr) for n in names):
            bad.append(f"--lr-key={self.lr!r}")
        return bad

    def _grad_norms(self, row: Mapping[str, float]) -> dict[str, float]:
        out = {}
        total = _first(GRAD_TOTAL_KEYS, row)
        if total is not None and _present(row[total]):
            out["_total"] = row[total]
        for k, v in row.items():
            for p in GRAD_PREFIXES:
                if k.startswith(p) and k != total and _present(v):
                    out[k[len(p):]] = v
        return out

    def _is_extra(self, name: str) -> bool:
        known = (name in STEP_KEYS or name in EPOCH_KEYS or _is_lr(name, self.lr)
                 or name in GRAD_TOTAL_KEYS or name.startswith(GRAD_PREFIXES)
                 or name in (self.step, self.epoch) or name in LOSS_KEYS
                 or name in EPOCH_LOSS_KEYS)
        return not known and not name.startswith(("val", "eval"))


def _present(v: object) -> bool:
    """A cell that was logged: NaN is a logged value (and a finding); an empty cell is None."""
    return v is not None
