"""Supply-side estimation: demand stacked with the cost equation f(p − η) = X3γ + ω.

Oracles: pyblp 1.3.0 on the same data and settings (logit and nested logit fitted by both, the
random-coefficients objective, gradient, β and γ at the same θ, and standard errors at our
estimates), central finite differences of the objective for the analytic gradient (price
coefficient in θ, lognormal coefficients, log costs with bounds, nests), and exercise 2
supplemental 6's numbers.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from builders import finite_difference_gradient, q5_model
from conftest import simulate_logit_products

from blpmodels import (
    BLPInputError,
    BLPLogit,
    BLPNestedLogit,
    BLPRandomCoefficients,
    ConvergenceWarning,
    FixedPointError,
    Integration,
    build_integration,
)


def _with_cost_shifter(products: pd.DataFrame, seed: int = 5) -> pd.DataFrame:
    """Add ``w``, a cost shifter correlated with the price shifter ``z1``."""
    rng = np.random.default_rng(seed)
    return products.assign(w=products["z1"] + 0.3 * rng.normal(size=len(products)))


@pytest.fixture(scope="module")
def logit_products() -> pd.DataFrame:
    products = simulate_logit_products(40, 6, seed=1).drop(columns="nesting_ids")
    return _with_cost_shifter(products)


@pytest.fixture(scope="module")
def nested_products() -> pd.DataFrame:
    return _with_cost_shifter(simulate_logit_products(40, 6, seed=1, rho=0.5, drop=0.3))


def _pyblp_frame(products: pd.DataFrame, demand: list[str], supply: list[str]) -> pd.DataFrame:
    columns = {f"demand_instruments{k}": products[name] for k, name in enumerate(demand)}
    columns.update({f"supply_instruments{k}": products[name] for k, name in enumerate(supply)})
    return products.assign(**columns)


def _assert_close(ours, theirs, rtol: float, label: str) -> None:
    ours, theirs = np.asarray(ours, dtype=float).ravel(), np.asarray(theirs, dtype=float).ravel()
    scale = np.maximum(np.abs(theirs), 1e-8)
    error = np.abs(ours - theirs) / scale
    assert error.max() < rtol, f"{label}: relative error {error.max():.2e}\n{ours}\n{theirs}"


# ------------------------------------------------------------------ logit and nested logit


def test_logit_with_supply_matches_pyblp(logit_products, pyblp):
    """α joins θ (markups depend on it); β, γ, objective and SEs equal pyblp's fit."""
    results = BLPLogit.from_formula(
        "shares ~ 1 + x + [prices ~ z1 + z2]",
        logit_products,
        supply="1 + w",
        supply_instruments="z2",
    ).fit()
    assert list(results.params.index) == [
        "Intercept",
        "x",
        "prices",
        "gamma[Intercept]",
        "gamma[w]",
    ]
    assert results.info.convergence["converged"]
    assert type(results.model) is BLPLogit and results.model.supply is not None
    assert "BLPLogit Results" in str(results.summary())
    frame = _pyblp_frame(logit_products, ["z1", "z2"], ["z2"])
    problem = pyblp.Problem(
        (pyblp.Formulation("1 + x + prices"), None, pyblp.Formulation("1 + w")), frame
    )
    oracle = problem.solve(
        beta=[None, None, -1.0],
        method="1s",
        optimization=pyblp.Optimization("l-bfgs-b", {"gtol": 1e-12}),
    )
    _assert_close(results.params.iloc[:3], oracle.beta, 1e-6, "beta")
    _assert_close(results.params.iloc[3:], oracle.gamma, 1e-6, "gamma")
    _assert_close(results.bse.iloc[:3], oracle.beta_se, 1e-5, "beta SE")
    _assert_close(results.bse.iloc[3:], oracle.gamma_se, 1e-5, "gamma SE")
    _assert_close(results.info.objective, oracle.objective, 1e-8, "objective")


