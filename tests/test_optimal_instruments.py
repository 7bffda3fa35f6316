"""Optimal instruments against pyblp, closed forms and a simulation.

Oracles:

- pyblp 1.3.0's ``ProblemResults.compute_optimal_instruments`` run live at the same parameters
  (``Optimization('return')``): the exercise-2 question-5 model on a subset of markets (the
  whole data set is slow: pyblp needs about a minute there), RCNL on Nevo's data, and pyblp's
  own realization code (``_compute_realizations``) at the same draws of ξ for the "normal" and
  "empirical" methods. We match to about 1e-13 relative: both compute the same IFT solve in
  double precision, so the tolerances below leave room for rounding only.
- The exercise's precomputed ``ex2_s4_optimal_instruments.csv``: pyblp's output at its own
  question-5 estimates, of which ``Q5_THETA`` holds eight digits; there the file is matched to
  5e-10 relative (and to 4e-14 at the θ recovered from the file by least squares, 2e-9 away),
  so 1e-8 is the tolerance.
- Closed forms: for the logit the optimal instrument for prices is the first-stage fitted value
  (statsmodels OLS with dummies), and IV with it is 2SLS (estimates and SEs by hand); for the
  nested logit ∂δ/∂ρ = −log s_{j|h} at the shares implied by δ = X1β (+ fixed effects).
- A simulation with known parameters: the optimal-IV logit is centred on the truth and its SE
  is no larger than with the raw instruments.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from blpmodels.datasets import data_home
from builders import (
    LOGNORMAL_THETA,
    NEVO_INSTRUMENTS,
    at_parameters,
    lognormal_cases,
    nevo_model,
    nevo_problem,
    q5_model,
    q5_problem,
    require_data,
    solve_at,
)

from blpmodels import BLPInputError, BLPLogit, BLPNestedLogit
from blpmodels.results import optimal_instruments as module
from blpmodels.results.optimal_instruments import optimal_instruments, reduced_form_prices
from blpmodels.simulation.logit import simulate_logit

#: The question-5 estimates to eight digits (tests/test_random_coefficients.py checks the fit).
Q5_THETA = {"sigma": [[0, 0], [0, 6.01516714]], "pi": [[0.10882918], [-5.95723916]]}
Q5_COLUMNS = [
    "optimal_prices",
    "optimal_sigma_prices_prices",
    "optimal_pi_mushy_log_income",
    "optimal_pi_prices_log_income",
]
SUBSET = 8  # markets in the default-suite pyblp comparison
RTOL = 1e-11  # same arithmetic in both libraries: rounding only


def assert_columns_close(ours: np.ndarray, theirs: np.ndarray, rtol: float = RTOL) -> None:
    """Each column equal relative to its own scale (columns differ by orders of magnitude)."""
    ours, theirs = np.atleast_2d(ours.T).T, np.atleast_2d(np.asarray(theirs).T).T
    scale = np.abs(theirs).max(axis=0)
    assert (scale > 0).all()
    np.testing.assert_array_less(np.abs(ours - theirs).max(axis=0), rtol * scale)


# ---------------------------------------------------------------------- fixtures


def q5_results(products, agents):
    return at_parameters(q5_model(products, agents), **Q5_THETA)


def q5_pyblp(pyblp, products, agents):
    return solve_at(pyblp, q5_problem(pyblp, products, agents), **Q5_THETA)


@pytest.fixture(scope="module")
def q5_subset(exercise2):
    """The question-5 model on the first markets only, at the question-5 estimates."""
    products, agents = exercise2
    markets = products["market_ids"].unique()[:SUBSET]
    products = products[products["market_ids"].isin(markets)]
    agents = agents[agents["market_ids"].isin(markets)]
    return products, agents, q5_results(products, agents)


@pytest.fixture(scope="module")
def q5_subset_pyblp(q5_subset, pyblp):
    products, agents, _ = q5_subset
    return q5_pyblp(pyblp, products, agents)


@pytest.fixture
def logit_results(simulated_products):
    return BLPLogit.from_formula(
        "shares ~ 0 + x + [prices ~ z1 + z2]", simulated_products, absorb="C(market_ids)"
    ).fit()


# ---------------------------------------------------------------------- pyblp


def test_q5_matches_pyblp(q5_subset, q5_subset_pyblp):
    """Exercise 2, question 5 (σ and Π with demographics, two-way fixed effects)."""
    products, _, results = q5_subset
    oracle = q5_subset_pyblp.compute_optimal_instruments(method="approximate")
    instruments = optimal_instruments(results)
    assert list(instruments.columns) == Q5_COLUMNS
    assert instruments.index.equals(products.index)
    assert instruments.attrs["parameters"] == {
        "optimal_prices": "prices",
        "optimal_sigma_prices_prices": "sigma[prices,prices]",
        "optimal_pi_mushy_log_income": "pi[mushy,log_income]",
        "optimal_pi_prices_log_income": "pi[prices,log_income]",
    }
    assert_columns_close(instruments[Q5_COLUMNS[1:]].to_numpy(), oracle.demand_instruments)
    expected = instruments.attrs["expected_prices"]
    assert_columns_close(np.asarray(expected), oracle.expected_prices)
    assert_columns_close(instruments["optimal_prices"].to_numpy(), oracle.expected_prices)
    # pyblp's to_problem() instruments: these columns (absorbed like any instrument).
    problem = oracle.to_problem()
    model = q5_model(
        products.join(instruments),
        q5_subset[1],
        "shares ~ 0 + [prices ~ " + " + ".join(instruments.columns) + "]",
    )
    ours = model.design.Z_absorbed
    order = [1, 2, 3, 0]  # pyblp puts the θ instruments first and expected prices last
    assert_columns_close(ours[:, order], problem.products.ZD, rtol=1e-9)


def test_q5_user_expected_prices_match_pyblp(q5_subset, q5_subset_pyblp):
    """Given expected prices move X1 and the random coefficient on prices (μ) alike."""
    products, _, results = q5_subset
    given = products["prices"] * 0.9 + 0.01
    oracle = q5_subset_pyblp.compute_optimal_instruments(expected_prices=given.to_numpy())
    instruments = optimal_instruments(results, expected_prices=given)
    assert_columns_close(instruments[Q5_COLUMNS[1:]].to_numpy(), oracle.demand_instruments)
    np.testing.assert_array_equal(instruments["optimal_prices"], given)
    default = optimal_instruments(results)
    assert np.abs(default.to_numpy() - instruments.to_numpy()).max() > 1e-3


@pytest.mark.parametrize("method", ["normal", "empirical"])
def test_draws_match_pyblp_realizations(q5_subset, q5_subset_pyblp, method):
    """The average over ξ draws: pyblp's own realization code at the same two draws."""
    _, _, results = q5_subset
    oracle = q5_subset_pyblp
    xi = np.asarray(results.resid)
    rng = np.random.default_rng(3)  # the draws as documented: default_rng(seed)
    if method == "normal":
        draws = [rng.normal(0.0, np.std(xi), xi.size) for _ in range(2)]
    else:
        draws = [xi[rng.integers(0, xi.size, xi.size)] for _ in range(2)]
    expected_prices = np.c_[reduced_form_prices(results).to_numpy()]
    jacobians = [
        oracle._compute_realizations(expected_prices, None, True, np.c_[draw], oracle.omega)[2]
        for draw in draws
    ]
    expected = (jacobians[0] + jacobians[1]) / 2 / np.var(np.asarray(oracle.xi))
    instruments = optimal_instruments(results, method, draws=2, seed=3)
    assert instruments.attrs["method"] == method and instruments.attrs["draws"] == 2
    assert_columns_close(instruments[Q5_COLUMNS[1:]].to_numpy(), expected)
    approximate = optimal_instruments(results)
    assert np.abs(instruments.to_numpy() - approximate.to_numpy())[:, 1:].max() > 1e-4
    np.testing.assert_array_equal(instruments["optimal_prices"], approximate["optimal_prices"])


