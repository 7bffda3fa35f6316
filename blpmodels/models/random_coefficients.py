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
import inspect
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.linalg

from blpmodels.backends import ClientHandle, check_backend, parse_memory
from blpmodels.data.absorb import AbsorbMethod
from blpmodels.data.agents import AgentDesign
from blpmodels.data.design import check_columns
from blpmodels.data.nests import TwoLevelCodes, nesting_column_names
from blpmodels.data.parameters import NonlinearParameters
from blpmodels.data.products import ProductDesign
from blpmodels.data.supply_design import SupplyDesign, build_supply_design
from blpmodels.estimation.estimator import Estimator
from blpmodels.estimation.gmm import initial_weighting_matrix
from blpmodels.estimation.linear import gmm_options
from blpmodels.estimation.micro import MicroBlock, MicroMoment
from blpmodels.estimation.objective import NonlinearObjective, check_fixed_point_options
from blpmodels.estimation.settings import check_fit_settings, check_initial_update
from blpmodels.exceptions import BLPInputError
from blpmodels.models.base import BLPModel, checked_keywords, formula_namespace
from blpmodels.models.nonlinear_results import nonlinear_results
from blpmodels.results.results import BLPResultsWrapper
from blpmodels.results.two_level_demand import check_two_level_rho

__all__ = ["BLPRandomCoefficients", "supply_fit_options"]


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


