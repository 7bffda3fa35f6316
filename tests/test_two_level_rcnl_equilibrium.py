"""Equilibrium prices, mergers and passthrough of the two-level random-coefficients nested logit.

Prices carry a random coefficient (σ on prices), so a price change moves every agent's
utility differently. Oracles, none of them the package's two-level code:

- :func:`hand_shares`: shares by loops over agents and nests, and :class:`HandMarket`, whose
  first-order conditions s + (Ω ⊙ (∂s/∂p)ᵀ)(p − c) = 0 take ∂s/∂p by complex steps of those
  shares and are solved per market by ``scipy.optimize.root`` on F_j/s_j;
- central differences of the hand conditions (profit Hessians) and of hand-solved prices
  (passthrough);
- the boundaries: ρ_upper = ρ_lower is the one-level RCNL on the upper nests (whose
  equilibrium ``test_equilibrium.py`` checks against pyblp), Σ = 0 the two-level nested logit
  (checked against its own hand solver in ``test_two_level_equilibrium.py``).

Tolerances: both solvers drive the conditions below 1e-12 on shares of order 0.05, so prices
agree to about 1e-10; 1e-8 leaves room. Central differences carry errors of order h² ~ 1e-10.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import hand_equilibrium
import numpy as np
import pandas as pd
import pytest
from builders import at_parameters
from hand_equilibrium import ownership
from test_two_level_rcnl import FORMULA, NESTS, loop_shares, simulate

from blpmodels import BLPNestedLogit, BLPRandomCoefficients
from blpmodels.kernel.equilibrium import PriceState, foc_jacobian, solve_prices
from blpmodels.kernel.nests import TwoLevelNesting
from blpmodels.kernel.shares import Probabilities
from blpmodels.kernel.two_level_rcnl import (
    two_level_agent_price_derivatives,
    two_level_agent_probabilities,
)

SIGMA = np.diag([0.8, 0.2])  # on x and on prices
RHO = [0.3, 0.6]


@pytest.fixture(scope="module")
def economy() -> tuple[pd.DataFrame, pd.DataFrame]:
    products, agents = simulate(12, seed=5)
    agents["nodes1"] = np.random.default_rng(1).normal(size=len(agents))
    return products, agents


def _model(products, agents, nesting_ids=NESTS) -> BLPRandomCoefficients:
    return BLPRandomCoefficients.from_formula(
        FORMULA, products, random="0 + x + prices", agent_data=agents, nesting_ids=nesting_ids
    )


@pytest.fixture(scope="module")
def results(economy):
    """Results at Σ = SIGMA, ρ = RHO (β concentrated out there; no optimization needed)."""
    return at_parameters(_model(*economy), sigma=SIGMA, rho=RHO)


# ---------------------------------------------------------------------------- the hand oracle
hand_shares = loop_shares  # the loop oracle of tests/test_two_level_rcnl.py, complex-safe


class HandMarket(hand_equilibrium.HandMarket):
    """One market: V_ji(p) = δ̂_j + α (p_j − p⁰_j) + σ_x x_j ν_xi + σ_p p_j ν_pi."""

    def __init__(self, delta, prices, alpha, x_part, price_nodes, weights, size, segment, rho):
        self.delta, self.prices, self.alpha = delta, prices, alpha
        self.x_part, self.price_nodes, self.weights = x_part, price_nodes, weights
        self.size, self.segment, self.rho = list(size), list(segment), rho

    @classmethod
    def of(cls, results, economy, market) -> HandMarket:
        products, agents = economy
        rows = np.flatnonzero(products["market_ids"].to_numpy() == market)
        people = agents[agents["market_ids"] == market]
        frame = products.iloc[rows]
        params = results.params
        x_part = params["sigma[x,x]"] * np.outer(frame["x"], people["nodes0"])
        return cls(
            results.demand.delta[rows],
            frame["prices"].to_numpy(),
            float(params["prices"]),
            x_part,
            params["sigma[prices,prices]"] * people["nodes1"].to_numpy(),
            people["weights"].to_numpy(),
            frame["size"],
            frame["segment"],
            (float(params["rho_upper"]), float(params["rho_lower"])),
        )

    def shares(self, prices):
        delta = self.delta + self.alpha * (prices - self.prices)
        mu = self.x_part + np.outer(prices, self.price_nodes)
        return hand_shares(delta, mu, self.weights, self.size, self.segment, *self.rho)


def _rows(products, market) -> pd.DataFrame:
    return products[products["market_ids"] == market]


# ---------------------------------------------------------------------------- kernel
def test_foc_jacobian_equals_central_differences_of_the_hand_conditions(economy, results):
    """∂F/∂p with the agents' second derivatives (σ on prices), multi-product firms across
    nests and an asymmetric Ω, against central differences of the hand F."""
    products, _ = economy
    market = 4
    rows = _rows(products, market)
    hand = HandMarket.of(results, economy, market)
    omega = ownership(rows["firm_ids"])
    omega[0, -1] = 0.4  # partial ownership: Ω not symmetric
    prices = hand.prices * 1.1
    costs = 0.5 * hand.prices
    priced = results.demand.priced(results.demand.market_positions([market]))
    mask = priced.inputs.mask[0]
    padded = np.zeros((1, mask.size))
    padded[0, mask] = prices
    state = priced.state(padded)
    full_omega = np.zeros((1, mask.size, mask.size))
    full_omega[0][np.ix_(mask, mask)] = omega
    markups = np.zeros((1, mask.size))
    markups[0, mask] = prices - costs
    step = 1e-5
    expected = np.empty((prices.size, prices.size))
    for k in range(prices.size):
        up, down = prices.copy(), prices.copy()
        up[k] += step
        down[k] -= step
        expected[:, k] = (hand.foc(up, costs, omega) - hand.foc(down, costs, omega)) / (2 * step)
    # Also from plain Probabilities, as the solver's market subsets hand them over (P_{k|g,i}
    # is then rebuilt from the inclusive values).
    p = state.probabilities
    plain = Probabilities(p.unconditional, p.conditional, p.nest, p.inclusive,
                          p.log_denominator, p.shares)  # fmt: skip
    for probabilities in (p, plain):
        moved = replace(state, probabilities=probabilities)
        ours = foc_jacobian(moved, full_omega, markups)[0][np.ix_(mask, mask)]
        np.testing.assert_allclose(ours, expected, atol=1e-8 * np.abs(expected).max())
    np.testing.assert_allclose(state.jacobian[0][np.ix_(mask, mask)], hand.jacobian(prices),
                               rtol=1e-10, atol=1e-14)  # fmt: skip


def test_zeta_iteration_alone_reaches_the_hand_equilibrium(economy, results):
    """The ζ-markup map with the agents' split (Λ_jj = Σ_i w_i D_ji P_ji/(1 − ρ_lower))
    converges on its own (no Newton finish) to the hand solver's prices."""
    from blpmodels.kernel.ownership import ownership_matrices

    products, _ = economy
    markets = [2, 7]
    priced = results.demand.priced(results.demand.market_positions(markets))
    mask = priced.inputs.mask
    costs = np.where(mask, 0.6 * priced.prices, 0.0)
    firms = np.where(mask, products["firm_ids"].to_numpy()[priced.inputs.rows], 0)
    omega = ownership_matrices(firms, mask)
    solution = solve_prices(priced.state, costs, priced.prices, omega, mask, newton_below=0.0)
    assert solution.converged.all()
    for t, market in enumerate(markets):
        rows = _rows(products, market)
        hand = HandMarket.of(results, economy, market)
        expected = hand.solve(0.6 * hand.prices, ownership(rows["firm_ids"]))
        np.testing.assert_allclose(solution.prices[t][mask[t]], expected, rtol=1e-8)


