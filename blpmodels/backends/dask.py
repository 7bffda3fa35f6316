"""Dask backend: market chunks resident on the workers of a ``dask.distributed`` cluster.

Each chunk (its product and agent arrays and its warm-start state) is scattered once to one
worker and stays there. An evaluation then costs two round trips through the client, however
many chunks there are: one to learn which workers are alive, and one ``Client.run`` that hands
every worker the steps of the chunks it holds (θ and a few flags), runs them there one after
another in the worker's own thread, and brings their results (δ, ∂δ/∂θ and the markups) back
in its reply. No task is submitted and nothing is gathered: tasks cost the scheduler's
batched messages (10 ms apart from a client) and a separate gather, which doubled a 20 ms
evaluation. A chunk lost with its worker is scattered again from the driver's data, with the
driver's last accepted δ as its warm start, and its step is recomputed, so the fit goes on; a
worker lost while the chunks are first scattered is replaced the same way. A closed client
(before or during the fit) or a cluster without workers is a
:class:`~blpmodels.exceptions.BLPInputError`, never a wait without end nor one of
distributed's internal errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from blpmodels.exceptions import BLPInputError
from blpmodels.kernel.chunks import ChunkResult, ChunkState, ChunkStep, MarketChunk, Workspace

__all__ = ["DaskBackend", "import_distributed"]

_worker_local = threading.local()


def import_distributed() -> Any:
    """The ``distributed`` module, or an error saying how to install it.

    Raises
    ------
    ImportError
        dask or distributed is not installed.

    Examples
    --------
    >>> distributed = import_distributed()  # doctest: +SKIP
    """
    try:
        import distributed
    except ImportError as error:
        raise ImportError(
            "backend='dask' needs dask and distributed: pip install \"blpmodels[dask]\""
        ) from error
    return distributed


class _StepError:
    """An exception raised by a chunk's step on a worker, told apart from a lost worker."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Missing:
    """Chunks a worker was asked to step but does not hold (its data store lost them)."""

    def __init__(self, numbers: list[int]) -> None:
        self.numbers = numbers


def _run_steps(
    chunks: dict[int, MarketChunk], steps: dict[int, ChunkStep]
) -> dict[int, ChunkResult | _StepError | None]:
    """Run on a worker's thread: each held chunk's step (state kept in the chunk).

    Every step runs even after one fails, as in the threads backend: a step left out would
    leave its chunk's state behind the others'.
    """
    workspace = getattr(_worker_local, "workspace", None)
    if workspace is None:
        workspace = _worker_local.workspace = Workspace()
    out: dict[int, ChunkResult | _StepError | None] = {}
    for number, step in steps.items():
        try:
            out[number] = chunks[number].step(step, workspace)
        except Exception as error:
            out[number] = _StepError(error)
    return out


async def _step_held_chunks(
    steps: dict[str, dict[int, tuple[str, ChunkStep]]], dask_worker: Any = None
) -> dict[int, Any] | _Missing:
    """Run on a worker through ``Client.run``: the steps addressed to this worker.

    ``steps`` maps worker addresses to ``{chunk number: (data key, step)}``; the chunks are the
    worker's scattered data, stepped in its task thread pool, so its event loop stays free.
    """
    mine = steps.get(dask_worker.address, {})
    chunks = {}
    missing = []
    for number, (key, _) in mine.items():
        try:
            chunks[number] = dask_worker.data[key]
        except KeyError:
            missing.append(number)
    if missing:
        return _Missing(missing)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        dask_worker.executors["default"],
        _run_steps,
        chunks,
        {number: step for number, (_, step) in mine.items()},
    )


