"""Checks before training: can this model, loss and optimizer learn at all?

Most failures in the failure catalogue (docs/failure-catalogue.md) are visible before the first
epoch: a loss weight that is 0, a loss that is not 0 at the target, a parameter that no
gradient reaches, a parameter the optimizer does not hold, a learning rate of 0 at step 0.
Each check here looks for one such signal on one batch and returns a `Check`: a verdict,
the numbers it measured, and a hint saying where to look.

The checks are model-agnostic. They read a *subject*: any object with these attributes
(`GateSubject` is a ready-made one; ``healthcheck.ris.gate_subject`` builds one for
``ris_model``)::

    model         torch.nn.Module, in the state training starts from
    optimizer     torch.optim.Optimizer that training will step
    batch()       one batch, the same every call
    loss(batch)   (total, terms {name: scalar tensor}, weights {name: float}), where total
                  is what training back-propagates and terms are unweighted
    self_test()   optional: {"<term>@target": value, "<term>@zero": value}: each term at a
                  perfect prediction (must be 0) and at a zero prediction (must be 1 for a
                  normalised error)
    lrs()         optional: the learning rate of every param group at step 0 (default:
                  read from the optimizer, after the scheduler was built)
    scheduler     optional: stepped once per optimizer step in the micro-overfit
    primary       optional: name of the term that carries the learning signal
    term_ranges   optional: {term: (low, high)} expected at initialisation
    term_reaches  optional: {term: [parameter-name prefixes it must reach]} ("" = all)
    grad_clip     optional: max global gradient norm used by training (0: none)
    allow_zero_primary  optional: a deliberate ablation with the primary weight at 0
    self_test_expect    optional: {key: value} for self-test keys with other expectations
    overfit_steps       optional: the micro-overfit's step budget (default 100)

A check never raises: an exception inside it is a failed check whose detail is the error,
because a loss that crashes on its first batch is exactly what a gate should report.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .codes import Code, declare
from .events import Severity

VERDICTS = ("passed", "failed", "skipped")

# Thresholds, each with the reason for its value.
SELF_TEST_TOL = 1e-6  # the self-test runs in float64; a correct term is 0 to ~1e-12 there
MAX_INIT_LOSS = 1e3  # an untrained, sensibly normalised loss is O(1); 1e3 means a scale bug
CONSISTENCY_RTOL = 1e-4  # total vs sum(w * term): float32 summation of a few terms
MIN_UPDATE_RATIO = 1e-6  # Adam moves a weight by ~lr per step; lr / rms(w) below 1e-6 is
#                          three orders below the ~1e-3 of a healthy step: nothing moves
OVERFIT_STEPS = 100  # one batch, at most this many steps
OVERFIT_RATIO = 0.5  # ...must bring the loss to at most half its initial value
_NAMES_SHOWN = 8  # parameters named in one detail line

# A failed check becomes an event when the gate's verdict is pushed through a monitor (the
# detection benchmark does this to score the whole harness); the fix is the check's hint.
# "config" is the gate's own first step: the config resolves and validates.
PREFLIGHT_CODES = declare(
    Code("preflight.config", Severity.ERROR,
         meaning="The config does not resolve or validate (bad value, unknown key, a "
                 "loss-weight plan whose primary weight reaches 0).",
         fix="Fix the value the message names; `ris-model config --keys` lists every key."),
    Code("preflight.grad_reach", Severity.ERROR,
         meaning="One backward pass leaves a trainable parameter without a gradient, or with "
                 "a non-finite or exactly-zero one.",
         fix="A detach(), a blend weight cutting the path, a saturated clamp, an unused "
             "module, or an unstable backward (eigh/SVD at repeated eigenvalues)."),
    Code("preflight.loss_at_init", Severity.ERROR,
         meaning="The untrained model's loss or a term is non-finite, 0, or outside its "
                 "expected range.",
         fix="Compare the scale of prediction and target (trace or norm of each); check the "
             "loss is computed from the model's output."),
    Code("preflight.loss_self_test", Severity.ERROR,
         meaning="A loss term is not 0 at a perfect prediction, or a normalised error is not "
                 "1 at a zero prediction.",
         fix="An epsilon added to one side only, a similarity written as an error, or "
             "matrices compared on different scales."),
    Code("preflight.loss_weights", Severity.ERROR,
         meaning="The primary term has weight 0, a weight is negative or non-finite, or the "
                 "total is not the weighted sum of the terms.",
         fix="Look at every place that sets a loss weight (defaults, config, HPO, schedule) "
             "and at how the total is summed."),
    Code("preflight.lr_at_step0", Severity.ERROR,
         meaning="A param group's first learning rate is 0, too small to move its weights, or "
                 "the scheduler drives another optimizer.",
         fix="Start the warm-up at a fraction of the peak lr, not at 0; build the scheduler "
             "on the optimizer that is stepped."),
    Code("preflight.micro_overfit", Severity.ERROR,
         meaning="A few optimizer steps on one batch did not halve its loss.",
         fix="A model that cannot fit one batch cannot fit a dataset: check the learning "
             "rate, that the optimizer steps the model's parameters, and the labels of that "
             "batch."),
    Code("preflight.optimizer_coverage", Severity.ERROR,
         meaning="A trainable parameter is in no optimizer param group.",
         fix="Build the optimizer after every module exists, from model.parameters()."),
    Code("preflight.term_grad_reach", Severity.ERROR,
         meaning="A loss term with weight > 0 does not send a finite gradient to the "
                 "parameters it depends on.",
         fix="A detached prediction or a path cut inside that term."),
)


@dataclass(frozen=True)
class Check:
    """The outcome of one check: what was measured and what to do about a failure."""

    name: str
    verdict: str  # "passed" | "failed" | "skipped"
    measured: Mapping[str, Any] = field(default_factory=dict)
    detail: str = ""  # one sentence: what was found
    hint: str = ""  # where to look when it failed
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, but got {self.verdict=}")

    @property
    def passed(self) -> bool:
        """Skipped checks do not fail a gate: they could not judge, and say why."""
        return self.verdict != "failed"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "verdict": self.verdict,
                "measured": _plain(self.measured), "detail": self.detail, "hint": self.hint,
                "seconds": round(self.seconds, 4)}


@dataclass(frozen=True)
class LossParts:
    """What a subject's ``loss(batch)`` returns: the back-propagated total and its parts."""

    total: Any  # scalar tensor
    terms: Mapping[str, Any]  # unweighted scalar tensors
    weights: Mapping[str, float]

    @classmethod
    def of(cls, value: Any) -> LossParts:
        if isinstance(value, LossParts):
            return value
        if isinstance(value, tuple) and len(value) == 3:
            return cls(*value)
        if all(hasattr(value, a) for a in ("total", "terms", "weights")):
            return cls(value.total, value.terms, value.weights)
        raise TypeError(f"loss(batch) must return (total, terms, weights), but got {type(value).__name__}")


