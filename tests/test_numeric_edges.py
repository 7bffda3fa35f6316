"""Numerical edges that gave silent wrong answers or failed on valid input (issue 18).

Each test compares with a number computed independently of the kernel:

- a share of 1e-300 (δ 730 below the market's largest): the share evaluator, the δ solvers
  and a fit at fixed parameters against the shares written out in mpmath at 50 digits;
- ``consumer_surplus()`` of agents whose utilities all lie far below the outside good: the
  closed form log(1 + Σ_j e^{V_j}) by ``np.logaddexp``, and on the Petrin minivan data pyblp
  1.3.0's surpluses (recorded here; a slow test recomputes them); shares of such agents in a
  market with a large δ against the logit formula;
- ``conf_int(alpha=...)``: alpha outside (0, 1) is an error, inside it the bounds are
  params ± z·bse with z written out;
- micro moments: probabilities outside [0, 1] and conditioning columns that are not 0/1 are
  errors; a mean among buyers of a 0/1 column against the weighted mean written out;
- sparse-grid nodes passed back as ``agent_data=``: at the fitted δ, shares written out with
  the grid's own weights (negative ones included) equal the observed ones.

The Dask backend's first scatter (issue 18, 3.1) is tested in ``test_backends.py``.
"""

from __future__ import annotations

import warnings

import mpmath
import numpy as np
import pandas as pd
import pytest
import small_economy
from builders import at_parameters, require_data
from conftest import simulate_logit_products

from blpmodels import (
    BLPLogit,
    BLPRandomCoefficients,
    Integration,
    MicroDataset,
    MicroMoment,
    build_integration,
)
from blpmodels.exceptions import BLPInputError
from blpmodels.kernel import delta as delta_solvers
from blpmodels.kernel import equilibrium
from blpmodels.kernel.shares import Nesting, ShareEvaluator

mpmath.mp.dps = 50


# ---------------------------------------------------------------- a share of 1e-300 (2.5)


def exact_log_shares(delta: np.ndarray, mu: np.ndarray, weights: np.ndarray) -> list:
    """log s_j = log Σ_i w_i e^{δ_j + μ_ji} / (1 + Σ_k e^{δ_k + μ_ki}) in mpmath, one market."""
    n_products, n_agents = mu.shape
    utilities = [
        [mpmath.mpf(float(delta[k])) + mpmath.mpf(float(mu[k, i])) for k in range(n_products)]
        for i in range(n_agents)
    ]
    denominators = [1 + sum(mpmath.exp(v) for v in row) for row in utilities]
    return [
        mpmath.log(
            sum(
                mpmath.mpf(float(weights[i])) * mpmath.exp(utilities[i][j]) / denominators[i]
                for i in range(n_agents)
            )
        )
        for j in range(n_products)
    ]


def exact_miss(delta: np.ndarray, mu: np.ndarray, weights: np.ndarray, shares: np.ndarray):
    """max_j |log s_j(δ) − log s_obs,j| in mpmath (the observed shares as given, in doubles)."""
    exact = exact_log_shares(delta, mu, weights)
    return max(
        abs(float(value - mpmath.log(mpmath.mpf(float(share)))))
        for value, share in zip(exact, shares, strict=True)
    )


#: One market, three products, two agents: the second agent likes product 0 by 40 utils, so
#: its share of 1e-300 needs δ_0 ≈ −729 while the largest δ is −0.5: exp(δ_0 − max δ) is a
#: subnormal double (about 5e-317, 7 significant digits).
TINY_MU = np.array([[[0.0, 40.0], [0.0, 0.0], [0.0, 0.0]]])
TINY_WEIGHTS = np.array([[0.5, 0.5]])
TINY_SHARES = np.array([1e-300, 0.3, 0.2])


def tiny_evaluator() -> ShareEvaluator:
    return ShareEvaluator(TINY_MU, TINY_WEIGHTS, np.ones((1, 3), bool), Nesting.unnested((1, 3)))


