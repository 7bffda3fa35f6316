"""Simulated economies: random-coefficients (nested) demand, costs and equilibrium prices.

:class:`Simulation` builds an economy from id data, formulas and true parameters (β, Σ, Π, ρ,
γ), draws or takes the demand and cost shocks, and solves for equilibrium prices
(:meth:`Simulation.replace_endogenous`) or for the characteristics that reproduce given shares
(:meth:`Simulation.replace_exogenous`), with the same kernel the estimators use.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from blpmodels.data.agents import AgentDesign
from blpmodels.data.design import TermBlock, build_block, check_columns, numeric_values
from blpmodels.data.formula import required_variables
from blpmodels.data.instruments import build_blp_instruments, build_differentiation_instruments
from blpmodels.data.markets import MarketLayout, check_ids
from blpmodels.data.parameters import NonlinearParameters
from blpmodels.data.products import validate_shares
from blpmodels.exceptions import BLPInputError, FixedPointError
from blpmodels.kernel.delta import FixedPointResult, raise_unconverged, solve_delta
from blpmodels.kernel.equilibrium import PriceState, foc_residual, markups, solve_prices
from blpmodels.kernel.ownership import ownership_matrices
from blpmodels.kernel.shares import Nesting, ShareEvaluator
from blpmodels.results.demand import MarketInputs, PricedMarkets
from blpmodels.simulation.logit import _check_float, _check_int

__all__ = ["Simulation", "SimulationResults"]


@dataclass(frozen=True, eq=False)
class SimulationResults:
    """A simulated economy solved for prices and shares (or for one characteristic).

    Attributes
    ----------
    products : pandas.DataFrame
        The product data in the simulation's row order: the ids, ``prices``, ``shares``, the
        characteristics, the true ``xi``, ``omega`` and ``costs``, and BLP instruments
        (:func:`blpmodels.build_blp_instruments` on the exogenous characteristics, columns
        ``blp_own_*`` and ``blp_rival_*``). Ready for ``BLPLogit.from_formula`` and
        ``BLPRandomCoefficients.from_formula``.
    markets : pandas.DataFrame
        Per market (indexed by ``market_ids``): ``iterations`` (price updates, or δ contraction
        iterations for :meth:`Simulation.replace_exogenous`), ``foc_norm`` (max_j of the
        absolute Bertrand–Nash first-order condition s + (Ω ⊙ (∂s/∂p)ᵀ)(p − c) at the
        returned prices; NaN without costs) and ``converged``.
    simulation : Simulation
        The simulation that produced them (true parameters, agents, shocks).

    Examples
    --------
    >>> from blpmodels.simulation import build_id_data
    >>> products = build_id_data(T=4, J=3, F=2).assign(w=0.5)
    >>> solved = Simulation(products, "1 + prices", {"Intercept": 1.0, "prices": -2.0},
    ...                     supply="1 + w", gamma={"Intercept": 0.5, "w": 1.0},
    ...                     seed=0).replace_endogenous()
    >>> list(solved.markets.columns)
    ['iterations', 'foc_norm', 'converged']
    >>> bool(solved.foc_norm < 1e-12), solved.iterations < 100
    (True, True)
    >>> solved.truth.to_dict()
    {'Intercept': 1.0, 'prices': -2.0, 'gamma[Intercept]': 0.5, 'gamma[w]': 1.0}
    """

    products: pd.DataFrame
    markets: pd.DataFrame
    simulation: Simulation

    @property
    def foc_norm(self) -> float:
        """Largest first-order-condition norm over markets."""
        return float(self.markets["foc_norm"].max())

    @property
    def iterations(self) -> int:
        """Most iterations any market took."""
        return int(self.markets["iterations"].max())

    @property
    def truth(self) -> pd.Series:
        """The true parameters, named as the estimators name them (see :attr:`Simulation.truth`)."""
        return self.simulation.truth

    @property
    def agent_data(self) -> pd.DataFrame | None:
        """The agents used (``market_ids``, ``weights``, ``nodes*``, demographics), or None."""
        return self.simulation.agent_data


InstrumentKind = Literal["blp", "differentiation", "both"]


def _check_chunk_size(chunk_size: Any) -> None:
    if chunk_size is not None:
        _check_int("chunk_size", chunk_size, 1)


def _check_instruments(kind: Any) -> None:
    if kind is not None and kind not in ("blp", "differentiation", "both"):
        raise BLPInputError(
            f"instruments must be 'blp', 'differentiation', 'both' or None, got {kind!r}"
        )


def _formula(value: Any, name: str, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise BLPInputError(f"{name} must be a formula such as '1 + prices + x'")
        return None
    if not isinstance(value, str) or not value.strip():
        raise BLPInputError(f"{name} must be a non-empty formula string, got {value!r}")
    return value


def _named_values(values: Any, names: Sequence[str], label: str) -> np.ndarray:
    """Values given by name (mapping or Series) in the order of ``names``, checked."""
    if not isinstance(values, (Mapping, pd.Series)):
        raise BLPInputError(
            f"{label} must map the column names {list(names)} to values (a dict or a pandas "
            f"Series), got {type(values).__name__}"
        )
    given = dict(values.items())
    unknown = [key for key in given if key not in names]
    if unknown:
        raise BLPInputError(
            f"{label} names unknown column(s) {unknown}; the formula's columns are {list(names)}"
        )
    missing = [name for name in names if name not in given]
    if missing:
        raise BLPInputError(f"{label} has no value for column(s) {missing} (columns {list(names)})")
    out = np.empty(len(names))
    for position, name in enumerate(names):
        value = given[name]
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise BLPInputError(f"{label}[{name!r}] must be a real number, got {value!r}")
        if not np.isfinite(float(value)):
            raise BLPInputError(f"{label}[{name!r}] must be finite, got {value!r}")
        out[position] = float(value)
    return out


def _row_values(values: Any, index: pd.Index, market_ids: np.ndarray, label: str) -> np.ndarray:
    """One finite number per product row, from an aligned Series or an array in row order."""
    if isinstance(values, pd.Series):
        if len(values) != len(index) or not values.index.equals(index):
            raise BLPInputError(
                f"{label} Series must carry the product data's index (one value per row); "
                "reindex it, or pass a numpy array in row order"
            )
        array = values.to_numpy()
    else:
        array = np.asarray(values)
    if array.dtype.kind not in "biuf" or array.dtype.kind == "b":
        raise BLPInputError(f"{label} must hold real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64).ravel()
    if array.size != len(index):
        raise BLPInputError(
            f"{label} has {array.size} values but the product data have {len(index)} rows"
        )
    bad = ~np.isfinite(array)
    if bad.any():
        first = market_ids[int(np.flatnonzero(bad)[0])]
        raise BLPInputError(
            f"{label} has {int(bad.sum())} missing or non-finite values (first in market {first!r})"
        )
    return array


def _linear_in(block: TermBlock, frame: pd.DataFrame, variable: str, context: dict) -> np.ndarray:
    """∂block/∂variable, after checking that the block is linear in the variable."""
    slope = block.derivative(frame, variable, context)
    if not block.size or variable not in (
        set(block.names) if block.columns_only else required_variables(block.formula)
    ):
        return slope
    base = np.asarray(frame[variable], dtype=np.float64)
    step = np.maximum(np.abs(base), 1.0)
    moved = frame.copy()
    moved[variable] = base + step
    change = block.rebuild(moved, context) - block.rebuild(frame, context)
    expected = slope * step[:, None]
    wrong = (np.abs(change - expected) > 1e-6 * (np.abs(expected) + np.abs(change) + 1e-12)).any(
        axis=0
    )
    if wrong.any():
        bad = [name for name, flag in zip(block.names, wrong, strict=True) if flag]
        raise BLPInputError(
            f"equilibrium prices need utilities linear in {variable!r}, but the terms {bad} of "
            f"{block.formula!r} are not (interactions with characteristics are fine)"
        )
    return slope


class Simulation:
    """A BLP economy at true parameters: demand, marginal costs and shocks, ready to be solved.

    Utility of agent i for product j in market t is

        U_ijt = X1_jt β + ξ_jt + Σ_k X2_jtk c_ik + ε_ijt,   c_i = Σ ν_i + Π d_i,

    with ν the integration nodes (``nodes0`` pairs with the first X2 column), d demographics,
    Σ lower-triangular, ε i.i.d. extreme value (nested logit with ``rho`` when the products
    carry ``nesting_ids``). Marginal costs are c = X3 γ + ω (or exp(X3 γ + ω) with
    ``costs_type="log"``). Formulas are formulaic right-hand sides read from ``products``;
    they may read ``prices`` (X1 and X2, linearly) but not ``shares``; X3 may read neither.

    Building the simulation validates everything (names, shapes, NaN, agents) and draws the
    shocks; :meth:`replace_endogenous` then solves the Bertrand–Nash prices and shares of all
    markets at once (:func:`blpmodels.kernel.equilibrium.solve_prices`), and
    :meth:`replace_exogenous` instead keeps given prices and shares and backs out one
    characteristic.

    Parameters
    ----------
    products : pandas.DataFrame
        ``market_ids`` and ``firm_ids`` (e.g. from :func:`build_id_data`), the characteristics
        the formulas read, optionally ``product_ids``, ``nesting_ids`` and ``prices`` (the
        starting values are the costs either way; a placeholder 0 is used when absent) and
        ``shares`` (needed by :meth:`replace_exogenous`).
    linear : str
        X1, e.g. ``"1 + prices + x"``.
    beta : mapping of str to float
        β by X1 column name, e.g. ``{"Intercept": 1, "prices": -2, "x": 1}``.
    random : str, optional
        X2, e.g. ``"0 + prices + x"``; needs ``agent_data`` or ``integration``.
    sigma : array-like, optional
        K2×K2 lower-triangular Σ (a scalar for one column); zeros by default.
    pi : array-like, optional
        K2×D Π on the demographics.
    rho : float or array-like, optional
        Nesting parameter(s), one shared or one per nest (nests sorted); with ``nesting_ids``.
    demographics : str, optional
        Demographics formula on ``agent_data``, e.g. ``"0 + income"``.
    agent_data : pandas.DataFrame, optional
        ``market_ids``, ``weights``, ``nodes0`` … and demographic columns.
    integration : Integration, optional
        Builds the nodes and weights instead of ``agent_data`` (kept as :attr:`agent_data`).
    rc_types : dict, optional
        ``{"prices": "lognormal"}`` etc.; normal by default.
    supply : str, optional
        X3, e.g. ``"1 + w"``; without it :meth:`replace_endogenous` needs ``costs=``.
    gamma : mapping of str to float, optional
        γ by X3 column name.
    costs_type : {"linear", "log"}
        f(c) = c or log c in f(c) = X3 γ + ω.
    xi, omega : pandas.Series or array-like, optional
        Demand and cost shocks per product row; drawn when not given.
    xi_variance, omega_variance : float
        Variances of the drawn shocks (≥ 0).
    correlation : float
        Correlation of the drawn ξ and ω, in [−1, 1].
    seed : int, optional
        Seed of the :func:`numpy.random.default_rng` draws of ξ and ω (ξ is drawn from the
        same stream whether or not ω is given).
    context : mapping, optional
        Extra names for formula transforms.

    Attributes
    ----------
    products : pandas.DataFrame
        A copy of the product data (``prices`` 0 where absent).
    formulas : dict
        ``linear``, ``random``, ``supply`` and ``demographics`` formulas (None when absent).
    beta, gamma : pandas.Series
        True β and γ by column name.
    parameters : NonlinearParameters
        Σ, Π and ρ (also as :attr:`sigma`, :attr:`pi`, :attr:`rho`).
    agent_data : pandas.DataFrame or None
        The agents (built from ``integration`` when given): pass them to ``from_formula``.
    costs_type : str
        ``"linear"`` or ``"log"``.
    seed : int or None
        Seed of the shocks.

    Raises
    ------
    BLPInputError
        Missing columns or NaN, parameters named for columns the formulas do not make, wrong
        shapes of Σ, Π or ρ, bad agent data, shocks of the wrong length or not finite, formulas
        that read ``shares`` or are not linear in ``prices``, demand that does not depend on
        ``prices``.

    Examples
    --------
    >>> from blpmodels import Integration
    >>> from blpmodels.simulation import build_id_data
    >>> products = build_id_data(T=20, J=4, F=2)
    >>> products["x"] = np.random.default_rng(0).uniform(size=len(products))
    >>> products["w"] = np.random.default_rng(1).uniform(size=len(products))
    >>> simulation = Simulation(
    ...     products, "1 + prices + x", {"Intercept": 1.0, "prices": -3.0, "x": 1.0},
    ...     random="0 + x", sigma=0.5, integration=Integration("product", 5),
    ...     supply="1 + w", gamma={"Intercept": 0.5, "w": 0.5},
    ...     xi_variance=0.1, omega_variance=0.05, seed=0)
    >>> solved = simulation.replace_endogenous()
    >>> bool(solved.foc_norm < 1e-10), bool(solved.markets["converged"].all())
    (True, True)
    >>> solved.truth.to_dict()  # doctest: +NORMALIZE_WHITESPACE
    {'Intercept': 1.0, 'prices': -3.0, 'x': 1.0, 'sigma[x,x]': 0.5,
     'gamma[Intercept]': 0.5, 'gamma[w]': 0.5}
    """

    def __init__(
        self,
        products: pd.DataFrame,
        linear: str,
        beta: Mapping[str, float],
        *,
        random: str | None = None,
        sigma: Any = None,
        pi: Any = None,
        rho: Any = None,
        demographics: str | None = None,
        agent_data: pd.DataFrame | None = None,
        integration: Any = None,
        rc_types: Mapping[str, str] | None = None,
        supply: str | None = None,
        gamma: Mapping[str, float] | None = None,
        costs_type: Literal["linear", "log"] = "linear",
        xi: Any = None,
        omega: Any = None,
        xi_variance: float = 1.0,
        omega_variance: float = 1.0,
        correlation: float = 0.9,
        seed: int | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        from blpmodels.data.integration import Integration, build_integration

        if not isinstance(products, pd.DataFrame):
            raise BLPInputError(
                f"products must be a pandas DataFrame, got {type(products).__name__}"
            )
        if len(products) == 0:
            raise BLPInputError("products has no rows")
        linear = _formula(linear, "linear", required=True)
        random = _formula(random, "random")
        supply = _formula(supply, "supply")
        demographics = _formula(demographics, "demographics")
        if costs_type not in ("linear", "log"):
            raise BLPInputError(f"costs_type must be 'linear' or 'log', got {costs_type!r}")
        xi_variance = _check_float("xi_variance", xi_variance, low=0.0)
        omega_variance = _check_float("omega_variance", omega_variance, low=0.0)
        correlation = _check_float("correlation", correlation, low=-1.0, high=1.0)
        if seed is not None:
            seed = _check_int("seed", seed, 0)
        if random is None:
            for name, value in (
                ("sigma", sigma),
                ("pi", pi),
                ("demographics", demographics),
                ("agent_data", agent_data),
                ("integration", integration),
                ("rc_types", rc_types),
            ):
                if value is not None:
                    raise BLPInputError(f"{name} needs random coefficients: give random='0 + ...'")
        if supply is None and gamma is not None:
            raise BLPInputError("gamma needs a cost formula: give supply='1 + ...'")
        if supply is not None and gamma is None:
            raise BLPInputError(f"supply={supply!r} needs gamma, the cost parameters by name")
        if integration is not None and not isinstance(integration, Integration):
            raise BLPInputError(
                f"integration must be an Integration, got {type(integration).__name__}"
            )
        if integration is not None and agent_data is not None:
            raise BLPInputError("give agent_data or integration, not both")
        if demographics is not None and agent_data is None:
            raise BLPInputError("demographics need agent_data (integration only builds nodes)")

        namespace = dict(context or {})
        frame = products.copy()
        check_columns(frame, ["market_ids", "firm_ids"], what="products")
        market_ids = check_ids(frame["market_ids"], "market_ids", "products")
        layout = MarketLayout.from_ids(market_ids)
        firm_ids = check_ids(frame["firm_ids"], "firm_ids", "products")
        if "product_ids" in frame.columns:
            keys = pd.DataFrame(
                {"m": market_ids, "p": check_ids(frame["product_ids"], "product_ids", "products")}
            )
            if keys.duplicated().any():
                first = keys[keys.duplicated()].iloc[0]
                raise BLPInputError(
                    f"duplicated (market, product) rows, e.g. market {first['m']!r}, product "
                    f"{first['p']!r}"
                )

        reads = {
            name: required_variables(rhs) - set(namespace)
            for name, rhs in (("linear", linear), ("random", random), ("supply", supply))
            if rhs is not None
        }
        for name, variables in reads.items():
            if "shares" in variables:
                raise BLPInputError(f"{name} formula reads 'shares', which are simulated")
        if "prices" in reads.get("supply", set()):
            raise BLPInputError("the cost formula (supply) must not read 'prices'")
        if "prices" not in reads["linear"] | reads.get("random", set()):
            raise BLPInputError(
                "demand does not depend on 'prices': put prices in linear (or random) so firms "
                "have a price to set"
            )
        if "prices" not in frame.columns:
            frame["prices"] = 0.0

        x1 = build_block(
            linear, frame, context=namespace, market_ids=market_ids, role="X1 (linear)"
        )
        beta_values = _named_values(beta, x1.names, "beta")
        x2 = build_block(
            random, frame, context=namespace, market_ids=market_ids, role="X2 (random)"
        )
        x3 = build_block(
            supply, frame, context=namespace, market_ids=market_ids, role="X3 (supply)"
        )
        gamma_values = (
            _named_values(gamma, x3.names, "gamma") if supply is not None else np.zeros(0)
        )

        nest_codes = None
        nests: tuple[Any, ...] = ()
        if "nesting_ids" in frame.columns:
            nesting_ids = check_ids(frame["nesting_ids"], "nesting_ids", "products")
            codes, labels = pd.factorize(pd.Series(nesting_ids), sort=True)
            nest_codes = codes.astype(np.intp)
            nests = tuple(labels.tolist())
        elif rho is not None:
            raise BLPInputError("rho was given but the products have no nesting_ids column")

        agents = None
        if random is not None:
            if integration is not None:
                agent_data = build_integration(
                    integration, x2.size, market_ids=layout.market_labels
                )
            if agent_data is None:
                raise BLPInputError("random coefficients need agent_data or integration=")
            agents = AgentDesign.build(
                agent_data,
                layout.market_labels,
                demographics=demographics,
                max_nodes=x2.size,
                context=namespace,
                kind=None if integration is None else integration.kind,
            )
        parameters = NonlinearParameters.build(
            x2.names,
            () if agents is None else agents.demographic_names,
            nests,
            sigma=sigma,
            pi=pi,
            rho=rho,
            sigma_bounds=(-np.inf, np.inf),
            rho_bounds=(0.0, np.nextafter(1.0, 0.0)),
            rc_types=dict(rc_types) if rc_types is not None else None,
        )
        if agents is not None:
            if parameters.pi.size and np.any(parameters.pi != 0) and not agents.demographic_names:
                raise BLPInputError("pi has nonzero entries but there are no demographics")
            agents.check_nodes(parameters.node_columns_needed(), parameters.characteristics)
            if agents.demographic_names and parameters.pi.shape[1] == 0:
                raise BLPInputError("demographics were given without pi")

        n = len(frame)
        rng = np.random.default_rng(seed)
        draws = rng.standard_normal((n, 2))
        drawn_xi = np.sqrt(xi_variance) * draws[:, 0]
        drawn_omega = np.sqrt(omega_variance) * (
            correlation * draws[:, 0] + np.sqrt(1.0 - correlation**2) * draws[:, 1]
        )
        index = frame.index
        self._xi = drawn_xi if xi is None else _row_values(xi, index, market_ids, "xi")
        self._omega = (
            drawn_omega if omega is None else _row_values(omega, index, market_ids, "omega")
        )

        self.products = frame
        self.formulas = {
            "linear": linear,
            "random": random,
            "supply": supply,
            "demographics": demographics,
        }
        self.beta = pd.Series(beta_values, index=list(x1.names), name="beta")
        self.gamma = pd.Series(gamma_values, index=list(x3.names), name="gamma", dtype=float)
        self.parameters = parameters
        self.costs_type = costs_type
        self.agent_data = None if agents is None else agents.data
        self.seed = seed
        self._context = namespace
        self._layout = layout
        self._market_ids = market_ids
        self._firm_codes = pd.factorize(pd.Series(firm_ids), sort=False)[0].astype(np.intp)
        self._x1, self._x2, self._x3 = x1, x2, x3
        self._agents = agents
        self._nest_codes = nest_codes
        theta = parameters.theta0
        if agents is None:
            self._coefficients = np.zeros((layout.n_markets, 1, 0))
            self._weights = np.ones((layout.n_markets, 1))
        else:
            self._coefficients, _ = parameters.coefficients(
                theta, agents.nodes, agents.demographics
            )
            self._weights = agents.weights
        # Price derivatives of X1 and X2 (checked linear) at the products' prices.
        self._d_x1 = _linear_in(x1, frame, "prices", namespace)
        self._d_x2 = _linear_in(x2, frame, "prices", namespace)

    # ------------------------------------------------------------------ attributes
    @property
    def xi(self) -> pd.Series:
        """ξ per product row."""
        return pd.Series(self._xi, index=self.products.index, name="xi")

    @property
    def omega(self) -> pd.Series:
        """ω per product row."""
        return pd.Series(self._omega, index=self.products.index, name="omega")

    @property
    def sigma(self) -> np.ndarray:
        """Σ (K2×K2)."""
        return self.parameters.sigma.copy()

    @property
    def pi(self) -> np.ndarray:
        """Π (K2×D)."""
        return self.parameters.pi.copy()

    @property
    def rho(self) -> np.ndarray:
        """ρ per nest (empty without nests)."""
        return self.parameters.rho.copy()

    @property
    def truth(self) -> pd.Series:
        """True parameters named as the estimators name them.

        β by X1 column, then the nonzero Σ and Π entries (``sigma[x,x]``, ``pi[x,income]``),
        ρ (``rho`` or ``rho[nest]``), then ``gamma[...]`` by X3 column.
        """
        parameters = self.parameters
        values = dict(self.beta.items())
        values.update(zip(parameters.names, parameters.theta0.tolist(), strict=True))
        values.update({f"gamma[{name}]": value for name, value in self.gamma.items()})
        return pd.Series(values, name="truth", dtype=float)

    def costs(self, omega: Any = None) -> pd.Series:
        """Marginal costs X3 γ + ω (or exp of it with ``costs_type="log"``).

        Parameters
        ----------
        omega : pandas.Series or array-like, optional
            Cost shocks replacing the simulation's.

        Returns
        -------
        pandas.Series
            Per product row.

        Raises
        ------
        BLPInputError
            Without a cost formula (``supply=``).

        Examples
        --------
        >>> from blpmodels.simulation import build_id_data
        >>> products = build_id_data(T=1, J=2, F=1).assign(w=[0.0, 1.0])
        >>> simulation = Simulation(products, "1 + prices", {"Intercept": 1.0, "prices": -2.0},
        ...                         supply="1 + w", gamma={"Intercept": 0.5, "w": 1.0},
        ...                         costs_type="log")
        >>> simulation.costs(omega=[0.0, 0.0]).round(4).tolist()
        [1.6487, 4.4817]
        """
        if self.formulas["supply"] is None:
            raise BLPInputError(
                "the simulation has no cost formula: give supply='1 + ...' and gamma, or pass "
                "costs= to replace_endogenous"
            )
        shocks = (
            self._omega
            if omega is None
            else _row_values(omega, self.products.index, self._market_ids, "omega")
        )
        index = self._x3.values @ self.gamma.to_numpy() + shocks
        values = np.exp(index) if self.costs_type == "log" else index
        return pd.Series(values, index=self.products.index, name="costs")

    # ------------------------------------------------------------------ machinery
    def _nesting(self, positions: np.ndarray, mask: np.ndarray) -> Nesting:
        if self._nest_codes is None:
            return Nesting.unnested(mask.shape)
        n_nests = len(self.parameters.nests)
        rho = np.broadcast_to(self.parameters.rho, (n_nests,))
        return Nesting.from_codes(self._layout.pad(self._nest_codes)[positions], n_nests, rho)

    def _priced(self, xi: np.ndarray, positions: np.ndarray) -> PricedMarkets:
        """Demand in some markets, evaluable at any prices (utilities are linear in them)."""
        layout = self._layout
        mask = layout.mask[positions]
        rows = layout.index[positions]
        mask3 = mask[:, :, None]
        coefficients = self._coefficients[positions]
        weights = self._weights[positions]
        beta = self.beta.to_numpy()
        delta = (self._x1.values @ beta + xi)[rows]
        slope = (self._d_x1 @ beta)[rows]
        derivative = np.repeat(slope[:, :, None], weights.shape[1], axis=2)
        if self._x2.size:
            swapped = np.swapaxes(coefficients, 1, 2)
            mu = np.matmul(self._x2.values[rows], swapped)
            derivative = derivative + np.matmul(self._d_x2[rows], swapped)
        else:
            mu = np.zeros((*mask.shape, weights.shape[1]))
        inputs = MarketInputs(
            positions=positions,
            delta=np.where(mask, delta, 0.0),
            mu=np.where(mask3, mu, 0.0),
            weights=weights,
            mask=mask,
            nesting=self._nesting(positions, mask),
            coefficients=coefficients,
            rows=rows,
        )
        prices = np.where(mask, self.products["prices"].to_numpy(np.float64)[rows], 0.0)
        return PricedMarkets(inputs, prices, np.where(mask3, derivative, 0.0))

    def _row_argument(self, values: Any, label: str) -> np.ndarray | None:
        if values is None:
            return None
        return _row_values(values, self.products.index, self._market_ids, label)

    def _instruments(self, frame: pd.DataFrame, kind: str) -> pd.DataFrame:
        """Instruments on the exogenous characteristics, redundant columns dropped.

        A column is kept only when it is not a linear combination of a constant and the
        columns kept before it (in balanced markets the own- and rival-firm product counts add
        up to a constant, for instance), so the instruments can be used as they are.
        """
        variables: set[str] = set()
        for rhs in (self.formulas["linear"], self.formulas["random"], self.formulas["supply"]):
            if rhs is not None:
                variables |= required_variables(rhs)
        variables -= {"prices", "shares"} | set(self._context)
        numeric = sorted(
            name
            for name in variables
            if name in frame.columns
            and pd.api.types.is_numeric_dtype(frame[name])
            and not pd.api.types.is_bool_dtype(frame[name])
        )
        blocks = []
        if kind in ("blp", "both"):
            blocks.append(build_blp_instruments(frame, " + ".join(["1", *numeric])))
        if kind in ("differentiation", "both") and numeric:
            blocks.append(build_differentiation_instruments(frame, numeric))
        instruments = pd.concat(blocks, axis=1) if blocks else pd.DataFrame(index=frame.index)
        kept: list[str] = []
        basis = np.ones((len(frame), 1)) / np.sqrt(len(frame))
        for name in instruments.columns:
            column = instruments[name].to_numpy(np.float64)
            scale = np.linalg.norm(column)
            if scale == 0:
                continue
            residual = column / scale - basis @ (basis.T @ (column / scale))
            size = np.linalg.norm(residual)
            if size > 1e-8:
                kept.append(name)
                basis = np.column_stack([basis, residual / size])
        return instruments[kept]

    def _output(
        self,
        frame: pd.DataFrame,
        xi: np.ndarray,
        omega: np.ndarray,
        costs: np.ndarray | None,
        markets: pd.DataFrame,
        instruments: str | None,
    ) -> SimulationResults:
        frame = frame.copy()
        frame["xi"] = xi
        frame["omega"] = omega
        if costs is not None:
            frame["costs"] = costs
        if instruments is not None:
            built = self._instruments(frame, instruments)
            frame = frame.drop(columns=[c for c in built.columns if c in frame.columns])
            frame = pd.concat([frame, built], axis=1)
        return SimulationResults(products=frame, markets=markets, simulation=self)

    # ------------------------------------------------------------------ solving
    def replace_endogenous(
        self,
        costs: Any = None,
        *,
        xi: Any = None,
        omega: Any = None,
        prices: Any = None,
        tol: float = 1e-12,
        max_iterations: int = 1000,
        instruments: InstrumentKind | None = "blp",
        chunk_size: int | None = None,
    ) -> SimulationResults:
        """Solve the Bertrand–Nash equilibrium prices and shares in every market at once.

        Firms (``firm_ids``) set the prices of their products to maximize their profits given
        the rivals' prices: s + (Ω ⊙ (∂s/∂p)ᵀ)(p − c) = 0, solved by the ζ-markup iteration
        finished with Newton steps (:func:`blpmodels.kernel.equilibrium.solve_prices`) on padded
        arrays of all markets. A market converges when the largest absolute first-order condition is
        below ``tol`` at the prices returned.

        Parameters
        ----------
        costs : pandas.Series or array-like, optional
            Marginal costs per product row; default :meth:`costs` (X3 γ + ω).
        xi, omega : pandas.Series or array-like, optional
            Shocks replacing the simulation's (ω is only used by the default costs).
        prices : pandas.Series or array-like, optional
            Starting prices; default the costs.
        tol : float
            Tolerance on each market's first-order-condition norm.
        max_iterations : int
            Price updates per market.
        instruments : {"blp", "differentiation", "both"} or None
            Instruments added to the products, built on the exogenous characteristics the
            formulas read (all but ``prices``): BLP sums (``blp_own_*``, ``blp_rival_*``,
            :func:`blpmodels.build_blp_instruments`, with a constant), local differentiation
            instruments (``diff_own_*``, ``diff_rival_*``,
            :func:`blpmodels.build_differentiation_instruments`), both, or none. Columns that
            are constant or a linear combination of a constant and the columns before them
            (in balanced markets the own- and rival-firm product counts add up to a constant)
            are dropped.
        chunk_size : int, optional
            Markets solved together (bounds the memory of the ``[markets, J, agents]``
            arrays); default all at once.

        Returns
        -------
        SimulationResults
            Products with the equilibrium ``prices`` and ``shares``, per-market iterations and
            first-order-condition norms.

        Raises
        ------
        BLPInputError
            Bad shocks, costs or starting prices (wrong length, NaN), no costs without a cost
            formula, bad ``tol`` or ``max_iterations``; all before any equilibrium work.
        FixedPointError
            Markets whose prices did not converge, by name (``.markets``).

        Examples
        --------
        Single-product logit firms: markups are 1 / (−α (1 − s)).

        >>> from blpmodels.simulation import build_id_data
        >>> products = build_id_data(T=3, J=2, F=2)
        >>> simulation = Simulation(products, "1 + prices", {"Intercept": 1.0, "prices": -2.0},
        ...                         seed=0)
        >>> solved = simulation.replace_endogenous(costs=np.full(6, 0.5))
        >>> out = solved.products
        >>> bool(np.allclose(out["prices"] - 0.5, 1 / (2 * (1 - out["shares"])), atol=1e-12))
        True
        """
        tol = _check_float("tol", tol, low=0.0, low_open=True)
        max_iterations = _check_int("max_iterations", max_iterations, 1)
        _check_instruments(instruments)
        _check_chunk_size(chunk_size)
        xi_values = self._row_argument(xi, "xi")
        xi_values = self._xi if xi_values is None else xi_values
        omega_values = self._row_argument(omega, "omega")
        omega_values = self._omega if omega_values is None else omega_values
        if costs is None:
            cost_values = self.costs(omega_values).to_numpy()
        else:
            if omega is not None:
                raise BLPInputError("give costs= or omega=, not both (omega only sets costs)")
            cost_values = self._row_argument(costs, "costs")
        start = self._row_argument(prices, "prices")
        start = cost_values if start is None else start

        layout = self._layout
        mask = layout.mask
        padded_costs = np.where(mask, layout.pad(cost_values), 0.0)
        padded_start = np.where(mask, layout.pad(start), 0.0)
        firm_codes = layout.pad(self._firm_codes)
        prices_out, shares_out = np.zeros(mask.shape), np.zeros(mask.shape)
        iterations = np.zeros(layout.n_markets, dtype=np.intp)
        norms = np.zeros(layout.n_markets)
        converged = np.zeros(layout.n_markets, dtype=bool)
        upward = np.zeros(layout.n_markets, dtype=np.intp)
        for chunk in layout.chunks(chunk_size):
            priced = self._priced(xi_values, chunk)
            inside = mask[chunk]
            solution = solve_prices(
                priced.state,
                padded_costs[chunk],
                padded_start[chunk],
                ownership_matrices(firm_codes[chunk], inside),
                inside,
                tol=tol,
                max_iterations=max_iterations,
            )
            prices_out[chunk] = solution.prices
            shares_out[chunk] = solution.state.shares
            iterations[chunk] = solution.iterations
            norms[chunk] = solution.foc_norm
            converged[chunk] = solution.converged
            real = (priced.inputs.weights != 0)[:, None, :] & inside[:, :, None]
            upward[chunk] = (real & (priced.derivative >= 0)).any(axis=1).sum(axis=1)
        markets = pd.DataFrame(
            {"iterations": iterations, "foc_norm": norms, "converged": converged},
            index=pd.Index(layout.market_labels, name="market_ids"),
        )
        if not converged.all():
            bad = ~converged
            failed = layout.market_labels[bad].tolist()
            worst = np.nanmax(np.where(bad, norms, np.nan), initial=-1)
            agents = int(upward[bad].sum())
            reason = (
                f"{agents} agent(s) there have utility not falling in price (∂U/∂p >= 0), so "
                "firms may gain without bound: check beta, sigma and pi on prices"
                if agents
                else "check the price coefficients, or raise max_iterations"
            )
            raise FixedPointError(
                f"equilibrium prices did not converge in {len(failed)} market(s): {failed[:10]}"
                f"{' ...' if len(failed) > 10 else ''} (largest first-order-condition norm "
                f"{worst:.3g}, tolerance {tol:g}); {reason}",
                markets=failed,
            )
        frame = self.products.copy()
        frame["prices"] = layout.flatten(prices_out)
        frame["shares"] = layout.flatten(shares_out)
        return self._output(frame, xi_values, omega_values, cost_values, markets, instruments)

    def replace_exogenous(
        self,
        column: str,
        supply_column: str | None = None,
        *,
        tol: float = 1e-14,
        max_evaluations: int = 5000,
        instruments: InstrumentKind | None = "blp",
        chunk_size: int | None = None,
    ) -> SimulationResults:
        """Keep the products' prices and shares and back out a characteristic consistent with them.

        The mean utilities δ that give the observed shares at the true nonlinear parameters
        are solved in all markets at once (:func:`blpmodels.kernel.delta.solve_delta`), and the
        characteristic v (a plain X1 column) moves by (δ − ξ − X1 β) / β_v. With
        ``supply_column`` w (a plain X3 column), the Bertrand–Nash markups η at the given
        prices give the costs c = p − η and w moves by (f(c) − ω − X3 γ) / γ_w. The prices
        and shares are then an equilibrium of the economy with the new characteristics.

        Parameters
        ----------
        column : str
            Product column v entering X1 as a plain term (not in X2 or X3).
        supply_column : str, optional
            Product column w entering X3 as a plain term (not in demand).
        tol : float
            Tolerance of the δ contraction.
        max_evaluations : int
            Share evaluations per market in the contraction.
        instruments : {"blp", "differentiation", "both"} or None
            Instruments added to the products, as in :meth:`replace_endogenous`.
        chunk_size : int, optional
            Markets solved together; default all at once.

        Returns
        -------
        SimulationResults
            ``markets`` holds the contraction iterations and the first-order-condition norm
            at the costs (NaN without a supply side).

        Raises
        ------
        BLPInputError
            Missing or invalid ``prices``/``shares``, a column that is not a plain X1 (X3)
            term or also enters elsewhere, a zero coefficient on it, non-positive costs with
            ``costs_type="log"``.
        FixedPointError
            Markets where the δ contraction failed, by name.

        Examples
        --------
        >>> from blpmodels.simulation import build_id_data
        >>> products = build_id_data(T=3, J=2, F=2)
        >>> products["x"] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
        >>> simulation = Simulation(products, "1 + prices + x",
        ...                         {"Intercept": 1.0, "prices": -2.0, "x": 1.0}, seed=0)
        >>> solved = simulation.replace_endogenous(costs=np.full(6, 0.5)).products
        >>> again = Simulation(solved.assign(x=0.0), "1 + prices + x",
        ...                    {"Intercept": 1.0, "prices": -2.0, "x": 1.0}, xi=solved["xi"])
        >>> backed = again.replace_exogenous("x").products["x"]
        >>> bool(np.allclose(backed, products["x"], atol=1e-10))
        True
        """
        tol = _check_float("tol", tol, low=0.0, low_open=True)
        max_evaluations = _check_int("max_evaluations", max_evaluations, 1)
        _check_instruments(instruments)
        _check_chunk_size(chunk_size)
        frame = self.products
        check_columns(frame, ["shares"], market_ids=self._market_ids, what="products")
        shares = numeric_values(frame["shares"], "products column 'shares'")
        validate_shares(shares, self._market_ids)
        position = self._plain_column(column, self._x1, ("random", "supply"), "X1 (linear)")
        coefficient = float(self.beta.iloc[position])
        if coefficient == 0:
            raise BLPInputError(f"beta[{column!r}] is 0: {column!r} does not move utility")
        supply_position = None
        if supply_column is not None:
            if self.formulas["supply"] is None:
                raise BLPInputError("supply_column needs a cost formula (supply='1 + ...')")
            supply_position = self._plain_column(
                supply_column, self._x3, ("linear", "random"), "X3 (supply)"
            )
            if float(self.gamma.iloc[supply_position]) == 0:
                raise BLPInputError(f"gamma[{supply_column!r}] is 0: it does not move costs")

        layout = self._layout
        mask = layout.mask
        log_shares = np.where(mask, np.log(np.where(mask, layout.pad(shares), 1.0)), 0.0)
        outside = 1.0 - np.bincount(layout.codes, shares, layout.n_markets)
        start = np.where(mask, log_shares - np.log(outside)[:, None], 0.0)
        has_supply = self.formulas["supply"] is not None
        fitted_costs = (
            np.where(mask, layout.pad(self.costs().to_numpy()), 0.0)
            if has_supply and supply_position is None
            else None
        )
        firm_codes = layout.pad(self._firm_codes)
        prices = np.where(mask, layout.pad(frame["prices"].to_numpy(np.float64)), 0.0)
        delta_out = np.zeros(mask.shape)
        eta_out = np.zeros(mask.shape)
        iterations = np.zeros(layout.n_markets, dtype=np.intp)
        evaluations = np.zeros(layout.n_markets, dtype=np.intp)
        converged = np.zeros(layout.n_markets, dtype=bool)
        foc = np.full(layout.n_markets, np.nan)
        for chunk in layout.chunks(chunk_size):
            priced = self._priced(self._xi, chunk)
            inputs = priced.inputs
            inside = inputs.mask
            evaluator = ShareEvaluator(inputs.mu, inputs.weights, inside, inputs.nesting)
            result = solve_delta(
                evaluator, log_shares[chunk], start[chunk], tol=tol, max_evaluations=max_evaluations
            )
            delta_out[chunk] = result.delta
            iterations[chunk] = result.iterations
            evaluations[chunk] = result.evaluations
            converged[chunk] = result.converged
            if not has_supply or not result.converged.all():
                continue
            # Demand at the solved δ, which reproduces the given shares whatever the current
            # value of the replaced characteristic.
            state = PriceState.at(
                evaluator.probabilities(result.delta),
                inputs.weights,
                inputs.nesting,
                inside,
                priced.derivative,
            )
            ownership = ownership_matrices(firm_codes[chunk], inside)
            eta = markups(state.jacobian, state.shares, ownership, inside)
            eta_out[chunk] = eta
            costs_here = prices[chunk] - eta if fitted_costs is None else fitted_costs[chunk]
            residual_foc = foc_residual(
                state.jacobian,
                state.shares,
                ownership,
                np.where(inside, prices[chunk] - costs_here, 0.0),
            )
            foc[chunk] = np.where(inside, np.abs(residual_foc), 0.0).max(axis=1)
        raise_unconverged(
            FixedPointResult(delta_out, converged, iterations, evaluations), layout.market_labels
        )
        out = frame.copy()
        residual = layout.flatten(delta_out) - (self._x1.values @ self.beta.to_numpy() + self._xi)
        out[column] = frame[column].to_numpy(np.float64) + residual / coefficient

        costs = None
        if has_supply:
            bad = (mask & ~np.isfinite(eta_out)).any(axis=1)
            if bad.any():
                raise BLPInputError(
                    "the first-order conditions are singular in markets "
                    f"{layout.market_labels[bad][:5].tolist()}: markups are not determined"
                )
            implied = layout.flatten(prices - eta_out)
            if supply_position is not None:
                if self.costs_type == "log":
                    low = implied <= 0
                    if low.any():
                        first = self._market_ids[int(np.flatnonzero(low)[0])]
                        raise BLPInputError(
                            f"{int(low.sum())} implied costs are <= 0 (first in market "
                            f"{first!r}): log costs are undefined"
                        )
                    transformed = np.log(implied)
                else:
                    transformed = implied
                fitted = self._x3.values @ self.gamma.to_numpy() + self._omega
                gamma_w = float(self.gamma.iloc[supply_position])
                assert supply_column is not None
                out[supply_column] = (
                    frame[supply_column].to_numpy(np.float64) + (transformed - fitted) / gamma_w
                )
                costs = implied
            else:
                costs = self.costs().to_numpy()
        markets = pd.DataFrame(
            {"iterations": iterations, "foc_norm": foc, "converged": converged},
            index=pd.Index(layout.market_labels, name="market_ids"),
        )
        return self._output(out, self._xi, self._omega, costs, markets, instruments)

    def _plain_column(
        self, column: Any, block: TermBlock, elsewhere: tuple[str, ...], label: str
    ) -> int:
        """Position of ``column`` in ``block``, checked to be a plain term read nowhere else."""
        if not isinstance(column, str):
            raise BLPInputError(f"the column to replace must be a name, got {column!r}")
        if column in ("prices", "shares"):
            raise BLPInputError(
                f"{column!r} is endogenous and kept by replace_exogenous; name an exogenous "
                "characteristic"
            )
        check_columns(self.products, [column], market_ids=self._market_ids, what="products")
        if column not in block.names:
            raise BLPInputError(
                f"{column!r} is not a plain term of {label} {block.formula!r} (its columns are "
                f"{list(block.names)})"
            )
        slope = block.derivative(self.products, column, self._context)
        position = block.names.index(column)
        expected = np.zeros(block.size)
        expected[position] = 1.0
        if not np.allclose(slope, expected[None, :], rtol=0, atol=1e-12):
            raise BLPInputError(
                f"{column!r} must enter {label} once and untransformed to be backed out"
            )
        for name in elsewhere:
            rhs = self.formulas[name]
            if rhs is not None and column in required_variables(rhs):
                raise BLPInputError(
                    f"{column!r} also enters the {name} formula {rhs!r}: it cannot be backed out"
                )
        return position
