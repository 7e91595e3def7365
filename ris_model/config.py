"""One typed, frozen config tree, and where each of its values came from.

The origin pipeline read settings with ``getattr(cfg, "KEY", default)``: a typo fell
back to the default and nobody noticed (docs/failure-catalogue.md row 8). Here every key is
declared once, with its type, its allowed range and a one-line reason; an unknown key
is an error naming the closest valid one, and every value remembers its source
(``default`` < ``preset:NAME`` < ``file:PATH`` < ``cli`` < ``hpo:…`` < ``schedule:…``).

Angles are stored in degrees in the config (they are typed by people) and converted to
radians exactly once, by :meth:`SystemConfig.angle_bounds_rad`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

SPEED_OF_LIGHT = 299_792_458.0

# A positive primary weight below this is 0 in effect: with O(1) terms and auxiliary weights
# the float32 total cannot tell it from 0 (and below ~1e-45 it is exactly 0 in float32).
MIN_PRIMARY_WEIGHT = 1e-12

# Sources, lowest to highest precedence. A value set by a later source wins.
SOURCE_ORDER = ("default", "preset", "file", "cli", "hpo", "schedule")


class ConfigError(ValueError):
    """A config that cannot be used; the message is one sentence a user can act on."""


def _spec(default: Any, *, lo: float | None = None, hi: float | None = None,
          lo_open: bool = False, doc: str = "") -> Any:
    """A dataclass field with its allowed range and a reason, read back by validation."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "lo_open": lo_open, "doc": doc})


# --------------------------------------------------------------------------- system
@dataclass(frozen=True)
class SystemConfig:
    """The physical scene: RIS, BS, sources and the snapshot model of docs/physics.md."""

    preset: Literal["tiny", "small", "paper"] = _spec("small", doc="the preset these values started from")
    nx: int = _spec(8, lo=1, hi=64, doc="RIS elements along x")
    ny: int = _spec(8, lo=1, hi=64, doc="RIS elements along y")
    bs_antennas: int = _spec(8, lo=1, hi=256, doc="M: BS ULA antennas")
    snapshots: int = _spec(64, lo=1, hi=4096, doc="L: snapshots (one RIS code each) per scene")
    k_max: int = _spec(3, lo=1, hi=16, doc="most sources in one scene; labels are padded to this")
    k_min: int = _spec(1, lo=1, hi=16, doc="fewest sources in one scene")
    field: Literal["far", "near"] = _spec("near", doc="far: estimate (phi, theta) only")
    r_min: float = _spec(1.0, lo=0.05, doc="nearest source range in metres (near field)")
    r_max: float = _spec(10.0, lo=0.05, doc="farthest source range in metres (near field)")
    carrier_hz: float = _spec(1e9, lo=1e6, doc="1 GHz gives lambda = 0.3 m")
    phi_max_deg: float = _spec(60.0, lo=0.0, hi=89.0, lo_open=True, doc="azimuth in [-phi_max, phi_max]")
    theta_max_deg: float = _spec(30.0, lo=0.0, hi=89.0, lo_open=True, doc="elevation in [-theta_max, theta_max]")
    snr_min_db: float = _spec(-5.0, lo=-50.0, hi=80.0, doc="per-scene SNR drawn uniformly from [min, max]")
    snr_max_db: float = _spec(20.0, lo=-50.0, hi=80.0, doc="per-scene SNR drawn uniformly from [min, max]")
    min_separation_deg: float = _spec(5.0, lo=0.0, hi=60.0, doc="smallest angular distance between sources")
    rician_k: float = _spec(1.0, lo=0.0, doc="kappa of the RIS->BS channel; 0 is pure Rayleigh")
    code_bits: int = _spec(2, lo=1, hi=16, doc="phase quantisation of the random RIS codes")
    codebook: Literal["random", "dft"] = _spec("random", doc="how RIS phase codes are drawn")
    power_min: float = _spec(0.5, lo=0.0, lo_open=True, doc="source powers p ~ U(power_min, power_max)")
    power_max: float = _spec(1.5, lo=0.0, lo_open=True, doc="source powers p ~ U(power_min, power_max)")
    range_planes: int = _spec(8, lo=1, hi=256, doc="near-field search planes, uniform in 1/r")
    ls_ridge_scale: float = _spec(0.1, lo=0.0, doc="R_ls ridge = scale * L * ||H||_F^4 / N^2")

    @property
    def n_elements(self) -> int:
        return self.nx * self.ny

    @property
    def wavelength(self) -> float:
        return SPEED_OF_LIGHT / self.carrier_hz

    @property
    def near_field(self) -> bool:
        return self.field == "near"

    def angle_bounds_rad(self) -> tuple[float, float]:
        return math.radians(self.phi_max_deg), math.radians(self.theta_max_deg)


