"""Post-change ownership in ``results.counterfactual`` (issue 21, item 1): ``firm_ids=`` and
``ownership=`` as in ``merger``, so a merger combines with entry, exit and taxes in one call.

Oracles, none of them the counterfactual's own output:

- ``results.merger`` (a separate code path: its own chunk solver, costs and records): with
  nothing added, removed or taxed, the counterfactual under the merged firms is the merger, on
  Mixtape exercise 2 (question 5's demand at its published estimates, F1 buys F2) and in a logit;
- a hand solution of the logit: shares s_j = e^{u_j} / (1 + Σ_k e^{u_k}) with
  u_j = log(s_j / s_0) − a (p_j − p_j^obs) for the products in the data (a = −α) and
  β₀ + β_x x + ξ − a p for a new one, costs imputed from the single-product firms' markups
  c_j = p_j − 1 / (a (1 − s_j)), and the merged firm's first-order conditions under a unit tax t
  s_j − a Σ_{k∈f} (p_k − t − c_k) s_k (δ_jk − s_j) = 0, solved with ``scipy.optimize.root``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from builders import at_parameters, q5_model
from scipy import optimize

from blpmodels import BLPInputError, BLPLogit, simulation
from blpmodels.results.demand import DemandSystem

Q5_THETA = {"sigma": [[0, 0], [0, 6.015167]], "pi": [[0.108829], [-5.957239]]}
LOGIT = "shares ~ 1 + x + [prices ~ cost_shifter]"
# Columns named alike in both records (the counterfactual's margins are the merger's markups).
PRODUCT_COLUMNS = {
    f"{name}_{when}": f"{other}_{when}"
    for name, other in (("prices", "prices"), ("shares", "shares"), ("margins", "markups"))
    for when in ("pre", "post", "change")
} | {f"profits_{when}": f"profits_{when}" for when in ("pre", "post", "change")}
MARKET_COLUMNS = [
    f"{name}_{when}"
    for name in ("hhi", "consumer_surplus", "profits")
    for when in ("pre", "post", "change")
]


def _same_as_merger(counterfactual, merger) -> None:
    ours, theirs = counterfactual.products, merger.products
    assert ours.index.equals(theirs.index)
    np.testing.assert_array_equal(ours["firm_ids"], theirs["firm_ids_post"])
    np.testing.assert_array_equal(ours["firm_ids_pre"], theirs["firm_ids_pre"])
    for mine, other in PRODUCT_COLUMNS.items():
        np.testing.assert_allclose(ours[mine], theirs[other], rtol=0, atol=1e-10, err_msg=mine)
    markets = merger.markets
    np.testing.assert_array_equal(counterfactual.markets["converged"], markets["converged"])
    for name in MARKET_COLUMNS:
        np.testing.assert_allclose(
            counterfactual.markets[name], markets[name], rtol=1e-12, atol=1e-10, err_msg=name
        )


@pytest.fixture(scope="module")
def question5(exercise2):
    """Question 5's demand at its estimates, on exercise 2's data with firms."""
    products, agents = exercise2
    products = products.copy()
    products["firm_ids"] = products["product_ids"].str[:2]
    return products, at_parameters(q5_model(products, agents), **Q5_THETA)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_merger_alone_is_the_merger_on_exercise_2(question5):
    _, results = question5
    # Every market: in some (C03Q1) no post-merger equilibrium is found, and both records must
    # mark those alike (NaN after the change).
    merger = results.merger({"F2": "F1"})
    counterfactual = results.counterfactual(firm_ids={"F2": "F1"})
    assert counterfactual.markets["converged"].mean() > 0.5
    assert (counterfactual.products["prices_change"].abs() > 1e-6).any()
    _same_as_merger(counterfactual, merger)
    # The firms after the change: F2's products are F1's, and HHI rises.
    firms = counterfactual.products[["firm_ids_pre", "firm_ids"]]
    assert (firms.loc[firms["firm_ids_pre"].isin(["F1", "F2"]), "firm_ids"] == "F1").all()
    assert (counterfactual.markets["hhi_change"].dropna() > 0).all()


@pytest.fixture(scope="module")
def logit():
    """Single-product firms F1, F2, F3 in four markets."""
    products = simulation.simulate_logit(n_markets=4, n_products=3, n_firms=3, seed=4).products
    return products, BLPLogit.from_formula(LOGIT, products).fit()


@pytest.mark.parametrize(
    "owners",
    [{"firm_ids": {"F2": "F1"}}, {"ownership": "monopoly"}, {"ownership": "single"}],
    ids=["mapping", "monopoly", "single"],
)
def test_every_ownership_of_merger_gives_the_merger_in_a_logit(logit, owners):
    _, results = logit
    merger = results.merger(**owners)
    _same_as_merger(results.counterfactual(**owners), merger)


def _hand_equilibrium(products, results, market, t, owners, new=None):
    """Prices of ``market`` under the firms ``owners`` (a list of groups of positions), a unit
    tax ``t`` on every product, and optionally a new product (x, ξ, cost) at the end."""
    rows = products[products["market_ids"] == market]
    a = -float(results.params["prices"])
    s_obs, p_obs = rows["shares"].to_numpy(), rows["prices"].to_numpy()
    base = np.log(s_obs / (1 - s_obs.sum())) + a * p_obs  # u_j + a p_j
    costs = p_obs - 1 / (a * (1 - s_obs))
    if new is not None:
        x, xi, cost = new
        params = results.params
        base = np.append(base, params["Intercept"] + params["x"] * x + xi)
        costs = np.append(costs, cost)

    def shares(p):
        e = np.exp(base - a * p)
        return e / (1 + e.sum())

    def foc(p):
        s = shares(p)
        out = np.empty_like(p)
        for group in owners:
            for j in group:
                margins = [(p[k] - t - costs[k]) * s[k] * ((k == j) - s[j]) for k in group]
                out[j] = s[j] - a * sum(margins)
        return out

    start = costs + t + 1 / a
    solution = optimize.root(foc, start, tol=1e-14)
    assert solution.success
    return solution.x, shares(solution.x)


def test_a_merger_with_a_unit_tax_matches_the_hand_solution(logit):
    products, results = logit
    t = 0.1
    taxed = results.counterfactual(firm_ids={"F2": "F1"}, taxes={"unit": t})
    assert taxed.converged
    for market in products["market_ids"].unique():
        prices, shares = _hand_equilibrium(products, results, market, t, [[0, 1], [2]])
        after = taxed.products.loc[market]
        np.testing.assert_allclose(after["prices_post"], prices, rtol=1e-10)
        np.testing.assert_allclose(after["shares_post"], shares, rtol=1e-9)
        inside = np.array([shares[0] + shares[1], shares[2]]) / shares.sum()
        hhi = 10_000 * (inside**2).sum()
        np.testing.assert_allclose(taxed.markets.loc[market, "hhi_post"], hhi, rtol=1e-9)
    assert (taxed.products["firm_ids"] == ["F1", "F1", "F3"] * 4).all()
    assert (taxed.products["firm_ids_pre"] == ["F1", "F2", "F3"] * 4).all()


@pytest.mark.parametrize(
    ("entrant", "owners"),
    [("F2", {"F2": "F1"}), ("F9", {"F2": "F1", "F9": "F1"})],
    ids=["acquired-firm-launches", "entrant-acquired"],
)
def test_a_merger_entry_and_tax_in_one_call(logit, entrant, owners):
    """F1 buys F2 while F2 (or a new firm F9, bought by F1 too) launches a product: the new
    product is F1's."""
    products, results = logit
    t, market = 0.05, "M2"
    new = pd.DataFrame(
        {"market_ids": [market], "firm_ids": [entrant], "x": [0.3], "xi": [0.1], "costs": [2.4]}
    )
    new["product_ids"] = "P9"
    changed = results.counterfactual(firm_ids=owners, add=new, taxes={"unit": t}, market_id=market)
    prices, shares = _hand_equilibrium(
        products, results, market, t, [[0, 1, 3], [2]], new=(0.3, 0.1, 2.4)
    )
    after = changed.products.loc[market]
    np.testing.assert_allclose(after["prices_post"], prices, rtol=1e-10)
    np.testing.assert_allclose(after["shares_post"], shares, rtol=1e-9)
    assert after["firm_ids"].tolist() == ["F1", "F1", "F3", "F1"]
    assert after["firm_ids_pre"].iloc[:3].tolist() == ["F1", "F2", "F3"]
    assert pd.isna(after["firm_ids_pre"].iloc[3])
    assert changed.markets.loc[market, "tax_revenue"] == pytest.approx(t * shares.sum())


