"""Design matrices from formula parts, kept for rebuilding on new data.

Each formula part (exogenous characteristics, instrumented regressors, instruments, random
coefficients, demographics) becomes a :class:`TermBlock`: the matrix, its column names and the
formulaic ``ModelSpec`` that made it, so ``predict`` on new data reuses exactly the same encoding
(same categorical levels, same transforms). Checks that name the column at fault live here too.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from formulaic import model_matrix

from .exceptions import BLPInputError
from .formula import required_variables

__all__ = [
    "TermBlock",
    "build_block",
    "check_columns",
    "check_full_rank",
    "first_label",
]

Intercept = Literal["keep", "drop"]


@dataclass(frozen=True)
class TermBlock:
    """A formula part materialized as a float64 matrix.

    Attributes
    ----------
    formula : str
        The formulaic right-hand side that produced the block ("" when empty).
    names : tuple of str
        Column names.
    values : numpy.ndarray
        ``(N, K)`` float64 matrix.
    spec : object or None
        formulaic ``ModelSpec`` used to rebuild the block on new data; None for empty blocks.
    """

    formula: str
    names: tuple[str, ...]
    values: np.ndarray
    spec: Any = None

    @property
    def size(self) -> int:
        """Number of columns."""
        return len(self.names)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> TermBlock:
        """A block read column by column from a frame (the array interface of the models)."""
        values = np.asarray(frame, dtype=np.float64)
        return cls("", tuple(str(column) for column in frame.columns), values, None)

    @property
    def columns_only(self) -> bool:
        """Whether the block reads named columns instead of evaluating a formula."""
        return self.spec is None and bool(self.names)

    def rebuild(self, data: pd.DataFrame, context: Mapping[str, Any] | None = None) -> np.ndarray:
        """Evaluate the block on new data with the original encoding.

        Parameters
        ----------
        data : pandas.DataFrame
            New rows holding every variable the formula reads.
        context : mapping, optional
            Names visible to the formula (functions used in transforms).

        Returns
        -------
        numpy.ndarray
            ``(len(data), K)`` matrix with the same columns as :attr:`values`.

        Raises
        ------
        BLPInputError
            If a column is missing or has NaN, or a categorical variable takes a level that
            was not seen when the model was built.
        """
        if self.spec is None:
            if not self.names:
                return np.zeros((len(data), 0))
            check_columns(data, list(self.names))
            return np.asarray(data[list(self.names)], dtype=np.float64)
        check_columns(data, sorted(required_variables(self.formula)), context=context)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            matrix = self.spec.get_model_matrix(data, context=dict(context or {}))
        for warning in caught:
            message = str(warning.message)
            if "categories outside" in message or "not seen" in message:
                raise BLPInputError(
                    f"formula part {self.formula!r}: the new data have categories the model "
                    f"never saw ({message.split(':', 1)[-1].split('.')[0].strip()})"
                )
        values = np.asarray(matrix, dtype=np.float64)
        columns = [str(name) for name in matrix.columns]
        if columns != list(self.names) and set(self.names) <= set(columns):
            # Columns build_block dropped (the constant, with absorbed fixed effects).
            values = values[:, [columns.index(name) for name in self.names]]
        if values.shape[1] != len(self.names):
            raise BLPInputError(
                f"formula part {self.formula!r} produced {values.shape[1]} columns on the new "
                f"data instead of {len(self.names)}"
            )
        bad = ~np.isfinite(values)
        if bad.any():
            column = self.names[int(np.nonzero(bad.any(axis=0))[0][0])]
            raise BLPInputError(f"term {column!r} is not finite on the new data")
        return values

    def derivative(
        self,
        data: pd.DataFrame,
        variable: str,
        context: Mapping[str, Any] | None = None,
    ) -> np.ndarray:
        """Row-wise derivative of each column with respect to one data column.

        Columns that do not depend on ``variable`` get exact zeros; a column equal to the
        variable itself gets exact ones; other transforms are differentiated by central
        differences with a power-of-two step (exact for polynomials of degree two).

        Parameters
        ----------
        data : pandas.DataFrame
            Data at which to differentiate.
        variable : str
            Column to differentiate with respect to (e.g. ``"prices"``).
        context : mapping, optional
            Names visible to the formula.

        Returns
        -------
        numpy.ndarray
            ``(len(data), K)`` matrix of derivatives.
        """
        if self.columns_only:
            return np.asarray([[float(name == variable) for name in self.names]] * len(data))
        if self.spec is None or variable not in required_variables(self.formula):
            return np.zeros((len(data), self.size))
        base = np.asarray(data[variable], dtype=np.float64)
        scale = np.maximum(np.abs(base), 1.0)
        step = np.exp2(np.floor(np.log2(scale)) - 20.0)
        up, down = data.copy(), data.copy()
        up[variable] = base + step
        down[variable] = base - step
        upper, lower = self.rebuild(up, context), self.rebuild(down, context)
        derivative = (upper - lower) / (2.0 * step[:, None])
        values = self.rebuild(data, context)
        for column in range(self.size):
            if np.array_equal(upper[:, column], lower[:, column]):
                derivative[:, column] = 0.0
            elif np.array_equal(values[:, column], base):
                derivative[:, column] = 1.0
        return derivative


def first_label(labels: pd.Series | np.ndarray, mask: np.ndarray) -> Any:
    """First label where ``mask`` is true (for error messages)."""
    index = int(np.flatnonzero(mask)[0])
    return labels.iloc[index] if isinstance(labels, pd.Series) else labels[index]


def check_columns(
    data: pd.DataFrame,
    columns: Sequence[str],
    *,
    context: Mapping[str, Any] | None = None,
    market_ids: pd.Series | np.ndarray | None = None,
    what: str = "data",
) -> None:
    """Check that columns exist and hold no missing values.

    Parameters
    ----------
    data : pandas.DataFrame
        Data to check.
    columns : sequence of str
        Columns that must be present. Names found in ``context`` (functions, constants)
        are skipped.
    context : mapping, optional
        Names resolved outside the data.
    market_ids : array-like, optional
        Market of each row, to name the first market with a missing value.
    what : str
        Name of the data set in messages ("product data", "agent data").

    Raises
    ------
    BLPInputError
        Naming the missing column (with close matches) or the column and market with NaN.

    Examples
    --------
    >>> import pandas as pd
    >>> check_columns(pd.DataFrame({"prices": [1.0]}), ["price"])
    Traceback (most recent call last):
    ...
    blpmodels.exceptions.BLPInputError: product data has no column 'price' (did you mean 'prices'?)
    """
    import difflib

    context = context or {}
    label = "product data" if what == "data" else what
    for column in columns:
        if column in data.columns:
            series = data[column]
            missing = series.isna().to_numpy()
            if missing.any():
                row = data.index[int(np.flatnonzero(missing)[0])]
                where = f"row {row!r}"
                if market_ids is not None:
                    where += f", market {first_label(pd.Series(np.asarray(market_ids)), missing)!r}"
                raise BLPInputError(
                    f"{label} column {column!r} has {int(missing.sum())} missing values "
                    f"(first at {where}); drop or fill them explicitly"
                )
            continue
        if column in context:
            continue
        close = difflib.get_close_matches(column, [str(c) for c in data.columns], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise BLPInputError(f"{label} has no column {column!r}{hint}")


def build_block(
    rhs: str | None,
    data: pd.DataFrame,
    *,
    intercept: Intercept = "keep",
    context: Mapping[str, Any] | None = None,
    market_ids: pd.Series | np.ndarray | None = None,
    what: str = "data",
    role: str = "regressors",
) -> TermBlock:
    """Materialize a formula right-hand side.

    Parameters
    ----------
    rhs : str or None
        formulaic right-hand side; None or "" gives an empty block.
    data : pandas.DataFrame
        Data holding the variables.
    intercept : {"keep", "drop"}
        Whether to keep formulaic's ``Intercept`` column (dropped with absorbed fixed effects
        and for bracketed parts).
    context : mapping, optional
        Names visible to the formula (user functions).
    market_ids : array-like, optional
        Market of each row, for error messages.
    what : str
        Data set name for messages.
    role : str
        What the block is for ("regressors", "instruments", ...), for messages.

    Returns
    -------
    TermBlock

    Raises
    ------
    BLPInputError
        Missing columns, NaN values, non-finite terms or formula syntax errors, naming them.

    Examples
    --------
    >>> import pandas as pd
    >>> block = build_block("1 + x", pd.DataFrame({"x": [1.0, 2.0]}))
    >>> block.names
    ('Intercept', 'x')
    """
    if rhs is None or not rhs.strip():
        return TermBlock("", (), np.zeros((len(data), 0)), None)
    columns = sorted(required_variables(rhs))
    check_columns(data, columns, context=context, market_ids=market_ids, what=what)
    try:
        matrix = model_matrix(rhs, data, context=dict(context or {}), na_action="raise")
    except Exception as error:
        raise BLPInputError(f"could not build {role} from {rhs!r}: {error}") from error
    names = [str(name) for name in matrix.columns]
    values = np.asarray(matrix, dtype=np.float64)
    if intercept == "drop" and "Intercept" in names:
        keep = [position for position, name in enumerate(names) if name != "Intercept"]
        values = values[:, keep]
        names = [names[position] for position in keep]
    bad = ~np.isfinite(values)
    if bad.any():
        column = names[int(np.nonzero(bad.any(axis=0))[0][0])]
        rows = bad.any(axis=1)
        where = ""
        if market_ids is not None:
            where = f" (first in market {first_label(pd.Series(np.asarray(market_ids)), rows)!r})"
        raise BLPInputError(f"{role} term {column!r} has non-finite values{where}")
    return TermBlock(rhs, tuple(names), np.ascontiguousarray(values), matrix.model_spec)


def check_full_rank(
    matrix: np.ndarray,
    names: Sequence[str],
    what: str,
    *,
    before_absorption: np.ndarray | None = None,
    tolerance: float = 1e-9,
) -> None:
    """Raise if a column is (numerically) a linear combination of the columns before it.

    Parameters
    ----------
    matrix : numpy.ndarray
        ``(N, K)`` matrix (after absorbing fixed effects, when there are any).
    names : sequence of str
        Column names.
    what : str
        "regressors" or "instruments", for the message.
    before_absorption : numpy.ndarray, optional
        The same columns before fixed effects were absorbed; a column whose residual is tiny
        relative to it is reported as absorbed by the fixed effects.
    tolerance : float
        Relative distance (in unit-norm columns) below which a column counts as collinear.

    Raises
    ------
    BLPInputError
        Naming the first collinear column and the columns it depends on.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]])
    >>> check_full_rank(x, ["a", "b"], "regressors")
    Traceback (most recent call last):
    ...
    blpmodels.exceptions.BLPInputError: regressors are collinear: 'b' is a linear combination ...
    """
    if matrix.shape[1] == 0:
        return
    norms = np.linalg.norm(matrix, axis=0)
    reference = norms if before_absorption is None else np.linalg.norm(before_absorption, axis=0)
    for position, (norm, full) in enumerate(zip(norms, reference, strict=True)):
        if norm <= tolerance * full or norm == 0:
            reason = "absorbed by the fixed effects" if before_absorption is not None else "zero"
            raise BLPInputError(f"{what} term {names[position]!r} is {reason}")
    scaled = matrix / norms
    diagonal = np.abs(np.diag(np.linalg.qr(scaled, mode="r")))
    collinear = np.flatnonzero(diagonal < tolerance)
    if collinear.size:
        position = int(collinear[0])
        coefficients, *_ = np.linalg.lstsq(scaled[:, :position], scaled[:, position], rcond=None)
        partners = [names[k] for k in np.flatnonzero(np.abs(coefficients) > 1e-8)]
        suffix = " after absorbing the fixed effects" if before_absorption is not None else ""
        raise BLPInputError(
            f"{what} are collinear{suffix}: {names[position]!r} is a linear combination of "
            f"{partners or list(names[:position])}"
        )