def test_a_price_that_drives_a_share_to_zero_is_no_equilibrium():
    """Product 2 priced out (share below 1e-25) with the others at their best replies: every
    share-weighted F_j is tiny there, yet it is no equilibrium. The solver (ζ and Newton) must
    not stop there but reach the hand solver's equilibrium."""
    rng = np.random.default_rng(2)
    size, segment = ["s", "s", "l"], ["a", "a", "a"]
    lower, lower_to_upper = np.array([[0, 0, 1], [0, 0, 1]]), np.array([0, 1])
    nesting = TwoLevelNesting(lower, lower_to_upper, 2, 0.3, 0.6)
    n_agents, alpha = 7, -2.0
    weights = np.full((2, n_agents), 1.0 / n_agents)
    price_nodes = 0.2 * rng.normal(size=n_agents)
    x_part = 0.5 * rng.normal(size=(3, n_agents))
    delta, base = np.array([[1.0, 0.5, 0.8]] * 2), np.ones((2, 3))
    costs, omega = np.array([[0.5, 0.6, 0.4]] * 2), np.eye(3)[None].repeat(2, 0)
    mask = np.ones((2, 3), bool)
    derivative = np.broadcast_to(alpha + price_nodes, (2, 3, n_agents))

    def evaluate(prices, markets):
        shifted = delta[markets] + alpha * (prices - base[markets])
        mu = x_part[None] + prices[:, :, None] * price_nodes
        chosen = nesting.subset(markets)
        probabilities = two_level_agent_probabilities(
            shifted, mu, weights[markets], mask[markets], chosen
        )
        jacobian, lam = two_level_agent_price_derivatives(
            probabilities, weights[markets], chosen, mask[markets], derivative[markets]
        )
        return PriceState(probabilities, weights[markets], chosen, mask[markets],
                          derivative[markets], jacobian, lam)  # fmt: skip

    hand = HandMarket(delta[0], base[0], alpha, x_part, price_nodes, weights[0], size, segment,
                      (0.3, 0.6))  # fmt: skip
    expected = hand.solve(costs[0], np.eye(3))
    out = hand.solve(costs[0], np.eye(3), start=[1.0, 31.0, 1.0], fixed=[False, True, False])
    assert hand.shares(out)[1] < 1e-25
    start = np.array([base[0], out])
    assert evaluate(start[1:], np.array([1])).shares.min() < 1e-25
    solution = solve_prices(evaluate, costs, start, omega, mask)
    assert solution.converged.all()
    np.testing.assert_allclose(solution.prices, [expected, expected], rtol=1e-10)


