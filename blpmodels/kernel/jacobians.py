"""Derivatives of the shares: ∂s/∂δ (and ∂s/∂x for any characteristic), ∂s/∂θ and ∂s/∂ρ.

Probabilities stay factored (P = A · e ⊗ r, see :mod:`blpmodels.kernel.shares`), so
∂s/∂δ = diag(s) − P W P' is one scaling pass and one batched product, and ∂s/∂θ is a handful of
products of A with ``[T, I, L]`` factor matrices, with no ``[T, J, I]`` temporaries.
"""

from __future__ import annotations

import numpy as np

from blpmodels.kernel.shares import Nesting, Probabilities, _of_product

__all__ = ["rho_jacobian", "share_jacobian", "theta_jacobian"]


def share_jacobian(
    probabilities: Probabilities,
    weights: np.ndarray,
    nesting: Nesting,
    product_mask: np.ndarray,
    utility_derivative: np.ndarray | None = None,
    workspace: np.ndarray | None = None,
) -> np.ndarray:
    """Derivatives of shares with respect to each product's utility shifter.

    Entry ``[t, j, k]`` is Σ_i w_i ∂P_ji/∂V_ki · D_ki, where D_ki = ∂V_ki/∂x_k is the derivative
    of agent i's utility for product k with respect to the variable (1 for δ itself).

    Parameters
    ----------
    probabilities : Probabilities
        Probabilities at the point of evaluation.
    weights : numpy.ndarray
        ``[T, I]`` integration weights.
    nesting : Nesting
        Nest structure and ρ.
    product_mask : numpy.ndarray
        ``[T, J]`` real products.
    utility_derivative : numpy.ndarray, optional
        ``[T, J, I]`` D; None for ∂s/∂δ.
    workspace : numpy.ndarray, optional
        ``[T, J, I]`` scratch buffer (avoids allocating a large temporary).

    Returns
    -------
    numpy.ndarray
        ``[T, J, J]`` Jacobian (zero rows and columns in padding).
    """
    own_scale = np.where(product_mask, 1.0 / (1.0 - nesting.rho_products), 0.0)
    if (
        probabilities.factors is not None
        and utility_derivative is None
        and not nesting.nested
        and bool((weights >= 0).all())
    ):
        # Σ_i w_i P_ji P_ki = e_j e_k Σ_i (A_ji r_i √w_i)(A_ki r_i √w_i): one pass and a product.
        agent_factor, exp_delta, ratio = probabilities.factors
        column_scale = (ratio * np.sqrt(weights))[:, None, :]
        if workspace is not None and workspace.shape == agent_factor.shape:
            scaled = np.multiply(agent_factor, column_scale, out=workspace)
        else:
            scaled = agent_factor * column_scale
        jacobian = np.matmul(scaled, np.swapaxes(scaled, 1, 2))
        jacobian *= -(exp_delta[:, :, None] * exp_delta[:, None, :])
        index = np.arange(jacobian.shape[1])
        jacobian[:, index, index] += probabilities.shares * own_scale
        return jacobian
    P = probabilities.unconditional
    weighted = P * weights[:, None, :]
    if utility_derivative is None:
        diagonal = probabilities.shares
        jacobian = -np.matmul(weighted, np.swapaxes(P, 1, 2))
        within_source = probabilities.conditional
    else:
        derivative = np.broadcast_to(utility_derivative, P.shape)
        diagonal = np.einsum("tji,tji->tj", weighted, derivative)
        jacobian = -np.matmul(weighted, np.swapaxes(P * derivative, 1, 2))
        within_source = (
            None if probabilities.conditional is None else probabilities.conditional * derivative
        )
    if nesting.nested:
        same_nest = (nesting.codes[:, :, None] == nesting.codes[:, None, :]) & (
            product_mask[:, :, None] & product_mask[:, None, :]
        )
        factor = (nesting.rho_products / (1.0 - nesting.rho_products))[:, :, None]
        within = np.matmul(weighted, np.swapaxes(within_source, 1, 2))
        jacobian -= np.where(same_nest, factor * within, 0.0)
    index = np.arange(P.shape[1])
    jacobian[:, index, index] += diagonal * own_scale
    return jacobian


