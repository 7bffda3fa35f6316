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

from blpmodels.kernel.markups import firm_indicator, markup_jacobian, markups
from blpmodels.kernel.shares import Nesting, ShareEvaluator
from blpmodels.kernel.symmetric_jacobians import (
    MARKUP_BLOCK_SIZE,
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


@pytest.mark.parametrize("negative_weights", [False, True])
@pytest.mark.parametrize("block_size", [MARKUP_BLOCK_SIZE, 2])
def test_cholesky_markups_solve_the_first_order_conditions(
    block_size: int, negative_weights: bool
) -> None:
    """η solves s + (Ω ⊙ (∂s/∂p)ᵀ) η = 0 (Ω: two multiproduct firms, their products
    interleaved), and the factored system solves B x = y as numpy's LU solve of the dense B
    does; zero in padding. −B is factored in blocks of whole firms: one per market, or one
    per firm (blocks of about 2 products); with a few negative (quadrature-like) weights the
    rank update takes agents of both signs."""
    rng = np.random.default_rng(5)
    mask = _masks()
    weights = np.full((4, 30), 1 / 30)
    if negative_weights:
        weights[:, ::7] = -0.2 / 30
    slopes = -rng.uniform(0.5, 3.0, size=(4, 30))
    probabilities = _economy(weights, mask)
    codes = np.tile(np.arange(7) % 2, (4, 1))
    firms = (codes[:, :, None] == np.arange(2)) & mask[:, :, None]
    ownership = np.matmul(firms.astype(float), np.swapaxes(firms, 1, 2).astype(float))
    eta, system = cholesky_markups(
        probabilities, weights, slopes, firms.astype(float), mask, block_size
    )
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
    firms = np.broadcast_to(np.eye(5), (2, 5, 5)).copy()  # single-product firms
    slopes = np.full((2, 8), 1.5)
    assert cholesky_markups(probabilities, weights, slopes, firms, mask) is None


def test_agent_price_slopes_read_per_agent_derivatives_and_reject_product_ones() -> None:
    """d_i read off the characteristics' price derivatives equals the dense
    D_ji = m_j + Σ_k x_jk β_ik of every real product (padding ignored; 0 for a market of
    padding only), also when an unused column (β_k = 0 for all agents) differs by product;
    None when m_j or a used column differs between real products (e.g. log prices)."""
    rng = np.random.default_rng(8)
    mask = _masks()
    T, J = mask.shape
    beta = rng.normal(size=(T, 5, 3))  # [T, I, K]
    beta[:, :, 2] = 0.0  # column 2 unused
    columns = np.broadcast_to(rng.normal(size=(T, 1, 3)), (T, J, 3)).copy()
    columns[:, :, 2] = rng.normal(size=(T, J))  # differs by product, but β_2 = 0
    columns[~mask] = 99.0
    mean = np.where(mask, np.array([0.5, -1.0, 2.0, 0.0])[:, None], 7.0)
    dense = mean[:, :, None] + np.einsum("tjk,tik->tji", columns, beta)
    slopes = agent_price_slopes(mean, columns, beta, mask)
    for market in range(3):
        for product in np.flatnonzero(mask[market]):
            np.testing.assert_allclose(slopes[market], dense[market, product], rtol=1e-14)
    assert np.all(slopes[3] == 0)
    product_mean = mean.copy()
    product_mean[2, 5] += 1e-12
    assert agent_price_slopes(product_mean, columns, beta, mask) is None
    product_column = columns.copy()
    product_column[1, 2, 0] += 1e-12
    assert agent_price_slopes(mean, product_column, beta, mask) is None


def test_cholesky_markups_decline_a_real_product_without_a_firm() -> None:
    """A real product in no firm's column of H (so Ω ≠ HHᵀ on the real products) is no
    block of −B: None, and the caller solves the dense system instead."""
    mask = np.ones((1, 4), bool)
    weights = np.full((1, 8), 1 / 8)
    probabilities = _economy(weights, mask)
    firms = np.array([[[1.0, 0], [0, 1], [1, 0], [0, 0]]])
    slopes = np.full((1, 8), -1.5)
    assert cholesky_markups(probabilities, weights, slopes, firms, mask) is None
    firms[0, 3, 1] = 1.0
    assert cholesky_markups(probabilities, weights, slopes, firms, mask) is not None


def test_symmetric_markup_jacobian_forms_p_from_the_factors_of_its_system() -> None:
    """Given no P, the symmetric ∂η/∂θ takes each market's rows of P from the factored
    probabilities that :func:`cholesky_markups` keeps in its system; it equals the batched
    path given the formed P and the dense B = Ω ⊙ (∂s/∂p)ᵀ (padding at the end, between real
    products, and a market of padding only)."""
    rng = np.random.default_rng(4)
    mask = _masks()
    T, J = mask.shape
    N, L = 30, 3
    weights = np.full((T, N), 1 / N)
    probabilities = _economy(weights, mask)
    P, s = probabilities.unconditional, probabilities.shares
    slopes = -rng.uniform(0.5, 3.0, size=(T, N))
    codes = np.tile(np.arange(J) % 3, (T, 1))
    indicator = ((codes[:, :, None] == np.arange(3)) & mask[:, :, None]).astype(float)
    ownership = indicator @ np.swapaxes(indicator, 1, 2)
    firms = firm_indicator(ownership, mask)
    c = weights * slopes
    jacobian = np.einsum("tj,jk->tjk", (P * c[:, None, :]).sum(axis=2), np.eye(J))
    jacobian -= np.matmul(P * c[:, None, :], np.swapaxes(P, 1, 2))
    eta, system = markups(jacobian, s, ownership, mask)
    factored_eta, factored = cholesky_markups(probabilities, weights, slopes, firms, mask)
    np.testing.assert_allclose(factored_eta, eta, rtol=0, atol=1e-12 * np.abs(eta).max())
    utility_columns = np.where(mask[:, :, None], rng.normal(size=(T, J, 2)), 0.0)
    arguments = [
        rng.normal(size=(T, J, L)) * mask[:, :, None],
        utility_columns,
        np.zeros((T, J, 2)),
        rng.normal(size=(T, N, L)),
        np.zeros((T, J, L)),
        np.array([0, 1, -1]),
    ]
    derivative = np.where(mask[:, :, None], slopes[:, None, :], 0.0)
    batched = markup_jacobian(P, weights, derivative, eta, ownership, system, *arguments)
    symmetric = markup_jacobian(
        None, weights, None, factored_eta, ownership, factored, *arguments, firms=firms
    )
    assert np.abs(batched).max() > 0.1
    np.testing.assert_allclose(symmetric, batched, rtol=0, atol=1e-11 * np.abs(batched).max())