NESTED_FORMULA = "shares ~ 1 + x + [prices ~ z1 + z2 + nest_count + nest_z1]"


def _nested_problem(pyblp, products):
    frame = _pyblp_frame(products, ["z1", "z2", "nest_count", "nest_z1"], ["z2"])
    return pyblp.Problem(
        (pyblp.Formulation("1 + x + prices"), None, pyblp.Formulation("1 + w")), frame
    )


def test_nested_logit_with_supply_matches_pyblp(nested_products, pyblp):
    """ρ and α are nonlinear with a supply side; started from the closed-form nested logit.

    Our fit equals pyblp's fit, and pyblp evaluated at our estimates gives the same objective,
    β, γ, SEs and a zero gradient.
    """
    results = BLPNestedLogit.from_formula(
        NESTED_FORMULA, nested_products, supply="1 + w", supply_instruments="z2"
    ).fit()
    assert list(results.params.index[-3:]) == ["gamma[Intercept]", "gamma[w]", "rho"]
    assert results.info.convergence["converged"]
    problem = _nested_problem(pyblp, nested_products)
    params, bse = results.params, results.bse
    oracle = problem.solve(
        rho=[params["rho"]],
        beta=[None, None, params["prices"]],
        method="1s",
        optimization=pyblp.Optimization("return"),
    )
    _assert_close(params.iloc[:3], oracle.beta, 1e-9, "beta")
    _assert_close(params.iloc[3:5], oracle.gamma, 1e-9, "gamma")
    _assert_close(results.info.objective, oracle.objective, 1e-9, "objective")
    assert np.abs(oracle.gradient).max() < 1e-5, oracle.gradient
    expected_se = np.r_[oracle.beta_se.ravel(), oracle.gamma_se.ravel(), oracle.rho_se.ravel()]
    _assert_close(bse, expected_se, 1e-7, "SE")
    fitted = problem.solve(
        rho=[0.3],
        beta=[None, None, -1.0],
        method="1s",
        optimization=pyblp.Optimization("l-bfgs-b", {"gtol": 1e-12}),
    )
    _assert_close(params.iloc[:3], fitted.beta, 1e-5, "beta of pyblp's fit")
    _assert_close(params["rho"], fitted.rho, 1e-5, "rho of pyblp's fit")


def _nested_logit_costs(products, delta, alpha, rho) -> np.ndarray:
    """Costs p + (Ω ⊙ ∂s/∂pᵀ)⁻¹ s with shares in log space and ∂s/∂p by central differences."""
    from scipy.special import logsumexp

    def shares(mean_utility, nests):
        log_inclusive = {h: logsumexp(mean_utility[nests == h] / (1 - rho[h])) for h in set(nests)}
        log_total = logsumexp([0.0, *((1 - rho[h]) * v for h, v in log_inclusive.items())])
        scale = 1 - rho[nests]
        inclusive = np.array([log_inclusive[h] for h in nests])
        return np.exp(mean_utility / scale - inclusive + scale * inclusive - log_total)

    costs = []
    for _, market in products.groupby("market_ids", sort=False):
        rows = market.index.to_numpy()
        nests, firms = market["nesting_ids"].to_numpy(), market["firm_ids"].to_numpy()
        utility = delta[rows]
        derivative = np.empty((rows.size, rows.size))
        for k in range(rows.size):
            step = np.zeros(rows.size)
            step[k] = 1e-6 * alpha
            derivative[:, k] = (
                shares(utility + step, nests) - shares(utility - step, nests)
            ) / 2e-6
        ownership = (firms[:, None] == firms[None, :]).astype(float)
        markups = -np.linalg.solve(ownership * derivative.T, shares(utility, nests))
        costs.append(market["prices"].to_numpy() - markups)
    return np.concatenate(costs)


