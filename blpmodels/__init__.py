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

Every name above is imported on first use: ``import blpmodels`` itself loads only the
exceptions, and ``from blpmodels import BLPLogit`` loads what the models need (statsmodels,
scipy, formulaic, pyhdfe) but not the simulation, plotting (matplotlib), Dask or progress-bar
(tqdm) code.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

from blpmodels.exceptions import (
    BLPInputError,
    ConvergenceWarning,
    FixedPointError,
    IntegrationWarning,
)

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and editors
    from blpmodels import simulation
    from blpmodels.data import datasets
    from blpmodels.data.instruments import (
        build_blp_instruments,
        build_differentiation_instruments,
    )
    from blpmodels.data.integration import Integration, build_integration
    from blpmodels.estimation.micro import MicroDataset, MicroMoment
    from blpmodels.models import BLPLogit, BLPModel, BLPNestedLogit, BLPRandomCoefficients
    from blpmodels.results import BLPResults, BootstrappedResults, Equilibrium, MergerResults
    from blpmodels.results.compare import Comparison, compare

__version__ = "0.1.0"

# Public names imported on first access (PEP 562). Importing the models costs about a second of
# CPU, nearly all of it statsmodels (which loads scipy.stats and formulaic); a script that only
# loads data, or a command-line call, should not pay it.
_ATTRIBUTES: dict[str, str] = {
    "BLPLogit": "blpmodels.models",
    "BLPModel": "blpmodels.models",
    "BLPNestedLogit": "blpmodels.models",
    "BLPRandomCoefficients": "blpmodels.models",
    "BLPResults": "blpmodels.results",
    "BootstrappedResults": "blpmodels.results",
    "Equilibrium": "blpmodels.results",
    "MergerResults": "blpmodels.results",
    "Comparison": "blpmodels.results.compare",
    "compare": "blpmodels.results.compare",
    "Integration": "blpmodels.data.integration",
    "build_integration": "blpmodels.data.integration",
    "build_blp_instruments": "blpmodels.data.instruments",
    "build_differentiation_instruments": "blpmodels.data.instruments",
    "MicroDataset": "blpmodels.estimation.micro",
    "MicroMoment": "blpmodels.estimation.micro",
}
_SUBMODULES: dict[str, str] = {
    # ``blpmodels.datasets`` is the loaders' public name; the module lives with the other
    # inputs in ``blpmodels.data``.
    "datasets": "blpmodels.data.datasets",
    "simulation": "blpmodels.simulation",
}
# Public module names that are not files of their own: ``import`` finds them through
# :class:`_AliasImporter`.
_ALIASES = {
    f"{__name__}.{name}": target
    for name, target in _SUBMODULES.items()
    if target != f"{__name__}.{name}"
}


class _AliasImporter:
    """Make ``import blpmodels.datasets`` (and ``from blpmodels.datasets import ...``) give the
    module ``blpmodels.data.datasets`` itself, loaded only when it is asked for.

    A meta path finder and loader (:class:`importlib.abc.MetaPathFinder`,
    :class:`importlib.abc.Loader`), duck-typed: importing :mod:`importlib.abc` would double the
    package's own import time.
    """

    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _ALIASES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(_ALIASES[spec.name])
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system has just set the alias's spec on the real module: give it back its
        # own, so the module still knows its file (reload, tracebacks, pickling by reference).
        alias = module.__spec__.name if module.__spec__ is not None else ""
        if alias in self._specs:
            module.__spec__ = self._specs.pop(alias)


# By qualified name, not isinstance: ``importlib.reload(blpmodels)`` defines a new class, and a
# second finder would be added at every reload.
if not any(
    type(finder).__module__ == __name__ and type(finder).__qualname__ == "_AliasImporter"
    for finder in sys.meta_path
):
    sys.meta_path.append(_AliasImporter())


def __getattr__(name: str) -> Any:
    """Import a public name on first access and keep it in the package namespace."""
    if name in _SUBMODULES:
        value: Any = importlib.import_module(f"{__name__}.{name}")
    elif name in _ATTRIBUTES:
        value = getattr(importlib.import_module(_ATTRIBUTES[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


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
