"""Optimal instruments for models with a supply side (issue 21, item 7).

With a cost equation f(p − η) = X3γ + ω, the optimal instruments are pyblp's
Σ⁻¹ E[(∂ξ/∂θ, ∂ω/∂θ) | z], Σ the sample covariance of (ξ̂, ω̂), at the equilibrium prices
with ξ = ω = 0 (method "approximate"). θ holds Σ, Π, ρ and the coefficients of X1 columns that
read prices.

Oracles:

* a closed form: multi-product-firm logit demand with linear costs, where the expected prices
  solve p = c + 1/(−α(1 − s_F)) and ∂ω/∂α = −1/(α²(1 − s_F)) (s_F the firm's share);
* the estimation path on data at the expected prices and shares: a model built there has
  ξ = 0 and ω = 0 at the estimates, and central differences of its δ(θ) and f(p − η(θ)) are
  ∂ξ/∂θ and ∂ω/∂θ (random coefficients with linear and bounded log costs, nested logit);
* a model built by hand with ``from_formula`` and the instrument columns, for ``refit``;
* pyblp 1.3.0 on its BLP automobile tutorial with supply (slow: pyblp takes minutes there),
  evaluated at a fixed θ with ``Optimization('return')``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import simulate_logit_products
from test_supply_estimation import _rc_data, _with_cost_shifter

from blpmodels import (
    BLPInputError,
    BLPLogit,
    BLPNestedLogit,
    BLPRandomCoefficients,
    ConvergenceWarning,
)


def _return_start(fun, theta, bounds):
    """An optimizer that stops at the start: the fit is the model at a chosen θ."""
    return theta


RC_FORMULA = "shares ~ 1 + x + [prices ~ z1 + z2 + I(z1**2)]"
RC_SIGMA = np.diag([0.4, 0.3])
RC_ALPHA = -2.0
RC_COSTS = {
    "linear costs": {},
    "log costs, bounded": {"costs_type": "log", "costs_bounds": (0.5, None)},
}


def _rc_model(products: pd.DataFrame, agents: pd.DataFrame, **keywords) -> BLPRandomCoefficients:
    return BLPRandomCoefficients.from_formula(
        RC_FORMULA,
        products,
        random="0 + prices + x",
        agent_data=agents,
        supply="1 + w",
        supply_instruments="z2 + x",
        **keywords,
    )


@pytest.fixture(scope="module")
def rc_data() -> tuple[pd.DataFrame, pd.DataFrame]:
    return _rc_data()


@pytest.fixture(scope="module")
def logit_products() -> pd.DataFrame:
    return _with_cost_shifter(simulate_logit_products(40, 6, seed=1).drop(columns="nesting_ids"))


@pytest.fixture(scope="module")
def logit_results(logit_products):
    return BLPLogit.from_formula(
        "shares ~ 1 + x + [prices ~ z1 + z2]",
        logit_products,
        supply="1 + w",
        supply_instruments="z2",
    ).fit()


def _rc_results(rc_data, costs: str):
    products, agents = rc_data
    model = _rc_model(products, agents, **RC_COSTS[costs])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a fixed θ is not an optimum
        return model.fit(
            sigma=RC_SIGMA,
            beta={"prices": RC_ALPHA},
            optimizer=_return_start,
            compute_hessian=False,
        )


def _relative_by_column(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """Largest error of each column relative to the column's scale."""
    ours, theirs = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    return np.abs(ours - theirs).max(axis=0) / np.abs(theirs).max(axis=0)


# ------------------------------------------------------------------ closed form (logit)


