"""Nest ids with one or two levels, and the within-nest shares the nested logit regresses on.

Two-level nests (Verboven 1996, "International price discrimination in the European car
market") put each product in a lower nest h (e.g. a market segment) inside an upper nest g
(e.g. a size class). ``nesting_ids`` then has two columns, upper level first; a lower nest is
the *pair* (upper id, lower id), so lower ids may repeat across upper nests (``"domestic"`` in
every size class is two different nests).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from blpmodels.data.markets import check_ids
from blpmodels.exceptions import BLPInputError

__all__ = [
    "TwoLevelCodes",
    "nesting_column_names",
    "nesting_values",
    "two_level_log_within",
]


def nesting_column_names(columns: Any) -> list[str]:
    """Validate the ``nesting_ids=`` keyword of the formula models: one or two column names.

    Parameters
    ----------
    columns : str or sequence of str
        A product-data column (one level), or two columns, upper (coarser) level first.

    Returns
    -------
    list of str
        One or two column names.

    Raises
    ------
    BLPInputError
        Not strings, none, more than two, or the same column twice.

    Examples
    --------
    >>> nesting_column_names(["size", "segment"])
    ['size', 'segment']
    >>> nesting_column_names("segment")
    ['segment']
    """
    names = [columns] if isinstance(columns, str) else columns
    if not isinstance(names, Sequence) or not all(isinstance(name, str) for name in names):
        raise BLPInputError(
            "nesting_ids must be a column name or a list of two column names (upper level "
            f"first, e.g. ['size', 'segment']), got {columns!r}"
        )
    names = list(names)
    if not 1 <= len(names) <= 2:
        raise BLPInputError(
            f"nesting_ids names {len(names)} columns {names}: give one column (one level of "
            "nests) or two (upper level first, e.g. ['size', 'segment']); deeper nests are not "
            "supported"
        )
    if len(set(names)) != len(names):
        raise BLPInputError(f"nesting_ids names the same column twice: {names}")
    return names


def nesting_values(values: Any, n: int) -> np.ndarray:
    """``nesting_ids`` given as arrays: ``(N,)`` for one level, ``(N, 2)`` for two.

    Parameters
    ----------
    values : array-like or DataFrame
        One id per row, or two columns (upper level first).
    n : int
        Number of product rows.

    Returns
    -------
    numpy.ndarray
        ``(N,)`` or ``(N, 2)`` object array of checked ids.

    Raises
    ------
    BLPInputError
        Wrong number of rows or columns, missing ids, ids that differ only in type.

    Examples
    --------
    >>> nesting_values([["small", "a"], ["large", "a"]], 2).shape
    (2, 2)
    """
    if isinstance(values, pd.DataFrame):
        names = [str(column) for column in values.columns]
        array = values.to_numpy(dtype=object)
    else:
        array = np.asarray(values, dtype=object)
        names = []
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim == 2 and array.shape[1] != 2:
        raise BLPInputError(
            f"nesting_ids has {array.shape[1]} columns: give one id per row (one level of "
            "nests) or two columns, upper level first (two levels); deeper nests are not "
            "supported"
        )
    if array.ndim != 2:
        flat = array.ravel()
        if flat.size != n:
            raise BLPInputError(f"nesting_ids has {flat.size} rows but shares has {n}")
        return check_ids(flat, "nesting_ids", what="")
    if array.shape[0] != n:
        raise BLPInputError(f"nesting_ids has {array.shape[0]} rows but shares has {n}")
    labels = [f"column {name!r}" for name in names] or ["upper level", "lower level"]
    columns = [check_ids(array[:, k], f"nesting_ids {labels[k]}", what="") for k in range(2)]
    return np.column_stack(columns).astype(object)


@dataclass(frozen=True, eq=False)
class TwoLevelCodes:
    """Integer codes of two-level nests.

    Attributes
    ----------
    upper : numpy.ndarray
        ``(N,)`` upper nest g of each row, 0..G−1 in sorted label order.
    lower : numpy.ndarray
        ``(N,)`` lower nest h of each row, 0..H−1 (a lower nest is an (upper, lower) pair).
    lower_to_upper : numpy.ndarray
        ``(H,)`` upper nest of each lower nest.
    upper_labels, lower_labels : numpy.ndarray
        Labels of the G upper nests, and the (upper, lower) label pairs of the H lower nests.

    Examples
    --------
    >>> ids = np.array([["s", "a"], ["s", "b"], ["l", "a"]], dtype=object)
    >>> codes = TwoLevelCodes.from_ids(ids)
    >>> codes.upper.tolist(), codes.lower.tolist(), codes.lower_to_upper.tolist()
    ([1, 1, 0], [1, 2, 0], [0, 1, 1])
    """

    upper: np.ndarray
    lower: np.ndarray
    lower_to_upper: np.ndarray
    upper_labels: np.ndarray
    lower_labels: np.ndarray

    @classmethod
    def from_ids(cls, nesting_ids: np.ndarray) -> TwoLevelCodes:
        """Codes of an ``(N, 2)`` id array, upper level in column 0."""
        upper, upper_labels = pd.factorize(pd.Series(nesting_ids[:, 0]), sort=True)
        _, lower_names = pd.factorize(pd.Series(nesting_ids[:, 1]), sort=True)
        # Sort lower nests by (upper, lower) so codes read in the order a table would list them.
        lower_rank = pd.Index(lower_names).get_indexer(nesting_ids[:, 1])
        lower, pairs = pd.factorize(pd.MultiIndex.from_arrays([upper, lower_rank]), sort=True)
        lower_to_upper = np.asarray(pairs.get_level_values(0), dtype=np.intp)
        lower_labels = np.empty(len(pairs), dtype=object)
        for h, (g, k) in enumerate(pairs):
            lower_labels[h] = (upper_labels[g], lower_names[k])
        return cls(
            upper.astype(np.intp),
            lower.astype(np.intp),
            lower_to_upper,
            np.asarray(upper_labels, dtype=object),
            lower_labels,
        )

    @property
    def n_upper(self) -> int:
        """Number of upper nests G."""
        return int(self.upper_labels.size)

    @property
    def n_lower(self) -> int:
        """Number of lower nests H."""
        return int(self.lower_labels.size)


def two_level_log_within(
    shares: np.ndarray, market_codes: np.ndarray, codes: TwoLevelCodes
) -> tuple[np.ndarray, np.ndarray]:
    """Log within-nest shares log s_{j|h} and log s_{h|g} of observed shares.

    s_{j|h} is product j's share of its lower nest h in its market, s_{h|g} the lower nest's
    share of its upper nest g. They are the two regressors of Verboven's inversion
    log s_j − log s_0 = δ_j + ρ_lower log s_{j|h} + ρ_upper log s_{h|g}.

    Parameters
    ----------
    shares : numpy.ndarray
        ``(N,)`` observed shares.
    market_codes : numpy.ndarray
        ``(N,)`` integer market of each row.
    codes : TwoLevelCodes
        The nests.

    Returns
    -------
    tuple of numpy.ndarray
        ``(N,)`` log s_{j|h} and ``(N,)`` log s_{h|g}.

    Examples
    --------
    >>> ids = np.array([["s", "a"], ["s", "a"], ["s", "b"]], dtype=object)
    >>> lower, upper = two_level_log_within(
    ...     np.array([0.1, 0.3, 0.2]), np.zeros(3, np.intp), TwoLevelCodes.from_ids(ids))
    >>> np.exp(lower).round(3).tolist(), np.exp(upper).round(3).tolist()
    ([0.25, 0.75, 1.0], [0.667, 0.667, 0.333])
    """
    lower_group, _ = pd.MultiIndex.from_arrays([market_codes, codes.lower]).factorize()
    upper_group, _ = pd.MultiIndex.from_arrays([market_codes, codes.upper]).factorize()
    lower_totals = np.bincount(lower_group, weights=shares)[lower_group]
    upper_totals = np.bincount(upper_group, weights=shares)[upper_group]
    return np.log(shares) - np.log(lower_totals), np.log(lower_totals) - np.log(upper_totals)