def test_nested_logit_with_supply_per_nest_rho(nested_products, pyblp):
    """One ρ per nest: equal to pyblp at an interior ρ; at the estimates (both ρ on their
    bounds, 0.99 and 0) the costs equal an independent computation in log space.

    There pyblp 1.3.0's costs are off by up to 0.5 (its L-BFGS-B fit stops at objective 15.905
    against our 15.577), so it is no oracle on that bound.
    """
    model = BLPNestedLogit.from_formula(
        NESTED_FORMULA, nested_products, supply="1 + w", supply_instruments="z2"
    )
    problem = _nested_problem(pyblp, nested_products)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fixed = model.fit(
            rho="nest",
            rho_start=[0.4, 0.7],
            beta={"prices": -2.0},
            optimizer=lambda fun, theta0, bounds: theta0,
            compute_hessian=False,
        )
    oracle = problem.solve(
        rho=[0.4, 0.7],
        beta=[None, None, -2.0],
        method="1s",
        optimization=pyblp.Optimization("return"),
    )
    _assert_close(fixed.params.iloc[3:5], oracle.gamma, 1e-9, "gamma")
    _assert_close(fixed.info.objective, oracle.objective, 1e-9, "objective")
    expected_se = np.r_[oracle.beta_se.ravel(), oracle.gamma_se.ravel(), oracle.rho_se.ravel()]
    _assert_close(fixed.bse, expected_se, 1e-7, "SE")

    results = model.fit(rho="nest")
    assert results.info.convergence["converged"]
    rho = results.params[["rho[0]", "rho[1]"]].to_numpy()
    np.testing.assert_array_equal(rho, [0.99, 0.0])
    expected = _nested_logit_costs(
        nested_products.reset_index(drop=True),
        results.delta.to_numpy(),
        results.params["prices"],
        rho,
    )
    np.testing.assert_allclose(results.info.steps[-1]["costs"].to_numpy(), expected, atol=1e-6)
    assert (
        results.info.objective
        < 15.58
        < problem.solve(
            rho=[0.3, 0.3],
            beta=[None, None, -1.0],
            method="1s",
            optimization=pyblp.Optimization("l-bfgs-b", {"gtol": 1e-12}),
        ).objective
    )


def test_logit_supply_costs_are_the_observed_prices_minus_markups(logit_products):
    """The supply step's costs are what results.costs() imputes at the estimates (linear f)."""
    results = BLPLogit.from_formula(
        "shares ~ 1 + x + [prices ~ z1 + z2]", logit_products, supply="1 + w"
    ).fit()
    step = results.info.steps[-1]
    costs = results.costs()
    np.testing.assert_allclose(step["costs"].to_numpy(), costs.to_numpy(), rtol=1e-10)
    # Single-product logit markups are 1/(−α(1 − s_f)) per firm; firms here own two products.
    alpha = results.params["prices"]
    firm_share = logit_products.groupby(["market_ids", "firm_ids"])["shares"].transform("sum")
    closed_form = -1.0 / (alpha * (1.0 - firm_share.to_numpy()))
    np.testing.assert_allclose(step["markups"].to_numpy(), closed_form, rtol=1e-10)
    omega = logit_products["prices"].to_numpy() - closed_form
    X3 = np.column_stack([np.ones(len(logit_products)), logit_products["w"]])
    omega -= X3 @ step["gamma"].to_numpy()
    np.testing.assert_allclose(step["omega"].to_numpy(), omega, atol=1e-10)


# ------------------------------------------------------------------ random coefficients


