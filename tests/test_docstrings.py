"""Run the Examples sections of the package's docstrings.

Examples that need no data run everywhere. Examples that need the shared data are marked
``+SKIP`` in the source (so a plain ``doctest`` run stays offline); with the data present this
module runs them too, with ``data`` and ``results`` bound to the exercise-1 IV + fixed-effects
logit so the results methods' examples have something to work on.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import numpy as np
import pytest
from docexamples import examples

import blpmodels

OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(blpmodels.__path__, prefix="blpmodels.")
    if not info.name.endswith("__main__")
)

# Docstrings whose skipped examples are run when the shared data is present. The demo, the
# comparison table and the data-folder default print machine-dependent text, so they stay skipped.
DATA_EXAMPLES = {
    "blpmodels.datasets.load_mixtape_products",
    "blpmodels.datasets.load_mixtape_demographics",
    "blpmodels.datasets.load_mixtape_exercise2",
    "blpmodels.datasets.load_nevo",
    "blpmodels.datasets.load_blp",
    "blpmodels.datasets.load_petrin",
    "blpmodels.datasets.load_petrin_micro_moments",
    "blpmodels.BLPLogit",
    "blpmodels.BLPNestedLogit",
    "blpmodels.BLPRandomCoefficients",
    "blpmodels.BLPResults.t_test",
    "blpmodels.BLPResults.predict",
    "blpmodels.BLPResults.fixed_effects",
    "blpmodels.BLPResults.probabilities",
    "blpmodels.BLPResults.elasticities",
    "blpmodels.BLPResults.diversion_ratios",
    "blpmodels.BLPResults.long_run_diversion_ratios",
    "blpmodels.BLPResults.bootstrap",
    "blpmodels.BLPResults.summary",
}


def _run(test: doctest.DocTest) -> doctest.TestResults:
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    runner.run(test)
    return runner.summarize(verbose=False)


def _tests(module_name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(module_name)
    return [test for test in doctest.DocTestFinder().find(module) if test.examples]


@pytest.mark.parametrize("module_name", MODULES)
def test_offline_examples(module_name: str) -> None:
    for test in _tests(module_name):
        outcome = _run(test)
        assert outcome.failed == 0, f"{test.name}: {outcome.failed} example(s) failed"


def test_every_public_model_and_results_method_has_an_example() -> None:
    from blpmodels import BLPResults

    missing = [
        name
        for name in (
            "predict",
            "probabilities",
            "elasticities",
            "diversion_ratios",
            "long_run_diversion_ratios",
            "bootstrap",
            "t_test",
            "summary",
        )
        if "Examples" not in (getattr(BLPResults, name).__doc__ or "")
    ]
    missing += [
        cls.__name__
        for cls in (blpmodels.BLPLogit, blpmodels.BLPNestedLogit, blpmodels.BLPRandomCoefficients)
        if "Examples" not in (cls.__doc__ or "")
    ]
    assert not missing, f"docstrings without an Examples section: {missing}"


@pytest.mark.data
def test_data_examples(shared_data_home, mixtape_products) -> None:
    needed = ["pyblp/nevo_products.csv", "pyblp/blp_products.csv", "pyblp/petrin_products.csv"]
    missing = [name for name in needed if not (shared_data_home / name).is_file()]
    if missing:
        pytest.skip(f"shared data files {missing} not found under {shared_data_home}")
    model = blpmodels.BLPLogit.from_formula(
        "shares ~ 0 + [prices ~ price_instrument]",
        mixtape_products,
        absorb="C(market_ids) + C(product_ids)",
    )
    namespace = {"data": mixtape_products, "results": model.fit(), "np": np}
    found = set()
    failed = []
    for name in sorted(DATA_EXAMPLES):
        for test in examples(name):
            found.add(test.name)
            for example in test.examples:
                example.options.pop(doctest.SKIP, None)
            test.globs.update(namespace)
            if _run(test).failed:
                failed.append(test.name)
    assert found == DATA_EXAMPLES
    assert not failed, f"docstring examples failed (see the captured output): {failed}"
