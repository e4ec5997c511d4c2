"""Worker processes for the CPU-bound part of an import — validating items with their marshmallow
schema — so it runs on other cores while this process writes the chunks validated before."""
from __future__ import annotations

import atexit
import multiprocessing
import os
import threading
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable, Iterator

# Processes that validate; the database and this process share the machine's cores with them.
WORKERS = max(1, min(4, os.cpu_count() or 1))

_pool: ProcessPoolExecutor | None = None
_lock = threading.Lock()


def _executor(preload: tuple[str, ...]) -> ProcessPoolExecutor:
    """One pool per process, started on first use. `forkserver`, not `fork`: the service's threads
    (scheduler, watchdog, relay) may hold locks at the moment of a fork; a forkserver starts
    clean and forks the workers from there, with `preload` (the schema's modules) imported once."""
    global _pool
    with _lock:
        if _pool is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(list(preload))
            _pool = ProcessPoolExecutor(WORKERS, mp_context=context)
            atexit.register(shutdown)
        return _pool


def shutdown() -> None:
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


def start(preload: tuple[str, ...]) -> None:
    """Start the pool's processes in the background (the first start waits for the forkserver to
    import `preload`): they get ready while the caller reads its file."""

    def spawn() -> None:
        pool = _executor(preload)
        for _ in range(WORKERS):
            pool.submit(os.getpid)

    threading.Thread(target=spawn, name="validation-pool-start", daemon=True).start()


def submit(function: Callable[..., Any], *args: Any, preload: tuple[str, ...]) -> Future:
    """`function(*args)` in a worker process; a module-level function (it is pickled by name)."""
    return _executor(preload).submit(function, *args)


def map_chunks(function: Callable[[list[Any]], Any], chunks: Iterable[list[Any]], *,
               preload: tuple[str, ...]) -> Iterator[Any]:
    """`function(chunk)` for every chunk, in worker processes, results in order. Only a few chunks
    are in flight at a time, so neither the chunks nor their results pile up in memory.
    `function` must be a module-level function (it is pickled by name)."""
    pool = _executor(preload)
    in_flight: deque[Future] = deque()
    try:
        for chunk in chunks:
            in_flight.append(pool.submit(function, chunk))
            if len(in_flight) > WORKERS:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()
    except BrokenProcessPool:
        shutdown()  # a worker died (killed, out of memory): the next file gets a fresh pool
        raise
    finally:
        for future in in_flight:
            future.cancel()
