"""Simulated economies: random-coefficients (nested) demand, costs and equilibrium prices.

:class:`Simulation` builds an economy from id data, formulas and true parameters (β, Σ, Π, ρ,
γ), draws or takes the demand and cost shocks, and solves for equilibrium prices
(:meth:`Simulation.replace_endogenous`) or for the characteristics that reproduce given shares
(:meth:`Simulation.replace_exogenous`), with the same kernel the estimators use. The inputs are
checked and laid out by :mod:`blpmodels.simulation.inputs`, and the kernel is run over groups
of markets by :mod:`blpmodels.simulation.solvers`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from blpmodels.data.formula import required_variables
from blpmodels.data.instruments import build_blp_instruments, build_differentiation_instruments
from blpmodels.exceptions import BLPInputError
from blpmodels.kernel.ownership import resolve_ownership
from blpmodels.kernel.shares import Nesting
from blpmodels.results.demand import MarketInputs, PricedMarkets
from blpmodels.simulation.inputs import (
    Economy,
    check_chunk_size,
    check_float,
    check_formulas,
    check_instruments,
    check_int,
    draw_shocks,
    row_values,
)
from blpmodels.simulation.solvers import invert_shares, solve_equilibrium

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


def _exogenous_instruments(
    frame: pd.DataFrame, formulas: Mapping[str, str | None], context: Mapping[str, Any], kind: str
) -> pd.DataFrame:
    """Instruments on the exogenous characteristics the formulas read, redundant columns dropped."""
    variables: set[str] = set()
    for name in ("linear", "random", "supply"):
        if formulas[name] is not None:
            variables |= required_variables(formulas[name])
    variables -= {"prices", "shares"} | set(context)
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
    return instruments[_independent_columns(instruments)]


def _independent_columns(instruments: pd.DataFrame) -> list[str]:
    """Columns that are not a linear combination of a constant and the columns kept before.

    In balanced markets the own- and rival-firm product counts add up to a constant, for
    instance: dropping such columns lets the instruments be used as they are.
    """
    kept: list[str] = []
    basis = np.ones((len(instruments), 1)) / np.sqrt(len(instruments))
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
    return kept


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
        formulas = check_formulas(products, linear, random, supply, demographics)
        if costs_type not in ("linear", "log"):
            raise BLPInputError(f"costs_type must be 'linear' or 'log', got {costs_type!r}")
        xi_variance = check_float("xi_variance", xi_variance, low=0.0)
        omega_variance = check_float("omega_variance", omega_variance, low=0.0)
        correlation = check_float("correlation", correlation, low=-1.0, high=1.0)
        if seed is not None:
            seed = check_int("seed", seed, 0)
        options = {
            "sigma": sigma,
            "pi": pi,
            "rho": rho,
            "agent_data": agent_data,
            "integration": integration,
            "rc_types": rc_types,
        }
        economy = Economy.build(products, formulas, beta, gamma, options, context)
        self._economy = economy
        self.products = economy.products
        self.formulas = economy.formulas
        self.beta = pd.Series(economy.beta, index=list(economy.x1.names), name="beta")
        self.gamma = pd.Series(
            economy.gamma, index=list(economy.x3.names), name="gamma", dtype=float
        )
        self.parameters = economy.parameters
        self.costs_type = costs_type
        self.agent_data = None if economy.agents is None else economy.agents.data
        self.seed = seed
        # ξ is drawn from the same stream whether or not ω is given, and the other way round.
        drawn_xi, drawn_omega = draw_shocks(
            len(self.products), seed, xi_variance, omega_variance, correlation
        )
        given_xi, given_omega = self._row_argument(xi, "xi"), self._row_argument(omega, "omega")
        self._xi = drawn_xi if given_xi is None else given_xi
        self._omega = drawn_omega if given_omega is None else given_omega

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
        shocks = self._omega if omega is None else self._row_argument(omega, "omega")
        index = self._economy.x3.values @ self.gamma.to_numpy() + shocks
        values = np.exp(index) if self.costs_type == "log" else index
        return pd.Series(values, index=self.products.index, name="costs")

    # ------------------------------------------------------------------ machinery
    def _row_argument(self, values: Any, label: str) -> np.ndarray | None:
        if values is None:
            return None
        return row_values(values, self.products.index, self._economy.market_ids, label)

    def _nesting(self, positions: np.ndarray, mask: np.ndarray) -> Nesting:
        nest_codes = self._economy.nest_codes
        if nest_codes is None:
            return Nesting.unnested(mask.shape)
        n_nests = len(self.parameters.nests)
        rho = np.broadcast_to(self.parameters.rho, (n_nests,))
        return Nesting.from_codes(self._economy.layout.pad(nest_codes)[positions], n_nests, rho)

    def _priced(self, xi: np.ndarray, positions: np.ndarray) -> PricedMarkets:
        """Demand in some markets, evaluable at any prices (utilities are linear in them)."""
        economy = self._economy
        mask = economy.layout.mask[positions]
        rows = economy.layout.index[positions]
        mask3 = mask[:, :, None]
        coefficients = economy.coefficients[positions]
        weights = economy.weights[positions]
        beta = self.beta.to_numpy()
        delta = (economy.x1.values @ beta + xi)[rows]
        slope = (economy.d_x1 @ beta)[rows]
        derivative = np.repeat(slope[:, :, None], weights.shape[1], axis=2)
        if economy.x2.size:
            swapped = np.swapaxes(coefficients, 1, 2)
            mu = np.matmul(economy.x2.values[rows], swapped)
            derivative = derivative + np.matmul(economy.d_x2[rows], swapped)
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
            built = _exogenous_instruments(frame, self.formulas, self._economy.context, instruments)
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
        ownership: Callable[[Any, Any], float] | None = None,
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
        ownership : callable, optional
            Profit weights ``kappa(f, g)`` on the ``firm_ids``: firm f maximizes
            Σ_g κ(f, g) × (profits of g) (partial or common ownership, partial collusion), so
            Ω_jk = κ(f_j, f_k)/κ(f_j, f_j); standard ownership by default.

        Returns
        -------
        SimulationResults
            Products with the equilibrium ``prices`` and ``shares``, per-market iterations and
            first-order-condition norms.

        Raises
        ------
        BLPInputError
            Bad shocks, costs or starting prices (wrong length, NaN), no costs without a cost
            formula, bad ``tol`` or ``max_iterations``, an ``ownership`` that is not a callable
            giving finite weights with positive own weights; all before any equilibrium work.
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
        tol = check_float("tol", tol, low=0.0, low_open=True)
        max_iterations = check_int("max_iterations", max_iterations, 1)
        check_instruments(instruments)
        check_chunk_size(chunk_size)
        xi_values, omega_values, cost_values, start = self._endogenous_inputs(
            costs, xi, omega, prices
        )
        economy = self._economy
        firm_codes, kappa = economy.firm_codes, None
        if ownership is not None:
            if not callable(ownership):
                raise BLPInputError(
                    f"ownership must be a callable kappa(f, g), got {type(ownership).__name__}"
                )
            spec = resolve_ownership(
                self.products["firm_ids"].to_numpy(object),
                np.asarray(economy.market_ids, dtype=object),
                self.products.index,
                ownership=ownership,
            )
            firm_codes, kappa = spec.codes, spec.kappa
        equilibrium_prices, shares, markets = solve_equilibrium(
            functools.partial(self._priced, xi_values),
            economy.layout,
            cost_values,
            start,
            firm_codes,
            tol=tol,
            max_iterations=max_iterations,
            chunk_size=chunk_size,
            kappa=kappa,
        )
        frame = self.products.copy()
        frame["prices"] = equilibrium_prices
        frame["shares"] = shares
        return self._output(frame, xi_values, omega_values, cost_values, markets, instruments)

    def _endogenous_inputs(
        self, costs: Any, xi: Any, omega: Any, prices: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """ξ, ω, costs and starting prices per row: those given, checked, or the simulation's."""
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
        return xi_values, omega_values, cost_values, cost_values if start is None else start

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
        tol = check_float("tol", tol, low=0.0, low_open=True)
        max_evaluations = check_int("max_evaluations", max_evaluations, 1)
        check_instruments(instruments)
        check_chunk_size(chunk_size)
        economy = self._economy
        shares = economy.observed_shares()
        position = economy.plain_position(column, "linear")
        coefficient = float(self.beta.iloc[position])
        if coefficient == 0:
            raise BLPInputError(f"beta[{column!r}] is 0: {column!r} does not move utility")
        self._check_supply_column(supply_column)
        has_supply = self.formulas["supply"] is not None
        costs = self.costs().to_numpy() if has_supply and supply_column is None else None
        prices = self.products["prices"].to_numpy(np.float64)
        inversion = invert_shares(
            functools.partial(self._priced, self._xi),
            economy.layout,
            shares,
            prices,
            economy.firm_codes,
            supply=has_supply,
            costs=costs,
            tol=tol,
            max_evaluations=max_evaluations,
            chunk_size=chunk_size,
        )
        out = self.products.copy()
        residual = inversion.delta - (economy.x1.values @ self.beta.to_numpy() + self._xi)
        out[column] = self.products[column].to_numpy(np.float64) + residual / coefficient
        if supply_column is not None and inversion.markups is not None:
            costs = prices - inversion.markups
            out[supply_column] = self._backed_out_supply(supply_column, costs)
        return self._output(out, self._xi, self._omega, costs, inversion.markets, instruments)

    def _check_supply_column(self, supply_column: Any) -> None:
        """The cost characteristic to back out, if any, is a plain X3 term with γ ≠ 0."""
        if supply_column is None:
            return
        if self.formulas["supply"] is None:
            raise BLPInputError("supply_column needs a cost formula (supply='1 + ...')")
        position = self._economy.plain_position(supply_column, "supply")
        if float(self.gamma.iloc[position]) == 0:
            raise BLPInputError(f"gamma[{supply_column!r}] is 0: it does not move costs")

    def _backed_out_supply(self, supply_column: str, costs: np.ndarray) -> np.ndarray:
        """The cost characteristic w that makes X3 γ + ω equal f(costs) (f = identity or log)."""
        if self.costs_type == "log":
            low = costs <= 0
            if low.any():
                first = self._economy.market_ids[int(np.flatnonzero(low)[0])]
                raise BLPInputError(
                    f"{int(low.sum())} implied costs are <= 0 (first in market {first!r}): log "
                    "costs are undefined"
                )
            transformed = np.log(costs)
        else:
            transformed = costs
        fitted = self._economy.x3.values @ self.gamma.to_numpy() + self._omega
        gamma_w = float(self.gamma[supply_column])
        return self.products[supply_column].to_numpy(np.float64) + (transformed - fitted) / gamma_w
