"""Random-coefficients nested logit with two-level nests (segments within size classes).

The oracles are independent of the package's two-level kernel: shares by explicit loops over
agents and nests (:func:`loop_shares`), derivatives by central differences of those shares,
the two-level nested logit (Σ = 0: Verboven's closed-form inversion and linear IV), the
one-level RCNL at the boundaries ρ_upper = ρ_lower and ρ_upper = 0 (ours and pyblp's), finite
differences of the objective, and a simulated economy with known parameters.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from blpmodels import BLPNestedLogit, BLPRandomCoefficients, ConvergenceWarning
from blpmodels.exceptions import BLPInputError
from blpmodels.kernel.nests import TwoLevelNesting
from blpmodels.kernel.two_level_rcnl import (
    TwoLevelShareEvaluator,
    two_level_agent_probabilities,
    two_level_rho_jacobian,
    two_level_share_jacobian_agents,
    two_level_theta_jacobian,
)

FORMULA = "shares ~ 1 + x + [prices ~ z1 + z2 + x_lower + x_upper + n_lower + n_upper]"
NESTS = ["size", "segment"]
TRUTH = {"x": 1.0, "prices": -1.0, "sigma[x,x]": 0.8, "rho_upper": 0.3, "rho_lower": 0.6}


def loop_shares(delta, mu, weights, upper, lower, rho_upper, rho_lower) -> np.ndarray:
    """One market's shares, agent by agent and nest by nest (lower nest = (upper, lower) pair).

    D_hi = Σ_{j∈h} e^{V_ji/(1−ρ_L)}, D_gi = Σ_{h∈g} D_hi^{(1−ρ_L)/(1−ρ_U)},
    P_ji = e^{V_ji/(1−ρ_L)}/D_hi · D_hi^{(1−ρ_L)/(1−ρ_U)}/D_gi
           · D_gi^{1−ρ_U}/(1 + Σ_g D_gi^{1−ρ_U}).
    """
    keys = list(zip(upper, lower, strict=True))
    shares = np.zeros(len(keys), dtype=np.result_type(delta, mu))  # complex steps pass through
    for i, weight in enumerate(weights):
        utility = np.exp((np.asarray(delta) + mu[:, i]) / (1 - rho_lower))
        d_lower: dict = {}
        for j, key in enumerate(keys):
            d_lower[key] = d_lower.get(key, 0.0) + utility[j]
        power = (1 - rho_lower) / (1 - rho_upper)
        d_upper: dict = {}
        for (g, _), value in d_lower.items():
            d_upper[g] = d_upper.get(g, 0.0) + value**power
        denominator = 1 + sum(value ** (1 - rho_upper) for value in d_upper.values())
        for j, key in enumerate(keys):
            within = utility[j] / d_lower[key]
            nest = d_lower[key] ** power / d_upper[key[0]]
            group = d_upper[key[0]] ** (1 - rho_upper) / denominator
            shares[j] += weight * within * nest * group
    return shares


def simulate(n_markets: int, seed: int = 0, n_agents: int = 40, truth=TRUTH) -> tuple:
    """Markets of 6–10 products in sizes × segments (labels repeat across sizes); agents
    with one normal node for the coefficient on x."""
    rng = np.random.default_rng(seed)
    frames, agent_frames = [], []
    for t in range(n_markets):
        n = int(rng.integers(6, 11))
        size = rng.choice(["small", "large"], n)
        segment = rng.choice(["a", "b"], n)
        x, z1, z2 = rng.normal(size=n), rng.normal(size=n), rng.normal(size=n)
        xi = 0.3 * rng.normal(size=n)
        prices = 1.0 + 0.5 * z1 + 0.3 * z2 + 0.5 * xi + 0.1 * rng.normal(size=n)
        delta = truth["x"] * x + truth["prices"] * prices + xi
        nodes = rng.normal(size=n_agents)
        weights = np.full(n_agents, 1.0 / n_agents)
        mu = truth["sigma[x,x]"] * x[:, None] * nodes[None, :]
        shares = loop_shares(
            delta, mu, weights, size, segment, truth["rho_upper"], truth["rho_lower"]
        )
        frames.append(
            pd.DataFrame(
                {
                    "market_ids": t,
                    "product_ids": np.arange(n),
                    "firm_ids": np.arange(n) % 3,
                    "size": size,
                    "segment": segment,
                    "x": x,
                    "z1": z1,
                    "z2": z2,
                    "prices": prices,
                    "shares": shares,
                }
            )
        )
        agent_frames.append(pd.DataFrame({"market_ids": t, "weights": weights, "nodes0": nodes}))
    frame = pd.concat(frames, ignore_index=True)
    lower = frame.groupby(["market_ids", "size", "segment"])
    upper = frame.groupby(["market_ids", "size"])
    frame["n_lower"] = lower["x"].transform("size")
    frame["n_upper"] = upper["x"].transform("size")
    frame["x_lower"] = lower["x"].transform("sum") - frame["x"]
    frame["x_upper"] = upper["x"].transform("sum") - frame["x"]
    frame["pair"] = frame["size"] + "/" + frame["segment"]
    return frame, pd.concat(agent_frames, ignore_index=True)


@pytest.fixture(scope="module")
def economy():
    return simulate(40, seed=3)


def _model(products, agents, nesting_ids=NESTS, **kwargs):
    return BLPRandomCoefficients.from_formula(
        FORMULA, products, random="0 + x", agent_data=agents, nesting_ids=nesting_ids, **kwargs
    )


@pytest.fixture(scope="module")
def results(economy):
    products, agents = economy
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        return _model(products, agents).fit(sigma=0.5, rho=[0.2, 0.5])


# ------------------------------------------------------------------------------- kernel
def _kernel_case(rho_upper=0.3, rho_lower=0.6, seed=0):
    """Three padded markets, lower nests {0,1}, {2}, {3,4}, {5} in upper nests {0,1}, {2,3}."""
    rng = np.random.default_rng(seed)
    n_markets, n_products, n_agents = 3, 6, 5
    lower = np.tile([0, 0, 1, 2, 2, 3], (n_markets, 1))
    lower_to_upper = np.array([0, 0, 1, 1])
    mask = np.ones((n_markets, n_products), bool)
    mask[1, 5] = mask[2, 2] = False
    lower = np.where(mask, lower, 0)
    delta = np.where(mask, rng.normal(size=(n_markets, n_products)), 0.0)
    mu = np.where(mask[:, :, None], rng.normal(size=(n_markets, n_products, n_agents)), 0.0)
    weights = rng.uniform(0.5, 1.5, size=(n_markets, n_agents))
    weights /= weights.sum(axis=1, keepdims=True)
    nesting = TwoLevelNesting(lower, lower_to_upper, 2, rho_upper, rho_lower)
    return delta, mu, weights, mask, nesting


def _loop_market_shares(delta, mu, weights, mask, nesting, rho_upper=None, rho_lower=None):
    rho_upper = nesting.rho_upper if rho_upper is None else rho_upper
    rho_lower = nesting.rho_lower if rho_lower is None else rho_lower
    out = np.zeros(delta.shape)
    for t in range(delta.shape[0]):
        real = mask[t]
        lower = nesting.lower[t, real]
        upper = nesting.lower_to_upper[lower]
        out[t, real] = loop_shares(
            delta[t, real], mu[t][real], weights[t], upper, lower, rho_upper, rho_lower
        )
    return out


def test_agent_probabilities_equal_loops_over_agents_and_nests():
    delta, mu, weights, mask, nesting = _kernel_case()
    probabilities = two_level_agent_probabilities(delta, mu, weights, mask, nesting)
    expected = _loop_market_shares(delta, mu, weights, mask, nesting)
    np.testing.assert_allclose(probabilities.shares, expected, rtol=1e-13, atol=1e-16)
    assert np.all(probabilities.shares[~mask] == 0)
    evaluator = TwoLevelShareEvaluator(mu, weights, mask, nesting)
    logs = evaluator.log_shares(delta)
    np.testing.assert_allclose(logs[mask], np.log(expected[mask]), rtol=0, atol=1e-13)
    # Far below the outside good, shares are tiny but their logs stay exact (log-sum-exp
    # safe), and where shares underflow the logs still move one for one with δ.
    low = _loop_market_shares(delta - 50.0, mu, weights, mask, nesting)
    np.testing.assert_allclose(
        evaluator.log_shares(delta - 50.0)[mask], np.log(low[mask]), rtol=0, atol=1e-12
    )
    far, farther = evaluator.log_shares(delta - 800.0), evaluator.log_shares(delta - 900.0)
    np.testing.assert_allclose(farther[mask] - far[mask], -100.0, atol=1e-9)


def test_nest_sums_that_underflow_with_the_shift_bound_are_summed_exactly():
    """Utilities V = δ + μ of −400 reached as 0 + (−400) and (−400) + 0: the shift bound
    max δ/λ + max μ/λ = 0 lies 1,000 above every term, so those markets take exact maxima
    and give the shares of the same V reached without the spread."""
    nesting = TwoLevelNesting(np.array([[0, 0, 1]]), np.array([0, 1]), 2, 0.2, 0.6)
    mask, weights = np.ones((1, 3), bool), np.ones((1, 1))
    spread = two_level_agent_probabilities(
        np.array([[0.0, -400.0, -1.0]]),
        np.array([[[-400.0], [0.0], [0.0]]]),
        weights,
        mask,
        nesting,
    )
    plain = two_level_agent_probabilities(
        np.array([[-400.0, -400.0, -1.0]]), np.zeros((1, 3, 1)), weights, mask, nesting
    )
    assert spread.shares[0, 0] > 0
    np.testing.assert_allclose(spread.shares, plain.shares, rtol=1e-12)


def _central(function, point, step=1e-6):
    return (function(point + step) - function(point - step)) / (2 * step)


def test_share_derivatives_equal_differences_of_the_loop_shares():
    delta, mu, weights, mask, nesting = _kernel_case(seed=1)
    probabilities = two_level_agent_probabilities(delta, mu, weights, mask, nesting)
    rng = np.random.default_rng(5)
    # ∂s/∂δ and ∂s/∂x with an agent-specific utility derivative D (as ∂V/∂p).
    derivative = rng.normal(size=mu.shape)
    by_delta = two_level_share_jacobian_agents(probabilities, weights, nesting, mask)
    by_x = two_level_share_jacobian_agents(probabilities, weights, nesting, mask, derivative)
    for k in range(delta.shape[1]):
        column = np.zeros(delta.shape)
        column[:, k] = 1.0
        numeric = _central(
            lambda h, c=column: _loop_market_shares(delta + h * c, mu, weights, mask, nesting),
            0.0,
        )
        numeric_x = _central(
            lambda h, c=column: _loop_market_shares(
                delta, mu + h * c[:, :, None] * derivative, weights, mask, nesting
            ),
            0.0,
        )
        real = mask[:, k]
        np.testing.assert_allclose(by_delta[real, :, k], numeric[real], atol=1e-9)
        np.testing.assert_allclose(by_x[real, :, k], numeric_x[real], atol=1e-9)
    # ∂s/∂θ for μ = X2 g (two columns, three parameters).
    x = np.where(mask[:, :, None], rng.normal(size=(*mask.shape, 2)), 0.0)
    factors = [rng.normal(size=(3, 2, 5)), rng.normal(size=(3, 1, 5))]
    pieces = two_level_theta_jacobian(probabilities, weights, nesting, x, factors)
    for column, factor in enumerate(factors):
        for entry in range(factor.shape[1]):
            direction = x[:, :, column, None] * factor[:, entry][:, None, :]
            numeric = _central(
                lambda h, d=direction: _loop_market_shares(
                    delta, mu + h * d, weights, mask, nesting
                ),
                0.0,
            )
            np.testing.assert_allclose(pieces[column][:, :, entry], numeric, atol=1e-9)
    # ∂s/∂ρ_upper and ∂s/∂ρ_lower.
    by_rho = two_level_rho_jacobian(probabilities, weights, nesting, mask)
    d_upper = _central(
        lambda h: _loop_market_shares(delta, mu, weights, mask, nesting, rho_upper=0.3 + h), 0.0
    )
    d_lower = _central(
        lambda h: _loop_market_shares(delta, mu, weights, mask, nesting, rho_lower=0.6 + h), 0.0
    )
    assert np.abs(by_rho).max() > 0.01
    np.testing.assert_allclose(by_rho[:, :, 0], d_upper, atol=1e-9)
    np.testing.assert_allclose(by_rho[:, :, 1], d_lower, atol=1e-9)


# ---------------------------------------------------------------- Σ = 0: the nested logit
def test_without_random_coefficients_it_is_the_two_level_nested_logit(economy):
    """σ fixed at 0: δ from the contraction is Verboven's closed-form inversion, and the
    estimates are the two-level nested logit's linear IV (the same objective and W)."""
    products, agents = economy
    model = _model(products, agents)
    parameters = model.parameters(sigma=0, rho=[0.25, 0.55])
    evaluation = model.objective_function(parameters).evaluate(parameters.theta0)
    s = products["shares"].to_numpy()
    within_lower = products.groupby(["market_ids", "size", "segment"])["shares"].transform("sum")
    within_upper = products.groupby(["market_ids", "size"])["shares"].transform("sum")
    outside = 1 - products.groupby("market_ids")["shares"].transform("sum")
    verboven = (
        np.log(s)
        - np.log(outside)
        - 0.55 * np.log(s / within_lower)
        - 0.25 * np.log(within_lower / within_upper)
    )
    np.testing.assert_allclose(evaluation.delta, verboven, atol=1e-11)

    rcnl = model.fit(sigma=0, rho=[0.25, 0.55], compute_hessian=False)
    nested = BLPNestedLogit.from_formula(FORMULA, products, nesting_ids=NESTS).fit()
    names = ["Intercept", "x", "prices", "rho_upper", "rho_lower"]
    np.testing.assert_allclose(rcnl.params[names], nested.params[names], atol=2e-6)
    assert rcnl.objective == pytest.approx(nested.j_stat.stat, rel=1e-6, abs=1e-8)


