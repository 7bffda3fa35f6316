"""Markups and their derivatives in θ, for the supply moment block (all markets at once).

With A = ∂s/∂p (entry [t, j, k] = ∂s_j/∂p_k) and Ω the ownership matrix, Bertrand–Nash
first-order conditions s + (Ω ⊙ A')η = 0 give the markups η = −B⁻¹s, B = Ω ⊙ A'. Along the
estimation path the shares are the observed ones (δ(θ) solves s(δ, θ) = s_obs), so

    ∂η/∂θ_l = −B⁻¹ (Ω ⊙ dA'_l) η,

where dA_l is the total derivative of ∂s/∂p in direction l: through δ (∂δ/∂θ_l, from the
implicit function theorem), through the agent utilities μ and through the agents' price
derivatives D_ki = ∂V_ki/∂p_k. For the logit kernel (no nests) it is computed exactly:
with P_ki agent probabilities, dV the utility change and dP_ki = P_ki(dV_ki − Σ_m P_mi dV_mi),

    [(Ω ⊙ dA')η]_k = Σ_i w_i [ (dD_ki P_ki + D_ki dP_ki)(Ω_kk η_k − a_ki) − D_ki P_ki b_ki ],

a = (Ω ⊙ 1η')P and b = (Ω ⊙ 1η')dP per agent — two batched products per direction, no
[T, J, J, I] temporaries. Nested models take the same total derivative by central differences
along the exact direction (:func:`directional_markup_derivative`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["directional_markup_derivative", "markup_jacobian", "markup_system", "markups"]


def markup_system(
    price_jacobian: np.ndarray, ownership: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """``[T, J, J]`` B = Ω ⊙ (∂s/∂p)' with the identity in padding (so it is invertible).

    Examples
    --------
    >>> A = np.array([[[-1.0, 0.2], [0.3, -2.0]]]); omega = np.ones((1, 2, 2))
    >>> markup_system(A, omega, np.ones((1, 2), bool))[0].tolist()
    [[-1.0, 0.3], [0.2, -2.0]]
    """
    system = ownership * np.swapaxes(price_jacobian, 1, 2)
    index = np.arange(mask.shape[1])
    system[:, index, index] += ~mask
    return system


def markups(
    price_jacobian: np.ndarray, shares: np.ndarray, ownership: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Bertrand–Nash markups η = −B⁻¹s for all markets at once, and B.

    Parameters
    ----------
    price_jacobian : numpy.ndarray
        ``[T, J, J]`` ∂s_j/∂p_k (row j, column k).
    shares : numpy.ndarray
        ``[T, J]`` shares (0 in padding).
    ownership : numpy.ndarray
        ``[T, J, J]`` Ω: 1 where two products have the same owner (or profit weights).
    mask : numpy.ndarray
        ``[T, J]`` real products.

    Returns
    -------
    tuple of numpy.ndarray
        ``(η [T, J], B [T, J, J])``; η is 0 in padding.

    Examples
    --------
    Single-product logit firms: η_j = −1/(α(1 − s_j)).

    >>> alpha, s = -2.0, np.array([[0.2, 0.3]])
    >>> A = alpha * (np.diag(s[0]) - np.outer(s[0], s[0]))[None]
    >>> eta, _ = markups(A, s, np.eye(2)[None], np.ones((1, 2), bool))
    >>> np.allclose(eta, -1 / (alpha * (1 - s)))
    True
    """
    system = markup_system(price_jacobian, ownership, mask)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        eta = -np.linalg.solve(system, np.where(mask, shares, 0.0)[:, :, None])[:, :, 0]
    return np.where(mask, eta, 0.0), system


def markup_jacobian(
    probabilities: np.ndarray,
    weights: np.ndarray,
    price_derivative: np.ndarray,
    eta: np.ndarray,
    system: np.ndarray,
    ownership: np.ndarray,
    directions: list[tuple[np.ndarray | None, np.ndarray | None]],
) -> np.ndarray:
    """``[T, J, L]`` ∂η/∂θ for the logit kernel (no nests), exactly.

    Parameters
    ----------
    probabilities : numpy.ndarray
        ``[T, J, I]`` agent choice probabilities P (0 in padding).
    weights : numpy.ndarray
        ``[T, I]`` agent weights.
    price_derivative : numpy.ndarray
        ``[T, J, I]`` D_ji = ∂V_ji/∂p_j.
    eta : numpy.ndarray
        ``[T, J]`` markups.
    system : numpy.ndarray
        ``[T, J, J]`` B from :func:`markups`.
    ownership : numpy.ndarray
        ``[T, J, J]`` Ω.
    directions : list of tuple
        For each parameter l, ``(dV, dD)``: the ``[T, J, I]`` total changes of agent
        utilities (∂δ/∂θ_l plus ∂μ/∂θ_l) and of D per unit of θ_l; None for no change.

    Returns
    -------
    numpy.ndarray
        ``[T, J, L]``.
    """
    weighted_owner = ownership * eta[:, None, :]  # (Ω ⊙ 1η')
    a = np.matmul(weighted_owner, probabilities)
    own = (np.diagonal(ownership, axis1=1, axis2=2) * eta)[:, :, None]
    gap = own - a  # Ω_kk η_k − a_ki
    out = np.zeros((*eta.shape, len(directions)))
    for position, (utility_change, derivative_change) in enumerate(directions):
        terms = np.zeros_like(probabilities)
        if derivative_change is not None:
            terms += derivative_change * probabilities * gap
        if utility_change is not None:
            mean_change = np.einsum("tji,tji->ti", probabilities, utility_change)
            change = probabilities * (utility_change - mean_change[:, None, :])
            b = np.matmul(weighted_owner, change)
            terms += price_derivative * (change * gap - probabilities * b)
        out[:, :, position] = np.einsum("tji,ti->tj", terms, weights)
    shape = out.shape
    solved = -np.linalg.solve(system, out.reshape(shape[0], shape[1], -1))
    return solved.reshape(shape)


def directional_markup_derivative(
    system_times_eta: Callable[[float], np.ndarray], system: np.ndarray, step: float
) -> np.ndarray:
    """``[T, J]`` ∂η/∂θ_l = −B⁻¹ d(Bη)/dt by central differences along one exact direction.

    ``system_times_eta(t)`` returns ``[T, J]`` B(δ + t·∂δ/∂θ_l, θ + t·e_l)·η with η held fixed:
    only the Jacobian of the shares is differenced, not δ (which moves along its exact
    derivative), so the error is O(step²) in one smooth function.
    """
    change = (system_times_eta(step) - system_times_eta(-step)) / (2.0 * step)
    return -np.linalg.solve(system, change[:, :, None])[:, :, 0]
