"""Classical estimates of R, MUSIC / MVDR spectra and search, and peak refinement.

The snapshot-domain maximum-likelihood fit is the subpackage `snapshot_fit`; localisation
metrics live in `ris_model.evaluation`.
"""

from ris_model.estimators.covariance import EXACT_MAX_UNKNOWNS, LSInfo, ls_ridge, normalise_trace, r_bp, r_ls
from ris_model.estimators.grid import DEFAULT_STEP_DEG, SearchGrid, clear_grid_cache, range_planes, search_grid
from ris_model.estimators.order import estimate_order, mdl_order, threshold_order
from ris_model.estimators.refine import PeakResidual, peak_objective, refine_peaks, steering_and_jacobian
from ris_model.estimators.search import MVDR_STEP_DEG, Estimates, localize, localize_factor
from ris_model.estimators.spectra import (
    NULL_FLOOR,
    music_null_spectrum,
    music_null_spectrum_eigh,
    music_spectrum,
    music_spectrum_factor,
    mvdr_spectrum,
    mvdr_whitener,
    signal_basis_eigh,
    signal_basis_qr,
)

__all__ = [
    "DEFAULT_STEP_DEG", "EXACT_MAX_UNKNOWNS", "Estimates", "LSInfo", "MVDR_STEP_DEG", "NULL_FLOOR",
    "PeakResidual", "SearchGrid", "clear_grid_cache", "estimate_order", "localize", "localize_factor",
    "ls_ridge", "mdl_order", "music_null_spectrum", "music_null_spectrum_eigh", "music_spectrum",
    "music_spectrum_factor", "mvdr_spectrum", "mvdr_whitener", "normalise_trace", "peak_objective", "r_bp",
    "r_ls", "range_planes", "refine_peaks", "search_grid", "signal_basis_eigh", "signal_basis_qr",
    "steering_and_jacobian", "threshold_order",
]
