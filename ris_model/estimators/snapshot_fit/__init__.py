"""The snapshot-domain maximum-likelihood fit of sources found on a covariance.

``likelihood`` fits directions and powers locally to the snapshots' negative
log-likelihood, ``relocate`` moves sources globally (drop one, add the best), and ``fit``
chains the two and returns MUSIC on the fitted covariance.
"""

from ris_model.estimators.snapshot_fit.fit import fit_and_localize
from ris_model.estimators.snapshot_fit.likelihood import (
    SnapshotLikelihood,
    SourceFit,
    fitted_covariance,
    refine_sources,
    snapshot_nll,
)
from ris_model.estimators.snapshot_fit.relocate import relocate_sources

__all__ = ["SnapshotLikelihood", "SourceFit", "fit_and_localize", "fitted_covariance", "refine_sources",
           "relocate_sources", "snapshot_nll"]
