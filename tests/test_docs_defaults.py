"""What the README, the manual, the gallery and ``fit``'s docstring say the default optimizer
is, the code does (issue 19: docs/from_pyblp.md said trust-constr while every fit used
Gauss–Newton).

The reference is not a constant written here: small fits with ``optimizer`` left at its
default (demand alone, demand with a micro moment, demand with a supply side, random
coefficients and logit) report in ``results.info.convergence["optimizer"]`` which optimizer
ran, and every sentence of the pages that states the default is checked against that.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import small_economy

from blpmodels import BLPLogit, BLPRandomCoefficients, MicroDataset, MicroMoment
from blpmodels.estimation.optimize import default_optimizer

ROOT = Path(__file__).resolve().parents[1]


@lru_cache(maxsize=1)
def observed_defaults() -> dict[str, str]:
    """The optimizer each kind of fit ran with ``optimizer`` at its default (a few tenths of a
    second in all: 15 markets × 4 products, 30 agents)."""
    products, agents = small_economy.economy()
    markets = list(products["market_ids"].unique())
    rc = small_economy.model()
    start = {"sigma": small_economy.SIGMA, "pi": small_economy.PI}
    income = MicroMoment.mean("income", MicroDataset("income survey", 100, markets), 0.1)
    rc_supply = BLPRandomCoefficients.from_formula(
        small_economy.FORMULA,
        products,
        random="0 + prices + x",
        demographics="0 + income",
        agent_data=agents,
        supply="1 + cost_shifter",
        supply_instruments="z0",
    )
    logit_supply = BLPLogit.from_formula(
        "shares ~ 1 + x + [prices ~ cost_shifter + z0]",
        products,
        supply="1 + cost_shifter",
        supply_instruments="z1",
    )
    # Whether these small fits converge is not the point here (other tests check it): only
    # which optimizer "auto" chose.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits = {
            "demand": rc.fit(**start),
            "demand with micro moments": rc.fit(**start, micro_moments=[income]),
            "random coefficients with supply": rc_supply.fit(**start),
            "logit with supply": logit_supply.fit(),
        }
    return {kind: results.info.convergence["optimizer"] for kind, results in fits.items()}


def default_for(supply: bool) -> str:
    """The optimizer the fits ran, for demand (with or without micro moments) or with a supply
    side; the kinds that the pages group together must agree."""
    observed = observed_defaults()
    kinds = (
        ["random coefficients with supply", "logit with supply"]
        if supply
        else ["demand", "demand with micro moments"]
    )
    names = {observed[kind] for kind in kinds}
    assert len(names) == 1, observed
    return names.pop()


def test_default_optimizer_names_what_the_fits_run() -> None:
    """``default_optimizer`` (which ``fit``'s docstring points to) is what "auto" runs."""
    for supply in (False, True):
        assert default_optimizer(supply=supply) == default_for(supply), observed_defaults()


# --------------------------------------------------------------- what the pages say it is

#: An optimizer as the pages write it (quoted, in backquotes, with an en dash or a hyphen).
_NAME = r"[\"`]*(?P<name>gauss[–-]newton|trust-constr|l-bfgs-b|bfgs|slsqp|nelder[–-]mead)\b[\"`]*"
#: The ways the pages state the default optimizer, for demand and with a supply side.
_CLAIMS = {
    False: [
        r"NAME(?: on the moments)? for demand",
        r"default optimizer for demand is NAME",
        r"NAME \(default\)",
        r"its default, NAME",
        r"default optimizer: NAME",
        r"(?<!pyblp )defaults to NAME",  # unqualified: the demand default
    ],
    True: [r"NAME with a supply side", r"with a supply side use NAME"],
}
_PATTERNS = {
    supply: [re.compile(p.replace("NAME", _NAME), re.IGNORECASE) for p in patterns]
    for supply, patterns in _CLAIMS.items()
}


def _sentences(text: str) -> Iterator[str]:
    """Sentences of a Markdown page or a script: table rows, headings, list items and comment
    lines start blocks of their own; blocks split at full stops."""
    block: list[str] = []
    for line in [*text.splitlines(), ""]:
        stripped = line.strip()
        if not stripped or re.match(r"(\||#|[-*] |\d+\. )", stripped):
            if block:
                yield from re.split(r"(?<=[.!?])\s+(?=[A-Z])", " ".join(block))
            block = [stripped] if stripped else []
        else:
            block.append(stripped)


def _claims(text: str) -> list[tuple[bool, str, str]]:
    """(supply side?, optimizer, sentence) for every statement of the default in ``text``."""
    found = []
    for sentence in _sentences(text):
        for supply, patterns in _PATTERNS.items():
            for pattern in patterns:
                for match in pattern.finditer(sentence):
                    name = match["name"].lower().replace("–", "-")
                    found.append((supply, name, sentence))
    return found


def _pages(root: Path = ROOT) -> dict[str, str]:
    """The README, the manual's pages, the gallery scripts and the docstrings that say which
    optimizer ``fit`` uses by default."""
    files = [
        root / "README.md",
        *sorted((root / "docs").glob("*.md")),
        *sorted((root / "docs" / "guide").glob("*.md")),
        *sorted((root / "docs" / "gallery").glob("*.py")),
    ]
    pages = {path.relative_to(root).as_posix(): path.read_text() for path in files}
    pages["BLPRandomCoefficients.fit docstring"] = BLPRandomCoefficients.fit.__doc__ or ""
    return pages


def wrong_statements(root: Path = ROOT) -> list[tuple[str, str, str, str]]:
    """(page, "demand" or "supply", the optimizer it names, the sentence) for every statement
    of the default that is not what the fits run."""
    return [
        (page, "supply" if supply else "demand", name, sentence[:200])
        for page, text in _pages(root).items()
        for supply, name, sentence in _claims(text)
        if name != default_for(supply)
    ]


#: Pages that tell the reader the default, for demand and with a supply side.
STATING_PAGES = (
    "README.md",
    "docs/from_pyblp.md",
    "docs/guide/delta.md",
    "docs/guide/performance.md",
    "docs/performance.md",
    "BLPRandomCoefficients.fit docstring",
)


def test_every_statement_of_the_default_optimizer_is_what_the_code_does() -> None:
    wrong = wrong_statements()
    assert not wrong, wrong


def test_the_pages_that_state_the_default_are_all_read() -> None:
    """Each page that tells the reader the default names it for demand and for supply in a
    form the check above reads (a rewording it cannot read fails here, not silently)."""
    pages = _pages()
    for page in STATING_PAGES:
        roles = {supply for supply, _, _ in _claims(pages[page])}
        assert roles == {False, True}, page


def test_no_page_states_a_default_optimizer_the_check_cannot_read() -> None:
    """A sentence with "default" and an optimizer's name either states the default in a form
    the check reads, or is about pyblp. docs/performance.md is left out: it is a dated log of
    benchmarks ("the default at the time", scipy's default tolerances)."""
    unread = []
    for page, text in _pages().items():
        if page == "docs/performance.md":
            continue
        claimed = {sentence for _, _, sentence in _claims(text)}
        for sentence in _sentences(text):
            if (
                re.search(r"\bdefault", sentence, re.IGNORECASE)
                and re.search(_NAME, sentence, re.IGNORECASE)
                and sentence not in claimed
                and "pyblp" not in sentence
            ):
                unread.append((page, sentence[:200]))
    assert not unread, unread


def test_the_check_reads_the_sentence_that_was_wrong() -> None:
    """docs/from_pyblp.md before issue 19, word for word: the check flags it."""
    before = (
        "- **Default optimizer and tolerance.** blpmodels defaults to trust-constr with bounds "
        "and a\n  δ tolerance of 1e-14 on log shares; pyblp defaults to L-BFGS-B and its own "
        "contraction\n  tolerance. Pass the same optimizer, options and tolerances to compare "
        "estimates.\n"
    )
    assert [(supply, name) for supply, name, _ in _claims(before)] == [(False, "trust-constr")]
    assert default_for(False) != "trust-constr"
