"""Backends for the market chunks (issue 11): threads and Dask give the same fits.

The Dask tests run a ``LocalCluster`` in this process (``processes=False``: a worker is a
thread, so CI on two cores starts one in milliseconds) on problems from
:func:`blpmodels.simulation.scale.simulate_scale` of a few dozen markets. Oracles: the
threads backend with one chunk (the combination of chunk results cannot be wrong there), and
the share equations solved by hand (``tests/probes.independent_log_shares``) at δ from Dask.
"""

from __future__ import annotations

import sys
import tracemalloc

import numpy as np
import pandas as pd
import pytest
from probes import independent_log_shares

from blpmodels import BLPRandomCoefficients
from blpmodels.backends import chunk_memory, chunk_size_for_memory, driver_memory, parse_memory
from blpmodels.exceptions import BLPInputError
from blpmodels.kernel.chunks import ChunkStep
from blpmodels.simulation.scale import simulate_scale

distributed = pytest.importorskip("distributed")

TOLERANCE = 1e-10


@pytest.fixture(scope="module")
def cluster():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as local,
        distributed.Client(local, set_as_default=False) as client,
    ):
        yield local, client


@pytest.fixture(scope="module")
def client(cluster):
    return cluster[1]


def _problem(kind: str):
    """A simulated problem, the keywords of its model and its starting values."""
    if kind == "rc":
        return simulate_scale(30, 6, 40, seed=1), {}, {"sigma": 0.5}
    if kind == "demographics":
        return simulate_scale(30, 6, 40, seed=2, pi=0.5), {}, {"sigma": 0.5, "pi": 0.3}
    if kind == "rcnl":
        return simulate_scale(30, 6, 40, seed=3, nests=2), {}, {"sigma": 0.5, "rho": 0.3}
    problem = simulate_scale(30, 6, 40, seed=4)
    problem.products["firm_ids"] = problem.products["product_ids"] % 3
    start = {"sigma": 0.5, "beta": {"prices": -1.0}}
    return problem, {"supply": "1 + cost_shifter"}, start


def _assert_same_fit(first, second, tolerance=TOLERANCE):
    np.testing.assert_allclose(first.params, second.params, rtol=0, atol=tolerance)
    np.testing.assert_allclose(first.bse, second.bse, rtol=0, atol=tolerance)
    assert first.info.objective == pytest.approx(second.info.objective, rel=0, abs=tolerance)


# ------------------------------------------------------------------ same numbers


@pytest.mark.parametrize("kind", ["rc", "demographics", "rcnl", "supply"])
def test_dask_fit_equals_the_threads_fit(client, kind):
    """Parameters, SEs and objective to 1e-10 on Dask and in threads, 7 markets per chunk."""
    problem, keywords, start = _problem(kind)
    threads = problem.model(chunk_size=7, threads=2, **keywords).fit(**start)
    dask = problem.model(chunk_size=7, backend="dask", client=client, **keywords).fit(**start)
    assert dask.info.convergence["backend"] == "dask"
    assert threads.info.convergence["converged"]
    _assert_same_fit(threads, dask)
    np.testing.assert_allclose(threads.elasticities(), dask.elasticities(), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("kind", ["rc", "rcnl"])
def test_chunked_fit_equals_one_chunk(kind):
    """Chunks of 4 markets (the last one short) combine into the one-chunk fit.

    Guards the combination on the driver: a chunk's results written into other markets'
    rows change δ, and the fit.
    """
    problem, keywords, start = _problem(kind)
    whole = problem.model(chunk_size=30, threads=1, **keywords).fit(**start)
    chunked = problem.model(chunk_size=4, threads=2, **keywords).fit(**start)
    _assert_same_fit(whole, chunked, 1e-9)


def test_dask_delta_solves_the_share_equations(client):
    """δ from Dask chunks against log shares computed by hand, market by market."""
    problem, _, _ = _problem("rc")
    model = problem.model(chunk_size=4, backend="dask", client=client)
    objective = model.objective_function(model.parameters(sigma=0.7))
    evaluation = objective.evaluate(np.array([0.7]))
    assert evaluation.success
    residual = independent_log_shares(problem.products, problem.agents, evaluation.delta, 0.7)
    assert np.abs(residual - np.log(problem.products["shares"])).max() < 1e-12


def test_results_do_not_depend_on_the_number_of_workers(client):
    """One worker or two: the same chunks, so bitwise the same estimates."""
    problem, _, start = _problem("demographics")
    two = problem.model(backend="dask", client=client).fit(**start)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as local,
        distributed.Client(local, set_as_default=False) as single,
    ):
        one = problem.model(backend="dask", client=single).fit(**start)
    np.testing.assert_array_equal(one.params, two.params)
    np.testing.assert_array_equal(one.bse, two.bse)


