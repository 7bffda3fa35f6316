"""Approximate optimal instruments for the demand moments of a fitted BLP model.

Chamberlain's (1987) optimal instruments for the moment E[ξ_jt | z] = 0 are
E[∂ξ_jt/∂(β, θ) | z] Ω⁻¹, with Ω = Var(ξ | z). Reynaert and Verboven (2014) and Conlon and
Gortmaker (2020) make them feasible for BLP demand by evaluating the expectation at the
estimates:

* β on an exogenous column x: ∂ξ/∂β = −x, which is known given z, so the column is its own
  instrument (it is already among the model's instruments).
* β on an instrumented column x(p): ∂ξ/∂β = −x(p); its expectation is approximated by the
  column evaluated at the expected prices, x(E[p | z]).
* θ = (Σ, Π, ρ): ∂ξ/∂θ = ∂δ/∂θ = −(∂s/∂δ)⁻¹ ∂s/∂θ (implicit function theorem), evaluated at
  the shares implied by δ = X1(E[p | z]) β + fixed effects + ξ, with ξ = 0 ("approximate") or
  averaged over draws of ξ ("normal", "empirical"). The shares are computed from δ here; the
  observed shares play no role.

Without a supply side there is no model of prices, so E[p | z] is the fitted value of a
regression of prices on the exogenous characteristics, the excluded instruments and the fixed
effects (:func:`reduced_form_prices`), or whatever the caller passes as ``expected_prices``.
Everything runs on padded ``[T, J, I]`` arrays in the estimated demand's market chunks, through
the same kernel functions as estimation.

With a supply side (pyblp's ``compute_optimal_instruments`` with ``K3 > 0``) θ also holds the
coefficients of X1 columns that read prices, prices are the Bertrand–Nash equilibrium at the
estimated costs f⁻¹(X3γ̂ + ω) with δ = X1(p)β̂ + ξ (ξ = ω = 0 for "approximate", joint draws
of (ξ, ω) otherwise), and at those prices and shares ∂ξ/∂θ and ∂ω/∂θ = −f'(c) ∂η/∂θ (the total
derivative of the markups, δ moving with θ) come from the estimator's own market chunks. Both
are mixed by the inverse sample covariance of (ξ̂, ω̂), as pyblp does.
"""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import pandas as pd

from blpmodels.data.formula import required_variables
from blpmodels.data.products import ProductDesign
from blpmodels.data.supply_design import SupplyDesign
from blpmodels.estimation.objective import NonlinearObjective
from blpmodels.exceptions import BLPInputError, FixedPointError
from blpmodels.kernel import equilibrium
from blpmodels.kernel.chunks import ChunkStep
from blpmodels.kernel.jacobians import rho_jacobian, share_jacobian, theta_jacobian
from blpmodels.kernel.shares import ShareEvaluator
from blpmodels.results.demand import DemandSystem
from blpmodels.results.instrument_refit import OptimalInstruments

__all__ = ["optimal_instruments", "reduced_form_prices"]

Method = Literal["approximate", "normal", "empirical"]
METHODS: tuple[str, ...] = ("approximate", "normal", "empirical")
#: Draws of ξ for the "normal" and "empirical" methods when ``draws`` is not given.
DEFAULT_DRAWS = 100
#: The product-data column that holds prices (the field's convention).
PRICES = "prices"
#: Tolerance on the first-order conditions of the expected (equilibrium) prices with a supply
#: side (max_j |F_j|, in share units; ζ steps alone reach it too).
EQUILIBRIUM_TOL = 1e-15
#: A market's expected prices must also be a fixed point of the ζ-markup map:
#: |p − c − ζ(p)| / max(1, |p|) below this (pyblp stops its ζ iteration at steps of 1e-12).
ZETA_TOL = 1e-10


@dataclass(frozen=True, eq=False)
class _Fitted:
    """The pieces of a fitted results object that optimal instruments need."""

    design: ProductDesign
    demand: DemandSystem
    xi: np.ndarray
    theta_names: list[str]
    kind: Literal["logit", "nested_logit", "random"]
    supply: SupplyDesign | None = None


