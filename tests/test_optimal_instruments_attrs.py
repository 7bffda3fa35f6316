"""Optimal-instrument frames survive pandas' own operations (issue 21, item 7's follow-up).

pandas compares the ``attrs`` of the frames ``pd.concat`` joins with ``==`` and needs one bool;
with Series, frames or arrays in ``attrs`` it raised "The truth value of a Series is
ambiguous". The values are now plain Python (lists, dicts), checked here against closed forms
of the logit where they carry numbers: E[p | z] is the first-stage fit (demand only), and with
a supply side ∂ξ/∂α = −E[p] (δ = X1β + αp) at E[p].
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from conftest import simulate_logit_products
from test_supply_estimation import _with_cost_shifter

from blpmodels import BLPLogit
from blpmodels.simulation import simulate_logit


@pytest.fixture(scope="module")
def demand_only():
    products = simulate_logit(n_markets=20, n_products=4, seed=0).products
    results = BLPLogit.from_formula("shares ~ 1 + x + [prices ~ cost_shifter]", products).fit()
    return products, results


@pytest.fixture(scope="module")
def with_supply():
    products = _with_cost_shifter(
        simulate_logit_products(20, 4, seed=1).drop(columns="nesting_ids")
    )
    results = BLPLogit.from_formula(
        "shares ~ 1 + x + [prices ~ z1 + z2]", products, supply="1 + w", supply_instruments="z2"
    ).fit()
    return products, results


def test_two_demand_frames_concatenate_and_copy(demand_only):
    products, results = demand_only
    approximate = results.optimal_instruments()
    drawn = results.optimal_instruments(method="normal", draws=3, seed=1)
    both = pd.concat([approximate, drawn.add_suffix("_drawn")], axis=1)
    np.testing.assert_array_equal(both["optimal_prices"], approximate["optimal_prices"])
    np.testing.assert_array_equal(both["optimal_prices_drawn"], drawn["optimal_prices"])
    # Different attrs: pandas keeps none (they describe neither frame alone).
    assert both.attrs == {}
    stacked = pd.concat([approximate, approximate.copy()])
    assert stacked.attrs == approximate.attrs  # the same attrs are kept
    copied = approximate.copy()
    assert copied.attrs == approximate.attrs
    copied.attrs["parameters"]["optimal_prices"] = "changed"  # a deep copy
    assert approximate.attrs["parameters"]["optimal_prices"] == "prices"
    # E[p | z] of the logit without supply: the first stage's fitted prices.
    first_stage = smf.ols("prices ~ x + cost_shifter", products).fit().fittedvalues
    expected = pd.Series(approximate.attrs["expected_prices"], index=approximate.index)
    np.testing.assert_allclose(expected, first_stage, rtol=1e-10)


def test_supply_frames_concatenate_and_copy(with_supply):
    _, results = with_supply
    approximate = results.optimal_instruments()
    drawn = results.optimal_instruments(method="empirical", draws=2, seed=3)
    both = pd.concat([approximate, drawn.add_suffix("_drawn")], axis=1)
    assert both.shape == (len(approximate), 2 * approximate.shape[1])
    assert approximate.copy().attrs == approximate.attrs
    assert pd.concat([approximate, approximate.copy()], axis=1).attrs == approximate.attrs
    attrs = approximate.attrs
    xi_jacobian = pd.DataFrame(attrs["xi_jacobian"], index=approximate.index)
    assert list(xi_jacobian.columns) == ["prices"]
    np.testing.assert_allclose(xi_jacobian["prices"], -np.asarray(attrs["expected_prices"]))
    assert np.asarray(attrs["inverse_covariance"]).shape == (2, 2)
    assert len(attrs["expected_shares"]) == len(approximate)