def test_micro_moments_run_on_the_driver_with_dask(client):
    """A micro moment (mean income of buyers) fitted on Dask equals the threads fit."""
    from blpmodels import MicroDataset, MicroMoment

    problem, _, start = _problem("demographics")
    markets = problem.products["market_ids"].unique()[:5]
    survey = MicroDataset("buyers", observations=500, market_ids=list(markets))
    moment = MicroMoment.mean("income", survey, 0.1)
    fits = [
        problem.model(chunk_size=7, **keywords).fit(**start, micro_moments=[moment])
        for keywords in ({}, {"backend": "dask", "client": client})
    ]
    _assert_same_fit(*fits)


# ------------------------------------------------------------------ workers lost


def _kill(cluster, address: str) -> None:
    worker = next(w for w in cluster.workers.values() if w.address == address)
    cluster.sync(worker.close)


def _evaluate_across_a_lost_worker(n_workers: int, processes: bool, kill):
    """The "rc" problem evaluated on a dask cluster at σ = 0.5, then ``kill(cluster, client,
    address)`` takes the first chunk's worker away, then at σ = 0.6 and 0.8: q and δ equal the
    threads evaluations'. Returns the backend's recoveries and chunk owners at the end (read
    while the cluster runs), the lost worker and the (dask, threads) evaluation pairs."""
    problem, _, _ = _problem("rc")
    reference = problem.model(chunk_size=4).objective_function(
        problem.model().parameters(sigma=0.5)
    )
    with (
        distributed.LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=processes, dashboard_address=":0"
        ) as local,
        distributed.Client(local, set_as_default=False) as client,
    ):
        model = problem.model(chunk_size=4, backend="dask", client=client)
        objective = model.objective_function(model.parameters(sigma=0.5))
        objective.evaluate(np.array([0.5]))
        reference.evaluate(np.array([0.5]))
        victim = objective.backend.owners[0]
        kill(local, client, victim)
        pairs = []
        for sigma in (0.6, 0.8):
            expected = reference.evaluate(np.array([sigma]))
            evaluation = objective.evaluate(np.array([sigma]))
            assert evaluation.objective == pytest.approx(expected.objective, rel=1e-12)
            np.testing.assert_allclose(evaluation.delta, expected.delta, rtol=0, atol=1e-12)
            pairs.append((evaluation, expected))
        return objective.backend.recoveries, list(objective.backend.owners), victim, pairs


def test_a_worker_lost_between_evaluations_is_replaced():
    """Its chunks are scattered again with the driver's warm start; δ and q are unchanged."""
    recoveries, owners, victim, pairs = _evaluate_across_a_lost_worker(
        3, False, lambda cluster, client, address: _kill(cluster, address)
    )
    for evaluation, expected in pairs:
        np.testing.assert_allclose(evaluation.gradient, expected.gradient, rtol=1e-9)
    assert recoveries == 1
    assert victim not in owners


def test_a_worker_killed_mid_fit_does_not_stop_the_fit():
    """A worker dies while an evaluation's steps are queued: the fit recovers and ends where
    the threads fit does."""
    problem, _, start = _problem("demographics")
    expected = problem.model(chunk_size=4).fit(**start)
    with (
        distributed.LocalCluster(
            n_workers=3, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as local,
        distributed.Client(local, set_as_default=False) as client,
    ):
        # The fourth evaluation, after two of its eight steps.
        model, backend = _dask_model_acting_at(
            problem, start, client, 30, lambda number: _kill(local, backend.owners[number])
        )
        results = model.fit(**start)
        assert backend.recoveries >= 1
        assert len(set(backend.owners)) == 2
    _assert_same_fit(expected, results, 1e-8)


def _dask_model_acting_at(problem, start, client, call, action):
    """A Dask model whose objective calls ``action(chunk number)`` just before submitting its
    ``call``-th chunk step (steps are numbered across evaluations), and its backend."""
    model = problem.model(chunk_size=4, backend="dask", client=client)
    objective = model.objective_function(model.parameters(**start))
    backend = objective.backend
    submit = backend._submit
    calls = {"n": 0}

    def submit_and_act(number, step):
        calls["n"] += 1
        if calls["n"] == call:
            action(number)
        return submit(number, step)

    backend._submit = submit_and_act
    model.objective_function = lambda *args, **kwargs: objective
    return model, backend


# ------------------------------------------------------------------ errors


def test_closed_client_is_a_clear_error():
    problem, _, start = _problem("rc")
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
    ) as local:
        client = distributed.Client(local, set_as_default=False)
        model = problem.model(backend="dask", client=client)
        client.close()
        with pytest.raises(BLPInputError, match="client is closed"):
            model.fit(**start)