# ---------------------------------------------------------------------------- results API
def test_equilibrium_prices_equal_the_hand_solved_first_order_conditions(economy, results):
    products, _ = economy
    costs = np.full(len(products), 0.3)
    equilibrium = results.equilibrium_prices(costs=costs, market_id=[2, 7])
    assert equilibrium.markets["converged"].all()
    for market in (2, 7):
        rows = _rows(products, market)
        hand = HandMarket.of(results, economy, market)
        expected = hand.solve(costs[rows.index], ownership(rows["firm_ids"]))
        np.testing.assert_allclose(equilibrium.prices.loc[market], expected, rtol=1e-8)
        np.testing.assert_allclose(equilibrium.shares.loc[market], hand.shares(expected),
                                   rtol=1e-8)  # fmt: skip


def test_merger_equals_the_hand_solved_merger(economy, results):
    products, _ = economy
    merger = results.merger({1: 0}, market_id=[5, 11])
    assert merger.markets["converged"].all()
    for market in (5, 11):
        rows = _rows(products, market)
        hand = HandMarket.of(results, economy, market)
        costs = hand.observed_costs(ownership(rows["firm_ids"]))
        np.testing.assert_allclose(merger.products.loc[market, "markups_pre"],
                                   hand.prices - costs, rtol=1e-8)  # fmt: skip
        expected = hand.solve(costs, ownership(rows["firm_ids"].replace({1: 0})))
        np.testing.assert_allclose(merger.products.loc[market, "prices_post"], expected,
                                   rtol=1e-8)  # fmt: skip


