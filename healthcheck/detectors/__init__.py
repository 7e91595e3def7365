"""Detectors: one small class per check, grouped by family. See `base` for the contract."""

from __future__ import annotations

from .base import NO_EVENTS, PHASES, Detector, DetectorState
from .baseline import BelowBaseline, baseline_metrics
from .grad_flow import DeadUnits, NoneGrad, ZeroGrad
from .grad_magnitude import ExplodingGrad, NonFiniteGrad, VanishingGrad
from .loss_terms import DeadTerm, PrimaryShare
from .loss_values import ConstantLoss, Divergence, NonFiniteLoss, ZeroLoss
from .optimizer import WeightDecay
from .outputs import ChanceLevel, CollapsedPredictions, ExpectedRange, SaturatedOutputs
from .parameters import BlockedUpdate, FrozenParams, NotInOptimizer, UpdateRatio
from .relations import LossSumMismatch
from .schedule import InvalidLR, ScheduleSpentEarly, TinyLR, ZeroLR
from .signals import GradNotCleared, NoDataSignal, TermUnreached, WeightsMovedOutside
from .steps import AmpOverflow, AmpScaleCollapse, SkippedSteps
from .trends import DecayErosion, GradGrowth, ProgressStall
from .validation import ValConstant, ValPlateau, ValTrainGap
from .weights import PrimaryWeightZero, UnplannedWeightChange, WeightChanged


def default_detectors() -> list[Detector]:
    """A fresh instance of every detector that needs no run-specific setting.

    Left out: `ChanceLevel` (needs the number of classes) and `ExpectedRange` (needs a
    declared range).
    """
    return [
        # before the optimizer step: what must stop a step comes first
        NonFiniteLoss(), PrimaryWeightZero(), InvalidLR(), NonFiniteGrad(),
        ZeroLoss(), LossSumMismatch(), TermUnreached(), GradNotCleared(), NoDataSignal(),
        DeadTerm(), PrimaryShare(), WeightChanged(), UnplannedWeightChange(),
        NoneGrad(), ZeroGrad(), DeadUnits(), VanishingGrad(), ExplodingGrad(), GradGrowth(), NotInOptimizer(),
        ZeroLR(), TinyLR(), ScheduleSpentEarly(), WeightDecay(),
        # after the step
        ConstantLoss(), Divergence(), FrozenParams(), UpdateRatio(), BlockedUpdate(), SkippedSteps(),
        AmpOverflow(), AmpScaleCollapse(), SaturatedOutputs(), ProgressStall(), DecayErosion(), WeightsMovedOutside(),
        # epochs and evaluations
        ValConstant(), ValPlateau(), ValTrainGap(), BelowBaseline(), CollapsedPredictions(),
    ]

__all__ = [
    "AmpOverflow", "AmpScaleCollapse", "baseline_metrics", "BelowBaseline", "BlockedUpdate", "ChanceLevel",
    "CollapsedPredictions", "ConstantLoss",
    "DeadTerm", "DeadUnits", "DecayErosion", "default_detectors", "Detector", "DetectorState", "Divergence",
    "ExpectedRange", "ExplodingGrad", "FrozenParams", "GradGrowth", "GradNotCleared", "InvalidLR",
    "LossSumMismatch", "NO_EVENTS",
    "NoDataSignal", "NoneGrad", "NonFiniteGrad", "NonFiniteLoss", "NotInOptimizer", "PHASES", "PrimaryShare",
    "PrimaryWeightZero", "ProgressStall", "SaturatedOutputs", "ScheduleSpentEarly", "SkippedSteps", "TermUnreached",
    "TinyLR",
    "UnplannedWeightChange",
    "UpdateRatio", "ValConstant", "ValPlateau", "ValTrainGap", "VanishingGrad", "WeightChanged", "WeightDecay",
    "WeightsMovedOutside",
    "ZeroGrad", "ZeroLoss", "ZeroLR",
]
