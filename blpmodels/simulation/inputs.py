"""Checking and assembling the inputs of the simulators.

The argument checks shared by :func:`blpmodels.simulation.simulate_logit` and
:class:`blpmodels.simulation.Simulation`, the correlated demand and cost shocks both draw, and
:class:`Economy`: what a :class:`~blpmodels.simulation.Simulation` is built from, validated
(ids, formulas, parameters named for the formulas' columns, agents, nests) and laid out as the
kernel wants it (padded markets, agent coefficients, price derivatives of the utilities).
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
from blpmodels.data.integration import Integration
from blpmodels.data.markets import MarketLayout, check_ids
from blpmodels.data.parameters import NonlinearParameters
from blpmodels.data.products import validate_shares
from blpmodels.exceptions import BLPInputError

__all__ = [
    "Economy",
    "check_chunk_size",
    "check_float",
    "check_formulas",
    "check_instruments",
    "check_int",
    "correlated_shocks",
    "draw_shocks",
    "row_values",
]


# ---------------------------------------------------------------------------- arguments
def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int, checked to be an integer (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise BLPInputError(f"argument {name!r} must be an integer, got {value!r}")
    if value < minimum:
        raise BLPInputError(f"argument {name!r} must be >= {minimum}, got {value!r}")
    return int(value)


def check_float(
    name: str,
    value: object,
    *,
    low: float = -np.inf,
    high: float = np.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a float, checked to be a finite real number in the given interval."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise BLPInputError(f"argument {name!r} must be a real number, got {value!r}")
    number = float(value)
    if not np.isfinite(number):
        raise BLPInputError(f"argument {name!r} must be finite, got {value!r}")
    below = number <= low if low_open else number < low
    above = number >= high if high_open else number > high
    if below or above:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise BLPInputError(f"argument {name!r} must lie in {interval}, got {value!r}")
    return number


def check_chunk_size(chunk_size: Any) -> None:
    """A number of markets solved together: None (all) or a positive integer."""
    if chunk_size is not None:
        check_int("chunk_size", chunk_size, 1)


def check_instruments(kind: Any) -> None:
    """The kind of instruments added to simulated products."""
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


def check_formulas(
    products: Any, linear: Any, random: Any, supply: Any, demographics: Any
) -> dict[str, str | None]:
    """The product data checked to be a non-empty DataFrame, and the formulas by role."""
    if not isinstance(products, pd.DataFrame):
        raise BLPInputError(f"products must be a pandas DataFrame, got {type(products).__name__}")
    if len(products) == 0:
        raise BLPInputError("products has no rows")
    return {
        "linear": _formula(linear, "linear", required=True),
        "random": _formula(random, "random"),
        "supply": _formula(supply, "supply"),
        "demographics": _formula(demographics, "demographics"),
    }


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


def row_values(values: Any, index: pd.Index, market_ids: np.ndarray, label: str) -> np.ndarray:
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


# ---------------------------------------------------------------------------- shocks
def correlated_shocks(
    demand_draws: np.ndarray,
    cost_draws: np.ndarray,
    xi_scale: float,
    omega_scale: float,
    correlation: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Demand and cost shocks ξ and ω with the given scales and correlation.

    ξ = s_ξ z_d and ω = s_ω (r z_d + √(1 − r²) z_c) from independent standard normal draws
    z_d and z_c.

    Parameters
    ----------
    demand_draws, cost_draws : numpy.ndarray
        Standard normal draws z_d and z_c, of one shape.
    xi_scale, omega_scale : float
        Standard deviations s_ξ and s_ω.
    correlation : float
        Correlation r of ξ and ω, in [−1, 1].

    Returns
    -------
    tuple of numpy.ndarray
        ξ and ω.

    Examples
    --------
    >>> xi, omega = correlated_shocks(np.array([1.0]), np.array([2.0]), 0.5, 2.0, 0.0)
    >>> xi.tolist(), omega.tolist()
    ([0.5], [4.0])
    """
    xi = xi_scale * demand_draws
    omega = omega_scale * (correlation * demand_draws + np.sqrt(1.0 - correlation**2) * cost_draws)
    return xi, omega