def optimal_instruments(
    results: Any,
    method: Method = "approximate",
    *,
    draws: int | None = None,
    seed: int | np.random.Generator | None = None,
    expected_prices: Any = None,
) -> pd.DataFrame:
    """Feasible optimal instruments E[∂ξ/∂(β, θ) | z] for the demand moments.

    One column per instrumented linear parameter and one per nonlinear parameter, ready to
    replace the excluded instruments of the model: the exogenous characteristics stay in the
    formula and remain their own instruments.

    * ``optimal_<x>`` for each instrumented column x of X1: x evaluated at the expected prices
      (``optimal_prices`` is E[p | z] itself). This is E[∂ξ/∂β | z] up to its sign, which does
      not change IV estimates.
    * ``optimal_<parameter>`` for each free entry of Σ, Π and ρ (``sigma[prices,prices]`` gives
      ``optimal_sigma_prices_prices``; ``rho`` gives ``optimal_rho``): E[∂ξ/∂θ | z] divided by
      the sample variance of ξ̂ (Ω⁻¹ under homoskedasticity, as pyblp scales them; the scale
      does not change estimates either).

    With absorbed fixed effects the columns are ∂ξ/∂θ before absorption (∂δ/∂θ per market, as
    pyblp reports them); a model built with them absorbs them like any instrument, and since
    absorption is a projection, Z̃'ξ̃ is the same whether the columns are absorbed before or
    not. The expected prices include the fixed effects' part of prices.

    The results come from :class:`~blpmodels.BLPLogit`, :class:`~blpmodels.BLPNestedLogit` or
    :class:`~blpmodels.BLPRandomCoefficients` (RCNL included), with or without a supply side.

    **With a supply side** (pyblp's instruments for both moment blocks) θ also holds the
    coefficients of the X1 columns that read prices, and the columns are:

    * ``optimal_<parameter>`` (demand) and ``optimal_supply_<parameter>`` (cost equation) for
      each θ entry: Σ⁻¹ [E[∂ξ/∂θ | z]; E[∂ω/∂θ | z]] with Σ the sample covariance of (ξ̂, ω̂)
      (``np.cov``), so each block mixes both Jacobians;
    * ``supply_shifter_<x>`` for cost characteristics that are not in X1 (demand instruments)
      and ``demand_shifter_<x>`` for exogenous X1 characteristics that are not in X3 (supply
      instruments), as pyblp's ``to_problem`` adds them; constants are left out.

    E[p | z] is the Bertrand–Nash equilibrium (firms of the product data) at the estimated
    costs f⁻¹(X3γ̂ + ω) and δ = X1(p)β̂ + ξ, with ξ = ω = 0 ("approximate") or averaged over
    joint draws of (ξ, ω) (normal with their sample covariance, or rows resampled together).
    ``expected_prices``, when given, replaces the equilibrium in every draw (as in pyblp). At
    each realization's prices and shares, ∂ξ/∂θ is ∂δ/∂θ (−x for a coefficient on an X1 column
    x that reads prices) and ∂ω/∂θ = −f'(c) ∂η/∂θ, the markups' total derivative with δ moving
    along ∂δ/∂θ. ``attrs`` then also holds ``"expected_shares"``, ``"xi_jacobian"`` and
    ``"omega_jacobian"`` (dicts of one list per θ entry: ``pd.DataFrame(attrs["xi_jacobian"],
    index=instruments.index)`` makes the frame), ``"inverse_covariance"`` (Σ⁻¹, nested lists)
    and the columns of each block, ``"demand_columns"`` and ``"supply_columns"``, which
    ``to_model()`` and ``refit()`` use.

    Parameters
    ----------
    results : BLPResults
        A fitted demand model.
    method : {"approximate", "normal", "empirical"}
        How the expectation over ξ is taken: evaluate at ξ = 0 ("approximate", the default);
        average over ``draws`` vectors of ξ drawn i.i.d. from a normal with the variance of ξ̂
        ("normal") or resampled with replacement from ξ̂ ("empirical").
    draws : int, optional
        Draws of ξ for "normal" and "empirical" (default 100); not used by "approximate".
    seed : int or numpy.random.Generator, optional
        Seed of :func:`numpy.random.default_rng` for the draws; not used by "approximate".
    expected_prices : array-like or pandas.Series, optional
        E[p | z], one value per product row (a Series must carry the product data's index).
        By default :func:`reduced_form_prices` (the equilibrium prices with a supply side).
        Only for models that instrument ``prices`` or have a supply side.

    Returns
    -------
    OptimalInstruments
        A :class:`pandas.DataFrame` with one row per product row, indexed like the product
        data, so ``data.join(instruments)`` aligns them. ``attrs`` holds ``"expected_prices"``
        (a list in the rows' order, or None when the model does not instrument prices),
        ``"method"``, ``"draws"`` and ``"parameters"`` (column → parameter name): plain Python
        values, so that pandas can compare and copy them (``pd.concat`` of two such frames,
        ``.copy()``); ``pd.Series(attrs["expected_prices"], index=instruments.index)`` makes
        the Series. Its ``refit()``
        re-estimates the model with these instruments from the estimates, and ``to_model()``
        returns that model unfitted (pyblp's ``to_problem``); see
        :class:`~blpmodels.results.instrument_refit.OptimalInstruments`.

    Raises
    ------
    BLPInputError
        An unknown ``method``; ``draws`` or ``seed`` given for "approximate" or not a positive
        integer / a valid seed; ``expected_prices`` of the wrong length, misaligned, not numeric
        or not finite, or given for a demand-only model that does not instrument prices;
        results that are not a fitted blpmodels demand model; instrumented regressors that do
        not read ``prices`` (demand only).
    FixedPointError
        With a supply side: equilibrium prices or δ that do not converge in some markets
        (named).

    Examples
    --------
    The logit on simulated data: the optimal instrument for prices is E[p | z].

    >>> from blpmodels import BLPLogit
    >>> from blpmodels.simulation import simulate_logit
    >>> products = simulate_logit(n_markets=50, n_products=5, seed=0).products
    >>> results = BLPLogit.from_formula(
    ...     "shares ~ 1 + x + [prices ~ cost_shifter]", products).fit()
    >>> instruments = optimal_instruments(results)
    >>> list(instruments.columns)
    ['optimal_prices']
    >>> bool(np.allclose(instruments["optimal_prices"], instruments.attrs["expected_prices"]))
    True
    >>> again = BLPLogit.from_formula(
    ...     "shares ~ 1 + x + [prices ~ optimal_prices]", products.join(instruments)).fit()
    >>> bool(np.isclose(again.params["prices"], results.params["prices"]))
    True

    Random coefficients (Mixtape exercise 2, question 5), re-estimated with the instruments:

    >>> instruments = optimal_instruments(q5)  # doctest: +SKIP
    >>> list(instruments.columns)  # doctest: +SKIP
    ['optimal_prices', 'optimal_sigma_prices_prices', 'optimal_pi_mushy_log_income',
     'optimal_pi_prices_log_income']
    >>> formula = "shares ~ 0 + [prices ~ " + " + ".join(instruments.columns) + "]"
    >>> model = BLPRandomCoefficients.from_formula(
    ...     formula, products.join(instruments), absorb="C(market_ids) + C(product_ids)",
    ...     random="0 + mushy + prices", demographics="0 + log_income",
    ...     agent_data=agents)  # doctest: +SKIP

    With a supply side (pyblp's BLP automobile tutorial), both blocks, then the refit:

    >>> instruments = autos_results.optimal_instruments()  # doctest: +SKIP
    >>> instruments.attrs["supply_columns"][:2]  # doctest: +SKIP
    ['optimal_supply_sigma_Intercept_Intercept', 'optimal_supply_sigma_hpwt_hpwt']
    >>> refit = instruments.refit()  # doctest: +SKIP
    """
    fitted = _fitted(results)
    method = _check_method(method)
    n_draws, rng = _check_draws_and_seed(method, draws, seed)
    design = fitted.design
    if fitted.supply is not None:
        given = None
        if expected_prices is not None:
            given = _check_expected_prices(expected_prices, design)
        return _supply_instruments(results, fitted, method, n_draws, rng, given)
    instrumented = _prices_instrumented(design)
    if expected_prices is not None:
        if not instrumented:
            raise BLPInputError(
                "expected_prices was given but the model does not instrument prices: "
                "exogenous prices are their own expected value"
            )
        expected = _check_expected_prices(expected_prices, design)
    elif instrumented:
        expected = reduced_form_prices(results).to_numpy()
    else:
        expected = None

    frame = design.data
    if expected is not None:
        frame = frame.copy()
        frame[PRICES] = expected
    endog_columns = design.endog.rebuild(frame, design.context) if design.endog.size else None
    columns: dict[str, np.ndarray] = {}
    parameters: dict[str, str] = {}
    for position, name in enumerate(design.endog.names):
        assert endog_columns is not None
        label = _column_name(name, columns)
        columns[label] = endog_columns[:, position]
        parameters[label] = name
    if fitted.theta_names:
        jacobian = _expected_delta_jacobian(fitted, frame, expected, method, n_draws, rng)
        variance = float(np.var(fitted.xi))
        for position, name in enumerate(fitted.theta_names):
            label = _column_name(name, columns)
            columns[label] = jacobian[:, position] / variance
            parameters[label] = name
    out = OptimalInstruments(columns, index=design.data.index, fit=results)
    out.attrs.update(
        expected_prices=None if expected is None else _plain(expected),
        method=method,
        draws=n_draws,
        parameters=parameters,
    )
    return out


