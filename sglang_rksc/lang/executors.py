"""Ending a program's executor without the lock that can hang the process.

SGLang's frontend runs each program state on a `StreamExecutor` with a worker thread. `end()` tells the
worker to stop; it is called once when the program returns and again from `__del__`, which for executors
(their worker refers back to them) runs inside Python's cyclic garbage collector, at whatever point that
collector starts. In the pinned SGLang, `end()` first asks `worker.is_alive()`: on a worker that has
exited, that reaps the thread and takes `threading._shutdown_locks_lock`. Starting a thread takes the
same lock and allocates while holding it, so a collection that begins there, in a process starting
threads (every `run`, `fork` and `run_batch` does), waits on a lock its own thread holds and the process
hangs for good (seen in our test suite: `Thread.start` never returned).

Our `end()` tells the worker to stop once and takes no thread lock: a stop marker on its queue, which a
worker that has already exited never reads. A second marker, which the stock `end()` could also queue
while the worker was still busy, would leave `queue.join()` (a later `sync`) waiting forever; it is not
sent. Installed in the processes that run programs (`install`), through SGLang's hook registry.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

_installed = False
STOP_SENT = "_rksc_stop_sent"  # set on an executor once its worker was told to stop
_live: weakref.WeakSet[Any] = weakref.WeakSet()  # executors whose worker thread runs (`track`)


def track(executor: Any) -> None:
    """Note an executor whose worker has started (`lang.router` calls it from the worker's first frame)."""
    _live.add(executor)


def stop_live_workers() -> None:
    """Tell every worker still waiting to stop. A program that failed leaves its forks' executors un-ended,
    and their non-daemon workers would keep the process from exiting; this runs at interpreter exit, before
    Python joins its threads (`threading._register_atexit`)."""
    for executor in list(_live):
        if executor.use_thread and not getattr(executor, STOP_SENT, False):
            setattr(executor, STOP_SENT, True)
            executor.queue.put(None)


def end_without_joining(original: Any, executor: Any, *args: Any, _sent: str = STOP_SENT, **kwargs: Any) -> None:
    """AROUND hook on `StreamExecutor.end` (replaces it; see the module's docstring). The marker's name is
    bound as a default: at interpreter exit `__del__` can run after this module's globals are cleared."""
    if executor.use_thread and not getattr(executor, _sent, False):
        setattr(executor, _sent, True)
        executor.queue.put(None)
    executor.backend.end_program(executor)


def install() -> None:
    """Attach `end_without_joining` in this process (a frontend seam in `srt.seams`; idempotent)."""
    global _installed
    if _installed:
        return
    from sglang_rksc.srt import seams

    seams.install_frontend("executors")
    threading._register_atexit(stop_live_workers)  # runs before the interpreter joins non-daemon threads
    _installed = True
