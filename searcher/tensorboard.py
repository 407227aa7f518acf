"""TensorBoard logs of a study: each trial's curves and the HParams plugin's table.

Layout under ``runtime.tensorboard: DIR``::

    DIR/<study>/                  the HParams experiment: the study's parameters and metrics
    DIR/<study>/trial-<n>/        hparams of trial n and its final metric (a scalar at the end)
    DIR/<study>/trial-<n>/train, validation            Keras's curves, one point per epoch
    DIR/<study>/trial-<n>/fold-<k>/train, validation   the same per fold, with data.cv_folds

The HParams plugin takes one experiment per log folder, so ``tensorboard --logdir DIR/<study>``
shows one study's table; ``--logdir DIR`` shows every study's curves. Only light imports at the
top: the launching process resolves paths here without starting TensorFlow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from collections.abc import Iterator
from typing import Any

from searcher import stored
from searcher.errors import UserError
from searcher.spec import KNOBS, Choice, Range, StudySpec, max_depth

log = logging.getLogger(__name__)

CONFIG_FILE = "events.out.tfevents.0.hparams-config.v2"  # "tfevents" in the name: TensorBoard reads it


def resolve_log_dir(path: str, *, field: str) -> str:
    """``path`` made absolute (a relative one is from the working directory, as data paths are);
    a ``UserError`` naming ``field`` when it exists and is not a folder."""
    resolved = Path(path).expanduser().absolute()
    if resolved.exists() and not resolved.is_dir():
        raise UserError(f"{field}: {path} is a file; TensorBoard logs need a folder")
    return str(resolved)


def study_log_dir(root: str | Path, study_name: str) -> Path:
    """Where a study's logs go: ``root/<study>``."""
    return Path(root) / study_name


def hint(folder: str) -> str:
    """The line ``status`` and the report show for a study with logs."""
    return f"TensorBoard logs: {folder} — tensorboard --logdir {folder}"


def param_domains(spec: StudySpec) -> dict[str, Any]:
    """The Optuna parameters a trial of ``spec`` can have, each with its HParams domain (or None).

    The names follow ``space.suggest_values``: ``lr`` for ``learning_rate``, one ``units_<i>``
    per possible layer, ``use_<param>`` for a range with ``off``.
    """
    from tensorboard.plugins.hparams import api as hp

    from searcher.space import PARAM_NAMES

    domains: dict[str, Any] = {}
    for name in spec.search.searched():
        if spec.model.kind not in KNOBS[name].model_kinds:
            continue
        knob, param = getattr(spec.search, name), PARAM_NAMES.get(name, name)
        if isinstance(knob, Choice):
            kinds = {type(c) for c in knob.choices}
            domain = hp.Discrete(list(knob.choices)) if len(kinds) == 1 and kinds <= {bool, int, float, str} else None
        else:
            assert isinstance(knob, Range)
            if knob.off:
                domains[f"use_{param}"] = hp.Discrete([False, True])
            domain = (hp.IntInterval(int(knob.low), int(knob.high)) if KNOBS[name].kind is int
                      else hp.RealInterval(float(knob.low), float(knob.high)))
        if name in ("units", "filters"):
            domains.update({f"{param}_{i}": domain for i in range(max_depth(spec.search))})
        else:
            domains[param] = domain
    return domains


class StudyBoard:
    """Writes a study's TensorBoard logs from one worker; ``trial`` opens one trial's logs.

    Args:
        spec: the study spec; ``runtime.tensorboard`` is the root folder (absolute).
    """

    def __init__(self, spec: StudySpec) -> None:
        assert spec.runtime.tensorboard is not None
        self.spec, self.root = spec, Path(spec.runtime.tensorboard)
        self._ready: set[str] = set()

    def trial(self, trial: Any) -> TrialBoard:
        """Logs for ``trial`` (an ``optuna.Trial`` whose parameters are sampled): its hparams are
        written now, so a trial that fails still shows in the table; the study's experiment and
        its ``tensorboard`` user attr the first time this process sees the study."""
        name = trial.study.study_name
        folder = study_log_dir(self.root, name)
        if name not in self._ready:
            write_experiment(folder, self.spec)
            trial.study.set_user_attr(stored.TENSORBOARD, str(folder))
            self._ready.add(name)
        board = TrialBoard(folder / f"trial-{trial.number}", metric=self.spec.training.metric,
                           folds=bool(self.spec.data.cv_folds))
        board.write_hparams(dict(trial.params), trial_id=f"trial-{trial.number}")
        return board


