"""Estimation results and everything computed from them.

:class:`BLPResults` (the statsmodels inference surface and summary), post-estimation (predict,
elasticities, diversion), supply-side economics and counterfactuals, micro-moment outputs,
bootstrap, the estimated demand system and comparison tables. Modules here import the layers
below (estimation, backends, kernel, data) and :mod:`blpmodels.plotting`; never models.
"""

from blpmodels.results.results import (
    BLPResults,
    BootstrappedResults,
    Equilibrium,
    EstimationInfo,
    MergerResults,
)

__all__ = [
    "BLPResults",
    "BootstrappedResults",
    "Equilibrium",
    "EstimationInfo",
    "MergerResults",
]
