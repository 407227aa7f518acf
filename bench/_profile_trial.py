"""Child of the profile section: run real searcher trials in one process and time their parts.

Usage: ``python bench/_profile_trial.py SPEC.yaml OUT.json --trials N --db PATH``

Run as a file (not ``-m``) with PYTHONPATH pointing at the searcher tree to profile, so the
same probe times today's code and an older commit's. It does what a worker does (TensorFlow
configured from the environment, data loaded once, the spec's sampler, pruner and SQLite
storage with heartbeats, one ``study.optimize(n_trials=1)`` per trial, searcher's
``Objective``) on N configs drawn once by a seeded random sampler and enqueued, so every tree
trains the very same configs. Each part's time is exclusive (a part nested in another is not
counted twice), so the parts and the remainder add up to the trial's wall time:

- ``fit: training steps``: calls of the model's train function, less the extra time of calls
  that traced it (``tracing: train function``: that call less the median step);
- ``validation: ...``: the same for ``evaluate``'s test function, and ``evaluate``'s own rest;
- ``callback <Class>``: every hook each callback overrides, per class;
- ``cost: ...``: ``measure_cost`` (its ``.keras`` save, latency at batch 1 and 256);
- ``storage: ...``: Optuna storage calls outside the sampler and pruner (user attrs, reported
  values, the rest: trial creation, params, state); the pruner's and sampler's own calls
  count as theirs;
- ``build + compile``, ``clear_session + seeding``, ``tf.data pipelines``;
- traces: how often Keras traced the train, test and predict steps (a Python call of
  ``train_step``/``test_step``/``predict_step`` happens only while tracing).

Works on any searcher tree whose ``objective`` (or ``training``) module calls ``build_model``/``measure_cost``
/``to_tf_dataset`` by those names; parts a tree lacks are simply zero.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import statistics
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path


class Clock:
    """Exclusive time per part for the current trial, with a stack for nesting."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self._stack: list[list] = []  # [name, start, nested seconds]
        self.reset()

    def reset(self) -> None:
        self.parts, self.counts = defaultdict(float), defaultdict(int)
        self.step_times: dict[str, list[float]] = defaultdict(list)  # calls that did not trace
        self.traced_calls: dict[str, list[float]] = defaultdict(list)

    def inside(self, *prefixes: str) -> bool:
        return any(frame[0].startswith(prefixes) for frame in self._stack)

    def timed(self, name: str, fn, *args, **kwargs):
        if threading.current_thread() is not threading.main_thread():  # the heartbeat thread
            return fn(*args, **kwargs)
        frame = [name, time.perf_counter(), 0.0]
        self._stack.append(frame)
        try:
            return fn(*args, **kwargs)
        finally:
            self._stack.pop()
            total = time.perf_counter() - frame[1]
            self.parts[frame[0]] += total - frame[2]
            if self._stack:
                self._stack[-1][2] += total

    def wrap(self, name: str, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return self.timed(name, fn, *args, **kwargs)
        return wrapper


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("spec")
    parser.add_argument("out")
    parser.add_argument("--trials", type=int, required=True)
    parser.add_argument("--db", type=Path, required=True)
    args = parser.parse_args()

    worker = _first_module("searcher.worker", "searcher.workers")
    import keras
    import optuna
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    from searcher import study as studies
    from searcher.space import suggest_values
    from searcher.spec import load_spec

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    clock = Clock()
    _instrument_keras(clock, keras, TensorFlowTrainer)
    trainers = [importlib.import_module(name) for name in ("searcher.objective", "searcher.training")
                if _in_tree(name)]
    for module in trainers:
        _instrument_searcher(clock, keras, module)

    spec = load_spec(args.spec)
    t0 = time.perf_counter()
    # As a worker sets itself up: TensorFlow configured from the environment, the data loaded once.
    run_objective = worker.training_objective(spec, worker.WorkerOptions())
    setup_s = time.perf_counter() - t0
    threads = os.environ.get("TF_NUM_INTRAOP_THREADS")

    storage = studies.open_study_storage(spec, f"sqlite:///{args.db}")
    sampler, pruner = studies.make_sampler(spec, seed=spec.seed), studies.make_pruner(spec)
    _instrument_optuna(clock, storage, sampler, pruner)
    study = optuna.create_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner,
                                direction=spec.training.direction)
    draw = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=spec.seed))
    for _ in range(args.trials):
        trial = draw.ask()
        suggest_values(trial, spec)
        study.enqueue_trial(trial.params)

    rows = []
    for _ in range(args.trials):
        clock.reset()
        t0 = time.perf_counter()
        clock.timed("optuna around the objective", study.optimize,
                    lambda trial: clock.timed("objective: rest (config, memory guard, summary)", run_objective, trial),
                    n_trials=1, catch=(Exception,))
        wall = time.perf_counter() - t0
        frozen = max((t for t in study.get_trials(deepcopy=False) if t.datetime_complete),
                     key=lambda t: t.datetime_complete)
        parts = dict(clock.parts)
        _split_tracing(parts, clock, "train")
        _split_tracing(parts, clock, "test")
        rows.append({"number": frozen.number, "state": frozen.state.name, "wall_s": wall,
                     "epochs": len(frozen.intermediate_values) or int(frozen.user_attrs.get("epochs", 0)),
                     "parts": parts, "traces": {k: clock.counts[f"trace {k}"] for k in ("train", "test", "predict")},
                     "user_attr_writes": clock.counts["user attr writes"],
                     "traced_call_s": {k: [round(t, 4) for t in v] for k, v in clock.traced_calls.items()},
                     "median_step_s": {k: round(statistics.median(v), 5) for k, v in clock.step_times.items() if v}})
    Path(args.out).write_text(json.dumps({"trials": rows, "setup_s": setup_s, "threads": threads,
                                          "tree": str(Path(worker.__file__).parents[1])}, indent=1))


