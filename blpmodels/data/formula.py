"""Parsing of the formula grammar: ``shares ~ 1 + mushy + [prices ~ price_instrument]``.

formulaic builds the matrices; this module only splits our grammar into the parts formulaic
understands. Instrumented regressors sit in square brackets on the right-hand side, as in
linearmodels: ``[endog1 + endog2 ~ instr1 + instr2]``. Several bracketed groups are merged.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from formulaic import Formula

from blpmodels.exceptions import BLPInputError

__all__ = [
    "ParsedFormula",
    "check_shares_not_read",
    "formula_terms",
    "parse_formula",
    "parse_rhs",
    "required_variables",
]


@dataclass(frozen=True)
class ParsedFormula:
    """The parts of a BLP formula.

    Attributes
    ----------
    dependent : str
        Left-hand-side column (the market shares).
    exog : str
        Right-hand side without the bracketed part: exogenous characteristics, including the
        constant unless ``0 +`` / ``- 1`` removes it.
    endog : str or None
        Regressors to instrument (left of ``~`` inside brackets), or None.
    instruments : str or None
        Excluded instruments (right of ``~`` inside brackets), or None.
    """

    dependent: str
    exog: str
    endog: str | None
    instruments: str | None

    @property
    def has_endog(self) -> bool:
        """Whether the formula has instrumented regressors."""
        return self.endog is not None


_BRACKET = re.compile(r"\[([^\[\]]*)\]")


def _top_level(text: str, symbol: str) -> int:
    """Position of the first ``symbol`` outside any parentheses or brackets (-1: none)."""
    depth = 0
    for position, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == symbol and depth == 0:
            return position
    return -1


def _top_level_tilde(text: str) -> int:
    return _top_level(text, "~")


def _clean_sum(text: str) -> str:
    """Tidy the '+' left behind after removing a bracketed group."""
    text = re.sub(r"\+\s*\+", "+", text)
    text = re.sub(r"\+\s*-", "-", text)
    text = re.sub(r"^\s*\+|\+\s*$", "", text.strip())
    return text.strip()


def parse_formula(formula: str) -> ParsedFormula:
    """Split ``dependent ~ exog + [endog ~ instruments]`` into its parts.

    Parameters
    ----------
    formula : str
        Formula with a left-hand side and optional bracketed instrumented regressors.

    Returns
    -------
    ParsedFormula
        The dependent column and the right-hand-side pieces as formulaic strings.

    Raises
    ------
    BLPInputError
        If the formula has no ``~``, an empty or non-column left-hand side, unbalanced or
        malformed brackets, a bracket without ``~`` or with more than one, or no regressors.

    Examples
    --------
    >>> parse_formula("shares ~ 1 + mushy + [prices ~ price_instrument]")
    ParsedFormula(dependent='shares', exog='1 + mushy', endog='prices',
                  instruments='price_instrument')
    >>> parse_formula("shares ~ 0 + prices").endog is None
    True
    """
    if isinstance(formula, (tuple, list)):
        # pyblp's Problem takes product_formulations=(X1, X2, X3).
        raise BLPInputError(
            f"formula must be a string, got a {type(formula).__name__} of formulations (pyblp's "
            "(X1, X2, X3)): write X1 as the formula 'shares ~ 1 + x + [prices ~ z]' and pass "
            "random='0 + prices + x' (X2) and supply='1 + w' (X3), as in "
            "BLPRandomCoefficients.from_formula(formula, data, random=..., agent_data=...)"
        )
    if not isinstance(formula, str):
        raise BLPInputError(f"formula must be a string, got {type(formula).__name__}")
    if formula.count("[") != formula.count("]"):
        raise BLPInputError(f"formula {formula!r}: unbalanced square brackets")
    split = _top_level_tilde(formula)
    if split < 0:
        raise BLPInputError(
            f"formula {formula!r} has no '~': write it as 'shares ~ 1 + x + [prices ~ z]'"
        )
    dependent = formula[:split].strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", dependent):
        raise BLPInputError(
            f"formula {formula!r}: the left-hand side must be the name of the shares column, "
            f"got {dependent!r}"
        )
    rhs = formula[split + 1 :]
    exog, endog, instruments = parse_rhs(rhs, context=formula)
    if endog is None and not _has_terms(exog):
        raise BLPInputError(
            f"formula {formula!r} has no regressors: there is nothing to estimate; add "
            "characteristics or instrumented regressors, e.g. 'shares ~ 1 + x + [prices ~ z]'"
        )
    parsed = ParsedFormula(dependent, exog, endog, instruments)
    _check_shares_not_read(parsed, formula)
    _check_instrumented_variables(parsed, formula)
    return parsed


@functools.lru_cache(maxsize=1024)
def _formula(rhs: str) -> Formula:
    """``Formula(rhs)``, parsed once per string: a model's checks parse each formula part
    several times (its variables, its terms, the types of its columns), at 0.1 to 0.4 ms a
    parse. Private because formulaic's formulas are mutable sequences: callers get copies
    (:func:`formula_terms`) or derived values, never the cached object."""
    return Formula(rhs)


def formula_terms(rhs: str) -> list[Any]:
    """formulaic's terms of a right-hand side, ``list(Formula(rhs))``.

    Parameters
    ----------
    rhs : str
        A formulaic right-hand side.

    Returns
    -------
    list
        formulaic ``Term`` objects (a new list each call).

    Raises
    ------
    Exception
        Whatever formulaic raises for a formula it cannot parse.

    Examples
    --------
    >>> [str(term) for term in formula_terms("1 + x + x:z")]
    ['1', 'x', 'x:z']
    """
    return list(_formula(rhs))


def _terms(rhs: str | None) -> list[Any] | None:
    """formulaic's terms of a right-hand side; None when it does not parse.

    Syntax errors are reported, with the data at hand, when the block is built.
    """
    if not rhs:
        return []
    try:
        return formula_terms(rhs)
    except Exception:  # formulaic raises several parser exception types
        return None


def _variables(term: Any) -> set[str]:
    """Data columns one formulaic term reads (none for the intercept)."""
    text = str(term)
    if text in ("1", "0"):
        return set()
    try:
        return set(_parsed_variables(text))
    except Exception:
        return set()


@functools.lru_cache(maxsize=1024)
def _parsed_variables(rhs: str) -> frozenset[str]:
    """The variables formulaic reads from ``rhs``, parsed once per string: the checks of a
    model ask for the same terms several times, and each parse costs about a millisecond."""
    return frozenset(str(variable) for variable in _formula(rhs).required_variables)


def _mentions(rhs: str, name: str) -> bool:
    """Whether ``name`` appears in ``rhs`` as a whole word: a cheap test that rules out most
    formula parts before they are parsed term by term."""
    return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", rhs) is not None


def check_shares_not_read(rhs: str | None, shares: str, where: str) -> None:
    """Raise if a formula part reads the shares column.

    Shares are the dependent variable (and endogenous): as a regressor, instrument,
    random-coefficient or cost characteristic they would be treated as exogenous.

    Parameters
    ----------
    rhs : str or None
        A formulaic right-hand side.
    shares : str
        The shares column.
    where : str
        The formula or option, for the message (e.g. ``"supply='1 + shares'"``).

    Raises
    ------
    BLPInputError
        Naming the term that reads the shares.

    Examples
    --------
    >>> check_shares_not_read("1 + np.log(shares)", "shares", "supply='1 + np.log(shares)'")
    Traceback (most recent call last):
    ...
    blpmodels.exceptions.BLPInputError: supply='1 + np.log(shares)': the term 'np.log(shares)' ...
    """
    if not rhs or not _mentions(rhs, shares):
        return
    for term in _terms(rhs) or []:
        if shares in _variables(term):
            raise BLPInputError(
                f"{where}: the term {str(term)!r} reads the shares column {shares!r}; market "
                "shares are what the model explains (endogenous), so they cannot be a "
                "regressor, instrument or cost characteristic: remove the term (for within-nest "
                "shares use BLPNestedLogit, or nesting_ids with BLPRandomCoefficients)"
            )


def _check_shares_not_read(parsed: ParsedFormula, formula: str) -> None:
    where = f"formula {formula!r}"
    check_shares_not_read(parsed.exog, parsed.dependent, where)
    check_shares_not_read(parsed.endog, parsed.dependent, where + " (inside the brackets)")
    check_shares_not_read(parsed.instruments, parsed.dependent, where + " (instruments)")


def _check_instrumented_variables(parsed: ParsedFormula, formula: str) -> None:
    """Raise if a term outside the brackets reads a variable that is instrumented.

    ``x:prices`` next to ``[prices ~ z]`` would be an exogenous regressor (its own
    instrument) although it moves with the endogenous price, so the IV estimate would be
    inconsistent without a word. A term identical to an instrumented one is left to the
    "both exogenous and instrumented" check.
    """
    endog_terms = _terms(parsed.endog)
    exog_terms = _terms(parsed.exog)
    if not endog_terms or exog_terms is None:
        return
    instrumented = _instrumented_variables(endog_terms, exog_terms)
    same = {str(term) for term in endog_terms}
    offending = [
        (term, sorted(_variables(term) & instrumented)[0])
        for term in exog_terms
        if str(term) not in same and _variables(term) & instrumented
    ]
    if not offending:
        return
    term, variable = offending[0]
    raise BLPInputError(
        f"formula {formula!r}: the term {str(term)!r} reads {variable!r}, which is instrumented, "
        "but sits outside the brackets, where every term is exogenous (its own instrument). "
        "Move it inside the brackets with an excluded instrument of its own, e.g. "
        f"{_moved_into_brackets(parsed, exog_terms, [t for t, _ in offending], instrumented)!r}"
    )


def _instrumented_variables(endog_terms: list[Any], exog_terms: list[Any]) -> set[str]:
    """The data columns that the bracketed terms make endogenous.

    A variable alone in an instrumented term (``prices``, ``np.log(prices)``) is endogenous.
    In an instrumented interaction (``x:prices``) the variables that are not also plain
    exogenous terms are: with ``1 + x + [prices + x:prices ~ ...]``, ``prices`` but not ``x``.
    """
    plain = {str(term) for term in exog_terms}
    endogenous: set[str] = set()
    for term in endog_terms:
        variables = _variables(term)
        endogenous |= variables if len(variables) == 1 else variables - plain
    return endogenous


def _moved_into_brackets(
    parsed: ParsedFormula, exog_terms: list[Any], moved: list[Any], instrumented: set[str]
) -> str:
    """The formula with ``moved`` instrumented, each with an instrument of the same form."""
    moved_names = {str(term) for term in moved}
    kept = [str(term) for term in exog_terms if str(term) not in moved_names]
    if "1" not in kept:
        kept.insert(0, "0")
    instrument_terms = [t for t in _terms(parsed.instruments) or [] if str(t) not in ("0", "1")]
    first = str(instrument_terms[0]) if instrument_terms else "z"
    pattern = re.compile(
        r"\b(" + "|".join(re.escape(name) for name in sorted(instrumented)) + r")\b"
    )
    extra = [pattern.sub(first, str(term)) for term in moved]
    exog = " + ".join(kept)
    endog = " + ".join([str(parsed.endog), *(str(term) for term in moved)])
    instruments = " + ".join([str(parsed.instruments), *extra])
    return f"{parsed.dependent} ~ {exog} + [{endog} ~ {instruments}]"


def _has_terms(rhs: str) -> bool:
    """Whether a formulaic right-hand side has any term (the constant counts)."""
    try:
        return len(formula_terms(rhs)) > 0
    except Exception:  # a syntax error is reported, with the data, when the block is built
        return True


def parse_rhs(rhs: str, *, context: str | None = None) -> tuple[str, str | None, str | None]:
    """Split a right-hand side into exogenous, endogenous and instrument parts.

    Parameters
    ----------
    rhs : str
        Right-hand side such as ``"1 + mushy + [prices ~ z1 + z2]"``.
    context : str, optional
        The full formula, used in error messages.

    Returns
    -------
    tuple of (str, str or None, str or None)
        ``(exog, endog, instruments)``.

    Raises
    ------
    BLPInputError
        If a bracketed group has no ``~``, more than one, or an empty side, or a ``~`` is
        left outside the brackets.

    Examples
    --------
    >>> parse_rhs("0 + [prices ~ z]")
    ('0', 'prices', 'z')
    """
    where = context if context is not None else rhs
    endog_parts: list[str] = []
    instrument_parts: list[str] = []
    for group in _BRACKET.findall(rhs):
        tilde = _top_level_tilde(group)
        if tilde < 0:
            raise BLPInputError(
                f"formula {where!r}: the bracket [{group}] needs '~' between the instrumented "
                "regressors and their instruments, e.g. [prices ~ price_instrument]"
            )
        left, right = group[:tilde].strip(), group[tilde + 1 :].strip()
        if not left or not right:
            raise BLPInputError(f"formula {where!r}: empty side in bracket [{group}]")
        if _top_level_tilde(right) >= 0:
            raise BLPInputError(
                f"formula {where!r}: the bracket [{group}] has more than one '~'; write "
                "[instrumented regressors ~ instruments], e.g. [prices ~ z1 + z2]"
            )
        endog_parts.append(left)
        instrument_parts.append(right)
    if "[" in _BRACKET.sub("", rhs) or "]" in _BRACKET.sub("", rhs):
        raise BLPInputError(f"formula {where!r}: nested or malformed square brackets")
    exog = _clean_sum(_BRACKET.sub("", rhs))
    if _top_level(exog, "|") >= 0:
        # formulaic would read '|' as a multi-part formula and fail far from here.
        raise BLPInputError(
            f"formula {where!r} uses '|', the instrumental-variables syntax of Stata, fixest "
            "and R's ivreg; here instrumented regressors and their excluded instruments go in "
            "square brackets, 'shares ~ 1 + x + [prices ~ z1 + z2]', and fixed effects go in "
            "absorb='C(market_ids) + C(product_ids)'"
        )
    if _top_level_tilde(exog) >= 0:
        raise BLPInputError(
            f"formula {where!r} has more than one '~' outside square brackets; instrumented "
            "regressors go in brackets: 'shares ~ 1 + x + [prices ~ z]'"
        )
    if not exog:
        # "[prices ~ z]" alone keeps formulaic's default constant, as "1 + [..]" would.
        exog = "1"
    endog = " + ".join(endog_parts) if endog_parts else None
    instruments = " + ".join(instrument_parts) if instrument_parts else None
    return exog, endog, instruments


def required_variables(rhs: str) -> set[str]:
    """Names of the data columns a formulaic right-hand side reads.

    Parameters
    ----------
    rhs : str
        A formulaic right-hand side.

    Returns
    -------
    set of str
        Variable names, excluding functions and module names formulaic resolves itself.

    Examples
    --------
    >>> sorted(required_variables("1 + x + I(p ** 2) + C(g)"))
    ['g', 'p', 'x']
    """
    try:
        return set(_parsed_variables(rhs))
    except Exception as error:  # formulaic raises several parser exception types
        raise BLPInputError(f"could not parse formula part {rhs!r}: {error}") from error