def test_logit_expected_prices_and_jacobians_equal_the_closed_form(logit_results, logit_products):
    """Logit, firms of two products, linear costs: p* = c + 1/(−α(1 − s_F)) with c = X3γ̂ and
    s = logit shares at δ = X1(p*)β̂; ∂ξ/∂α = −p*; ∂ω/∂α = −1/(α²(1 − s_F))."""
    instruments = logit_results.optimal_instruments()
    params = logit_results.params
    alpha = params["prices"]
    prices = np.asarray(instruments.attrs["expected_prices"])
    frame = logit_products.assign(prices=prices)
    delta = params["Intercept"] + params["x"] * frame["x"] + alpha * prices
    exp_delta = np.exp(delta)
    shares = exp_delta / (1 + exp_delta.groupby(frame["market_ids"]).transform("sum"))
    firm_share = shares.groupby([frame["market_ids"], frame["firm_ids"]]).transform("sum")
    costs = params["gamma[Intercept]"] + params["gamma[w]"] * frame["w"]
    np.testing.assert_allclose(prices, costs + 1 / (-alpha * (1 - firm_share)), rtol=1e-10, atol=0)
    np.testing.assert_allclose(instruments.attrs["expected_shares"], shares, rtol=1e-10)
    xi_jacobian = np.asarray(instruments.attrs["xi_jacobian"]["prices"])
    omega_jacobian = np.asarray(instruments.attrs["omega_jacobian"]["prices"])
    np.testing.assert_allclose(xi_jacobian, -prices, rtol=1e-12)
    np.testing.assert_allclose(
        omega_jacobian, -1 / (alpha**2 * (1 - firm_share)), rtol=1e-8, atol=0
    )
    # Σ⁻¹ from the sample covariance of (ξ̂, ω̂) mixes the two Jacobians (pyblp's scaling).
    omega = logit_results.info.steps[-1]["omega"].to_numpy()
    inverse = np.linalg.inv(np.cov(np.asarray(logit_results.resid), omega))
    np.testing.assert_allclose(
        instruments["optimal_prices"],
        inverse[0, 0] * xi_jacobian + inverse[0, 1] * omega_jacobian,
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        instruments["optimal_supply_prices"],
        inverse[1, 0] * xi_jacobian + inverse[1, 1] * omega_jacobian,
        rtol=1e-12,
    )
    assert instruments.attrs["demand_columns"] == ["optimal_prices", "supply_shifter_w"]
    assert instruments.attrs["supply_columns"] == ["optimal_supply_prices", "demand_shifter_x"]
    np.testing.assert_array_equal(instruments["supply_shifter_w"], logit_products["w"])
    np.testing.assert_array_equal(instruments["demand_shifter_x"], logit_products["x"])


# ------------------------------------------------------------------ the estimation path


def _finite_difference_jacobians(model, parameters, theta, prices, log_costs):
    """Central differences of ξ(θ) = δ(θ) − p·α and ω(θ) = f(p − η(θ)) (β, γ fixed) through
    the estimation objective of a model whose data are the expected prices and shares."""
    objective = model.objective_function(parameters)
    n_rc = parameters.size

    def at(values):
        evaluation = objective.evaluate(values, gradient=False)
        assert evaluation.success
        costs = prices - evaluation.markups
        price_terms = prices * values[n_rc] if values.size > n_rc else 0.0
        return evaluation.delta - price_terms, np.log(costs) if log_costs else costs

    xi_jacobian = np.zeros((prices.size, theta.size))
    omega_jacobian = np.zeros_like(xi_jacobian)
    for k in range(theta.size):
        step = 1e-5 * max(1.0, abs(theta[k]))
        up, down = theta.copy(), theta.copy()
        up[k] += step
        down[k] -= step
        (xi_up, omega_up), (xi_down, omega_down) = at(up), at(down)
        xi_jacobian[:, k] = (xi_up - xi_down) / (2 * step)
        omega_jacobian[:, k] = (omega_up - omega_down) / (2 * step)
    return xi_jacobian, omega_jacobian, at(theta)


@pytest.mark.parametrize("costs", list(RC_COSTS))
def test_rc_jacobians_equal_finite_differences_at_the_expected_prices(rc_data, costs):
    """Random coefficients on prices and x, α in θ: at the expected prices and shares a model
    of those data has ξ = 0 and ω = 0 at the estimates, and its δ(θ) and f(p − η(θ)) have
    the instruments' Jacobians (measured 2026-12-07: 1e-10 relative per column)."""
    products, agents = rc_data
    results = _rc_results(rc_data, costs)
    instruments = results.optimal_instruments()
    prices = np.asarray(instruments.attrs["expected_prices"])
    shares = np.asarray(instruments.attrs["expected_shares"])
    model = _rc_model(products.assign(prices=prices, shares=shares), agents, **RC_COSTS[costs])
    names = list(instruments.attrs["xi_jacobian"])
    assert names == ["sigma[prices,prices]", "sigma[x,x]", "prices"]
    theta = results.params[names].to_numpy()
    xi_numeric, omega_numeric, (xi, transformed) = _finite_difference_jacobians(
        model, model.parameters(sigma=RC_SIGMA), theta, prices, "costs_type" in RC_COSTS[costs]
    )
    # ξ = 0 and ω = 0 at the expected prices: δ − αp = X1β̂ without prices, f(c) = X3γ̂.
    params = results.params
    np.testing.assert_allclose(xi, params["Intercept"] + params["x"] * products["x"], atol=1e-9)
    costs_fitted = params["gamma[Intercept]"] + params["gamma[w]"] * products["w"]
    np.testing.assert_allclose(transformed, costs_fitted, atol=1e-9)
    xi_error = _relative_by_column(pd.DataFrame(instruments.attrs["xi_jacobian"]), xi_numeric)
    omega_error = _relative_by_column(
        pd.DataFrame(instruments.attrs["omega_jacobian"]), omega_numeric
    )
    assert xi_error.max() < 1e-7, xi_error
    assert omega_error.max() < 1e-7, omega_error