def _first_module(*names: str):
    return importlib.import_module(next(name for name in names if _in_tree(name)))


def _in_tree(name: str) -> bool:
    # Not importlib.util.find_spec: the venv's editable install of another checkout answers for
    # submodules that the tree on PYTHONPATH does not have.
    import searcher
    return (Path(searcher.__path__[0]) / f"{name.rsplit('.', 1)[-1]}.py").exists()


def _split_tracing(parts: dict[str, float], clock: Clock, kind: str) -> None:
    """Move the extra time of the calls that traced (the call less a median step) to its own part."""
    steps = clock.step_times.get(kind, [])
    traced = clock.traced_calls.get(kind, [])
    steady = statistics.median(steps) if steps else 0.0
    extra = sum(max(0.0, t - steady) for t in traced)
    name = "fit: training steps" if kind == "train" else "validation: test steps"
    parts[name] = parts.get(name, 0.0) - extra
    parts[f"tracing: {kind} function"] = extra


def _instrument_keras(clock: Clock, keras, trainer) -> None:
    for kind in ("train", "test", "predict"):
        original_step = getattr(trainer, f"{kind}_step")

        def step(self, *args, _original=original_step, _kind=kind, **kwargs):
            clock.counts[f"trace {_kind}"] += 1  # Python runs the step only while tracing
            return _original(self, *args, **kwargs)

        setattr(trainer, f"{kind}_step", step)

    for kind, part in (("train", "fit: training steps"), ("test", "validation: test steps")):
        original_make = getattr(trainer, f"make_{kind}_function")

        def make(self, force=False, _original=original_make, _kind=kind, _part=part):
            result = _original(self, force)
            fn = getattr(self, f"{_kind}_function")
            if fn is not None and not getattr(fn, "_profiled", False):
                def timed(*args, _fn=fn, **kwargs):
                    before = clock.counts[f"trace {_kind}"]
                    t0 = time.perf_counter()
                    try:
                        return clock.timed(_part, _fn, *args, **kwargs)
                    finally:
                        took = time.perf_counter() - t0
                        (clock.traced_calls if clock.counts[f"trace {_kind}"] > before
                         else clock.step_times)[_kind].append(took)
                timed._profiled = True
                setattr(self, f"{_kind}_function", timed)
            return result

        setattr(trainer, f"make_{kind}_function", make)

    trainer.evaluate = clock.wrap("validation: evaluate, rest", trainer.evaluate)
    original_fit = trainer.fit

    def fit(self, *args, callbacks=None, **kwargs):
        for cb in callbacks or []:
            _wrap_callback(clock, keras, cb)
        return clock.timed("fit: rest (epoch loop, iterators, metric results)", original_fit, self, *args,
                           callbacks=callbacks, **kwargs)

    trainer.fit = fit
    keras.Model.save = clock.wrap("cost: save .keras file", keras.Model.save)


def _wrap_callback(clock: Clock, keras, cb) -> None:
    base = keras.callbacks.Callback
    name = f"callback {type(cb).__name__}"
    for hook in ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_train_batch_begin",
                 "on_train_batch_end", "on_test_begin", "on_test_end"):
        if getattr(type(cb), hook, None) is not getattr(base, hook, None):  # overridden hooks only
            setattr(cb, hook, clock.wrap(name, getattr(cb, hook)))


def _instrument_searcher(clock: Clock, keras, objective) -> None:
    """Time what ``objective`` (the module that trains, by any name) calls by name."""
    for attr, part in (("build_model", "build + compile"), ("to_tf_dataset", "tf.data pipelines")):
        if hasattr(objective, attr):
            setattr(objective, attr, clock.wrap(part, getattr(objective, attr)))
    if hasattr(objective, "measure_cost"):
        import searcher.cost as cost

        objective.measure_cost = clock.wrap("cost: rest", objective.measure_cost)
        original_latency = cost._latency_ms

        def latency(model, batch):
            return clock.timed(f"cost: latency at batch {int(batch.shape[0])}", original_latency, model, batch)

        cost._latency_ms = latency
    if not getattr(keras.backend.clear_session, "_profiled", False):
        keras.backend.clear_session = clock.wrap("clear_session + seeding", keras.backend.clear_session)
        keras.utils.set_random_seed = clock.wrap("clear_session + seeding", keras.utils.set_random_seed)
        keras.backend.clear_session._profiled = True


def _instrument_optuna(clock: Clock, storage, sampler, pruner) -> None:
    for method in ("sample_relative", "sample_independent", "infer_relative_search_space", "before_trial",
                   "after_trial"):
        setattr(sampler, method, clock.wrap("sampler", getattr(sampler, method)))
    pruner.prune = clock.wrap("pruning check (should_prune, with its reads)", pruner.prune)
    for method in [m for m in dir(type(storage)) if m.startswith(("get_", "set_", "create_", "check_", "record_"))
                   and callable(getattr(storage, m))]:
        original = getattr(storage, method)
        part = {"set_trial_user_attr": "storage: user attr writes",
                "set_trial_intermediate_value": "storage: reported values"}.get(method, "storage: other")

        def call(*args, _original=original, _part=part, _method=method, **kwargs):
            if clock.inside("sampler", "pruning"):
                return _original(*args, **kwargs)
            if _method == "set_trial_user_attr":
                clock.counts["user attr writes"] += 1
            return clock.timed(_part, _original, *args, **kwargs)

        setattr(storage, method, call)


if __name__ == "__main__":
    sys.path = [p for p in sys.path if Path(p).resolve() != Path(__file__).resolve().parent]
    main()
