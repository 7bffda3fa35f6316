"""Tests for blpmodels.simulation: determinism, equilibrium, endogeneity and argument checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from blpmodels.exceptions import BLPInputError, FixedPointError
from blpmodels.simulation.logit import LogitSimulation, simulate_logit


@pytest.fixture(scope="module")
def default() -> LogitSimulation:
    return simulate_logit()


def _reference_foc_residual(simulation: LogitSimulation) -> float:
    """Largest |p - c - 1 / (|alpha| (1 - S_f))|, one market and firm at a time."""
    worst = 0.0
    alpha = simulation.alpha
    for _, market in simulation.products.groupby("market_ids", sort=False):
        delta = (
            simulation.beta["Intercept"]
            + simulation.beta["x"] * market["x"].to_numpy()
            + alpha * market["prices"].to_numpy()
            + market["xi"].to_numpy()
        )
        shares = np.exp(delta) / (1.0 + np.exp(delta).sum())
        np.testing.assert_allclose(shares, market["shares"], rtol=1e-12)
        firms = market["firm_ids"].to_numpy()
        margins = (market["prices"] - market["costs"]).to_numpy()
        for firm in np.unique(firms):
            mine = firms == firm
            markup = -1.0 / (alpha * (1.0 - shares[mine].sum()))
            worst = max(worst, float(np.max(np.abs(margins[mine] - markup))))
    return worst


def _ols_and_iv(products: pd.DataFrame) -> tuple[float, float, float, float]:
    """Price coefficient and its homoskedastic SE from OLS and 2SLS of log(s/s0) on [1, x, p]."""
    y = np.log(products["shares"] / products["outside_share"]).to_numpy()
    ones = np.ones(len(products))
    X = np.column_stack([ones, products["x"], products["prices"]])
    Z = np.column_stack([ones, products["x"], products["cost_shifter"]])
    n, k = X.shape
    ols = np.linalg.solve(X.T @ X, X.T @ y)
    residual = y - X @ ols
    ols_se = np.sqrt(residual @ residual / (n - k) * np.linalg.inv(X.T @ X)[2, 2])
    fitted = Z @ np.linalg.solve(Z.T @ Z, Z.T @ X)
    iv = np.linalg.solve(fitted.T @ X, fitted.T @ y)
    residual = y - X @ iv
    iv_se = np.sqrt(residual @ residual / (n - k) * np.linalg.inv(fitted.T @ fitted)[2, 2])
    return ols[2], ols_se, iv[2], iv_se


def test_layout(default: LogitSimulation) -> None:
    products = default.products
    assert products.shape[0] == 200 * 10
    expected = {"market_ids", "product_ids", "firm_ids", "shares", "outside_share", "prices"}
    assert expected | {"x", "cost_shifter", "market_size", "xi", "omega", "costs"} == set(
        products.columns
    )
    for column in ("market_ids", "product_ids", "firm_ids"):
        assert all(isinstance(value, str) for value in products[column])
    assert products["market_ids"].nunique() == 200
    assert products.groupby("product_ids")["firm_ids"].nunique().eq(1).all()
    assert products["firm_ids"].nunique() == 4
    assert default.alpha == -2.0 and set(default.beta) == {"Intercept", "x"}
    assert default.iterations > 0


def test_determinism_by_seed() -> None:
    first, second = simulate_logit(n_markets=20, seed=7), simulate_logit(n_markets=20, seed=7)
    pd.testing.assert_frame_equal(first.products, second.products)
    other = simulate_logit(n_markets=20, seed=8)
    assert not np.allclose(first.products["prices"], other.products["prices"])


def test_equilibrium_first_order_conditions(default: LogitSimulation) -> None:
    assert default.foc_residual < 1e-12
    assert _reference_foc_residual(default) < 1e-12


def test_shares_are_realistic(default: LogitSimulation) -> None:
    products = default.products
    assert (products["shares"] > 0).all()
    inside = products.groupby("market_ids")["shares"].sum()
    assert (inside < 1).all()
    np.testing.assert_allclose(
        products.groupby("market_ids")["outside_share"].first(), 1 - inside, atol=1e-15
    )
    assert 0.3 < products["outside_share"].min() and products["outside_share"].max() < 0.9
    assert (products["costs"] > 0).all() and (products["prices"] > products["costs"]).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iv_recovers_alpha_and_ols_is_biased(seed: int) -> None:
    simulation = simulate_logit(seed=seed)
    ols, ols_se, iv, iv_se = _ols_and_iv(simulation.products)
    assert abs(iv - simulation.alpha) < 3 * iv_se
    assert ols - simulation.alpha > 0.2  # biased towards zero ...
    assert ols - simulation.alpha > 5 * ols_se  # ... and clearly so


def test_unbalanced_markets() -> None:
    simulation = simulate_logit(n_markets=60, n_products=6, n_firms=3, drop_probability=0.6)
    sizes = simulation.products.groupby("market_ids").size()
    assert sizes.nunique() > 1 and sizes.min() >= 1 and len(sizes) == 60
    assert _reference_foc_residual(simulation) < 1e-12


def test_single_firm_with_large_share() -> None:
    simulation = simulate_logit(n_markets=10, n_products=3, n_firms=1, beta_constant=10.0)
    assert simulation.products.groupby("market_ids")["shares"].sum().max() > 0.5
    assert _reference_foc_residual(simulation) < 1e-12


def test_non_convergence_raises() -> None:
    with pytest.raises(FixedPointError, match="did not converge after 2 iterations") as info:
        simulate_logit(n_markets=5, max_iterations=2)
    assert info.value.markets[0] == "M1"


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        ({"n_markets": 0}, "n_markets"),
        ({"n_markets": 2.5}, "n_markets"),
        ({"n_products": True}, "n_products"),
        ({"n_firms": 11}, "n_firms"),
        ({"n_firms": 0}, "n_firms"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"beta_x": "1"}, "beta_x"),
        ({"xi_scale": -0.1}, "xi_scale"),
        ({"omega_scale": float("inf")}, "omega_scale"),
        ({"correlation": 1.5}, "correlation"),
        ({"drop_probability": 1.0}, "drop_probability"),
        ({"seed": -1}, "seed"),
        ({"tol": 0.0}, "tol"),
        ({"max_iterations": 0}, "max_iterations"),
    ],
)
def test_bad_arguments(arguments: dict[str, object], name: str) -> None:
    with pytest.raises(BLPInputError, match=f"'{name}'"):
        simulate_logit(**arguments)  # type: ignore[arg-type]
    assert issubclass(BLPInputError, ValueError)
