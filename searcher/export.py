"""Take a configuration away: export a trial's config, retrain it, score the test set once.

An exported file holds the trial's ``TrialConfig`` (the object the trial trained) and
where it came from. ``retrain`` reads exactly that, trains on the training split with
early stopping on the validation split, as in the search, and only then evaluates on
the test split: the one place searcher touches test data.

With ``export --ensemble K`` the file also holds the next K-1 trials' configs, and a
cross-validated study (``data.cv_folds``) trains every config on every fold, as the search
scored it, and then each fold again for the epoch count its score belongs to: ``retrain``
saves one model that averages all of them.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any, Literal

import optuna
import yaml

from searcher import ranking, stored
from searcher.devices import TrainingRuntime
from searcher.errors import SpecError, UserError
from searcher.formatting import format_cost
from searcher.space import TrialConfig
from searcher.spec import METRICS, validate_model

FORMAT_VERSION = 1


def ranked_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Feasible complete trials, best metric first (``ranking.ranked``)."""
    return ranking.ranked(study)


def pick_trial(study: optuna.Study, *, rank: int | None = None,
               pick: ranking.PickByCost = ranking.PickByCost(),
               number: int | None = None) -> tuple[optuna.trial.FrozenTrial, str]:
    """The trial to export and why: trial ``number``, or picked by cost (``pick``), or the K-th
    best by value, else the confirmed winner, else the best. Only feasible trials are
    candidates, except a trial asked for by number (any complete one)."""
    if number is not None:
        if rank is not None or pick.any:
            raise UserError("--trial cannot be combined with --rank, --smallest-within, --max-params or "
                            "--max-latency-ms")
        return trial_by_number(study, number), f"trial {number} by number"
    ranked = ranked_trials(study)
    if not ranked:
        raise UserError(ranking.no_feasible_message(study))
    feasible = " feasible" if ranking.infeasible(ranking.own_trials(study)) else ""
    if pick.any:
        if rank is not None:
            raise UserError("--rank cannot be combined with --smallest-within, --max-params or --max-latency-ms")
        return ranking.pick_by_cost(study, pick)
    if rank is not None:
        if not 1 <= rank <= len(ranked):
            raise UserError(f"--rank: must be between 1 and {len(ranked)} ({feasible.strip() or 'complete'} "
                            f"trials), got {rank}")
        return ranked[rank - 1], f"rank {rank} by validation value"
    confirmed = study.user_attrs.get(stored.CONFIRMED)
    winner = next((t for t in ranked if confirmed and t.number == confirmed[0]["trial"]), None)
    if winner is not None:  # a trial confirmed by number may be infeasible: then the best by value
        return winner, f"confirmed best over {confirmed[0]['runs']} seeded runs"
    if ranking.goal(study).multi:
        return ranked[0], f"best{feasible} {ranking.goal(study).metric} on the Pareto front ({ranking.goal(study).describe()})"
    return ranked[0], f"best{feasible} validation value"


