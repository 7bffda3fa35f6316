"""Box bounds of θ: which parameters a bound holds, and the gradient projected on the box.

Shared by the optimizers, the iteration log, the checks at the optimum and the final Newton
steps, so that all of them agree on when a parameter sits on a bound.
"""

from __future__ import annotations

import numpy as np

__all__ = ["held_on_bounds", "projected_gradient"]


def held_on_bounds(
    theta: np.ndarray, gradient: np.ndarray, lower: np.ndarray, upper: np.ndarray
) -> np.ndarray:
    """Parameters on a bound with the gradient pointing out of the box (a step keeps them there).

    Examples
    --------
    >>> held_on_bounds(np.array([0.0, 0.0, 1.0]), np.array([1.0, -1.0, 1.0]), np.zeros(3),
    ...                np.full(3, np.inf)).tolist()
    [True, False, False]
    """
    return ((theta <= lower) & (gradient > 0)) | ((theta >= upper) & (gradient < 0))


def projected_gradient(
    gradient: np.ndarray, theta: np.ndarray, lower: np.ndarray, upper: np.ndarray
) -> np.ndarray:
    """The gradient projected on the feasible directions: 0 where a bound is active and the
    gradient points out of the feasible set (a minimum may lie on the bound there).

    Examples
    --------
    >>> projected_gradient(np.array([2.0, 2.0]), np.array([0.0, 1.0]), np.zeros(2),
    ...                    np.full(2, np.inf)).tolist()
    [0.0, 2.0]
    """
    projected = gradient.copy()
    at_lower = theta <= lower
    at_upper = theta >= upper
    projected[at_lower] = np.minimum(0.0, gradient[at_lower])
    projected[at_upper] = np.maximum(0.0, gradient[at_upper])
    return projected