def reduced_form_prices(results: Any) -> pd.Series:
    """E[p | z] for a demand-only model: prices regressed on all exogenous variables.

    The regressors are the model's instruments Z (exogenous characteristics and excluded
    instruments) and its absorbed fixed effects; the fitted values include the fixed effects'
    part. This is the default ``expected_prices`` of :func:`optimal_instruments` (as in pyblp
    without a supply side). With a supply side, E[p | z] would instead be the equilibrium
    prices at ω = 0 and ξ = 0; pass those as ``expected_prices``.

    Parameters
    ----------
    results : BLPResults
        A fitted demand model whose instrumented regressors read ``prices``.

    Returns
    -------
    pandas.Series
        Expected prices, indexed like the product data.

    Raises
    ------
    BLPInputError
        Results that are not a fitted blpmodels demand model, or a model that does not
        instrument prices.

    Examples
    --------
    >>> from blpmodels import BLPLogit
    >>> from blpmodels.simulation import simulate_logit
    >>> products = simulate_logit(n_markets=20, n_products=4, seed=0).products
    >>> results = BLPLogit.from_formula(
    ...     "shares ~ 1 + x + [prices ~ cost_shifter]", products).fit()
    >>> expected = reduced_form_prices(results)
    >>> bool(np.isclose(expected.mean(), products["prices"].mean()))
    True
    """
    design = _fitted(results).design
    if not _prices_instrumented(design):
        raise BLPInputError(
            "the model does not instrument prices, so there is no reduced form for them: "
            "exogenous prices are their own expected value"
        )
    prices = design.data[PRICES].to_numpy(dtype=np.float64)
    absorbed = design.residualize(prices)
    Z = design.Z_absorbed
    coefficients, *_ = np.linalg.lstsq(Z, absorbed, rcond=None)
    # prices − absorbed prices is the fixed effects' part, which the regression keeps.
    fitted = Z @ coefficients + (prices - absorbed)
    return pd.Series(fitted, index=design.data.index, name="expected_prices")


