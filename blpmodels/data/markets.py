"""Market layout: flat rows <-> padded ``[T, Jmax]`` (or ``[T, Imax]``) arrays with masks.

The kernel works on all markets at once, so rows (products or agents) are scattered into a
rectangular array with one row per market and padding where a market has fewer rows than the
largest one. :class:`MarketLayout` holds the scatter index, the mask and the market labels, and
converts in both directions. It also slices out groups of markets (chunks) for bounded memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from blpmodels.exceptions import BLPInputError

__all__ = ["FactorizedIds", "MarketLayout", "check_ids", "factorize_ids"]


def check_ids(values: Any, column: str, what: str = "product data") -> np.ndarray:
    """Ids as an object array, refusing missing ids and ids that differ only in type.

    ``2`` and ``"2"`` are different keys to pandas, so a column mixing them (typically after
    concatenating frames read differently) silently splits one market, product or firm in two.

    Parameters
    ----------
    values : array-like
        ``(N,)`` ids.
    column : str
        Column name for messages.
    what : str
        Data set name for messages; empty for an argument given on its own (``column`` is
        then its name).

    Returns
    -------
    numpy.ndarray
        ``(N,)`` object array of the ids.

    Raises
    ------
    BLPInputError
        Naming the column and the ids that print alike but differ in type.

    Examples
    --------
    >>> check_ids([1, "1", 2], "market_ids")
    Traceback (most recent call last):
    ...
    blpmodels.exceptions.BLPInputError: product data column 'market_ids' has ids that differ ...
    """
    return _factorized_ids(values, column, what)[0]


class FactorizedIds(NamedTuple):
    """Checked ids with their codes, from :func:`factorize_ids`.

    Attributes
    ----------
    ids : numpy.ndarray
        ``(N,)`` object array of the ids (what :func:`check_ids` returns).
    codes : numpy.ndarray
        ``(N,)`` position of each row's id in ``uniques``.
    uniques : numpy.ndarray
        The distinct ids, in order of first appearance.
    """

    ids: np.ndarray
    codes: np.ndarray
    uniques: np.ndarray


def factorize_ids(
    values: Any,
    column: str,
    what: str = "product data",
    *,
    on_missing: Callable[[], None] | None = None,
) -> FactorizedIds:
    """:func:`check_ids`, also returning each id's code and the distinct ids.

    One pass of hashing serves the checks and the layout (:meth:`MarketLayout.from_factorized`):
    hashing the 94,000 agent ids of Mixtape exercise 2 takes 3 ms, which the agents paid twice.

    Parameters
    ----------
    values : array-like
        ``(N,)`` ids.
    column, what : str
        As in :func:`check_ids`.
    on_missing : callable, optional
        Called before the missing-values error when an id is missing (or a distinct id counts
        as missing to ``pandas.isna``), so that a caller can raise its own message instead:
        hashing finds the missing ids anyway, so a separate ``isna`` pass over the column
        (1 ms for 94,000 text ids) is then only needed to word the error.

    Returns
    -------
    FactorizedIds

    Raises
    ------
    BLPInputError
        As :func:`check_ids`.

    Examples
    --------
    >>> factorize_ids(["b", "a", "b"], "market_ids").codes.tolist()
    [0, 1, 0]
    """
    return FactorizedIds(*_factorized_ids(values, column, what, on_missing))


def _factorized_ids(
    values: Any, column: str, what: str, on_missing: Callable[[], None] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The work of :func:`check_ids` and :func:`factorize_ids`."""
    label = f"{what} column {column!r}" if what else column
    ids = np.asarray(values, dtype=object).ravel()
    codes, uniques = _factorize(ids, text=_text(values, ids))
    missing = codes < 0
    # isna of the distinct ids too: a value isna calls missing (pandas 2's use_inf_as_na)
    # that factorize keeps as an id still goes to the caller's check.
    if on_missing is not None and (missing.any() or pd.isna(uniques).any()):
        on_missing()
    if missing.any():
        raise BLPInputError(f"{label} has {int(missing.sum())} missing values")
    uniques = np.asarray(uniques, dtype=object)
    printed = pd.Series([str(value) for value in uniques])
    clash = printed.duplicated(keep=False).to_numpy()
    if clash.any():
        first = printed[clash].iloc[0]
        examples = [value for value, text in zip(uniques, printed, strict=True) if text == first]
        types = ", ".join(type(value).__name__ for value in examples)
        raise BLPInputError(
            f"{label} has ids that differ only in type: {examples} ({types}) "
            "would count as different ids; convert the column to one type (e.g. astype(str))"
        )
    return ids, codes, uniques


