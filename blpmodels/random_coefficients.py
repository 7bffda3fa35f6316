"""Random-coefficients logit with demographics (BLP), optionally nested (RCNL).

Utility of agent i for product j in market t:

    U_ijt = δ_jt + Σ_k X2_jtk (Σ ν_it + Π d_it)_k + ε_ijt,   δ_jt = X1_jt β + ξ_jt,

with ν the integration nodes (``nodes0`` pairs with the first random-coefficient column), d the
demographics, Σ lower-triangular, and ε i.i.d. extreme value (or the nested-logit
generalization when products have ``nesting_ids``). β is concentrated out; θ = (Σ, Π, ρ) is
found by minimizing the GMM objective with the analytic gradient.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from formulaic.utils.context import capture_context

from .absorb import AbsorbMethod
from .agents import AgentDesign
from .covariance import gmm_covariance
from .demand import DemandSystem
from .estimation import gmm_options, safe_inverse
from .exceptions import BLPInputError, ConvergenceWarning, FixedPointError
from .formula import parse_formula
from .gmm import first_stage, inverse_weight_matrix
from .models import BLPModel
from .objective import Evaluation, NonlinearObjective
from .optimize import check_optimizer, diagnose, draw_starts, run_optimizer
from .parameters import NonlinearParameters
from .products import ProductDesign
from .results import BLPResultsWrapper, EstimationInfo

__all__ = ["BLPRandomCoefficients"]


class BLPRandomCoefficients(BLPModel):
    """Random-coefficients (BLP) demand with demographics; nested when products have nests.

    Build it with :meth:`from_formula`. Fixed effects are absorbed once; each objective
    evaluation solves the δ contraction in all markets at once.

    Examples
    --------
    >>> from blpmodels import BLPRandomCoefficients, datasets  # doctest: +SKIP
    >>> products, agents = datasets.load_mixtape_exercise2()  # doctest: +SKIP
    >>> model = BLPRandomCoefficients.from_formula(
    ...     "shares ~ 0 + [prices ~ demand_instruments0 + demand_instruments1]", products,
    ...     absorb="C(market_ids) + C(product_ids)", random="0 + mushy",
    ...     demographics="0 + log_income", agent_data=agents)  # doctest: +SKIP
    >>> results = model.fit(sigma=0, pi=1)  # doctest: +SKIP
    >>> round(float(results.params["pi[mushy,log_income]"]), 3)  # doctest: +SKIP
    0.251
    """

    agents: AgentDesign
    chunk_size: int | None = None
    threads: int | None = None

    @classmethod
    def from_formula(  # type: ignore[override]
        cls,
        formula: str,
        data: pd.DataFrame,
        absorb: str | None = None,
        *,
        random: str,
        demographics: str | None = None,
        agent_data: pd.DataFrame | None = None,
        integration: Any = None,
        rc_types: Mapping[str, str] | None = None,
        absorb_method: AbsorbMethod | None = None,
        context: Mapping[str, Any] | None = None,
        chunk_size: int | None = None,
        threads: int | None = None,
    ) -> BLPRandomCoefficients:
        """Build the model from formulas, product data and agent data (or an integration rule).

        Parameters
        ----------
        formula : str
            ``shares ~ exog + [endog ~ instruments]`` for the linear part X1 and instruments.
        data : pandas.DataFrame
            Product data with ``market_ids`` (and ``product_ids``, ``firm_ids``,
            ``nesting_ids`` when available).
        absorb : str, optional
            Fixed effects, e.g. ``"C(market_ids) + C(product_ids)"``.
        random : str
            Random-coefficient characteristics X2, e.g. ``"0 + prices + mushy"``.
        demographics : str, optional
            Demographics from the agent data, e.g. ``"0 + log_income"``.
        agent_data : pandas.DataFrame, optional
            ``market_ids``, ``weights``, ``nodes0`` … and demographic columns.
        integration : Integration, optional
            Builds nodes and weights instead of ``agent_data`` (no demographics then).
        rc_types : dict, optional
            ``{"prices": "lognormal"}`` etc.; default normal.
        absorb_method : str, optional
            pyhdfe method.
        context : mapping, optional
            Extra names for formula transforms.
        chunk_size : int, optional
            Markets per kernel call (bounds memory); chosen automatically by default.
        threads : int, optional
            Market chunks evaluated in parallel threads; by default the available cores (up
            to 4) for large problems, 1 for small ones. Results do not depend on it.

        Returns
        -------
        BLPRandomCoefficients
        """
        namespace = dict(capture_context(1) or {})
        namespace.update(context or {})
        if not isinstance(random, str) or not random.strip():
            raise BLPInputError("random must be a formula such as '0 + prices + mushy'")
        design = ProductDesign.from_formula(
            parse_formula(formula),
            data,
            absorb=absorb,
            absorb_method=absorb_method,
            random=random,
            context=namespace,
            formula=formula,
        )
        if design.random.size == 0:
            raise BLPInputError(f"random={random!r} gives no random-coefficient columns")
        for name, value in (("chunk_size", chunk_size), ("threads", threads)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise BLPInputError(f"{name} must be a positive integer, got {value!r}")
        kind = None
        if integration is not None:
            if agent_data is not None:
                raise BLPInputError(
                    "give agent_data or integration, not both (put demographics and nodes "
                    "together in agent_data; build_integration() makes the nodes)"
                )
            if demographics:
                raise BLPInputError("demographics need agent_data; integration only builds nodes")
            from .integration import build_integration

            agent_data = build_integration(
                integration, design.random.size, market_ids=design.layout.market_labels
            )
            kind = integration.kind
        if agent_data is None:
            raise BLPInputError(
                "random coefficients need agent_data or integration=Integration(...)"
            )
        agents = AgentDesign.build(
            agent_data,
            design.layout.market_labels,
            demographics=demographics,
            max_nodes=design.random.size,
            context=namespace,
            kind=kind,
        )
        types = dict(rc_types or {})
        return cls._from_design(
            design, agents=agents, chunk_size=chunk_size, threads=threads, rc_types=types
        )

    rc_types: dict[str, str]

    def _nests(self) -> tuple[np.ndarray | None, tuple[Any, ...]]:
        if self.design.nesting_ids is None:
            return None, ()
        codes, labels = pd.factorize(pd.Series(self.design.nesting_ids), sort=True)
        return codes.astype(np.intp), tuple(labels.tolist())

    def parameters(
        self,
        sigma: Any = None,
        pi: Any = None,
        rho: Any = None,
        *,
        sigma_bounds: Any = None,
        pi_bounds: Any = None,
        rho_bounds: Any = None,
    ) -> NonlinearParameters:
        """Validate starting values and bounds into the structure of θ (no estimation work)."""
        _, nests = self._nests()
        parameters = NonlinearParameters.build(
            self.design.random.names,
            self.agents.demographic_names,
            nests,
            sigma=sigma,
            pi=pi,
            rho=rho,
            sigma_bounds=sigma_bounds,
            pi_bounds=pi_bounds,
            rho_bounds=rho_bounds,
            rc_types=self.rc_types,
        )
        if parameters.pi.size and np.any(parameters.pi != 0) and not self.agents.demographic_names:
            raise BLPInputError("pi has nonzero entries but the model has no demographics")
        self.agents.check_nodes(parameters.node_columns_needed(), parameters.characteristics)
        return parameters

    def objective_function(
        self,
        parameters: NonlinearParameters,
        W: np.ndarray | None = None,
        *,
        fp_tol: float = 1e-14,
        fp_max_evaluations: int = 5000,
        fp_method: str = "newton",
    ) -> NonlinearObjective:
        """The GMM objective at a weighting matrix (default (Z'Z/N)⁻¹), for custom use.

        Returns
        -------
        NonlinearObjective
            Call ``.evaluate(theta)`` for the objective, gradient and δ.
        """
        if fp_method not in ("newton", "squarem"):
            raise BLPInputError(f"fp_method must be 'newton' or 'squarem', got {fp_method!r}")
        design = self.design
        if W is None:
            W = inverse_weight_matrix(design.Z_absorbed.T @ design.Z_absorbed / design.nobs)
        codes, _ = self._nests()
        return NonlinearObjective(
            design,
            self.agents,
            parameters,
            W,
            nest_codes=codes,
            fp_tol=fp_tol,
            fp_max_evaluations=fp_max_evaluations,
            fp_method=fp_method,
            chunk_size=self.chunk_size,
            threads=self.threads,
        )

    def fit(  # type: ignore[override]
        self,
        sigma: Any = None,
        pi: Any = None,
        rho: Any = None,
        *,
        sigma_bounds: Any = None,
        pi_bounds: Any = None,
        rho_bounds: Any = None,
        method: str = "1s",
        W: Any = None,
        cov_type: str = "robust",
        cov_kwds: Mapping[str, Any] | None = None,
        optimizer: Any = "trust-constr",
        optimizer_options: Mapping[str, Any] | None = None,
        starts: int | None = None,
        seed: int | None = None,
        fp_tol: float = 1e-14,
        fp_max_evaluations: int = 5000,
        fp_method: str = "newton",
        compute_hessian: bool = True,
    ) -> BLPResultsWrapper:
        """Estimate θ = (Σ, Π, ρ) and β by one- or two-step GMM.

        Parameters
        ----------
        sigma : array-like, optional
            K2×K2 lower-triangular starting Σ (scalar 0: none). Zeros stay fixed at zero.
        pi : array-like, optional
            K2×D starting Π. Zeros stay fixed at zero.
        rho : float or array-like, optional
            Starting ρ (one, or one per nest) when products have ``nesting_ids``.
        sigma_bounds, pi_bounds, rho_bounds : tuple, optional
            ``(lower, upper)`` arrays. Defaults: Σ diagonal ≥ 0, ρ in [0, 0.99].
        method : {"1s", "2s"}
            One step, or two with W updated to S⁻¹ at the first-step estimates.
        W : array-like, optional
            First-step weighting matrix (default (Z'Z/N)⁻¹).
        cov_type : {"robust", "unadjusted", "clustered"}
            Covariance of the estimates and of the moments.
        cov_kwds : dict, optional
            ``{"groups": ...}`` for clustering.
        optimizer : str or callable
            "trust-constr" (default), "l-bfgs-b", "bfgs" (ignores bounds), "slsqp",
            "nelder-mead", or ``callable(fun, theta0, bounds)``.
        optimizer_options : dict, optional
            Passed to the optimizer (e.g. ``{"gtol": 1e-8, "xtol": 1e-8}``).
        starts : int, optional
            Draw this many starting values within bounds (seeded by ``seed``), fit from each
            and keep the lowest objective; the table of runs is in
            ``results.info.convergence["starts"]``.
        seed : int, optional
            Seed for ``starts``.
        fp_tol : float
            Contraction tolerance (∞-norm of the δ update), 1e-14 by default.
        fp_max_evaluations : int
            Share evaluations per market before the contraction gives up.
        fp_method : {"newton", "squarem"}
            How δ is solved: Newton-type steps reusing ∂s/∂δ from the previous parameter
            vector, safeguarded by the SQUAREM contraction (default); or SQUAREM alone (as
            pyblp does). Both stop at the same tolerance.
        compute_hessian : bool
            Compute the Hessian at the optimum (2P extra gradient evaluations) for the
            second-order check.

        Returns
        -------
        BLPResults
            Parameters are β followed by the free entries of Σ, Π and ρ.

        Raises
        ------
        BLPInputError
            Bad starting values, bounds, options.
        FixedPointError
            The contraction fails at the starting values (the markets are named).
        """
        design = self.design
        parameters = self.parameters(
            sigma, pi, rho, sigma_bounds=sigma_bounds, pi_bounds=pi_bounds, rho_bounds=rho_bounds
        )
        options = gmm_options(design, method, W, cov_type, cov_kwds, len(design.z_names))
        optimizer_name = check_optimizer(optimizer, optimizer_options)
        if starts is not None and (not isinstance(starts, int) or starts < 1):
            raise BLPInputError(f"starts must be a positive integer, got {starts!r}")
        if not (fp_tol > 0):
            raise BLPInputError(f"fp_tol must be positive, got {fp_tol!r}")
        if fp_method not in ("newton", "squarem"):
            raise BLPInputError(f"fp_method must be 'newton' or 'squarem', got {fp_method!r}")
        if optimizer_name == "bfgs" and (sigma_bounds is not None or pi_bounds is not None):
            warnings.warn(
                "bfgs cannot impose bounds: sigma_bounds / pi_bounds are ignored",
                UserWarning,
                stacklevel=2,
            )
        clock = time.perf_counter()
        objective = self.objective_function(
            parameters,
            options.W,
            fp_tol=fp_tol,
            fp_max_evaluations=fp_max_evaluations,
            fp_method=fp_method,
        )
        initial = objective.evaluate(parameters.theta0, gradient=parameters.size > 0)
        if not initial.success:
            bad = design.layout.market_labels[~initial.converged].tolist()
            raise FixedPointError(
                f"the δ contraction failed at the starting values in {len(bad)} market(s): "
                f"{bad[:10]}; try smaller starting values for sigma/pi",
                markets=bad,
            )
        lower, upper = parameters.lower, parameters.upper
        if optimizer_name == "bfgs":
            lower, upper = np.full_like(lower, -np.inf), np.full_like(upper, np.inf)

        last_good: dict[str, Evaluation] = {"value": initial}

        def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
            evaluation = objective.evaluate(theta)
            if not evaluation.success:
                # Revert to the last good point's values, penalized, so optimizers back off.
                good = last_good["value"]
                penalty = 10.0 * max(1.0, abs(good.objective))
                gradient = good.gradient if good.gradient is not None else np.zeros(theta.size)
                return good.objective + penalty, gradient
            last_good["value"] = evaluation
            return evaluation.objective, evaluation.gradient

        steps: list[dict[str, Any]] = []
        start_table = None
        theta = parameters.theta0
        n_steps = 2 if options.method == "2s" else 1
        outcome = None
        for step in range(1, n_steps + 1):
            if parameters.size == 0:
                outcome = None
            elif step == 1 and starts:
                runs = []
                best = None
                for draw in draw_starts(theta, parameters.lower, parameters.upper, starts, seed):
                    objective.last_delta = design.layout.pad(design.logit_delta())
                    result = run_optimizer(fun, draw, lower, upper, optimizer, optimizer_options)
                    value = objective.evaluate(result.theta)
                    runs.append(
                        {
                            **{
                                f"start {name}": v
                                for name, v in zip(parameters.names, draw, strict=True)
                            },
                            **{
                                name: v
                                for name, v in zip(parameters.names, result.theta, strict=True)
                            },
                            "objective": value.objective,
                            "gradient_norm": float(np.abs(value.gradient).max())
                            if value.gradient is not None
                            else np.nan,
                            "converged": result.converged,
                        }
                    )
                    if value.success and (best is None or value.objective < best[1]):
                        best = (result, value.objective)
                start_table = pd.DataFrame(runs)
                if best is None:
                    raise FixedPointError("every starting value failed: the contraction diverged")
                outcome = best[0]
                theta = outcome.theta
            else:
                outcome = run_optimizer(fun, theta, lower, upper, optimizer, optimizer_options)
                theta = outcome.theta
            evaluation = objective.evaluate(theta)
            if not evaluation.success:
                bad = design.layout.market_labels[~evaluation.converged].tolist()
                raise FixedPointError(
                    f"the δ contraction failed at the estimates in markets {bad[:10]}", markets=bad
                )
            steps.append(
                {
                    "step": step,
                    "objective": evaluation.objective,
                    "theta": theta.copy(),
                    "beta": evaluation.beta.copy(),
                    "optimizer": None if outcome is None else outcome.message,
                }
            )
            if step < n_steps:
                moment_cov = options.moment_covariance(design.Z_absorbed, evaluation.xi)
                objective.set_weighting_matrix(
                    inverse_weight_matrix(moment_cov, "updated weighting matrix")
                )
        optimization_seconds = time.perf_counter() - clock

        clock = time.perf_counter()
        final = evaluation
        diagnostics = diagnose(
            theta,
            final.gradient,
            final.objective,
            parameters.lower,
            parameters.upper,
            (lambda t: objective.evaluate(t).gradient)
            if compute_hessian and parameters.size
            else None,
        )
        hessian_seconds = time.perf_counter() - clock
        for note in diagnostics.warnings:
            warnings.warn(note, ConvergenceWarning, stacklevel=2)

        nobs = design.nobs
        Z = design.Z_absorbed
        absorbed_jacobian = design.residualize(final.delta_jacobian)
        G = np.column_stack([-Z.T @ design.X_absorbed, Z.T @ absorbed_jacobian]) / nobs
        S = options.moment_covariance(Z, final.xi)
        cov = gmm_covariance(G, objective.W, S, nobs)
        first = (
            first_stage(
                design.X_absorbed[:, design.exog.size :],
                design.X_absorbed[:, : design.exog.size],
                Z[:, design.exog.size :],
                list(design.endog.names),
                options.moment_covariance,
            )
            if design.endog.size
            else pd.DataFrame(columns=["f_stat", "f_pvalue", "partial_r2", "n_instruments"])
        )

        codes, _ = self._nests()
        _, _, rho_values = parameters.unpack(theta)
        n_nests = 0 if codes is None else int(codes.max()) + 1
        demand = DemandSystem(
            design,
            final.beta,
            final.delta,
            agents=self.agents,
            parameters=parameters,
            theta=theta,
            nest_codes=codes,
            rho=None if codes is None else np.broadcast_to(rho_values, (n_nests,)).copy(),
            chunk_size=objective.chunk_size,
        )
        convergence = {
            "optimizer": optimizer_name,
            "converged": bool(outcome.converged) if outcome is not None else True,
            "message": outcome.message if outcome is not None else "no free parameters",
            "iterations": outcome.iterations if outcome is not None else 0,
            "evaluations": objective.count,
            "gradient": diagnostics.gradient,
            "projected_gradient": diagnostics.projected_gradient,
            "gradient_norm": diagnostics.projected_gradient_norm,
            "hessian": diagnostics.hessian,
            "hessian_eigenvalues": diagnostics.reduced_hessian_eigenvalues,
            "fp_converged": bool(final.converged.all()),
            "fp_method": fp_method,
            "fp_iterations": objective.total_iterations,
            "contraction_evaluations": objective.total_evaluations,
            "threads": objective.threads,
            "fp_failures": objective.failures,
            "warnings": diagnostics.warnings,
            "starts": start_table,
        }
        info = EstimationInfo(
            method=options.method,
            cov_type=options.cov_type,
            objective=final.objective,
            W=objective.W,
            updated_W=safe_inverse(S),
            moment_covariance=S,
            n_moments=len(design.z_names),
            first_stage=first,
            convergence=convergence,
            timings={"optimization": optimization_seconds, "hessian": hessian_seconds},
            steps=steps,
        )
        params = np.concatenate([final.beta, theta])
        names = [*design.x_names, *parameters.names]
        return self._results(params, names, cov, info, demand, final.xi, final.delta)