def trial_by_number(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    """The study's complete trial ``number``; a ``UserError`` saying what it is otherwise."""
    trials = study.get_trials(deepcopy=False)
    found = next((t for t in trials if t.number == number), None)
    if found is None:
        have = f"it has trials 0..{len(trials) - 1}" if trials else "it has no trials"
        raise UserError(f"--trial: study {study.study_name!r} has no trial {number} ({have})")
    if stored.is_carried(found):
        raise UserError(f"--trial: trial {number} of {study.study_name!r} is history a warm start carried from "
                        f"study {found.user_attrs[stored.CARRIED]['study']!r}, not one of its own trials")
    if found.state != optuna.trial.TrialState.COMPLETE:
        raise UserError(f"--trial: trial {number} of {study.study_name!r} is {found.state.name}, not COMPLETE")
    return found


def export_config(study: optuna.Study, *, rank: int | None = None, pick: ranking.PickByCost = ranking.PickByCost(),
                  ensemble: int = 1, number: int | None = None) -> dict[str, Any]:
    """The exported document: ``source`` (provenance) and ``config`` (what retrain trains);
    with ``ensemble`` K > 1 also ``ensemble``, the next K-1 feasible trials by value."""
    trial, why = pick_trial(study, rank=rank, pick=pick, number=number)
    others = [t for t in ranked_trials(study) if t.number != trial.number][: ensemble - 1]
    if len(others) < ensemble - 1:
        raise UserError(f"--ensemble: the study has {len(others) + 1} feasible complete trial(s), "
                        f"fewer than {ensemble}")
    for t in (trial, *others):
        if stored.config_of(t) is None:
            raise UserError(f"trial {t.number} of {study.study_name!r} has no stored config (not run by searcher)")
    source = {
        "study": study.study_name,
        "trial": trial.number,
        "picked": why,
        "metric": trial.user_attrs[stored.CONFIG]["training"]["metric"],
        "direction": "maximize" if ranking.goal(study).maximize[0] else "minimize",
        "value": ranking.metric_value(trial),
        "n_params": trial.user_attrs.get(stored.N_PARAMS),
        "cost": {**ranking.figures_of(trial), stored.LATENCY_LARGE: trial.user_attrs.get(stored.LATENCY_LARGE)},
        "baseline": trial.user_attrs.get(stored.BASELINE),
        "spec_hash": study.user_attrs.get(stored.SPEC_HASH),
        # How the trial trained (XLA, precision, threads): retrain trains the same way.
        "runtime": trial.user_attrs.get(stored.RUNTIME) or TrainingRuntime().to_dict(),
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    document = {"searcher_export": FORMAT_VERSION, "source": source, "config": trial.user_attrs[stored.CONFIG]}
    if others:
        source["ensemble"] = [trial.number] + [t.number for t in others]
        document["ensemble"] = [{"trial": t.number, "value": ranking.metric_value(t), "config": t.user_attrs[stored.CONFIG]}
                                for t in others]
    return document


def describe_final_model(configs: int, folds: int) -> str:
    """What ``retrain`` saves for ``configs`` configs of a study with ``folds`` folds (1: no CV)."""
    if configs == 1 and folds == 1:
        return "one model"
    parts = [f"{configs} configs" if configs > 1 else "", f"{folds} folds" if folds > 1 else ""]
    return f"average of {configs * folds} models ({' x '.join(p for p in parts if p)})"


def write_export(document: dict[str, Any], path: Path | None, *, fmt: Literal["yaml", "json"]) -> str:
    """Serialise the document; write it to ``path`` if given and return the text."""
    if fmt == "json":
        text = json.dumps(document, indent=2) + "\n"
    else:
        s = document["source"]
        header = f"# searcher export: study {s['study']}, trial {s['trial']} ({s['picked']}), {s['metric']} {s['value']:.4f}\n"
        if cost := format_cost(s.get("cost") or {}):
            header += f"# cost: {cost}\n"
        folds = (document["config"].get("data") or {}).get("cv_folds") or 1
        if len(s.get("ensemble") or ()) > 1 or folds > 1:
            members = f": trials {', '.join(map(str, s['ensemble']))}" if s.get("ensemble") else ""
            header += (f"# final model: {describe_final_model(len(s.get('ensemble') or [1]), folds)}{members} "
                       "(the cost above is one of them)\n")
        header += f"# retrain it with: searcher retrain {path.name if path else 'THIS_FILE'}\n"
        text = header + yaml.safe_dump(document, sort_keys=False)
    if path is not None:
        path.write_text(text)
    return text


def load_export(path: Path) -> tuple[list[TrialConfig], dict[str, Any]]:
    """Read an exported file back into validated TrialConfigs (the picked one first, then the
    ensemble's other members) and its provenance."""
    if not path.is_file():
        raise UserError(f"{path}: no such file (write one with `searcher export STUDY -o {path}`)")
    try:
        raw = yaml.safe_load(path.read_text())  # JSON is YAML too
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML or JSON ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict) or "config" not in raw:
        raise SpecError(f"{path}: config: is required (is this a `searcher export` file?)")
    configs = [validate_model(TrialConfig, raw["config"], source=f"{path}: config")]
    for i, member in enumerate(raw.get("ensemble") or ()):
        if not isinstance(member, dict) or "config" not in member:
            raise SpecError(f"{path}: ensemble[{i}]: config: is required")
        configs.append(validate_model(TrialConfig, member["config"], source=f"{path}: ensemble[{i}]: config"))
        if configs[-1].data != configs[0].data or configs[-1].split_seed != configs[0].split_seed:
            raise SpecError(f"{path}: ensemble[{i}]: config: data and split_seed must be those of config "
                            "(members of one study)")
    return configs, raw.get("source") or {}


def retrain(
    configs: list[TrialConfig],
    *,
    source: dict[str, Any],
    model_path: Path,
    epochs: int | None = None,
    data_dir: str | None = None,
    serve: Path | None = None,
) -> dict[str, Any]:
    """Train ``configs`` as the search did (every fold, with ``data.cv_folds``), then evaluate
    once on the test split; more than one model is saved as their average.

    Writes the ``.keras`` model and ``<model>.metrics.json``, and with ``serve`` a SavedModel
    (and a ``.tflite`` file where it converts) in that folder; returns the metrics. Latency
    is measured on the written files, loaded back.
    """
    from searcher.data import load_search_data, load_test_split
    from searcher.serve import keras_latency, write_serving
    from searcher.models import ensemble_model
    from searcher.devices import apply_runtime
    from searcher.training import cv_score, fold_models, train_every_fold

    if model_path.suffix != ".keras":
        raise UserError(f"-o: the model file must end in .keras, got {model_path.name}")
    started = time.perf_counter()
    runtime = TrainingRuntime.from_dict(source.get("runtime"))
    apply_runtime(runtime)
    config = configs[0]
    # The whole fit split, also when the search trained on a sample of it (data.search_rows).
    data = load_search_data(config.data, split_seed=config.split_seed, data_dir=data_dir, whole=True)
    direction = source.get("direction") or METRICS[config.training.metric]
    # One list of fold results per config: scored as the search scored it.
    trained = [train_every_fold(member, data, direction=direction, runtime=runtime, max_epochs=epochs)
               for member in configs]
    scored = [cv_score(folds, direction) for folds in trained]
    result = trained[0][0]
    if data.folds:  # every fold again, for the one epoch count its score belongs to
        members = [m for member, score in zip(configs, scored)
                   for m in fold_models(member, data, epochs=score.epoch, direction=direction, runtime=runtime)]
    else:
        members = [folds[0].model for folds in trained]
    model = ensemble_model(members)
    # The only evaluation on test data in searcher, after every choice has been made.
    test = load_test_split(config.data, data_dir=data_dir)
    scores = score_test(model, test, data.class_names)
    from searcher import reference

    references = (reference.evaluate(data, config.training.metric, test=test, seed=config.split_seed)
                  if reference.applies(data) else None)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model.save(model_path)
    numbers = source.get("ensemble") or [source.get("trial")]
    metrics = {
        **scores,
        f"best_{config.training.metric}": scored[0].value,
        "data": data.summary(),
        "inputs": _input_dtypes(model),
        **result.summary(),
        "best_epoch": scored[0].epoch,
        "n_params": int(model.count_params()),
        "final_model": describe_final_model(len(configs), len(trained[0])),
        **({"members": [{"trial": n, "fold": k, f"best_{config.training.metric}": round(value, 6),
                         "best_epoch": score.epoch} for n, score in zip(numbers, scored)
                        for k, value in enumerate(score.values, 1)]} if len(members) > 1 else {}),
        # On this machine, on what is shipped: compare with the trial's stored figures.
        stored.MODEL_BYTES: model_path.stat().st_size,
        **keras_latency(model_path, data.val),
        **({"serving": write_serving(model, serve, data.val)} if serve else {}),
        "seconds": round(time.perf_counter() - started, 2),
        "model": str(model_path),
        "source": source,
        **({"references": references} if references else {}),
    }
    metrics_path(model_path).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def score_test(model: Any, test: Any, class_names: tuple[str, ...]) -> dict[str, Any]:
    """Accuracy, loss, AUC, per-class precision/recall and the confusion matrix on the test split.

    The predicted class of row i is ``class_names[argmax(model.predict(x)[i])]``.
    """
    import numpy as np
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from searcher.data import to_tf_dataset
    from searcher.training import roc_auc

    probabilities = model.predict(to_tf_dataset(test, batch_size=256), verbose=0)
    # The cross-entropy without the L2 penalty, clipped as Keras clips it.
    test_loss = -np.log(np.clip(probabilities[np.arange(len(test)), test.y], 1e-7, 1.0)).mean()
    predicted = probabilities.argmax(axis=1)
    labels = np.arange(len(class_names))
    precision, recall, f1, support = precision_recall_fscore_support(test.y, predicted, labels=labels, zero_division=0)
    return {
        "test_accuracy": float((predicted == test.y).mean()),
        "test_loss": float(test_loss),
        "test_auc": roc_auc(test.y, probabilities),
        "test_examples": len(test),
        "class_names": list(class_names),
        "per_class": {name: {"precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4),
                             "support": int(n)}
                      for name, p, r, f, n in zip(class_names, precision, recall, f1, support)},
        # rows: the true class, columns: the predicted class, both in class_names order
        "confusion_matrix": confusion_matrix(test.y, predicted, labels=labels).tolist(),
    }


def _input_dtypes(model: Any) -> dict[str, str] | str:
    """What the saved model takes: {column: dtype} for tables, one array's shape and dtype otherwise."""
    if isinstance(model.input, dict):
        return {name: str(tensor.dtype) for name, tensor in model.input.items()}
    return f"{model.input.dtype} array of shape {tuple(model.input.shape)}"


def metrics_path(model_path: Path) -> Path:
    return model_path.with_suffix(".metrics.json")