def test_nested_logit_jacobians_equal_finite_differences():
    """Nested logit with supply: ρ and α in θ (the nested markup derivative is taken along
    the exact direction of δ); checked against central differences of the estimation path."""
    products = _with_cost_shifter(simulate_logit_products(30, 6, seed=1, rho=0.5, drop=0.3))
    formula = "shares ~ 1 + x + [prices ~ z1 + z2 + nest_count + nest_z1]"
    keywords = {"supply": "1 + w", "supply_instruments": "z2"}
    results = BLPNestedLogit.from_formula(formula, products, **keywords).fit()
    instruments = results.optimal_instruments()
    assert list(instruments.attrs["xi_jacobian"]) == ["rho", "prices"]
    prices = np.asarray(instruments.attrs["expected_prices"])
    shares = np.asarray(instruments.attrs["expected_shares"])
    at_expected = products.assign(prices=prices, shares=shares)
    theta = np.array([results.params["rho"], results.params["prices"]])
    # The nested logit's supply fit is the random-coefficients estimator with one agent.
    from blpmodels.data.agents import AgentDesign

    design = BLPNestedLogit.from_formula(formula, at_expected, **keywords)
    labels = design.design.layout.market_labels
    agents = AgentDesign.build(
        pd.DataFrame({"market_ids": labels, "weights": 1.0}), labels, max_nodes=0
    )
    model = BLPRandomCoefficients._from_design(
        design.design,
        agents=agents,
        rc_types={},
        supply=design.supply,
        chunk_size=None,
        threads=None,
    )
    parameters = model.parameters(sigma=0, rho=0.5)
    xi_numeric, omega_numeric, _ = _finite_difference_jacobians(
        model, parameters, theta, prices, False
    )
    xi_error = _relative_by_column(pd.DataFrame(instruments.attrs["xi_jacobian"]), xi_numeric)
    omega_error = _relative_by_column(
        pd.DataFrame(instruments.attrs["omega_jacobian"]), omega_numeric
    )
    assert xi_error.max() < 1e-6, xi_error
    assert omega_error.max() < 1e-6, omega_error


# ------------------------------------------------------------------ refit and to_model


def test_refit_with_supply_equals_the_model_built_by_hand(logit_results, logit_products):
    """to_model puts each column in its block (demand: Σ⁻¹-mixed ∂ξ/∂α and the cost shifter
    w; supply: the mixed ∂ω/∂α and the demand shifter x); refit is the fit of the model one
    would write by hand with those instruments."""
    instruments = logit_results.optimal_instruments()
    model = instruments.to_model()
    assert model.design.instruments.names == ("optimal_prices", "supply_shifter_w")
    assert model.supply.instruments.names == ("optimal_supply_prices", "demand_shifter_x")
    refit = instruments.refit()
    by_hand = BLPLogit.from_formula(
        "shares ~ 1 + x + [prices ~ optimal_prices + supply_shifter_w]",
        logit_products.join(instruments),
        supply="1 + w",
        supply_instruments="optimal_supply_prices + demand_shifter_x",
    ).fit(beta={"prices": float(logit_results.params["prices"])})
    assert refit.info.convergence["converged"]
    np.testing.assert_allclose(refit.params, by_hand.params, rtol=1e-7)
    np.testing.assert_allclose(refit.bse, by_hand.bse, rtol=1e-6)
    # Just identified on the demand side; the estimates moved from the first fit's.
    assert refit.info.n_moments == 4 + 4
    assert not np.allclose(refit.params, logit_results.params, rtol=1e-4)


