"""Product data: validated shares and ids, design blocks, absorption and the market layout.

:class:`ProductDesign` is built once per model and holds everything about the product side that
does not depend on parameters: X1 = [exogenous | endogenous], Z = [exogenous | excluded
instruments], the random-coefficient characteristics X2, all of them with fixed effects absorbed
where needed, and the padded ``[T, J]`` layout the kernel uses. Every check runs here, before any
estimation work, and names the column, market or term at fault.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from blpmodels.data.absorb import Absorber, AbsorbMethod
from blpmodels.data.design import (
    TermBlock,
    build_block,
    check_columns,
    check_full_rank,
    check_scales,
    check_unique_columns,
    column_norms,
    first_label,
    numeric_values,
)
from blpmodels.data.formula import ParsedFormula, check_shares_not_read, required_variables
from blpmodels.data.markets import FactorizedIds, MarketLayout, check_ids, factorize_ids
from blpmodels.data.nests import nesting_column_names, nesting_values
from blpmodels.exceptions import BLPInputError

__all__ = ["MIN_OUTSIDE_SHARE", "ProductDesign", "validate_shares"]

#: Smallest outside-good share accepted in a market (one minus the sum of its inside shares).
#:
#: Every model uses log s_0 (δ = log s_j − log s_0 for the logit, and the outside good's
#: probability in all of them), and s_0 is computed as 1 − Σ_j s_j: its rounding error is about
#: J·1e-16 whatever s_0 is, so at s_0 = 1e-12 log s_0 is already uncertain in the fourth digit,
#: and a market whose shares were normalized to sum to one (s_0 a rounding error, often 0 or
#: 1e-16) sets δ there from noise and can flip the sign of the price coefficient. Markets below
#: this share are an error naming them. It is a module setting rather than a keyword so that
#: every way in (``from_formula``, the array interface, simulation inputs) reads the same
#: value; data with genuinely tiny outside shares computed to more digits can lower it:
#: ``blpmodels.data.products.MIN_OUTSIDE_SHARE = 1e-15``.
MIN_OUTSIDE_SHARE = 1e-12


def validate_shares(
    shares: np.ndarray,
    market_ids: np.ndarray,
    column: str = "shares",
    *,
    min_outside_share: float | None = None,
) -> None:
    """Check that shares are finite, in (0, 1), and leave an outside share in every market.

    Parameters
    ----------
    shares : numpy.ndarray
        ``(N,)`` market shares.
    market_ids : numpy.ndarray
        ``(N,)`` market of each row.
    column : str
        Column name for messages.
    min_outside_share : float, optional
        Smallest outside share (1 − the sum of a market's inside shares) accepted; default
        :data:`MIN_OUTSIDE_SHARE` (1e-12), read when called.

    Raises
    ------
    BLPInputError
        Naming the column, how many rows fail and the first market where they do; or the
        markets whose outside share is below ``min_outside_share``.

    Examples
    --------
    >>> validate_shares(np.array([0.2, 0.9]), np.array(["a", "a"]))
    Traceback (most recent call last):
    ...
    blpmodels.exceptions.BLPInputError: column 'shares': inside shares sum to >= 1 ...
    """
    ids = pd.Series(np.asarray(market_ids, dtype=object))
    checks = [
        (~np.isfinite(shares), "are missing or not finite"),
        (shares <= 0, "are <= 0"),
        (shares >= 1, "are >= 1"),
    ]
    for bad, what in checks:
        if bad.any():
            raise BLPInputError(
                f"column {column!r}: {int(bad.sum())} rows {what} "
                f"(first in market {first_label(ids, bad)!r}); logit shares must lie in (0, 1)"
            )
    totals = pd.Series(shares).groupby(ids.to_numpy(), sort=False).sum()
    over = totals[totals >= 1]
    if len(over):
        raise BLPInputError(
            f"column {column!r}: inside shares sum to >= 1 in {len(over)} market(s), e.g. "
            f"{over.index[0]!r} (sum {over.iloc[0]:.6g}); the outside good needs a positive share"
        )
    threshold = MIN_OUTSIDE_SHARE if min_outside_share is None else float(min_outside_share)
    outside = 1.0 - totals
    tiny = outside[outside < threshold]
    if len(tiny):
        raise BLPInputError(
            f"column {column!r}: the outside share (1 - the sum of inside shares) is below "
            f"{threshold:.3g} in {len(tiny)} market(s), e.g. market {tiny.index[0]!r} (outside "
            f"share {tiny.iloc[0]:.3g}): log s_0 there is rounding noise. Shares must be "
            "fractions of a market size that includes consumers who buy none of the products "
            "(normalized shares summing to one have no outside good); if such small outside "
            "shares are right, lower blpmodels.data.products.MIN_OUTSIDE_SHARE"
        )


def _ids(data: pd.DataFrame, column: str | None, required: bool = False) -> np.ndarray | None:
    if column is None:
        return None
    if column not in data.columns:
        if required:
            check_columns(data, [column])
        return None
    return check_ids(data[column], column)


def _nesting_ids(data: pd.DataFrame, column: str | list[str] | None) -> np.ndarray | None:
    """``(N,)`` nest ids from one column, ``(N, 2)`` from two (upper level first)."""
    if column is None or isinstance(column, str):
        return _ids(data, column)
    check_columns(data, column)
    return nesting_values(data[column], len(data))


@dataclass(eq=False)
class ProductDesign:
    """Everything about the product data that is fixed during estimation.

    Build it with :meth:`from_formula` or :meth:`from_arrays`. Id columns follow the field's
    conventions: ``market_ids`` (required), ``product_ids``, ``firm_ids``, ``nesting_ids``.

    Attributes
    ----------
    data : pandas.DataFrame
        The product data (original index kept for labelling outputs).
    shares : numpy.ndarray
        ``(N,)`` observed shares.
    market_ids, product_ids, firm_ids, nesting_ids : numpy.ndarray or None
        Row ids (``product_ids`` and the others are optional); ``nesting_ids`` is ``(N, 2)``
        for two-level nests (upper level first, see :mod:`blpmodels.data.nests`).
    exog, endog, instruments, random : TermBlock
        Exogenous characteristics, instrumented regressors, excluded instruments, and
        random-coefficient characteristics X2.
    absorber : Absorber or None
        Fixed effects, built once.
    layout : MarketLayout
        Padded ``[T, J]`` layout.
    context : dict
        Names formula transforms may use.
    formula : str or None
        The formula the design came from.
    labelled_rows : bool
        Whether ``data.index`` came from the caller (a data frame or pandas inputs); pandas
        inputs given later, such as cluster groups, must then carry the same index.
    nesting_columns : tuple of str
        The product-data columns ``nesting_ids`` was read from (upper level first), so new
        products in counterfactuals can be given their nests the same way.
    """

    data: pd.DataFrame
    shares: np.ndarray
    market_ids: np.ndarray
    product_ids: np.ndarray | None
    firm_ids: np.ndarray | None
    nesting_ids: np.ndarray | None
    exog: TermBlock
    endog: TermBlock
    instruments: TermBlock
    random: TermBlock
    absorber: Absorber | None
    layout: MarketLayout
    context: dict[str, Any] = field(default_factory=dict)
    formula: str | None = None
    shares_column: str = "shares"
    labelled_rows: bool = True
    nesting_columns: tuple[str, ...] = ("nesting_ids",)
    X: np.ndarray = field(init=False)
    Z: np.ndarray = field(init=False)
    X_absorbed: np.ndarray = field(init=False)
    Z_absorbed: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.X = np.column_stack([self.exog.values, self.endog.values])
        self.Z = np.column_stack([self.exog.values, self.instruments.values])
        if self.X.shape[1] == 0:
            raise BLPInputError(_no_regressors_message(self.formula, self.absorber is not None))
        # Warn before the rank checks: a badly scaled column can make them fail.
        check_scales(
            [
                ("regressor", self.exog.names, self.exog.values),
                ("regressor", self.endog.names, self.endog.values),
                ("instrument", self.instruments.names, self.instruments.values),
                ("random-coefficient characteristic", self.random.names, self.random.values),
            ]
        )
        if self.instruments.size < self.endog.size:
            raise BLPInputError(
                f"{self.endog.size} instrumented regressor(s) {list(self.endog.names)} but only "
                f"{self.instruments.size} excluded instrument(s) {list(self.instruments.names)}: "
                "the model is under-identified"
            )
        overlap = set(self.endog.names) & set(self.exog.names)
        if overlap:
            raise BLPInputError(f"terms {sorted(overlap)} are both exogenous and instrumented")
        repeated = [name for name in self.instruments.names if name in self.exog.names]
        if repeated:
            raise BLPInputError(
                f"{repeated[0]!r} is both an exogenous regressor and an excluded instrument: "
                "exogenous regressors are already their own instruments, so list inside the "
                f"brackets only instruments excluded from demand (drop {repeated[0]!r} there, "
                "e.g. [prices ~ z])"
            )
        if self.absorber is not None:
            self.X_absorbed = self.absorber.residualize(self.X)
            self.Z_absorbed = self.absorber.residualize(self.Z)
        else:
            self.X_absorbed, self.Z_absorbed = self.X, self.Z
        reference = (self.X, self.Z) if self.absorber is not None else (None, None)
        check_full_rank(self.X_absorbed, self.x_names, "regressors", before_absorption=reference[0])
        check_full_rank(
            self.Z_absorbed, self.z_names, "instruments", before_absorption=reference[1]
        )
        self._check_instruments_are_excluded()
        # X2 enters utilities as is (not absorbed): collinear columns give unidentified Σ rows.
        check_full_rank(self.random.values, self.random.names, "random coefficients")

    def _check_instruments_are_excluded(self, tolerance: float = 1e-9) -> None:
        """Raise if an excluded instrument lies in the span of the regressors X1.

        Such an "instrument" is the instrumented regressor itself (up to scale and exogenous
        terms), so IV collapses to OLS while the output still reads as IV.
        """
        if not self.instruments.size or not self.endog.size:
            return
        n_exog = self.exog.size
        regressors = self.X_absorbed
        scaled = regressors / column_norms(regressors)
        instruments = self.Z_absorbed[:, n_exog:]
        lengths = column_norms(instruments)
        coefficients, *_ = np.linalg.lstsq(scaled, instruments / lengths, rcond=None)
        residuals = np.linalg.norm(instruments / lengths - scaled @ coefficients, axis=0)
        for position in np.flatnonzero(residuals < tolerance):
            weights = np.abs(coefficients[n_exog:, position])
            partners = [self.endog.names[k] for k in np.flatnonzero(weights > 1e-8)]
            suffix = " after absorbing the fixed effects" if self.absorber is not None else ""
            raise BLPInputError(
                f"excluded instrument {self.instruments.names[position]!r} is a linear "
                f"combination of the regressors{suffix}, through the instrumented regressor(s) "
                f"{partners}: an instrument must be excluded from the demand equation, or the "
                "IV estimate is just OLS"
            )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_formula(
        cls,
        parsed: ParsedFormula,
        data: pd.DataFrame,
        *,
        absorb: str | None = None,
        absorb_method: AbsorbMethod | None = None,
        random: str | None = None,
        context: Mapping[str, Any] | None = None,
        formula: str | None = None,
    ) -> ProductDesign:
        """Validate the product data and build the design from a parsed formula.

        Parameters
        ----------
        parsed : ParsedFormula
            Output of :func:`blpmodels.data.formula.parse_formula`.
        data : pandas.DataFrame
            Product data.
        absorb : str, optional
            Fixed effects to absorb, e.g. ``"C(market_ids) + C(product_ids)"``.
        absorb_method : str, optional
            pyhdfe method.
        random : str, optional
            Random-coefficient characteristics X2 (formulaic right-hand side, e.g.
            ``"0 + prices + mushy"``).
        context : mapping, optional
            Names visible to formula transforms.
        formula : str, optional
            The original formula (kept for summaries).

        Returns
        -------
        ProductDesign
        """
        if not isinstance(data, pd.DataFrame):
            raise BLPInputError(f"data must be a pandas DataFrame, got {type(data).__name__}")
        if len(data) == 0:
            raise BLPInputError("product data has no rows")
        check_unique_columns(data)
        # Own copy: results must not change when the caller edits the frame afterwards.
        data = data.copy()
        check_columns(data, ["market_ids"])
        # Hashed once for the checks and the layout.
        factorized = factorize_ids(data["market_ids"], "market_ids")
        markets = factorized.ids
        check_columns(data, [parsed.dependent], market_ids=markets)
        shares = numeric_values(data[parsed.dependent], f"product data column {parsed.dependent!r}")
        validate_shares(shares, markets, parsed.dependent)
        context = dict(context or {})
        check_shares_not_read(random, parsed.dependent, f"random={random!r}")
        block = partial(build_block, data=data, context=context, market_ids=markets)
        exog = block(
            parsed.exog, intercept="drop" if absorb else "keep", role="exogenous regressors"
        )
        if exog.size == 0 and not parsed.has_endog:
            # Before the other blocks and the fixed effects: nothing could be estimated.
            raise BLPInputError(_no_regressors_message(formula, bool(absorb)))
        endog = block(
            f"0 + {parsed.endog}" if parsed.endog else None,
            intercept="drop",
            role="instrumented regressors",
        )
        instruments = block(
            f"0 + {parsed.instruments}" if parsed.instruments else None,
            intercept="drop",
            role="instruments",
        )
        random_block = block(random, intercept="keep", role="random coefficients")
        absorber = Absorber.from_formula(absorb, data, method=absorb_method) if absorb else None
        # Keep only the names the formulas use, not the caller's whole namespace.
        used: set[str] = set()
        for block in (exog, endog, instruments, random_block):
            if block.formula:
                used |= required_variables(block.formula)
        context = {name: value for name, value in context.items() if name in used}
        return cls._assemble(
            data,
            shares,
            markets,
            exog,
            endog,
            instruments,
            random_block,
            absorber,
            product_column="product_ids",
            firm_column="firm_ids",
            nesting_column="nesting_ids",
            context=context,
            formula=formula,
            shares_column=parsed.dependent,
            factorized_markets=factorized,
        )

    @classmethod
    def from_arrays(
        cls,
        shares: Any,
        exog: Any,
        endog: Any = None,
        instruments: Any = None,
        *,
        market_ids: Any,
        product_ids: Any = None,
        firm_ids: Any = None,
        nesting_ids: Any = None,
        absorb: Any = None,
        absorb_method: AbsorbMethod | None = None,
        random: Any = None,
    ) -> ProductDesign:
        """Build the design from arrays or frames (the linearmodels-style interface).

        Parameters
        ----------
        shares : array-like
            ``(N,)`` market shares.
        exog : array-like or DataFrame
            Exogenous characteristics (include a constant column yourself if wanted).
        endog : array-like or DataFrame, optional
            Regressors to instrument.
        instruments : array-like or DataFrame, optional
            Excluded instruments.
        market_ids : array-like
            Market of each row.
        product_ids, firm_ids : array-like, optional
            Product and firm of each row.
        nesting_ids : array-like or DataFrame, optional
            Nest of each row; two columns (a frame or an ``(N, 2)`` array, upper level
            first) for two-level nests.
        absorb : array-like or DataFrame, optional
            One column of ids per fixed-effect dimension.
        absorb_method : str, optional
            pyhdfe method.
        random : array-like or DataFrame, optional
            Random-coefficient characteristics X2.

        Returns
        -------
        ProductDesign
        """
        inputs = {
            "shares": shares,
            "exog": exog,
            "endog": endog,
            "instruments": instruments,
            "random": random,
            "market_ids": market_ids,
            "product_ids": product_ids,
            "firm_ids": firm_ids,
            "nesting_ids": nesting_ids,
            "absorb": absorb,
        }
        index = _common_index(inputs)
        share_values = numeric_values(
            shares if isinstance(shares, pd.Series) else np.asarray(shares).ravel(), "shares"
        ).ravel()
        n = share_values.size
        if n == 0:
            raise BLPInputError("shares is empty: the model needs product rows")
        if index is not None and len(index) != n:
            index = None  # a length mismatch is reported below, naming the input
        frames = {
            "exog": _frame(exog, "exog", n),
            "endog": _frame(endog, "endog", n),
            "instruments": _frame(instruments, "instruments", n),
            "random": _frame(random, "random", n),
        }
        ids: dict[str, np.ndarray] = {}
        for name in ("market_ids", "product_ids", "firm_ids"):
            values = inputs[name]
            if values is not None:
                array = np.asarray(values, dtype=object).ravel()
                if array.size != n:
                    raise BLPInputError(f"{name} has {array.size} rows but shares has {n}")
                ids[name] = check_ids(array, name, what="")
        nesting_column: str | list[str] = "nesting_ids"
        if nesting_ids is not None:
            nests = nesting_values(nesting_ids, n)
            if nests.ndim == 2:  # two levels: kept in the data as two columns
                nesting_column = ["nesting_ids_upper", "nesting_ids_lower"]
                ids.update(zip(nesting_column, nests.T, strict=True))
            else:
                ids["nesting_ids"] = nests
        if "market_ids" not in ids:
            raise BLPInputError("market_ids is required")
        blocks = {name: TermBlock.from_frame(frame, name) for name, frame in frames.items()}
        for name, block in blocks.items():
            bad = ~np.isfinite(block.values)
            if bad.any():
                column = block.names[int(np.nonzero(bad.any(axis=0))[0][0])]
                raise BLPInputError(f"{name} column {column!r} has missing or non-finite values")
        columns: dict[str, Any] = {"shares": share_values, **ids}
        for name, frame in frames.items():
            for position, column in enumerate(frame.columns):
                columns.setdefault(str(column), blocks[name].values[:, position])
        data = pd.DataFrame(columns, index=index)
        validate_shares(share_values, ids["market_ids"])
        absorber = None
        if absorb is not None:
            absorb_frame = _frame(absorb, "absorb", n)
            absorber = Absorber(absorb_frame.astype(object), method=absorb_method)
        return cls._assemble(
            data,
            share_values,
            ids["market_ids"],
            blocks["exog"],
            blocks["endog"],
            blocks["instruments"],
            blocks["random"],
            absorber,
            product_column="product_ids",
            firm_column="firm_ids",
            nesting_column=nesting_column,
            context={},
            formula=None,
            shares_column="shares",
            labelled_rows=index is not None,
        )

    @classmethod
    def _assemble(
        cls,
        data: pd.DataFrame,
        shares: np.ndarray,
        markets: np.ndarray,
        exog: TermBlock,
        endog: TermBlock,
        instruments: TermBlock,
        random: TermBlock,
        absorber: Absorber | None,
        *,
        product_column: str | None,
        firm_column: str | None,
        nesting_column: str | list[str] | None,
        context: dict[str, Any],
        formula: str | None,
        shares_column: str,
        labelled_rows: bool = True,
        factorized_markets: FactorizedIds | None = None,
    ) -> ProductDesign:
        products = _ids(data, product_column)
        if products is not None:
            keys = pd.DataFrame({"m": markets, "p": products})
            duplicated = keys.duplicated()
            if duplicated.any():
                first = keys[duplicated].iloc[0]
                raise BLPInputError(
                    f"{int(duplicated.sum())} duplicated (market, product) rows, e.g. market "
                    f"{first['m']!r}, product {first['p']!r}"
                )
        layout = (
            MarketLayout.from_ids(markets)
            if factorized_markets is None
            else MarketLayout.from_factorized(factorized_markets)
        )
        return cls(
            data=data,
            shares=shares,
            market_ids=markets,
            product_ids=products,
            firm_ids=_ids(data, firm_column),
            nesting_ids=_nesting_ids(data, nesting_column),
            nesting_columns=(
                () if nesting_column is None else tuple(nesting_column_names(nesting_column))
            ),
            exog=exog,
            endog=endog,
            instruments=instruments,
            random=random,
            absorber=absorber,
            layout=layout,
            context=context,
            formula=formula,
            shares_column=shares_column,
            labelled_rows=labelled_rows,
        )

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        # Modules used in formula transforms (``scipy.special.expit(x)``) pickle by name.
        state = self.__dict__.copy()
        state["context"] = {
            name: _ModuleName(value.__name__) if isinstance(value, types.ModuleType) else value
            for name, value in self.context.items()
        }
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["context"] = {
            name: importlib.import_module(value.name) if isinstance(value, _ModuleName) else value
            for name, value in state["context"].items()
        }
        self.__dict__.update(state)

    def use_nesting_columns(self, columns: str | list[str]) -> None:
        """Take the nests from other product-data columns: one, or two (upper level first).

        The formula models read nests from the ``nesting_ids`` column; the nested logit's
        ``from_formula(..., nesting_ids=["size", "segment"])`` calls this to use two levels
        (a lower nest is then the pair of ids, so lower ids may repeat across upper nests).

        Parameters
        ----------
        columns : str or list of str
            Column names in the product data.

        Raises
        ------
        BLPInputError
            Missing columns, missing ids, more than two levels.

        Examples
        --------
        >>> import pandas as pd
        >>> frame = pd.DataFrame({"market_ids": [1, 1, 1], "shares": [0.1, 0.2, 0.3],
        ...                       "x": [1.0, 2.0, 0.5], "size": ["s", "s", "l"],
        ...                       "segment": ["a", "b", "a"]})
        >>> from blpmodels.data.formula import parse_formula
        >>> design = ProductDesign.from_formula(parse_formula("shares ~ x"), frame)
        >>> design.use_nesting_columns(["size", "segment"])
        >>> design.nesting_levels, design.nesting_ids.shape
        (2, (3, 2))
        """
        names = nesting_column_names(columns)
        check_columns(self.data, names)
        self.nesting_ids = _nesting_ids(self.data, names[0] if len(names) == 1 else names)
        self.nesting_columns = tuple(names)

    # ------------------------------------------------------------------ properties
    @property
    def nesting_levels(self) -> int:
        """Levels of nests: 0 (no ``nesting_ids``), 1, or 2 (two-level nests)."""
        if self.nesting_ids is None:
            return 0
        return int(self.nesting_ids.ndim)

    @property
    def nobs(self) -> int:
        """Number of product-market observations N."""
        return int(self.shares.size)

    @property
    def x_names(self) -> list[str]:
        """Names of X1 = [exogenous | instrumented] columns."""
        return [*self.exog.names, *self.endog.names]

    @property
    def z_names(self) -> list[str]:
        """Names of Z = [exogenous | excluded instruments] columns."""
        return [*self.exog.names, *self.instruments.names]

    @property
    def n_products(self) -> int:
        """Number of distinct products (rows per market if there are no product ids)."""
        if self.product_ids is None:
            return self.layout.width
        return int(pd.unique(self.product_ids).size)

    def logit_delta(self) -> np.ndarray:
        """log(s_j) − log(s_0) per row: the plain-logit mean utility."""
        inside = np.bincount(self.layout.codes, weights=self.shares)
        return np.log(self.shares) - np.log1p(-inside[self.layout.codes])

    def outside_shares(self) -> np.ndarray:
        """``(T,)`` outside-good share per market."""
        return 1.0 - np.bincount(self.layout.codes, weights=self.shares)

    def residualize(self, values: np.ndarray) -> np.ndarray:
        """Absorb the fixed effects from ``values`` (identity without absorption)."""
        return values if self.absorber is None else self.absorber.residualize(values)

    def match_rows(self, data: pd.DataFrame) -> np.ndarray:
        """Rows of the estimation data that the rows of ``data`` correspond to.

        Rows match on (market_ids, product_ids); without product ids, on the position within
        the market. Every market in ``data`` must hold exactly the products it held in
        estimation.

        Raises
        ------
        BLPInputError
            Not a DataFrame, unknown markets, unknown or missing products, duplicated rows.
        """
        if not isinstance(data, pd.DataFrame):
            raise BLPInputError(f"data must be a pandas DataFrame, got {type(data).__name__}")
        check_columns(data, ["market_ids"])
        markets = np.asarray(data["market_ids"], dtype=object)
        self.layout.market_positions(pd.unique(markets))
        if self.product_ids is not None:
            check_columns(data, ["product_ids"])
            lookup = pd.MultiIndex.from_arrays([self.market_ids, self.product_ids])
            wanted = pd.MultiIndex.from_arrays(
                [markets, np.asarray(data["product_ids"], dtype=object)]
            )
            if wanted.duplicated().any():
                first = wanted[wanted.duplicated()][0]
                raise BLPInputError(f"new data repeat market {first[0]!r}, product {first[1]!r}")
            rows = lookup.get_indexer(wanted)
            if (rows < 0).any():
                first = wanted[rows < 0][0]
                raise BLPInputError(
                    f"market {first[0]!r} has no product {first[1]!r} in the estimation data"
                )
        else:
            positions = self.layout.market_positions(markets)
            within = pd.Series(markets).groupby(markets, sort=False).cumcount().to_numpy()
            if (within >= self.layout.counts[positions]).any():
                raise BLPInputError("new data have more rows in a market than the estimation data")
            rows = self.layout.index[positions, within]
        covered = np.bincount(self.layout.codes[rows], minlength=self.layout.n_markets)
        expected = self.layout.counts
        touched = covered > 0
        if (covered[touched] != expected[touched]).any():
            market = self.layout.market_labels[np.flatnonzero(touched & (covered != expected))[0]]
            raise BLPInputError(
                f"new data for market {market!r} do not hold all of its products; give every "
                "product of each market you predict"
            )
        return rows


@dataclass(frozen=True)
class _ModuleName:
    """A module in a pickled formula context, re-imported on unpickling."""

    name: str


def _frame(values: Any, name: str, n: int) -> pd.DataFrame:
    if values is None:
        return pd.DataFrame(index=range(n))
    if isinstance(values, pd.Series):
        frame = values.to_frame(name=values.name if values.name is not None else name)
    elif isinstance(values, pd.DataFrame):
        frame = values
    else:
        array = np.asarray(values)
        if array.ndim == 1:
            array = array[:, None]
        frame = pd.DataFrame(array, columns=[f"{name}{k}" for k in range(array.shape[1])])
    if len(frame) != n:
        raise BLPInputError(f"{name} has {len(frame)} rows but shares has {n}")
    return frame.reset_index(drop=True)


def _common_index(inputs: Mapping[str, Any]) -> pd.Index | None:
    """The index shared by the pandas inputs, None without any; raise if two differ.

    statsmodels refuses endog and exog whose indexes differ ("The indices for endog and exog
    are not aligned") rather than aligning or ignoring them; we do the same for every input.
    """
    first: tuple[str, pd.Index] | None = None
    for name, values in inputs.items():
        if not isinstance(values, (pd.Series, pd.DataFrame)):
            continue
        if first is None:
            first = (name, values.index)
        elif not values.index.equals(first[1]):
            raise BLPInputError(
                f"The indices for {first[0]} and {name} are not aligned: pandas inputs must "
                "share one index (as in statsmodels); reindex them, or pass numpy arrays to "
                "match rows by position"
            )
    return None if first is None else first[1]


def _no_regressors_message(formula: str | None, absorbed: bool) -> str:
    where = f"formula {formula!r}" if formula else "the model"
    reason = (
        " once the constant is dropped (the absorbed fixed effects replace it)" if absorbed else ""
    )
    return (
        f"{where} has no regressors{reason}: there is nothing to estimate; add characteristics "
        "or instrumented regressors, e.g. 'shares ~ 1 + x + [prices ~ z]'"
    )
