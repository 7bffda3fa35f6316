"""Random-coefficients logit with demographics (BLP), optionally nested (RCNL).

Utility of agent i for product j in market t:

    U_ijt = δ_jt + Σ_k X2_jtk (Σ ν_it + Π d_it)_k + ε_ijt,   δ_jt = X1_jt β + ξ_jt,

with ν the integration nodes (``nodes0`` pairs with the first random-coefficient column), d the
demographics, Σ lower-triangular, and ε i.i.d. extreme value (or the nested-logit
generalization when products have ``nesting_ids``). β is concentrated out; θ = (Σ, Π, ρ) is
found by minimizing the GMM objective with the analytic gradient.
"""

from __future__ import annotations

import numbers
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
from .estimation import GMMOptions, gmm_options, safe_inverse
from .estimator import Estimate, Estimator, FitSettings, check_fit_settings, natural_scales
from .exceptions import BLPInputError
from .formula import parse_formula
from .gmm import first_stage, inverse_weight_matrix
from .models import BLPModel
from .objective import NonlinearObjective, check_fixed_point_options
from .optimize import check_optimizer
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
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1
            ):
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
            design,
            agents=agents,
            chunk_size=None if chunk_size is None else int(chunk_size),
            threads=None if threads is None else int(threads),
            rc_types=types,
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
        covariance: Any = None,
    ) -> NonlinearObjective:
        """The GMM objective at a weighting matrix (default (Z'Z/N)⁻¹), for custom use.

        Parameters
        ----------
        parameters : NonlinearParameters
            From :meth:`parameters`.
        W : numpy.ndarray, optional
            Weighting matrix.
        fp_tol, fp_max_evaluations, fp_method
            δ solver settings, as in :meth:`fit`.
        covariance : callable, optional
            ``covariance(Z, ξ) -> S`` for weighting-matrix updates (default robust).

        Returns
        -------
        NonlinearObjective
            Call ``.evaluate(theta)`` for the objective, gradient and δ.

        Examples
        --------
        >>> objective = model.objective_function(model.parameters(sigma=1.0))  # doctest: +SKIP
        >>> objective.evaluate(np.array([0.5])).success  # doctest: +SKIP
        True
        """
        check_fixed_point_options(fp_tol, fp_max_evaluations, fp_method)
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
            fp_tol=float(fp_tol),
            fp_max_evaluations=int(fp_max_evaluations),
            fp_method=fp_method,
            chunk_size=self.chunk_size,
            threads=self.threads,
            covariance=covariance,
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
        seed: Any = None,
        max_evaluations: int = 1000,
        scale_parameters: bool = True,
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
            One step, or two with W updated to S⁻¹ at the first-step estimates (S of the
            chosen ``cov_type``).
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
            Passed to the optimizer (e.g. ``{"gtol": 1e-8, "xtol": 1e-8}``); names the
            optimizer does not accept are an error. With ``scale_parameters`` the optimizer
            works on θ/s, so its tolerances are in those units.
        starts : int, optional
            Draw this many starting values within bounds (seeded by ``seed``), fit from each
            and keep the lowest objective; the table of runs is in
            ``results.info.convergence["starts"]``.
        seed : int, optional
            Seed for ``starts``.
        max_evaluations : int
            Objective evaluations per optimization (per start and GMM step). When spent, the
            best point found is reported, ``converged`` is False and a ConvergenceWarning says
            why.
        scale_parameters : bool
            Optimize over u = θ/s, with s the natural scale of each parameter (one unit of u
            moves agent utilities by about one), so the optimizer's steps are sensible whatever
            the units of the data. Results are reported in θ. ``False`` optimizes θ itself
            (as pyblp does), for parity with published runs.
        fp_tol : float
            Tolerance on max_j (1 − ρ_j)|log s_j(δ) − log s_obs,j| in every market, 1e-14 by
            default; δ counts as solved only when this residual is met.
        fp_max_evaluations : int
            Share evaluations per market before the δ solver gives up.
        fp_method : {"newton", "squarem"}
            How δ is solved: Newton-type steps reusing ∂s/∂δ from the previous parameter
            vector, safeguarded by the SQUAREM contraction (default); or SQUAREM alone (as
            pyblp does). Both stop at the same residual tolerance.
        compute_hessian : bool
            Compute the Hessian at the optimum (P extra gradient evaluations) for the
            second-order check.

        Returns
        -------
        BLPResults
            Parameters are β followed by the free entries of Σ, Π and ρ; convergence details
            in ``results.info.convergence``.

        Raises
        ------
        BLPInputError
            Bad starting values, bounds or options; more parameters than moments.
        FixedPointError
            δ cannot be solved at the starting values (the markets and the reason are named).

        Warns
        -----
        ConvergenceWarning
            The optimizer did not converge or ran out of evaluations, the first- or
            second-order check failed, or the moments do not identify some parameters.
        """
        design = self.design
        parameters = self.parameters(
            sigma, pi, rho, sigma_bounds=sigma_bounds, pi_bounds=pi_bounds, rho_bounds=rho_bounds
        )
        options = gmm_options(design, method, W, cov_type, cov_kwds, len(design.z_names))
        check_fixed_point_options(fp_tol, fp_max_evaluations, fp_method)
        settings = check_fit_settings(
            optimizer,
            optimizer_options,
            starts=starts,
            seed=seed,
            max_evaluations=max_evaluations,
            compute_hessian=compute_hessian,
            scale_parameters=scale_parameters,
            steps=2 if options.method == "2s" else 1,
            check_options=check_optimizer,
        )
        self._check_order_condition(parameters)
        lower, upper = parameters.lower, parameters.upper
        if check_optimizer(optimizer, optimizer_options) == "bfgs":
            if sigma_bounds is not None or pi_bounds is not None:
                warnings.warn(
                    "bfgs cannot impose bounds: sigma_bounds / pi_bounds are ignored",
                    UserWarning,
                    stacklevel=2,
                )
            lower, upper = np.full_like(lower, -np.inf), np.full_like(upper, np.inf)
        objective = self.objective_function(
            parameters,
            options.W,
            fp_tol=fp_tol,
            fp_max_evaluations=fp_max_evaluations,
            fp_method=fp_method,
            covariance=options.moment_covariance,
        )
        agents = self.agents
        scale = natural_scales(
            parameters, design.random.values, agents.nodes, agents.demographics, agents.weights
        )
        estimator = Estimator(
            objective,
            parameters.names,
            design.x_names,
            lower,
            upper,
            scale,
            settings,
            design.layout.market_labels,
            int(fp_max_evaluations),
        )
        estimate = estimator.run(parameters.theta0)
        return self._estimate_results(estimate, objective, parameters, options, settings)

    def _check_order_condition(self, parameters: NonlinearParameters) -> None:
        """More parameters than moments cannot be estimated: an error naming both counts."""
        n_linear = len(self.design.x_names)
        n_moments = len(self.design.z_names)
        if n_linear + parameters.size > n_moments:
            raise BLPInputError(
                f"the model has {n_linear + parameters.size} parameters ({n_linear} linear, "
                f"{parameters.size} nonlinear: {parameters.names}) but only {n_moments} "
                "moments (instruments): add excluded instruments or fix some of sigma/pi/rho "
                "at zero"
            )

    def _estimate_results(
        self,
        estimate: Estimate,
        objective: NonlinearObjective,
        parameters: NonlinearParameters,
        options: GMMOptions,
        settings: FitSettings,
    ) -> BLPResultsWrapper:
        """Covariance, first-stage diagnostics and the demand system from an :class:`Estimate`."""
        design = self.design
        final = estimate.evaluation
        theta = estimate.theta
        nobs = design.nobs
        Z = design.Z_absorbed
        S = objective.moment_covariance(final)
        cov = gmm_covariance(objective.moment_jacobian(final), objective.W, S, nobs)
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
        outcome = estimate.outcome
        diagnostics = estimate.diagnostics
        convergence = {
            "optimizer": check_optimizer(settings.optimizer, settings.optimizer_options),
            "converged": estimate.converged,
            "optimizer_converged": True if outcome is None else bool(outcome.converged),
            "message": outcome.message if outcome is not None else "no free parameters",
            "iterations": outcome.iterations if outcome is not None else 0,
            "evaluations": objective.count,
            "max_evaluations": settings.max_evaluations,
            "gradient": diagnostics.gradient,
            "projected_gradient": diagnostics.projected_gradient,
            "gradient_norm": diagnostics.projected_gradient_norm,
            "scaled_gradient_norm": diagnostics.scaled_gradient_norm,
            "scale": estimate.scale,
            "hessian": diagnostics.hessian,
            "hessian_eigenvalues": diagnostics.reduced_hessian_eigenvalues,
            "fp_converged": bool(final.converged.all()),
            "fp_method": objective.fp_method,
            "fp_iterations": objective.total_iterations,
            "contraction_evaluations": objective.total_evaluations,
            "threads": objective.threads,
            "fp_failures": objective.failures,
            "warnings": estimate.warnings,
            "starts": estimate.starts,
            "trace": estimate.trace,
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
            timings=estimate.seconds,
            steps=estimate.steps,
        )
        params = np.concatenate([final.beta, theta])
        names = [*design.x_names, *parameters.names]
        return self._results(params, names, cov, info, demand, final.xi, final.delta)
