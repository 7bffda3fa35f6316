"""Round trips of the Dask backend per evaluation (issue 20, goal 4).

An evaluation on Dask costs two calls through the client, however many chunks there are: one
asking which workers are alive and one ``Client.run`` that steps every worker's chunks and
brings their results back. No task is submitted and nothing gathered (a task per chunk and a
gather cost the scheduler's batched messages, 10 ms apart from a client, and doubled a 20 ms
evaluation). The calls are counted on the client itself, not by the backend, and the numbers
must stay those of the threads backend bit for bit (same chunks, same arithmetic).
"""

from __future__ import annotations

import numpy as np
import pytest

from blpmodels.simulation.scale import simulate_scale

distributed = pytest.importorskip("distributed")

#: Client methods that go to the scheduler (and maybe the workers) and back.
CALLS = ("submit", "map", "gather", "scatter", "compute", "run", "scheduler_info", "nthreads")


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as local,
        distributed.Client(local, set_as_default=False) as client,
    ):
        yield client


def _count_calls(client, monkeypatch) -> dict[str, int]:
    """Count the client's round-trip calls (live counts)."""
    counts = dict.fromkeys(CALLS, 0)
    for name in CALLS:
        method = getattr(client, name)

        def counted(*args, _method=method, _name=name, **kwargs):
            counts[_name] += 1
            return _method(*args, **kwargs)

        monkeypatch.setattr(client, name, counted)
    return counts


@pytest.mark.parametrize("chunk_size", [4, 2])
def test_an_evaluation_is_one_run_and_one_worker_check(client, monkeypatch, chunk_size):
    problem = simulate_scale(30, 6, 40, seed=1)
    thetas = [np.array([sigma]) for sigma in (0.5, 0.6, 0.55, 0.8)]
    model = problem.model(chunk_size=chunk_size, backend="dask", client=client)
    objective = model.objective_function(model.parameters(sigma=0.5))
    reference = problem.model(chunk_size=chunk_size).objective_function(
        problem.model().parameters(sigma=0.5)
    )
    counts = _count_calls(client, monkeypatch)
    first = objective.evaluate(thetas[0])
    # The first evaluation scatters each chunk once (8 or 15 of them).
    assert counts["scatter"] == len(objective.chunks) >= 8
    expected = reference.evaluate(thetas[0])
    pairs = [(first, expected)]
    for theta in thetas[1:]:
        before = dict(counts)
        evaluation = objective.evaluate(theta)
        made = {name: counts[name] - before[name] for name in CALLS}
        assert made == {**dict.fromkeys(CALLS, 0), "run": 1, "nthreads": 1}
        assert objective.backend.last_round_trips == 2
        pairs.append((evaluation, reference.evaluate(theta)))
    for evaluation, expected in pairs:
        # Same chunks and the same arithmetic as the threads backend: identical numbers.
        assert evaluation.objective == expected.objective
        np.testing.assert_array_equal(evaluation.gradient, expected.gradient)
        np.testing.assert_array_equal(evaluation.delta, expected.delta)
        np.testing.assert_array_equal(evaluation.delta_jacobian, expected.delta_jacobian)


def test_a_lost_worker_costs_only_its_chunks_again(monkeypatch):
    """A worker gone between evaluations: its chunks are scattered again and only their
    steps are run again (one more run), and δ still equals the threads backend's."""
    problem = simulate_scale(30, 6, 40, seed=1)
    reference = problem.model(chunk_size=4).objective_function(
        problem.model().parameters(sigma=0.5)
    )
    with (
        distributed.LocalCluster(
            n_workers=3, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as local,
        distributed.Client(local, set_as_default=False) as client,
    ):
        model = problem.model(chunk_size=4, backend="dask", client=client)
        objective = model.objective_function(model.parameters(sigma=0.5))
        objective.evaluate(np.array([0.5]))
        reference.evaluate(np.array([0.5]))
        backend = objective.backend
        victim = backend.owners[0]
        held = backend.owners.count(victim)
        worker = next(w for w in local.workers.values() if w.address == victim)
        local.sync(worker.close)
        counts = _count_calls(client, monkeypatch)
        evaluation = objective.evaluate(np.array([0.6]))
        expected = reference.evaluate(np.array([0.6]))
        assert counts["scatter"] == held
        assert counts["run"] == 1  # the lost worker's chunks were found lost before the run
        assert counts["submit"] == counts["gather"] == 0
        assert victim not in backend.owners
        np.testing.assert_allclose(evaluation.delta, expected.delta, rtol=0, atol=1e-12)
        assert evaluation.objective == pytest.approx(expected.objective, rel=1e-12)


def test_default_dask_chunks_are_a_power_of_two_of_equal_size(client):
    """250 markets × 10 products × 1,000 agents = 2.5e6 agent-product values: two chunks of
    at least 1e6 values fit, four do not, so 2 chunks of 125 markets (by hand), which split
    evenly over two workers (the rule before gave 100, 100 and 50 markets)."""
    problem = simulate_scale(250, 10, 1000, seed=5)
    model = problem.model(backend="dask", client=client)
    objective = model.objective_function(model.parameters(sigma=0.5))
    assert [len(markets) for markets in objective.chunks] == [125, 125]