def _text(values: Any, ids: np.ndarray) -> bool:
    """Whether every id is text (a ``str``) or missing: a pandas string column, or an object
    array of strings (checked only when the first id is one, so numeric ids pay nothing)."""
    if isinstance(getattr(values, "dtype", None), pd.StringDtype):
        return True
    return (
        ids.size >= _RUN_MINIMUM
        and isinstance(ids[0], str)
        and pd.api.types.infer_dtype(ids, skipna=False) == "string"
    )


def _factorize(ids: np.ndarray, text: bool) -> tuple[np.ndarray, np.ndarray]:
    """``pandas.factorize(ids, sort=False)``, hashing one id per run of equal text ids.

    Data sorted by market hold each market id in one run of rows; pandas hashes every row
    (2.7 ms for the 94,000 text ids of the exercise-2 agents), where comparing neighbours and
    hashing the first id of each run takes a quarter of that. For text, equal neighbours are
    the same key to pandas (which compares the characters), so the codes and the distinct ids
    (the first of each, in order of first appearance) are the same. Other ids are hashed row
    by row: pandas keeps some ids apart that compare equal (``Decimal(1)`` and
    ``numpy.int64(1)``). So are ids without long runs, and any with a missing id, which
    pandas counts.
    """
    if text and ids.size >= _RUN_MINIMUM:
        try:
            changes = np.flatnonzero(ids[1:] != ids[:-1]) + 1
        except Exception:  # pandas.NA in a "string" column does not compare
            changes = None
        if changes is not None and changes.size * 8 < ids.size:
            starts = np.concatenate([[0], changes])
            head_codes, uniques = pd.factorize(ids[starts], sort=False)
            if not (head_codes < 0).any():
                lengths = np.diff(np.append(starts, ids.size))
                return np.repeat(head_codes, lengths), uniques
    return pd.factorize(ids, sort=False)


# Fewer ids are hashed row by row: comparing neighbours first would not pay.
_RUN_MINIMUM = 1024


