"""The README opens with the two commands (install and demo, install and test), which CI runs,
says to use a virtual environment, how long the demo and the test suite take, and how the slow
tests are run; its Python example gives the numbers it prints.

What the README says the default optimizer is, is checked in ``test_docs_defaults.py``.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    """The commands of the README's first code block, which must open the README: the title,
    a blank line, then the block."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[0].startswith("# ") and lines[1] == "" and lines[2] == "```bash", lines[:3]
    end = lines.index("```", 3)
    return [line for line in lines[3:end] if line.strip()]


def _readme_text() -> str:
    """The README's prose, lines joined (sentences break across lines)."""
    return " ".join((ROOT / "README.md").read_text().split())


def test_readme_opens_with_install_demo_and_test_commands() -> None:
    demo, tests = _readme_commands()
    assert demo == "python -m pip install . && python -m blpmodels demo"
    assert tests == 'python -m pip install ".[test]" && python -m pytest'


def test_readme_says_to_use_a_virtual_environment() -> None:
    text = _readme_text()
    assert "virtual environment" in text
    assert "python -m venv .venv && . .venv/bin/activate" in text


def test_readme_gives_the_measured_times() -> None:
    """The demo's time and the test suite's, each with the machine they were measured on, and
    no placeholder left for a number still to be measured."""
    text = _readme_text()
    assert re.search(r"The demo takes [\d–]+ s: [\d.–]+ s of CPU and [\d.–]+ s wall", text)
    suite = r"test suite: about \d+ minutes on an idle \d-core machine \([\d,]+ tests in \d+ min"
    assert re.search(suite, text)
    for placeholder in ("FULL_SUITE_TIME", "TODO", "TBD", "XXX"):
        assert placeholder not in text, placeholder


def test_readme_describes_the_slow_marker_as_setup_cfg_defines_it() -> None:
    """The README says the slow tests are left out by default and ``-m slow`` runs them: so
    does setup.cfg (the marker is declared and the default options deselect it)."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    pytest_options = config["tool:pytest"]
    assert '-m "not slow"' in pytest_options["addopts"]
    markers = [line.split(":")[0].strip() for line in pytest_options["markers"].splitlines()]
    assert "slow" in markers
    text = _readme_text()
    assert "marked `slow`, are left out by default" in text
    assert "`python -m pytest -m slow` runs them" in text


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