# ------------------------------------------------------------- boundaries: one-level RCNL
def test_equal_rho_is_the_one_level_rcnl_on_the_upper_nests(economy):
    products, agents = economy
    two = _model(products, agents)
    one = _model(products, agents, nesting_ids="size")
    theta_two = np.array([0.7, 0.45, 0.45])
    objective_two = two.objective_function(two.parameters(sigma=0.7, rho=[0.45, 0.45]))
    objective_one = one.objective_function(one.parameters(sigma=0.7, rho=0.45))
    a = objective_two.evaluate(theta_two)
    b = objective_one.evaluate(np.array([0.7, 0.45]))
    np.testing.assert_allclose(a.delta, b.delta, atol=1e-11)
    assert a.objective == pytest.approx(b.objective, rel=1e-9)
    # ∂q/∂σ agrees; ∂q/∂ρ of the one-level model moves both levels together.
    assert a.gradient[0] == pytest.approx(b.gradient[0], rel=1e-7)
    assert a.gradient[1] + a.gradient[2] == pytest.approx(b.gradient[1], rel=1e-7)


def test_zero_rho_upper_is_the_one_level_rcnl_on_the_lower_nests(economy):
    products, agents = economy
    two = _model(products, agents)
    one = _model(products, agents, nesting_ids="pair")
    parameters = two.parameters(sigma=0.7, rho=[0.0, 0.5])
    assert parameters.names == ["sigma[x,x]", "rho_lower"]  # a zero start fixes ρ_upper
    a = two.objective_function(parameters).evaluate(np.array([0.7, 0.5]))
    b = one.objective_function(one.parameters(sigma=0.7, rho=0.5)).evaluate(np.array([0.7, 0.5]))
    np.testing.assert_allclose(a.delta, b.delta, atol=1e-11)
    assert a.objective == pytest.approx(b.objective, rel=1e-9)
    np.testing.assert_allclose(a.gradient, b.gradient, rtol=1e-7)


