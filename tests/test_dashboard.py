"""`searcher dashboard` on a real PostgreSQL database: a fresh one with no tables, then a real study."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import optuna
import pytest

from browser import BROWSER_TIMEOUT_MS, chromium_page
from cli_process import start_searcher, wait_for
from postgres_server import psycopg2_url

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.browser]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def dashboard(postgres_url, tmp_path):
    port = _free_port()
    process = start_searcher("dashboard", "--port", str(port), cwd=tmp_path, env={"SEARCHER_STORAGE": postgres_url})
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return _get_json(f"{base}/api/studies") is not None
        except OSError:
            return False

    try:
        wait_for(answers, what="the dashboard answering", process=process)
        yield base, postgres_url
    finally:
        process.popen.terminate()
    out = process.finish()
    output = out.stdout + out.stderr
    assert f"at http://127.0.0.1:{port}/" in output
    assert make_password(postgres_url) not in output, "the password must not be printed"


def make_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).password


def test_dashboard_serves_a_fresh_database_then_a_real_study(dashboard, digits_search):
    base, url = dashboard
    assert _get_json(f"{base}/api/studies")["study_summaries"] == []

    optuna.copy_study(from_study_name=digits_search.name, from_storage=digits_search.url,
                      to_storage=psycopg2_url(url))
    summaries = _get_json(f"{base}/api/studies")["study_summaries"]
    assert [s["study_name"] for s in summaries] == ["digits-mlp"]
    study_id = summaries[0]["study_id"]
    detail = _get_json(f"{base}/api/studies/{study_id}?after=0")
    source = optuna.load_study(study_name=digits_search.name, storage=digits_search.url)
    assert len(detail["trials"]) == len(source.trials)

    with chromium_page(width=1400, height=1000) as (page, errors):
        page.goto(f"{base}/dashboard/studies/{study_id}")
        page.get_by_text("digits-mlp").first.wait_for(timeout=BROWSER_TIMEOUT_MS)
        page.wait_for_selector(".js-plotly-plot, svg", timeout=BROWSER_TIMEOUT_MS)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        assert not [e for e in errors if "favicon" not in e], errors


def test_dashboard_waits_for_a_database_that_is_not_up_yet(restartable_postgres_server, postgres_url, tmp_path):
    """`--wait SECONDS`: started while PostgreSQL is down, it says so in one line, then serves once it is up."""
    port = _free_port()
    restartable_postgres_server.stop()
    dashboard = start_searcher("dashboard", "--port", str(port), "--wait", "300", cwd=tmp_path,
                               env={"SEARCHER_STORAGE": postgres_url})
    try:
        wait_for(lambda: "waiting up to" in "".join(dashboard.output()), what="the database found down",
                 process=dashboard)
        restartable_postgres_server.start()

        def serving() -> bool:
            try:
                return _get_json(f"http://127.0.0.1:{port}/api/studies") is not None
            except OSError:
                return False

        wait_for(serving, what="the dashboard serving once the database is up", process=dashboard)
    finally:
        dashboard.stop()
    output = "".join(dashboard.output())
    assert output.count("waiting up to 300 s: cannot open storage") == 1, output
    assert "ready after" in output and "Traceback" not in output, output
    assert make_password(postgres_url) not in output
