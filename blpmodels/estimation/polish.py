"""Final Newton steps at the optimum, with the Hessian the second-order check computed.

An optimizer may stop on its own criterion short of the gradient tolerance: trust-constr ends
barrier subproblems with bound multipliers absorbing part of the gradient, and interior-point
methods stop about 1e-8 inside a bound. :class:`NewtonPolish` puts such parameters on their
bound and takes projected (damped) Newton steps until the scaled projected gradient meets the
tolerance, keeping a step only when the objective falls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from blpmodels.estimation.bounds import held_on_bounds, projected_gradient
from blpmodels.estimation.diagnostics import Diagnostics
from blpmodels.estimation.scaling import GMMObjective

__all__ = ["NewtonPolish"]


@dataclass(eq=False)
class NewtonPolish:
    """Newton steps on the objective within the bounds of θ.

    Parameters
    ----------
    objective : GMMObjective
        Evaluated at each trial point.
    lower, upper : numpy.ndarray
        Bounds of θ.
    scale : numpy.ndarray
        Natural scales of θ: the tolerance and the damping are in units of θ/scale.
    """

    objective: GMMObjective
    lower: np.ndarray
    upper: np.ndarray
    scale: np.ndarray

    def polish(
        self, theta: np.ndarray, evaluation: Any, diagnostics: Diagnostics, tolerance: float
    ) -> tuple[np.ndarray, Any, int]:
        """Projected Newton steps with the difference Hessian until the gradient meets tolerance.

        The Hessian computed for the second-order check makes a few more steps nearly free.
        Parameters whose Newton step would cross a bound are put on it and the step is solved
        again for the others; a step is kept only if the objective falls (:meth:`improves`).

        Returns
        -------
        tuple
            θ, the evaluation there, and the number of steps taken (0: unchanged).
        """
        hessian = diagnostics.hessian
        if hessian is None or not np.isfinite(hessian).all():
            return theta, evaluation, 0
        theta, evaluation, taken = self.snap_to_bounds(theta, evaluation)
        for _ in range(5):
            gradient = evaluation.gradient
            projected = projected_gradient(gradient, theta, self.lower, self.upper)
            if (np.abs(projected) * self.scale).max(initial=0.0) <= tolerance:
                break
            # Levenberg–Marquardt damping when the plain step fails: the difference Hessian is
            # accurate to about 1e-7 of its largest eigenvalue, so along directions with smaller
            # curvature (Nevo's smallest eigenvalue is 2e-9 of its largest) Newton steps are
            # noise; damping shortens them and leaves the well-determined directions.
            size = np.abs(np.linalg.eigvalsh(hessian * np.outer(self.scale, self.scale))).max()
            scaled_norm = (np.abs(projected) * self.scale).max()
            for damping in (0.0, 1e-8, 1e-6, 1e-4, 1e-2):
                trial = self.newton_point(theta, gradient, hessian, damping * size)
                if trial is None:
                    continue
                candidate = self.objective.evaluate(trial)
                if candidate.success and self.improves(evaluation, candidate, trial, scaled_norm):
                    break
            else:
                break
            theta, evaluation = trial, candidate
            taken += 1
        return theta, evaluation, taken

    def snap_to_bounds(self, theta: np.ndarray, evaluation: Any) -> tuple[np.ndarray, Any, int]:
        """Put parameters a hair inside a bound, pushed outward by the gradient, on the bound.

        Interior-point optimizers (trust-constr) stop about 1e-8 inside a bound: the full
        gradient there is not zero, so the first-order check would fail although the minimum
        is on the bound. The move is kept only if the objective does not rise above rounding.
        """
        gradient = evaluation.gradient
        near = 1e-5 * self.scale
        to_lower = (theta - self.lower <= near) & (theta > self.lower) & (gradient > 0)
        to_upper = (self.upper - theta <= near) & (theta < self.upper) & (gradient < 0)
        if not (to_lower | to_upper).any():
            return theta, evaluation, 0
        trial = np.where(to_lower, self.lower, np.where(to_upper, self.upper, theta))
        candidate = self.objective.evaluate(trial)
        noise = 1e-11 * max(1.0, abs(evaluation.objective))
        if candidate.success and candidate.objective <= evaluation.objective + noise:
            return trial, candidate, 1
        return theta, evaluation, 0

    def improves(
        self, evaluation: Any, candidate: Any, trial: np.ndarray, scaled_norm: float
    ) -> bool:
        """A lower objective, or one equal to rounding with a gradient at least halved.

        Near the optimum the decrease a Newton step predicts (about g'H⁻¹g/2) can be far below
        the objective's rounding noise (1e-12 relative, from δ solved to 1e-14): on an RCNL fit
        a step that cut the gradient 1000× raised q by 2e-10 of 152. There the gradient, the
        quantity the first-order check reads, decides.
        """
        if candidate.objective < evaluation.objective:
            return True
        noise = 1e-11 * max(1.0, abs(evaluation.objective))
        if candidate.objective > evaluation.objective + noise:
            return False
        projected = projected_gradient(candidate.gradient, trial, self.lower, self.upper)
        return bool((np.abs(projected) * self.scale).max() <= 0.5 * scaled_norm)

    def newton_point(
        self, theta: np.ndarray, gradient: np.ndarray, hessian: np.ndarray, damping: float = 0.0
    ) -> np.ndarray | None:
        """The bound-constrained (damped) Newton point of the quadratic model, by active sets.

        ``damping`` adds λ/s² to the diagonal: λ in the units of the scaled problem.
        """
        hessian = hessian + np.diag(damping / self.scale**2)
        target = theta.copy()
        fixed = held_on_bounds(theta, gradient, self.lower, self.upper)
        for _ in range(theta.size + 1):
            free = ~fixed
            if not free.any():
                return target
            block = hessian[np.ix_(free, free)]
            if np.linalg.eigvalsh(block).min() <= 0:
                return None
            # Moving the fixed parameters onto their bounds shifts the model's gradient.
            shift = target - theta
            rhs = gradient[free] + hessian[np.ix_(free, fixed)] @ shift[fixed]
            proposal = target.copy()
            proposal[free] = theta[free] - np.linalg.solve(block, rhs)
            crossing = free & ((proposal < self.lower) | (proposal > self.upper))
            if not crossing.any():
                return proposal
            target[crossing] = np.clip(proposal, self.lower, self.upper)[crossing]
            fixed |= crossing
        return None