def _rc_data(seed: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
    products = simulate_logit_products(30, 6, seed=seed, drop=0.2).drop(columns="nesting_ids")
    products = _with_cost_shifter(products)
    products["prices"] = products["prices"] + 3.0  # positive prices for log costs
    agents = build_integration(
        Integration("product", 3), 2, market_ids=products["market_ids"].unique()
    )
    return products, agents


RC_FORMULA = "shares ~ 1 + x + [prices ~ z1 + z2 + I(z1**2)]"

RC_CASES = {
    # name: (from_formula keywords, θ at which to check: Σ diagonal then price coefficient)
    "linear costs": ({}, [0.4, 0.3], [-2.0]),
    "log costs, bounded": (
        {"costs_type": "log", "costs_bounds": (0.5, None)},
        [0.4, 0.3],
        [-2.0],
    ),
    "lognormal x": ({"rc_types": {"x": "lognormal"}}, [0.4, 0.3], [-2.0]),
}


def _rc_model(products, agents, **keywords) -> BLPRandomCoefficients:
    return BLPRandomCoefficients.from_formula(
        RC_FORMULA,
        products,
        random="0 + prices + x",
        agent_data=agents,
        supply="1 + w",
        supply_instruments="z2 + x",
        **keywords,
    )


def _objective(model, sigma_diagonal):
    parameters = model.parameters(sigma=np.diag(sigma_diagonal))
    return model.objective_function(parameters)


@pytest.mark.parametrize("case", list(RC_CASES))
def test_rc_supply_gradient_matches_finite_differences(case):
    """∂q/∂(Σ, α) through δ, the markups and the cost equation, component by component."""
    keywords, sigma, alpha = RC_CASES[case]
    products, agents = _rc_data()
    objective = _objective(_rc_model(products, agents, **keywords), sigma)
    theta = np.array([*sigma, *alpha])
    evaluation = objective.evaluate(theta)
    assert evaluation.success and evaluation.gamma is not None
    numeric = finite_difference_gradient(objective, theta)
    error = np.abs(evaluation.gradient - numeric)
    floor = 1e-7 * np.abs(numeric).max()
    assert (error <= 1e-5 * np.abs(numeric) + floor).all(), (evaluation.gradient, numeric)


def test_nested_rc_supply_gradient_matches_finite_differences():
    products = simulate_logit_products(30, 6, seed=4, rho=0.4, drop=0.2)
    products = _with_cost_shifter(products)
    model = BLPRandomCoefficients.from_formula(
        "shares ~ 1 + x + [prices ~ z1 + z2 + nest_count + nest_z1]",
        products,
        random="0 + x",
        integration=Integration("product", 5),
        supply="1 + w",
        supply_instruments="z2",
    )
    objective = model.objective_function(model.parameters(sigma=0.5, rho=0.3))
    theta = np.array([0.5, 0.3, -2.0])
    evaluation = objective.evaluate(theta)
    assert evaluation.success
    numeric = finite_difference_gradient(objective, theta, steps=np.full(theta.size, 1e-5))
    error = np.abs(evaluation.gradient - numeric)
    assert (error <= 1e-5 * np.abs(numeric) + 1e-7 * np.abs(numeric).max()).all(), (
        evaluation.gradient,
        numeric,
    )


@pytest.mark.parametrize("costs_type", ["linear", "log"])
def test_rc_supply_objective_matches_pyblp_at_the_same_theta(pyblp, costs_type):
    """Objective, gradient, β and γ at one θ; then SEs at our estimates."""
    products, agents = _rc_data()
    model = _rc_model(products, agents, costs_type=costs_type)
    sigma, alpha = [0.4, 0.3], -2.0
    evaluation = _objective(model, sigma).evaluate(np.array([*sigma, alpha]))
    frame = _pyblp_frame(
        products.assign(z1_squared=products["z1"] ** 2),
        ["z1", "z2", "z1_squared"],
        ["z2", "x"],
    )
    problem = pyblp.Problem(
        (
            pyblp.Formulation("1 + x + prices"),
            pyblp.Formulation("0 + prices + x"),
            pyblp.Formulation("1 + w"),
        ),
        frame,
        agent_data=agents,
        costs_type=costs_type,
    )
    oracle = problem.solve(
        sigma=np.diag(sigma),
        beta=[None, None, alpha],
        method="1s",
        optimization=pyblp.Optimization("return"),
    )
    _assert_close(evaluation.objective, oracle.objective, 1e-9, "objective")
    _assert_close(evaluation.gradient, oracle.gradient, 1e-7, "gradient")
    _assert_close(evaluation.beta, oracle.beta[:2], 1e-9, "concentrated beta")
    _assert_close(evaluation.gamma, oracle.gamma, 1e-9, "gamma")

    # Standard errors at the same θ (the optimizer stays at its start; the formula is the
    # same away from the optimum, where no parameter sits on a bound).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        results = model.fit(
            sigma=np.diag(sigma),
            beta={"prices": alpha},
            optimizer=lambda fun, theta0, bounds: theta0,
            compute_hessian=False,
        )
    _assert_close(results.info.objective, oracle.objective, 1e-9, "objective of the results")
    _assert_close(results.bse[["Intercept", "x", "prices"]], oracle.beta_se, 1e-7, "beta SE")
    _assert_close(results.bse[["gamma[Intercept]", "gamma[w]"]], oracle.gamma_se, 1e-7, "γ SE")
    _assert_close(
        results.bse[["sigma[prices,prices]", "sigma[x,x]"]],
        np.diag(oracle.sigma_se),
        1e-7,
        "sigma SE",
    )