def test_cluster_without_workers_is_a_clear_error():
    problem, _, start = _problem("rc")
    with (
        distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as local,
        distributed.Client(local, set_as_default=False) as client,
    ):
        model = problem.model(backend="dask", client=client)
        with pytest.raises(BLPInputError, match="has no workers") as error:
            model.fit(**start)
        # Refused at once, not after waiting for a worker to join (checked without a clock).
        assert "waited" not in str(error.value)


def test_every_worker_lost_mid_fit_is_an_error_not_a_hang():
    from blpmodels.backends.dask import DaskBackend

    problem, _, _ = _problem("rc")
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as local,
        distributed.Client(local, set_as_default=False) as client,
    ):
        model = problem.model(chunk_size=10)
        objective = model.objective_function(model.parameters(sigma=0.5))
        objective.backend = DaskBackend(client, timeout=1.0)
        objective.evaluate(np.array([0.5]))
        _kill(local, objective.backend.owners[0])
        # It gives up after the backend's own wait (timeout=1.0), not the 30 s default.
        with pytest.raises(BLPInputError, match=r"has no workers \(waited 1 s for one\)"):
            objective.evaluate(np.array([0.6]))


def test_dask_without_dask_installed_says_what_to_install(monkeypatch):
    problem, _, _ = _problem("rc")
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r'pip install "blpmodels\[dask\]"'):
        problem.model(backend="dask")


@pytest.mark.parametrize(
    ("keywords", "match"),
    [
        ({"backend": "spark"}, "backend must be 'threads' or 'dask'"),
        ({"client": object()}, "client= is for backend='dask'"),
        ({"backend": "dask", "threads": 2}, "threads= is for backend='threads'"),
        ({"memory_limit": "2GiB", "chunk_size": 3}, "not both"),
        ({"memory_limit": "lots"}, "is not a size"),
        ({"memory_limit": -5}, "positive size"),
        ({"backend": "dask", "client": "tcp://x"}, "must be a distributed.Client"),
    ],
)
def test_backend_options_are_checked(keywords, match):
    problem, _, _ = _problem("rc")
    with pytest.raises(BLPInputError, match=match):
        problem.model(**keywords).fit(sigma=0.5)


# ------------------------------------------------------------------ memory


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2GiB", 2 * 2**30), ("500 MB", 500 * 10**6), ("1.5kib", 1536), (4096, 4096)],
)
def test_memory_sizes_are_parsed(text, expected):
    assert parse_memory(text) == expected


def test_memory_limit_chooses_the_chunk_size():
    """The chunk is as large as the limit allows, by the documented per-market sizes and the
    driver's product arrays: 240 products, X = (1, x, prices) and Z = (1, x and the five
    excluded instruments), 10 columns, one parameter."""
    problem = simulate_scale(40, 6, 50, seed=0)
    working, resident = chunk_memory(6, 50, 1)
    # By hand: one [J, J] Newton inverse resident and 6 (1 + P) values per product.
    assert resident == 8 * (6**2 + 6 * 6 * 2)
    driver = 8 * 240 * (3 * 10 + 8 * 2)
    assert driver_memory(240, 10, 1) == driver
    limit = int(40 * resident + driver + 2 * 9.5 * working)  # two chunks of 9.5 markets
    model = problem.model(memory_limit=limit, threads=2)
    objective = model.objective_function(model.parameters(sigma=0.5))
    assert objective.chunk_size == 9
    assert (
        chunk_size_for_memory(
            limit, n_markets=40, n_products=6, n_agents=50, n_theta=1, parallel=1, driver=driver
        )
        == 19
    )
    results = model.fit(sigma=0.5)
    assert results.model.memory_limit == limit
    assert results._results.demand.chunk_size == 9  # post-estimation follows the chunks