@dataclass(frozen=True, eq=False)
class MarketLayout:
    """Mapping between flat rows and padded per-market arrays.

    Attributes
    ----------
    market_labels : numpy.ndarray
        ``(T,)`` market ids in order of first appearance in the data.
    codes : numpy.ndarray
        ``(N,)`` market position of each row.
    index : numpy.ndarray
        ``(T, Jmax)`` row of the data at each padded slot (0 in padding; see ``mask``).
    mask : numpy.ndarray
        ``(T, Jmax)`` True where a slot holds a real row.
    position : numpy.ndarray
        ``(N,)`` slot of each row within its market.

    Examples
    --------
    >>> layout = MarketLayout.from_ids(["a", "a", "b"])
    >>> layout.pad(np.array([1.0, 2.0, 3.0]))
    array([[1., 2.],
           [3., 0.]])
    >>> layout.flatten(layout.pad(np.array([1.0, 2.0, 3.0])))
    array([1., 2., 3.])
    """

    market_labels: np.ndarray
    codes: np.ndarray
    index: np.ndarray
    mask: np.ndarray
    position: np.ndarray

    @classmethod
    def from_ids(
        cls,
        market_ids: Sequence[Any] | np.ndarray | pd.Series,
        market_labels: np.ndarray | None = None,
        *,
        what: str = "product data",
    ) -> MarketLayout:
        """Build the layout from each row's market id.

        Parameters
        ----------
        market_ids : array-like
            ``(N,)`` market id of each row.
        market_labels : numpy.ndarray, optional
            Market order to use (e.g. the product markets when laying out agents). Every id
            must be among these labels and every label must have at least one row.
        what : str
            Data set name for error messages.

        Returns
        -------
        MarketLayout

        Raises
        ------
        BLPInputError
            If ids are missing, or (with ``market_labels``) a row's market is unknown or a
            labelled market has no rows.
        """
        factorized = factorize_ids(market_ids, "market_ids", what)
        return cls.from_factorized(factorized, market_labels, what=what)

    @classmethod
    def from_factorized(
        cls,
        factorized: FactorizedIds,
        market_labels: np.ndarray | None = None,
        *,
        what: str = "product data",
    ) -> MarketLayout:
        """:meth:`from_ids` from market ids already checked by :func:`factorize_ids`.

        Parameters
        ----------
        factorized : FactorizedIds
            ``factorize_ids(market_ids, "market_ids", what)``.
        market_labels : numpy.ndarray, optional
            As in :meth:`from_ids`.
        what : str
            Data set name for error messages.

        Returns
        -------
        MarketLayout

        Raises
        ------
        BLPInputError
            As :meth:`from_ids`, for a row's market that is unknown or a labelled market
            without rows.
        """
        _, codes, uniques = factorized
        if market_labels is None:
            labels = uniques
        else:
            labels = np.asarray(market_labels, dtype=object)
            # Look up the distinct ids only (94 markets, not 94,000 agent rows).
            lookup = pd.Index(labels).get_indexer(uniques)
            codes = lookup[codes]
            if (lookup < 0).any():
                unknown = uniques[lookup < 0]  # in order of first appearance
                extra = unknown[:5].tolist()
                raise BLPInputError(
                    f"{what} has rows for markets without products: {extra}"
                    + (" ..." if unknown.size > 5 else "")
                    + _type_hint(extra, labels)
                )
            present = np.bincount(codes, minlength=labels.size) > 0
            if not present.all():
                missing = labels[~present][:5].tolist()
                raise BLPInputError(f"{what} has no rows for markets {missing}")
        codes = np.asarray(codes, dtype=np.intp)
        counts = np.bincount(codes, minlength=labels.size)
        order = np.argsort(codes, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        position = np.empty(codes.size, dtype=np.intp)
        position[order] = np.arange(codes.size) - np.repeat(starts, counts)
        width = int(counts.max()) if counts.size else 0
        index = np.zeros((labels.size, width), dtype=np.intp)
        mask = np.zeros((labels.size, width), dtype=bool)
        index[codes, position] = np.arange(codes.size)
        mask[codes, position] = True
        return cls(labels, codes, index, mask, position)

    @property
    def n_markets(self) -> int:
        """Number of markets T."""
        return int(self.market_labels.size)

    @property
    def width(self) -> int:
        """Padded size (largest number of rows in a market)."""
        return int(self.index.shape[1])

    @property
    def n_rows(self) -> int:
        """Number of flat rows N."""
        return int(self.codes.size)

    @property
    def counts(self) -> np.ndarray:
        """Rows per market."""
        return self.mask.sum(axis=1)

    def pad(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Scatter ``(N, ...)`` row values into a ``(T, Jmax, ...)`` array.

        Parameters
        ----------
        values : numpy.ndarray
            Row values; trailing dimensions are kept.
        fill : float
            Value in padded slots.

        Returns
        -------
        numpy.ndarray
        """
        values = np.asarray(values)
        shape = (self.n_markets, self.width, *values.shape[1:])
        if self._in_order and values.ndim and values.shape[0] == self.n_rows:
            # No padding and rows already in slot order: one copy, no scatter (1 ms for the
            # 94,000 × 2 agent nodes of Mixtape exercise 2).
            out = np.empty(shape, dtype=values.dtype)
            out.reshape(values.shape)[...] = values
            return out
        out = np.full(shape, fill, dtype=values.dtype)
        out[self.codes, self.position] = values
        return out

    def flatten(self, padded: np.ndarray) -> np.ndarray:
        """Gather a ``(T, Jmax, ...)`` array back to ``(N, ...)`` rows in data order."""
        if (
            isinstance(padded, np.ndarray)
            and self._in_order
            and padded.shape[:2] == self.index.shape
            and padded.flags.c_contiguous  # the gather returns C order from C order
        ):
            return padded.reshape((self.n_rows, *padded.shape[2:])).copy()
        return padded[self.codes, self.position]

    @cached_property
    def _in_order(self) -> bool:
        """Whether every slot holds a row and the rows fill the slots in data order (balanced
        markets whose rows are sorted by market, as in the Mixtape and pyblp data sets): then
        :meth:`pad` and :meth:`flatten` are reshapes."""
        return bool(self.mask.all()) and np.array_equal(
            self.index.ravel(), np.arange(self.index.size)
        )

    def market_positions(self, markets: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Positions of market labels in the layout.

        Raises
        ------
        BLPInputError
            If a label is not one of the layout's markets.
        """
        lookup = pd.Index(self.market_labels)
        wanted = np.asarray(markets, dtype=object).ravel()
        positions = lookup.get_indexer(wanted)
        if (positions < 0).any():
            unknown = wanted[positions < 0][:5].tolist()
            raise BLPInputError(f"unknown market ids {unknown}: the model never saw them")
        return positions

    def chunks(self, chunk_size: int | None) -> list[np.ndarray]:
        """Split market positions into consecutive groups of at most ``chunk_size`` markets."""
        if chunk_size is None or chunk_size >= self.n_markets:
            return [np.arange(self.n_markets)]
        return [
            np.arange(start, min(start + chunk_size, self.n_markets))
            for start in range(0, self.n_markets, chunk_size)
        ]


def _type_hint(unknown: list[Any], labels: np.ndarray) -> str:
    """A hint when unknown ids equal known ones as text (``"1"`` in agents, ``1`` in products)."""
    printed = {str(label): label for label in labels}
    matches = [(value, printed[str(value)]) for value in unknown if str(value) in printed]
    if not matches:
        return ""
    value, label = matches[0]
    return (
        f"; {value!r} ({type(value).__name__}) would match the product market {label!r} "
        f"({type(label).__name__}) as text: give both data sets ids of the same type"
    )