def test_market_chunks_do_not_change_the_instruments(q5_subset):
    """Small chunks (3 markets) read the same draws and write the same rows as one chunk."""
    products, agents, results = q5_subset
    chunked = at_parameters(q5_model(products, agents, chunk_size=3), **Q5_THETA)
    assert chunked.demand.chunk_size == 3
    for method, options in (("approximate", {}), ("empirical", {"draws": 2, "seed": 1})):
        whole = optimal_instruments(results, method, **options)
        pieces = optimal_instruments(chunked, method, **options)
        np.testing.assert_allclose(pieces.to_numpy(), whole.to_numpy(), rtol=1e-12, atol=1e-14)


@lognormal_cases
def test_lognormal_matches_pyblp(nevo, pyblp, ours, pyblp_random, pyblp_types):
    """Lognormal coefficients with demographics: ∂c/∂θ carries the coefficient itself."""
    products, agents = nevo  # no nests here
    model = nevo_model(
        products, agents, "0 + prices + sugar", demographics="0 + income", rc_types=ours
    )
    results = at_parameters(model, **LOGNORMAL_THETA)
    problem = nevo_problem(
        pyblp, products, agents, pyblp_random, "0 + income", rc_types=pyblp_types
    )
    oracle = solve_at(pyblp, problem, **LOGNORMAL_THETA).compute_optimal_instruments()
    instruments = optimal_instruments(results)
    assert_columns_close(instruments.to_numpy()[:, 1:], oracle.demand_instruments)
    assert_columns_close(instruments["optimal_prices"].to_numpy(), oracle.expected_prices)


