"""Where every effective loss weight comes from: resolved in one place, in one order.

The seed report's bug in one sentence: loss weights were set in several places
(constructor defaults, trainer, HPO, schedule) and the primary one silently ended at 0.
Here there is one order, lowest to highest precedence:

    preset defaults < config file < CLI --set < HPO trial < schedule phase

- The first three are ordinary config sources (``Config.source_of``).
- An HPO trial MULTIPLIES the base weight: ``w = factor × w_base``, the factor drawn
  from ``[hpo.weight_scale_min, hpo.weight_scale_max]`` (log-uniform). It never
  replaces a weight, so a base of 0 stays 0 and the primary stays > 0 for any factor.
  See :func:`apply_hpo_factors`.
- A schedule phase sets ABSOLUTE values for the terms it names, from its start epoch
  on; later phases win; terms it does not name keep their value. A scheduled value
  therefore also overrides the HPO factor for that term in that phase.

Every effective weight carries its history as (value, source, step); the trainer
writes it to config.json and to every metrics line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ris_model.config import Config, ConfigError, LossWeights


@dataclass(frozen=True)
class WeightChange:
    """One entry of a weight's history."""

    term: str
    value: float
    source: str
    epoch: int
    step: int | None = None  # filled in when the change is applied in a run

    def as_dict(self) -> dict:
        return {"term": self.term, "value": self.value, "source": self.source, "epoch": self.epoch,
                "step": self.step}


def apply_hpo_factors(cfg: Config, factors: Mapping[str, float], trial: int | str) -> Config:
    """The config of one HPO trial: each named base weight multiplied by its factor."""
    for term, factor in factors.items():
        if term not in LossWeights.terms():
            raise ConfigError(f"HPO factor for unknown loss term {term!r}; terms are {', '.join(LossWeights.terms())}")
        if not factor > 0:
            raise ConfigError(f"HPO factor for {term!r} must be > 0, but got {factor!r}")
        base = getattr(cfg.loss.weights, term)
        cfg = cfg.with_values({f"loss.weights.{term}": base * factor},
                              f"hpo:trial {trial} ({factor:.4g} x {base:.4g})")
    return cfg


class WeightPlan:
    """The effective weights of a run for every epoch, and the source of each value."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.primary = LossWeights.PRIMARY
        base = cfg.loss.weights.as_dict()
        base_sources = {t: cfg.source_of(f"loss.weights.{t}") for t in base}
        self._phases: list[tuple[int, dict[str, float], dict[str, str]]] = [(0, base, base_sources)]
        for i, phase in enumerate(cfg.loss.schedule):
            values = dict(self._phases[-1][1])
            sources = dict(self._phases[-1][2])
            for term, value in phase.weights.items():
                values[term] = value
                sources[term] = f"schedule:phase {i}@epoch {phase.start_epoch}"
            if phase.start_epoch == 0:
                self._phases[0] = (0, values, sources)
            else:
                self._phases.append((phase.start_epoch, values, sources))
        self.validate()

    def validate(self) -> None:
        """Rejects, at load time, a plan whose primary weight reaches 0 in any phase."""
        if self.cfg.loss.ablation_zero_primary:
            return
        for start, values, sources in self._phases:
            if not values[self.primary] > 0:
                raise ConfigError(f"the primary loss weight {self.primary!r} is {values[self.primary]} from epoch "
                                  f"{start} (set by {sources[self.primary]}); it must stay > 0")

    def at_epoch(self, epoch: int) -> tuple[LossWeights, dict[str, str]]:
        current = self._phases[0]
        for phase in self._phases:
            if phase[0] <= epoch:
                current = phase
        return LossWeights(**current[1]), dict(current[2])

    def initial_history(self) -> list[WeightChange]:
        _, values, sources = self._phases[0]
        return [WeightChange(t, values[t], sources[t], epoch=0, step=0) for t in values]

    def changes_at(self, epoch: int) -> list[WeightChange]:
        """The weights that change value when ``epoch`` starts (empty for most epochs)."""
        if epoch == 0:
            return []
        before, _ = self.at_epoch(epoch - 1)
        after, sources = self.at_epoch(epoch)
        old, new = before.as_dict(), after.as_dict()
        return [WeightChange(t, new[t], sources[t], epoch=epoch) for t in new if new[t] != old[t]]

    def timeline(self, epochs: int) -> list[tuple[int, LossWeights]]:
        """(start epoch, weights) for every phase that starts before ``epochs``."""
        return [(start, LossWeights(**values)) for start, values, _ in self._phases if start < epochs]
