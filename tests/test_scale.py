"""Hundreds of workers on one PostgreSQL with ``max_connections=100``.

Real worker processes (``searcher.worker.run_worker``, forked from this interpreter) with
a stand-in for training (tests/scale_harness.py) reach the server through PgBouncer in
transaction mode, as the README's "Many workers" section sets it up. Three workers are
killed with SIGKILL inside a trial; the others fail and retry those trials. What must hold:
the budget exactly, every killed trial retried once, nothing RUNNING or lost, and fewer
server connections than ``max_connections`` at every sample. Speed is in bench/scale.py.
"""

from __future__ import annotations

from collections import Counter

import pytest

from postgres_server import PgBouncer, PostgresServer, PostgresServerError, PostgresUnavailable
from scale_harness import FINISHED, run_scale, scale_spec
from searcher.storage import normalize_url

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
MAX_CONNECTIONS = 100


@pytest.fixture(scope="module")
def small_server():
    """A PostgreSQL server of its own with ``max_connections=100`` and PgBouncer in front."""
    import os

    server = PostgresServer(max_connections=MAX_CONNECTIONS)
    bouncer = PgBouncer(server, pool_size=20)
    try:
        server.start()
        bouncer.start()
    except PostgresServerError as e:
        bouncer.close()
        server.close()
        if isinstance(e, PostgresUnavailable) and os.environ.get("CI") != "true":
            pytest.skip(str(e))
        raise
    yield server, bouncer
    bouncer.close()
    server.close()


@pytest.mark.parametrize("workers, n_trials, kill", [(8, 16, 1), (200, 200, 3)])
def test_many_workers_keep_the_budget_exact(small_server, tmp_path, workers, n_trials, kill):
    server, bouncer = small_server
    url = normalize_url(bouncer.url(server.create_database()))
    spec = scale_spec(f"scale-{workers}", n_trials=n_trials, epochs=3)
    run = run_scale(spec, url, admin_url=server.admin_url, workers=workers, folder=tmp_path, epoch_seconds=0.8,
                    kill=kill)
    states = run.states()
    print(f"{workers} workers: {run.seconds:.0f} s, {states}, peak {run.peak_connections} server connections, "
          f"workers' memory {run.peak_pss_mb:.0f} MB (PSS)")

    assert len(run.killed) == kill
    assert {code for pid, code in run.exit_codes.items() if pid not in run.killed} == {0}
    assert sum(states.get(s, 0) for s in FINISHED) == n_trials  # not one more: the budget held
    assert states.get("RUNNING", 0) == 0 and states.get("WAITING", 0) == 0
    assert run.peak_connections < MAX_CONNECTIONS

    failed = [t for t in run.trials if t.state.name == "FAIL"]
    # Only the killed workers' trials failed: the others' heartbeats kept theirs alive past the grace period.
    assert sorted(t.user_attrs["worker_pid"] for t in failed) == sorted(run.killed)
    retried = Counter(t.system_attrs.get("failed_trial") for t in run.trials if "failed_trial" in t.system_attrs)
    assert retried == Counter({t.number: 1 for t in failed})  # each killed trial ran again, once
    numbers = [t.number for t in run.trials]
    assert sorted(numbers) == list(range(len(numbers)))  # no gap, no duplicate
    assert all(t.intermediate_values for t in run.trials if t.state.name in FINISHED)  # per-epoch reports stored
    assert all("config" in t.user_attrs and "sec_per_epoch" in t.user_attrs for t in run.trials
               if t.state.name in FINISHED)