@pytest.mark.parametrize("rho", [0.7, [0.7, 0.4]], ids=["common", "per_nest"])
def test_rcnl_matches_pyblp(nevo_nested, pyblp, rho):
    """Random coefficients with nests (σ on prices, ρ) on Nevo's data, product effects."""
    products, agents = nevo_nested
    results = at_parameters(nevo_model(products, agents), sigma=[[2.0]], rho=rho)
    problem = nevo_problem(pyblp, products, agents[["market_ids", "weights", "nodes0"]])
    expected = solve_at(pyblp, problem, sigma=[[2.0]], rho=rho).compute_optimal_instruments()
    instruments = optimal_instruments(results)
    names = ["optimal_rho"] if np.ndim(rho) == 0 else ["optimal_rho_0", "optimal_rho_1"]
    assert list(instruments.columns) == ["optimal_prices", "optimal_sigma_prices_prices", *names]
    assert_columns_close(instruments.to_numpy()[:, 1:], expected.demand_instruments)
    assert_columns_close(instruments["optimal_prices"].to_numpy(), expected.expected_prices)


def test_nested_logit_matches_pyblp(nevo_nested, pyblp):
    """The closed-form nested logit (pyblp's tutorial model): θ is ρ, as in pyblp's problem."""
    products, _ = nevo_nested
    results = BLPNestedLogit.from_formula(
        f"shares ~ 0 + [prices ~ {NEVO_INSTRUMENTS} + nest_count]", products
    ).fit()
    problem = pyblp.Problem(
        pyblp.Formulation("0 + prices"),
        products.assign(demand_instruments20=products["nest_count"]),
    )
    oracle = solve_at(pyblp, problem, rho=float(results.params["rho"]))
    expected = oracle.compute_optimal_instruments()
    instruments = optimal_instruments(results)
    assert list(instruments.columns) == ["optimal_prices", "optimal_rho"]
    assert_columns_close(instruments[["optimal_rho"]].to_numpy(), expected.demand_instruments)
    assert_columns_close(instruments["optimal_prices"].to_numpy(), expected.expected_prices)


@pytest.mark.slow
def test_q5_whole_data_matches_pyblp(exercise2, pyblp):
    """All 94 markets (pyblp needs about a minute at fixed parameters)."""
    products, agents = exercise2
    results = q5_results(products, agents)
    oracle = q5_pyblp(pyblp, products, agents).compute_optimal_instruments()
    instruments = optimal_instruments(results)
    assert_columns_close(instruments[Q5_COLUMNS[1:]].to_numpy(), oracle.demand_instruments)
    assert_columns_close(instruments["optimal_prices"].to_numpy(), oracle.expected_prices)


# ---------------------------------------------------------------------- the exercise's file