def test_profit_weights_cover_the_new_firms(logit):
    """κ(f, g) = 0.5 between F1 and F2 (partial ownership) against the hand solution's
    Ω-weighted conditions: F1 and F2 each weigh the other's profits by one half."""
    products, results = logit
    kappa = lambda f, g: 1.0 if f == g else (0.5 if {f, g} == {"F1", "F2"} else 0.0)  # noqa: E731
    changed = results.counterfactual(ownership=kappa, market_id="M1")
    rows = products[products["market_ids"] == "M1"]
    a = -float(results.params["prices"])
    s_obs, p_obs = rows["shares"].to_numpy(), rows["prices"].to_numpy()
    base = np.log(s_obs / (1 - s_obs.sum())) + a * p_obs
    costs = p_obs - 1 / (a * (1 - s_obs))
    omega = np.array([[1, 0.5, 0], [0.5, 1, 0], [0, 0, 1.0]])

    def foc(p):
        e = np.exp(base - a * p)
        s = e / (1 + e.sum())
        jacobian = -a * (np.diag(s) - np.outer(s, s))  # [j, k] = ∂s_k/∂p_j (symmetric)
        return s + (omega * jacobian) @ (p - costs)

    solution = optimize.root(foc, p_obs, tol=1e-14)
    np.testing.assert_allclose(changed.products["prices_post"], solution.x, rtol=1e-10)


def test_bad_owners_are_named_before_any_work(logit, monkeypatch):
    _, results = logit

    def refuse(*args, **kwargs):
        raise AssertionError("share work began before the arguments were checked")

    for name in ("priced", "jacobian", "inputs"):
        monkeypatch.setattr(DemandSystem, name, refuse)
    with pytest.raises(BLPInputError, match="F9"):
        results.counterfactual(firm_ids={"F9": "F1"})
    with pytest.raises(BLPInputError, match="not both"):
        results.counterfactual(firm_ids={"F2": "F1"}, ownership="monopoly")
    with pytest.raises(BLPInputError, match="ownership must be"):
        results.counterfactual(ownership="duopoly")
