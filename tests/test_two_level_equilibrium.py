"""Equilibrium prices, mergers, counterfactuals and passthrough of the two-level nested logit.

Oracles, none of them the package's share code:

- the first-order conditions s + (Ω ⊙ (∂s/∂p)ᵀ)(p − c) = 0 solved per market by
  ``scipy.optimize.root``, with shares from :func:`hand_shares` (the inclusive-value formulas
  nest by nest, in ``test_two_level_nests.py``) and ∂s/∂p by complex-step differences of them;
- central differences of those first-order conditions for their Jacobian (the profit
  Hessians), and of the hand-solved prices for passthrough;
- the one-level nested logit at the boundaries ρ_upper = 0 (nests = the lower nests) and
  ρ_upper = ρ_lower (nests = the upper nests), whose mergers are checked against pyblp in
  ``test_equilibrium.py``.

Tolerances: the package and scipy both drive the profit gradients below 1e-12 on shares of
order 0.05, so prices agree to about 1e-10; 1e-8 leaves room. Central differences of the
complex-step conditions carry errors of order h² ~ 1e-10.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import hand_equilibrium
import numpy as np
import pandas as pd
import pytest
from hand_equilibrium import ownership
from test_two_level_nests import FORMULA, NESTS, hand_shares, simulate

from blpmodels import BLPInputError, BLPNestedLogit
from blpmodels.kernel.equilibrium import PriceState, foc_jacobian, foc_residual, solve_prices
from blpmodels.kernel.nests import TwoLevelNesting, two_level_price_derivatives


@pytest.fixture(scope="module")
def products() -> pd.DataFrame:
    frame = simulate(40, seed=3)
    frame["firm_ids"] = frame["product_ids"] % 3  # multi-product firms across nests
    return frame


@pytest.fixture(scope="module")
def results(products):
    return BLPNestedLogit.from_formula(FORMULA, products, nesting_ids=NESTS).fit()


# ---------------------------------------------------------------------------- the hand oracle
class HandMarket(hand_equilibrium.HandMarket):
    """One market's two-level demand written out: δ(p) = δ⁰ + α (p − p⁰)."""

    def __init__(self, delta, prices, alpha, size, segment, rho_upper, rho_lower):
        self.delta, self.prices, self.alpha = np.asarray(delta), np.asarray(prices), alpha
        self.size, self.segment = list(size), list(segment)
        self.rho = (rho_upper, rho_lower)

    @classmethod
    def of(cls, results, products: pd.DataFrame, market) -> HandMarket:
        rows = np.flatnonzero(products["market_ids"].to_numpy() == market)
        market_rows = products.iloc[rows]
        return cls(
            results.demand.delta[rows],
            market_rows["prices"].to_numpy(),
            float(results.params["prices"]),
            market_rows["size"],
            market_rows["segment"],
            float(results.params["rho_upper"]),
            float(results.params["rho_lower"]),
        )

    def shares(self, prices):
        delta = self.delta + self.alpha * (prices - self.prices)
        return hand_shares(delta, self.size, self.segment, *self.rho)


def _market_rows(products, market) -> pd.DataFrame:
    return products[products["market_ids"] == market]


# ---------------------------------------------------------------------------- kernel
def _kernel_state(delta, alpha, lower, lower_to_upper, rho):
    mask = np.ones(delta.shape, bool)
    nesting = TwoLevelNesting(lower, lower_to_upper, int(lower_to_upper.max()) + 1, *rho)
    derivative = np.full((*delta.shape, 1), alpha)
    probabilities, jacobian, lam = two_level_price_derivatives(delta, mask, nesting, derivative)
    return PriceState(probabilities, np.ones((delta.shape[0], 1)), nesting, mask, derivative,
                      jacobian, lam)  # fmt: skip


