"""The optimizers of the nonlinear GMM objective: scipy's, a callable, and their settings.

Named optimizers map to :func:`scipy.optimize.minimize` (with the analytic gradient where the
method uses one); a callable is called as ``optimizer(fun, theta0, bounds)`` where ``fun(θ)``
returns ``(objective, gradient)`` and ``bounds`` is a list of ``(lower, upper)`` pairs, and must
return the solution (or an object with ``.x``). ``"gauss-newton"`` is ours
(:mod:`blpmodels.estimation.gauss_newton`). ``"none"`` does not optimize: the fit is evaluated
at its starting values (pyblp's ``Optimization('return')``). An optimizer receives the
function, a start, the bounds, its options and a per-iteration callback, and returns an
:class:`OptimizationOutcome`; it knows nothing of the estimator that called it.
"""

from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import scipy.optimize

from blpmodels.exceptions import BLPInputError

__all__ = [
    "NOT_OPTIMIZED",
    "OPTIMIZERS",
    "OptimizationOutcome",
    "check_optimizer",
    "default_optimizer",
    "gradient_tolerance",
    "progress",
    "run_optimizer",
]

OPTIMIZERS = (
    "trust-constr",
    "l-bfgs-b",
    "bfgs",
    "slsqp",
    "nelder-mead",
    "gauss-newton",
    "none",
)
#: The message of a fit with ``optimizer="none"``, which evaluates at the starting values.
NOT_OPTIMIZED = (
    "not optimized (optimizer='none'): evaluated at the starting values, as pyblp's "
    "Optimization('return')"
)
_SUPPORTS_BOUNDS = {"trust-constr", "l-bfgs-b", "slsqp", "nelder-mead"}


@dataclass(frozen=True, eq=False)
class OptimizationOutcome:
    """What an optimizer returned.

    ``on_saddle`` marks an outcome that stopped on a bound the objective falls away from even
    after the estimator started it again as often as it may
    (:mod:`~blpmodels.estimation.saddles`): it is never counted as converged.
    """

    theta: np.ndarray
    converged: bool
    message: str
    iterations: int
    evaluations: int
    seconds: float
    optimizer: str
    on_saddle: bool = False

    def replace(self, **changes: Any) -> OptimizationOutcome:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def rescaled(self, scale: np.ndarray) -> OptimizationOutcome:
        """The outcome of an optimization over θ/scale, in θ."""
        return replace(self, theta=self.theta * scale)


_SCIPY_METHODS = {
    "trust-constr": "trust-constr",
    "l-bfgs-b": "L-BFGS-B",
    "bfgs": "BFGS",
    "slsqp": "SLSQP",
    "nelder-mead": "Nelder-Mead",
}
# scipy's solver functions, whose keyword parameters are the options each method accepts.
_SOLVER_FUNCTIONS = {
    "trust-constr": ("scipy.optimize._trustregion_constr", "_minimize_trustregion_constr"),
    "l-bfgs-b": ("scipy.optimize._lbfgsb_py", "_minimize_lbfgsb"),
    "bfgs": ("scipy.optimize._optimize", "_minimize_bfgs"),
    "slsqp": ("scipy.optimize._slsqp_py", "_minimize_slsqp"),
    "nelder-mead": ("scipy.optimize._optimize", "_minimize_neldermead"),
}
# Arguments the solver functions take that are not user options (set by scipy or by us).
_NOT_OPTIONS = {"fun", "x0", "args", "jac", "hess", "hessp", "bounds", "constraints", "callback"}


def accepted_options(method: str) -> set[str] | None:
    """Option names scipy's ``method`` accepts (None when they cannot be read).

    Examples
    --------
    >>> "gtol" in accepted_options("trust-constr")
    True
    """
    import importlib

    module_name, function_name = _SOLVER_FUNCTIONS[method]
    try:
        function = getattr(importlib.import_module(module_name), function_name)
        parameters = inspect.signature(function).parameters.values()
    except (ImportError, AttributeError, TypeError, ValueError):  # pragma: no cover - scipy moved
        return None
    names = {
        parameter.name
        for parameter in parameters
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    }
    return names - _NOT_OPTIONS - {name for name in names if name.startswith("_")}


