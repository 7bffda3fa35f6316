"""Excluded-instrument builders: BLP sums of characteristics and differentiation instruments.

Both builders work on all markets at once. BLP instruments (Berry, Levinsohn & Pakes, 1995) are
group sums by market and by market × firm. Differentiation instruments (Gandhi & Houde, 2019)
need every within-market pair of products: markets are sorted by size, cut into chunks, and each
chunk is padded to a ``[markets, J, J]`` block, so memory stays bounded and there is no Python
loop over markets.

Column order matches the arrays returned by pyblp's builders of the same name (own-firm block,
then rival block; within a block the term order described in each function), so
``frame.to_numpy()`` can be compared with them directly.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from blpmodels.exceptions import BLPInputError

__all__ = ["build_blp_instruments", "build_differentiation_instruments"]

#: Upper bound on padded product pairs (markets × J × J) handled in one chunk by default (a
#: market larger than its square root gets a chunk of its own). Chunks of this size keep the
#: pairwise arrays (~0.4 MB each) in cache, which is markedly faster than a few huge chunks.
DEFAULT_MAX_PAIRS = 50_000

_INTERCEPT = "Intercept"
_VERSIONS = ("local", "quadratic")


# ---------------------------------------------------------------------------------------------
# validation and data extraction
# ---------------------------------------------------------------------------------------------


def _formula_variables(formula: str) -> list[str]:
    """Data columns read by a formulaic right-hand side."""
    from formulaic import Formula

    try:
        variables = Formula(formula).required_variables
    except Exception as error:  # formulaic raises several parser exception types
        raise BLPInputError(
            f"could not parse characteristics formula {formula!r}: {error}"
        ) from error
    return sorted(str(variable) for variable in variables)


def _check_present(data: pd.DataFrame, columns: Sequence[str]) -> None:
    """Raise naming every column in ``columns`` that ``data`` lacks."""
    missing = [column for column in dict.fromkeys(columns) if column not in data.columns]
    if not missing:
        return
    available = [str(column) for column in data.columns]
    parts = []
    for column in missing:
        close = difflib.get_close_matches(str(column), available, n=1)
        parts.append(f"{column!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    noun = "column" if len(missing) == 1 else "columns"
    raise BLPInputError(f"data has no {noun} {', '.join(parts)}")


def _codes(data: pd.DataFrame, column: str) -> tuple[np.ndarray, int]:
    """Integer codes of an id column; raises on missing ids."""
    codes, uniques = pd.factorize(data[column], sort=False)
    bad = codes < 0
    if bad.any():
        row = _plain(data.index[int(np.flatnonzero(bad)[0])])
        raise BLPInputError(
            f"id column {column!r} has {int(bad.sum())} missing values (first at row {row!r})"
        )
    return codes.astype(np.intp, copy=False), len(uniques)


def _plain(value: object) -> object:
    """NumPy scalars as Python scalars, so messages read ``12`` rather than ``np.int64(12)``."""
    return value.item() if isinstance(value, np.generic) else value


def _first_bad(data: pd.DataFrame, bad: np.ndarray, market_ids: str) -> str:
    """Describe the first flagged row and its market."""
    position = int(np.flatnonzero(bad)[0])
    market = _plain(data[market_ids].iloc[position])
    return f"row {_plain(data.index[position])!r}, market {market!r}"


def _check_missing(data: pd.DataFrame, columns: Sequence[str], market_ids: str) -> None:
    """Raise naming the first characteristic column with missing values."""
    for column in columns:
        bad = data[column].isna().to_numpy()
        if bad.any():
            raise BLPInputError(
                f"characteristic column {column!r} has {int(bad.sum())} missing values "
                f"(first at {_first_bad(data, bad, market_ids)})"
            )


def _characteristics(
    data: pd.DataFrame, characteristics: str | Sequence[str], market_ids: str
) -> tuple[list[str], np.ndarray]:
    """Names and float matrix of the characteristics; validates before building."""
    if isinstance(characteristics, str):
        variables = _formula_variables(characteristics)
        _check_present(data, variables)
        _check_missing(data, variables, market_ids)
        from formulaic import model_matrix

        try:
            # non-finite results (log of 0, ...) are reported below, naming the term
            with np.errstate(all="ignore"):
                matrix = model_matrix(characteristics, data, na_action="raise")
        except Exception as error:
            raise BLPInputError(
                f"could not build characteristics from {characteristics!r}: {error}"
            ) from error
        names = [str(name) for name in matrix.columns]
        values = np.asarray(matrix, dtype=np.float64)
    else:
        names = list(characteristics)
        if not all(isinstance(name, str) for name in names):
            raise BLPInputError(
                "characteristics must be a formula string or a list of column names"
            )
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise BLPInputError(f"characteristics lists {duplicated!r} more than once")
        _check_present(data, names)
        _check_missing(data, names, market_ids)
        columns = []
        for name in names:
            try:
                columns.append(data[name].to_numpy(dtype=np.float64))
            except (TypeError, ValueError) as error:
                raise BLPInputError(
                    f"characteristic column {name!r} is not numeric: {error}"
                ) from error
        values = np.column_stack(columns) if columns else np.zeros((len(data), 0))
    if values.shape[1] == 0:
        raise BLPInputError(f"characteristics {characteristics!r} give no columns")
    bad = ~np.isfinite(values)
    if bad.any():
        column = names[int(np.flatnonzero(bad.any(axis=0))[0])]
        raise BLPInputError(
            f"characteristic {column!r} has non-finite values "
            f"(first at {_first_bad(data, bad.any(axis=1), market_ids)})"
        )
    return names, np.ascontiguousarray(values)


def _prepare(
    data: pd.DataFrame,
    characteristics: str | Sequence[str],
    market_ids: str,
    firm_ids: str | None,
) -> tuple[list[str], np.ndarray, np.ndarray, int, np.ndarray | None]:
    """Validate inputs; return names, X, market codes, market count and firm codes."""
    if not isinstance(data, pd.DataFrame):
        raise BLPInputError(f"data must be a pandas DataFrame, not {type(data).__name__}")
    id_columns = [market_ids] if firm_ids is None else [market_ids, firm_ids]
    if isinstance(characteristics, str):
        wanted = id_columns + _formula_variables(characteristics)
    else:
        wanted = id_columns + [name for name in characteristics if isinstance(name, str)]
    _check_present(data, wanted)
    markets, n_markets = _codes(data, market_ids)
    firms = None if firm_ids is None else _codes(data, firm_ids)[0]
    names, values = _characteristics(data, characteristics, market_ids)
    return names, values, markets, n_markets, firms


def _group_sums(codes: np.ndarray, n_groups: int, values: np.ndarray) -> np.ndarray:
    """Column sums of ``values`` within groups, shape ``(n_groups, K)``."""
    sums = np.empty((n_groups, values.shape[1]))
    for column in range(values.shape[1]):
        sums[:, column] = np.bincount(codes, weights=values[:, column], minlength=n_groups)
    return sums


# ---------------------------------------------------------------------------------------------
# BLP instruments
# ---------------------------------------------------------------------------------------------


def build_blp_instruments(
    data: pd.DataFrame,
    characteristics: str | Sequence[str],
    *,
    market_ids: str = "market_ids",
    firm_ids: str | None = "firm_ids",
) -> pd.DataFrame:
    """Build "sums of characteristics" instruments (Berry, Levinsohn & Pakes, 1995).

    For product ``j`` of firm ``f`` in market ``t`` and each characteristic ``x``, the own-firm
    instrument is the sum of ``x`` over firm ``f``'s *other* products in ``t`` and the rival
    instrument is the sum over the products of all other firms in ``t``. A constant column
    therefore gives product counts.

    Parameters
    ----------
    data : pandas.DataFrame
        Product data, one row per product; markets may differ in size and need not be sorted.
    characteristics : str or sequence of str
        Either a formulaic right-hand side evaluated on ``data`` (``"1 + hpwt + air"``; formulaic
        adds a constant named ``Intercept`` unless the formula says ``0 +``) or a list of numeric
        column names (no constant added).
    market_ids : str, default "market_ids"
        Column with market identifiers.
    firm_ids : str or None, default "firm_ids"
        Column with firm identifiers. ``None`` treats every other product in the market alike
        and returns a single "other products" block.

    Returns
    -------
    pandas.DataFrame
        Indexed like ``data``. Columns ``blp_own_<name>`` for every characteristic, then
        ``blp_rival_<name>`` for every characteristic; with ``firm_ids=None`` only
        ``blp_other_<name>``. ``<name>`` is the formulaic column name (``Intercept`` for the
        constant) or the given column name.

    Raises
    ------
    BLPInputError
        If columns are missing, ids or characteristics hold missing or non-finite values (the
        column, row and market are named), a listed column is not numeric, or the formula
        cannot be parsed or evaluated.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"market_ids": [1, 1, 1, 2, 2], "firm_ids": [1, 1, 2, 1, 2],
    ...                    "x": [1.0, 2.0, 4.0, 3.0, 5.0]})
    >>> build_blp_instruments(df, "1 + x")
       blp_own_Intercept  blp_own_x  blp_rival_Intercept  blp_rival_x
    0                1.0        2.0                  1.0          4.0
    1                1.0        1.0                  1.0          4.0
    2                0.0        0.0                  2.0          3.0
    3                0.0        0.0                  1.0          5.0
    4                0.0        0.0                  1.0          3.0
    >>> build_blp_instruments(df, ["x"], firm_ids=None)["blp_other_x"].tolist()
    [6.0, 5.0, 3.0, 5.0, 3.0]
    """
    names, values, markets, n_markets, firms = _prepare(data, characteristics, market_ids, firm_ids)
    market_sums = _group_sums(markets, n_markets, values)[markets]
    if firms is None:
        blocks = [market_sums - values]
        labels = [f"blp_other_{name}" for name in names]
    else:
        pairs, uniques = pd.factorize(
            markets.astype(np.int64) * (int(firms.max(initial=0)) + 1) + firms
        )
        firm_sums = _group_sums(pairs, len(uniques), values)[pairs]
        blocks = [firm_sums - values, market_sums - firm_sums]
        labels = [f"blp_own_{name}" for name in names] + [f"blp_rival_{name}" for name in names]
    return pd.DataFrame(np.hstack(blocks), index=data.index, columns=labels)


# ---------------------------------------------------------------------------------------------
# differentiation instruments
# ---------------------------------------------------------------------------------------------


def _pair_sd(values: np.ndarray, markets: np.ndarray, n_markets: int) -> np.ndarray:
    """Standard deviation (ddof=0) of within-market differences ``x_j - x_k`` over ``j != k``.

    The differences are antisymmetric, so their mean is zero and the variance is the mean of
    the squares. Per market, ``sum_{j != k} (x_j - x_k)^2 = 2 n sum_j (x_j - mean)^2``, which is
    computed from centred values to avoid cancellation.
    """
    sizes = np.bincount(markets, minlength=n_markets).astype(np.float64)
    means = _group_sums(markets, n_markets, values) / np.maximum(sizes, 1.0)[:, None]
    squares = _group_sums(markets, n_markets, (values - means[markets]) ** 2)
    pairs = float(np.sum(sizes * (sizes - 1.0)))
    if pairs == 0.0:
        return np.zeros(values.shape[1])
    return np.sqrt(np.sum(2.0 * sizes[:, None] * squares, axis=0) / pairs)


def _chunks(sorted_sizes: np.ndarray, chunk_size: int | None) -> list[tuple[int, int]]:
    """Market ranges ``[start, stop)`` over markets sorted by decreasing size."""
    bounds: list[tuple[int, int]] = []
    start, n_markets = 0, len(sorted_sizes)
    while start < n_markets:
        if chunk_size is None:
            width = int(sorted_sizes[start])
            step = max(1, DEFAULT_MAX_PAIRS // max(width * width, 1))
        else:
            step = chunk_size
        stop = min(n_markets, start + step)
        bounds.append((start, stop))
        start = stop
    return bounds


def _differentiation_sums(
    values: np.ndarray,
    markets: np.ndarray,
    n_markets: int,
    firms: np.ndarray | None,
    terms: Sequence[tuple[int, int | None]],
    sd: np.ndarray | None,
    chunk_size: int | None,
) -> list[np.ndarray]:
    """Sums of pairwise terms over own/rival (or other) products, chunked over markets.

    A term ``(a, b)`` has summand ``d_a * d_b`` when ``sd`` is None (quadratic), otherwise
    ``1(|d_a| < sd_a)`` (``b`` None) or ``1(|d_a| < sd_a) * d_b``, with ``d_jk = x_j - x_k``.
    """
    n_rows, n_terms = len(values), len(terms)
    n_blocks = 1 if firms is None else 2
    results = [np.zeros((n_rows, n_terms)) for _ in range(n_blocks)]
    if n_rows == 0:
        return results
    sizes = np.bincount(markets, minlength=n_markets)
    by_size = np.argsort(-sizes, kind="stable")
    rank = np.empty(n_markets, dtype=np.intp)
    rank[by_size] = np.arange(n_markets)
    row_rank = rank[markets]
    order = np.argsort(row_rank, kind="stable")
    sorted_sizes = sizes[by_size]
    offsets = np.concatenate(([0], np.cumsum(sorted_sizes)))
    slots = np.arange(n_rows) - offsets[row_rank[order]]

    for start, stop in _chunks(sorted_sizes, chunk_size):
        width = int(sorted_sizes[start])
        rows = order[offsets[start] : offsets[stop]]
        block = row_rank[rows] - start
        slot = slots[offsets[start] : offsets[stop]]
        valid = np.zeros((stop - start, width), dtype=bool)
        valid[block, slot] = True
        padded = np.zeros((values.shape[1], stop - start, width))
        padded[:, block, slot] = values[rows].T
        pair = valid[:, :, None] & valid[:, None, :]
        diagonal = np.arange(width)
        pair[:, diagonal, diagonal] = False
        if firms is None:
            masks = [pair.astype(np.float64)]
        else:
            firm = np.full((stop - start, width), -1, dtype=np.intp)
            firm[block, slot] = firms[rows]
            same = firm[:, :, None] == firm[:, None, :]
            masks = [(pair & same).astype(np.float64), (pair & ~same).astype(np.float64)]
            del same
        del pair

        def difference(column: int, padded: np.ndarray = padded) -> np.ndarray:
            # laid out [market, k, j] so the sums below run over a non-contiguous axis, which
            # NumPy accumulates sequentially in k: padding (trailing zeros) and the chunking
            # then leave every sum bit-for-bit unchanged
            x = padded[column]
            return x[:, None, :] - x[:, :, None]

        current: int | None = None
        base: np.ndarray | None = None
        for position, (a, b) in enumerate(terms):
            if a != current:
                current, base = a, difference(a)
                if sd is not None:
                    base = (np.abs(base) < sd[a]).astype(np.float64)
            assert base is not None
            if b is None:
                term = base
            elif sd is None and b == a:
                term = base * base
            else:
                term = base * difference(b)
            for result, mask in zip(results, masks, strict=True):
                result[rows, position] = np.add.reduce(term * mask, axis=1)[block, slot]
    return results


def build_differentiation_instruments(
    data: pd.DataFrame,
    characteristics: str | Sequence[str],
    *,
    market_ids: str = "market_ids",
    firm_ids: str | None = "firm_ids",
    version: Literal["local", "quadratic"] = "local",
    interact: bool = False,
    chunk_size: int | None = None,
) -> pd.DataFrame:
    """Build differentiation instruments (Gandhi & Houde, 2019).

    With ``d_jk = x_j - x_k`` the difference in a characteristic between products ``j`` and
    ``k`` of the same market, each instrument sums a function of ``d_jk`` over firm ``f``'s other
    products (own block) and over rival firms' products (rival block):

    - ``"quadratic"``: ``d_jk ** 2`` for every characteristic; with ``interact=True`` also
      ``d_jk^(a) * d_jk^(b)`` for every pair ``a < b``.
    - ``"local"``: the indicator ``|d_jk| < sd`` (a count of close products), where ``sd`` is
      the standard deviation (``ddof=0``) of the characteristic's within-market pairwise
      differences over all ordered pairs ``j != k`` in all markets, as pyblp computes it. With
      ``interact=True`` the counts are *replaced* by ``1(|d_jk^(a)| < sd_a) * d_jk^(b)`` for every
      ordered pair ``(a, b)``, ``a == b`` included, matching pyblp (note the sign of ``d``).

    Formulaic's constant column ``Intercept`` is dropped, since its differences are zero.

    Parameters
    ----------
    data : pandas.DataFrame
        Product data, one row per product; markets may differ in size and need not be sorted.
    characteristics : str or sequence of str
        A formulaic right-hand side evaluated on ``data`` (``"0 + hpwt + air"``) or a list of
        numeric column names.
    market_ids : str, default "market_ids"
        Column with market identifiers.
    firm_ids : str or None, default "firm_ids"
        Column with firm identifiers. ``None`` sums over all other products of the market and
        returns a single block.
    version : {"local", "quadratic"}, default "local"
        Which summand to use (see above).
    interact : bool, default False
        Whether to add (quadratic) or use (local) interactions between characteristics.
    chunk_size : int, optional
        Number of markets handled per padded ``[markets, J, J]`` block. By default chosen so a
        block holds at most about ``DEFAULT_MAX_PAIRS`` (5e4) product pairs, or a single market
        if it is larger. Results do not depend on it, bit for bit.

    Returns
    -------
    pandas.DataFrame
        Indexed like ``data``, all own-block columns then all rival-block columns, named
        ``diff_own_<name>`` / ``diff_rival_<name>`` for a single characteristic and
        ``diff_own_<a>_x_<b>`` / ``diff_rival_<a>_x_<b>`` for interactions (``diff_other_...``
        with ``firm_ids=None``). Within a block the order follows the characteristics: for
        ``"quadratic"`` ``a``, then ``a_x_b`` for ``b > a``, for each ``a`` in turn; for
        ``"local"`` with ``interact=True``, ``a_x_b`` for every ``b``, for each ``a`` in turn.

    Raises
    ------
    BLPInputError
        If ``version`` or ``chunk_size`` is invalid, columns are missing, ids or
        characteristics hold missing or non-finite values (the column, row and market are
        named), or no non-constant characteristic remains.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"market_ids": [1, 1, 1, 2, 2], "firm_ids": [1, 1, 2, 1, 2],
    ...                    "x": [1.0, 2.0, 4.0, 3.0, 5.0]})
    >>> build_differentiation_instruments(df, "1 + x", version="quadratic")
       diff_own_x  diff_rival_x
    0         1.0           9.0
    1         1.0           4.0
    2         0.0          13.0
    3         0.0           4.0
    4         0.0           4.0
    >>> build_differentiation_instruments(df, ["x"], firm_ids=None)["diff_other_x"].tolist()
    [1.0, 2.0, 1.0, 1.0, 1.0]
    """
    if version not in _VERSIONS:
        raise BLPInputError(f"version must be 'local' or 'quadratic', not {version!r}")
    if chunk_size is not None and (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, (int, np.integer))
        or chunk_size < 1
    ):
        raise BLPInputError(f"chunk_size must be a positive integer or None, not {chunk_size!r}")
    names, values, markets, n_markets, firms = _prepare(data, characteristics, market_ids, firm_ids)
    keep = [position for position, name in enumerate(names) if name != _INTERCEPT]
    if not keep:
        raise BLPInputError(
            f"characteristics {characteristics!r} have no column besides the constant"
        )
    names = [names[position] for position in keep]
    values = np.ascontiguousarray(values[:, keep])
    count = len(names)

    terms: list[tuple[int, int | None]] = []
    suffixes: list[str] = []
    for a in range(count):
        if version == "quadratic":
            partners = range(a, count if interact else a + 1)
        elif interact:
            partners = range(count)
        else:
            terms.append((a, None))
            suffixes.append(names[a])
            continue
        for b in partners:
            terms.append((a, b))
            suffixes.append(
                names[a] if version == "quadratic" and b == a else f"{names[a]}_x_{names[b]}"
            )

    sd = _pair_sd(values, markets, n_markets) if version == "local" else None
    blocks = _differentiation_sums(
        values,
        markets,
        n_markets,
        firms,
        terms,
        sd,
        None if chunk_size is None else int(chunk_size),
    )
    prefixes: list[str] = ["other"] if firms is None else ["own", "rival"]
    labels = [f"diff_{prefix}_{suffix}" for prefix in prefixes for suffix in suffixes]
    return pd.DataFrame(np.hstack(blocks), index=data.index, columns=labels)
