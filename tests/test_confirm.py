"""replay and confirm on a real search (the session's ``digits_search``); confirm works on a copy of its storage."""

from __future__ import annotations

from collections import Counter

import optuna
import pytest
import yaml

from cli_process import run_searcher

pytestmark = pytest.mark.slow


def test_replay_reproduces_the_validation_curve(digits_search):
    study = digits_search.study()
    best = study.best_trial
    out = run_searcher("replay", "digits-mlp", str(best.number), "--storage", digits_search.url,
                       cwd=digits_search.folder, check=True)
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith(f"trial {best.number}: largest difference")
    difference = float(last.split("largest difference ")[1].split()[0])
    # Same config, seed and thread count on the CPU: measured bit-identical here; one
    # validation example is 1/288 = 0.0035, so this allows no example to flip.
    assert difference <= 0.001, out.stdout


def test_confirm_adds_runs_once_and_export_takes_the_winner(digits_search, tmp_path):
    run = digits_search.copy(tmp_path)
    out = run_searcher("confirm", "digits-mlp", "--top", "3", "--seeds", "2", "--workers", "2", "--storage", run.url,
                       cwd=tmp_path, check=True)
    assert "6 new run(s)" in out.stdout
    runs = optuna.load_study(study_name="digits-mlp--confirm", storage=run.url).get_trials()
    assert len(runs) == 6
    assert Counter(t.user_attrs["of_trial"] for t in runs).most_common()[0][1] == 2
    confirmed = run.study().user_attrs["confirmed_ranking"]
    assert [r["runs"] for r in confirmed] == [2, 2, 2]
    means = [r["mean"] for r in confirmed]
    assert means == sorted(means, reverse=True)

    again = run_searcher("confirm", "digits-mlp", "--top", "3", "--seeds", "2", "--storage", run.url, cwd=tmp_path,
                         check=True)
    assert "0 new run(s)" in again.stdout
    assert len(optuna.load_study(study_name="digits-mlp--confirm", storage=run.url).get_trials()) == 6

    exported = yaml.safe_load(run_searcher("export", "digits-mlp", "--storage", run.url, cwd=tmp_path,
                                           check=True).stdout)
    assert exported["source"]["trial"] == confirmed[0]["trial"]
    assert exported["source"]["picked"] == "confirmed best over 2 seeded runs"

    from searcher.report import collect, render_html

    data = collect(run.study())
    assert [c["trial"] for c in data.confirmed] == [r["trial"] for r in confirmed]
    page = render_html(data)
    assert "Confirmed over fresh seeds" in page and f"#{confirmed[0]['trial']}" in page


def test_confirm_trials_by_number(digits_search, tmp_path):
    run = digits_search.copy(tmp_path)
    last = max(t.number for t in run.study().get_trials() if t.state.name == "COMPLETE")
    out = run_searcher("confirm", "digits-mlp", "--trial", str(last), "--seeds", "1", "--storage", run.url,
                       cwd=tmp_path, check=True)
    assert "1 new run(s)" in out.stdout and f"confirmed winner: trial {last}" in out.stdout
    runs = optuna.load_study(study_name="digits-mlp--confirm", storage=run.url).get_trials()
    assert [t.user_attrs["of_trial"] for t in runs] == [last]
    wrong = run_searcher("confirm", "digits-mlp", "--trial", "999", "--storage", run.url, cwd=tmp_path)
    assert wrong.returncode == 1
    assert wrong.stderr.strip().startswith("Error: --trial: study 'digits-mlp' has no trial 999 (it has trials 0..")
    both = run_searcher("confirm", "digits-mlp", "--trial", str(last), "--top", "2", "--storage", run.url, cwd=tmp_path)
    assert both.returncode == 1 and both.stderr.strip() == "Error: --trial cannot be combined with --top"