def test_foc_jacobian_equals_central_differences_of_the_hand_conditions():
    """∂F/∂p (the profit Hessians' rows) with multi-product firms spread over the nests and an
    asymmetric Ω (partial ownership), against central differences of F built by hand."""
    rng = np.random.default_rng(0)
    size = ["s", "s", "s", "l", "l", "l", "l"]
    segment = ["a", "a", "b", "a", "b", "b", "c"]
    lower = np.array([[0, 0, 1, 2, 3, 3, 4]])  # (s,a) (s,b) (l,a) (l,b) (l,c)
    lower_to_upper = np.array([0, 0, 1, 1, 1])
    alpha, rho = -1.7, (0.35, 0.7)
    delta = rng.normal(size=(1, 7))
    prices = 2.0 + rng.uniform(size=7)
    costs = prices - rng.uniform(0.2, 0.8, size=7)
    omega = ownership([0, 1, 0, 1, 2, 0, 2])
    omega[0, 1], omega[1, 2] = 0.3, 0.1  # κ profit weights, asymmetric
    state = _kernel_state(delta, alpha, lower, lower_to_upper, rho)
    ours = foc_jacobian(state, omega[None], (prices - costs)[None])[0]

    hand = HandMarket(delta[0], prices, alpha, size, segment, *rho)
    np.testing.assert_allclose(hand.shares(prices), state.shares[0], rtol=1e-13)
    residual = foc_residual(state.jacobian, state.shares, omega[None], (prices - costs)[None])
    np.testing.assert_allclose(residual[0], hand.foc(prices, costs, omega), atol=1e-14)
    step = 1e-5
    numeric = np.empty((7, 7))
    for column in range(7):
        up, down = prices.copy(), prices.copy()
        up[column] += step
        down[column] -= step
        numeric[:, column] = (hand.foc(up, costs, omega) - hand.foc(down, costs, omega)) / (
            2 * step
        )
    np.testing.assert_allclose(ours, numeric, atol=1e-9 * np.abs(numeric).max())


def test_zeta_iteration_alone_reaches_the_hand_equilibrium(products, results):
    """The ζ-markup map with the two-level split (Λ_jj = D_j s_j/(1 − ρ_lower)) converges on
    its own (no Newton finish) to the prices the hand solver finds."""
    from blpmodels.kernel.ownership import ownership_matrices

    markets = [2, 7]
    positions = results.demand.market_positions(markets)
    priced = results.demand.priced(positions)
    mask = priced.inputs.mask
    costs = np.where(mask, priced.prices - 0.5, 0.0)
    firms = np.where(mask, products["firm_ids"].to_numpy()[priced.inputs.rows], 0)
    omega = ownership_matrices(firms, mask)
    solution = solve_prices(priced.state, costs, priced.prices, omega, mask, newton_below=0.0)
    assert solution.converged.all()
    assert solution.iterations.max() < 200
    for t, market in enumerate(markets):
        rows = _market_rows(products, market)
        hand = HandMarket.of(results, products, market)
        expected = hand.solve(rows["prices"].to_numpy() - 0.5, ownership(rows["firm_ids"]))
        np.testing.assert_allclose(solution.prices[t][mask[t]], expected, rtol=1e-8)


def test_a_price_that_drives_a_share_to_zero_is_no_equilibrium():
    """As for the one-level kernel (test_equilibrium.py): a start pricing product 2 out of
    the market (share ~e^-60) with the others at their best replies to that has every
    share-weighted F_j below 1e-20, but it is no equilibrium. The solver must go on to the
    equilibrium that the hand solver finds from the observed prices."""
    size, segment = ["s", "s", "l"], ["a", "a", "a"]
    lower, lower_to_upper = np.array([[0, 0, 1], [0, 0, 1]]), np.array([0, 1])
    alpha, rho = -2.0, (0.3, 0.6)
    delta, base = np.array([[1.0, 0.5, 0.8], [1.0, 0.5, 0.8]]), np.ones((2, 3))
    costs, omega = np.array([[0.5, 0.6, 0.4], [0.5, 0.6, 0.4]]), np.eye(3)[None].repeat(2, 0)
    nesting = TwoLevelNesting(lower, lower_to_upper, 2, *rho)
    mask = np.ones((2, 3), bool)

    def evaluate(prices, markets):
        shifted = delta[markets] + alpha * (prices - base[markets])
        derivative = np.full((markets.size, 3, 1), alpha)
        chosen = nesting.subset(markets)
        probabilities, jacobian, lam = two_level_price_derivatives(
            shifted, mask[markets], chosen, derivative
        )
        return PriceState(probabilities, np.ones((markets.size, 1)), chosen, mask[markets],
                          derivative, jacobian, lam)  # fmt: skip

    hand = HandMarket(delta[0], base[0], alpha, size, segment, *rho)
    expected = hand.solve(costs[0], np.eye(3))
    # Market 2: product 2 at 31 (share e^-60), products 1 and 3 at their best replies to it.
    out = hand.solve(costs[0], np.eye(3), start=[1.0, 31.0, 1.0], fixed=[False, True, False])
    assert hand.shares(out)[1] < 1e-25
    start = np.array([base[0], out])
    assert np.abs(evaluate(start[1:], np.array([1])).shares).min() < 1e-25
    solution = solve_prices(evaluate, costs, start, omega, mask)
    assert solution.converged.all()
    np.testing.assert_allclose(solution.prices, [expected, expected], rtol=1e-10)


