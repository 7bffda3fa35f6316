"""The inputs of :meth:`BLPResults.counterfactual`, checked and laid out per product row.

:class:`CounterfactualPlan` holds, for the product data's rows and then the rows of ``add``,
what :mod:`blpmodels.results.market_counterfactuals` solves: removed and fixed products, taxes,
costs, the firms that set the observed prices and those that set the new ones (a merger's
owners, ``"monopoly"``, single-product firms or profit weights κ). The functions here check
the arguments (cheap checks, before any share is computed) and build these arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from formulaic import model_matrix

from blpmodels.exceptions import BLPInputError
from blpmodels.kernel.ownership import Ownership, resolve_ownership

__all__ = [
    "TAX_KINDS",
    "AddedProducts",
    "CounterfactualPlan",
    "added_costs",
    "added_firm_codes",
    "column_numbers",
    "data_firm_mapping",
    "extended_firms",
    "post_ownership",
    "require_columns",
    "tax_values",
]

TAX_KINDS = ("unit", "ad_valorem")


@dataclass(frozen=True, eq=False)
class AddedProducts:
    """The new products, checked and built once: one entry per row of ``add``."""

    frame: pd.DataFrame
    positions: np.ndarray  # market position of each row
    delta: np.ndarray
    x2: np.ndarray
    d_x1: np.ndarray
    d_x2: np.ndarray
    nests: np.ndarray
    firms: np.ndarray  # firm codes (extending the pre-change Ownership's labels)
    labels: np.ndarray  # product labels
    prices: np.ndarray  # starting prices (NaN: from costs)


@dataclass(frozen=True, eq=False)
class CounterfactualPlan:
    """Everything per product row: estimation rows then ``add`` rows."""

    remove: np.ndarray
    fixed: np.ndarray
    unit: np.ndarray
    ad_valorem: np.ndarray
    costs: np.ndarray  # estimation rows (NaN outside the solved markets) then added rows
    firms: Ownership  # before the change (the added products' firms as in add)
    post: Ownership  # after the change: firm_ids= and ownership= applied
    added: AddedProducts | None


def require_columns(frame: pd.DataFrame, needed: list[str]) -> None:
    missing = [name for name in needed if name not in frame.columns]
    if missing:
        raise BLPInputError(
            f"add is missing column(s) {missing}: new products need {needed} "
            "(see counterfactual's add=)"
        )


def column_numbers(frame: pd.DataFrame, column: str) -> np.ndarray:
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise BLPInputError(f"add: column {column!r} must hold finite numbers")
    return values


def tax_values(taxes: Any, n_rows: int, n_added: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit taxes and ad valorem rates per product row (estimation rows, then added rows)."""
    total = n_rows + n_added
    out = {kind: np.zeros(total) for kind in TAX_KINDS}
    if taxes is None:
        return out["unit"], out["ad_valorem"]
    if not isinstance(taxes, Mapping):
        raise BLPInputError(
            f"taxes must be a dict such as {{'unit': 0.1}} or {{'ad_valorem': 0.2}}, got "
            f"{type(taxes).__name__}"
        )
    unknown = sorted(set(taxes) - set(TAX_KINDS))
    if unknown:
        raise BLPInputError(f"taxes: unknown kind(s) {unknown}; use 'unit' and/or 'ad_valorem'")
    for kind, value in taxes.items():
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise BLPInputError(f"taxes[{kind!r}] must be numbers") from error
        if array.ndim == 0:
            array = np.full(total, float(array))
        elif array.ndim != 1 or array.size != total:
            raise BLPInputError(
                f"taxes[{kind!r}] has {array.size} values; give a number or one per product: "
                f"the product data's {n_rows} rows, then add's {n_added}"
            )
        if not np.isfinite(array).all():
            raise BLPInputError(f"taxes[{kind!r}] has missing or non-finite values")
        if kind == "ad_valorem" and (array <= -1).any():
            raise BLPInputError("taxes['ad_valorem'] rates must be above -1")
        out[kind] = array
    return out["unit"], out["ad_valorem"]


