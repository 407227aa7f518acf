"""A real, throwaway PostgreSQL server for the tests.

``PostgresServer().start()`` runs ``initdb`` in a new temporary directory, then
``postgres`` on 127.0.0.1 at a free port.  TCP logins need a password
(``scram-sha-256``), so a wrong password really fails.  The binaries come from
Debian's server package (``/usr/lib/postgresql/<version>/bin``, installed by
``.ci/install-postgres``), else from ``postgres`` on PATH, else from the
``pgserver`` wheel, which bundles PostgreSQL 16.  PostgreSQL refuses to run as
root, so as root the server runs as the ``postgres`` system user (created with
``useradd`` if it is missing).

``PostgresServer.from_url(url)`` wraps a server someone else runs (the tests
use it for ``SEARCHER_TEST_POSTGRES_URL``).  It cannot be stopped, restarted or
killed; its user needs the CREATEDB privilege, and its TCP logins should need a
password, or the wrong-password tests fail.

The server process is a child of the test process (not daemonized by ``pg_ctl``),
so ``stop()`` reaps it at once and a restart never trips over its zombie.

Example::

    with PostgresServer() as server:          # started; stopped and deleted on exit
        url = server.create_database()        # postgresql://searcher:s3cret-...@127.0.0.1:PORT/searcher_test_...
        server.restart(down_seconds=2)        # same port, same data
        broken = server.url_with(url, password="wrong")
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import importlib.util
import logging
import os
import pwd
import secrets
import shutil
import stat
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg2
from psycopg2 import sql
from sqlalchemy.engine import URL, make_url

__all__ = [
    "PgBouncer",
    "PostgresServer",
    "PostgresServerError",
    "PostgresUnavailable",
    "find_bin_dir",
    "free_port",
    "pgserver_bin_dir",
    "psycopg2_url",
]

_logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
ROLE = "searcher"
SUPERUSER = "postgres"
SYSTEM_USER = "postgres"
_TAIL_LINES = 30

# Connection errors that mean "try again": the server is not listening, or not ready, yet.
_NOT_YET_UP = (
    "Connection refused",
    "No such file or directory",
    "the database system is starting up",
    "the database system is not yet accepting connections",  # crash recovery, after kill()
    "the database system is in recovery mode",
)

_CONFIG = """
# Added by tests/postgres_server.py: a throwaway server for the tests.
listen_addresses = '{host}'
unix_socket_directories = '{socket_dir}'
password_encryption = 'scram-sha-256'
max_connections = {max_connections}
shared_buffers = 32MB
# Faster, and safe against kill() (a process crash), not against an OS crash.
# synchronous_commit stays on: with it off, kill() loses commits still in WAL buffers.
fsync = off
full_page_writes = off
"""

_PG_HBA = """\
# Written by tests/postgres_server.py.
# TYPE  DATABASE  USER  ADDRESS        METHOD
local   all       all                  trust
host    all       all   {host}/32   scram-sha-256
"""


class PostgresServerError(RuntimeError):
    """The server could not be started, stopped or reached."""


class PostgresUnavailable(PostgresServerError):
    """This machine has no PostgreSQL server binaries."""


def free_port(host: str = HOST) -> int:
    """A TCP port nothing listens on right now (for a server, or for an unreachable URL)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def psycopg2_url(url: str) -> str:
    """``url`` with the ``postgresql+psycopg2`` driver.

    SQLAlchemy 2 reads a bare ``postgresql://`` as psycopg 3, which is not installed.
    """
    return make_url(url).set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)


def pgserver_bin_dir() -> Path | None:
    """The PostgreSQL binaries bundled in the ``pgserver`` package, or None if it is not installed.

    Found without importing ``pgserver``, whose import has side effects.
    """
    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        return None
    bin_dir = Path(spec.origin).parent / "pginstall" / "bin"
    return bin_dir if (bin_dir / "postgres").is_file() else None