def draw_shocks(
    n_rows: int, seed: int | None, xi_variance: float, omega_variance: float, correlation: float
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded ξ and ω for ``n_rows`` products (:func:`correlated_shocks` of one ``[n, 2]`` draw)."""
    draws = np.random.default_rng(seed).standard_normal((n_rows, 2))
    return correlated_shocks(
        draws[:, 0], draws[:, 1], np.sqrt(xi_variance), np.sqrt(omega_variance), correlation
    )


# ---------------------------------------------------------------------------- economy
def _check_agent_options(
    formulas: Mapping[str, str | None], options: Mapping[str, Any], gamma: Any
) -> None:
    """Options that need random coefficients, a cost formula or agent data have them."""
    if formulas["random"] is None:
        given = {**options, "demographics": formulas["demographics"]}
        for name in ("sigma", "pi", "demographics", "agent_data", "integration", "rc_types"):
            if given[name] is not None:
                raise BLPInputError(f"{name} needs random coefficients: give random='0 + ...'")
    supply = formulas["supply"]
    if supply is None and gamma is not None:
        raise BLPInputError("gamma needs a cost formula: give supply='1 + ...'")
    if supply is not None and gamma is None:
        raise BLPInputError(f"supply={supply!r} needs gamma, the cost parameters by name")
    integration = options["integration"]
    if integration is not None and not isinstance(integration, Integration):
        raise BLPInputError(f"integration must be an Integration, got {type(integration).__name__}")
    if integration is not None and options["agent_data"] is not None:
        raise BLPInputError("give agent_data or integration, not both")
    if formulas["demographics"] is not None and options["agent_data"] is None:
        raise BLPInputError("demographics need agent_data (integration only builds nodes)")


def _checked_ids(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Market and firm ids, with (market, product) pairs checked unique when products are named."""
    check_columns(frame, ["market_ids", "firm_ids"], what="products")
    market_ids = check_ids(frame["market_ids"], "market_ids", "products")
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
    return market_ids, firm_ids


def _check_reads(formulas: Mapping[str, str | None], context: Mapping[str, Any]) -> None:
    """Demand reads prices and neither demand nor costs read shares; costs do not read prices."""
    reads = {
        name: required_variables(rhs) - set(context)
        for name, rhs in formulas.items()
        if name != "demographics" and rhs is not None
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


def _nests(frame: pd.DataFrame, rho: Any) -> tuple[np.ndarray | None, tuple[Any, ...]]:
    """Nest code of each row and the nest labels (sorted), or None without ``nesting_ids``."""
    if "nesting_ids" not in frame.columns:
        if rho is not None:
            raise BLPInputError("rho was given but the products have no nesting_ids column")
        return None, ()
    nesting_ids = check_ids(frame["nesting_ids"], "nesting_ids", "products")
    codes, labels = pd.factorize(pd.Series(nesting_ids), sort=True)
    return codes.astype(np.intp), tuple(labels.tolist())


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


@dataclass(frozen=True, eq=False)
class Economy:
    """The validated inputs of a simulated economy, laid out for the kernel.

    Built by :meth:`build` from what :class:`~blpmodels.simulation.Simulation` is given; the
    simulation keeps it and reads its markets, designs and agents when it solves.

    Attributes
    ----------
    products, formulas
        As the :class:`~blpmodels.simulation.Simulation` attributes of these names.
    context : dict
        Extra names for formula transforms.
    layout : MarketLayout
        Rows of each market, padded.
    market_ids : numpy.ndarray
        Market id of each row.
    firm_codes : numpy.ndarray
        Firm code of each row.
    x1, x2, x3 : TermBlock
        The linear, random-coefficient and cost designs (empty blocks when absent).
    beta, gamma : numpy.ndarray
        True β by X1 column and γ by X3 column.
    parameters : NonlinearParameters
        Σ, Π and ρ.
    agents : AgentDesign or None
        The agents (built from ``integration`` when given); None without random coefficients.
    nest_codes : numpy.ndarray or None
        Nest of each row (nests sorted); None without ``nesting_ids``.
    coefficients : numpy.ndarray
        ``[T, I, K2]`` agent coefficients at the true Σ and Π (``[T, 1, 0]`` without agents).
    weights : numpy.ndarray
        ``[T, I]`` integration weights (one agent of weight 1 without agents).
    d_x1, d_x2 : numpy.ndarray
        Price derivatives of X1 and X2 per row, checked constant in prices.
    """

    products: pd.DataFrame
    formulas: dict[str, str | None]
    context: dict[str, Any]
    layout: MarketLayout
    market_ids: np.ndarray
    firm_codes: np.ndarray
    x1: TermBlock
    x2: TermBlock
    x3: TermBlock
    beta: np.ndarray
    gamma: np.ndarray
    parameters: NonlinearParameters
    agents: AgentDesign | None
    nest_codes: np.ndarray | None
    coefficients: np.ndarray
    weights: np.ndarray
    d_x1: np.ndarray
    d_x2: np.ndarray

    @classmethod
    def build(
        cls,
        products: pd.DataFrame,
        formulas: dict[str, str | None],
        beta: Any,
        gamma: Any,
        options: Mapping[str, Any],
        context: Mapping[str, Any] | None,
    ) -> Economy:
        """Validate the economy's inputs and lay them out.

        Parameters
        ----------
        products : pandas.DataFrame
            Product data (copied).
        formulas : dict
            Formulas by role, from :func:`check_formulas`.
        beta, gamma : mapping of str to float
            True β and γ by column name (``gamma`` None without a cost formula).
        options : mapping
            ``sigma``, ``pi``, ``rho``, ``agent_data``, ``integration`` and ``rc_types`` as
            given to :class:`~blpmodels.simulation.Simulation`.
        context : mapping, optional
            Extra names for formula transforms.

        Returns
        -------
        Economy

        Raises
        ------
        BLPInputError
            As listed for :class:`~blpmodels.simulation.Simulation`.
        """
        _check_agent_options(formulas, options, gamma)
        namespace = dict(context or {})
        frame = products.copy()
        market_ids, firm_ids = _checked_ids(frame)
        layout = MarketLayout.from_ids(market_ids)
        _check_reads(formulas, namespace)
        if "prices" not in frame.columns:
            frame["prices"] = 0.0
        x1 = build_block(
            formulas["linear"], frame, context=namespace, market_ids=market_ids, role="X1 (linear)"
        )
        beta_values = _named_values(beta, x1.names, "beta")
        x2 = build_block(
            formulas["random"], frame, context=namespace, market_ids=market_ids, role="X2 (random)"
        )
        x3 = build_block(
            formulas["supply"], frame, context=namespace, market_ids=market_ids, role="X3 (supply)"
        )
        gamma_values = np.zeros(0) if gamma is None else _named_values(gamma, x3.names, "gamma")
        nest_codes, nests = _nests(frame, options["rho"])
        agents = _agents(formulas, x2, layout, options, namespace)
        parameters = _parameters(x2, agents, nests, options)
        coefficients, weights = _agent_coefficients(parameters, agents, layout.n_markets)
        return cls(
            products=frame,
            formulas=formulas,
            context=namespace,
            layout=layout,
            market_ids=market_ids,
            firm_codes=pd.factorize(pd.Series(firm_ids), sort=False)[0].astype(np.intp),
            x1=x1,
            x2=x2,
            x3=x3,
            beta=beta_values,
            gamma=gamma_values,
            parameters=parameters,
            agents=agents,
            nest_codes=nest_codes,
            coefficients=coefficients,
            weights=weights,
            d_x1=_linear_in(x1, frame, "prices", namespace),
            d_x2=_linear_in(x2, frame, "prices", namespace),
        )

    def observed_shares(self) -> np.ndarray:
        """The products' ``shares``, checked (present, numeric, in (0, 1), inside sums < 1)."""
        check_columns(self.products, ["shares"], market_ids=self.market_ids, what="products")
        shares = numeric_values(self.products["shares"], "products column 'shares'")
        validate_shares(shares, self.market_ids)
        return shares

    def plain_position(self, column: Any, role: Literal["linear", "supply"]) -> int:
        """Position of ``column`` in X1 (or X3), checked to be a plain term no other formula reads.

        Such a column can be backed out of mean utilities (or costs) one row at a time.
        """
        block, label = (self.x1, "X1 (linear)") if role == "linear" else (self.x3, "X3 (supply)")
        if not isinstance(column, str):
            raise BLPInputError(f"the column to replace must be a name, got {column!r}")
        if column in ("prices", "shares"):
            raise BLPInputError(
                f"{column!r} is endogenous and kept by replace_exogenous; name an exogenous "
                "characteristic"
            )
        check_columns(self.products, [column], market_ids=self.market_ids, what="products")
        if column not in block.names:
            raise BLPInputError(
                f"{column!r} is not a plain term of {label} {block.formula!r} (its columns are "
                f"{list(block.names)})"
            )
        slope = block.derivative(self.products, column, self.context)
        position = block.names.index(column)
        expected = np.zeros(block.size)
        expected[position] = 1.0
        if not np.allclose(slope, expected[None, :], rtol=0, atol=1e-12):
            raise BLPInputError(
                f"{column!r} must enter {label} once and untransformed to be backed out"
            )
        for name in ("linear", "random", "supply"):
            rhs = self.formulas[name]
            if name != role and rhs is not None and column in required_variables(rhs):
                raise BLPInputError(
                    f"{column!r} also enters the {name} formula {rhs!r}: it cannot be backed out"
                )
        return position


def _agents(
    formulas: Mapping[str, str | None],
    x2: TermBlock,
    layout: MarketLayout,
    options: Mapping[str, Any],
    context: dict[str, Any],
) -> AgentDesign | None:
    """The agents from ``agent_data`` or built by ``integration``; None without X2."""
    if formulas["random"] is None:
        return None
    integration, agent_data = options["integration"], options["agent_data"]
    if integration is None and agent_data is None:
        raise BLPInputError("random coefficients need agent_data or integration=")
    return AgentDesign.from_data_or_integration(
        agent_data,
        integration,
        layout.market_labels,
        x2.size,
        demographics=formulas["demographics"],
        context=context,
    )


def _parameters(
    x2: TermBlock, agents: AgentDesign | None, nests: tuple[Any, ...], options: Mapping[str, Any]
) -> NonlinearParameters:
    """Σ, Π and ρ, checked against the X2 columns, the demographics and the nests."""
    rc_types = options["rc_types"]
    parameters = NonlinearParameters.build(
        x2.names,
        () if agents is None else agents.demographic_names,
        nests,
        sigma=options["sigma"],
        pi=options["pi"],
        rho=options["rho"],
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
    return parameters


def _agent_coefficients(
    parameters: NonlinearParameters, agents: AgentDesign | None, n_markets: int
) -> tuple[np.ndarray, np.ndarray]:
    """Agent coefficients ``[T, I, K2]`` at the true Σ and Π and the weights ``[T, I]``.

    Without agents every market has one agent of weight 1 and no coefficients: the logit.
    """
    if agents is None:
        return np.zeros((n_markets, 1, 0)), np.ones((n_markets, 1))
    coefficients, _ = parameters.coefficients(parameters.theta0, agents.nodes, agents.demographics)
    return coefficients, agents.weights
