"""Worker processes for the CPU-bound part of an import — validating items with their marshmallow
schema — so it runs on other cores while this process writes the chunks validated before."""
from __future__ import annotations

import gc
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from shared.imports.runner import GC_THRESHOLD

# Processes that validate; the database and this process share the machine's cores with them.
WORKERS = max(1, min(4, os.cpu_count() or 1))

_pool: ProcessPoolExecutor | None = None
_lock = threading.Lock()
_start_thread: threading.Thread | None = None


def _executor(preload: tuple[str, ...]) -> ProcessPoolExecutor:
    """One pool per process, started on first use. `forkserver`, not `fork`: the service's threads
    (scheduler, watchdog, relay) may hold locks at the moment of a fork; a forkserver starts
    clean and forks the workers from there, with `preload` (the schema's modules) imported once."""
    global _pool
    with _lock:
        if _pool is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(list(preload))
            _pool = ProcessPoolExecutor(WORKERS, mp_context=context, initializer=_worker_started)
        return _pool


def _worker_started() -> None:
    """In each worker, once: what it imported (the schemas, the app's modules) is kept out of every
    collection, and collections are rarer (`GC_THRESHOLD`): validation allocates much and keeps
    little, and the two took a worker from 245 to 222 µs a therapist."""
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


def shutdown() -> None:
    """Stop the workers, once those being started are up: a worker that starts while the pool
    shuts down gets no stop signal, and the shutdown would wait for it forever."""
    global _pool
    starting = _start_thread
    if starting is not None and starting is not threading.current_thread():
        starting.join()
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


def start(preload: tuple[str, ...]) -> None:
    """Start the pool's processes in the background (the first start waits for the forkserver to
    import `preload`): they get ready while the caller reads its file. Once is enough."""
    global _start_thread
    if _pool is not None or (_start_thread is not None and _start_thread.is_alive()):
        return  # started, or being started

    def spawn() -> None:
        pool = _executor(preload)
        for _ in range(WORKERS):
            pool.submit(os.getpid)

    _start_thread = threading.Thread(target=spawn, name="validation-pool-start", daemon=True)
    _start_thread.start()


def submit(function: Callable[..., Any], *args: Any, preload: tuple[str, ...]) -> Future[Any]:
    """`function(*args)` in a worker process; a module-level function (it is pickled by name)."""
    return _executor(preload).submit(function, *args)


def map_chunks(function: Callable[[list[Any]], Any], chunks: Iterable[list[Any]], *,
               preload: tuple[str, ...]) -> Iterator[Any]:
    """`function(chunk)` for every chunk, in worker processes, results in order. Only a few chunks
    are in flight at a time, so neither the chunks nor their results pile up in memory.
    `function` must be a module-level function (it is pickled by name)."""
    pool = _executor(preload)
    in_flight: deque[Future[Any]] = deque()
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


# At interpreter exit, before concurrent.futures' own exit hook (threading's exit hooks run in the
# reverse order of registration, and that one was registered when this module imported it): that
# hook stops the pool while a worker may still be starting, and the exit then waited for it
# forever (seen: a process that imported an unchanged file in 0.6 s and exited). A plain `atexit`
# handler runs too late. concurrent.futures registers its own hook the same way.
threading._register_atexit(shutdown)  # type: ignore[attr-defined]