def default_optimizer(supply: bool) -> str:
    """The optimizer ``optimizer="auto"`` stands for: Gauss–Newton on the moments for demand
    (with or without micro moments), trust-constr with a supply side.

    Gauss–Newton reached the same optimum in fewer evaluations on every demand benchmark
    (exercise 2 Q5, Nevo, exercise 3 and its RCNL, all robustness starts). With a supply side
    it reached the best objective as often as trust-constr on ``bench_robustness.py``'s supply
    problems, in half the time, but from the documented start of the simulated economy in
    ``tests/test_simulation_economy.py`` (σ = I, α = −2 against −5) it stops at a local minimum
    that trust-constr does not (docs/performance.md, 2026-12-07), so supply fits keep
    trust-constr.

    Examples
    --------
    >>> default_optimizer(supply=False), default_optimizer(supply=True)
    ('gauss-newton', 'trust-constr')
    """
    return "trust-constr" if supply else "gauss-newton"


def check_optimizer(optimizer: Any, options: Mapping[str, Any] | None) -> str:
    """Validate the optimizer name (or callable) and its options before any work.

    Raises
    ------
    BLPInputError
        Unknown optimizer, options that are not a dict, or option names the optimizer does
        not accept (scipy would raise a TypeError deep inside, or only warn).

    Examples
    --------
    >>> check_optimizer("L-BFGS-B", {"gtol": 1e-8})
    'l-bfgs-b'
    """
    if options is not None and not isinstance(options, Mapping):
        raise BLPInputError(f"optimizer_options must be a dict, got {type(options).__name__}")
    if callable(optimizer):
        return getattr(optimizer, "__name__", "callable")
    if not isinstance(optimizer, str) or optimizer.lower() not in OPTIMIZERS:
        raise BLPInputError(
            f"unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS} or pass a callable"
        )
    method = optimizer.lower()
    if method == "none":
        if options:
            raise BLPInputError(
                f"optimizer 'none' evaluates at the starting values and takes no options; got "
                f"optimizer_options {sorted(str(key) for key in options)}"
            )
        return method
    if method == "gauss-newton":
        # Ours, not scipy's (blpmodels.estimation.gauss_newton); it takes these options.
        accepted: set[str] | None = {"gtol", "xtol", "max_iterations"}
    else:
        accepted = accepted_options(method)
    if options and accepted is not None:
        unknown = sorted(str(key) for key in options if key not in accepted)
        if unknown:
            raise BLPInputError(
                f"optimizer {method!r} does not accept the option(s) {unknown}; it accepts "
                f"{sorted(accepted)}"
            )
    return method


IterationCallback = Callable[[np.ndarray, float], None]


def run_optimizer(
    fun: Callable[[np.ndarray], tuple[float, np.ndarray]],
    theta0: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    optimizer: Any,
    options: Mapping[str, Any] | None = None,
    callback: IterationCallback | None = None,
) -> OptimizationOutcome:
    """Minimize ``fun`` from ``theta0`` within bounds.

    Parameters
    ----------
    fun : callable
        ``fun(θ) -> (objective, gradient)``.
    theta0 : numpy.ndarray
        Starting values.
    lower, upper : numpy.ndarray
        Bounds (±inf where none). ``bfgs`` cannot impose them (a warning says so when any
        bound is finite and set by the user).
    optimizer : str or callable
        One of :data:`OPTIMIZERS` or a callable (see the module docstring); ``"none"`` returns
        ``theta0`` without evaluating ``fun``.
    options : dict, optional
        Passed to scipy as ``options``.
    callback : callable, optional
        ``callback(θ, objective)`` once per optimizer iteration, at the accepted point
        (scipy's per-iteration callback; for a callable optimizer, which reports no
        iterations, after every evaluation).

    Returns
    -------
    OptimizationOutcome
    """
    name = check_optimizer(optimizer, options)
    if name == "none":
        return OptimizationOutcome(theta0.copy(), True, NOT_OPTIMIZED, 0, 0, 0.0, name)
    start = time.perf_counter()
    bounds = list(zip(lower, upper, strict=True))
    counter = {"evaluations": 0}

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        counter["evaluations"] += 1
        return fun(theta)

    if callable(optimizer):
        if callback is not None:
            plain = objective

            def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
                value, gradient = plain(theta)
                callback(np.asarray(theta, dtype=np.float64), float(value))
                return value, gradient

        solution = optimizer(objective, theta0.copy(), [(float(a), float(b)) for a, b in bounds])
        theta = _callable_solution(solution, name, theta0.size)
        converged = bool(getattr(solution, "success", True))
        return OptimizationOutcome(
            theta,
            converged,
            str(getattr(solution, "message", "")),
            int(getattr(solution, "nit", 0)),
            counter["evaluations"],
            time.perf_counter() - start,
            name,
        )
    method = name
    kwargs: dict[str, Any] = {"options": dict(options or {})}
    if callback is not None:
        # scipy passes the iteration's OptimizeResult when the parameter has this name.
        def each_iteration(intermediate_result: scipy.optimize.OptimizeResult) -> None:
            callback(
                np.asarray(intermediate_result.x, dtype=np.float64),
                float(intermediate_result.fun),
            )

        kwargs["callback"] = each_iteration
    finite = np.isfinite(lower).any() or np.isfinite(upper).any()
    if method in _SUPPORTS_BOUNDS and finite:
        kwargs["bounds"] = scipy.optimize.Bounds(lower, upper)
    if method == "nelder-mead":
        result = scipy.optimize.minimize(
            lambda t: objective(t)[0], theta0, method="Nelder-Mead", **kwargs
        )
    else:
        scipy_method = _SCIPY_METHODS[method]
        with warnings.catch_warnings():
            # trust-constr warns when it turns bounds into an interior-point problem.
            warnings.filterwarnings("ignore", message=".*delta_grad == 0.0.*")
            result = scipy.optimize.minimize(
                objective, theta0, method=scipy_method, jac=True, **kwargs
            )
    return OptimizationOutcome(
        np.asarray(result.x, dtype=np.float64),
        bool(result.success),
        str(result.message),
        int(getattr(result, "nit", 0) or 0),
        counter["evaluations"],
        time.perf_counter() - start,
        name,
    )