class TrialBoard:
    """One trial's logs: Keras's TensorBoard callback per fold, then the final metric.

    Args:
        folder: ``DIR/<study>/trial-<n>``; None: logs are off, and nothing is written.
        folds: whether the trial trains on folds (``data.cv_folds``), each logged to ``fold-<k>``.
    """

    def __init__(self, folder: Path | None, *, metric: str = "", folds: bool = False) -> None:
        self.folder, self.metric, self.folds = folder, metric, folds

    def callbacks(self, fold: int) -> list[Any]:
        """The Keras callback for fold ``fold`` (1 for a trial without folds): epoch curves only;
        no histograms, graph, images or profiling, which cost far more than the scalars."""
        if self.folder is None:
            return []
        import keras

        folder = self.folder / f"fold-{fold}" if self.folds else self.folder
        return [keras.callbacks.TensorBoard(str(folder), histogram_freq=0, write_graph=False, write_images=False,
                                            write_steps_per_second=False, update_freq="epoch", profile_batch=0)]

    def write_hparams(self, params: dict[str, Any], *, trial_id: str) -> None:
        from tensorboard.plugins.hparams import api as hp

        # The plugin takes bools, numbers and strings; anything else a choice may hold (None) shows as text.
        values = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in params.items()}
        with _writer(self.folder):
            hp.hparams(values, trial_id=trial_id)

    def finish(self, value: float, *, step: int) -> None:
        """The trial's value under the study's metric name, the figure the HParams table shows."""
        if self.folder is None:
            return
        import tensorflow as tf

        with _writer(self.folder):
            tf.summary.scalar(self.metric, float(value), step=step)


NO_BOARD = TrialBoard(None)  # a trial of a study without TensorBoard logs


def write_experiment(folder: Path, spec: StudySpec) -> None:
    """The HParams experiment of the study (its parameters and metrics), once: workers on any
    host may start together, so each writes its own file and moves it into place only if
    none is there yet (a hard link fails when the name exists)."""
    target = folder / CONFIG_FILE
    if target.exists():
        return
    from tensorboard.plugins.hparams import api as hp

    folder.mkdir(parents=True, exist_ok=True)
    hparams = [hp.HParam(name, domain) for name, domain in param_domains(spec).items()]
    metric = spec.training.metric
    metrics = [hp.Metric(metric, display_name=f"{metric} (trial value)")]
    if not spec.data.cv_folds:  # with folds the curves sit one level down, in fold-<k>
        metrics += [hp.Metric("epoch_loss", group="validation", display_name="val loss (last epoch)"),
                    hp.Metric("epoch_loss", group="train", display_name="train loss (last epoch)")]
    with tempfile.TemporaryDirectory(dir=folder, prefix=".experiment-") as scratch:
        with _writer(Path(scratch)):
            hp.hparams_config(hparams=hparams, metrics=metrics)
        written = [p for p in Path(scratch).iterdir() if "tfevents" in p.name]
        try:
            os.link(written[0], target)
        except FileExistsError:
            log.debug("%s: another worker wrote the HParams experiment first", target)
        except OSError:  # a file system without hard links: a rename is atomic too, and every copy is the same
            os.replace(written[0], target)


@contextlib.contextmanager
def _writer(folder: Path) -> Iterator[None]:
    """A summary writer for ``folder`` as the default one, closed (so flushed) on exit."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(folder))
    try:
        with writer.as_default():
            yield
    finally:
        writer.close()
