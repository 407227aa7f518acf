"""Optuna's own tools on a searcher study in PostgreSQL, with the URL exactly as searcher prints it.

SQLAlchemy maps a bare postgresql:// to psycopg 3, which is not installed; searcher prints
postgresql+psycopg2:// everywhere, and these are the commands a user pastes it into. The
password travels in PGPASSWORD, so the printed URL holds none to mask and is used verbatim.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from cli_process import HANG_GUARD, run_searcher
from postgres_server import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
BIN = Path(sys.executable).parent
TINY = {"description": "one epoch of a small digits MLP", "data": {"dataset": "digits"}, "model": {"kind": "mlp"},
        "search": {"learning_rate": {"low": 1e-3, "high": 1e-1, "log": True}, "units": [32], "depth": 1},
        "training": {"max_epochs": 1, "patience": None}, "budget": {"n_trials": 1}}


def _api(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_optuna_cli_and_dashboard_open_the_study_with_the_printed_url(postgres_url, tmp_path):
    url = make_url(postgres_url)
    env = {"PGPASSWORD": url.password}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    bare = url._replace(password=None).render_as_string(hide_password=False)  # postgresql://searcher@host:port/db
    out = run_searcher("launch", "tiny.yaml", "--seed", "1", "--workers", "1", "--storage", bare, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "study tiny-seed1: spec tiny with --seed 1" in out.stdout  # the worker joined the derived name
    printed = re.search(r"^  optuna trials --study-name tiny-seed1 --storage '([^']+)'$", out.stdout, re.M).group(1)
    assert printed.startswith("postgresql+psycopg2://searcher@")
    assert f"searcher dashboard --storage '{printed}'" in out.stdout

    trials = subprocess.run([BIN / "optuna", "trials", "--study-name", "tiny-seed1", "--storage", printed,
                             "-f", "json"], capture_output=True, text=True, timeout=HANG_GUARD,
                            env={**os.environ, **env})
    assert trials.returncode == 0, trials.stderr
    rows = json.loads(trials.stdout)
    assert [(r["number"], r["state"]) for r in rows] == [(0, "COMPLETE")]

    port = free_port()
    with open(tmp_path / "dashboard.log", "w") as log:
        dashboard = subprocess.Popen([BIN / "optuna-dashboard", printed, "--host", "127.0.0.1", "--port", str(port)],
                                     stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
    try:
        deadline = time.monotonic() + HANG_GUARD
        while True:
            try:
                summaries = _api(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
                break
            except OSError:
                assert dashboard.poll() is None, (tmp_path / "dashboard.log").read_text()
                assert time.monotonic() < deadline, "optuna-dashboard did not answer"
                time.sleep(0.3)
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=120)
    assert [s["study_name"] for s in summaries] == ["tiny-seed1"]

    listed = run_searcher("studies", "--storage", printed, cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^ tiny-seed1 +tiny +1 +1 +1 +0 +0 +0 +0 +0\.\d{4} \(max\)", listed.stdout, re.M), listed.stdout