def test_q5_reproduces_the_exercise_file(exercise2):
    """``ex2_s4_optimal_instruments.csv``: pyblp at its question-5 estimates."""
    require_data("mixtape/derived/ex2_s4_optimal_instruments.csv")
    products, agents = exercise2
    path = data_home() / "mixtape" / "derived" / "ex2_s4_optimal_instruments.csv"
    stored = pd.read_csv(path, dtype={"market_ids": str, "product_ids": str})
    assert (stored["market_ids"].to_numpy() == products["market_ids"].to_numpy()).all()
    assert (stored["product_ids"].to_numpy() == products["product_ids"].to_numpy()).all()
    instruments = optimal_instruments(q5_results(products, agents))
    columns = [f"optimal_demand_instruments{k}" for k in range(3)]
    assert_columns_close(
        instruments[Q5_COLUMNS[1:]].to_numpy(), stored[columns].to_numpy(), rtol=1e-8
    )
    # Expected prices do not depend on θ: equal to rounding.
    assert_columns_close(
        instruments["optimal_prices"].to_numpy(), stored["expected_prices"].to_numpy()
    )


# ---------------------------------------------------------------------- closed forms


def test_logit_instrument_is_the_first_stage_fit(logit_results, simulated_products):
    instruments = optimal_instruments(logit_results)
    assert list(instruments.columns) == ["optimal_prices"]
    first_stage = smf.ols("prices ~ x + z1 + z2 + C(market_ids)", simulated_products).fit()
    np.testing.assert_allclose(
        instruments["optimal_prices"], first_stage.fittedvalues, rtol=1e-12, atol=1e-12
    )
    np.testing.assert_array_equal(
        instruments.attrs["expected_prices"], instruments["optimal_prices"]
    )
    np.testing.assert_array_equal(
        reduced_form_prices(logit_results), instruments.attrs["expected_prices"]
    )


def test_logit_optimal_iv_is_2sls(logit_results, simulated_products):
    """IV with E[p | z] is 2SLS with all instruments: same estimates and robust SEs, by hand."""
    data = simulated_products.join(optimal_instruments(logit_results))
    again = BLPLogit.from_formula(
        "shares ~ 0 + x + [prices ~ optimal_prices]", data, absorb="C(market_ids)"
    ).fit()
    dummies = pd.get_dummies(data["market_ids"], dtype=float).to_numpy()

    def absorb(values):
        return values - dummies @ np.linalg.lstsq(dummies, values, rcond=None)[0]

    inside = data.groupby("market_ids")["shares"].transform("sum")
    y = absorb((np.log(data["shares"]) - np.log(1 - inside)).to_numpy())
    X = absorb(data[["x", "prices"]].to_numpy())
    Z = absorb(data[["x", "z1", "z2"]].to_numpy())
    fitted = Z @ np.linalg.lstsq(Z, X, rcond=None)[0]
    bread = np.linalg.inv(fitted.T @ X)
    beta = bread @ fitted.T @ y
    residuals = y - X @ beta
    meat = (fitted * residuals[:, None] ** 2).T @ fitted
    se = np.sqrt(np.diag(bread @ meat @ bread.T))
    for results in (logit_results, again):
        np.testing.assert_allclose(results.params, beta, rtol=1e-10)
        np.testing.assert_allclose(results.bse, se, rtol=1e-8)


def test_logit_optimal_iv_is_consistent_with_no_larger_se():
    """Simulated Bertrand data with known α: optimal IV centred on the truth, SE ≤ raw IV."""
    estimates, standard_errors, raw_errors = [], [], []
    formula = "shares ~ 1 + x + [prices ~ cost_shifter + I(cost_shifter ** 2)]"
    for seed in range(20):
        products = simulate_logit(n_markets=60, n_products=5, n_firms=3, seed=seed).products
        raw = BLPLogit.from_formula(formula, products).fit()
        instruments = optimal_instruments(raw)
        optimal = BLPLogit.from_formula(
            "shares ~ 1 + x + [prices ~ optimal_prices]", products.join(instruments)
        ).fit()
        estimates.append(optimal.params["prices"])
        standard_errors.append(optimal.bse["prices"])
        raw_errors.append(raw.bse["prices"])
    estimates, standard_errors = np.asarray(estimates), np.asarray(standard_errors)
    monte_carlo_se = estimates.std(ddof=1) / np.sqrt(estimates.size)
    assert abs(estimates.mean() - (-2.0)) < 3 * monte_carlo_se
    # The reported SE describes the spread of the estimates.
    assert 0.6 < estimates.std(ddof=1) / standard_errors.mean() < 1.6
    assert (standard_errors <= np.asarray(raw_errors) * (1 + 1e-9)).all()