def test_log_shares_of_a_subnormal_factor_are_exact():
    """The δ solvers' residual: at a δ whose factor exp(δ_0 − max δ) is subnormal, log s from
    the evaluator equals mpmath's to 1e-14 (it was off by 6e-8 and moved in steps of 1e-7)."""
    evaluator = tiny_evaluator()
    for offset in (0.0, 3e-8, 1e-7, 1e-6):
        delta = np.array([[-729.3892335370938 + offset, -0.5108256237659907, -0.916290731874155]])
        exact = exact_log_shares(delta[0], TINY_MU[0], TINY_WEIGHTS[0])
        ours = evaluator.log_shares(delta)[0]
        for value, reference in zip(ours, exact, strict=True):
            assert abs(value - float(reference)) <= 1e-14 * max(1.0, abs(float(reference)))


@pytest.mark.parametrize("solver", ["squarem", "hybrid"])
def test_delta_solvers_reach_the_tolerance_with_a_share_of_1e_300(solver):
    """Both δ solvers converge, and mpmath confirms the returned δ reproduces every share to
    the market's tolerance (1e-14, raised to 3ε·690.8 = 4.6e-13 where log s = −690.8 leaves no
    finer double). They failed after 5,000 evaluations with δ_0 off by 6e-8."""
    evaluator = tiny_evaluator()
    observed = np.log(TINY_SHARES)[None]
    if solver == "squarem":
        result = delta_solvers.solve_delta(evaluator, observed, np.zeros((1, 3)))
    else:
        near = observed - np.log(0.5)
        near[0, 0] = -700.0
        inverse = delta_solvers.inverse_delta_jacobian(evaluator, near)
        result = delta_solvers.solve_delta_hybrid(evaluator, observed, np.zeros((1, 3)), inverse)
    assert result.converged.all()
    assert result.evaluations[0] < 100
    tolerance = delta_solvers.market_tolerance(observed, np.ones((1, 3), bool), 1e-14)[0]
    assert tolerance == pytest.approx(3 * np.finfo(float).eps * 690.7755278982137)
    assert exact_miss(result.delta[0], TINY_MU[0], TINY_WEIGHTS[0], TINY_SHARES) < tolerance


def test_rounding_floor_leaves_ordinary_shares_at_the_tolerance():
    """The raised tolerance applies only where |log s| > 15: shares of 7e-7 (the smallest of
    the BLP automobile data) keep 1e-14."""
    observed = np.log([[7.01413e-07, 0.2], [1e-300, 0.2]])
    tolerance = delta_solvers.market_tolerance(observed, np.ones((2, 2), bool), 1e-14)
    assert tolerance[0] == 1e-14
    assert tolerance[1] > 4e-13


def test_fit_with_a_share_of_1e_300_solves_delta_at_the_start():
    """A random-coefficients fit at fixed parameters (σ_x = 4 on a product with x = 5 and a
    share of 1e-300): δ is solved at the starting values themselves (no start moved towards
    zero), fp_converged holds, and mpmath finds δ̂ reproduces the shares of that market."""
    products, agents = small_economy.economy()
    products = products.copy()
    products.loc[0, "shares"] = 1e-300
    products.loc[0, "x"] = 5.0
    model = _small_economy_model(products, agents)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = model.fit(
            sigma=[[0.5, 0.0], [0.0, 4.0]],
            pi=small_economy.PI,
            method="1s",
            optimizer=lambda fun, theta, bounds: theta,
            compute_hessian=False,
        )
    assert not [w for w in caught if "starts instead" in str(w.message)]
    assert results.params["sigma[x,x]"] == 4.0
    assert results.info.convergence["fp_converged"]
    market = products["market_ids"].iloc[0]
    rows = (products["market_ids"] == market).to_numpy()
    people = agents[agents["market_ids"] == market]
    price_taste = 0.5 * people["nodes0"].to_numpy() + 0.3 * people["income"].to_numpy()
    x_taste = 4.0 * people["nodes1"].to_numpy()
    mu = np.outer(products["prices"].to_numpy()[rows], price_taste) + np.outer(
        products["x"].to_numpy()[rows], x_taste
    )
    delta = results.delta.to_numpy()[rows]
    assert delta.max() - delta[0] > 708  # the subnormal regime of exp(δ_0 − max δ)
    miss = exact_miss(delta, mu, people["weights"].to_numpy(), products["shares"].to_numpy()[rows])
    assert miss < 5e-13