# ---------------------------------------------------------------------------- results API
def test_equilibrium_prices_equal_the_hand_solved_first_order_conditions(products, results):
    costs = products["prices"].to_numpy() - 0.4 * np.asarray(results.markups())
    equilibrium = results.equilibrium_prices(costs=costs, market_id=[2, 7])
    assert equilibrium.markets["converged"].all()
    for market in (2, 7):
        rows = _market_rows(products, market)
        hand = HandMarket.of(results, products, market)
        expected = hand.solve(costs[rows.index], ownership(rows["firm_ids"]))
        np.testing.assert_allclose(equilibrium.prices.loc[market], expected, rtol=1e-8)
        np.testing.assert_allclose(equilibrium.shares.loc[market], hand.shares(expected),
                                   rtol=1e-8)  # fmt: skip


def test_merger_equals_the_hand_solved_merger(products, results):
    merger = results.merger({1: 0}, market_id=[5, 11])
    for market in (5, 11):
        rows = _market_rows(products, market)
        hand = HandMarket.of(results, products, market)
        prices = rows["prices"].to_numpy()
        # Costs from the observed first-order conditions: η = −(Ω ⊙ Jᵀ)⁻¹ s, by hand.
        omega_pre = ownership(rows["firm_ids"])
        jacobian = hand.jacobian(prices)
        costs = prices + np.linalg.solve(omega_pre * jacobian.T, hand.shares(prices))
        merged = rows["firm_ids"].replace({1: 0})
        expected = hand.solve(costs, ownership(merged))
        np.testing.assert_allclose(merger.products.loc[market, "prices_post"], expected,
                                   rtol=1e-8)  # fmt: skip


def test_passthrough_equals_differences_of_hand_solved_prices(products, results):
    market = 9
    rows = _market_rows(products, market)
    hand = HandMarket.of(results, products, market)
    omega = ownership(rows["firm_ids"])
    prices = rows["prices"].to_numpy()
    costs = prices + np.linalg.solve(omega * hand.jacobian(prices).T, hand.shares(prices))
    ours = results.passthrough(market_id=market).to_numpy()
    step = 1e-5
    for k in (0, rows.shape[0] - 1):
        up, down = costs.copy(), costs.copy()
        up[k] += step
        down[k] -= step
        column = (hand.solve(up, omega) - hand.solve(down, omega)) / (2 * step)
        np.testing.assert_allclose(ours[:, k], column, atol=1e-7)


def _with_rho(results, rho_upper, rho_lower):
    """The fitted two-level results with ρ set (δ̂ and β held)."""
    moved = copy.copy(results._results)
    moved.demand = replace(results.demand, rho=np.array([rho_upper, rho_lower]))
    return moved


def _one_level(products, results, column, rho):
    """A one-level nested logit on ``column`` whose demand is the two-level one's δ̂ and β."""
    one = BLPNestedLogit.from_formula(FORMULA, products.assign(nesting_ids=column)).fit()
    moved = copy.copy(one._results)
    n_nests = one.demand.rho.size
    moved.demand = replace(one.demand, beta=results.demand.beta, delta=results.demand.delta,
                           rho=np.full(n_nests, rho))  # fmt: skip
    return moved