# ---------------------------------------------------------------------------- model
@dataclass(frozen=True)
class ModelConfig:
    """The covariance network. The presets' sizes keep it within 0.3 M (tiny), 2 M (small)
    and 20 M (paper) parameters, so that each trains on the hardware its preset is for."""

    width: int = _spec(256, lo=8, hi=8192, doc="hidden width of the MLP trunk")
    depth: int = _spec(3, lo=1, hi=16, doc="hidden layers in the trunk")
    dropout: float = _spec(0.0, lo=0.0, hi=0.9, doc="dropout between trunk layers")
    eps: float = _spec(1e-3, lo=0.0, hi=1.0, doc="diagonal loading of R_hat; keeps MUSIC/MVDR well posed")
    factor: Literal["direct", "residual"] = _spec(
        "direct", doc="direct: the head outputs F; residual: F = dominant eigen-factor of R_bp + head output")
    residual_span: int = _spec(0, lo=0, hi=4096,
                               doc="residual: 0 lets the head correct F anywhere; m > 0 only within the span "
                                   "of R_bp's m dominant eigenvectors (an m x K_max mixing)")
    residual_scale: float = _spec(
        0.05, lo=0.0, hi=10.0, doc="fixed scale of the head's correction (residual): small Adam steps next to the base"
    )
    unroll_steps: int = _spec(
        0, lo=0, hi=64,
        doc="likelihood steps on the snapshots unrolled after the head, each with a learned size; "
            "0: the network sees R_bp only (docs/physics.md, The network)")
    unroll_step: float = _spec(
        0.1, lo=0.0, lo_open=True, hi=1.0,
        doc="initial size of each unrolled step, as a fraction of the factor's norm")
    unroll_sizes: Literal["fixed", "learned"] = _spec(
        "fixed", doc="fixed: every unrolled step keeps model.unroll_step and the network learns where to start "
                     "them; learned: each step's size is trained too (it shrinks them: worse, docs/physics.md)")


# ----------------------------------------------------------------------------- loss
def _weight(doc: str) -> Any:
    """A loss weight: required (no default), finite, >= 0."""
    return field(metadata={"lo": 0.0, "hi": None, "lo_open": False, "doc": doc})


@dataclass(frozen=True)
class LossWeights:
    """One weight per HybridLoss term, all required: there is no default to fall back to.

    The origin pipeline lost its primary weight because the loss constructor had a
    default that something later overwrote with 0 (the seed report). Here the defaults
    live in one place only, the config tree (:data:`DEFAULT_LOSS_WEIGHTS`), and building
    weights without naming every term is an error. ``cov`` is the primary term.
    """

    cov: float = _weight("covariance NMSE; the primary learning signal")
    subspace: float = _weight("true steering energy in the predicted noise subspace")
    peak: float = _weight("MUSIC peak contrast at the true directions")
    ortho: float = _weight("orthogonality of the predicted factor's columns")

    PRIMARY: typing.ClassVar[str] = "cov"

    def __post_init__(self) -> None:
        for name in self.terms():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"loss weight {name!r} must be a number, but got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"loss weight {name!r} must be finite and >= 0, but got {value!r}")

    @classmethod
    def terms(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_mapping(cls, values: Mapping[str, float]) -> LossWeights:
        """Weights from a dict that must name every term; a missing primary is called out."""
        unknown = [k for k in values if k not in cls.terms()]
        if unknown:
            guess = difflib.get_close_matches(unknown[0], cls.terms(), n=1)
            hint = f"; did you mean {guess[0]!r}?" if guess else f"; terms are {', '.join(cls.terms())}"
            raise ConfigError(f"unknown loss term {unknown[0]!r}{hint}")
        missing = [t for t in cls.terms() if t not in values]
        if cls.PRIMARY in missing:
            raise ConfigError(
                f"no weight given for the primary loss term {cls.PRIMARY!r}; "
                f"pass {cls.PRIMARY}=<value > 0> explicitly (every term needs a weight)"
            )
        if missing:
            raise ConfigError(
                f"no weight given for loss term(s) {', '.join(map(repr, missing))}; "
                f"pass every term explicitly (0 switches an auxiliary term off)"
            )
        return cls(**{k: float(v) for k, v in values.items()})

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self.terms()}