class DaskBackend:
    """Market chunks resident on Dask workers.

    Parameters
    ----------
    client : distributed.Client, optional
        The cluster's client; by default the current one (``distributed.get_client()``).
    timeout : float
        Seconds to wait for a worker when every worker is lost mid-fit before giving up
        (a cluster without workers at the start is an error at once).
    max_recoveries : int
        Chunk losses (workers dying) survived in one evaluation before it fails, and workers
        lost while one chunk is being scattered.

    Examples
    --------
    >>> from distributed import Client, LocalCluster  # doctest: +SKIP
    >>> backend = DaskBackend(Client(LocalCluster(n_workers=2)))  # doctest: +SKIP
    """

    name = "dask"

    def __init__(self, client: Any = None, timeout: float = 30.0, max_recoveries: int = 5):
        distributed = import_distributed()
        if client is None:
            try:
                client = distributed.get_client()
            except ValueError:
                raise BLPInputError(
                    "backend='dask' found no Dask client: pass client=Client(...) (e.g. "
                    "Client(LocalCluster()) or Client('tcp://scheduler:8786')) or create one "
                    "first"
                ) from None
        if not isinstance(client, distributed.Client):
            raise BLPInputError(f"client must be a distributed.Client, got {type(client).__name__}")
        self.client = client
        self.timeout = float(timeout)
        self.max_recoveries = int(max_recoveries)
        self.futures: list[Any] = []
        self.owners: list[str] = []
        self.recoveries = 0
        self._make_chunk: Callable[[int], MarketChunk] | None = None
        self._queue: dict[int, ChunkStep] = {}
        #: Calls through the client (each a round trip to the scheduler and maybe the
        #: workers) by kind: ``"workers"`` (which are alive), ``"run"`` (the steps),
        #: ``"scatter"`` (chunks placed); and those of the last :meth:`run` alone.
        self.round_trips: dict[str, int] = {"workers": 0, "run": 0, "scatter": 0}
        self.last_round_trips = 0

    # ------------------------------------------------------------------ cluster
    def _closed(self) -> BLPInputError | None:
        """The error to raise when the client is no longer usable, else None."""
        status = self.client.status
        if status in ("running", "connecting"):
            return None
        return BLPInputError(
            f"the Dask client is {status}: create a new Client and the model again (chunks "
            "cannot be scattered through a closed client, and a fit cannot go on without one)"
        )

    @contextlib.contextmanager
    def _calling(self) -> Iterator[None]:
        """Around every call through the client: when the client was closed (before or during
        the call) its errors — ``ClosedClientError``, ``CommClosedError``, or an
        ``AttributeError`` on the scheduler connection it dropped — become one BLPInputError."""
        closed = self._closed()
        if closed is not None:
            raise closed
        try:
            yield
        except BLPInputError:
            raise
        except Exception as error:
            closed = self._closed()
            if closed is not None:
                raise closed from error
            raise

    def workers(self) -> list[str]:
        """Addresses of the live workers (sorted, so chunk placement is reproducible).

        Raises
        ------
        BLPInputError
            The client is closed.
        """
        self.round_trips["workers"] += 1
        with self._calling():
            # nthreads: the scheduler's smallest answer naming the workers (scheduler_info
            # sends every worker's metrics too).
            return sorted(self.client.nthreads())

    def _live_workers(self, timeout: float | None = None) -> list[str]:
        """Live workers, waiting up to ``timeout`` seconds (default: none) for one to join.

        Raises
        ------
        BLPInputError
            Still no workers after ``timeout`` seconds.
        """
        deadline = time.monotonic() + (timeout or 0.0)
        while True:
            workers = self.workers()
            if workers:
                return workers
            if time.monotonic() >= deadline:
                waited = f" (waited {timeout:g} s for one)" if timeout else ""
                raise BLPInputError(
                    f"the Dask cluster at {self.client.scheduler.address} has no workers"
                    f"{waited}: start workers or scale the cluster before fitting"
                )
            time.sleep(0.2)

    # ------------------------------------------------------------------ chunks
    def start(self, make_chunk: Callable[[int], MarketChunk], n_chunks: int) -> None:
        """Scatter every chunk once, round robin over the workers.

        A worker that leaves while the chunks are scattered is handled as it is mid-fit: its
        chunks (those scattered to it already, and the one on its way) go to the live workers
        (see :meth:`_place`; chunks it already held are found lost by the first :meth:`run`).

        Raises
        ------
        BLPInputError
            The client is closed, the cluster has no workers, or workers were lost more than
            ``max_recoveries`` times while one chunk was scattered.
        """
        self._make_chunk = make_chunk
        workers = self._live_workers()
        self.futures = [None] * n_chunks
        self.owners = [""] * n_chunks
        for number in range(n_chunks):
            workers = self._place(number, workers, number)

    def _place(self, number: int, workers: list[str], position: int) -> list[str]:
        """Scatter chunk ``number`` to ``workers[position % len(workers)]``, or, should that
        worker leave meanwhile, to another live one; returns the live workers after it.

        The scheduler answers a scatter to a worker that has just left with a bare
        ``KeyError`` of its address (or the comm with a ``CommClosedError``); the chunk then
        goes to the workers alive now (waiting ``timeout`` seconds for one, as mid-fit).
        """
        assert self._make_chunk is not None
        chunk = self._make_chunk(number)
        last: BaseException | None = None
        for attempt in range(self.max_recoveries + 1):
            worker = workers[(position + attempt) % len(workers)]
            self.round_trips["scatter"] += 1
            try:
                with self._calling():
                    [future] = self.client.scatter(
                        [chunk], workers=[worker], hash=False, broadcast=False
                    )
            except BLPInputError:
                raise
            except Exception as error:
                workers = self._live_workers(self.timeout)
                if worker in workers and not _lost_worker(error):
                    raise
                self.recoveries += 1
                last = error
                continue
            self.futures[number] = future
            self.owners[number] = worker
            return workers
        raise BLPInputError(
            f"Dask workers were lost {self.max_recoveries + 1} times while chunk {number} was "
            f"scattered (last: {last!r}): the cluster is not stable enough to fit on"
        )

    def _submit(self, number: int, step: ChunkStep) -> None:
        """Queue chunk ``number``'s step; :meth:`run` sends the queue in one call."""
        self._queue[number] = step

    def run(
        self, steps: Sequence[ChunkStep], state: Callable[[int], ChunkState] | None = None
    ) -> list[ChunkResult]:
        """Each chunk's result for its step, in chunk order; lost chunks are rescattered.

        One call hands every live worker the steps of its chunks (and one asks which workers
        are alive); chunks found lost are scattered again and only their steps sent again.
        ``state(number)`` gives the accepted warm start of a chunk that has to be scattered
        again (its state on the lost worker is gone).
        """
        before = sum(self.round_trips.values())
        steps = list(steps)
        self._queue = {}
        for number, step in enumerate(steps):
            self._submit(number, step)
        pending, self._queue = self._queue, {}
        results: list[ChunkResult | None] = [None] * len(steps)
        lost: set[int] = set()
        recoveries = 0
        while pending:
            # ``Client.run`` to a worker that has left would retry its connection until
            # distributed's connect timeout (30 s by default): ask which are alive first.
            # Workers lost mid-fit may be replaced (a nanny restarts them, a cluster scales
            # up): wait ``timeout`` seconds for one before giving up.
            workers = self._live_workers(self.timeout)
            lost |= {number for number in pending if self.owners[number] not in workers}
            if lost:
                recoveries += 1
                self.recoveries += 1
                if recoveries > self.max_recoveries:
                    raise BLPInputError(
                        f"Dask workers were lost {recoveries} times in one evaluation (chunks "
                        f"{sorted(lost)}): the cluster is not stable enough to fit on"
                    )
                for offset, number in enumerate(sorted(lost)):
                    workers = self._place(number, workers, offset)
                    pending[number] = self._restarted(steps[number], number, state)
            lost = self._step(pending, results, set(workers))
            pending = {number: pending[number] for number in lost}
        self.last_round_trips = sum(self.round_trips.values()) - before
        return results  # type: ignore[return-value]

    @staticmethod
    def _restarted(
        step: ChunkStep, number: int, state: Callable[[int], ChunkState] | None
    ) -> ChunkStep:
        """The step of a chunk scattered again, with the driver's accepted warm start."""
        if state is None:
            return step
        return ChunkStep(
            step.theta, step.gradient, step.number, step.accepted, step.epoch, state(number)
        )

    def _step(
        self, pending: dict[int, ChunkStep], results: list[ChunkResult | None], alive: set[str]
    ) -> set[int]:
        """Run the ``pending`` steps on their chunks' workers (all ``alive``) in one
        ``Client.run``; returns the chunks whose worker was lost meanwhile (the others'
        results are in ``results``)."""
        lost: set[int] = set()
        addressed: dict[str, dict[int, tuple[str, ChunkStep]]] = {}
        for number, step in pending.items():
            key = self.futures[number].key
            addressed.setdefault(self.owners[number], {})[number] = (key, step)
        self.round_trips["run"] += 1
        with self._calling():
            replies = self.client.run(
                _step_held_chunks, addressed, workers=sorted(addressed), on_error="return"
            )
        errors: list[tuple[int, BaseException]] = []
        for worker, numbers in addressed.items():
            reply = replies.get(worker)
            if isinstance(reply, _Missing):
                lost.update(reply.numbers)
                continue
            if reply is None or isinstance(reply, BaseException):
                if reply is not None and not _lost_worker(reply) and worker in alive:
                    raise reply
                lost.update(numbers)
                continue
            for number, value in reply.items():
                if isinstance(value, _StepError):
                    errors.append((number, value.error))
                else:
                    results[number] = value
        if errors:
            # As in the threads backend: every step has ended; the first chunk's error wins.
            raise min(errors, key=lambda pair: pair[0])[1]
        return lost

    def close(self) -> None:
        """Release the scattered chunks (the client stays open; a closed one has let them go)."""
        if self._closed() is None:
            for future in self.futures:
                if future is not None:
                    future.release()
        self.futures = []


def _lost_worker(error: BaseException) -> bool:
    """Whether an exception says the worker (or the chunk's data) is gone, not a bad input."""
    import concurrent.futures

    distributed = import_distributed()
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    kinds: tuple[type[BaseException], ...] = (
        KilledWorker,
        getattr(distributed.client, "FuturesCancelledError", concurrent.futures.CancelledError),
        CommClosedError,
        concurrent.futures.CancelledError,
        getattr(distributed.client, "FutureCancelledError", concurrent.futures.CancelledError),
        # Client.run's connection to a worker that has just left.
        OSError,
    )
    return isinstance(error, kinds)