# ---------------------------------------------------------------- consumer surplus (2.8)


def test_log_sum_of_an_agent_far_below_the_outside_good_is_finite():
    """log(1 + Σ_j e^{V_j}) for an agent with utilities −800 and −801 is 0 (to the last double),
    for one with 0.5 and −1 it is log(1 + e^{0.5} + e^{−1}); the surplus divides by −α. The
    fast path read it off as −log(1/(e^{−c−m} + S)) + c + m with e^{−m} = e^{800} = inf."""
    delta = np.array([[0.0, -1.0]])
    mu = np.array([[[-800.0, 0.5], [-800.0, 0.0]]])
    weights = np.array([[0.5, 0.5]])
    evaluator = ShareEvaluator(mu, weights, np.ones((1, 2), bool), Nesting.unnested((1, 2)))
    probabilities = evaluator.probabilities(delta)
    utilities = delta[0][:, None] + mu[0]
    closed = np.logaddexp.reduce(np.vstack([np.zeros(2), utilities]), axis=0)
    assert closed[0] == pytest.approx(0.0, abs=1e-300)
    np.testing.assert_allclose(probabilities.log_denominator[0], closed, rtol=1e-15, atol=1e-300)
    assert closed[1] == pytest.approx(np.log(1 + np.exp(0.5) + np.exp(-1.0)), rel=1e-15)
    alpha = np.array([[-2.0, -2.0]])
    surplus = equilibrium.consumer_surplus(probabilities.log_denominator, weights, alpha)
    np.testing.assert_allclose(surplus, [0.5 * closed[1] / 2.0], rtol=1e-15)


def test_agents_far_below_zero_in_a_market_with_a_large_delta_keep_their_shares():
    """Largest δ 720, agents' utilities −718 and −725 below it and one at −700: the shares
    and log-sums equal the logit formula written out with numpy (both agents at −718 and −725
    were given probability 0, e^{−720}·e^{718} = subnormal × inf, halving the shares)."""
    delta = np.array([[720.0, 719.0]])
    mu = np.array([[[-718.0, -725.0, -700.0], [-718.0, -725.0, -700.0]]])
    weights = np.full((1, 3), 1 / 3)
    evaluator = ShareEvaluator(mu, weights, np.ones((1, 2), bool), Nesting.unnested((1, 2)))
    utilities = delta[0][:, None] + mu[0]  # [[2, −5, 20], [1, −6, 19]]
    probabilities = np.exp(utilities) / (1 + np.exp(utilities).sum(axis=0))
    expected = probabilities @ weights[0]
    np.testing.assert_allclose(evaluator.shares(delta)[0], expected, rtol=1e-13)
    np.testing.assert_allclose(evaluator.log_shares(delta)[0], np.log(expected), rtol=1e-13)
    computed = evaluator.probabilities(delta, factored=True)
    np.testing.assert_allclose(computed.shares[0], expected, rtol=1e-13)
    closed = np.log1p(np.exp(utilities).sum(axis=0))
    np.testing.assert_allclose(computed.log_denominator[0], closed, rtol=1e-13)


#: pyblp 1.3.0's ``compute_consumer_surpluses()`` on the Petrin minivan data at the tutorial's
#: starting values (demand only, SQUAREM atol 1e-13), recorded 2026-12-07; see
#: :func:`test_petrin_surplus_recorded_values_are_pyblps`.
PETRIN_SURPLUS_PYBLP = [
    0.6433694544194186, 0.7761945670042614, 0.9563648321306775, 0.9647695837082411,
    1.5068994673360099, 1.4645051268637914, 1.4283291317606726, 1.2549522967466697,
    1.4190320161171672, 1.2296371684986536, 0.9663761507605442, 1.1769474308085488,
    1.2238648767086238,
]  # fmt: skip