def test_rc_refit_with_supply_starts_from_the_estimates(rc_data):
    """Random coefficients with supply: refit starts at (Σ̂, α̂) and matches the model built
    by hand; a subset of columns keeps its blocks."""
    products, agents = rc_data
    results = _rc_results(rc_data, "linear costs")
    instruments = results.optimal_instruments()
    demand_columns = instruments.attrs["demand_columns"]
    supply_columns = instruments.attrs["supply_columns"]
    refit = instruments.refit(optimizer="l-bfgs-b")
    by_hand = BLPRandomCoefficients.from_formula(
        f"shares ~ 1 + x + [prices ~ {' + '.join(demand_columns)}]",
        products.join(instruments),
        random="0 + prices + x",
        agent_data=agents,
        supply="1 + w",
        supply_instruments=" + ".join(supply_columns),
    ).fit(sigma=RC_SIGMA, beta={"prices": RC_ALPHA}, optimizer="l-bfgs-b")
    np.testing.assert_allclose(refit.params, by_hand.params, rtol=1e-6, atol=1e-8)
    subset = instruments.to_model(columns=[*demand_columns[:3], supply_columns[0]])
    assert subset.design.instruments.names == tuple(demand_columns[:3])
    assert subset.supply.instruments.names == (supply_columns[0],)


# ------------------------------------------------------------------ draws and bad input


def test_supply_draws_are_reproducible_and_average_realizations(logit_results):
    """'normal' and 'empirical' draw (ξ, ω) jointly; a seed fixes them, and the expected
    prices are the average of the realizations' equilibrium prices (not those at zero)."""
    approximate = logit_results.optimal_instruments()
    for method in ("normal", "empirical"):
        first = logit_results.optimal_instruments(method, draws=3, seed=4)
        again = logit_results.optimal_instruments(method, draws=3, seed=4)
        pd.testing.assert_frame_equal(first, again)
        assert first.attrs["draws"] == 3 and first.attrs["method"] == method
        moved = np.subtract(first.attrs["expected_prices"], approximate.attrs["expected_prices"])
        assert np.abs(moved).max() > 1e-6


def test_given_expected_prices_are_used_as_they_are(logit_results, logit_products):
    """expected_prices replace the equilibrium (as in pyblp): the Jacobians are then those at
    the given prices, here the observed ones (∂ξ/∂α = −p)."""
    observed = logit_products["prices"]
    instruments = logit_results.optimal_instruments(expected_prices=observed)
    np.testing.assert_array_equal(instruments.attrs["expected_prices"], observed)
    np.testing.assert_allclose(instruments.attrs["xi_jacobian"]["prices"], -observed)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"expected_prices": np.ones(3)}, "expected_prices must have shape"),
        ({"expected_prices": np.full(240, np.nan)}, "non-finite"),
        ({"draws": 5}, "draws is only used"),
        ({"method": "exact"}, "method must be one of"),
    ],
)
def test_bad_input_with_supply_is_named(logit_results, options, match):
    with pytest.raises(BLPInputError, match=match):
        logit_results.optimal_instruments(**options)


def test_to_model_with_supply_refuses_unknown_columns(logit_results):
    instruments = logit_results.optimal_instruments()
    with pytest.raises(BLPInputError, match="columns must name instrument columns"):
        instruments.to_model(columns=["optimal_supply_nothing"])


# ------------------------------------------------------------------ pyblp (BLP autos)


#: pyblp's moment order in ours (the refit of the autos): pyblp puts each block's excluded
#: instruments before its exogenous columns (ours: 5 X1 + 10 demand instruments, 6 X3 + 9).
PYBLP_MOMENTS = [*range(5, 15), *range(5), *range(21, 30), *range(15, 21)]


