"""blpmodels: Berry–Levinsohn–Pakes demand estimation, statsmodels style.

Models
------
BLPLogit, BLPNestedLogit, BLPRandomCoefficients
    ``Model.from_formula("shares ~ 1 + x + [prices ~ z]", data, absorb=...).fit()``.

Helpers
-------
Integration, build_integration
    Integration nodes and weights for random coefficients.
build_blp_instruments, build_differentiation_instruments
    Standard excluded instruments, computed for all markets at once.
MicroDataset, MicroMoment
    Survey statistics (micro moments) matched in ``fit(micro_moments=[...])``.
compare
    Side-by-side tables of blpmodels, statsmodels and linearmodels results.
datasets, simulation
    Data loaders and seeded simulated data.
"""

from __future__ import annotations

import sys

from blpmodels import simulation
from blpmodels.data import datasets
from blpmodels.data.instruments import build_blp_instruments, build_differentiation_instruments
from blpmodels.data.integration import Integration, build_integration
from blpmodels.estimation.micro import MicroDataset, MicroMoment
from blpmodels.exceptions import (
    BLPInputError,
    ConvergenceWarning,
    FixedPointError,
    IntegrationWarning,
)
from blpmodels.models import BLPLogit, BLPModel, BLPNestedLogit, BLPRandomCoefficients
from blpmodels.results import BLPResults, BootstrappedResults, Equilibrium, MergerResults
from blpmodels.results.compare import Comparison, compare

# ``blpmodels.datasets`` is the loaders' public name (``from blpmodels.datasets import
# load_nevo``); the module itself lives with the other inputs in ``blpmodels.data``.
sys.modules[f"{__name__}.datasets"] = datasets

__version__ = "0.1.0"

__all__ = [
    "BLPInputError",
    "BLPLogit",
    "BLPModel",
    "BLPNestedLogit",
    "BLPRandomCoefficients",
    "BLPResults",
    "BootstrappedResults",
    "Comparison",
    "ConvergenceWarning",
    "Equilibrium",
    "FixedPointError",
    "Integration",
    "IntegrationWarning",
    "MergerResults",
    "MicroDataset",
    "MicroMoment",
    "__version__",
    "build_blp_instruments",
    "build_differentiation_instruments",
    "build_integration",
    "compare",
    "datasets",
    "simulation",
]
