"""Clean workers: recycled after N trials; a trial past the memory limit fails, is not retried."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from test_launch import finished, run_searcher

pytestmark = pytest.mark.slow


def _spec(tmp_path: Path, name: str, **changes) -> Path:
    raw = yaml.safe_load(Path("studies/digits-mlp.yaml").read_text())
    raw["name"] = name
    for section, value in changes.items():
        raw[section] = value if not isinstance(value, dict) else {**raw.get(section, {}), **value}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_worker_is_recycled_after_n_trials(tmp_path):
    spec = _spec(tmp_path, "recycle", runtime={"recycle_after_trials": 2}, training={"max_epochs": 3})
    url = f"sqlite:///{tmp_path}/s.db"
    out = run_searcher("launch", str(spec), "--workers", "1", "--trials", "6", "--storage", url, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    study = optuna.load_study(study_name="recycle", storage=url)
    done = sorted(finished(study), key=lambda t: t.number)
    assert len(done) == 6
    pids = [t.user_attrs["worker_pid"] for t in done]
    # one worker slot, a fresh process every 2 trials
    assert len(set(pids)) == 3, pids
    assert pids[0] == pids[1] and pids[1] != pids[2]
    log = (tmp_path / "searcher-logs" / "recycle" / "worker-0.log").read_text()
    assert log.count("recycles: ran 2 trials") == 2


def test_a_trial_past_the_memory_limit_fails_and_is_not_retried(tmp_path):
    huge = 3_000_000  # a 64 x 3M dense kernel with Adam's slots: several GB
    spec = _spec(
        tmp_path, "oom",
        search={"units": {"choices": [32, 64, huge]}, "depth": 1},
        training={"max_epochs": 2},
        runtime={"max_worker_memory_mb": 1500},
        baselines=[{"name": "too-wide", "params": {"units": [huge], "depth": 1}},
                   {"name": "small", "params": {"units": [32], "depth": 1}}],
    )
    url = f"sqlite:///{tmp_path}/s.db"
    out = run_searcher("launch", str(spec), "--workers", "1", "--trials", "3", "--storage", url, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    study = optuna.load_study(study_name="oom", storage=url)
    wide = next(t for t in study.get_trials() if t.user_attrs.get("baseline") == "too-wide")
    assert wide.state.name == "FAIL"
    assert wide.user_attrs["fail_reason"] == "out of memory"
    assert wide.user_attrs["peak_rss_mb"] > 1500
    assert "max_worker_memory_mb 1500" in wide.user_attrs["fail_detail"]
    assert not [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == wide.number], "not retried"
    assert len(finished(study)) == 3, "the search goes on"
    status = run_searcher("status", "oom", "--json", "--storage", url, cwd=tmp_path)
    assert '"out of memory"' in status.stdout