# ---------------------------------------------------------------------------------- checks


def _fitted(results: Any) -> _Fitted:
    """The design, demand and ξ of a fitted results object (statsmodels wrapper or not)."""
    inner = getattr(results, "_results", results)
    demand = getattr(inner, "demand", None)
    model = getattr(inner, "model", None)
    design = getattr(model, "design", None)
    if not isinstance(demand, DemandSystem) or not isinstance(design, ProductDesign):
        raise BLPInputError(
            "results must be a fitted blpmodels demand model (BLPLogit, BLPNestedLogit or "
            f"BLPRandomCoefficients results), got {type(results).__name__}"
        )
    if getattr(demand, "lower_to_upper", None) is not None:
        # The instruments' kernel (∂s/∂δ, ∂s/∂θ, ∂s/∂ρ) knows one level of nests only.
        raise BLPInputError(
            "optimal_instruments does not support two-level nesting_ids yet (nested logit or "
            "RCNL): give one level of nests"
        )
    supply = getattr(model, "supply", None)
    xi = np.asarray(inner.resid, dtype=np.float64)
    n_linear = design.X.shape[1]
    if demand.parameters is not None:
        kind: Literal["logit", "nested_logit", "random"] = "random"
        theta_names = list(demand.parameters.names)
    elif demand.rho is not None and demand.nest_codes is not None:
        kind = "nested_logit"
        theta_names = [str(name) for name in inner.model.data.param_names[n_linear:]]
    else:
        kind = "logit"
        theta_names = []
    if supply is not None:
        if not isinstance(supply, SupplyDesign) or demand.parameters is None:
            raise BLPInputError(
                "results with a supply side must come from a blpmodels fit with supply= "
                f"(got a model whose supply is {type(supply).__name__})"
            )
        return _Fitted(design, demand, xi, list(demand.parameters.names), "random", supply)
    return _Fitted(design, demand, xi, theta_names, kind)


def _check_method(method: Any) -> str:
    if not isinstance(method, str) or method not in METHODS:
        raise BLPInputError(f"method must be one of {METHODS}, got {method!r}")
    return method


def _check_draws_and_seed(
    method: str, draws: Any, seed: Any
) -> tuple[int, np.random.Generator | None]:
    if method == "approximate":
        # Evaluated at ξ = 0: draws and a seed would silently do nothing.
        for name, value in (("draws", draws), ("seed", seed)):
            if value is not None:
                raise BLPInputError(
                    f"{name} is only used by method='normal' or 'empirical'; method='approximate' "
                    "evaluates at xi = 0"
                )
        return 1, None
    if draws is None:
        draws = DEFAULT_DRAWS
    if isinstance(draws, bool) or not isinstance(draws, numbers.Integral) or draws < 1:
        raise BLPInputError(f"draws must be a positive integer, got {draws!r}")
    if isinstance(seed, np.random.Generator):
        return int(draws), seed
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0
    ):
        raise BLPInputError(
            f"seed must be None, a non-negative integer or a numpy Generator, got {seed!r}"
        )
    return int(draws), np.random.default_rng(None if seed is None else int(seed))


def _reads(block: Any, design: ProductDesign, variable: str) -> bool:
    """Whether a design block reads the product-data column ``variable``."""
    if block.columns_only:
        return variable in block.names
    if block.formula:
        return variable in required_variables(block.formula) - set(design.context)
    return False


def _prices_instrumented(design: ProductDesign) -> bool:
    """Whether the instrumented regressors are functions of prices (raise if not of prices)."""
    if not design.endog.size:
        return False
    if not _reads(design.endog, design, PRICES):
        raise BLPInputError(
            f"the instrumented regressors {list(design.endog.names)} do not read a "
            f"{PRICES!r} column: optimal instruments take prices as the endogenous variable "
            "(its expected value given the instruments); other endogenous variables are not "
            "supported"
        )
    return True