def _within_nest_log_shares(delta, markets, nests, rho):
    """log s_{j|h} at mean utilities δ, one group (market, nest) at a time."""
    scaled = pd.Series(np.asarray(delta) / (1 - np.asarray(rho)))
    groups = [np.asarray(markets), np.asarray(nests)]
    top = scaled.groupby(groups).transform("max")
    total = np.exp(scaled - top).groupby(groups).transform("sum")
    return (scaled - top - np.log(total)).to_numpy()


@pytest.mark.parametrize("per_nest", [False, True], ids=["common", "per_nest"])
def test_nested_logit_closed_form(simulated_nested_products, per_nest):
    """∂δ/∂ρ_h = −log s_{j|h} 1{j ∈ h} at the shares implied by δ = X1(E[p])β."""
    data = simulated_nested_products
    results = BLPNestedLogit.from_formula(
        "shares ~ 1 + x + [prices ~ z1 + z2 + nest_count + nest_z1]", data
    ).fit(rho="nest" if per_nest else "common")
    instruments = optimal_instruments(results)
    expected_prices = np.asarray(instruments.attrs["expected_prices"])
    params = results.params
    delta = params["Intercept"] + params["x"] * data["x"] + params["prices"] * expected_prices
    nests = data["nesting_ids"].to_numpy()
    rho = params[["rho[0]", "rho[1]"]].to_numpy()[nests] if per_nest else params["rho"]
    log_within = _within_nest_log_shares(delta, data["market_ids"], nests, rho)
    variance = np.var(np.asarray(results.resid))
    if per_nest:
        assert list(instruments.columns) == ["optimal_prices", "optimal_rho_0", "optimal_rho_1"]
        for nest in (0, 1):
            expected = np.where(nests == nest, -log_within, 0.0) / variance
            np.testing.assert_allclose(
                instruments[f"optimal_rho_{nest}"], expected, rtol=1e-9, atol=1e-12
            )
    else:
        assert list(instruments.columns) == ["optimal_prices", "optimal_rho"]
        np.testing.assert_allclose(
            instruments["optimal_rho"], -log_within / variance, rtol=1e-9, atol=1e-12
        )


def test_functions_of_prices_are_evaluated_at_expected_prices(simulated_products):
    """x(p) gets the instrument x(E[p | z]), named so that formulas can read it."""
    results = BLPLogit.from_formula(
        "shares ~ 1 + x + [prices + I(prices ** 2) ~ z1 + z2 + I(z1 ** 2)]", simulated_products
    ).fit()
    instruments = optimal_instruments(results)
    assert list(instruments.columns) == ["optimal_prices", "optimal_I_prices_2"]
    np.testing.assert_allclose(
        instruments["optimal_I_prices_2"], instruments["optimal_prices"] ** 2, rtol=1e-12
    )
    again = BLPLogit.from_formula(
        "shares ~ 1 + x + [prices + I(prices ** 2) ~ " + " + ".join(instruments.columns) + "]",
        simulated_products.join(instruments),
    ).fit()
    assert np.isfinite(again.params).all()


def test_expected_prices_argument_alignment(logit_results, simulated_products):
    default = optimal_instruments(logit_results)
    expected = pd.Series(default.attrs["expected_prices"], index=default.index)
    shuffled = expected.sample(frac=1.0, random_state=0)
    for given in (expected, shuffled, expected.to_numpy(), expected.to_frame()):
        again = optimal_instruments(logit_results, expected_prices=given)
        pd.testing.assert_frame_equal(again, default)
    observed = optimal_instruments(logit_results, expected_prices=simulated_products["prices"])
    np.testing.assert_array_equal(observed["optimal_prices"], simulated_products["prices"])