# The only place loss-weight defaults exist. Why these: cov carries the learning signal;
# subspace (MUSIC's null at each true source) and peak (that null being sharper than its
# neighbourhood) are what separates two close sources: with cov alone, or subspace at
# 0.1, 512 tiny scenes reach a tiny NMSE yet merge close K = 2 pairs (RMSE ~8 deg after
# 100 epochs); with these weights every source lands within 1 deg. ortho only breaks the
# factor's rotation ambiguity, so it stays tiny.
DEFAULT_LOSS_WEIGHTS = LossWeights(cov=1.0, subspace=1.0, peak=0.3, ortho=1e-3)


@dataclass(frozen=True)
class WeightPhase:
    """From ``start_epoch`` on, the named terms take these absolute weights (others keep theirs)."""

    start_epoch: int
    weights: Mapping[str, float]

    @classmethod
    def parse(cls, key: str, raw: Any) -> WeightPhase:
        if isinstance(raw, WeightPhase):
            return raw
        if not isinstance(raw, Mapping) or set(raw) != {"start_epoch", "weights"}:
            raise ConfigError(
                f"{key} must be a table with start_epoch and weights, "
                f"e.g. {{start_epoch = 10, weights = {{peak = 0.5}}}}, but got {raw!r}"
            )
        start = raw["start_epoch"]
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ConfigError(f"{key}.start_epoch must be an integer >= 0, but got {start!r}")
        if not isinstance(raw["weights"], Mapping) or not raw["weights"]:
            raise ConfigError(f"{key}.weights must name at least one term, e.g. {{peak = 0.5}}")
        weights = {}
        for term, value in raw["weights"].items():
            if term not in LossWeights.terms():
                guess = difflib.get_close_matches(term, LossWeights.terms(), n=1)
                hint = f"; did you mean {guess[0]!r}?" if guess else f"; terms are {', '.join(LossWeights.terms())}"
                raise ConfigError(f"{key} names unknown loss term {term!r}{hint}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{key} sets loss weight {term!r} to {value!r}; weights must be finite and >= 0")
            weights[term] = float(value)
        return cls(start_epoch=start, weights=weights)


def _parse_schedule(key: str, raw: Any) -> tuple[WeightPhase, ...]:
    if isinstance(raw, str):  # from --set: JSON text
        try:
            raw = json.loads(raw) if raw.strip() else []
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{key} must be JSON on the command line, e.g. "
                f'\'[{{"start_epoch": 10, "weights": {{"peak": 0.5}}}}]\' ({exc.msg})'
            ) from None
        except RecursionError:
            raise ConfigError(f"{key} is nested too deeply to be a list of phases; "
                              f"give a flat list of {{start_epoch, weights}} tables") from None
    if not isinstance(raw, (list, tuple)):
        raise ConfigError(f"{key} must be a list of phases, but got {raw!r}")
    phases = tuple(WeightPhase.parse(f"{key}[{i}]", item) for i, item in enumerate(raw))
    starts = [ph.start_epoch for ph in phases]
    if starts != sorted(set(starts)):
        raise ConfigError(f"{key} phases must have increasing, distinct start_epoch values, but got {starts}")
    return phases


@dataclass(frozen=True)
class LossConfig:
    weights: LossWeights = field(default_factory=lambda: DEFAULT_LOSS_WEIGHTS)
    schedule: tuple[WeightPhase, ...] = field(
        default=(),
        metadata={"doc": "weight phases: [{start_epoch, weights: {term: value}}]; absolute values, later phases win"},
    )
    ablation_zero_primary: bool = _spec(False, doc="allow loss.weights.cov = 0; only for deliberate ablations")
    peak_offset_deg: float = _spec(
        3.0, lo=0.0, lo_open=True, hi=30.0, doc="distance of the neighbourhood probes of the peak term"
    )
    signal_columns: Literal["all", "count"] = _spec(
        "all",
        doc="columns of F whose span the subspace and peak terms score: all K_max, or the "
        "first K (the scene's source count, the subspace oracle-K MUSIC searches)",
    )


