"""Health events: what a detector found, how bad it is, and the stable code that names it.

Every finding is a `HealthEvent` carrying a code from `CODES`. Codes are the public
vocabulary of the harness: a user silences or re-grades a finding by its code, docs/events.md
documents each one, and health.jsonl stores them, so a code, once published, never changes
its meaning. The registry holds, per code, its default severity, what it means and the
usual fix, so the message a user sees and the table in the docs come from one place.
"""

from __future__ import annotations

import enum
import math
import os
import time as _time
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, Iterator, Mapping

from ._jsonl import AppendWriter, dumps, read_jsonl

SCHEMA = 1  # version of the health.jsonl line format (docs/run-dir.md)


class Severity(enum.IntEnum):
    """How bad a finding is. Ordered, so ``severity >= Severity.ERROR`` reads naturally."""

    INFO = 10  # worth recording, not worth interrupting anyone
    WARNING = 20  # probably wrong; training can go on, a person should look
    ERROR = 30  # training is not doing what it should; wasted compute from here on
    CRITICAL = 40  # the next optimizer step would damage the model (NaN, primary weight 0)

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: "str | Severity") -> "Severity":
        """``"warning"``, ``"WARNING"`` or ``Severity.WARNING`` → ``Severity.WARNING``."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            member = cls.__members__.get(value.strip().upper())
            if member is not None:
                return member
        raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, but got {value!r}")


SEVERITIES = tuple(str(s) for s in Severity)


@dataclass(frozen=True)
class CodeInfo:
    """What the registry knows about one event code."""

    severity: Severity  # default severity; a policy may re-grade it
    meaning: str  # one sentence: what was observed
    fix: str  # one sentence: what usually causes it and what to change
    repeats: bool = False  # every occurrence is news of its own: never folded into a count


_CODES: dict[str, CodeInfo] = {}


def register_code(code: str, severity: "str | Severity", meaning: str, fix: str, *,
                  repeats: bool = False) -> None:
    """Add a code for a user-written detector, so policies can name it.

    A code is ``family.name`` in lower case; registering an existing code with different
    text is an error (published codes don't change meaning).
    """
    if not isinstance(code, str) or code.count(".") < 1 or code != code.strip().lower() or " " in code:
        raise ValueError(f"an event code is 'family.name' in lower case, but got {code=}")
    if not meaning or not fix:
        raise ValueError(f"code {code!r} needs both a meaning and a fix text")
    info = CodeInfo(Severity.parse(severity), meaning, fix, repeats)
    old = _CODES.get(code)
    if old is not None and old != info:
        raise ValueError(f"code {code!r} is already registered with a different meaning")
    _CODES[code] = info


def _builtin(code: str, severity: str, meaning: str, fix: str, *, repeats: bool = False) -> None:
    register_code(code, severity, meaning, fix, repeats=repeats)


# -- loss -------------------------------------------------------------------------------
_builtin("loss.nonfinite", "critical",
         "The total loss or one of its terms is NaN or infinite.",
         "Find the named term's inputs (log of 0, division by a zero norm, overflow); lower the "
         "learning rate if the loss grew first; stop before the optimizer step spreads NaN.")
_builtin("loss.zero", "error",
         "The back-propagated total is zero (or below the threshold) while some weight is > 0.",
         "A weight that multiplies the main term is 0, a term is detached or never added: print "
         "each term and its weight at step 0.")
_builtin("loss.constant", "warning",
         "The training loss has not changed (relative 1e-7) for a window of steps.",
         "The loss no longer depends on the parameters or the data: check that steps are "
         "applied, the learning rate is > 0 and the batch actually changes.")
_builtin("loss.dead_term", "warning",
         "A loss term with a positive weight is exactly 0 step after step.",
         "The term is computed on an empty selection, clamped, or never wired to the model "
         "output; test it on a batch where it must be > 0.")
_builtin("loss.primary_share", "warning",
         "The primary term's weighted share of the total is below the threshold.",
         "Auxiliary terms dominate the learning signal: lower their weights or raise the primary "
         "weight; check the primary weight was passed where the loss is built.")
_builtin("loss.diverging", "error",
         "The smoothed training loss rose far above its best value so far.",
         "Learning rate too high for this stage, or unstable numerics: lower the learning rate, "
         "add warm-up or gradient clipping.")
_builtin("loss.chance_level", "warning",
         "A classification loss sits at its chance level ln(K) epoch after epoch.",
         "The head learns nothing from the features: check labels line up with inputs, that the "
         "backbone is trainable, and that the learning rate is not tiny.")
# -- loss weights -----------------------------------------------------------------------
_builtin("weights.primary_zero", "critical",
         "The primary loss term's effective weight is 0, negative, non-finite or missing.",
         "The weight was not passed where the loss is built, or a schedule/HPO override set it "
         "to 0: set it explicitly and check its recorded source.")
_builtin("weights.changed", "info",
         "A loss weight changed during the run (old and new value, step and source recorded).",
         "Expected for curricula and schedules; unexpected changes make trials incomparable. "
         "Silence this code for smooth per-step schedules.", repeats=True)
_builtin("weights.unplanned_change", "error",
         "A loss weight changed value between steps while its recorded source did not: no "
         "configured source owns the change.",
         "Code set the weight directly (a curriculum in the loop, a callback, a stale override): "
         "make the change through the run's weight plan or schedule so it is recorded with its "
         "source, or remove it; trials with different objectives are not comparable.")
# -- gradients --------------------------------------------------------------------------
_builtin("grad.nonfinite", "critical",
         "A gradient is NaN or infinite before the optimizer step (module named).",
         "Find the backward of the named module: eigh/SVD with repeated eigenvalues, sqrt or "
         "log at 0, division by a zero norm; add an epsilon or a safe backward.")
_builtin("grad.none", "error",
         "A trainable parameter received no gradient (.grad is None) for N steps.",
         "The parameter is not on the path from the loss: a detach(), a blend weight of 1, a "
         "branch not used in forward; or it should have requires_grad=False.")
_builtin("grad.zero", "error",
         "A parameter's gradient is exactly 0 for N steps.",
         "Gradient blocked: a clamp or a hard threshold saturated, dead ReLUs, a zero loss "
         "weight, or a mask that removes every element.")
_builtin("grad.vanishing", "warning",
         "Gradient norms of a module are tiny, or the first module's are tiny next to the last's.",
         "Add normalisation or residual paths, change saturating activations, check init scale.")
_builtin("grad.exploding", "warning",
         "A module's gradient norm jumped far above its running level, or the first module's "
         "gradient dwarfs the last's.",
         "Lower the learning rate, clip gradients, check for a badly scaled input or loss term.")
_builtin("grad.dead_units", "error",
         "Half or more of a layer's output units got an exactly-zero gradient, step after step: "
         "those units learn nothing (module named).",
         "Dead ReLUs, a clamp or hard threshold on the layer's output, zero initialisation, or "
         "pre-activations shifted far from 0: check the init and what follows that layer.")
# -- parameters -------------------------------------------------------------------------
_builtin("param.not_in_optimizer", "error",
         "A trainable parameter is not in any optimizer parameter group.",
         "Build the optimizer after every submodule exists, and from model.parameters() rather "
         "than a hand-made subset.")
_builtin("param.frozen", "error",
         "A module's parameters did not change over N applied steps (update norm exactly 0).",
         "Learning rate 0 for its group, a zero or blocked gradient, or the module is excluded "
         "from the optimizer.")
_builtin("param.update_ratio", "warning",
         "A module's update-to-weight ratio ‖Δθ‖/‖θ‖ stayed outside the plausible range.",
         "Around 1e-3 per step is typical: far below means the learning rate is too small for "
         "this module, far above means it is too large.")
_builtin("param.update_blocked", "error",
         "A module's update is below 1e-6 of its weights although its learning rate and its "
         "gradient are not small.",
         "Something between the gradient and the step shrinks it: a gradient-clip threshold near "
         "0, a huge optimizer eps, gradients rescaled before the step, or a step that ignores .grad.")
_builtin("optim.weight_decay", "error",
         "A param group's learning rate x weight decay is so large that every step erases a "
         "large share of its weights.",
         "Typical lr x weight decay is 1e-8..1e-4: check the value's units (decoupled AdamW "
         "decay is multiplied by the lr) and where it was set.")
# -- schedule and steps -----------------------------------------------------------------
_builtin("lr.zero", "error",
         "A parameter group's learning rate is exactly 0 for consecutive steps.",
         "A warm-up or schedule that starts at, or decays to, 0; a scheduler stepped before "
         "the optimizer; a group created with lr=0.")
_builtin("lr.tiny", "warning",
         "A parameter group's learning rate is positive but implausibly small.",
         "A warm-up start factor or decay floor applied to an already small base rate; check "
         "the schedule's first values.")
_builtin("lr.invalid", "critical",
         "A parameter group's learning rate is negative or non-finite.",
         "A schedule formula error; an optimizer step with it moves the weights the wrong way "
         "or to NaN.")
_builtin("steps.skipped", "warning",
         "Fewer optimizer steps were applied than batches seen over a window.",
         "A gate that vetoes steps, AMP overflows, or an accumulation setting the detector "
         "does not know of.")
_builtin("amp.overflow", "warning",
         "The AMP gradient scaler found inf/NaN gradients in many recent steps.",
         "Occasional overflow is normal; frequent overflow means fp16 cannot hold the "
         "gradients: use bf16, scale the loss, or find the overflowing op.")
_builtin("amp.scale_collapse", "error",
         "The AMP gradient scaler's scale fell below its floor.",
         "Gradients are non-finite even unscaled: the scaler keeps halving. Look for a real "
         "NaN source; fp16 cannot represent these values.")
# -- validation and outputs -------------------------------------------------------------
_builtin("val.constant", "error",
         "The validation loss is identical (relative 1e-7) across consecutive evaluations.",
         "The model does not change between evaluations: steps are not applied, or evaluation "
         "uses a stale copy of the weights.")
_builtin("val.plateau", "warning",
         "The validation loss has not improved for many evaluations.",
         "Expected at convergence; early in training it points at a loss that is not 0 at the "
         "optimum, a too-small learning rate, or a capacity problem.")
_builtin("val.train_gap", "error",
         "The validation loss is many times the training loss of the same epoch, evaluation "
         "after evaluation.",
         "The splits disagree: broken targets or inputs in one of them (constant, shuffled, "
         "differently normalised), or a model memorising a tiny training set; compare samples "
         "of both.")
_builtin("output.collapsed", "warning",
         "Predictions collapsed onto one class (share of the most frequent prediction).",
         "The head predicts the majority class only: check class balance, the loss weighting "
         "and whether the features carry information.")
_builtin("output.saturated", "warning",
         "A large share of an output sits at a clamp bound, where its gradient is 0.",
         "Widen the clamp, use a smooth bound (sigmoid/softplus scaling) or rescale the target.")
_builtin("value.out_of_range", "error",
         "A loss, loss term or reported metric left the range it was declared to stay in.",
         "A scale mismatch between the compared quantities (e.g. one covariance not "
         "trace-normalised) or a unit error; print both sides of the comparison at step 0.")
_builtin("watch.bad_line", "warning",
         "A line of a run's metrics or health log is not a JSON object (or not a valid row); "
         "it was skipped.",
         "Something other than the training loop wrote to the file, or two writers interleaved "
         "their lines: give each process its own run dir.", repeats=True)
# -- preflight checks (healthcheck.preflight, run by the gate before training) ---------
# A failed check becomes an event when the gate's verdict is pushed through a monitor
# (the detection benchmark does this to score the whole harness); the fix is the check's hint.
_builtin("preflight.config", "error",
         "The config does not resolve or validate (bad value, unknown key, a loss-weight plan "
         "whose primary weight reaches 0).",
         "Fix the value the message names; `ris-model config --keys` lists every key.")
_builtin("preflight.loss_self_test", "error",
         "A loss term is not 0 at a perfect prediction, or a normalised error is not 1 at a "
         "zero prediction.",
         "An epsilon added to one side only, a similarity written as an error, or matrices "
         "compared on different scales.")
_builtin("preflight.loss_weights", "error",
         "The primary term has weight 0, a weight is negative or non-finite, or the total is "
         "not the weighted sum of the terms.",
         "Look at every place that sets a loss weight (defaults, config, HPO, schedule) and at "
         "how the total is summed.")
_builtin("preflight.loss_at_init", "error",
         "The untrained model's loss or a term is non-finite, 0, or outside its expected range.",
         "Compare the scale of prediction and target (trace or norm of each); check the loss "
         "is computed from the model's output.")
_builtin("preflight.optimizer_coverage", "error",
         "A trainable parameter is in no optimizer param group.",
         "Build the optimizer after every module exists, from model.parameters().")
_builtin("preflight.lr_at_step0", "error",
         "A param group's first learning rate is 0, too small to move its weights, or the "
         "scheduler drives another optimizer.",
         "Start the warm-up at a fraction of the peak lr, not at 0; build the scheduler on the "
         "optimizer that is stepped.")
_builtin("preflight.grad_reach", "error",
         "One backward pass leaves a trainable parameter without a gradient, or with a "
         "non-finite or exactly-zero one.",
         "A detach(), a blend weight cutting the path, a saturated clamp, an unused module, or "
         "an unstable backward (eigh/SVD at repeated eigenvalues).")
_builtin("preflight.term_grad_reach", "error",
         "A loss term with weight > 0 does not send a finite gradient to the parameters it "
         "depends on.",
         "A detached prediction or a path cut inside that term.")
_builtin("preflight.micro_overfit", "error",
         "A few optimizer steps on one batch did not halve its loss.",
         "A model that cannot fit one batch cannot fit a dataset: check the learning rate, that "
         "the optimizer steps the model's parameters, and the labels of that batch.")
# -- the monitor itself -----------------------------------------------------------------
_builtin("monitor.detector_failed", "warning",
         "A detector raised an exception and was switched off for the rest of the run.",
         "A bug in that detector or an unexpected record shape; the traceback is in the detail.")
_builtin("monitor.summary", "info",
         "Counts of every event of the run, written when the monitor closes.",
         "Nothing to fix: the closing summary.", repeats=True)

CODES: Mapping[str, CodeInfo] = MappingProxyType(_CODES)


def codes_table_markdown() -> str:
    """The table of event codes in docs/events.md, generated from the registry."""
    rows = ["| code | default severity | meaning | usual fix |", "| --- | --- | --- | --- |"]
    for code in sorted(CODES):
        info = CODES[code]
        rows.append(f"| `{code}` | {info.severity} | {_cell(info.meaning)} | {_cell(info.fix)} |")
    return "\n".join(rows) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# ---------------------------------------------------------------------------------------
def _number(name: str, value: Any) -> float | int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"evidence values must be numbers, but got {name}={value!r}") from None


@dataclass(frozen=True)
class HealthEvent:
    """One finding. Immutable: the monitor makes copies to set ``count`` or re-grade.

    ``evidence`` holds the numbers that made the detector fire, so a reader can judge the
    finding without the run; ``where`` names the module, parameter, term or weight.
    """

    code: str
    severity: Severity
    step: int | None = None
    epoch: int | None = None
    time: float = field(default_factory=_time.time)
    title: str = ""
    detail: str = ""
    evidence: Mapping[str, float] = field(default_factory=dict)
    where: str | None = None
    hint: str = ""
    rank: int = 0
    count: int = 1  # occurrences folded into this event (the monitor de-duplicates)
    source: str = "monitor"  # "monitor" in-process, "watch" when judged from metrics.jsonl

    def __post_init__(self) -> None:
        object.__setattr__(self, "severity", Severity.parse(self.severity))
        object.__setattr__(self, "evidence",
                           {str(k): _number(str(k), v) for k, v in self.evidence.items()})
        if self.count < 1:
            raise ValueError(f"count must be >= 1, but got {self.count=}")

    def with_(self, **changes: Any) -> "HealthEvent":
        """A copy with some fields changed (``event.with_(count=3)``)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = {"schema": SCHEMA}
        out.update(asdict(self))
        out["severity"] = str(self.severity)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "HealthEvent":
        """Inverse of `to_dict`. Unknown keys (a newer schema) are ignored, not fatal."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        if "code" not in kwargs or "severity" not in kwargs:
            raise ValueError(f"a health event needs 'code' and 'severity', but got keys {sorted(data)}")
        kwargs["evidence"] = dict(kwargs.get("evidence") or {})
        if kwargs.get("time") is None:
            kwargs["time"] = math.nan
        return cls(**kwargs)

    def to_json(self) -> str:
        return dumps(self.to_dict())

    def line(self) -> str:
        """One human line: ``ERROR grad.none @head.0 step 12: title — hint``."""
        where = f" @{self.where}" if self.where else ""
        when = f" step {self.step}" if self.step is not None else (
            f" epoch {self.epoch}" if self.epoch is not None else "")
        times = f" (x{self.count})" if self.count > 1 else ""
        hint = f" — {self.hint}" if self.hint else ""
        return f"{str(self.severity).upper()} {self.code}{where}{when}{times}: {self.title}{hint}"


# ---------------------------------------------------------------------------------------
class HealthLogWriter:
    """Appends events to health.jsonl, one per line, flushed and fsynced per event.

    fsync per event because events are rare and are exactly what a post-mortem needs after
    the process dies (OOM, preemption); metrics lines are not fsynced.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self._out = AppendWriter(path, fsync=True)
        self.path = self._out.path

    def write(self, event: HealthEvent) -> None:
        self._out.write(event.to_dict())

    def close(self) -> None:
        self._out.close()

    def __enter__(self) -> "HealthLogWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_events(path: str | os.PathLike) -> list[HealthEvent]:
    """All events in a health.jsonl, skipping a torn last line and garbage lines.

    Garbage (not JSON, or not an event) is reported once with a warning and skipped.
    """
    chunk = read_jsonl(path)
    events, bad = [], list(chunk.garbage)
    for obj in chunk.objects:
        try:
            events.append(HealthEvent.from_dict(obj))
        except (TypeError, ValueError):
            bad.append(-1)
    if bad:
        warnings.warn(f"{os.fspath(path)}: skipped {len(bad)} line(s) that are not health events",
                      RuntimeWarning, stacklevel=2)
    return events


def iter_codes(pattern: str) -> Iterator[str]:
    """Registered codes matching an exact code or a glob such as ``grad.*``."""
    from fnmatch import fnmatchcase
    for code in CODES:
        if fnmatchcase(code, pattern):
            yield code