# ------------------------------------------------------------------ price with a characteristic

#: Demand where price enters product by product (pyblp's X1, our bracketed endogenous terms,
#: their coefficients at the θ checked): ∂u_j/∂p_j varies across j, so ∂s/∂p is asymmetric and
#: a markup system built from ∂s/∂p instead of its transpose gives other markups.
ASYMMETRIC_PRICES = {
    "prices:x": ("1 + x + prices + prices:x", "prices + prices:x", [-2.0, 0.3]),
    "log(prices)": ("1 + x + log(prices)", "log(prices)", [-6.0]),
}


def _price_slope(products: pd.DataFrame, case: str, coefficients: list[float]) -> np.ndarray:
    """∂(price terms of mean utility)/∂p_j, written out: α + α_x·x_j, or α/p_j."""
    prices = products["prices"].to_numpy()
    if case == "prices:x":
        return coefficients[0] + coefficients[1] * products["x"].to_numpy()
    return coefficients[0] / prices


def _bertrand_markups(products, agents, delta, sigma, case, coefficients, market) -> tuple:
    """η = −(Ω ⊙ Aᵀ)⁻¹s in one market from A_jk = ∂s_j/∂p_k written out:
    A_jk = Σ_i w_i P_ji (1{j = k} − P_ki) D_ki, D_ki = ∂u_ki/∂p_k = slope_k + σ_prices ν_i0."""
    rows = np.flatnonzero(products["market_ids"].to_numpy() == market)
    market_products = products.iloc[rows]
    people = agents[agents["market_ids"] == market]
    nodes, weights = people[["nodes0", "nodes1"]].to_numpy(), people["weights"].to_numpy()
    prices, x = market_products["prices"].to_numpy(), market_products["x"].to_numpy()
    utility = delta[rows, None] + sigma[0] * np.outer(prices, nodes[:, 0])
    utility += sigma[1] * np.outer(x, nodes[:, 1])
    exp = np.exp(utility)
    P = exp / (1.0 + exp.sum(axis=0))  # [J, I]
    D = _price_slope(market_products, case, coefficients)[:, None] + sigma[0] * nodes[:, 0]
    A = np.diag((P * D) @ weights) - np.einsum("i,ji,ki,ki->jk", weights, P, P, D)
    firms = market_products["firm_ids"].to_numpy()
    ownership = (firms[:, None] == firms[None, :]).astype(float)
    return rows, -np.linalg.solve(ownership * A.T, P @ weights), A


