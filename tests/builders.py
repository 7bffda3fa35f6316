"""Models, pyblp problems and checks that several test modules build the same way.

The data they take come from the session fixtures of ``conftest.py`` (``exercise2``, ``nevo``,
``nevo_nested``, ...); tests/ is on ``sys.path`` (pytest puts a test file's folder there), so
test modules import these helpers like ``small_economy`` and ``probes``::

    from builders import at_parameters, q5_model

Building a model here rather than in each test module keeps the specifications the oracles were
recorded for (pyblp's tutorials, the Mixtape exercises) written once.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pytest
from blpmodels.datasets import DATA_ENV_VAR, data_home

from blpmodels import BLPRandomCoefficients, ConvergenceWarning, Integration
from blpmodels.simulation.economies import Simulation, SimulationResults
from blpmodels.simulation.logit import build_id_data

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FIXED_EFFECTS = "C(market_ids) + C(product_ids)"
#: Exercise 2, question 5: prices instrumented by the first four demand instruments.
Q5_FORMULA = (
    "shares ~ 0 + [prices ~ " + " + ".join(f"demand_instruments{k}" for k in range(4)) + "]"
)
#: Nevo's twenty excluded demand instruments (pyblp's cereal problem).
NEVO_INSTRUMENTS = " + ".join(f"demand_instruments{k}" for k in range(20))
NEVO_FORMULA = f"shares ~ 0 + [prices ~ {NEVO_INSTRUMENTS}]"
#: Σ (prices, sugar) and Π (on income) where the lognormal cases are evaluated.
LOGNORMAL_THETA = {"sigma": np.diag([0.3, 0.2]), "pi": [[0.5], [0.1]]}
#: Lognormal coefficients in blpmodels (``rc_types``) and in pyblp (its X2 formulation and
#: ``rc_types``). pyblp has no negative lognormal; its documented recipe is 'log' on I(-prices).
lognormal_cases = pytest.mark.parametrize(
    ("ours", "pyblp_random", "pyblp_types"),
    [
        ({"sugar": "lognormal"}, "0 + prices + sugar", ["linear", "log"]),
        ({"prices": "negative_lognormal"}, "0 + I(-prices) + sugar", ["log", "linear"]),
    ],
    ids=["lognormal", "negative_lognormal"],
)

#: The supply side of the simulated economies: costs 1 + w, ω correlated with ξ.
SIMULATED_SUPPLY = {
    "supply": "1 + w",
    "gamma": {"Intercept": 1.0, "w": 1.0},
    "xi_variance": 0.2,
    "omega_variance": 0.1,
    "correlation": 0.7,
}


def require_data(*relative: str) -> None:
    """Skip the test unless every named file exists under the data home.

    Under CI, ``conftest.py`` turns this skip into a failure.
    """
    home = data_home()
    for name in relative:
        if not (home / name).is_file():
            pytest.skip(f"shared data file {home / name} not found (set {DATA_ENV_VAR})")


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as the module ``name``."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def stay(fun: Any, theta0: np.ndarray, bounds: Any) -> np.ndarray:
    """An optimizer that returns its start: fits at given parameters."""
    return theta0


def at_parameters(model: BLPRandomCoefficients, **options: Any):
    """One-step results at the starting θ (β concentrated out there), without optimizing."""
    with warnings.catch_warnings():
        # Staying at the start is no convergence, and the fit says so.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(method="1s", optimizer=stay, compute_hessian=False, **options)


def solve_at(pyblp: ModuleType, problem: Any, **parameters: Any) -> Any:
    """pyblp's one-step results at the given parameters, evaluated, not optimized."""
    return problem.solve(**parameters, method="1s", optimization=pyblp.Optimization("return"))


def q5_model(
    products: pd.DataFrame,
    agents: pd.DataFrame,
    formula: str = Q5_FORMULA,
    random: str = "0 + mushy + prices",
    **options: Any,
) -> BLPRandomCoefficients:
    """Exercise 2, question 5: σ on prices, Π of mushy and prices on log income, two-way effects.

    ``formula`` swaps the instruments (question 6 adds a fifth), ``random`` the characteristics
    with random coefficients (exercise 3 adds a constant); ``options`` go to ``from_formula``
    (threads, chunk sizes, ...).
    """
    return BLPRandomCoefficients.from_formula(
        formula,
        products,
        absorb=FIXED_EFFECTS,
        random=random,
        demographics="0 + log_income",
        agent_data=agents,
        **options,
    )


