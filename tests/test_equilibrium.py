"""Supply side of every model against pyblp 1.3.0 at the same parameters.

Cases: the Mixtape exercise-1 IV + fixed-effects logit; the closed-form nested logit with one ρ
(Nevo's cereal data, nests = mushy) and with a ρ per nest (simulated unbalanced markets); the
exercise-2 question-5 random-coefficients model (demographics, absorbed effects) at its
estimates; an RCNL model; and a negative-lognormal price coefficient (pyblp: ``'log'`` on
``I(-prices)``). Random-coefficients results are taken at fixed parameters (an optimizer that
stays at the start) and pyblp's with ``Optimization('return')``, so both describe the same
demand; the linear models' estimates are passed to pyblp the same way.

Compared: ``compute_costs``, ``compute_markups`` (our margins), ``compute_profits``,
``compute_hhi`` (at its default shares: pyblp divides by the inside share too),
``compute_approximate_prices``,
``compute_consumer_surpluses``, ``compute_passthrough``, ``compute_profit_hessians`` (summed
over each firm's products, as pyblp's simulations do, and restricted to the firm's prices),
``compute_prices`` after a merger, and costs under partial ownership (``build_ownership`` with a
κ callable). pyblp returns market-level values in sorted market order; ours are labelled, so
they are compared by label.

Tolerance: both libraries solve δ to 1e-14 and evaluate the same closed forms, so differences
are rounding: measured at most 2e-12 of each quantity's largest entry (prices from pyblp's
ζ iteration run to 1e-14). 1e-9 of the largest entry leaves room for BLAS order.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.optimize
from builders import (
    FIXED_EFFECTS,
    LOGNORMAL_THETA,
    NEVO_INSTRUMENTS,
    at_parameters,
    nevo_model,
    nevo_problem,
    q5_model,
    q5_problem,
    solve_at,
)

from blpmodels import BLPLogit, BLPNestedLogit, ConvergenceWarning

pytestmark = pytest.mark.data

RTOL = 1e-9
Q5_THETA = {"sigma": [[0, 0], [0, 6.015167]], "pi": [[0.108829], [-5.957239]]}


def kappa(first: Any, second: Any) -> float:
    """Asymmetric partial ownership: κ(f, g) ≠ κ(g, f)."""
    if first == second:
        return 1.0
    return 0.3 if str(first) < str(second) else 0.1


@dataclass
class Case:
    ours: Any
    oracle: Any
    products: pd.DataFrame
    market: Any
    merger: dict


def _logit(pyblp, request) -> Case:
    products = request.getfixturevalue("mixtape_products").copy()
    products["firm_ids"] = products["product_ids"].str[:2]
    ours = BLPLogit.from_formula(
        "shares ~ 0 + [prices ~ price_instrument]", products, absorb=FIXED_EFFECTS
    ).fit()
    frame = products.assign(demand_instruments0=products["price_instrument"])
    problem = pyblp.Problem(pyblp.Formulation("0 + prices", absorb=FIXED_EFFECTS), frame)
    return Case(ours, problem.solve(method="1s"), products, "C01Q2", {"F2": "F1"})


def _nested_common(pyblp, request) -> Case:
    products, _ = request.getfixturevalue("nevo_nested")
    ours = BLPNestedLogit.from_formula(
        f"shares ~ 0 + [prices ~ {NEVO_INSTRUMENTS} + nest_count]",
        products,
        absorb="C(market_ids)",
    ).fit()
    frame = products.assign(demand_instruments20=products["nest_count"])
    problem = pyblp.Problem(pyblp.Formulation("0 + prices", absorb="C(market_ids)"), frame)
    oracle = solve_at(pyblp, problem, rho=ours.params["rho"])
    return Case(ours, oracle, products, "C01Q1", {2: 1})


def _nested_per_nest(pyblp, request) -> Case:
    simulate = request.getfixturevalue("simulate")
    products = simulate(n_markets=200, n_products=8, seed=0, rho=0.6, drop=0.3, constant=3.0)
    ours = BLPNestedLogit.from_formula(
        "shares ~ 1 + x + [prices ~ z1 + z2 + nest_count + nest_z1]", products
    ).fit(rho="nest")
    instruments = ["z1", "z2", "nest_count", "nest_z1"]
    frame = products.assign(
        **{f"demand_instruments{k}": products[name] for k, name in enumerate(instruments)}
    )
    problem = pyblp.Problem(pyblp.Formulation("1 + x + prices"), frame)
    rho = ours.params[["rho[0]", "rho[1]"]].to_numpy()
    oracle = solve_at(pyblp, problem, rho=rho)
    return Case(ours, oracle, products, "m07", {"f1": "f0"})


def _q5(pyblp, request) -> Case:
    products, agents = request.getfixturevalue("exercise2")
    with_firms, _ = request.getfixturevalue("exercise2_overidentified")
    products = products.copy()
    products["firm_ids"] = products["product_ids"].str[:2]
    assert (with_firms["firm_ids"].to_numpy() == products["firm_ids"].to_numpy()).all()
    ours = at_parameters(q5_model(products, agents), **Q5_THETA)
    oracle = solve_at(pyblp, q5_problem(pyblp, products, agents), **Q5_THETA)
    return Case(ours, oracle, products, "C01Q1", {"F6": "F1"})


def _rcnl(pyblp, request) -> Case:
    products, agents = request.getfixturevalue("nevo_nested")
    ours = at_parameters(nevo_model(products, agents), sigma=[[2.0]], rho=0.7)
    problem = nevo_problem(pyblp, products, agents[["market_ids", "weights", "nodes0"]])
    oracle = solve_at(pyblp, problem, sigma=[[2.0]], rho=0.7)
    return Case(ours, oracle, products, "C01Q1", {2: 1})


def _negative_lognormal(pyblp, request) -> Case:
    products, agents = request.getfixturevalue("nevo")  # no nests
    model = nevo_model(
        products,
        agents,
        "0 + prices + sugar",
        demographics="0 + income",
        rc_types={"prices": "negative_lognormal"},
    )
    ours = at_parameters(model, **LOGNORMAL_THETA)
    problem = nevo_problem(
        pyblp, products, agents, "0 + I(-prices) + sugar", "0 + income", rc_types=["log", "linear"]
    )
    oracle = solve_at(pyblp, problem, **LOGNORMAL_THETA)
    return Case(ours, oracle, products, "C01Q1", {2: 1})


BUILDERS = {
    "logit": _logit,
    "nested_common": _nested_common,
    "nested_per_nest": _nested_per_nest,
    "q5": _q5,
    "rcnl": _rcnl,
    "negative_lognormal": _negative_lognormal,
}


@pytest.fixture(scope="module")
def built() -> dict[str, Case]:
    """Cases built once per module (the builders read function-scoped fixtures)."""
    return {}


@pytest.fixture(params=list(BUILDERS))
def case(request, pyblp, built) -> Case:
    if request.param not in built:
        made = BUILDERS[request.param](pyblp, request)
        # The same demand: β concentrated out at the same parameters.
        np.testing.assert_allclose(
            np.asarray(made.ours.beta), np.ravel(made.oracle.beta), rtol=1e-8
        )
        built[request.param] = made
    return built[request.param]


def assert_close(ours: Any, theirs: Any, what: str) -> None:
    ours, theirs = np.ravel(np.asarray(ours, float)), np.ravel(np.asarray(theirs, float))
    scale = np.abs(theirs).max()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=RTOL * scale, err_msg=what)


def _market_order(case: Case) -> np.ndarray:
    return np.ravel(case.oracle.problem.unique_market_ids)


def test_costs_margins_and_profits_match_pyblp(case):
    costs = case.oracle.compute_costs()
    assert_close(case.ours.costs(), costs, "costs")
    assert_close(case.ours.markups(), case.products["prices"].to_numpy() - costs.ravel(), "η")
    assert_close(case.ours.margins(), case.oracle.compute_markups(costs=costs), "margins")
    assert_close(case.ours.profits(), case.oracle.compute_profits(costs=costs), "profits")
    market = case.ours.costs(market_id=case.market)
    rows = (case.products["market_ids"] == case.market).to_numpy()
    assert_close(market, costs[rows], "costs in one market")


def test_hhi_and_consumer_surplus_match_pyblp(case):
    """pyblp 1.3.0's compute_hhi, at its default shares, divides each firm's share by the
    inside share as ours does (its docstring's formula does not show it): both equal the
    index on inside-good shares computed here, not the one on whole-market shares."""
    products = case.products
    order = _market_order(case)
    ours = case.ours.hhi().loc[order]
    assert_close(ours, case.oracle.compute_hhi(), "HHI")
    firms = products.groupby(["market_ids", "firm_ids"])["shares"].sum()
    inside = firms / firms.groupby(level="market_ids").transform("sum")
    by_hand = 1e4 * (inside**2).groupby(level="market_ids").sum()
    assert_close(ours, by_hand.loc[order], "HHI by hand")
    whole = 1e4 * (firms**2).groupby(level="market_ids").sum()
    assert not np.allclose(ours, whole.loc[order], rtol=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Q5: some agents' α > 0 (pyblp too)
        surplus = case.ours.consumer_surplus()
    assert_close(surplus.loc[order], case.oracle.compute_consumer_surpluses(), "surplus")


def test_the_docs_say_which_shares_pyblp_hhi_uses():
    """Issue 19, item 13: the hhi() docstring and docs/supply.md said pyblp's compute_hhi uses
    whole-market shares; test_hhi_and_consumer_surplus_match_pyblp shows it does not."""
    from blpmodels.results.results import BLPResults

    guide = Path(__file__).resolve().parents[1] / "docs" / "supply.md"
    for text in (BLPResults.hhi.__doc__ or "", guide.read_text()):
        flat = " ".join(text.split())
        assert "pyblp 1.3.0's `compute_hhi` computes the same index" in flat.replace("``", "`")
        assert "divides each firm's share by the inside share" in flat
        assert "whole market" not in flat


def test_approximate_prices_match_pyblp(case):
    """p* ≈ c + η*: markups under the new owners at the observed shares and derivatives, with
    the costs imputed under the old owners (default) or given."""
    products = case.products
    new_firms = products["firm_ids"].replace(case.merger).to_numpy()
    expected = case.oracle.compute_approximate_prices(firm_ids=new_firms)
    ours = case.ours.approximate_prices(case.merger)
    assert list(ours.index.names) == ["market_ids", "product_ids"]
    assert_close(ours, expected, "approximate prices")
    # The merging firms' products get dearer (or stay, in markets where only one of them
    # sells); rivals' markups do not change at the observed shares.
    moved = products["firm_ids"].isin([*case.merger, *case.merger.values()]).to_numpy()
    observed, approximate = products["prices"].to_numpy(), ours.to_numpy()
    assert (approximate[moved] >= observed[moved] * (1 - 1e-12)).all()
    assert (approximate[moved] > observed[moved] * (1 + 1e-6)).any()
    np.testing.assert_allclose(approximate[~moved], observed[~moved], rtol=1e-10)
    costs = 0.9 * case.oracle.compute_costs()
    rows = (products["market_ids"] == case.market).to_numpy()
    expected = case.oracle.compute_approximate_prices(
        firm_ids=new_firms[rows], costs=costs[rows], market_id=case.market
    )
    ours = case.ours.approximate_prices(case.merger, costs=costs, market_id=case.market)
    assert_close(ours, expected, "approximate prices at given costs, one market")


def test_passthrough_and_profit_hessians_match_pyblp(case):
    market, products = case.market, case.products
    assert_close(
        case.ours.passthrough(market),
        case.oracle.compute_passthrough(market_id=market),
        "passthrough",
    )
    rows = (products["market_ids"] == market).to_numpy()
    costs = case.oracle.compute_costs()[rows]
    per_product = case.oracle.compute_profit_hessians(costs=costs, market_id=market)
    firms = products.loc[rows, "firm_ids"].to_numpy()
    ownership = (firms[:, None] == firms[None, :]).astype(float)
    # Row j of firm f(j)'s Hessian: Σ_m O_jm ∂²π_m/∂p_j∂p_k (pyblp's simulations do the same).
    by_firm = (ownership.T[..., None] * per_product).sum(axis=0)
    hessians = case.ours.profit_hessians(market)
    assert sorted(map(str, hessians)) == sorted(map(str, pd.unique(firms)))
    for firm, hessian in hessians.items():
        own = np.flatnonzero(firms == firm)
        assert list(hessian.index) == products.loc[rows, "product_ids"].to_numpy()[own].tolist()
        assert_close(hessian, by_firm[np.ix_(own, own)], f"Hessian of firm {firm}")


def test_equilibrium_prices_after_a_merger_match_pyblp(case, pyblp):
    market, products = case.market, case.products
    rows = (products["market_ids"] == market).to_numpy()
    new_firms = products["firm_ids"].replace(case.merger).to_numpy()[rows]
    costs = case.oracle.compute_costs()[rows]
    iteration = pyblp.Iteration("simple", {"atol": 1e-14, "max_evaluations": 10000})
    prices = case.oracle.compute_prices(
        firm_ids=new_firms, costs=costs, market_id=market, iteration=iteration
    )
    ours = case.ours.equilibrium_prices(firm_ids=case.merger, market_id=market)
    assert_close(ours.prices, prices, "equilibrium prices")
    assert ours.markets.loc[market, "foc_norm"] < 1e-12
    assert ours.markets.loc[market, "max_hessian_eigenvalue"] < 0
    shares = case.oracle.compute_shares(prices=prices, market_id=market)
    assert_close(ours.shares, shares, "equilibrium shares")


def test_partial_ownership_matches_pyblp(case, pyblp):
    """κ(f, g) ≠ κ(g, f): every place Ω enters must keep its orientation."""
    products, market = case.products, case.market
    ownership = pyblp.build_ownership(products, kappa)
    costs = case.oracle.compute_costs(ownership=ownership)
    assert_close(case.ours.costs(ownership=kappa), costs, "costs with kappa")
    rows = (products["market_ids"] == market).to_numpy()
    omega = ownership[rows][:, : rows.sum()]
    assert_close(
        case.ours.passthrough(market, ownership=kappa),
        case.oracle.compute_passthrough(ownership=omega, market_id=market),
        "passthrough with kappa",
    )
    per_product = case.oracle.compute_profit_hessians(costs=costs[rows], market_id=market)
    by_firm = (omega.T[..., None] * per_product).sum(axis=0)
    firms = products.loc[rows, "firm_ids"].to_numpy()
    for firm, hessian in case.ours.profit_hessians(market, ownership=kappa).items():
        own = np.flatnonzero(firms == firm)
        assert_close(hessian, by_firm[np.ix_(own, own)], f"Hessian of firm {firm} with kappa")


# ---------------------------------------------------------------- question 5 across markets


@pytest.fixture
def q5(pyblp, request, built) -> Case:
    if "q5" not in built:
        built["q5"] = _q5(pyblp, request)
    return built["q5"]


@pytest.mark.filterwarnings("ignore:some agents have a positive price coefficient")
def test_q5_merger_in_all_markets(q5):
    """F1 buys F6. Market C03Q1 already fails the second-order conditions at the observed
    prices under this demand (a firm's profit Hessian has a positive eigenvalue: some agents'
    price coefficients are positive), and its post-merger solution is flagged the same way."""
    with pytest.warns(ConvergenceWarning, match=r"1 market\(s\), e.g. \['C03Q1'\]"):
        observed = q5.ours.equilibrium_prices()
    assert observed.markets["iterations"].eq(0).all()
    with pytest.warns(ConvergenceWarning, match=r"\['C03Q1'\].*not a profit maximum"):
        merger = q5.ours.merger(firm_ids=q5.merger)
    products, markets = merger.products, merger.markets
    assert (merger.equilibrium.markets["foc_norm"] < 1e-12).all()
    merging = products["firm_ids_pre"].isin(["F1", "F6"])
    regular = products.index.get_level_values("market_ids") != "C03Q1"
    assert (products.loc[merging & regular, "prices_change"] > 0).all()
    assert (markets["consumer_surplus_change"] < 0).all()
    assert (markets["hhi_change"] > 0).all()


@pytest.mark.filterwarnings("ignore:some agents have a positive price coefficient")
def test_q5_merger_without_an_equilibrium_names_the_market(q5):
    """F1 buys F2: in C03Q1 neither we nor pyblp find prices that solve the first-order
    conditions (pyblp's ζ iteration returns prices from −45 to −0.37, where the profit
    gradient is 0.98). The market is flagged, named in the warning, and left NaN; C01Q1 is
    solved (tests/test_mergers.py checks its prices against pyblp's)."""
    with pytest.warns(ConvergenceWarning, match=r"\['C03Q1'\]"):
        merger = q5.ours.merger(firm_ids={"F2": "F1"}, market_id=["C01Q1", "C03Q1"])
    assert merger.markets["converged"].to_dict() == {"C01Q1": True, "C03Q1": False}


@pytest.mark.filterwarnings("ignore::blpmodels.ConvergenceWarning")
def test_simulate_at_the_estimates_gives_back_the_data_and_moves_with_the_parameters(case):
    products = case.products
    same = case.ours.simulate()
    assert same.markets["iterations"].eq(0).all()
    np.testing.assert_allclose(same.data["prices"], products["prices"], rtol=1e-14)
    np.testing.assert_allclose(same.data["shares"], products["shares"], rtol=1e-10)
    # Less price-sensitive demand: the price coefficient 5% closer to zero (for Q5, whose mean
    # coefficient is positive and offset by income, less dispersion of it instead: more
    # agents with positive coefficients leave C03Q1 without an equilibrium).
    name = "sigma[prices,prices]" if "sigma[prices,prices]" in case.ours.params else "prices"
    moved = case.ours.simulate({name: 0.95 * case.ours.params[name]})
    assert (moved.markets["foc_norm"] < 1e-12).all()
    change = moved.data["prices"].to_numpy() - products["prices"].to_numpy()
    assert np.abs(change).max() > 1e-6
    if name == "prices":
        assert (change > 0).mean() > 0.9  # mostly higher markups


def test_a_price_that_drives_a_share_to_zero_is_no_equilibrium():
    """F weighs each product's first-order condition by its share, so a start that prices a
    product out of the market (share e^-60) has max |F| ~ 1e-26 < tol, though it is no
    equilibrium. The solver must not stop there: it reaches the logit closed form
    p − c = 1/(−α(1 − s)) in both markets (the first starts at the observed prices)."""
    from blpmodels.kernel.equilibrium import PriceState, solve_prices
    from blpmodels.kernel.shares import Nesting, ShareEvaluator

    mask, nesting, weights = np.ones((2, 2), bool), Nesting.unnested((2, 2)), np.ones((2, 1))
    alpha, delta, base = -2.0, np.array([[1.0, 0.5], [1.0, 0.5]]), np.ones((2, 2))

    def evaluate(prices, markets):
        shifted = delta[markets] + alpha * (prices - base[markets])
        evaluator = ShareEvaluator(
            np.zeros((markets.size, 2, 1)), weights[markets], mask[markets],
            nesting.subset(markets),
        )  # fmt: skip
        return PriceState.at(
            evaluator.probabilities(shifted), weights[markets], nesting.subset(markets),
            mask[markets], np.full((markets.size, 2, 1), alpha),
        )  # fmt: skip

    costs = np.array([[0.5, 0.6], [0.5, 0.6]])

    # Market 2: product 2 priced out, product 1 at its best reply to that (a logit product
    # alone: p − c = 1/(−α(1 − s)), solved by brentq), so every F_j is below 1e-20.
    def alone(price):
        share = 1 / (1 + np.exp(-(1.0 + alpha * (price - 1.0))))
        return price - 0.5 - 1 / (-alpha * (1 - share))

    start = np.array([[1.0, 1.0], [scipy.optimize.brentq(alone, 0.5, 5.0, xtol=1e-15), 31.0]])
    assert evaluate(start[1:], np.array([1])).shares[0, 1] < 1e-25
    solution = solve_prices(evaluate, costs, start, np.eye(2)[None].repeat(2, 0), mask)
    assert solution.converged.all()
    shares = solution.state.shares
    np.testing.assert_allclose(solution.prices - costs, 1 / (-alpha * (1 - shares)), rtol=1e-10)
    np.testing.assert_allclose(solution.prices[1], solution.prices[0], rtol=1e-10)
