"""The README's commands are the ones CI runs, and what the README and the manual say the
default optimizer is, the code does."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from blpmodels.estimation.optimize import default_optimizer

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index("```bash")
    end = lines.index("```", start + 1)
    return [line for line in lines[start + 1 : end] if line.strip()]


def test_readme_opens_with_install_demo_and_test_commands() -> None:
    demo, tests = _readme_commands()
    assert "python -m blpmodels demo" in demo
    assert "pytest" in tests


def test_ci_runs_exactly_the_readme_test_command() -> None:
    _, tests = _readme_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci


@pytest.mark.data
def test_readme_python_example_runs_and_gives_its_numbers(shared_data_home, capsys) -> None:
    for name in ("mixtape/products.csv", "mixtape/derived/ex2_product_data.csv"):
        if not (shared_data_home / name).is_file():
            pytest.skip(f"shared data file {shared_data_home / name} not found")
    text = (ROOT / "README.md").read_text()
    start = text.index("```python\n") + len("```python\n")
    code = text[start : text.index("```", start)]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert "BLPLogit Results" in capsys.readouterr().out
    assert round(float(namespace["logit"].params["prices"]), 1) == -30.6
    params = namespace["blp"].params
    assert round(float(params["sigma[prices,prices]"]), 2) == 6.02
    assert round(float(params["pi[prices,log_income]"]), 2) == -5.96


# ------------------------------------------------------------ the default optimizer in the docs

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


def _pages() -> dict[str, str]:
    """The README, the manual's pages, the gallery scripts and the docstrings that say which
    optimizer ``fit`` uses by default."""
    from blpmodels import BLPRandomCoefficients

    files = [
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        *sorted((ROOT / "docs" / "guide").glob("*.md")),
        *sorted((ROOT / "docs" / "gallery").glob("*.py")),
    ]
    pages = {path.relative_to(ROOT).as_posix(): path.read_text() for path in files}
    pages["BLPRandomCoefficients.fit docstring"] = BLPRandomCoefficients.fit.__doc__ or ""
    return pages


def test_every_statement_of_the_default_optimizer_is_what_the_code_does() -> None:
    wrong = [
        (page, "supply" if supply else "demand", name, sentence[:200])
        for page, text in _pages().items()
        for supply, name, sentence in _claims(text)
        if name != default_optimizer(supply=supply)
    ]
    assert not wrong, wrong


def test_the_pages_that_state_the_default_are_all_read() -> None:
    """Each page that tells the reader the default names it for demand and for supply in a
    form the check above reads (a rewording it cannot read fails here, not silently)."""
    pages = _pages()
    for page in (
        "README.md",
        "docs/from_pyblp.md",
        "docs/guide/delta.md",
        "docs/guide/performance.md",
        "docs/performance.md",
        "BLPRandomCoefficients.fit docstring",
    ):
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
