"""A program executor's end never waits on the lock a thread start holds (`sglang_rksc.lang.executors`).

The hang it prevents: the garbage collector ends an executor while its own thread, starting another
thread, holds `threading._shutdown_locks_lock`. Here the lock is taken by hand and the executor ended
under it, with SGLang's `end` and with ours, each in a fresh process that a timeout can stop.
"""

from __future__ import annotations

import subprocess
import sys

END_UNDER_THE_LOCK = """
import sys, threading, time
from sglang.lang.backend.base_backend import BaseBackend
from sglang.lang.interpreter import StreamExecutor
if sys.argv[1] == "ours":
    from sglang_rksc.lang import executors
    executors.install()
executor = StreamExecutor(BaseBackend(), {}, None, chat_template=object(), stream=False)
executor.end()  # as a program's end does: the worker stops ...
executor.queue.join()
while executor.worker._tstate_lock.locked():  # ... and exits, not yet reaped (no join, no is_alive)
    time.sleep(0.01)
with threading._shutdown_locks_lock:  # as a thread start holds it when the collector runs
    print("under the lock", flush=True)
    executor.end()  # as __del__ does
executor.queue.join()  # and a sync after it does not wait on a second stop marker
print("ended")
"""


def _end(which: str, timeout: float) -> tuple[str, str]:
    """What the script printed, and how it stopped: "exit N" or "hung"."""
    args = [sys.executable, "-c", END_UNDER_THE_LOCK, which]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        return done.stdout, f"exit {done.returncode}" + done.stderr[-2000:]
    except subprocess.TimeoutExpired as stopped:
        out = stopped.stdout or b""
        return out.decode() if isinstance(out, bytes) else out, "hung"


def test_our_end_returns_where_sglangs_own_hangs():
    printed, how = _end("ours", timeout=120)
    assert printed.split("\n")[:2] == ["under the lock", "ended"] and how == "exit 0", how
    # The pinned SGLang's end hangs there, once it holds the lock: the reason for the seam.
    printed, how = _end("sglang", timeout=15)
    assert printed.strip() == "under the lock" and how == "hung"


INSTALLED_BY_MAKE_BACKEND = """
from sglang.lang.backend.base_backend import BaseBackend
from sglang.lang.interpreter import StreamExecutor
from sglang_rksc.lang import executors
from sglang_rksc.programs import common
try:
    common.make_backend("http://127.0.0.1:9")  # nothing listens there: it fails after installing
except Exception:
    pass
executor = StreamExecutor(BaseBackend(), {}, None, chat_template=object(), stream=False)
executor.end()
executor.end()
executor.queue.join()  # would wait forever on a second marker the exited worker never reads
print(getattr(executor, executors.STOP_SENT, False), executor.queue.qsize())
"""


def test_a_programs_backend_installs_our_end():
    done = subprocess.run(
        [sys.executable, "-c", INSTALLED_BY_MAKE_BACKEND], capture_output=True, text=True, timeout=120
    )
    # Ours ran (its marker is set) and told the worker to stop once: nothing is left on its queue.
    assert done.returncode == 0 and done.stdout.split() == ["True", "0"], done.stderr[-2000:]


def test_workers_left_waiting_by_a_failed_program_are_stopped_at_exit():
    """A failed program leaves its forks' executors un-ended; their workers would keep the process alive."""
    import queue
    import threading

    from sglang_rksc.lang import executors

    class Executor:  # weak-referenceable, as SGLang's StreamExecutor is
        use_thread = True

    waiting = Executor()
    waiting.queue = queue.Queue()

    def worker() -> None:
        while waiting.queue.get() is not None:
            pass

    thread = threading.Thread(target=worker)
    thread.start()
    executors.track(waiting)
    executors.stop_live_workers()
    thread.join(timeout=10)
    assert not thread.is_alive() and getattr(waiting, executors.STOP_SENT)
