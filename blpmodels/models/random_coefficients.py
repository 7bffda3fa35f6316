"""Random-coefficients logit with demographics (BLP), optionally nested (RCNL).

Utility of agent i for product j in market t:

    U_ijt = δ_jt + Σ_k X2_jtk (Σ ν_it + Π d_it)_k + ε_ijt,   δ_jt = X1_jt β + ξ_jt,

with ν the integration nodes (``nodes0`` pairs with the first random-coefficient column), d the
demographics, Σ lower-triangular, and ε i.i.d. extreme value (or the nested-logit
generalization when products have ``nesting_ids``). β is concentrated out; θ = (Σ, Π, ρ) is
found by minimizing the GMM objective with the analytic gradient.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import scipy.linalg
from formulaic.utils.context import capture_context

from blpmodels.backends import ClientHandle, check_backend, parse_memory
from blpmodels.data.absorb import AbsorbMethod
from blpmodels.data.agents import AgentDesign
from blpmodels.data.design import warn_user
from blpmodels.data.formula import parse_formula
from blpmodels.data.parameters import NonlinearParameters
from blpmodels.data.products import ProductDesign
from blpmodels.data.supply_design import SupplyDesign, build_supply_design
from blpmodels.estimation.covariance import gmm_covariance
from blpmodels.estimation.estimator import (
    Estimate,
    Estimator,
    FitSettings,
    check_fit_settings,
    natural_scales,
)
from blpmodels.estimation.gmm import first_stage, inverse_weight_matrix
from blpmodels.estimation.linear import GMMOptions, gmm_options, safe_inverse
from blpmodels.estimation.micro import MicroBlock, MicroMoment
from blpmodels.estimation.objective import NonlinearObjective, check_fixed_point_options
from blpmodels.estimation.optimize import check_optimizer, default_optimizer
from blpmodels.exceptions import BLPInputError, FixedPointError
from blpmodels.models.base import BLPModel
from blpmodels.results.demand import DemandSystem
from blpmodels.results.results import BLPResultsWrapper, EstimationInfo

__all__ = ["BLPRandomCoefficients"]


def fit_logit_with_supply(
    model: BLPModel,
    supply: SupplyDesign,
    *,
    rho: Any = None,
    beta: Mapping[str, float] | None = None,
    **fit_options: Any,
) -> BLPResultsWrapper:
    """Logit or nested logit demand estimated jointly with its cost equation.

    The price coefficient (and ρ for nests) enter the markups, so they join θ; the other
    linear demand coefficients and γ stay concentrated out. This is the random-coefficients
    estimator with no random coefficients: one agent per market with weight one, whose
    shares are exactly the (nested) logit shares, so the same objective, gradient,
    covariance and diagnostics serve every model.

    Parameters
    ----------
    model : BLPModel
        A :class:`~blpmodels.models.BLPLogit` or :class:`~blpmodels.models.BLPNestedLogit`
        built with ``supply=``.
    supply : SupplyDesign
        Its cost side.
    rho : float or array-like, optional
        Starting ρ for nested logit.
    beta : dict, optional
        Starting values of the coefficients of price columns.
    **fit_options
        As in :meth:`BLPRandomCoefficients.fit`.

    Returns
    -------
    BLPResults
        β in formula order, then ``gamma[...]``, then ρ.

    Examples
    --------
    >>> model = BLPLogit.from_formula(
    ...     "shares ~ 1 + x + [prices ~ z]", data, supply="1 + w")  # doctest: +SKIP
    >>> model.fit().params["gamma[w]"]  # doctest: +SKIP
    """
    design = model.design
    agent_data = pd.DataFrame({"market_ids": design.layout.market_labels, "weights": 1.0})
    agents = AgentDesign.build(agent_data, design.layout.market_labels, max_nodes=0)
    inner = BLPRandomCoefficients._from_design(
        design, agents=agents, rc_types={}, supply=supply, chunk_size=None, threads=None
    )
    results = inner.fit(sigma=0, rho=rho, beta=beta, **fit_options)
    # The results belong to the user's model (its class in summaries, its supply design).
    outer = copy.copy(model)
    outer.data = copy.copy(model.data)
    outer.data.param_names = list(results.model.data.param_names)
    results._results.model = outer
    return results


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
    backend: str = "threads"
    client: ClientHandle | None = None
    memory_limit: int | None = None

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
        backend: str = "threads",
        client: Any = None,
        memory_limit: int | str | None = None,
        supply: str | None = None,
        supply_instruments: str | None = None,
        costs_type: str = "linear",
        supply_absorb: str | None = None,
        costs_bounds: Any = None,
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
            ``market_ids``, ``weights``, ``nodes0`` … and demographic columns. Node column
            ``nodes{k}`` pairs with the k-th column of ``random`` (its σ row), whether or not
            that σ is free: with ``random="1 + mushy + prices"``, ``nodes2`` drives the price
            coefficient. (pyblp pairs its node columns only with the X2 columns whose σ
            diagonal is nonzero, in order: move pyblp's nodes to the positions of those columns
            to reuse its agent data.)
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
        backend : {"threads", "dask"}
            Where the market chunks are solved: threads in this process, or the workers of
            a Dask cluster (``pip install "blpmodels[dask]"``; see ``docs/dask.md``), where
            each chunk is scattered once and stays resident with its warm starts, and only θ
            travels per evaluation. The estimates do not depend on it.
        client : distributed.Client, optional
            The Dask cluster's client (``backend="dask"``); by default the current client.
        memory_limit : int or str, optional
            Bytes (or ``"2GiB"``, ``"500MB"``) the fit may use beyond the data: chunk sizes are
            chosen so that the chunks evaluated at once and the state kept per market fit
            under it. A limit too small for one market is an error naming the market and how
            much it needs. Post-estimation follows the same chunks. Not with ``chunk_size``.
        supply : str, optional
            Marginal-cost characteristics X3, e.g. ``"1 + mushy"``: adds the supply side
            f(p − η) = X3γ + ω with Bertrand–Nash markups η from ``firm_ids`` and moments
            E[Z_S ω] = 0, Z_S = the X3 columns and ``supply_instruments``. γ is concentrated
            out (named ``gamma[...]``); the coefficients of the X1 columns that read prices
            become nonlinear parameters (start them with ``fit(beta=...)``).
        supply_instruments : str, optional
            Excluded supply instruments, e.g. ``"demand_instruments0"``.
        costs_type : {"linear", "log"}
            f(c) = c or log c.
        supply_absorb : str, optional
            Fixed effects in the cost equation, e.g. ``"C(product_ids)"``.
        costs_bounds : tuple, optional
            ``(lower, upper)`` clipping of the implied costs before f (``None`` entries: no
            bound), e.g. ``(0.001, None)`` with log costs, as in pyblp's BLP example.

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
        check_backend(backend, client)
        if threads is not None and backend != "threads":
            raise BLPInputError("threads= is for backend='threads'")
        limit = parse_memory(memory_limit)
        if limit is not None and chunk_size is not None:
            raise BLPInputError(
                "give chunk_size or memory_limit, not both (memory_limit chooses the chunks)"
            )
        kind = None
        if integration is not None:
            if agent_data is not None:
                raise BLPInputError(
                    "give agent_data or integration, not both (put demographics and nodes "
                    "together in agent_data; build_integration() makes the nodes)"
                )
            if demographics:
                raise BLPInputError("demographics need agent_data; integration only builds nodes")
            from blpmodels.data.integration import build_integration

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
        supply_design = build_supply_design(
            design,
            supply,
            supply_instruments=supply_instruments,
            costs_type=costs_type,
            supply_absorb=supply_absorb,
            costs_bounds=costs_bounds,
            absorb_method=absorb_method,
            context=namespace,
        )
        return cls._from_design(
            design,
            agents=agents,
            chunk_size=None if chunk_size is None else int(chunk_size),
            threads=None if threads is None else int(threads),
            backend=backend,
            client=ClientHandle(client),
            memory_limit=limit,
            rc_types=types,
            supply=supply_design,
        )

    rc_types: dict[str, str]
    supply: SupplyDesign | None = None

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
        if sigma is None and pi is None and self.design.random.size:
            # Zeros stay fixed at zero, so no starting values would quietly fit a logit.
            raise BLPInputError(
                "give starting values: sigma= (and pi= with demographics); entries left at "
                "zero stay fixed at zero, so without either the model is a plain logit "
                "(pass sigma=0 to estimate that on purpose)"
            )
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
        micro: MicroBlock | None = None,
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
        micro : MicroBlock, optional
            Micro moments stacked after the product moments (from :meth:`micro_block`); the
            default W then has a zero micro block (an initial update must replace it).

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
            W = self.initial_weighting_matrix()
            if micro is not None:
                W = scipy.linalg.block_diag(W, np.zeros((micro.size, micro.size)))
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
            backend=self.backend,
            client=None if self.client is None else self.client.client,
            memory_limit=self.memory_limit,
            covariance=covariance,
            supply=self.supply,
            micro=micro,
        )

    def micro_block(self, micro_moments: Any) -> MicroBlock | None:
        """Validate micro moments against the data (``None``: no micro moments).

        Every dataset's weights and every part's values are computed and checked here, in
        each surveyed market, before any estimation work.

        Raises
        ------
        BLPInputError
            Not a list of :class:`~blpmodels.estimation.micro.MicroMoment`, unknown markets,
            arrays of the wrong shape, negative weights, a dataset that selects nobody.

        Examples
        --------
        >>> moment = MicroMoment.mean("log_income", survey, 7.9)  # doctest: +SKIP
        >>> block = model.micro_block([moment])  # doctest: +SKIP
        >>> block.size  # doctest: +SKIP
        1
        """
        if micro_moments is None:
            return None
        if isinstance(micro_moments, MicroMoment):
            micro_moments = [micro_moments]
        if isinstance(micro_moments, (str, bytes)) or not hasattr(micro_moments, "__iter__"):
            raise BLPInputError(
                f"micro_moments must be a list of MicroMoment, got {type(micro_moments).__name__}"
            )
        micro_moments = list(micro_moments)
        if not micro_moments:
            return None
        layout = self.design.layout
        return MicroBlock(
            micro_moments,
            self.design.data,
            layout.index,
            layout.mask,
            layout.market_labels,
            self.agents,
        )

    def initial_weighting_matrix(self) -> np.ndarray:
        """(Z'Z/N)⁻¹, block diagonal over the demand and supply instruments."""
        design = self.design
        blocks = [design.Z_absorbed]
        if self.supply is not None:
            blocks.append(self.supply.Z_absorbed)
        return scipy.linalg.block_diag(
            *[
                inverse_weight_matrix(Z.T @ Z / design.nobs, f"{name} instruments' Z'Z/N")
                for name, Z in zip(("demand", "supply"), blocks, strict=False)
            ]
        )

    @property
    def n_moments(self) -> int:
        """Number of moments (demand, plus supply when there is a supply side)."""
        supply = 0 if self.supply is None else len(self.supply.z_names)
        return len(self.design.z_names) + supply

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
        optimizer: Any = "auto",
        optimizer_options: Mapping[str, Any] | None = None,
        starts: int | None = None,
        seed: Any = None,
        max_evaluations: int = 1000,
        scale_parameters: bool = True,
        fp_tol: float = 1e-14,
        fp_max_evaluations: int = 5000,
        fp_method: str = "newton",
        compute_hessian: bool = True,
        beta: Mapping[str, float] | None = None,
        micro_moments: Any = None,
        initial_update: bool | None = None,
        verbose: bool = False,
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
            "auto" (default: "gauss-newton" for demand, with or without micro moments;
            "trust-constr" with a supply side, see
            :func:`blpmodels.estimation.optimize.default_optimizer`),
            "trust-constr", "l-bfgs-b", "bfgs" (ignores bounds), "slsqp", "nelder-mead",
            "gauss-newton", or ``callable(fun, theta0, bounds)``.
            "gauss-newton" is Levenberg–Marquardt on the stacked moments with the bounds
            (:mod:`blpmodels.estimation.gauss_newton`): it uses the moment Jacobian the
            gradient already computes, and took 11 evaluations on exercise 2 Q5 and 15 on
            Nevo (trust-constr 17, BFGS 51); where it stalls (near σ = 0 its matrix misses the
            curvature) it continues with L-BFGS-B from its best point and the message says so.
            Its options:
            ``gtol`` (projected gradient, default 1e-8), ``xtol``, ``max_iterations``.
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
        beta : dict, optional
            With a supply side, starting values of the coefficients of the X1 columns that
            read prices (they become nonlinear parameters: markups depend on them), e.g.
            ``{"prices": -30}``. By default the demand-only IV estimate at the starting
            Σ, Π, ρ.
        micro_moments : list of MicroMoment, optional
            Survey statistics matched by the model
            (:class:`~blpmodels.estimation.micro.MicroMoment`),
            stacked after the product moments. Their covariance is block diagonal to the
            product moments' (independent data), each dataset's scaled by its observations.
            Without ``W``, the first weighting matrix is S⁻¹ at the starting values (an
            initial update, as pyblp does), since (Z'Z/N)⁻¹ has no micro block.
        initial_update : bool, optional
            Replace the first weighting matrix (``W`` or the default) by S⁻¹ at the starting
            values before optimizing (pyblp's ``initial_update=True``, used in its BLP
            automobile example). Default: only with micro moments and no ``W``.
        verbose : bool
            Print one line per optimizer iteration (GMM step, start, iteration, evaluation,
            objective, projected gradient norm, move in θ, share evaluations, failed δ solves,
            seconds), and progress over ``starts`` (a tqdm bar with the ``progress`` extra).
            The same rows are in ``results.info.convergence["trace"]`` (column
            ``iteration``). Silent by default.

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
        if isinstance(optimizer, str) and optimizer.lower() == "auto":
            optimizer = default_optimizer(self.supply is not None)
        parameters = self.parameters(
            sigma, pi, rho, sigma_bounds=sigma_bounds, pi_bounds=pi_bounds, rho_bounds=rho_bounds
        )
        micro = self.micro_block(micro_moments)
        n_micro = 0 if micro is None else micro.size
        options = gmm_options(design, method, W, cov_type, cov_kwds, self.n_moments + n_micro)
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
            verbose=verbose,
        )
        objective = self.objective_function(
            parameters,
            options.W,
            fp_tol=fp_tol,
            fp_max_evaluations=fp_max_evaluations,
            fp_method=fp_method,
            covariance=options.moment_covariance,
            micro=micro,
        )
        self._check_order_condition(parameters, objective)
        moved_start = self._moved_start(beta, objective, parameters)
        if initial_update is None:
            initial_update = micro is not None and options.W is None
        elif not isinstance(initial_update, (bool, np.bool_)):
            raise BLPInputError(f"initial_update must be True or False, got {initial_update!r}")
        elif not initial_update and micro is not None and options.W is None:
            raise BLPInputError(
                "with micro moments and no W, the first weighting matrix comes from an initial "
                "update ((Z'Z/N)⁻¹ has no micro block): give W or leave initial_update on"
            )
        if initial_update:
            self._initial_update(objective, np.concatenate([parameters.theta0, moved_start]))
        names = [*parameters.names, *objective.moved_names]
        lower = np.concatenate([parameters.lower, np.full(moved_start.size, -np.inf)])
        upper = np.concatenate([parameters.upper, np.full(moved_start.size, np.inf)])
        if check_optimizer(optimizer, optimizer_options) == "bfgs":
            if sigma_bounds is not None or pi_bounds is not None:
                warn_user(
                    "bfgs cannot impose bounds: sigma_bounds / pi_bounds are ignored", UserWarning
                )
            lower, upper = np.full_like(lower, -np.inf), np.full_like(upper, np.inf)
        agents = self.agents
        scale = natural_scales(
            parameters, design.random.values, agents.nodes, agents.demographics, agents.weights
        )
        if moved_start.size:
            # One unit of θ/s moves utilities by about one: s = 1 / rms of the price column.
            size = np.sqrt((objective.moved_x1**2).mean(axis=0))
            scale = np.concatenate([scale, 1.0 / np.where(size > 0, size, 1.0)])
        estimator = Estimator(
            objective,
            names,
            [*[design.x_names[k] for k in objective.kept_columns], *self._gamma_names()],
            lower,
            upper,
            scale,
            settings,
            design.layout.market_labels,
            int(fp_max_evaluations),
        )
        estimate = estimator.run(np.concatenate([parameters.theta0, moved_start]))
        return self._estimate_results(estimate, objective, parameters, options, settings)

    def _gamma_names(self) -> list[str]:
        return [] if self.supply is None else self.supply.x_names

    def _moved_start(
        self, beta: Any, objective: NonlinearObjective, parameters: NonlinearParameters
    ) -> np.ndarray:
        """Starting values of the X1 coefficients that join θ with a supply side.

        ``beta`` names them (e.g. ``{"prices": -30}``); a coefficient not named starts at the
        demand-only IV estimate at the starting Σ, Π, ρ (one evaluation of the demand
        objective).
        """
        if beta is not None and not isinstance(beta, Mapping):
            raise BLPInputError("beta must be a dict such as {'prices': -30.0}")
        names = objective.moved_names
        given = dict(beta or {})
        if given and self.supply is None:
            raise BLPInputError(
                "beta starting values are only needed with a supply side: without one every "
                "linear coefficient is concentrated out"
            )
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise BLPInputError(
                f"beta names {unknown}, but the coefficients in θ are {names} (the X1 columns "
                "that read prices)"
            )
        values = {}
        for name, value in given.items():
            try:
                values[name] = float(value)
            except (TypeError, ValueError):
                raise BLPInputError(f"beta[{name!r}] must be a number, got {value!r}") from None
            if not np.isfinite(values[name]):
                raise BLPInputError(f"beta[{name!r}] must be finite, got {value!r}")
        missing = [name for name in names if name not in values]
        if missing:
            demand_moments = len(self.design.z_names)
            demand_only = NonlinearObjective(
                self.design,
                self.agents,
                parameters,
                self.initial_weighting_matrix()[:demand_moments, :demand_moments],
                nest_codes=objective.nest_codes,
                fp_tol=objective.fp_tol,
                fp_max_evaluations=objective.fp_max_evaluations,
                threads=objective.threads,
                chunk_size=objective.chunk_size,
            )
            start = demand_only.evaluate(parameters.theta0, gradient=False)
            if not start.success:
                raise FixedPointError(
                    "the δ contraction failed at the starting values, so the starting "
                    f"{missing} cannot be taken from the demand-only estimate: give "
                    "beta={...} and smaller sigma/pi",
                    markets=self.design.layout.market_labels[~start.converged].tolist(),
                )
            for name in missing:
                values[name] = float(start.beta[self.design.x_names.index(name)])
        return np.asarray([values[name] for name in names], dtype=np.float64)

    def _check_order_condition(
        self, parameters: NonlinearParameters, objective: NonlinearObjective
    ) -> None:
        """More parameters than moments cannot be estimated: an error naming both counts.

        The X1 coefficients that join θ with a supply side are counted as linear ones.
        """
        n_linear = len(self.design.x_names) + len(self._gamma_names())
        n_moments = objective.gmm.n_moments
        if n_linear + parameters.size > n_moments:
            names = [*parameters.names, *objective.moved_names]
            raise BLPInputError(
                f"the model has {n_linear + parameters.size} parameters ({n_linear} linear, "
                f"{parameters.size} nonlinear: {names}) but only {n_moments} moments "
                f"({n_moments - objective.gmm.n_extra} from instruments, "
                f"{objective.gmm.n_extra} micro): add excluded instruments or micro moments, "
                "or fix some of sigma/pi/rho at zero"
            )

    def _initial_update(self, objective: NonlinearObjective, theta0: np.ndarray) -> None:
        """W = S⁻¹ at the starting values (``initial_update``; micro moments without W)."""
        start = objective.evaluate(theta0, gradient=False)
        if not start.success:
            raise FixedPointError(
                "cannot form the initially updated weighting matrix at the starting values: "
                + (start.failure or "the δ contraction failed at the starting values"),
                markets=self.design.layout.market_labels[~start.converged].tolist(),
            )
        objective.set_weighting_matrix(objective.updated_weighting_matrix(start))

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
        theta, beta_moved = objective.split(estimate.theta)
        nobs = design.nobs
        Z = design.Z_absorbed
        S = objective.moment_covariance(final)
        cov = gmm_covariance(objective.moment_jacobian(final), objective.W, S, nobs)
        # The estimator's order is (concentrated β, γ, Σ Π ρ, β of price columns); results
        # list β in formula order, then γ, then Σ, Π, ρ.
        beta = np.zeros(len(design.x_names))
        beta[objective.kept_columns] = final.beta
        beta[objective.moved_columns] = beta_moved
        gamma = np.zeros(0) if final.gamma is None else final.gamma
        internal = np.concatenate([final.beta, gamma, estimate.theta])
        order = self._display_order(objective, gamma.size, parameters.size)
        cov = cov[np.ix_(order, order)]
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
            beta,
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
            "backend": objective.backend.name,
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
            n_moments=objective.gmm.n_moments,
            first_stage=first,
            convergence=convergence,
            timings=estimate.seconds,
            steps=estimate.steps,
            micro=self._micro_table(objective, final),
        )
        if self.supply is not None and estimate.steps:
            index = design.data.index
            estimate.steps[-1].update(
                gamma=pd.Series(gamma, index=self._gamma_names()),
                omega=pd.Series(final.omega, index=index, name="omega"),
                markups=pd.Series(final.markups, index=index, name="markups"),
                costs=pd.Series(self.supply.prices - final.markups, index=index, name="costs"),
            )
        params = internal[order]
        names = [*design.x_names, *self._gamma_names(), *parameters.names]
        return self._results(params, names, cov, info, demand, final.xi, final.delta)

    @staticmethod
    def _micro_table(objective: NonlinearObjective, final: Any) -> pd.DataFrame | None:
        """Observed and model values of the micro moments at the estimates."""
        micro = objective.micro
        if micro is None or final.micro is None:
            return None
        return pd.DataFrame(
            {
                "dataset": [moment.dataset.name for moment in micro.moments],
                "observations": [moment.dataset.observations for moment in micro.moments],
                "observed": micro.observed,
                "model": final.micro.values,
                "difference": final.micro.moments,
            },
            index=pd.Index(micro.names, name="moment"),
        )

    @staticmethod
    def _display_order(objective: NonlinearObjective, n_gamma: int, n_theta: int) -> np.ndarray:
        """Positions in the estimator's order of (β in formula order, γ, Σ Π ρ)."""
        kept, moved = objective.kept_columns, objective.moved_columns
        position = np.empty(kept.size + moved.size, dtype=np.intp)
        position[kept] = np.arange(kept.size)
        position[moved] = kept.size + n_gamma + n_theta + np.arange(moved.size)
        return np.concatenate(
            [position, kept.size + np.arange(n_gamma), kept.size + n_gamma + np.arange(n_theta)]
        )