def _check_expected_prices(values: Any, design: ProductDesign) -> np.ndarray:
    n = design.nobs
    if isinstance(values, pd.DataFrame):
        if values.shape[1] != 1:
            raise BLPInputError(
                f"expected_prices must be one column, got a DataFrame with {values.shape[1]}"
            )
        values = values.iloc[:, 0]
    if isinstance(values, pd.Series):
        index = design.data.index
        if len(values) != n:
            raise BLPInputError(f"expected_prices has {len(values)} rows but the model has {n}")
        if not values.index.equals(index):
            if values.index.has_duplicates or not values.index.sort_values().equals(
                index.sort_values()
            ):
                raise BLPInputError(
                    "expected_prices is not aligned with the product data: its index must hold "
                    "the product data's index labels (or pass a numpy array in row order)"
                )
            values = values.reindex(index)
    if isinstance(values, pd.Series) and not (
        pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype)
    ):
        raise BLPInputError(f"expected_prices must be numbers, got dtype {values.dtype}")
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise BLPInputError("expected_prices must be numbers") from error
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.shape != (n,):
        raise BLPInputError(f"expected_prices must have shape ({n},), got {array.shape}")
    bad = ~np.isfinite(array)
    if bad.any():
        row = design.data.index[int(np.flatnonzero(bad)[0])]
        raise BLPInputError(
            f"expected_prices has {int(bad.sum())} missing or non-finite values (first at row "
            f"{row!r})"
        )
    return array


def _column_name(name: str, taken: dict[str, Any], prefix: str = "optimal_") -> str:
    """``optimal_<name>`` with characters formulas cannot read turned into underscores."""
    stem = prefix + (re.sub(r"[^0-9A-Za-z_]+", "_", str(name)).strip("_") or "column")
    label, count = stem, 1
    while label in taken:
        count += 1
        label = f"{stem}_{count}"
    return label


# ---------------------------------------------------------------------------------- kernel


def _xi_draws(
    xi: np.ndarray, method: str, draws: int, rng: np.random.Generator | None
) -> list[np.ndarray | None]:
    """Realizations of ξ: none (ξ = 0) or ``draws`` vectors over all product rows."""
    if method == "approximate":
        return [None]
    assert rng is not None
    n = xi.size
    if method == "normal":
        scale = float(np.std(xi))
        return [rng.normal(0.0, scale, n) for _ in range(draws)]
    return [xi[rng.integers(0, n, n)] for _ in range(draws)]


def _expected_delta_jacobian(
    fitted: _Fitted,
    frame: pd.DataFrame,
    expected: np.ndarray | None,
    method: str,
    draws: int,
    rng: np.random.Generator | None,
) -> np.ndarray:
    """``(N, P)`` ∂δ/∂θ averaged over ξ realizations, at the expected prices."""
    design, demand = fitted.design, fitted.demand
    layout = design.layout
    n = design.nobs
    rows = np.arange(n)
    # δ − ξ̂ = X1β + fixed effects; inputs() moves it to the expected prices (X1 and X2).
    base = replace(demand, delta=demand.delta - fitted.xi)
    changed = None if expected is None else frame
    if design.random.size:
        x2 = (
            design.random.values
            if changed is None
            else design.random.rebuild(frame, design.context)
        )
        characteristics = layout.pad(x2)
    else:
        characteristics = None
    # Padded once: every chunk reads its markets' slice of each realization.
    realizations = [
        None if xi is None else layout.pad(xi) for xi in _xi_draws(fitted.xi, method, draws, rng)
    ]
    n_theta = len(fitted.theta_names)
    padded = np.zeros((layout.n_markets, layout.width, n_theta))
    for chunk in demand.chunks(np.arange(layout.n_markets)):
        inputs = base.inputs(chunk, changed, None if changed is None else rows)
        evaluator = ShareEvaluator(inputs.mu, inputs.weights, inputs.mask, inputs.nesting)
        for xi in realizations:
            delta = inputs.delta
            if xi is not None:
                delta = delta + xi[chunk]
            padded[chunk] += _chunk_jacobian(
                fitted, evaluator, inputs, delta, characteristics, chunk
            ) / len(realizations)
    return layout.flatten(padded)


def _chunk_jacobian(
    fitted: _Fitted,
    evaluator: ShareEvaluator,
    inputs: Any,
    delta: np.ndarray,
    characteristics: np.ndarray | None,
    chunk: np.ndarray,
) -> np.ndarray:
    """∂δ/∂θ = −(∂s/∂δ)⁻¹ ∂s/∂θ in one chunk of markets at mean utilities ``delta``."""
    mask, weights, nesting = inputs.mask, inputs.weights, inputs.nesting
    n_theta = len(fitted.theta_names)
    probabilities = evaluator.probabilities(delta, factored=True)
    by_delta = share_jacobian(probabilities, weights, nesting, mask)
    by_theta = np.zeros((*mask.shape, n_theta))
    parameters = fitted.demand.parameters
    if fitted.kind == "random":
        assert parameters is not None and characteristics is not None
        agents = fitted.demand.agents
        assert agents is not None
        if parameters.random_positions().size:
            factors, positions = parameters.agent_factors(
                inputs.coefficients, agents.nodes[chunk], agents.demographics[chunk]
            )
            pieces = theta_jacobian(
                probabilities, weights, nesting, mask, characteristics[chunk], factors
            )
            for piece, columns in zip(pieces, positions, strict=True):
                by_theta[:, :, columns] = piece
        rho_positions = parameters.rho_positions()
        if rho_positions.size:
            by_rho = rho_jacobian(probabilities, delta, inputs.mu, weights, nesting, mask)
            if parameters.rho.size == 1:
                by_rho = by_rho.sum(axis=2, keepdims=True)
            free = [row for kind, row, _ in parameters.kinds if kind == "rho"]
            by_theta[:, :, rho_positions] = by_rho[:, :, free]
    else:  # closed-form nested logit: θ is ρ, one shared by all nests or one per nest
        by_rho = rho_jacobian(probabilities, delta, inputs.mu, weights, nesting, mask)
        by_theta = by_rho.sum(axis=2, keepdims=True) if n_theta == 1 else by_rho
    # Padded products get an identity row so the batched solve stays regular.
    index = np.arange(mask.shape[1])
    by_delta[:, index, index] += ~mask
    jacobian = -np.linalg.solve(by_delta, by_theta)
    return np.where(mask[:, :, None], jacobian, 0.0)