def test_passthrough_equals_differences_of_hand_solved_prices(economy, results):
    products, _ = economy
    market = 9
    rows = _rows(products, market)
    hand = HandMarket.of(results, economy, market)
    omega = ownership(rows["firm_ids"])
    costs = hand.observed_costs(omega)
    ours = results.passthrough(market_id=market).to_numpy()
    step = 1e-5
    k = rows.shape[0] - 1  # one column: each takes two hand solves
    up, down = costs.copy(), costs.copy()
    up[k] += step
    down[k] -= step
    column = (hand.solve(up, omega) - hand.solve(down, omega)) / (2 * step)
    np.testing.assert_allclose(ours[:, k], column, atol=1e-7)


def test_entry_exit_and_a_unit_tax_equal_the_hand_equilibrium(economy, results):
    """Remove one product, add one in an existing (size, segment) pair (its μ from x and from
    its price, through each agent's nodes), tax every product 0.1 per unit."""
    products, agents = economy
    market, tax = 6, 0.1
    rows = _rows(products, market)
    costs = np.full(len(rows), 0.3)
    params = results.params
    new = pd.DataFrame({"market_ids": [market], "product_ids": [99], "firm_ids": [2],
                        "x": [0.3], "size": ["small"], "segment": ["b"], "costs": [0.5],
                        "xi": [0.1]})  # fmt: skip
    removed = products["market_ids"].eq(market) & products["product_ids"].eq(0)
    outcome = results.counterfactual(
        add=new,
        remove=removed.to_numpy(),
        taxes={"unit": tax},
        costs=np.full(len(products), 0.3),
        market_id=market,
    )
    assert outcome.converged
    keep = rows["product_ids"].to_numpy() != 0
    hand = HandMarket.of(results, economy, market)
    nodes = agents.loc[agents["market_ids"] == market, "nodes0"].to_numpy()
    hand = HandMarket(
        np.append(hand.delta[keep], params["Intercept"] + params["x"] * 0.3 + 0.1),
        np.append(hand.prices[keep], 0.0),  # the new product's utility is built at price 0
        hand.alpha,
        np.vstack([hand.x_part[keep], params["sigma[x,x]"] * 0.3 * nodes]),
        hand.price_nodes,
        hand.weights,
        [*rows["size"][keep], "small"],
        [*rows["segment"][keep], "b"],
        hand.rho,
    )
    firms = np.append(rows["firm_ids"].to_numpy()[keep], 2)
    start = np.append(rows["prices"].to_numpy()[keep], 1.0)
    expected = hand.solve(np.append(costs[keep], 0.5) + tax, ownership(firms), start=start)
    after = outcome.products.loc[market]
    post = after.loc[after["status"] != "removed", "prices_post"]
    np.testing.assert_allclose(post.to_numpy(), expected, rtol=1e-8)
    np.testing.assert_allclose(after.loc[post.index, "shares_post"], hand.shares(expected),
                               rtol=1e-8)  # fmt: skip


# ---------------------------------------------------------------------------- boundaries
def _with_demand(results, demand):
    moved = copy.copy(results._results)
    moved.demand = demand
    return moved


def test_equal_rhos_are_the_one_level_rcnl_on_the_upper_nests(economy, results):
    """ρ_upper = ρ_lower = 0.5: the merger, its markups and CS change and the profit Hessians
    are those of the one-level RCNL nested by size (same δ̂, β and Σ)."""
    products, agents = economy
    rho = 0.5
    two = _with_demand(results, replace(results.demand, rho=np.array([rho, rho]),
                                        theta=np.array([0.8, 0.2, rho, rho])))  # fmt: skip
    one_model = _model(products.assign(nesting_ids=products["size"]), agents, nesting_ids=None)
    one_fit = at_parameters(one_model, sigma=SIGMA, rho=rho)
    one = _with_demand(one_fit, replace(one_fit.demand, beta=results.demand.beta,
                                        delta=results.demand.delta))  # fmt: skip
    ours, theirs = (model.merger({2: 0}, market_id=[0, 3]) for model in (two, one))
    assert ours.markets["converged"].all()
    for column in ("markups_pre", "prices_post", "shares_post"):
        np.testing.assert_allclose(ours.products[column], theirs.products[column], rtol=1e-9)
    np.testing.assert_allclose(ours.markets["consumer_surplus_change"],
                               theirs.markets["consumer_surplus_change"], rtol=1e-8)  # fmt: skip
    hessians_two, hessians_one = (model.profit_hessians(3) for model in (two, one))
    for firm, block in hessians_one.items():
        np.testing.assert_allclose(hessians_two[firm], block, rtol=1e-9, atol=1e-12)