# A missing random= is most often pyblp's (X1, X2) formulations passed as the formula.
_RANDOM_HINT = (
    "; random='0 + prices + x' names the characteristics with random coefficients (pyblp's "
    "X2 formulation: X1 is the formula string 'shares ~ 1 + x + [prices ~ z]', X3 is supply=)"
)


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
    @checked_keywords(missing={"random": _RANDOM_HINT})
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
        nesting_ids: str | Sequence[str] | None = None,
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
            chosen so that the chunks evaluated at once, the state kept per market and the
            driver's product-length arrays fit under it. A limit too small for one market is
            an error naming the market and how much it needs. Post-estimation follows the same
            chunks. Not with ``chunk_size``.
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
        nesting_ids : str or list of str, optional
            Product-data column(s) holding the nests (default: the ``nesting_ids`` column, if
            any). Two columns, upper (coarser) level first, e.g. ``["size", "segment"]``, give
            the two-level RCNL with parameters ``rho_upper`` and ``rho_lower`` (start them with
            ``fit(rho=[rho_upper, rho_lower])``); random utility needs
            0 ≤ ρ_upper ≤ ρ_lower < 1. It does not support a supply side, micro moments or
            the Dask backend yet.

        Returns
        -------
        BLPRandomCoefficients
        """
        namespace = formula_namespace(context)
        if not isinstance(random, str) or not random.strip():
            raise BLPInputError("random must be a formula such as '0 + prices + mushy'")
        names = None if nesting_ids is None else nesting_column_names(nesting_ids)
        if names is not None:
            check_columns(data, names)  # before the formula work
        design = cls._product_design(formula, data, namespace, absorb, absorb_method, random)
        if design.random.size == 0:
            raise BLPInputError(f"random={random!r} gives no random-coefficient columns")
        if names is not None:
            design.use_nesting_columns(names)
            if design.nesting_levels == 2:
                _refuse_for_two_levels(supply is not None, False, backend)
        limit = _check_execution(chunk_size, threads, backend, client, memory_limit)
        agents = _agent_design(design, agent_data, integration, demographics, namespace)
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
            rc_types=dict(rc_types or {}),
            supply=supply_design,
        )

    rc_types: dict[str, str]
    supply: SupplyDesign | None = None

    def _nests(self) -> tuple[np.ndarray | None, tuple[Any, ...]]:
        """Nest code of each product (the lower nests with two levels) and the nest labels."""
        if self.design.nesting_ids is None:
            return None, ()
        if self.design.nesting_levels == 2:
            codes = TwoLevelCodes.from_ids(self.design.nesting_ids)
            return codes.lower, tuple(codes.lower_labels.tolist())
        codes, labels = pd.factorize(pd.Series(self.design.nesting_ids), sort=True)
        return codes.astype(np.intp), tuple(labels.tolist())

    def _lower_to_upper(self) -> np.ndarray | None:
        """Upper nest of each lower nest with two-level ``nesting_ids`` (None otherwise)."""
        if self.design.nesting_ids is None or self.design.nesting_levels != 2:
            return None
        return TwoLevelCodes.from_ids(self.design.nesting_ids).lower_to_upper

    def _check_two_level_support(self, micro: Any = None) -> None:
        """Refuse, before any work, what the two-level RCNL does not support yet."""
        if self._lower_to_upper() is not None:
            _refuse_for_two_levels(self.supply is not None, micro is not None, self.backend)

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
        self._check_two_level_support()
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
            lower_to_upper=self._lower_to_upper(),
        )
        if parameters.two_level:
            check_two_level_rho(parameters.rho, "starting")
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
        self._check_two_level_support(micro)
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
        return MicroBlock.for_design(micro_moments, self.design, self.agents)

    def initial_weighting_matrix(self) -> np.ndarray:
        """(Z'Z/N)⁻¹, block diagonal over the demand and supply instruments."""
        instruments = [("demand", self.design.Z_absorbed)]
        if self.supply is not None:
            instruments.append(("supply", self.supply.Z_absorbed))
        return initial_weighting_matrix(instruments, self.design.nobs)

    @property
    def n_moments(self) -> int:
        """Number of moments (demand, plus supply when there is a supply side)."""
        supply = 0 if self.supply is None else len(self.supply.z_names)
        return len(self.design.z_names) + supply

    @checked_keywords()
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
            K2×K2 lower-triangular starting Σ, the Cholesky root of the random coefficients'
            covariance, as in pyblp (scalar 0: none). Zeros stay fixed at zero, so
            ``numpy.tril(numpy.ones((K2, K2)))`` frees every entry of a full Σ. Nonzero
            entries above the diagonal are an error naming them (pyblp ignores them).
        pi : array-like, optional
            K2×D starting Π. Zeros stay fixed at zero.
        rho : float or array-like, optional
            Starting ρ (one, or one per nest) when products have ``nesting_ids``; with
            two-level nests ``[rho_upper, rho_lower]`` (a 0 fixes that level's ρ at zero).
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
            "gauss-newton", "none", or ``callable(fun, theta0, bounds)``.
            "none" does not optimize: each GMM step is evaluated at the starting values (pyblp's
            ``Optimization('return')``), giving full results there — β concentrated out,
            standard errors, the J statistic and every post-estimation method — for published
            estimates or values fixed by hand. δ must be solvable there (a FixedPointError
            names the markets otherwise; the values are never moved), ``starts`` and
            ``optimizer_options`` are refused, Σ is unbounded unless ``sigma_bounds`` is given
            (as in pyblp, so the Nevo tutorial's σ_sugar < 0 can be evaluated), and
            ``results.info.convergence["converged"]`` says whether the first-order check
            passes at those values (no warning either way).
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
        user_bounds = sigma_bounds is not None or pi_bounds is not None
        if sigma_bounds is None and isinstance(optimizer, str) and optimizer.lower() == "none":
            # Nothing is optimized, so no bound is imposed (nor is one in pyblp's
            # Optimization('return')): published estimates such as the Nevo tutorial's
            # σ_sugar < 0 are evaluated as given.
            sigma_bounds = (-np.inf, np.inf)
        parameters = self.parameters(
            sigma, pi, rho, sigma_bounds=sigma_bounds, pi_bounds=pi_bounds, rho_bounds=rho_bounds
        )
        self._check_two_level_support(micro_moments)
        micro = self.micro_block(micro_moments)
        n_micro = 0 if micro is None else micro.size
        options = gmm_options(self.design, method, W, cov_type, cov_kwds, self.n_moments + n_micro)
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
            verbose=verbose,
            initial_update=check_initial_update(
                initial_update, micro_moments=micro is not None, W_given=options.W is not None
            ),
            supply=self.supply is not None,
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
        estimator = Estimator.for_objective(
            objective,
            settings,
            beta=beta,
            user_bounds=user_bounds,
        )
        results = nonlinear_results(self, estimator.run(), objective, options, settings)
        if parameters.two_level:
            check_two_level_rho(results.demand.rho, "estimated")
        return results


def supply_fit_options() -> list[str]:
    """Keywords of :meth:`BLPRandomCoefficients.fit` that the logit and nested-logit ``fit``
    pass on with a supply side (all but those they set themselves or that need Σ or Π).

    Examples
    --------
    >>> "optimizer" in supply_fit_options(), "sigma" in supply_fit_options()
    (True, False)
    """
    own = {"sigma", "pi", "rho", "sigma_bounds", "pi_bounds", "beta"}
    own |= {"method", "W", "cov_type", "cov_kwds"}
    names = list(inspect.signature(BLPRandomCoefficients.fit).parameters)[1:]
    return [name for name in names if name not in own]


def _refuse_for_two_levels(supply: bool, micro: bool, backend: str) -> None:
    """Raise for what the two-level RCNL does not support yet: a supply side, micro moments
    and the Dask backend (their kernels know one level of nests)."""
    refused = []
    if supply:
        refused.append("a supply side (supply=)")
    if micro:
        refused.append("micro moments (micro_moments=)")
    if backend != "threads":
        refused.append(f"backend={backend!r}")
    if refused:
        raise BLPInputError(
            "the random-coefficients nested logit with two-level nesting_ids does not "
            f"support {', '.join(refused)} yet: estimate demand alone with the threads "
            "backend, or give one level of nests"
        )


def _check_execution(
    chunk_size: Any, threads: Any, backend: str, client: Any, memory_limit: int | str | None
) -> int | None:
    """Validate where and in what chunks the markets are solved; the memory limit in bytes."""
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
    return limit


def _agent_design(
    design: ProductDesign,
    agent_data: pd.DataFrame | None,
    integration: Any,
    demographics: str | None,
    namespace: Mapping[str, Any],
) -> AgentDesign:
    """The agents: from ``agent_data``, or the nodes and weights of an integration rule."""
    if integration is not None:
        if agent_data is not None:
            raise BLPInputError(
                "give agent_data or integration, not both (put demographics and nodes "
                "together in agent_data; build_integration() makes the nodes)"
            )
        if demographics:
            raise BLPInputError("demographics need agent_data; integration only builds nodes")
    elif agent_data is None:
        raise BLPInputError("random coefficients need agent_data or integration=Integration(...)")
    return AgentDesign.from_data_or_integration(
        agent_data,
        integration,
        design.layout.market_labels,
        design.random.size,
        demographics=demographics,
        context=namespace,
    )
