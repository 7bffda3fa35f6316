"""Moment blocks and the stacked GMM that concentrates out their linear parameters.

The GMM objective is a stack of blocks (``../shared/DESIGN.md``, "Moment blocks"). A
*product block* is a linear IV equation over the product rows,

    y_b(θ) = X_b b_b + e_b,     moments  Z_b' e_b / N,

with the dependent variable y_b a function of the nonlinear parameters θ: demand has
y = δ(θ) (minus the price terms whose coefficients are in θ) and residuals ξ; supply has
y = f(p − η(θ)) and residuals ω. All blocks' linear parameters b = (β, γ) are concentrated out
at once: with c(θ) = [Z_b' y_b / N]_b stacked and the constant Jacobian H = blockdiag(Z_b'X_b)/N,

    b(θ) = (H'WH)⁻¹ H'W c(θ),     ḡ(θ) = c(θ) − H b(θ),     q(θ) = N ḡ'Wḡ,

and by the envelope theorem ∂q/∂θ = 2N ḡ'W ∂c/∂θ. Blocks without linear parameters (micro
moments: an observed value minus a model value) fit the same form with zero rows in H, so
:class:`StackedGMM` never asks which block is which. The per-row moments z_bi e_bi of all
product blocks form the moment covariance S; blocks with independent data add diagonal blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

from blpmodels.exceptions import BLPInputError

__all__ = ["ProductBlock", "StackedGMM", "StackedSolution"]


@dataclass(frozen=True, eq=False)
class ProductBlock:
    """A linear IV moment block over the product rows (fixed effects already absorbed).

    Attributes
    ----------
    name : str
        "demand" or "supply" (used in messages and labels only).
    X : numpy.ndarray
        ``(N, K_b)`` regressors whose coefficients are concentrated out.
    Z : numpy.ndarray
        ``(N, M_b)`` instruments.
    """

    name: str
    X: np.ndarray
    Z: np.ndarray

    @property
    def n_moments(self) -> int:
        """Number of moments M_b."""
        return int(self.Z.shape[1])

    @property
    def n_linear(self) -> int:
        """Number of concentrated coefficients K_b."""
        return int(self.X.shape[1])


@dataclass(eq=False)
class StackedSolution:
    """The concentrated GMM at one θ.

    Attributes
    ----------
    coefficients : list of numpy.ndarray
        Concentrated coefficients of each block (β, γ).
    residuals : list of numpy.ndarray
        ``(N,)`` residuals of each block (ξ, ω).
    moments : numpy.ndarray
        ``(M,)`` stacked mean moments ḡ.
    objective : float
        N·ḡ'Wḡ.
    """

    coefficients: list[np.ndarray]
    residuals: list[np.ndarray]
    moments: np.ndarray
    objective: float
    _weighted: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))


class StackedGMM:
    """Concentrated GMM over a stack of product blocks for a fixed weighting matrix.

    Parameters
    ----------
    blocks : sequence of ProductBlock
        The product blocks, in the order of their moments in W.
    W : numpy.ndarray
        ``(M, M)`` weighting matrix, M the total number of moments.
    n_extra : int
        Moments stacked after the product blocks that have no linear parameters (micro
        moments: observed minus model values); :meth:`solve` and :meth:`gradient` take their
        values and θ-Jacobian.

    Examples
    --------
    One block with y = Xb exactly: the coefficients are recovered and the objective is zero.

    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(50, 2)); Z = np.column_stack([X, rng.normal(size=50)])
    >>> gmm = StackedGMM([ProductBlock("demand", X, Z)], np.eye(3))
    >>> solution = gmm.solve([X @ [1.0, -2.0]])
    >>> solution.coefficients[0].round(10).tolist(), round(solution.objective, 12)
    ([1.0, -2.0], 0.0)
    """

    def __init__(self, blocks: Sequence[ProductBlock], W: np.ndarray, n_extra: int = 0) -> None:
        self.blocks = list(blocks)
        self.nobs = int(self.blocks[0].Z.shape[0])
        self.n_extra = int(n_extra)
        self.n_moments = sum(block.n_moments for block in self.blocks) + self.n_extra
        self.n_linear = sum(block.n_linear for block in self.blocks)
        if self.n_moments < self.n_linear:
            raise BLPInputError(
                f"fewer moments ({self.n_moments}) than linear parameters ({self.n_linear})"
            )
        self.linear_jacobian = scipy.linalg.block_diag(
            *[block.Z.T @ block.X / self.nobs for block in self.blocks]
        )
        if self.n_extra:
            self.linear_jacobian = np.vstack(
                [self.linear_jacobian, np.zeros((self.n_extra, self.linear_jacobian.shape[1]))]
            )
        self.W = W
        H = self.linear_jacobian
        hessian = H.T @ W @ H
        if self.n_linear:
            try:
                factor = scipy.linalg.cho_factor(0.5 * (hessian + hessian.T))
            except np.linalg.LinAlgError as error:
                names = ", ".join(block.name for block in self.blocks)
                raise BLPInputError(
                    f"the linear parameters of the {names} equations are not identified by "
                    "their instruments (X'Z W Z'X is singular)"
                ) from error
            self._projector = scipy.linalg.cho_solve(factor, H.T @ W)
        else:
            self._projector = np.zeros((0, self.n_moments))
        self._splits = np.cumsum([block.n_linear for block in self.blocks])[:-1]

    def moment_constants(
        self, dependents: Sequence[np.ndarray], extra: np.ndarray | None = None
    ) -> np.ndarray:
        """c = [Z_b' y_b / N] stacked; ``dependents`` may hold vectors or ``(N, P)`` matrices.

        ``extra`` (the moments without linear parameters, or their ``(M_e, P)`` Jacobian) is
        appended; with ``n_extra`` moments it is required.
        """
        stacked = [
            block.Z.T @ y / self.nobs for block, y in zip(self.blocks, dependents, strict=True)
        ]
        if self.n_extra:
            if extra is None:
                raise ValueError(f"{self.n_extra} micro moments need their values")
            stacked.append(np.asarray(extra))
        return np.concatenate(stacked)

    def solve(
        self, dependents: Sequence[np.ndarray], extra: np.ndarray | None = None
    ) -> StackedSolution:
        """Coefficients, residuals, mean moments and objective for the dependent variables
        (and the values of the ``n_extra`` moments without linear parameters)."""
        coefficients = self._projector @ self.moment_constants(dependents, extra)
        pieces = np.split(coefficients, self._splits)
        residuals = [
            y - block.X @ b for block, y, b in zip(self.blocks, dependents, pieces, strict=True)
        ]
        # ḡ from the residuals, not as c − Hb: near the optimum c and Hb agree to several
        # digits, and the difference lost them (BFGS then stopped on "precision loss" on the
        # Nevo problem after 30% more evaluations).
        moments = self.moment_constants(residuals, extra)
        weighted = self.W @ moments
        return StackedSolution(
            pieces, residuals, moments, float(self.nobs * moments @ weighted), weighted
        )

    def gradient(
        self,
        solution: StackedSolution,
        jacobians: Sequence[np.ndarray],
        extra: np.ndarray | None = None,
    ) -> np.ndarray:
        """∂q/∂θ = 2N ḡ'W ∂c/∂θ from each block's ``(N, P)`` ∂y_b/∂θ (envelope theorem) and
        the ``(n_extra, P)`` Jacobian of the moments without linear parameters."""
        return 2.0 * self.nobs * solution._weighted @ self.moment_constants(jacobians, extra)

    def moment_jacobian(
        self, jacobians: Sequence[np.ndarray], extra: np.ndarray | None = None
    ) -> np.ndarray:
        """``(M, K + P)`` ∂ḡ/∂(b, θ): the constant linear part, then ∂c/∂θ."""
        return np.column_stack([-self.linear_jacobian, self.moment_constants(jacobians, extra)])