# ---------------------------------------------------------------------------------- supply


@dataclass(frozen=True, eq=False)
class _SupplyParts:
    """The cost side at the estimates, and the objective whose chunks give the Jacobians.

    ``base`` is f(c) − ω̂ = X3γ̂ (plus cost fixed effects): the transformed costs at ω = 0.
    ``theta`` is the objective's θ at the estimates: the free entries of Σ, Π and ρ, then the
    coefficients of the X1 columns that read prices (they enter the markups, so with a supply
    side they are in θ, as in pyblp).
    """

    design: SupplyDesign
    omega: np.ndarray
    base: np.ndarray
    objective: NonlinearObjective
    theta: np.ndarray
    names: list[str]


def _supply_parts(results: Any, fitted: _Fitted) -> _SupplyParts:
    """ω̂, f(c) − ω̂ and a :class:`NonlinearObjective` of the fit's demand and cost side."""
    inner = getattr(results, "_results", results)
    supply, demand, design = fitted.supply, fitted.demand, fitted.design
    assert supply is not None and demand.parameters is not None and demand.agents is not None
    steps = getattr(getattr(inner, "info", None), "steps", None) or [{}]
    if "omega" not in steps[-1] or "costs" not in steps[-1]:
        raise BLPInputError(
            "the results carry no cost shocks omega (results.info.steps[-1]['omega']): refit "
            "the model with its supply side"
        )
    omega = np.asarray(steps[-1]["omega"], dtype=np.float64)
    values, _ = supply.transform(np.asarray(steps[-1]["costs"], dtype=np.float64))
    parameters = demand.parameters
    nested = parameters.has_rho and demand.nest_codes is not None
    n_moments = design.Z_absorbed.shape[1] + supply.Z_absorbed.shape[1]
    # W is never used: only the objective's market chunks (δ, ∂δ/∂θ, η, ∂η/∂θ) are.
    objective = NonlinearObjective(
        design,
        demand.agents,
        parameters,
        np.eye(n_moments),
        nest_codes=demand.nest_codes if nested else None,
        chunk_size=demand.chunk_size,
        threads=1,
        supply=supply,
    )
    moved = objective.moved_columns
    theta = np.concatenate([np.asarray(demand.theta, dtype=np.float64), demand.beta[moved]])
    names = [*parameters.names, *objective.moved_names]
    return _SupplyParts(supply, omega, values - omega, objective, theta, names)