def test_a_chunk_keeps_one_newton_inverse_per_market():
    """The [J, J] Newton inverse is the largest state a market keeps: once a step computes a
    new one, the accepted one is dropped. Accepted, the new one takes its place; rejected (the
    evaluation failed in another chunk), it stands in for it, so Newton still starts from a
    nearby inverse (a few share evaluations, not the contraction's hundreds)."""
    problem = simulate_scale(12, 6, 50, seed=0)
    model = problem.model(chunk_size=4)
    objective = model.objective_function(model.parameters(sigma=0.5))
    chunk = objective.make_chunk(0)
    for number, sigma in enumerate((0.5, 0.55)):
        chunk.step(ChunkStep(np.array([sigma]), True, number, number - 1 if number else None, 0))
        kept = [state.inverse for state in (chunk.accepted, chunk.pending[1])]
        assert kept[0] is None and kept[1].shape == (4, 6, 6)
    pending = chunk.pending[1].inverse
    # Step 2 says step 1 was not accepted (it failed elsewhere): the pending inverse remains.
    result = chunk.step(ChunkStep(np.array([0.6]), False, 2, 0, 0))
    assert chunk.accepted.inverse is pending
    assert result.converged.all() and result.evaluations.max() < 10
    # Accepted after all: step 3 accepts step 2 (a function evaluation: it keeps no inverse).
    chunk.step(ChunkStep(np.array([0.6]), False, 3, 2, 0))
    assert chunk.accepted.inverse is pending


@pytest.mark.parametrize("kind", ["rc", "rcnl", "supply"])
def test_evaluation_stays_under_the_memory_limit(kind):
    """Peak memory allocated during an evaluation (tracemalloc sees numpy) under the limit."""
    problem, keywords, start = _problem(kind)
    problem = simulate_scale(40, 20, 300, seed=5, nests=2 if kind == "rcnl" else 0)
    if kind == "supply":
        problem.products["firm_ids"] = problem.products["product_ids"] % 3
    limit = 2 * 2**20
    model = problem.model(memory_limit=limit, threads=1, **keywords)
    start = {k: v for k, v in start.items() if k != "beta"}
    parameters = model.parameters(**start)
    objective = model.objective_function(parameters)
    assert 1 < objective.chunk_size < 40
    theta = parameters.theta0 if kind != "supply" else np.append(parameters.theta0, -1.0)
    objective.evaluate(theta)  # the chunks and their work arrays exist from here on
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    for scale in (1.1, 1.2):
        assert objective.evaluate(theta * scale).success
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    workspace = objective.backend._workspace()
    held = sum(array.nbytes for arrays in workspace._arrays.values() for array in arrays.values())
    assert peak - before + held < limit


def test_a_limit_too_small_for_one_market_names_it():
    """Market 7 has the most products: the error names it and the bytes it needs."""
    problem = simulate_scale(12, 5, 30, seed=0)
    products = problem.products
    extra = products[products["market_ids"] == 7].assign(product_ids=lambda f: f.product_ids + 5)
    extra["shares"] /= 2
    products.loc[products["market_ids"] == 7, "shares"] /= 2
    problem.products = pd.concat([products, extra], ignore_index=True)
    with pytest.raises(BLPInputError, match=r"market 7 .*10 products x 30 agents.*give at least"):
        problem.model(memory_limit="4KiB").fit(sigma=0.5)


def test_an_error_in_a_chunk_comes_back_from_the_worker(client):
    """Agent utilities that overflow at a trial θ: the same BLPInputError as in threads."""
    problem, _, _ = _problem("rc")
    problem.products["prices"] *= 1e150
    model = problem.model(chunk_size=7, backend="dask", client=client)
    objective = model.objective_function(model.parameters(sigma=0.5))
    with pytest.raises(BLPInputError, match="agent utilities overflow"):
        objective.evaluate(np.array([1e160]))


def test_dask_results_pickle_without_the_client(client):
    """The model keeps its client in a handle that pickles as none (a Client does not)."""
    import pickle

    problem, _, start = _problem("rc")
    results = problem.model(backend="dask", client=client).fit(**start)
    again = pickle.loads(pickle.dumps(results))
    np.testing.assert_array_equal(again.params, results.params)
    assert again.model.client.client is None