@pytest.mark.slow
@pytest.mark.data
def test_autos_instruments_and_refit_equal_pyblps(pyblp):
    """pyblp's BLP tutorial with supply at a fixed θ near its optimum (both libraries with W
    updated at θ; pyblp's ``Optimization('return')``), then
    ``compute_optimal_instruments('approximate')`` in both.

    Measured 2026-12-07, relative to each column's largest value: expected prices 5.7e-9,
    expected shares 5.8e-10, E[∂ξ/∂θ] 1.4e-9, E[∂ω/∂θ] 2.8e-8, demand instruments 2.2e-9,
    supply instruments 2.4e-8. What limits them is pyblp's equilibrium: its ζ iteration stops
    at steps of 1e-12 where |p − c − ζ(p)| is still 3.1e-8 (ours 3.5e-11), so its prices are
    off by up to 2.3e-7; checked at 1e-8 (prices, shares, ∂ξ/∂θ, demand instruments) and 1e-7
    (∂ω/∂θ and the supply instruments, which difference markups). Without the ζ check of the
    expected prices, market 1983 ends at a spurious solution (price 5,064 for a product with
    share 2.5e-15; pyblp 11.38) and these fail.

    The refit (ours, two steps from θ, l-bfgs-b to gtol 1e-8) is where pyblp's
    ``to_problem()`` objective is stationary: pyblp at our refit's θ with our final W has our
    objective (measured 3.6e-10 relative, checked at 1e-8), β and γ (9.9e-10, checked at
    1e-8) and a gradient of 1.0e-8 (ours 1.1e-8; 1.7 at the first fit's θ; checked at 1e-6).
    The instruments differ by up to 2.4e-8, which moves none of these by more than 1e-9.
    pyblp takes minutes here, hence slow.
    """
    from blpmodels.datasets import load_blp
    from test_supply_autos import (
        CLUSTERS,
        FREE_SIGMA,
        NEAR_PI,
        NEAR_SIGMA,
        autos_model,
        pyblp_solve,
    )

    products, agents = load_blp()
    oracle = pyblp_solve(
        pyblp,
        products,
        agents,
        NEAR_SIGMA,
        NEAR_PI,
        method="1s",
        optimization=pyblp.Optimization("return"),
    )
    theirs = oracle.compute_optimal_instruments(method="approximate")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fixed θ: the projected gradient is not zero
        results = autos_model(products, agents).fit(
            NEAR_SIGMA,
            NEAR_PI,
            initial_update=True,
            cov_type="clustered",
            cov_kwds=CLUSTERS,
            optimizer=_return_start,
            compute_hessian=False,
        )
    ours = results.optimal_instruments()
    n = len(products)
    checks = {
        "expected prices": (ours.attrs["expected_prices"], theirs.expected_prices, 1e-8),
        "expected shares": (ours.attrs["expected_shares"], theirs.expected_shares, 1e-8),
        "xi Jacobian": (
            pd.DataFrame(ours.attrs["xi_jacobian"]),
            theirs.expected_xi_by_theta_jacobian,
            1e-8,
        ),
        "omega Jacobian": (
            pd.DataFrame(ours.attrs["omega_jacobian"]),
            theirs.expected_omega_by_theta_jacobian,
            1e-7,
        ),
        "demand": (ours[ours.attrs["demand_columns"][:6]], theirs.demand_instruments, 1e-8),
        "supply": (ours[ours.attrs["supply_columns"][:6]], theirs.supply_instruments, 1e-7),
    }
    for label, (mine, pyblps, tolerance) in checks.items():
        pyblps = np.asarray(pyblps).reshape(n, -1)
        error = _relative_by_column(np.asarray(mine).reshape(n, -1), pyblps)
        assert error.max() < tolerance, (label, error)
    np.testing.assert_allclose(
        ours.attrs["inverse_covariance"], theirs.inverse_covariance_matrix, rtol=1e-9
    )

    refit = ours.refit(optimizer="l-bfgs-b", optimizer_options={"gtol": 1e-8})
    assert refit.info.convergence["converged"]
    names = [name for name in refit.params.index if name.startswith(("sigma", "pi"))]
    sigma = np.zeros((6, 6))
    sigma[FREE_SIGMA, FREE_SIGMA] = refit.params[names[:-1]].to_numpy()
    pi = np.c_[[0, refit.params[names[-1]], 0, 0, 0, 0]]
    W = np.asarray(refit.info.W)[np.ix_(PYBLP_MOMENTS, PYBLP_MOMENTS)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # importance-sampling weights do not sum to one
        at_ours = theirs.to_problem().solve(
            sigma,
            pi,
            W=W,
            method="1s",
            costs_bounds=(0.001, None),
            optimization=pyblp.Optimization("return"),
        )
    assert abs(float(np.squeeze(at_ours.objective)) / refit.objective - 1) < 1e-8
    linear = np.concatenate([np.ravel(at_ours.beta), np.ravel(at_ours.gamma)])
    np.testing.assert_allclose(refit.params.iloc[: linear.size], linear, rtol=1e-8)
    assert np.abs(at_ours.gradient).max() < 1e-6
