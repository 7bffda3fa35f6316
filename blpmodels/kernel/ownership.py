"""Ownership: who sets which prices, and how much each firm cares about each product's profit.

Ω_jk is the weight the firm selling j puts on the profit of k (1 on its own products). It comes
from ``firm_ids`` (Bertrand–Nash), ``"monopoly"``, ``"single"`` (one product per firm) or a
``kappa(f, g)`` profit-weight callable, and is laid out as padded ``[T, J, J]`` matrices.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from blpmodels.data.markets import check_ids
from blpmodels.exceptions import BLPInputError

__all__ = [
    "FIRM_IDS_PRE_HINT",
    "Ownership",
    "local_firm_codes",
    "ownership_matrices",
    "resolve_ownership",
]


# ---------------------------------------------------------------------------- ownership
def ownership_matrices(
    firm_codes: np.ndarray, product_mask: np.ndarray, kappa: np.ndarray | None = None
) -> np.ndarray:
    """Ownership (profit-weight) matrices Ω ``[T, J, J]`` for all markets at once.

    Ω_jk = κ(f_j, f_k) / κ(f_j, f_j): the weight the firm selling j puts on the profit of
    product k, relative to its own profits (only these ratios enter its first-order
    conditions). Without ``kappa`` it is 1 when j and k share a firm (Bertrand–Nash with
    multi-product firms) and 0 otherwise.

    Parameters
    ----------
    firm_codes : numpy.ndarray
        ``[T, J]`` integer firm of each product slot (anything in padding).
    product_mask : numpy.ndarray
        ``[T, J]`` real products.
    kappa : numpy.ndarray, optional
        ``[F, F]`` profit weights indexed by firm code (partial or common ownership); its
        diagonal must be positive.

    Returns
    -------
    numpy.ndarray
        ``[T, J, J]`` Ω, zero in padded rows and columns.

    Raises
    ------
    BLPInputError
        ``kappa`` not square, not finite, or with a non-positive diagonal.

    Examples
    --------
    >>> codes = np.array([[0, 0, 1]]); mask = np.ones((1, 3), bool)
    >>> ownership_matrices(codes, mask)[0]
    array([[1., 1., 0.],
           [1., 1., 0.],
           [0., 0., 1.]])
    >>> ownership_matrices(codes, mask, kappa=np.array([[1.0, 0.5], [0.2, 2.0]]))[0]
    array([[1. , 1. , 0.5],
           [1. , 1. , 0.5],
           [0.1, 0.1, 1. ]])
    """
    codes = np.asarray(firm_codes)
    pairs = product_mask[:, :, None] & product_mask[:, None, :]
    if kappa is None:
        return np.where(pairs & (codes[:, :, None] == codes[:, None, :]), 1.0, 0.0)
    kappa = np.asarray(kappa, dtype=np.float64)
    if kappa.ndim != 2 or kappa.shape[0] != kappa.shape[1]:
        raise BLPInputError(f"profit weights kappa must be a square matrix, got {kappa.shape}")
    if not np.isfinite(kappa).all():
        raise BLPInputError("profit weights kappa have non-finite entries")
    own = np.diag(kappa)
    if (own <= 0).any():
        raise BLPInputError(
            "profit weights kappa(f, f) must be positive: a firm must value its own profits"
        )
    safe = np.where(product_mask, codes, 0)
    weights = kappa[safe[:, :, None], safe[:, None, :]] / own[safe][:, :, None]
    return np.where(pairs, weights, 0.0)


@dataclass(frozen=True, eq=False)
class Ownership:
    """Firms of the product rows and how they weigh each other's profits.

    Attributes
    ----------
    codes : numpy.ndarray
        ``(N,)`` firm code of each row (indexes ``labels``).
    labels : numpy.ndarray
        ``(F,)`` firm labels.
    kappa : numpy.ndarray or None
        ``[F, F]`` profit weights; None for standard ownership.
    """

    codes: np.ndarray
    labels: np.ndarray
    kappa: np.ndarray | None = None


#: What to pass when the product data have no ``firm_ids`` column (every message says it).
FIRM_IDS_PRE_HINT = (
    "pass the firms that set the observed prices as firm_ids_pre= (one id per product row: a "
    "Series with the product data's index or an array in its row order, e.g. "
    "firm_ids_pre=data['product_ids'].str[:2]); no refit is needed"
)


def _firm_ids_argument(
    firm_ids: Any,
    base: np.ndarray | None,
    index: pd.Index,
    market_ids: np.ndarray,
    name: str = "firm_ids",
) -> np.ndarray:
    """New firm ids from an aligned Series / array, or a mapping of old firms to new ones."""
    if isinstance(firm_ids, Mapping):
        if name != "firm_ids":
            raise BLPInputError(
                f"{name}= takes one firm id per product row (a Series with the product data's "
                "index or an array in its row order), not a mapping"
            )
        if base is None:
            raise BLPInputError(
                "firm_ids= as a mapping renames the firms that set the observed prices, but the "
                f"product data have no firm_ids column: {FIRM_IDS_PRE_HINT}"
            )
        known = pd.unique(base)
        unknown = [key for key in firm_ids if key not in set(known.tolist())]
        if unknown:
            raise BLPInputError(
                f"firm_ids mapping names firms {unknown[:5]} that are not in the product data's "
                f"firm_ids (firms: {known[:10].tolist()})"
            )
        mapped = pd.Series(base).map(lambda firm: firm_ids.get(firm, firm)).to_numpy(object)
        return check_ids(mapped, "firm_ids", what="mapped")
    if isinstance(firm_ids, pd.Series):
        if len(firm_ids) != len(index) or not firm_ids.index.equals(index):
            raise BLPInputError(
                f"{name} Series must carry the product data's index (one id per product row); "
                "reindex it, or pass a numpy array in the product data's row order"
            )
        values = firm_ids.to_numpy(object)
    else:
        values = np.asarray(firm_ids, dtype=object).ravel()
        if values.size != len(index):
            raise BLPInputError(
                f"{name} has {values.size} values but the product data have {len(index)} rows"
            )
    missing = pd.isna(values)
    if missing.any():
        first = market_ids[np.flatnonzero(missing)[0]]
        raise BLPInputError(
            f"{name} has {int(missing.sum())} missing values (first in market {first!r})"
        )
    return check_ids(values, name, what="")


def resolve_ownership(
    data_firm_ids: np.ndarray | None,
    market_ids: np.ndarray,
    index: pd.Index,
    firm_ids: Any = None,
    ownership: str | Callable[[Any, Any], float] | None = None,
    product_labels: np.ndarray | None = None,
    firm_ids_pre: Any = None,
) -> Ownership:
    """Firm codes and profit weights from the arguments users give post-estimation methods.

    Parameters
    ----------
    data_firm_ids : numpy.ndarray or None
        ``(N,)`` the product data's ``firm_ids`` (None when absent).
    market_ids : numpy.ndarray
        ``(N,)`` market of each row (for messages).
    index : pandas.Index
        The product data's index (a ``firm_ids`` Series must carry it).
    firm_ids : Series, array-like or mapping, optional
        New firm of each row, or a mapping old firm → new firm (others keep theirs).
    ownership : {"monopoly", "single"} or callable, optional
        ``"monopoly"``: one firm sets every price in a market; ``"single"``: each product is
        its own firm; a callable ``kappa(f, g)`` gives the weight firm f puts on firm g's
        profits (partial or common ownership), evaluated on the firm ids.
    product_labels : numpy.ndarray, optional
        ``(N,)`` labels for single-product firms (default: row numbers).
    firm_ids_pre : Series or array-like, optional
        The firms that set the observed prices, one per row, in place of ``data_firm_ids``
        (a ``firm_ids`` mapping then renames these).

    Returns
    -------
    Ownership

    Raises
    ------
    BLPInputError
        No firms (neither a ``firm_ids`` column nor ``firm_ids_pre``) when firms are needed,
        with what to pass; unknown or missing firm ids, a mapping naming unknown firms, an
        unknown ownership string, or a callable returning something other than one finite
        number with a positive own weight.

    Examples
    --------
    >>> spec = resolve_ownership(
    ...     np.array(["A", "B", "A"], dtype=object), np.array(["m", "m", "m"], dtype=object),
    ...     pd.RangeIndex(3), firm_ids={"B": "A"})
    >>> spec.codes.tolist(), spec.labels.tolist()
    ([0, 0, 0], ['A'])

    Firms given at call time when the product data have none:

    >>> spec = resolve_ownership(
    ...     None, np.array(["m", "m", "m"], dtype=object), pd.RangeIndex(3),
    ...     firm_ids={"B": "A"}, firm_ids_pre=["A", "B", "C"])
    >>> spec.labels[spec.codes].tolist()
    ['A', 'A', 'C']
    """
    n = market_ids.size
    if firm_ids_pre is not None:
        data_firm_ids = _firm_ids_argument(firm_ids_pre, None, index, market_ids, "firm_ids_pre")
    if isinstance(ownership, str):
        if ownership not in ("monopoly", "single"):
            raise BLPInputError(
                f"ownership must be 'monopoly', 'single' or a callable kappa(f, g), got "
                f"{ownership!r}"
            )
        if firm_ids is not None:
            raise BLPInputError(f"give firm_ids or ownership={ownership!r}, not both")
        if ownership == "monopoly":
            return Ownership(np.zeros(n, dtype=np.intp), np.array(["monopoly"], dtype=object))
        labels = product_labels if product_labels is not None else np.arange(n)
        return Ownership(np.arange(n, dtype=np.intp), np.asarray(labels, dtype=object))
    if ownership is not None and not callable(ownership):
        raise BLPInputError(
            "ownership must be 'monopoly', 'single' or a callable kappa(f, g), got "
            f"{type(ownership).__name__}"
        )
    if firm_ids is None and data_firm_ids is None:
        raise BLPInputError(
            f"the product data have no firm_ids column, which ownership needs: "
            f"{FIRM_IDS_PRE_HINT}. Or use ownership='single' or 'monopoly', or add "
            "data['firm_ids'] before from_formula"
        )
    ids = (
        data_firm_ids
        if firm_ids is None
        else _firm_ids_argument(firm_ids, data_firm_ids, index, market_ids)
    )
    codes, uniques = pd.factorize(pd.Series(ids, dtype=object), sort=False)
    labels = np.asarray(uniques, dtype=object)
    kappa = None if ownership is None else _kappa_matrix(ownership, labels)
    return Ownership(np.asarray(codes, dtype=np.intp), labels, kappa)


def _kappa_matrix(kappa: Callable[[Any, Any], float], labels: np.ndarray) -> np.ndarray:
    """κ(f, g) on every pair of firm labels, checked to be one finite number each."""
    matrix = np.empty((labels.size, labels.size))
    for row, first in enumerate(labels):
        for column, second in enumerate(labels):
            value = kappa(first, second)
            if np.ndim(value) != 0:
                raise BLPInputError(
                    f"ownership callable must return one number per pair of firms; "
                    f"kappa({first!r}, {second!r}) returned shape {np.shape(value)}"
                )
            try:
                number = float(value)
            except (TypeError, ValueError) as error:
                raise BLPInputError(
                    f"ownership callable returned {value!r} for kappa({first!r}, {second!r}); "
                    "expected a number"
                ) from error
            if not np.isfinite(number):
                raise BLPInputError(
                    f"ownership callable returned {number} for kappa({first!r}, {second!r}); "
                    "profit weights must be finite"
                )
            matrix[row, column] = number
    own = np.diag(matrix)
    if (own <= 0).any():
        firm = labels[np.flatnonzero(own <= 0)[0]]
        raise BLPInputError(
            f"ownership callable gives kappa({firm!r}, {firm!r}) = "
            f"{own[own <= 0][0]}: a firm's weight on its own profits must be positive"
        )
    return matrix


def local_firm_codes(firm_codes: np.ndarray, product_mask: np.ndarray) -> np.ndarray:
    """Firms numbered 0, 1, … within each market (in order of code), -1 in padding.

    Parameters
    ----------
    firm_codes : numpy.ndarray
        ``[T, J]`` non-negative integer firm codes (shared across markets).
    product_mask : numpy.ndarray
        ``[T, J]`` real products.

    Returns
    -------
    numpy.ndarray
        ``[T, J]`` firm positions within each market.

    Examples
    --------
    >>> local_firm_codes(np.array([[7, 3, 7], [5, 5, 0]]), np.array([[1, 1, 1], [1, 1, 0]], bool))
    array([[ 1,  0,  1],
           [ 0,  0, -1]])
    """
    n_markets = firm_codes.shape[0]
    span = int(np.max(np.where(product_mask, firm_codes, 0), initial=0)) + 1
    markets = np.arange(n_markets)[:, None]
    keys = np.where(product_mask, markets * span + firm_codes, -1)
    uniques = np.unique(keys[product_mask])
    ranks = np.searchsorted(uniques, keys)
    first = np.searchsorted(uniques, np.arange(n_markets) * span)
    return np.where(product_mask, ranks - first[:, None], -1)
