"""The default backend: market chunks kept in this process and run in threads."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from blpmodels.kernel.chunks import ChunkResult, ChunkStep, MarketChunk, Workspace

__all__ = ["ThreadsBackend"]


class ThreadsBackend:
    """Market chunks evaluated in this process, in parallel threads when ``threads > 1``.

    numpy releases the GIL in the large array operations, so chunks run in parallel threads;
    each thread reuses one :class:`~blpmodels.kernel.chunks.Workspace`, so the large work
    arrays take the chunk size times the number of threads, whatever the number of markets.

    Chunks that formed their Jacobians market by market with scipy's BLAS and LAPACK, which
    hold the GIL (:attr:`~blpmodels.kernel.chunks.ChunkResult.by_market`), waited for each
    other in parallel threads: after a gradient step in which every chunk did, the next steps
    run one chunk after another, until a gradient step in which one did not. The chunks and
    their numbers are the same either way; only the order in time changes. Per late
    evaluation (two cores, 2026-12-07), two chunks in parallel threads took 1.15-1.19× one
    thread's time on BLP's automobiles (with and without their supply side) and on simulated
    T = 50, J = 150, I = 200 markets; the same two chunks in sequence took 0.99-1.05×.

    Parameters
    ----------
    threads : int
        Threads (1: the chunks run one after another in the calling thread).

    Examples
    --------
    >>> backend = ThreadsBackend(threads=2)
    >>> backend.name, backend.threads
    ('threads', 2)
    """

    name = "threads"

    def __init__(self, threads: int = 1) -> None:
        self.threads = int(threads)
        self.chunks: list[MarketChunk] = []
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._workspaces: list[Workspace] = []  # every thread's, in the order they were made
        #: Run the chunks one after another (the last gradient step's chunks were all
        #: ``by_market``).
        self.in_sequence = False

    def start(self, make_chunk: Callable[[int], MarketChunk], n_chunks: int) -> None:
        """Build the chunks (views of the objective's arrays) once."""
        self.chunks = [make_chunk(number) for number in range(n_chunks)]

    def _workspace(self) -> Workspace:
        workspace = getattr(self._local, "workspace", None)
        if workspace is None:
            workspace = self._local.workspace = Workspace()
            self._workspaces.append(workspace)
        return workspace

    def run(
        self, steps: Sequence[ChunkStep], state: Callable[[int], Any] | None = None
    ) -> list[ChunkResult]:
        """Each chunk's result for its step, in chunk order.

        ``state`` is for backends that can lose chunks; chunks here are never lost.
        """

        def one(number: int) -> ChunkResult:
            return self.chunks[number].step(steps[number], self._workspace())

        numbers = range(len(self.chunks))
        if self.threads > 1 and len(self.chunks) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.threads)
            if self.in_sequence:
                # In this thread, with the work arrays of one of the pool's threads (idle
                # meanwhile): no workspace beyond the threads' own, which memory_limit counts.
                workspace = self._workspaces[0] if self._workspaces else self._workspace()
                results = [self.chunks[number].step(steps[number], workspace) for number in numbers]
            else:
                futures = [self._pool.submit(one, number) for number in numbers]
                # Every step ends before an error is raised: a step left running would change
                # its chunk's state under the next evaluation.
                wait(futures)
                results = [future.result() for future in futures]
        else:
            results = [one(number) for number in numbers]
        if steps and steps[0].gradient:
            done = [result for result in results if result is not None]
            self.in_sequence = bool(done) and all(result.by_market for result in done)
        return results

    def close(self) -> None:
        """Stop the threads (a later :meth:`run` starts them again)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def __getstate__(self) -> dict[str, Any]:
        # Thread pools and thread-local workspaces do not pickle; they are rebuilt lazily.
        state = self.__dict__.copy()
        state["_pool"] = None
        state["_local"] = None
        state["_workspaces"] = []
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()
