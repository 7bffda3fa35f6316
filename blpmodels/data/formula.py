"""Parsing of the formula grammar: ``shares ~ 1 + mushy + [prices ~ price_instrument]``.

formulaic builds the matrices; this module only splits our grammar into the parts formulaic
understands. Instrumented regressors sit in square brackets on the right-hand side, as in
linearmodels: ``[endog1 + endog2 ~ instr1 + instr2]``. Several bracketed groups are merged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from formulaic import Formula

from blpmodels.exceptions import BLPInputError

__all__ = ["ParsedFormula", "parse_formula", "parse_rhs", "required_variables"]


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


def _top_level_tilde(text: str) -> int:
    depth = 0
    for position, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "~" and depth == 0:
            return position
    return -1


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
    return ParsedFormula(dependent, exog, endog, instruments)


def _has_terms(rhs: str) -> bool:
    """Whether a formulaic right-hand side has any term (the constant counts)."""
    try:
        return len(list(Formula(rhs))) > 0
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
        variables = Formula(rhs).required_variables
    except Exception as error:  # formulaic raises several parser exception types
        raise BLPInputError(f"could not parse formula part {rhs!r}: {error}") from error
    return {str(variable) for variable in variables}
