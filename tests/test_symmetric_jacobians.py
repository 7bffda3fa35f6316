"""Symmetric share Jacobians by market: rank updates and Cholesky (issue 20, goal 2).

:mod:`blpmodels.kernel.symmetric_jacobians` forms ∂s/∂δ and −Ω ⊙ ∂s/∂p of the unnested logit by
symmetric rank updates with the agents split by the sign of their coefficient, on each market's
real products, and factors them by Cholesky. The references are the dense formulas written out
here from the agent probabilities (Σ_i w_i P_ji (1{j=k} − P_ki) and its price-weighted form)
with numpy's LU ``inv``/``solve``, and the Bertrand–Nash first-order conditions themselves.
The whole chain (fit-level objective and gradient with a supply side, where the autos data take
these paths) is checked against pyblp in ``test_supply_autos.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from blpmodels.kernel.shares import Nesting, ShareEvaluator
from blpmodels.kernel.symmetric_jacobians import (
    agent_price_slopes,
    cholesky_markups,
    delta_jacobian_inverse,
    lower_diagonal_minus_gram,
)


def _economy(weights: np.ndarray, mask: np.ndarray, seed: int = 3):
    """Factored probabilities of a random unnested economy (padding where not ``mask``)."""
    rng = np.random.default_rng(seed)
    T, J = mask.shape
    mu = np.where(mask[:, :, None], rng.normal(size=(T, J, weights.shape[1])), 0.0)
    evaluator = ShareEvaluator(mu, weights, mask, Nesting.unnested((T, J)))
    delta = np.where(mask, rng.normal(-2.0, 0.5, size=(T, J)), 0.0)
    return evaluator.probabilities(delta, factored=True)


def _masks() -> np.ndarray:
    """Four markets: full, padded at the end, one with a gap (real products not first) and
    one of padding only."""
    mask = np.ones((4, 7), bool)
    mask[1, 5:] = False
    mask[2, [0, 3]] = False
    mask[3] = False
    return mask


def test_lower_triangle_of_diagonal_minus_gram_with_agents_of_both_signs() -> None:
    """diag(d) − R diag(c) Rᵀ with c of both signs and zeros: the lower triangle equals the
    dense formula and the strict upper one stays zero (Cholesky and the inverse rely on it)."""
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(6, 11))
    coefficients = rng.normal(size=11)
    coefficients[[2, 7]] = 0.0
    diagonal = rng.uniform(1, 2, size=6)
    lower = lower_diagonal_minus_gram(diagonal, rows, coefficients)
    dense = np.diag(diagonal) - rows @ np.diag(coefficients) @ rows.T
    np.testing.assert_allclose(np.tril(lower), np.tril(dense), rtol=0, atol=1e-13)
    assert np.all(np.triu(lower, 1) == 0)


@pytest.mark.parametrize("negative_weights", [False, True])
def test_delta_jacobian_inverse_equals_the_inverse_of_the_dense_jacobian(
    negative_weights: bool,
) -> None:
    """(∂s/∂δ)⁻¹ by market equals numpy's inverse of diag(s) − P W Pᵀ on the real products,
    with the identity in padding; with a few negative (quadrature-like) weights too."""
    mask = _masks()
    weights = np.full((4, 30), 1 / 30)
    if negative_weights:
        weights[:, ::7] = -0.2 / 30
    probabilities = _economy(weights, mask)
    inverse = delta_jacobian_inverse(probabilities, weights, mask)
    P, s = probabilities.unconditional, probabilities.shares
    for market in range(4):
        real = np.flatnonzero(mask[market])
        Pm = P[market, real]
        dense = np.diag(s[market, real]) - Pm @ np.diag(weights[market]) @ Pm.T
        expected = np.linalg.inv(dense)
        got = inverse[market][np.ix_(real, real)]
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=0)
        padding = np.flatnonzero(~mask[market])
        np.testing.assert_array_equal(
            inverse[market][np.ix_(padding, padding)], np.eye(padding.size)
        )
        assert np.all(inverse[market][np.ix_(real, padding)] == 0)


def test_delta_jacobian_inverse_declines_a_matrix_that_is_not_positive_definite() -> None:
    """With negative weights everywhere the shares are negative, ∂s/∂δ is not positive
    definite, and the caller is told to take the LU path (None)."""
    mask = np.ones((2, 4), bool)
    weights = np.full((2, 10), -0.1)
    probabilities = _economy(weights, mask)
    assert delta_jacobian_inverse(probabilities, weights, mask) is None


def _price_jacobian(P: np.ndarray, weights: np.ndarray, slopes: np.ndarray) -> np.ndarray:
    """``[J, J]`` ∂s_j/∂p_k = Σ_i w_i d_i P_ji (1{j=k} − P_ki) of one market."""
    weighted = P * (weights * slopes)
    return np.diag(weighted.sum(axis=1)) - weighted @ P.T


def test_cholesky_markups_solve_the_first_order_conditions() -> None:
    """η solves s + (Ω ⊙ (∂s/∂p)ᵀ) η = 0 (Ω: two multiproduct firms), and the factored system
    solves B x = y as numpy's LU solve of the dense B does; zero in padding."""
    rng = np.random.default_rng(5)
    mask = _masks()
    weights = np.full((4, 30), 1 / 30)
    slopes = -rng.uniform(0.5, 3.0, size=(4, 30))
    probabilities = _economy(weights, mask)
    codes = np.tile(np.arange(7) % 2, (4, 1))
    firms = (codes[:, :, None] == np.arange(2)) & mask[:, :, None]
    ownership = np.matmul(firms.astype(float), np.swapaxes(firms, 1, 2).astype(float))
    eta, system = cholesky_markups(probabilities, weights, slopes, ownership, mask)
    right = rng.normal(size=(4, 7, 4))
    solved = system.solve(right)
    P, s = probabilities.unconditional, probabilities.shares
    for market in range(4):
        real = np.flatnonzero(mask[market])
        jacobian = _price_jacobian(P[market, real], weights[market], slopes[market])
        B = ownership[market][np.ix_(real, real)] * jacobian.T
        np.testing.assert_allclose(B @ eta[market, real], -s[market, real], rtol=0, atol=1e-13)
        np.testing.assert_allclose(
            solved[market, real], np.linalg.solve(B, right[market, real]), rtol=1e-10, atol=0
        )
    assert np.all(eta[~mask] == 0) and np.all(solved[~mask] == 0)


def test_cholesky_markups_decline_positive_price_slopes() -> None:
    """Utility rising in price makes −B indefinite: None (the caller then solves by LU)."""
    mask = np.ones((2, 5), bool)
    weights = np.full((2, 8), 1 / 8)
    probabilities = _economy(weights, mask)
    ownership = np.broadcast_to(np.eye(5), (2, 5, 5)).copy()
    slopes = np.full((2, 8), 1.5)
    assert cholesky_markups(probabilities, weights, slopes, ownership, mask) is None


def test_agent_price_slopes_read_per_agent_derivatives_and_reject_product_ones() -> None:
    """D_ji the same for every real product of each market (padding ignored): d_i, 0 for a
    market of padding only; any real product with its own derivative (e.g. log prices):
    None."""
    mask = _masks()
    slopes = np.arange(16.0).reshape(4, 4) - 20
    D = np.where(mask[:, :, None], slopes[:, None, :], 99.0)
    expected = np.where(mask.any(axis=1)[:, None], slopes, 0.0)  # market 3: padding only
    np.testing.assert_array_equal(agent_price_slopes(D, mask), expected)
    D[2, 5, 1] += 1e-12
    assert agent_price_slopes(D, mask) is None
