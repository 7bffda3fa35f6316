"""Under CI (``CI`` set), missing shared data fail the run; elsewhere the data tests skip.

Each check runs pytest on a throw-away test directory that uses the project's own conftest, so
the hooks are exercised exactly as a real run would (session start, then per-test reports).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from blpmodels.datasets import data_home

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py")

DATA_TEST = """
def test_reads_the_data(mixtape_products):
    assert len(mixtape_products) == 2256
"""

OTHER_SKIPS = """
import pytest

def test_skipped_for_a_missing_file():
    pytest.skip("shared data file /somewhere/x.csv not found")

def test_skipped_for_a_missing_oracle():
    pytest.importorskip("a_module_that_is_not_installed_anywhere")

def test_skipped_for_another_reason():
    pytest.skip("only on Windows")
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_data=DATA_TEST)
    return pytester


def test_ci_with_missing_data_fails_naming_the_folder(suite, monkeypatch, tmp_path):
    missing = tmp_path / "no-data-here"
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("BLPMODELS_DATA", str(missing))
    result = suite.runpytest_inprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    output = result.stdout.str() + result.stderr.str()
    assert f"looked in {missing}" in output
    assert "mixtape/products.csv" in output
    assert "passed" not in output and "skipped" not in output


def test_without_ci_missing_data_skip(suite, monkeypatch, tmp_path):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("BLPMODELS_DATA", str(tmp_path / "no-data-here"))
    result = suite.runpytest_inprocess("-p", "no:cacheprovider", "-rs")
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(skipped=1)
    assert "no-data-here" in result.stdout.str()


@pytest.mark.parametrize("ci", ["", "1"])
def test_ci_turns_prerequisite_skips_into_failures(suite, monkeypatch, ci):
    """With the data present, a skip for a missing file or oracle still fails under CI."""
    if not (data_home() / "mixtape" / "products.csv").is_file():
        pytest.skip(f"shared data file {data_home()}/mixtape/products.csv not found")
    monkeypatch.setenv("CI", ci)
    suite.makepyfile(test_other=OTHER_SKIPS)
    result = suite.runpytest_inprocess("-p", "no:cacheprovider")
    if ci:
        result.assert_outcomes(passed=1, failed=2, skipped=1)
        result.stdout.fnmatch_lines(["*missing prerequisite is a failure*"])
    else:
        result.assert_outcomes(passed=1, skipped=3)