def q5_problem(
    pyblp: ModuleType,
    products: pd.DataFrame,
    agents: pd.DataFrame,
    random: str = "0 + mushy + prices",
) -> Any:
    """pyblp's problem of :func:`q5_model` (instruments: every ``demand_instruments`` column)."""
    return pyblp.Problem(
        (pyblp.Formulation("0 + prices", absorb=FIXED_EFFECTS), pyblp.Formulation(random)),
        products,
        pyblp.Formulation("0 + log_income"),
        agents,
    )


def nevo_model(
    products: pd.DataFrame, agents: pd.DataFrame, random: str = "0 + prices", **options: Any
) -> BLPRandomCoefficients:
    """Nevo's cereal demand with product effects, 20 excluded instruments, random ``random``.

    With ``nesting_ids`` in ``products`` the model is RCNL; ``options`` go to ``from_formula``
    (demographics, rc_types, ...).
    """
    return BLPRandomCoefficients.from_formula(
        NEVO_FORMULA,
        products,
        absorb="C(product_ids)",
        random=random,
        agent_data=agents,
        **options,
    )


def nevo_problem(
    pyblp: ModuleType,
    products: pd.DataFrame,
    agents: pd.DataFrame,
    random: str = "0 + prices",
    demographics: str | None = None,
    **options: Any,
) -> Any:
    """pyblp's problem of :func:`nevo_model` (``agents`` with the node columns pyblp reads)."""
    return pyblp.Problem(
        (pyblp.Formulation("0 + prices", absorb="C(product_ids)"), pyblp.Formulation(random)),
        products,
        None if demographics is None else pyblp.Formulation(demographics),
        agents,
        **options,
    )


def simulated_economy(
    markets: int,
    products: int,
    firms: int,
    *,
    beta: dict[str, float],
    sigma: np.ndarray,
    draws: int,
    seed: int,
) -> SimulationResults:
    """A random-coefficients economy with :data:`SIMULATED_SUPPLY`, prices and shares solved.

    Demand ``1 + prices + x`` with random coefficients on prices and x (Halton nodes), a cost
    shifter ``w``; the results carry the differentiation instruments (``diff_*``) and agents.
    """
    data = build_id_data(T=markets, J=products, F=firms)
    rng = np.random.default_rng(seed)
    data["x"] = rng.standard_normal(len(data))
    data["w"] = rng.uniform(size=len(data))
    simulation = Simulation(
        data,
        "1 + prices + x",
        beta,
        random="0 + prices + x",
        sigma=sigma,
        integration=Integration("halton", draws, seed=seed),
        **SIMULATED_SUPPLY,
        seed=seed,
    )
    return simulation.replace_endogenous(instruments="differentiation")


def finite_difference_gradient(
    objective: Any, theta: np.ndarray, steps: np.ndarray | None = None
) -> np.ndarray:
    """Central differences of ``objective.evaluate(θ).objective``.

    ``steps`` defaults to 1e-5 max(1, |θ_p|) per parameter.
    """
    if steps is None:
        steps = 1e-5 * np.maximum(1.0, np.abs(theta))
    numeric = np.zeros(theta.size)
    for p, step in enumerate(steps):
        up, down = theta.copy(), theta.copy()
        up[p] += step
        down[p] -= step
        numeric[p] = (
            objective.evaluate(up, gradient=False).objective
            - objective.evaluate(down, gradient=False).objective
        ) / (2 * step)
    return numeric


def agent_frame(markets: np.ndarray, *, per_market: int = 20, seed: int = 0) -> pd.DataFrame:
    """``per_market`` equally weighted agents in each market with two standard normal node
    columns and one demographic, ``income``, drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    n = per_market * len(markets)
    return pd.DataFrame(
        {
            "market_ids": np.repeat(markets, per_market),
            "weights": 1.0 / per_market,
            "nodes0": rng.normal(size=n),
            "nodes1": rng.normal(size=n),
            "income": rng.normal(size=n),
        }
    )
