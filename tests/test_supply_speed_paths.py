"""The markup Jacobian's sparse firm path (issue 20, goal 2).

∂η/∂θ goes through firm sums Σ_{m∈F} x_m P_mi taken as one sparse product, whatever the number
of firms, so markets of single-product firms (F = J) take it too. The reference is the dense
path with the ownership matrix Ω itself (no firm structure), and, for the whole chain, central
differences of the markups themselves.
"""

from __future__ import annotations

import numpy as np
import pytest

from blpmodels.kernel.markups import firm_indicator, firm_sums_pay, markup_jacobian, markups
from blpmodels.kernel.symmetric_jacobians import MARKUP_BLOCK_SIZE, CholeskyMarkupSystem


def _arguments(firm_codes: np.ndarray, mask: np.ndarray, seed: int) -> tuple:
    """Random inputs of :func:`markup_jacobian` for the given firms (padding where not mask)."""
    rng = np.random.default_rng(seed)
    T, J = mask.shape
    N, L = 9, 5
    F = int(firm_codes.max()) + 1
    firms = np.where(mask[:, :, None], firm_codes[:, :, None] == np.arange(F), False)
    ownership = firms.astype(float) @ np.swapaxes(firms, 1, 2).astype(float)
    P = np.where(mask[:, :, None], rng.uniform(0.01, 0.1, size=(T, J, N)), 0.0)
    system = ownership * rng.normal(size=(T, J, J)) - 3 * np.eye(J)
    return (
        P,
        rng.uniform(size=(T, N)),
        np.where(mask[:, :, None], -rng.uniform(1, 2, size=(T, J, N)), 0.0),
        np.where(mask, rng.uniform(size=(T, J)), 0.0),
        ownership,
        system,
        rng.normal(size=(T, J, L)),
        rng.normal(size=(T, J, 3)),
        rng.normal(size=(T, J, 3)),
        rng.normal(size=(T, N, L)),
        rng.normal(size=(T, J, L)),
        np.array([0, 2, 2, -1, 1]),
    ), firm_indicator(ownership, mask)


@pytest.mark.parametrize("single_product", [True, False])
def test_firm_path_equals_the_dense_path_for_any_number_of_firms(single_product: bool) -> None:
    """Single-product firms (F = J, which took the dense path before) and a few large firms,
    markets of different sizes (padding), a parameter with no characteristic column."""
    T, J = 4, 10
    mask = np.ones((T, J), bool)
    mask[1, 7:] = False
    mask[3, 4:] = False
    rng = np.random.default_rng(3)
    codes = np.tile(np.arange(J), (T, 1)) if single_product else rng.integers(0, 3, size=(T, J))
    arguments, firms = _arguments(codes, mask, seed=4)
    assert firms is not None
    assert firm_sums_pay(firms.shape[2], J, 5, 2)  # the firm path is taken, also with F = J
    dense = markup_jacobian(*arguments)
    by_firm = markup_jacobian(*arguments, firms=firms)
    assert np.abs(dense).max() > 0.1
    np.testing.assert_allclose(by_firm, dense, rtol=0, atol=1e-12 * np.abs(dense).max())
    assert np.all(by_firm[~mask] == 0)


def test_firm_sums_pay_with_single_product_firms() -> None:
    """The sparse firm sums cost (3 + 2L + C)·J per agent against the dense J²(2 + C): only
    one-product markets are cheaper dense."""
    assert firm_sums_pay(150, 150, 6, 6) and firm_sums_pay(22, 150, 6, 6)
    assert not firm_sums_pay(1, 1, 6, 6)