def test_model_without_instrumented_prices(simulated_products):
    """Exogenous prices are their own instruments: no columns and no expected prices."""
    results = BLPLogit.from_formula("shares ~ 1 + x + prices", simulated_products).fit()
    instruments = optimal_instruments(results)
    assert instruments.shape == (len(simulated_products), 0)
    assert instruments.attrs["expected_prices"] is None
    with pytest.raises(BLPInputError, match="does not instrument prices"):
        optimal_instruments(results, expected_prices=simulated_products["prices"])
    with pytest.raises(BLPInputError, match="does not instrument prices"):
        reduced_form_prices(results)


# ---------------------------------------------------------------------- bad input


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Fail if the kernel or the price regression is reached."""

    def forbidden(*args, **kwargs):
        raise AssertionError("heavy work started before the inputs were checked")

    monkeypatch.setattr(module, "_expected_delta_jacobian", forbidden)
    monkeypatch.setattr(module, "reduced_form_prices", forbidden)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "exact"}, "method must be one of"),
        ({"method": None}, "method must be one of"),
        ({"method": "normal", "draws": 0}, "draws must be a positive integer"),
        ({"method": "normal", "draws": 2.5}, "draws must be a positive integer"),
        ({"method": "empirical", "draws": True}, "draws must be a positive integer"),
        ({"method": "normal", "seed": -1}, "seed must be"),
        ({"method": "normal", "seed": "0"}, "seed must be"),
        ({"method": "normal", "seed": 1.5}, "seed must be"),
        ({"draws": 10}, "draws is only used"),
        ({"seed": 0}, "seed is only used"),
        ({"expected_prices": np.ones(5)}, r"expected_prices must have shape \(240,\)"),
        ({"expected_prices": np.full(240, np.nan)}, "expected_prices has 240 missing"),
        ({"expected_prices": np.full(240, np.inf)}, "non-finite"),
        ({"expected_prices": ["a"] * 240}, "expected_prices must be numbers"),
        ({"expected_prices": pd.Series(["a"] * 240)}, "expected_prices must be numbers"),
        ({"expected_prices": pd.Series(np.ones(240), index=range(1, 241))}, "not aligned"),
        ({"expected_prices": pd.Series(np.ones(239))}, "has 239 rows"),
        ({"expected_prices": pd.DataFrame(np.ones((240, 2)))}, "one column"),
    ],
)
def test_bad_arguments_fail_before_work(logit_results, no_heavy_work, kwargs, match):
    with pytest.raises(BLPInputError, match=match):
        optimal_instruments(logit_results, **kwargs)


def test_unsupported_results(logit_results, simulated_products, no_heavy_work):
    ols = smf.ols("prices ~ x", simulated_products).fit()
    bootstrapped = logit_results.bootstrap(draws=2, seed=0)
    for results in (None, ols, bootstrapped, logit_results.model):
        with pytest.raises(BLPInputError, match="results must be a fitted blpmodels"):
            optimal_instruments(results)


def test_supply_side_results_get_both_blocks(simulated_products):
    """With a supply side the instruments cover both moment blocks (checked against closed
    forms, finite differences and pyblp in test_optimal_instruments_supply.py)."""
    products = simulated_products.drop(columns="nesting_ids")
    results = BLPLogit.from_formula(
        "shares ~ 1 + x + [prices ~ z1 + z2]", products, supply="1 + z1"
    ).fit()
    instruments = results.optimal_instruments()
    assert instruments.attrs["demand_columns"][0] == "optimal_prices"
    assert instruments.attrs["supply_columns"][0] == "optimal_supply_prices"


def test_results_method_is_the_function(logit_results):
    expected = optimal_instruments(logit_results, "normal", draws=5, seed=3)
    got = logit_results.optimal_instruments("normal", draws=5, seed=3)
    pd.testing.assert_frame_equal(got, expected)
    assert got.attrs["method"] == "normal" and got.attrs["draws"] == 5


def test_endogenous_variable_other_than_prices(simulated_products, no_heavy_work):
    results = BLPLogit.from_formula("shares ~ 1 + prices + [x ~ z1 + z2]", simulated_products).fit()
    with pytest.raises(BLPInputError, match="do not read a 'prices' column"):
        optimal_instruments(results)