@pytest.mark.filterwarnings("ignore:The model may be under-identified")
def test_equal_rho_delta_matches_pyblp_one_level_rcnl(economy):
    pyblp = pytest.importorskip("pyblp")
    products, agents = economy
    markets = products["market_ids"] < 10
    frame = products[markets].assign(nesting_ids=products.loc[markets, "size"])
    people = agents[agents["market_ids"] < 10]
    model = _model(frame, people)
    objective = model.objective_function(model.parameters(sigma=0.7, rho=[0.45, 0.45]))
    ours = objective.evaluate(np.array([0.7, 0.45, 0.45]), gradient=False)
    pyblp.options.verbose = False
    problem = pyblp.Problem(
        (pyblp.Formulation("1 + x + prices"), pyblp.Formulation("0 + x")),
        frame.assign(demand_instruments0=frame["z1"]).drop(columns=["firm_ids"]),
        agent_data=people,
    )
    theirs = problem.solve(
        sigma=0.7,
        rho=0.45,
        optimization=pyblp.Optimization("return"),
        method="1s",
        iteration=pyblp.Iteration("squarem", {"atol": 1e-14}),
    )
    np.testing.assert_allclose(ours.delta, np.asarray(theirs.delta).ravel(), atol=1e-10)


# ---------------------------------------------------------------- objective and gradient
def test_gradient_equals_differences_of_the_objective(economy):
    products, agents = economy
    model = _model(products, agents)
    objective = model.objective_function(model.parameters(sigma=0.6, rho=[0.2, 0.5]))
    theta = np.array([0.6, 0.2, 0.5])
    analytic = objective.evaluate(theta).gradient
    step = 1e-6
    numeric = []
    for k in range(theta.size):
        shift = np.zeros(theta.size)
        shift[k] = step
        plus = objective.evaluate(theta + shift, gradient=False).objective
        minus = objective.evaluate(theta - shift, gradient=False).objective
        numeric.append((plus - minus) / (2 * step))
    assert np.all(np.abs(analytic) > 0.1)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5)