@dataclass
class GateSubject:
    """A subject from plain parts, for any PyTorch model (see the module docstring)."""

    model: Any
    optimizer: Any
    batch: Callable[[], Any]
    loss: Callable[[Any], Any]
    self_test: Callable[[], Mapping[str, float]] | None = None
    lrs: Callable[[], Sequence[float]] | None = None
    scheduler: Any = None
    primary: str | None = None
    term_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    term_reaches: Mapping[str, Sequence[str]] = field(default_factory=dict)
    grad_clip: float = 0.0
    allow_zero_primary: bool = False
    self_test_expect: Mapping[str, float] = field(default_factory=dict)
    overfit_steps: int = OVERFIT_STEPS


# ------------------------------------------------------------------------- plumbing
def preflight_check(name: str) -> Callable[[Callable[..., Check]], Callable[..., Check]]:
    """Names a check, times it, and turns an exception inside it into a failed `Check`."""

    def wrap(fn: Callable[..., Check]) -> Callable[..., Check]:
        @functools.wraps(fn)
        def run(subject: Any) -> Check:
            start = time.perf_counter()
            try:
                check = fn(subject)
            except Exception as err:  # the subject crashing is a finding, not a gate bug
                check = Check(name, "failed", {}, f"the check raised {type(err).__name__}: {err}",
                              "run one training step by hand; the gate saw this error on its first batch")
            return Check(name, check.verdict, check.measured, check.detail, check.hint,
                         time.perf_counter() - start)

        run.check_name = name  # type: ignore[attr-defined]
        return run

    return wrap


