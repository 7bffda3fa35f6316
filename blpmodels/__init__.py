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
compare
    Side-by-side tables of blpmodels, statsmodels and linearmodels results.
datasets, simulation
    Data loaders and seeded simulated data.
"""

from __future__ import annotations

from . import datasets, simulation
from .exceptions import BLPInputError, ConvergenceWarning, FixedPointError, IntegrationWarning
from .models import BLPLogit, BLPModel, BLPNestedLogit
from .random_coefficients import BLPRandomCoefficients
from .results import BLPResults, BootstrappedResults

__version__ = "0.1.0"

__all__ = [
    "BLPInputError",
    "BLPLogit",
    "BLPModel",
    "BLPNestedLogit",
    "BLPRandomCoefficients",
    "BLPResults",
    "BootstrappedResults",
    "ConvergenceWarning",
    "FixedPointError",
    "IntegrationWarning",
    "__version__",
    "datasets",
    "simulation",
]