@pytest.mark.parametrize("boundary", ["lower", "upper"])
def test_merger_at_the_boundaries_equals_the_one_level_nested_logit(products, results, boundary):
    """ρ_upper = 0: the one-level nested logit on the lower nests (size × segment);
    ρ_upper = ρ_lower: the one-level nested logit on the upper nests (size)."""
    rho = float(results.params["rho_lower"])
    if boundary == "lower":
        two = _with_rho(results, 0.0, rho)
        column = products["size"] + "/" + products["segment"]
    else:
        two = _with_rho(results, rho, rho)
        column = products["size"]
    one = _one_level(products, results, column, rho)
    ours, theirs = (model.merger({2: 0}, market_id=[0, 3]) for model in (two, one))
    assert ours.markets["converged"].all()
    np.testing.assert_allclose(ours.products["prices_post"], theirs.products["prices_post"],
                               rtol=1e-10)  # fmt: skip
    np.testing.assert_allclose(ours.products["markups_pre"], theirs.products["markups_pre"],
                               rtol=1e-10)  # fmt: skip
    np.testing.assert_allclose(ours.markets["consumer_surplus_change"],
                               theirs.markets["consumer_surplus_change"], rtol=1e-8)  # fmt: skip
    hessians_two, hessians_one = (model.profit_hessians(3) for model in (two, one))
    for firm, block in hessians_one.items():
        np.testing.assert_allclose(hessians_two[firm], block, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------- counterfactuals
def test_entry_exit_and_a_unit_tax_equal_the_hand_equilibrium(products, results):
    """Remove one product, add one in an existing (size, segment) pair, tax every product
    0.1 per unit: the hand solver gets the new market's shares from its own formulas."""
    market, tax = 6, 0.1
    rows = _market_rows(products, market)
    costs = rows["prices"].to_numpy() - 0.5
    params = results.params
    new = pd.DataFrame({"market_ids": [market], "product_ids": [99], "firm_ids": [2],
                        "x": [0.3], "size": ["small"], "segment": ["b"], "costs": [1.2],
                        "xi": [0.1]})  # fmt: skip
    removed = products["market_ids"].eq(market) & products["product_ids"].eq(0)
    outcome = results.counterfactual(
        add=new,
        remove=removed.to_numpy(),
        taxes={"unit": tax},
        costs=products["prices"] - 0.5,
        market_id=market,
    )
    assert outcome.converged
    keep = rows["product_ids"].to_numpy() != 0
    hand = HandMarket.of(results, products, market)
    new_delta = params["Intercept"] + params["x"] * 0.3 + params["prices"] * 0.0 + 0.1
    hand = HandMarket(
        np.append(hand.delta[keep], new_delta),
        np.append(hand.prices[keep], 0.0),
        hand.alpha,
        [*rows["size"][keep], "small"],
        [*rows["segment"][keep], "b"],
        *hand.rho,
    )
    firms = np.append(rows["firm_ids"].to_numpy()[keep], 2)
    start = np.append(hand.prices[:-1], 2.0)
    expected = hand.solve(np.append(costs[keep], 1.2) + tax, ownership(firms), start=start)
    after = outcome.products.loc[market]
    post = after.loc[after["status"] != "removed", "prices_post"]
    np.testing.assert_allclose(post.to_numpy(), expected, rtol=1e-8)
    np.testing.assert_allclose(after.loc[post.index, "shares_post"], hand.shares(expected),
                               rtol=1e-8)  # fmt: skip
    # Passthrough of a small unit tax on every product: central differences of hand prices.
    step, base_costs = 1e-5, np.append(costs[keep], 1.2)
    up = hand.solve(base_costs + tax + step, ownership(firms), start=expected)
    down = hand.solve(base_costs + tax - step, ownership(firms), start=expected)
    passthrough = after.loc[post.index, "passthrough"].to_numpy()
    np.testing.assert_allclose(passthrough, (up - down) / (2 * step), atol=1e-7)


def test_fixed_prices_stay_and_the_others_solve_their_conditions(products, results):
    market = 8
    rows = _market_rows(products, market)
    costs = products["prices"].to_numpy() - 0.6
    fixed = products["market_ids"].eq(market) & products["product_ids"].isin([1, 3])
    outcome = results.counterfactual(fixed=fixed.to_numpy(), costs=costs, market_id=market)
    assert outcome.converged
    hand = HandMarket.of(results, products, market)
    expected = hand.solve(costs[rows.index], ownership(rows["firm_ids"]),
                          fixed=rows["product_ids"].isin([1, 3]).to_numpy())  # fmt: skip
    np.testing.assert_allclose(outcome.products.loc[market, "prices_post"], expected, rtol=1e-8)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"segment": None}, r"both nest columns \['size', 'segment'\].*\['segment'\] missing"),
        ({"segment": "z"}, r"unknown nest \('small', 'z'\)"),
    ],
)
def test_new_products_need_both_known_nest_codes(products, results, change, message):
    new = pd.DataFrame({"market_ids": [1], "product_ids": [99], "firm_ids": [0], "x": [0.0],
                        "size": ["small"], "segment": ["a"], "costs": [1.0]})  # fmt: skip
    for column, value in change.items():
        if value is None:
            new = new.drop(columns=column)
        else:
            new[column] = value
    with pytest.raises(BLPInputError, match=message):
        results.counterfactual(add=new, market_id=1)