@pytest.mark.parametrize("case", list(ASYMMETRIC_PRICES))
def test_rc_supply_with_asymmetric_price_jacobian_matches_pyblp(pyblp, case):
    """Price interacted with x, or in logs: ∂s/∂p is not symmetric (with two-product firms).

    At one θ the objective, gradient, β, γ and the markups (p − pyblp's costs) equal pyblp
    1.3.0's, and in one market the markups solve the Bertrand first-order conditions
    s + (Ω ⊙ Aᵀ)η = 0 with A = ∂s/∂p written out here.

    Tolerances: objective, β 1e-9 and gradient 1e-7 as for linear prices. Markups and γ 1e-7
    (measured 2.2e-9 and 1.2e-9 with log(prices), 7e-11 and 2e-12 with prices:x): blpmodels
    differentiates price transforms by central differences (step 2⁻²⁰ of the price's binade),
    whose rounding, about ε·|log p|/h ≈ 1e-10 relative, the markup system amplifies by its
    condition number (up to 750 here); pyblp's derivatives are symbolic and its markups equal
    the written-out ones to 1e-15. Transposing ∂s/∂p moves γ by 1e-3 and markups by far more.
    """
    pyblp_x1, endogenous, coefficients = ASYMMETRIC_PRICES[case]
    products, agents = _rc_data()
    products = products.assign(z1_squared=products["z1"] ** 2, z1x=products["z1"] * products["x"])
    model = BLPRandomCoefficients.from_formula(
        f"shares ~ 1 + x + [{endogenous} ~ z1 + z2 + z1_squared + z1x]",
        products,
        random="0 + prices + x",
        agent_data=agents,
        supply="1 + w",
        supply_instruments="z2 + x",
    )
    sigma = [0.4, 0.3]
    evaluation = _objective(model, sigma).evaluate(np.array([*sigma, *coefficients]))
    assert evaluation.success
    problem = pyblp.Problem(
        (
            pyblp.Formulation(pyblp_x1),
            pyblp.Formulation("0 + prices + x"),
            pyblp.Formulation("1 + w"),
        ),
        _pyblp_frame(products, ["z1", "z2", "z1_squared", "z1x"], ["z2", "x"]),
        agent_data=agents,
    )
    oracle = problem.solve(
        sigma=np.diag(sigma),
        beta=[None, None, *coefficients],
        method="1s",
        optimization=pyblp.Optimization("return"),
    )
    _assert_close(evaluation.objective, oracle.objective, 1e-9, "objective")
    _assert_close(evaluation.gradient, oracle.gradient, 1e-7, "gradient")
    _assert_close(evaluation.beta, oracle.beta[:2], 1e-9, "concentrated beta")
    _assert_close(evaluation.gamma, oracle.gamma, 1e-7, "gamma")
    pyblp_markups = products["prices"].to_numpy() - np.ravel(oracle.tilde_costs)
    _assert_close(evaluation.markups, pyblp_markups, 1e-7, "markups")

    rows, expected, A = _bertrand_markups(
        products, agents, evaluation.delta, sigma, case, coefficients, products["market_ids"][0]
    )
    # The test means something only if ∂s/∂p is far from symmetric.
    off_diagonal = A - np.diag(np.diag(A))
    assert np.abs(A - A.T).max() > 0.2 * np.abs(off_diagonal).max()
    _assert_close(evaluation.markups[rows], expected, 1e-7, "markups from the FOC")


# ------------------------------------------------------------------ exercise 2, supplemental 6