# ------------------------------------------------------------------ simulated economy
def test_simulated_economy_recovers_the_truth(results):
    truth = pd.Series(TRUTH)
    assert results.info.convergence["converged"]
    assert list(results.params.index[-3:]) == ["sigma[x,x]", "rho_upper", "rho_lower"]
    z = (results.params[truth.index] - truth) / results.bse[truth.index]
    assert np.all(np.abs(z) < 3), z


def test_elasticities_and_diversion_equal_differences_of_loop_shares(results, economy):
    products, agents = economy
    market = products[products["market_ids"] == 2]
    people = agents[agents["market_ids"] == 2]
    params = results.params
    delta = results.delta[market.index].to_numpy()
    mu = params["sigma[x,x]"] * market["x"].to_numpy()[:, None] * people["nodes0"].to_numpy()
    weights = people["weights"].to_numpy()

    def shares(prices):
        moved = delta + params["prices"] * (prices - market["prices"].to_numpy())
        return loop_shares(
            moved,
            mu,
            weights,
            market["size"],
            market["segment"],
            params["rho_upper"],
            params["rho_lower"],
        )

    base_prices = market["prices"].to_numpy()
    base = shares(base_prices)
    jacobian = np.empty((base.size, base.size))
    for k in range(base.size):
        step = np.zeros(base.size)
        step[k] = 1e-6
        jacobian[:, k] = (shares(base_prices + step) - shares(base_prices - step)) / 2e-6
    elasticities = results.elasticities(market_id=2).to_numpy()
    expected = jacobian * base_prices[None, :] / base[:, None]
    np.testing.assert_allclose(elasticities, expected, rtol=1e-6, atol=1e-9)
    # Row j: where demand goes when p_j rises, −(∂s_k/∂p_j)/(∂s_j/∂p_j); the diagonal holds
    # the outside good.
    diversion = results.diversion_ratios(market_id=2).to_numpy()
    off = ~np.eye(base.size, dtype=bool)
    expected_diversion = -jacobian.T / np.diag(jacobian)[:, None]
    np.testing.assert_allclose(diversion[off], expected_diversion[off], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(diversion.sum(axis=1), 1.0, atol=1e-12)


def test_consumer_surplus_and_delta_recomputation(results, economy):
    products, agents = economy
    # compute_delta inverts the shares with the two-level kernel: it returns δ̂.
    np.testing.assert_allclose(results.compute_delta(agent_data=agents), results.delta, atol=1e-10)
    # Consumer surplus: Σ_i w_i log(1 + Σ_g D_gi^{1−ρ_U}) / |α|, summed here by loops.
    market = products[products["market_ids"] == 5]
    people = agents[agents["market_ids"] == 5]
    params = results.params
    rho_upper, rho_lower = params["rho_upper"], params["rho_lower"]
    delta = results.delta[market.index].to_numpy()
    log_sum = 0.0
    for node, weight in zip(people["nodes0"], people["weights"], strict=True):
        utility = delta + params["sigma[x,x]"] * market["x"].to_numpy() * node
        d_lower: dict = {}
        for j, key in enumerate(zip(market["size"], market["segment"], strict=True)):
            d_lower[key] = d_lower.get(key, 0.0) + np.exp(utility[j] / (1 - rho_lower))
        d_upper: dict = {}
        for (g, _), value in d_lower.items():
            d_upper[g] = d_upper.get(g, 0.0) + value ** ((1 - rho_lower) / (1 - rho_upper))
        log_sum += weight * np.log1p(sum(v ** (1 - rho_upper) for v in d_upper.values()))
    surplus = results.consumer_surplus(market_id=5)
    np.testing.assert_allclose(surplus.iloc[0], log_sum / -params["prices"], rtol=1e-10)


# ------------------------------------------------------------------------ bad input
def test_rho_out_of_order_warns_and_rho_of_one_is_refused(economy):
    products, agents = economy
    model = _model(products, agents)
    with pytest.warns(ConvergenceWarning, match="rho_upper=0.6, rho_lower=0.3 violate"):
        model.parameters(sigma=0.5, rho=[0.6, 0.3])
    with pytest.raises(BLPInputError, match=r"rho must lie in \[0, 1\)"):
        model.parameters(sigma=0.5, rho=[0.3, 1.0])
    with pytest.raises(BLPInputError, match=r"rho=\[rho_upper, rho_lower\]"):
        model.parameters(sigma=0.5)


def test_unsupported_features_are_refused_before_work(results, economy):
    products, agents = economy
    with pytest.raises(BLPInputError, match="supply side"):
        _model(products, agents, supply="1 + x").fit(sigma=0.5, rho=[0.2, 0.5])
    with pytest.raises(BLPInputError, match="micro moments"):
        _model(products, agents).fit(sigma=0.5, rho=[0.2, 0.5], micro_moments=["survey"])
    with pytest.raises(BLPInputError, match="optimal_instruments"):
        results.optimal_instruments()
    with pytest.raises(BLPInputError, match="two-level"):
        results.importance_sampling(draws=5, seed=0)