def _reachable_by_others(bin_dir: Path, base_dir: Path) -> Path:
    """``bin_dir``, or a copy of its installation in ``base_dir`` when another user cannot reach it.

    The server runs as the ``postgres`` user; pgserver's binaries live in the virtualenv,
    which may sit under a private folder (a ``mktemp -d`` checkout is mode 0700).
    """
    if all(folder.stat().st_mode & stat.S_IXOTH for folder in [bin_dir, *bin_dir.parents]):
        return bin_dir
    # pgserver's binaries find their libraries by a relative rpath
    # ($ORIGIN/../../../pgserver.libs): copy the package and its sibling .libs folder together.
    package = bin_dir.parents[1]
    copy_root = base_dir / "site-packages"
    for folder in package.parent.glob(f"{package.name}*"):
        if folder.is_dir() and not folder.name.endswith(".dist-info"):
            shutil.copytree(folder, copy_root / folder.name, symlinks=True)
    for folder in [copy_root, *copy_root.rglob("*")]:
        if folder.is_dir():
            folder.chmod(folder.stat().st_mode | stat.S_IXOTH | stat.S_IROTH)
    return copy_root / bin_dir.relative_to(package.parent)


def find_bin_dir() -> Path:
    """The directory with ``initdb`` and ``postgres``: Debian's newest, PATH, then ``pgserver``."""
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=_version_key, reverse=True)
    if debian:
        return Path(debian[0]).parent
    on_path = shutil.which("postgres")
    if on_path:
        return Path(on_path).resolve().parent
    bundled = pgserver_bin_dir()
    if bundled is not None:
        return bundled
    raise PostgresUnavailable(
        "no PostgreSQL server binaries: looked for /usr/lib/postgresql/*/bin/postgres "
        "(run .ci/install-postgres), postgres on PATH and the pgserver package (pip install pgserver)"
    )


def _version_key(program: str) -> tuple[int, ...]:
    version = Path(program).parent.parent.name  # /usr/lib/postgresql/<version>/bin/postgres
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _masked(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _connect_kwargs(url: str) -> dict[str, object]:
    parsed = make_url(url)
    kwargs: dict[str, object] = {
        "host": parsed.host,
        "port": parsed.port,
        "user": parsed.username,
        "password": parsed.password,
        "dbname": parsed.database,
    }
    kwargs.update(parsed.query)
    return {key: value for key, value in kwargs.items() if value is not None}


def _tail(path: Path, lines: int = _TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"(cannot read {path}: {e})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    result = subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", name],
        capture_output=True, text=True, check=False,
    )
    try:  # another process may have created it meanwhile
        return pwd.getpwnam(name)
    except KeyError:
        raise PostgresServerError(
            f"PostgreSQL refuses to run as root and there is no {name!r} user; "
            f"useradd failed: {result.stderr.strip()}"
        ) from None