def theta_jacobian(
    probabilities: Probabilities,
    weights: np.ndarray,
    nesting: Nesting,
    product_mask: np.ndarray,
    characteristics: np.ndarray,
    agent_factors: list[np.ndarray],
) -> list[np.ndarray]:
    """Derivatives of shares with respect to parameters that enter μ.

    Each parameter l acts through one random-coefficient column k: ∂μ_ji/∂θ_l = X2_jk · g_il.
    For each column k, ``agent_factors[k]`` holds g for that column's parameters. With
    x̄_ik = Σ_j P_ji X2_jk, the derivative Σ_i w_i P_ji g_il (X2_jk − x̄_ik) (plus the
    within-nest term for nested models) is computed as batched matrix products, without
    ``[T, J, I]`` temporaries.

    Parameters
    ----------
    probabilities : Probabilities
        Probabilities at the solution δ.
    weights, nesting, product_mask
        As for :func:`share_jacobian`.
    characteristics : numpy.ndarray
        ``[T, J, K2]`` random-coefficient characteristics X2 (0 in padding).
    agent_factors : list of numpy.ndarray
        For each column k, ``[T, L_k, I]`` agent factors g (agents last; L_k may be 0).

    Returns
    -------
    list of numpy.ndarray
        For each column k, ``[T, J, L_k]`` = Σ_i w_i Σ_m ∂P_ji/∂V_mi X2_mk g_il.
    """
    sizes = [factors.shape[1] for factors in agent_factors]
    if sum(sizes) == 0:
        return [np.zeros((*product_mask.shape, 0)) for _ in agent_factors]
    columns = np.repeat(np.arange(len(agent_factors)), sizes)
    # Agents stay on the last (contiguous) axis: numpy is slow on tiny trailing axes.
    factors = np.concatenate(agent_factors, axis=1) * weights[:, None, :]
    x = characteristics[:, :, columns]
    size = factors.shape[1]
    if probabilities.factors is not None and not nesting.nested:
        # P = A · e ⊗ r: every product with P becomes a product with A and small factors.
        agent_factor, exp_delta, ratio = probabilities.factors
        weighted_x = np.swapaxes(exp_delta[:, :, None] * characteristics, 1, 2)
        mean_x = np.matmul(weighted_x, agent_factor)
        mean_x *= ratio[:, None, :]
        scaled = factors * ratio[:, None, :]
        stacked = np.concatenate([scaled, scaled * mean_x[:, columns, :]], axis=1)
        products = np.matmul(agent_factor, np.swapaxes(stacked, 1, 2))
        products *= exp_delta[:, :, None]
        out = x * products[:, :, :size] - products[:, :, size:]
        return np.split(out, np.cumsum(sizes)[:-1], axis=2)
    P = probabilities.unconditional
    mean_x = np.matmul(np.swapaxes(characteristics, 1, 2), P)
    stacked = np.concatenate([factors, factors * mean_x[:, columns, :]], axis=1)
    products = np.matmul(P, np.swapaxes(stacked, 1, 2))
    direct, centered = products[:, :, :size], products[:, :, size:]
    if not nesting.nested:
        out = x * direct - centered
    else:
        scale = np.where(product_mask, 1.0 - nesting.rho_products, 1.0)[:, :, None]
        out = x / scale * direct - centered
        factor = (nesting.rho_products / (1.0 - nesting.rho_products))[:, :, None]
        for nest in range(nesting.n_nests):
            members = (nesting.codes == nest) & product_mask
            if not members.any():
                continue
            within_x = np.matmul(
                np.swapaxes(characteristics * members[:, :, None], 1, 2),
                probabilities.conditional,
            )
            within = np.matmul(P, np.swapaxes(factors * within_x[:, columns, :], 1, 2))
            out -= np.where(members[:, :, None], factor * within, 0.0)
    return np.split(out, np.cumsum(sizes)[:-1], axis=2)


def rho_jacobian(
    probabilities: Probabilities,
    delta: np.ndarray,
    mu: np.ndarray,
    weights: np.ndarray,
    nesting: Nesting,
    product_mask: np.ndarray,
) -> np.ndarray:
    """Derivatives of shares with respect to each nest's ρ, holding δ fixed.

    Returns
    -------
    numpy.ndarray
        ``[T, J, H]``: column h is ∂s/∂ρ_h.
    """
    P = probabilities.unconditional
    conditional = probabilities.conditional
    utilities = np.where(product_mask[:, :, None], delta[:, :, None] + mu, 0.0)
    membership = nesting.membership(product_mask)
    mean_utility = np.einsum("thj,tji->thi", membership, conditional * utilities)
    inclusive = probabilities.inclusive
    scale = 1.0 - nesting.rho
    with np.errstate(invalid="ignore"):
        gap = np.where(
            np.isfinite(inclusive), (mean_utility - inclusive) / scale[None, :, None], 0.0
        )
    mean_of_product = _of_product(mean_utility, nesting.codes)
    gap_of_product = _of_product(gap, nesting.codes)
    scale_of_product = (1.0 - nesting.rho_products)[:, :, None]
    own = (utilities - mean_of_product) / scale_of_product**2 + gap_of_product
    own_indicator = nesting.codes[:, :, None] == np.arange(nesting.n_nests)[None, None, :]
    # ∂log s_ij/∂ρ_h = [h = h(j)] own_ij − s_hi gap_hi: the first term lands only in column
    # h(j) and the second is one batched product, so no [T, J, H, I] array is formed.
    weighted = P * weights[:, None, :]
    jacobian = own_indicator * (weighted * own).sum(axis=2)[:, :, None]
    jacobian -= np.matmul(weighted, np.swapaxes(probabilities.nest * gap, 1, 2))
    return np.where(product_mask[:, :, None], jacobian, 0.0)
