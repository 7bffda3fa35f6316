"""Start-up cost and the command line: what ``import blpmodels`` loads, and ``--help``.

The budget is in modules, not seconds (issue 19: 1.3 s of CPU went into ``import blpmodels``,
nearly all of it statsmodels, scipy.stats and formulaic pulled in by the eager imports of the
models, the results and the simulation code). Each check runs in a fresh interpreter, since
this one has imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Heavy dependencies only some features need: never loaded by fitting a model.
OPTIONAL = ("matplotlib", "dask", "distributed", "tqdm")
#: What the models need (statsmodels loads scipy.stats and formulaic itself).
MODELLING = ("statsmodels", "scipy", "formulaic", "pyhdfe")


def _loaded_after(code: str, *, top_level: bool = True) -> set[str]:
    """Top-level packages (or, with ``top_level=False``, all modules) in ``sys.modules`` after
    running ``code`` in a fresh interpreter."""
    names = "{name.split('.')[0] for name in sys.modules}" if top_level else "sys.modules"
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted({names})))\n"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


def test_import_blpmodels_loads_no_third_party_package() -> None:
    loaded = _loaded_after("import blpmodels")
    assert not loaded & {*OPTIONAL, *MODELLING, "numpy", "pandas"}, sorted(
        loaded & {*OPTIONAL, *MODELLING, "numpy", "pandas"}
    )


def test_the_data_loaders_do_not_load_the_models() -> None:
    loaded = _loaded_after(
        "from blpmodels.datasets import load_nevo\nfrom blpmodels import datasets"
    )
    assert {"numpy", "pandas"} <= loaded
    assert not loaded & {*OPTIONAL, *MODELLING}, sorted(loaded & {*OPTIONAL, *MODELLING})


def test_the_models_load_neither_the_simulation_nor_the_dask_backend() -> None:
    """Every public name but ``simulation``: the simulation code and the Dask backend module
    (and the optional packages) load only when asked for."""
    code = """
from blpmodels import (
    BLPLogit, BLPNestedLogit, BLPRandomCoefficients, BLPResults, BootstrappedResults,
    Comparison, Equilibrium, Integration, MergerResults, MicroDataset, MicroMoment,
    build_blp_instruments, build_differentiation_instruments, build_integration, compare,
    datasets,
)
"""
    modules = _loaded_after(code, top_level=False)
    assert "blpmodels.models.random_coefficients" in modules  # the code above did run
    lazy = {"blpmodels.simulation", "blpmodels.backends.dask"}
    assert not modules & lazy, sorted(modules & lazy)
    assert not {name.split(".")[0] for name in modules} & set(OPTIONAL)


def test_fitting_and_summarising_load_no_optional_package() -> None:
    """A logit and a random-coefficients fit with their summaries, and the model classes:
    no plotting, Dask or progress-bar package is touched."""
    code = """
import numpy as np
from blpmodels import BLPLogit, BLPRandomCoefficients, Integration, compare
from blpmodels.simulation import simulate_logit

data = simulate_logit(n_markets=20, n_products=4, seed=0).products
data = data.assign(z2=data["cost_shifter"] ** 2)  # a second instrument for sigma
logit = BLPLogit.from_formula("shares ~ 1 + x + [prices ~ cost_shifter]", data).fit()
agents = Integration("halton", 20, seed=0)
rc = BLPRandomCoefficients.from_formula(
    "shares ~ 1 + x + [prices ~ cost_shifter + z2]", data, random="0 + x", integration=agents
).fit(sigma=0.5)
str(logit.summary()), str(rc.summary()), str(compare([logit, rc]))
"""
    loaded = _loaded_after(code)
    assert {"statsmodels", "formulaic", "pyhdfe"} <= loaded  # the code above did run
    assert not loaded & set(OPTIONAL), loaded & set(OPTIONAL)


def test_every_public_name_resolves_to_its_module_object() -> None:
    import blpmodels.data.datasets
    import blpmodels.models
    import blpmodels.results.compare
    import blpmodels.simulation

    for name in blpmodels.__all__:
        assert getattr(blpmodels, name) is not None, name
        assert name in dir(blpmodels), name
    assert blpmodels.datasets is blpmodels.data.datasets
    assert blpmodels.simulation is sys.modules["blpmodels.simulation"]
    assert blpmodels.BLPLogit is blpmodels.models.BLPLogit
    assert blpmodels.compare is blpmodels.results.compare.compare
    # The alias keeps the loaders' own module spec (file, name) for reloads and tracebacks.
    assert blpmodels.data.datasets.__spec__.name == "blpmodels.data.datasets"
    with pytest.raises(AttributeError, match="no attribute 'BLPLogitt'"):
        blpmodels.BLPLogitt  # noqa: B018


def test_lazy_names_work_in_a_fresh_interpreter() -> None:
    """``from blpmodels import simulation``, ``import blpmodels.datasets`` and the attribute
    forms, first thing after start-up (where laziness could break them)."""
    code = """
import blpmodels
import blpmodels.datasets
from blpmodels import simulation, BLPRandomCoefficients
from blpmodels.datasets import data_home
from blpmodels import *  # noqa: F403
assert blpmodels.datasets is sys.modules["blpmodels.data.datasets"] is blpmodels.data.datasets
assert simulation is blpmodels.simulation and callable(simulation.simulate_logit)
assert data_home is blpmodels.datasets.data_home
assert BLPRandomCoefficients.__module__ == "blpmodels.models.random_coefficients"
assert MicroMoment is blpmodels.MicroMoment
"""
    result = subprocess.run(
        [sys.executable, "-c", "import sys\n" + code], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr


def test_reloading_the_package_keeps_one_alias_finder() -> None:
    """``importlib.reload(blpmodels)`` (as autoreload does in notebooks) must not stack a new
    ``blpmodels.datasets`` finder on ``sys.meta_path`` each time."""
    code = """
import importlib, sys
import blpmodels
count = len(sys.meta_path)
for _ in range(3):
    importlib.reload(blpmodels)
assert len(sys.meta_path) == count, sys.meta_path
import blpmodels.datasets
assert blpmodels.datasets is sys.modules["blpmodels.data.datasets"]
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def _help(*arguments: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "blpmodels", *arguments, "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return result.stdout


@pytest.mark.parametrize("arguments", [(), ("demo",)])
def test_command_line_help_is_plain_text(arguments: tuple[str, ...]) -> None:
    text = _help(*arguments)
    assert ":class:" not in text and "`" not in text, text
    # The references keep their text, paragraphs stay apart, lines fit a terminal.
    assert "(blpmodels.simulation.Simulation:" in " ".join(text.split())
    assert "Command line: python -m blpmodels demo.\n\nThe demo" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_command_line_help_documents_the_demo_options() -> None:
    text = " ".join(_help("demo").split())
    for option, default in (("--seed", "(0)"), ("--markets", "(200)"), ("--products", "(10)")):
        assert f"{option} {option[2:].upper()}" in text
        assert default in text


def test_plain_text_of_sphinx_roles() -> None:
    from blpmodels.__main__ import _plain_text

    assert _plain_text("See :class:`blpmodels.BLPLogit` and ``fit()``.") == (
        "See blpmodels.BLPLogit and fit()."
    )
    assert _plain_text(":func:`~blpmodels.compare` :meth:`the fit <blpmodels.BLPLogit.fit>`") == (
        "compare the fit"
    )
    assert _plain_text(":py:class:`x.Y`\n\n\n  second\n  paragraph") == "x.Y\n\nsecond paragraph"