def _callable_solution(solution: Any, name: str, size: int) -> np.ndarray:
    """θ from what a callable optimizer returned, refusing anything but ``size`` finite numbers.

    Without the check, None became θ = [nan] and the failure surfaced as an overflow in the
    agent utilities, and a vector of the wrong length as a matmul shape error.
    """
    expected = (
        f"it must return the solution θ ({size} value(s), as the theta0 it was given) or an "
        "object with .x (such as scipy's OptimizeResult)"
    )
    if solution is None:
        raise BLPInputError(f"optimizer {name!r} returned None; {expected}")
    value = getattr(solution, "x", solution)
    try:
        theta = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise BLPInputError(
            f"optimizer {name!r} returned {type(value).__name__}, not numbers; {expected}"
        ) from error
    if theta.size != size:
        raise BLPInputError(f"optimizer {name!r} returned {theta.size} values; {expected}")
    if not np.isfinite(theta).all():
        raise BLPInputError(f"optimizer {name!r} returned non-finite values {theta.tolist()}")
    return theta.reshape(size)


_DEFAULT_GRADIENT_TOLERANCE = {
    "trust-constr": 1e-8,
    "l-bfgs-b": 1e-5,
    "bfgs": 1e-5,
    "gauss-newton": 1e-8,
}


def gradient_tolerance(optimizer: Any, options: Mapping[str, Any] | None) -> float | None:
    """The gradient tolerance an optimizer stops at (its ``gtol`` or scipy's default).

    None for optimizers without one (SLSQP, Nelder–Mead, callables).

    Examples
    --------
    >>> gradient_tolerance("trust-constr", None), gradient_tolerance("l-bfgs-b", {"gtol": 1e-9})
    (1e-08, 1e-09)
    """
    if callable(optimizer) or not isinstance(optimizer, str):
        return None
    method = optimizer.lower()
    if method not in _DEFAULT_GRADIENT_TOLERANCE:
        return None
    value = (options or {}).get("gtol", _DEFAULT_GRADIENT_TOLERANCE[method])
    return float(value)


def progress(items: Iterable[Any], total: int, description: str, verbose: bool) -> Iterator[Any]:
    """``items``, with progress shown when ``verbose``.

    One bar labelled ``description k/total`` (e.g. ``bootstrap 37/200``): tqdm's when tqdm
    is installed (the ``progress`` extra), otherwise a plain line ``description k/total (s s)``
    on standard output at every tenth of the way. Silent and free when ``verbose`` is False.

    Examples
    --------
    >>> list(progress(range(3), 3, "draws", verbose=False))
    [0, 1, 2]
    """
    if not verbose:
        yield from items
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        # The count right after the label: "bootstrap 37/200 |████    | 00:05<00:21".
        bar = "{desc} {n_fmt}/{total_fmt} |{bar}| {elapsed}<{remaining}"
        yield from tqdm(items, total=total, desc=description, bar_format=bar)
        return
    start = time.perf_counter()
    shown = 0
    for done, item in enumerate(items, start=1):
        yield item
        # Print when the completed tenth changes (every item when there are ten or fewer).
        tenth = done * 10 // max(total, 1)
        if tenth > shown or done == total:
            shown = tenth
            print(
                f"{description} {done}/{total} ({time.perf_counter() - start:.1f} s)",
                flush=True,
            )