@pytest.fixture(scope="module")
def petrin_at_start():
    require_data(*(f"pyblp/petrin_{name}.csv" for name in ("products", "agents", "values")))
    import test_micro_petrin as petrin

    products, agents = petrin.load_petrin()
    model = BLPRandomCoefficients.from_formula(
        f"shares ~ {petrin.X1} + [0 ~ {petrin.DEMAND_INSTRUMENTS}]",
        products,
        random=petrin.X2,
        demographics=petrin.DEMOGRAPHICS,
        agent_data=petrin.shifted_agents(agents),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # staying at the start is no convergence
        results = model.fit(
            petrin.SIGMA,
            petrin.PI,
            optimizer=lambda fun, theta, bounds: theta,
            compute_hessian=False,
            fp_tol=petrin.FP_TOL,
        )
    return petrin, products, agents, results


@pytest.mark.data
def test_petrin_consumer_surplus_equals_pyblps(petrin_at_start):
    """Petrin's minivans at the tutorial's starting values: every market's surplus is finite
    and equals pyblp's (10 of 13 were inf). Measured: 1.1e-13 relative at most."""
    *_, results = petrin_at_start
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warnings either
        surplus = results.consumer_surplus()
    np.testing.assert_allclose(surplus.to_numpy(), PETRIN_SURPLUS_PYBLP, rtol=1e-10)


@pytest.mark.data
@pytest.mark.slow
def test_petrin_surplus_recorded_values_are_pyblps(petrin_at_start, pyblp):
    """The recorded surpluses are what pyblp 1.3.0 computes (30 s to 2 minutes here)."""
    petrin, products, agents, _ = petrin_at_start
    problem = pyblp.Problem(
        (pyblp.Formulation(petrin.X1), pyblp.Formulation(petrin.X2)),
        products,
        pyblp.Formulation(
            "1 + I(low / income) + I(mid / income) + I(high / income) + I(log(fs) * fv) + age"
            " + fs + mid + high"
        ),
        agents,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        solved = problem.solve(
            sigma=petrin.SIGMA,
            pi=np.c_[np.zeros(11), petrin.PI, np.zeros((11, 4))],
            iteration=pyblp.Iteration("squarem", {"atol": petrin.FP_TOL}),
            method="1s",
            optimization=pyblp.Optimization("return"),
        )
    surplus = np.ravel(solved.compute_consumer_surpluses())
    np.testing.assert_allclose(surplus, PETRIN_SURPLUS_PYBLP, rtol=1e-10)


# ---------------------------------------------------------------- conf_int alpha (2.7)


@pytest.fixture(scope="module")
def logit_results():
    products = simulate_logit_products()
    return BLPLogit.from_formula("shares ~ 1 + x + [prices ~ z1 + z2]", products).fit()


@pytest.mark.parametrize(
    "alpha", [2, 1, 1.0, 0, 0.0, -0.1, np.nan, np.inf, "0.05", True, None, 0.05j]
)
def test_conf_int_refuses_alpha_outside_the_unit_interval(logit_results, alpha):
    with pytest.raises(BLPInputError, match="alpha must be"):
        logit_results.conf_int(alpha=alpha)
    with pytest.raises(BLPInputError, match="alpha must be"):
        logit_results.summary(alpha=alpha)


def test_conf_int_is_params_plus_minus_z_bse(logit_results):
    """At alpha = 0.1 the bounds are params ∓ 1.6448536269514722 bse (z_0.95 written out)."""
    bounds = logit_results.conf_int(alpha=0.1)
    z = 1.6448536269514722
    params, bse = logit_results.params, logit_results.bse
    np.testing.assert_allclose(bounds[0], params - z * bse, rtol=1e-13)
    np.testing.assert_allclose(bounds[1], params + z * bse, rtol=1e-13)
    assert list(bounds.index) == list(params.index)
    assert isinstance(logit_results.conf_int(np.float32(0.05)), pd.DataFrame)


def _small_economy_model(products: pd.DataFrame, agents: pd.DataFrame) -> BLPRandomCoefficients:
    """The small economy's model (random coefficients on prices and x, Π on income)."""
    return BLPRandomCoefficients.from_formula(
        small_economy.FORMULA,
        products,
        random="0 + prices + x",
        demographics="0 + income",
        agent_data=agents,
    )


# ---------------------------------------------------------------- micro moments (2.4)


@pytest.fixture(scope="module")
def micro_model():
    """The small economy with a 0/1 product column ``premium`` (x > 0)."""
    products, agents = small_economy.economy()
    products = products.assign(premium=(products["x"] > 0).astype(float))
    return _small_economy_model(products, agents)


def diversion_survey():
    return MicroDataset("diversion", 200, ["M01", "M02"], second_choices=True)


@pytest.mark.parametrize("value", [1.5, -0.1, 100.0])
def test_second_choice_share_outside_the_unit_interval_is_refused(value):
    with pytest.raises(BLPInputError, match=r"must be in \[0, 1\], got"):
        MicroMoment.second_choice(diversion_survey(), value, to="outside")


@pytest.mark.parametrize("value", [0.0, 0.28, 1.0])
def test_second_choice_shares_in_the_unit_interval_are_accepted(micro_model, value):
    moment = MicroMoment.second_choice(diversion_survey(), value, first="premium", to="premium")
    assert moment.value == value
    micro_model.micro_block([moment])


def test_fit_refuses_a_probability_moment_above_one_before_any_work(micro_model, no_contraction):
    """A one-part moment whose values are 0/1 (here pyblp-style, written by hand: buyers of a
    premium product) is a probability: 1.5 is refused when the moments are checked against
    the data, before δ is solved; the same part observed at 0.4 is accepted."""
    survey = MicroDataset("buyers", 100, ["M01"])

    def premium(t, products, agents):
        return np.outer(np.ones(len(agents)), np.r_[0.0, products["premium"].to_numpy()])

    bad = MicroMoment("P(premium)", survey, 1.5, parts=[premium])
    with pytest.raises(BLPInputError, match=r"'P\(premium\)'.*probability.*in \[0, 1\], got 1.5"):
        micro_model.fit(sigma=small_economy.SIGMA, pi=small_economy.PI, micro_moments=[bad])
    micro_model.micro_block([MicroMoment("P(premium)", survey, 0.4, parts=[premium])])
    # A mean of a demographic is no probability: any value stays allowed.
    income = MicroMoment.mean("income", survey, 1.5)
    micro_model.micro_block([income])


@pytest.mark.parametrize(
    ("constructor", "column"),
    [("mean", "x"), ("mean", "premium + 2"), ("first", "x"), ("to", "prices")],
)
def test_selecting_columns_must_be_zero_or_one(micro_model, no_contraction, constructor, column):
    """``among=``, ``first=`` and ``to=`` select products: a column with other values than 0
    and 1 is an error naming it and the market, not a set of weights."""
    if constructor == "mean":
        moment = MicroMoment.mean("income", MicroDataset("buyers", 100, ["M02"]), 0.1, among=column)
    elif constructor == "first":
        moment = MicroMoment.second_choice(diversion_survey(), 0.2, first=column)
    else:
        moment = MicroMoment.second_choice(diversion_survey(), 0.2, to=column)
    pattern = rf"in market 'M0[12]'.*{constructor if constructor != 'mean' else 'among'} "
    with pytest.raises(BLPInputError, match=pattern + r".*must be a 0/1 product column"):
        micro_model.fit(sigma=small_economy.SIGMA, pi=small_economy.PI, micro_moments=[moment])


def test_mean_among_a_zero_one_column_is_the_mean_among_its_buyers(micro_model):
    """E[income | premium] at the starting values equals Σ_i w_i income_i Σ_{j premium} P_ij /
    Σ_i w_i Σ_{j premium} P_ij, with P_ij written out from the parameters (market M01)."""
    products, agents = small_economy.economy()
    products = products.assign(premium=(products["x"] > 0).astype(float))
    moment = MicroMoment.mean("income", MicroDataset("buyers", 100, ["M01"]), 0.0, among="premium")
    results = at_parameters(
        micro_model, sigma=small_economy.SIGMA, pi=small_economy.PI, micro_moments=[moment]
    )
    rows = (products["market_ids"] == "M01").to_numpy()
    people = agents[agents["market_ids"] == "M01"]
    price_taste = 0.5 * people["nodes0"].to_numpy() + 0.3 * people["income"].to_numpy()
    x_taste = 0.5 * people["nodes1"].to_numpy()
    utility = (
        results.delta.to_numpy()[rows][:, None]
        + np.outer(products["prices"].to_numpy()[rows], price_taste)
        + np.outer(products["x"].to_numpy()[rows], x_taste)
    )
    probabilities = np.exp(utility) / (1 + np.exp(utility).sum(axis=0))
    premium = products["premium"].to_numpy()[rows]
    assert 0 < premium.sum() < premium.size
    bought = people["weights"].to_numpy() * (premium @ probabilities)
    expected = (bought * people["income"].to_numpy()).sum() / bought.sum()
    model_value = results.micro_values()["model"].iloc[0]
    assert model_value == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------- sparse-grid agent data (3.2)


def grid_agents(level: int = 3):
    """``build_integration(Integration("grid", level), 2, ...)`` with each market's mean income
    of the small economy's agents added as a demographic (the documented recipe)."""
    products, agents = small_economy.economy()
    nodes = build_integration(Integration("grid", level), 2, products["market_ids"])
    income = agents.groupby("market_ids")["income"].mean()
    return products, nodes.assign(income=nodes["market_ids"].map(income).to_numpy())


def test_sparse_grid_nodes_with_demographics_are_accepted_as_agent_data():
    """The level-3 grid in two dimensions has 4 negative weights among 13 nodes. Passed back as
    agent data with a demographic, the fit keeps them: at the returned δ the shares written
    out here with the grid's own (negative) weights equal the observed ones to 1e-13."""
    products, agents = grid_agents()
    assert (agents["weights"] < 0).sum() == 4 * products["market_ids"].nunique()
    model = _small_economy_model(products, agents)
    results = at_parameters(model, sigma=small_economy.SIGMA, pi=small_economy.PI)
    assert results.info.convergence["fp_converged"]
    for market in ("M01", "M07"):
        rows = (products["market_ids"] == market).to_numpy()
        people = agents[agents["market_ids"] == market]
        price_taste = 0.5 * people["nodes0"].to_numpy() + 0.3 * people["income"].to_numpy()
        utility = (
            results.delta.to_numpy()[rows][:, None]
            + np.outer(products["prices"].to_numpy()[rows], price_taste)
            + np.outer(products["x"].to_numpy()[rows], 0.5 * people["nodes1"].to_numpy())
        )
        probabilities = np.exp(utility) / (1 + np.exp(utility).sum(axis=0))
        shares = probabilities @ people["weights"].to_numpy()
        np.testing.assert_allclose(shares, products["shares"].to_numpy()[rows], rtol=1e-13)


def test_negative_weights_off_a_sparse_grid_are_still_refused():
    """Monte Carlo draws with a negative weight, and a grid whose nodes in one market were
    replaced by random draws, are errors naming the market."""
    products, agents = grid_agents()
    draws = build_integration(Integration("monte_carlo", 20, seed=1), 2, products["market_ids"])
    draws.loc[3, "weights"] = -0.05
    draws.loc[4, "weights"] += 0.1
    changed = agents.copy()
    in_m05 = (changed["market_ids"] == "M05").to_numpy()
    changed.loc[in_m05, ["nodes0", "nodes1"]] = np.random.default_rng(0).normal(
        size=(int(in_m05.sum()), 2)
    )
    for agent_data, market in ((draws, "M01"), (changed, "M05")):
        with pytest.raises(
            BLPInputError, match=rf"negative weights in 1 market\(s\): \['{market}'\]"
        ):
            BLPRandomCoefficients.from_formula(
                small_economy.FORMULA,
                products,
                random="0 + prices + x",
                demographics="0 + income" if "income" in agent_data else None,
                agent_data=agent_data,
            )
