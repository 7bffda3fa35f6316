"""Estimation results and everything computed from them.

:class:`BLPResults` (the statsmodels inference surface and summary, in ``results``) composes one
mixin per role: post-estimation (predict, elasticities, diversion), supply-side economics,
counterfactuals (equilibrium prices, mergers, counterfactual markets, simulation) with their
bootstrap intervals, conduct tests, micro-moment outputs, the bootstrap and plots. Beside them:
the estimated demand system, optimal instruments and comparison tables.
Modules here import the layers below (estimation, backends, kernel, data) and
:mod:`blpmodels.plotting`; never models. The role modules never import ``results`` back.
"""

from blpmodels.results.bootstrap import BootstrappedResults
from blpmodels.results.conduct import ConductTest
from blpmodels.results.counterfactual_bootstrap import (
    BootstrappedCounterfactual,
    BootstrappedEquilibrium,
    BootstrappedMerger,
)
from blpmodels.results.counterfactuals import Equilibrium, MergerResults
from blpmodels.results.market_counterfactuals import CounterfactualResults
from blpmodels.results.minimum_distance import MinimumDistanceResults
from blpmodels.results.results import BLPResults, EstimationInfo
from blpmodels.results.specification_tests import SpecificationTest

__all__ = [
    "BLPResults",
    "BootstrappedCounterfactual",
    "BootstrappedEquilibrium",
    "BootstrappedMerger",
    "BootstrappedResults",
    "ConductTest",
    "CounterfactualResults",
    "Equilibrium",
    "EstimationInfo",
    "MergerResults",
    "MinimumDistanceResults",
    "SpecificationTest",
]