class PostgresServer:
    """A PostgreSQL server in a temporary directory, or a wrapper around an existing one.

    Args:
        bin_dir: where ``initdb`` and ``postgres`` are; default ``find_bin_dir()``.
        start_timeout: seconds to wait for the server to accept connections.
        max_connections: the server's ``max_connections`` (the scale tests run 200 workers on 100).
    """

    def __init__(self, *, bin_dir: Path | str | None = None, start_timeout: float = 300.0,
                 max_connections: int = 200) -> None:
        self.managed = True
        self.max_connections = max_connections
        self.start_timeout = start_timeout
        self.host = HOST
        self.port = 0
        self.password = f"s3cret-{secrets.token_hex(8)}"
        self._bin_dir = Path(bin_dir) if bin_dir is not None else None
        self._superuser_password = secrets.token_hex(16)
        self._external_url: str | None = None
        self.base_dir: Path | None = None
        self._owner_pid = os.getpid()
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def from_url(cls, url: str) -> PostgresServer:
        """Wrap a running server: databases are created with ``url``'s credentials; no restart."""
        server = cls()
        parsed = make_url(url).set(drivername="postgresql")
        if parsed.host is None or parsed.username is None:
            raise PostgresServerError(f"{_masked(url)}: need a host and a user")
        server.managed = False
        server._external_url = parsed.render_as_string(hide_password=False)
        server.host = parsed.host
        server.port = parsed.port or 5432
        server.password = parsed.password or ""
        return server

    # Where things are.

    @property
    def can_restart(self) -> bool:
        """Whether stop/restart/kill work: only for a server this object started."""
        return self.managed

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = find_bin_dir()
        return self._bin_dir

    @property
    def data_dir(self) -> Path:
        return self._base() / "data"

    @property
    def log_path(self) -> Path:
        """The server's log; ``initdb.log`` is beside it."""
        return self._base() / "postgres.log"

    @property
    def admin_url(self) -> str:
        """A superuser URL (for a wrapped server: the URL it was given)."""
        if self._external_url is not None:
            return self._external_url
        return URL.create(
            "postgresql", username=SUPERUSER, password=self._superuser_password,
            host=self.host, port=self.port, database="postgres",
        ).render_as_string(hide_password=False)

    def url_with(
        self,
        url: str | None = None,
        *,
        user: str | None = None,
        password: str | None = None,
        host: str | None = None,
        port: int | None = None,
        database: str | None = None,
    ) -> str:
        """``url`` (default: the ``searcher`` role on database ``postgres``) with some parts replaced.

        For broken URLs: ``url_with(url, password="wrong")``, ``url_with(port=free_port())``.
        """
        if url is None:
            if self._external_url is not None:
                url = self._external_url
            else:
                url = URL.create(
                    "postgresql", username=ROLE, password=self.password,
                    host=self.host, port=self.port, database="postgres",
                ).render_as_string(hide_password=False)
        changes = {"username": user, "password": password, "host": host, "port": port, "database": database}
        parsed = make_url(url).set(**{key: value for key, value in changes.items() if value is not None})
        return parsed.render_as_string(hide_password=False)

    # Life cycle.

    def start(self) -> None:
        """Start the server (the first time: create it), unless it is running; wait until it accepts logins.

        For a wrapped server, check that it accepts logins.
        """
        if not self.managed:
            self._check_connection(timeout=0)
            return
        if self.is_running():
            return
        began = time.monotonic()
        first = self.base_dir is None
        if first:
            self._create_cluster()
            atexit.register(self._close_at_exit)
        for attempt in range(3):
            try:
                self._start_postmaster()
                break
            except PostgresServerError:
                # Someone took the port between free_port() and the bind: only a new server may move.
                if not (first and attempt < 2 and "could not bind" in _tail(self.log_path, 10)):
                    raise
                self.port = free_port()
                _logger.info("port taken, retrying PostgreSQL on port %d", self.port)
        if first:
            with self._admin() as cur:
                cur.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(ROLE), sql.Literal(self.password)))
        _logger.info("PostgreSQL on %s:%d started in %.2f s", self.host, self.port, time.monotonic() - began)

    def stop(self) -> None:
        """Stop the server (fast mode: sessions are cut, no waiting for clients). Keeps the data."""
        self._require_managed("stop")
        process = self._process
        if process is None:
            return
        # SIGINT is PostgreSQL's fast shutdown, SIGQUIT its immediate one; the postmaster
        # exits after its backends, so a reaped postmaster means a stopped server.
        for sig, seconds in ((signal.SIGINT, self.start_timeout), (signal.SIGQUIT, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            try:
                process.wait(seconds)
            except subprocess.TimeoutExpired:
                _logger.warning("PostgreSQL (pid %d) ignored %s for %g s", process.pid, sig.name, seconds)
                continue
            self._process = None
            return
        self.kill()

    def restart(self, down_seconds: float = 0) -> None:
        """Stop (fast mode), stay down ``down_seconds``, start again on the same port with the same data."""
        self._require_managed("restart")
        self.stop()
        if down_seconds > 0:
            time.sleep(down_seconds)
        self.start()

    def kill(self) -> None:
        """SIGKILL the server and its backends, like a crash; ``start()`` then runs crash recovery."""
        self._require_managed("kill")
        process = self._process
        if process is None or process.poll() is not None:  # reaped: its pid may belong to someone else now
            self._process = None
            return
        try:
            backends = psutil.Process(process.pid).children(recursive=True)
        except psutil.Error:
            backends = []
        # The postmaster leads its own process group (start_new_session), which holds every
        # backend, including any forked after the list above was taken.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        self._process = None
        # The orphaned backends are reaped by init; they only have to be dead.
        deadline = time.monotonic() + 120
        while any(_alive(proc) for proc in backends):
            if time.monotonic() > deadline:
                raise PostgresServerError(f"PostgreSQL backends of pid {process.pid} survived SIGKILL for 120 s")
            time.sleep(0.05)

    def close(self) -> None:
        """Stop the server and delete its directory. Does nothing for a wrapped server."""
        if not self.managed or self.base_dir is None:
            return
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None
            atexit.unregister(self._close_at_exit)

    def is_running(self) -> bool:
        """Whether the postmaster is alive (a wrapped server is assumed to be)."""
        if not self.managed:
            return True
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f"data {self.base_dir}" if self.managed else f"wrapping {_masked(self.admin_url)}"
        return f"PostgresServer({self.host}:{self.port}, {where})"

    # Databases.

    def create_database(self, name: str | None = None) -> str:
        """Create a database (default name: ``searcher_test_<random>``) and return a URL to it.

        On a server this object started, the ``searcher`` role owns it:
        ``postgresql://searcher:<password>@127.0.0.1:<port>/<name>``.
        """
        name = name or f"searcher_test_{secrets.token_hex(6)}"
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if self.managed:
            statement += sql.SQL(" OWNER {}").format(sql.Identifier(ROLE))
        with self._admin() as cur:
            cur.execute(statement)
        return self.url_with(database=name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting its sessions; no error if it is gone."""
        with self._admin() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    # Internals.

    def _base(self) -> Path:
        if self.base_dir is None:
            raise PostgresServerError("the server has not been started (no data directory)")
        return self.base_dir

    def _require_managed(self, action: str) -> None:
        if not self.managed:
            raise PostgresServerError(
                f"cannot {action} {_masked(self.admin_url)}: the tests did not start that server "
                "(SEARCHER_TEST_POSTGRES_URL)"
            )

    def _run_as(self) -> dict[str, object]:
        if os.geteuid() != 0:
            return {}
        user = _ensure_system_user(SYSTEM_USER)
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def _env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["LC_ALL"] = "C"
        return env

    def _create_cluster(self) -> None:
        bin_dir = self.bin_dir
        for program in ("initdb", "postgres"):
            if not (bin_dir / program).is_file():
                raise PostgresUnavailable(f"{bin_dir}: no {program} program")
        self.base_dir = Path(tempfile.mkdtemp(prefix="searcher-pg-"))
        run_as = self._run_as()
        password_file = self.base_dir / "superuser-password"
        password_file.write_text(self._superuser_password + "\n")
        password_file.chmod(0o600)
        if run_as:
            for path in (self.base_dir, password_file):
                os.chown(path, run_as["user"], run_as["group"])  # type: ignore[arg-type]
            bin_dir = self._bin_dir = _reachable_by_others(bin_dir, self.base_dir)
        initdb_log = self.base_dir / "initdb.log"
        try:
            with open(initdb_log, "wb") as log:
                result = subprocess.run(
                    [str(bin_dir / "initdb"), "-D", str(self.data_dir), "--username", SUPERUSER,
                     "--pwfile", str(password_file), "--auth-local=trust", "--auth-host=scram-sha-256",
                     "--encoding=UTF8", "--locale=C", "--no-sync"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.base_dir,
                    env=self._env(), timeout=120, check=False, **run_as,
                )
        finally:
            password_file.unlink()
        if result.returncode != 0:
            raise self._error(f"initdb failed (exit {result.returncode})", initdb_log)
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(_CONFIG.format(host=self.host, socket_dir=self.base_dir, max_connections=self.max_connections))
        (self.data_dir / "pg_hba.conf").write_text(_PG_HBA.format(host=self.host))
        self.port = free_port()

    def _start_postmaster(self) -> None:
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.base_dir,
                env=self._env(), start_new_session=True, **self._run_as(),
            )
        try:
            self._check_connection(timeout=self.start_timeout)
        except PostgresServerError:
            if self._process.poll() is None:
                self.kill()
            self._process = None
            raise

    def _check_connection(self, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self._admin(connect_timeout=2):
                    return
            except psycopg2.OperationalError as e:
                if self.managed and not self.is_running():
                    raise self._error(
                        f"PostgreSQL exited with code {self._process.returncode} while starting"  # type: ignore[union-attr]
                    ) from e
                if time.monotonic() > deadline or not any(text in str(e) for text in _NOT_YET_UP):
                    raise self._error(
                        f"cannot connect to {_masked(self.admin_url)}: {str(e).strip()}"
                    ) from e
            time.sleep(0.05)

    @contextlib.contextmanager
    def _admin(self, *, connect_timeout: int = 10) -> Iterator[psycopg2.extensions.cursor]:
        connection = psycopg2.connect(**_connect_kwargs(self.admin_url), connect_timeout=connect_timeout)
        try:
            connection.autocommit = True  # CREATE/DROP DATABASE refuse to run in a transaction
            with connection.cursor() as cur:
                yield cur
        finally:
            connection.close()

    def _error(self, message: str, log: Path | None = None) -> PostgresServerError:
        if not self.managed or self.base_dir is None:
            return PostgresServerError(message)
        log = log or self.log_path
        return PostgresServerError(
            f"{message}\nPostgreSQL {self.bin_dir}, data {self.data_dir}, port {self.port}"
            f"\n--- tail of {log} ---\n{_tail(log)}"
        )

    def _close_at_exit(self) -> None:
        if os.getpid() == self._owner_pid:  # not in a forked child that inherited the handler
            self.close()


_PGBOUNCER_INI = """\
; Written by tests/postgres_server.py: PgBouncer in transaction mode in front of a test server.
[databases]
* = host={host} port={port}
[pgbouncer]
listen_addr = {host}
listen_port = {listen_port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {base}/userlist.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = {max_client_conn}
; Clients queue while every server connection is busy; they may queue for long at 200 workers.
query_wait_timeout = 0
logfile = {base}/pgbouncer.log
pidfile = {base}/pgbouncer.pid
"""


class PgBouncer:
    """PgBouncer (Debian's ``pgbouncer`` package) in transaction mode in front of ``server``.

    ``url(database_url)`` is the same database reached through it. At most ``pool_size``
    server connections per database and user, however many clients connect.
    """

    def __init__(self, server: PostgresServer, *, pool_size: int = 20, max_client_conn: int = 2000) -> None:
        self.server, self.pool_size, self.max_client_conn = server, pool_size, max_client_conn
        self.port = 0
        self.base_dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        program = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(program).is_file():
            raise PostgresUnavailable("no pgbouncer program (apt-get install pgbouncer; scripts/install-test-deps)")
        self.base_dir = Path(tempfile.mkdtemp(prefix="searcher-pgbouncer-"))
        self.port = free_port()
        (self.base_dir / "userlist.txt").write_text(f'"{ROLE}" "{self.server.password}"\n')
        (self.base_dir / "pgbouncer.ini").write_text(_PGBOUNCER_INI.format(
            host=self.server.host, port=self.server.port, listen_port=self.port, base=self.base_dir,
            pool_size=self.pool_size, max_client_conn=self.max_client_conn))
        run_as = self.server._run_as()
        if run_as:  # pgbouncer refuses to run as root, as PostgreSQL does
            for path in [self.base_dir, *self.base_dir.iterdir()]:
                os.chown(path, run_as["user"], run_as["group"])  # type: ignore[arg-type]
        self._process = subprocess.Popen(
            [program, str(self.base_dir / "pgbouncer.ini")], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True, **run_as)
        deadline = time.monotonic() + 300  # a guard against a hang, not a speed limit
        while True:
            try:
                socket.create_connection((self.server.host, self.port), timeout=1).close()
                return
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise PostgresServerError(f"pgbouncer did not start:\n{_tail(self.base_dir / 'pgbouncer.log')}") from None
                time.sleep(0.05)

    def url(self, database_url: str) -> str:
        """``database_url`` (a database on the server) through PgBouncer."""
        return make_url(database_url).set(host=self.server.host, port=self.port).render_as_string(hide_password=False)

    def close(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    def __enter__(self) -> PgBouncer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
