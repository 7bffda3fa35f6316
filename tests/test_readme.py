"""The README's commands are the ones CI runs."""

from __future__ import annotations

from pathlib import Path

import pytest

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
