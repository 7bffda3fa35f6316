"""The results of a nonlinear fit, built from the estimator's :class:`Estimate` record.

The estimator hands back θ, the evaluation there and what the fit went through; here they
become the statsmodels results: the GMM covariance, the parameters in display order (β in
formula order, then γ, then Σ, Π, ρ), the first-stage table, the convergence record, the micro
moments' table and the :class:`~blpmodels.results.demand.DemandSystem` post-estimation works on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from blpmodels.data.products import ProductDesign
from blpmodels.estimation.covariance import gmm_covariance
from blpmodels.estimation.estimator import Estimate
from blpmodels.estimation.gmm import first_stage
from blpmodels.estimation.linear import GMMOptions, safe_inverse
from blpmodels.estimation.objective import NonlinearObjective
from blpmodels.estimation.optimize import check_optimizer
from blpmodels.estimation.settings import FitSettings
from blpmodels.models.base import BLPModel
from blpmodels.results.demand import DemandSystem
from blpmodels.results.results import BLPResultsWrapper, EstimationInfo
from blpmodels.results.two_level_demand import TwoLevelRandomDemand

__all__ = ["nonlinear_results"]


def nonlinear_results(
    model: BLPModel,
    estimate: Estimate,
    objective: NonlinearObjective,
    options: GMMOptions,
    settings: FitSettings,
) -> BLPResultsWrapper:
    """Covariance, first-stage diagnostics and the demand system from an :class:`Estimate`.

    Parameters
    ----------
    model : BLPModel
        The fitted model (the results label its parameters).
    estimate : Estimate
        What :meth:`~blpmodels.estimation.estimator.Estimator.run` found.
    objective : NonlinearObjective
        The fit's objective, at its final weighting matrix.
    options : GMMOptions
        Method, covariance type and the moment covariance of the fit.
    settings : FitSettings
        The optimizer settings, recorded in ``results.info.convergence``.

    Returns
    -------
    BLPResultsWrapper
        β in formula order, then ``gamma[...]``, then the free entries of Σ, Π and ρ.
    """
    design = model.design
    final = estimate.evaluation
    parameters = objective.parameters
    S = objective.moment_covariance(final)
    cov = gmm_covariance(objective.moment_jacobian(final), objective.W, S, design.nobs)
    gamma = np.zeros(0) if final.gamma is None else final.gamma
    # The estimator's order is (concentrated β, γ, Σ Π ρ, β of price columns); results
    # list β in formula order, then γ, then Σ, Π, ρ.
    order = _display_order(objective, gamma.size, parameters.size)
    cov = cov[np.ix_(order, order)]
    info = EstimationInfo(
        method=options.method,
        cov_type=options.cov_type,
        objective=final.objective,
        W=objective.W,
        updated_W=safe_inverse(S),
        moment_covariance=S,
        n_moments=objective.gmm.n_moments,
        first_stage=_first_stage_table(design, options),
        convergence=_convergence(estimate, objective, settings),
        timings=estimate.seconds,
        steps=estimate.steps,
        micro=_micro_table(objective, final),
    )
    if objective.supply is not None and estimate.steps:
        _record_supply_outputs(estimate, objective)
    params = np.concatenate([final.beta, gamma, estimate.theta])[order]
    names = [*design.x_names, *_gamma_names(objective), *parameters.names]
    demand = _demand_system(estimate, objective)
    return model._results(params, names, cov, info, demand, final.xi, final.delta)


def _gamma_names(objective: NonlinearObjective) -> list[str]:
    return [] if objective.supply is None else objective.supply.x_names


def _display_order(objective: NonlinearObjective, n_gamma: int, n_theta: int) -> np.ndarray:
    """Positions in the estimator's order of (β in formula order, γ, Σ Π ρ)."""
    kept, moved = objective.kept_columns, objective.moved_columns
    position = np.empty(kept.size + moved.size, dtype=np.intp)
    position[kept] = np.arange(kept.size)
    position[moved] = kept.size + n_gamma + n_theta + np.arange(moved.size)
    return np.concatenate(
        [position, kept.size + np.arange(n_gamma), kept.size + n_gamma + np.arange(n_theta)]
    )


def _first_stage_table(design: ProductDesign, options: GMMOptions) -> pd.DataFrame:
    """F statistics and partial R² of the instrumented regressors (empty without any)."""
    if not design.endog.size:
        return pd.DataFrame(columns=["f_stat", "f_pvalue", "partial_r2", "n_instruments"])
    n_exog = design.exog.size
    return first_stage(
        design.X_absorbed[:, n_exog:],
        design.X_absorbed[:, :n_exog],
        design.Z_absorbed[:, n_exog:],
        list(design.endog.names),
        options.moment_covariance,
    )


def _demand_system(estimate: Estimate, objective: NonlinearObjective) -> DemandSystem:
    """The estimated demand: β in formula order, δ, the agents and θ (ρ per nest)."""
    design, parameters = objective.design, objective.parameters
    final = estimate.evaluation
    theta, beta_moved = objective.split(estimate.theta)
    beta = np.zeros(len(design.x_names))
    beta[objective.kept_columns] = final.beta
    beta[objective.moved_columns] = beta_moved
    codes = objective.nest_codes
    _, _, rho_values = parameters.unpack(theta)
    if parameters.two_level:
        # Two-level nests: codes are the lower nests, ρ is [ρ_upper, ρ_lower].
        return TwoLevelRandomDemand(
            design,
            beta,
            final.delta,
            agents=objective.agents,
            parameters=parameters,
            theta=theta,
            nest_codes=codes,
            rho=rho_values.copy(),
            chunk_size=objective.chunk_size,
            lower_to_upper=parameters.lower_to_upper,
        )
    n_nests = 0 if codes is None else int(codes.max()) + 1
    return DemandSystem(
        design,
        beta,
        final.delta,
        agents=objective.agents,
        parameters=parameters,
        theta=theta,
        nest_codes=codes,
        rho=None if codes is None else np.broadcast_to(rho_values, (n_nests,)).copy(),
        chunk_size=objective.chunk_size,
    )


def _convergence(
    estimate: Estimate, objective: NonlinearObjective, settings: FitSettings
) -> dict[str, Any]:
    """``results.info.convergence``: the optimizer's report, the checks and the fit's counts."""
    outcome = estimate.outcome
    diagnostics = estimate.diagnostics
    final = estimate.evaluation
    return {
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
        "clipped_costs": _clipped_costs(objective, final),
        "warnings": estimate.warnings,
        "starts": estimate.starts,
        "starts_summary": estimate.starts_summary,
        "bound_checks": estimate.bound_checks,
        "trace": estimate.trace,
    }


def _clipped_costs(objective: NonlinearObjective, final: Any) -> int | None:
    """How many implied costs sit on ``costs_bounds`` at the estimates (None: no supply)."""
    supply = objective.supply
    if supply is None or final.markups is None:
        return None
    return int(supply.clipped(supply.prices - final.markups).sum())


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


def _record_supply_outputs(estimate: Estimate, objective: NonlinearObjective) -> None:
    """γ, ω, markups and costs at the estimates, in the last step's record."""
    final = estimate.evaluation
    supply = objective.supply
    index = objective.design.data.index
    gamma = np.zeros(0) if final.gamma is None else final.gamma
    estimate.steps[-1].update(
        gamma=pd.Series(gamma, index=_gamma_names(objective)),
        omega=pd.Series(final.omega, index=index, name="omega"),
        markups=pd.Series(final.markups, index=index, name="markups"),
        costs=pd.Series(supply.prices - final.markups, index=index, name="costs"),
    )