def test_zero_sigma_is_the_two_level_nested_logit(economy, results):
    """Σ = 0: the merger and profit Hessians are the two-level nested logit's (same δ̂, β, ρ)."""
    products, _ = economy
    two = _with_demand(results, replace(results.demand, theta=np.array([0.0, 0.0, *RHO])))
    logit_fit = BLPNestedLogit.from_formula(FORMULA, products, nesting_ids=NESTS).fit()
    same = {"beta": results.demand.beta, "delta": results.demand.delta, "rho": np.array(RHO)}
    logit = _with_demand(logit_fit, replace(logit_fit.demand, **same))
    ours, theirs = (model.merger({2: 0}, market_id=[1, 6]) for model in (two, logit))
    assert ours.markets["converged"].all()
    for column in ("markups_pre", "prices_post", "shares_post"):
        np.testing.assert_allclose(ours.products[column], theirs.products[column], rtol=1e-9)
    hessians_two, hessians_logit = (model.profit_hessians(6) for model in (two, logit))
    for firm, block in hessians_logit.items():
        np.testing.assert_allclose(hessians_two[firm], block, rtol=1e-9, atol=1e-12)


def _hand_delta(hand: HandMarket, shares: np.ndarray) -> np.ndarray:
    """δ that reproduces ``shares`` at the hand market's θ, by the nested contraction
    δ ← δ + (1 − ρ_lower)(log s − log ŝ(δ)) on the loop shares (a contraction for ρ < 1)."""
    delta = hand.delta.copy()
    for _ in range(10_000):
        step = (1 - hand.rho[1]) * (np.log(shares) - np.log(hand.shares(hand.prices)))
        delta = delta + step
        hand.delta = delta
        if np.abs(step).max() < 1e-14:
            return delta
    raise AssertionError("the hand contraction did not converge")


def test_merger_bootstrap_draws_equal_hand_mergers_at_each_draw(economy, results):
    """Each draw: δ_b re-solved from the observed shares at θ_b by the hand contraction, costs
    from the observed conditions at θ_b, then the merger solved by hand."""
    products, agents = economy
    market = 5
    with pytest.warns(UserWarning, match="moved onto them"):  # σ_p = 0 in two draws
        draws = results.bootstrap(draws=3, seed=1)
    merger = results.merger({1: 0}, market_id=[market], bootstrap=draws)
    rows = _rows(products, market)
    people = agents[agents["market_ids"] == market]
    prices = rows["prices"].to_numpy()
    for draw in range(3):
        params = draws.params.iloc[draw]
        hand = HandMarket(
            results.demand.delta[rows.index],  # the start of the contraction only
            prices,
            float(params["prices"]),
            params["sigma[x,x]"] * np.outer(rows["x"], people["nodes0"]),
            params["sigma[prices,prices]"] * people["nodes1"].to_numpy(),
            people["weights"].to_numpy(),
            rows["size"],
            rows["segment"],
            (float(params["rho_upper"]), float(params["rho_lower"])),
        )
        _hand_delta(hand, rows["shares"].to_numpy())
        costs = hand.observed_costs(ownership(rows["firm_ids"]))
        expected = hand.solve(costs, ownership(rows["firm_ids"].replace({1: 0})))
        ours = merger.draws_products.loc[draw].loc[market, "prices_post"]
        np.testing.assert_allclose(ours, expected, rtol=1e-8)