def added_costs(
    frame: pd.DataFrame, costs: np.ndarray, data: pd.DataFrame, cost_formula: Any
) -> np.ndarray:
    """Costs of new products: their ``costs`` column, or OLS fitted values on a formula."""
    if "costs" in frame:
        return column_numbers(frame, "costs")
    if not isinstance(cost_formula, str):
        raise BLPInputError(f"cost_formula must be a formula string, got {cost_formula!r}")
    known = np.isfinite(costs)
    try:
        matrix = model_matrix(cost_formula, data.loc[known])
        new = matrix.model_spec.get_model_matrix(frame)
    except Exception as error:  # formulaic raises many kinds: name the formula
        raise BLPInputError(f"cost_formula {cost_formula!r} failed: {error}") from error
    coefficients = np.linalg.lstsq(np.asarray(matrix), costs[known], rcond=None)[0]
    return np.asarray(new, dtype=np.float64) @ coefficients


def added_firm_codes(firms: Ownership, labels: np.ndarray) -> np.ndarray:
    """Codes of firm labels, new labels after the known ones (in order of appearance)."""
    known = pd.Index(firms.labels)
    codes = known.get_indexer(labels)
    fresh = pd.unique(labels[codes < 0])
    codes[codes < 0] = known.size + pd.Index(fresh).get_indexer(labels[codes < 0])
    return codes


def extended_firms(firms: Ownership, added: AddedProducts | None) -> Ownership:
    """Firms of every product row, estimation rows then added rows."""
    if added is None:
        return firms
    labels = added.frame["firm_ids"].to_numpy()
    known = pd.Index(firms.labels)
    fresh = pd.unique(labels[known.get_indexer(labels) < 0])
    return Ownership(
        np.concatenate([firms.codes, added.firms]),
        np.concatenate([np.asarray(firms.labels, dtype=object), np.asarray(fresh, dtype=object)]),
    )


def post_ownership(
    pre: Ownership,
    rows: Ownership,
    added: AddedProducts | None,
    firm_ids: Any,
    ownership: str | Callable[[Any, Any], float] | None,
    product_labels: np.ndarray,
) -> Ownership:
    """Who sets the prices after the change, for every product row (data rows, then added).

    ``pre`` are the firms before the change extended by the added products' (as
    :func:`extended_firms`); ``rows`` the data rows' firms after ``firm_ids`` (already checked
    against the product data). A ``firm_ids`` mapping renames the added products' firms too
    (a new product of an acquired firm belongs to its buyer); per-row ``firm_ids`` leave them
    as ``add`` gives them. ``ownership`` then applies to all rows, so profit weights κ(f, g)
    are evaluated on every firm, the new ones included.
    """
    if firm_ids is None and ownership is None:
        return pre
    ids = np.asarray(rows.labels, dtype=object)[rows.codes]
    if added is not None:
        new = added.frame["firm_ids"].to_numpy(dtype=object)
        if isinstance(firm_ids, Mapping):
            new = np.array([firm_ids.get(firm, firm) for firm in new], dtype=object)
        ids = np.concatenate([ids, new])
    n = ids.size
    return resolve_ownership(
        ids,
        np.zeros(n, dtype=object),
        pd.RangeIndex(n),
        ownership=ownership,
        product_labels=product_labels,
    )


def data_firm_mapping(firm_ids: Any, add: Any, firms: Ownership) -> Any:
    """``firm_ids`` for the product data's rows: a mapping without the keys that name only
    firms new in ``add`` (which it renames among the added products alone), or None when
    nothing is left to rename; anything else as given."""
    if not isinstance(firm_ids, Mapping) or not isinstance(add, pd.DataFrame):
        return firm_ids
    if "firm_ids" not in add:
        return firm_ids
    known = set(np.asarray(firms.labels, dtype=object).tolist())
    entrants = set(pd.unique(add["firm_ids"]).tolist()) - known
    kept = {key: value for key, value in firm_ids.items() if key not in entrants}
    return kept or None