def _result(name: str, problems: Sequence[str], measured: Mapping[str, Any], hint: str,
            ok: str) -> Check:
    if problems:
        return Check(name, "failed", measured, "; ".join(problems), hint)
    return Check(name, "passed", measured, ok, "")


def _names(names: Sequence[str], every: Sequence[str] = ()) -> str:
    """Parameter names for a message; a top-level module all of whose parameters are in
    ``names`` is written once, as ``encoder.* (all 12)``."""
    chosen, items, done = set(names), [], set()
    for name in names:
        module = name.split(".", 1)[0]
        members = [n for n in every if n.split(".", 1)[0] == module]
        if "." in name and len(members) > 1 and chosen.issuperset(members):
            if module not in done:
                items.append(f"{module}.* (all {len(members)})")
                done.add(module)
        else:
            items.append(name)
    more = len(items) - _NAMES_SHOWN
    return ", ".join(items[:_NAMES_SHOWN]) + (f" (+{more} more)" if more > 0 else "")


def _plain(value: Any) -> Any:
    """Numbers, strings, lists and dicts only: what gate.json and a table can show."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _trainable(model: Any) -> list[tuple[str, Any]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _loss_at_init(subject: Any) -> LossParts:
    return LossParts.of(subject.loss(subject.batch()))


def _floats(terms: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v.detach()) if hasattr(v, "detach") else float(v) for k, v in terms.items()}


# --------------------------------------------------------------------------- checks
@preflight_check("loss_self_test")
def check_loss_self_test(subject: Any) -> Check:
    """Every term is 0 at a perfect prediction, and a normalised error is 1 at a zero one."""
    name = "loss_self_test"
    fn = getattr(subject, "self_test", None)
    if fn is None:
        return Check(name, "skipped", {}, "the subject has no self_test()",
                     "give the subject a self_test() returning {'<term>@target': ..., '<term>@zero': ...}")
    values = {k: float(v) for k, v in fn().items()}
    expect = dict(getattr(subject, "self_test_expect", None) or {})
    problems = []
    for key, value in values.items():
        want = expect.get(key, 0.0 if key.endswith("@target") else 1.0 if key.endswith("@zero") else None)
        if want is None:
            continue
        if not math.isfinite(value) or abs(value - want) > SELF_TEST_TOL:
            problems.append(f"{key} = {value:.3g} (expected {want:g} ± {SELF_TEST_TOL:g})")
    if not values:
        problems.append("self_test() returned no values")
    return _result(name, problems, values,
                   "a term that is not 0 at a perfect prediction makes the loss plateau above 0 "
                   "(e.g. an epsilon added to one side only, or a similarity written as an error); a "
                   "normalised error that is not 1 at a zero prediction compares matrices on different scales",
                   f"{len(values)} values as expected")


@preflight_check("loss_weights")
def check_loss_weights(subject: Any) -> Check:
    """The primary term carries a weight > 0, and the total is the weighted sum of the terms."""
    name = "loss_weights"
    parts = _loss_at_init(subject)
    terms = _floats(parts.terms)
    weights = {k: float(v) for k, v in parts.weights.items()}
    total = float(parts.total.detach()) if hasattr(parts.total, "detach") else float(parts.total)
    primary = getattr(subject, "primary", None)
    problems = []
    bad = [f"{k}={w!r}" for k, w in weights.items() if not (math.isfinite(w) and w >= 0)]
    if bad:
        problems.append(f"weights must be finite and >= 0, but got {', '.join(bad)}")
    if set(terms) - set(weights):
        problems.append(f"term(s) without a weight: {', '.join(sorted(set(terms) - set(weights)))}")
    if set(weights) - set(terms):
        problems.append(f"weight(s) without a term: {', '.join(sorted(set(weights) - set(terms)))}")
    if weights and not any(w > 0 for w in weights.values()):
        problems.append("every loss weight is 0: the total carries no learning signal")
    if primary is not None:
        if primary not in terms:
            problems.append(f"the primary term {primary!r} is not among the loss terms ({', '.join(terms)})")
        elif not weights.get(primary, 0.0) > 0 and not getattr(subject, "allow_zero_primary", False):
            problems.append(f"the primary term {primary!r} has weight {weights.get(primary, 0.0)!r}: "
                            f"its signal (value {terms[primary]:.3g}) never reaches the gradient")
    weighted = sum(weights.get(k, 0.0) * v for k, v in terms.items())
    if not math.isclose(total, weighted, rel_tol=CONSISTENCY_RTOL, abs_tol=1e-6):
        problems.append(f"the back-propagated total {total:.4g} is not the weighted sum of the terms "
                        f"{weighted:.4g}: a term is missing from it or weighted differently than reported")
    measured: dict[str, Any] = {"total": total, "weighted_sum": weighted,
                                **{f"w_{k}": w for k, w in weights.items()}}
    if primary in terms and total:
        measured["primary_share"] = weights.get(primary, 0.0) * terms[primary] / total
    return _result(name, problems, measured,
                   "look at every place that sets a loss weight (constructor defaults, config, HPO, "
                   "schedules) and at how the total is summed; a primary weight of 0 was the seed "
                   "report's zero-loss bug",
                   f"primary {primary!r} weighted {weights.get(primary)!r}; total = sum of weighted terms"
                   if primary else "total = sum of weighted terms")


@preflight_check("loss_at_init")
def check_loss_at_init(subject: Any) -> Check:
    """The loss of the untrained model is finite, not 0, and inside its expected range."""
    name = "loss_at_init"
    parts = _loss_at_init(subject)
    terms = _floats(parts.terms)
    weights = {k: float(v) for k, v in parts.weights.items()}
    total = float(parts.total.detach()) if hasattr(parts.total, "detach") else float(parts.total)
    ranges = dict(getattr(subject, "term_ranges", None) or {})
    primary = getattr(subject, "primary", None)
    problems = []
    if not math.isfinite(total):
        problems.append(f"the total loss is {total} at initialisation")
    elif total <= 0:
        problems.append(f"the total loss is {total:.3g} at initialisation: there is nothing to learn from")
    elif total > MAX_INIT_LOSS:
        problems.append(f"the total loss is {total:.3g} > {MAX_INIT_LOSS:g} at initialisation: "
                        f"a scale or normalisation bug, not a hard problem")
    for term, value in terms.items():
        if not math.isfinite(value):
            problems.append(f"term {term!r} is {value}")
            continue
        if term in ranges:
            lo, hi = ranges[term]
            if not lo <= value <= hi:
                problems.append(f"term {term!r} = {value:.4g} is outside its expected range [{lo:g}, {hi:g}]")
        elif term == primary and value == 0:
            problems.append(f"the primary term {term!r} is exactly 0 for an untrained model")
    if ranges and set(terms) <= set(ranges) and math.isfinite(total):
        bound = sum(weights.get(t, 0.0) * ranges[t][1] for t in terms)
        if total > bound * (1 + CONSISTENCY_RTOL):
            problems.append(f"the total {total:.4g} exceeds sum(weight x upper bound) = {bound:.4g}")
    measured = {"total": total, **terms}
    return _result(name, problems, measured,
                   "compare the scale of prediction and target (trace / norm of each), and check that the "
                   "loss is computed from the model's output",
                   f"total {total:.4g}; every term in range")


@preflight_check("optimizer_coverage")
def check_optimizer_coverage(subject: Any) -> Check:
    """Every trainable parameter is held by the optimizer (catalogue row 13)."""
    name = "optimizer_coverage"
    held = {id(p) for g in subject.optimizer.param_groups for p in g["params"]}
    params = _trainable(subject.model)
    missing = [n for n, p in params if id(p) not in held]
    measured = {"trainable": len(params), "in_optimizer": len(params) - len(missing), "missing": len(missing),
                "groups": len(subject.optimizer.param_groups)}
    problems = [f"{len(missing)} trainable parameter(s) are not in the optimizer and will never change: "
                f"{_names(missing, [n for n, _ in params])}"] if missing else []
    return _result(name, problems, measured,
                   "build the optimizer after every module exists, from model.parameters() "
                   "(not from a list made earlier or a subset of modules)",
                   f"all {len(params)} trainable parameters are in the optimizer")


@preflight_check("lr_at_step0")
def check_lr_at_step0(subject: Any) -> Check:
    """The first optimizer step uses a learning rate > 0 in every group (catalogue row 2)."""
    name = "lr_at_step0"
    getter = getattr(subject, "lrs", None)
    groups = subject.optimizer.param_groups
    lrs = [float(x) for x in (getter() if getter is not None else [g["lr"] for g in groups])]
    adam = "adam" in type(subject.optimizer).__name__.lower()
    measured: dict[str, Any] = {f"lr_group{i}": lr for i, lr in enumerate(lrs)}
    problems = []
    for i, lr in enumerate(lrs):
        if not math.isfinite(lr) or lr <= 0:
            problems.append(f"group {i} starts with lr={lr!r}: its parameters do not move at step 0")
            continue
        peak = groups[i].get("initial_lr") if i < len(groups) else None
        if peak:
            measured[f"start_fraction_group{i}"] = lr / peak
        if adam and i < len(groups):
            rms = _rms([p for p in groups[i]["params"] if p.requires_grad])
            if rms > 0:
                ratio = lr / rms
                measured[f"update_ratio_group{i}"] = ratio
                if ratio < MIN_UPDATE_RATIO:
                    problems.append(f"group {i} starts with lr={lr:.3g}, {ratio:.2g} of its weights' rms "
                                    f"{rms:.3g}: an Adam step that small changes nothing")
    if not lrs:
        problems.append("the optimizer has no param groups")
    scheduler = getattr(subject, "scheduler", None)
    if scheduler is not None and getattr(scheduler, "optimizer", subject.optimizer) is not subject.optimizer:
        problems.append("the scheduler is attached to another optimizer than the one training steps, "
                        "so its schedule never reaches the parameters")
    return _result(name, problems, measured,
                   "a warm-up must start above 0 (a fraction of the peak lr, not 0); check every "
                   "param group's lr and the scheduler's factor at step 0, and build the scheduler "
                   "on the optimizer that is stepped",
                   "every group starts with lr > 0")


def _rms(params: Sequence[Any]) -> float:
    if not params:
        return 0.0
    import torch

    with torch.no_grad():
        sq = sum(float(p.detach().float().pow(2).sum()) for p in params)
        n = sum(p.numel() for p in params)
    return math.sqrt(sq / max(n, 1))


@preflight_check("grad_reach")
def check_grad_reach(subject: Any) -> Check:
    """One backward pass gives every trainable parameter a finite, non-zero gradient."""
    import torch

    name = "grad_reach"
    model = subject.model
    model.zero_grad(set_to_none=True)
    parts = _loss_at_init(subject)
    parts.total.backward()
    params = _trainable(model)
    none = [n for n, p in params if p.grad is None]
    with torch.no_grad():
        nonfinite = [n for n, p in params if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
        zero = [n for n, p in params if p.grad is not None and n not in nonfinite and not bool(p.grad.any())]
        total_norm = math.sqrt(sum(float(p.grad.float().pow(2).sum()) for n, p in params
                                   if p.grad is not None and n not in nonfinite))
    model.zero_grad(set_to_none=True)
    measured = {"parameters": len(params), "no_grad": len(none), "nonfinite": len(nonfinite),
                "zero": len(zero), "grad_norm": total_norm}
    every = [n for n, _ in params]
    problems = []
    if none:
        problems.append(f"no gradient reaches {_names(none, every)}")
    if nonfinite:
        problems.append(f"non-finite gradient in {_names(nonfinite, every)}")
    if zero:
        problems.append(f"gradient exactly 0 in {_names(zero, every)}")
    return _result(name, problems, measured,
                   "a parameter without gradient never learns: look for .detach(), torch.no_grad(), "
                   "a blend or gate weight at 0 or 1 cutting the path, a clamp saturating, or a module "
                   "that forward() never uses; non-finite gradients often come from eigh/SVD backward "
                   "through (near-)equal eigenvalues",
                   f"all {len(params)} trainable parameters get a finite, non-zero gradient")


@preflight_check("term_grad_reach")
def check_term_grad_reach(subject: Any) -> Check:
    """Every term with weight > 0 sends a finite gradient to the parameters that feed it."""
    import torch

    name = "term_grad_reach"
    model = subject.model
    params = _trainable(model)
    parts = _loss_at_init(subject)
    weights = {k: float(v) for k, v in parts.weights.items()}
    required = dict(getattr(subject, "term_reaches", None) or {})
    every = [n for n, _ in params]
    problems: list[str] = []
    measured: dict[str, Any] = {}
    unreached_by: dict[tuple[str, ...], list[str]] = {}  # missed parameters -> terms that miss them
    active = [t for t in parts.terms if weights.get(t, 0.0) > 0]
    for i, term in enumerate(active):
        value = parts.terms[term]
        if not getattr(value, "requires_grad", False):
            problems.append(f"term {term!r} (weight {weights[term]:g}) is not connected to any parameter")
            measured[f"{term}_reached"] = 0
            continue
        grads = torch.autograd.grad(value, [p for _, p in params], retain_graph=i < len(active) - 1,
                                    allow_unused=True)
        reached, nonfinite, sq = set(), [], 0.0
        for (pname, _), g in zip(params, grads):
            if g is None:
                continue
            if not bool(torch.isfinite(g).all()):
                nonfinite.append(pname)
            elif bool(g.any()):
                reached.add(pname)
                sq += float(g.float().pow(2).sum())
        measured[f"{term}_reached"] = len(reached)
        measured[f"{term}_grad_norm"] = math.sqrt(sq)
        if nonfinite:
            problems.append(f"term {term!r} gives non-finite gradients to {_names(nonfinite, every)}")
        if not reached and not nonfinite:
            problems.append(f"term {term!r} (weight {weights[term]:g}) reaches no parameter")
            continue
        prefixes = required.get(term, ())
        must = [n for n, _ in params if any(n.startswith(pre) for pre in prefixes)]
        unreached = tuple(n for n in must if n not in reached and n not in nonfinite)
        if unreached:
            unreached_by.setdefault(unreached, []).append(term)
    for unreached, terms in unreached_by.items():
        who = f"term {terms[0]!r} does" if len(terms) == 1 else f"terms {', '.join(map(repr, terms))} do"
        problems.append(f"{who} not reach {_names(list(unreached), every)}")
    measured["terms_checked"] = len(active)
    skipped = [t for t in parts.terms if t not in active]
    if skipped:
        measured["unweighted_terms"] = ", ".join(skipped)
    return _result(name, problems, measured,
                   "a weighted term that does not reach a parameter it depends on adds to the loss but "
                   "teaches nothing: look for a detached prediction or a path cut inside that term",
                   f"{len(active)} weighted terms each reach the parameters that feed them")


@preflight_check("micro_overfit")
def check_micro_overfit(subject: Any) -> Check:
    """A few steps on one batch at least halve the loss; the model is restored afterwards."""
    import torch

    name = "micro_overfit"
    model, optimizer = subject.model, subject.optimizer
    scheduler = getattr(subject, "scheduler", None)
    if scheduler is not None and getattr(scheduler, "optimizer", optimizer) is not optimizer:
        scheduler = None  # stepping it would not change this optimizer's lr (lr_at_step0 reports it)
    clip = float(getattr(subject, "grad_clip", 0.0) or 0.0)
    steps = int(getattr(subject, "overfit_steps", OVERFIT_STEPS))
    saved = _snapshot(model, optimizer, scheduler)
    batch = subject.batch()
    losses: list[float] = []
    try:
        for _ in range(steps + 1):
            parts = LossParts.of(subject.loss(batch))
            value = float(parts.total.detach())
            losses.append(value)
            if not math.isfinite(value) or value <= OVERFIT_RATIO * losses[0]:
                break
            if len(losses) > steps:
                break
            optimizer.zero_grad(set_to_none=True)
            parts.total.backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_([p for _, p in _trainable(model)], clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
    finally:
        _restore(model, optimizer, scheduler, saved)
        optimizer.zero_grad(set_to_none=True)
    initial, final = losses[0], losses[-1]
    finite = [v for v in losses if math.isfinite(v)]
    ratio = final / initial if initial and math.isfinite(final) else math.nan
    measured = {"initial": initial, "final": final, "best": min(finite) if finite else math.nan,
                "ratio": ratio, "steps": len(losses) - 1, "max_steps": steps}
    problems = []
    if not math.isfinite(final):
        problems.append(f"the loss became {final} after {len(losses) - 1} steps on one batch")
    elif not final <= OVERFIT_RATIO * initial:
        problems.append(f"{steps} steps on one batch took the loss from {initial:.4g} to {final:.4g} "
                        f"(ratio {ratio:.2f}, needed <= {OVERFIT_RATIO:g})")
    return _result(name, problems, measured,
                   "a model that cannot fit one batch cannot fit a dataset: check the learning rate, "
                   "that the optimizer steps the model's parameters, and the other checks' findings",
                   f"loss halved in {len(losses) - 1} steps ({initial:.4g} -> {final:.4g})")


def _snapshot(model: Any, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]:
    return (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()),
            copy.deepcopy(scheduler.state_dict()) if scheduler is not None else None)


def _restore(model: Any, optimizer: Any, scheduler: Any, saved: tuple[Any, Any, Any]) -> None:
    model.load_state_dict(saved[0])
    optimizer.load_state_dict(saved[1])
    if scheduler is not None:
        scheduler.load_state_dict(saved[2])


def default_checks() -> list[Callable[[Any], Check]]:
    """Cheap, read-only checks first; the micro-overfit, which steps the optimizer, last."""
    return [check_loss_self_test, check_loss_weights, check_loss_at_init, check_optimizer_coverage,
            check_lr_at_step0, check_grad_reach, check_term_grad_reach, check_micro_overfit]


def run_checks(subject: Any, checks: Iterable[Callable[[Any], Check]] | None = None,
               on_check: Callable[[Check], None] | None = None) -> list[Check]:
    """Run ``checks`` (default: `default_checks`) on ``subject`` in order, in training mode."""
    results = []
    model = getattr(subject, "model", None)
    if model is not None and hasattr(model, "train"):
        model.train()
    for check in (default_checks() if checks is None else checks):
        result = check(subject)
        results.append(result)
        if on_check is not None:
            on_check(result)
    return results


__all__ = [
    "Check", "GateSubject", "LossParts", "VERDICTS", "check_grad_reach", "check_loss_at_init",
    "check_loss_self_test", "check_loss_weights", "check_lr_at_step0", "check_micro_overfit",
    "check_optimizer_coverage", "check_term_grad_reach", "default_checks", "preflight_check", "run_checks",
]