def _supply_draws(
    xi: np.ndarray, omega: np.ndarray, method: str, draws: int, rng: np.random.Generator | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Joint realizations of (ξ, ω): zeros, normal with their sample covariance, or rows
    resampled together (pyblp's methods with a supply side)."""
    if method == "approximate":
        return [(np.zeros_like(xi), np.zeros_like(omega))]
    assert rng is not None
    n = xi.size
    if method == "normal":
        covariance = np.cov(xi, omega)
        pairs = [rng.multivariate_normal(np.zeros(2), covariance, n) for _ in range(draws)]
        return [(pair[:, 0], pair[:, 1]) for pair in pairs]
    rows = [rng.integers(0, n, n) for _ in range(draws)]
    return [(xi[chosen], omega[chosen]) for chosen in rows]


def _supply_instruments(
    results: Any,
    fitted: _Fitted,
    method: str,
    draws: int,
    rng: np.random.Generator | None,
    given: np.ndarray | None,
) -> OptimalInstruments:
    """Demand and supply optimal instruments Σ⁻¹ E[(∂ξ/∂θ, ∂ω/∂θ) | z] (see
    :func:`optimal_instruments`)."""
    parts = _supply_parts(results, fitted)
    n, n_theta = fitted.design.nobs, parts.theta.size
    prices = np.zeros(n)
    shares = np.zeros(n)
    xi_jacobian = np.zeros((n, n_theta))
    omega_jacobian = np.zeros((n, n_theta))
    realizations = _supply_draws(fitted.xi, parts.omega, method, draws, rng)
    for xi, omega in realizations:
        realized = _supply_realization(fitted, parts, xi, omega, given)
        for total, value in zip(
            (prices, shares, xi_jacobian, omega_jacobian), realized, strict=True
        ):
            total += value / len(realizations)
    # pyblp's normalization: the inverse sample covariance of (ξ̂, ω̂) mixes both Jacobians.
    inverse = np.linalg.inv(np.cov(fitted.xi, parts.omega))
    demand_block = inverse[0, 0] * xi_jacobian + inverse[0, 1] * omega_jacobian
    supply_block = inverse[1, 0] * xi_jacobian + inverse[1, 1] * omega_jacobian
    columns: dict[str, np.ndarray] = {}
    parameters: dict[str, str] = {}
    demand_columns, supply_columns = [], []
    for block, prefix, listing in (
        (demand_block, "", demand_columns),
        (supply_block, "supply_", supply_columns),
    ):
        for position, name in enumerate(parts.names):
            label = _column_name(prefix + name, columns)
            columns[label] = block[:, position]
            parameters[label] = name
            listing.append(label)
    for label, values in _shifters(fitted.design, parts).items():
        label = _column_name(label, columns, prefix="")
        columns[label] = values
        (demand_columns if label.startswith("supply_shifter") else supply_columns).append(label)
    index = fitted.design.data.index
    out = OptimalInstruments(columns, index=index, fit=results)
    out.attrs.update(
        expected_prices=_plain(prices),
        expected_shares=_plain(shares),
        method=method,
        draws=draws,
        parameters=parameters,
        demand_columns=demand_columns,
        supply_columns=supply_columns,
        xi_jacobian=dict(zip(parts.names, _plain(xi_jacobian.T), strict=True)),
        omega_jacobian=dict(zip(parts.names, _plain(omega_jacobian.T), strict=True)),
        inverse_covariance=_plain(inverse),
    )
    return out


def _plain(values: np.ndarray) -> list[Any]:
    """Python floats (nested lists for a matrix) for ``attrs``.

    pandas compares the ``attrs`` of the frames it concatenates with ``==`` and needs one
    bool: a Series or an array there makes ``pd.concat`` raise "the truth value of a Series is
    ambiguous". Lists compare as one bool and deep-copy with ``.copy()``.
    """
    return np.asarray(values, dtype=np.float64).tolist()


def _shifters(design: ProductDesign, parts: _SupplyParts) -> dict[str, np.ndarray]:
    """pyblp's shifters: cost characteristics not in X1 (``supply_shifter_<x>``, demand
    instruments) and demand characteristics not in X3 (``demand_shifter_<x>``, supply
    instruments); neither constants nor X1 columns that read prices."""
    exog_x1 = list(design.exog.names)
    exog_x3 = list(parts.design.exog.names)
    moved = {design.x_names[k] for k in parts.objective.moved_columns}
    constant = {"Intercept", "1"}
    out: dict[str, np.ndarray] = {}
    for position, name in enumerate(exog_x3):
        if name not in constant and name not in exog_x1:
            out["supply_shifter_" + name] = parts.design.exog.values[:, position]
    for position, name in enumerate(exog_x1):
        if name not in constant and name not in exog_x3 and name not in moved:
            out["demand_shifter_" + name] = design.exog.values[:, position]
    return dict(sorted(out.items()))


def _supply_realization(
    fitted: _Fitted,
    parts: _SupplyParts,
    xi: np.ndarray,
    omega: np.ndarray,
    given: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Prices, shares, ∂ξ/∂θ and ∂ω/∂θ of one realization of (ξ, ω).

    Costs are f⁻¹(X3γ̂ + ω); prices solve the Bertrand–Nash equilibrium with δ = X1(p)β̂ + ξ
    (or are ``given``). At those prices and shares, δ(θ) solves s(δ, θ) = s, so ∂ξ/∂θ is
    ∂δ/∂θ by the implicit function theorem (−x for a coefficient on an X1 column that reads
    prices), and ∂ω/∂θ = −f'(c) ∂η/∂θ with the total derivative of the markups, δ moving along
    ∂δ/∂θ: the estimator's own chunk computation, at the realization's data.
    """
    design, supply = fitted.design, parts.design
    demand = replace(fitted.demand, delta=fitted.demand.delta - fitted.xi + xi)
    transformed = parts.base + omega
    costs = transformed if supply.costs_type == "linear" else np.exp(transformed)
    frame = design.data.copy()
    if given is None:
        prices, shares = _equilibrium(demand, costs, supply, design)
        frame[supply.price_column] = prices
        x1, x2 = demand.rebuild(frame)
    else:
        prices = given
        frame[supply.price_column] = prices
        x1, x2 = demand.rebuild(frame)
        shares = demand.shares(frame, np.arange(design.nobs), (x1, x2))
    delta = demand.delta + (x1 - design.X) @ demand.beta
    xi_jacobian, eta_jacobian = _chunk_jacobians(parts, design, frame, x2, shares, delta)
    moved = parts.objective.moved_columns
    xi_jacobian[:, parts.theta.size - moved.size :] = -x1[:, moved]
    slope = np.ones_like(costs) if supply.costs_type == "linear" else 1.0 / costs
    return prices, shares, xi_jacobian, -slope[:, None] * eta_jacobian


def _equilibrium(
    demand: DemandSystem, costs: np.ndarray, supply: SupplyDesign, design: ProductDesign
) -> tuple[np.ndarray, np.ndarray]:
    """Bertrand–Nash prices and shares at ``costs`` (firms of the product data), chunk by
    chunk, from the observed prices.

    A market counts as solved when its prices are a fixed point of the ζ-markup map,
    |p − c − ζ(p)| small in price units (pyblp's criterion), not only when the first-order
    conditions are small: in a market of the BLP automobile data the Newton finish of
    :func:`~blpmodels.kernel.equilibrium.solve_prices` stopped at a product priced out of the
    market (price 5,064, share 2.5e-15), where every term of the conditions is below 1e-13 but
    |η − ζ| is 4e3. Such markets are solved again by ζ steps alone, which reach pyblp's price.
    """
    layout = design.layout
    padded = layout.pad(costs)
    prices = np.zeros(design.nobs)
    shares = np.zeros(design.nobs)
    failed: list[Any] = []
    for chunk in demand.chunks(np.arange(layout.n_markets)):
        solved, priced, solution = _solve_markets(demand, chunk, padded, supply, newton=True)
        pieces = [(solved, priced, solution)]
        if not solved.all():
            retry = chunk[~solved]
            pieces.append(_solve_markets(demand, retry, padded, supply, newton=False))
            failed.extend(layout.market_labels[retry[~pieces[-1][0]]].tolist())
        # The retried markets overwrite their first attempt.
        for _, piece, result in pieces:
            mask = piece.inputs.mask
            rows = piece.inputs.rows[mask]
            prices[rows] = result.prices[mask]
            shares[rows] = result.state.shares[mask]
    if failed:
        raise FixedPointError(
            f"the expected prices (the equilibrium at the estimated costs with xi = omega = 0 "
            f"or at a draw) did not converge in {len(failed)} market(s): {failed[:10]}; pass "
            "expected_prices"
        )
    return prices, shares


def _solve_markets(
    demand: DemandSystem,
    markets: np.ndarray,
    padded_costs: np.ndarray,
    supply: SupplyDesign,
    newton: bool,
) -> tuple[np.ndarray, Any, equilibrium.EquilibriumSolution]:
    """Equilibrium in some markets (with a Newton finish, or ζ steps only), and which of them
    are ζ-markup fixed points."""
    priced = demand.priced(markets, variable=supply.price_column)
    mask = priced.inputs.mask
    costs = np.where(mask, padded_costs[markets], 0.0)
    ownership = supply.ownership[markets]
    solution = equilibrium.solve_prices(
        priced.state,
        costs,
        priced.prices,
        ownership,
        mask,
        tol=EQUILIBRIUM_TOL,
        newton_below=1e-4 if newton else 0.0,
    )
    eta = np.where(mask, solution.prices - costs, 0.0)
    zeta = equilibrium.zeta_markups(solution.state, ownership, eta)
    gap = np.where(mask, np.abs(eta - zeta) / np.maximum(1.0, np.abs(solution.prices)), 0.0)
    return solution.converged & (gap.max(axis=1) < ZETA_TOL), priced, solution


def _chunk_jacobians(
    parts: _SupplyParts,
    design: ProductDesign,
    frame: pd.DataFrame,
    x2: np.ndarray,
    shares: np.ndarray,
    delta: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``(N, P)`` ∂δ/∂θ and ∂η/∂θ at the realization, from the estimator's market chunks.

    The objective's data are set to the realization (shares, X2 and the price derivatives of
    X1 and X2 at its prices) and every chunk starts at its δ, so the δ solve returns at once.
    """
    objective = parts.objective
    layout = design.layout
    price = parts.design.price_column
    objective.log_shares = layout.pad(np.log(shares))
    if design.random.size:
        objective.characteristics = layout.pad(x2)
    objective.logit_delta = layout.pad(delta)
    d_x1 = np.column_stack(
        [
            design.exog.derivative(frame, price, design.context),
            design.endog.derivative(frame, price, design.context),
        ]
    )
    objective.price_x1 = layout.pad(d_x1[:, objective.moved_columns])
    objective.price_x2 = layout.pad(design.random.derivative(frame, price, design.context))
    shape = (layout.n_markets, layout.width, parts.theta.size)
    jacobian, eta_jacobian = np.zeros(shape), np.zeros(shape)
    for number in range(len(objective.chunks)):
        result = objective.make_chunk(number).step(ChunkStep(parts.theta, True, 1, None, 0))
        assert result is not None
        markets = objective.chunk_slice(number)
        if not result.converged.all():
            bad = layout.market_labels[markets][~result.converged]
            raise FixedPointError(
                f"delta could not be solved at the expected prices in markets {bad[:10].tolist()}"
            )
        jacobian[markets] = result.jacobian
        eta_jacobian[markets] = result.eta_jacobian
    return layout.flatten(jacobian), layout.flatten(eta_jacobian)