def test_markup_jacobian_equals_central_differences_of_the_markups() -> None:
    """A logit economy with agents, where everything is closed form: utilities
    V_ji = δ_j + σ x_j ν_i + α p_j with δ held at the observed shares' solution. Moving σ moves
    δ(σ) (solved here by a contraction) and η(σ) = −B(σ)⁻¹s; the firm path's ∂η/∂σ equals
    central differences of :func:`markups` (an independent computation)."""
    rng = np.random.default_rng(7)
    T, J, N = 3, 6, 40
    mask = np.ones((T, J), bool)
    mask[2, 4:] = False
    x = np.where(mask, rng.normal(size=(T, J)), 0.0)
    prices = np.where(mask, rng.uniform(1, 2, size=(T, J)), 0.0)
    nodes = rng.normal(size=(T, N))
    weights = np.full((T, N), 1.0 / N)
    alpha, sigma0 = -1.5, 0.8
    codes = np.tile(np.arange(J) % 2, (T, 1))
    firms01 = np.where(mask[:, :, None], codes[:, :, None] == np.arange(2), False).astype(float)
    ownership = firms01 @ np.swapaxes(firms01, 1, 2)

    def probabilities(delta: np.ndarray, sigma: float) -> np.ndarray:
        utility = delta[:, :, None] + sigma * x[:, :, None] * nodes[:, None, :]
        utility += alpha * prices[:, :, None]
        exp = np.where(mask[:, :, None], np.exp(utility), 0.0)
        return exp / (1.0 + exp.sum(axis=1, keepdims=True))

    shares = np.where(mask, 0.08, 0.0)

    def solve_delta(sigma: float) -> np.ndarray:
        delta = np.zeros((T, J))
        for _ in range(3000):
            predicted = (probabilities(delta, sigma) * weights[:, None, :]).sum(axis=2)
            step = np.where(mask, np.log(np.where(mask, shares, 1)) - np.log(predicted + ~mask), 0)
            delta += step
            if np.abs(step).max() < 1e-15:
                break
        return delta

    def eta_and_system(sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        delta = solve_delta(sigma)
        P = probabilities(delta, sigma)
        wP = P * weights[:, None, :]
        # ∂s_j/∂p_k = Σ_i w_i α P_ji (1{j=k} − P_ki)
        jacobian = alpha * (
            np.einsum("tj,tjk->tjk", wP.sum(axis=2), np.eye(J)[None].repeat(T, 0))
            - np.matmul(wP, np.swapaxes(P, 1, 2))
        )
        eta, system = markups(jacobian, shares, ownership, mask)
        return eta, system, P, delta

    eta, system, P, _ = eta_and_system(sigma0)
    step = 1e-5
    numeric = (eta_and_system(sigma0 + step)[0] - eta_and_system(sigma0 - step)[0]) / (2 * step)
    # ∂δ/∂σ from the implicit function theorem: (∂s/∂δ) dδ = −∂s/∂σ.
    wP = P * weights[:, None, :]
    ds_ddelta = np.einsum("tji,jk->tjk", wP, np.eye(J)) - np.matmul(wP, np.swapaxes(P, 1, 2))
    xn = x[:, :, None] * nodes[:, None, :]
    ds_dsigma = (wP * (xn - (P * xn).sum(axis=1, keepdims=True))).sum(axis=2)
    eye = np.broadcast_to(~mask[:, :, None] & np.eye(J, dtype=bool), ds_ddelta.shape)
    ddelta = -np.linalg.solve(ds_ddelta + eye, ds_dsigma[:, :, None])  # [T, J, 1]
    exact = markup_jacobian(
        P,
        weights,
        np.where(mask[:, :, None], np.full((T, J, N), alpha), 0.0),
        eta,
        ownership,
        system,
        ddelta,
        x[:, :, None],
        np.zeros((T, J, 1)),
        nodes[:, :, None],
        np.zeros((T, J, 1)),
        np.array([0]),
        firms=firm_indicator(ownership, mask),
    )[:, :, 0]
    assert np.abs(numeric).max() > 1e-3
    np.testing.assert_allclose(exact, numeric, rtol=0, atol=1e-7 * np.abs(numeric).max())


@pytest.mark.parametrize("block_size", [MARKUP_BLOCK_SIZE, 2])
@pytest.mark.parametrize("column_of", [[0, 2, 1, 2, -1], [0, 1, 2, -1, -1], [-1, -1, -1, -1, -1]])
def test_symmetric_path_equals_the_batched_path(column_of: list[int], block_size: int) -> None:
    """When every product of a market has the agents' price slopes d_i, B = Ω ⊙ ∂s/∂p is
    symmetric and block diagonal on the products sorted by firm, factored in blocks of whole
    firms (:class:`CholeskyMarkupSystem` with its ``slopes``; blocks of about 2 products make
    several per market); :func:`markup_jacobian` then needs no firm sums of η∘dδ. It must
    equal the batched path given the dense B: firms listed out of order, a market with padding
    between real products and one with trailing padding, two parameters on one column (its
    u_c sums serve both), a price column (v ≠ 0) and a parameter on no column that only
    shifts the price derivatives; one parameter per column; and parameters on no column at
    all (moved X1 coefficients only)."""
    rng = np.random.default_rng(11)
    T, J, N, L = 3, 7, 30, 5
    mask = np.ones((T, J), bool)
    mask[1, [2, 5]] = False
    mask[2, 5:] = False
    codes = rng.integers(0, 3, size=(T, J))
    firms01 = np.where(mask[:, :, None], codes[:, :, None] == np.arange(3), False).astype(float)
    ownership = firms01 @ np.swapaxes(firms01, 1, 2)
    P = np.where(mask[:, :, None], rng.uniform(0.01, 0.1, size=(T, J, N)), 0.0)
    weights = rng.uniform(0.5, 1.5, size=(T, N)) / N
    slopes = -rng.uniform(1, 3, size=(T, N))
    c = weights * slopes
    # B = Ω ⊙ ∂s/∂p with ∂s/∂p = diag(P c) − P diag(c) Pᵀ (identity in padding, as markups())
    jacobian = np.einsum("tj,jk->tjk", (P * c[:, None, :]).sum(axis=2), np.eye(J))
    jacobian -= np.matmul(P * c[:, None, :], np.swapaxes(P, 1, 2))
    shares = np.where(mask, rng.uniform(0.01, 0.05, size=(T, J)), 0.0)
    eta, system = markups(jacobian, shares, ownership, mask)
    firms = firm_indicator(ownership, mask)
    factored = CholeskyMarkupSystem.from_dense(-system, firms, mask, slopes, block_size)
    derivative = np.where(mask[:, :, None], slopes[:, None, :], 0.0)
    utility_columns = np.where(mask[:, :, None], rng.normal(size=(T, J, 3)), 0.0)
    derivative_columns = np.zeros((T, J, 3))
    derivative_columns[:, :, 2] = mask  # column 2 is the price itself
    arguments = [
        rng.normal(size=(T, J, L)) * mask[:, :, None],
        utility_columns,
        derivative_columns,
        rng.normal(size=(T, N, L)),
        np.where(mask[:, :, None], np.array([0, 0, 0, 0, 1.0]), 0.0),
        np.array(column_of),
    ]
    batched = markup_jacobian(
        P, weights, derivative, eta, ownership, system, *arguments, firms=firms
    )
    symmetric = markup_jacobian(
        P, weights, derivative, eta, ownership, factored, *arguments, firms=firms
    )
    assert np.abs(batched).max() > 0.1
    np.testing.assert_allclose(symmetric, batched, rtol=0, atol=1e-11 * np.abs(batched).max())
    assert np.all(symmetric[~mask] == 0)