@pytest.mark.data
def test_exercise2_supplemental6(exercise2_overidentified):
    """Supply 1 + mushy, linear costs: γ as printed, demand estimates as the demand-only fit."""
    products, agents = exercise2_overidentified
    formula = (
        "shares ~ 0 + [prices ~ " + " + ".join(f"demand_instruments{k}" for k in range(5)) + "]"
    )
    start = {"sigma": [[0, 0], [0, 6]], "pi": [[0.2], [-6]]}
    options = {"gtol": 1e-8, "xtol": 1e-8}
    demand = q5_model(products, agents, formula).fit(**start, optimizer_options=options)
    supply = q5_model(products, agents, formula, supply="1 + mushy").fit(
        **start, beta={"prices": 10}, optimizer_options=options
    )
    assert supply.info.convergence["converged"]
    assert supply.params["gamma[Intercept]"] == pytest.approx(0.0881, abs=5e-5)
    assert supply.params["gamma[mushy]"] == pytest.approx(-0.00568, abs=5e-6)
    shared = demand.params.index
    np.testing.assert_allclose(supply.params[shared], demand.params[shared], rtol=2e-4)


# ------------------------------------------------------------------ bad input


def test_supply_needs_firm_ids(logit_products):
    with pytest.raises(BLPInputError, match="firm_ids"):
        BLPLogit.from_formula(
            "shares ~ 1 + x + [prices ~ z1 + z2]",
            logit_products.drop(columns="firm_ids"),
            supply="1 + w",
        )


def test_supply_formula_may_not_read_prices(logit_products):
    with pytest.raises(BLPInputError, match="prices"):
        BLPLogit.from_formula(
            "shares ~ 1 + x + [prices ~ z1 + z2]", logit_products, supply="1 + prices"
        )


def test_supply_needs_prices_in_demand(logit_products):
    with pytest.raises(BLPInputError, match="prices"):
        BLPLogit.from_formula("shares ~ 1 + x + z1", logit_products, supply="1 + w")


@pytest.mark.parametrize(
    ("keywords", "match"),
    [
        ({"costs_type": "quadratic", "supply": "1 + w"}, "costs_type"),
        ({"costs_type": "log"}, "supply formula"),
        ({"supply_instruments": "z2"}, "supply formula"),
        ({"supply_absorb": "C(product_ids)"}, "supply formula"),
        ({"costs_bounds": (0.1, None)}, "supply formula"),
    ],
)
def test_supply_options_are_checked(logit_products, keywords, match):
    with pytest.raises(BLPInputError, match=match):
        BLPLogit.from_formula("shares ~ 1 + x + [prices ~ z1 + z2]", logit_products, **keywords)


def test_fit_options_for_supply_only(logit_products):
    model = BLPLogit.from_formula("shares ~ 1 + x + [prices ~ z1 + z2]", logit_products)
    with pytest.raises(BLPInputError, match=r"\['beta'\] only apply with a supply side"):
        model.fit(beta={"prices": -2})
    with pytest.raises(BLPInputError, match=r"\['optimizer'\] only apply"):
        model.fit(optimizer="l-bfgs-b")


def test_beta_start_names_are_checked(logit_products):
    model = BLPLogit.from_formula(
        "shares ~ 1 + x + [prices ~ z1 + z2]", logit_products, supply="1 + w"
    )
    with pytest.raises(BLPInputError, match=r"beta names \['x'\]"):
        model.fit(beta={"x": 1.0})
    with pytest.raises(BLPInputError, match="must be finite"):
        model.fit(beta={"prices": np.nan})


def test_log_costs_with_negative_implied_costs_are_named(logit_products):
    """A price coefficient that implies costs ≤ 0 cannot take logs: the fit says so."""
    model = BLPLogit.from_formula(
        "shares ~ 1 + x + [prices ~ z1 + z2]",
        logit_products.assign(prices=logit_products["prices"] - logit_products["prices"].min()),
        supply="1 + w",
        costs_type="log",
    )
    with pytest.raises(FixedPointError, match="implied marginal costs are not positive"):
        model.fit(beta={"prices": -0.1}, max_evaluations=20)


