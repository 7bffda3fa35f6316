"""Design matrices from formula parts, kept for rebuilding on new data.

Each formula part (exogenous characteristics, instrumented regressors, instruments, random
coefficients, demographics) becomes a :class:`TermBlock`: the matrix, its column names and the
formulaic ``ModelSpec`` that made it, so ``predict`` on new data reuses exactly the same encoding
(same categorical levels, same transforms). Checks that name the column at fault live here too.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from formulaic import model_matrix

from blpmodels.data.formula import formula_terms, required_variables
from blpmodels.exceptions import BLPInputError

__all__ = [
    "TermBlock",
    "build_block",
    "check_column_types",
    "check_columns",
    "check_full_rank",
    "check_scales",
    "check_unique_columns",
    "column_norms",
    "first_label",
    "numeric_values",
    "warn_user",
]

# Columns whose largest magnitude exceeds this, or whose standard deviation falls below the
# inverse, make Z'Z and the weighting matrix badly conditioned (see check_scales).
SCALE_LIMIT = 1e6

# The package root (this module lives in ``blpmodels/data``).
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn at the first frame outside blpmodels, so the warning shows the caller's line.

    Parameters
    ----------
    message : str
        Warning text.
    category : type
        Warning class.
    """
    frame = sys._getframe(1)
    level = 2
    while frame is not None and _internal(frame):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)


def _in_package(frame: Any) -> bool:
    filename = frame.f_code.co_filename
    return not filename.startswith("<") and os.path.abspath(filename).startswith(_PACKAGE)


def _internal(frame: Any) -> bool:
    # Methods that dataclasses generate (``__init__``) are compiled from "<string>": they are
    # ours when called from the package, and the caller's code otherwise (a REPL's "<stdin>").
    if frame.f_code.co_filename.startswith("<"):
        return frame.f_back is not None and _in_package(frame.f_back)
    return _in_package(frame)


# infer_dtype kinds that convert to float64 without losing meaning.
_NUMERIC_KINDS = {"floating", "integer", "mixed-integer-float", "boolean", "decimal", "empty"}


def numeric_values(values: Any, label: str) -> np.ndarray:
    """Values as float64, refusing text and other non-numbers instead of converting them.

    ``numpy.asarray(..., dtype=float)`` silently parses strings such as ``"0.02"``; data read
    as text usually hide a problem (a stray header, a thousands separator), so name the column.

    Parameters
    ----------
    values : array-like or pandas.Series
        Values to convert.
    label : str
        What the values are, for the message (e.g. ``"agent data column 'weights'"``).

    Returns
    -------
    numpy.ndarray
        float64 values (NaN where missing).

    Raises
    ------
    BLPInputError
        If the values hold text or other non-numeric objects.

    Examples
    --------
    >>> numeric_values(pd.Series(["0.1", "0.2"]), "column 'shares'")
    Traceback (most recent call last):
    ...
    blpmodels.exceptions.BLPInputError: column 'shares' holds text (e.g. '0.1'), not numbers; ...
    """
    dtype = getattr(values, "dtype", None)
    if dtype is None:
        values = np.asarray(values)
        dtype = values.dtype
    numeric = pd.api.types.is_bool_dtype(dtype) or (
        pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_complex_dtype(dtype)
    )
    if not numeric:
        flat = values if isinstance(values, pd.Series) else np.asarray(values).ravel()
        kind = pd.api.types.infer_dtype(flat, skipna=True)
        if kind not in _NUMERIC_KINDS or isinstance(dtype, pd.CategoricalDtype):
            text = next((value for value in flat if isinstance(value, (str, bytes))), None)
            if text is not None:
                raise BLPInputError(
                    f"{label} holds text (e.g. {text!r}), not numbers; convert it first "
                    "(e.g. with pandas.to_numeric) and check why it was read as text"
                )
            raise BLPInputError(f"{label} holds {kind} values ({dtype}), not numbers")
    return np.asarray(values, dtype=np.float64)


