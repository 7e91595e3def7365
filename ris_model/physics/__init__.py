"""The RIS physics: geometry, steering, channel, scene sampling, simulate() and the CRB."""

from ris_model.physics.channel import rician_channel
from ris_model.physics.codes import dft_codebook, dft_codes, phase_codes, random_phase_codes
from ris_model.physics.crb import CRBResult, crb, crb_from_model, fisher_information, system_steering_fn
from ris_model.physics.geometry import angular_distance, ris_positions, system_positions, unit_direction, wavenumber
from ris_model.physics.scenes import SceneSamplingError, Sources, sample_counts, sample_directions, sample_sources
from ris_model.physics.simulate import SceneBatch, covariance_from_factor, simulate, steering_matrix
from ris_model.physics.steering import ris_steering, ula_steering

__all__ = [
    "CRBResult", "SceneBatch", "SceneSamplingError", "Sources", "angular_distance", "covariance_from_factor",
    "crb", "crb_from_model", "dft_codebook", "dft_codes", "fisher_information", "phase_codes",
    "random_phase_codes", "rician_channel", "ris_positions", "ris_steering", "sample_counts",
    "sample_directions", "sample_sources", "simulate", "steering_matrix", "system_positions",
    "system_steering_fn", "ula_steering", "unit_direction", "wavenumber",
]