# ---------------------------------------------------------------------------- train
@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _spec(20, lo=1, hi=100_000, doc="passes over the training scenes")
    batch_size: int = _spec(64, lo=1, hi=65_536, doc="scenes per optimizer step")
    train_scenes: int = _spec(4096, lo=1, doc="scenes in the training set")
    val_scenes: int = _spec(512, lo=1, doc="scenes in the validation set")
    fresh_scenes: bool = _spec(False, doc="draw new training scenes every epoch (no overfitting)")
    lr: float = _spec(1e-3, lo=0.0, lo_open=True, hi=10.0, doc="peak AdamW learning rate")
    weight_decay: float = _spec(1e-4, lo=0.0, hi=10.0, doc="AdamW decoupled weight decay")
    warmup_steps: int = _spec(50, lo=0, doc="linear warm-up length in optimizer steps")
    warmup_start: float = _spec(
        0.1, lo=0.0, lo_open=True, hi=1.0, doc="warm-up starts at this fraction of lr; never 0 (catalogue row 2)"
    )
    min_lr_ratio: float = _spec(0.05, lo=0.0, hi=1.0, doc="cosine decays to this fraction of lr")
    grad_clip: float = _spec(1.0, lo=0.0, doc="max global grad norm; 0 disables clipping")
    amp: Literal["off", "bf16", "fp16"] = _spec("off", doc="autocast dtype; fp16 uses a GradScaler")
    ema: float = _spec(0.0, lo=0.0, hi=1.0, doc="EMA decay of the weights for eval; 0 disables")
    seed: int = _spec(0, lo=0, hi=2**32 - 1, doc="seeds data, init and dropout")
    num_workers: int = _spec(0, lo=0, hi=64, doc="DataLoader workers")


# ------------------------------------------------------------------------------ hpo
@dataclass(frozen=True)
class HPOConfig:
    trials: int = _spec(20, lo=1, doc="optuna trials")
    epochs: int = _spec(10, lo=1, doc="epochs per trial")
    lr_min: float = _spec(1e-4, lo=0.0, lo_open=True, doc="log-uniform learning-rate range")
    lr_max: float = _spec(3e-3, lo=0.0, lo_open=True, doc="log-uniform learning-rate range")
    weight_scale_min: float = _spec(
        0.25, lo=0.0, lo_open=True, doc="an HPO trial MULTIPLIES each base loss weight by a factor in this range"
    )
    weight_scale_max: float = _spec(
        4.0, lo=0.0, lo_open=True, doc="an HPO trial MULTIPLIES each base loss weight by a factor in this range"
    )


# ----------------------------------------------------------------------------- eval
@dataclass(frozen=True)
class EvalConfig:
    """How a trained run is evaluated (``ris-model eval --set eval.…``). Not part of the config
    hash: changing how a run is evaluated leaves gate verdicts and overfit baselines valid."""

    refine: Literal["ml", "none"] = _spec(
        "ml",
        doc="after MUSIC on R_hat, fit the sources it finds to the snapshots by local "
        "maximum likelihood and report MUSIC on the fitted covariance; none reports MUSIC on R_hat",
    )
    refine_steps: int = _spec(150, lo=1, hi=100_000, doc="Adam steps of that fit (about 0.2 deg each at most)")
    refine_radius_deg: float = _spec(
        10.0,
        lo=0.0,
        lo_open=True,
        hi=180.0,
        doc="that fit keeps each source within this angle of where MUSIC (or a move) put it",
    )
    refine_moves: int = _spec(
        2,
        lo=0,
        hi=100,
        doc="rounds of global moves after that fit: each moves a scene's least useful source "
        "to where the snapshots most want one and keeps the move only if the fit improves; "
        "0 keeps the fit local",
    )
    music_fit: Literal["joint", "peaks"] = _spec(
        "joint",
        doc="how every MUSIC row places its K sources: joint fits them together to the signal "
        "subspace, so two sources in one spectrum valley are told apart; peaks takes one "
        "spectrum minimum per source (textbook MUSIC)",
    )
    count_rule: Literal["mdl", "threshold"] = _spec(
        "mdl",
        doc="with --k auto, how each row counts its sources from the eigenvalues of its covariance: "
        "mdl (Wax-Kailath with the L snapshots) or threshold (eigenvalues above eval.count_threshold "
        "times the largest)",
    )
    count_threshold: float = _spec(
        0.5, lo=0.0, lo_open=True, hi=0.99, doc="the eigenvalue fraction of eval.count_rule=threshold"
    )