@pytest.mark.slow
def test_a_worker_process_killed_with_sigkill_is_replaced():
    """Worker processes (not threads): SIGKILL one between evaluations; its chunks move to
    the others (or the nanny's replacement) and the evaluations equal the threads ones."""
    import os
    import signal

    def sigkill(cluster, client, address):
        os.kill(client.run(os.getpid, workers=[address])[address], signal.SIGKILL)

    recoveries, owners, victim, _ = _evaluate_across_a_lost_worker(2, True, sigkill)
    assert recoveries >= 1
    assert victim not in owners


# ------------------------------------------------------------------ the first scatter (issue 18)


def _scatter_with_a_loss(n_workers: int, processes: bool, kill, at_chunk: int = 3):
    """The "rc" problem's first evaluation on Dask (8 chunks) while ``kill(cluster, client,
    address)`` takes away, just before chunk ``at_chunk`` is scattered, the worker that chunk
    is meant for (which already holds earlier chunks). Returns the evaluation, the threads
    evaluation, the backend's recoveries and owners, and the lost worker."""
    problem, _, _ = _problem("rc")
    reference = problem.model(chunk_size=4).objective_function(
        problem.model().parameters(sigma=0.5)
    )
    expected = reference.evaluate(np.array([0.5]))
    with (
        distributed.LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=processes, dashboard_address=":0"
        ) as local,
        distributed.Client(local, set_as_default=False) as client,
    ):
        model = problem.model(chunk_size=4, backend="dask", client=client)
        objective = model.objective_function(model.parameters(sigma=0.5))
        backend = objective.backend
        make_chunk = objective.make_chunk
        lost = []

        def make_and_kill(number):
            if number == at_chunk:
                workers = backend.workers()
                lost.append(workers[number % len(workers)])
                kill(local, client, lost[0])
            return make_chunk(number)

        objective.make_chunk = make_and_kill
        evaluation = objective.evaluate(np.array([0.5]))
        return evaluation, expected, backend.recoveries, list(backend.owners), lost[0]


def test_a_worker_lost_during_the_first_scatter_is_replaced():
    """The scheduler answers a scatter to the departed worker with a bare KeyError of its
    address; the chunk goes to a live worker instead, the chunks the lost worker held are
    scattered again, and q and δ equal the threads evaluation's."""
    evaluation, expected, recoveries, owners, victim = _scatter_with_a_loss(
        3, False, lambda cluster, client, address: _kill(cluster, address)
    )
    assert evaluation.objective == pytest.approx(expected.objective, rel=1e-12)
    np.testing.assert_allclose(evaluation.delta, expected.delta, rtol=0, atol=1e-12)
    assert recoveries >= 2  # the chunk on its way, and chunk 0 that the worker held
    assert victim not in owners


def test_a_client_closed_mid_fit_is_a_clear_error():
    """The client closed between the steps of an evaluation of a fit, or between two
    evaluations: BLPInputError saying so (it was ClosedClientError, CommClosedError or an
    AttributeError on the client's dropped scheduler connection)."""
    problem, _, start = _problem("rc")
    for close_at in (3, 9):  # mid-evaluation (first one), and at the start of the second
        with (
            distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
            ) as local,
            distributed.Client(local, set_as_default=False) as client,
        ):
            model, _ = _dask_model_acting_at(
                problem, start, client, close_at, lambda _number, client=client: client.close()
            )
            with pytest.raises(BLPInputError, match="the Dask client is closed"):
                model.fit(**start)


def test_a_client_closed_during_the_first_scatter_is_a_clear_error():
    problem, _, start = _problem("rc")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as local,
        distributed.Client(local, set_as_default=False) as client,
    ):
        model = problem.model(chunk_size=4, backend="dask", client=client)
        objective = model.objective_function(model.parameters(**start))
        make_chunk = objective.make_chunk

        def make_and_close(number):
            if number == 2:
                client.close()
            return make_chunk(number)

        objective.make_chunk = make_and_close
        with pytest.raises(BLPInputError, match="the Dask client is closed"):
            objective.evaluate(np.array([0.5]))


@pytest.mark.slow
def test_a_worker_process_killed_during_the_first_scatter_is_replaced():
    """Worker processes: SIGKILL the worker the fourth chunk is meant for while the chunks are
    first scattered; the evaluation equals the threads one."""
    import os
    import signal

    def sigkill(cluster, client, address):
        os.kill(client.run(os.getpid, workers=[address])[address], signal.SIGKILL)

    evaluation, expected, recoveries, _, _ = _scatter_with_a_loss(2, True, sigkill)
    assert evaluation.objective == pytest.approx(expected.objective, rel=1e-12)
    np.testing.assert_allclose(evaluation.delta, expected.delta, rtol=0, atol=1e-12)
    assert recoveries >= 1