def test_costs_clipped_at_the_estimates_are_counted_and_warned(logit_products):
    """Costs on ``costs_bounds`` at the estimates carry no information on θ: the fit warns
    and counts them (``convergence["clipped_costs"]``), checked against the costs it imputes."""
    formula = "shares ~ 1 + x + [prices ~ z1 + z2]"
    free = BLPLogit.from_formula(formula, logit_products, supply="1 + w").fit()
    assert free.info.convergence["clipped_costs"] == 0
    assert not any("clipped" in note for note in free.info.convergence["warnings"])
    low = float(np.quantile(free.costs(), 0.3))
    model = BLPLogit.from_formula(formula, logit_products, supply="1 + w", costs_bounds=(low, None))
    with pytest.warns(ConvergenceWarning, match=r"implied marginal costs are clipped"):
        clipped = model.fit()
    by_hand = int((clipped.costs().to_numpy() <= low).sum())
    assert 0 < by_hand < len(logit_products)
    assert clipped.info.convergence["clipped_costs"] == by_hand
    assert f"{by_hand} of {len(logit_products)}" in " ".join(clipped.info.convergence["warnings"])
    demand_only = BLPLogit.from_formula(formula, logit_products).fit()
    assert demand_only.info.convergence.get("clipped_costs") is None


# ------------------------------------------------------------------ post-estimation


def test_post_estimation_skips_gamma(logit_products):
    """γ sits between β and θ in params; simulate and the bootstrap hand demand β and θ only."""
    results = BLPLogit.from_formula(
        "shares ~ 1 + x + [prices ~ z1 + z2]", logit_products, supply="1 + w"
    ).fit()
    again = results.simulate()
    np.testing.assert_allclose(again.data["prices"], logit_products["prices"], atol=1e-10)
    np.testing.assert_allclose(again.data["shares"], logit_products["shares"], rtol=1e-10)
    moved = results.simulate({"prices": 1.1 * results.params["prices"]})
    assert (moved.data["prices"] < logit_products["prices"]).all()  # more elastic, lower markups
    bootstrapped = results.bootstrap(draws=20, seed=0)
    assert list(bootstrapped.params.columns) == list(results.params.index)
    shares = bootstrapped.predict()
    assert shares.shape == (20, len(logit_products))
    # Each draw's shares follow from its own β (γ is not read): redo one draw by hand.
    draw = bootstrapped.params.iloc[3]
    X = np.column_stack(
        [np.ones(len(logit_products)), logit_products["x"], logit_products["prices"]]
    )
    delta = results.delta.to_numpy() + X @ (
        draw.iloc[:3].to_numpy() - results.params.iloc[:3].to_numpy()
    )
    exp = np.exp(delta)
    totals = pd.Series(exp).groupby(logit_products["market_ids"].to_numpy()).transform("sum")
    np.testing.assert_allclose(shares.iloc[3].to_numpy(), exp / (1 + totals.to_numpy()), rtol=1e-10)
    with pytest.raises(BLPInputError, match="compute_delta needs a random-coefficients model"):
        results.compute_delta(logit_products)


def test_rc_supply_bootstrap_clips_only_theta():
    products, agents = _rc_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        results = _rc_model(products, agents).fit(
            sigma=np.diag([0.4, 0.3]),
            beta={"prices": -2.0},
            optimizer=lambda fun, theta0, bounds: theta0,
            compute_hessian=False,
        )
    bootstrapped = results.bootstrap(draws=200, seed=1)
    draws = bootstrapped.params
    assert (draws[["sigma[prices,prices]", "sigma[x,x]"]] >= 0).all().all()
    # γ draws are not clipped: they scatter on both sides of the estimate.
    gamma = draws["gamma[w]"] - results.params["gamma[w]"]
    assert (gamma < 0).any() and (gamma > 0).any()
    assert bootstrapped.predict().shape == (200, len(products))


def test_initial_update_must_be_a_bool():
    products, agents = _rc_data()
    with pytest.raises(BLPInputError, match="initial_update must be True or False"):
        _rc_model(products, agents).fit(sigma=np.diag([0.4, 0.3]), initial_update="yes")