@dataclass(frozen=True)
class Config:
    system: SystemConfig = field(default_factory=SystemConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    hpo: HPOConfig = field(default_factory=HPOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # dotted key -> source of its value; keys absent here come from "default".
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    # -- views ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The values only, as plain JSON types."""
        return {f.name: _to_plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "sources"}

    def source_of(self, key: str) -> str:
        _leaf_spec(key)  # raises on an unknown key
        return self.sources.get(key, "default")

    def get(self, key: str) -> Any:
        node: Any = self
        for part in key.split("."):
            node = getattr(node, part)
        return node

    @property
    def hash(self) -> str:
        """What a run was trained with, stable across processes and machines: sha256 of the
        canonical JSON values without the ``eval`` section (:data:`EVALUATION_KEYS`), so that
        changing how runs are evaluated leaves gate verdicts and overfit baselines valid."""
        values = self.to_dict()
        values.pop(EVALUATION_SECTION)
        blob = json.dumps(values, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": 1,
            "config": self.to_dict(),
            "sources": {k: self.source_of(k) for k in leaf_keys()},
            "config_hash": self.hash,
        }

    @classmethod
    def from_json(cls, blob: Mapping[str, Any]) -> Config:
        tree = _without_retired(blob["config"])
        cfg = _build(Config, tree, "config")
        sources = {
            RENAMED_KEYS.get(k, k): v
            for k, v in blob.get("sources", {}).items()
            if v != "default" and k not in RETIRED_KEYS
        }
        return dataclasses.replace(cfg, sources=sources)

    def with_values(self, values: Mapping[str, Any], source: str) -> Config:
        """A copy with ``values`` (dotted key -> value) applied and recorded as ``source``."""
        return apply_overrides(self, values, source)


# The section that only changes how a trained run is evaluated (``ris-model eval --set``); not hashed.
EVALUATION_SECTION = "eval"
EVALUATION_KEYS: tuple[str, ...] = tuple(f"{EVALUATION_SECTION}.{f.name}" for f in dataclasses.fields(EvalConfig))

# Keys that older run directories may hold, with the one value they could take effect with.
# Such a run still loads; any other value would have been silently ignored, so it is refused.
RETIRED_KEYS: dict[str, Any] = {"model.input": "rbp"}

# Keys that moved, old -> new. Older run directories and config files are read with the
# value under its new key; a ``--set`` of an old key is refused with the new one named.
RENAMED_KEYS: dict[str, str] = {
    f"model.{name}": f"{EVALUATION_SECTION}.{name}"
    for name in ("refine", "refine_steps", "refine_radius_deg", "refine_moves")
}


def _without_retired(tree: Mapping[str, Any]) -> Mapping[str, Any]:
    """``tree`` with retired keys dropped and renamed keys moved to their new names."""
    flat = _flatten(tree)
    for key, value in RETIRED_KEYS.items():
        if key in flat and flat[key] != value:
            raise ConfigError(
                f"{key}={flat[key]!r} is no longer a setting (only {value!r} ever took effect); "
                f"remove it from the config"
            )
    for old, new in RENAMED_KEYS.items():
        if old in flat and new in flat:
            raise ConfigError(f"{old} is now {new}, and the config sets both; keep only {new}")
    if not any(k in flat for k in (*RETIRED_KEYS, *RENAMED_KEYS)):
        return tree
    out = copy.deepcopy(dict(tree))
    for key in RETIRED_KEYS:
        _drop_key(out, key)
    for old, new in RENAMED_KEYS.items():
        if old in flat:
            _drop_key(out, old)
            _set_key(out, new, flat[old])
    return out


def _set_key(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted ``key`` in a nested dict in place, making sections as needed."""
    *sections, leaf = key.split(".")
    node = tree
    for section in sections:
        node = node.setdefault(section, {})
    node[leaf] = value


def _drop_key(tree: dict[str, Any], key: str) -> None:
    """Remove the dotted ``key`` from a nested dict in place, at any depth; absent is fine."""
    *sections, leaf = key.split(".")
    node: Any = tree
    for section in sections:
        node = node.get(section) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(leaf, None)


# ------------------------------------------------------------------------ presets
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "system": dict(preset="tiny", nx=4, ny=4, bs_antennas=4, snapshots=32, k_max=2, field="far", range_planes=1),
        # 0.21 M parameters (0.23 M with factor=residual; budget 0.3 M); the unrolled steps add none
        "model": dict(width=256, depth=3, unroll_steps=10),
        "train": dict(batch_size=32, train_scenes=2048, val_scenes=256, epochs=20, lr=3e-3),
    },
    "small": {
        "system": dict(
            preset="small",
            nx=8,
            ny=8,
            bs_antennas=8,
            snapshots=64,
            k_max=3,
            field="near",
            r_min=1.0,
            r_max=10.0,
            range_planes=8,
        ),
        "model": dict(width=256, depth=3, unroll_steps=10),  # 1.3 M parameters (1.4 M residual; budget 2 M)
        "train": dict(batch_size=64, train_scenes=4096, val_scenes=512, epochs=20),
    },
    "paper": {
        "system": dict(
            preset="paper",
            nx=12,
            ny=12,
            bs_antennas=16,
            snapshots=16,
            k_max=5,
            field="near",
            r_min=0.5,
            r_max=10.0,
            range_planes=24,
        ),
        "model": dict(width=768, depth=4),  # 18.8 M parameters (budget 20 M)
        "train": dict(batch_size=64, train_scenes=32768, val_scenes=2048, epochs=50),
    },
}
DEFAULT_PRESET = "small"


# ------------------------------------------------------------------ construction
def load_config(
    preset: str | None = None,
    file: str | Path | None = None,
    overrides: Mapping[str, Any] | list[str] | tuple[str, ...] = (),
) -> Config:
    """Resolve preset < file < ``--set`` overrides into one validated Config."""
    if file is not None:
        file_values = read_config_file(file)
        preset = preset or _flatten(file_values).get("system.preset")
    preset = preset or DEFAULT_PRESET
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    # each layer is type- and range-checked as it is applied; rules across keys only hold
    # for the final config (a file may set cov=0 and the CLI the ablation switch)
    cfg = apply_overrides(Config(), _flatten(PRESETS[preset]), f"preset:{preset}", check=False)
    if file is not None:
        cfg = apply_overrides(cfg, _flatten(file_values), f"file:{file}", check=False)
    if not isinstance(overrides, Mapping):
        overrides = parse_set_args(overrides)
    return apply_overrides(cfg, overrides, "cli")


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass the path of a .toml, .yaml or .json file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte {exc.start} cannot be decoded); "
                          f"save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc.strerror}") from None
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef, unused-ignore]
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
            if "config" in data and "config_hash" in data:  # a run dir's config.json
                data = data["config"]
        else:
            raise ConfigError(f"config file {str(path)!r} has an unknown suffix; use .toml, .yaml or .json")
    except ConfigError:
        raise
    except Exception as exc:  # parser errors carry line numbers: keep them
        raise ConfigError(f"config file {str(path)!r} could not be parsed: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a table of sections, not {type(data).__name__}")
    return dict(_without_retired(data))


def parse_set_args(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["train.lr=3e-4", ...]`` -> ``{"train.lr": "3e-4"}``; values are typed later."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} is not of the form dotted.key=value, e.g. --set train.lr=3e-4")
        out[key.strip()] = value.strip()
    return out


def apply_overrides(cfg: Config, values: Mapping[str, Any], source: str, *, check: bool = True) -> Config:
    """Apply dotted-key values, type-check and range-check them, record ``source``."""
    tree = cfg.to_dict()
    sources = dict(cfg.sources)
    for key, raw in values.items():
        spec = _leaf_spec(key)
        value = _coerce(key, raw, spec)
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
        sources[key] = source
    new = _build(Config, tree, "")
    new = dataclasses.replace(new, sources=sources)
    if check:
        validate(new)
    return new


def validate(cfg: Config) -> None:
    """Cross-field rules that no single field's range can express."""
    s = cfg.system
    if s.k_min > s.k_max:
        raise ConfigError(f"system.k_min={s.k_min} is larger than system.k_max={s.k_max}; lower k_min or raise k_max")
    if s.snr_min_db > s.snr_max_db:
        raise ConfigError(f"system.snr_min_db={s.snr_min_db} is larger than system.snr_max_db={s.snr_max_db}")
    if s.r_min > s.r_max:
        raise ConfigError(f"system.r_min={s.r_min} is larger than system.r_max={s.r_max}")
    if s.power_min > s.power_max:
        raise ConfigError(f"system.power_min={s.power_min} is larger than system.power_max={s.power_max}")
    if cfg.hpo.lr_min > cfg.hpo.lr_max:
        raise ConfigError(f"hpo.lr_min={cfg.hpo.lr_min} is larger than hpo.lr_max={cfg.hpo.lr_max}")
    if cfg.hpo.weight_scale_min > cfg.hpo.weight_scale_max:
        raise ConfigError(
            f"hpo.weight_scale_min={cfg.hpo.weight_scale_min} is larger than "
            f"hpo.weight_scale_max={cfg.hpo.weight_scale_max}"
        )
    primary = LossWeights.PRIMARY
    value = getattr(cfg.loss.weights, primary)
    if 0 < value < MIN_PRIMARY_WEIGHT:
        raise ConfigError(
            f"loss.weights.{primary}={value!r} is so small that the primary term vanishes in float32 "
            f"arithmetic; use a weight >= {MIN_PRIMARY_WEIGHT:g} (or 0 with loss.ablation_zero_primary=true)"
        )
    if value == 0 and not cfg.loss.ablation_zero_primary:
        raise ConfigError(
            f"loss.weights.{primary}=0 switches off the primary loss term and nothing would be learned; "
            f"set it > 0, or set loss.ablation_zero_primary=true for a deliberate ablation"
        )
    for i, phase in enumerate(cfg.loss.schedule):
        if 0 < phase.weights.get(primary, 1.0) < MIN_PRIMARY_WEIGHT:
            raise ConfigError(
                f"loss.schedule[{i}] sets the primary weight {primary!r} below {MIN_PRIMARY_WEIGHT:g}, "
                f"where it vanishes in float32 arithmetic; keep it >= {MIN_PRIMARY_WEIGHT:g}"
            )
        if phase.weights.get(primary, 1.0) == 0 and not cfg.loss.ablation_zero_primary:
            raise ConfigError(
                f"loss.schedule[{i}] sets the primary weight {primary!r} to 0 from epoch {phase.start_epoch}, "
                f"so training would stop learning there; keep it > 0 (or set loss.ablation_zero_primary=true)"
            )


# ------------------------------------------------------------------- internals
def leaf_keys(cls: Any = Config, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        if f.name == "sources":
            continue
        t = _hints(cls)[f.name]
        if dataclasses.is_dataclass(t):
            keys += leaf_keys(t, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def describe_keys() -> list[tuple[str, str, Any, str]]:
    """(key, type, default, doc) for every leaf: the source of ``ris-model config --keys``."""
    defaults = _flatten(Config().to_dict())
    rows = []
    for key in leaf_keys():
        f, owner = _leaf_spec(key)
        rows.append((key, _type_name(_hints(owner)[f.name]), defaults[key], f.metadata.get("doc", "")))
    return rows


def _leaf_spec(key: str) -> tuple[dataclasses.Field, type]:
    if key in RENAMED_KEYS:
        raise ConfigError(f"config key {key!r} is now {RENAMED_KEYS[key]!r}; set {RENAMED_KEYS[key]!r} instead")
    owner: Any = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(owner) if f.name != "sources"}
        if part not in fields:
            prefix = ".".join(parts[:i])
            valid = [k for k in leaf_keys() if k.startswith(prefix)] if prefix else leaf_keys()
            guess = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
            hint = (
                f"; did you mean {guess[0]!r}?"
                if guess
                else f"; valid keys start with {', '.join(sorted({k.split('.')[0] for k in leaf_keys()}))}"
            )
            raise ConfigError(f"unknown config key {key!r}{hint}")
        t = _hints(owner)[part]
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(t):
                raise ConfigError(
                    f"{key!r} is a section, not a value; set one of its keys, e.g. {leaf_keys(t, key + '.')[0]!r}"
                )
            return fields[part], owner
        if not dataclasses.is_dataclass(t):
            raise ConfigError(f"unknown config key {key!r}; {'.'.join(parts[: i + 1])!r} is a value, not a section")
        owner = t
    raise AssertionError("unreachable")


def _coerce(key: str, raw: Any, spec: tuple[dataclasses.Field, type]) -> Any:
    f, owner = spec
    t = _hints(owner)[f.name]
    origin = typing.get_origin(t)
    if origin is tuple:
        return _parse_schedule(key, raw)
    if origin is Literal:
        choices = typing.get_args(t)
        if raw not in choices:
            raise ConfigError(f"{key}={raw!r} is not allowed; choose one of {', '.join(map(str, choices))}")
        return raw
    try:
        value = _parse_scalar(raw, t)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={raw!r} is not a valid {_type_name(t)}") from None
    if t in (int, float):
        lo, hi, lo_open = f.metadata.get("lo"), f.metadata.get("hi"), f.metadata.get("lo_open")
        if not math.isfinite(value):
            raise ConfigError(
                f"{key}={raw!r} is not finite; give a finite number (allowed{_range_text(lo, hi, lo_open) or ': any'})"
            )
        if (lo is not None and (value < lo or (lo_open and value == lo))) or (hi is not None and value > hi):
            raise ConfigError(f"{key}={raw!r} is out of range; allowed{_range_text(lo, hi, lo_open)}")
    return value


def _parse_scalar(raw: Any, t: Any) -> Any:
    if t is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return raw.lower() in ("true", "1", "yes", "on")
        raise ValueError(raw)
    if t is int:
        if isinstance(raw, bool):
            raise TypeError(raw)
        if isinstance(raw, float):
            if not raw.is_integer():
                raise ValueError(raw)
            return int(raw)
        if isinstance(raw, str):
            as_float = float(raw)
            if not as_float.is_integer():
                raise ValueError(raw)
            return int(as_float)
        return int(raw)
    if t is float:
        if isinstance(raw, bool):
            raise TypeError(raw)
        return float(raw)
    if t is str:
        return str(raw)
    raise TypeError(t)


def _range_text(lo: Any, hi: Any, lo_open: bool | None) -> str:
    if lo is None and hi is None:
        return ""
    if hi is None:
        return f": value {'>' if lo_open else '>='} {lo}"
    if lo is None:
        return f": value <= {hi}"
    return f": {lo} {'<' if lo_open else '<='} value <= {hi}"


def _type_name(t: Any) -> str:
    if typing.get_origin(t) is Literal:
        return "one of " + "|".join(map(str, typing.get_args(t)))
    return getattr(t, "__name__", str(t))


def _build(cls: Any, data: Mapping[str, Any], where: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"section {where or 'root'!r} must be a table, not {type(data).__name__}")
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name == "sources" or f.name not in data:
            continue
        t = hints[f.name]
        key = f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(t):
            kwargs[f.name] = _build(t, data[f.name], key)
        else:
            kwargs[f.name] = _coerce(key, data[f.name], (f, cls))
    for name in data:
        if name not in hints or name == "sources":
            _leaf_spec(f"{where}.{name}" if where else name)  # raises with a suggestion
    return cls(**kwargs)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [_to_plain(item) for item in obj]
    if isinstance(obj, Mapping):
        return {k: _to_plain(v) for k, v in obj.items()}
    return obj


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


__all__ = [
    "Config",
    "ConfigError",
    "DEFAULT_LOSS_WEIGHTS",
    "EVALUATION_KEYS",
    "EVALUATION_SECTION",
    "EvalConfig",
    "HPOConfig",
    "MIN_PRIMARY_WEIGHT",
    "LossConfig",
    "LossWeights",
    "ModelConfig",
    "PRESETS",
    "RENAMED_KEYS",
    "SOURCE_ORDER",
    "SystemConfig",
    "TrainConfig",
    "WeightPhase",
    "apply_overrides",
    "describe_keys",
    "leaf_keys",
    "load_config",
    "parse_set_args",
    "read_config_file",
    "validate",
]
