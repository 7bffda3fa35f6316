"""The supply side of a model: marginal-cost formula, instruments, fixed effects, ownership.

Firms set prices in a static Bertrand–Nash equilibrium, so marginal costs are implied by demand:
c = p − η with η the markups that solve s + (Ω ⊙ (∂s/∂p)')η = 0 (Ω the ownership matrix). Costs
follow f(c) = X3γ + ω with f the identity (``costs_type="linear"``) or the log, ω the unobserved
cost shifter, and moments E[Z_S ω] = 0 with Z_S the exogenous columns of X3 plus any excluded
``supply_instruments``. :class:`SupplyDesign` holds what of this is fixed during estimation;
the supply moment block (:mod:`blpmodels.kernel.markups`) evaluates it at each θ.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from blpmodels.data.absorb import Absorber, AbsorbMethod
from blpmodels.data.design import TermBlock, build_block, check_full_rank, required_variables
from blpmodels.data.formula import check_shares_not_read
from blpmodels.data.markets import MarketLayout
from blpmodels.exceptions import BLPInputError

if TYPE_CHECKING:
    from blpmodels.data.products import ProductDesign

__all__ = ["CostsType", "SupplyDesign", "build_supply_design", "ownership_codes"]

CostsType = Literal["linear", "log"]


def ownership_codes(firm_ids: np.ndarray | None, layout: MarketLayout) -> np.ndarray:
    """``[T, J, J]`` 0/1 ownership: products of the same firm in the same market.

    Raises
    ------
    BLPInputError
        No firm ids.

    Examples
    --------
    >>> layout = MarketLayout.from_ids(np.array(["a", "a", "a"]))
    >>> ownership_codes(np.array(["f", "g", "f"], dtype=object), layout)[0].astype(int)
    array([[1, 0, 1],
           [0, 1, 0],
           [1, 0, 1]])
    """
    if firm_ids is None:
        raise BLPInputError(
            "the supply side needs a firm_ids column in the product data (the firm that sets "
            "each product's price; give each product its own id for single-product firms)"
        )
    codes, _ = pd.factorize(pd.Series(firm_ids, dtype=object))
    padded = layout.pad(codes.astype(np.float64) + 1.0)  # 0 marks padding
    mask = layout.mask
    same = padded[:, :, None] == padded[:, None, :]
    return (same & mask[:, :, None] & mask[:, None, :]).astype(np.float64)


@dataclass(eq=False)
class SupplyDesign:
    """Marginal-cost equation of the product data, fixed during estimation.

    Attributes
    ----------
    exog : TermBlock
        X3, the cost characteristics (exogenous: they are instruments too).
    instruments : TermBlock
        Excluded supply instruments.
    costs_type : {"linear", "log"}
        f in f(c) = X3γ + ω.
    absorber : Absorber or None
        Cost fixed effects.
    prices : numpy.ndarray
        ``(N,)`` observed prices.
    ownership : numpy.ndarray
        ``[T, J, J]`` 0/1 ownership from ``firm_ids``.
    costs_bounds : tuple of float
        Costs are clipped to ``[lower, upper]`` before f (as pyblp's ``costs_bounds``);
        clipped costs do not move with θ.
    price_column : str
        The product-data column that holds prices.
    """

    exog: TermBlock
    instruments: TermBlock
    costs_type: CostsType
    absorber: Absorber | None
    prices: np.ndarray
    ownership: np.ndarray
    costs_bounds: tuple[float, float] = (-np.inf, np.inf)
    price_column: str = "prices"
    X: np.ndarray = field(init=False)
    Z: np.ndarray = field(init=False)
    X_absorbed: np.ndarray = field(init=False)
    Z_absorbed: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.X = self.exog.values
        self.Z = np.column_stack([self.exog.values, self.instruments.values])
        self.X_absorbed = self.residualize(self.X)
        self.Z_absorbed = self.residualize(self.Z)
        reference = (self.X, self.Z) if self.absorber is not None else (None, None)
        check_full_rank(
            self.X_absorbed, self.x_names, "supply regressors", before_absorption=reference[0]
        )
        check_full_rank(
            self.Z_absorbed, self.z_names, "supply instruments", before_absorption=reference[1]
        )

    @classmethod
    def from_formula(
        cls,
        supply: str,
        data: pd.DataFrame,
        layout: MarketLayout,
        firm_ids: np.ndarray | None,
        *,
        supply_instruments: str | None = None,
        costs_type: str = "linear",
        supply_absorb: str | None = None,
        absorb_method: AbsorbMethod | None = None,
        costs_bounds: Any = None,
        demand_variables: set[str],
        context: Mapping[str, Any] | None = None,
        price_column: str = "prices",
        shares_column: str = "shares",
    ) -> SupplyDesign:
        """Validate the supply options and build X3, Z_S, the absorber and the ownership.

        Parameters
        ----------
        supply : str
            Cost characteristics X3, e.g. ``"1 + mushy"`` (the constant is dropped when
            ``supply_absorb`` absorbs fixed effects).
        data : pandas.DataFrame
            Product data (the design's own copy).
        layout : MarketLayout
            The products' market layout.
        firm_ids : numpy.ndarray or None
            Firm of each row.
        supply_instruments : str, optional
            Excluded supply instruments (a formula right-hand side).
        costs_type : {"linear", "log"}
            f(c) = c or log(c).
        supply_absorb : str, optional
            Fixed effects in the cost equation, e.g. ``"C(product_ids)"``.
        absorb_method : str, optional
            pyhdfe method.
        costs_bounds : tuple, optional
            ``(lower, upper)`` for the implied costs (None entries: no bound).
        demand_variables : set of str
            Columns the demand formulas read: prices must be among them.
        context : mapping, optional
            Names visible to formula transforms.
        price_column : str
            The prices column.
        shares_column : str
            The shares column (refused in the cost formulas, like prices).

        Returns
        -------
        SupplyDesign

        Raises
        ------
        BLPInputError
            Bad options, prices absent from demand, prices or shares in the cost formulas,
            missing firm ids, an excluded supply instrument that is also a cost characteristic.
        """
        if not isinstance(supply, str) or not supply.strip():
            raise BLPInputError("supply must be a formula such as '1 + mushy'")
        if costs_type not in ("linear", "log"):
            raise BLPInputError(f"costs_type must be 'linear' or 'log', got {costs_type!r}")
        check_shares_not_read(supply, shares_column, f"supply={supply!r}")
        check_shares_not_read(
            supply_instruments, shares_column, f"supply_instruments={supply_instruments!r}"
        )
        if price_column not in demand_variables:
            raise BLPInputError(
                f"a supply side needs {price_column!r} in the demand formulas (markups come "
                "from the price derivatives of demand), but demand does not use it"
            )
        bounds = _costs_bounds(costs_bounds)
        if price_column not in data.columns:
            raise BLPInputError(f"product data have no column {price_column!r}")
        ownership = ownership_codes(firm_ids, layout)
        markets = data["market_ids"].to_numpy()
        block = partial(build_block, data=data, context=context, market_ids=markets)
        exog = block(
            supply, intercept="drop" if supply_absorb else "keep", role="supply regressors"
        )
        for block_name, formula in (("supply", supply), ("supply_instruments", supply_instruments)):
            if formula and price_column in required_variables(formula):
                raise BLPInputError(
                    f"{block_name} {formula!r} reads {price_column!r}: prices are endogenous "
                    "in the cost equation"
                )
        instruments = block(
            f"0 + {supply_instruments}" if supply_instruments else None,
            intercept="drop",
            role="supply instruments",
        )
        if exog.size == 0:
            raise BLPInputError(
                f"supply={supply!r} has no cost characteristics (with supply_absorb the "
                "constant is absorbed): add one"
            )
        repeated = [name for name in instruments.names if name in exog.names]
        if repeated:
            raise BLPInputError(
                f"{repeated[0]!r} is both a cost characteristic (supply={supply!r}) and an "
                "excluded supply instrument: cost characteristics are already their own "
                f"instruments, so drop it from supply_instruments={supply_instruments!r}"
            )
        absorber = (
            Absorber.from_formula(supply_absorb, data, method=absorb_method)
            if supply_absorb
            else None
        )
        prices = np.asarray(data[price_column], dtype=np.float64)
        return cls(
            exog,
            instruments,
            costs_type,  # type: ignore[arg-type]
            absorber,
            prices,
            ownership,
            bounds,
            price_column,
        )

    @property
    def x_names(self) -> list[str]:
        """Parameter names of γ: ``gamma[Intercept]``, ``gamma[mushy]``."""
        return [f"gamma[{name}]" for name in self.exog.names]

    @property
    def z_names(self) -> list[str]:
        """Supply instrument names (exogenous cost characteristics first)."""
        return [*self.exog.names, *self.instruments.names]

    def residualize(self, values: np.ndarray) -> np.ndarray:
        """Absorb the cost fixed effects (identity without them)."""
        return values if self.absorber is None else self.absorber.residualize(values)

    def clipped(self, costs: np.ndarray) -> np.ndarray:
        """Which costs lie on or beyond ``costs_bounds`` (their f(c) is the bound's, fixed).

        Examples
        --------
        >>> design = SupplyDesign.__new__(SupplyDesign)
        >>> design.costs_bounds = (0.001, np.inf)
        >>> design.clipped(np.array([-1.0, 0.001, 0.5])).tolist()
        [True, True, False]
        """
        low, high = self.costs_bounds
        return (costs <= low) | (costs >= high)

    def transform(self, costs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """f(c) after clipping to the bounds, and f'(c) (0 where clipped or not finite).

        Log costs of non-positive costs are NaN: such a θ cannot be evaluated.
        """
        low, high = self.costs_bounds
        clipped = np.clip(costs, low, high)
        moving = (costs > low) & (costs < high)
        if self.costs_type == "linear":
            return clipped, moving.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.where(clipped > 0, np.log(clipped), np.nan)
            slope = np.where(moving & (clipped > 0), 1.0 / clipped, 0.0)
        return values, slope


def _costs_bounds(bounds: Any) -> tuple[float, float]:
    if bounds is None:
        return -np.inf, np.inf
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise BLPInputError(f"costs_bounds must be a pair (lower, upper), got {bounds!r}")
    low = -np.inf if bounds[0] is None else float(bounds[0])
    high = np.inf if bounds[1] is None else float(bounds[1])
    if np.isnan(low) or np.isnan(high) or not low < high:
        raise BLPInputError(f"costs_bounds must satisfy lower < upper, got {bounds!r}")
    return low, high


def build_supply_design(
    design: ProductDesign,
    supply: str | None,
    *,
    supply_instruments: str | None = None,
    costs_type: str = "linear",
    supply_absorb: str | None = None,
    costs_bounds: Any = None,
    absorb_method: AbsorbMethod | None = None,
    context: Mapping[str, Any] | None = None,
) -> SupplyDesign | None:
    """The cost side of a model built by ``from_formula`` (``None`` without ``supply``).

    Shared by every model class, so that the supply arguments mean the same everywhere; the
    options that only make sense with a cost equation are an error without one.

    Examples
    --------
    >>> build_supply_design(design, None) is None  # doctest: +SKIP
    True
    """
    if supply is None:
        if supply_instruments or supply_absorb or costs_bounds is not None:
            raise BLPInputError(
                "supply_instruments, supply_absorb and costs_bounds need a supply formula "
                "(supply='1 + ...')"
            )
        if costs_type != "linear":
            raise BLPInputError(f"costs_type={costs_type!r} needs a supply formula (supply=...)")
        return None
    demand_variables: set[str] = set()
    for block in (design.exog, design.endog, design.random):
        if block.formula:
            demand_variables |= required_variables(block.formula)
    return SupplyDesign.from_formula(
        supply,
        design.data,
        design.layout,
        design.firm_ids,
        supply_instruments=supply_instruments,
        costs_type=costs_type,
        supply_absorb=supply_absorb,
        absorb_method=absorb_method,
        costs_bounds=costs_bounds,
        demand_variables=demand_variables,
        context=dict(context or {}),
        shares_column=design.shares_column,
    )
