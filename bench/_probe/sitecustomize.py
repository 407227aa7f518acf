"""A timing probe for the processes of one bench launch (the parent and its workers).

Python imports ``sitecustomize`` at start-up from the path; the overhead section puts this
folder on PYTHONPATH and sets BENCH_PROBE_DIR for its ``searcher launch`` only. When
``optuna`` has been imported, its storage, sampler and pruner entry points are wrapped
with timers; at exit the process writes ``probe-<pid>.json`` to BENCH_PROBE_DIR: totals
per thread and category, and every timed call (wall-clock start, seconds).

Time is attributed to the outermost call on each thread: storage reads made by
``should_prune`` count as pruning, those of the sampler as sampling. Nothing else changes.
"""

from __future__ import annotations

import atexit
import functools
import importlib.abc
import importlib.machinery
import json
import os
import sys
import threading
import time
from collections import defaultdict

_DIR = os.environ.get("BENCH_PROBE_DIR")
_totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
_calls: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
_events: list[tuple[float, float, str, str]] = []  # (start, seconds, category, thread)
_local = threading.local()


def _timed(category: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if getattr(_local, "busy", False):
            return fn(*args, **kwargs)
        _local.busy = True
        start, t0 = time.time(), time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds = time.perf_counter() - t0
            thread = "main" if threading.current_thread() is threading.main_thread() else "other threads"
            _totals[thread][category] += seconds
            _calls[thread][category] += 1
            _events.append((start, seconds, category, thread))
            _local.busy = False

    wrapper.__bench_probe__ = True
    return wrapper


def _wrap_class(cls, category: str, names=None) -> None:
    for name, value in list(vars(cls).items()):
        if (names is None and name.startswith("_")) or (names is not None and name not in names):
            continue
        if isinstance(value, (staticmethod, classmethod, property, type)):
            continue
        if callable(value) and not getattr(value, "__bench_probe__", False):
            setattr(cls, name, _timed(category, value))


def _install() -> None:
    import optuna
    from optuna.storages._cached_storage import _CachedStorage

    for cls in (optuna.storages.RDBStorage, _CachedStorage):
        _wrap_class(cls, "storage")
    _wrap_class(optuna.trial.Trial, "pruning", {"should_prune"})
    sampler_methods = {"infer_relative_search_space", "sample_relative", "sample_independent",
                       "before_trial", "after_trial"}
    for cls in (optuna.samplers.TPESampler, optuna.samplers.RandomSampler):
        _wrap_class(cls, "sampler", sampler_methods)


def _write() -> None:
    path = os.path.join(_DIR, f"probe-{os.getpid()}.json")
    with open(path, "w") as f:
        json.dump({"argv": sys.argv, "seconds": _totals, "calls": _calls, "events": _events}, f)


class _AfterOptuna(importlib.abc.MetaPathFinder):
    """Runs ``_install`` right after the ``optuna`` package has been executed."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "optuna":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_install(module):
            exec_module(module)
            _install()

        spec.loader.exec_module = exec_then_install
        return spec


if _DIR:
    sys.meta_path.insert(0, _AfterOptuna())
    atexit.register(_write)