# ---------------------------------------------------------------------------- bootstrap
def _hand_delta(products: pd.DataFrame, rho_upper: float, rho_lower: float) -> np.ndarray:
    """Verboven's inversion of the observed shares, by hand."""
    s = products["shares"]
    lower = products.groupby(["market_ids", "size", "segment"])["shares"].transform("sum")
    upper = products.groupby(["market_ids", "size"])["shares"].transform("sum")
    outside = 1 - products.groupby("market_ids")["shares"].transform("sum")
    return (
        np.log(s) - np.log(outside) - rho_lower * np.log(s / lower)
        - rho_upper * np.log(lower / upper)
    ).to_numpy()  # fmt: skip


def test_share_inversion_is_verbovens_closed_form(products, results):
    demand = results.demand.with_parameters(results.demand.beta, np.array([0.15, 0.45]))
    delta, failed = demand.invert_shares(products["shares"].to_numpy())
    assert failed == []
    np.testing.assert_allclose(delta, _hand_delta(products, 0.15, 0.45), rtol=1e-12)
    rows = _market_rows(products, 4)
    shares = hand_shares(delta[rows.index], rows["size"], rows["segment"], 0.15, 0.45)
    np.testing.assert_allclose(shares, rows["shares"], rtol=1e-12)


def test_merger_bootstrap_draws_equal_hand_mergers_at_each_draw(products, results):
    """Each draw: δ_b by Verboven's inversion at ρ_b, costs from the observed conditions at
    θ_b, then the merger solved by hand."""
    market = 5
    draws = results.bootstrap(draws=3, seed=1)
    merger = results.merger({1: 0}, market_id=[market], bootstrap=draws)
    rows = _market_rows(products, market)
    prices = rows["prices"].to_numpy()
    for draw in range(3):
        params = draws.params.iloc[draw]
        rho = (float(params["rho_upper"]), float(params["rho_lower"]))
        delta = _hand_delta(products, *rho)[rows.index]
        hand = HandMarket(delta, prices, float(params["prices"]), rows["size"], rows["segment"],
                          *rho)  # fmt: skip
        omega_pre = ownership(rows["firm_ids"])
        costs = prices + np.linalg.solve(omega_pre * hand.jacobian(prices).T, hand.shares(prices))
        expected = hand.solve(costs, ownership(rows["firm_ids"].replace({1: 0})))
        ours = merger.draws_products.loc[draw].loc[market, "prices_post"]
        np.testing.assert_allclose(ours, expected, rtol=1e-8)
