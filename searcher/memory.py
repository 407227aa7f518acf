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
import signal
import threading
import time

import psutil

# The backstop's signal: not SIGINT (interrupt_main's default), which the worker's handler
# takes for a stop asked by the user, and not TERM or USR1, which clusters send.
BACKSTOP_SIGNAL = signal.SIGUSR2


class MemoryLimitExceeded(BaseException):
    """Raised in the main thread by the backstop. A BaseException, like KeyboardInterrupt, so
    that it passes the ``except Exception`` handlers of TensorFlow and Keras."""


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
        try:
            signal.signal(BACKSTOP_SIGNAL, self._raise)
            backstop = True
        except ValueError:  # not the main thread: the check between batches only
            backstop = False
        self._thread = threading.Thread(target=self._watch, args=(backstop,), name="memory-guard", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())

    def _raise(self, signum: int, frame: object) -> None:
        # A backstop interrupt that lands after the trial (the guard exited) is dropped; the
        # handler stays installed, since the default action of SIGUSR2 ends the process.
        if not self._stop.is_set():
            raise MemoryLimitExceeded

    def progressed(self, now: float) -> None:
        """A batch starts: the training thread is alive and checks the limit itself."""
        self._last_batch = now

    def over_limit(self) -> bool:
        """Read resident memory now; True (and ``tripped``) once it is past the limit."""
        self.peak_mb = max(self.peak_mb, rss_mb())
        if self.limit_mb and self.peak_mb > self.limit_mb:
            self.tripped = True
        return self.tripped

    def _watch(self, backstop: bool) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mb = max(self.peak_mb, rss_mb())
            stuck = time.monotonic() - self._last_batch > self.backstop_s
            if backstop and self.limit_mb and self.peak_mb > self.limit_mb and stuck and not self.tripped:
                self.tripped = True
                _thread.interrupt_main(BACKSTOP_SIGNAL)  # lands when the main thread next runs Python
                return
