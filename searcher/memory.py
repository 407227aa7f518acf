"""Memory of a worker process: a guard that fails a trial before the machine runs out.

Without it, a trial that allocates too much gets the whole worker killed by the kernel;
its trial then looks "lost" and is retried, to be killed again. The guard watches the
worker's resident memory from a thread and interrupts the trial instead, so it ends as
FAILED with reason "out of memory" and the exact configuration is not retried.
"""

from __future__ import annotations

import _thread
import threading

import psutil


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


class MemoryGuard:
    """Interrupts the main thread when resident memory passes ``limit_mb``.

    Use as a context manager around one trial; ``tripped`` tells whether it fired and
    ``peak_mb`` is the highest resident memory it saw.
    """

    def __init__(self, limit_mb: float | None, *, interval_s: float = 0.2) -> None:
        self.limit_mb, self.interval_s = limit_mb, interval_s
        self.peak_mb = rss_mb()
        self.tripped = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MemoryGuard:
        self._thread = threading.Thread(target=self._watch, name="memory-guard", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mb = max(self.peak_mb, rss_mb())
            if self.limit_mb and self.peak_mb > self.limit_mb and not self.tripped:
                self.tripped = True
                # TensorFlow returns to Python between batches; the interrupt lands there.
                _thread.interrupt_main()
                return
