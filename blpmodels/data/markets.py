"""Market layout: flat rows <-> padded ``[T, Jmax]`` (or ``[T, Imax]``) arrays with masks.

The kernel works on all markets at once, so rows (products or agents) are scattered into a
rectangular array with one row per market and padding where a market has fewer rows than the
largest one. :class:`MarketLayout` holds the scatter index, the mask and the market labels, and
converts in both directions. It also slices out groups of markets (chunks) for bounded memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from blpmodels.exceptions import BLPInputError

__all__ = ["MarketLayout", "check_ids"]


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


def _factorized_ids(
    values: Any, column: str, what: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`check_ids`, also returning each id's code and the distinct ids in order of first
    appearance (one pass of hashing serves the checks and the layout: 94,000 agent ids took
    4 ms to check and 4 ms more to look up)."""
    label = f"{what} column {column!r}" if what else column
    ids = np.asarray(values, dtype=object).ravel()
    codes, uniques = pd.factorize(ids, sort=False)
    missing = codes < 0
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
        _, codes, uniques = _factorized_ids(market_ids, "market_ids", what)
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
        out = np.full((self.n_markets, self.width, *values.shape[1:]), fill, dtype=values.dtype)
        out[self.codes, self.position] = values
        return out

    def flatten(self, padded: np.ndarray) -> np.ndarray:
        """Gather a ``(T, Jmax, ...)`` array back to ``(N, ...)`` rows in data order."""
        return padded[self.codes, self.position]

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
