"""Fits that stop on a bound (σ = 0) must not say "converged" above the best objective.

σ = 0 is a stationary point of the BLP objective when the integration nodes are symmetric
(Gauss–Hermite here): q(σ) = f(σ²). An optimizer whose step is projected onto the bound σ ≥ 0
sees a zero projected gradient there and stops. With Halton nodes the gradient at σ = 0 is not
zero, and σ = 0 can be a local minimum on the bound far above the objective a little way in.
The sweep fits three simulated economies from five starting values up to σ₀ = 20 with every
optimizer at its default options (before the bound check, slsqp, l-bfgs-b and nelder-mead
stopped at σ = 0 with converged=True at objectives up to 7× the best; bfgs, which cannot
impose bounds, ended at a negative σ without a word) and requires that a fit claiming
convergence without a warning reaches the best objective any of them found inside the
bounds. The oracle is the sweep itself: the lowest objective of 30 fits per problem.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from blpmodels import BLPRandomCoefficients, ConvergenceWarning, Integration
from blpmodels.estimation.estimator import MAX_SADDLE_ESCAPES
from blpmodels.estimation.saddles import check_bound_saddles
from blpmodels.simulation import Simulation, build_id_data

OPTIMIZERS = ["gauss-newton", "trust-constr", "l-bfgs-b", "slsqp", "bfgs", "nelder-mead"]
STARTS = [0.1, 1.0, 5.0, 10.0, 20.0]
#: (seed, true σ on x, integration): economies where some optimizer stopped at σ = 0 (or, for
#: bfgs, at a negative σ) claiming convergence, before the bound check.
PROBLEMS = [(1, 0.5, "product"), (2, 1.0, "product"), (1, 0.5, "halton")]


def _economy(seed: int, sigma: float, rule: str) -> BLPRandomCoefficients:
    """20 markets × 5 products, a random coefficient on x, Bertrand prices, cost shifter w."""
    data = build_id_data(T=20, J=5, F=2)
    rng = np.random.default_rng(seed)
    data["x"] = rng.standard_normal(len(data))
    data["w"] = rng.uniform(size=len(data))
    integration = (
        Integration("halton", 50, seed=seed) if rule == "halton" else Integration("product", 7)
    )
    solved = Simulation(
        data,
        "1 + prices + x",
        {"Intercept": 2.0, "prices": -3.0, "x": 1.0},
        random="0 + x",
        sigma=sigma,
        integration=integration,
        supply="1 + w",
        gamma={"Intercept": 1.0, "w": 1.0},
        xi_variance=0.2,
        omega_variance=0.1,
        correlation=0.7,
        seed=seed,
    ).replace_endogenous(instruments="differentiation")
    products = solved.products
    instruments = " + ".join(column for column in products if column.startswith("diff_"))
    return BLPRandomCoefficients.from_formula(
        f"shares ~ 1 + x + [prices ~ w + {instruments}]",
        products,
        random="0 + x",
        agent_data=solved.agent_data,
    )


def _text(summary: object) -> str:
    """A summary's text with its notes' line wrapping undone."""
    return " ".join(str(summary).split())


def _fit(model: BLPRandomCoefficients, **options) -> tuple[object, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = model.fit(**options)
    flagged = [
        str(warning.message)
        for warning in caught
        if issubclass(warning.category, (ConvergenceWarning, UserWarning))
    ]
    return results, flagged


@pytest.mark.parametrize(("seed", "sigma", "rule"), PROBLEMS)
def test_a_converged_fit_reaches_the_best_objective_or_warns(seed, sigma, rule) -> None:
    model = _economy(seed, sigma, rule)
    rows = []
    for optimizer in OPTIMIZERS:
        for start in STARTS:
            results, flagged = _fit(model, sigma=start, optimizer=optimizer)
            rows.append(
                {
                    "optimizer": optimizer,
                    "start": start,
                    "objective": float(results.objective),
                    "sigma": float(np.asarray(results.params)[-1]),
                    "converged": bool(results.info.convergence["converged"]),
                    "flagged": bool(flagged),
                }
            )
    fits = pd.DataFrame(rows)
    best = fits.loc[fits["sigma"] >= 0, "objective"].min()
    above = fits["objective"] > best + 1e-6 * max(1.0, best)
    silent = fits[fits["converged"] & ~fits["flagged"] & above]
    assert silent.empty, f"best {best:.6g}; converged without a warning above it:\n{silent}"
    # The check does its job, rather than every optimizer avoiding the bound by luck.
    assert (fits["objective"] <= best + 1e-6 * max(1.0, best)).sum() >= 20


def test_a_fit_stopped_on_the_bound_starts_again_and_says_so() -> None:
    """slsqp from σ₀ = 10 stops at σ = 0 (objective 8.96 against 2.05) before the check."""
    model = _economy(1, 1.0, "product")
    results, _ = _fit(model, sigma=10.0, optimizer="slsqp")
    convergence = results.info.convergence
    checks = convergence["bound_checks"]
    assert list(checks.columns[:3]) == ["step", "start", "parameter"]
    moved = checks[checks["lower_inside"]]
    assert list(moved["parameter"]) == ["sigma[x,x]"]
    assert moved["objective"].iloc[0] > 4 * float(results.objective)
    assert "started again after stopping on the bound of ['sigma[x,x]']" in convergence["message"]
    assert "Bounds: the optimizer stopped on the bound" in _text(results.summary())
    assert float(np.asarray(results.params)[-1]) > 0.5
    # A fit ends: each restart is one more optimization, at most MAX_SADDLE_ESCAPES of them.
    assert len(checks) <= MAX_SADDLE_ESCAPES + 1


class _Function:
    """q(θ) as an objective: ``evaluate`` returns what the check reads."""

    def __init__(self, value, gradient):
        self.value, self.gradient, self.calls = value, gradient, 0

    def evaluate(self, theta, gradient=True):
        self.calls += 1
        return SimpleNamespace(
            theta=theta,
            objective=float(self.value(theta)),
            gradient=self.gradient(theta),
            success=True,
        )


@pytest.mark.parametrize(
    ("value", "gradient", "point", "moved"),
    [
        # A minimum on the bound (q rises into the feasible side): kept.
        (lambda t: (t[0] + 1) ** 2, lambda t: 2 * (t + 1), [0.0], False),
        # A saddle at the stationary point θ = 0 of q = (θ² − 1)²: left.
        (lambda t: (t[0] ** 2 - 1) ** 2, lambda t: 4 * t * (t**2 - 1), [0.0], True),
        # Within ON_BOUND of the upper bound, where q falls inward: left downward.
        (lambda t: (t[0] - 0.5) ** 2, lambda t: 2 * (t - 0.5), [3.0 - 1e-7], True),
    ],
)
def test_bound_check_moves_off_only_where_the_objective_is_lower_inside(
    value, gradient, point, moved
) -> None:
    function = _Function(value, gradient)
    theta = np.array(point)
    check = check_bound_saddles(
        function, function.evaluate(theta), ["θ"], np.zeros(1), np.full(1, 3.0), np.ones(1)
    )
    assert (check.start is not None) == moved
    assert check.moved_off == (["θ"] if moved else [])
    record = check.records[0]
    assert record["trial_objective"] == pytest.approx(
        min(value(np.array([np.clip(point[0] + step, 0, 3)])) for step in (0.1, 1.0))
        if point[0] < 1
        else min(value(np.array([point[0] - step])) for step in (0.1, 1.0))
    )
    assert function.calls == 3  # the point itself and two steps inside


def test_no_parameter_on_a_bound_costs_no_evaluation() -> None:
    function = _Function(lambda t: (t[0] - 1) ** 2, lambda t: 2 * (t - 1))
    check = check_bound_saddles(
        function, function.evaluate(np.ones(1)), ["θ"], np.zeros(1), np.full(1, 3.0), np.ones(1)
    )
    assert check.records == [] and check.start is None and function.calls == 1


def _return_start(fun, theta0, bounds):
    return theta0


def test_several_starts_are_reported_and_distinct_optima_warn() -> None:
    model = _economy(1, 1.0, "product")
    with pytest.warns(ConvergenceWarning, match=r"ended at 3 distinct optima: the fit reports"):
        results = model.fit(sigma=1.0, optimizer=_return_start, starts=3, seed=0)
    starts = results.info.starts
    assert len(starts) == 3
    assert {"start sigma[x,x]", "sigma[x,x]", "objective", "converged", "status"} <= set(starts)
    assert float(results.objective) == pytest.approx(starts["objective"].min(), rel=1e-12)
    summary = results.info.convergence["starts_summary"]
    lowest, *others = sorted(starts["objective"])
    assert summary.startswith(f"3 starts: 1 reached {lowest:.6g}, 1 stopped at {others[0]:.6g}")
    assert f"Starting values: {summary}." in _text(results.summary())


def test_one_start_has_no_start_table() -> None:
    results, _ = _fit(_economy(2, 1.0, "product"), sigma=1.0)
    assert results.info.starts is None
    assert results.info.convergence["starts_summary"] is None


def _to_lower_bounds(fun, theta0, bounds):
    """An optimizer that always returns the lower bounds (σ = 0)."""
    return np.array([lower for lower, _ in bounds], dtype=float)


@pytest.mark.parametrize("tolerance", [None, 1e-8])
def test_a_fit_that_keeps_returning_to_the_bound_is_not_converged(monkeypatch, tolerance) -> None:
    """Restarts are bounded: after MAX_SADDLE_ESCAPES of them, an optimizer that stops on the
    saddle again leaves the fit unconverged with a warning naming the parameter, also when
    the zero gradient there meets the optimizer's gradient tolerance (which otherwise counts
    as convergence)."""
    import blpmodels.estimation.estimator as estimator

    monkeypatch.setattr(estimator, "gradient_tolerance", lambda *args: tolerance)
    model = _economy(1, 1.0, "product")
    with pytest.warns(ConvergenceWarning, match=r"stopped on the bound of \['sigma\[x,x\]'\] 4"):
        results = model.fit(sigma=1.0, optimizer=_to_lower_bounds)
    convergence = results.info.convergence
    assert not convergence["converged"]
    checks = convergence["bound_checks"]
    assert len(checks) == MAX_SADDLE_ESCAPES + 1 and checks["lower_inside"].all()
    assert float(np.asarray(results.params)[-1]) == 0.0