@pytest.mark.parametrize(("threads", "sizes"), [(1, [100, 100, 100]), (2, [75, 75, 75, 75])])
def test_threads_split_large_problems_into_cache_sized_chunks(threads, sizes):
    """300 markets × 50 products × 200 agents is 3e6 agent-product values: three chunks of at
    most 1.25e6 on one thread, rounded up to four equal ones on two (a multiple of the threads,
    so each thread gets the same share). The objective is the one-chunk objective's."""
    problem = simulate_scale(300, 50, 200, seed=0)
    model = problem.model(threads=threads)
    parameters = model.parameters(sigma=0.7)
    objective = model.objective_function(parameters)
    assert [len(markets) for markets in objective.chunks] == sizes
    one_chunk = problem.model(threads=1, chunk_size=300).objective_function(parameters)
    theta = parameters.theta0
    assert objective.evaluate(theta).objective == pytest.approx(
        one_chunk.evaluate(theta).objective, rel=1e-13
    )


def _wide_objective(threads, supply=None, sigma=0.7):
    """40 markets × 100 products × 200 agents: ∂s/∂δ is inverted market by market."""
    problem = simulate_scale(40, 100, 200, seed=0)
    if supply is None:
        model = problem.model(threads=threads)
    else:
        products = problem.products.copy()
        products["firm_ids"] = (products.groupby("market_ids").cumcount() % 8).astype(str)
        model = BLPRandomCoefficients.from_formula(
            problem.formula,
            products,
            random=problem.random,
            agent_data=problem.agents,
            supply="1 + cost_shifter",
            supply_instruments="z0 + z1 + rivals_x + rivals_cost_shifter",
            threads=threads,
        )
    parameters = model.parameters(sigma=sigma)
    return model.objective_function(parameters), parameters


@pytest.mark.parametrize(
    ("supply", "sigma", "in_sequence"),
    [
        (None, 0.7, True),  # ∂s/∂δ inverted by Cholesky market by market
        ("symmetric", 0.2, True),  # and the markups factored market by market
        # σ = 1 against a price coefficient of -1: some agents' demand slopes up, B is not
        # negative definite, and the markups take the batched path (no GIL held there).
        ("batched", 1.0, False),
    ],
)
def test_chunks_that_hold_the_gil_run_in_sequence(supply, sigma, in_sequence):
    """With two threads, chunks whose Jacobians were formed by scipy's BLAS and LAPACK market
    by market (which hold the GIL) run one after another from the next evaluation on, with
    one pool thread's work arrays, and give the numbers the parallel run gives."""
    objective, parameters = _wide_objective(2, supply, sigma)
    assert objective.threads == 2 and len(objective.chunks) == 2
    # With a supply side θ ends with the price coefficient of X1 (the simulation's is -1).
    moved = objective.n_theta - parameters.theta0.size
    theta = np.concatenate([parameters.theta0, np.full(moved, -1.0)])
    objective.evaluate(theta)
    assert objective.backend.in_sequence is in_sequence
    second = objective.evaluate(theta * 1.01)
    # In sequence the chunks borrow the work arrays of one of the pool's threads: no third
    # workspace (memory_limit counts one per thread).
    assert len(objective.backend._workspaces) == 2
    reference, _ = _wide_objective(2, supply, sigma)
    reference.evaluate(theta)
    reference.backend.in_sequence = not in_sequence  # the other schedule, same chunks
    other = reference.evaluate(theta * 1.01)
    assert second.objective == other.objective
    np.testing.assert_array_equal(second.gradient, other.gradient)


def test_chunks_of_narrow_markets_run_in_parallel():
    """Markets narrower than INVERSE_LOOP_WIDTH invert ∂s/∂δ in batched products (numpy
    releases the GIL): the chunks keep running in parallel threads."""
    problem = simulate_scale(40, 50, 200, seed=0)
    model = problem.model(threads=2)
    parameters = model.parameters(sigma=0.7)
    objective = model.objective_function(parameters)
    objective.evaluate(parameters.theta0)
    assert len(objective.chunks) == 2 and objective.backend.in_sequence is False
