"""Dask backend: market chunks resident on the workers of a ``dask.distributed`` cluster.

Each chunk (its product and agent arrays and its warm-start state) is scattered once to one
worker and stays there; an evaluation ships θ and a few flags per chunk and gets back the
chunk's δ, ∂δ/∂θ (and markups), which the driver combines. A chunk lost with its worker is
scattered again from the driver's data, with the driver's last accepted δ as its warm start,
and its step is recomputed, so the fit goes on; a worker lost while the chunks are first
scattered is replaced the same way. A closed client (before or during the fit) or a cluster
without workers is a :class:`~blpmodels.exceptions.BLPInputError`, never a wait without end
nor one of distributed's internal errors.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
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


def _step_resident(chunk: MarketChunk, step: ChunkStep) -> ChunkResult:
    """Run on a worker: one step of the chunk held in the worker's memory (state kept there)."""
    workspace = getattr(_worker_local, "workspace", None)
    if workspace is None:
        workspace = _worker_local.workspace = Workspace()
    return chunk.step(step, workspace)


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
        self._token = uuid.uuid4().hex[:12]
        self._finished = threading.Event()
        self._count = 0

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
        with self._calling():
            return sorted(self.client.scheduler_info(n_workers=-1)["workers"])

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

    def _submit(self, number: int, step: ChunkStep) -> Any:
        self._count += 1
        with self._calling():
            future = self.client.submit(
                _step_resident,
                self.futures[number],
                step,
                key=f"blpmodels-step-{self._token}-{self._count}-{number}",
                workers=[self.owners[number]],
                allow_other_workers=False,
                pure=False,
            )
        future.add_done_callback(lambda _: self._finished.set())
        return future

    def run(
        self, steps: Sequence[ChunkStep], state: Callable[[int], ChunkState] | None = None
    ) -> list[ChunkResult]:
        """Each chunk's result for its step, in chunk order; lost chunks are rescattered.

        ``state(number)`` gives the accepted warm start of a chunk that has to be scattered
        again (its state on the lost worker is gone).
        """
        steps = list(steps)
        results: list[ChunkResult | None] = [None] * len(steps)
        running = {number: self._submit(number, step) for number, step in enumerate(steps)}
        recoveries = 0
        while running:
            # Woken by any step that ends (or every second, to notice lost workers).
            self._finished.wait(timeout=1.0)
            self._finished.clear()
            lost = self._collect(running, results)
            # Workers lost mid-fit may be replaced (a nanny restarts them, a cluster scales
            # up): wait ``timeout`` seconds for one before giving up.
            alive = set(self._live_workers(self.timeout))
            lost |= {number for number in running if self.owners[number] not in alive}
            if not lost:
                continue
            recoveries += 1
            self.recoveries += 1
            if recoveries > self.max_recoveries:
                self._cancel(running)
                raise BLPInputError(
                    f"Dask workers were lost {recoveries} times in one evaluation (chunks "
                    f"{sorted(lost)}): the cluster is not stable enough to fit on"
                )
            workers = sorted(alive)
            for offset, number in enumerate(sorted(lost)):
                old = running.pop(number, None)
                if old is not None:
                    old.cancel()
                workers = self._place(number, workers, offset)
                step = steps[number]
                if state is not None:
                    step = ChunkStep(
                        step.theta,
                        step.gradient,
                        step.number,
                        step.accepted,
                        step.epoch,
                        state(number),
                    )
                running[number] = self._submit(number, step)
        return results  # type: ignore[return-value]

    def _collect(self, running: dict[int, Any], results: list[ChunkResult | None]) -> set[int]:
        """Move finished steps into ``results``; the chunks whose step was lost.

        Results are gathered in one call once every step has finished (one round trip to
        the workers, not one per chunk), or when some chunk was lost.
        """
        lost = set()
        finished = []
        for number, future in running.items():
            if future.status == "finished":
                finished.append(number)
            elif future.status in ("cancelled", "lost"):
                lost.add(number)
            elif future.status == "error":
                with self._calling():
                    error = future.exception()
                if not _lost_worker(error):
                    self._cancel(running)
                    raise error
                lost.add(number)
        if finished and (lost or len(finished) == len(running)):
            try:
                with self._calling():
                    values = self.client.gather([running[number] for number in finished])
            except BLPInputError:
                raise
            except Exception as error:
                if not _lost_worker(error):
                    raise
                return lost | set(finished)
            for number, value in zip(finished, values, strict=True):
                results[number] = value
                del running[number]
        return lost

    @staticmethod
    def _cancel(running: dict[int, Any]) -> None:
        for future in running.values():
            future.cancel()

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
    )
    return isinstance(error, kinds)
