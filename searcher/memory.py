"""Memory of a worker process: a limit that fails a trial before the machine runs out.

Without it, a trial that allocates too much gets the whole worker killed by the kernel;
its trial then looks "lost" and is retried, to be killed again. The trial is failed with
reason "out of memory" instead, and the exact configuration is not retried.

Two paths, measured on a busy 2-core machine: the primary one is a check between batches,
in the training thread (``objective._MemoryLimit`` calls ``over_limit``), which raises there
and cannot miss. An interrupt sent to the main thread from a watcher thread, the only path
before, was lost under load: KeyboardInterrupt lands only when the main thread runs Python
bytecode, and inside TensorFlow it may never (a trial ran to COMPLETE at 11 GB with a 1.5 GB
limit). It stays as the backstop for a batch that never returns: it fires only when no batch
has started for ``backstop_s``.
"""

from __future__ import annotations

import _thread
import threading
import time

import psutil


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


class MemoryGuard:
    """Watches resident memory during one trial against ``limit_mb`` (None: no limit).

    Use as a context manager around one trial; ``tripped`` tells whether the limit was
    passed and ``peak_mb`` is the highest resident memory seen.
    """

    def __init__(self, limit_mb: float | None, *, interval_s: float = 0.2, backstop_s: float = 10.0) -> None:
        self.limit_mb, self.interval_s, self.backstop_s = limit_mb, interval_s, backstop_s
        self.peak_mb = rss_mb()
        self.tripped = False
        self._last_batch = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MemoryGuard:
        self._last_batch = time.monotonic()
        self._thread = threading.Thread(target=self._watch, name="memory-guard", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())

    def progressed(self, now: float) -> None:
        """A batch starts: the training thread is alive and checks the limit itself."""
        self._last_batch = now

    def over_limit(self) -> bool:
        """Read resident memory now; True (and ``tripped``) once it is past the limit."""
        self.peak_mb = max(self.peak_mb, rss_mb())
        if self.limit_mb and self.peak_mb > self.limit_mb:
            self.tripped = True
        return self.tripped

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mb = max(self.peak_mb, rss_mb())
            stuck = time.monotonic() - self._last_batch > self.backstop_s
            if self.limit_mb and self.peak_mb > self.limit_mb and stuck and not self.tripped:
                self.tripped = True
                _thread.interrupt_main()  # the backstop: lands when the batch returns to Python
                return
