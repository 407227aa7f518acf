"""``searcher dashboard``: optuna-dashboard on the study storage, on 127.0.0.1 by default."""

from __future__ import annotations

import logging
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from searcher.errors import UserError
from searcher.storage import open_storage

log = logging.getLogger(__name__)


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    # One slow API call (a large study) must not block the page's other requests.
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        log.debug(format, *args)


def make_dashboard_server(url: str, *, host: str, port: int, artifacts: str | None = None) -> WSGIServer:
    """A WSGI server for optuna-dashboard; the Optuna schema is created first.

    optuna-dashboard fails on a database without Optuna's tables, so a fresh
    PostgreSQL database gets them from ``open_storage`` before the app sees it.
    The artifact store (``artifacts``, else the folder beside SQLite) lets it list and
    serve the kept models.
    """
    import optuna_dashboard

    from searcher.artifacts import open_store

    storage = open_storage(url)
    app = optuna_dashboard.wsgi(storage, artifact_store=open_store(artifacts, url))
    try:
        return make_server(host, port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    except OSError as e:
        raise UserError(f"--port: cannot listen on {host}:{port} ({e.strerror or e})") from None