def check_scales(blocks: Sequence[tuple[str, Sequence[str], np.ndarray]]) -> None:
    """Warn about columns too large or too small for well-conditioned moment matrices.

    A column with values beyond ``1e6`` in magnitude, or varying by less than ``1e-6``
    (standard deviation), next to columns of order one makes Z'Z and the GMM weighting matrix
    nearly singular, so estimates lose digits or the weighting matrix cannot be inverted.
    Constant columns (an intercept at any scale) are left alone.

    Parameters
    ----------
    blocks : sequence of (role, names, values)
        E.g. ``("regressor", ("x",), X)``; each column is named once, under its first role.

    Warns
    -----
    UserWarning
        Naming the column, its scale and a power of ten to rescale it by.
    """
    seen: set[str] = set()
    for role, names, values in blocks:
        if values.size == 0:
            continue
        largest = np.abs(values).max(axis=0)
        # Scaled first so that squaring 1e200 cannot overflow.
        unit = np.where(largest > 0, largest, 1.0)
        spread = (values / unit).std(axis=0) * unit
        # max == min, not std == 0: the std of a constant column is a rounding error, not 0.
        constant = values.max(axis=0) == values.min(axis=0)
        for position, name in enumerate(names):
            if name in seen:
                continue
            seen.add(name)
            if constant[position]:
                continue
            if largest[position] > SCALE_LIMIT:
                factor = 10.0 ** np.floor(np.log10(largest[position]))
                warn_user(
                    f"{role} {name!r} has values up to {largest[position]:.3g} in absolute "
                    f"value: rescale it (e.g. divide by {factor:.0e}) so that the moment and "
                    "weighting matrices stay well conditioned"
                )
            elif spread[position] < 1.0 / SCALE_LIMIT:
                factor = 10.0 ** -np.floor(np.log10(spread[position]))
                warn_user(
                    f"{role} {name!r} varies on a scale of {spread[position]:.3g} (standard "
                    f"deviation): rescale it (e.g. multiply by {factor:.0e}) so that the moment "
                    "and weighting matrices stay well conditioned"
                )


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
    def from_frame(cls, frame: pd.DataFrame, role: str = "data") -> TermBlock:
        """A block read column by column from a frame (the array interface of the models).

        ``role`` names the frame in messages (e.g. ``"exog"``); text columns are refused.
        """
        names = tuple(str(column) for column in frame.columns)
        values = np.zeros((len(frame), len(names)))
        for position, name in enumerate(names):
            values[:, position] = numeric_values(frame.iloc[:, position], f"{role} column {name!r}")
        return cls("", names, values, None)

    @property
    def columns_only(self) -> bool:
        """Whether the block reads named columns instead of evaluating a formula."""
        return self.spec is None and bool(self.names)

    def rebuild(
        self,
        data: pd.DataFrame,
        context: Mapping[str, Any] | None = None,
        *,
        what: str = "product data",
    ) -> np.ndarray:
        """Evaluate the block on new data with the original encoding.

        Parameters
        ----------
        data : pandas.DataFrame
            New rows holding every variable the formula reads.
        context : mapping, optional
            Names visible to the formula (functions used in transforms).
        what : str
            Name of the data set in messages ("product data", "agent data").

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
            check_columns(data, list(self.names), what=what)
            return TermBlock.from_frame(data[list(self.names)], what).values
        check_columns(data, sorted(required_variables(self.formula)), context=context, what=what)
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
        columns = [str(name) for name in matrix.columns]
        values = _real_values(matrix, columns, f"formula part {self.formula!r}:")
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
        if column in _ID_COLUMNS:
            raise BLPInputError(_missing_id_message(data, column, label))
        close = difflib.get_close_matches(column, [str(c) for c in data.columns], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise BLPInputError(f"{label} has no column {column!r}{hint}")


# The id columns the field's conventions name, and what each holds (for messages).
_ID_COLUMNS = {
    "market_ids": "the market of each row",
    "product_ids": "the product of each row",
    "firm_ids": "the firm that sets each product's price",
    "nesting_ids": "the nest of each product",
    "clustering_ids": "the cluster of each row",
}


def _missing_id_message(data: pd.DataFrame, column: str, label: str) -> str:
    """A missing id column, with a rename hint when the data hold it under a usual other name.

    Plain spelling similarity misleads here: for ``market_ids`` it picks ``market_size``
    before ``market``.
    """
    stem = column.removesuffix("_ids")
    variants = {stem, stem + "s", stem + "_id", stem + "id", stem + "ids", stem + "_ids"}
    found = [
        str(name)
        for name in data.columns
        if str(name).strip().lower().replace(" ", "_") in variants and str(name) != column
    ]
    message = f"{label} has no column {column!r} ({_ID_COLUMNS[column]})"
    if found:
        return (
            f"{message}: rename your column {found[0]!r} to {column!r}, e.g. "
            f"data.rename(columns={{{found[0]!r}: {column!r}}})"
        )
    return f"{message}: add it, named {column!r}"


def check_unique_columns(data: pd.DataFrame, what: str = "product data") -> None:
    """Raise if two columns share a name.

    pandas then returns a frame where one column is expected, so the failure surfaces far away
    (in formulaic, or as "object too deep" in numpy) instead of naming the column.

    Parameters
    ----------
    data : pandas.DataFrame
        Data to check.
    what : str
        Name of the data set in messages.

    Raises
    ------
    BLPInputError
        Naming the first repeated column and how often it appears.

    Examples
    --------
    >>> check_unique_columns(pd.DataFrame([[1, 2]], columns=["x", "x"]))
    Traceback (most recent call last):
    ...
    blpmodels.exceptions.BLPInputError: product data has 2 columns named 'x'; column names ...
    """
    repeated = data.columns[data.columns.duplicated()]
    if len(repeated):
        name = repeated[0]
        count = int((data.columns == name).sum())
        raise BLPInputError(
            f"{what} has {count} columns named {name!r}; column names must be unique: drop or "
            "rename the copies (e.g. data.loc[:, ~data.columns.duplicated()] keeps the first)"
        )


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
    check_column_types(rhs, data, role=role, what=what)
    try:
        matrix = model_matrix(rhs, data, context=dict(context or {}), na_action="raise")
    except Exception as error:
        raise BLPInputError(f"could not build {role} from {rhs!r}: {error}") from error
    names = [str(name) for name in matrix.columns]
    values = _real_values(matrix, names, role)
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


def _real_values(matrix: Any, names: Sequence[str], role: str) -> np.ndarray:
    """A model matrix as float64, refusing complex columns instead of dropping their imaginary
    part (numpy does that with only a ComplexWarning)."""
    dtypes = getattr(matrix, "dtypes", None)
    if dtypes is not None:
        complex_columns = [
            name
            for name, dtype in zip(names, dtypes, strict=True)
            if pd.api.types.is_complex_dtype(dtype)
        ]
    else:
        complex_columns = list(names) if np.iscomplexobj(matrix) else []
    if complex_columns:
        column = complex_columns[0]
        raise BLPInputError(
            f"{role} term {column!r} is complex; the model needs real numbers: write the part "
            f"you mean explicitly, e.g. np.real({column}) or np.abs({column})"
        )
    return np.asarray(matrix, dtype=np.float64)


def check_column_types(
    rhs: str, data: pd.DataFrame, *, role: str = "regressors", what: str = "product data"
) -> None:
    """Refuse columns a formula reads as plain values that would be misread.

    formulaic turns an ``object`` or text column into one dummy per distinct value, so numbers
    stored as text become a categorical with a level per row (reported later as collinear
    instruments or a singular weighting matrix); dates and durations fail inside formulaic with
    a numpy message. Genuine text categories stay allowed, and ``C(column)`` asks for dummies
    explicitly whatever the column holds. Complex columns are refused once the matrix is built
    (a transform such as ``np.abs`` may make them real).

    Parameters
    ----------
    rhs : str
        formulaic right-hand side.
    data : pandas.DataFrame
        Data holding the variables.
    role : str
        What the formula part is for, for messages.
    what : str
        Name of the data set in messages.

    Raises
    ------
    BLPInputError
        Naming the column, its type and what to write instead.

    Examples
    --------
    >>> frame = pd.DataFrame({"x": ["1.5", "2.5"]})
    >>> check_column_types("1 + x", frame)
    Traceback (most recent call last):
    ...
    blpmodels.exceptions.BLPInputError: product data column 'x' holds numbers stored as text, ...
    """
    try:
        terms = formula_terms(rhs)
    except Exception:  # syntax errors are reported when the block is built
        return
    label = "product data" if what == "data" else what
    for term in terms:
        for factor in term.factors:
            name = str(factor.expr)
            if factor.eval_method.value != "lookup" or name not in data.columns:
                continue
            column = data[name]
            if not isinstance(column, pd.Series):
                continue  # repeated column names are reported by check_unique_columns
            dtype = column.dtype
            if (
                pd.api.types.is_datetime64_any_dtype(dtype)
                or pd.api.types.is_timedelta64_dtype(dtype)
                or isinstance(dtype, pd.PeriodDtype)
            ):
                raise BLPInputError(
                    f"{label} column {name!r} holds dates or durations ({dtype}), used as "
                    f"{role}; the model needs numbers: convert it (e.g. data[{name!r}].dt.year, "
                    f"or days since a date), or write C({name}) for one dummy per period"
                )
            if _numbers_as_text(column):
                kind = (
                    "text"
                    if pd.api.types.infer_dtype(column, skipna=True) == "string"
                    else (f"{dtype} objects")
                )
                raise BLPInputError(
                    f"{label} column {name!r} holds numbers stored as {kind}, used as {role}: "
                    f"formulaic would read it as a categorical with "
                    f"{column.nunique()} levels; convert it (data[{name!r}] = "
                    f"pandas.to_numeric(data[{name!r}])), or write C({name}) for one dummy per "
                    "value"
                )


def _numbers_as_text(column: pd.Series) -> bool:
    """Whether an object or string column holds only numbers or text that parses as numbers."""
    dtype = column.dtype
    if isinstance(dtype, pd.CategoricalDtype) or not (
        pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype)
    ):
        return False
    present = column.dropna()
    if present.empty or present.map(lambda value: isinstance(value, bool)).any():
        return False
    parsed = pd.to_numeric(present, errors="coerce")
    return bool(parsed.notna().all())


def column_norms(matrix: np.ndarray) -> np.ndarray:
    """Euclidean norm of each column, without overflow for values near the float64 limit.

    Examples
    --------
    >>> column_norms(np.array([[3e200], [4e200]]))
    array([5.e+200])
    """
    largest = np.abs(matrix).max(axis=0) if matrix.shape[0] else np.zeros(matrix.shape[1])
    unit = np.where(largest > 0, largest, 1.0)
    return np.linalg.norm(matrix / unit, axis=0) * unit


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
    norms = column_norms(matrix)
    reference = norms if before_absorption is None else column_norms(before_absorption)
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
